"""Load, configure, attach and drain the packet observer (files/bpf/observer.bpf.c).

The program is compiled once per daemon (BCC, struct offsets from BTF as -D
macros), attached when a session starts and detached when it stops. Every
attachment is tied to a file descriptor of this process - raw tracepoints,
and BPF links for the cgroup programs - so when the process dies, even by
SIGKILL, the kernel detaches everything: nothing of ours outlives it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.btf import Btf, offsets_to_macros
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import (
    ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_SOCK_OPS, Bpf, Syscalls,
    wait_for_runs_in_flight)
from ansible_collections.latscope.latscope.plugins.module_utils.records import (
    COUNTERS, EVENT_SIZE, PacketRecord, decode_event)
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling

BPF_DIR = Path(__file__).resolve().parents[2] / "files" / "bpf"
SOURCE = "observer.bpf.c"

# Every kernel field the C reads, resolved from the running kernel's BTF.
OFFSETS = {
    "OFF_SKB_DEV": "sk_buff.dev",
    "OFF_SKB_SK": "sk_buff.sk",
    "OFF_SKB_DATA": "sk_buff.data",
    "OFF_SKB_HEAD": "sk_buff.head",
    "OFF_SKB_LEN": "sk_buff.len",
    "OFF_SKB_NETWORK_HEADER": "sk_buff.network_header",
    "OFF_DEV_NET": "net_device.nd_net.net",
    "OFF_DEV_IFINDEX": "net_device.ifindex",
    "OFF_NET_COOKIE": "net.net_cookie",
    "OFF_SK_FAMILY": "sock.__sk_common.skc_family",
    "OFF_SK_RCV_SADDR": "sock.__sk_common.skc_rcv_saddr",
    "OFF_SK_DADDR": "sock.__sk_common.skc_daddr",
    "OFF_SK_NUM": "sock.__sk_common.skc_num",
    "OFF_SK_DPORT": "sock.__sk_common.skc_dport",
    "OFF_SK_NET": "sock.__sk_common.skc_net.net",
    "OFF_SK_PROTOCOL": "sock.sk_protocol",
    "OFF_TP_WRITE_SEQ": "tcp_sock.write_seq",
    "OFF_TP_COPIED_SEQ": "tcp_sock.copied_seq",
    "OFF_MSG_ITER_COUNT": "msghdr.msg_iter.count",
}

# (tracepoint, function): the raw tracepoints of the `tracepoint` profile.
RAW_TRACEPOINTS = (
    ("tcp_sendmsg_locked", "ls_tcp_sendmsg_locked"),
    ("net_dev_queue", "ls_net_dev_queue"),
    ("qdisc_enqueue", "ls_qdisc_enqueue"),
    ("qdisc_dequeue", "ls_qdisc_dequeue"),
    ("net_dev_start_xmit", "ls_net_dev_start_xmit"),
    ("netif_rx_entry", "ls_dev_rx"),
    ("napi_gro_receive_entry", "ls_dev_rx"),
    ("netif_receive_skb_entry", "ls_dev_rx"),
    ("netif_receive_skb", "ls_netif_receive_skb"),
    ("skb_copy_datagram_iovec", "ls_skb_copy_datagram_iovec"),
    ("sock_recv_length", "ls_sock_recv_length"),
)
CGROUP_PROGRAMS = (
    ("ls_sock_ops", ATTACH_CGROUP_SOCK_OPS),
    ("ls_cgroup_egress", ATTACH_CGROUP_INET_EGRESS),
    ("ls_cgroup_ingress", ATTACH_CGROUP_INET_INGRESS),
)
DEFAULT_REPEAT_WINDOW_NS = 50_000_000


@dataclass(frozen=True)
class ObserverLimits:
    """Map sizes: set from config, checked, and handed to the C as macros."""

    max_entries: int = 65536
    ringbuf_pages: int = 256
    max_keys: int = 4

    def cflags(self) -> list[str]:
        if self.max_entries < 64 or self.max_entries > 1 << 22:
            raise InputError("observer.max_entries", "must be between 64 and 4194304", self.max_entries)
        if self.ringbuf_pages < 1 or self.ringbuf_pages & (self.ringbuf_pages - 1):
            raise InputError("observer.ringbuf_pages", "must be a power of two", self.ringbuf_pages)
        if not 1 <= self.max_keys <= 16:
            raise InputError("observer.max_keys", "must be between 1 and 16", self.max_keys)
        return [f"-DLS_MAX_ENTRIES={self.max_entries}", f"-DLS_RINGBUF_PAGES={self.ringbuf_pages}",
                f"-DLS_MAX_KEYS={self.max_keys}"]


@dataclass
class Scope:
    """What this collector observes: namespace cookies, and the uplinks where TX records end."""

    namespaces: list[int]
    uplinks: list[tuple[int, int]]  # (netns cookie, ifindex)


def detach_programs(bpf, links: list[int], raw_attached: list[str], syscalls: Syscalls) -> None:
    """Close ``links``, detach the ``raw_attached`` tracepoints of ``bpf`` (emptying both lists), then wait for
    the program runs already under way (``wait_for_runs_in_flight``): counters and ring buffers read next are final."""
    attached = bool(links or raw_attached)
    for link in links:
        os.close(link)
    links.clear()
    for tracepoint in raw_attached:
        bpf.detach_raw_tracepoint(tp=tracepoint)
    raw_attached.clear()
    if attached:
        wait_for_runs_in_flight(syscalls)


def filter_net(value: str | None) -> tuple[int, int]:
    """(network, mask) in network byte order as the C compares them; (0, 0) for any."""
    if not value:
        return 0, 0
    network = ipaddress.IPv4Network(value)
    return _as_loaded(network.network_address), _as_loaded(network.netmask)


def _as_loaded(address: ipaddress.IPv4Address) -> int:
    """The u32 the BPF side compares: the address's network-order bytes read as a little-endian int."""
    return int.from_bytes(int(address).to_bytes(4, "big"), "little")


