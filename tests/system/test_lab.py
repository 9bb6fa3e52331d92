"""The lab, for real: namespaces, sshd, Ansible over SSH, Redis and MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.demo import ansible_env, ansible_ping
from latscope.lab import lab as lab_ops
from latscope.lab import netops
from latscope.lab.settings import LabSettings, plan

pytestmark = pytest.mark.lab


def test_ansible_reaches_every_machine_over_ssh(lab):
    results = ansible_ping(lab.files.inventory_dir)
    assert sorted(results) == sorted(n.name for n in lab.plan.nodes)
    for name, outcome in results.items():
        assert outcome["status"] == "SUCCESS", (name, outcome)
        assert outcome["ping"] == "pong"


def test_each_machine_is_its_own_namespace(lab):
    """What SSH lands in is the machine's namespace: its address is on its own eth0."""
    key = str(lab.files.client_key)
    for node in lab.plan.nodes:
        proc = subprocess.run(
            ["ssh", "-i", key, "-o", f"UserKnownHostsFile={lab.files.known_hosts}", "-o",
             "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{node.address}",
             "ip -json -4 addr show dev eth0"], capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        local = [a["local"] for entry in json.loads(proc.stdout) for a in entry["addr_info"]]
        assert local == [node.address]


def test_password_login_is_refused(lab):
    node = lab.plan.hosts[0]
    proc = subprocess.run(
        ["ssh", "-o", f"UserKnownHostsFile={lab.files.known_hosts}", "-o", "BatchMode=yes",
         "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
         f"root@{node.address}", "true"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 255
    assert "Permission denied" in proc.stderr


def test_container_is_routed_through_its_host(lab, in_netns, python):
    """host2 reaches host1-c1 over TCP via host1 (host-gw routing, no NAT)."""
    container = lab.plan.node("host1-c1")
    host1 = lab.plan.node("host1")
    probe = ("import socket; s = socket.create_connection(('%s', 22), timeout=5); "
             "print(s.getsockname()[0], s.recv(64).decode().strip())" % container.address)
    proc = in_netns(lab.plan.node("host2").netns, [python, "-c", probe])
    assert proc.returncode == 0, proc.stderr
    source, banner = proc.stdout.split(" ", 1)
    assert source == lab.plan.node("host2").address  # not rewritten: no NAT
    assert banner.startswith("SSH-2.0-")
    routes = netops.routes(lab.plan.node("host2").netns)
    assert any(r.get("dst") == host1.container_subnet and r.get("gateway") == host1.address for r in routes)


def test_redis_needs_and_accepts_the_password_from_a_host(lab, lab_secrets, in_netns, python):
    script = ("import redis, sys; r = redis.Redis(host=sys.argv[1], port=6379, password=sys.argv[2] or None, "
              "socket_timeout=5)\ntry:\n print(r.ping())\nexcept redis.AuthenticationError as e:\n print('auth', e)")
    manager = lab.plan.manager.address
    host = lab.plan.hosts[0].netns
    good = in_netns(host, [python, "-c", script, manager, lab_secrets["latscope_redis_password"]])
    assert good.stdout.strip() == "True", good.stderr
    bad = in_netns(host, [python, "-c", script, manager, ""])
    assert bad.stdout.startswith("auth"), bad.stdout + bad.stderr


def test_mariadb_accepts_a_login_from_a_host(lab, lab_secrets, in_netns):
    manager = lab.plan.manager.address
    proc = in_netns(lab.plan.node("host2-c1").netns,
                    ["mariadb", "-h", manager, "-u", "latscope", "--batch", "--skip-column-names",
                     "-e", "SELECT CURRENT_USER(), DATABASE()", "latscope"],
                    env={"MYSQL_PWD": lab_secrets["latscope_mysql_password"]})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["latscope@%", "latscope"]
    wrong = in_netns(lab.plan.hosts[0].netns, ["mariadb", "-h", manager, "-u", "latscope", "-e", "SELECT 1"],
                     env={"MYSQL_PWD": "wrong"})
    assert wrong.returncode != 0 and "Access denied" in wrong.stderr


def test_up_twice_changes_nothing(lab, lab_settings):
    before = sorted(ns for ns in netops.namespaces() if ns.startswith(f"{lab_settings.prefix}-"))
    again = lab_ops.up(lab_settings)
    assert again.changes == []
    after = sorted(ns for ns in netops.namespaces() if ns.startswith(f"{lab_settings.prefix}-"))
    assert after == before
    assert len([ns for ns in after if ns.startswith(f"{lab_settings.prefix}-h") and "c" not in ns[3:]]) == 2
    assert ansible_ping(lab.files.inventory_dir)["host2"]["ping"] == "pong"


def test_changing_a_running_lab_names_the_setting(lab, lab_settings):
    with pytest.raises(InputError) as info:
        lab_ops.up(LabSettings.from_dict({**lab_settings.as_dict(), "hosts": 3}))
    assert info.value.field == "hosts"
    assert len(lab_ops.status(lab_settings.prefix)["nodes"]) == len(lab.plan.nodes)


def test_overlapping_range_is_refused_before_anything_is_made(lab, lab_slot):
    settings = LabSettings.from_dict({"prefix": f"z{lab_slot}", "range": lab.plan.settings.range})
    with pytest.raises(InputError) as info:
        lab_ops.up(settings)
    assert info.value.field == "range"
    assert not any(ns.startswith(f"z{lab_slot}-") for ns in netops.namespaces())
    assert not Path(settings.state_dir).exists()


def test_name_clash_is_refused_before_anything_is_made(lab_slot):
    prefix = f"q{lab_slot}"
    settings = LabSettings.from_dict({"prefix": prefix, "range": f"198.19.{128 + 2 * lab_slot}.0/23"})
    netops.run(["ip", "netns", "add", f"{prefix}-h2"])
    try:
        with pytest.raises(InputError) as info:
            lab_ops.up(settings)
        assert info.value.field == "prefix"
        assert f"{prefix}-h2" in str(info.value)
        assert sorted(ns for ns in netops.namespaces() if ns.startswith(f"{prefix}-")) == [f"{prefix}-h2"]
        assert f"{prefix}-br" not in netops.links()
        assert not Path(settings.state_dir).exists()
    finally:
        netops.run(["ip", "netns", "delete", f"{prefix}-h2"])


def test_down_removes_everything_and_is_idempotent(lab_slot):
    """A lab of its own (1 host, 2 containers), so the session lab stays up for the other tests."""
    prefix = f"d{lab_slot}"
    subnet = f"198.19.{128 + 2 * lab_slot}."
    settings = LabSettings.from_dict({"prefix": prefix, "hosts": 1, "containers": 2, "range": f"{subnet}0/23"})
    lab_plan = plan(settings)
    up = lab_ops.up(settings)
    state_dir = Path(settings.state_dir)
    pids = [int((up.files.run_dir / f"sshd_{n.name}.pid").read_text()) for n in lab_plan.nodes]
    pids.append(int((up.files.run_dir / "redis.pid").read_text()))
    pids.append(int((state_dir / "mariadb" / "run" / "mysqld.pid").read_text()))
    assert set(lab_plan.namespaces) <= netops.namespaces()

    lab_ops.down(settings.prefix)

    assert not any(ns.startswith(f"{prefix}-") for ns in netops.namespaces())
    assert not any(link.startswith(f"{prefix}-") for link in netops.links())
    assert not state_dir.exists()
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and
             Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]
    assert alive == []
    assert not any(cidr.startswith(subnet) for cidr in netops.addresses())
    again = lab_ops.down(settings.prefix)
    assert again.removed == []


def test_latscope_facts_module_runs_on_a_lab_host_over_ssh(lab):
    """The module and its module_utils (kernel/ subpackage) travel through AnsiballZ and probe the host."""
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible"), "host1", "-i", str(lab.files.inventory_dir),
                           "-m", "latscope.latscope.latscope_facts", "-a", "devices=false", "-o"],
                          capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(proc.stdout.split(" => ", 1)[1])
    facts = payload["ansible_facts"]["latscope"]
    assert payload["changed"] is False
    assert facts["hook_profile"] == "tracepoint" and facts["btf"] is True and facts["kprobes"] is False


def _cgroup_exists(name: str, mountpoint: Path) -> bool:
    """Whether cgroup ``name`` exists at the root of the cgroup2 hierarchy (seen through a private mount)."""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t cgroup2 cgroup2 "$1" && test -d "$1/$2"', "sh", str(mountpoint), name],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0


def test_a_systemd_host_comes_up_once_and_leaves_nothing_behind(lab_slot, tmp_path):
    """A lab of its own (1 host, systemd as its PID 1): up twice, then down kills it and removes its cgroups."""
    from latscope.lab import systemd_host

    prefix = f"e{lab_slot}"
    settings = LabSettings.from_dict({"prefix": prefix, "hosts": 1, "containers": 0, "systemd_hosts": 1,
                                      "range": f"198.19.{128 + 2 * lab_slot}.0/24"})
    host = plan(settings).node("host1")
    try:
        lab_ops.up(settings)
        pid = systemd_host.systemd_pid(host.netns)
        assert pid and systemd_host.state(pid) == "running"
        assert lab_ops.up(settings).changes == []
        assert systemd_host.systemd_pid(host.netns) == pid
        members = netops.netns_pids(host.netns)   # systemd, journald, sshd (and the unshare that started it)
        assert len(members) >= 3
        assert _cgroup_exists(systemd_host.cgroup_name(prefix, host), tmp_path)
        ours = Path(settings.state_dir)
        assert str(ours) not in Path("/proc/self/mountinfo").read_text()   # its mounts are its own
    finally:
        lab_ops.down(prefix)

    def running(pid: int) -> bool:   # the unshare that started it may still wait to be reaped (a zombie)
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    assert [pid for pid in members if running(pid)] == []
    assert not _cgroup_exists(systemd_host.cgroup_name(prefix, host), tmp_path)
    assert not ours.exists() and host.netns not in netops.namespaces()
    assert lab_ops.down(prefix).removed == []
