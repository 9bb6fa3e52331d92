# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The raw tables of the data plane, their migrations, grants and row builders (one implementation).

Collectors, the time-sync prober and the manager write the *raw* tables
(DESIGN section 5); the analysis reads them and materialises its own tables.
Everything here is portable to MariaDB 10.11 and MySQL 8: InnoDB, utf8mb4,
no vendor-only syntax (``portability_problems`` is the check the tests run).

Writers only ever ``INSERT IGNORE``: every raw table has a primary key that
is the same when the same fact is shipped again (a packet record's ``uid``, a
metric's flow and time), so a replayed batch never duplicates a row, and a
collector needs nothing but the INSERT privilege (``collector_grants``).

``migrate`` applies the numbered migrations that a database lacks, under a
named lock so that two processes starting at once do not race. It takes any
DB-API connection (PyMySQL in practice); this file imports no driver.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.records import (
    DIRECTIONS, KINDS, LAYER_IDS, PacketRecord, record_from_dict, record_to_dict)
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
S64 = (1 << 63) - 1
TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
HOST_KINDS = ("bare_metal", "vm", "container", "manager")
MAX_NAME = 64            # counter names, migration names

# Direction and kind are stored as the codes the BPF event carries (records.DIRECTIONS / KINDS index).
DIRECTION_CODES = {name: code for code, name in enumerate(DIRECTIONS)}
KIND_CODES = {name: code for code, name in enumerate(KINDS)}

# The 16 flow metrics of the MicroBPF seed, as columns of flow_metrics (NULL when a host did not measure one).
FLOW_METRICS = (
    "flight_size", "rwnd", "cwnd", "mss", "retrans_packets", "bytes_sent", "bytes_received", "fast_retrans",
    "timeouts", "cur_app_wqueue", "max_app_wqueue", "sample_rtt_us", "sum_rtt_us", "read_bytes", "write_bytes",
    "duration_us",
)

# Added by migration 2: what SumRTT needs to become a mean, and the bytes the peer acknowledged.
FLOW_METRIC_EXTRAS = ("rtt_samples", "bytes_acked")

# Column order of each raw table: the DDL, the INSERT statements and the row builders all follow it.
COLUMNS: Dict[str, Tuple[str, ...]] = {
    "hosts": ("name", "kind", "first_seen", "last_seen"),
    "sessions": ("id", "flow_filter", "sampling", "started_at", "stopped_at"),
    "clock_estimates": ("session_id", "host", "at_ns", "offset_ns", "skew_ppb", "error_ns", "probes_used",
                        "probes_lost", "synchronised"),
    "packet_samples": ("uid", "session_id", "host", "direction", "kind", "saddr", "daddr", "sport", "dport",
                       "sample_key", "seq", "length", "flags", "first_ns", "n_stamps", "in_order"),
    "packet_stamps": ("sample_uid", "idx", "layer", "ts_ns", "ifindex", "netns"),
    "flow_metrics": (("session_id", "host", "saddr", "daddr", "sport", "dport", "at_ns") + FLOW_METRICS
                     + FLOW_METRIC_EXTRAS),
    "drop_counters": ("session_id", "host", "name", "at_ns", "value"),
}
RAW_TABLES = tuple(COLUMNS)
MIGRATIONS_TABLE = "schema_migrations"

SCHEMA_MIGRATIONS_DDL = f"""CREATE TABLE IF NOT EXISTS schema_migrations (
  version INT UNSIGNED NOT NULL,
  name VARCHAR(64) NOT NULL,
  applied_at DATETIME(6) NOT NULL,
  PRIMARY KEY (version)
) {TABLE_OPTIONS}"""

_METRIC_DDL = ",\n".join(f"  {name} BIGINT UNSIGNED NULL" for name in FLOW_METRICS)

# Times: *_ns columns are kernel CLOCK_MONOTONIC nanoseconds of the host named in the row (packet stamps,
# metric and counter snapshots, clock estimates); DATETIME(6) columns are wall-clock UTC.
_V1 = (
    f"""CREATE TABLE IF NOT EXISTS hosts (
  name VARCHAR(128) NOT NULL,
  kind VARCHAR(16) NOT NULL,
  first_seen DATETIME(6) NOT NULL,
  last_seen DATETIME(6) NOT NULL,
  PRIMARY KEY (name)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS sessions (
  id VARCHAR(64) NOT NULL,
  flow_filter TEXT NOT NULL,
  sampling TEXT NOT NULL,
  started_at DATETIME(6) NOT NULL,
  stopped_at DATETIME(6) NULL,
  PRIMARY KEY (id)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS clock_estimates (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  at_ns BIGINT UNSIGNED NOT NULL,
  offset_ns BIGINT NOT NULL,
  skew_ppb BIGINT NOT NULL,
  error_ns BIGINT UNSIGNED NOT NULL,
  probes_used INT UNSIGNED NOT NULL,
  probes_lost INT UNSIGNED NOT NULL,
  synchronised TINYINT UNSIGNED NOT NULL,
  PRIMARY KEY (session_id, host, at_ns)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS packet_samples (
  uid BIGINT UNSIGNED NOT NULL,
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  direction TINYINT UNSIGNED NOT NULL COMMENT '0 tx, 1 rx',
  kind TINYINT UNSIGNED NOT NULL COMMENT '0 data, 1 ack',
  saddr INT UNSIGNED NOT NULL,
  daddr INT UNSIGNED NOT NULL,
  sport SMALLINT UNSIGNED NOT NULL,
  dport SMALLINT UNSIGNED NOT NULL,
  sample_key INT UNSIGNED NOT NULL,
  seq INT UNSIGNED NOT NULL,
  length INT UNSIGNED NOT NULL,
  flags TINYINT UNSIGNED NOT NULL COMMENT 'records.FLAG_*',
  first_ns BIGINT UNSIGNED NOT NULL,
  n_stamps TINYINT UNSIGNED NOT NULL,
  in_order TINYINT UNSIGNED NOT NULL,
  PRIMARY KEY (uid),
  KEY packet_samples_match (session_id, saddr, daddr, sport, dport, sample_key, kind, direction),
  KEY packet_samples_host (session_id, host)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS packet_stamps (
  sample_uid BIGINT UNSIGNED NOT NULL,
  idx TINYINT UNSIGNED NOT NULL,
  layer SMALLINT UNSIGNED NOT NULL,
  ts_ns BIGINT UNSIGNED NOT NULL,
  ifindex INT UNSIGNED NOT NULL,
  netns BIGINT UNSIGNED NOT NULL COMMENT 'namespace cookie',
  PRIMARY KEY (sample_uid, idx)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS flow_metrics (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  saddr INT UNSIGNED NOT NULL,
  daddr INT UNSIGNED NOT NULL,
  sport SMALLINT UNSIGNED NOT NULL,
  dport SMALLINT UNSIGNED NOT NULL,
  at_ns BIGINT UNSIGNED NOT NULL,
{_METRIC_DDL},
  PRIMARY KEY (session_id, host, saddr, daddr, sport, dport, at_ns)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS drop_counters (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  name VARCHAR(64) NOT NULL,
  at_ns BIGINT UNSIGNED NOT NULL,
  value BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (session_id, host, name, at_ns)
) {TABLE_OPTIONS}""",
)


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema: statements that are safe to run again (IF NOT EXISTS)."""

    version: int
    name: str
    statements: Tuple[str, ...]


# Append only: a released migration is never edited, a change is a new version.
_V2 = (
    "ALTER TABLE flow_metrics ADD COLUMN rtt_samples BIGINT UNSIGNED NULL, "
    "ADD COLUMN bytes_acked BIGINT UNSIGNED NULL",
)

MIGRATIONS: Tuple[Migration, ...] = (
    Migration(1, "raw tables", _V1),
    Migration(2, "flow_metrics: rtt_samples, bytes_acked", _V2),
)


class MigrationError(RuntimeError):
    """The schema could not be brought up to date (no database selected, lock not obtained)."""


def check_migrations(migrations: Sequence[Migration] = MIGRATIONS) -> None:
    """Raise MigrationError unless versions are 1, 2, 3... in order and each has statements."""
    for position, migration in enumerate(migrations, start=1):
        if migration.version != position:
            raise MigrationError(f"migration {migration.name!r} has version {migration.version}, expected {position}")
        if not migration.statements or not 0 < len(migration.name) <= MAX_NAME:
            raise MigrationError(f"migration {migration.version} needs a name and statements")


def _scalar(row: Any) -> Any:
    """The first column of a row from a tuple or a dict cursor."""
    if isinstance(row, Mapping):
        return next(iter(row.values()))
    return row[0]


def _lock_name(database: str) -> str:
    return f"latscope.schema.{database}"[:64]


def migrate(connection: Any, lock_timeout_s: int = 60) -> List[int]:
    """Apply the migrations the connected database lacks, oldest first; return their versions.

    Idempotent: a second call applies nothing. Safe when several processes start
    at once: the work happens under ``GET_LOCK`` (per database), and the
    version is the primary key of ``schema_migrations``. Needs the CREATE and
    INSERT/SELECT privileges of the schema owner (``manager_grants``).
    """
    check_migrations()
    applied: List[int] = []
    error = getattr(connection, "Error", Exception)
    with connection.cursor() as cursor:
        cursor.execute("SELECT DATABASE()")
        database = _scalar(cursor.fetchone())
        if not database:
            raise MigrationError("the connection has no database selected")
        lock = _lock_name(database)
        cursor.execute("SELECT GET_LOCK(%s, %s)", (lock, lock_timeout_s))
        if _scalar(cursor.fetchone()) != 1:
            raise MigrationError(f"could not take the schema lock {lock!r} within {lock_timeout_s}s")
        try:
            cursor.execute(SCHEMA_MIGRATIONS_DDL)
            cursor.execute("SELECT version FROM schema_migrations")
            done = {int(_scalar(row)) for row in cursor.fetchall()}
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    cursor.execute(statement)
                cursor.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, UTC_TIMESTAMP(6))",
                               (migration.version, migration.name))
                connection.commit()
                applied.append(migration.version)
        finally:
            try:
                cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                cursor.fetchall()
            except error:
                pass  # a lost connection has released the lock already; keep the first error
    return applied


def schema_version(connection: Any) -> int:
    """The highest migration applied to the connected database (0 if none)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(_scalar(cursor.fetchone()))


# --- grants --------------------------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:-]{1,255}$")


def _account(database: str, user: str, host: str) -> Tuple[str, str]:
    if not isinstance(database, str) or not _IDENT.match(database):
        raise InputError("database", "must be 1-64 letters, digits or underscores", database)
    if not isinstance(user, str) or not _USER.match(user):
        raise InputError("user", "must be 1-32 letters, digits, '_', '.' or '-'", user)
    if not isinstance(host, str) or not _HOST.match(host):
        raise InputError("host", "must be a host name, address or pattern (letters, digits, '.', '%', ':')", host)
    return f"`{database}`", f"'{user}'@'{host}'"


def collector_grants(database: str, user: str, host: str = "%") -> List[str]:
    """What a collector needs: INSERT on the raw tables (never UPDATE or DELETE), and reading the schema version.

    Run after ``migrate``: MariaDB and MySQL grant on existing tables only. The
    user must exist (``CREATE USER``: GRANT does not create users on MySQL 8).
    """
    db, account = _account(database, user, host)
    statements = [f"GRANT INSERT ON {db}.`{table}` TO {account}" for table in RAW_TABLES]
    statements.append(f"GRANT SELECT ON {db}.`{MIGRATIONS_TABLE}` TO {account}")
    return statements


def analysis_grants(database: str, user: str, host: str = "%", tables: Iterable[str] = ()) -> List[str]:
    """What the analysis needs: read everything, and own the materialised ``tables`` it (re)creates."""
    db, account = _account(database, user, host)
    statements = [f"GRANT SELECT, CREATE TEMPORARY TABLES ON {db}.* TO {account}"]
    for index, table in enumerate(tables):
        if not isinstance(table, str) or not _IDENT.match(table) or table in RAW_TABLES + (MIGRATIONS_TABLE,):
            raise InputError(f"tables[{index}]", "must name a materialised table (not a raw one)", table)
        statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON {db}.`{table}` TO {account}")
    return statements


def manager_grants(database: str, user: str, host: str = "%") -> List[str]:
    """The schema owner (the manager role): runs ``migrate``, writes sessions and hosts."""
    db, account = _account(database, user, host)
    return [f"GRANT ALL PRIVILEGES ON {db}.* TO {account}"]


# --- statements and row builders ---------------------------------------------------------------

def insert_sql(table: str) -> str:
    """The idempotent insert of one row of ``table`` (PyMySQL ``%s`` placeholders; use with executemany)."""
    if table not in COLUMNS:
        raise InputError("table", f"must be one of {', '.join(RAW_TABLES)}", table)
    columns = COLUMNS[table]
    return f"INSERT IGNORE INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


Row = Tuple[Any, ...]


def _address_int(field: str, value: Any) -> int:
    try:
        return int(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InputError(field, "must be an IPv4 address", value) from None


def _text(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InputError(field, f"must be a string of 1-{limit} characters", value)
    return value


def _utc(field: str, value: Any) -> datetime.datetime:
    """Wall-clock time as a naive UTC datetime (DATETIME columns carry no zone): from unix seconds or a datetime."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 253402300800:
        raise InputError(field, "must be unix seconds or a datetime", value)
    return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).replace(tzinfo=None)


def _mapping(field: str, raw: Any, required: Iterable[str], optional: Iterable[str] = ()) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InputError(field, "must be a mapping", type(raw).__name__)
    known = set(required) | set(optional)
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise InputError(f"{field}.{unknown[0]}", f"unknown field; known: {', '.join(sorted(known))}")
    for key in required:
        if key not in raw:
            raise InputError(f"{field}.{key}", "is required")
    return raw


def _flow(field: str, raw: Any) -> Tuple[int, int, int, int]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise InputError(field, "must be [saddr, daddr, sport, dport]", raw)
    return (_address_int(f"{field}.saddr", raw[0]), _address_int(f"{field}.daddr", raw[1]),
            require_int(f"{field}.sport", raw[2], 0, 65535), require_int(f"{field}.dport", raw[3], 0, 65535))


def record_rows(record: PacketRecord, prefix: str = "record") -> Tuple[Row, List[Row]]:
    """One packet record as its packet_samples row and its packet_stamps rows, validated first.

    The record goes through ``records.record_from_dict``: whatever built it, a bad
    field raises InputError naming it (``prefix.flow.saddr``) before any row exists.
    """
    if not isinstance(record, PacketRecord):
        raise InputError(prefix, "must be a PacketRecord", type(record).__name__)
    try:
        raw = record_to_dict(record)
    except (AttributeError, TypeError):
        raise InputError(f"{prefix}.stamps", "must be Stamp values", record.stamps) from None
    checked = record_from_dict(raw, prefix)
    uid = checked.uid
    flow = checked.flow
    sample = (uid, checked.session, checked.host, DIRECTION_CODES[checked.direction], KIND_CODES[checked.kind],
              int(ipaddress.IPv4Address(flow.saddr)), int(ipaddress.IPv4Address(flow.daddr)), flow.sport, flow.dport,
              checked.key, checked.seq, checked.length, checked.flags, checked.first_ns, len(checked.stamps),
              int(checked.in_order()))
    stamps = [(uid, index, LAYER_IDS[stamp.layer], stamp.ts_ns, stamp.ifindex, stamp.netns)
              for index, stamp in enumerate(checked.stamps)]
    return sample, stamps


def sample_rows(records: Iterable[PacketRecord], prefix: str = "records") -> Tuple[List[Row], List[Row]]:
    """A batch of records as (packet_samples rows, packet_stamps rows); all validated before any is returned."""
    samples: List[Row] = []
    stamps: List[Row] = []
    for index, record in enumerate(records):
        sample, record_stamps = record_rows(record, f"{prefix}[{index}]")
        samples.append(sample)
        stamps.extend(record_stamps)
    return samples, stamps


def metric_row(raw: Mapping[str, Any], prefix: str = "metrics") -> Row:
    """A flow_metrics row from ``{session, host, flow: [saddr, daddr, sport, dport], at_ns, <metric>: int...}``.

    A metric that is absent or None is stored as NULL (not measured, as opposed to 0).
    """
    raw = _mapping(prefix, raw, ("session", "host", "flow", "at_ns"), FLOW_METRICS + FLOW_METRIC_EXTRAS)
    values = []
    for name in FLOW_METRICS + FLOW_METRIC_EXTRAS:
        value = raw.get(name)
        values.append(None if value is None else require_int(f"{prefix}.{name}", value, 0, U64))
    return (_text(f"{prefix}.session", raw["session"], 64), _text(f"{prefix}.host", raw["host"], 128),
            *_flow(f"{prefix}.flow", raw["flow"]), require_int(f"{prefix}.at_ns", raw["at_ns"], 0, U64), *values)


def counter_row(raw: Mapping[str, Any], prefix: str = "counter") -> Row:
    """A drop_counters row from ``{session, host, name, at_ns, value}``: one snapshot of a cumulative counter."""
    raw = _mapping(prefix, raw, ("session", "host", "name", "at_ns", "value"))
    return (_text(f"{prefix}.session", raw["session"], 64), _text(f"{prefix}.host", raw["host"], 128),
            _text(f"{prefix}.name", raw["name"], MAX_NAME), require_int(f"{prefix}.at_ns", raw["at_ns"], 0, U64),
            require_int(f"{prefix}.value", raw["value"], 0, U64))


def counter_dicts(session: str, host: str, counters: Mapping[str, int], at_ns: int) -> List[Dict[str, Any]]:
    """One counter snapshot per name, in name order, as ``counter_row`` input."""
    if not isinstance(counters, Mapping):
        raise InputError("counters", "must be a mapping of name to value", type(counters).__name__)
    return [{"session": session, "host": host, "name": name, "at_ns": at_ns, "value": counters[name]}
            for name in sorted(counters, key=str)]


def clock_row(raw: Mapping[str, Any], prefix: str = "clock") -> Row:
    """A clock_estimates row from ``{session, host, at_ns, offset_ns, skew_ppb, error_ns, probes_used, probes_lost, synchronised}``."""
    raw = _mapping(prefix, raw, COLUMNS["clock_estimates"][2:] + ("session", "host"))
    if not isinstance(raw["synchronised"], bool):
        raise InputError(f"{prefix}.synchronised", "must be true or false", raw["synchronised"])
    return (_text(f"{prefix}.session", raw["session"], 64), _text(f"{prefix}.host", raw["host"], 128),
            require_int(f"{prefix}.at_ns", raw["at_ns"], 0, U64),
            require_int(f"{prefix}.offset_ns", raw["offset_ns"], -S64, S64),
            require_int(f"{prefix}.skew_ppb", raw["skew_ppb"], -S64, S64),
            require_int(f"{prefix}.error_ns", raw["error_ns"], 0, U64),
            require_int(f"{prefix}.probes_used", raw["probes_used"], 0, U32),
            require_int(f"{prefix}.probes_lost", raw["probes_lost"], 0, U32), int(raw["synchronised"]))


def host_row(raw: Mapping[str, Any], prefix: str = "host") -> Row:
    """A hosts row from ``{name, kind, first_seen, last_seen}`` (unix seconds or datetimes, UTC)."""
    raw = _mapping(prefix, raw, ("name", "kind", "first_seen"), ("last_seen",))
    if raw["kind"] not in HOST_KINDS:
        raise InputError(f"{prefix}.kind", f"must be one of {', '.join(HOST_KINDS)}", raw["kind"])
    first = _utc(f"{prefix}.first_seen", raw["first_seen"])
    last = _utc(f"{prefix}.last_seen", raw.get("last_seen", raw["first_seen"]))
    return (_text(f"{prefix}.name", raw["name"], 128), raw["kind"], first, last)


def session_row(raw: Mapping[str, Any], prefix: str = "session") -> Row:
    """A sessions row from ``{id, flow, sampling, started_at, stopped_at}``; flow and sampling are validated and stored as JSON."""
    raw = _mapping(prefix, raw, ("id", "started_at"), ("flow", "sampling", "stopped_at"))
    flow = FlowFilter.from_dict(raw.get("flow"), f"{prefix}.flow")
    sampling = Sampling.from_dict(raw.get("sampling"), f"{prefix}.sampling")
    stopped = raw.get("stopped_at")
    return (_text(f"{prefix}.id", raw["id"], 64), json.dumps(flow.as_dict(), sort_keys=True),
            json.dumps(sampling.as_dict(), sort_keys=True), _utc(f"{prefix}.started_at", raw["started_at"]),
            None if stopped is None else _utc(f"{prefix}.stopped_at", stopped))


# The builders of the tables whose rows come in as mappings (packet records come in as PacketRecord).
ROW_BUILDERS: Dict[str, Callable[[Mapping[str, Any], str], Row]] = {
    "hosts": host_row,
    "sessions": session_row,
    "clock_estimates": clock_row,
    "flow_metrics": metric_row,
    "drop_counters": counter_row,
}


# --- portability -------------------------------------------------------------------------------

# Syntax one of MariaDB 10.11 / MySQL 8 has and the other lacks (or treats differently).
VENDOR_ONLY: Tuple[Tuple[str, str], ...] = (
    (r"\b(ADD\s+(COLUMN\s+)?|CREATE\s+(UNIQUE\s+)?INDEX\s+)IF\s+NOT\s+EXISTS\b", "IF NOT EXISTS on columns/indexes (MariaDB only)"),
    (r"\bDROP\s+(COLUMN|INDEX|KEY)\s+IF\s+EXISTS\b", "IF EXISTS on columns/indexes (MariaDB only)"),
    (r"\bCREATE\s+OR\s+REPLACE\s+TABLE\b", "CREATE OR REPLACE TABLE (MariaDB only)"),
    (r"\bWITH\s+SYSTEM\s+VERSIONING\b", "system-versioned tables (MariaDB only)"),
    (r"\bCREATE\s+SEQUENCE\b|\bNEXTVAL\s*\(", "sequences (MariaDB only)"),
    (r"\bINET[46]\b|\bUUID\s+(NOT\s+)?NULL\b", "MariaDB-only column types"),
    (r"\bPERSISTENT\b|\bPAGE_COMPRESSED\b|\bCOMPRESSED\b", "MariaDB-only column/table attributes"),
    (r"\bRETURNING\b", "INSERT/DELETE ... RETURNING (MariaDB only)"),
    (r"\bPERCENTILE_(CONT|DISC)\b|\bMEDIAN\s*\(", "vendor-only percentile functions (MariaDB only)"),
    (r"\bJSON\b", "the JSON type differs (binary on MySQL, LONGTEXT on MariaDB): store JSON as TEXT"),
    (r"\butf8mb4_0900_\w+", "MySQL-8-only collation"),
    (r"\bSRID\b|\bLATERAL\b|\bANY_VALUE\s*\(|\bVALUES\s+ROW\s*\(|\bNOT\s+ENFORCED\b|\bGROUPING\s*\(", "MySQL-only syntax"),
    (r"\b(VISIBLE|INVISIBLE|IGNORED)\b", "index visibility differs (INVISIBLE on MySQL, IGNORED on MariaDB)"),
    (r"\bENGINE\s*=\s*(?!InnoDB\b)\w+", "a storage engine other than InnoDB"),
    (r"\b(TINY|SMALL|MEDIUM|BIG)?INT\s*\(\s*\d+\s*\)", "integer display widths (deprecated in MySQL 8)"),
    (r"\butf8(mb3)?\b(?!mb4)", "utf8/utf8mb3: use utf8mb4"),
)


def portability_problems(sql: str) -> List[str]:
    """What in ``sql`` would not run the same on both MariaDB 10.11 and MySQL 8 (empty if nothing)."""
    problems = [why for pattern, why in VENDOR_ONLY if re.search(pattern, sql, re.IGNORECASE)]
    if re.match(r"\s*CREATE\s+TABLE\b", sql, re.IGNORECASE):
        if not re.search(r"\bENGINE=InnoDB\b", sql):
            problems.append("CREATE TABLE without ENGINE=InnoDB")
        if not re.search(r"\bCHARSET=utf8mb4\b", sql):
            problems.append("CREATE TABLE without DEFAULT CHARSET=utf8mb4")
    return problems


def all_statements() -> List[str]:
    """Every DDL statement ``migrate`` may run, in order."""
    return [SCHEMA_MIGRATIONS_DDL] + [statement for migration in MIGRATIONS for statement in migration.statements]
