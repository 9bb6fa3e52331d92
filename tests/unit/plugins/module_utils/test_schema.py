"""The raw-table schema, its migrations, grants and row builders (pure logic, no database)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import (
    LAYER_IDS, Flow, PacketRecord, Stamp, record_from_dict, record_to_dict)
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    COLUMNS, FLOW_METRICS, MIGRATIONS, MIGRATIONS_TABLE, RAW_TABLES, SCHEMA_MIGRATIONS_DDL, Migration,
    MigrationError, all_statements, analysis_grants, check_migrations, clock_row, collector_grants,
    counter_dicts, counter_row, host_row, insert_sql, manager_grants, metric_row, portability_problems,
    record_rows, sample_rows, session_row)

NETNS_COOKIE = (1 << 40) + 4097   # namespace cookies are 64-bit


def make_record(index: int = 0, **changes) -> PacketRecord:
    fields = dict(session="s1", host="host1", direction="tx", kind="data",
                  flow=Flow("10.1.2.3", "10.1.2.4", 40000, 5201), key=(index * 65536) % (1 << 32),
                  stamps=(Stamp("app_send", 1_000 + index, 0, NETNS_COOKIE), Stamp("tcp_xmit", 1_500 + index, 0, NETNS_COOKIE),
                          Stamp("dev_xmit", 2_000 + index, 7, NETNS_COOKIE)),
                  seq=index * 1448, length=1448)
    fields.update(changes)
    return PacketRecord(**fields)


def _ddl_columns(statement: str) -> dict[str, str]:
    """Column name -> type text of one CREATE TABLE statement, in order."""
    columns = {}
    for line in statement.splitlines()[1:]:
        match = re.match(r"\s+([a-z_]+) ([A-Z]+(?:\(\d+\))?(?: UNSIGNED)?)", line)
        if match and match.group(1) not in ("PRIMARY", "KEY"):
            columns[match.group(1)] = match.group(2)
    return columns


def _table_statements() -> dict[str, str]:
    """Table -> its CREATE statement, with the columns later migrations ADD appended as lines."""
    found = {}
    for statement in all_statements():
        create = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) \(", statement)
        if create:
            found[create.group(1)] = statement
            continue
        alter = re.match(r"ALTER TABLE (\w+) (.*)", statement, re.S)
        assert alter, statement
        for column, column_type in re.findall(r"ADD COLUMN (\w+) ([A-Z]+(?: UNSIGNED)?)", alter.group(2)):
            found[alter.group(1)] += f"\n  {column} {column_type} NULL"
    return found


_INT_RANGES = {"TINYINT": 8, "SMALLINT": 16, "INT": 32, "BIGINT": 64}


def _fits(column_type: str, value) -> bool:
    """Whether ``value`` is storable in a column of ``column_type`` without truncation."""
    base = column_type.split("(")[0].split()[0]
    if base in _INT_RANGES:
        bits = _INT_RANGES[base]
        if "UNSIGNED" in column_type:
            return isinstance(value, int) and 0 <= value < 1 << bits
        return isinstance(value, int) and -(1 << (bits - 1)) <= value < 1 << (bits - 1)
    if base == "VARCHAR":
        return isinstance(value, str) and len(value) <= int(column_type.split("(")[1].rstrip(")"))
    if base == "TEXT":
        return isinstance(value, str) and len(value.encode()) < 65536
    if base == "DATETIME":
        return isinstance(value, datetime.datetime) and value.tzinfo is None
    raise AssertionError(f"no range known for {column_type}")


def _assert_row_fits(table: str, row: tuple, nullable: tuple = ()) -> dict:
    types = _ddl_columns(_table_statements()[table])
    assert len(row) == len(COLUMNS[table])
    named = dict(zip(COLUMNS[table], row))
    for name, value in named.items():
        if value is None and name in nullable:
            continue
        assert _fits(types[name], value), (table, name, types[name], value)
    return named


# --- migrations ----------------------------------------------------------------------------------

def test_migrations_are_numbered_from_one_in_order_and_unique():
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)
    check_migrations()


@pytest.mark.parametrize("broken", [
    (Migration(1, "a", ("SELECT 1",)), Migration(3, "c", ("SELECT 1",))),   # a gap
    (Migration(1, "a", ("SELECT 1",)), Migration(1, "b", ("SELECT 1",))),   # a duplicate
    (Migration(2, "b", ("SELECT 1",)), Migration(1, "a", ("SELECT 1",))),   # out of order
    (Migration(1, "a", ()),),                                               # nothing to do
])
def test_a_broken_migration_list_is_refused(broken):
    with pytest.raises(MigrationError):
        check_migrations(broken)


def test_every_raw_table_is_created_once_and_re_runnably():
    tables = _table_statements()
    assert sorted(tables) == sorted(RAW_TABLES + (MIGRATIONS_TABLE,))
    assert all(s.startswith(("CREATE TABLE IF NOT EXISTS ", "ALTER TABLE ")) for s in all_statements())
    assert all_statements()[0] == SCHEMA_MIGRATIONS_DDL


def test_the_ddl_declares_the_columns_the_builders_fill_in_that_order():
    tables = _table_statements()
    for table, columns in COLUMNS.items():
        assert tuple(_ddl_columns(tables[table])) == columns, table
    assert COLUMNS["flow_metrics"][-18:-2] == FLOW_METRICS and len(FLOW_METRICS) == 16


def test_the_analysis_join_and_the_host_lookup_are_indexed():
    ddl = _table_statements()["packet_samples"]
    assert "KEY packet_samples_match (session_id, saddr, daddr, sport, dport, sample_key, kind, direction)" in ddl
    assert "KEY packet_samples_host (session_id, host)" in ddl
    assert "PRIMARY KEY (sample_uid, idx)" in _table_statements()["packet_stamps"]
    assert "PRIMARY KEY (session_id, host, name, at_ns)" in _table_statements()["drop_counters"]


# --- portability ---------------------------------------------------------------------------------

def test_every_statement_is_portable_to_mariadb_and_mysql():
    for statement in all_statements():
        assert portability_problems(statement) == [], statement


@pytest.mark.parametrize("sql", [
    "ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT",
    "CREATE INDEX IF NOT EXISTS i ON t (c)",
    "CREATE OR REPLACE TABLE t (c INT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE t (c JSON) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE t (c INT(11)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE t (c INT) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE t (c INT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci",
    "CREATE TABLE t (c INT) ENGINE=InnoDB DEFAULT CHARSET=utf8",
    "CREATE TABLE t (c INT)",
    "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x) OVER () FROM t",
    "DELETE FROM t RETURNING c",
    "SELECT * FROM t, LATERAL (SELECT 1) AS x",
])
def test_the_portability_check_catches_vendor_only_syntax(sql):
    assert portability_problems(sql)


# --- row builders --------------------------------------------------------------------------------

def test_insert_statements_are_insert_ignore_with_one_placeholder_per_column():
    for table, columns in COLUMNS.items():
        sql = insert_sql(table)
        assert sql.startswith(f"INSERT IGNORE INTO {table} ({', '.join(columns)}) VALUES (")
        assert sql.count("%s") == len(columns)
    with pytest.raises(InputError) as info:
        insert_sql("mysql.user")
    assert info.value.field == "table"


def test_sample_rows_fill_every_column_with_what_it_holds():
    rx_stamps = (Stamp("dev_rx", 9, 3, NETNS_COOKIE), Stamp("app_recv", 5, 0, 1))
    records = [make_record(0), make_record(1, direction="rx", kind="ack", flags=1, stamps=rx_stamps)]
    samples, stamps = sample_rows(records)
    assert len(samples) == 2 and len(stamps) == 5
    first = _assert_row_fits("packet_samples", samples[0])
    assert first["uid"] == records[0].uid and first["uid"] < 1 << 63
    assert (first["direction"], first["kind"], first["flags"]) == (0, 0, 0)
    assert first["saddr"] == int(ipaddress.IPv4Address("10.1.2.3")) and first["dport"] == 5201
    assert (first["first_ns"], first["n_stamps"], first["in_order"]) == (1000, 3, 1)
    second = _assert_row_fits("packet_samples", samples[1])
    assert (second["direction"], second["kind"], second["flags"]) == (1, 1, 1)
    assert (second["first_ns"], second["in_order"]) == (5, 0)   # stamps going back in time are kept, flagged
    for row in stamps:
        _assert_row_fits("packet_stamps", row)
    assert [row[:4] for row in stamps[:3]] == [(records[0].uid, 0, LAYER_IDS["app_send"], 1000),
                                               (records[0].uid, 1, LAYER_IDS["tcp_xmit"], 1500),
                                               (records[0].uid, 2, LAYER_IDS["dev_xmit"], 2000)]
    assert stamps[2][4:] == (7, NETNS_COOKIE)
    assert [row[0] for row in stamps[3:]] == [records[1].uid] * 2


def test_a_record_has_the_same_uid_whenever_it_is_shipped_again():
    record = make_record(5)
    again = record_from_dict(json.loads(json.dumps(record_to_dict(record))))
    assert record_rows(record)[0][0] == record_rows(again)[0][0]
    assert record_rows(make_record(6))[0][0] != record_rows(record)[0][0]


@pytest.mark.parametrize("bad, field", [
    (make_record(flow=Flow("10.1.2.300", "10.1.2.4", 1, 2)), "records[1].flow.saddr"),
    (make_record(flow=Flow("10.1.2.3", "10.1.2.4", 70000, 2)), "records[1].flow.sport"),
    (make_record(key=-1), "records[1].key"),
    (make_record(stamps=(Stamp("warp_drive", 1),)), "records[1].stamps[0].layer"),
    (make_record(stamps=(Stamp("app_send", -5),)), "records[1].stamps[0].ts_ns"),
    (make_record(stamps=()), "records[1].stamps"),
    (make_record(direction="sideways"), "records[1].direction"),
    (make_record(stamps=("app_send",)), "records[1].stamps"),
    ({"session": "s1"}, "records[1]"),
])
def test_a_bad_record_names_its_field_and_no_row_is_built(bad, field):
    with pytest.raises(InputError) as info:
        sample_rows([make_record(0), bad])
    assert info.value.field == field


def test_metric_rows_store_missing_metrics_as_null():
    row = metric_row({"session": "s1", "host": "host1", "flow": ["10.0.0.1", "10.0.0.2", 1, 2], "at_ns": 5,
                      "cwnd": 10, "sample_rtt_us": 120, "bytes_sent": (1 << 64) - 1})
    named = _assert_row_fits("flow_metrics", row, nullable=FLOW_METRICS + ("rtt_samples", "bytes_acked"))
    assert (named["cwnd"], named["sample_rtt_us"], named["bytes_sent"], named["rwnd"]) == (10, 120, (1 << 64) - 1, None)
    assert named["daddr"] == int(ipaddress.IPv4Address("10.0.0.2"))


@pytest.mark.parametrize("change, field", [
    ({"cwnd_typo": 1}, "metrics.cwnd_typo"),
    ({"cwnd": -1}, "metrics.cwnd"),
    ({"flow": ["10.0.0.1", "10.0.0.2", 1]}, "metrics.flow"),
    ({"at_ns": "soon"}, "metrics.at_ns"),
    ({"session": ""}, "metrics.session"),
])
def test_a_bad_metric_names_its_field(change, field):
    raw = {"session": "s1", "host": "h", "flow": ["10.0.0.1", "10.0.0.2", 1, 2], "at_ns": 5, **change}
    with pytest.raises(InputError) as info:
        metric_row(raw)
    assert info.value.field == field


def test_counter_snapshots_one_row_per_name():
    raws = counter_dicts("s1", "host1", {"ringbuf_full": 3, "map_full": 0}, 99)
    rows = [counter_row(raw) for raw in raws]
    assert rows == [("s1", "host1", "map_full", 99, 0), ("s1", "host1", "ringbuf_full", 99, 3)]
    for row in rows:
        _assert_row_fits("drop_counters", row)
    with pytest.raises(InputError) as info:
        counter_row(counter_dicts("s1", "host1", {"evicted": -1}, 1)[0])
    assert info.value.field == "counter.value"


def test_clock_host_and_session_rows():
    clock = clock_row({"session": "s1", "host": "h", "at_ns": 10, "offset_ns": -2500, "skew_ppb": -12,
                       "error_ns": 800, "probes_used": 8, "probes_lost": 1, "synchronised": True})
    assert _assert_row_fits("clock_estimates", clock)["offset_ns"] == -2500
    with pytest.raises(InputError) as info:
        clock_row({"session": "s1", "host": "h", "at_ns": 10, "offset_ns": 0, "skew_ppb": 0,
                   "error_ns": 0, "probes_used": 8, "probes_lost": 1, "synchronised": 1})
    assert info.value.field == "clock.synchronised"

    paris = datetime.timezone(datetime.timedelta(hours=1))
    host = _assert_row_fits("hosts", host_row({"name": "host1", "kind": "container",
                                              "first_seen": datetime.datetime(2026, 1, 1, 13, 0, tzinfo=paris)}))
    assert host["first_seen"] == host["last_seen"] == datetime.datetime(2026, 1, 1, 12, 0)
    assert host_row({"name": "h", "kind": "vm", "first_seen": 0})[2] == datetime.datetime(1970, 1, 1)
    with pytest.raises(InputError) as info:
        host_row({"name": "h", "kind": "mainframe", "first_seen": 0})
    assert info.value.field == "host.kind"

    session = _assert_row_fits("sessions", session_row({"id": "s1", "flow": {"dport": 5201},
                                                        "sampling": {"size": 1024}, "started_at": 1.5e9}),
                               nullable=("stopped_at",))
    assert json.loads(session["flow_filter"])["dport"] == 5201 and json.loads(session["sampling"])["size"] == 1024
    with pytest.raises(InputError) as info:
        session_row({"id": "s1", "flow": {"src": "nowhere"}, "started_at": 0})
    assert info.value.field == "session.flow.src"


# --- grants --------------------------------------------------------------------------------------

def test_collectors_get_insert_on_the_raw_tables_and_nothing_else():
    statements = collector_grants("latscope", "collector", "10.0.0.%")
    assert statements[:-1] == [f"GRANT INSERT ON `latscope`.`{t}` TO 'collector'@'10.0.0.%'" for t in RAW_TABLES]
    assert statements[-1] == "GRANT SELECT ON `latscope`.`schema_migrations` TO 'collector'@'10.0.0.%'"
    assert not any(word in s for s in statements for word in ("UPDATE", "DELETE", "ALL", "DROP", "*"))


def test_the_analysis_reads_everything_and_writes_only_its_own_tables():
    statements = analysis_grants("latscope", "analysis", tables=["breakdown"])
    assert statements[0] == "GRANT SELECT, CREATE TEMPORARY TABLES ON `latscope`.* TO 'analysis'@'%'"
    assert statements[1].endswith("ON `latscope`.`breakdown` TO 'analysis'@'%'") and "DELETE" in statements[1]
    with pytest.raises(InputError) as info:
        analysis_grants("latscope", "analysis", tables=["breakdown", "packet_samples"])
    assert info.value.field == "tables[1]"
    assert manager_grants("latscope", "mgr") == ["GRANT ALL PRIVILEGES ON `latscope`.* TO 'mgr'@'%'"]


@pytest.mark.parametrize("args, field", [
    (("lat-scope", "u"), "database"),
    (("latscope", "u'; DROP DATABASE x; --"), "user"),
    (("latscope", ""), "user"),
    (("latscope", "u", "h' OR '1"), "host"),
])
def test_grant_helpers_refuse_names_that_would_need_quoting(args, field):
    with pytest.raises(InputError) as info:
        collector_grants(*args)
    assert info.value.field == field
