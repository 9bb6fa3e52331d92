# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control-plane protocol over Redis (one implementation, for the issuer and the daemon).

The issuer side (``Controller``: Ansible modules, the CLI) sends session commands to
hosts and waits for their acks; the daemon side (``Agent``, driven by the collector's
control loop) reads its commands, acks them, and publishes heartbeats, its state and
per-session counters. Every key lives under a prefix (default ``latscope``):

=================================  ======  ===================================  ============================================
key                                type    written by -> read by                holds (lifetime)
=================================  ======  ===================================  ============================================
``<prefix>:cmd:<host>``            stream  Controller.send -> Agent             one entry per command, field ``command`` =
                                                                                its JSON (kept, MAXLEN ~10000)
``<prefix>:ack:<command id>``      stream  Agent.ack/nack -> wait_acks          host, ok (1/0), error (one line naming the
                                                                                field), state (JSON), command, at (TTL 1 h)
``<prefix>:hb:<host>``             string  Agent.heartbeat -> alive             JSON: host, pid, version, hook_profile,
                                                                                session, uptime_s, at (TTL 3 x interval)
``<prefix>:state:<host>``          hash    Agent -> host_states, Agent          state, session, hook_profile, ...,
                                                                                ``last_command_id`` (no TTL)
``<prefix>:session:<id>:host:<h>`` hash    publish_counters -> session_results  counters (records, drops.<cause>,
                                                                                spool.<name>, ...), summary (JSON),
                                                                                last_update (TTL 7 days)
``<prefix>:session:<id>:hosts``    set     publish_counters -> session_results  hosts that published results (TTL 7 days)
=================================  ======  ===================================  ============================================

The command stream keeps a command while its daemon is down; the daemon resumes
after ``last_command_id``, the last entry it handled, which it records in the same
transaction as the ack. A malformed entry whose id cannot be read is answered at
``<prefix>:ack:<stream entry id>`` (the id ``XADD`` returned to its sender).

A command is JSON: ``id`` (uuid), ``op`` (start, stop, sync, ping), ``session``
(``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``), ``issued_at`` (epoch s) and, for ``start`` only,
``flow`` (a FlowFilter), ``sampling`` (Sampling), ``hook_profile`` (tracepoint, kprobe,
auto) and optionally ``duration_s``. Everything read from Redis is validated and bad
input raises ``InputError`` naming the field (``command.flow.dport``), so a daemon can
nack a bad command and go on.

Why a stream per ack: the issuer waits for all hosts with one blocking ``XREAD``
over their ack keys, and still sees an ack written before it started waiting (it
reads from the start and consumes nothing, so a retry or a second reader sees it too).

Who may touch which key: the manager role gives each host's collector a Redis user of its own
(``latscope-<host>``) allowed only that host's keys above - its command stream read-only, acks and
the session index write-only - and the issuers Redis's ``default`` user (roles/manager/README.md).

