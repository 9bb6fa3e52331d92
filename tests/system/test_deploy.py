"""deploy.yml, measure.yml and teardown.yml over real SSH on the session's lab: the ansible-test integration targets
tests/integration/targets/lab_* (what each one checks is in its runme.sh), one test per target, in order.

They run in a copy of the collection (ansible-test needs it at .../ansible_collections/latscope/latscope) whose
tests/integration/integration_config.yml names the lab: ansible-test passes runme.sh none of our environment.
The controller's Python is this venv's (--python-interpreter): modules delegated to localhost need redis and
PyMySQL. Each target's play output and snapshots are kept under the copy's tests/output/lab/TARGET.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from latscope.demo import ansible_env

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_TEST = VENV_BIN.parent / "ansible-test" / "bin" / "ansible-test"
# In the order they build on each other: what deploy puts there the others measure, refuse to touch, check for
# secrets, and finally remove.
TARGETS = ("lab_deploy", "lab_measure", "lab_bad_inputs", "lab_secrets", "lab_teardown")
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
        if not outcome.get("lab_teardown"):
            subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(lab.files.inventory_dir),
                            str(REPO / "playbooks" / "teardown.yml")], capture_output=True, env=ansible_env(),
                           timeout=900, check=False)


@pytest.mark.parametrize("target", TARGETS)
def test_integration_target(lab_targets, target):
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
