"""Load, configure, attach and read the flow-metrics program (files/bpf/flowmetrics.bpf.c).

The program keeps, per selected TCP flow, the 16 flow metrics of the MicroBPF
seed in a BPF hash (plugins/module_utils/metrics.py names them; docs/metrics.md
defines them). The collector reads the whole map every ``sampling.interval``:
cumulative counters are read, never reset; the per-interval maximum of the
application's write queue lives in two slots chosen by an interval number
(``epoch``) the collector bumps before each read, so the kernel side starts a
new maximum while the finished one is read. A flow that closed is reported
once more and removed when it has been closed for longer than an interval.

As with the observer, every attachment is tied to a file descriptor of this
process (raw tracepoints, and a BPF link for sock_ops), so the kernel detaches
everything when the process dies, however it dies.

``python -m latscope.collector.flowmetrics --dport 5201 --interval 0.5 --seconds N``
runs it in the foreground: rows as JSON lines on stdout, ``attached`` on stderr
once the hooks are in place, the kernel-side counters on stderr at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.btf import Btf, BtfFieldError, offsets_to_macros
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import (
    ATTACH_CGROUP_SOCK_OPS, BPF_ATTR_SIZE, Bpf, Syscalls)
from ansible_collections.latscope.latscope.plugins.module_utils.metrics import COUNTERS, FlowMetrics
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling
from latscope.collector.observer import detach_programs, filter_net, host_scope

BPF_DIR = Path(__file__).resolve().parents[2] / "files" / "bpf"
SOURCE = "flowmetrics.bpf.c"

# Every kernel field the C reads, resolved from the running kernel's BTF.
OFFSETS = {
    "OFF_SOCK_OPS_SK": "bpf_sock_ops_kern.sk",
    "OFF_SKB_CB": "sk_buff.cb",
    "OFF_TCB_GSO_SEGS": "tcp_skb_cb.tcp_gso_segs",
    "OFF_NET_COOKIE": "net.net_cookie",
    "OFF_SK_FAMILY": "sock.__sk_common.skc_family",
    "OFF_SK_STATE": "sock.__sk_common.skc_state",
    "OFF_SK_RCV_SADDR": "sock.__sk_common.skc_rcv_saddr",
    "OFF_SK_DADDR": "sock.__sk_common.skc_daddr",
    "OFF_SK_V6_DADDR": "sock.__sk_common.skc_v6_daddr",
    "OFF_INET_SPORT": "inet_sock.inet_sport",
    "OFF_SK_DPORT": "sock.__sk_common.skc_dport",
    "OFF_SK_NET": "sock.__sk_common.skc_net.net",
    "OFF_SK_PROTOCOL": "sock.sk_protocol",
    "OFF_TP_SND_CWND": "tcp_sock.snd_cwnd",
    "OFF_TP_MSS_CACHE": "tcp_sock.mss_cache",
    "OFF_TP_SND_WND": "tcp_sock.snd_wnd",
    "OFF_TP_PACKETS_OUT": "tcp_sock.packets_out",
    "OFF_TP_SACKED_OUT": "tcp_sock.sacked_out",
    "OFF_TP_LOST_OUT": "tcp_sock.lost_out",
    "OFF_TP_RETRANS_OUT": "tcp_sock.retrans_out",
    "OFF_TP_TOTAL_RETRANS": "tcp_sock.total_retrans",
    "OFF_TP_WRITE_SEQ": "tcp_sock.write_seq",
    "OFF_TP_SND_UNA": "tcp_sock.snd_una",
    "OFF_TP_BYTES_SENT": "tcp_sock.bytes_sent",
    "OFF_TP_BYTES_RECEIVED": "tcp_sock.bytes_received",
    "OFF_TP_BYTES_ACKED": "tcp_sock.bytes_acked",
}
# Bitfields: NAME_BYTE (offset of the 32-bit word read), NAME_SHIFT and NAME_MASK.
BITFIELDS = {
    "CA_STATE": "tcp_sock.inet_conn.icsk_ca_state",
}

# (tracepoint, function)
RAW_TRACEPOINTS = (
    ("tcp_probe", "fm_tcp_probe"),
    ("tcp_retransmit_skb", "fm_tcp_retransmit_skb"),
    ("sock_send_length", "fm_sock_send_length"),
    ("sock_recv_length", "fm_sock_recv_length"),
    ("inet_sock_set_state", "fm_inet_sock_set_state"),
)
SOCK_OPS_PROGRAM = "fm_sock_ops"
REFRESH_PROGRAM = "fm_refresh"   # run through BPF_PROG_TEST_RUN before each read, never attached
BPF_PROG_TEST_RUN = 10
TEST_RUN_LAYOUT = "<IIIIQQIIIIQQ"   # prog_fd retval data_size_in/out data_in/out repeat duration ctx_size_in/out ctx_in/out
DEFAULT_IDLE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FlowMetricsLimits:
    """The flow map's size: set from config, checked, and handed to the C as a macro."""

    max_flows: int = 16384

    def cflags(self) -> list[str]:
        if isinstance(self.max_flows, bool) or not isinstance(self.max_flows, int) \
                or not 64 <= self.max_flows <= 1 << 20:
            raise InputError("flowmetrics.max_flows", "must be an integer between 64 and 1048576", self.max_flows)
        return [f"-DFM_MAX_FLOWS={self.max_flows}"]


