"""Time-sync error: LatScope's XDP prober next to ``ptp4l -S``, same lab link, same run.

    .venv/bin/python bench/timesync.py [--seconds 30]

Brings up a lab of its own (prefix ``tsb``, 198.19.248.0/23, 2 hosts, no containers) and
removes it at the end whatever happens. All lab namespaces share one kernel clock, so the
true offset between the manager and host1 is exactly 0 and every reported offset *is* an
error. For ``--seconds``, at the same time:

* LatScope: the XDP responder on host1's eth0, the prober on the manager's eth0 (t1 at
  tcx egress, t4 at XDP), one round per second of 10 bursts x 16 probes. Reported: the
  |offset| of every answered probe (NTP arithmetic, no filtering), of the minimum-delay
  probe of each burst, and of each round's fitted estimate, with the estimates' bounds.
* ptp4l (linuxptp, ``-S`` software timestamping, UDPv4, E2E): master in the manager's
  namespace, slave in host1's, both on the lab's eth0; the slave is ``free_running`` (it
  measures, it never steers the clock: all namespaces share the machine's clock), 16 Sync
  messages per second, and its ``master offset`` lines are its per-sample errors.

Prints median and p99 |error| of each, side by side, and the ratio to ptp4l.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ansible_collections.latscope.latscope.plugins.module_utils import clock  # noqa: E402
from latscope.lab import lab as lab_ops  # noqa: E402
from latscope.lab.settings import LabSettings  # noqa: E402
from latscope.timesync.prober import Prober, ProbeSettings, Target, estimate  # noqa: E402
from latscope.timesync.responder import Responder, ResponderSettings  # noqa: E402

SETTINGS = {"prefix": "tsb", "hosts": 2, "containers": 0, "range": "198.19.248.0/23"}
OFFSET_LINE = re.compile(r"master offset\s+(-?\d+)\s+s(\d)")
PTP_CONFIG = """[global]
free_running 1
logSyncInterval -4
logMinDelayReqInterval -4
logAnnounceInterval -2
announceReceiptTimeout 3
tx_timestamp_timeout 100
summary_interval -4
"""


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: list[float]) -> str:
    errors = [abs(v) for v in values]
    if not errors:
        return "no samples"
    return f"n={len(errors):6d}  median {statistics.median(errors):9.0f} ns   p99 {quantile(errors, 0.99):10.0f} ns"


class Ptp4l:
    """A ptp4l master in one namespace and a free-running slave in another; the slave's offsets."""

    def __init__(self, master_ns: str, slave_ns: str, workdir: Path) -> None:
        config = workdir / "ptp4l.conf"
        config.write_text(PTP_CONFIG)
        base = ["ptp4l", "-i", "eth0", "-S", "-4", "-E", "-m", "-q", "-f", str(config), "--step_threshold=0.00002"]
        self.master = subprocess.Popen(["ip", "netns", "exec", master_ns, *base, "--priority1=1"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.slave = subprocess.Popen(["ip", "netns", "exec", slave_ns, *base, "-s"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.offsets: list[int] = []
        self.counting = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.slave.stdout:
            self.lines.append(line)
            match = OFFSET_LINE.search(line)
            if match and self.counting:
                self.offsets.append(int(match.group(1)))
            elif match:
                self.offsets.append(int(match.group(1)))
                if len(self.offsets) >= 16:      # a path delay is known: from now on, count
                    self.offsets.clear()
                    self.counting = True

    def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.counting and time.monotonic() < deadline and self.slave.poll() is None:
            time.sleep(0.1)
        self.offsets.clear()
        return self.counting

    def stop(self) -> None:
        for proc in (self.slave, self.master):
            proc.terminate()
        for proc in (self.slave, self.master):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.reader.join(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if shutil.which("ptp4l") is None:
        print("ptp4l is missing: apt-get install linuxptp", file=sys.stderr)
        return 2
    settings = LabSettings.from_dict(SETTINGS)
    lab = lab_ops.up(settings)
    responder = prober = None
    try:
        plan = lab.plan
        manager, host1 = plan.manager, plan.node("host1")
        token = clock.new_token()
        responder = Responder(ResponderSettings(interface="eth0", manager_address=manager.address, token=token,
                                                netns=f"/run/netns/{host1.netns}"))
        responder.attach()
        prober = Prober("eth0", token, netns=f"/run/netns/{manager.netns}")
        target = Target("host1", host1.address)
        with tempfile.TemporaryDirectory(prefix="latscope-bench-") as tmp:
            ptp = Ptp4l(manager.netns, host1.netns, Path(tmp))
            if not ptp.wait_ready(60):
                print("ptp4l did not start measuring within 60 s: " + "".join(ptp.lines[-3:]), file=sys.stderr)
            per_probe, per_burst, estimates = [], [], []
            deadline = time.monotonic() + args.seconds
            round_settings = ProbeSettings(probes=16, bursts=10, burst_interval_s=0.05, reply_timeout_s=0.05)
            while time.monotonic() < deadline:
                started = time.monotonic()
                seen = prober.probe([target], round_settings)["host1"]
                per_probe += [s.offset for s in seen.samples]
                per_burst += [s.offset for s in clock.envelope(seen.samples)]
                estimates.append(estimate(seen))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            ptp.stop()
        ptp_offsets = list(ptp.offsets)
        good = [e for e in estimates if e.synchronised]
        print(f"time sync error against the truth (0), lab link manager -> host1, {args.seconds:.0f} s, same run")
        print(f"  LatScope, every probe        {describe(per_probe)}")
        print(f"  LatScope, min-delay of burst {describe(per_burst)}")
        print(f"  LatScope, fitted estimates   {describe([e.offset_ns for e in good])}   "
              f"(bound median {statistics.median([e.error_ns for e in good]) if good else 0:.0f} ns; "
              f"{sum(abs(e.offset_ns) <= e.error_ns for e in good)}/{len(good)} within their bound)")
        print(f"  ptp4l -S, master offset      {describe(ptp_offsets)}")
        if ptp_offsets and good:
            ours = statistics.median(abs(e.offset_ns) for e in good)
            theirs = statistics.median(abs(v) for v in ptp_offsets)
            ours99 = quantile([abs(e.offset_ns) for e in good], 0.99)
            theirs99 = quantile([abs(v) for v in ptp_offsets], 0.99)
            print(f"  ratio LatScope estimate / ptp4l: median {ours / max(theirs, 1):.2f}, p99 {ours99 / max(theirs99, 1):.2f}")
        elif not ptp_offsets:
            print(f"  (ptp4l reported no offsets; its last lines: {''.join(ptp.lines[-3:])!r})")
        print(f"  responder counters {responder.counters()}")
    finally:
        for component in (prober, responder):
            if component is not None:
                component.close()
        lab_ops.down(settings.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
