"""Lab settings validation and the address/name plan (pure logic)."""

import ipaddress

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.lab.settings import MAX_HOSTS, LabSettings, plan


def test_defaults():
    settings = LabSettings.from_dict({})
    assert (settings.prefix, settings.hosts, settings.containers) == ("ls", 2, 1)
    assert settings.state_dir == "/run/latscope/lab-ls"


@pytest.mark.parametrize("raw, field", [
    ({"hosts": 0}, "hosts"), ({"hosts": 9}, "hosts"), ({"hosts": "two"}, "hosts"),
    ({"containers": 5}, "containers"), ({"containers": -1}, "containers"),
    ({"range": "198.18.0.0/24"}, "range"), ({"range": "198.18.0.1/16"}, "range"),
    ({"range": "not-a-net"}, "range"), ({"range": "2001:db8::/64"}, "range"),
    ({"prefix": "Bad"}, "prefix"), ({"prefix": "toolong1"}, "prefix"), ({"prefix": "1ab"}, "prefix"),
    ({"state_dir": "relative/dir"}, "state_dir"), ({"colour": "blue"}, "colour"),
    ({"systemd_hosts": -1}, "systemd_hosts"), ({"hosts": 2, "systemd_hosts": 3}, "systemd_hosts"),
    ({"systemd_hosts": "yes"}, "systemd_hosts"),
])
def test_bad_settings_name_the_setting(raw, field):
    with pytest.raises(InputError) as info:
        LabSettings.from_dict(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_a_slash_24_is_enough_without_containers():
    assert LabSettings.from_dict({"range": "198.18.5.0/24", "containers": 0}).range == "198.18.5.0/24"


@pytest.mark.parametrize("hosts, containers", [(1, 0), (2, 1), (MAX_HOSTS, 4)])
def test_plan_addresses_are_distinct_and_in_range(hosts, containers):
    settings = LabSettings.from_dict({"hosts": hosts, "containers": containers, "range": "198.19.0.0/23"})
    lab = plan(settings)
    network = ipaddress.IPv4Network(settings.range)
    addresses = [lab.bridge_address] + [n.address for n in lab.nodes]
    gateways = {n.gateway for n in lab.containers}
    assert len(set(addresses) | gateways) == len(addresses) + len(gateways)
    assert all(ipaddress.IPv4Address(a) in network for a in addresses)
    assert len(lab.hosts) == hosts and len(lab.containers) == hosts * containers
    for node in lab.containers:
        host = lab.node(node.parent)
        assert ipaddress.IPv4Address(node.address) in ipaddress.IPv4Network(host.container_subnet)
        assert node.gateway == str(next(ipaddress.IPv4Network(host.container_subnet).hosts()))


def test_plan_names_fit_interface_limits_and_are_unique():
    lab = plan(LabSettings.from_dict({"prefix": "abcdef", "hosts": MAX_HOSTS, "containers": 4}))
    names = lab.namespaces + lab.root_links
    assert all(len(name) <= 15 for name in names)
    assert len(set(lab.namespaces)) == len(lab.namespaces)
    assert len(set(lab.root_links)) == len(lab.root_links)
    assert [n.name for n in lab.nodes][:3] == ["manager", "host1", "host2"]


def test_hosts_lan_and_container_subnets_do_not_overlap():
    lab = plan(LabSettings.from_dict({"hosts": 3, "containers": 2}))
    lan = ipaddress.IPv4Network(lab.lan)
    subnets = [ipaddress.IPv4Network(h.container_subnet) for h in lab.hosts]
    assert not any(lan.overlaps(s) for s in subnets)
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])


def test_the_first_systemd_hosts_hosts_run_systemd():
    lab = plan(LabSettings.from_dict({"hosts": 3, "containers": 1, "systemd_hosts": 2}))
    assert [n.name for n in lab.nodes if n.systemd] == ["host1", "host2"]
    assert not lab.manager.systemd and not any(n.systemd for n in lab.containers)
    assert LabSettings.from_dict({}).systemd_hosts == 0
    assert not any(n.systemd for n in plan(LabSettings.from_dict({})).nodes)
