# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record layout: what a collector ships for one sampled packet (one implementation).

A *packet record* is one sampled packet seen by one host in one direction: its
flow, its sample key, and the ordered stamps its layers took. The BPF side
fills the same fields (``files/bpf/latscope.h``); the collector turns ring-buffer
events into ``PacketRecord``; the shipper writes them as rows; the analyzer
reads the rows back. Every record has a deterministic ``uid`` so that a
replayed batch never duplicates a row.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

MAX_STAMPS = 16
DIRECTIONS = ("tx", "rx")
KINDS = ("data", "ack")

# Layer boundaries, by the id the BPF programs stamp with. The name says where the
# packet is; a record's stamps are in the order the packet crossed them.
LAYERS: Dict[int, str] = {
    1: "app_send",      # TX: the application hands bytes to TCP (tcp_sendmsg)
    2: "tcp_xmit",      # TX: TCP builds and sends the segment (__tcp_transmit_skb)
    3: "ip_out",        # TX: IP output (ip_finish_output)
    4: "dev_queue",     # TX: handed to a device (__dev_queue_xmit), per device
    5: "qdisc_enq",     # TX: enqueued on the device's qdisc, per device
    6: "qdisc_deq",     # TX: dequeued from the qdisc, per device
    7: "dev_xmit",      # TX: given to the driver (dev_hard_start_xmit), per device
    10: "dev_rx",       # RX: the driver hands the packet to the stack, per device
    11: "netif_rx",     # RX: MAC layer done, into the protocol handler, per device
    12: "tcp_rx",       # RX: TCP receive (tcp_v4_rcv)
    13: "app_copy",     # RX: data copied to the application (skb_copy_datagram_iter)
    14: "app_recv",     # RX: the application's read returns
}
LAYER_IDS = {name: number for number, name in LAYERS.items()}
DEVICE_LAYERS = frozenset({"dev_queue", "qdisc_enq", "qdisc_deq", "dev_xmit", "dev_rx", "netif_rx"})

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Flow:
    """A TCP flow as the packet carries it (source = the sender of this packet)."""

    saddr: str
    daddr: str
    sport: int
    dport: int

    def reversed(self) -> "Flow":
        return Flow(self.daddr, self.saddr, self.dport, self.sport)

    def as_tuple(self) -> Tuple[str, str, int, int]:
        return (self.saddr, self.daddr, self.sport, self.dport)


@dataclass(frozen=True)
class Stamp:
    """One layer boundary a packet crossed: when (host clock, ns), where (device, namespace cookie)."""

    layer: str
    ts_ns: int
    ifindex: int = 0
    netns: int = 0


@dataclass(frozen=True)
class PacketRecord:
    """One sampled packet, one host, one direction."""

    session: str
    host: str
    direction: str
    kind: str
    flow: Flow
    key: int
    stamps: Tuple[Stamp, ...] = field(default_factory=tuple)
    seq: int = 0         # TCP sequence (data) or ack number (ack) of the packet
    length: int = 0      # payload bytes of the skb that carried the key
    flags: int = 0       # FLAG_REPEAT, FLAG_TRUNCATED

    @property
    def first_ns(self) -> int:
        return min(s.ts_ns for s in self.stamps) if self.stamps else 0

    @property
    def uid(self) -> int:
        """A 63-bit id that is the same whenever the same record is shipped again."""
        text = "|".join(str(part) for part in (
            self.session, self.host, self.direction, self.kind, *self.flow.as_tuple(), self.key, self.first_ns))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1

    def in_order(self) -> bool:
        """True if the stamps never go back in time (the precondition for per-layer latencies)."""
        times = [s.ts_ns for s in self.stamps]
        return all(a <= b for a, b in zip(times, times[1:]))


