"""The HTML report of one analysed session: the terminal report's tables, and the PNG plots.

``write(connection, report, directory)`` writes ``directory/index.html`` and its plots next to
it (``cdf-<flow>-<direction>.png``, ``layers-<flow>.png``, ``rtt-<flow>.png``,
``metrics-<host>-<flow>.png``) and returns the index's path. The page is static - no script,
no external resource - so it opens anywhere, headless browsers included. Every text from the
database is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, List

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from latscope.analysis import data, plots
from latscope.analysis.data import Direction, Report
from latscope.analysis.report_text import LABELS, TOTALS, WHERE

STYLE = """body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:0.5em 0 1em 0;font-size:13px}
td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}
td:first-child,th:first-child,td.where{text-align:left}
tr.largest{background:#ffe08a;font-weight:bold}tr.total{font-style:italic}
.warn{color:#a00;font-weight:bold}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
h2{border-bottom:2px solid #444;padding-bottom:2px}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _us(value: Any) -> str:
    return "-" if value is None else f"{value / 1000:.1f}"


def _slug(direction: Direction) -> str:
    saddr, daddr, sport, dport = direction.flow
    return f"{saddr:x}-{sport}-{daddr:x}-{dport}"


def _table(direction: Direction) -> str:
    parts = [layer for layer in direction.layers if layer.layer not in TOTALS and layer.n]
    whole = sum(max(layer.mean or 0.0, 0.0) for layer in parts)
    largest = max(parts, key=lambda layer: layer.mean or 0.0).layer if parts and whole > 0 else None
    host = {"sender": direction.sender, "receiver": direction.receiver}
    rows = ["<tr><th>layer</th><th>where</th><th>n</th><th>min us</th><th>p50 us</th><th>p90 us</th><th>p99 us</th>"
            "<th>max us</th><th>mean us</th><th>share</th></tr>"]
    for layer in direction.layers:
        if not layer.n:
            continue
        css = "largest" if layer.layer == largest else "total" if layer.layer in TOTALS else ""
        share = "" if layer.layer in TOTALS or not whole else f"{100 * max(layer.mean or 0.0, 0.0) / whole:.0f}%"
        where = "" if layer.layer in TOTALS else host.get(WHERE.get(layer.layer, ""), WHERE.get(layer.layer, ""))
        rows.append(f'<tr class="{css}"><td>{_e(LABELS.get(layer.layer, layer.layer))}</td><td class="where">{_e(where)}'
                    f"</td><td>{layer.n}</td><td>{_us(layer.min)}</td><td>{_us(layer.p50)}</td><td>{_us(layer.p90)}</td>"
                    f"<td>{_us(layer.p99)}</td><td>{_us(layer.max)}</td><td>{_us(layer.mean)}</td><td>{share}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _counts(report: Report) -> str:
    rows = ["<tr><th>host</th><th>what</th><th>count</th></tr>"]
    for host, values in sorted(report.counts.items()):
        for name, value in sorted(values.items()):
            rows.append(f"<tr><td>{_e(host)}</td><td class='where'>{_e(name.replace(':', ': '))}</td><td>{value}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _clocks(report: Report) -> str:
    if not report.synchronised:
        return ('<p class="warn">Clocks UNSYNCHRONISED: no clock estimate was stored, stamps were taken as they are '
                "(offset 0). Cross-host layers are right only where the hosts share one clock.</p>")
    rows = ["<tr><th>host</th><th>estimates</th><th>offset us</th><th>error bound us</th></tr>"]
    for entry in report.clocks:
        bound = "unbounded" if entry.error_ns is None else f"&plusmn;{entry.error_ns / 1000:.1f}"
        rows.append(f"<tr><td>{_e(entry.host)}</td><td>{entry.estimates}</td><td>{entry.offset_ns / 1000:+.1f}</td>"
                    f"<td>{bound}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write(connection: Any, report: Report, directory: Path) -> Path:
    """Write the report's page and plots into ``directory`` (created); return the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    body: List[str] = [f"<h1>LatScope report: session {_e(report.session)}</h1>",
                       f"<p>analysed {_e(report.analysed_at)} UTC; {report.samples} records, {report.excluded} excluded "
                       f"(out of order or truncated), {report.rtt_samples} RTT samples, "
                       f"{report.closure_ok} closed within {analysis_sql.CLOSURE_TOLERANCE:.0%}.</p>",
                       "<h2>Clocks</h2>", _clocks(report)]
    flows = sorted({d.flow for d in report.directions})
    for flow in flows:
        mine = [d for d in report.directions if d.flow == flow]
        first = mine[0]
        body.append(f"<h2>Flow {_e(Direction(flow, 'data', first.sender, first.receiver).label())}</h2>")
        slug = _slug(first)
        bars = plots.stacked_layers([d for d in mine if d.direction in analysis_sql.DIRECTIONS],
                                    directory / f"layers-{slug}.png")
        body.append(f'<img src="{bars.name}" alt="stacked per-layer means per direction">')
        for direction in mine:
            title = {"data": "Data", "ack": "ACKs", "rtt": "RTT decomposition"}.get(direction.direction, "")
            body.append(f"<h3>{title}: {_e(direction.label())} ({_e(direction.sender)} &rarr; "
                        f"{_e(direction.receiver)})</h3>")
            body.append(_table(direction))
            if direction.direction == "rtt":
                body.append(f"<p>closure (sum of parts = RTT within {analysis_sql.CLOSURE_TOLERANCE:.0%}): "
                            f"{direction.closure_ok}/{direction.rtt_samples}</p>")
                closures = data.closures(connection, report.session, flow)
                image = plots.rtt_decomposition(direction, closures, directory / f"rtt-{slug}.png")
                body.append(f'<img src="{image.name}" alt="RTT decomposition and closure">')
                continue
            body.append(f"<p>matched {direction.matched}; unmatched {direction.unmatched_tx} sent, "
                        f"{direction.unmatched_rx} received</p>")
            columns = [layer.layer for layer in direction.layers if layer.n]
            values = data.layer_values(connection, report.session, direction.direction, columns, flow=flow)
            image = plots.layer_cdfs(values, f"{direction.direction}: {direction.sender} -> {direction.receiver}",
                                     directory / f"cdf-{slug}-{direction.direction}.png")
            body.append(f'<img src="{image.name}" alt="per-layer CDFs, {direction.direction}">')
    series = data.metric_series(connection, report.session)
    if series:
        body.append("<h2>Flow metrics</h2>")
    for index, ((host, flow), metrics) in enumerate(sorted(series.items())):
        title = f"{host}: {Direction(flow, 'data', host, '').label()}"
        image = plots.metric_series(metrics, title, directory / f"metrics-{index}.png")
        body.append(f"<h3>{_e(title)}</h3>")
        body.append(f'<img src="{image.name}" alt="cwnd, rwnd, flight size and srtt over time">')
    body += ["<h2>Counts</h2>", _counts(report)]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>LatScope {_e(report.session)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
