"""Fixtures for system tests: real namespaces, real sshd, Redis and MariaDB.

Each test session gets a lab of its own: a free *slot* gives it a prefix
(``t<slot>``) and a range (``198.19.<2*slot>.0/23``) that meet neither a lab a
person brought up with the defaults (198.18.0.0/16) nor another test session
running at the same time. It is torn down at the end of the session whatever
happened (and .ci/run removes every lab again afterwards).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latscope.lab import lab as lab_ops
from latscope.lab.settings import LabSettings

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MAX_SLOTS = 64


def _free_slot() -> int:
    from latscope.lab import netops
    from latscope.lab.settings import STATE_ROOT

    taken = netops.namespaces()
    for slot in range(MAX_SLOTS):
        if not (STATE_ROOT / f"lab-t{slot}").exists() and f"t{slot}-mgr" not in taken:
            return slot
    raise RuntimeError(f"all {MAX_SLOTS} test lab slots are in use; run `latscope lab down --all`")


def _collection_files() -> list[str]:
    """Tracked files plus new ones git does not ignore: what a commit of the work tree would hold."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(name for name in out.split("\0") if name and (REPO / name).is_file())


@pytest.fixture(scope="session")
def collection_copy(tmp_path_factory):
    """Make a copy of the checkout at DIR/ansible_collections/latscope/latscope, as ansible-test requires it."""
    def copy(name: str) -> Path:
        root = tmp_path_factory.mktemp(name) / "ansible_collections" / "latscope" / "latscope"
        for file_name in _collection_files():
            target = root / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / file_name, target)
        return root
    return copy


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        raise pytest.UsageError("the system tests need root (namespaces, BPF); run them as root")


@pytest.fixture(scope="session")
def lab_slot() -> int:
    """This session's slot: names and addresses no other lab uses."""
    return _free_slot()


@pytest.fixture(scope="session")
def lab_settings(lab_slot) -> LabSettings:
    return LabSettings.from_dict({"prefix": f"t{lab_slot}", "hosts": 2, "containers": 1,
                                  "range": f"198.19.{2 * lab_slot}.0/23"})


@pytest.fixture(scope="session")
def lab(lab_settings):
    """A lab that is up for the whole session."""
    result = lab_ops.up(lab_settings)
    try:
        yield result
    finally:
        lab_ops.down(lab_settings.prefix)


@pytest.fixture(scope="session")
def lab_secrets(lab) -> dict:
    return yaml.safe_load(lab.files.secrets_file.read_text())


@pytest.fixture
def lab_collector_passwords(lab) -> dict[str, str]:
    """The Redis passwords deploy.yml's manager play generated for the lab's collectors, read when a test starts
    (after its module-scoped fixtures: none before a deploy ran)."""
    found = {}
    for node in lab.plan.hosts:
        path = lab.files.redis_collector_password(node.name)
        if path.exists():
            found[f"{node.name} collector"] = path.read_text()
    return found


def _in_netns(netns: str, argv: list[str], env: dict | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def in_netns():
    """Run ``argv`` inside a namespace (with extra ``env``) and return the finished process."""
    return _in_netns


@pytest.fixture(scope="session")
def python() -> str:
    """The venv interpreter (sees bcc, redis, pymysql), usable inside any lab namespace."""
    return str(VENV_BIN / "python")
