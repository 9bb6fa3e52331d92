# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Clock synchronisation: the probe's wire format, the estimate and the conversion (one implementation).

Every host stamps with its own CLOCK_MONOTONIC (``bpf_ktime_get_ns``). The manager
sends UDP probes to each observer; BPF programs stamp them at the manager's
egress device (t1), at the observer's XDP ingress (t2), just before the
observer's XDP_TX (t3) and at the manager's XDP ingress (t4)
(``files/bpf/timesync.h`` is the C twin of ``PROBE_FORMAT``).

With the observer's clock reading ``C(m) = m + theta(m)`` at manager time ``m``
and one-way delays that cannot be negative, one probe says::

    t3 - t4  <=  theta  <=  t2 - t1            (NTP: offset = midpoint, delay = width)

so every probe is an interval that must contain the true offset. ``fit``
keeps the minimum-delay probes of each burst (the lower envelope of the
delays), fits ``theta(m) = offset + skew * (m - at)`` through them by least
squares, and bounds the error of that line by the set of *all* lines that pass
through every kept interval (a convex polygon in (offset, skew)): whatever
the path's asymmetry, the true clock is one of those lines as long as it is
linear over the window, so ``error_ns`` is a bound, not a standard deviation.

``to_manager_time`` maps a host's stamp to the manager's timebase with the
host's (offset, skew); an estimate that is not synchronised refuses to convert.
"""

from __future__ import annotations

import math
import secrets
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

# --- the probe on the wire (timesync.h) -----------------------------------------------------------

MAGIC = 0x5354534C            # b"LSTS" read little-endian
VERSION = 1
KIND_PROBE = 1
KIND_REPLY = 2
F_T1 = 1                      # t1 written by the manager's egress program
F_T4 = 2                      # t4 written by the manager's ingress program
F_INJECTED = 4                # the responder's test knob was on
PROBE_FORMAT = "<IBBH16sQQQQQ"
PROBE_SIZE = struct.calcsize(PROBE_FORMAT)
TOKEN_BYTES = 16
DEFAULT_PORT = 31790          # below the ephemeral range: a prober's own port never equals it

# Counter names, in the order of the BPF per-CPU arrays (timesync.h TS_R_*, TS_P_*).
RESPONDER_COUNTERS = ("replied", "other", "truncated", "fragment", "malformed", "wrong_source",
                      "wrong_destination", "wrong_token", "disabled")
PROBER_COUNTERS = ("t1_stamped", "t4_stamped")

U64 = (1 << 64) - 1
S64 = (1 << 63) - 1
UNBOUNDED_NS = S64            # the error of an estimate that has none
NS_PER_S = 1_000_000_000
MAX_SKEW_PPB = 1_000_000      # 1000 ppm: no running clock is that far off; the fit's outer box
MIN_SKEW_SPAN_NS = 20_000_000  # a skew needs bursts spread over at least this much time


@dataclass(frozen=True)
class Probe:
    """One probe or reply, as decoded from a UDP payload."""

    kind: int
    flags: int
    token: bytes
    probe_id: int
    t1: int = 0
    t2: int = 0
    t3: int = 0
    t4: int = 0


def parse_token(value: Any, field_name: str = "token") -> bytes:
    """The deployment's token from its text form: 32 hexadecimal digits (128 bits)."""
    if isinstance(value, bytes) and len(value) == TOKEN_BYTES:
        return value
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or len(text) != 2 * TOKEN_BYTES:
        raise InputError(field_name, f"must be {2 * TOKEN_BYTES} hexadecimal digits (the value is not shown)")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InputError(field_name, f"must be {2 * TOKEN_BYTES} hexadecimal digits (the value is not shown)") from None


def new_token() -> str:
    """A fresh random token in its text form."""
    return secrets.token_hex(TOKEN_BYTES)


