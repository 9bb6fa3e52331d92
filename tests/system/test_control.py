"""The control plane for real: Controller, Agent and ControlLoop against a real redis-server.

Each test module run starts its own password-protected redis-server on a free
loopback port (and one test a second one that it kills and restarts); each test
uses its own key prefix, so tests never see each other's commands.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    Agent, Controller, ControlPlaneError, Keys, RedisSettings, connect, make_command, start_command)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.collector.control_loop import ControlLoop

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own: loopback only, a password, data in a tmp dir, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.password = secrets.token_urlsafe(18)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def settings(self) -> RedisSettings:
        return RedisSettings(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> None:
        config = self.directory / "redis.conf"
        config.write_text("\n".join([
            "bind 127.0.0.1", f"port {self.port}", f'requirepass "{self.password}"', f"dir {self.directory}",
            f"logfile {self.directory / 'redis.log'}", 'save ""', "appendonly no", "daemonize no", ""]))
        config.chmod(0o600)
        self.proc = subprocess.Popen(["redis-server", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:   # await the condition "accepts an authenticated PING"
            try:
                connect(self.settings).close()
                return
            except ControlPlaneError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not come up: {(self.directory / 'redis.log').read_text()[-2000:]}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the clients."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """Keys of this test only."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clients():
    """Clients a test opened, closed at its end."""
    opened = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture
def controller(redis_server, prefix, clients) -> Controller:
    client = connect(redis_server.settings)
    clients.append(client)
    return Controller(client, prefix)


@pytest.fixture
def new_loop(redis_server, prefix):
    """Make a ControlLoop for a host whose agents connect to ``settings`` (the module's Redis by default)."""
    loops = []

    def make(host, handler, settings=None, **options):
        def agent_factory():
            return Agent(connect(settings or redis_server.settings), host, prefix)
        options.setdefault("heartbeat_interval_s", 1.0)
        loop = ControlLoop(agent_factory, handler, **options)
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        if loop.agent is not None:
            loop.agent.close()


class RecordingHandler:
    """The part of a collector that would load BPF: here it records what it was told."""

    def __init__(self) -> None:
        self.calls = []

    def start(self, command):
        self.calls.append(("start", command))
        return {"hook_profile": "tracepoint", "flow_dport": command.flow.dport}

    def stop(self, command):
        self.calls.append(("stop", command))
        return {"records": 7}

    def sync(self, command):
        self.calls.append(("sync", command))
        return {"last_sync": command.session}


def answer_until(loop: ControlLoop, count: int, timeout_s: float = 10.0) -> int:
    """Run the loop until it has answered ``count`` commands (or the timeout)."""
    answered = 0
    deadline = time.monotonic() + timeout_s
    while answered < count and time.monotonic() < deadline:
        answered += loop.run_once(0.5)
    return answered


def test_start_round_trip_through_controller_agent_and_loop(controller, new_loop):
    handler = RecordingHandler()
    loop = new_loop("h1", handler)
    command = start_command("s1", {"dst": "10.0.0.2", "dport": 5201}, {"size": 4096}, hook_profile="tracepoint")
    controller.send("h1", command)
    assert loop.run_once(2.0) == 1
    ack = controller.wait_acks({"h1": command.command_id}, timeout_s=5)["h1"]
    assert (ack.ok, ack.status, ack.error, ack.command_id) == (True, "ok", "", command.command_id)
    assert ack.state["state"] == "running" and ack.state["session"] == "s1" and ack.state["flow_dport"] == 5201
    assert handler.calls == [("start", command)]
    assert (loop.commands_handled, loop.commands_rejected, loop.redis_errors) == (1, 0, 0)
    state = controller.host_states(["h1", "h9"])
    assert state["h1"]["state"] == "running" and state["h1"]["session"] == "s1" and state["h1"]["hook_profile"] == "tracepoint"
    assert state["h1"]["last_command_id"] and state["h9"] == {"state": "unknown"}
    beats = controller.alive(["h1", "h9"])
    assert beats["h9"] is None
    assert (beats["h1"].pid, beats["h1"].session, beats["h1"].hook_profile) == (os.getpid(), "s1", "tracepoint")


