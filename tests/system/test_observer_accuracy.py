"""Is the observer *right*? Its stamps against an independent clock and against delays we induce.

Two checks on the real kernel, with ``latscope observe`` running in host1 and host2 as the
collector would:

1. **tcpdump agrees.** During an iperf3 flow host1 -> host2, tcpdump captures on host1's ``eth0``
   (the sender's device) and on host2's ``eth0`` (the receiver's). AF_PACKET takes a TX copy in
   ``dev_queue_xmit_nit``, called from ``dev_hard_start_xmit`` just before the ``net_dev_start_xmit``
   tracepoint (our ``dev_xmit``) and after ``net_dev_queue`` (our ``dev_queue``); it takes an RX copy
   in ``__netif_receive_skb_core`` just after the ``netif_receive_skb`` tracepoint (our ``netif_rx``),
   which on veth follows ``netif_rx_entry`` (our ``dev_rx``) by one backlog hand-off. So for the very
   same packet (flow + the TCP segment holding the sample key) the capture time must fall between
   those stamps, a few microseconds from them. tcpdump stamps CLOCK_REALTIME, we stamp
   CLOCK_MONOTONIC (``bpf_ktime_get_ns``): the offset between the two is measured here.
2. **A delay induced at one layer shows in that layer.** A rate-limiting ``tbf`` qdisc on host1's
   ``eth0`` must show in the qdisc stage of host1's TX records; a slow reader on host2 must show in
   host2's TCP receive queue (``tcp_rx -> app_copy``), and in neither case in the neighbouring layers.

Every run uses its own port, so the runs share one pair of observers (compiling takes seconds).
"""

from __future__ import annotations

import collections
import statistics
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.records import FLAG_REPEAT, PacketRecord
from latscope.collector import netns
from latscope.demo import ObserverProcess
from latscope.lab.netops import wait_listening

pytestmark = pytest.mark.lab

SAMPLE_SIZE = 16384          # a sample every 16 KiB: a few hundred samples per short run
PORT_TCPDUMP, PORT_BASE, PORT_TBF, PORT_FAST, PORT_SLOW = 5211, 5212, 5213, 5214, 5215
PORTS = (PORT_TCPDUMP, PORT_BASE, PORT_TBF, PORT_FAST, PORT_SLOW)
TBF = ("rate", "200mbit", "burst", "32kb", "latency", "50ms")
US = 1000

# A TCP sink that reads `chunk` bytes at a time, pausing `pause` seconds after each read.
READER = r"""
import socket, sys, time
address, port, chunk, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((address, port))
listener.listen(1)
listener.settimeout(30)
conn = listener.accept()[0]
conn.settimeout(30)
total, started = 0, time.monotonic()
while True:
    data = conn.recv(chunk)
    if not data:
        break
    total += len(data)
    if pause:
        time.sleep(pause)
conn.sendall(b"k")
print(total, time.monotonic() - started, flush=True)
"""
# A sender that offers `rate` bytes/s in 16 KiB writes (blocking: it keeps a slow reader's buffer full).
WRITER = r"""
import socket, sys, time
address, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.create_connection((address, port), timeout=30)
block, sent, started = b"x" * 16384, 0, time.monotonic()
while sent < total:
    sock.sendall(block)
    sent += len(block)
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)
sock.shutdown(socket.SHUT_WR)
assert sock.recv(1) == b"k"
"""
READ_BYTES = 4 << 20
OFFERED = 32e6               # bytes/s: far above what the slow reader drains, far below what veth carries


# ---- helpers ----------------------------------------------------------------------------------

