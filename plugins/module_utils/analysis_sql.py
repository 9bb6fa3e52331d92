# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The analysis of a session, materialised in SQL (one implementation: the analyzer and the analysis module).

``materialise(connection, session)`` turns a session's raw rows (packet samples
and their stamps, clock estimates, flow metrics, drop counters) into the
derived ``analysis_*`` tables (``ANALYSIS_TABLES``; docs/analysis.md has their
columns):

* the per-packet breakdown: a sender's TX record matched with the receiver's
  RX record of the same sample (flow, sample key, kind; the nearest in time
  when keys repeat), every layer's latency on both hosts and the one-way
  network latency, for data packets (``data``) and for the ACKs coming back
  (``ack``); the device hops of container and VM paths one row each;
* per-layer summaries (count, min, p50, p90, p99, max, mean) per flow and
  direction, the RTT decomposition of the MicroBPF seed with its closure, the
  per-hop path summaries and flow-metric summaries over the session;
* what was left out, counted: unmatched samples per flow, records with
  out-of-order stamps or truncated stamp lists per host, the collectors' last
  drop counters, and the clock each host was converted with.

Everything is set-based SQL that runs the same on MariaDB 10.11 and MySQL 8:
window functions (``ROW_NUMBER``/``COUNT`` for exact nearest-rank
percentiles), no vendor-only function, no temporary table referenced twice in
one statement (MySQL 8 cannot reopen one), and ``portability_problems`` clean.

Bad input (unknown session, no receiver data, a host without a clock
estimate, a half-shipped session) raises ``InputError`` naming what is
missing before anything is written. A session's derived rows are replaced in
one transaction: a reader sees the old analysis or the new one, never a mix,
and re-running never duplicates a row.

Clock convention (DESIGN section 4, NTP arithmetic): an estimate's
``offset_ns`` is the host's clock minus the manager's (θ = ((t2-t1)+(t3-t4))/2
with t2, t3 on the host), ``skew_ppb`` how fast that offset grows, so a stamp
``t`` of host H is ``t - (offset_ns + skew_ppb * (t - at_ns) / 1e9)`` on the
manager's timebase, with the estimate of H in force at ``t`` (the latest one at
or before it; the first one before that). A session with no estimate at all is
analysed with offset 0 and flagged ``unsynchronised`` (true in the lab, where
every namespace shares one kernel clock).

Standard library only; the caller brings a DB-API connection (PyMySQL).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.clock import to_manager_time_sql
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import FLAG_REPEAT, FLAG_TRUNCATED, LAYER_IDS
from ansible_collections.latscope.latscope.plugins.module_utils.schema import FLOW_METRICS, TABLE_OPTIONS

ANALYSIS_VERSION = 1
PERCENTILES = (500, 900, 990)        # per mille: p50, p90, p99 (nearest rank)
CLOSURE_TOLERANCE = 0.05             # |sum of parts / RTT - 1| within this counts as closed
DIRECTIONS = ("data", "ack")         # one-way breakdowns: data sender -> receiver, ACKs receiver -> sender
SQL_MODE = ("ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
            "NO_ENGINE_SUBSTITUTION")   # MySQL 8's default: MariaDB then refuses what MySQL would
SESSION_SETTINGS = (
    f"SET SESSION sql_mode = '{SQL_MODE}'",
    # No locking reads of the raw tables: collectors keep inserting while a session is analysed.
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION tmp_table_size = 268435456",
    "SET SESSION max_heap_table_size = 268435456",
    "SET SESSION sort_buffer_size = 33554432",
)
LOCK_TIMEOUT_S = 120

L = LAYER_IDS   # layer ids, as packet_stamps.layer stores them
DEVICE_LAYER_IDS = tuple(sorted(L[name] for name in ("dev_queue", "qdisc_enq", "qdisc_deq", "dev_xmit", "dev_rx", "netif_rx")))


# --- what the tables hold ---------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One column of the one-way breakdown: where on the path, and what it measures."""

    column: str       # analysis_packets.<column>_ns, analysis_layers.layer
    where: str        # sender, wire, receiver
    name: str         # what a report calls it


# One-way path of a packet, in order. Consecutive, so that on one timebase they add up to the whole
# (first stamp on the sender to last on the receiver).
ONE_WAY_LAYERS: Tuple[Layer, ...] = (
    Layer("tx_app", "sender", "socket send queue + TCP"),      # app_send -> tcp_xmit
    Layer("tx_tcp", "sender", "TCP -> IP"),                    # tcp_xmit -> ip_out
    Layer("tx_ip", "sender", "IP output"),                     # ip_out -> first dev_queue
    Layer("tx_virt", "sender", "virtual interfaces"),          # first dev_queue -> the uplink's dev_queue
    Layer("tx_qdisc", "sender", "qdisc queue"),                # the uplink's qdisc_enq -> qdisc_deq
    Layer("tx_driver", "sender", "driver hand-off"),           # the uplink's dev_queue -> dev_xmit, less its qdisc
    Layer("net", "wire", "sender NIC -> receiver NIC"),        # last dev_xmit -> first dev_rx (manager timebase)
    Layer("rx_nic", "receiver", "driver -> MAC"),              # first dev_rx -> first netif_rx
    Layer("rx_virt", "receiver", "virtual interfaces"),        # first netif_rx -> last netif_rx (bridge, veth)
    Layer("rx_ip", "receiver", "IP input"),                    # last netif_rx -> tcp_rx
    Layer("rx_tcp", "receiver", "TCP receive queue"),          # tcp_rx -> app_copy
    Layer("rx_app", "receiver", "copy to app"),                # app_copy -> app_recv
)
TOTAL = Layer("total", "path", "first stamp -> last stamp")


@dataclass(frozen=True)
class RttPart:
    """One part of the RTT decomposition (the MicroBPF seed's L_APP, L_TCP, L_IP, L_NIC, L_NET)."""

    column: str
    seed: str         # the seed's name
    where: str
    name: str


# A: the sender's data record, B: the receiver's data record, C: the receiver's ACK record, D: the
# sender's ACK record. The parts are consecutive from A's first stamp to D's tcp_rx.
RTT_PARTS: Tuple[RttPart, ...] = (
    RttPart("s_app", "L_APP", "sender", "send queue (app -> TCP)"),           # A app_send -> tcp_xmit
    RttPart("s_tcp", "L_TCP", "sender", "TCP -> IP"),                         # A tcp_xmit -> ip_out
    RttPart("s_ip", "L_IP", "sender", "IP out + IP in"),                      # A ip_out -> dev_queue, D netif_rx -> tcp_rx
    RttPart("s_nic", "L_NIC", "sender", "devices out + in"),                  # A dev_queue -> dev_xmit, D dev_rx -> netif_rx
    RttPart("net_out", "L_NET", "wire", "network, data"),                     # A dev_xmit -> B dev_rx
    RttPart("r_nic", "L_NIC", "receiver", "devices in + out"),                # B dev_rx -> netif_rx, C dev_queue -> dev_xmit
    RttPart("r_ip", "L_IP", "receiver", "IP in + IP out"),                    # B netif_rx -> tcp_rx, C ip_out -> dev_queue
    RttPart("r_tcp", "L_TCP", "receiver", "TCP: data in -> ACK out"),         # B tcp_rx -> C ip_out (incl. delayed ACK)
    RttPart("net_back", "L_NET", "wire", "network, ACK"),                     # C dev_xmit -> D dev_rx
)
RTT = Layer("rtt", "sender", "RTT measured by the sender")

# Names of the consecutive-stamp segments of a device path (the hop tables).
SEGMENT_NAMES: Dict[Tuple[str, str], str] = {
    ("app_send", "tcp_xmit"): "socket send queue + TCP",
    ("tcp_xmit", "ip_out"): "TCP -> IP",
    ("ip_out", "dev_queue"): "IP output",
    ("dev_queue", "dev_xmit"): "qdisc + driver",
    ("dev_queue", "qdisc_enq"): "to qdisc",
    ("qdisc_enq", "qdisc_deq"): "qdisc queue",
    ("qdisc_deq", "dev_xmit"): "to driver",
    ("dev_xmit", "dev_rx"): "virtual link",
    ("dev_rx", "netif_rx"): "driver -> MAC",
    ("netif_rx", "dev_queue"): "forwarding",
    ("netif_rx", "netif_rx"): "bridge",
    ("netif_rx", "tcp_rx"): "IP input",
    ("tcp_rx", "app_copy"): "TCP receive queue",
    ("app_copy", "app_recv"): "copy to app",
    ("netif_rx", "dev_rx"): "bridge",
    ("dev_xmit", "dev_queue"): "virtual link",
}

