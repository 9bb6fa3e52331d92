"""The latscope_seed inventory plugin, through a real ansible-inventory / ansible-playbook run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latscope.demo import ansible_env

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "unit" / "fixtures" / "seedconf"
BIN = Path(sys.executable).parent
SEED_SECRETS = ("seed-ssh-secret", "seed-mysql-secret")


@pytest.fixture
def seed_dir(tmp_path) -> Path:
    """A seed checkout's conf/ next to an inventory source file, and a (test-only) vars file of secrets."""
    shutil.copytree(FIXTURES, tmp_path / "conf")
    (tmp_path / "seed.latscope_seed.yml").write_text(
        "plugin: latscope.latscope.latscope_seed\nconf_dir: conf\nssh_passwords: false\n")
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "group_vars" / "all" / "vault.yml").write_text(
        "vault_latscope_redis_password: test-redis-value\nvault_latscope_mysql_password: test-mysql-value\n")
    return tmp_path


def _env() -> dict:
    env = ansible_env()
    env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "true"
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "true"
    return env


def _plain(node):
    """ansible-inventory marks the seed's text as never-templated ({"__ansible_unsafe": ...}): unwrap it."""
    if isinstance(node, dict):
        if set(node) == {"__ansible_unsafe"}:
            return node["__ansible_unsafe"]
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(value) for value in node]
    return node


def _inventory(source: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-inventory"), "-i", str(source), *args], capture_output=True,
                          text=True, env=_env(), timeout=120, check=False)


def test_list_gives_the_groups_relations_and_no_seed_secret(seed_dir):
    proc = _inventory(seed_dir / "seed.latscope_seed.yml", "--list")
    assert proc.returncode == 0, proc.stderr
    listed = _plain(json.loads(proc.stdout))
    hostvars = listed["_meta"]["hostvars"]
    assert sorted(listed["bare_metal"]["hosts"]) == ["node1", "node2"]
    assert listed["vms"]["hosts"] == ["node1_vm"] and listed["latscope_manager"]["hosts"] == ["manager"]
    assert sorted(listed["containers"]["hosts"]) == ["node1-c1", "node1-c2", "node2-c1"]
    assert hostvars["node1_vm"]["latscope_vm_hypervisor"] == "node1"
    assert hostvars["node2-c1"]["latscope_container_host"] == "node2"
    assert hostvars["node1"]["observer_interfaces"] == ["enp1s0"]
    assert hostvars["node2"]["latscope_sampling"] == {"size": 72400, "ports": [5001, 8443], "interval": 1.0}
    assert not any(secret in proc.stdout + proc.stderr for secret in SEED_SECRETS)
    assert "vault_latscope_mysql_password" in proc.stderr  # the warning says what to put in the vault
    assert '"__ansible_unsafe": "192.0.2.11"' in proc.stdout  # the seed's text is never a template


def test_vault_references_resolve_in_a_play(seed_dir):
    play = seed_dir / "check.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Check the seed inventory's references", "hosts": "bare_metal:vms", "gather_facts": False,
        "tasks": [{"name": "References resolve to the vault variables",
                   "ansible.builtin.assert": {"that": [
                       "latscope_mysql_password == 'test-mysql-value'",
                       "latscope_redis_password == 'test-redis-value'",
                       "latscope_manager_address == '192.0.2.7'"], "quiet": True}}]}]))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(seed_dir / "seed.latscope_seed.yml"),
                           str(play)], capture_output=True, text=True, env=_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ok=1" in proc.stdout and "node1_vm" in proc.stdout
    assert "test-mysql-value" not in proc.stdout + proc.stderr


def test_a_bad_entry_fails_naming_file_host_and_field(seed_dir):
    connect = seed_dir / "conf" / "connect_info.yaml"
    doc = yaml.safe_load(connect.read_text())
    doc["servers"][2]["isvm"] = 42
    connect.write_text(yaml.safe_dump(doc))
    proc = _inventory(seed_dir / "seed.latscope_seed.yml", "--list")
    assert proc.returncode != 0
    assert "connect_info.yaml, host node1_vm, field isvm: must be the metadata_key" in proc.stderr
