"""The control-plane wire format: encoding, decoding and naming every bad field (pure, no Redis)."""

from __future__ import annotations

import json
import uuid

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    BadCommand, Keys, RedisSettings, decode_ack, decode_command, decode_entry, decode_results, encode_command,
    heartbeat_from_dict, make_command, one_line, start_command)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling

GOOD_ID = "0b8a4a9e-3d7e-4c51-9a57-5b0f0c1d2e3f"


def start_raw(**changes):
    raw = {"id": GOOD_ID, "op": "start", "session": "s-1", "issued_at": 1700000000.5,
           "flow": {"dst": "10.0.0.2", "dport": 5201}, "sampling": {"size": 65536, "interval": 1},
           "hook_profile": "tracepoint"}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def field_of(text):
    with pytest.raises(InputError) as info:
        decode_command(text)
    return info.value


def test_start_round_trips_through_the_wire():
    command = start_command("run.2024-01_a", {"src": "10.1.0.0/16", "dport": "5201"}, Sampling(72400, (5201,), 0.5),
                            hook_profile="kprobe", duration_s=30)
    text = encode_command(command)
    back = decode_command(text.encode())
    assert back == command
    assert back.flow == FlowFilter(src="10.1.0.0/16", dport=5201)
    assert back.sampling.size == 72400 and back.duration_s == 30.0
    assert json.loads(text)["op"] == "start" and uuid.UUID(back.command_id)


@pytest.mark.parametrize("op", ["stop", "sync", "ping"])
def test_other_ops_round_trip_without_start_fields(op):
    command = make_command(op, "s1")
    assert decode_command(encode_command(command)) == command
    assert set(json.loads(encode_command(command))) == {"id", "op", "session", "issued_at"}


def test_each_command_gets_a_fresh_id():
    assert make_command("ping", "p").command_id != make_command("ping", "p").command_id


@pytest.mark.parametrize("text, field, fragment", [
    ("{not json", "command", "not valid JSON"),
    ('{"id": NaN}', "command", "not valid JSON"),
    ('{"id": "x", "issued_at": 1e400}', "command", "out of range"),
    (b"\xff\xfe{}", "command", "not UTF-8"),
    ("[1, 2]", "command", "must be a mapping"),
    ("[" * 100000, "command", "larger than"),
    ("[" * 20000 + "]" * 20000, "command", "not valid JSON"),
])
def test_unreadable_json_is_named(text, field, fragment):
    err = field_of(text)
    assert err.field == field and fragment in str(err)
    assert not isinstance(err, BadCommand)


@pytest.mark.parametrize("changes, field", [
    ({"id": ...}, "command.id"),
    ({"id": "abc"}, "command.id"),
    ({"id": GOOD_ID.upper()}, "command.id"),
    ({"id": 7}, "command.id"),
    ({"op": "restart"}, "command.op"),
    ({"op": ...}, "command.op"),
    ({"session": ""}, "command.session"),
    ({"session": "-leading-dash"}, "command.session"),
    ({"session": "a" * 65}, "command.session"),
    ({"session": "has space"}, "command.session"),
    ({"session": "trailing\n"}, "command.session"),
    ({"session": "semi;colon"}, "command.session"),
    ({"session": 5}, "command.session"),
    ({"issued_at": "now"}, "command.issued_at"),
    ({"issued_at": -1}, "command.issued_at"),
    ({"issued_at": True}, "command.issued_at"),
    ({"issued_at": ...}, "command.issued_at"),
    ({"color": "red"}, "command.color"),
    ({"flow": ...}, "command.flow"),
    ({"flow": [1, 2]}, "command.flow"),
    ({"flow": {"dport": 70000}}, "command.flow.dport"),
    ({"flow": {"sport": "http"}}, "command.flow.sport"),
    ({"flow": {"src": "300.1.1.1"}}, "command.flow.src"),
    ({"flow": {"proto": "udp"}}, "command.flow.proto"),
    ({"flow": {"vlan": 5}}, "command.flow.vlan"),
    ({"sampling": ...}, "command.sampling"),
    ({"sampling": "often"}, "command.sampling"),
    ({"sampling": {"size": 0}}, "command.sampling.size"),
    ({"sampling": {"interval": 0}}, "command.sampling.interval"),
    ({"sampling": {"ports": [0]}}, "command.sampling.ports"),
    ({"sampling": {"rate": 2}}, "command.sampling.rate"),
    ({"hook_profile": ...}, "command.hook_profile"),
    ({"hook_profile": "fentry"}, "command.hook_profile"),
    ({"duration_s": 0}, "command.duration_s"),
    ({"duration_s": "10"}, "command.duration_s"),
    ({"duration_s": 1e9}, "command.duration_s"),
])
def test_every_bad_field_of_a_start_is_named(changes, field):
    err = field_of(json.dumps(start_raw(**changes)))
    assert err.field == field, str(err)
    assert str(err).startswith(field + ": ")


