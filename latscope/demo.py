"""The README's main job on the local lab.

Bring the lab up, show that Ansible reaches every machine over real SSH, deploy
LatScope with ``deploy.yml``, measure a real flow between two hosts and one from
a container with ``measure.yml`` (time sync, observers, iperf3, the analysis),
and print where each flow's latency went, layer by layer, with the path of its
HTML report. ``ObserverProcess`` and ``measure_flow`` run the observer directly
(the tests use them).
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


DEMO_FLOWS = (("host1", "host2", 5201), ("host1-c1", "host2", 5202))


def play(inventory: Path, playbook: str, log: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run one of the collection's playbooks on the lab; its output goes to ``log`` (appended) and is returned."""
    started = time.monotonic()
    bindir = Path(sys.executable).parent
    proc = subprocess.run([str(bindir / "ansible-playbook"), "-i", str(inventory), str(REPO / "playbooks" / playbook),
                           *extra], capture_output=True, text=True, env={**ansible_env(), **(env or {})}, check=False)
    with log.open("a") as sink:
        sink.write(f"\n===== ansible-playbook {playbook} {' '.join(extra)} "
                   f"(exit {proc.returncode}, {time.monotonic() - started:.0f}s)\n{proc.stdout}{proc.stderr}")
    return proc.returncode, proc.stdout + proc.stderr


def recap(output: str) -> str:
    """'ok=.. changed=.. failed=..' summed over the PLAY RECAP lines of ``output``."""
    totals: dict[str, int] = {}
    for line in output.splitlines():
        if " : ok=" in line:
            for field in line.split(":", 1)[1].split():
                name, _sep, value = field.partition("=")
                if value.isdigit():
                    totals[name] = totals.get(name, 0) + int(value)
    return " ".join(f"{name}={totals.get(name, 0)}" for name in ("ok", "changed", "failed", "unreachable"))


def print_report(plan: LabPlan, secrets_file: Path, session: str) -> None:
    """The session's terminal report, read as the analysis user from the lab's MariaDB."""
    import pymysql
    import yaml

    from latscope.analysis import data, report_text

    secret = yaml.safe_load(secrets_file.read_text())
    with pymysql.connect(host=plan.manager.address, user="latscope_analysis", database="latscope",
                         password=secret["latscope_mysql_analysis_password"], connect_timeout=10) as connection:
        print(report_text.render(data.load(connection, session), color=sys.stdout.isatty()))


def run_demo(settings: LabSettings, progress: Callable[[str], None]) -> int:
    """Lab up, ping, deploy.yml, measure.yml on a host flow and a container flow, the breakdown of each."""
    result = lab.up(settings, progress=progress)
    plan, files = result.plan, result.files
    print(f"lab {settings.prefix}: {len(plan.hosts)} hosts, {len(plan.containers)} containers, "
          f"manager {plan.manager.address} (up in {result.seconds:.1f}s)")
    results = ansible_ping(files.inventory_dir)
    failures = 0
    print(f"{'machine':<12} {'kind':<11} {'address':<15} ssh")
    for node in plan.nodes:
        outcome = results.get(node.name, {"status": "MISSING"})
        ok = outcome.get("status") == "SUCCESS" and outcome.get("ping") == "pong"
        failures += not ok
        print(f"{node.name:<12} {node.kind:<11} {node.address:<15} "
              f"{'pong' if ok else outcome.get('status') + ': ' + str(outcome.get('msg', ''))[:60]}")
    if failures:
        return 1
    log = files.root / "demo.log"
    reports = files.root / "reports"
    print(f"(the playbooks' full output: {log})")
    progress("ansible-playbook deploy.yml: collectors on every host; Redis, MariaDB and their users on the manager")
    started = time.monotonic()
    code, output = play(files.inventory_dir, "deploy.yml", log)
    print(f"deploy.yml: {recap(output)} in {time.monotonic() - started:.0f}s")
    if code != 0:
        print(output[-3000:], file=sys.stderr)
        return 1
    stamp = time.strftime("%H%M%S")
    for src, dst, port in DEMO_FLOWS:
        if src not in {node.name for node in plan.nodes}:
            continue
        session = f"demo-{stamp}-{src}"
        spec = f"src={src} dst={dst} dport={port} duration=3s traffic=iperf3 rate=500M"
        progress(f"ansible-playbook measure.yml -e flow='{spec}'")
        started = time.monotonic()
        code, output = play(files.inventory_dir, "measure.yml", log, "-e", f"flow='{spec}'", "-e",
                            f"session={session}", env={"LATSCOPE_REPORT_DIR": str(reports)})
        print(f"\nmeasure.yml {src} -> {dst}: {recap(output)} in {time.monotonic() - started:.0f}s")
        if code != 0:
            print(output[-3000:], file=sys.stderr)
            return 1
        print_report(plan, files.secrets_file, session)
        print(f"HTML report: {reports / session / 'index.html'}")
    print(f"\ninventory: {files.inventory_dir}   (remove the lab: .venv/bin/latscope lab down)")
    return 0
