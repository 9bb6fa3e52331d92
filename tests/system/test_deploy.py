"""deploy.yml, a session through the modules, and teardown.yml, over real SSH on the lab."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.control import Controller, RedisSettings, connect
from latscope.demo import ansible_env
from latscope.lab.netops import wait_listening

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


def _play(lab, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PLAYBOOK, "-i", str(lab.files.inventory_dir), str(REPO / "playbooks" / playbook), *extra],
                          capture_output=True, text=True, env=ansible_env(), timeout=1200, check=False)


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


@pytest.fixture(scope="module")
def deployed(lab):
    started = time.monotonic()
    first = _play(lab, "deploy.yml")
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    try:
        yield {"first": first, "first_s": first_s}
    finally:
        _play(lab, "teardown.yml")


@pytest.fixture(scope="module")
def controller(lab, lab_secrets):
    client = connect(RedisSettings(host=lab.plan.manager.address, password=lab_secrets["latscope_redis_password"]))
    yield Controller(client)
    client.close()


def _await(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_deploy_runs_a_collector_on_every_host(deployed, controller):
    print(f"first deploy: {deployed['first_s']:.1f}s")

    def all_alive():
        beats = controller.alive(["host1", "host2"])
        return beats if all(beats.values()) else None

    beats = _await(all_alive, "heartbeats of the deployed collectors")
    assert {beat.host for beat in beats.values()} == {"host1", "host2"}


def test_second_deploy_changes_nothing(deployed, lab):
    started = time.monotonic()
    again = _play(lab, "deploy.yml")
    print(f"idempotent re-run: {time.monotonic() - started:.1f}s")
    assert again.returncode == 0, again.stdout[-3000:]
    recap = _recap(again.stdout)
    assert recap and all(counts["changed"] == 0 for counts in recap.values()), recap


def test_check_mode_changes_nothing(deployed, lab):
    check = _play(lab, "deploy.yml", "--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    assert all(counts["changed"] == 0 for counts in _recap(check.stdout).values())


def test_a_session_through_the_deployed_collectors_stores_rows(deployed, lab, lab_secrets, controller):
    plan = lab.plan
    acks = controller.start_session(["host1", "host2"], "deploy1", {"dport": 5401}, {"size": 65536}, timeout_s=60)
    assert all(ack.ok for ack in acks.values()), acks
    host2 = plan.node("host2")
    server = subprocess.Popen(["ip", "netns", "exec", host2.netns, "iperf3", "-s", "-1", "-B", host2.address,
                               "-p", "5401"], stdout=subprocess.DEVNULL)
    try:
        wait_listening(host2.netns, host2.address, 5401)
        client = subprocess.run(["ip", "netns", "exec", plan.node("host1").netns, "iperf3", "-c", host2.address,
                                 "-p", "5401", "-t", "1", "-b", "500M"], capture_output=True, text=True, timeout=60,
                                check=False)
        assert client.returncode == 0, client.stderr
    finally:
        server.wait(timeout=30)
    acks = controller.stop_session(["host1", "host2"], "deploy1", timeout_s=60)
    assert all(ack.ok for ack in acks.values()), acks
    db = {"host": plan.manager.address, "user": "latscope", "password": lab_secrets["latscope_mysql_password"],
          "database": "latscope"}

    def stored():
        with pymysql.connect(**db) as conn, conn.cursor() as cur:
            cur.execute("SELECT host, COUNT(*) FROM packet_samples WHERE session_id = 'deploy1' GROUP BY host")
            rows = dict(cur.fetchall())
        return rows if rows.get("host1", 0) > 100 and rows.get("host2", 0) > 100 else None

    print(f"rows stored per host: {_await(stored, 'rows from both hosts', 60)}")


def test_deploy_output_never_shows_a_secret(deployed, lab, lab_secrets, lab_collector_passwords):
    verbose = _play(lab, "deploy.yml", "-vvv")
    assert verbose.returncode == 0
    output = verbose.stdout + verbose.stderr + deployed["first"].stdout
    generated = lab_collector_passwords
    assert sorted(generated) == ["host1 collector", "host2 collector"]
    for secret in [*lab_secrets.values(), *generated.values()]:
        assert secret not in output


def test_each_collector_logs_in_as_its_own_redis_user(deployed, lab, lab_secrets, lab_collector_passwords):
    """The deployed collectors are connected as latscope-host1 and latscope-host2, each with its own password."""
    admin = connect(RedisSettings(host=lab.plan.manager.address, username="latscope-admin",
                                  password=lab_secrets["latscope_redis_admin_password"]))
    try:
        def both_connected():
            users = {entry["user"] for entry in admin.client_list()}
            return users if {"latscope-host1", "latscope-host2"} <= users else None

        _await(both_connected, "the collectors' own users in CLIENT LIST", 60)
    finally:
        admin.close()
    generated = lab_collector_passwords
    assert generated["host1 collector"] != generated["host2 collector"]
    for host in ("host1", "host2"):
        config = (lab.files.host_root(host) / "etc" / "latscope" / "collector.yml").read_text()
        assert f'user: "latscope-{host}"' in config
        password_file = lab.files.host_root(host) / "etc" / "latscope" / "redis.password"
        assert password_file.read_text() == generated[f"{host} collector"]
        assert password_file.stat().st_mode & 0o777 == 0o600


def test_an_observer_without_its_password_on_the_manager_stops_in_the_preflight_saying_why(deployed, lab):
    """A host the manager play has not run for yet (its password file missing): one clear failure, nothing done."""
    run = _play(lab, "deploy.yml", "--limit", "host1", "-e", "observer_redis_password_file=/nonexistent/host1.password")
    output = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    assert ("observer: manager has no Redis password for host1 (/nonexistent/host1.password): "
            "run deploy.yml's manager play first") in output, output[-2000:]
    assert _recap(run.stdout)["host1"]["changed"] == 0


def test_measure_rejects_a_bad_flow_before_anything_runs(deployed, lab, controller):
    bad = _play(lab, "measure.yml", "-e", "flow='src=host1 dst=host2 dport=70000 duration=1s'", "-e", "session=bad1")
    assert bad.returncode != 0
    assert "flow.dport: must be at most 65535" in bad.stdout + bad.stderr
    states = controller.host_states(["host1", "host2"])
    assert all(state.get("session") != "bad1" for state in states.values())
    unknown = _play(lab, "measure.yml", "-e", "flow='src=host1 dst=host9'", "-e", "session=bad2")
    assert unknown.returncode != 0 and "flow.dst: is not a host of the inventory" in unknown.stdout + unknown.stderr


def test_measure_a_container_flow_end_to_end(deployed, lab, lab_secrets):
    run = _play(lab, "measure.yml", "-e", "flow='src=host1-c1 dst=host2 dport=5402 duration=2s traffic=iperf3 rate=300M'",
                "-e", "session=measure1")
    assert run.returncode == 0, run.stdout[-4000:]
    records = re.search(r"records per observer: host1=(\d+) host2=(\d+)", run.stdout)
    assert records, run.stdout[-2000:]
    db = {"host": lab.plan.manager.address, "user": "latscope", "password": lab_secrets["latscope_mysql_password"],
          "database": "latscope"}

    def stored():
        with pymysql.connect(**db) as conn, conn.cursor() as cur:
            cur.execute("SELECT host, COUNT(*) FROM packet_samples WHERE session_id = 'measure1' GROUP BY host")
            rows = dict(cur.fetchall())
        return rows if rows == {"host1": int(records[1]), "host2": int(records[2])} else None

    # 2 s at 300 Mbit/s is ~75 MB: ~1100 samples of 64 KiB each way, every one stored
    rows = _await(stored, f"the stored rows to equal the records the observers report ({records.groups()})", 60)
    assert rows["host1"] > 1000, rows
    with pymysql.connect(**db) as conn, conn.cursor() as cur:
        cur.execute("SELECT MAX(bytes_sent) FROM flow_metrics WHERE session_id = 'measure1' AND host = 'host1' "
                    "AND dport = 5402")
        (sent,) = cur.fetchone()
    assert sent and sent > 50_000_000, sent
    print(f"container flow: rows per observer {rows}, bytes sent per flow metrics {sent}")