@pytest.mark.parametrize("extra", ["flow", "sampling", "hook_profile", "duration_s"])
def test_start_fields_are_refused_on_stop(extra):
    raw = {"id": GOOD_ID, "op": "stop", "session": "s1", "issued_at": 1.0, extra: {}}
    err = field_of(json.dumps(raw))
    assert err.field == f"command.{extra}" and "belong to start" in str(err)


def test_an_error_after_the_id_keeps_the_id_so_the_issuer_gets_the_nack():
    err = field_of(json.dumps(start_raw(op="restart")))
    assert isinstance(err, BadCommand) and err.command_id == GOOD_ID
    assert not isinstance(field_of(json.dumps(start_raw(id="x"))), BadCommand)


def test_the_issuer_is_held_to_the_same_rules():
    with pytest.raises(InputError) as info:
        start_command("s1", {"dport": 0}, {})
    assert info.value.field == "command.flow.dport"
    with pytest.raises(InputError) as info:
        make_command("stop", "bad session")
    assert info.value.field == "command.session"


def test_stream_entry_without_a_command_field():
    with pytest.raises(InputError) as info:
        decode_entry({b"cmd": b"{}"})
    assert info.value.field == "command" and "no 'command' field" in str(info.value)
    assert decode_entry({b"command": encode_command(make_command("ping", "p")).encode()}).op == "ping"


def test_one_line_collapses_and_bounds():
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 1000)) == 300


@pytest.mark.parametrize("raw, field", [
    ({b"ok": b"1", b"state": b"{}"}, "ack.host"),
    ({b"host": b"h1", b"ok": b"yes", b"state": b"{}"}, "ack.ok"),
    ({b"host": b"h1", b"ok": b"1", b"state": b"[1]"}, "ack.state"),
    ({b"host": b"h1", b"ok": b"1", b"state": b"{oops"}, "ack.state"),
    ({b"host": b"h1", b"ok": b"1", b"error": b"\xff"}, "ack.error"),
])
def test_bad_acks_are_named(raw, field):
    with pytest.raises(InputError) as info:
        decode_ack(raw)
    assert info.value.field == field


def test_ack_decodes():
    ack = decode_ack({b"host": b"h1", b"ok": b"0", b"error": b"command.session: no", b"state": b'{"state": "idle"}',
                      b"command": GOOD_ID.encode()})
    assert (ack.host, ack.ok, ack.status, ack.state, ack.command_id) == ("h1", False, "error", {"state": "idle"}, GOOD_ID)


def beat(**changes):
    raw = {"host": "h1", "pid": 42, "version": "0.1.0", "hook_profile": "tracepoint", "session": None,
           "uptime_s": 1.5, "at": 1700000000.0}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("changes, field", [
    ({"host": "bad host"}, "heartbeat.host"), ({"pid": 0}, "heartbeat.pid"), ({"pid": "x"}, "heartbeat.pid"),
    ({"version": 1}, "heartbeat.version"), ({"hook_profile": "magic"}, "heartbeat.hook_profile"),
    ({"session": "bad id!"}, "heartbeat.session"), ({"uptime_s": -1}, "heartbeat.uptime_s"), ({"at": None}, "heartbeat.at"),
])
def test_bad_heartbeats_are_named(changes, field):
    with pytest.raises(InputError) as info:
        heartbeat_from_dict(beat(**changes))
    assert info.value.field == field


