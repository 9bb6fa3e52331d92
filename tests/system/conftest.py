"""Fixtures for system tests: real namespaces, real sshd, Redis and MariaDB.

The test lab uses its own prefix and range so that it never meets a lab a
person brought up with the defaults; it is torn down at the end of the session
whatever happened (and .ci/run removes every lab again afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latscope.lab import lab as lab_ops
from latscope.lab.settings import LabSettings

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TEST_LAB = {"prefix": "lt", "hosts": 2, "containers": 1, "range": "198.19.0.0/16"}


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        raise pytest.UsageError("the system tests need root (namespaces, BPF); run them as root")


@pytest.fixture(scope="session")
def lab_settings() -> LabSettings:
    return LabSettings.from_dict(TEST_LAB)


@pytest.fixture(scope="session")
def lab(lab_settings):
    """A lab that is up for the whole session."""
    lab_ops.down(lab_settings.prefix)
    result = lab_ops.up(lab_settings)
    try:
        yield result
    finally:
        lab_ops.down(lab_settings.prefix)


@pytest.fixture(scope="session")
def lab_secrets(lab) -> dict:
    return yaml.safe_load(lab.files.secrets_file.read_text())


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
