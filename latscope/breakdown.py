"""Per-layer latency of matched samples, in Python: the quick view for ``latscope demo``.

A sender's TX record and the receiver's RX record of the same sample (flow and
key) are joined; each pair of consecutive stamps is one *segment* of the path
(``app_send → tcp_xmit`` is the time in the socket's send queue and TCP, and
so on), and the sender's last stamp to the receiver's first is the wire. The
stamps must be on one timebase: in the lab every namespace shares the kernel
clock; across machines they are first converted with the clock estimates.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from ansible_collections.latscope.latscope.plugins.module_utils.records import FLAG_REPEAT, PacketRecord

SEGMENT_NAMES = {
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
}


@dataclass(frozen=True)
class Segment:
    order: int
    where: str      # "host1", "wire", "host2"
    name: str


def _segments(record: PacketRecord, where: str, devices: dict[tuple[int, int], str]) -> list[tuple[str, int]]:
    out = []
    for first, second in zip(record.stamps, record.stamps[1:]):
        name = SEGMENT_NAMES.get((first.layer, second.layer), f"{first.layer} -> {second.layer}")
        device = devices.get((second.netns, second.ifindex)) if second.ifindex else None
        out.append((f"{name} ({device})" if device else name, second.ts_ns - first.ts_ns))
    return out


def breakdown(sent: list[PacketRecord], received: list[PacketRecord], sender: str, receiver: str,
              devices: dict[tuple[int, int], str] | None = None) -> tuple[list[tuple[Segment, list[int]]], int]:
    """Latency samples (ns) per path segment, in path order; and how many samples matched."""
    devices = devices or {}
    by_key = {(r.flow, r.key): r for r in received if r.kind == "data" and r.direction == "rx"}
    samples: dict[Segment, list[int]] = defaultdict(list)
    matched = 0
    for tx in sent:
        if tx.kind != "data" or tx.direction != "tx" or tx.flags & FLAG_REPEAT:
            continue
        rx = by_key.get((tx.flow, tx.key))
        if rx is None or not tx.stamps or not rx.stamps:
            continue
        matched += 1
        order = 0
        for name, value in _segments(tx, sender, devices):
            samples[Segment(order, sender, name)].append(value)
            order += 1
        samples[Segment(order, "wire", "sender NIC -> receiver NIC")].append(rx.stamps[0].ts_ns - tx.stamps[-1].ts_ns)
        order += 1
        for name, value in _segments(rx, receiver, devices):
            samples[Segment(order, receiver, name)].append(value)
            order += 1
    common = defaultdict(int)
    for segment, values in samples.items():
        common[(segment.where, segment.name)] = max(common[(segment.where, segment.name)], len(values))
    rows = sorted(samples.items(), key=lambda item: item[0].order)
    seen = set()
    result = []
    for segment, values in rows:
        key = (segment.where, segment.name)
        if key in seen or len(values) < matched * 0.5:
            continue   # path variants seen by a minority of samples are left out of the quick view
        seen.add(key)
        result.append((segment, values))
    return result, matched


def render(rows: list[tuple[Segment, list[int]]], matched: int, title: str) -> str:
    """A terminal table: median and p90 per segment, share of the total, the largest marked."""
    medians = [statistics.median(values) for segment, values in rows if segment]
    total = sum(medians) or 1
    top = max(range(len(rows)), key=lambda i: medians[i]) if rows else -1
    lines = [title, f"{'where':<7} {'segment':<34} {'p50 us':>9} {'p90 us':>9} {'share':>6}"]
    for index, ((segment, values), median) in enumerate(zip(rows, medians)):
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        mark = " <== largest" if index == top else ""
        lines.append(f"{segment.where:<7} {segment.name[:34]:<34} {median / 1e3:>9.1f} {p90 / 1e3:>9.1f} "
                     f"{100 * median / total:>5.1f}%{mark}")
    lines.append(f"{matched} samples matched on both hosts; sum of medians {total / 1e3:.1f} us")
    return "\n".join(lines)
