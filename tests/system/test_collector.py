"""The collector daemon end to end: Redis commands in, BPF on the real kernel, rows in MariaDB.

Two daemons (host1 observing itself and its container, host2 itself) run in
their namespaces exactly as the observer role runs them; the test drives them
through the manager's Redis with the Controller the Ansible modules use.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.clock import new_token
from ansible_collections.latscope.latscope.plugins.module_utils.control import Controller, RedisSettings, connect
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from latscope.lab import lab as lab_ops
from latscope.lab.netops import wait_listening
from latscope.lab.services import running_pid, wait_for

pytestmark = pytest.mark.lab

PORT = 5301
SAMPLING = {"size": 72400, "interval": 0.5}


def _bpftool(*args: str) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _fd_ids(pid: int, field: str) -> set[int]:
    """The ``field`` (link_id, prog_id) of every BPF file descriptor process ``pid`` holds (/proc fdinfo)."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(f"{field}:"):
                ids.add(int(line.split()[1]))
    return ids


def _links_of(pid: int) -> set[int]:
    """Ids of the BPF links (raw tracepoints, cgroup links) held by process ``pid``."""
    return _fd_ids(pid, "link_id")


def _programs_of(pid: int) -> set[int]:
    return _fd_ids(pid, "prog_id")


def _existing_links(ids: set[int]) -> set[int]:
    return {link["id"] for link in _bpftool("link", "show")} & ids


def _cgroup_programs() -> set[int]:
    out = _bpftool("cgroup", "tree", str(kernel_mounts.ensure_kernel_mounts().cgroup2))
    return {prog["id"] for entry in out for prog in entry.get("programs", [])}


class Daemon:
    def __init__(self, netns: str, config: Path, log: Path) -> None:
        self.netns, self.config, self.log = netns, config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m", "latscope",
                                      "collector", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True)
        line = self.proc.stdout.readline()
        assert "ready" in line, f"collector did not start: {line!r} {self.log.read_text()[-2000:]}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def fleet(lab, lab_secrets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collector")
    plan = lab.plan
    manager = plan.manager.address
    db = {"host": manager, "port": 3306, "user": "latscope", "password": lab_secrets["latscope_mysql_password"],
          "database": "latscope"}
    secret_dir = tmp / "secrets"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "redis").write_text(lab_secrets["latscope_redis_password"])
    (secret_dir / "mysql").write_text(lab_secrets["latscope_mysql_password"])
    (secret_dir / "timesync").write_text(new_token() + "\n")
    for secret in secret_dir.iterdir():
        secret.chmod(0o600)
    daemons = {}
    for name, netns_extra in (("host1", [f"/run/netns/{plan.node('host1-c1').netns}"]), ("host2", [])):
        node = plan.node(name)
        config = {"host": name, "redis": {"host": manager, "password_file": str(secret_dir / "redis")},
                  "mysql": {"host": manager, "user": "latscope", "database": "latscope",
                            "password_file": str(secret_dir / "mysql")},
                  "observer": {"interfaces": ["eth0"], "netns": netns_extra},
                  "state_dir": str(tmp / name), "heartbeat_interval_s": 0.5,
                  "timesync": {"interface": "eth0", "manager_address": manager,
                               "token_file": str(secret_dir / "timesync")}}
        path = tmp / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        migrated = subprocess.run([sys.executable, "-m", "latscope", "schema", "migrate", "--config", str(path)],
                                  capture_output=True, text=True, check=False)
        assert migrated.returncode == 0, migrated.stderr
        assert json.loads(migrated.stdout)["version"] >= 1
        daemons[name] = Daemon(node.netns, path, tmp / f"{name}.log")
        daemons[name].start()
    client = connect(RedisSettings(host=manager, password=lab_secrets["latscope_redis_password"]))
    try:
        yield {"daemons": daemons, "controller": Controller(client), "db": db, "plan": plan, "secrets": secret_dir}
    finally:
        for daemon in daemons.values():
            if daemon.proc and daemon.proc.poll() is None:
                daemon.stop()
        client.close()


def _iperf(plan, client_node: str, seconds: int = 2, rate: str = "1G") -> None:
    server_node = plan.node("host2")
    server = subprocess.Popen(["ip", "netns", "exec", server_node.netns, "iperf3", "-s", "-1", "-B",
                               server_node.address, "-p", str(PORT)], stdout=subprocess.DEVNULL)
    try:
        wait_listening(server_node.netns, server_node.address, PORT)
        client = subprocess.run(["ip", "netns", "exec", plan.node(client_node).netns, "iperf3", "-c",
                                 server_node.address, "-p", str(PORT), "-t", str(seconds), "-b", rate],
                                capture_output=True, text=True, timeout=60, check=False)
        assert client.returncode == 0, client.stderr
    finally:
        server.wait(timeout=30)