def test_start_session_wakes_on_the_ack_of_a_live_daemon(controller, new_loop):
    handler = RecordingHandler()
    loop = new_loop("h1", handler)
    done, failures = threading.Event(), []

    def serve():
        try:
            while not done.is_set():
                loop.run_once(0.2)
        except Exception as exc:  # pylint: disable=broad-except  # reported by the test below
            failures.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        began = time.monotonic()
        acks = controller.start_session(["h1"], "live", {"dport": 80}, {}, timeout_s=20)
        waited = time.monotonic() - began
        stopped = controller.stop_session(["h1"], "live", timeout_s=20)
        synced = controller.sync(["h1"], "live", timeout_s=20)
        pinged = controller.ping(["h1"], timeout_s=20)
    finally:
        done.set()
        thread.join(timeout=10)
    assert not failures and not thread.is_alive()
    assert acks["h1"].ok and acks["h1"].state["session"] == "live"
    assert waited < 5, f"start_session took {waited:.1f}s: it did not wake on the ack"
    assert stopped["h1"].ok and stopped["h1"].state["state"] == "idle" and stopped["h1"].state["records"] == 7
    assert synced["h1"].ok and synced["h1"].state["last_sync"] == "live"
    assert pinged["h1"].ok
    assert [op for op, _command in handler.calls] == ["start", "stop", "sync"]


def test_a_silent_host_is_reported_as_timeout_within_the_timeout(controller, new_loop):
    loop = new_loop("h1", RecordingHandler())
    ids = {}
    for host in ("h1", "h2"):
        command = start_command("s2", {"dport": 22}, {})
        controller.send(host, command)
        ids[host] = command.command_id
    assert loop.run_once(2.0) == 1
    began = time.monotonic()
    acks = controller.wait_acks(ids, timeout_s=1.5)
    waited = time.monotonic() - began
    assert list(acks) == ["h1", "h2"]
    assert acks["h1"].ok
    assert (acks["h2"].ok, acks["h2"].status, acks["h2"].timed_out) == (False, "timeout", True)
    assert "no ack within 1.5s" in acks["h2"].error and acks["h2"].command_id == ids["h2"]
    assert 1.5 <= waited <= 2.5, waited


def test_a_command_sent_while_no_daemon_reads_is_delivered_later_and_only_once(controller, new_loop):
    start = start_command("s3", {"dport": 443}, {}, hook_profile="auto")
    controller.send("h1", start)                         # nobody is reading yet
    first = RecordingHandler()
    assert new_loop("h1", first).run_once(2.0) == 1       # the daemon starts
    assert first.calls == [("start", start)]
    assert controller.wait_acks({"h1": start.command_id}, 5)["h1"].ok

    again = RecordingHandler()                              # the daemon restarts: it resumes after what it handled
    restarted = new_loop("h1", again, active_session="s3")
    assert restarted.run_once(0.3) == 0 and again.calls == []
    stop = make_command("stop", "s3")
    controller.send("h1", stop)
    assert restarted.run_once(2.0) == 1
    assert again.calls == [("stop", stop)]
    assert controller.wait_acks({"h1": stop.command_id}, 5)["h1"].ok


def test_malformed_entries_are_nacked_naming_the_field_and_the_loop_goes_on(controller, new_loop, prefix):
    handler = RecordingHandler()
    loop = new_loop("h1", handler)
    stream = Keys(prefix).commands("h1")
    raw = controller.client

    def command_json(**changes):
        body = start_command("s4", {"dport": 5201}, {}).as_dict()
        body.update(changes)
        return json.dumps(body), body["id"]

    unknown_op, unknown_op_id = command_json(op="restart")
    bad_session, bad_session_id = command_json(session="../etc/passwd")
    bad_port, bad_port_id = command_json(flow={"dport": 70000})
    expected = {   # where the nack is awaited -> the field its error must name
        raw.xadd(stream, {"command": "{garbage"}).decode(): "command",
        raw.xadd(stream, {"command": b"\xff\xfe"}).decode(): "command",
        raw.xadd(stream, {"cmd": "no command field"}).decode(): "command",
        (raw.xadd(stream, {"command": unknown_op}), unknown_op_id)[1]: "command.op",
        (raw.xadd(stream, {"command": bad_session}), bad_session_id)[1]: "command.session",
        (raw.xadd(stream, {"command": bad_port}), bad_port_id)[1]: "command.flow.dport",
    }
    good = start_command("s4", {"dport": 5201}, {})
    controller.send("h1", good)

    assert answer_until(loop, len(expected) + 1) == len(expected) + 1
    for ack_id, field in expected.items():
        ack = controller.wait_acks({"h1": ack_id}, timeout_s=5)["h1"]
        assert not ack.ok and ack.status == "error", ack
        assert ack.error.startswith(field + ": "), ack.error
    assert "70000" in controller.wait_acks({"h1": bad_port_id}, 5)["h1"].error
    assert controller.wait_acks({"h1": good.command_id}, 5)["h1"].ok
    assert handler.calls == [("start", good)]
    assert (loop.commands_rejected, loop.commands_handled, loop.connected) == (len(expected), 1, True)


