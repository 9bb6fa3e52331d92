"""Collector configuration validation (pure logic and files in tmp_path)."""

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.collector.config import config_from_dict, load_config


def _base(**extra):
    return {"host": "host1", **extra}


def test_defaults_and_password_file(tmp_path):
    secret = tmp_path / "mysql"
    secret.write_text("s3cret\n")
    config = config_from_dict(_base(mysql={"password_file": str(secret)}), "c.yml")
    assert config.mysql.password == "s3cret"
    assert config.interfaces == ("eth0",) and config.limits.max_entries == 65536
    assert "s3cret" not in repr(config)
    assert config.flow_metrics is not None and config.flow_metrics.max_flows == 16384
    assert not config.timesync.enabled


def test_flow_metrics_off_and_timesync_on(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o600)
    config = config_from_dict(_base(flow_metrics={"enabled": False},
                                    timesync={"interface": "eth0", "manager_address": "198.18.0.1",
                                              "token_file": str(token)}), "c.yml")
    assert config.flow_metrics is None
    assert config.timesync.enabled and config.timesync.responder.interface == "eth0"
    assert "0123456789abcdef" not in repr(config)


def test_the_collector_logs_in_as_its_own_redis_user(tmp_path):
    secret = tmp_path / "redis"
    secret.write_text("per-host-s3cret\n")
    config = config_from_dict(_base(redis={"host": "198.18.0.2", "user": "latscope-host1", "password_file": str(secret)}),
                              "c.yml")
    assert config.redis.username == "latscope-host1" and config.redis.password == "per-host-s3cret"
    assert "per-host-s3cret" not in repr(config)
    assert config_from_dict(_base(), "c.yml").redis.username is None     # Redis's default user


@pytest.mark.parametrize("raw, field", [
    ({}, "c.yml: host"), (_base(host="bad name"), "c.yml: host"), (_base(kind="pc"), "c.yml: kind"),
    (_base(hook_profile="fentry"), "c.yml: hook_profile"), (_base(redis={"port": 0}), "c.yml: redis.port"),
    (_base(redis={"user": "latscope host1"}), "c.yml: redis.user"),
    (_base(redis=[1]), "c.yml: redis"), (_base(mysql={"password": 5}), "c.yml: mysql.password"),
    (_base(observer={"interfaces": []}), "c.yml: observer.interfaces"),
    (_base(observer={"interfaces": ["way-too-long-interface"]}), "c.yml: observer.interfaces"),
    (_base(observer={"netns": ["relative"]}), "c.yml: observer.netns"),
    (_base(observer={"ringbuf_pages": 3}), "c.yml: observer.ringbuf_pages"),
    (_base(observer={"max_entries": 1}), "c.yml: observer.max_entries"),
    (_base(spool={"max_bytes": 10}), "c.yml: spool.max_bytes"), (_base(state_dir="rel"), "c.yml: state_dir"),
    (_base(heartbeat_interval_s=0), "c.yml: heartbeat_interval_s"), (_base(colour=1), "c.yml: colour"),
    (_base(mysql={"password_file": "/nonexistent/x"}), "c.yml: mysql.password_file"),
    (_base(flow_metrics={"max_flows": 10}), "c.yml: flow_metrics.max_flows"),
    (_base(flow_metrics={"enabled": "yes"}), "c.yml: flow_metrics.enabled"),
    (_base(flow_metrics={"size": 1}), "c.yml: flow_metrics.size"),
    (_base(timesync={"interface": "eth0"}), "c.yml: timesync.manager_address"),
    (_base(timesync={"interface": "eth0", "manager_address": "198.18.0.1"}), "c.yml: timesync.token"),
    (_base(timesync={"interface": "eth0", "manager_address": "198.18.0.1", "token": "00" * 16, "port": 0}),
     "c.yml: timesync.port"),
])
def test_bad_settings_name_the_field(raw, field):
    with pytest.raises(InputError) as info:
        config_from_dict(raw, "c.yml")
    assert info.value.field == field, str(info.value)


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("host: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