def _rows(db, session: str) -> dict[str, int]:
    with pymysql.connect(**db) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, COUNT(*) FROM packet_samples WHERE session_id = %s GROUP BY host", (session,))
        return dict(cur.fetchall())


def test_session_through_redis_stores_every_record_despite_a_database_outage(fleet, lab, lab_settings):
    controller, plan, db = fleet["controller"], fleet["plan"], fleet["db"]
    hosts = ["host1", "host2"]
    wait_for(lambda: all(beat is not None for beat in controller.alive(hosts).values()), "heartbeats", 30)
    acks = controller.start_session(hosts, "outage1", {"dport": PORT}, SAMPLING, timeout_s=30)
    assert all(ack.ok for ack in acks.values()), acks

    _iperf(plan, "host1")
    pidfile = Path(lab.files.root) / "mariadb" / "run" / "mysqld.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: running_pid(pidfile, "mariadbd") is None, "mariadbd to stop")
    outage_started = time.monotonic()
    _iperf(plan, "host1-c1")            # measured while the database is down: spooled, not lost
    wait_for(lambda: time.monotonic() - outage_started >= 30, "a 30 s outage", 40, 1.0)
    lab_ops.up(lab_settings)            # MariaDB comes back

    acks = controller.stop_session(hosts, "outage1", timeout_s=30)
    assert all(ack.ok for ack in acks.values()), acks
    results = controller.session_results("outage1", hosts)
    for host in hosts:
        counters = results[host].counters
        assert counters["emitted"] > 100, (host, counters)
        assert counters["store_spooled_records"] > 0, (host, counters)
    expected = {h: results[h].counters["emitted"] - results[h].counters.get("store_spool_dropped", 0) for h in hosts}
    rows = wait_for(lambda: _rows(db, "outage1") == expected and _rows(db, "outage1"),
                    f"rows to equal the records ({expected})", 90, 0.5)
    print(f"stored rows per host after a 30 s MariaDB outage: {rows} (records {expected})")

    # the 16 flow metrics came along, every sampling.interval, through the same outage
    with pymysql.connect(**db) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, COUNT(*), MAX(bytes_sent), MAX(bytes_received), MAX(cwnd) FROM flow_metrics "
                    "WHERE session_id = 'outage1' AND %s IN (sport, dport) GROUP BY host", (PORT,))
        metrics = {host: rest for host, *rest in cur.fetchall()}
    print(f"flow-metric rows per host: {metrics}")
    assert metrics["host1"][0] >= 2 and metrics["host1"][1] > 1_000_000 and metrics["host1"][3] > 0, metrics
    assert metrics["host2"][2] > 1_000_000, metrics        # the receiver's view of the same flows
    for host in hosts:
        assert results[host].counters["flows.rows"] >= metrics[host][0], results[host].counters
        assert results[host].counters["flows.map_full"] == 0


def test_bad_commands_are_refused_and_the_daemon_keeps_running(fleet):
    controller = fleet["controller"]
    acks = controller.stop_session(["host1"], "never-started", timeout_s=15)
    assert not acks["host1"].ok and "command.session" in acks["host1"].error
    assert fleet["daemons"]["host1"].proc.poll() is None
    acks = controller.start_session(["host1"], "ok1", {"dport": PORT}, SAMPLING, timeout_s=30)
    assert acks["host1"].ok, acks
    acks = controller.stop_session(["host1"], "ok1", timeout_s=30)
    assert acks["host1"].ok, acks


def test_kill_9_leaves_nothing_attached_and_a_restart_resumes(fleet):
    controller, daemons = fleet["controller"], fleet["daemons"]
    acks = controller.start_session(["host1"], "crash1", {"dport": PORT}, SAMPLING, timeout_s=30)
    assert acks["host1"].ok, acks
    pid = daemons["host1"].proc.pid
    links, programs = _links_of(pid), _programs_of(pid)
    assert len(links) >= 11 and programs & _cgroup_programs(), (links, programs)
    assert daemons["host1"].stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not _existing_links(links), "the kernel to drop every link of the killed daemon", 10)
    wait_for(lambda: not programs & _cgroup_programs(), "its cgroup programs to be detached", 10)

    daemons["host1"].start()            # the supervisor's restart
    wait_for(lambda: controller.host_states(["host1"])["host1"].get("session") == "crash1", "the resumed session")
    pid = daemons["host1"].proc.pid
    links = _links_of(pid)
    assert len(links) >= 11
    acks = controller.stop_session(["host1"], "crash1", timeout_s=30)
    assert acks["host1"].ok, acks
    wait_for(lambda: not _existing_links(links), "detach on stop", 10)
    assert daemons["host1"].stop() == 0
    daemons["host1"].start()


