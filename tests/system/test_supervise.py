"""latscope supervise: a daemon kept running where there is no systemd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from latscope.lab.services import wait_for


def _cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "latscope", "supervise", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


@pytest.fixture
def paths(tmp_path):
    pidfile = tmp_path / "run" / "sleeper.pid"
    yield pidfile, tmp_path / "log" / "sleeper.log"
    _cli("stop", "--pidfile", str(pidfile))


def test_start_is_idempotent_restarts_after_a_crash_and_stop_removes_everything(paths):
    pidfile, log = paths
    command = ["--", sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)"]
    first = _cli("start", "--pidfile", str(pidfile), "--log", str(log), *command)
    assert first["changed"] is True
    supervisor = first["pid"]
    again = _cli("start", "--pidfile", str(pidfile), "--log", str(log), *command)
    assert again == {"changed": False, "pid": supervisor}

    child = wait_for(lambda: _children(supervisor), "the child", timeout=20)[0]
    os.kill(child, signal.SIGKILL)                     # a crash
    replacement = wait_for(lambda: [c for c in _children(supervisor) if c != child], "a restarted child", timeout=30)[0]
    state = _cli("status", "--pidfile", str(pidfile))
    assert state["running"] and state["restarts"] == 1 and state["last_exit"] == -signal.SIGKILL
    assert log.read_text().count("up\n") == 2

    assert _cli("stop", "--pidfile", str(pidfile)) == {"changed": True}
    assert not Path(f"/proc/{supervisor}").exists() or "Z" in Path(f"/proc/{supervisor}/stat").read_text().split()[2]
    wait_for(lambda: not Path(f"/proc/{replacement}").exists(), "the child to end", timeout=20)
    assert not pidfile.exists()
    assert _cli("stop", "--pidfile", str(pidfile)) == {"changed": False}
