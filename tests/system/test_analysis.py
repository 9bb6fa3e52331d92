"""The analysis in SQL, for real: hand-built sessions with known answers against the lab's MariaDB.

Each test gets a database of its own on the lab's MariaDB (as tests/system/test_store.py does),
fills the raw tables with records built here - on the manager's timebase, then put on each host's
clock with ``clock.to_host_time`` - and checks what ``analysis_sql.materialise`` wrote: the
per-layer percentiles, the network latency across two clocks, the RTT decomposition and its
closure, the hop tables, what was excluded and counted, the replacement on a re-run, and that bad
input changes nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql, clock
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import Flow, PacketRecord, Stamp
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    clock_row, counter_row, insert_sql, metric_row, migrate, sample_rows, session_row)
from latscope.analysis import data, report_html, report_text
from latscope.collector.shipper import connector
from latscope.lab import services

pytestmark = pytest.mark.lab

MYSQL_PORT = 3306
SESSION = "known"
A, B = "hostA", "hostB"
FLOW = Flow("10.9.0.1", "10.9.0.2", 40000, 5201)
T0 = 7_000_000_000_000                 # manager time of the first sample
NS_A, NS_C, NS_B = 4026531840, 4026532300, 4026532400    # namespace cookies: host A, its container, host B
SAMPLES = 10
ESTIMATES = {
    A: clock.ClockEstimate(host=A, at_ns=T0, offset_ns=0, skew_ppb=0, error_ns=300, skew_error_ppb=1,
                           probes_used=8, probes_lost=0, synchronised=True),
    # host B's clock runs 5 ms ahead and 20 ppm fast: the analysis must undo both
    B: clock.ClockEstimate(host=B, at_ns=T0, offset_ns=5_000_000, skew_ppb=20_000, error_ns=700, skew_error_ppb=1,
                           probes_used=8, probes_lost=0, synchronised=True),
}


# --- the hand-built session ------------------------------------------------------------------------

def _stamps(host: str, start: int, layers: list[tuple[str, int, int, int]]) -> tuple[Stamp, ...]:
    """Stamps from a manager time ``start`` and (layer, gap before it, ifindex, netns), on ``host``'s clock."""
    out, now = [], start
    for layer, gap, ifindex, netns in layers:
        now += gap
        out.append(Stamp(layer, clock.to_host_time(now, ESTIMATES[host]), ifindex, netns))
    return tuple(out)


def sample(index: int, session: str = SESSION) -> list[PacketRecord]:
    """The four records of one sampled byte: data out (A tx, B rx), its ACK back (B tx, A rx).

    The data leaves A's container (veth 5), crosses A's bridge port (6) and uplink (2). Known
    layers: tx_app = 1000 * (index + 1) ns, net = 50000 + 100 * index ns, net back = 60000 ns.
    """
    key = index * 65536
    m0 = T0 + index * 1_000_000
    data_tx = _stamps(A, m0, [("app_send", 0, 0, NS_C), ("tcp_xmit", 1000 * (index + 1), 0, NS_C),
                              ("ip_out", 2000, 0, NS_C), ("dev_queue", 3000, 5, NS_C), ("dev_xmit", 4000, 5, NS_C),
                              ("dev_rx", 700, 6, NS_A), ("netif_rx", 800, 6, NS_A), ("dev_queue", 900, 2, NS_A),
                              ("dev_xmit", 1000, 2, NS_A)])
    m1 = m0 + sum(gap for gap in (1000 * (index + 1), 2000, 3000, 4000, 700, 800, 900, 1000))
    data_rx = _stamps(B, m1, [("dev_rx", 50_000 + 100 * index, 2, NS_B), ("netif_rx", 1500, 2, NS_B),
                              ("tcp_rx", 2500, 0, NS_B), ("app_copy", 10_000, 0, NS_B), ("app_recv", 500, 0, NS_B)])
    m2 = m1 + 50_000 + 100 * index + 1500 + 2500
    ack_tx = _stamps(B, m2, [("tcp_xmit", 40_000, 0, NS_B), ("ip_out", 1200, 0, NS_B), ("dev_queue", 1800, 2, NS_B),
                             ("dev_xmit", 800, 2, NS_B)])
    m3 = m2 + 40_000 + 1200 + 1800 + 800
    ack_rx = _stamps(A, m3, [("dev_rx", 60_000, 2, NS_A), ("netif_rx", 1000, 2, NS_A), ("tcp_rx", 1100, 0, NS_A)])
    return [PacketRecord(session, A, "tx", "data", FLOW, key, data_tx, seq=key, length=1448),
            PacketRecord(session, B, "rx", "data", FLOW, key, data_rx, seq=key, length=1448),
            PacketRecord(session, B, "tx", "ack", FLOW.reversed(), key, ack_tx, seq=key + 1448),
            PacketRecord(session, A, "rx", "ack", FLOW.reversed(), key, ack_rx, seq=key + 1448)]