SESSION_PLAY = """
- name: Drive a session with the collection's modules
  hosts: manager
  gather_facts: false
  vars:
    redis: &redis
      redis_host: "{{ latscope_manager_address }}"
      redis_password: "{{ latscope_redis_password }}"
  tasks:
    - name: Start
      latscope.latscope.latscope_session:
        <<: *redis
        hosts: [host1, host2]
        session: mod1
        flow: {dport: %(port)d}
        sampling: {size: 72400, interval: 0.5}
      delegate_to: localhost
      register: __start
    - name: Start again
      latscope.latscope.latscope_session:
        <<: *redis
        hosts: [host1, host2]
        session: mod1
        flow: {dport: %(port)d}
        sampling: {size: 72400, interval: 0.5}
      delegate_to: localhost
      register: __again
    - name: Stop, in check mode
      latscope.latscope.latscope_session:
        <<: *redis
        hosts: [host1, host2]
        session: mod1
        state: stopped
      delegate_to: localhost
      check_mode: true
      register: __check
    - name: Stop
      latscope.latscope.latscope_session:
        <<: *redis
        hosts: [host1, host2]
        session: mod1
        state: stopped
      delegate_to: localhost
      register: __stop
    - name: Results
      latscope.latscope.latscope_results:
        <<: *redis
        session: mod1
        hosts: [host1, host2]
      delegate_to: localhost
      register: __results
    - name: Results of a host that never ran it
      latscope.latscope.latscope_results:
        <<: *redis
        session: mod1
        hosts: [host1, host2-c1]
      delegate_to: localhost
      register: __missing
      ignore_errors: true
    - name: What happened
      ansible.builtin.assert:
        that:
          - __start is changed and __start.changed_hosts == ['host1', 'host2']
          - __start.hosts.host1.state.state == 'running'
          - __again is not changed
          - __check is changed and __check.changed_hosts == ['host1', 'host2']
          - __stop is changed
          - __results.hosts | length == 2 and __results.totals.emitted is defined
          - __missing is failed and 'host2-c1' in __missing.msg
"""


def test_the_modules_drive_sessions_idempotently_without_leaking_secrets(fleet, lab, lab_secrets, tmp_path):
    wait_for(lambda: all(beat is not None for beat in fleet["controller"].alive(["host1", "host2"]).values()),
             "heartbeats", 30)
    playbook = tmp_path / "session.yml"
    playbook.write_text(SESSION_PLAY % {"port": PORT})
    env = dict(os.environ, ANSIBLE_CONFIG=str(Path(__file__).resolve().parents[2] / "ansible.cfg"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.files.inventory_dir),
                           str(playbook), "-vvv"], capture_output=True, text=True, env=env, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    for secret in lab_secrets.values():
        assert secret not in output
    # the states the daemons report agree with what the modules said
    states = fleet["controller"].host_states(["host1", "host2"])
    assert all(state.get("state") == "idle" for state in states.values()), states


def test_time_sync_through_the_daemons_stores_an_estimate_per_host(fleet):
    """`latscope timesync sync` on the manager arms both daemons' responders over Redis and probes them."""
    plan, db, secret_dir = fleet["plan"], fleet["db"], fleet["secrets"]
    manager = plan.manager
    run = subprocess.run([sys.executable, "-m", "latscope", "timesync", "sync", "--interface", manager.uplink,
                          "--netns", f"/run/netns/{manager.netns}", "--token-file", str(secret_dir / "timesync"),
                          "--host", f"host1={plan.node('host1').address}",
                          "--host", f"host2={plan.node('host2').address}", "--session", "sync1",
                          "--redis-host", manager.address, "--redis-password-file", str(secret_dir / "redis"),
                          "--mysql-host", manager.address, "--mysql-password-file", str(secret_dir / "mysql")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    states = fleet["controller"].host_states(["host1", "host2"])
    assert all(state.get("timesync") == "armed" for state in states.values()), states
    with pymysql.connect(**db) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, synchronised, offset_ns, error_ns FROM clock_estimates WHERE session_id = 'sync1'")
        estimates = {host: rest for host, *rest in cur.fetchall()}
    print(f"clock estimates through the daemons: {estimates}")
    assert set(estimates) == {"host1", "host2"}
    for synchronised, offset_ns, error_ns in estimates.values():
        assert synchronised == 1 and abs(offset_ns) <= error_ns    # one kernel clock: the truth is 0