def encode_probe(token: bytes, probe_id: int, kind: int = KIND_PROBE, flags: int = 0,
                 t1: int = 0, t2: int = 0, t3: int = 0, t4: int = 0) -> bytes:
    """The UDP payload of a probe (or of a reply, for tests)."""
    token = parse_token(token)
    return struct.pack(PROBE_FORMAT, MAGIC, VERSION, kind, flags, token, probe_id & U64,
                       t1 & U64, t2 & U64, t3 & U64, t4 & U64)


def decode_probe(data: bytes, field_name: str = "probe") -> Probe:
    """A probe or reply from a UDP payload; InputError naming what is wrong."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != PROBE_SIZE:
        raise InputError(f"{field_name}.size", f"must be {PROBE_SIZE} bytes",
                         len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__)
    magic, version, kind, flags, token, probe_id, t1, t2, t3, t4 = struct.unpack(PROBE_FORMAT, bytes(data))
    if magic != MAGIC:
        raise InputError(f"{field_name}.magic", "is not a LatScope time probe", hex(magic))
    if version != VERSION:
        raise InputError(f"{field_name}.version", f"must be {VERSION}", version)
    if kind not in (KIND_PROBE, KIND_REPLY):
        raise InputError(f"{field_name}.kind", f"must be {KIND_PROBE} (probe) or {KIND_REPLY} (reply)", kind)
    return Probe(kind=kind, flags=flags, token=token, probe_id=probe_id, t1=t1, t2=t2, t3=t3, t4=t4)


# --- one probe's arithmetic -----------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """The four stamps of one answered probe (t1, t4: manager clock; t2, t3: the observer's)."""

    t1: int
    t2: int
    t3: int
    t4: int
    burst: int = 0
    probe_id: int = 0

    @property
    def upper(self) -> int:
        """The offset is at most t2 - t1 (the forward delay is not negative)."""
        return self.t2 - self.t1

    @property
    def lower(self) -> int:
        """The offset is at least t3 - t4 (the return delay is not negative)."""
        return self.t3 - self.t4

    @property
    def offset(self) -> float:
        """theta = ((t2 - t1) + (t3 - t4)) / 2, in ns (the observer's clock minus the manager's)."""
        return (self.upper + self.lower) / 2

    @property
    def delay(self) -> int:
        """delta = (t4 - t1) - (t3 - t2): the round trip less the observer's turnaround, in ns."""
        return self.upper - self.lower

    @property
    def error(self) -> float:
        """This probe alone bounds its offset's error by delta / 2."""
        return self.delay / 2

    @property
    def at_ns(self) -> int:
        """The manager time this probe's offset belongs to."""
        return (self.t1 + self.t4) // 2

    def consistent(self) -> bool:
        """Stamps in causal order: t1 <= t4, t2 <= t3, and a delay that is not negative."""
        return self.t1 <= self.t4 and self.t2 <= self.t3 and self.delay >= 0


def sample_from_probe(probe: Probe, burst: int = 0) -> Sample:
    return Sample(t1=probe.t1, t2=probe.t2, t3=probe.t3, t4=probe.t4, burst=burst, probe_id=probe.probe_id)


def envelope(samples: Iterable[Sample], per_burst: int = 1) -> List[Sample]:
    """The lower envelope: the ``per_burst`` least-delay samples of each burst, then only the bursts
    whose best delay is within ``min + max(min / 4, 500 ns)`` of the best of all (a burst that
    queued behind something throughout says little), in time order."""
    if per_burst < 1:
        raise InputError("per_burst", "must be at least 1", per_burst)
    bursts: Dict[int, List[Sample]] = {}
    for sample in samples:
        if sample.consistent():
            bursts.setdefault(sample.burst, []).append(sample)
    if not bursts:
        return []
    kept = [sorted(group, key=lambda s: s.delay)[:per_burst] for group in bursts.values()]
    best = min(group[0].delay for group in kept)
    limit = best + max(best // 4, 500)
    chosen = [s for group in kept for s in group if s.delay <= limit]
    return sorted(chosen, key=lambda s: s.at_ns)


# --- the estimate -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClockEstimate:
    """A host's clock against the manager's: ``host = manager + offset_ns + skew_ppb * (manager - at_ns) / 1e9``.

    ``error_ns`` bounds the error of the offset at ``at_ns``; ``skew_error_ppb`` that of the skew,
    so the bound ``error_at(t)`` grows away from ``at_ns``. An estimate that is not synchronised
    says why in ``reason``; its offset and skew are 0 and its error unbounded.
    """

    host: str
    at_ns: int
    offset_ns: int
    skew_ppb: int
    error_ns: int
    skew_error_ppb: int
    probes_used: int
    probes_lost: int
    synchronised: bool
    probes_sent: int = 0
    replies: int = 0
    min_delay_ns: int = 0
    window_ns: Tuple[int, int] = (0, 0)
    injected: bool = False
    reason: str = ""

    def error_at(self, manager_ns: int) -> int:
        """The error bound of the offset at manager time ``manager_ns``."""
        if not self.synchronised:
            return UNBOUNDED_NS
        drift = -(-self.skew_error_ppb * abs(manager_ns - self.at_ns) // NS_PER_S)
        return min(UNBOUNDED_NS, self.error_ns + drift)

    def offset_at(self, manager_ns: int) -> int:
        """The host's clock minus the manager's at manager time ``manager_ns``."""
        return self.offset_ns + _div_round(self.skew_ppb * (manager_ns - self.at_ns), NS_PER_S)

    def as_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "at_ns": self.at_ns, "offset_ns": self.offset_ns, "skew_ppb": self.skew_ppb,
                "error_ns": self.error_ns, "skew_error_ppb": self.skew_error_ppb, "probes_used": self.probes_used,
                "probes_lost": self.probes_lost, "probes_sent": self.probes_sent, "replies": self.replies,
                "min_delay_ns": self.min_delay_ns, "window_ns": list(self.window_ns),
                "synchronised": self.synchronised, "injected": self.injected, "reason": self.reason}

    def row(self, session: str) -> Dict[str, Any]:
        """The ``schema.clock_row`` input for this estimate in ``session``."""
        return {"session": session, "host": self.host, "at_ns": self.at_ns, "offset_ns": self.offset_ns,
                "skew_ppb": self.skew_ppb, "error_ns": min(self.error_ns, UNBOUNDED_NS),
                "probes_used": self.probes_used, "probes_lost": self.probes_lost,
                "synchronised": self.synchronised}


def estimate_from_dict(raw: Any, prefix: str = "estimate") -> ClockEstimate:
    """Inverse of ``ClockEstimate.as_dict`` (also accepts a clock_estimates row as a mapping), validated."""
    if not isinstance(raw, dict):
        raise InputError(prefix, "must be a mapping", type(raw).__name__)
    for name in ("host", "at_ns", "offset_ns", "skew_ppb", "error_ns", "synchronised"):
        if name not in raw:
            raise InputError(f"{prefix}.{name}", "is required")
    host = raw["host"]
    if not isinstance(host, str) or not host:
        raise InputError(f"{prefix}.host", "must be a host name", host)
    synchronised = raw["synchronised"]
    if synchronised in (0, 1) and not isinstance(synchronised, float):
        synchronised = bool(synchronised)
    if not isinstance(synchronised, bool):
        raise InputError(f"{prefix}.synchronised", "must be true or false", synchronised)
    window = raw.get("window_ns", (0, 0))
    if not isinstance(window, (list, tuple)) or len(window) != 2:
        raise InputError(f"{prefix}.window_ns", "must be [first, last]", window)
    return ClockEstimate(
        host=host, at_ns=require_int(f"{prefix}.at_ns", raw["at_ns"], 0, U64),
        offset_ns=require_int(f"{prefix}.offset_ns", raw["offset_ns"], -S64, S64),
        skew_ppb=require_int(f"{prefix}.skew_ppb", raw["skew_ppb"], -MAX_SKEW_PPB, MAX_SKEW_PPB),
        error_ns=require_int(f"{prefix}.error_ns", raw["error_ns"], 0, U64),
        skew_error_ppb=require_int(f"{prefix}.skew_error_ppb", raw.get("skew_error_ppb", 0), 0, S64),
        probes_used=require_int(f"{prefix}.probes_used", raw.get("probes_used", 0), 0, U64),
        probes_lost=require_int(f"{prefix}.probes_lost", raw.get("probes_lost", 0), 0, U64),
        synchronised=synchronised,
        probes_sent=require_int(f"{prefix}.probes_sent", raw.get("probes_sent", 0), 0, U64),
        replies=require_int(f"{prefix}.replies", raw.get("replies", 0), 0, U64),
        min_delay_ns=require_int(f"{prefix}.min_delay_ns", raw.get("min_delay_ns", 0), 0, U64),
        window_ns=(require_int(f"{prefix}.window_ns[0]", window[0], 0, U64),
                   require_int(f"{prefix}.window_ns[1]", window[1], 0, U64)),
        injected=bool(raw.get("injected", False)), reason=str(raw.get("reason", ""))[:300])


def unsynchronised(host: str, reason: str, at_ns: int, probes_sent: int = 0, probes_lost: int = 0,
                   replies: int = 0) -> ClockEstimate:
    """The estimate of a host that could not be measured: it says so, and why."""
    return ClockEstimate(host=host, at_ns=max(0, at_ns), offset_ns=0, skew_ppb=0, error_ns=UNBOUNDED_NS,
                         skew_error_ppb=MAX_SKEW_PPB, probes_used=0, probes_lost=probes_lost, synchronised=False,
                         probes_sent=probes_sent, replies=replies, reason=reason)


def _div_round(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer (halves away from zero), exactly."""
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


Point = Tuple[float, float]


def _clip(polygon: List[Point], x: float, bound: float, upper: bool) -> List[Point]:
    """Keep the part of a convex polygon in (a, s) where a + s*x <= bound (upper) or >= bound."""
    def inside(point: Point) -> bool:
        value = point[0] + point[1] * x
        return value <= bound if upper else value >= bound

    result: List[Point] = []
    count = len(polygon)
    for index in range(count):
        current, following = polygon[index], polygon[(index + 1) % count]
        current_in, following_in = inside(current), inside(following)
        if current_in:
            result.append(current)
        if current_in != following_in:
            value_c = current[0] + current[1] * x - bound
            value_f = following[0] + following[1] * x - bound
            ratio = value_c / (value_c - value_f)
            result.append((current[0] + ratio * (following[0] - current[0]),
                           current[1] + ratio * (following[1] - current[1])))
    return result


def _feasible(samples: Sequence[Sample], reference: int, at_ns: int, slack: float, a_box: float) -> List[Point]:
    """Every (a, s) - offset at ``at_ns`` less ``reference`` in ns, skew in ppb - whose line passes
    through every sample's interval (widened by ``slack`` ns); empty if none does."""
    polygon: List[Point] = [(-a_box, -MAX_SKEW_PPB), (a_box, -MAX_SKEW_PPB), (a_box, MAX_SKEW_PPB),
                            (-a_box, MAX_SKEW_PPB)]
    for sample in samples:
        x = (sample.at_ns - at_ns) / NS_PER_S
        polygon = _clip(polygon, x, sample.upper - reference + slack, True)
        if not polygon:
            return []
        polygon = _clip(polygon, x, sample.lower - reference - slack, False)
        if not polygon:
            return []
    return polygon


def fit(samples: Sequence[Sample], host: str, probes_sent: int, probes_lost: int, per_burst: int = 1,
        injected: bool = False) -> ClockEstimate:
    """The clock estimate of ``host`` from its answered probes (all of them: the envelope is chosen here).

    Offset and skew: least squares through the lower envelope; the bound: the widest gap at
    ``at_ns`` (the envelope's mean time) between that line and any line through every kept
    interval. Not synchronised when nothing answered.
    """
    answered = [s for s in samples if s.consistent()]
    kept = envelope(answered, per_burst)
    now = max((s.t4 for s in samples), default=0)
    if not kept:
        why = "no consistent replies" if samples else "no replies"
        return unsynchronised(host, f"{why} ({probes_lost} of {probes_sent} probes lost)", now, probes_sent,
                              probes_lost, len(samples))
    at_ns = sum(s.at_ns for s in kept) // len(kept)
    mids = sorted(s.lower + s.upper for s in kept)
    reference = mids[len(mids) // 2] // 2      # work near zero: offsets can be days of ns
    xs = [(s.at_ns - at_ns) / NS_PER_S for s in kept]
    ys = [s.offset - reference for s in kept]
    span = kept[-1].at_ns - kept[0].at_ns
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if len(kept) >= 2 and span >= MIN_SKEW_SPAN_NS and sxx > 0:
        skew = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
        skew = max(-MAX_SKEW_PPB, min(MAX_SKEW_PPB, skew))
    else:
        skew = 0.0
    offset = mean_y - skew * mean_x
    # The bound. Each stamp is an integer and the observer's t2/t3 belong to some manager time in
    # [t1, t4], not exactly at_ns: widen every interval by what a skew can do over half a round trip.
    longest = max(s.t4 - s.t1 for s in kept)
    slack = 1.0 + (abs(skew) + 1000.0) * longest / 2 / NS_PER_S
    a_box = max(abs(s.upper - reference) + abs(s.lower - reference) for s in kept) \
        + MAX_SKEW_PPB * max(abs(x) for x in xs) + 1e6
    polygon = _feasible(kept, reference, at_ns, slack, a_box)
    reason = ""
    if polygon:
        if not _contains(polygon, (offset, skew)):
            offset = sum(p[0] for p in polygon) / len(polygon)
            skew = sum(p[1] for p in polygon) / len(polygon)
        error = max(abs(p[0] - offset) for p in polygon)
        skew_error = max(abs(p[1] - skew) for p in polygon)
    else:
        # No line fits every interval: a clock stepped or was slewed hard during the window.
        error = max(abs(offset + skew * x - (s.offset - reference)) + s.error for s, x in zip(kept, xs))
        skew_error = float(MAX_SKEW_PPB)
        reason = "probes inconsistent with one offset and skew (clock stepped or slewed): bound from residuals"
    return ClockEstimate(
        host=host, at_ns=at_ns, offset_ns=reference + int(round(offset)), skew_ppb=int(round(skew)),
        error_ns=int(math.ceil(error)) + 1, skew_error_ppb=int(math.ceil(skew_error)) + 1,
        probes_used=len(kept), probes_lost=probes_lost, synchronised=True, probes_sent=probes_sent,
        replies=len(samples), min_delay_ns=min(s.delay for s in kept),
        window_ns=(kept[0].at_ns, kept[-1].at_ns), injected=injected, reason=reason)


def _contains(polygon: Sequence[Point], point: Point) -> bool:
    """Whether a convex polygon (either orientation) contains ``point`` (borders included)."""
    sign = 0
    count = len(polygon)
    for index in range(count):
        (ax, ay), (bx, by) = polygon[index], polygon[(index + 1) % count]
        cross = (bx - ax) * (point[1] - ay) - (by - ay) * (point[0] - ax)
        if abs(cross) < 1e-9:
            continue
        current = 1 if cross > 0 else -1
        if sign and current != sign:
            return False
        sign = current
    return True


# --- conversion -----------------------------------------------------------------------------------

class NotSynchronised(InputError):
    """A conversion was asked of an estimate that is not synchronised."""


def _usable(estimate: ClockEstimate) -> None:
    if not isinstance(estimate, ClockEstimate):
        raise InputError("estimate", "must be a ClockEstimate", type(estimate).__name__)
    if not estimate.synchronised:
        raise NotSynchronised("estimate", f"{estimate.host} is not synchronised: {estimate.reason or 'no estimate'}")


def to_manager_time(host_ts: int, estimate: ClockEstimate) -> int:
    """A stamp taken on the estimate's host at its time ``host_ts``, on the manager's timebase (ns).

    Solves ``host_ts = m + offset + skew * (m - at) / 1e9`` for m, exactly, rounded to the ns.
    """
    _usable(estimate)
    host_ts = require_int("host_ts", host_ts, 0, U64)
    rate = NS_PER_S + estimate.skew_ppb
    return estimate.at_ns + _div_round((host_ts - estimate.offset_ns - estimate.at_ns) * NS_PER_S, rate)


def to_manager_time_sql(host_ts: str, at_ns: str, offset_ns: str, skew_ppb: str) -> str:
    """``to_manager_time`` as a SQL expression over four column expressions (MariaDB 10.11 and MySQL 8).

    The same formula, term for term, in exact integer arithmetic::

        m = at + div_round((host_ts - offset - at) * 1e9, 1e9 + skew)

    ``div_round`` (``_div_round``: halves away from zero) is written for a divisor ``d > 0`` as
    ``SIGN(n) * floor((2|n| + d) / 2d)``; the floor is taken as ``(x - MOD(x, 2d)) DIV 2d`` so that
    the division is of an exact multiple and no server's DECIMAL division rounding can change it.
    The numerator can reach 2**64 * 1e9, so it is computed in DECIMAL(40,0), never in BIGINT.
    ``to_manager_time_sql`` callers pass column names or expressions they trust (no user text).
    """
    for name, value in (("host_ts", host_ts), ("at_ns", at_ns), ("offset_ns", offset_ns), ("skew_ppb", skew_ppb)):
        if not isinstance(value, str) or not value or ";" in value or "--" in value:
            raise InputError(name, "must be a SQL column expression", value)
    numerator = (f"((CAST({host_ts} AS DECIMAL(40,0)) - CAST({offset_ns} AS DECIMAL(40,0)) "
                 f"- CAST({at_ns} AS DECIMAL(40,0))) * {NS_PER_S})")
    divisor = f"(CAST({skew_ppb} AS DECIMAL(40,0)) + {NS_PER_S})"
    doubled = f"(2 * ABS({numerator}) + {divisor})"
    quotient = f"(({doubled} - MOD({doubled}, 2 * {divisor})) DIV (2 * {divisor}))"
    return f"(CAST({at_ns} AS SIGNED) + SIGN({numerator}) * {quotient})"


def to_host_time(manager_ts: int, estimate: ClockEstimate) -> int:
    """The inverse of ``to_manager_time``: what the host's clock read at manager time ``manager_ts``."""
    _usable(estimate)
    return manager_ts + estimate.offset_at(manager_ts)


def estimate_for(estimates: Iterable[ClockEstimate], host: str, host_ts: Optional[int] = None) -> ClockEstimate:
    """The estimate to convert ``host``'s stamps with: its synchronised estimate nearest to ``host_ts``
    (by the host's own clock), or its latest one. Raises NotSynchronised if the latest round of that
    host failed after ``host_ts`` could have been covered - a stale estimate is never reused silently -
    or if it has none."""
    mine = sorted((e for e in estimates if e.host == host), key=lambda e: e.at_ns)
    good = [e for e in mine if e.synchronised]
    if not good:
        reason = mine[-1].reason if mine else "no estimate"
        raise NotSynchronised("estimate", f"{host} has no synchronised clock estimate: {reason}")
    if host_ts is None:
        if not mine[-1].synchronised:
            raise NotSynchronised("estimate", f"{host}'s latest clock estimate is not synchronised: {mine[-1].reason}")
        return good[-1]
    return min(good, key=lambda e: abs(host_ts - (e.at_ns + e.offset_ns)))


__all__ = ["ClockEstimate", "DEFAULT_PORT", "NotSynchronised", "PROBE_FORMAT", "PROBE_SIZE", "PROBER_COUNTERS",
           "Probe", "RESPONDER_COUNTERS", "Sample", "decode_probe", "encode_probe", "envelope", "estimate_for",
           "estimate_from_dict", "fit", "new_token", "parse_token", "sample_from_probe", "to_host_time",
           "to_manager_time", "to_manager_time_sql", "unsynchronised"]