def clock_offset(tries: int = 500) -> tuple[int, int]:
    """(CLOCK_REALTIME - CLOCK_MONOTONIC in ns, uncertainty): the tightest of ``tries`` brackets."""
    best = None
    for _try in range(tries):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or after - before < best[1]:
            best = (real - (before + after) // 2, after - before)
    return best


@dataclass(frozen=True)
class Captured:
    ts_ns: int           # CLOCK_REALTIME, as tcpdump wrote it
    flow: tuple[str, str, int, int]
    seq: int
    payload: int


def read_pcap(path: Path) -> list[Captured]:
    """The TCP/IPv4 packets of a nanosecond pcap file of an Ethernet device."""
    data = path.read_bytes()
    magic, linktype = struct.unpack_from("<I", data)[0], struct.unpack_from("<I", data, 20)[0]
    assert magic == 0xA1B23C4D, f"not a nanosecond pcap: {magic:#x}"
    assert linktype == 1, f"not Ethernet: {linktype}"
    packets, offset = [], 24
    while offset + 16 <= len(data):
        seconds, nanos, caplen, wirelen = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 54 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        if ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0] or wirelen - 14   # 0 only for a >64 KiB GSO skb
        sport, dport, seq = struct.unpack_from(">HHI", ip, ihl)
        doff = (ip[ihl + 12] >> 4) * 4
        packets.append(Captured(seconds * 1_000_000_000 + nanos,
                                (".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20])), sport, dport),
                                seq, total - ihl - doff))
    return packets


def first_stamps(record: PacketRecord, device: tuple[int, int] | None = None) -> dict[str, int]:
    """layer -> time of its first stamp (socket layers, and device layers of ``device`` when given)."""
    times: dict[str, int] = {}
    for stamp in record.stamps:
        if stamp.ifindex and device is not None and (stamp.netns, stamp.ifindex) != device:
            continue
        times.setdefault(stamp.layer, stamp.ts_ns)
    return times


def deltas(records: list[PacketRecord], first: str, second: str, device: tuple[int, int]) -> list[int]:
    out = []
    for record in records:
        times = first_stamps(record, device)
        if first in times and second in times:
            out.append(times[second] - times[first])
    return out


def quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[int]) -> float:
    return statistics.median(values)


def fmt_us(values: list[int]) -> str:
    return (f"n={len(values):4d}  p50={median(values) / US:9.1f} us  p90={quantile(values, 0.9) / US:9.1f} us  "
            f"p99={quantile(values, 0.99) / US:9.1f} us")


def _data(records: list[PacketRecord], direction: str, dport: int) -> list[PacketRecord]:
    return [r for r in records if r.direction == direction and r.kind == "data" and r.flow.dport == dport
            and not r.flags & FLAG_REPEAT]


