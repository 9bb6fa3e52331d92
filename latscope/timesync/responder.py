"""The observer's responder: compile, configure and attach files/bpf/timesync_responder.bpf.c.

The XDP program answers the manager's probes on one interface (see the C file).
Attachment is a BPF link owned by this process: ``detach``/``close``, or this
process dying, removes it.

**veth.** On a veth interface, XDP_TX hands the frame to the peer device, which
accepts XDP frames only when it has an XDP program itself (its NAPI receive
path is off otherwise, and the frame is dropped). The responder therefore finds
the peer (``kernel.find_veth_peer``: in the interface's own namespace, this
process's, or a configured one) and attaches ``ts_pass`` (XDP_PASS) to it. If the
peer is out of reach, mode ``auto`` falls back to generic XDP, whose XDP_TX goes
out through the device's normal transmit path and needs nothing on the peer.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
import time
from dataclasses import dataclass, field

from ansible_collections.latscope.latscope.plugins.module_utils.clock import (
    DEFAULT_PORT, MAX_SKEW_PPB, RESPONDER_COUNTERS, parse_token)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from latscope.timesync import kernel

SOURCE = "timesync_responder.bpf.c"
MODES = ("auto", "native", "generic")
ROOT_NETNS = "/proc/1/ns/net"


@dataclass(frozen=True)
class ResponderSettings:
    """Where and to whom the responder answers. ``peer_netns``: where a veth peer may live."""

    interface: str
    manager_address: str
    token: bytes = field(repr=False)
    port: int = DEFAULT_PORT
    netns: str | None = None          # the interface's namespace; None: this process's
    mode: str = "auto"
    peer_netns: tuple[str, ...] = ()
    local_address: str | None = None  # default: the interface's first IPv4 address

    def __post_init__(self) -> None:
        parse_token(self.token)
        require_int("timesync.port", self.port, 1, 65535)
        if self.mode not in MODES:
            raise InputError("timesync.mode", f"must be one of {', '.join(MODES)}", self.mode)
        if not is_ipv4(self.manager_address):
            raise InputError("timesync.manager_address", "must be an IPv4 address", self.manager_address)
        if self.local_address is not None and not is_ipv4(self.local_address):
            raise InputError("timesync.local_address", "must be an IPv4 address", self.local_address)


def is_ipv4(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class Responder:
    """One compiled responder; ``attach`` on the configured interface, ``detach``, ``counters``."""

    def __init__(self, settings: ResponderSettings, test_knob: bool = False) -> None:
        self.settings = settings
        self.test_knob = test_knob
        self.bpf = kernel.compile_program(SOURCE, ["-DTS_TEST_KNOB"] if test_knob else [])
        self.links = kernel.Links()
        self.mode = ""
        self.peer: kernel.VethPeer | None = None
        self.local_address = ""
        self.ifindex = 0

    # --- configuration -------------------------------------------------------------------------

    def configure(self, enabled: bool = True) -> None:
        s = self.settings
        table = self.bpf["ts_config"]
        cfg = table.Leaf()
        cfg.enabled = 1 if enabled else 0
        cfg.manager_addr = kernel.addr_u32(s.manager_address)
        cfg.local_addr = kernel.addr_u32(self.local_address) if self.local_address else 0
        cfg.port = s.port
        cfg.token[0], cfg.token[1] = struct.unpack("<QQ", parse_token(s.token))
        table[ctypes.c_int(0)] = cfg

    def inject(self, offset_ns: int, skew_ppb: int, ref_ns: int | None = None) -> None:
        """Test knob: this responder's stamps read ktime + offset + (ktime - ref) * skew / 1e9."""
        if not self.test_knob:
            raise InputError("inject", "this responder was compiled without the test knob")
        table = self.bpf["ts_inject"]
        value = table.Leaf()
        value.enabled = 1 if (offset_ns or skew_ppb) else 0
        value.offset_ns = require_int("inject.offset_ns", offset_ns, -(1 << 62), 1 << 62)
        value.skew_ppb = require_int("inject.skew_ppb", skew_ppb, -MAX_SKEW_PPB, MAX_SKEW_PPB)
        value.ref_ns = kernel_now() if ref_ns is None else ref_ns
        table[ctypes.c_int(0)] = value

    # --- attachment ------------------------------------------------------------------------------

    def attach(self) -> None:
        """Attach on the interface (and its veth peer when needed); on failure leave nothing attached."""
        s = self.settings
        try:
            info = kernel.in_netns(s.netns, lambda: kernel.link_info(s.interface))
            self.ifindex = info["ifindex"]
            self.local_address = s.local_address or kernel.in_netns(s.netns, lambda: kernel.ipv4_address(s.interface))
            self.configure(enabled=True)
            mode = s.mode
            if info["kind"] == "veth" and mode in ("auto", "native"):
                candidates: list[str | None] = [*s.peer_netns, None, ROOT_NETNS]
                self.peer = kernel.find_veth_peer(info, s.netns, candidates)
                if self.peer is None and mode == "native":
                    raise kernel.KernelError(
                        f"{s.interface} is a veth: XDP_TX needs an XDP program on its peer, and the peer's "
                        "namespace was not found (set timesync.peer_netns, or use mode generic)")
                mode = "native" if self.peer is not None else "generic"
            elif mode == "auto":
                mode = "native"
            prog = self.bpf.load_func("ts_respond", self.bpf.XDP)
            if self.peer is not None and mode == "native":
                passer = self.bpf.load_func("ts_pass", self.bpf.XDP)
                self.links.xdp(passer.fd, self.peer.ifindex, "native", f"{self.peer.ifname} (veth peer)",
                               self.peer.netns)
            self.links.xdp(prog.fd, self.ifindex, mode, s.interface, s.netns)
            self.mode = mode
        except Exception:
            self.detach()
            raise

    @property
    def attached(self) -> list[str]:
        return list(self.links.described)

    def detach(self) -> None:
        self.links.close()
        self.mode = ""

    def disable(self) -> None:
        """Stop answering (probes are then passed and counted as ``disabled``) without detaching."""
        self.configure(enabled=False)

    def counters(self) -> dict[str, int]:
        return kernel.counters(self.bpf["ts_counters"], RESPONDER_COUNTERS)

    def state(self) -> dict[str, object]:
        return {"interface": self.settings.interface, "mode": self.mode, "port": self.settings.port,
                "address": self.local_address, "manager": self.settings.manager_address,
                "peer": self.peer.ifname if self.peer else "", "attached": len(self.links.fds),
                "test_knob": self.test_knob}

    def close(self) -> None:
        self.detach()
        self.bpf.cleanup()


def kernel_now() -> int:
    """bpf_ktime_get_ns() as user space reads it: CLOCK_MONOTONIC."""
    return time.monotonic_ns()


__all__ = ["Responder", "ResponderSettings", "is_ipv4", "kernel_now"]
