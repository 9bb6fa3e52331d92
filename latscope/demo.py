"""The README's main job on the local lab.

For now: bring the lab up and show that Ansible reaches every machine over
real SSH. Later issues extend this to deploy, measure a flow and print the
breakdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from latscope.lab import lab
from latscope.lab.settings import LabSettings

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
    print(f"inventory: {result.files.inventory_dir}   (remove the lab: .venv/bin/latscope lab down)")
    return 1 if failures else 0
