"""The manager's prober: bursts of UDP probes, t1/t4 stamped in BPF, one clock estimate per observer.

``files/bpf/timesync_prober.bpf.c`` is attached to the manager's interface:
``ts_egress`` on tcx egress writes t1 into each probe of this prober as it
leaves the device, ``ts_ingress`` (XDP) writes t4 into each reply as it
arrives. The socket only carries the probes; no stamp comes from user space.

A round probes every observer in turn, burst by burst (so their windows
overlap), one probe in flight per observer: a probe is sent, its reply awaited
(``reply_timeout_s``), then the next. A burst whose probe goes unanswered is cut
short, so an unreachable observer costs one timeout per burst, not per probe.
Replies are checked (source, port, token, id, both BPF stamps) before they
count; everything else is counted and dropped. ``clock.fit`` turns each
observer's samples into its estimate.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable

from ansible_collections.latscope.latscope.plugins.module_utils.clock import (
    DEFAULT_PORT, F_INJECTED, F_T1, F_T4, KIND_REPLY, PROBER_COUNTERS, ClockEstimate,
    Sample, decode_probe, encode_probe, fit, parse_token, sample_from_probe, unsynchronised)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from latscope.timesync import kernel
from latscope.timesync.responder import is_ipv4

SOURCE = "timesync_prober.bpf.c"
SO_NO_CHECK = 11
MAX_PROBES = 1024
MAX_BURSTS = 100000


@dataclass(frozen=True)
class ProbeSettings:
    """How hard one round probes: ``bursts`` x ``probes``, ``burst_interval_s`` apart."""

    probes: int = 16
    bursts: int = 8
    burst_interval_s: float = 0.05
    reply_timeout_s: float = 0.05
    per_burst: int = 1

    def __post_init__(self) -> None:
        require_int("timesync.probes", self.probes, 1, MAX_PROBES)
        require_int("timesync.bursts", self.bursts, 1, MAX_BURSTS)
        require_int("timesync.per_burst", self.per_burst, 1, self.probes)
        for name in ("burst_interval_s", "reply_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 60:
                raise InputError(f"timesync.{name}", "must be a number of seconds between 0 and 60", value)


@dataclass(frozen=True)
class Target:
    """An observer to probe: its name (as stored) and its responder's address."""

    host: str
    address: str

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InputError("target.host", "must be a host name", self.host)
        if not is_ipv4(self.address):
            raise InputError(f"target.{self.host}.address", "must be an IPv4 address", self.address)


@dataclass
class HostProbes:
    """What one round saw of one observer."""

    target: Target
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    injected: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - len(self.samples)


