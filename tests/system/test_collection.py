"""The collection as users get it: it builds, installs, and passes ansible-test sanity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_TEST = VENV_BIN.parent / "ansible-test" / "bin" / "ansible-test"
LINT_BIN = VENV_BIN.parent / "ansible-lint" / "bin"


@pytest.fixture(scope="module")
def collection_tree(collection_copy) -> Path:
    """A copy of the checkout at .../ansible_collections/latscope/latscope, as ansible-test requires."""
    return collection_copy("collections")


def _controller_targets(targets_dir: Path) -> list[str]:
    """The integration targets that need nothing but the controller: not the setup_* helpers, and not the ones
    that drive a lab (alias latscope/lab; tests/system/test_deploy.py runs those against its lab)."""
    found = []
    for path in sorted(targets_dir.iterdir()):
        aliases = (path / "aliases").read_text().split() if (path / "aliases").is_file() else []
        if not path.name.startswith("setup_") and "latscope/lab" not in aliases:
            found.append(path.name)
    return found


def test_galaxy_build_and_install(tmp_path, collection_tree):
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path),
                    str(collection_tree)], check=True, capture_output=True, text=True)
    tarball = tmp_path / f"latscope-latscope-{galaxy['version']}.tar.gz"
    assert tarball.is_file()
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert "MANIFEST.json" in names and "plugins/module_utils/errors.py" in names
    assert not any(name.startswith((".ci", ".venv", "bench/")) or name == "run.sh" for name in names)

    install_root = tmp_path / "installed"
    proc = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(install_root),
                           str(tarball)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((install_root / "ansible_collections" / "latscope" / "latscope" / "MANIFEST.json")
                          .read_text())
    assert manifest["collection_info"]["version"] == galaxy["version"]
    listed = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "-p", str(install_root),
                             "latscope.latscope", "--format", "json"], capture_output=True, text=True, check=True)
    assert galaxy["version"] in listed.stdout


@pytest.mark.slow
def test_ansible_test_sanity(collection_tree):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_tree.parents[2]))
    proc = subprocess.run([str(ANSIBLE_TEST), "sanity", "--local", "--requirements", "--python", "3.11",
                           "--color", "no"], cwd=collection_tree, capture_output=True, text=True, env=env,
                          timeout=1800, check=False)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith(("ERROR", "FATAL"))]
    assert proc.returncode == 0, "\n".join(problems) or proc.stderr[-3000:]
    assert "Running sanity test \"validate-modules\"" in proc.stdout + proc.stderr


def test_ansible_test_integration_targets(collection_tree):
    """The controller-side targets under tests/integration/targets run with ansible-test on this machine."""
    targets = _controller_targets(collection_tree / "tests" / "integration" / "targets")
    assert "flow_spec" in targets and not [name for name in targets if name.startswith("lab_")]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_tree.parents[2]))
    proc = subprocess.run([str(ANSIBLE_TEST), "integration", "--local", "--python", "3.11", "--color", "no", *targets],
                          cwd=collection_tree, capture_output=True, text=True, env=env, timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    for target in targets:
        assert f"Running {target} integration test role" in output


@pytest.mark.slow
def test_ansible_lint_production(collection_tree):
    """ansible-lint's production profile passes on the collection (its own venv: requirements/lint.txt)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_tree.parents[2]),
               PATH=f"{LINT_BIN}:{os.environ.get('PATH', '')}", NO_COLOR="1")
    proc = subprocess.run([str(LINT_BIN / "ansible-lint"), "--profile", "production", "--nocolor", "-f", "pep8"],
                          cwd=collection_tree, capture_output=True, text=True, env=env, timeout=1200, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output, output[-3000:]
