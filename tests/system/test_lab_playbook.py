"""playbooks/lab.yml: the lab up and down through Ansible, changed only when something changed, check mode."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latscope.demo import ansible_env
from latscope.lab import lab as lab_ops
from latscope.lab.settings import STATE_ROOT

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def _free_prefix_and_range() -> tuple[str, str]:
    """A prefix no lab uses and a /24 that meets no address on this machine (other sessions run labs too)."""
    prefix = next(f"lp{n}" for n in range(100) if not (STATE_ROOT / f"lab-lp{n}").exists())
    taken = [ipaddress.IPv4Interface(word).network for word in
             subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout.split()
             if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)]
    for third in range(200, 256):
        candidate = ipaddress.IPv4Network(f"198.19.{third}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return prefix, str(candidate)
    raise RuntimeError("no free /24 in 198.19.200.0/21-198.19.255.0/24 for the playbook's lab")


def _play(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PLAYBOOK, str(REPO / "playbooks" / "lab.yml"), *extra], capture_output=True, text=True,
                          env=ansible_env(), timeout=600, check=False)


def _changed(proc: subprocess.CompletedProcess) -> int:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return int(re.search(r"^localhost\s+:.*\bchanged=(\d+)", proc.stdout, re.M).group(1))


@pytest.fixture
def lab_args():
    prefix, network = _free_prefix_and_range()
    args = ["-e", f"lab_prefix={prefix}", "-e", "lab_hosts=1", "-e", "lab_containers=0", "-e", f"lab_range={network}"]
    try:
        yield prefix, args
    finally:
        lab_ops.down(prefix)


def test_up_down_idempotent_and_check_mode(lab_args):
    prefix, args = lab_args
    bad = _play(*args, "-e", "lab_hosts=99")
    assert bad.returncode != 0 and "hosts: must be at most 8" in bad.stdout
    assert not lab_ops.status(prefix)["up"]

    assert _changed(_play(*args, "--check")) == 1
    assert not lab_ops.status(prefix)["up"]  # check mode predicted, changed nothing

    first = _play(*args)
    assert _changed(first) == 1
    status = lab_ops.status(prefix)
    assert status["up"] and all(node["sshd"] and node["netns_present"] for node in status["nodes"])
    assert f"inventory: {status['inventory']}" in first.stdout
    assert _changed(_play(*args)) == 0
    assert _changed(_play(*args, "--check")) == 0

    assert _changed(_play(*args, "-e", "lab_state=absent", "--check")) == 1
    assert lab_ops.status(prefix)["up"]
    assert _changed(_play(*args, "-e", "lab_state=absent")) == 1
    assert lab_ops.status(prefix) == {"prefix": prefix, "up": False}
    assert _changed(_play(*args, "-e", "lab_state=absent")) == 0

    wrong = _play(*args, "-e", "lab_state=gone")
    assert wrong.returncode != 0 and "lab_state must be present or absent" in wrong.stdout
