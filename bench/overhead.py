"""What the packet observer costs, measured on a lab of its own in one run.

    .venv/bin/python bench/overhead.py [--quick] [--json FILE]

Brings up a two-host lab (prefix ``bench``, range 198.19.252.0/23, no containers), then:

1. **off vs on, alternating** (ABBA order, so a drift of the machine hits both sides alike): each
   round runs an iperf3 bulk flow host1 -> host2 and a TCP request/response ping-pong (64-byte
   messages, TCP_NODELAY) with no observer, and the same with ``latscope observe`` running on both
   hosts (sampling every byte position ``--size``, every port), as a collector would. Medians of
   the rounds are compared: throughput on/off (target >= 0.99), round-trip latency on/off.
   ``kernel.bpf_stats_enabled`` is 0 during this phase so the ratios are the observer's alone.
2. **per hook**: one more "on" round with ``kernel.bpf_stats_enabled=1``; the run time and run count
   of each of our programs (found through the observers' own file descriptors, so other BPF users
   of the machine are not counted) give the average ns per call during the bulk flow and during the
   ping-pong (target <= 100 ns). ``bpf_stats_enabled`` is put back to what it was.
3. records/s delivered by the observers during the bulk flow, and every drop counter they report.

Everything runs between lab namespaces and is bounded in time; the lab is removed at the end
whatever happens. See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PREFIX, RANGE = "bench", "198.19.252.0/23"
IPERF_PORT, RR_PORT = 5301, 5302
MESSAGE = 64
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
TARGET_THROUGHPUT_RATIO = 0.99
TARGET_HOOK_NS = 100


# ---- request/response roles (run inside a lab namespace by re-executing this file) -------------

def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def rr_server(address: str, port: int) -> int:
    """Echo MESSAGE-byte requests, one connection after the other, until killed."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4)
    while True:
        conn = listener.accept()[0]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                request = _recv_exactly(conn, MESSAGE)
                if len(request) < MESSAGE:
                    break
                conn.sendall(request)


