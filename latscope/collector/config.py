"""The collector's configuration file (``/etc/latscope/collector.yml``), validated.

Every value is checked before the daemon touches the kernel or the network;
a bad one is one error naming the file and the field. Passwords may be given
inline or, better, as ``password_file`` (what the observer role writes, mode
0600), and never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.control import HOOK_PROFILES, RedisSettings
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from latscope.collector.flowmetrics import FlowMetricsLimits
from latscope.collector.observer import ObserverLimits
from latscope.timesync.service import TimeSyncConfig, settings_from_dict as timesync_from_dict

DEFAULT_PATH = Path("/etc/latscope/collector.yml")
HOST_KINDS = ("bare_metal", "vm", "container")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")


@dataclass(frozen=True)
class MysqlSettings:
    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class CollectorConfig:
    host: str
    kind: str
    hook_profile: str
    redis: RedisSettings
    redis_prefix: str
    mysql: MysqlSettings
    interfaces: tuple[str, ...]
    netns: tuple[str, ...]
    limits: ObserverLimits
    entry_timeout_s: float
    spool_dir: Path
    spool_max_bytes: int
    state_dir: Path
    heartbeat_interval_s: float
    max_command_age_s: float
    flow_metrics: FlowMetricsLimits | None = None      # None: the 16 flow metrics are not collected
    timesync: TimeSyncConfig = TimeSyncConfig(enabled=False)


def _section(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InputError(f"{where}: {name}", "must be a mapping", type(value).__name__)
    return value


def _password(section: dict[str, Any], where: str) -> str:
    if "password_file" in section:
        path = Path(str(section["password_file"]))
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise InputError(f"{where}.password_file", f"cannot be read ({exc.strerror})", str(path)) from None
    password = section.get("password", "")
    if not isinstance(password, str):
        raise InputError(f"{where}.password", "must be a string (the value is not shown)")
    return password


def _number(where: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(where, "must be a number", value) from None
    if isinstance(value, bool) or not low <= number <= high:
        raise InputError(where, f"must be between {low} and {high}", value)
    return number


def _text_list(where: str, value: Any, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(where, "must be a list of strings", value)
    for item in value:
        if pattern is not None and not pattern.match(item):
            raise InputError(where, "has an invalid name", item)
    return tuple(value)


def config_from_dict(raw: Any, source: str = "collector config") -> CollectorConfig:
    """Validate ``raw`` (the parsed file); errors name ``source`` and the field."""
    if not isinstance(raw, dict):
        raise InputError(source, "must be a YAML mapping", type(raw).__name__)
    known = {"host", "kind", "hook_profile", "redis", "mysql", "observer", "spool", "state_dir",
             "heartbeat_interval_s", "max_command_age_s", "flow_metrics", "timesync"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{source}: {unknown[0]}", f"unknown setting; known: {', '.join(sorted(known))}")
    host = raw.get("host")
    if not isinstance(host, str) or not _HOST.match(host):
        raise InputError(f"{source}: host", "must be the host's inventory name (letters, digits, _.-)", host)
    kind = raw.get("kind", "bare_metal")
    if kind not in HOST_KINDS:
        raise InputError(f"{source}: kind", f"must be one of {', '.join(HOST_KINDS)}", kind)
    profile = raw.get("hook_profile", "auto")
    if profile not in HOOK_PROFILES:
        raise InputError(f"{source}: hook_profile", f"must be one of {', '.join(HOOK_PROFILES)}", profile)

    redis_raw = _section(raw, "redis", source)
    password = _password(redis_raw, f"{source}: redis") or None
    redis = RedisSettings.from_dict({k: v for k, v in redis_raw.items()
                                     if k not in ("prefix", "password", "password_file")} | {"password": password},
                                    prefix=f"{source}: redis")
    prefix = str(redis_raw.get("prefix", "latscope"))
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", prefix):
        raise InputError(f"{source}: redis.prefix", "must be 1-32 letters, digits or _.-", prefix)

    mysql_raw = _section(raw, "mysql", source)
    mysql = MysqlSettings(host=str(mysql_raw.get("host", "127.0.0.1")),
                          port=require_int(f"{source}: mysql.port", mysql_raw.get("port", 3306), 1, 65535),
                          user=str(mysql_raw.get("user", "latscope")),
                          database=str(mysql_raw.get("database", "latscope")),
                          password=_password(mysql_raw, f"{source}: mysql"))

    obs = _section(raw, "observer", source)
    limits = ObserverLimits(
        max_entries=require_int(f"{source}: observer.max_entries", obs.get("max_entries", 65536), 64, 1 << 22),
        ringbuf_pages=require_int(f"{source}: observer.ringbuf_pages", obs.get("ringbuf_pages", 256), 1, 1 << 16),
        max_keys=require_int(f"{source}: observer.max_keys", obs.get("max_keys", 4), 1, 16))
    try:
        limits.cflags()
    except InputError as exc:
        raise InputError(f"{source}: {exc.field}", exc.reason, exc.value) from None
    interfaces = _text_list(f"{source}: observer.interfaces", obs.get("interfaces", ["eth0"]), _IFNAME)
    if not interfaces:
        raise InputError(f"{source}: observer.interfaces", "must name at least one uplink device")
    netns = _text_list(f"{source}: observer.netns", obs.get("netns"))
    for path in netns:
        if not path.startswith("/"):
            raise InputError(f"{source}: observer.netns", "must be absolute paths (/run/netns/NAME, "
                             "/proc/PID/ns/net)", path)

    metrics_raw = _section(raw, "flow_metrics", source)
    unknown = sorted(set(metrics_raw) - {"enabled", "max_flows"})
    if unknown:
        raise InputError(f"{source}: flow_metrics.{unknown[0]}", "unknown setting; known: enabled, max_flows")
    metrics_on = metrics_raw.get("enabled", True)
    if not isinstance(metrics_on, bool):
        raise InputError(f"{source}: flow_metrics.enabled", "must be true or false", metrics_on)
    flow_metrics = None
    if metrics_on:
        flow_metrics = FlowMetricsLimits(max_flows=require_int(
            f"{source}: flow_metrics.max_flows", metrics_raw.get("max_flows", 16384), 64, 1 << 20))
    timesync = timesync_from_dict(raw.get("timesync"), f"{source}: timesync")

    spool = _section(raw, "spool", source)
    state_dir = Path(str(raw.get("state_dir", "/var/lib/latscope/collector")))
    for where, path in ((f"{source}: state_dir", state_dir),
                        (f"{source}: spool.dir", Path(str(spool.get("dir", state_dir / "spool"))))):
        if not path.is_absolute():
            raise InputError(where, "must be an absolute path", str(path))
    return CollectorConfig(
        host=host, kind=kind, hook_profile=profile, redis=redis, redis_prefix=prefix, mysql=mysql,
        interfaces=interfaces, netns=netns, limits=limits,
        entry_timeout_s=_number(f"{source}: observer.entry_timeout_s", obs.get("entry_timeout_s", 5), 0.1, 600),
        spool_dir=Path(str(spool.get("dir", state_dir / "spool"))),
        spool_max_bytes=require_int(f"{source}: spool.max_bytes", spool.get("max_bytes", 256 << 20), 1 << 20, 1 << 40),
        state_dir=state_dir,
        heartbeat_interval_s=_number(f"{source}: heartbeat_interval_s", raw.get("heartbeat_interval_s", 5), 0.05, 3600),
        max_command_age_s=_number(f"{source}: max_command_age_s", raw.get("max_command_age_s", 300), 1, 86400),
        flow_metrics=flow_metrics, timesync=timesync)


def load_config(path: Path = DEFAULT_PATH) -> CollectorConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    return config_from_dict(raw, str(path))
