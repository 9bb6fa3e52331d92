# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sampling settings, flow filters and the sample-key maths (one implementation).

A TCP packet is identified by its flow's 5-tuple and a *sample key*: a byte
position ``k * size`` (in the 32-bit sequence space) that the segment carries.
Every host computes the same key for the packet carrying that byte, whatever
TSO, GSO or GRO did to segment boundaries, so sender and receiver sample the
same bytes with no coordination. The BPF programs implement ``sample_keys``
in C; this is the reference the tests and the analyzer use.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

SEQ_SPACE = 1 << 32
DEFAULT_SIZE = 65536
DEFAULT_INTERVAL_S = 1.0
MAX_PORTS = 16
PROTOCOLS = ("tcp",)


def sample_keys(seq: int, length: int, size: int, limit: int = 4) -> Tuple[List[int], bool]:
    """The sampled byte positions inside ``[seq, seq + length)`` (mod 2**32), first ``limit`` of them.

    Returns (keys, truncated): ``truncated`` is True when the segment holds more
    sampled bytes than ``limit`` (the BPF side counts those as loop exits).
    Multiples of ``size`` are taken in the unwrapped space ``[0, 2**32)``, so a
    ``size`` that does not divide 2**32 (the seed's 72400) is consistent on all
    hosts: the range just past the wrap starts again at the multiple 0.
    """
    if length <= 0:
        return [], False
    keys: List[int] = []
    start, end = seq % SEQ_SPACE, seq % SEQ_SPACE + length
    for lo, hi in ((start, min(end, SEQ_SPACE)), (0, end - SEQ_SPACE)):
        if hi <= lo:
            continue
        first = -(-lo // size) * size
        position = first
        while position < hi:
            if len(keys) == limit:
                return keys, True
            keys.append(position % SEQ_SPACE)
            position += size
    return keys, False


def ack_key(ack: int, size: int) -> int:
    """The sampled byte a cumulative ACK ``ack`` acknowledges first: the last multiple below it."""
    position = (ack - 1) % SEQ_SPACE
    return position - position % size


@dataclass(frozen=True)
class Sampling:
    """How often and which packets are sampled (the seed's sampling_info)."""

    size: int = DEFAULT_SIZE
    ports: Tuple[int, ...] = field(default_factory=tuple)
    interval: float = DEFAULT_INTERVAL_S

    @classmethod
    def from_dict(cls, raw: Optional[Dict[str, Any]], prefix: str = "sampling") -> "Sampling":
        raw = _mapping(prefix, raw)
        unknown = sorted(set(raw) - {"size", "ports", "interval"})
        if unknown:
            raise InputError(f"{prefix}.{unknown[0]}", "unknown setting; known: interval, ports, size")
        size = require_int(f"{prefix}.size", raw.get("size", DEFAULT_SIZE), 1, SEQ_SPACE - 1)
        ports_raw = raw.get("ports") or []
        if isinstance(ports_raw, (int, str)):
            ports_raw = [ports_raw]
        if not isinstance(ports_raw, (list, tuple)):
            raise InputError(f"{prefix}.ports", "must be a list of TCP ports", ports_raw)
        if len(ports_raw) > MAX_PORTS:
            raise InputError(f"{prefix}.ports", f"at most {MAX_PORTS} ports", len(ports_raw))
        ports = tuple(sorted({require_int(f"{prefix}.ports", p, 1, 65535) for p in ports_raw}))
        interval_raw = raw.get("interval", DEFAULT_INTERVAL_S)
        try:
            interval = float(interval_raw)
        except (TypeError, ValueError):
            raise InputError(f"{prefix}.interval", "must be a number of seconds", interval_raw) from None
        if isinstance(interval_raw, bool) or not 0.05 <= interval <= 3600:
            raise InputError(f"{prefix}.interval", "must be between 0.05 and 3600 seconds", interval_raw)
        return cls(size=size, ports=ports, interval=interval)

    def as_dict(self) -> Dict[str, Any]:
        return {"size": self.size, "ports": list(self.ports), "interval": self.interval}


def _mapping(field_name: str, raw: Any) -> Dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(field_name, "must be a mapping", type(raw).__name__)
    return dict(raw)


def _address(field_name: str, value: Any) -> Optional[str]:
    if value in (None, "", "any", "*"):
        return None
    try:
        return str(ipaddress.IPv4Network(str(value), strict=False))
    except ValueError:
        raise InputError(field_name, "must be an IPv4 address or network", value) from None


def _port(field_name: str, value: Any) -> Optional[int]:
    if value in (None, "", "any", "*"):
        return None
    return require_int(field_name, value, 1, 65535)


@dataclass(frozen=True)
class FlowFilter:
    """A 5-tuple filter: what to observe. Unset fields match anything; matching is direction-free."""

    proto: str = "tcp"
    src: Optional[str] = None
    dst: Optional[str] = None
    sport: Optional[int] = None
    dport: Optional[int] = None

    @classmethod
    def from_dict(cls, raw: Optional[Dict[str, Any]], prefix: str = "flow") -> "FlowFilter":
        raw = _mapping(prefix, raw)
        unknown = sorted(set(raw) - {"proto", "src", "dst", "sport", "dport"})
        if unknown:
            raise InputError(f"{prefix}.{unknown[0]}", "unknown field; known: dport, dst, proto, sport, src")
        proto = str(raw.get("proto", "tcp")).lower()
        if proto not in PROTOCOLS:
            raise InputError(f"{prefix}.proto", f"must be one of {', '.join(PROTOCOLS)}", raw.get("proto"))
        return cls(proto=proto, src=_address(f"{prefix}.src", raw.get("src")),
                   dst=_address(f"{prefix}.dst", raw.get("dst")),
                   sport=_port(f"{prefix}.sport", raw.get("sport")),
                   dport=_port(f"{prefix}.dport", raw.get("dport")))

    def as_dict(self) -> Dict[str, Any]:
        return {"proto": self.proto, "src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport}

    def matches(self, saddr: str, daddr: str, sport: int, dport: int) -> bool:
        """True if the packet (either direction of the flow) is selected."""
        forward = self._one_way(saddr, daddr, sport, dport)
        reply_src, reply_dst, reply_sport, reply_dport = daddr, saddr, dport, sport
        return forward or self._one_way(reply_src, reply_dst, reply_sport, reply_dport)

    def _one_way(self, saddr: str, daddr: str, sport: int, dport: int) -> bool:
        if self.src and ipaddress.IPv4Address(saddr) not in ipaddress.IPv4Network(self.src):
            return False
        if self.dst and ipaddress.IPv4Address(daddr) not in ipaddress.IPv4Network(self.dst):
            return False
        if self.sport is not None and sport != self.sport:
            return False
        return self.dport is None or dport == self.dport