Passwords: ``RedisSettings`` keeps the password out of its repr, and ``connect``
reports a refused login as ``redis.password`` (naming the user, never the value).
"""

from __future__ import annotations

import json
import math
import re
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling

REDIS_IMPORT_ERROR: Optional[str]
try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    REDIS_IMPORT_ERROR = None
    REDIS_ERRORS: Tuple[type, ...] = (redis.RedisError, OSError)
except ImportError:
    redis = None
    REDIS_IMPORT_ERROR = traceback.format_exc()
    REDIS_ERRORS = (OSError,)

DEFAULT_PREFIX = "latscope"
OPS = ("start", "stop", "sync", "ping")
HOOK_PROFILES = ("tracepoint", "kprobe", "auto")
START_FIELDS = frozenset({"flow", "sampling", "hook_profile", "duration_s"})
COMMON_FIELDS = frozenset({"id", "op", "session", "issued_at"})
SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
REDIS_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
COUNTER_RE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
ACK_ID_RE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|\d{1,20}-\d{1,20}")
PING_SESSION = "ping"
MAX_COMMAND_BYTES = 65536
MAX_DURATION_S = 7 * 86400
MAX_ERROR_CHARS = 300
MAX_TIMEOUT_S = 3600.0
CMD_STREAM_MAXLEN = 10000
ACK_TTL_S = 3600
RESULTS_TTL_S = 7 * 86400
MAX_BLOCK_MS = 2000                     # one blocking read; socket timeouts must be longer
MIN_SOCKET_TIMEOUT_S = MAX_BLOCK_MS / 1000 + 1
DEFAULT_ACK_TIMEOUT_S = 10.0
CURSOR_FIELD = "last_command_id"
RESERVED_RESULT_FIELDS = frozenset({"summary", "last_update"})
SETTINGS_FIELDS = ("connect_timeout_s", "db", "host", "password", "port", "socket_timeout_s", "user")


class ControlPlaneError(RuntimeError):
    """Redis could not be reached or failed mid-way (never bad input, never with a password)."""


class BadCommand(InputError):
    """A command that failed validation but whose ``id`` could be read, so its issuer can get the nack."""

    def __init__(self, error: InputError, command_id: str) -> None:
        super().__init__(error.field, error.reason, error.value)
        self.command_id = command_id


# --- names and small validators -----------------------------------------------------------------

def one_line(error: Union[BaseException, str]) -> str:
    """``error`` as one bounded line (what an ack carries)."""
    return " ".join(str(error).split())[:MAX_ERROR_CHARS]


def _clip(value: Any) -> Any:
    """A value short enough to quote back in an error."""
    if isinstance(value, (str, bytes)) and len(value) > 80:
        return value[:77] + ("..." if isinstance(value, str) else b"...")
    return value


def _text(value: Any, field_name: str = "value") -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(field_name, "is not UTF-8 text") from None
    return str(value)


def _name(field_name: str, value: Any, pattern: "re.Pattern[str]", what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InputError(field_name, f"must be {what}", _clip(value))
    return value


def check_session(value: Any, field_name: str = "session") -> str:
    """A session id: 1-64 characters of letters, digits, ``_.-``, starting with a letter or digit."""
    return _name(field_name, value, SESSION_RE, "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")


def check_host(value: Any, field_name: str = "host") -> str:
    """A host name as the inventory knows it (it becomes part of Redis keys)."""
    return _name(field_name, value, HOST_RE, "a host name: letters, digits, '_', '.', ':' or '-'")


def _number(field_name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(field_name, "must be a number", _clip(value))
    if not low <= value <= high:
        raise InputError(field_name, f"must be between {low:g} and {high:g}", value)
    return float(value)


def _check_hosts(hosts: Iterable[str]) -> List[str]:
    if isinstance(hosts, str):
        hosts = [hosts]
    names = [check_host(h, "hosts") for h in hosts]
    if not names:
        raise InputError("hosts", "must name at least one host")
    if len(set(names)) != len(names):
        raise InputError("hosts", "names a host twice", sorted(h for h in set(names) if names.count(h) > 1))
    return names


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the protocol, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        _name("prefix", self.prefix, PREFIX_RE, "1-32 letters, digits, '_', '.' or '-'")

    def commands(self, host: str) -> str:
        return f"{self.prefix}:cmd:{host}"

    def ack(self, command_id: str) -> str:
        return f"{self.prefix}:ack:{command_id}"

    def heartbeat(self, host: str) -> str:
        return f"{self.prefix}:hb:{host}"

    def state(self, host: str) -> str:
        return f"{self.prefix}:state:{host}"

    def results(self, session: str, host: str) -> str:
        return f"{self.prefix}:session:{session}:host:{host}"

    def session_hosts(self, session: str) -> str:
        return f"{self.prefix}:session:{session}:hosts"


# --- commands -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One validated control command (build it with ``start_command``/``make_command``)."""

    op: str
    session: str
    command_id: str
    issued_at: float
    flow: Optional[FlowFilter] = None
    sampling: Optional[Sampling] = None
    hook_profile: Optional[str] = None
    duration_s: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        """The wire form (``command_from_dict`` inverts it)."""
        raw: Dict[str, Any] = {"id": self.command_id, "op": self.op, "session": self.session, "issued_at": self.issued_at}
        if self.op == "start":
            raw.update(flow=self.flow.as_dict() if self.flow else {}, sampling=self.sampling.as_dict() if self.sampling else {},
                       hook_profile=self.hook_profile)
            if self.duration_s is not None:
                raw["duration_s"] = self.duration_s
        return raw


