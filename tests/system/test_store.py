"""The store, for real: migrations, the shipper and its spool against the lab's MariaDB.

Each test gets a database of its own on the lab's MariaDB (the lab user is
granted it), so tests neither see nor disturb each other's rows.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from contextlib import closing
from pathlib import Path

import pymysql
import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import LAYER_IDS, Flow, PacketRecord, Stamp
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    COLUMNS, MIGRATIONS, RAW_TABLES, all_statements, collector_grants, migrate, portability_problems,
    schema_version)
from latscope.collector.shipper import Shipper, connector
from latscope.collector.spool import Spool
from latscope.lab import lab as lab_ops
from latscope.lab import services

pytestmark = pytest.mark.lab

MYSQL_PORT = 3306
VERSIONS = [migration.version for migration in MIGRATIONS]
NETNS = (1 << 40) + 77


class ManualClock:
    """The shipper's clock, moved by the test: backoff decisions without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_records(session: str, count: int, host: str = "host1") -> list[PacketRecord]:
    flow = Flow("198.19.0.11", "198.19.0.12", 41000, 5201)
    return [PacketRecord(session=session, host=host, direction="tx", kind="data", flow=flow,
                         key=(index * 65536) % (1 << 32), seq=index * 65536, length=1448,
                         stamps=(Stamp("app_send", 10_000 * index + 1, 0, NETNS),
                                 Stamp("tcp_xmit", 10_000 * index + 20, 0, NETNS),
                                 Stamp("dev_xmit", 10_000 * index + 300, 4, NETNS)))
            for index in range(count)]


