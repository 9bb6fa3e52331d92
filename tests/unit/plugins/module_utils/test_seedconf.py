"""The seed's conf/ files as an inventory (pure logic)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.seedconf import (
    FILES, SeedConfError, build_inventory)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "seedconf"
SECRETS = ("seed-ssh-secret", "seed-mysql-secret")


@pytest.fixture
def docs() -> dict:
    return {name: yaml.safe_load((FIXTURES / name).read_text()) for name in FILES}


def _host(inventory, name):
    for hosts in inventory.groups.values():
        if name in hosts:
            return hosts[name]
    raise KeyError(name)


def test_groups_and_relations(docs):
    inv = build_inventory(docs)
    assert sorted(inv.groups["bare_metal"]) == ["node1", "node2"]
    assert sorted(inv.groups["vms"]) == ["node1_vm"]
    assert sorted(inv.groups["containers"]) == ["node1-c1", "node1-c2", "node2-c1"]
    assert sorted(inv.groups["latscope_manager"]) == ["manager"]
    assert _host(inv, "node1_vm")["latscope_vm_hypervisor"] == "node1"
    assert _host(inv, "node1-c2") == {"ansible_host": "192.0.2.37", "latscope_container_host": "node1"}
    assert _host(inv, "node2-c1")["latscope_container_host"] == "node2"
    assert _host(inv, "node1")["latscope_containers"] == ["node1-c1", "node1-c2"]


def test_connection_and_collection_variables(docs):
    inv = build_inventory(docs)
    node1 = _host(inv, "node1")
    assert node1["ansible_host"] == "192.0.2.11" and node1["ansible_port"] == 51111
    assert node1["ansible_user"] == "seeduser" and node1["latscope_metadata_key"] == 1
    assert node1["observer_interfaces"] == ["enp1s0"]  # lo is not an uplink
    assert node1["latscope_other_addresses"] == ["198.51.100.11"]
    assert node1["latscope_timesync_port"] == 51112 and node1["latscope_timesync_interface"] == "enp1s0"
    assert inv.all_vars["latscope_manager_address"] == "192.0.2.7"
    assert inv.all_vars["latscope_redis_port"] == 6380
    assert inv.all_vars["latscope_mysql_user"] == "metric_writer"
    assert inv.all_vars["latscope_mysql_database"] == "metric"
    assert inv.all_vars["latscope_sampling"] == {"size": 72400, "ports": [5001, 8443], "interval": 1.0}
    assert "observer_redis_host" not in inv.all_vars  # same as the manager


def test_no_secret_is_copied(docs):
    inv = build_inventory(docs)
    text = json.dumps([inv.groups, inv.all_vars, inv.warnings])
    assert not any(secret in text for secret in SECRETS)
    assert _host(inv, "node2")["ansible_password"] == "{{ vault_latscope_ssh_password_node2 }}"
    assert _host(inv, "manager")["ansible_password"] == "{{ vault_latscope_ssh_password_manager }}"
    assert inv.all_vars["latscope_mysql_password"] == "{{ vault_latscope_mysql_password }}"
    assert inv.all_vars["latscope_redis_password"] == "{{ vault_latscope_redis_password }}"
    assert "vault_latscope_ssh_password_node1_vm" in inv.warnings[-1]


def test_key_based_ssh_sets_no_password(docs):
    inv = build_inventory(docs, ssh_passwords=False)
    assert not any("ansible_password" in v for hosts in inv.groups.values() for v in hosts.values())


def test_separate_store_hosts_and_seed_size_zero(docs):
    docs["database_info.yaml"]["host"] = "192.0.2.8"
    docs["redis_info.yaml"] = {"address": "192.0.2.9", "port": 6379}  # the seed README spells it address
    docs["sampling_info.yaml"]["size"] = 0
    inv = build_inventory(docs)
    assert inv.all_vars["observer_mysql_host"] == inv.all_vars["manager_mysql_host"] == "192.0.2.8"
    assert inv.all_vars["observer_redis_host"] == "192.0.2.9"
    assert inv.all_vars["latscope_sampling"]["size"] == 1  # seed: 0 samples every packet


def test_optional_files_may_be_absent(docs):
    minimal = {name: docs[name] for name in ("connect_info.yaml", "management_server_info.yaml")}
    inv = build_inventory(minimal)
    assert "latscope_sampling" not in inv.all_vars
    assert inv.all_vars["latscope_mysql_password"] == "{{ vault_latscope_mysql_password }}"


def _set(docs, path, value):
    target = docs
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value


@pytest.mark.parametrize("path, value, file, host, setting", [
    (("connect_info.yaml", "servers", 1, "metadata_key"), "two", "connect_info.yaml", "node2", "metadata_key"),
    (("connect_info.yaml", "servers", 1, "metadata_key"), 1, "connect_info.yaml", "node2", "metadata_key"),
    (("connect_info.yaml", "servers", 1, "hostname"), "node1", "connect_info.yaml", "node1", "hostname"),
    (("connect_info.yaml", "servers", 1, "hostname"), KeyError, "connect_info.yaml", "servers[1]", "hostname"),
    (("connect_info.yaml", "servers", 1, "address"), "10.0.0.300", "connect_info.yaml", "node2", "address"),
    (("connect_info.yaml", "servers", 1, "port"), 70000, "connect_info.yaml", "node2", "port"),
    (("connect_info.yaml", "servers", 1, "eth"), ["a/b"], "connect_info.yaml", "node2", "eth"),
    (("connect_info.yaml", "servers", 1, "adress"), "192.0.2.5", "connect_info.yaml", "node2", "adress"),
    (("connect_info.yaml", "servers", 2, "isvm"), 9, "connect_info.yaml", "node1_vm", "isvm"),
    (("connect_info.yaml", "servers", 2, "isvm"), 3, "connect_info.yaml", "node1_vm", "isvm"),
    (("connect_info.yaml", "servers", 2, "novm"), 3, "connect_info.yaml", "node1_vm", "isvm"),
    (("connect_info.yaml", "servers", 3, "iscontainer"), 7, "connect_info.yaml", "servers[3]", "iscontainer"),
    (("connect_info.yaml", "servers", 3, "container_address"), ["192.0.2.46"], "connect_info.yaml",
     "servers[4]", "container_address"),  # servers[4] repeats an address servers[3] now has
    (("connect_info.yaml", "servers"), [], "connect_info.yaml", None, "servers"),
    (("management_server_info.yaml", "hostname"), "node1", "management_server_info.yaml", "node1",
     "hostname"),
    (("management_server_info.yaml", "address"), KeyError, "management_server_info.yaml", "manager",
     "address"),
    (("redis_info.yaml", "port"), "six", "redis_info.yaml", None, "port"),
    (("database_info.yaml", "db"), "", "database_info.yaml", None, "db"),
    (("sampling_info.yaml", "ports"), [0], "sampling_info.yaml", None, "ports"),
    (("sampling_info.yaml", "interval"), 0, "sampling_info.yaml", None, "interval"),
    (("sampling_info.yaml", "rate"), 3, "sampling_info.yaml", None, "rate"),
    (("ping_info.yaml", "servers", 1, "address"), "192.0.2.99", "ping_info.yaml", "servers[1]", "address"),
    (("ping_info.yaml", "servers", 0, "port"), 0, "ping_info.yaml", "node1", "port"),
])
def test_bad_entries_name_file_host_and_field(docs, path, value, file, host, setting):
    docs = copy.deepcopy(docs)
    _set(docs, path, value)
    with pytest.raises(SeedConfError) as caught:
        build_inventory(docs)
    error = caught.value
    assert (error.file, error.host, error.setting) == (file, host, setting)
    text = str(error)
    assert text.startswith(file) and setting in text and (host is None or f"host {host}" in text)


def test_missing_required_file(docs):
    del docs["management_server_info.yaml"]
    with pytest.raises(SeedConfError, match="management_server_info.yaml.*required"):
        build_inventory(docs)


def test_unknown_file(docs):
    docs["function_info.yaml"] = {}
    with pytest.raises(SeedConfError, match="function_info.yaml.*not a seed conf file"):
        build_inventory(docs)


def test_bad_value_is_quoted_but_secrets_are_not(docs):
    docs["connect_info.yaml"]["servers"][0]["port"] = "ssh"
    with pytest.raises(SeedConfError) as caught:
        build_inventory(docs)
    assert "'ssh'" in str(caught.value) and "secret" not in str(caught.value)