def _netns(node: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", node, *argv]


def _iperf3(lab, port: int, *extra: str) -> None:
    host1, host2 = lab.plan.node("host1"), lab.plan.node("host2")
    server = subprocess.Popen(_netns(host2.netns, "iperf3", "-s", "-1", "-B", host2.address, "-p", str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(host2.netns, host2.address, port)
        client = subprocess.run(_netns(host1.netns, "iperf3", "-c", host2.address, "-p", str(port), *extra),
                                capture_output=True, text=True, timeout=60, check=False)
        assert client.returncode == 0, client.stdout[-1000:] + client.stderr[-1000:]
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _reader_run(lab, python: str, port: int, chunk: int, pause: float) -> tuple[int, float]:
    """WRITER in host1 -> READER in host2; returns (bytes read, seconds)."""
    host1, host2 = lab.plan.node("host1"), lab.plan.node("host2")
    reader = subprocess.Popen(_netns(host2.netns, python, "-c", READER, host2.address, str(port), str(chunk),
                                     str(pause)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(host2.netns, host2.address, port)
        writer = subprocess.run(_netns(host1.netns, python, "-c", WRITER, host2.address, str(port),
                                       str(READ_BYTES), str(OFFERED)),
                                capture_output=True, text=True, timeout=60, check=False)
        assert writer.returncode == 0, writer.stderr[-1000:]
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err[-1000:]
        total, seconds = out.split()
        return int(total), float(seconds)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()


class Tcpdump:
    """tcpdump on ``eth0`` of a namespace, nanosecond pcap, every packet handed over at once."""

    def __init__(self, netns_name: str, port: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(_netns(netns_name, "tcpdump", "-i", "eth0", "-n", "-s", "128", "-B", "16384",
                                            "--immediate-mode", "-U", "--time-stamp-precision=nano",
                                            "-w", str(out), "tcp", "port", str(port)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()      # "listening on eth0, ..." once the socket is bound
        assert line.startswith("tcpdump: listening on eth0"), line + self.proc.stderr.read()

    def stop(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=30)[1]


# ---- the runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(lab, python, tmp_path_factory):
    """Observers on host1 and host2 while: an iperf3 flow under tcpdump; iperf3 without and with a tbf
    qdisc on host1's eth0; a paced sender to a fast and to a slow reader on host2."""
    tmp = tmp_path_factory.mktemp("accuracy")
    plan = lab.plan
    host1, host2 = plan.node("host1"), plan.node("host2")
    info1, info2 = netns.describe(f"/run/netns/{host1.netns}"), netns.describe(f"/run/netns/{host2.netns}")
    args = ["--size", str(SAMPLE_SIZE), "--seconds", "300"] + [a for p in PORTS for a in ("--port", str(p))]
    observers = {name: ObserverProcess(node.netns, name, tmp / f"{name}.jsonl", args)
                 for name, node in (("host1", host1), ("host2", host2))}
    out = {"tx_device": (info1.cookie, info1.interfaces["eth0"]), "rx_device": (info2.cookie, info2.interfaces["eth0"]),
           "host1": host1, "host2": host2}
    dumps = []
    try:
        for observer in observers.values():
            observer.wait_attached()

        # 1. tcpdump on both ends of the flow (rate and size bounded: 500 Mbit/s, 40 MB)
        offset_before = clock_offset()
        dumps = [Tcpdump(host1.netns, PORT_TCPDUMP, tmp / "host1.pcap"),
                 Tcpdump(host2.netns, PORT_TCPDUMP, tmp / "host2.pcap")]
        _iperf3(lab, PORT_TCPDUMP, "-b", "500M", "-n", "40M", "-l", "16K")
        out["tcpdump_stats"] = [dump.stop() for dump in dumps]
        offset_after = clock_offset()
        out["offsets"] = (offset_before, offset_after)
        out["pcap_tx"], out["pcap_rx"] = read_pcap(tmp / "host1.pcap"), read_pcap(tmp / "host2.pcap")

        # 2. the same flow without and with a token bucket on host1's eth0 (20 MB, at most ~1 s)
        _iperf3(lab, PORT_BASE, "-n", "20M")
        subprocess.run(_netns(host1.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", *TBF), check=True)
        try:
            _iperf3(lab, PORT_TBF, "-n", "20M")
            out["tbf_stats"] = subprocess.run(_netns(host1.netns, "tc", "-s", "-j", "qdisc", "show", "dev", "eth0"),
                                              capture_output=True, text=True, check=True).stdout
        finally:
            subprocess.run(_netns(host1.netns, "tc", "qdisc", "del", "dev", "eth0", "root"), check=False)

        # 3. a paced sender (32 MB/s offered, 4 MiB) to a reader that keeps up, then to one that does not
        out["fast_reader"] = _reader_run(lab, python, PORT_FAST, 16384, 0)
        out["slow_reader"] = _reader_run(lab, python, PORT_SLOW, 4096, 0.001)

        out["counters"] = {name: observer.stop() for name, observer in observers.items()}
        out["records"] = {name: observer.records() for name, observer in observers.items()}
    finally:
        for dump in dumps:
            if dump.proc.poll() is None:
                dump.proc.kill()
                dump.proc.wait()
        for observer in observers.values():
            if observer.proc.poll() is None:
                observer.proc.kill()
                observer.proc.wait()
    return out


# ---- 1. tcpdump ------------------------------------------------------------------------------

def _match(records: list[PacketRecord], packets: list[Captured], layers: tuple[str, ...],
           device: tuple[int, int], offset: int) -> tuple[dict[str, list[int]], int]:
    """Per layer: capture time (converted to CLOCK_MONOTONIC) minus that layer's stamp, for every record
    whose key lies in exactly one captured segment of its flow; and how many records had no single match."""
    by_flow = collections.defaultdict(list)
    for packet in packets:
        if packet.payload > 0:
            by_flow[packet.flow].append(packet)
    diffs: dict[str, list[int]] = {layer: [] for layer in layers}
    unmatched = 0
    for record in records:
        times = first_stamps(record, device)
        if not all(layer in times for layer in layers):
            continue
        holders = [p for p in by_flow.get(record.flow.as_tuple(), []) if (record.key - p.seq) % (1 << 32) < p.payload]
        if len(holders) != 1:      # not captured, or sent twice (a retransmission): no single truth
            unmatched += 1
            continue
        for layer in layers:
            diffs[layer].append(holders[0].ts_ns - offset - times[layer])
    return diffs, unmatched


def _offset(runs) -> tuple[int, int]:
    (before, width_before), (after, width_after) = runs["offsets"]
    # CLOCK_REALTIME only moves against CLOCK_MONOTONIC if it is stepped (NTP slews both alike)
    assert abs(after - before) < 50 * US, f"the realtime clock was stepped during the run: {before} -> {after}"
    return (before + after) // 2, abs(after - before) + max(width_before, width_after)


def _report(side: str, diffs: dict[str, list[int]]) -> None:
    for layer, values in diffs.items():
        magnitudes = [abs(v) for v in values]
        print(f"{side}: tcpdump - {layer:9s} n={len(values)}  median |d| {median(magnitudes) / US:6.2f} us  "
              f"p99 |d| {quantile(magnitudes, 0.99) / US:7.2f} us  signed median {median(values) / US:+6.2f} us  "
              f"range [{min(values) / US:+.1f}, {max(values) / US:+.1f}] us")


def test_tcpdump_saw_every_packet(runs):
    for stats in runs["tcpdump_stats"]:
        captured = int(stats.split(" packets captured")[0].split()[-1])
        received = int(stats.split(" packets received by filter")[0].split()[-1])
        dropped = int(stats.split(" packets dropped by kernel")[0].split()[-1])
        assert dropped == 0 and captured == received > 1000, stats


def test_sender_device_stamps_agree_with_tcpdump(runs):
    offset, tolerance = _offset(runs)
    records = _data(runs["records"]["host1"], "tx", PORT_TCPDUMP)
    diffs, unmatched = _match(records, runs["pcap_tx"], ("dev_queue", "dev_xmit"), runs["tx_device"], offset)
    _report("host1 eth0 TX", diffs)
    matched = len(diffs["dev_xmit"])
    assert matched >= 1000 and matched >= 0.95 * (matched + unmatched), (matched, unmatched)
    # The capture is taken between net_dev_queue and net_dev_start_xmit of the same skb, with no queue
    # in between (veth's noqueue): it must fall between our two stamps, microseconds from dev_xmit.
    inside = sum(1 for q, x in zip(diffs["dev_queue"], diffs["dev_xmit"]) if q >= -tolerance and x <= tolerance)
    assert inside >= 0.99 * matched, f"{matched - inside} of {matched} captures outside [dev_queue, dev_xmit]"
    magnitudes = [abs(d) for d in diffs["dev_xmit"]]
    assert median(magnitudes) < 20 * US     # a clone and a ring copy apart: ~2 us measured
    assert quantile(magnitudes, 0.99) < 1000 * US   # only an interrupt in between can widen it


def test_receiver_device_stamps_agree_with_tcpdump(runs):
    offset, tolerance = _offset(runs)
    records = _data(runs["records"]["host2"], "rx", PORT_TCPDUMP)
    diffs, unmatched = _match(records, runs["pcap_rx"], ("dev_rx", "netif_rx"), runs["rx_device"], offset)
    _report("host2 eth0 RX", diffs)
    matched = len(diffs["dev_rx"])
    assert matched >= 1000 and matched >= 0.95 * (matched + unmatched), (matched, unmatched)
    # veth's netif_rx (dev_rx) queues the skb on the backlog; the capture happens when the softirq takes
    # it (__netif_receive_skb_core, with netif_rx's tracepoint): never before dev_rx, right after netif_rx.
    after_driver = sum(1 for d in diffs["dev_rx"] if d >= -tolerance)
    assert after_driver >= 0.99 * matched, f"{matched - after_driver} of {matched} captures before dev_rx"
    magnitudes = [abs(d) for d in diffs["dev_rx"]]
    assert median(magnitudes) < 50 * US     # one backlog hand-off: ~3 us measured
    assert quantile(magnitudes, 0.99) < 1000 * US
    assert median([abs(d) for d in diffs["netif_rx"]]) < 20 * US


# ---- 2a. a rate-limiting qdisc ---------------------------------------------------------------

def test_tbf_delay_shows_in_the_qdisc_layer_and_pushes_back_into_the_socket(runs):
    """What really happens under a 200 Mbit/s tbf with a flow that could go 50 times faster:

    * the skbs wait in tbf: qdisc_enq -> qdisc_deq grows from nothing (veth's noqueue has no qdisc
      stamps at all; dev_queue -> dev_xmit is ~1 us) to milliseconds;
    * but not to tbf's own limit (latency 50 ms): TCP small queues lets a socket have only about two
      GSO skbs (~130 KB, ~5 ms at 25 MB/s) below TCP, so the rest of the backlog stays in the socket's
      write queue, and app_send -> tcp_xmit grows even more than the qdisc stage (tens of ms: the
      send buffer drained at 25 MB/s);
    * the layers in between - TCP -> IP (tcp_xmit -> ip_out), IP output (ip_out -> dev_queue) and
      dequeue -> driver (qdisc_deq -> dev_xmit) - do not wait for anything and stay at microseconds.
    """
    device = runs["tx_device"]
    base = _data(runs["records"]["host1"], "tx", PORT_BASE)
    tbf = _data(runs["records"]["host1"], "tx", PORT_TBF)
    assert len(base) > 500 and len(tbf) > 500, (len(base), len(tbf))
    stages = (("app_send", "tcp_xmit"), ("tcp_xmit", "ip_out"), ("ip_out", "dev_queue"),
              ("dev_queue", "qdisc_enq"), ("qdisc_enq", "qdisc_deq"), ("qdisc_deq", "dev_xmit"),
              ("dev_queue", "dev_xmit"))
    figures = {}
    for name, records in (("no qdisc", base), ("tbf", tbf)):
        for first, second in stages:
            values = deltas(records, first, second, device)
            figures[name, first, second] = values
            if values:
                print(f"{name:8s} {first:>9s} -> {second:<9s} {fmt_us(values)}")
    print("tbf:", runs["tbf_stats"].strip()[:400])

    # the qdisc stamps exist exactly when a qdisc queues
    assert not figures["no qdisc", "qdisc_enq", "qdisc_deq"]
    assert len(figures["tbf", "qdisc_enq", "qdisc_deq"]) >= 0.95 * len(tbf)
    qdisc_base = median(figures["no qdisc", "dev_queue", "dev_xmit"])
    qdisc_tbf = median(figures["tbf", "dev_queue", "dev_xmit"])
    print(f"qdisc + driver: {qdisc_base / US:.1f} us -> {qdisc_tbf / US:.1f} us ({qdisc_tbf / qdisc_base:.0f}x)")
    assert qdisc_tbf > 1000 * US and qdisc_tbf > 100 * qdisc_base
    # the wait is inside tbf: between its enqueue and dequeue
    assert median(figures["tbf", "qdisc_enq", "qdisc_deq"]) > 0.9 * qdisc_tbf
    # ... and bounded by TSQ, well below what tbf itself would allow (50 ms)
    assert quantile(figures["tbf", "qdisc_enq", "qdisc_deq"], 0.99) < 25_000 * US
    # the backlog TSQ keeps out of the qdisc waits in the socket
    socket_base = median(figures["no qdisc", "app_send", "tcp_xmit"])
    socket_tbf = median(figures["tbf", "app_send", "tcp_xmit"])
    print(f"socket send queue: {socket_base / US:.1f} us -> {socket_tbf / US:.1f} us")
    # (without tbf the send queue is bimodal - microseconds, or milliseconds when the CPU is the
    # bottleneck - so its median moves with the machine's load: compare with a wide margin)
    assert socket_tbf > qdisc_tbf and socket_tbf > 10_000 * US and socket_tbf > 3 * socket_base
    # the neighbours do not move
    for first, second in (("tcp_xmit", "ip_out"), ("ip_out", "dev_queue"), ("qdisc_deq", "dev_xmit")):
        stage = median(figures["tbf", first, second])
        assert stage < 100 * US and stage < qdisc_tbf / 100, (first, second, stage)


# ---- 2b. a slow reader ----------------------------------------------------------------------

def test_slow_reader_delay_shows_in_the_tcp_receive_queue(runs):
    """A reader taking 4 KiB per millisecond (~3.7 MB/s) behind a sender offering 32 MB/s: the receive
    buffer stays full, every byte waits in the socket's receive queue for about a buffer's worth of
    reads (tcp_rx -> app_copy: ~20 ms), while the path up to TCP (dev_rx -> netif_rx -> tcp_rx) and
    the copy itself (app_copy -> app_recv) are as quick as with a reader that keeps up."""
    device = runs["rx_device"]
    fast = _data(runs["records"]["host2"], "rx", PORT_FAST)
    slow = _data(runs["records"]["host2"], "rx", PORT_SLOW)
    for name, (total, seconds) in (("fast", runs["fast_reader"]), ("slow", runs["slow_reader"])):
        assert total == READ_BYTES, (name, total)
        print(f"{name} reader: {total} bytes in {seconds:.2f} s ({total / seconds / 1e6:.1f} MB/s)")
    expected = READ_BYTES // SAMPLE_SIZE
    assert len(fast) >= 0.9 * expected and len(slow) >= 0.9 * expected, (len(fast), len(slow), expected)
    stages = (("dev_rx", "netif_rx"), ("netif_rx", "tcp_rx"), ("tcp_rx", "app_copy"), ("app_copy", "app_recv"))
    figures = {}
    for name, records in (("fast", fast), ("slow", slow)):
        for first, second in stages:
            figures[name, first, second] = values = deltas(records, first, second, device)
            print(f"{name:5s} {first:>9s} -> {second:<9s} {fmt_us(values)}")
    queue_fast = median(figures["fast", "tcp_rx", "app_copy"])
    queue_slow = median(figures["slow", "tcp_rx", "app_copy"])
    print(f"receive queue: {queue_fast / US:.1f} us -> {queue_slow / US:.1f} us ({queue_slow / queue_fast:.0f}x)")
    assert queue_slow > 2000 * US and queue_slow > 20 * queue_fast
    for first, second in (("dev_rx", "netif_rx"), ("netif_rx", "tcp_rx"), ("app_copy", "app_recv")):
        stage = median(figures["slow", first, second])
        print(f"{first} -> {second}: {stage / US:.1f} us = 1/{queue_slow / max(stage, 1):.0f} of the queue")
        assert stage < 100 * US and stage < queue_slow / 100, (first, second, stage)
