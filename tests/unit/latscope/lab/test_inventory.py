"""The generated lab inventory (pure logic)."""

from pathlib import Path

from latscope.lab.inventory import LabFiles, build_inventory, build_secrets
from latscope.lab.settings import LabSettings, plan


def _inventory(**raw):
    return build_inventory(plan(LabSettings.from_dict(raw)), LabFiles(Path("/run/latscope/lab-x")))


def test_groups_hold_every_machine_once():
    lab, inv = plan(LabSettings.from_dict({"hosts": 3, "containers": 2})), _inventory(hosts=3, containers=2)
    groups = inv["all"]["children"]
    assert set(groups) == {"latscope_manager", "bare_metal", "containers"}
    names = [name for group in groups.values() for name in group["hosts"]]
    assert sorted(names) == sorted(n.name for n in lab.nodes)
    assert list(groups["latscope_manager"]["hosts"]) == ["manager"]


def test_containers_name_their_host():
    inv = _inventory(hosts=2, containers=1)
    containers = inv["all"]["children"]["containers"]["hosts"]
    assert containers["host2-c1"]["latscope_container_host"] == "host2"
    hosts = inv["all"]["children"]["bare_metal"]["hosts"]
    assert hosts["host2"]["latscope_containers"] == ["host2-c1"]


def test_ssh_is_key_only_with_pinned_host_keys():
    inv = _inventory()
    common = inv["all"]["vars"]
    assert common["ansible_ssh_private_key_file"] == "/run/latscope/lab-x/ssh/id_ed25519"
    assert "StrictHostKeyChecking=yes" in common["ansible_ssh_common_args"]
    assert "UserKnownHostsFile=/run/latscope/lab-x/ssh/known_hosts" in common["ansible_ssh_common_args"]


def test_no_secret_in_the_hosts_file():
    inv = _inventory()
    assert "password" not in repr(inv)
    assert set(build_secrets("r", "m")) == {"latscope_redis_password", "latscope_mysql_password"}
