"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed).

* ``layer_cdfs``: per direction, the CDF of every layer's latency (log time axis), like the
  LAN / LTE / WiFi figures of the seed papers;
* ``stacked_layers``: one bar per direction, the mean of each layer stacked in path order;
* ``rtt_decomposition``: the mean of each RTT part stacked against the measured RTT, and the
  CDF of the closure (sum of the parts / RTT);
* ``metric_series``: cwnd, rwnd, flight size and smoothed RTT over the session, per host and flow.

Each function writes one PNG and returns its path; the data come from ``latscope.analysis.data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from latscope.analysis.data import Direction  # noqa: E402
from latscope.analysis.report_text import LABELS, TOTALS  # noqa: E402

DPI = 100
SIZE = (8.0, 4.5)


def legend_label(column: str) -> str:
    """A layer's name in a legend: the terminal label, with the side for the one-way layers."""
    name = LABELS.get(column, column)
    if column.startswith(("tx_", "s_")):
        return f"sender: {name}"
    if column.startswith(("rx_", "r_")):
        return f"receiver: {name}"
    return name


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def layer_cdfs(values: Dict[str, List[int]], title: str, path: Path) -> Path:
    """CDF per layer of ``values`` (ns, per packet) on a log axis in microseconds."""
    figure, axes = plt.subplots(figsize=SIZE)
    for column, samples in values.items():
        positive = sorted(max(value, 1) / 1000 for value in samples)
        if not positive:
            continue
        count = len(positive)
        axes.step(positive, [(index + 1) / count for index in range(count)], where="post",
                  label=legend_label(column), linewidth=2 if column in TOTALS else 1.2)
    axes.set_xscale("log")
    axes.set_xlabel("latency (us, log scale)")
    axes.set_ylabel("CDF")
    axes.set_ylim(0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower right", ncol=2)
    return _save(figure, path)


def stacked_layers(directions: Sequence[Direction], path: Path) -> Path:
    """One horizontal bar per direction: the mean of each layer, stacked in path order (us)."""
    figure, axes = plt.subplots(figsize=SIZE)
    colors = plt.get_cmap("tab20").colors
    names: List[str] = []
    for row, direction in enumerate(directions):
        left = 0.0
        for layer in direction.layers:
            if layer.layer in TOTALS or not layer.n or layer.mean is None:
                continue
            width = max(layer.mean, 0.0) / 1000
            if layer.layer not in names:
                names.append(layer.layer)
            axes.barh(row, width, left=left, color=colors[names.index(layer.layer) % len(colors)],
                      edgecolor="white", label=legend_label(layer.layer))
            left += width
    axes.set_yticks(range(len(directions)))
    axes.set_yticklabels([f"{d.direction}: {d.sender} -> {d.receiver}" for d in directions], fontsize=8)
    axes.set_xlabel("mean latency (us), layers in path order")
    axes.set_title("where the time went, per direction")
    handles, labels = axes.get_legend_handles_labels()
    unique: Dict[str, object] = {}
    for handle, label in zip(handles, labels):
        unique.setdefault(label, handle)
    axes.legend(list(unique.values()), list(unique), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)


def rtt_decomposition(direction: Direction, closures: List[float], path: Path) -> Path:
    """The RTT parts' means stacked next to the measured RTT, and the CDF of the closure."""
    figure, (bars, cdf) = plt.subplots(1, 2, figsize=(10.0, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.get_cmap("tab10").colors
    left = 0.0
    rtt = None
    for index, layer in enumerate(direction.layers):
        if layer.layer == "rtt":
            rtt = layer
            continue
        if not layer.n or layer.mean is None:
            continue
        width = max(layer.mean, 0.0) / 1000
        bars.barh(1, width, left=left, color=colors[index % len(colors)], edgecolor="white",
                  label=legend_label(layer.layer))
        left += width
    if rtt is not None and rtt.mean is not None:
        bars.barh(0, rtt.mean / 1000, color="dimgray", label="RTT measured by the sender")
    bars.set_yticks([0, 1])
    bars.set_yticklabels(["measured", "sum of parts"])
    bars.set_xlabel("mean (us)")
    bars.set_title("RTT decomposition")
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ordered = sorted(closures)
    if ordered:
        cdf.step(ordered, [(index + 1) / len(ordered) for index in range(len(ordered))], where="post")
    cdf.axvspan(0.95, 1.05, color="tab:green", alpha=0.15, label="closed (within 5%)")
    cdf.set_xlabel("closure: sum of parts / RTT")
    cdf.set_ylabel("CDF")
    cdf.set_ylim(0, 1.01)
    cdf.grid(True, alpha=0.3)
    cdf.legend(fontsize=7, loc="upper left")
    cdf.set_title(f"closure of {len(ordered)} samples")
    return _save(figure, path)


MetricSeries = Dict[str, List[Tuple[int, int]]]


def metric_series(series: MetricSeries, title: str, path: Path) -> Path:
    """cwnd, rwnd, flight size (packets/bytes as the collector measured them) and srtt over time."""
    figure, grid = plt.subplots(2, 2, figsize=(10.0, 6.0), sharex=True)
    units = {"cwnd": "cwnd (segments)", "rwnd": "rwnd (bytes)", "flight_size": "flight size (segments)",
             "sample_rtt_us": "srtt (us)"}
    start = min((points[0][0] for points in series.values() if points), default=0)
    for axes, name in zip(grid.flat, ("cwnd", "rwnd", "flight_size", "sample_rtt_us")):
        points = series.get(name, [])
        if points:
            axes.plot([(at - start) / 1e9 for at, _v in points], [value for _at, value in points], linewidth=1.2)
        else:
            axes.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(units[name], fontsize=9)
        axes.grid(True, alpha=0.3)
    for axes in grid[1]:
        axes.set_xlabel("time since the first sample (s)")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