class Prober:
    """One compiled prober bound to the manager's interface (in ``netns``, None for this process's)."""

    def __init__(self, interface: str, token: bytes | str, port: int = DEFAULT_PORT, netns: str | None = None,
                 local_address: str | None = None, xdp_mode: str = "native") -> None:
        self.interface = interface
        self.token = parse_token(token)
        self.port = require_int("timesync.port", port, 1, 65535)
        self.netns = netns
        self.local_address = local_address or kernel.in_netns(netns, lambda: kernel.ipv4_address(interface))
        self.ifindex = kernel.ifindex_in(netns, interface)
        self.bpf = kernel.compile_program(SOURCE, [])
        self.links = kernel.Links()
        self.sock = kernel.in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.next_id = int.from_bytes(self.token[:4], "little") << 32
        self.rejected: dict[str, int] = {}
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)   # checksum 0: stamps need no fix-up
            self.sock.bind((self.local_address, 0))
            self.src_port = self.sock.getsockname()[1]
            self._configure(enabled=True)
            self.links.tcx_egress(self.bpf.load_func("ts_egress", self.bpf.SCHED_CLS).fd, self.ifindex,
                                  interface, netns)
            ingress = self.bpf.load_func("ts_ingress", self.bpf.XDP).fd
            try:
                self.links.xdp(ingress, self.ifindex, xdp_mode, interface, netns)
            except OSError:
                if xdp_mode != "native":
                    raise
                self.links.xdp(ingress, self.ifindex, "generic", interface, netns)
        except Exception:
            self.close()
            raise

    def _configure(self, enabled: bool) -> None:
        table = self.bpf["ts_config"]
        cfg = table.Leaf()
        cfg.enabled = 1 if enabled else 0
        cfg.local_addr = kernel.addr_u32(self.local_address)
        cfg.src_port = self.src_port
        cfg.dst_port = self.port
        cfg.token[0], cfg.token[1] = struct.unpack("<QQ", self.token)
        table[ctypes.c_int(0)] = cfg

    # --- probing -------------------------------------------------------------------------------------

    def probe(self, targets: Iterable[Target], settings: ProbeSettings | None = None) -> dict[str, HostProbes]:
        """Send the round's bursts to every target; return what came back, per host."""
        settings = settings or ProbeSettings()
        seen = {t.host: HostProbes(t) for t in targets}
        for burst in range(settings.bursts):
            started = time.monotonic()
            for host in seen.values():
                self._burst(host, burst, settings)
            if burst + 1 < settings.bursts:
                pause = settings.burst_interval_s - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
        return seen

    def _burst(self, host: HostProbes, burst: int, settings: ProbeSettings) -> None:
        for _index in range(settings.probes):
            probe_id = self.next_id
            self.next_id += 1
            try:
                self.sock.sendto(encode_probe(self.token, probe_id), (host.target.address, self.port))
            except OSError as exc:
                host.errors.append(f"send: {exc.strerror or exc}")
                return
            host.sent += 1
            if not self._await(host, probe_id, burst, settings.reply_timeout_s):
                return          # cut the burst short: the next burst tries again

    def _await(self, host: HostProbes, probe_id: int, burst: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _w, _x = select.select([self.sock], [], [], left)
            if not ready:
                return False
            try:
                data, (address, port) = self.sock.recvfrom(2048)
            except OSError as exc:
                host.errors.append(f"receive: {exc.strerror or exc}")
                continue
            if address != host.target.address or port != self.port:
                self._reject("wrong_source")
                continue
            try:
                reply = decode_probe(data)
            except InputError:
                self._reject("malformed")
                continue
            if reply.kind != KIND_REPLY or reply.token != self.token:
                self._reject("wrong_token" if reply.kind == KIND_REPLY else "not_reply")
                continue
            if reply.probe_id != probe_id:
                self._reject("late")       # an earlier probe's reply, after its timeout
                continue
            if (reply.flags & (F_T1 | F_T4)) != (F_T1 | F_T4):
                self._reject("unstamped")
                return True
            host.injected = host.injected or bool(reply.flags & F_INJECTED)
            host.samples.append(sample_from_probe(reply, burst))
            return True

    def _reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def round(self, targets: Iterable[Target], settings: ProbeSettings | None = None) -> dict[str, ClockEstimate]:
        """Probe every target and fit each one's estimate (``synchronised`` False, with the reason, for
        an observer that did not answer)."""
        settings = settings or ProbeSettings()
        estimates = {}
        for name, seen in self.probe(targets, settings).items():
            estimates[name] = estimate(seen, settings.per_burst)
        return estimates

    def counters(self) -> dict[str, int]:
        values = kernel.counters(self.bpf["ts_counters"], PROBER_COUNTERS)
        values.update({f"rejected_{why}": count for why, count in self.rejected.items()})
        return values

    def close(self) -> None:
        self.links.close()
        try:
            self.sock.close()
        except OSError:
            pass
        self.bpf.cleanup()


def estimate(seen: HostProbes, per_burst: int = 1) -> ClockEstimate:
    """The estimate of one observer from what a round saw of it."""
    if not seen.samples:
        why = f"no replies from {seen.target.address} ({seen.sent} probes sent)"
        if seen.errors:
            why += f": {seen.errors[-1]}"
        return unsynchronised(seen.target.host, why, time.monotonic_ns(), seen.sent, seen.lost)
    return fit(seen.samples, seen.target.host, seen.sent, seen.lost, per_burst, seen.injected)


__all__ = ["HostProbes", "ProbeSettings", "Prober", "Target", "estimate"]