# Per-hop path rows: each device a record crossed, in order. hop_ns runs from entering this device
# to entering the next one (the last: to leaving it), so the hops of a record add up to its device span.
ANALYSIS_TABLES = ("analysis_runs", "analysis_clock", "analysis_counts", "analysis_flows", "analysis_packets",
                   "analysis_hops", "analysis_rtt", "analysis_layers", "analysis_paths", "analysis_metrics")

_FLOW_COLUMNS = """  saddr INT UNSIGNED NOT NULL,
  daddr INT UNSIGNED NOT NULL,
  sport SMALLINT UNSIGNED NOT NULL,
  dport SMALLINT UNSIGNED NOT NULL"""
_STATS_COLUMNS = """  samples BIGINT UNSIGNED NOT NULL,
  min_ns BIGINT NULL,
  p50_ns BIGINT NULL,
  p90_ns BIGINT NULL,
  p99_ns BIGINT NULL,
  max_ns BIGINT NULL,
  mean_ns DOUBLE NULL"""
_LAYER_COLUMNS = ",\n".join(f"  {layer.column}_ns BIGINT NULL" for layer in ONE_WAY_LAYERS + (TOTAL,))
_RTT_COLUMNS = ",\n".join(f"  {part.column}_ns BIGINT NULL" for part in RTT_PARTS)

