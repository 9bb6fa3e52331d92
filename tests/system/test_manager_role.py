"""The manager role for real: deploy.yml's manager play over SSH, then Redis's ACL users, MariaDB's least-privilege
users, the time-sync prober, idempotence, check mode and secrets, each checked against the running servers.

It uses a lab of its own (one host, no containers): the role restricts Redis's collectors' user to the
``latscope:`` key space and rewrites users, which the session lab's other tests (private key prefixes) must not meet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    Agent, Controller, RedisSettings, connect, make_command)
from latscope.demo import ansible_env
from latscope.lab import lab as lab_ops
from latscope.lab import services
from latscope.lab.settings import LabSettings

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
# The production default (the lab inventory opens every key to the session lab's tests).
RESTRICTED = json.dumps({"manager_redis_key_patterns": ["latscope:*"]})
DENIED = 1142          # ER_TABLEACCESS_DENIED_ERROR: "<command> command denied to user"


@pytest.fixture(scope="module")
def mlab(lab, lab_slot):
    """A lab of this module's own; depends on the session lab so that its slot (and this prefix) is taken."""
    del lab
    settings = LabSettings.from_dict({"prefix": f"mr{lab_slot}", "hosts": 1, "containers": 0,
                                      "range": f"198.19.{160 + 2 * (lab_slot % 16)}.0/23"})
    try:
        yield lab_ops.up(settings)
    finally:
        lab_ops.down(settings.prefix)


@pytest.fixture(scope="module")
def secret(mlab) -> dict:
    return yaml.safe_load(mlab.files.secrets_file.read_text())


def _play(mlab, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PLAYBOOK, "-i", str(mlab.files.inventory_dir), str(REPO / "playbooks" / "deploy.yml"),
                           "--limit", "latscope_manager", "-e", RESTRICTED, *extra],
                          capture_output=True, text=True, env=ansible_env(), timeout=900, check=False)


def _changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported a change (for a failure message)."""
    names, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            names.append(task)
    return names


def _recap(output: str) -> dict[str, int]:
    found = re.search(r"^manager\s+:\s+(ok=.*)$", output, re.M)
    assert found, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


@pytest.fixture(scope="module")
def deployed(mlab):
    started = time.monotonic()
    first = _play(mlab)
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    return {"first": first, "first_s": seconds}


def _db(mlab, user: str, password: str):
    return pymysql.connect(host=mlab.plan.manager.address, port=3306, user=user, password=password,
                           database="latscope", connect_timeout=5, autocommit=True)


def _denied(cursor, sql: str) -> int:
    with pytest.raises(pymysql.MySQLError) as info:
        cursor.execute(sql)
    return info.value.args[0]


def test_the_second_run_changes_nothing_and_no_secret_is_ever_shown(deployed, mlab, secret):
    first = deployed["first"]
    assert _recap(first.stdout)["changed"] > 0
    started = time.monotonic()
    again = _play(mlab, "-vvv")
    again_s = time.monotonic() - started
    print(f"manager role: first run {deployed['first_s']:.1f}s, idempotent re-run (-vvv) {again_s:.1f}s")
    assert again.returncode == 0, again.stdout[-3000:]
    assert _recap(again.stdout)["changed"] == 0, _changed_tasks(again.stdout)
    output = first.stdout + first.stderr + again.stdout + again.stderr
    for name, value in secret.items():
        assert value not in output, f"{name} appears in the play's output"
    assert "IDENTIFIED BY ********" in first.stdout     # the statements are shown, their passwords are not


def test_redis_needs_a_password_and_bounds_the_collectors_user(deployed, mlab, secret, in_netns, python):
    script = r"""
import json, sys, redis
host, password, admin = sys.argv[1:4]
out = {}
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except redis.exceptions.NoPermissionError:
        out[name] = "noperm"
    except redis.exceptions.AuthenticationError:
        out[name] = "auth"
anonymous = redis.Redis(host=host, socket_timeout=5)
attempt("anonymous", anonymous.ping)
attempt("wrong_password", redis.Redis(host=host, password="wrong", socket_timeout=5).ping)
user = redis.Redis(host=host, password=password, socket_timeout=5)
attempt("ping", user.ping)
attempt("own_keys", lambda: user.xadd("latscope:cmd:probe", {"command": "{}"}))
attempt("other_keys", lambda: user.set("elsewhere:key", "1"))
attempt("config", lambda: user.config_get("bind"))
attempt("flushall", user.flushall)
attempt("keys", lambda: user.keys("*"))
attempt("acl", user.acl_list)
attempt("shutdown", user.shutdown)
attempt("admin_config", lambda: redis.Redis(host=host, username="latscope-admin", password=admin,
                                             socket_timeout=5).config_get("bind"))
