"""Thin wrappers over iproute2 for the lab: ask before acting, act once."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any, Sequence


class CommandError(RuntimeError):
    """A system command failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], netns: str | None = None, check: bool = True,
        input_text: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (inside ``netns`` when given) and return the finished process."""
    full = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, input=input_text, env=env, check=False)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ip_json(args: Sequence[str], netns: str | None = None) -> list[dict[str, Any]]:
    out = run(["ip", "-json", *args], netns=netns).stdout.strip()
    return json.loads(out) if out else []


def namespaces() -> set[str]:
    return {entry["name"] for entry in ip_json(["netns", "list"])}


def links(netns: str | None = None) -> dict[str, dict[str, Any]]:
    return {entry["ifname"]: entry for entry in ip_json(["link", "show"], netns=netns)}


def addresses(netns: str | None = None) -> set[str]:
    """Every IPv4 address with its prefix length, as ``a.b.c.d/n``."""
    found = set()
    for entry in ip_json(["-4", "addr", "show"], netns=netns):
        for info in entry.get("addr_info", []):
            found.add(f"{info['local']}/{info['prefixlen']}")
    return found


def routes(netns: str | None = None) -> list[dict[str, Any]]:
    return ip_json(["-4", "route", "show"], netns=netns)


def netns_pids(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False).stdout.split()
    return [int(pid) for pid in out if pid.isdigit()]


def wait_listening(netns: str, address: str, port: int, timeout: float = 10.0) -> None:
    """Return once a TCP socket listens on ``address:port`` in ``netns``; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(["ss", "-Hltn", f"src {address}:{port}"], netns=netns, check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise CommandError(f"nothing listens on {address}:{port} in {netns} after {timeout:.0f}s")


def ensure_link_up(name: str, netns: str | None = None) -> bool:
    info = links(netns).get(name)
    if info is None:
        raise CommandError(f"link {name} is missing in {netns or 'the root namespace'}")
    if "UP" in info.get("flags", []):
        return False
    run(["ip", "link", "set", name, "up"], netns=netns)
    return True


def ensure_address(name: str, cidr: str, netns: str | None = None) -> bool:
    if cidr in addresses(netns):
        return False
    run(["ip", "addr", "add", cidr, "dev", name], netns=netns)
    return True


def ensure_route(destination: str, via: str | None, dev: str, netns: str | None = None) -> bool:
    for route in routes(netns):
        if route.get("dst") == destination and route.get("gateway") == via and route.get("dev") == dev:
            return False
    argv = ["ip", "route", "replace", destination] + (["via", via] if via else []) + ["dev", dev]
    run(argv, netns=netns)
    return True


def ensure_sysctl(key: str, value: str, netns: str | None = None) -> bool:
    current = run(["sysctl", "-n", key], netns=netns).stdout.strip()
    if current == value:
        return False
    run(["sysctl", "-q", "-w", f"{key}={value}"], netns=netns)
    return True