# Flows are the data direction's 4-tuple (saddr = the data sender) in every table, ACK rows included.
# direction: 'data' (sender -> receiver), 'ack' (the ACKs back), 'rtt' (the decomposition).
DERIVED_DDL: Tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS analysis_runs (
  session_id VARCHAR(64) NOT NULL,
  analysed_at DATETIME(6) NOT NULL,
  version INT UNSIGNED NOT NULL,
  synchronised TINYINT UNSIGNED NOT NULL COMMENT '0: offset 0 assumed, no clock estimate',
  samples BIGINT UNSIGNED NOT NULL,
  excluded BIGINT UNSIGNED NOT NULL,
  data_pairs BIGINT UNSIGNED NOT NULL,
  ack_pairs BIGINT UNSIGNED NOT NULL,
  rtt_samples BIGINT UNSIGNED NOT NULL,
  closure_ok BIGINT UNSIGNED NOT NULL,
  seconds DOUBLE NOT NULL,
  PRIMARY KEY (session_id)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_clock (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  estimates INT UNSIGNED NOT NULL,
  synchronised TINYINT UNSIGNED NOT NULL,
  offset_ns BIGINT NOT NULL COMMENT 'host minus manager, first estimate used',
  skew_ppb BIGINT NOT NULL,
  error_ns BIGINT UNSIGNED NULL COMMENT 'largest error bound of the estimates used; NULL: unknown',
  PRIMARY KEY (session_id, host)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_counts (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
  source VARCHAR(16) NOT NULL COMMENT 'analysis or collector (its last drop counters)',
  name VARCHAR(64) NOT NULL,
  value BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (session_id, host, source, name)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_flows (
  session_id VARCHAR(64) NOT NULL,
{_FLOW_COLUMNS},
  direction VARCHAR(4) NOT NULL,
  sender VARCHAR(128) NULL,
  receiver VARCHAR(128) NULL,
  tx_records BIGINT UNSIGNED NOT NULL,
  rx_records BIGINT UNSIGNED NOT NULL,
  matched BIGINT UNSIGNED NOT NULL,
  unmatched_tx BIGINT UNSIGNED NOT NULL,
  unmatched_rx BIGINT UNSIGNED NOT NULL,
  rtt_samples BIGINT UNSIGNED NOT NULL,
  closure_ok BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (session_id, saddr, daddr, sport, dport, direction)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_packets (
  session_id VARCHAR(64) NOT NULL,
  direction VARCHAR(4) NOT NULL,
  tx_uid BIGINT UNSIGNED NOT NULL,
  rx_uid BIGINT UNSIGNED NOT NULL,
{_FLOW_COLUMNS},
  sample_key INT UNSIGNED NOT NULL,
  sender VARCHAR(128) NOT NULL,
  receiver VARCHAR(128) NOT NULL,
  t_ns BIGINT NOT NULL COMMENT 'first stamp on the sender, manager timebase',
  tx_devices TINYINT UNSIGNED NOT NULL,
  rx_devices TINYINT UNSIGNED NOT NULL,
  tx_flags TINYINT UNSIGNED NOT NULL,
  rx_flags TINYINT UNSIGNED NOT NULL,
{_LAYER_COLUMNS},
  PRIMARY KEY (session_id, direction, tx_uid)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_hops (
  session_id VARCHAR(64) NOT NULL,
  uid BIGINT UNSIGNED NOT NULL COMMENT 'the packet_samples record',
  hop_no TINYINT UNSIGNED NOT NULL,
  direction VARCHAR(4) NOT NULL,
  side VARCHAR(2) NOT NULL COMMENT 'tx or rx',
  host VARCHAR(128) NOT NULL,
{_FLOW_COLUMNS},
  netns BIGINT UNSIGNED NOT NULL,
  ifindex INT UNSIGNED NOT NULL,
  entry_layer SMALLINT UNSIGNED NOT NULL,
  hop_ns BIGINT NOT NULL COMMENT 'entering this device to entering the next (the last: leaving it)',
  dwell_ns BIGINT NOT NULL COMMENT 'first to last stamp at this device',
  PRIMARY KEY (session_id, uid, hop_no)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_rtt (
  session_id VARCHAR(64) NOT NULL,
  tx_uid BIGINT UNSIGNED NOT NULL COMMENT 'the sender data record',
{_FLOW_COLUMNS},
  sample_key INT UNSIGNED NOT NULL,
  sender VARCHAR(128) NOT NULL,
  receiver VARCHAR(128) NOT NULL,
  t_ns BIGINT NOT NULL,
  rtt_ns BIGINT NOT NULL COMMENT 'sender clock: data app_send (else tcp_xmit) -> its ACK at tcp_rx',
  rtt_tcp_ns BIGINT NULL COMMENT 'sender clock: data tcp_xmit -> ACK tcp_rx',
{_RTT_COLUMNS},
  parts_ns BIGINT NOT NULL,
  closure DOUBLE NULL COMMENT 'parts_ns / rtt_ns',
  PRIMARY KEY (session_id, tx_uid)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_layers (
  session_id VARCHAR(64) NOT NULL,
{_FLOW_COLUMNS},
  direction VARCHAR(4) NOT NULL,
  layer VARCHAR(16) NOT NULL,
  ordinal TINYINT UNSIGNED NOT NULL,
  sender VARCHAR(128) NOT NULL,
  receiver VARCHAR(128) NOT NULL,
{_STATS_COLUMNS},
  PRIMARY KEY (session_id, saddr, daddr, sport, dport, direction, layer)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_paths (
  session_id VARCHAR(64) NOT NULL,
{_FLOW_COLUMNS},
  direction VARCHAR(4) NOT NULL,
  side VARCHAR(2) NOT NULL,
  hop_no TINYINT UNSIGNED NOT NULL,
  netns BIGINT UNSIGNED NOT NULL,
  ifindex INT UNSIGNED NOT NULL,
  host VARCHAR(128) NOT NULL,
  entry_layer SMALLINT UNSIGNED NOT NULL,
{_STATS_COLUMNS},
  PRIMARY KEY (session_id, saddr, daddr, sport, dport, direction, side, hop_no, netns, ifindex)
) {TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS analysis_metrics (
  session_id VARCHAR(64) NOT NULL,
  host VARCHAR(128) NOT NULL,
{_FLOW_COLUMNS},
  metric VARCHAR(32) NOT NULL,
  samples BIGINT UNSIGNED NOT NULL,
  min_value BIGINT UNSIGNED NULL,
  max_value BIGINT UNSIGNED NULL,
  mean_value DOUBLE NULL,
  first_value BIGINT UNSIGNED NULL,
  last_value BIGINT UNSIGNED NULL,
  first_ns BIGINT UNSIGNED NULL,
  last_ns BIGINT UNSIGNED NULL,
  PRIMARY KEY (session_id, host, saddr, daddr, sport, dport, metric)
) {TABLE_OPTIONS}""",
)


# --- temporary tables: one per record role, so that no statement reads one twice --------------

# The four record roles: (temporary table, packet_samples.direction, kind). ACK records are stored
# with the data direction's flow (their own flow reversed), so all four of a sample share a key.
ROLES = {"dtx": (0, 0), "drx": (1, 0), "atx": (0, 1), "arx": (1, 1)}

# The columns every pivoted record has: host-clock stamps (NULL when the layer was not crossed).
_PIVOT_STAMPS = (
    ("app_send", f"MIN(CASE WHEN t.layer = {L['app_send']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("tcp_xmit", f"MIN(CASE WHEN t.layer = {L['tcp_xmit']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("ip_out", f"MIN(CASE WHEN t.layer = {L['ip_out']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("dq_first", f"MIN(CASE WHEN t.layer = {L['dev_queue']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("dq_last", f"MAX(CASE WHEN t.layer = {L['dev_queue']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("enq_last", f"MAX(CASE WHEN t.layer = {L['qdisc_enq']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("deq_last", f"MAX(CASE WHEN t.layer = {L['qdisc_deq']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("dx_last", f"MAX(CASE WHEN t.layer = {L['dev_xmit']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("dr_first", f"MIN(CASE WHEN t.layer = {L['dev_rx']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("nr_first", f"MIN(CASE WHEN t.layer = {L['netif_rx']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("nr_last", f"MAX(CASE WHEN t.layer = {L['netif_rx']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("tcp_rx", f"MIN(CASE WHEN t.layer = {L['tcp_rx']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("app_copy", f"MIN(CASE WHEN t.layer = {L['app_copy']} THEN CAST(t.ts_ns AS SIGNED) END)"),
    ("app_recv", f"MIN(CASE WHEN t.layer = {L['app_recv']} THEN CAST(t.ts_ns AS SIGNED) END)"),
)
_TMP_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def _pivot_ddl(role: str) -> str:
    stamps = ",\n".join(f"  {name} BIGINT NULL" for name, _expr in _PIVOT_STAMPS)
    return f"""CREATE TEMPORARY TABLE ls_p_{role} (
  uid BIGINT UNSIGNED NOT NULL,
  host VARCHAR(128) NOT NULL,
  fs INT UNSIGNED NOT NULL,
  fd INT UNSIGNED NOT NULL,
  fsp SMALLINT UNSIGNED NOT NULL,
  fdp SMALLINT UNSIGNED NOT NULL,
  k INT UNSIGNED NOT NULL,
  flags TINYINT UNSIGNED NOT NULL,
  n_stamps TINYINT UNSIGNED NOT NULL,
  got TINYINT UNSIGNED NOT NULL,
  n_dev TINYINT UNSIGNED NOT NULL,
  first_ns BIGINT NOT NULL,
  last_ns BIGINT NOT NULL,
{stamps},
  m_first BIGINT NOT NULL COMMENT 'first_ns on the manager timebase',
  m_last BIGINT NOT NULL COMMENT 'last_ns on the manager timebase',
  m_dx BIGINT NULL COMMENT 'dx_last on the manager timebase',
  m_dr BIGINT NULL COMMENT 'dr_first on the manager timebase',
  err_ns BIGINT NOT NULL,
  PRIMARY KEY (uid),
  KEY ls_p_{role}_match (fs, fd, fsp, fdp, k)
) {_TMP_OPTIONS}"""


def _match_ddl(name: str) -> str:
    return f"""CREATE TEMPORARY TABLE {name} (
  a_uid BIGINT UNSIGNED NOT NULL,
  b_uid BIGINT UNSIGNED NOT NULL,
  fs INT UNSIGNED NOT NULL,
  fd INT UNSIGNED NOT NULL,
  fsp SMALLINT UNSIGNED NOT NULL,
  fdp SMALLINT UNSIGNED NOT NULL,
  b_at BIGINT NULL,
  PRIMARY KEY (a_uid),
  UNIQUE KEY {name}_b (b_uid)
) {_TMP_OPTIONS}"""


_CLOCK_DDL = f"""CREATE TEMPORARY TABLE ls_clk (
  host VARCHAR(128) NOT NULL,
  lo BIGINT UNSIGNED NOT NULL,
  hi BIGINT UNSIGNED NOT NULL,
  at_ns BIGINT NOT NULL,
  offset_ns BIGINT NOT NULL,
  skew_ppb BIGINT NOT NULL,
  error_ns BIGINT NOT NULL,
  PRIMARY KEY (host, lo)
) {_TMP_OPTIONS}"""

_MULTI_DDL = f"""CREATE TEMPORARY TABLE ls_multi (
  uid BIGINT UNSIGNED NOT NULL,
  direction VARCHAR(4) NOT NULL,
  side VARCHAR(2) NOT NULL,
  host VARCHAR(128) NOT NULL,
  fs INT UNSIGNED NOT NULL,
  fd INT UNSIGNED NOT NULL,
  fsp SMALLINT UNSIGNED NOT NULL,
  fdp SMALLINT UNSIGNED NOT NULL,
  PRIMARY KEY (uid)
) {_TMP_OPTIONS}"""

TEMP_TABLES = tuple(f"ls_p_{role}" for role in ROLES) + (
    "ls_m_data", "ls_m_ack", "ls_m_turn", "ls_m_rtt", "ls_clk", "ls_multi")


def temp_ddl() -> List[str]:
    """The temporary tables of one run, in creation order."""
    return ([_CLOCK_DDL] + [_pivot_ddl(role) for role in ROLES]
            + [_match_ddl(name) for name in ("ls_m_data", "ls_m_ack", "ls_m_turn", "ls_m_rtt")]
            + [_MULTI_DDL])


# --- the statements ---------------------------------------------------------------------------

def _pivot_sql(role: str, synchronised: bool) -> str:
    """Stamps of every usable record of one role as one row (conditional aggregation, one pass), with
    the four stamps that are compared across hosts converted to the manager's timebase.

    The conversion is ``clock.to_manager_time_sql``: ``clock.to_manager_time`` written in SQL, the
    same formula to the nanosecond, with the estimate ``clock.estimate_for`` would pick for the
    record's first stamp (``ls_clk``: the host's synchronised estimate nearest in host time). Without
    any estimate in the session the stamps are taken as they are (offset 0, flagged unsynchronised).
    """
    direction, kind = ROLES[role]
    flow = ("s.saddr", "s.daddr", "s.sport", "s.dport") if kind == 0 else ("s.daddr", "s.saddr", "s.dport", "s.sport")
    stamps = ",\n    ".join(f"{expr} AS {name}" for name, expr in _PIVOT_STAMPS)
    names = ", ".join(name for name, _expr in _PIVOT_STAMPS)
    if synchronised:
        clock_join = "JOIN ls_clk c ON c.host = p.host AND p.first_ns >= c.lo AND p.first_ns < c.hi"
        converted = ", ".join(to_manager_time_sql(f"p.{column}", "c.at_ns", "c.offset_ns", "c.skew_ppb")
                              for column in ("first_ns", "last_ns", "dx_last", "dr_first"))
        error = "c.error_ns"
    else:
        clock_join, converted, error = "", "p.first_ns, p.last_ns, p.dx_last, p.dr_first", "0"
    return f"""INSERT INTO ls_p_{role} (uid, host, fs, fd, fsp, fdp, k, flags, n_stamps, got, n_dev, first_ns, last_ns,
  {names}, m_first, m_last, m_dx, m_dr, err_ns)
SELECT p.uid, p.host, p.fs, p.fd, p.fsp, p.fdp, p.k, p.flags, p.n_stamps, p.got, p.n_dev, p.first_ns, p.last_ns,
  {", ".join(f"p.{name}" for name, _expr in _PIVOT_STAMPS)},
  {converted}, {error}
FROM (
  SELECT s.uid, MIN(s.host) AS host, MIN({flow[0]}) AS fs, MIN({flow[1]}) AS fd, MIN({flow[2]}) AS fsp,
    MIN({flow[3]}) AS fdp, MIN(s.sample_key) AS k, MIN(s.flags) AS flags, MIN(s.n_stamps) AS n_stamps, COUNT(*) AS got,
    SUM(CASE WHEN t.layer IN ({L['dev_queue']}, {L['dev_rx']}) THEN 1 ELSE 0 END) AS n_dev,
    MIN(CAST(t.ts_ns AS SIGNED)) AS first_ns, MAX(CAST(t.ts_ns AS SIGNED)) AS last_ns,
    {stamps}
  FROM packet_samples s
  JOIN packet_stamps t ON t.sample_uid = s.uid
  WHERE s.session_id = %(session)s AND s.direction = {direction} AND s.kind = {kind} AND s.in_order = 1
    AND (s.flags & {FLAG_TRUNCATED}) = 0
  GROUP BY s.uid
) p
{clock_join}"""


def _match_sql(target: str, left: str, right: str, gap: str, minimum: str, at: str = "NULL",
               same_host: bool = False, right_needs: str = "") -> str:
    """Mutually nearest pairs: each left record with the right record of its sample closest after it.

    Candidates share (flow, sample key) and have ``gap`` (right's time minus left's) of at least
    ``minimum``; a pair is kept when each is the other's smallest gap. Keys repeat when the 32-bit
    sequence wraps and on retransmissions: the nearest-in-time rule picks the right one, the rest
    stay unmatched (and are counted).
    """
    host = "AND b.host = a.host" if same_host else ""
    needs = f"AND {right_needs}" if right_needs else ""
    return f"""INSERT INTO {target} (a_uid, b_uid, fs, fd, fsp, fdp, b_at)
SELECT r.a_uid, r.b_uid, r.fs, r.fd, r.fsp, r.fdp, r.b_at FROM (
  SELECT c.a_uid, c.b_uid, c.fs, c.fd, c.fsp, c.fdp, c.b_at,
    ROW_NUMBER() OVER (PARTITION BY c.a_uid ORDER BY c.gap, c.b_uid) AS ra,
    ROW_NUMBER() OVER (PARTITION BY c.b_uid ORDER BY c.gap, c.a_uid) AS rb
  FROM (
    SELECT a.uid AS a_uid, b.uid AS b_uid, a.fs, a.fd, a.fsp, a.fdp, {at} AS b_at, {gap} AS gap
    FROM {left} a
    JOIN {right} b ON b.fs = a.fs AND b.fd = a.fd AND b.fsp = a.fsp AND b.fdp = a.fdp AND b.k = a.k {host}
    WHERE {gap} >= {minimum} {needs}
  ) c
) r
WHERE r.ra = 1 AND r.rb = 1"""


def _match_statements() -> List[str]:
    cross = "(b.m_first - a.m_last)"
    return [
        # data: the sender's TX record, the receiver's RX record closest after it (manager timebase)
        _match_sql("ls_m_data", "ls_p_dtx", "ls_p_drx", cross, "-(a.err_ns + b.err_ns)"),
        # ACKs: the receiver's TX record, the sender's RX record closest after it
        _match_sql("ls_m_ack", "ls_p_atx", "ls_p_arx", cross, "-(a.err_ns + b.err_ns)"),
        # the receiver answers: its data RX record, its ACK TX record closest after data reached TCP
        _match_sql("ls_m_turn", "ls_p_drx", "ls_p_atx", "(b.first_ns - a.tcp_rx)", "0", same_host=True,
                   right_needs="a.tcp_rx IS NOT NULL"),
        # the sender's own RTT: its data TX record, its ACK RX record closest after (one clock)
        _match_sql("ls_m_rtt", "ls_p_dtx", "ls_p_arx", "(b.tcp_rx - a.last_ns)", "0", at="b.tcp_rx",
                   same_host=True, right_needs="b.tcp_rx IS NOT NULL"),
    ]


def _d(expr_a: str, expr_b: str) -> str:
    """b - a, NULL when either is missing."""
    return f"({expr_b} - {expr_a})"


def _one_way_exprs(a: str = "a", b: str = "b") -> Dict[str, str]:
    """The one-way layers of a (TX record ``a``, RX record ``b``) pair, in ns."""
    qdisc = (f"(CASE WHEN {a}.enq_last >= {a}.dq_last AND {a}.deq_last >= {a}.enq_last "
             f"THEN {a}.deq_last - {a}.enq_last ELSE 0 END)")
    return {
        "tx_app": _d(f"{a}.app_send", f"{a}.tcp_xmit"),
        "tx_tcp": _d(f"{a}.tcp_xmit", f"{a}.ip_out"),
        "tx_ip": _d(f"{a}.ip_out", f"{a}.dq_first"),
        "tx_virt": _d(f"{a}.dq_first", f"{a}.dq_last"),
        "tx_qdisc": f"(CASE WHEN {a}.dq_last IS NULL THEN NULL ELSE {qdisc} END)",
        "tx_driver": f"({a}.dx_last - {a}.dq_last - {qdisc})",
        "net": f"({b}.m_dr - {a}.m_dx)",
        "rx_nic": _d(f"{b}.dr_first", f"{b}.nr_first"),
        "rx_virt": _d(f"{b}.nr_first", f"{b}.nr_last"),
        "rx_ip": _d(f"{b}.nr_last", f"{b}.tcp_rx"),
        "rx_tcp": _d(f"{b}.tcp_rx", f"{b}.app_copy"),
        "rx_app": _d(f"{b}.app_copy", f"{b}.app_recv"),
        "total": f"({b}.m_last - {a}.m_first)",
    }


def _packets_sql(direction: str) -> str:
    match, tx, rx = ("ls_m_data", "ls_p_dtx", "ls_p_drx") if direction == "data" else ("ls_m_ack", "ls_p_atx", "ls_p_arx")
    exprs = _one_way_exprs()
    columns = ", ".join(f"{layer.column}_ns" for layer in ONE_WAY_LAYERS + (TOTAL,))
    values = ",\n  ".join(exprs[layer.column] for layer in ONE_WAY_LAYERS + (TOTAL,))
    return f"""INSERT INTO analysis_packets (session_id, direction, tx_uid, rx_uid, saddr, daddr, sport, dport, sample_key,
  sender, receiver, t_ns, tx_devices, rx_devices, tx_flags, rx_flags, {columns})
SELECT %(session)s, '{direction}', a.uid, b.uid, a.fs, a.fd, a.fsp, a.fdp, a.k, a.host, b.host, a.m_first,
  a.n_dev, b.n_dev, a.flags, b.flags,
  {values}
FROM {match} m
JOIN {tx} a ON a.uid = m.a_uid
JOIN {rx} b ON b.uid = m.b_uid"""


def _rtt_exprs() -> Dict[str, str]:
    """The RTT parts from A (ls_p_dtx), B (ls_p_drx), C (ls_p_atx), D (ls_p_arx)."""
    return {
        "s_app": "(a.tcp_xmit - a.app_send)",
        "s_tcp": "(a.ip_out - a.tcp_xmit)",
        "s_ip": "((a.dq_first - a.ip_out) + (d.tcp_rx - d.nr_last))",
        "s_nic": "((a.dx_last - a.dq_first) + (d.nr_last - d.dr_first))",
        "net_out": "(b.m_dr - a.m_dx)",
        "r_nic": "((b.nr_last - b.dr_first) + (c.dx_last - c.dq_first))",
        "r_ip": "((b.tcp_rx - b.nr_last) + (c.dq_first - c.ip_out))",
        "r_tcp": "(c.ip_out - b.tcp_rx)",
        "net_back": "(d.m_dr - c.m_dx)",
    }


def _rtt_sql() -> str:
    exprs = _rtt_exprs()
    parts = " + ".join(f"COALESCE({exprs[p.column]}, 0)" for p in RTT_PARTS)
    columns = ", ".join(f"{p.column}_ns" for p in RTT_PARTS)
    return f"""INSERT INTO analysis_rtt (session_id, tx_uid, saddr, daddr, sport, dport, sample_key, sender, receiver, t_ns,
  rtt_ns, rtt_tcp_ns, {columns}, parts_ns, closure)
SELECT %(session)s, x.tx_uid, x.fs, x.fd, x.fsp, x.fdp, x.k, x.sender, x.receiver, x.t_ns, x.rtt_ns, x.rtt_tcp_ns,
  {", ".join(f"x.{p.column}" for p in RTT_PARTS)}, x.parts_ns,
  CASE WHEN x.rtt_ns > 0 THEN x.parts_ns / x.rtt_ns END
FROM (
  SELECT a.uid AS tx_uid, a.fs, a.fd, a.fsp, a.fdp, a.k, a.host AS sender, b.host AS receiver,
    a.m_first AS t_ns,
    r.b_at - COALESCE(a.app_send, a.tcp_xmit) AS rtt_ns, r.b_at - a.tcp_xmit AS rtt_tcp_ns,
    {", ".join(f"{exprs[p.column]} AS {p.column}" for p in RTT_PARTS)},
    {parts} AS parts_ns
  FROM ls_m_data md
  JOIN ls_p_dtx a ON a.uid = md.a_uid
  JOIN ls_p_drx b ON b.uid = md.b_uid
  JOIN ls_m_turn mt ON mt.a_uid = b.uid
  JOIN ls_p_atx c ON c.uid = mt.b_uid
  JOIN ls_m_ack ma ON ma.a_uid = c.uid
  JOIN ls_p_arx d ON d.uid = ma.b_uid
  JOIN ls_m_rtt r ON r.a_uid = a.uid
) x
WHERE x.rtt_ns IS NOT NULL"""


def _multi_sql(direction: str, side: str) -> str:
    """Records of matched pairs that crossed more than one device: their hops get rows."""
    match, role = {("data", "tx"): ("ls_m_data", "dtx"), ("data", "rx"): ("ls_m_data", "drx"),
                   ("ack", "tx"): ("ls_m_ack", "atx"), ("ack", "rx"): ("ls_m_ack", "arx")}[(direction, side)]
    column = "a_uid" if side == "tx" else "b_uid"
    return f"""INSERT INTO ls_multi (uid, direction, side, host, fs, fd, fsp, fdp)
SELECT p.uid, '{direction}', '{side}', p.host, p.fs, p.fd, p.fsp, p.fdp
FROM {match} m JOIN ls_p_{role} p ON p.uid = m.{column}
WHERE p.n_dev > 1"""


_HOPS_SQL = f"""INSERT INTO analysis_hops (session_id, uid, hop_no, direction, side, host, saddr, daddr, sport, dport, netns,
  ifindex, entry_layer, hop_ns, dwell_ns)
SELECT %(session)s, h.uid, h.hop_no, h.direction, h.side, h.host, h.fs, h.fd, h.fsp, h.fdp, h.netns, h.ifindex,
  h.entry_layer, COALESCE(h.next_enter - h.t_enter, h.t_leave - h.t_enter), h.t_leave - h.t_enter
FROM (
  SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.uid ORDER BY d.first_idx) AS hop_no,
    LEAD(d.t_enter) OVER (PARTITION BY d.uid ORDER BY d.first_idx) AS next_enter
  FROM (
    SELECT u.uid, MIN(u.direction) AS direction, MIN(u.side) AS side, MIN(u.host) AS host, MIN(u.fs) AS fs,
      MIN(u.fd) AS fd, MIN(u.fsp) AS fsp, MIN(u.fdp) AS fdp, t.netns, t.ifindex, MIN(t.idx) AS first_idx,
      MIN(t.layer) AS entry_layer, MIN(CAST(t.ts_ns AS SIGNED)) AS t_enter, MAX(CAST(t.ts_ns AS SIGNED)) AS t_leave
    FROM ls_multi u
    JOIN packet_stamps t ON t.sample_uid = u.uid
    WHERE t.layer IN ({", ".join(str(i) for i in DEVICE_LAYER_IDS)})
    GROUP BY u.uid, t.netns, t.ifindex
  ) d
) h"""


def _layers_sql(source: str, columns: Sequence[str], direction: Optional[str]) -> str:
    """analysis_layers rows of ``source``: per (flow, direction) and each of ``columns`` (``<column>_ns``), the
    count, min, nearest-rank p50/p90/p99, max and mean of its non-NULL values.

    The columns are unpivoted first (one narrow row per value, UNION ALL), so one sort ranks every
    column's values at once: a window per column over the wide rows would sort the whole wide row once
    per column (about twice as slow at 1M samples). The p-th percentile is the value at rank ceil(p * n)
    (``nearest_rank``). Every (flow, direction) gets a row per column, with n = 0 where it has no value.
    """
    group = "saddr, daddr, sport, dport" + (", direction" if direction is None else "")
    direction_expr = "direction" if direction is None else f"'{direction}'"
    values = " UNION ALL ".join(
        f"SELECT saddr, daddr, sport, dport, {direction_expr} AS direction, {ordinal} AS ordinal, {column}_ns AS v "
        f"FROM {source} WHERE session_id = %(session)s AND {column}_ns IS NOT NULL"
        for ordinal, column in enumerate(columns, start=1))
    names = " UNION ALL ".join(f"SELECT '{column}' AS layer, {ordinal} AS ordinal"
                               for ordinal, column in enumerate(columns, start=1))
    picks = ", ".join(f"MAX(CASE WHEN w.rn = (w.cnt * {q} + 999) DIV 1000 THEN w.v END) AS p{q}" for q in PERCENTILES)
    keys = "w.saddr, w.daddr, w.sport, w.dport, w.direction, w.ordinal"
    return f"""INSERT INTO analysis_layers (session_id, saddr, daddr, sport, dport, direction, layer, ordinal, sender, receiver,
  samples, min_ns, p50_ns, p90_ns, p99_ns, max_ns, mean_ns)
SELECT %(session)s, g.saddr, g.daddr, g.sport, g.dport, g.direction, l.layer, l.ordinal, g.sender, g.receiver,
  COALESCE(s.n, 0), s.mn, {", ".join(f"s.p{q}" for q in PERCENTILES)}, s.mx, s.mean
FROM (
  SELECT saddr, daddr, sport, dport, {direction_expr} AS direction, MIN(sender) AS sender, MIN(receiver) AS receiver
  FROM {source} WHERE session_id = %(session)s
  GROUP BY {group}
) g
CROSS JOIN ({names}) l
LEFT JOIN (
  SELECT {keys}, COUNT(*) AS n, MIN(w.v) AS mn, {picks}, MAX(w.v) AS mx, AVG(w.v) AS mean
  FROM (
    SELECT v.saddr, v.daddr, v.sport, v.dport, v.direction, v.ordinal, v.v,
      ROW_NUMBER() OVER (PARTITION BY v.saddr, v.daddr, v.sport, v.dport, v.direction, v.ordinal ORDER BY v.v) AS rn,
      COUNT(*) OVER (PARTITION BY v.saddr, v.daddr, v.sport, v.dport, v.direction, v.ordinal) AS cnt
    FROM ({values}) v
  ) w
  GROUP BY {keys}
) s ON s.saddr = g.saddr AND s.daddr = g.daddr AND s.sport = g.sport AND s.dport = g.dport
  AND s.direction = g.direction AND s.ordinal = l.ordinal"""


_PATHS_SQL = f"""INSERT INTO analysis_paths (session_id, saddr, daddr, sport, dport, direction, side, hop_no, netns, ifindex,
  host, entry_layer, samples, min_ns, p50_ns, p90_ns, p99_ns, max_ns, mean_ns)
SELECT %(session)s, w.saddr, w.daddr, w.sport, w.dport, w.direction, w.side, w.hop_no, w.netns, w.ifindex,
  MIN(w.host), MIN(w.entry_layer), COUNT(*), MIN(w.hop_ns),
  {", ".join(f"MAX(CASE WHEN w.rn = (w.cnt * {q} + 999) DIV 1000 THEN w.hop_ns END)" for q in PERCENTILES)},
  MAX(w.hop_ns), AVG(w.hop_ns)
FROM (
  SELECT h.saddr, h.daddr, h.sport, h.dport, h.direction, h.side, h.hop_no, h.netns, h.ifindex, h.host,
    h.entry_layer, h.hop_ns,
    ROW_NUMBER() OVER (PARTITION BY h.saddr, h.daddr, h.sport, h.dport, h.direction, h.side, h.hop_no, h.netns,
                       h.ifindex ORDER BY h.hop_ns) AS rn,
    COUNT(*) OVER (PARTITION BY h.saddr, h.daddr, h.sport, h.dport, h.direction, h.side, h.hop_no, h.netns,
                   h.ifindex) AS cnt
  FROM analysis_hops h
  WHERE h.session_id = %(session)s
) w
GROUP BY w.saddr, w.daddr, w.sport, w.dport, w.direction, w.side, w.hop_no, w.netns, w.ifindex"""


def _flows_sql() -> str:
    """Per flow and direction: records on each side, matched, unmatched, RTT samples and closure."""
    def side(table: str, direction: str, tx: bool) -> str:
        return (f"SELECT fs, fd, fsp, fdp, '{direction}' AS direction, "
                f"{'MIN(host)' if tx else 'NULL'} AS sender, {'NULL' if tx else 'MIN(host)'} AS receiver, "
                f"{'COUNT(*)' if tx else '0'} AS tx_records, {'0' if tx else 'COUNT(*)'} AS rx_records, 0 AS matched, "
                f"0 AS rtt_samples, 0 AS closure_ok FROM {table} GROUP BY fs, fd, fsp, fdp")

    def matched(table: str, direction: str) -> str:
        return (f"SELECT fs, fd, fsp, fdp, '{direction}', NULL, NULL, 0, 0, COUNT(*), 0, 0 FROM {table} "
                "GROUP BY fs, fd, fsp, fdp")
    rtt = ("SELECT saddr, daddr, sport, dport, 'data', NULL, NULL, 0, 0, 0, COUNT(*), "
           f"SUM(CASE WHEN ABS(closure - 1) <= {CLOSURE_TOLERANCE} THEN 1 ELSE 0 END) "
           "FROM analysis_rtt WHERE session_id = %(session)s GROUP BY saddr, daddr, sport, dport")
    union = " UNION ALL ".join([side("ls_p_dtx", "data", True), side("ls_p_drx", "data", False),
                                side("ls_p_atx", "ack", True), side("ls_p_arx", "ack", False),
                                matched("ls_m_data", "data"), matched("ls_m_ack", "ack"), rtt])
    return f"""INSERT INTO analysis_flows (session_id, saddr, daddr, sport, dport, direction, sender, receiver, tx_records,
  rx_records, matched, unmatched_tx, unmatched_rx, rtt_samples, closure_ok)
SELECT %(session)s, u.fs, u.fd, u.fsp, u.fdp, u.direction, MAX(u.sender), MAX(u.receiver), SUM(u.tx_records),
  SUM(u.rx_records), SUM(u.matched), SUM(u.tx_records) - SUM(u.matched), SUM(u.rx_records) - SUM(u.matched),
  SUM(u.rtt_samples), SUM(u.closure_ok)
FROM ({union}) u
GROUP BY u.fs, u.fd, u.fsp, u.fdp, u.direction"""


_COUNTS_SQL = f"""INSERT INTO analysis_counts (session_id, host, source, name, value)
SELECT %(session)s, c.host, 'analysis', c.name, c.value FROM (
  SELECT host, 'samples' AS name, COUNT(*) AS value FROM packet_samples WHERE session_id = %(session)s GROUP BY host
  UNION ALL
  SELECT host, 'out_of_order_excluded', SUM(CASE WHEN in_order = 0 THEN 1 ELSE 0 END)
    FROM packet_samples WHERE session_id = %(session)s GROUP BY host
  UNION ALL
  SELECT host, 'truncated_excluded', SUM(CASE WHEN in_order = 1 AND (flags & {FLAG_TRUNCATED}) <> 0 THEN 1 ELSE 0 END)
    FROM packet_samples WHERE session_id = %(session)s GROUP BY host
  UNION ALL
  SELECT host, 'repeat_flagged', SUM(CASE WHEN (flags & {FLAG_REPEAT}) <> 0 THEN 1 ELSE 0 END)
    FROM packet_samples WHERE session_id = %(session)s GROUP BY host
) c
UNION ALL
SELECT %(session)s, d.host, 'collector', d.name, d.value
FROM drop_counters d
JOIN (SELECT host, name, MAX(at_ns) AS at_ns FROM drop_counters WHERE session_id = %(session)s GROUP BY host, name) l
  ON l.host = d.host AND l.name = d.name AND l.at_ns = d.at_ns
WHERE d.session_id = %(session)s"""


def _metrics_sql() -> str:
    """Per host, flow and metric: samples, min, max, mean, first and last value over the session."""
    # One pass per metric over the session's rows; first/last come from the rows at the extreme times
    # where the metric was measured (not NULL).
    selects = []
    for metric in FLOW_METRICS:
        selects.append(
            f"SELECT m.host, m.saddr, m.daddr, m.sport, m.dport, '{metric}' AS metric, COUNT(m.{metric}) AS samples, "
            f"MIN(m.{metric}) AS min_value, MAX(m.{metric}) AS max_value, AVG(m.{metric}) AS mean_value, "
            f"MIN(CASE WHEN m.{metric} IS NOT NULL THEN m.at_ns END) AS first_ns, "
            f"MAX(CASE WHEN m.{metric} IS NOT NULL THEN m.at_ns END) AS last_ns "
            "FROM flow_metrics m WHERE m.session_id = %(session)s "
            "GROUP BY m.host, m.saddr, m.daddr, m.sport, m.dport")
    union = " UNION ALL ".join(selects)
    firsts = " ".join(f"WHEN '{metric}' THEN f.{metric}" for metric in FLOW_METRICS)
    lasts = " ".join(f"WHEN '{metric}' THEN g.{metric}" for metric in FLOW_METRICS)
    return f"""INSERT INTO analysis_metrics (session_id, host, saddr, daddr, sport, dport, metric, samples, min_value, max_value,
  mean_value, first_value, last_value, first_ns, last_ns)
SELECT %(session)s, s.host, s.saddr, s.daddr, s.sport, s.dport, s.metric, s.samples, s.min_value, s.max_value,
  s.mean_value, CASE s.metric {firsts} END, CASE s.metric {lasts} END, s.first_ns, s.last_ns
FROM ({union}) s
LEFT JOIN flow_metrics f ON f.session_id = %(session)s AND f.host = s.host AND f.saddr = s.saddr
  AND f.daddr = s.daddr AND f.sport = s.sport AND f.dport = s.dport AND f.at_ns = s.first_ns
LEFT JOIN flow_metrics g ON g.session_id = %(session)s AND g.host = s.host AND g.saddr = s.saddr
  AND g.daddr = s.daddr AND g.sport = s.sport AND g.dport = s.dport AND g.at_ns = s.last_ns
WHERE s.samples > 0"""


# Which estimate converts a record: the one ``clock.estimate_for`` picks for the record's first stamp,
# the host's synchronised estimate nearest in host time (at_ns + offset_ns; the earlier one on a tie).
# Each estimate covers the host times [lo, hi) between the midpoints to its neighbours.
_HOST_AT = "(CAST(e.at_ns AS DECIMAL(21,0)) + e.offset_ns)"
_CLOCK_SQL = f"""INSERT INTO ls_clk (host, lo, hi, at_ns, offset_ns, skew_ppb, error_ns)
SELECT w.host,
  COALESCE(GREATEST(FLOOR((w.prev_h + w.h) / 2) + 1, 0), 0),
  COALESCE(GREATEST(FLOOR((w.h + w.next_h) / 2) + 1, 0), 18446744073709551615),
  w.at_ns, w.offset_ns, w.skew_ppb, w.error_ns
FROM (
  SELECT e.host, e.at_ns, e.offset_ns, e.skew_ppb, e.error_ns, {_HOST_AT} AS h,
    LAG({_HOST_AT}) OVER (PARTITION BY e.host ORDER BY e.at_ns) AS prev_h,
    LEAD({_HOST_AT}) OVER (PARTITION BY e.host ORDER BY e.at_ns) AS next_h
  FROM clock_estimates e
  WHERE e.session_id = %(session)s AND e.synchronised = 1
) w"""

_CLOCK_SUMMARY_SQL = """INSERT INTO analysis_clock (session_id, host, estimates, synchronised, offset_ns, skew_ppb, error_ns)
SELECT %(session)s, c.host, COUNT(*), 1, MAX(CASE WHEN c.lo = 0 THEN c.offset_ns END),
  MAX(CASE WHEN c.lo = 0 THEN c.skew_ppb END), MAX(c.error_ns)
FROM ls_clk c
GROUP BY c.host"""


def packet_columns() -> List[str]:
    """The one-way layers of ``analysis_packets`` (``<column>_ns``), in path order, then the total."""
    return [layer.column for layer in ONE_WAY_LAYERS + (TOTAL,)]


def rtt_columns() -> List[str]:
    """The parts of ``analysis_rtt`` (``<column>_ns``), in path order, then the RTT."""
    return [part.column for part in RTT_PARTS] + [RTT.column]


def write_statements() -> List[Tuple[str, str]]:
    """(step, SQL) of the write transaction, in order; each reads the session from ``%(session)s``."""
    steps = [(f"delete {table}", f"DELETE FROM {table} WHERE session_id = %(session)s") for table in ANALYSIS_TABLES]
    steps += [("packets data", _packets_sql("data")), ("packets ack", _packets_sql("ack")), ("rtt", _rtt_sql())]
    steps += [(f"multi {d} {s}", _multi_sql(d, s)) for d in DIRECTIONS for s in ("tx", "rx")]
    steps += [("hops", _HOPS_SQL),
              ("layers one-way", _layers_sql("analysis_packets", packet_columns(), None)),
              ("layers rtt", _layers_sql("analysis_rtt", rtt_columns(), "rtt")),
              ("paths", _PATHS_SQL), ("flows", _flows_sql()), ("counts", _COUNTS_SQL), ("metrics", _metrics_sql())]
    return steps


def prepare_statements(synchronised: bool) -> List[Tuple[str, str]]:
    """(step, SQL) that fill the temporary tables (read the raw tables, write nothing stored)."""
    steps = [("clock", _CLOCK_SQL)] if synchronised else []
    steps += [(f"pivot {role}", _pivot_sql(role, synchronised)) for role in ROLES]
    steps += [(f"match {name}", sql) for name, sql in zip(("data", "ack", "turn", "rtt"), _match_statements())]
    return steps


def all_statements() -> List[str]:
    """Every statement the analysis may run (for the portability check)."""
    return (list(DERIVED_DDL) + temp_ddl() + [sql for _step, sql in prepare_statements(True)]
            + [sql for _step, sql in prepare_statements(False)] + [sql for _step, sql in write_statements()]
            + [_CLOCK_SUMMARY_SQL] + list(_INSPECT.values()))


def temp_table_reuse(sql: str) -> List[str]:
    """Temporary tables ``sql`` reads more than once (MySQL 8 cannot: ER_CANT_REOPEN_TABLE)."""
    return [name for name in TEMP_TABLES if len(re.findall(rf"\b{name}\b", sql)) > 1]


# --- pure references of the SQL maths (tests, reports) -----------------------------------------

def nearest_rank(values: Iterable[int], per_mille: int) -> Optional[int]:
    """The nearest-rank percentile the SQL computes: the value at rank ceil(p * n) of the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, (len(ordered) * per_mille + 999) // 1000)
    return ordered[rank - 1]


# --- checking what was shipped ------------------------------------------------------------------

_INSPECT = {
    "session": "SELECT COUNT(*) FROM sessions WHERE id = %(session)s",
    "samples": f"""SELECT host, direction, kind, COUNT(*), SUM(CASE WHEN in_order = 0 THEN 1 ELSE 0 END),
  SUM(CASE WHEN in_order = 1 AND (flags & {FLAG_TRUNCATED}) <> 0 THEN 1 ELSE 0 END)
FROM packet_samples WHERE session_id = %(session)s GROUP BY host, direction, kind""",
    "clock": """SELECT host, COUNT(*), SUM(CASE WHEN synchronised = 1 THEN 1 ELSE 0 END)
FROM clock_estimates WHERE session_id = %(session)s GROUP BY host""",
    "counters": "SELECT DISTINCT host FROM drop_counters WHERE session_id = %(session)s",
    "known": "SELECT id FROM sessions ORDER BY started_at DESC, id LIMIT 5",
}


def _rows(cursor: Any, sql: str, params: Mapping[str, Any]) -> List[Tuple[Any, ...]]:
    cursor.execute(sql, params)
    return [tuple(row.values()) if isinstance(row, Mapping) else tuple(row) for row in cursor.fetchall()]


def _names(hosts: Iterable[str]) -> str:
    return ", ".join(sorted(hosts))


@dataclass
class Inspection:
    """What a session has in the raw tables, per host and record role; ``problem()`` says what is missing."""

    session: str
    has_session_row: bool
    counts: Dict[Tuple[str, str], Dict[str, int]]          # (host, role) -> total, out_of_order, truncated
    clock: Dict[str, Tuple[int, int]]                     # host -> (estimates, synchronised estimates)
    counter_hosts: List[str]
    known: List[str]

    @property
    def hosts(self) -> List[str]:
        return sorted({host for host, _role in self.counts})

    def usable(self, role: str, host: Optional[str] = None) -> int:
        return sum(c["total"] - c["out_of_order"] - c["truncated"] for (h, r), c in self.counts.items()
                   if r == role and (host is None or h == host))

    def total(self, role: str) -> int:
        return sum(c["total"] for (_h, r), c in self.counts.items() if r == role)

    @property
    def synchronised(self) -> bool:
        return bool(self.clock)

    def problem(self) -> Optional[str]:
        """The first thing that keeps this session from being analysed, or None."""
        if not self.counts:
            if not self.has_session_row:
                known = f" (known: {', '.join(self.known)})" if self.known else " (no session is stored)"
                return f"unknown session: no sessions row and no packet samples{known}"
            return "has no packet samples: no collector shipped any for it"
        if not self.has_session_row:
            return (f"half-shipped: samples from {_names(self.hosts)} but no sessions row "
                    "(the session's start was never stored)")
        if self.counter_hosts:
            missing = set(self.hosts) - set(self.counter_hosts)
            if missing:
                return (f"half-shipped: {_names(missing)} shipped samples but not the final drop counters "
                        "(still measuring, or its spool is not replayed yet)")
        if self.usable("dtx") == 0:
            if self.total("dtx"):
                return f"no sender data: all {self.total('dtx')} TX data records are out of order or truncated"
            return "no sender data: no host shipped a TX data record"
        if self.usable("drx") == 0:
            senders = _names(h for (h, r), c in self.counts.items() if r == "dtx" and c["total"])
            if self.total("drx"):
                return (f"no receiver data: all {self.total('drx')} RX data records are out of order or truncated "
                        f"(sender {senders} has {self.usable('dtx')})")
            return (f"no receiver data: {senders} shipped {self.usable('dtx')} TX data records but no host shipped "
                    "an RX data record (is the receiver observed?)")
        if self.clock:
            missing = [host for host in self.hosts if host not in self.clock]
            if missing:
                have = _names(self.clock)
                return (f"missing clock estimate for {_names(missing)} ({have} {'has' if len(self.clock) == 1 else 'have'} "
                        "estimates): no timebase to convert its stamps with")
            unsynced = [host for host, (_total, good) in self.clock.items() if good == 0]
            if unsynced:
                return (f"missing clock estimate for {_names(unsynced)}: every estimate stored is unsynchronised "
                        "(probes lost): no timebase to convert its stamps with")
        return None


def inspect(cursor: Any, session: str) -> Inspection:
    """Read what the raw tables hold for ``session`` (read only)."""
    params = {"session": session}
    counts: Dict[Tuple[str, str], Dict[str, int]] = {}
    role_of = {value: role for role, value in ROLES.items()}
    for host, direction, kind, total, out_of_order, truncated in _rows(cursor, _INSPECT["samples"], params):
        role = role_of[(int(direction), int(kind))]
        counts[(host, role)] = {"total": int(total), "out_of_order": int(out_of_order), "truncated": int(truncated)}
    return Inspection(
        session=session,
        has_session_row=int(_rows(cursor, _INSPECT["session"], params)[0][0]) > 0,
        counts=counts,
        clock={host: (int(total), int(good)) for host, total, good in _rows(cursor, _INSPECT["clock"], params)},
        counter_hosts=[host for (host,) in _rows(cursor, _INSPECT["counters"], params)],
        known=[name for (name,) in _rows(cursor, _INSPECT["known"], params)])


# --- the run ----------------------------------------------------------------------------------

@dataclass
class Result:
    """What one materialisation did."""

    session: str
    synchronised: bool
    samples: int
    excluded: int
    data_pairs: int
    ack_pairs: int
    rtt_samples: int
    closure_ok: int
    seconds: float
    steps: Dict[str, float] = field(default_factory=dict)

    @property
    def closure_share(self) -> Optional[float]:
        """The share of RTT samples whose parts add up to the RTT within CLOSURE_TOLERANCE (None: no sample)."""
        return self.closure_ok / self.rtt_samples if self.rtt_samples else None

    def summary(self) -> Dict[str, Any]:
        """A JSON-able summary (what the ``latscope_analysis`` module returns)."""
        share = self.closure_share
        return {"session": self.session, "synchronised": self.synchronised, "samples": self.samples,
                "excluded": self.excluded, "data_pairs": self.data_pairs, "ack_pairs": self.ack_pairs,
                "rtt_samples": self.rtt_samples, "closure_ok": self.closure_ok,
                "closure_share": None if share is None else round(share, 4),
                "closure_tolerance": CLOSURE_TOLERANCE, "seconds": round(self.seconds, 3),
                "tables": list(ANALYSIS_TABLES)}


def _lock_name(database: str, session: str) -> str:
    digest = hashlib.sha256(f"{database}\0{session}".encode()).hexdigest()[:32]
    return f"latscope.analysis.{digest}"


def check_session(session: Any) -> str:
    if not isinstance(session, str) or not 0 < len(session) <= 64:
        raise InputError("session", "must be a session id of 1-64 characters", session)
    return session


def _run(cursor: Any, sql: str, params: Mapping[str, Any]) -> None:
    cursor.execute(sql, params)


def _scalar(cursor: Any, sql: str, params: Optional[Mapping[str, Any]] = None) -> Any:
    rows = _rows(cursor, sql, params or {})
    return rows[0][0] if rows else None


def _completeness(cursor: Any, found: Inspection) -> Optional[str]:
    """Half-shipped records: fewer stamp rows than the record says it has, or none at all (then the
    record has no row in the pivot: it is missing from the count of its host)."""
    missing: Dict[str, int] = {}
    for role in ROLES:
        pivoted = {host: (int(rows), int(short or 0)) for host, rows, short in _rows(
            cursor, f"SELECT host, COUNT(*), SUM(CASE WHEN got <> n_stamps THEN 1 ELSE 0 END) FROM ls_p_{role} "
                    "GROUP BY host", {})}
        for host in found.hosts:
            rows, short = pivoted.get(host, (0, 0))
            lost = found.usable(role, host) - rows + short
            if lost:
                missing[host] = missing.get(host, 0) + lost
    if missing:
        detail = ", ".join(f"{host}: {count}" for host, count in sorted(missing.items()))
        return f"half-shipped: samples whose stamps are not all stored ({detail})"
    return None


def materialise(connection: Any, session: str, database: str = "", clock: Any = time.monotonic) -> Result:
    """Analyse ``session``: (re)build its rows of every ``analysis_*`` table in one transaction.

    Raises InputError (naming what is missing) before anything stored changes when the session
    cannot be analysed. Runs under a per-session named lock, so two analyses of one session
    serialise instead of interleaving.
    """
    check_session(session)
    params = {"session": session}
    started = clock()
    steps: Dict[str, float] = {}
    with connection.cursor() as cursor:
        for statement in SESSION_SETTINGS:
            cursor.execute(statement)
        if not database:
            database = str(_scalar(cursor, "SELECT DATABASE()") or "")
        lock = _lock_name(database, session)
        if _scalar(cursor, "SELECT GET_LOCK(%(lock)s, %(timeout)s)", {"lock": lock, "timeout": LOCK_TIMEOUT_S}) != 1:
            raise InputError("session", f"another analysis of it is still running after {LOCK_TIMEOUT_S}s", session)
        try:
            found = inspect(cursor, session)
            problem = found.problem()
            if problem:
                raise InputError("session", problem, session)
            steps["inspect"] = clock() - started
            for statement in DERIVED_DDL:
                cursor.execute(statement)
            for name in TEMP_TABLES:
                cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            for statement in temp_ddl():
                cursor.execute(statement)
            for step, sql in prepare_statements(found.synchronised):
                mark = clock()
                _run(cursor, sql, params)
                steps[step] = clock() - mark
            problem = _completeness(cursor, found)
            if problem:
                raise InputError("session", problem, session)
            mark = clock()
            cursor.execute("START TRANSACTION")
            try:
                for step, sql in write_statements():
                    mark = clock()
                    _run(cursor, sql, params)
                    steps[step] = clock() - mark
                if found.synchronised:
                    _run(cursor, _CLOCK_SUMMARY_SQL, params)
                else:
                    cursor.executemany("INSERT INTO analysis_clock (session_id, host, estimates, synchronised, offset_ns, "
                                       "skew_ppb, error_ns) VALUES (%s, %s, 0, 0, 0, 0, NULL)",
                                       [(session, host) for host in found.hosts])
                result = Result(
                    session=session, synchronised=found.synchronised,
                    samples=sum(c["total"] for c in found.counts.values()),
                    excluded=sum(c["out_of_order"] + c["truncated"] for c in found.counts.values()),
                    data_pairs=int(_scalar(cursor, "SELECT COUNT(*) FROM ls_m_data")),
                    ack_pairs=int(_scalar(cursor, "SELECT COUNT(*) FROM ls_m_ack")),
                    rtt_samples=int(_scalar(cursor, "SELECT COUNT(*) FROM analysis_rtt WHERE session_id = %(session)s",
                                            params)),
                    closure_ok=int(_scalar(cursor, "SELECT COUNT(*) FROM analysis_rtt WHERE session_id = %(session)s "
                                                   f"AND ABS(closure - 1) <= {CLOSURE_TOLERANCE}", params)),
                    seconds=0.0, steps=steps)
                result.seconds = clock() - started
                cursor.execute("INSERT INTO analysis_runs (session_id, analysed_at, version, synchronised, samples, excluded, "
                               "data_pairs, ack_pairs, rtt_samples, closure_ok, seconds) VALUES (%(session)s, "
                               "UTC_TIMESTAMP(6), %(version)s, %(sync)s, %(samples)s, %(excluded)s, %(data)s, %(ack)s, "
                               "%(rtt)s, %(closure)s, %(seconds)s)",
                               {**params, "version": ANALYSIS_VERSION, "sync": int(result.synchronised),
                                "samples": result.samples, "excluded": result.excluded, "data": result.data_pairs,
                                "ack": result.ack_pairs, "rtt": result.rtt_samples, "closure": result.closure_ok,
                                "seconds": result.seconds})
                mark = clock()
                connection.commit()
                steps["commit"] = clock() - mark
            except BaseException:
                connection.rollback()
                raise
        finally:
            for name in TEMP_TABLES:
                cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            cursor.execute("SELECT RELEASE_LOCK(%(lock)s)", {"lock": lock})
            cursor.fetchall()
    result.seconds = clock() - started
    return result
