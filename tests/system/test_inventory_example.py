"""inventory/example/: parsed by ansible-inventory, its relations hold, its secrets are vault references."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from latscope.demo import ansible_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example"
INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")
REFERENCE = re.compile(r"^\{\{ vault_[A-Za-z0-9_]+ \}\}$")


def _listed() -> dict:
    proc = subprocess.run([INVENTORY, "-i", str(EXAMPLE), "--list"], capture_output=True, text=True,
                          env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_groups_and_relations():
    listed = _listed()
    hostvars = listed["_meta"]["hostvars"]
    groups = {name: set(listed[name]["hosts"]) for name in ("bare_metal", "vms", "containers", "latscope_manager")}
    assert all(groups.values()), groups
    assert len(groups["latscope_manager"]) == 1
    for vm in groups["vms"]:
        assert hostvars[vm]["latscope_vm_hypervisor"] in groups["bare_metal"], vm
    observed = groups["bare_metal"] | groups["vms"]
    for container in groups["containers"]:
        assert hostvars[container]["latscope_container_host"] in observed, container
        assert hostvars[container]["latscope_netns_path"].startswith("/"), container
    assert any(hostvars[c]["latscope_container_host"] in groups["vms"] for c in groups["containers"])
    keys = [v["latscope_metadata_key"] for v in hostvars.values() if "latscope_metadata_key" in v]
    assert len(keys) == len(set(keys)) == len(observed)
    for name, host in hostvars.items():
        assert host["latscope_manager_address"] and host["ansible_host"], name


def _walk(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")
    else:
        yield path, node


def test_secrets_are_only_vault_references():
    """Every password-like variable in every file of the example is a reference to a vault_ variable."""
    seen = 0
    for path in sorted(EXAMPLE.rglob("*.yml")):
        for name, value in _walk(yaml.safe_load(path.read_text())):
            leaf = name.rsplit(".", 1)[-1]
            if re.search(r"password|passwd|secret|token", leaf):
                seen += 1
                assert isinstance(value, str) and REFERENCE.match(value), f"{path}: {name} is not a vault reference"
    listed = _listed()
    for host, host_vars in listed["_meta"]["hostvars"].items():
        for key in ("latscope_redis_password", "latscope_mysql_password"):
            assert REFERENCE.match(host_vars[key]), (host, key)
    assert seen >= 2


def test_collector_redis_passwords_are_per_host_or_generated():
    """A host may bring its own collector password (a per-host vault reference); the others get a generated one."""
    hostvars = _listed()["_meta"]["hostvars"]
    own = {host: v["latscope_redis_collector_password"] for host, v in hostvars.items()
           if "latscope_redis_collector_password" in v}
    assert own == {"hv1": "{{ vault_latscope_redis_collector_password_hv1 }}"}
