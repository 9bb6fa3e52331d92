"""deploy.yml, measure.yml and teardown.yml over real SSH on the session's lab: the ansible-test integration targets
tests/integration/targets/lab_* (what each one checks is in its runme.sh), one test per target, in order.

They run in a copy of the collection (ansible-test needs it at .../ansible_collections/latscope/latscope) whose
tests/integration/integration_config.yml names the lab: ansible-test passes runme.sh none of our environment.
The controller's Python is this venv's (--python-interpreter): modules delegated to localhost need redis and
PyMySQL. Each target's play output and snapshots are kept under the copy's tests/output/lab/TARGET.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.control import RedisSettings, connect
from latscope.demo import ansible_env
from latscope.lab.services import wait_for

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_TEST = VENV_BIN.parent / "ansible-test" / "bin" / "ansible-test"
# In the order they build on each other: what deploy puts there the others measure, refuse to touch, check for
# secrets, and finally remove.
# secrets, and finally remove. The per-host Redis user checks run on the deployed lab before lab_teardown.
TARGETS = ("lab_deploy", "lab_measure", "lab_bad_inputs", "lab_secrets")
LAST = "lab_teardown"
NEEDS_DEPLOY = {"lab_measure", "lab_bad_inputs", "lab_secrets"}


@pytest.fixture(scope="module")
def lab_targets(lab, collection_copy):
    """The collection copy the targets run in, naming the lab; and which targets passed or failed so far.

    Whatever happens, nothing deployed is left on the session's lab (later tests use it): when lab_teardown did
    not pass, teardown.yml runs once more.
    """
    tree = collection_copy("lab-targets")
    config = {"latscope_lab_inventory": str(lab.files.inventory_dir)}
    (tree / "tests" / "integration" / "integration_config.yml").write_text(yaml.safe_dump(config))
    outcome: dict[str, bool] = {}
    try:
        yield tree, outcome
    finally:
        if not outcome.get(LAST):
            subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(lab.files.inventory_dir),
                            str(REPO / "playbooks" / "teardown.yml")], capture_output=True, env=ansible_env(),
                           timeout=900, check=False)


def _run_target(lab_targets, target: str) -> None:
    tree, outcome = lab_targets
    if target in NEEDS_DEPLOY and not outcome.get("lab_deploy"):
        pytest.fail(f"{target} needs what lab_deploy deploys, and lab_deploy did not pass")
    started = time.monotonic()
    # A home of its own: what Ansible and the roles keep there (~/.ansible, the code bundle under ~/.cache) goes
    # with the copy instead of piling up in the user's home, one bundle per copy.
    home = tree.parents[2] / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tree.parents[2]), HOME=str(home))
    proc = subprocess.run([str(ANSIBLE_TEST), "integration", "--local", "--python-interpreter", sys.executable,
                           "--allow-destructive", "--allow-unsupported", "--color", "no", target],
                          cwd=tree, capture_output=True, text=True, env=env, timeout=1800, check=False)
    seconds = time.monotonic() - started
    kept = tree / "tests" / "output" / "lab" / target
    produced = tree / "tests" / "output" / ".tmp" / "output_dir" / target
    if produced.is_dir():
        shutil.move(str(produced), str(kept))
    output = proc.stdout + proc.stderr
    outcome[target] = proc.returncode == 0
    print(f"{target}: {seconds:.0f} s\n{proc.stdout}")
    assert proc.returncode == 0, f"{target} failed after {seconds:.0f} s (play output in {kept}):\n{output[-8000:]}"
    assert f"Running {target} integration test script" in output, output[-3000:]


@pytest.mark.parametrize("target", TARGETS)
def test_integration_target(lab_targets, target):
    _run_target(lab_targets, target)


def _play(lab, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(lab.files.inventory_dir),
                           str(REPO / "playbooks" / playbook), *extra],
                          capture_output=True, text=True, env=ansible_env(), timeout=1200, check=False)


def test_each_collector_logs_in_as_its_own_redis_user(lab_targets, lab, lab_secrets, lab_collector_passwords):
    """The deployed collectors are connected as latscope-host1 and latscope-host2, each with its own password."""
    if not lab_targets[1].get("lab_deploy"):
        pytest.fail("needs what lab_deploy deploys, and lab_deploy did not pass")
    admin = connect(RedisSettings(host=lab.plan.manager.address, username="latscope-admin",
                                  password=lab_secrets["latscope_redis_admin_password"]))
    try:
        def both_connected():
            users = {entry["user"] for entry in admin.client_list()}
            return users if {"latscope-host1", "latscope-host2"} <= users else None

        wait_for(both_connected, "the collectors' own users in CLIENT LIST", timeout=60, interval=0.2)
    finally:
        admin.close()
    generated = lab_collector_passwords
    assert sorted(generated) == ["host1 collector", "host2 collector"]
    assert generated["host1 collector"] != generated["host2 collector"]
    for host in ("host1", "host2"):
        config = (lab.files.host_root(host) / "etc" / "latscope" / "collector.yml").read_text()
        assert f'user: "latscope-{host}"' in config
        password_file = lab.files.host_root(host) / "etc" / "latscope" / "redis.password"
        assert password_file.read_text() == generated[f"{host} collector"]
        assert password_file.stat().st_mode & 0o777 == 0o600


def test_an_observer_without_its_password_on_the_manager_stops_in_the_preflight_saying_why(lab_targets, lab):
    """A host the manager play has not run for yet (its password file missing): one clear failure, nothing done."""
    if not lab_targets[1].get("lab_deploy"):
        pytest.fail("needs what lab_deploy deploys, and lab_deploy did not pass")
    run = _play(lab, "deploy.yml", "--limit", "host1", "-e", "observer_redis_password_file=/nonexistent/host1.password")
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    assert ("observer: manager has no Redis password for host1 (/nonexistent/host1.password): "
            "run deploy.yml's manager play first") in output, output[-2000:]
    recap = dict(re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", run.stdout, re.M))
    assert recap.get("host1") == "0", run.stdout[-2000:]


def test_teardown_target_last(lab_targets):
    _run_target(lab_targets, LAST)
