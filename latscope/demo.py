"""The README's main job on the local lab.

Bring the lab up, show that Ansible reaches every machine over real SSH, then
measure a real flow (iperf3 host1 -> host2) with the observer running on both
hosts and print where its latency went, layer by layer. (The Ansible
deploy/measure/analysis path replaces the measuring part as it lands.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ansible_collections.latscope.latscope.plugins.module_utils.records import PacketRecord, record_from_dict
from latscope.breakdown import breakdown, render
from latscope.collector import netns
from latscope.lab import lab
from latscope.lab.netops import wait_listening
from latscope.lab.settings import LabPlan, LabSettings

REPO = Path(__file__).resolve().parent.parent


def ansible_env() -> dict[str, str]:
    """Environment for ansible commands run from this checkout."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    return env


def ansible_ping(inventory: Path) -> dict[str, dict]:
    """Run the ping module on every inventory host over SSH; return per-host results."""
    bindir = Path(sys.executable).parent
    proc = subprocess.run([str(bindir / "ansible"), "all", "-i", str(inventory), "-m", "ansible.builtin.ping",
                           "-o"], capture_output=True, text=True, env=ansible_env(), check=False)
    results: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        name, rest = line.split(" | ", 1) if " | " in line else (line, "")
        status, payload = rest.split(" => ", 1) if " => " in rest else (rest, "")
        try:
            data = json.loads(payload) if payload.strip().startswith("{") else {"msg": payload}
        except ValueError:
            data = {"msg": payload}
        results[name.strip()] = {"status": status.strip(), **data}
    if not results:
        raise RuntimeError(f"ansible produced no result: {proc.stderr.strip()[-500:]}")
    return results


class ObserverProcess:
    """``latscope observe`` inside a lab namespace, writing its records to a file."""

    def __init__(self, netns_name: str, host: str, out: Path, args: list[str]) -> None:
        self.out = out
        self.stderr: list[str] = []
        with out.open("w") as sink:
            self.proc = subprocess.Popen(["ip", "netns", "exec", netns_name, sys.executable, "-m", "latscope", "observe",
                                          "--host", host, *args], stdout=sink, stderr=subprocess.PIPE, text=True)

    def wait_attached(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = select.select([self.proc.stderr], [], [], 0.5)[0]
            if not ready:
                continue
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            self.stderr.append(line)
            if line.startswith("attached"):
                return
        raise RuntimeError("observer did not attach: " + "".join(self.stderr)[-2000:])

    def stop(self) -> dict:
        """SIGTERM, wait, and return its final counters."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rest = self.proc.communicate(timeout=60)[1]
        self.stderr.append(rest or "")
        text = "".join(self.stderr)
        if self.proc.returncode != 0:
            raise RuntimeError(f"observer failed ({self.proc.returncode}): {text[-2000:]}")
        summaries = [json.loads(line) for line in text.splitlines() if line.startswith('{"counters"')]
        return summaries[-1]["counters"] if summaries else {}

    def records(self) -> list[PacketRecord]:
        return [record_from_dict(json.loads(line)) for line in self.out.read_text().splitlines() if line]


def device_names(plan: LabPlan) -> dict[tuple[int, int], str]:
    """(netns cookie, ifindex) -> "host1:eth0" for every lab namespace."""
    names = {}
    for node in plan.nodes:
        info = netns.describe(f"/run/netns/{node.netns}")
        for ifname, index in info.interfaces.items():
            names[(info.cookie, index)] = f"{node.name}:{ifname}"
    return names


def measure_flow(plan: LabPlan, sender: str, receiver: str, port: int = 5201, seconds: int = 3,
                 rate: str = "1G", size: int = 65536) -> tuple[list[PacketRecord], list[PacketRecord]]:
    """Observe both hosts while iperf3 pushes ``rate`` from ``sender`` to ``receiver``; return (sent, received)."""
    src, dst = plan.node(sender), plan.node(receiver)
    with tempfile.TemporaryDirectory(prefix="latscope-demo-") as tmp:
        args = ["--size", str(size), "--port", str(port), "--seconds", "300"]
        observers = [ObserverProcess(src.netns, sender, Path(tmp) / "tx.jsonl", args),
                     ObserverProcess(dst.netns, receiver, Path(tmp) / "rx.jsonl", args)]
        server = subprocess.Popen(["ip", "netns", "exec", dst.netns, "iperf3", "-s", "-1", "-B", dst.address,
                                   "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for observer in observers:
                observer.wait_attached()
            wait_listening(dst.netns, dst.address, port)
            client = subprocess.run(["ip", "netns", "exec", src.netns, "iperf3", "-c", dst.address, "-p", str(port),
                                     "-t", str(seconds), "-b", rate],
                                    capture_output=True, text=True, timeout=seconds + 60, check=False)
            if client.returncode != 0:
                raise RuntimeError(f"iperf3 failed: {client.stderr.strip() or client.stdout[-500:]}")
            for observer in observers:
                observer.stop()
            return observers[0].records(), observers[1].records()
        finally:
            for process in [server, *(o.proc for o in observers)]:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def run_demo(settings: LabSettings, progress: Callable[[str], None]) -> int:
    result = lab.up(settings, progress=progress)
    print(f"lab {settings.prefix}: {len(result.plan.hosts)} hosts, {len(result.plan.containers)} containers, "
          f"manager {result.plan.manager.address} (up in {result.seconds:.1f}s)")
    results = ansible_ping(result.files.inventory_dir)
    failures = 0
    print(f"{'machine':<12} {'kind':<11} {'address':<15} ssh")
    for node in result.plan.nodes:
        outcome = results.get(node.name, {"status": "MISSING"})
        ok = outcome.get("status") == "SUCCESS" and outcome.get("ping") == "pong"
        failures += not ok
        print(f"{node.name:<12} {node.kind:<11} {node.address:<15} "
              f"{'pong' if ok else outcome.get('status') + ': ' + str(outcome.get('msg', ''))[:60]}")
    if failures:
        return 1
    progress("measuring iperf3 host1 -> host2 (1 Gbit/s, 3 s) with the observer on both hosts")
    sent, received = measure_flow(result.plan, "host1", "host2")
    rows, matched = breakdown(sent, received, "host1", "host2", device_names(result.plan))
    print()
    print(render(rows, matched, "where the latency of iperf3 host1 -> host2 went (one-way, data packets):"))
    print("(lab hosts share one kernel clock, so host1 and host2 stamps are on one timebase)")
    print(f"inventory: {result.files.inventory_dir}   (remove the lab: .venv/bin/latscope lab down)")
    return 0 if matched else 1