def compile_source(limits: ObserverLimits, btf: Btf | None = None) -> tuple[str, list[str]]:
    """The C text and the cflags it compiles with (``latscope observer --print-source`` shows them)."""
    text = (BPF_DIR / SOURCE).read_text()
    cflags = [f"-I{BPF_DIR}"] + offsets_to_macros(OFFSETS, btf) + limits.cflags()
    return text, cflags


class Observer:
    """One compiled observer; attach/detach per session; drain records."""

    def __init__(self, limits: ObserverLimits | None = None, btf: Btf | None = None) -> None:
        self.limits = limits or ObserverLimits()
        self.mounts = kernel_mounts.ensure_kernel_mounts()
        headers.prepare_bcc()
        from bcc import BPF  # noqa: PLC0415 - only after the header tree and tracefs are ready

        self._bpf_class = BPF
        text, cflags = compile_source(self.limits, btf)
        started = time.monotonic()
        self.bpf = BPF(text=text, cflags=cflags)
        self.compile_seconds = time.monotonic() - started
        self._syscalls = Bpf(Syscalls())
        self._links: list[int] = []
        self._raw_attached: list[str] = []
        self._on_record: Callable[[PacketRecord], None] | None = None
        self._session = ""
        self._host = ""
        self.decode_errors = 0
        self.bpf["ls_events"].open_ring_buffer(self._ring_callback)

    # --- configuration -----------------------------------------------------------------------

    def configure(self, sampling: Sampling, flow: FlowFilter, scope: Scope,
                  repeat_window_ns: int = DEFAULT_REPEAT_WINDOW_NS) -> None:
        """Write the session's settings into the maps (takes effect immediately)."""
        scope_map, uplink_map, port_map = self.bpf["ls_scope"], self.bpf["ls_uplinks"], self.bpf["ls_ports"]
        for table in (scope_map, uplink_map, port_map):
            table.clear()
        one = ctypes.c_uint8(1)
        for cookie in scope.namespaces:
            scope_map[ctypes.c_uint64(cookie)] = one
        for cookie, ifindex in scope.uplinks:
            key = uplink_map.Key()
            key.netns, key.ifindex = cookie, ifindex
            uplink_map[key] = one
        for port in sampling.ports:
            port_map[ctypes.c_uint16(port)] = one
        self._write_config(sampling, flow, repeat_window_ns, enabled=1)

    def _write_config(self, sampling: Sampling, flow: FlowFilter, repeat_window_ns: int, enabled: int) -> None:
        table = self.bpf["ls_config"]
        cfg = table.Leaf()
        cfg.enabled = enabled
        cfg.sample_size = sampling.size
        cfg.src_net, cfg.src_mask = filter_net(flow.src)
        cfg.dst_net, cfg.dst_mask = filter_net(flow.dst)
        cfg.sport = flow.sport or 0
        cfg.dport = flow.dport or 0
        cfg.any_port = 0 if sampling.ports else 1
        cfg.repeat_window_ns = repeat_window_ns
        table[ctypes.c_int(0)] = cfg

    def disable(self) -> None:
        table = self.bpf["ls_config"]
        cfg = table[ctypes.c_int(0)]
        cfg.enabled = 0
        table[ctypes.c_int(0)] = cfg

    # --- attachment ----------------------------------------------------------------------------

    def attach(self) -> None:
        """Attach every hook; on any failure detach what was attached and raise."""
        try:
            for tracepoint, fn_name in RAW_TRACEPOINTS:
                if not self._bpf_class.support_raw_tracepoint() or not self._tracepoint_exists(tracepoint):
                    continue
                self.bpf.attach_raw_tracepoint(tp=tracepoint, fn_name=fn_name)
                self._raw_attached.append(tracepoint)
            cgroup_fd = os.open(self.mounts.cgroup2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for fn_name, attach_type in CGROUP_PROGRAMS:
                    prog_type = self._bpf_class.SOCK_OPS if fn_name == "ls_sock_ops" else self._bpf_class.CGROUP_SKB
                    fn = self.bpf.load_func(fn_name, prog_type)
                    self._links.append(self._syscalls.link_create(fn.fd, cgroup_fd, attach_type))
            finally:
                os.close(cgroup_fd)
        except Exception:
            self.detach()
            raise

    def _tracepoint_exists(self, name: str) -> bool:
        for category in ("tcp", "net", "qdisc", "skb", "sock"):
            if (self.mounts.tracefs / "events" / category / name).is_dir():
                return True
        return False

    @property
    def attached(self) -> list[str]:
        return list(self._raw_attached) + [program[0] for program in CGROUP_PROGRAMS[:len(self._links)]]

    def detach(self) -> None:
        """Detach every program and wait for the runs already under way: after this, nothing changes."""
        detach_programs(self.bpf, self._links, self._raw_attached, self._syscalls.sys)

    # --- draining ------------------------------------------------------------------------------

    def start(self, session: str, host: str, on_record: Callable[[PacketRecord], None]) -> None:
        self._session, self._host, self._on_record = session, host, on_record

    def _ring_callback(self, ctx: int, data: int, size: int) -> None:
        del ctx
        raw = ctypes.string_at(data, min(size, EVENT_SIZE))
        try:
            record = decode_event(raw, self._session or "-", self._host or "-")
        except InputError:
            self.decode_errors += 1
            return
        if self._on_record is not None:
            self._on_record(record)

    def poll(self, timeout_ms: int = 100) -> None:
        """Hand every complete record waiting in the ring buffer to ``on_record``."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def counters(self) -> dict[str, int]:
        table = self.bpf["ls_counters"]
        values = {name: 0 for name in COUNTERS}
        for index, name in enumerate(COUNTERS):
            values[name] = sum(table[ctypes.c_int(index)])
        values["decode_errors"] = self.decode_errors
        values["live_entries"] = len(self.bpf["ls_entries"])
        return values

    def sweep(self, max_age_ns: int) -> int:
        """Delete entries older than ``max_age_ns`` (incomplete for good); return how many."""
        now = time.monotonic_ns()
        table = self.bpf["ls_entries"]
        stale = [key for key, value in table.items()
                 if value.nstamps and now - value.stamps[0].ts > max_age_ns]
        for key in stale:
            try:
                del table[key]
            except KeyError:
                pass
        return len(stale)

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()


def host_scope(namespace_paths: list[str], uplink_names: list[str]) -> Scope:
    """This process's namespace plus ``namespace_paths``; uplinks are devices of this namespace."""
    from latscope.collector import netns  # noqa: PLC0415

    own = netns.describe_own()
    cookies = [own.cookie]
    for path in namespace_paths:
        cookies.append(netns.describe(path).cookie)
    uplinks = []
    for name in uplink_names:
        if name not in own.interfaces:
            raise InputError("observer.interfaces", f"no interface {name} in this host's namespace "
                             f"(it has {', '.join(sorted(own.interfaces))})", name)
        uplinks.append((own.cookie, own.interfaces[name]))
    return Scope(namespaces=cookies, uplinks=uplinks)


__all__ = ["Observer", "ObserverLimits", "Scope", "compile_source", "filter_net", "host_scope"]
