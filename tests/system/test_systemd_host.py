"""The observer role's systemd branch for real: a lab host where systemd is PID 1 (docs/lab.md).

A lab of its own: host1 boots systemd in its own PID and mount namespaces (its sshd a service of it), host2 is
an ordinary lab host (supervised collector), one container each. Check mode before the first deploy fails
nowhere; deploy.yml then has to take the systemd branch on host1 only: the unit in host1's private
/etc/systemd/system, active and enabled, its MainPID the collector, which heartbeats through Redis and stores a
session's rows; systemd restarts it after a SIGKILL; a second deploy and check mode change nothing;
teardown.yml stops and removes the unit, and a second teardown changes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.control import Controller, RedisSettings, connect
from latscope.demo import ansible_env
from latscope.lab import lab as lab_ops
from latscope.lab import netops, systemd_host
from latscope.lab.services import wait_for
from latscope.lab.settings import STATE_ROOT, LabSettings

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UNIT = "latscope-collector.service"


def _free_prefix_and_range() -> tuple[str, str]:
    """A prefix no lab uses and a /23 in 198.19.192.0/21 that meets no address or lab range on this machine."""
    prefix = next(f"sd{n}" for n in range(100) if not (STATE_ROOT / f"lab-sd{n}").exists())
    taken = [ipaddress.IPv4Interface(cidr).network for cidr in netops.addresses()]
    for state in STATE_ROOT.glob("lab-*/lab.json"):
        try:
            taken.append(ipaddress.IPv4Network(json.loads(state.read_text())["settings"]["range"]))
        except (OSError, ValueError, KeyError):
            continue
    for third in range(192, 200, 2):
        candidate = ipaddress.IPv4Network(f"198.19.{third}.0/23")
        if not any(candidate.overlaps(net) for net in taken):
            return prefix, str(candidate)
    raise RuntimeError("no free /23 in 198.19.192.0/21 for the systemd lab")


@pytest.fixture(scope="module")
def slab():
    prefix, network = _free_prefix_and_range()
    settings = LabSettings.from_dict({"prefix": prefix, "hosts": 2, "containers": 1, "systemd_hosts": 1,
                                      "range": network})
    try:
        started = time.monotonic()
        result = lab_ops.up(settings)
        print(f"lab up with a systemd host: {time.monotonic() - started:.1f}s")
        yield result
    finally:
        lab_ops.down(settings.prefix)


def _play(slab, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(slab.files.inventory_dir),
                           str(REPO / "playbooks" / playbook), *extra],
                          capture_output=True, text=True, env=ansible_env(), timeout=1200, check=False)


def _recap(output: str) -> dict[str, dict[str, int]]:
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
            for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M)}


def _task_results(output: str, host: str) -> dict[str, str]:
    """Task name -> what ``host`` reported for it (ok, changed, skipping...), from the default callback."""
    results, task = {}, ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0].split(" : ")[-1]
        else:
            found = re.match(r"^(ok|changed|skipping|fatal): \[" + re.escape(host) + r"\]", line)
            if found:
                results[task] = found.group(1)
    return results


def _ssh(slab, name: str, command: str) -> subprocess.CompletedProcess:
    """``command`` on lab machine ``name`` over SSH, as Ansible reaches it."""
    node = slab.plan.node(name)
    return subprocess.run(["ssh", "-i", str(slab.files.client_key),
                           "-o", f"UserKnownHostsFile={slab.files.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                           "-o", "BatchMode=yes", f"root@{node.address}", command],
                          capture_output=True, text=True, timeout=60, check=False)


def _show(slab, prop: str) -> str:
    proc = _ssh(slab, "host1", f"systemctl show -p {prop} --value {UNIT}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def deployed(slab):
    started = time.monotonic()
    first = _play(slab, "deploy.yml")
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    print(f"first deploy.yml: {seconds:.1f}s")
    return first


@pytest.fixture(scope="module")
def controller(slab):
    secrets = yaml.safe_load(slab.files.secrets_file.read_text())
    client = connect(RedisSettings(host=slab.plan.manager.address, password=secrets["latscope_redis_password"]))
    yield Controller(client)
    client.close()


def _unit_file(slab) -> Path:
    return systemd_host.HostDirs(slab.files.root, slab.plan.node("host1")).etc_units / UNIT


def _host_pid(slab, ns_pid: int) -> int:
    """The machine's pid of process ``ns_pid`` of host1's PID namespace."""
    for pid in netops.netns_pids(slab.plan.node("host1").netns):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M).group(1).split()
        if len(nspid) == 2 and int(nspid[1]) == ns_pid:
            return pid
    raise AssertionError(f"no process {ns_pid} in host1")


def test_lab_host_runs_systemd_as_pid_1_with_its_sshd_as_a_service(slab):
    host1 = _ssh(slab, "host1", "cat /proc/1/comm; systemctl is-system-running; systemctl show -p ActiveState "
                 "--value latscope-lab-sshd.service; grep ^0:: /proc/self/cgroup; hostname")
    assert host1.returncode == 0, host1.stderr
    comm, state, sshd, cgroup, hostname = host1.stdout.split("\n")[:5]
    assert (comm, state, sshd, hostname) == ("systemd", "running", "active", "host1")
    assert cgroup.endswith("/system.slice/latscope-lab-sshd.service")   # this SSH session lives under systemd
    host2 = _ssh(slab, "host2", "cat /proc/1/comm; test -d /run/systemd/system && echo systemd || echo none")
    assert host2.stdout.split()[1] == "none" and host2.stdout.split()[0] != "systemd"
    facts = subprocess.run([str(BIN / "ansible"), "host1:host2", "-i", str(slab.files.inventory_dir), "-m",
                            "latscope.latscope.latscope_facts", "-a", "devices=false", "-o"],
                           capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert facts.returncode == 0, facts.stdout + facts.stderr
    pid1 = {line.split(" | ")[0]: json.loads(line.split(" => ", 1)[1])["ansible_facts"]["latscope"]["systemd_pid1"]
            for line in facts.stdout.splitlines() if " => " in line}
    assert pid1 == {"host1": True, "host2": False}
    status = {n["name"]: n for n in lab_ops.status(slab.plan.settings.prefix)["nodes"]}
    assert status["host1"]["init"] == "systemd" and status["host1"]["systemd_state"] == "running"
    assert status["host1"]["sshd"] and "init" not in status["host2"]
    assert lab_ops.up(slab.plan.settings).changes == []


def test_check_mode_before_the_first_deploy_fails_nowhere(slab):
    """A systemd host without the unit yet: check mode says what it would do (systemd cannot know the unit)."""
    # tracefs mounted in host1, as systemd mounts it at boot on a real host (the preflight's probe needs it)
    facts = subprocess.run([str(BIN / "ansible"), "host1", "-i", str(slab.files.inventory_dir), "-m",
                            "latscope.latscope.latscope_facts", "-a", "devices=false"],
                           capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert facts.returncode == 0, facts.stdout + facts.stderr
    check = _play(slab, "deploy.yml", "--check", "--limit", "host1")
    assert check.returncode == 0, check.stdout[-3000:]
    tasks = _task_results(check.stdout, "host1")
    assert tasks["Install the systemd unit"] == "changed"
    assert tasks["Run the collector under systemd"] == "skipping"
    assert tasks["Say what check mode skipped under systemd"] == "ok"
    assert not _unit_file(slab).exists()
    assert _ssh(slab, "host1", f"systemctl is-active {UNIT}").stdout.strip() == "inactive"


def test_deploy_takes_the_systemd_branch_on_the_systemd_host_only(slab, deployed):
    host1, host2 = _task_results(deployed.stdout, "host1"), _task_results(deployed.stdout, "host2")
    assert host1["Install the systemd unit"] == "changed" and host1["Run the collector under systemd"] == "changed"
    assert host1["Run the collector as a supervised daemon (no systemd here)"] == "skipping"
    assert host2["Install the systemd unit"] == "skipping"
    # the first start is the restart handler's (flushed before the "make sure it runs" tasks): one start, one compile
    assert host1["Restart the latscope collector"] == "changed"
    assert host2["Restart the supervised latscope collector"] == "changed"
    assert host2["Run the collector as a supervised daemon (no systemd here)"] == "ok"
    unit = _unit_file(slab)
    assert unit.is_file() and "Restart=always" in unit.read_text()
    assert not Path("/etc/systemd/system", UNIT).exists()   # the machine's own units are untouched
    state = _ssh(slab, "host1", f"systemctl is-active {UNIT}; systemctl is-enabled {UNIT}")
    assert state.stdout.split() == ["active", "enabled"], state.stdout + state.stderr
    main = int(_show(slab, "MainPID"))
    cmdline = _ssh(slab, "host1", f"tr '\\0' ' ' < /proc/{main}/cmdline").stdout
    assert "-m latscope collector --config" in cmdline, cmdline
    assert (Path(slab.files.root) / "hosts" / "host2" / "run" / "latscope" / "collector.pid").is_file()


def test_the_systemd_collector_heartbeats_through_redis(slab, deployed, controller):
    main = int(_show(slab, "MainPID"))

    def beating():
        beats = controller.alive(["host1", "host2"])
        return beats if all(beats.values()) and beats["host1"].pid == main else None

    beats = wait_for(beating, f"heartbeats of both collectors, host1's from MainPID {main}", timeout=90, interval=0.2)
    assert beats["host1"].hook_profile == beats["host2"].hook_profile == "tracepoint"


def test_a_session_through_the_systemd_collector_stores_rows(slab, deployed, controller):
    """The unit's sandbox (ProtectSystem=full...) still lets the collector observe: iperf3 host1 -> host2."""
    plan = slab.plan
    acks = controller.start_session(["host1", "host2"], "sd1", {"dport": 5411}, {"size": 65536}, timeout_s=60)
    assert all(ack.ok for ack in acks.values()), acks
    host2 = plan.node("host2")
    server = subprocess.Popen(["ip", "netns", "exec", host2.netns, "iperf3", "-s", "-1", "-B", host2.address,
                               "-p", "5411"], stdout=subprocess.DEVNULL)
    try:
        netops.wait_listening(host2.netns, host2.address, 5411)
        client = subprocess.run(["ip", "netns", "exec", plan.node("host1").netns, "iperf3", "-c", host2.address,
                                 "-p", "5411", "-t", "1", "-b", "200M"], capture_output=True, text=True, timeout=60,
                                check=False)
        assert client.returncode == 0, client.stderr
    finally:
        server.wait(timeout=30)
    acks = controller.stop_session(["host1", "host2"], "sd1", timeout_s=60)
    assert all(ack.ok for ack in acks.values()), acks
    secrets = yaml.safe_load(slab.files.secrets_file.read_text())
    db = {"host": plan.manager.address, "user": "latscope", "password": secrets["latscope_mysql_password"],
          "database": "latscope"}

    def stored():
        with pymysql.connect(**db) as conn, conn.cursor() as cur:
            cur.execute("SELECT host, COUNT(*) FROM packet_samples WHERE session_id = 'sd1' GROUP BY host")
            rows = dict(cur.fetchall())
        return rows if rows.get("host1", 0) > 100 and rows.get("host2", 0) > 100 else None

    print(f"rows stored per host: {wait_for(stored, 'rows from both collectors', timeout=60, interval=0.2)}")


