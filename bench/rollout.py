"""Fleet rollout: deploy.yml to a lab of 8 hosts, the first run and the idempotent re-run, in one run.

    .venv/bin/python bench/rollout.py [--hosts 8] [--forks 16] [--serial 100%] [--json FILE]

Brings up a lab of its own (prefix ``roll``, range 198.19.248.0/23, no containers), runs
``deploy.yml`` on it with the given ``--forks`` and ``latscope_serial``, then again, and prints
the wall time of both, the re-run as a ratio of the first, and the recap of each (the re-run must
report changed=0). The lab is removed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latscope.demo import ansible_env  # noqa: E402
from latscope.lab import lab as lab_ops  # noqa: E402
from latscope.lab.settings import LabSettings  # noqa: E402


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        hosts[host] = {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def deploy(inventory: Path, forks: int, serial: str) -> tuple[float, dict[str, dict[str, int]]]:
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                           str(REPO / "playbooks" / "deploy.yml"), "--forks", str(forks),
                           "-e", f"latscope_serial={serial}"],
                          capture_output=True, text=True, env=ansible_env(), check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"deploy.yml failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    return seconds, recap(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--serial", default="100%", help="latscope_serial: hosts per batch (number or percent)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    settings = LabSettings.from_dict({"prefix": "roll", "hosts": args.hosts, "containers": 0,
                                      "range": "198.19.248.0/23"})
    result = lab_ops.up(settings)
    try:
        inventory = result.files.inventory_dir
        first_s, first = deploy(inventory, args.forks, args.serial)
        print(f"first deploy to {args.hosts} hosts (forks {args.forks}, serial {args.serial}): {first_s:.1f}s", flush=True)
        again_s, again = deploy(inventory, args.forks, args.serial)
        changed = sum(host["changed"] for host in again.values())
        print(f"idempotent re-run: {again_s:.1f}s (ratio to the first {again_s / first_s:.2f}), changed={changed}")
        figures = {"hosts": args.hosts, "forks": args.forks, "serial": args.serial, "first_s": round(first_s, 1),
                   "rerun_s": round(again_s, 1), "rerun_ratio": round(again_s / first_s, 3),
                   "rerun_changed": changed, "first_recap": first, "rerun_recap": again}
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0 if changed == 0 else 1
    finally:
        lab_ops.down(settings.prefix)


if __name__ == "__main__":
    sys.exit(main())
