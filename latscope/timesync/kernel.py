"""What the time-sync programs need from the kernel: compiling, namespaces, fd-owned attachments.

Both sides attach through BPF links (``BPF_LINK_CREATE``): XDP on a device,
tcx on a device's egress. A link belongs to a file descriptor of this process,
so when the process exits - cleanly, by an exception or by SIGKILL - the
kernel detaches the program: no responder outlives its daemon.

A device is named in a network namespace (``netns``: a path such as
``/run/netns/NAME``, or None for this process's own); attaching in another
namespace happens in a short-lived thread that has entered it, so the process
itself never moves.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import (
    ATTACH_XDP, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, Bpf, Syscalls)
from latscope.collector import netns as netns_ops

BPF_DIR = Path(__file__).resolve().parents[2] / "files" / "bpf"
ATTACH_TCX_EGRESS = 47
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
IP_TIMEOUT_S = 10
T = TypeVar("T")


class KernelError(RuntimeError):
    """A program could not be compiled or attached; the message says which and why."""


def compile_program(source: str, cflags: list[str]) -> Any:
    """Compile ``files/bpf/<source>`` with BCC (the header tree prepared first)."""
    headers.prepare_bcc()
    from bcc import BPF  # noqa: PLC0415 - only once the header tree is ready

    text = (BPF_DIR / source).read_text()
    return BPF(text=text, cflags=[f"-I{BPF_DIR}", *cflags])


def in_netns(netns: str | None, work: Callable[[], T]) -> T:
    """Run ``work()`` in the namespace at ``netns`` (None: here), on a thread that entered it."""
    if netns is None:
        return work()
    if not os.path.exists(netns):
        raise InputError("netns", "no such network namespace", netns)
    try:
        return netns_ops.run_inside(netns, work)
    except netns_ops.NetnsError as exc:
        raise KernelError(str(exc)) from None


def link_info(interface: str) -> dict[str, Any]:
    """``ip -d link show dev <interface>`` of the current namespace, as JSON (kind, ifindex, peer)."""
    try:
        done = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", interface], capture_output=True,
                              text=True, timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot ask iproute2 about {interface}: {exc}") from exc
    if done.returncode != 0:
        raise InputError("interface", f"no such interface ({done.stderr.strip()})", interface)
    info = json.loads(done.stdout)[0]
    kind = (info.get("linkinfo") or {}).get("info_kind", "")
    return {"ifname": info["ifname"], "ifindex": int(info["ifindex"]), "kind": kind,
            "address": info.get("address", ""), "link_index": info.get("link_index"),
            "link_netnsid": info.get("link_netnsid")}


def all_links() -> list[dict[str, Any]]:
    try:
        done = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True,
                              timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot list links: {exc}") from exc
    return json.loads(done.stdout or "[]") if done.returncode == 0 else []


def ipv4_address(interface: str) -> str:
    """The first IPv4 address of ``interface`` in the current namespace."""
    done = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface], capture_output=True, text=True,
                          timeout=IP_TIMEOUT_S, check=False)
    if done.returncode == 0:
        for entry in json.loads(done.stdout or "[]"):
            for addr in entry.get("addr_info", []):
                if addr.get("family") == "inet":
                    return str(addr["local"])
    raise InputError("interface", "has no IPv4 address", interface)


@dataclass(frozen=True)
class VethPeer:
    """The other end of a veth interface: its namespace (None: this process's) and name."""

    netns: str | None
    ifname: str
    ifindex: int


def find_veth_peer(interface: dict[str, Any], interface_netns: str | None,
                   candidates: list[str | None]) -> VethPeer | None:
    """Where the peer of the veth ``interface`` lives: the first of ``candidates`` (namespace paths,
    None for this process's) holding a veth whose ifindex is the interface's peer index and whose
    own peer index is the interface's. None when no candidate does."""
    if interface.get("link_index") is None:
        return None
    if interface.get("link_netnsid") is None:
        candidates = [interface_netns]      # the peer is in the interface's own namespace
    for netns in candidates:
        try:
            links = in_netns(netns, all_links)
        except (InputError, KernelError, OSError):
            continue
        for link in links:
            kind = (link.get("linkinfo") or {}).get("info_kind", "")
            if (kind == "veth" and int(link["ifindex"]) == int(interface["link_index"])
                    and int(link.get("link_index") or -1) == int(interface["ifindex"])
                    and (netns != interface_netns or link["ifname"] != interface["ifname"])):
                return VethPeer(netns=netns, ifname=link["ifname"], ifindex=int(link["ifindex"]))
    return None


class Links:
    """The BPF links of one component; closing them detaches (the kernel does it too when we die)."""

    def __init__(self) -> None:
        self.syscalls = Bpf(Syscalls())
        self.fds: list[int] = []
        self.described: list[str] = []

    def xdp(self, prog_fd: int, ifindex: int, mode: str, what: str, netns: str | None = None) -> None:
        flags = XDP_MODES[mode]
        fd = in_netns(netns, lambda: self.syscalls.link_create(prog_fd, ifindex, ATTACH_XDP, flags))
        self.fds.append(fd)
        self.described.append(f"xdp/{mode} {what}")

    def tcx_egress(self, prog_fd: int, ifindex: int, what: str, netns: str | None = None) -> None:
        fd = in_netns(netns, lambda: self.syscalls.link_create(prog_fd, ifindex, ATTACH_TCX_EGRESS))
        self.fds.append(fd)
        self.described.append(f"tcx/egress {what}")

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
        self.described.clear()


def ifindex_in(netns: str | None, name: str) -> int:
    return in_netns(netns, lambda: socket.if_nametoindex(name))


def counters(table: Any, names: tuple[str, ...]) -> dict[str, int]:
    """Sum a per-CPU counter array into ``{name: value}``."""
    return {name: int(sum(table[ctypes.c_int(index)])) for index, name in enumerate(names)}


def addr_u32(address: str) -> int:
    """The u32 the BPF side compares an IPv4 address with: its wire bytes read little-endian."""
    return int.from_bytes(socket.inet_aton(address), "little")


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


__all__ = ["BPF_DIR", "KernelError", "Links", "VethPeer", "addr_u32", "compile_program", "counters",
           "find_veth_peer", "in_netns", "ifindex_in", "ipv4_address", "link_info"]