def test_systemd_restarts_a_collector_killed_with_sigkill(slab, deployed, controller):
    before = int(_show(slab, "MainPID"))
    restarts = int(_show(slab, "NRestarts"))
    killed_at = time.time()
    os.kill(_host_pid(slab, before), signal.SIGKILL)   # from outside, as the OOM killer would

    def restarted():
        main = int(_show(slab, "MainPID"))
        return main if main not in (0, before) and _show(slab, "ActiveState") == "active" else None

    after = wait_for(restarted, "systemd to restart the collector", timeout=30, interval=0.2)
    assert int(_show(slab, "NRestarts")) == restarts + 1
    journal = _ssh(slab, "host1", f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "status=9/KILL" in journal and "Scheduled restart job" in journal, journal[-2000:]

    def beating_again():
        beat = controller.alive(["host1"])["host1"]
        return beat if beat and beat.pid == after and beat.at > killed_at else None

    beat = wait_for(beating_again, f"a heartbeat from the restarted collector (pid {after})", timeout=90, interval=0.2)
    print(f"restarted by systemd: pid {before} -> {after}, heartbeating again after {beat.at - killed_at:.1f}s")


def test_second_deploy_changes_nothing(slab, deployed):
    started = time.monotonic()
    again = _play(slab, "deploy.yml")
    print(f"idempotent deploy.yml: {time.monotonic() - started:.1f}s")
    assert again.returncode == 0, again.stdout[-3000:]
    recap = _recap(again.stdout)
    assert set(recap) == {"manager", "host1", "host2"}
    assert all(counts["changed"] == 0 for counts in recap.values()), recap


def test_check_mode_changes_nothing(slab, deployed):
    before = _show(slab, "MainPID")
    check = _play(slab, "deploy.yml", "--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    recap = _recap(check.stdout)
    assert recap["host1"]["changed"] == 0 and all(c["changed"] == 0 for c in recap.values()), recap
    assert _show(slab, "MainPID") == before


def test_teardown_stops_and_removes_the_unit_and_runs_once(slab, deployed):
    main = int(_show(slab, "MainPID"))
    host_pid = _host_pid(slab, main)
    started = time.monotonic()
    first = _play(slab, "teardown.yml")
    print(f"teardown.yml: {time.monotonic() - started:.1f}s")
    assert first.returncode == 0, first.stdout[-3000:]
    tasks = _task_results(first.stdout, "host1")
    assert tasks["Stop and disable the systemd unit"] == "changed"
    assert tasks["Make systemd forget the removed unit file"] == "ok"
    assert not _unit_file(slab).exists()
    assert not Path(f"/proc/{host_pid}").exists()
    status = _ssh(slab, "host1", f"systemctl status {UNIT}")
    assert status.returncode == 4 and "could not be found" in status.stderr, status.stdout + status.stderr
    loaded = _ssh(slab, "host1", f"systemctl list-units --all --plain --no-legend {UNIT}; "
                  f"systemctl list-unit-files --plain --no-legend {UNIT}; ls /etc/systemd/system")
    assert loaded.stdout.strip() == "", loaded.stdout
    assert _ssh(slab, "host1", "pgrep -f 'latscope [c]ollector'").returncode == 1   # nothing left in host1
    second = _play(slab, "teardown.yml")
    assert second.returncode == 0, second.stdout[-3000:]
    recap = _recap(second.stdout)
    assert all(counts["changed"] == 0 for counts in recap.values()), recap