def query(connection, sql: str, params=None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.commit()   # end the read's snapshot, so the next query sees new rows
    return list(rows)


@pytest.fixture(scope="module")
def mysql_root(lab):
    """Run SQL as MariaDB's root over its socket."""
    config = Path(lab.files.root) / "mariadb" / "my.cnf"
    return lambda sql: services.mariadb_sql(config, sql)


@pytest.fixture(scope="module")
def pidfile(lab) -> Path:
    return Path(lab.files.root) / "mariadb" / "run" / "mysqld.pid"


@pytest.fixture
def database(lab, mysql_root, pidfile):
    name = f"ls_store_{secrets.token_hex(4)}"
    mysql_root(f"CREATE DATABASE `{name}`;\nGRANT ALL PRIVILEGES ON `{name}`.* TO 'latscope'@'%';\n")
    yield name
    if services.running_pid(pidfile, "mariadbd"):
        mysql_root(f"DROP DATABASE IF EXISTS `{name}`;\n")


@pytest.fixture
def connect(lab, lab_secrets, database):
    return connector(lab.plan.manager.address, MYSQL_PORT, "latscope", lab_secrets["latscope_mysql_password"],
                     database, timeout_s=5)


@pytest.fixture
def db(connect):
    """A connection to the test's database, migrated."""
    with closing(connect()) as connection:
        migrate(connection)
        yield connection


@pytest.fixture
def stop_mariadb(lab_settings, pidfile):
    """Stop the manager's mariadbd (SIGTERM, then await its exit); it is started again whatever happens."""
    def stop() -> None:
        pid = services.running_pid(pidfile, "mariadbd")
        assert pid is not None
        os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return True
            return state == "Z"
        services.wait_for(gone, "mariadbd to exit", timeout=60)
    yield stop
    if services.running_pid(pidfile, "mariadbd") is None:
        lab_ops.up(lab_settings)


# --- migrations ----------------------------------------------------------------------------------

def test_migrate_twice_applies_nothing_the_second_time(connect):
    with closing(connect()) as connection:
        assert migrate(connection) == VERSIONS
        assert migrate(connection) == []
        assert schema_version(connection) == VERSIONS[-1]
        assert query(connection, "SELECT version FROM schema_migrations ORDER BY version") == [(v,) for v in VERSIONS]


def test_two_collectors_starting_at_once_migrate_once(connect):
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def start(slot: int) -> None:
        try:
            with closing(connect()) as connection:
                barrier.wait(timeout=30)
                results[slot] = migrate(connection)
        except (pymysql.MySQLError, RuntimeError) as exc:   # reported by the assertion below
            results[slot] = exc

    threads = [threading.Thread(target=start, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert sorted(results, key=len) == [[], VERSIONS], results
    with closing(connect()) as connection:
        assert query(connection, "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version") == \
            [(v, 1) for v in VERSIONS]


def test_the_tables_on_mariadb_are_the_portable_ddl(db, database):
    assert all(portability_problems(statement) == [] for statement in all_statements())
    columns: dict[str, list[str]] = {}
    for table, column in query(db, "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
                                   "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION", (database,)):
        columns.setdefault(table, []).append(column)
    assert {table: tuple(names) for table, names in columns.items() if table in RAW_TABLES} == COLUMNS
    tables = query(db, "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES "
                       "WHERE TABLE_SCHEMA = %s", (database,))
    assert sorted(name for name, *rest in tables) == sorted(RAW_TABLES + ("schema_migrations",))
    assert {(engine, collation) for name, engine, collation in tables} == {("InnoDB", "utf8mb4_bin")}
    index = query(db, "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND "
                      "TABLE_NAME = 'packet_samples' AND INDEX_NAME = 'packet_samples_match' ORDER BY SEQ_IN_INDEX",
                  (database,))
    expected = ["session_id", "saddr", "daddr", "sport", "dport", "sample_key", "kind", "direction"]
    assert [name for (name,) in index] == expected


# --- shipping ------------------------------------------------------------------------------------

def test_shipped_records_are_stored_once_with_their_stamps(db, connect, tmp_path):
    records = make_records("ship", 1000)
    shipper = Shipper(connect, Spool(tmp_path / "a"), batch_size=250)
    for start in range(0, len(records), 100):
        shipper.add(records[start:start + 100])
    assert shipper.counters()["shipped_records"] == 1000   # full batches go as soon as they are full
    assert shipper.flush()
    assert query(db, "SELECT COUNT(*) FROM packet_samples") == [(1000,)]
    assert query(db, "SELECT COUNT(*) FROM packet_stamps") == [(3000,)]
    assert {uid for (uid,) in query(db, "SELECT uid FROM packet_samples")} == {r.uid for r in records}
    probe = records[417]
    assert query(db, "SELECT layer, ts_ns, ifindex, netns FROM packet_stamps WHERE sample_uid = %s ORDER BY idx",
                 (probe.uid,)) == [(LAYER_IDS[s.layer], s.ts_ns, s.ifindex, s.netns) for s in probe.stamps]
    assert query(db, "SELECT INET_NTOA(saddr), sample_key, first_ns, n_stamps, in_order FROM packet_samples "
                     "WHERE uid = %s", (probe.uid,)) == [("198.19.0.11", probe.key, probe.first_ns, 3, 1)]

    again = Shipper(connect, Spool(tmp_path / "b"), batch_size=300)   # a replay of the same batches
    again.add(records)
    assert again.flush()
    assert again.counters()["shipped_records"] == 1000
    assert query(db, "SELECT COUNT(*) FROM packet_samples") == [(1000,)]
    assert query(db, "SELECT COUNT(*) FROM packet_stamps") == [(3000,)]


def test_metrics_and_counter_snapshots_are_stored_once(db, connect, tmp_path):
    shipper = Shipper(connect, Spool(tmp_path), batch_size=50)
    metrics = [{"session": "m", "host": "host1", "flow": ["198.19.0.11", "198.19.0.12", 41000, 5201],
                "at_ns": at, "cwnd": 10 + at, "sample_rtt_us": 90, "bytes_sent": 1 << 40} for at in (1, 2, 3)]
    for attempt in range(2):   # the second time is a replay: nothing new may appear
        shipper.add_metrics(metrics)
        shipper.add_counters("m", "host1", {"ringbuf_full": 1, "map_full": 0}, at_ns=100)
        shipper.add_counters("m", "host1", {"ringbuf_full": 5, "map_full": 2}, at_ns=200)
        assert shipper.flush(), attempt
    assert query(db, "SELECT at_ns, cwnd, rwnd, bytes_sent FROM flow_metrics ORDER BY at_ns") == \
        [(1, 11, None, 1 << 40), (2, 12, None, 1 << 40), (3, 13, None, 1 << 40)]
    assert query(db, "SELECT COUNT(*) FROM drop_counters") == [(4,)]
    latest = query(db, "SELECT d.name, d.value FROM drop_counters d WHERE d.session_id = 'm' AND d.at_ns = "
                       "(SELECT MAX(l.at_ns) FROM drop_counters l WHERE l.session_id = d.session_id "
                       "AND l.host = d.host AND l.name = d.name) ORDER BY d.name")
    assert latest == [("map_full", 2), ("ringbuf_full", 5)]


def test_a_collector_needs_only_insert_on_the_raw_tables(db, database, mysql_root, lab, tmp_path):
    user, password = f"lsc_{secrets.token_hex(4)}", secrets.token_hex(16)
    mysql_root(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';\n"
               + "".join(f"{statement};\n" for statement in collector_grants(database, user)))
    try:
        collector = connector(lab.plan.manager.address, MYSQL_PORT, user, password, database, timeout_s=5)
        shipper = Shipper(collector, Spool(tmp_path), batch_size=100)
        shipper.add(make_records("grants", 120))
        shipper.add_counters("grants", "host1", {"ringbuf_full": 0}, at_ns=1)
        assert shipper.flush(), shipper.last_error
        shipper.add(make_records("grants", 120))   # replayed: INSERT IGNORE needs no other privilege
        assert shipper.flush(), shipper.last_error
        assert query(db, "SELECT COUNT(*) FROM packet_samples") == [(120,)]
        with closing(collector()) as connection:
            assert schema_version(connection) == VERSIONS[-1]
            for sql in ("SELECT COUNT(*) FROM packet_samples", "DELETE FROM packet_samples",
                        "UPDATE drop_counters SET value = 1", "DROP TABLE packet_stamps"):
                with pytest.raises(pymysql.MySQLError) as info:
                    query(connection, sql)
                assert info.value.args[0] == 1142, (sql, info.value)   # command denied to user
    finally:
        mysql_root(f"DROP USER IF EXISTS '{user}'@'%';\n")


def test_a_malformed_record_names_its_field_and_stores_nothing(db, connect, tmp_path):
    shipper = Shipper(connect, Spool(tmp_path), batch_size=10)
    good = make_records("bad", 3)
    shipper.add(good[:1])
    assert shipper.flush()
    before = query(db, "SELECT (SELECT COUNT(*) FROM packet_samples), (SELECT COUNT(*) FROM packet_stamps)")
    bad = PacketRecord(session="bad", host="host1", direction="tx", kind="data",
                       flow=Flow("198.19.0.11", "198.19.0.300", 1, 2), key=0, stamps=(Stamp("app_send", 1),))
    with pytest.raises(InputError) as info:
        shipper.add([good[1], bad, good[2]])
    assert info.value.field == "records[1].flow.daddr"
    with pytest.raises(InputError) as info:
        shipper.add_metrics([{"session": "bad", "host": "host1", "flow": ["198.19.0.11", "198.19.0.12", 1, 2],
                              "at_ns": 1, "cwnd": -3}])
    assert info.value.field == "flow_metrics[0].cwnd"
    assert shipper.pending == 0 and shipper.flush()
    after = query(db, "SELECT (SELECT COUNT(*) FROM packet_samples), (SELECT COUNT(*) FROM packet_stamps)")
    assert after == before
    assert query(db, "SELECT COUNT(*) FROM flow_metrics") == [(0,)]


def test_an_outage_is_spooled_and_replayed_with_nothing_lost_or_duplicated(
        db, connect, tmp_path, lab_settings, stop_mariadb):
    clock = ManualClock()
    attempts: list[float] = []

    def counted_connect():
        attempts.append(clock())
        return connect()

    shipper = Shipper(counted_connect, Spool(tmp_path, max_bytes=64 << 20, segment_bytes=32 << 10),
                      batch_size=100, backoff_s=1.0, backoff_max_s=8.0, clock=clock)
    records = make_records("outage", 900)
    shipper.add(records[:300])
    assert shipper.flush()

    stop_mariadb()
    for start in range(300, 900, 50):   # the daemon keeps producing while the store is down
        shipper.add(records[start:start + 50])
        clock.advance(0.01)
    shipper.add(records[:100])          # and ships some again (already stored before the outage)
    assert shipper.flush() is False
    down = shipper.counters()
    assert (down["spooled_records"], down["spool_items"], down["pending"], down["db_up"]) == (700, 700, 0, 0)
    assert down["ship_errors"] >= 1 and down["spool_dropped"] == 0
    assert "OperationalError" in shipper.last_error

    tried = len(attempts)
    for tick in range(200):             # within the backoff, a flush does not touch the network
        assert shipper.flush() is False, tick
    assert len(attempts) == tried

    assert "mariadb" in lab_ops.up(lab_settings).changes

    def caught_up() -> bool:
        clock.advance(60)               # past any backoff: every poll is one real attempt
        return shipper.flush()
    services.wait_for(caught_up, "the shipper to replay its spool", timeout=90)

    with closing(connect()) as connection:
        assert query(connection, "SELECT COUNT(*), COUNT(DISTINCT uid) FROM packet_samples") == [(900, 900)]
        assert {uid for (uid,) in query(connection, "SELECT uid FROM packet_samples")} == {r.uid for r in records}
        assert query(connection, "SELECT COUNT(*) FROM packet_stamps") == [(2700,)]
    done = shipper.counters()
    assert (done["shipped_records"], done["replayed_records"], done["spool_items"], done["db_up"]) == (300, 700, 0, 1)
    assert list(tmp_path.iterdir()) == []