def out_of_order(session: str = SESSION) -> PacketRecord:
    """A data record whose stamps go back in time: excluded and counted, never averaged in."""
    return PacketRecord(session, A, "tx", "data", FLOW, 100 * 65536,
                        (Stamp("app_send", T0 + 500, 0, NS_C), Stamp("tcp_xmit", T0 + 100, 0, NS_C)), seq=100 * 65536)


def unmatched(session: str = SESSION) -> PacketRecord:
    """A data record the receiver never reported: counted as unmatched."""
    return PacketRecord(session, A, "tx", "data", FLOW, 200 * 65536,
                        _stamps(A, T0 + 90_000_000, [("tcp_xmit", 0, 0, NS_C), ("ip_out", 100, 0, NS_C)]),
                        seq=200 * 65536)


def store(connection, records: list[PacketRecord], session: str = SESSION, clocks=(A, B), counters=(A, B),
          session_stored: bool = True, metrics: bool = True) -> None:
    samples, stamps = sample_rows(records)
    with connection.cursor() as cursor:
        cursor.executemany(insert_sql("packet_samples"), samples)
        cursor.executemany(insert_sql("packet_stamps"), stamps)
        if session_stored:
            cursor.execute(insert_sql("sessions"), session_row({"id": session, "started_at": 1_700_000_000}))
        for host in clocks:
            cursor.execute(insert_sql("clock_estimates"), clock_row(ESTIMATES[host].row(session)))
        for host in counters:
            cursor.execute(insert_sql("drop_counters"), counter_row(
                {"session": session, "host": host, "name": "ringbuf_full", "at_ns": T0, "value": 3 if host == A else 0}))
        if metrics:
            for step in range(5):
                cursor.execute(insert_sql("flow_metrics"), metric_row(
                    {"session": session, "host": A, "flow": list(FLOW.as_tuple()), "at_ns": T0 + step * 1_000_000,
                     "cwnd": 10 + step, "rwnd": 65535, "flight_size": 5 + step, "sample_rtt_us": 120 + step}))
    connection.commit()


def known_session(connection, session: str = SESSION) -> list[PacketRecord]:
    records = [record for index in range(SAMPLES) for record in sample(index, session)]
    records += [out_of_order(session), unmatched(session)]
    store(connection, records, session)
    return records