def test_stop_of_an_unknown_session_names_command_session(controller, new_loop):
    handler = RecordingHandler()
    loop = new_loop("h1", handler)
    stop = make_command("stop", "nope")
    start = start_command("s5", {"dport": 1}, {})
    other = start_command("s6", {"dport": 1}, {})
    for command in (stop, start, other):
        controller.send("h1", command)
    assert answer_until(loop, 3) == 3
    acks = {c.command_id: controller.wait_acks({"h1": c.command_id}, 5)["h1"] for c in (stop, start, other)}
    assert not acks[stop.command_id].ok
    assert acks[stop.command_id].error.startswith("command.session: no such session on this host")
    assert "'nope'" in acks[stop.command_id].error
    assert acks[start.command_id].ok
    assert acks[other.command_id].error.startswith("command.session: session s5 is running")
    assert handler.calls == [("start", start)]
    assert (loop.commands_rejected, loop.commands_handled) == (2, 1)


def test_a_session_with_a_duration_is_stopped_by_the_loop(controller, new_loop):
    handler = RecordingHandler()
    loop = new_loop("h1", handler)
    controller.send("h1", start_command("short", {"dport": 1}, {}, duration_s=0.3))
    assert loop.run_once(2.0) == 1 and loop.session == "short"
    deadline = time.monotonic() + 5
    while loop.session is not None and time.monotonic() < deadline:
        loop.run_once(0.1)
    assert loop.session is None
    assert [op for op, _command in handler.calls] == ["start", "stop"]
    assert controller.host_states(["h1"])["h1"]["state"] == "idle"
    assert "session" not in controller.host_states(["h1"])["h1"]


def test_heartbeat_expires_when_the_daemon_goes_quiet(controller, new_loop):
    loop = new_loop("h1", RecordingHandler(), heartbeat_interval_s=0.1)
    loop.run_once(0)
    assert controller.alive(["h1"])["h1"] is not None
    deadline = time.monotonic() + 5                      # TTL is 3 x 0.1 s
    while controller.alive(["h1"])["h1"] is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert controller.alive(["h1"])["h1"] is None


def test_session_results_gather_every_host_and_name_a_missing_one(redis_server, controller, prefix, clients):
    client = connect(redis_server.settings)
    clients.append(client)
    agent = Agent(client, "h1", prefix)
    agent.publish_counters("s7", {"records": 120, "drops.ringbuf_full": 3, "spool.bytes": 4096}, summary={"p50_us": 18.5})
    results = controller.session_results("s7", ["h1"])["h1"]
    assert results.counters == {"drops.ringbuf_full": 3, "records": 120, "spool.bytes": 4096}
    assert results.summary == {"p50_us": 18.5} and results.last_update > 0
    with pytest.raises(InputError) as info:
        controller.session_results("s7", ["h1", "h2"])
    assert info.value.field == "hosts"
    assert "from h2 (hosts with results: h1)" in str(info.value)
    with pytest.raises(InputError) as info:
        agent.publish_counters("s7", {"Bad Name": 1})
    assert info.value.field == "counters.Bad Name"
    with pytest.raises(InputError) as info:
        controller.session_results("bad id", ["h1"])
    assert info.value.field == "session"


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server this test may kill and restart on the same port."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_the_loop_survives_redis_dying_and_reconnects_when_it_is_back(own_redis, new_loop, prefix, clients, caplog):
    caplog.set_level(logging.DEBUG)
    handler = RecordingHandler()
    loop = new_loop("h1", handler, settings=own_redis.settings, backoff_initial_s=0.05, backoff_max_s=0.2)
    client = connect(own_redis.settings)
    clients.append(client)
    start = start_command("s8", {"dport": 9}, {})
    Controller(client, prefix).send("h1", start)
    assert loop.run_once(2.0) == 1 and loop.connected

    own_redis.kill()
    slowest = 0.0
    for attempt in range(6):
        began = time.monotonic()
        assert loop.run_once(0.3) == 0
        slowest = max(slowest, time.monotonic() - began)
        assert loop.redis_errors >= attempt + 1 and not loop.connected
    assert slowest < 1.3, f"run_once blocked for {slowest:.2f}s while Redis was down"
    errors_while_down = loop.redis_errors

    own_redis.start()                                    # same port, empty (no persistence)
    deadline = time.monotonic() + 10
    while not loop.connected and time.monotonic() < deadline:
        loop.run_once(0.2)
    assert loop.connected and loop.redis_errors == errors_while_down
    fresh = connect(own_redis.settings)
    clients.append(fresh)
    controller = Controller(fresh, prefix)
    stop = make_command("stop", "s8")                    # the loop still knows what it is measuring
    controller.send("h1", stop)
    assert answer_until(loop, 1) == 1
    assert controller.wait_acks({"h1": stop.command_id}, 5)["h1"].ok
    assert handler.calls == [("start", start), ("stop", stop)]
    assert controller.host_states(["h1"])["h1"]["state"] == "idle"
    assert own_redis.password not in caplog.text


