# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flow metrics: names, units and the row layout (one implementation).

Every ``sampling.interval`` a collector reads, for every selected TCP flow of
the namespaces it observes, the 16 flow metrics of the MicroBPF seed from the
kernel (``files/bpf/flowmetrics.bpf.c``) and ships one row: a time series per
flow. ``METRICS`` defines each metric once - its column in the ``flow_metrics``
table, its unit and where the kernel side takes it from (``docs/metrics.md``
says how each compares with ``ss -tin``). ``FlowMetrics`` is the row: the flow
as the host's socket sees it (source = this host), when it was read, and the
values. ``from_dict`` validates a row that came from outside, naming the field
of any bad value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Metric:
    """One metric: the seed's name, its column, its unit, its kernel source."""

    seed_name: str
    column: str
    unit: str
    source: str
    kind: str          # "gauge" (the socket's state when read) or "counter" (cumulative since the flow started)


METRICS: Tuple[Metric, ...] = (
    Metric("FlightSize", "flight_size", "packets",
           "tcp_sock packets_out - sacked_out - lost_out + retrans_out (tcp_packets_in_flight)", "gauge"),
    Metric("RWND", "rwnd", "bytes", "tcp_sock.snd_wnd: the window the peer advertised, scaled", "gauge"),
    Metric("CWND", "cwnd", "packets", "tcp_sock.snd_cwnd", "gauge"),
    Metric("MSS", "mss", "bytes", "tcp_sock.mss_cache", "gauge"),
    Metric("RePackets", "retrans_packets", "segments", "tcp_sock.total_retrans", "counter"),
    Metric("BSent", "bytes_sent", "bytes", "tcp_sock.bytes_sent (retransmitted bytes included)", "counter"),
    Metric("BReceived", "bytes_received", "bytes", "tcp_sock.bytes_received (in-order payload)", "counter"),
    Metric("fastRetrans", "fast_retrans", "segments",
           "segments retransmitted while icsk_ca_state is Disorder or Recovery (raw_tp tcp_retransmit_skb)",
           "counter"),
    Metric("Timeout", "timeouts", "events", "retransmission timer expirations (sock_ops RTO_CB)", "counter"),
    Metric("CurAppWQueue", "cur_app_wqueue", "bytes",
           "tcp_sock write_seq - snd_una: written by the application, not yet acknowledged", "gauge"),
    Metric("MaxAppWQueue", "max_app_wqueue", "bytes", "the maximum of CurAppWQueue over the interval", "gauge"),
    Metric("SampleRTT", "sample_rtt_us", "us", "the latest RTT sample (sock_ops RTT_CB args[0], mrtt)", "gauge"),
    Metric("SumRTT", "sum_rtt_us", "us", "the sum of every RTT sample (their number: rtt_samples)", "counter"),
    Metric("ReadByte", "read_bytes", "bytes", "bytes recv() returned to the application (sock_recv_length)",
           "counter"),
    Metric("WriteByte", "write_bytes", "bytes", "bytes send() accepted from the application (sock_send_length)",
           "counter"),
    Metric("Duration", "duration_us", "us",
           "since the flow reached ESTABLISHED (or was first seen), until now or until it closed", "gauge"),
)
METRIC_COLUMNS: Tuple[str, ...] = tuple(m.column for m in METRICS)
METRIC_BY_COLUMN: Dict[str, Metric] = {m.column: m for m in METRICS}

# Values a row carries beyond the 16: rtt_samples and bytes_acked are columns of flow_metrics since
# schema migration 2; the state only decides when a flow's series ends and is not stored.
EXTRAS: Tuple[Metric, ...] = (
    Metric("RTTSamples", "rtt_samples", "samples", "the number of RTT samples summed in SumRTT (RTT_CB calls)",
           "counter"),
    Metric("BAcked", "bytes_acked", "bytes", "tcp_sock.bytes_acked", "counter"),
    Metric("State", "state", "TCP state",
           "sock.__sk_common.skc_state when read: 1 ESTABLISHED ... 7 CLOSE (the flow's last row)", "gauge"),
)
EXTRA_COLUMNS: Tuple[str, ...] = tuple(m.column for m in EXTRAS)

# Kernel-side counters of the flow-metrics program, in the order of FM_C_* in files/bpf/flowmetrics.h.
COUNTERS: Tuple[str, ...] = ("flows_created", "map_full", "read_failed", "lookup_failed", "cb_flags_failed",
                             "flows_closed")