def rr_client(address: str, port: int, count: int) -> int:
    """``count`` round trips; prints JSON: median, p99, mean (ns) and round trips per second."""
    conn = socket.create_connection((address, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"r" * MESSAGE
    for _warm in range(min(1000, count // 10)):       # warm-up: caches, cwnd, the scheduler's idea of us
        conn.sendall(request)
        _recv_exactly(conn, MESSAGE)
    times = []
    clock = time.perf_counter_ns
    started = clock()
    for _trip in range(count):
        before = clock()
        conn.sendall(request)
        if len(_recv_exactly(conn, MESSAGE)) != MESSAGE:
            raise SystemExit("server closed the connection")
        times.append(clock() - before)
    elapsed = clock() - started
    conn.close()
    times.sort()
    print(json.dumps({"p50_ns": times[len(times) // 2], "p99_ns": times[int(len(times) * 0.99)],
                      "mean_ns": sum(times) / len(times), "per_s": count / (elapsed / 1e9)}))
    return 0


# ---- the bench ---------------------------------------------------------------------------------

@dataclass
class Round:
    mode: str                      # "off" or "on"
    gbps: float = 0.0
    rr: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    records: int = 0               # records (both hosts) stamped during the bulk flow
    bulk_seconds: float = 0.0
    observer_cpu: float = 0.0      # CPU seconds of the two observer processes (user space) during the bulk flow


def _netns(name: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


class Observers:
    """``latscope observe`` in host1 and host2 (each observes its own namespace, uplink eth0)."""

    def __init__(self, plan, workdir: Path, size: int, bpf_dir: str | None) -> None:
        from latscope.demo import ObserverProcess

        args = ["--size", str(size), "--seconds", "600"]
        self.procs = {}
        for name in ("host1", "host2"):
            node = plan.node(name)
            process = ObserverProcess.__new__(ObserverProcess)
            process.out, process.stderr = workdir / f"{name}.jsonl", []
            if bpf_dir:     # the same CLI with files/bpf replaced: to measure a modified copy of the C
                code = ("import sys; from pathlib import Path; import latscope.collector.observer as o; "
                        "o.BPF_DIR = Path(sys.argv.pop(1)); from latscope.cli import main; sys.exit(main())")
                command = [sys.executable, "-c", code, bpf_dir]
            else:
                command = [sys.executable, "-m", "latscope"]
            with process.out.open("w") as sink:
                process.proc = subprocess.Popen(_netns(node.netns, *command, "observe", "--host", name, *args),
                                                stdout=sink, stderr=subprocess.PIPE, text=True)
            self.procs[name] = process
        try:
            for process in self.procs.values():
                process.wait_attached()
        except Exception:
            self.kill()
            raise

    def program_ids(self) -> set[int]:
        """The BPF programs these processes hold (fdinfo ``prog_id``), i.e. exactly ours."""
        ids = set()
        for process in self.procs.values():
            fd_dir = Path(f"/proc/{process.proc.pid}/fdinfo")
            for entry in fd_dir.iterdir():
                try:
                    text = entry.read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        return ids

    def stop(self) -> dict[str, dict]:
        return {name: process.stop() for name, process in self.procs.items()}

    def cpu_seconds(self) -> float:
        """User + system CPU time the observer processes have used (``ip netns exec`` execs into them)."""
        total = 0
        for process in self.procs.values():
            fields = Path(f"/proc/{process.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])     # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        for process in self.procs.values():
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()

    def records_between(self, start_ns: int, end_ns: int) -> int:
        count = 0
        for process in self.procs.values():
            with process.out.open() as lines:
                for line in lines:
                    first = min(stamp[1] for stamp in json.loads(line)["stamps"])
                    count += start_ns <= first <= end_ns
        return count


def program_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) summed over ``ids`` (both observers load the same programs)."""
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    totals: dict[str, tuple[int, int]] = {}
    for prog in shown:
        if prog.get("id") in ids:
            time_ns, count = totals.get(prog["name"], (0, 0))
            totals[prog["name"]] = (time_ns + prog.get("run_time_ns", 0), count + prog.get("run_cnt", 0))
    return totals


def stats_delta(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    return {name: (after[name][0] - before.get(name, (0, 0))[0], after[name][1] - before.get(name, (0, 0))[1])
            for name in after}


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        from latscope.lab.settings import LabSettings

        self.options = options
        self.settings = LabSettings.from_dict({"prefix": PREFIX, "hosts": 2, "containers": 0, "range": RANGE})
        self.plan = None
        self.servers: list[subprocess.Popen] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="latscope-bench-"))

    def log(self, text: str) -> None:
        print(f"  .. {text}", file=sys.stderr, flush=True)

    # -- traffic --

    def bulk(self) -> tuple[float, int, int]:
        """One iperf3 run host1 -> host2: (Gbit/s received, start, end in CLOCK_MONOTONIC ns)."""
        host1, host2 = self.plan.node("host1"), self.plan.node("host2")
        start = time.monotonic_ns()
        run = subprocess.run(_netns(host1.netns, "iperf3", "-c", host2.address, "-p", str(IPERF_PORT),
                                    "-t", str(self.options.seconds), "-J"),
                             capture_output=True, text=True, timeout=self.options.seconds + 60, check=False)
        end = time.monotonic_ns()
        if run.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {run.stdout[-500:]}{run.stderr[-500:]}")
        return json.loads(run.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9, start, end

    def ping_pong(self) -> dict:
        host1, host2 = self.plan.node("host1"), self.plan.node("host2")
        run = subprocess.run(_netns(host1.netns, sys.executable, __file__, "--rr-client", host2.address,
                                    str(RR_PORT), str(self.options.round_trips)),
                             capture_output=True, text=True, timeout=300, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"request/response client failed: {run.stderr[-500:]}")
        return json.loads(run.stdout)

    # -- phases --

    def one_round(self, mode: str, profile: bool = False) -> tuple[Round, dict]:
        result, hooks = Round(mode), {}
        observers = None
        try:
            if mode == "on":
                workdir = self.workdir / f"round-{time.monotonic_ns()}"
                workdir.mkdir()
                observers = Observers(self.plan, workdir, self.options.size, self.options.bpf_dir)
                ids = observers.program_ids()
                snapshot = program_stats(ids)
                cpu_before = observers.cpu_seconds()
            result.gbps, start, end = self.bulk()
            result.bulk_seconds = (end - start) / 1e9
            if observers:
                result.observer_cpu = observers.cpu_seconds() - cpu_before
            if profile:
                after_bulk = program_stats(ids)
                hooks["bulk"] = stats_delta(snapshot, after_bulk)
                hooks["bulk_seconds"] = result.bulk_seconds
            result.rr = self.ping_pong()
            if profile:
                hooks["rr"] = stats_delta(after_bulk, program_stats(ids))
            if observers:
                result.counters = observers.stop()
                result.records = observers.records_between(start, end)
        finally:
            if observers:
                observers.kill()
        return result, hooks

    def run(self) -> dict:
        from latscope.lab import lab as lab_ops
        from latscope.lab.netops import wait_listening

        previous_stats = STATS_SYSCTL.read_text().strip()
        started = time.monotonic()
        try:
            self.log(f"lab {PREFIX} up ({RANGE})")
            self.plan = lab_ops.up(self.settings).plan
            host2 = self.plan.node("host2")
            self.servers.append(subprocess.Popen(_netns(host2.netns, "iperf3", "-s", "-B", host2.address,
                                                        "-p", str(IPERF_PORT)),
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.servers.append(subprocess.Popen(_netns(host2.netns, sys.executable, __file__, "--rr-server",
                                                        host2.address, str(RR_PORT))))
            wait_listening(host2.netns, host2.address, IPERF_PORT)
            wait_listening(host2.netns, host2.address, RR_PORT)

            STATS_SYSCTL.write_text("0\n")
            rounds = []
            for index in range(self.options.rounds):
                for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
                    self.log(f"round {index + 1}/{self.options.rounds}: observer {mode}")
                    rounds.append(self.one_round(mode)[0])

            self.log("per-hook profile: observer on, kernel.bpf_stats_enabled=1")
            STATS_SYSCTL.write_text("1\n")
            profile_round, hooks = self.one_round("on", profile=True)
            STATS_SYSCTL.write_text(previous_stats + "\n")
            return {"rounds": rounds, "profile": profile_round, "hooks": hooks,
                    "seconds": time.monotonic() - started, "bpf_stats_enabled_before": previous_stats}
        finally:
            STATS_SYSCTL.write_text(previous_stats + "\n")
            for server in self.servers:
                if server.poll() is None:
                    server.send_signal(signal.SIGTERM)
                    try:
                        server.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
            shutil.rmtree(self.workdir, ignore_errors=True)
            if not self.options.keep_lab:
                self.log(f"lab {PREFIX} down")
                lab_ops.down(PREFIX)


# ---- report ------------------------------------------------------------------------------------

def _median(values):
    return statistics.median(values) if values else float("nan")


def report(result: dict, options: argparse.Namespace) -> dict:
    rounds = result["rounds"]
    off = [r for r in rounds if r.mode == "off"]
    on = [r for r in rounds if r.mode == "on"]
    rows = [
        ("iperf3 host1->host2 (Gbit/s)", [r.gbps for r in off], [r.gbps for r in on], 1),
        ("ping-pong RTT p50 (us)", [r.rr["p50_ns"] / 1e3 for r in off], [r.rr["p50_ns"] / 1e3 for r in on], 1),
        ("ping-pong RTT p99 (us)", [r.rr["p99_ns"] / 1e3 for r in off], [r.rr["p99_ns"] / 1e3 for r in on], 1),
        ("ping-pong round trips/s", [r.rr["per_s"] for r in off], [r.rr["per_s"] for r in on], 0),
    ]
    summary = {"rounds": len(off), "bulk_seconds": options.seconds, "round_trips": options.round_trips,
               "sample_size": options.size, "metrics": {}, "hooks": {}}
    print()
    print(f"LatScope observer overhead: {len(off)} rounds each way (ABBA), iperf3 -t {options.seconds}, "
          f"{options.round_trips} round trips of {MESSAGE} B, sampling.size {options.size}, every port")
    print(f"{'':32s} {'off':>10s} {'on':>10s} {'on/off':>8s}   per round (off | on)")
    for name, values_off, values_on, digits in rows:
        a, b = _median(values_off), _median(values_on)
        ratio = b / a if a else float("nan")
        summary["metrics"][name] = {"off": a, "on": b, "ratio": ratio, "off_runs": values_off, "on_runs": values_on}
        per_round = " ".join(f"{v:.{digits}f}" for v in values_off) + " | " + " ".join(f"{v:.{digits}f}"
                                                                                       for v in values_on)
        print(f"{name:32s} {a:10.{digits}f} {b:10.{digits}f} {ratio:8.3f}   {per_round}")
    tput = summary["metrics"]["iperf3 host1->host2 (Gbit/s)"]["ratio"]
    print(f"throughput ratio {tput:.3f}: target >= {TARGET_THROUGHPUT_RATIO} "
          f"{'MET' if tput >= TARGET_THROUGHPUT_RATIO else 'NOT MET'}")

    # records and drops (the "on" rounds)
    rates = [r.records / r.bulk_seconds for r in on if r.bulk_seconds]
    cpu = [r.observer_cpu / r.bulk_seconds for r in on if r.bulk_seconds]
    drops = {}
    for r in on:
        for host, counters in r.counters.items():
            for key in ("ringbuf_full", "map_full", "stamps_overflow", "keys_truncated", "decode_errors"):
                drops[key] = drops.get(key, 0) + counters.get(key, 0)
            drops["incomplete"] = drops.get("incomplete", 0) + counters.get("created", 0) - counters.get("emitted", 0) \
                - counters.get("ringbuf_full", 0)
            drops["written != emitted"] = drops.get("written != emitted", 0) + abs(
                counters.get("written", 0) - counters.get("emitted", 0))
    print(f"records/s delivered (both hosts, during the bulk flow): median {_median(rates):,.0f} "
          f"(per round: {', '.join(f'{x:,.0f}' for x in rates)})")
    print("loss counters summed over the on rounds: " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    summary["records_per_s"] = {"median": _median(rates), "runs": rates}
    summary["drops"] = drops
    print(f"observer processes (user space, both hosts) during the bulk flow: median {_median(cpu):.0%} of one CPU "
          f"(per round: {', '.join(f'{x:.0%}' for x in cpu)}; the machine has {os.cpu_count()})")
    summary["observer_cpu_share_bulk"] = {"median": _median(cpu), "runs": cpu}

    # per hook
    hooks = result["hooks"]
    bulk, rr, seconds = hooks.get("bulk", {}), hooks.get("rr", {}), hooks.get("bulk_seconds", 1)
    print()
    print(f"per hook, kernel.bpf_stats_enabled=1 (profile round: {result['profile'].gbps:.2f} Gbit/s); "
          f"target <= {TARGET_HOOK_NS} ns per call")
    print(f"{'program':28s} {'bulk calls/s':>13s} {'bulk ns/call':>13s} {'rr calls':>10s} {'rr ns/call':>11s}")
    total_ns = 0
    for name in sorted(set(bulk) | set(rr)):
        b_time, b_count = bulk.get(name, (0, 0))
        r_time, r_count = rr.get(name, (0, 0))
        total_ns += b_time
        b_avg = b_time / b_count if b_count else float("nan")
        r_avg = r_time / r_count if r_count else float("nan")
        flag = "" if (not b_count or b_avg <= TARGET_HOOK_NS) and (not r_count or r_avg <= TARGET_HOOK_NS) else "  > target"
        print(f"{name:28s} {b_count / seconds:13,.0f} {b_avg:13.0f} {r_count:10,d} {r_avg:11.0f}{flag}")
        summary["hooks"][name] = {"bulk_calls_per_s": b_count / seconds, "bulk_ns": b_avg, "rr_calls": r_count,
                                  "rr_ns": r_avg}
    print(f"all programs during the bulk flow: {total_ns / seconds / 1e9:.1%} of one CPU")
    summary["bpf_cpu_share_bulk"] = total_ns / seconds / 1e9
    summary["seconds"] = result["seconds"]
    print(f"\nbench took {result['seconds']:.0f} s; kernel.bpf_stats_enabled restored to "
          f"{result['bpf_stats_enabled_before']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s and 5000 round trips (< 60 s)")
    parser.add_argument("--rounds", type=int, help="off/on pairs (default 5; --quick 3)")
    parser.add_argument("--seconds", type=int, help="iperf3 seconds per run (default 3; --quick 1)")
    parser.add_argument("--round-trips", type=int, help="ping-pong round trips per run (default 20000; --quick 5000)")
    parser.add_argument("--size", type=int, default=65536, help="sampling.size of the observers (default 65536)")
    parser.add_argument("--bpf-dir", help="load observer.bpf.c + latscope.h from this directory instead of files/bpf")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep-lab", action="store_true", help="leave the bench lab up at the end")
    parser.add_argument("--rr-server", nargs=2, metavar=("ADDRESS", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--rr-client", nargs=3, metavar=("ADDRESS", "PORT", "COUNT"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.rr_server:
        return rr_server(options.rr_server[0], int(options.rr_server[1]))
    if options.rr_client:
        return rr_client(options.rr_client[0], int(options.rr_client[1]), int(options.rr_client[2]))
    if os.geteuid() != 0:
        parser.error("needs root (namespaces, BPF)")
    options.rounds = options.rounds or (3 if options.quick else 5)
    options.seconds = options.seconds or (1 if options.quick else 3)
    options.round_trips = options.round_trips or (5000 if options.quick else 20000)
    if options.bpf_dir and not (Path(options.bpf_dir) / "observer.bpf.c").is_file():
        parser.error(f"--bpf-dir {options.bpf_dir}: no observer.bpf.c there")
    summary = report(Bench(options).run(), options)
    if options.json:
        Path(options.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