def test_a_wrong_password_is_named_and_never_shown(redis_server, new_loop, caplog):
    wrong = "Wr0ng-" + secrets.token_hex(8)
    for settings in (replace(redis_server.settings, password=wrong), replace(redis_server.settings, password=None)):
        with pytest.raises(InputError) as info:
            connect(settings)
        assert info.value.field == "redis.password"
        assert f"127.0.0.1:{redis_server.port}" in str(info.value)
        for text in (str(info.value), repr(info.value), repr(settings)):
            assert wrong not in text and redis_server.password not in text
    caplog.set_level(logging.DEBUG)
    loop = new_loop("h1", RecordingHandler(), settings=replace(redis_server.settings, password=wrong))
    assert loop.run_once(0) == 0                         # does not raise: the daemon keeps measuring
    assert loop.redis_errors == 1 and not loop.connected
    assert "redis.password" in caplog.text and wrong not in caplog.text


def test_a_named_user_logs_in_and_a_refused_one_is_named_without_its_password(redis_server, clients):
    user, password = f"latscope-t{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    admin = connect(redis_server.settings)
    clients.append(admin)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["~*"], commands=["+@all"])
    try:
        named = connect(replace(redis_server.settings, username=user, password=password))
        clients.append(named)
        assert named.acl_whoami() in (user, user.encode())
        wrong = "Wr0ng-" + secrets.token_hex(8)
        for settings in (replace(redis_server.settings, username=user, password=wrong),
                         replace(redis_server.settings, username="latscope-nobody", password=password)):
            with pytest.raises(InputError) as info:
                connect(settings)
            assert info.value.field == "redis.password" and f"for user {settings.username}" in str(info.value)
            assert wrong not in str(info.value) and password not in str(info.value)
    finally:
        admin.acl_deluser(user)


def test_an_unreachable_redis_is_one_clear_error(redis_server):
    settings = RedisSettings(host="127.0.0.1", port=free_port(), password=redis_server.password)
    with pytest.raises(ControlPlaneError) as info:
        connect(settings)
    assert f"Redis at 127.0.0.1:{settings.port} is unreachable" in str(info.value)
    assert redis_server.password not in str(info.value)


AGENT_IN_NETNS = r"""
import json, os, sys, time
from ansible_collections.latscope.latscope.plugins.module_utils.control import Agent, RedisSettings, connect
from latscope.collector.control_loop import ControlLoop

manager, host, prefix = sys.argv[1:4]
settings = RedisSettings(host=manager, port=6379, password=os.environ["LATSCOPE_REDIS_PASSWORD"])

class Handler:
    def start(self, command):
        return {"flow_dport": command.flow.dport}
    def stop(self, command):
        return {}
    def sync(self, command):
        return {}

loop = ControlLoop(lambda: Agent(connect(settings), host, prefix), Handler(), 1.0)
deadline = time.monotonic() + 60
while loop.commands_handled < 2 and time.monotonic() < deadline:
    loop.run_once(0.5)
print(json.dumps({"handled": loop.commands_handled, "rejected": loop.commands_rejected, "errors": loop.redis_errors}))
"""


@pytest.mark.lab
def test_a_daemon_in_a_lab_host_namespace_talks_to_the_manager_redis(lab, lab_secrets, python, prefix, clients):
    host = lab.plan.hosts[0]
    manager = lab.plan.manager.address
    password = lab_secrets["latscope_redis_password"]
    client = connect(RedisSettings(host=manager, port=6379, password=password))
    clients.append(client)
    controller = Controller(client, prefix)
    env = dict(os.environ, LATSCOPE_REDIS_PASSWORD=password)
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, python, "-c", AGENT_IN_NETNS, manager, host.name, prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = controller.start_session([host.name], "lab-s1", {"dport": 5201}, {"size": 65536}, timeout_s=30)
        peers = [c["addr"].rsplit(":", 1)[0] for c in client.client_list()]
        stopped = controller.stop_session([host.name], "lab-s1", timeout_s=30)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert started[host.name].ok, (started, err)
    assert started[host.name].state["flow_dport"] == 5201
    assert host.address in peers, peers               # the agent's connection comes from the host's namespace
    assert stopped[host.name].ok and stopped[host.name].state["state"] == "idle"
    assert proc.returncode == 0, err
    assert json.loads(out) == {"handled": 2, "rejected": 0, "errors": 0}