_FLOW_FIELDS = ("saddr", "daddr", "sport", "dport")


@dataclass(frozen=True)
class FlowMetrics:
    """One row: the metrics of one flow, read by one host at ``at_ns`` (its CLOCK_MONOTONIC, ns)."""

    session: str
    host: str
    saddr: str           # this host's end of the flow
    daddr: str
    sport: int
    dport: int
    at_ns: int
    flight_size: int
    rwnd: int
    cwnd: int
    mss: int
    retrans_packets: int
    bytes_sent: int
    bytes_received: int
    fast_retrans: int
    timeouts: int
    cur_app_wqueue: int
    max_app_wqueue: int
    sample_rtt_us: int
    sum_rtt_us: int
    read_bytes: int
    write_bytes: int
    duration_us: int
    rtt_samples: int = 0
    bytes_acked: int = 0
    state: int = 0

    @property
    def flow(self) -> Tuple[str, str, int, int]:
        return (self.saddr, self.daddr, self.sport, self.dport)

    @property
    def mean_rtt_us(self) -> Optional[float]:
        """SumRTT / number of samples, or None before the first sample."""
        return self.sum_rtt_us / self.rtt_samples if self.rtt_samples else None

    def metrics(self) -> Dict[str, int]:
        """The 16 metrics by column name."""
        return {name: getattr(self, name) for name in METRIC_COLUMNS}

    def as_dict(self) -> Dict[str, Any]:
        """JSON-able; the inverse of ``from_dict``."""
        out: Dict[str, Any] = {"session": self.session, "host": self.host, "flow": list(self.flow), "at_ns": self.at_ns}
        out.update(self.metrics())
        out.update({name: getattr(self, name) for name in EXTRA_COLUMNS})
        return out

    def schema_dict(self) -> Dict[str, Any]:
        """What ``schema.metric_row`` takes: the columns of ``flow_metrics`` only (the TCP state is not one)."""
        out = self.as_dict()
        del out["state"]
        return out

    @classmethod
    def from_dict(cls, raw: Any, prefix: str = "metrics") -> "FlowMetrics":
        """Validate a row from outside (a spool file, a JSON line); errors name the field."""
        if not isinstance(raw, Mapping):
            raise InputError(prefix, "must be a mapping", type(raw).__name__)
        required = ("session", "host", "flow", "at_ns") + METRIC_COLUMNS
        known = set(required) | set(EXTRA_COLUMNS)
        unknown = sorted(str(key) for key in raw if key not in known)
        if unknown:
            raise InputError(f"{prefix}.{unknown[0]}", "unknown field; known: " + ", ".join(sorted(known)))
        for name in required:
            if name not in raw:
                raise InputError(f"{prefix}.{name}", "is required")
        values: Dict[str, Any] = {
            "session": _text(f"{prefix}.session", raw["session"], 64),
            "host": _text(f"{prefix}.host", raw["host"], 128),
            "at_ns": require_int(f"{prefix}.at_ns", raw["at_ns"], 0, U64),
        }
        values.update(_flow(f"{prefix}.flow", raw["flow"]))
        for name in METRIC_COLUMNS + EXTRA_COLUMNS:
            if name in raw:
                values[name] = require_int(f"{prefix}.{name}", raw[name], 0, U64)
        if values["max_app_wqueue"] < values["cur_app_wqueue"]:
            raise InputError(f"{prefix}.max_app_wqueue", "is below cur_app_wqueue", values["max_app_wqueue"])
        return cls(**values)


def _text(field_name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InputError(field_name, f"must be a string of 1-{limit} characters", value)
    return value


def _flow(field_name: str, raw: Any) -> Dict[str, Any]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise InputError(field_name, "must be [saddr, daddr, sport, dport]", raw)
    out: Dict[str, Any] = {}
    for name, value in zip(_FLOW_FIELDS[:2], raw[:2]):
        try:
            out[name] = str(ipaddress.IPv4Address(value))
        except (ValueError, TypeError):
            raise InputError(f"{field_name}.{name}", "must be an IPv4 address", value) from None
    for name, value in zip(_FLOW_FIELDS[2:], raw[2:]):
        out[name] = require_int(f"{field_name}.{name}", value, 0, 65535)
    return out