def test_heartbeat_round_trip():
    assert heartbeat_from_dict(heartbeat_from_dict(beat(session="s1")).as_dict()).session == "s1"


def test_results_decode_and_name_bad_counters():
    results = decode_results("h1", {b"records": b"12", b"drops.ringbuf_full": b"0", b"rate": b"1.5",
                                    b"last_update": b"1700000000.25", b"summary": b'{"p50_us": 12}'})
    assert results.counters == {"drops.ringbuf_full": 0, "rate": 1.5, "records": 12}
    assert results.summary == {"p50_us": 12} and results.last_update == 1700000000.25
    with pytest.raises(InputError) as info:
        decode_results("h1", {b"records": b"many", b"last_update": b"1"})
    assert info.value.field == "results.h1.records"
    with pytest.raises(InputError) as info:
        decode_results("h1", {b"records": b"1"})
    assert info.value.field == "results.h1.last_update"


def test_keys_are_named_under_the_prefix():
    keys = Keys("lab1")
    assert keys.commands("h1") == "lab1:cmd:h1"
    assert keys.ack(GOOD_ID) == f"lab1:ack:{GOOD_ID}"
    assert keys.heartbeat("h1") == "lab1:hb:h1"
    assert keys.state("h1") == "lab1:state:h1"
    assert keys.results("s1", "h1") == "lab1:session:s1:host:h1"
    assert keys.session_hosts("s1") == "lab1:session:s1:hosts"
    assert Keys().commands("h") == "latscope:cmd:h"
    with pytest.raises(InputError) as info:
        Keys("a:b")
    assert info.value.field == "prefix"


@pytest.mark.parametrize("raw, field", [
    ({"port": 0}, "redis.port"), ({"port": "x"}, "redis.port"), ({"host": "a b"}, "redis.host"),
    ({"db": -1}, "redis.db"), ({"socket_timeout_s": 1}, "redis.socket_timeout_s"), ({"username": "x"}, "redis.username"),
    ({"user": "latscope host1"}, "redis.user"), ({"user": "-x"}, "redis.user"), ({"user": 7}, "redis.user"),
    ({"user": "u" * 129}, "redis.user"), ({"user": "a>b"}, "redis.user"),
])
def test_redis_settings_name_bad_fields(raw, field):
    with pytest.raises(InputError) as info:
        RedisSettings.from_dict(raw)
    assert info.value.field == field


def test_redis_user_is_optional_and_named_user_in_a_mapping():
    assert RedisSettings.from_dict({}).username is None and RedisSettings().who == "default"
    assert RedisSettings.from_dict({"user": ""}).username is None
    settings = RedisSettings.from_dict({"user": "latscope-host1.dc1", "password": "x"})
    assert settings.username == "latscope-host1.dc1" and settings.who == "latscope-host1.dc1"
    assert "latscope-host1.dc1" in repr(settings)


def test_a_bad_user_is_one_error_naming_the_field_and_the_value():
    with pytest.raises(InputError) as info:
        RedisSettings.from_dict({"user": "two words"}, prefix="c.yml: redis")
    assert info.value.field == "c.yml: redis.user" and "two words" in str(info.value)
    with pytest.raises(InputError) as info:
        RedisSettings.from_dict({"colour": "blue"})
    assert info.value.field == "redis.colour" and "user" in str(info.value)


def test_redis_password_never_shows():
    secret = "s3cr3t-Pa55"
    settings = RedisSettings.from_dict({"host": "10.0.0.1", "password": secret})
    assert settings.password == secret
    assert secret not in repr(settings) and secret not in str(settings)
    with pytest.raises(InputError) as info:
        RedisSettings.from_dict({"password": [secret]})
    assert info.value.field == "redis.password" and secret not in str(info.value)
