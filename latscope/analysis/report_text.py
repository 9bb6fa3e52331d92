"""The terminal report of one analysed session: where the time went, layer by layer, both directions.

Per flow: the data direction (sender -> receiver), the ACKs back, and the RTT decomposition, each
a table of layers in path order with p50 / p90 / p99 / mean in microseconds and each layer's share
of the summed means; the largest share is marked ``<`` (and bold with ``color``). Under each: what
was matched and what was not. Then the clocks (their error bounds; an unsynchronised session says
so first) and the counts (excluded records, the collectors' drop counters). Fits 80 columns.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from latscope.analysis.data import Direction, Report, load

BOLD, RESET = "\033[1m", "\033[0m"

# Short names of the columns, for a terminal; where they are is the second column of the table.
LABELS: Dict[str, str] = {
    "tx_app": "send queue (app->TCP)", "tx_tcp": "TCP -> IP", "tx_ip": "IP output", "tx_virt": "virtual ifaces",
    "tx_qdisc": "qdisc", "tx_driver": "driver", "net": "network", "rx_nic": "driver -> MAC",
    "rx_virt": "virtual ifaces", "rx_ip": "IP input", "rx_tcp": "TCP receive queue", "rx_app": "copy to app",
    "total": "total (first->last)",
    "s_app": "L_APP send queue", "s_tcp": "L_TCP TCP -> IP", "s_ip": "L_IP out + in", "s_nic": "L_NIC out + in",
    "net_out": "L_NET data", "r_nic": "L_NIC in + out", "r_ip": "L_IP in + out", "r_tcp": "L_TCP data -> ACK",
    "net_back": "L_NET ACK", "rtt": "RTT (sender)",
}
WHERE = {layer.column: layer.where for layer in analysis_sql.ONE_WAY_LAYERS}
WHERE.update({part.column: part.where for part in analysis_sql.RTT_PARTS})
TOTALS = ("total", "rtt")

__all__ = ["load", "render", "text_report"]


def _us(value: Optional[float]) -> str:
    """Microseconds: one decimal below 10 ms, whole ones above (so a column stays 8 wide)."""
    if value is None:
        return "-"
    return f"{value / 1000:.1f}" if abs(value) < 10_000_000 else f"{value / 1000:.0f}"


def _host(where: str, direction: Direction) -> str:
    return {"sender": direction.sender, "receiver": direction.receiver}.get(where, where)


def _direction_table(direction: Direction, color: bool) -> List[str]:
    parts = [layer for layer in direction.layers if layer.layer not in TOTALS and layer.n]
    whole = sum(max(layer.mean or 0.0, 0.0) for layer in parts)
    largest = max(parts, key=lambda layer: layer.mean or 0.0).layer if parts and whole > 0 else None
    count = max((layer.n for layer in direction.layers), default=0)
    title = {"data": "data ", "ack": "ack  ", "rtt": "rtt  "}.get(direction.direction, direction.direction)
    lines = [f"{title} {direction.label()}   {direction.sender} -> {direction.receiver}   {count} samples",
             f"  {'layer':<22}{'where':<10}{'p50 us':>8}{'p90 us':>8}{'p99 us':>8}{'mean us':>9}{'share':>7}"]
    for layer in direction.layers:
        if not layer.n:
            continue
        share = "" if layer.layer in TOTALS or not whole else f"{100 * max(layer.mean or 0.0, 0.0) / whole:.0f}%"
        mark = " <" if layer.layer == largest else ""
        where = "" if layer.layer in TOTALS else _host(WHERE.get(layer.layer, ""), direction)
        line = (f"  {LABELS.get(layer.layer, layer.layer):<22}{where[:9]:<10}{_us(layer.p50):>8}{_us(layer.p90):>8}"
                f"{_us(layer.p99):>8}{_us(layer.mean):>9}{share:>7}{mark}")
        lines.append(f"{BOLD}{line}{RESET}" if mark and color else line)
    if direction.direction == "rtt":
        lines.append(f"  closure (parts = RTT within {analysis_sql.CLOSURE_TOLERANCE:.0%}): "
                     f"{direction.closure_ok}/{direction.rtt_samples}")
    else:
        lines.append(f"  matched: {direction.matched}   unmatched: {direction.unmatched_tx} sent, "
                     f"{direction.unmatched_rx} received")
    return lines


def _clock_lines(report: Report) -> List[str]:
    if not report.synchronised:
        return ["clocks: UNSYNCHRONISED - no clock estimate stored; stamps taken as they are (offset 0),",
                "        so cross-host layers (network) are only right if the hosts share one clock"]
    parts = []
    for entry in report.clocks:
        bound = "unbounded" if entry.error_ns is None else f"+-{entry.error_ns / 1000:.1f} us"
        parts.append(f"{entry.host} {bound} (offset {entry.offset_ns / 1000:+.1f} us, {entry.estimates} estimates)")
    return ["clocks: " + parts[0]] + ["        " + part for part in parts[1:]] if parts else ["clocks: -"]


def _count_lines(report: Report) -> List[str]:
    lines = []
    for host, values in sorted(report.counts.items()):
        analysed = [f"{values.get('analysis:samples', 0)} records",
                    f"out of order, excluded: {values.get('analysis:out_of_order_excluded', 0)}",
                    f"truncated, excluded: {values.get('analysis:truncated_excluded', 0)}"]
        drops = [f"{name.split(':', 1)[1]}: {value}" for name, value in sorted(values.items())
                 if name.startswith("collector:")]
        lines.append(f"  {host}: " + ", ".join(analysed))
        lines.append(f"  {' ' * len(host)}  drops: " + (", ".join(drops) if drops else "none reported"))
    return lines


def render(report: Report, color: bool = False) -> str:
    """The report as text (no trailing newline)."""
    lines = [f"LatScope report - session {report.session} (analysed {report.analysed_at} UTC)",
             f"{report.samples} records, {report.excluded} excluded, {report.rtt_samples} RTT samples"]
    lines += _clock_lines(report)
    for direction in report.directions:
        lines.append("")
        lines += _direction_table(direction, color)
    lines += ["", "counts:"] + _count_lines(report)
    return "\n".join(lines)


def text_report(connection: Any, session: str, color: bool = False) -> str:
    """The terminal report of an analysed session, straight from the database (for the CLI and the module)."""
    return render(load(connection, session), color)