print(json.dumps(out))
"""
    proc = in_netns(mlab.plan.hosts[0].netns, [python, "-c", script, mlab.plan.manager.address,
                                               secret["latscope_redis_password"], secret["latscope_redis_admin_password"]])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "anonymous": "auth", "wrong_password": "auth", "ping": "ok", "own_keys": "ok", "other_keys": "noperm",
        "config": "noperm", "flushall": "noperm", "keys": "noperm", "acl": "noperm", "shutdown": "noperm",
        "admin_config": "ok"}


def test_the_collectors_user_can_run_the_whole_control_protocol(deployed, mlab, secret):
    """Every command control.py's Controller and Agent send is in the user's ACL (the ACL is not too tight)."""
    settings = RedisSettings(host=mlab.plan.manager.address, password=secret["latscope_redis_password"])
    controller, agent = Controller(connect(settings)), Agent(connect(settings), "host1")
    try:
        command = make_command("ping", "ping")
        controller.send("host1", command)
        [(entry_id, received)] = agent.next_commands(block_ms=1000)
        agent.ack(received, True, state={"state": "idle"}, entry_id=entry_id)
        assert controller.wait_acks({"host1": command.command_id}, timeout_s=5)["host1"].ok
        agent.set_state({"state": "idle"})
        agent.heartbeat({"pid": os.getpid(), "version": "test", "hook_profile": "tracepoint", "session": None,
                         "uptime_s": 1.0}, interval_s=5)
        assert controller.alive(["host1"])["host1"].host == "host1"
        assert controller.host_states(["host1"])["host1"]["state"] == "idle"
        agent.publish_counters("acl1", {"records": 3}, summary={"ok": True})
        assert controller.session_results("acl1", ["host1"])["host1"].counters["records"] == 3
    finally:
        controller.client.close()
        agent.close()


def test_mariadb_users_have_only_their_privileges(deployed, mlab, secret):
    row = "('acl-probe', 'bare_metal', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
    with _db(mlab, "latscope_collector", secret["latscope_mysql_collector_password"]) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT IGNORE INTO hosts (name, kind, first_seen, last_seen) VALUES {row}")
        cur.execute("SELECT MAX(version) FROM schema_migrations")
        assert cur.fetchone()[0] >= 1
        assert _denied(cur, "DELETE FROM hosts") == DENIED
        assert _denied(cur, "DROP TABLE hosts") == DENIED
        assert _denied(cur, "UPDATE hosts SET kind = 'vm'") == DENIED
        assert _denied(cur, "SELECT COUNT(*) FROM packet_samples") == DENIED
        assert _denied(cur, "CREATE TABLE analysis_runs (id INT PRIMARY KEY)") == DENIED
    with _db(mlab, "latscope_analysis", secret["latscope_mysql_analysis_password"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hosts WHERE name = 'acl-probe'")
        assert cur.fetchone()[0] == 1
        assert _denied(cur, f"INSERT INTO hosts (name, kind, first_seen, last_seen) VALUES {row}") == DENIED
        assert _denied(cur, "DELETE FROM packet_samples") == DENIED
        assert _denied(cur, "DROP TABLE packet_samples") == DENIED
        assert _denied(cur, "CREATE TABLE scratch (id INT PRIMARY KEY)") == DENIED
        cur.execute("CREATE TABLE analysis_runs (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute("INSERT INTO analysis_runs VALUES (1), (2)")
        cur.execute("DELETE FROM analysis_runs WHERE id = 1")
        cur.execute("SELECT COUNT(*) FROM analysis_runs")
        assert cur.fetchone()[0] == 1
        cur.execute("DROP TABLE analysis_runs")


def test_the_time_sync_prober_runs_on_the_manager(deployed, mlab, secret, in_netns):
    config_dir = mlab.files.root / "hosts" / "manager" / "etc" / "latscope"
    token = config_dir / "timesync.token"
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == secret["latscope_timesync_token"]
    command = mlab.files.root / "hosts" / "manager" / "opt" / "latscope" / "bin" / "latscope-timesync-sync"
    host1 = mlab.plan.hosts[0]
    # No collector runs on host1: the round reports it unsynchronised (not acknowledged) and stores that,
    # through Redis and MariaDB with the credentials the role installed.
    proc = in_netns(mlab.plan.manager.netns, [str(command), "--host", f"host1={host1.address}", "--session", "tsm1",
                                              "--bursts", "1", "--probes", "2"], timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    estimate = json.loads(proc.stdout.strip().splitlines()[-1])["estimates"]["host1"]
    assert estimate["synchronised"] is False and "not acknowledged" in estimate["reason"]
    with _db(mlab, "latscope", secret["latscope_mysql_password"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, synchronised FROM clock_estimates WHERE session_id = 'tsm1'")
        assert cur.fetchall() == (("host1", 0),)


def test_check_mode_predicts_the_repair_and_changes_nothing(deployed, mlab, secret):
    maria = mlab.files.root / "mariadb" / "my.cnf"
    services.mariadb_sql(maria, "REVOKE DROP ON `latscope`.`analysis_runs` FROM 'latscope_analysis'@'%';\n")
    config = mlab.files.redis_dir / "redis.conf"
    tampered = config.read_text() + "# changed by hand\n"
    config.write_text(tampered)
    redis_pid = int(subprocess.run(["pgrep", "-P", mlab.files.redis_pidfile.read_text().strip()],
                                   capture_output=True, text=True, check=True).stdout.split()[0])

    check = _play(mlab, "--check", "--diff")

    assert check.returncode == 0, check.stdout[-3000:]
    assert _recap(check.stdout)["changed"] >= 2        # the configuration and the analysis user
    assert "GRANT DROP ON `latscope`.`analysis_runs` TO 'latscope_analysis'@'%'" in check.stdout
    assert config.read_text() == tampered
    assert Path(f"/proc/{redis_pid}").exists()         # not restarted
    grants = services.mariadb_sql(maria, "SHOW GRANTS FOR 'latscope_analysis'@'%';\n")
    assert not re.search(r"GRANT [^\n]*\bDROP\b[^\n]* ON `latscope`.`analysis_runs`", grants)
    for name, value in secret.items():
        assert value not in check.stdout + check.stderr, f"{name} appears in the check run's output"