def query(connection, sql: str, params=None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.commit()
    return [tuple(row) for row in rows]


def layer(connection, direction: str, name: str, session: str = SESSION) -> dict:
    rows = query(connection, "SELECT samples, min_ns, p50_ns, p90_ns, p99_ns, max_ns, mean_ns FROM analysis_layers "
                             "WHERE session_id = %s AND direction = %s AND layer = %s", (session, direction, name))
    assert len(rows) == 1, rows
    return dict(zip(("n", "min", "p50", "p90", "p99", "max", "mean"), rows[0]))


def snapshot(connection) -> dict:
    """Every analysis table's rows (sorted), to prove a failed run changed nothing."""
    existing = {name for (name,) in query(connection, "SHOW TABLES")}
    return {table: sorted(map(repr, query(connection, f"SELECT * FROM {table}")))
            for table in analysis_sql.ANALYSIS_TABLES if table in existing}


def manager(host: str, host_ns: int) -> int:
    return clock.to_manager_time(host_ns, ESTIMATES[host])


# --- fixtures: a database of our own on the lab's MariaDB (the pattern of test_store.py) --------------

@pytest.fixture(scope="module")
def mysql_root(lab):
    config = Path(lab.files.root) / "mariadb" / "my.cnf"
    return lambda sql: services.mariadb_sql(config, sql)


@pytest.fixture
def database(lab, mysql_root):
    name = f"ls_analysis_{secrets.token_hex(4)}"
    mysql_root(f"CREATE DATABASE `{name}`;\nGRANT ALL PRIVILEGES ON `{name}`.* TO 'latscope'@'%';\n")
    yield name
    mysql_root(f"DROP DATABASE IF EXISTS `{name}`;\n")


@pytest.fixture
def db(lab, lab_secrets, database):
    connect = connector(lab.plan.manager.address, MYSQL_PORT, "latscope", lab_secrets["latscope_mysql_password"],
                        database, timeout_s=10)
    with closing(connect()) as connection:
        migrate(connection)
        yield connection


# --- one clock formula: the SQL of clock.to_manager_time_sql is clock.to_manager_time ---------------

def test_sql_conversion_equals_to_manager_time_to_the_ns(db):
    import random

    rng = random.Random(6)
    cases = []
    for index in range(2000):
        at = rng.randrange(0, 1 << 62)
        offset = rng.randrange(-(1 << 50), 1 << 50)
        skew = rng.choice([0, 1, -1, clock.MAX_SKEW_PPB, -clock.MAX_SKEW_PPB]) if index % 4 == 0 else \
            rng.randrange(-clock.MAX_SKEW_PPB, clock.MAX_SKEW_PPB + 1)
        cases.append((max(0, at + offset + rng.randrange(-10 ** 12, 10 ** 12)), at, offset, skew))
    # exact halves: 976563 ns at 512 ppb is k + 0.5 ns on the manager's clock (rounded away from zero)
    cases += [(10 ** 15 + 976_563 * j, 10 ** 15, 0, 512) for j in (-3, -1, 1, 3)]
    with db.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE conv (ts BIGINT UNSIGNED, at_ns BIGINT UNSIGNED, off BIGINT, skew BIGINT)")
        cursor.executemany("INSERT INTO conv VALUES (%s, %s, %s, %s)", cases)
        cursor.execute(f"SELECT ts, at_ns, off, skew, {clock.to_manager_time_sql('ts', 'at_ns', 'off', 'skew')} FROM conv")
        rows = cursor.fetchall()
    assert len(rows) == len(cases)
    for ts, at, offset, skew, converted in rows:
        estimate = clock.ClockEstimate(host="h", at_ns=at, offset_ns=offset, skew_ppb=skew, error_ns=1, skew_error_ppb=1,
                                       probes_used=1, probes_lost=0, synchronised=True)
        assert converted == clock.to_manager_time(ts, estimate), (ts, at, offset, skew)


def test_each_record_uses_the_estimate_estimate_for_picks(db):
    """Two estimates of B a second apart, with different offsets: each record is converted with the
    one nearest in host time, as clock.estimate_for chooses."""
    records = known_session(db, "twoclocks")
    later = dataclasses.replace(ESTIMATES[B], at_ns=T0 + 5_000_000, offset_ns=5_000_400)
    with db.cursor() as cursor:
        cursor.execute(insert_sql("clock_estimates"), clock_row(later.row("twoclocks")))
    db.commit()
    analysis_sql.materialise(db, "twoclocks")
    estimates = [ESTIMATES[B], later]
    by_uid = {record.uid: record for record in records}
    used = set()
    for tx_uid, rx_uid, net_ns in query(db, "SELECT tx_uid, rx_uid, net_ns FROM analysis_packets WHERE session_id = "
                                            "'twoclocks' AND direction = 'data'"):
        tx, rx = by_uid[tx_uid], by_uid[rx_uid]
        chosen = clock.estimate_for(estimates, B, rx.first_ns)
        used.add(chosen.at_ns)
        assert net_ns == clock.to_manager_time(rx.stamps[0].ts_ns, chosen) - manager(A, tx.stamps[-1].ts_ns)
    assert used == {T0, T0 + 5_000_000}


# --- known answers ---------------------------------------------------------------------------------

def test_per_layer_percentiles_are_the_nearest_rank_ones(db):
    known_session(db)
    result = analysis_sql.materialise(db, SESSION)
    assert result.data_pairs == SAMPLES and result.ack_pairs == SAMPLES and result.rtt_samples == SAMPLES
    tx_app = layer(db, "data", "tx_app")
    # 1000, 2000 ... 10000 ns: p50 is the 5th value, p90 the 9th, p99 the 10th
    assert tx_app == {"n": 10, "min": 1000, "p50": 5000, "p90": 9000, "p99": 10000, "max": 10000, "mean": 5500.0}
    assert layer(db, "data", "tx_tcp")["p50"] == 2000
    assert layer(db, "data", "tx_virt")["p50"] == 4000 + 700 + 800 + 900    # container veth -> uplink queue
    assert layer(db, "data", "tx_driver")["p50"] == 1000
    # on B's clock, 20 ppm fast and rounded to the ns: within 2 ns of the manager's
    assert abs(layer(db, "data", "rx_tcp")["max"] - 10_000) <= 2
    assert abs(layer(db, "ack", "tx_ip")["min"] - 1800) <= 2
    assert analysis_sql.nearest_rank(range(1000, 10_001, 1000), 500) == 5000
    # a layer without a value in a direction still has its row: an ACK has no application send
    assert layer(db, "ack", "tx_app") == {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None,
                                          "mean": None}
    per_direction = query(db, "SELECT direction, COUNT(*) FROM analysis_layers WHERE session_id = %s "
                              "GROUP BY direction ORDER BY direction", (SESSION,))
    assert per_direction == [("ack", len(analysis_sql.packet_columns())), ("data", len(analysis_sql.packet_columns())),
                             ("rtt", len(analysis_sql.rtt_columns()))]


def test_network_latency_is_taken_across_the_two_clocks(db):
    records = known_session(db)
    analysis_sql.materialise(db, SESSION)
    # B's stamps are 5 ms (and 20 ppm) ahead: without the conversion net would be ~5.05 ms
    rows = query(db, "SELECT tx_uid, net_ns, t_ns, total_ns FROM analysis_packets WHERE session_id = %s "
                     "AND direction = 'data' ORDER BY t_ns", (SESSION,))
    assert len(rows) == SAMPLES
    by_uid = {record.uid: record for record in records}
    for index, (tx_uid, net_ns, t_ns, total_ns) in enumerate(rows):
        tx = by_uid[tx_uid]
        rx = next(r for r in records if r.host == B and r.kind == "data" and r.key == tx.key)
        # the reference: clock.to_manager_time on each stamp, in Python
        assert net_ns == manager(B, rx.stamps[0].ts_ns) - manager(A, tx.stamps[-1].ts_ns)
        assert abs(net_ns - (50_000 + 100 * index)) <= 1
        assert t_ns == manager(A, tx.stamps[0].ts_ns)
        assert total_ns == manager(B, rx.stamps[-1].ts_ns) - manager(A, tx.stamps[0].ts_ns)
    net = layer(db, "data", "net")
    assert abs(net["p50"] - 50_400) <= 1 and abs(net["p90"] - 50_800) <= 1
    assert abs(layer(db, "ack", "net")["p50"] - 60_000) <= 1


def test_rtt_decomposition_closes(db):
    known_session(db)
    result = analysis_sql.materialise(db, SESSION)
    assert result.closure_ok == SAMPLES
    rows = query(db, "SELECT rtt_ns, parts_ns, closure, s_app_ns, r_tcp_ns, net_out_ns, net_back_ns FROM analysis_rtt "
                     "WHERE session_id = %s ORDER BY t_ns", (SESSION,))
    for index, (rtt, parts, closure, s_app, r_tcp, net_out, net_back) in enumerate(rows):
        # data out, ACK back on A's clock (app_send -> ACK at TCP)
        expected = (1000 * (index + 1) + 2000 + 3000 + 4000 + 700 + 800 + 900 + 1000 + 50_000 + 100 * index + 1500
                    + 2500 + 40_000 + 1200 + 1800 + 800 + 60_000 + 1000 + 1100)
        assert rtt == expected
        assert s_app == 1000 * (index + 1)
        assert abs(r_tcp - 41_200) <= 2          # B's clock is 20 ppm fast: 41200 ns read as 41201
        assert abs(net_out - (50_000 + 100 * index)) <= 1 and abs(net_back - 60_000) <= 1
        assert abs(parts - rtt) <= 3 and abs(closure - 1) < 1e-4
    flows = query(db, "SELECT direction, matched, unmatched_tx, unmatched_rx, rtt_samples, closure_ok FROM "
                      "analysis_flows WHERE session_id = %s ORDER BY direction", (SESSION,))
    assert flows == [("ack", SAMPLES, 0, 0, 0, 0), ("data", SAMPLES, 1, 0, SAMPLES, SAMPLES)]


def test_hops_of_the_container_path_add_up(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    paths = query(db, "SELECT hop_no, ifindex, netns, samples, p50_ns FROM analysis_paths WHERE session_id = %s AND "
                      "direction = 'data' AND side = 'tx' ORDER BY hop_no", (SESSION,))
    # veth in the container (queue -> xmit -> bridge port rx), the bridge port, the uplink (its own dwell)
    assert paths == [(1, 5, NS_C, SAMPLES, 4000 + 700), (2, 6, NS_A, SAMPLES, 800 + 900), (3, 2, NS_A, SAMPLES, 1000)]
    spans = query(db, "SELECT h.uid, SUM(h.hop_ns) FROM analysis_hops h WHERE h.session_id = %s AND h.side = 'tx' "
                      "AND h.direction = 'data' GROUP BY h.uid", (SESSION,))
    assert len(spans) == SAMPLES and all(int(total) == 4000 + 700 + 800 + 900 + 1000 for _u, total in spans)


def test_excluded_and_unmatched_samples_are_counted(db):
    known_session(db)
    result = analysis_sql.materialise(db, SESSION)
    assert result.excluded == 1 and result.samples == 4 * SAMPLES + 2
    counts = dict(((host, source, name), value) for host, source, name, value in query(
        db, "SELECT host, source, name, value FROM analysis_counts WHERE session_id = %s", (SESSION,)))
    assert counts[(A, "analysis", "out_of_order_excluded")] == 1
    assert counts[(B, "analysis", "out_of_order_excluded")] == 0
    assert counts[(A, "collector", "ringbuf_full")] == 3
    # the excluded record is averaged in nowhere: tx_app still has exactly the 10 known values
    assert layer(db, "data", "tx_app")["n"] == SAMPLES


def test_flow_metrics_are_summarised(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    rows = dict((metric, rest) for metric, *rest in query(
        db, "SELECT metric, samples, min_value, max_value, mean_value, first_value, last_value FROM analysis_metrics "
            "WHERE session_id = %s AND host = %s", (SESSION, A)))
    assert rows["cwnd"] == [5, 10, 14, 12.0, 10, 14]
    assert rows["flight_size"][:3] == [5, 5, 9]
    assert "bytes_sent" not in rows                      # never measured: no row, not zeros


def test_re_running_replaces_the_rows(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    first = snapshot(db)
    analysis_sql.materialise(db, SESSION)
    again = snapshot(db)
    for table in analysis_sql.ANALYSIS_TABLES:
        if table != "analysis_runs":
            assert again[table] == first[table], table
    assert query(db, "SELECT COUNT(*) FROM analysis_runs WHERE session_id = %s", (SESSION,)) == [(1,)]
    # a record arrives late (a replayed spool): the re-run sees it, and still no duplicate
    store(db, sample(SAMPLES), clocks=(), counters=(), session_stored=False, metrics=False)
    result = analysis_sql.materialise(db, SESSION)
    assert result.data_pairs == SAMPLES + 1
    assert query(db, "SELECT COUNT(*) FROM analysis_packets WHERE session_id = %s AND direction = 'data'",
                 (SESSION,)) == [(SAMPLES + 1,)]


def test_other_sessions_rows_are_left_alone(db):
    known_session(db)
    known_session(db, "other")
    analysis_sql.materialise(db, "other")
    analysis_sql.materialise(db, SESSION)
    analysis_sql.materialise(db, SESSION)
    assert query(db, "SELECT session_id, COUNT(*) FROM analysis_packets GROUP BY session_id ORDER BY session_id") == [
        ("known", 2 * SAMPLES), ("other", 2 * SAMPLES)]


def test_no_estimate_at_all_is_offset_zero_flagged_unsynchronised(db):
    records = [record for index in range(3) for record in sample(index, "nosync")]
    store(db, records, "nosync", clocks=())
    result = analysis_sql.materialise(db, "nosync")
    assert result.synchronised is False and result.summary()["synchronised"] is False
    assert query(db, "SELECT host, synchronised, error_ns FROM analysis_clock WHERE session_id = 'nosync' "
                     "ORDER BY host") == [(A, 0, None), (B, 0, None)]
    # B's 5 ms offset is not undone: the report must say the timebase is unsynchronised
    assert layer(db, "data", "net", "nosync")["min"] > 5_000_000


# --- bad input: one clear message, nothing stored changes --------------------------------------------

def _fails(db, session: str, *words: str) -> str:
    before = snapshot(db)
    with pytest.raises(InputError) as caught:
        analysis_sql.materialise(db, session)
    message = str(caught.value)
    assert caught.value.field == "session"
    for word in words:
        assert word in message, message
    assert snapshot(db) == before
    return message


def test_unknown_session(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    _fails(db, "nope", "unknown session", "known: known")


def test_no_receiver_data(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    store(db, [sample(index, "halfway")[0] for index in range(3)], "halfway", clocks=(A,), counters=(A,))
    _fails(db, "halfway", "no receiver data", A)


def test_missing_clock_estimate_names_the_host(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    store(db, [record for index in range(3) for record in sample(index, "oneclock")], "oneclock", clocks=(A,))
    _fails(db, "oneclock", "missing clock estimate for hostB")


def test_unsynchronised_estimate_is_not_used(db):
    records = [record for index in range(3) for record in sample(index, "lost")]
    store(db, records, "lost", clocks=(A,))
    with db.cursor() as cursor:
        cursor.execute(insert_sql("clock_estimates"), clock_row(
            clock.unsynchronised(B, "no replies (8 of 8 probes lost)", T0).row("lost")))
    db.commit()
    _fails(db, "lost", "hostB", "unsynchronised")


def test_half_shipped_sessions(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    # samples but no sessions row
    store(db, [record for index in range(2) for record in sample(index, "nostart")], "nostart", session_stored=False)
    _fails(db, "nostart", "half-shipped", "sessions row")
    # a host's final drop counters never arrived
    store(db, [record for index in range(2) for record in sample(index, "nocounters")], "nocounters", counters=(A,))
    _fails(db, "nocounters", "half-shipped", B)
    # a record's stamp rows are missing
    store(db, [record for index in range(2) for record in sample(index, "nostamps")], "nostamps")
    with db.cursor() as cursor:
        cursor.execute("DELETE t FROM packet_stamps t JOIN packet_samples s ON s.uid = t.sample_uid "
                       "WHERE s.session_id = 'nostamps' AND s.host = %s AND t.idx >= 2", (B,))
    db.commit()
    _fails(db, "nostamps", "half-shipped", B)


def test_bad_session_argument(db):
    for value in ("", "x" * 65, None, 5):
        with pytest.raises(InputError) as caught:
            analysis_sql.materialise(db, value)
        assert caught.value.field == "session"


# --- the terminal report from the stored rows --------------------------------------------------------

def test_text_report_shows_layers_both_directions_and_counts(db):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    text = report_text.render(data.load(db, SESSION), color=False)
    assert "data  10.9.0.1:40000 -> 10.9.0.2:5201" in text and "ack   10.9.0.2:5201 -> 10.9.0.1:40000" in text
    net_line = next(line for line in text.splitlines() if line.lstrip().startswith("network") and "50.4" in line)
    assert "<" in net_line                 # the largest share of the data direction is marked
    assert "out of order, excluded: 1" in text and "unmatched: 1 sent, 0 received" in text
    assert "hostB" in text and "+-0.7 us" in text     # the clock error bound
    assert "ringbuf_full: 3" in text
    assert "closure" in text and "10/10" in text


def test_report_of_an_unanalysed_session_says_what_to_do(db):
    known_session(db)
    with pytest.raises(InputError) as caught:
        data.load(db, SESSION)
    assert "latscope analyse --session known" in str(caught.value)


# --- the HTML report, rendered by a real browser ------------------------------------------------------

def pixel_spread(png: Path) -> float:
    """The standard deviation of a PNG's grey levels (0 for a blank page)."""
    from matplotlib import image

    pixels = image.imread(str(png))
    grey = pixels[..., :3].mean(axis=2) if pixels.ndim == 3 else pixels
    return float(grey.std())


def screenshot(page: Path, out: Path) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is installed by scripts/bootstrap.sh"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={out.parent / 'chromium-profile'}", f"--screenshot={out}",
                           "--window-size=1200,3000", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return out


def test_html_report_renders_with_its_plots_in_chromium(db, tmp_path):
    known_session(db)
    analysis_sql.materialise(db, SESSION)
    index = report_html.write(db, data.load(db, SESSION), tmp_path / "report")
    page = index.read_text()
    images = sorted(path.name for path in index.parent.glob("*.png"))
    # per-layer CDFs of both directions, the stacked bars, the RTT decomposition, the flow metrics
    assert len([name for name in images if name.startswith("cdf-")]) == 2
    assert [name for name in images if name.startswith(("layers-", "rtt-", "metrics-"))] == [
        images[2], images[3], images[4]]
    for name in images:
        assert f'src="{name}"' in page
        assert pixel_spread(index.parent / name) > 0.02, name
    assert 'class="largest"' in page and "hostB" in page
    shot = screenshot(index, tmp_path / "shot.png")
    assert pixel_spread(shot) > 0.05