def _ipv4(field_name: str, value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise InputError(field_name, "must be an IPv4 address", value) from None


def record_from_dict(raw: Dict[str, Any], prefix: str = "record") -> PacketRecord:
    """Validate a record that came from outside (a spool file, a replayed batch)."""
    if not isinstance(raw, dict):
        raise InputError(prefix, "must be a mapping", type(raw).__name__)
    session = str(raw.get("session", ""))
    if not session or len(session) > 64:
        raise InputError(f"{prefix}.session", "must be 1-64 characters", raw.get("session"))
    host = str(raw.get("host", ""))
    if not host or len(host) > 128:
        raise InputError(f"{prefix}.host", "must be 1-128 characters", raw.get("host"))
    direction = raw.get("direction")
    if direction not in DIRECTIONS:
        raise InputError(f"{prefix}.direction", "must be tx or rx", direction)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InputError(f"{prefix}.kind", "must be data or ack", kind)
    flow_raw = raw.get("flow")
    if not isinstance(flow_raw, (list, tuple)) or len(flow_raw) != 4:
        raise InputError(f"{prefix}.flow", "must be [saddr, daddr, sport, dport]", flow_raw)
    flow = Flow(_ipv4(f"{prefix}.flow.saddr", flow_raw[0]), _ipv4(f"{prefix}.flow.daddr", flow_raw[1]),
                require_int(f"{prefix}.flow.sport", flow_raw[2], 0, 65535),
                require_int(f"{prefix}.flow.dport", flow_raw[3], 0, 65535))
    stamps_raw = raw.get("stamps")
    if not isinstance(stamps_raw, (list, tuple)) or not 1 <= len(stamps_raw) <= MAX_STAMPS:
        raise InputError(f"{prefix}.stamps", f"must be a list of 1-{MAX_STAMPS} stamps", stamps_raw)
    stamps: List[Stamp] = []
    for index, item in enumerate(stamps_raw):
        where = f"{prefix}.stamps[{index}]"
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise InputError(where, "must be [layer, ts_ns, ifindex, netns]", item)
        if not isinstance(item[0], str) or item[0] not in LAYER_IDS:
            raise InputError(f"{where}.layer", "unknown layer", item[0])
        stamps.append(Stamp(item[0], require_int(f"{where}.ts_ns", item[1], 0, _U64),
                            require_int(f"{where}.ifindex", item[2], 0, _U32),
                            require_int(f"{where}.netns", item[3], 0, _U64)))
    return PacketRecord(session=session, host=host, direction=direction, kind=kind, flow=flow,
                        key=require_int(f"{prefix}.key", raw.get("key"), 0, _U32), stamps=tuple(stamps),
                        seq=require_int(f"{prefix}.seq", raw.get("seq", 0), 0, _U32),
                        length=require_int(f"{prefix}.length", raw.get("length", 0), 0, _U32),
                        flags=require_int(f"{prefix}.flags", raw.get("flags", 0), 0, 255))


def record_to_dict(record: PacketRecord) -> Dict[str, Any]:
    """The inverse of ``record_from_dict`` (JSON-able)."""
    return {"session": record.session, "host": record.host, "direction": record.direction, "kind": record.kind,
            "flow": list(record.flow.as_tuple()), "key": record.key, "seq": record.seq, "length": record.length,
            "flags": record.flags,
            "stamps": [[s.layer, s.ts_ns, s.ifindex, s.netns] for s in record.stamps]}


# --- the ring-buffer event (must match struct ls_event in files/bpf/latscope.h) -----------------

EVENT_HEADER = struct.Struct("<IIHHIIIBBBB4x")  # saddr daddr sport dport key seq len dir kind nstamps flags pad
EVENT_STAMP = struct.Struct("<QQIB3x")           # ts netns(cookie) ifindex layer pad
FLAG_REPEAT = 1        # the key was completed before: a retransmission or a reuse of the key
FLAG_TRUNCATED = 2     # more layers than MAX_STAMPS: the later ones were dropped
# Kernel-side counters, in the order of LS_C_* in files/bpf/latscope.h.
COUNTERS = ("created", "emitted", "ringbuf_full", "map_full", "keys_truncated", "stamps_overflow",
            "repeats_skipped", "parse_failed", "xmit_unmatched")
EVENT_TRAILER = 8                                # u64 claimed: the kernel side's completion flag
EVENT_SIZE = EVENT_HEADER.size + MAX_STAMPS * EVENT_STAMP.size + EVENT_TRAILER


def _addr(value: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("<I", value)))


def decode_event(data: bytes, session: str, host: str) -> PacketRecord:
    """Turn one ring-buffer event into a record; raise InputError on a malformed event."""
    if len(data) < EVENT_SIZE:
        raise InputError("event", f"is {len(data)} bytes, expected {EVENT_SIZE}")
    saddr, daddr, sport, dport, key, seq, length, direction, kind, count, flags = EVENT_HEADER.unpack_from(data)
    if direction > 1 or kind > 1 or not 1 <= count <= MAX_STAMPS:
        raise InputError("event", "has an impossible header", (direction, kind, count))
    stamps = []
    for index in range(count):
        ts_ns, netns, ifindex, layer = EVENT_STAMP.unpack_from(data, EVENT_HEADER.size + index * EVENT_STAMP.size)
        if layer not in LAYERS:
            raise InputError(f"event.stamps[{index}].layer", "unknown layer id", layer)
        stamps.append(Stamp(LAYERS[layer], ts_ns, ifindex, netns))
    return PacketRecord(session=session, host=host, direction=DIRECTIONS[direction], kind=KINDS[kind],
                        flow=Flow(_addr(saddr), _addr(daddr), sport, dport), key=key,
                        stamps=tuple(stamps), seq=seq, length=length, flags=flags)