def bitfield_macros(spec: dict[str, str], btf: Btf) -> list[str]:
    """``{"NAME": "struct.path"}`` -> ``-DNAME_BYTE=, -DNAME_SHIFT=, -DNAME_MASK=`` (little-endian bit order)."""
    flags: list[str] = []
    for name, path in spec.items():
        found = btf.field(path, allow_bitfield=True)
        size = found.bit_size or found.size * 8
        byte, shift = found.bit_offset // 8, found.bit_offset % 8
        if shift + size > 32:
            raise BtfFieldError(f"{name}: field '{path}' spans more than a 32-bit word", found.struct_name, path)
        flags += [f"-D{name}_BYTE={byte}", f"-D{name}_SHIFT={shift}", f"-D{name}_MASK={(1 << size) - 1}"]
    return flags


def tracepoint_format(tracefs: Path, name: str) -> str:
    """The format file of tracepoint ``name`` (any category); raise if this kernel lacks it."""
    found = sorted((tracefs / "events").glob(f"*/{name}/format"))
    if not found:
        raise RuntimeError(f"this kernel has no tracepoint {name}: the flow metrics need "
                           + ", ".join(entry[0] for entry in RAW_TRACEPOINTS))
    return found[0].read_text()


def compile_source(limits: FlowMetricsLimits, tracefs: Path, btf: Btf | None = None) -> tuple[str, list[str]]:
    """The C text and the cflags it compiles with (checks that every tracepoint exists)."""
    btf = btf or Btf.load()
    formats = {entry[0]: tracepoint_format(tracefs, entry[0]) for entry in RAW_TRACEPOINTS}
    has_err = int("field:int err;" in formats["tcp_retransmit_skb"])
    text = (BPF_DIR / SOURCE).read_text()
    cflags = [f"-I{BPF_DIR}", f"-DFM_RETRANSMIT_HAS_ERR={has_err}"]
    cflags += offsets_to_macros(OFFSETS, btf) + bitfield_macros(BITFIELDS, btf) + limits.cflags()
    return text, cflags


@dataclass
class _Settings:
    sampling: Sampling = field(default_factory=Sampling)
    flow: FlowFilter = field(default_factory=FlowFilter)
    epoch: int = 1
    enabled: int = 0