def _mapping(field_name: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(field_name, "must be a mapping", _clip(value))
    return value


def command_from_dict(raw: Any, prefix: str = "command") -> Command:
    """Validate a command's wire form; raise InputError (BadCommand once the id is known) naming the field."""
    raw = _mapping(prefix, raw)
    command_id = raw.get("id")
    try:
        valid_id = isinstance(command_id, str) and str(uuid.UUID(command_id)) == command_id
    except ValueError:
        valid_id = False
    if not valid_id:
        raise InputError(f"{prefix}.id", "must be a lowercase uuid", _clip(command_id))
    try:
        return _command_body(raw, command_id, prefix)
    except InputError as err:
        raise BadCommand(err, command_id) from None


def _command_body(raw: Dict[str, Any], command_id: str, prefix: str) -> Command:
    op = raw.get("op")
    if op not in OPS:
        raise InputError(f"{prefix}.op", f"must be one of {', '.join(OPS)}", _clip(op))
    session = check_session(raw.get("session"), f"{prefix}.session")
    issued_at = _number(f"{prefix}.issued_at", raw.get("issued_at"), 0, 1e11)
    allowed = COMMON_FIELDS | START_FIELDS if op == "start" else COMMON_FIELDS
    unknown = sorted(set(raw) - allowed)
    if unknown:
        extra = " (flow, sampling, hook_profile and duration_s belong to start)" if unknown[0] in START_FIELDS else ""
        raise InputError(f"{prefix}.{unknown[0]}", f"unknown field for {op}{extra}")
    if op != "start":
        return Command(op=op, session=session, command_id=command_id, issued_at=issued_at)
    for name in ("flow", "sampling", "hook_profile"):
        if name not in raw:
            raise InputError(f"{prefix}.{name}", "is required for start")
    flow = FlowFilter.from_dict(_mapping(f"{prefix}.flow", raw["flow"]), f"{prefix}.flow")
    sampling = Sampling.from_dict(_mapping(f"{prefix}.sampling", raw["sampling"]), f"{prefix}.sampling")
    hook_profile = raw["hook_profile"]
    if hook_profile not in HOOK_PROFILES:
        raise InputError(f"{prefix}.hook_profile", f"must be one of {', '.join(HOOK_PROFILES)}", _clip(hook_profile))
    duration = raw.get("duration_s")
    duration_s = None if duration is None else _number(f"{prefix}.duration_s", duration, 0.001, MAX_DURATION_S)
    return Command(op=op, session=session, command_id=command_id, issued_at=issued_at, flow=flow,
                   sampling=sampling, hook_profile=hook_profile, duration_s=duration_s)


def make_command(op: str, session: str, **start_fields: Any) -> Command:
    """A new command (fresh id, issued now), validated exactly as a daemon will validate it.

    ``start_fields`` (start only): ``flow`` and ``sampling`` as mappings or
    FlowFilter/Sampling, ``hook_profile``, ``duration_s``.
    """
    raw: Dict[str, Any] = {"id": str(uuid.uuid4()), "op": op, "session": session, "issued_at": time.time()}
    for name, value in start_fields.items():
        if value is not None:
            raw[name] = value.as_dict() if isinstance(value, (FlowFilter, Sampling)) else value
    return command_from_dict(raw)


def start_command(session: str, flow: Any, sampling: Any, hook_profile: str = "auto",
                  duration_s: Optional[float] = None) -> Command:
    """A start command: observe ``flow`` with ``sampling`` under ``session``."""
    return make_command("start", session, flow=flow if flow is not None else {},
                        sampling=sampling if sampling is not None else {}, hook_profile=hook_profile, duration_s=duration_s)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text} is out of range")
    return number


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _json(text: Union[str, bytes], field_name: str) -> Any:
    """Parse JSON from outside: bounded, UTF-8, finite numbers only."""
    if len(text) > MAX_COMMAND_BYTES:
        raise InputError(field_name, f"is larger than {MAX_COMMAND_BYTES} bytes", len(text))
    decoded = _text(text, field_name)
    try:
        return json.loads(decoded, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InputError(field_name, f"is not valid JSON ({one_line(exc)})") from None


def encode_command(command: Command) -> str:
    """The JSON a command travels as."""
    return json.dumps(command.as_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_command(text: Union[str, bytes]) -> Command:
    """Parse and validate a command read from Redis; raise InputError naming the field."""
    return command_from_dict(_json(text, "command"))


def decode_entry(fields: Mapping[Any, Any]) -> Command:
    """The command of one stream entry (its ``command`` field)."""
    raw = fields.get(b"command", fields.get("command"))
    if raw is None:
        raise InputError("command", "is missing: the stream entry has no 'command' field")
    return decode_command(raw)


# --- acks, heartbeats, results --------------------------------------------------------------------

@dataclass(frozen=True)
class Ack:
    """A host's answer to one command; ``timed_out`` when it gave none in time."""

    host: str
    ok: bool
    error: str = ""
    state: Dict[str, Any] = field(default_factory=dict)
    command_id: str = ""
    timed_out: bool = False

    @property
    def status(self) -> str:
        """ok, error or timeout: what a module reports per host."""
        return "timeout" if self.timed_out else "ok" if self.ok else "error"


def _fields(raw: Mapping[Any, Any], prefix: str) -> Dict[str, str]:
    return {_text(k, prefix): _text(v, f"{prefix}.{_text(k, prefix)}") for k, v in raw.items()}


def decode_ack(raw: Mapping[Any, Any], prefix: str = "ack") -> Ack:
    """Validate an ack stream entry."""
    fields = _fields(raw, prefix)
    host = check_host(fields.get("host"), f"{prefix}.host")
    if fields.get("ok") not in ("0", "1"):
        raise InputError(f"{prefix}.ok", "must be 0 or 1", _clip(fields.get("ok")))
    state = _json(fields.get("state", "{}"), f"{prefix}.state")
    return Ack(host=host, ok=fields["ok"] == "1", error=one_line(fields.get("error", "")),
               state=_mapping(f"{prefix}.state", state), command_id=fields.get("command", ""))


@dataclass(frozen=True)
class Heartbeat:
    """What a live daemon says about itself, every interval."""

    host: str
    pid: int
    version: str
    hook_profile: str
    session: Optional[str]
    uptime_s: float
    at: float

    def as_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "version": self.version, "hook_profile": self.hook_profile,
                "session": self.session, "uptime_s": self.uptime_s, "at": self.at}


def heartbeat_from_dict(raw: Any, prefix: str = "heartbeat") -> Heartbeat:
    """Validate a heartbeat (from a daemon or read back from Redis)."""
    raw = _mapping(prefix, raw)
    version = raw.get("version")
    if not isinstance(version, str) or len(version) > 64:
        raise InputError(f"{prefix}.version", "must be a string of at most 64 characters", _clip(version))
    hook_profile = raw.get("hook_profile")
    if hook_profile not in HOOK_PROFILES:
        raise InputError(f"{prefix}.hook_profile", f"must be one of {', '.join(HOOK_PROFILES)}", _clip(hook_profile))
    session = raw.get("session")
    return Heartbeat(host=check_host(raw.get("host"), f"{prefix}.host"),
                     pid=require_int(f"{prefix}.pid", raw.get("pid"), 1, 2 ** 31), version=version,
                     hook_profile=hook_profile, session=None if session is None else check_session(session, f"{prefix}.session"),
                     uptime_s=_number(f"{prefix}.uptime_s", raw.get("uptime_s"), 0, 1e10),
                     at=_number(f"{prefix}.at", raw.get("at"), 0, 1e11))


@dataclass(frozen=True)
class HostResults:
    """One host's counters and summary for one session."""

    host: str
    counters: Dict[str, Union[int, float]]
    summary: Dict[str, Any]
    last_update: float


def _counter_value(field_name: str, text: str) -> Union[int, float]:
    try:
        return int(text) if re.fullmatch(r"-?\d+", text) else _finite_float(text)
    except ValueError:
        raise InputError(field_name, "must be a number", _clip(text)) from None


def decode_results(host: str, raw: Mapping[Any, Any], prefix: str = "results") -> HostResults:
    """Validate a results hash read back from Redis."""
    where = f"{prefix}.{host}"
    fields = _fields(raw, where)
    summary = _mapping(f"{where}.summary", _json(fields.pop("summary", "{}"), f"{where}.summary"))
    last_update = _counter_value(f"{where}.last_update", fields.pop("last_update", ""))
    counters = {name: _counter_value(f"{where}.{name}", text) for name, text in sorted(fields.items())}
    return HostResults(host=host, counters=counters, summary=summary, last_update=float(last_update))


# --- connecting ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RedisSettings:
    """Where the control plane is and who logs in. The password is kept out of repr() and every message.

    ``username`` is the Redis ACL user (``user`` in a configuration mapping, as in the MySQL
    settings); None logs in as Redis's ``default`` user.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    password: Optional[str] = field(default=None, repr=False)
    db: int = 0
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 3.0
    username: Optional[str] = None

    @classmethod
    def from_dict(cls, raw: Optional[Mapping[str, Any]], prefix: str = "redis") -> "RedisSettings":
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(SETTINGS_FIELDS))
        if unknown:
            raise InputError(f"{prefix}.{unknown[0]}", f"unknown setting; known: {', '.join(SETTINGS_FIELDS)}")
        host = raw.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host or any(c.isspace() for c in host) or len(host) > 253:
            raise InputError(f"{prefix}.host", "must be a host name or address", _clip(host))
        password = raw.get("password")
        if password is not None and not isinstance(password, str):
            raise InputError(f"{prefix}.password", "must be a string")   # never echo its value
        return cls(host=host, port=require_int(f"{prefix}.port", raw.get("port", 6379), 1, 65535), password=password or None,
                   db=require_int(f"{prefix}.db", raw.get("db", 0), 0, 65535),
                   socket_timeout_s=_number(f"{prefix}.socket_timeout_s", raw.get("socket_timeout_s", 5.0), MIN_SOCKET_TIMEOUT_S, 600),
                   connect_timeout_s=_number(f"{prefix}.connect_timeout_s", raw.get("connect_timeout_s", 3.0), 0.1, 600),
                   username=check_redis_user(raw.get("user"), f"{prefix}.user"))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def who(self) -> str:
        """The ACL user that logs in (``default`` when none is named)."""
        return self.username or "default"


def check_redis_user(value: Any, field_name: str = "redis.user") -> Optional[str]:
    """A Redis ACL user name, or None (empty or absent: the ``default`` user)."""
    if value is None or value == "":
        return None
    return _name(field_name, value, REDIS_USER_RE, "a Redis user name: 1-128 letters, digits, '_', '.', ':', '@' or '-'")


def _describe(exc: BaseException, secret: Optional[str] = None) -> str:
    text = one_line(f"{type(exc).__name__}: {exc}")
    return text.replace(secret, "********") if secret else text


def connect(settings: RedisSettings) -> Any:
    """A checked Redis client (bytes replies, no retries of its own: callers decide how to retry).

    Logs in as ``settings.username`` (Redis's ``default`` user when None). Raises
    ControlPlaneError when Redis cannot be reached and InputError naming
    ``redis.password`` (and the user) when the login is refused; neither carries the password.
    """
    if redis is None:
        raise ControlPlaneError("the Python package 'redis' is required on this host (pip install redis)")
    client = redis.Redis(host=settings.host, port=settings.port, db=settings.db, username=settings.username,
                         password=settings.password,
                         socket_timeout=max(settings.socket_timeout_s, MIN_SOCKET_TIMEOUT_S),   # outlasts a blocking read
                         socket_connect_timeout=settings.connect_timeout_s,
                         retry=Retry(NoBackoff(), 0), decode_responses=False)
    try:
        client.ping()
    except redis.AuthenticationError:
        client.close()
        raise InputError("redis.password", f"was refused by Redis at {settings.where} for user {settings.who}") from None
    except REDIS_ERRORS as exc:
        client.close()
        raise ControlPlaneError(f"Redis at {settings.where} is unreachable: {_describe(exc, settings.password)}") from None
    return client


@contextmanager
def _talking(what: str) -> Iterator[None]:
    """Turn a Redis failure during ``what`` into ControlPlaneError."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise ControlPlaneError(f"Redis {what} failed: {_describe(exc)}") from None


def _stream_entries(reply: Any) -> Iterator[Tuple[str, List[Tuple[Any, Any]]]]:
    """(key, entries) of an XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    pairs = reply.items() if isinstance(reply, dict) else (reply or [])
    for key, entries in pairs:
        yield _text(key), entries


def _encode_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(value, sort_keys=True, default=str)


# --- the issuer ------------------------------------------------------------------------------------

class Controller:
    """The issuer side: send commands, wait for acks, read state, liveness and results."""

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.keys = Keys(prefix)

    def __repr__(self) -> str:
        return f"Controller(prefix={self.keys.prefix!r})"

    def send(self, host: str, command: Command) -> str:
        """Append ``command`` to ``host``'s stream; return the stream entry id."""
        key = self.keys.commands(check_host(host))
        with _talking(f"send to {host}"):
            return _text(self.client.xadd(key, {"command": encode_command(command)}, maxlen=CMD_STREAM_MAXLEN, approximate=True))

    def wait_acks(self, command_ids_by_host: Mapping[str, str], timeout_s: float) -> Dict[str, Ack]:
        """Wait (blocking reads) until every host acked its command or ``timeout_s`` passed.

        A host with no ack by then gets an Ack with ``timed_out``; an ack that
        does not decode is reported as that host's error. Hosts keep their order.
        """
        timeout_s = _number("timeout_s", timeout_s, 0, MAX_TIMEOUT_S)
        hosts = _check_hosts(command_ids_by_host)
        host_by_key = {self.keys.ack(_name(f"command_ids_by_host.{h}", command_ids_by_host[h], ACK_ID_RE,
                                           "a command id (uuid) or a stream entry id")): h for h in hosts}
        if len(host_by_key) != len(hosts):
            raise InputError("command_ids_by_host", "gives two hosts the same command id")
        acks: Dict[str, Ack] = {}
        deadline = time.monotonic() + timeout_s
        while len(acks) < len(hosts):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            waiting = {key: "0-0" for key, host in host_by_key.items() if host not in acks}
            with _talking("wait for acks"):
                reply = self.client.xread(waiting, count=1, block=min(left_ms, MAX_BLOCK_MS))
            for key, entries in _stream_entries(reply):
                host = host_by_key[key]
                acks[host] = self._ack_of(host, command_ids_by_host[host], entries[0][1])
        return {h: acks.get(h) or Ack(host=h, ok=False, error=f"no ack within {timeout_s:g}s", command_id=command_ids_by_host[h],
                                      timed_out=True) for h in hosts}

    @staticmethod
    def _ack_of(host: str, command_id: str, raw: Mapping[Any, Any]) -> Ack:
        try:
            ack = decode_ack(raw)
        except InputError as err:
            return Ack(host=host, ok=False, error=f"malformed ack: {one_line(err)}", command_id=command_id)
        if ack.host != host:
            return Ack(host=host, ok=False, error=f"ack.host: the ack came from {ack.host}", command_id=command_id)
        return ack

    def broadcast(self, hosts: Iterable[str], make: Callable[[], Command], timeout_s: float) -> Dict[str, Ack]:
        """Send one fresh command (``make()``) to each host and wait for all their acks."""
        names = _check_hosts(hosts)
        _number("timeout_s", timeout_s, 0, MAX_TIMEOUT_S)
        ids: Dict[str, str] = {}
        for host in names:
            command = make()
            self.send(host, command)
            ids[host] = command.command_id
        return self.wait_acks(ids, timeout_s)

    def start_session(self, hosts: Iterable[str], session: str, flow: Any, sampling: Any, hook_profile: str = "auto",
                      duration_s: Optional[float] = None, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> Dict[str, Ack]:
        """Start ``session`` on every host; the acks say where it runs."""
        start_command(session, flow, sampling, hook_profile, duration_s)    # validate once, before sending anything
        return self.broadcast(hosts, lambda: start_command(session, flow, sampling, hook_profile, duration_s), timeout_s)

    def stop_session(self, hosts: Iterable[str], session: str, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> Dict[str, Ack]:
        """Stop ``session`` on every host; a host not running it answers with an error naming ``command.session``."""
        check_session(session)
        return self.broadcast(hosts, lambda: make_command("stop", session), timeout_s)

    def sync(self, hosts: Iterable[str], session: str, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> Dict[str, Ack]:
        """Ask every host to take part in a time-sync round for ``session``."""
        check_session(session)
        return self.broadcast(hosts, lambda: make_command("sync", session), timeout_s)

    def ping(self, hosts: Iterable[str], timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> Dict[str, Ack]:
        """Round-trip a no-op through every host's daemon (its ack carries its state)."""
        return self.broadcast(hosts, lambda: make_command("ping", PING_SESSION), timeout_s)

    def host_states(self, hosts: Iterable[str]) -> Dict[str, Dict[str, str]]:
        """Each host's state hash; ``{"state": "unknown"}`` for a host that never reported."""
        names = _check_hosts(hosts)
        with _talking("read of host states"):
            pipe = self.client.pipeline(transaction=False)
            for host in names:
                pipe.hgetall(self.keys.state(host))
            replies = pipe.execute()
        return {h: _fields(r, f"state.{h}") if r else {"state": "unknown"} for h, r in zip(names, replies)}

    def session_results(self, session: str, hosts: Iterable[str]) -> Dict[str, HostResults]:
        """Every host's counters and summary for ``session``; InputError naming each host that has none."""
        session = check_session(session)
        names = _check_hosts(hosts)
        with _talking("read of session results"):
            pipe = self.client.pipeline(transaction=False)
            for host in names:
                pipe.hgetall(self.keys.results(session, host))
            pipe.smembers(self.keys.session_hosts(session))
            *replies, reported = pipe.execute()
        missing = [h for h, r in zip(names, replies) if not r]
        if missing:
            seen = ", ".join(sorted(_text(h) for h in reported)) or "none"
            raise InputError("hosts", f"no results for session {session} from {', '.join(missing)} (hosts with results: {seen})")
        return {h: decode_results(h, r) for h, r in zip(names, replies)}

    def alive(self, hosts: Iterable[str]) -> Dict[str, Optional[Heartbeat]]:
        """Each host's latest heartbeat, or None when it has expired (the daemon is down or cut off)."""
        names = _check_hosts(hosts)
        with _talking("read of heartbeats"):
            replies = self.client.mget([self.keys.heartbeat(h) for h in names])
        return {h: None if r is None else heartbeat_from_dict(_json(r, f"heartbeat.{h}"), f"heartbeat.{h}")
                for h, r in zip(names, replies)}


# --- the daemon ------------------------------------------------------------------------------------

class Agent:
    """The daemon side for one host: read commands in order, ack them, report liveness, state and counters.

    It resumes after the ``last_command_id`` recorded in its state hash, which
    ``ack``/``nack`` advance together with the ack (one transaction): a command
    whose ack was not written is read again (handle commands idempotently).
    """

    def __init__(self, client: Any, host: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.host = check_host(host)
        self.keys = Keys(prefix)
        self.cursor: Optional[str] = None

    def __repr__(self) -> str:
        return f"Agent(host={self.host!r}, prefix={self.keys.prefix!r})"

    def close(self) -> None:
        """Drop the connection (errors ignored: it is being thrown away)."""
        try:
            self.client.close()
        except REDIS_ERRORS:
            pass

    def next_commands(self, block_ms: int = 0, count: int = 16) -> List[Tuple[str, Union[Command, InputError]]]:
        """The next commands after the cursor, waiting up to ``block_ms`` (capped at MAX_BLOCK_MS) for one.

        A malformed entry comes back as its InputError, so the caller can nack it and go on.
        """
        key = self.keys.commands(self.host)
        block = min(max(int(block_ms), 0), MAX_BLOCK_MS)
        with _talking("read of commands"):
            if self.cursor is None:
                stored = self.client.hget(self.keys.state(self.host), CURSOR_FIELD)
                text = _text(stored or b"", CURSOR_FIELD)
                self.cursor = text if STREAM_ID_RE.fullmatch(text) else "0-0"
            reply = self.client.xread({key: self.cursor}, count=count, block=block or None)
        commands: List[Tuple[str, Union[Command, InputError]]] = []
        for _stream, entries in _stream_entries(reply):
            for entry_id, fields in entries:
                self.cursor = _text(entry_id)
                try:
                    commands.append((self.cursor, decode_entry(fields)))
                except InputError as err:
                    commands.append((self.cursor, err))
        return commands

    def ack(self, command: Command, ok: bool, error: str = "", state: Optional[Mapping[str, Any]] = None,
            entry_id: Optional[str] = None) -> None:
        """Answer ``command``; with ``entry_id``, also record it as handled (where a restart resumes)."""
        self._answer(command.command_id, ok, error, state, entry_id)

    def nack(self, entry_id: str, error: InputError) -> None:
        """Reject a malformed entry: at its command's ack key if its id was readable, else at its entry id."""
        self._answer(getattr(error, "command_id", None) or entry_id, False, str(error), None, entry_id)

    def _answer(self, ack_id: str, ok: bool, error: str, state: Optional[Mapping[str, Any]], entry_id: Optional[str]) -> None:
        key = self.keys.ack(ack_id)
        fields = {"host": self.host, "ok": "1" if ok else "0", "error": one_line(error), "command": ack_id,
                  "state": json.dumps(dict(state or {}), sort_keys=True, default=str), "at": repr(time.time())}
        with _talking("ack"):
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(key, fields)
            pipe.expire(key, ACK_TTL_S)
            if entry_id:
                pipe.hset(self.keys.state(self.host), CURSOR_FIELD, entry_id)
            pipe.execute()

    def set_state(self, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into the host's state hash (None deletes a field); stamps ``updated_at``."""
        for name in fields:
            if not isinstance(name, str) or not name or name == CURSOR_FIELD:
                raise InputError(f"state.{name}", f"must be a non-empty name other than {CURSOR_FIELD}")
        key = self.keys.state(self.host)
        values = {name: _encode_value(value) for name, value in fields.items() if value is not None}
        values["updated_at"] = repr(time.time())
        gone = [name for name, value in fields.items() if value is None]
        with _talking("state update"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping=values)
            if gone:
                pipe.hdel(key, *gone)
            pipe.execute()

    def heartbeat(self, info: Mapping[str, Any], interval_s: float) -> Heartbeat:
        """Publish ``info`` (pid, version, hook_profile, session, uptime_s) for 3 x ``interval_s``."""
        interval_s = _number("heartbeat_interval_s", interval_s, 0.05, 3600)
        beat = heartbeat_from_dict({**info, "host": self.host, "at": time.time()})
        with _talking("heartbeat"):
            self.client.set(self.keys.heartbeat(self.host), json.dumps(beat.as_dict(), sort_keys=True), px=int(3000 * interval_s))
        return beat

    def publish_counters(self, session: str, counters: Mapping[str, Union[int, float]],
                         summary: Optional[Mapping[str, Any]] = None) -> None:
        """Write this host's counters (and summary) for ``session`` and list the host in the session index."""
        session = check_session(session)
        values: Dict[str, str] = {}
        for name, value in counters.items():
            where = f"counters.{name}"
            _name(where, name, COUNTER_RE, "a counter name: lowercase letters, digits, '_' or '.'")
            if name in RESERVED_RESULT_FIELDS:
                raise InputError(where, "is a reserved name")
            values[name] = repr(_number(where, value, -1e18, 1e18)) if isinstance(value, float) else str(require_int(where, value))
        values["last_update"] = repr(time.time())
        if summary is not None:
            values["summary"] = json.dumps(_mapping("summary", dict(summary)), sort_keys=True, allow_nan=False, default=str)
        key, index = self.keys.results(session, self.host), self.keys.session_hosts(session)
        with _talking("publish of counters"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping=values)
            pipe.expire(key, RESULTS_TTL_S)
            pipe.sadd(index, self.host)
            pipe.expire(index, RESULTS_TTL_S)
            pipe.execute()
