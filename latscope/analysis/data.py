"""What a report shows, read from the materialised ``analysis_*`` tables of one session (read only).

``load`` gathers the summaries (layers per flow and direction, the RTT decomposition, the
clocks, the counts, the flow metrics); the plots ask for the per-packet values and the metric
time series separately (``layer_values``, ``metric_series``), because only the HTML report needs them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError

FlowKey = Tuple[int, int, int, int]
STAT_NAMES = ("n", "min", "p50", "p90", "p99", "max", "mean")


@dataclass(frozen=True)
class LayerStats:
    layer: str
    ordinal: int
    n: int
    min: Optional[int]
    p50: Optional[int]
    p90: Optional[int]
    p99: Optional[int]
    max: Optional[int]
    mean: Optional[float]


@dataclass
class Direction:
    """One direction of one flow: who sent, who received, and its layers in path order."""

    flow: FlowKey
    direction: str                 # data, ack, rtt
    sender: str
    receiver: str
    layers: List[LayerStats] = field(default_factory=list)
    matched: int = 0
    unmatched_tx: int = 0
    unmatched_rx: int = 0
    rtt_samples: int = 0
    closure_ok: int = 0

    def label(self) -> str:
        saddr, daddr, sport, dport = self.flow
        src, dst = f"{ipaddress.IPv4Address(saddr)}:{sport}", f"{ipaddress.IPv4Address(daddr)}:{dport}"
        return f"{src} -> {dst}" if self.direction != "ack" else f"{dst} -> {src}"


@dataclass(frozen=True)
class HostClock:
    host: str
    synchronised: bool
    estimates: int
    offset_ns: int
    error_ns: Optional[int]


@dataclass
class Report:
    session: str
    analysed_at: str
    synchronised: bool
    samples: int
    excluded: int
    rtt_samples: int
    closure_ok: int
    directions: List[Direction]
    clocks: List[HostClock]
    counts: Dict[str, Dict[str, int]]          # host -> "analysis:name" / "collector:name" -> value
    metrics: List[Dict[str, Any]]


def _rows(connection: Any, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in rows]


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def load(connection: Any, session: str) -> Report:
    """The stored analysis of ``session``; InputError if it was never analysed."""
    analysis_sql.check_session(session)
    try:
        runs = _rows(connection, "SELECT analysed_at, synchronised, samples, excluded, rtt_samples, closure_ok "
                                 "FROM analysis_runs WHERE session_id = %s", (session,))
    except Exception as exc:  # noqa: BLE001 - the table does not exist before the first analysis
        if "analysis_runs" not in str(exc):
            raise
        runs = []
    if not runs:
        raise InputError("session", "has no stored analysis: run `latscope analyse --session "
                         f"{session}` first (or the analysis role)", session)
    analysed_at, synchronised, samples, excluded, rtt_samples, closure_ok = runs[0]
    directions: Dict[Tuple[FlowKey, str], Direction] = {}
    for (saddr, daddr, sport, dport, direction, layer, ordinal, sender, receiver, *stats) in _rows(
            connection, "SELECT saddr, daddr, sport, dport, direction, layer, ordinal, sender, receiver, samples, "
                        "min_ns, p50_ns, p90_ns, p99_ns, max_ns, mean_ns FROM analysis_layers WHERE session_id = %s "
                        "ORDER BY saddr, daddr, sport, dport, direction, ordinal", (session,)):
        key = ((int(saddr), int(daddr), int(sport), int(dport)), direction)
        entry = directions.setdefault(key, Direction(key[0], direction, sender, receiver))
        n, low, p50, p90, p99, high, mean = stats
        entry.layers.append(LayerStats(layer, int(ordinal), int(n), _int(low), _int(p50), _int(p90), _int(p99),
                                       _int(high), None if mean is None else float(mean)))
    for (saddr, daddr, sport, dport, direction, matched, unmatched_tx, unmatched_rx, rtt, closed) in _rows(
            connection, "SELECT saddr, daddr, sport, dport, direction, matched, unmatched_tx, unmatched_rx, rtt_samples, "
                        "closure_ok FROM analysis_flows WHERE session_id = %s", (session,)):
        flow = (int(saddr), int(daddr), int(sport), int(dport))
        for name in ((direction, "rtt") if direction == "data" else (direction,)):
            entry = directions.get((flow, name))
            if entry is None:
                continue
            entry.matched, entry.unmatched_tx, entry.unmatched_rx = int(matched), int(unmatched_tx), int(unmatched_rx)
            entry.rtt_samples, entry.closure_ok = int(rtt), int(closed)
    clocks = [HostClock(host, bool(sync), int(estimates), int(offset), _int(error)) for host, estimates, sync, offset, error
              in _rows(connection, "SELECT host, estimates, synchronised, offset_ns, error_ns FROM analysis_clock "
                                   "WHERE session_id = %s ORDER BY host", (session,))]
    counts: Dict[str, Dict[str, int]] = {}
    for host, source, name, value in _rows(connection, "SELECT host, source, name, value FROM analysis_counts "
                                                       "WHERE session_id = %s ORDER BY host, source, name", (session,)):
        counts.setdefault(host, {})[f"{source}:{name}"] = int(value)
    metrics = [dict(zip(("host", "saddr", "daddr", "sport", "dport", "metric", "samples", "min", "max", "mean",
                         "first", "last"), row))
               for row in _rows(connection, "SELECT host, saddr, daddr, sport, dport, metric, samples, min_value, "
                                            "max_value, mean_value, first_value, last_value FROM analysis_metrics "
                                            "WHERE session_id = %s ORDER BY host, saddr, daddr, sport, dport, metric",
                                (session,))]
    order = {"data": 0, "ack": 1, "rtt": 2}
    ordered = sorted(directions.values(), key=lambda d: (d.flow, order.get(d.direction, 9)))
    return Report(session=session, analysed_at=str(analysed_at), synchronised=bool(synchronised), samples=int(samples),
                  excluded=int(excluded), rtt_samples=int(rtt_samples), closure_ok=int(closure_ok),
                  directions=ordered, clocks=clocks, counts=counts, metrics=metrics)


def layer_values(connection: Any, session: str, direction: str, columns: List[str],
                 flow: Optional[FlowKey] = None, limit: int = 200_000) -> Dict[str, List[int]]:
    """Per-packet values (ns) of ``columns`` of ``analysis_packets`` (one-way) or ``analysis_rtt`` (rtt),
    of one flow or all, the first ``limit`` in time order."""
    table = "analysis_rtt" if direction == "rtt" else "analysis_packets"
    known = analysis_sql.rtt_columns() if direction == "rtt" else analysis_sql.packet_columns()
    for column in columns:
        if column not in known:
            raise InputError("column", f"must be one of {', '.join(known)}", column)
    where = "session_id = %s"
    params: List[Any] = [session]
    if direction != "rtt":
        where += " AND direction = %s"
        params.append(direction)
    if flow is not None:
        where += " AND saddr = %s AND daddr = %s AND sport = %s AND dport = %s"
        params.extend(flow)
    select = ", ".join(f"{column}_ns" for column in columns)
    rows = _rows(connection, f"SELECT {select} FROM {table} WHERE {where} ORDER BY t_ns LIMIT {int(limit)}",
                 tuple(params))
    return {column: [int(row[index]) for row in rows if row[index] is not None] for index, column in enumerate(columns)}


def closures(connection: Any, session: str, flow: FlowKey, limit: int = 200_000) -> List[float]:
    """The closure (sum of the parts / RTT) of each RTT sample of ``flow``."""
    rows = _rows(connection, "SELECT closure FROM analysis_rtt WHERE session_id = %s AND saddr = %s AND daddr = %s "
                             f"AND sport = %s AND dport = %s AND closure IS NOT NULL ORDER BY t_ns LIMIT {int(limit)}",
                 (session, *flow))
    return [float(closure) for (closure,) in rows]


SERIES = ("cwnd", "rwnd", "flight_size", "sample_rtt_us")


def metric_series(connection: Any, session: str) -> Dict[Tuple[str, FlowKey], Dict[str, List[Tuple[int, int]]]]:
    """The flow metrics over time: (host, flow) -> metric -> [(at_ns, value)] for cwnd, rwnd, flight size, srtt."""
    rows = _rows(connection, f"SELECT host, saddr, daddr, sport, dport, at_ns, {', '.join(SERIES)} FROM flow_metrics "
                             "WHERE session_id = %s ORDER BY host, saddr, daddr, sport, dport, at_ns", (session,))
    out: Dict[Tuple[str, FlowKey], Dict[str, List[Tuple[int, int]]]] = {}
    for host, saddr, daddr, sport, dport, at_ns, *values in rows:
        series = out.setdefault((host, (int(saddr), int(daddr), int(sport), int(dport))), {name: [] for name in SERIES})
        for name, value in zip(SERIES, values):
            if value is not None:
                series[name].append((int(at_ns), int(value)))
    return out