class FlowMetricsCollector:
    """One compiled flow-metrics program; attach/detach per session; a snapshot every interval."""

    def __init__(self, limits: FlowMetricsLimits | None = None, btf: Btf | None = None,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.limits = limits or FlowMetricsLimits()
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.mounts = kernel_mounts.ensure_kernel_mounts()
        headers.prepare_bcc()
        from bcc import BPF  # noqa: PLC0415 - only after the header tree and tracefs are ready

        self._bpf_class = BPF
        text, cflags = compile_source(self.limits, self.mounts.tracefs, btf)
        started = time.monotonic()
        self.bpf = BPF(text=text, cflags=cflags)
        self.compile_seconds = time.monotonic() - started
        self._sys = Syscalls()
        self._syscalls = Bpf(self._sys)
        self._refresh_fd = self.bpf.load_func(REFRESH_PROGRAM, BPF.RAW_TRACEPOINT).fd
        self._links: list[int] = []
        self._raw_attached: list[str] = []
        self._settings = _Settings()
        self._reported_closed: set[tuple[Any, ...]] = set()
        self.removed_closed = 0
        self.removed_idle = 0
        self.refresh_skipped = 0
        self.refresh_failed = 0

    # --- configuration -----------------------------------------------------------------------

    def configure(self, sampling: Sampling, flow: FlowFilter, namespaces: Sequence[int]) -> None:
        """Write the session's settings into the maps (takes effect immediately)."""
        scope_map, port_map = self.bpf["fm_scope"], self.bpf["fm_ports"]
        scope_map.clear()
        port_map.clear()
        one = ctypes.c_uint8(1)
        for cookie in namespaces:
            scope_map[ctypes.c_uint64(cookie)] = one
        for port in sampling.ports:
            port_map[ctypes.c_uint16(port)] = one
        self._settings.sampling, self._settings.flow, self._settings.enabled = sampling, flow, 1
        self._write_config()

    def _write_config(self) -> None:
        settings = self._settings
        table = self.bpf["fm_config"]
        cfg = table.Leaf()
        cfg.enabled = settings.enabled
        cfg.epoch = settings.epoch & 0xFFFFFFFF
        cfg.src_net, cfg.src_mask = filter_net(settings.flow.src)
        cfg.dst_net, cfg.dst_mask = filter_net(settings.flow.dst)
        cfg.sport = settings.flow.sport or 0
        cfg.dport = settings.flow.dport or 0
        cfg.any_port = 0 if settings.sampling.ports else 1
        table[ctypes.c_int(0)] = cfg

    def disable(self) -> None:
        self._settings.enabled = 0
        self._write_config()

    # --- attachment ----------------------------------------------------------------------------

    def attach(self) -> None:
        """Attach every hook; on any failure detach what was attached and raise."""
        try:
            for tracepoint, fn_name in RAW_TRACEPOINTS:
                self.bpf.attach_raw_tracepoint(tp=tracepoint, fn_name=fn_name)
                self._raw_attached.append(tracepoint)
            fn = self.bpf.load_func(SOCK_OPS_PROGRAM, self._bpf_class.SOCK_OPS)
            cgroup_fd = os.open(self.mounts.cgroup2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._links.append(self._syscalls.link_create(fn.fd, cgroup_fd, ATTACH_CGROUP_SOCK_OPS))
            finally:
                os.close(cgroup_fd)
        except Exception:
            self.detach()
            raise

    @property
    def attached(self) -> list[str]:
        return list(self._raw_attached) + ([SOCK_OPS_PROGRAM] if self._links else [])

    def detach(self) -> None:
        """Detach every program and wait for the runs already under way: after this, nothing changes."""
        detach_programs(self.bpf, self._links, self._raw_attached, self._sys)

    # --- reading -------------------------------------------------------------------------------

    def snapshot(self, session: str, host: str, interval_s: float | None = None) -> list[FlowMetrics]:
        """One row per flow in the map, read now; closed flows once, then removed after an interval."""
        interval_ns = int((interval_s if interval_s is not None else self._settings.sampling.interval) * 1e9)
        epoch = self._settings.epoch
        if self._settings.enabled:
            self._settings.epoch = epoch + 1   # the kernel side starts the next interval's maximum
            self._write_config()
        now = time.monotonic_ns()
        table = self.bpf["fm_flows"]
        rows: list[FlowMetrics] = []
        remove: list[tuple[Any, int]] = []
        closed: set[tuple[Any, ...]] = set()
        for key, value in self._refreshed(table):
            ident = (key.netns, key.saddr, key.daddr, key.sport, key.dport, value.closed_ns)
            if value.closed_ns:
                closed.add(ident)
                if ident in self._reported_closed:
                    if now - value.closed_ns > interval_ns:
                        remove.append((key, value.closed_ns))
                    continue
                self._reported_closed.add(ident)
            elif value.updated_ns and now - value.updated_ns > self.idle_timeout_ns:
                remove.append((key, 0))
                continue
            rows.append(flow_row(key, value, epoch, now, session, host))
        self._reported_closed &= closed      # forget flows that left the map some other way
        for key, closed_ns in remove:
            self._remove(table, key, closed_ns)
        return rows

    def _refreshed(self, table: Any) -> list[tuple[Any, Any]]:
        """Every entry, open flows re-read from their socket first (fm_refresh)."""
        entries = []
        for key in list(table.keys()):
            try:
                value = table[key]
                if value.sk and not value.closed_ns and self._refresh(value.sk):
                    value = table[key]
            except KeyError:   # removed meanwhile
                continue
            entries.append((key, value))
        return entries

    def _refresh(self, sk: int) -> bool:
        """Run fm_refresh with args[0] = sk; True if it refreshed the flow."""
        args = (ctypes.c_uint64 * 1)(sk)
        attr = ctypes.create_string_buffer(BPF_ATTR_SIZE)
        struct.pack_into(TEST_RUN_LAYOUT, attr, 0, self._refresh_fd, 0, 0, 0, 0, 0, 0, 0, ctypes.sizeof(args), 0,
                         ctypes.addressof(args), 0)
        try:
            self._sys.bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN " + REFRESH_PROGRAM)
        except OSError:
            self.refresh_failed += 1
            return False
        if struct.unpack_from("<I", attr, 4)[0] != 1:
            self.refresh_skipped += 1
            return False
        return True

    def _remove(self, table: Any, key: Any, closed_ns: int) -> None:
        try:
            if table[key].closed_ns != closed_ns:   # the ports were reused for a new connection meanwhile
                return
            del table[key]
        except KeyError:
            return
        if closed_ns:
            self.removed_closed += 1
            self._reported_closed.discard((key.netns, key.saddr, key.daddr, key.sport, key.dport, closed_ns))
        else:
            self.removed_idle += 1

    def counters(self) -> dict[str, int]:
        table = self.bpf["fm_counters"]
        values = {name: sum(table[ctypes.c_int(index)]) for index, name in enumerate(COUNTERS)}
        values["removed_closed"] = self.removed_closed
        values["removed_idle"] = self.removed_idle
        values["refresh_skipped"] = self.refresh_skipped
        values["refresh_failed"] = self.refresh_failed
        values["live_flows"] = len(self.bpf["fm_flows"])
        return values

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()


def _address(value: int) -> str:
    """A network-order u32 as loaded on this (little-endian) host, as dotted quad."""
    return ".".join(str(b) for b in int(value).to_bytes(4, "little"))


def flow_row(key: Any, value: Any, epoch: int, now_ns: int, session: str, host: str) -> FlowMetrics:
    """The row of one map entry read at ``now_ns``, at the end of interval ``epoch``."""
    slot = epoch & 1
    cur = value.app_wqueue
    peak = max(value.max_wqueue[slot], cur) if value.max_epoch[slot] == (epoch & 0xFFFFFFFF) else cur
    start = value.established_ns or value.first_ns
    end = value.closed_ns or now_ns
    return FlowMetrics(
        session=session, host=host, saddr=_address(key.saddr), daddr=_address(key.daddr),
        sport=key.sport, dport=key.dport, at_ns=now_ns,
        flight_size=value.flight_size, rwnd=value.rwnd, cwnd=value.cwnd, mss=value.mss,
        retrans_packets=value.total_retrans, bytes_sent=value.bytes_sent, bytes_received=value.bytes_received,
        fast_retrans=value.fast_retrans, timeouts=value.timeouts, cur_app_wqueue=cur, max_app_wqueue=peak,
        sample_rtt_us=value.sample_rtt_us, sum_rtt_us=value.sum_rtt_us, read_bytes=value.read_bytes,
        write_bytes=value.write_bytes, duration_us=max(0, end - start) // 1000,
        rtt_samples=value.rtt_samples, bytes_acked=value.bytes_acked, state=value.state)


# --- foreground runner ---------------------------------------------------------------------------

def run(sampling: Sampling, flow: FlowFilter, netns_paths: list[str], seconds: float, host: str, session: str,
        limits: FlowMetricsLimits, out: TextIO = sys.stdout) -> int:
    """Snapshots every ``sampling.interval`` as JSON lines until ``seconds`` pass or SIGTERM/SIGINT."""
    namespaces = host_scope(netns_paths, []).namespaces
    collector = FlowMetricsCollector(limits)
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda *args: stopping.append(1)) for sig in (signal.SIGTERM, signal.SIGINT)}
    written = 0

    def emit(rows: list[FlowMetrics]) -> None:
        nonlocal written
        for row in rows:
            out.write(json.dumps(row.as_dict(), separators=(",", ":")) + "\n")
        written += len(rows)
        out.flush()

    try:
        collector.configure(sampling, flow, namespaces)
        collector.attach()
        print(f"attached {len(collector.attached)} hooks (compiled in {collector.compile_seconds:.1f}s)",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        deadline = started + seconds if seconds > 0 else float("inf")
        tick = started + sampling.interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(max(0.0, min(0.05, tick - time.monotonic(), deadline - time.monotonic())))
            if time.monotonic() >= tick:
                emit(collector.snapshot(session, host))
                tick += sampling.interval
        collector.detach()   # final values: nothing changes them any more
        emit(collector.snapshot(session, host))
        counters = collector.counters()
        counters["written"] = written
        print(json.dumps({"counters": counters}), file=sys.stderr, flush=True)
    finally:
        collector.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m latscope.collector.flowmetrics",
                                     description="Per-flow TCP metrics every interval, as JSON lines.")
    parser.add_argument("--port", action="append", help="sampling.ports (repeat); default: every port")
    parser.add_argument("--src", help="flow filter: source address or network")
    parser.add_argument("--dst", help="flow filter: destination address or network")
    parser.add_argument("--sport", help="flow filter: source port")
    parser.add_argument("--dport", help="flow filter: destination port")
    parser.add_argument("--interval", default="1.0", help="sampling.interval in seconds (default 1)")
    parser.add_argument("--netns", action="append", help="also observe this namespace (e.g. /run/netns/NAME)")
    parser.add_argument("--seconds", default="0", help="stop after this long (default: until SIGINT/SIGTERM)")
    parser.add_argument("--max-flows", default="16384", help="size of the flow map (default 16384)")
    parser.add_argument("--host", default="local", help="host name written into the rows")
    parser.add_argument("--session", default="flowmetrics", help="session id written into the rows")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sampling = Sampling.from_dict({"ports": args.port or [], "interval": args.interval})
        flow = FlowFilter.from_dict({name: value for name, value in (
            ("src", args.src), ("dst", args.dst), ("sport", args.sport), ("dport", args.dport)) if value})
        try:
            seconds = float(args.seconds)
        except ValueError:
            raise InputError("seconds", "must be a number", args.seconds) from None
        if not 0 <= seconds < 1e9:
            raise InputError("seconds", "must be 0 (no limit) or a positive number", args.seconds)
        limits = FlowMetricsLimits(require_int("max_flows", args.max_flows, 64, 1 << 20))
        if not args.host or not args.session:
            raise InputError("host" if not args.host else "session", "must not be empty")
        return run(sampling, flow, args.netns or [], seconds, args.host, args.session, limits)
    except InputError as exc:
        print(f"latscope flowmetrics: {exc}", file=sys.stderr)
        return 2


__all__ = ["FlowMetricsCollector", "FlowMetricsLimits", "compile_source", "flow_row", "main"]

if __name__ == "__main__":
    sys.exit(main())
