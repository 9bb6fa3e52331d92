"""Probe what this kernel lets LatScope do, and pick the hook profile.

``probe_capabilities()`` really tries each mechanism with the smallest possible
program (``r0 = <ret>; exit``, loaded through the raw ``bpf(2)`` syscall: no
compiler, no BCC import) and then releases it: every attachment is held by a
file descriptor (a BPF link or a perf event) or lives on a device of a
throw-away network namespace (``kx-cap-<pid>``) or in a throw-away cgroup
(``<cgroup2>/latscope-cap-<pid>``). Before returning, the probe waits until the
kernel has freed every program it loaded (a tc filter's program is freed by
deferred work), so nothing is left behind; ``leftover_programs`` would name
any that were not. The whole probe takes about a third of a second.

The hook profile (see DESIGN.md section 3):

* ``kprobe``     - kprobes attach (the seed functions are usable);
* ``tracepoint`` - no kprobes, but tracepoints attach, the required tracepoints
  exist, and ``sock_ops`` + ``cgroup_skb`` attach (they cover the TCP boundaries);
* ``none``       - neither; ``profile_reason`` says why.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import platform
import socket
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers
from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.btf import KIND_FUNC, KIND_TYPEDEF, VMLINUX_BTF, Btf, BtfError

# ---- syscall and ABI constants -------------------------------------------------------------

SYSCALL_NUMBERS = {  # machine -> (bpf, perf_event_open, setns, membarrier)
    "x86_64": (321, 298, 308, 324),
    "aarch64": (280, 241, 268, 283),
}
MEMBARRIER_CMD_GLOBAL = 1
RUNS_IN_FLIGHT_FALLBACK_S = 0.2   # without membarrier(2): longer than any one program run
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_LINK_CREATE = 28
BPF_ATTR_SIZE = 160
PROG_INFO_SIZE = 256
PROG_INFO_ID_OFFSET = 4
RELEASE_TIMEOUT_S = 3.0
RELEASE_POLL_S = 0.01

PROG_KPROBE = 2
PROG_SCHED_CLS = 3
PROG_TRACEPOINT = 5
PROG_XDP = 6
PROG_CGROUP_SKB = 8
PROG_SOCK_OPS = 13
PROG_RAW_TRACEPOINT = 17
PROG_TRACING = 26
PROG_NETFILTER = 32

ATTACH_CGROUP_INET_INGRESS = 0
ATTACH_CGROUP_INET_EGRESS = 1
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_TRACE_RAW_TP = 23
ATTACH_TRACE_FENTRY = 24
ATTACH_XDP = 37
ATTACH_NETFILTER = 45
ATTACH_TCX_INGRESS = 46
NFPROTO_IPV4 = 2
NF_INET_LOCAL_OUT = 3
NF_PRIORITY = -128
NF_ACCEPT = 1

MAP_RINGBUF = 27
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_PASS = 2
TC_ACT_OK = 0

PERF_TYPE_TRACEPOINT = 2
PERF_ATTR_SIZE = 128
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_SET_BPF = 0x40042408
CLONE_NEWNET = 0x40000000

NETLINK_ROUTE = 0
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_NEWTFILTER = 44
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_H_CLSACT_INGRESS = 0xFFFFFFF2
ETH_P_ALL = 0x0003

INSN_LEN = 8
OP_MOV64_IMM = 0xB7
OP_MOV64_REG = 0xBF
OP_ADD64_IMM = 0x07
OP_CALL = 0x85
OP_EXIT = 0x95
HELPER_PROBE_READ_KERNEL = 113

PROG_NAME = b"latscope_cap"
LICENSE = b"GPL"
LOG_SIZE = 4096
KPROBE_TARGET = "tcp_sendmsg"
KPROBE_GROUP = "latscope_cap"
FENTRY_TARGET = "tcp_sendmsg"
TP_BTF_TARGET = "net_dev_queue"
RAW_TP_TARGET = b"net_dev_queue"
TRACEPOINT_ATTACH_TARGET = "net/net_dev_queue"
PROC_KPROBE_TYPE = Path("/sys/bus/event_source/devices/kprobe/type")
NETNS_PREFIX = "kx-cap-"
CGROUP_PREFIX = "latscope-cap-"
VETH_A = "kxcap0"
VETH_B = "kxcap1"
IP_TIMEOUT_S = 5

# Tracepoints of the "tracepoint" profile (DESIGN.md section 3).
REQUIRED_TRACEPOINTS = (
    "net:net_dev_queue",
    "net:net_dev_start_xmit",
    "net:netif_receive_skb",
    "skb:skb_copy_datagram_iovec",
    "sock:sock_recv_length",
)
OPTIONAL_TRACEPOINTS = (
    "tcp:tcp_sendmsg_locked",
    "qdisc:qdisc_enqueue",
    "qdisc:qdisc_dequeue",
    "net:netif_receive_skb_entry",
    "net:napi_gro_receive_entry",
    "net:netif_rx_entry",
    "net:net_dev_xmit",
    "sock:sock_send_length",
    "sock:inet_sock_set_state",
    "tcp:tcp_probe",
    "tcp:tcp_retransmit_skb",
    "tcp:tcp_rcv_space_adjust",
)


class ProbeError(RuntimeError):
    """A capability probe could not run (not: the capability is missing)."""


@dataclass
class Capabilities:
    kernel_release: str
    machine: str
    btf: bool
    kprobes: bool
    fentry: bool
    tp_btf: bool
    tracepoint_attach: bool
    raw_tracepoint: bool
    xdp_native: bool
    xdp_generic: bool
    tc_clsact: bool
    tcx: bool
    netfilter_link: bool
    probe_read_kernel: bool
    cgroup_skb: bool
    sock_ops: bool
    ringbuf: bool
    tracefs: str | None
    cgroup2: str | None
    bcc_version: str | None
    header_tree: dict[str, str] | None
    systemd_pid1: bool
    tracepoints: dict[str, bool]
    hook_profile: str
    profile_reason: str
    missing_optional: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # capability -> why it is False
    mounted: list[str] = field(default_factory=list)
    leftover_programs: list[int] = field(default_factory=list)  # must stay empty
    probe_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# ---- raw syscalls --------------------------------------------------------------------------

class Syscalls:
    """bpf(2), perf_event_open(2), setns(2) and membarrier(2) through libc; ``OSError`` on failure."""

    def __init__(self, machine: str | None = None) -> None:
        machine = machine or platform.machine()
        numbers = SYSCALL_NUMBERS.get(machine)
        if numbers is None:
            raise ProbeError(f"machine '{machine}' unsupported (known: "
                             f"{', '.join(sorted(SYSCALL_NUMBERS))})")
        self._nr_bpf, self._nr_perf, self._nr_setns, self._nr_membarrier = numbers
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def _check(self, result: int, what: str) -> int:
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result

    def bpf(self, cmd: int, attr: ctypes.Array, what: str) -> int:
        return self._check(self._libc.syscall(self._nr_bpf, ctypes.c_int(cmd), attr,
                                              ctypes.c_uint(len(attr))), what)

    def perf_event_open(self, attr: ctypes.Array, cpu: int, what: str) -> int:
        return self._check(self._libc.syscall(self._nr_perf, attr, ctypes.c_int(-1),
                                              ctypes.c_int(cpu), ctypes.c_int(-1),
                                              ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC)), what)

    def ioctl(self, fd: int, request: int, arg: int, what: str) -> int:
        return self._check(self._libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request),
                                            ctypes.c_int(arg)), what)

    def setns(self, fd: int, nstype: int, what: str) -> None:
        self._check(self._libc.syscall(self._nr_setns, ctypes.c_int(fd), ctypes.c_int(nstype)),
                    what)

    def rcu_grace_period(self) -> None:
        """Wait until every CPU has left the RCU read-side sections it was in (membarrier(2) GLOBAL).

        BPF programs run inside such sections (tracepoints, XDP, tc, cgroup hooks), and
        detaching a program does not wait for the runs already under way: after this call
        none of them is still running, so counters and ring buffers read next are final.
        The kernel implements MEMBARRIER_CMD_GLOBAL as synchronize_rcu(); it refuses it
        (EINVAL) on nohz_full kernels.
        """
        self._check(self._libc.syscall(self._nr_membarrier, ctypes.c_int(MEMBARRIER_CMD_GLOBAL),
                                       ctypes.c_uint(0), ctypes.c_int(0)), "membarrier(MEMBARRIER_CMD_GLOBAL)")


def wait_for_runs_in_flight(sys: Syscalls) -> None:
    """After detaching programs: return once none of their runs already under way is still running.

    An RCU grace period where the kernel grants one (see ``Syscalls.rcu_grace_period``); on a
    kernel that refuses it, a pause far longer than any single program run takes.
    """
    try:
        sys.rcu_grace_period()
    except OSError:
        time.sleep(RUNS_IN_FLIGHT_FALLBACK_S)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def return_insns(ret: int) -> bytes:
    """r0 = ret; exit"""
    return insn(OP_MOV64_IMM, 0, imm=ret) + insn(OP_EXIT)


def probe_read_kernel_insns() -> bytes:
    """bpf_probe_read_kernel(fp - 8, 8, NULL); r0 = 0; exit - refused when lockdown forbids it."""
    return (insn(OP_MOV64_REG, 1, 10) + insn(OP_ADD64_IMM, 1, imm=-8) + insn(OP_MOV64_IMM, 2, imm=8)
            + insn(OP_MOV64_IMM, 3, imm=0) + insn(OP_CALL, imm=HELPER_PROBE_READ_KERNEL)
            + return_insns(0))


def _attr(layout: str, *values: object) -> ctypes.Array:
    buf = ctypes.create_string_buffer(BPF_ATTR_SIZE)
    struct.pack_into(layout, buf, 0, *values)
    return buf


class Bpf:
    """The handful of bpf(2) commands the probes need."""

    def __init__(self, sys: Syscalls) -> None:
        self.sys = sys
        self.loaded_ids: list[int] = []  # every program this object loaded, to check release

    def load(self, prog_type: int, ret: int, expected_attach_type: int = 0,
             attach_btf_id: int = 0) -> int:
        """Load ``r0 = ret; exit``."""
        return self.load_insns(prog_type, return_insns(ret), expected_attach_type, attach_btf_id)

    def load_insns(self, prog_type: int, insns: bytes, expected_attach_type: int = 0,
                   attach_btf_id: int = 0) -> int:
        """Load raw instructions; the OSError carries the verifier log's last line."""
        insn_buf = ctypes.create_string_buffer(insns, len(insns))
        license_buf = ctypes.create_string_buffer(LICENSE)
        log_buf = ctypes.create_string_buffer(LOG_SIZE)
        attr = ctypes.create_string_buffer(BPF_ATTR_SIZE)
        struct.pack_into("<IIQQIIQII16sIIIIQIIQII", attr, 0,
                         prog_type, len(insns) // INSN_LEN, ctypes.addressof(insn_buf),
                         ctypes.addressof(license_buf), 1, LOG_SIZE, ctypes.addressof(log_buf),
                         0, 0, PROG_NAME, 0, expected_attach_type, 0, 0, 0, 0, 0, 0, 0,
                         attach_btf_id)
        try:
            fd = self.sys.bpf(BPF_PROG_LOAD, attr, f"BPF_PROG_LOAD type {prog_type}")
        except OSError as exc:
            log = log_buf.value.decode(errors="replace").strip().splitlines()
            detail = f" (verifier: {log[-1]})" if log else ""
            raise OSError(exc.errno, f"{exc.strerror}{detail}") from None
        try:
            self.loaded_ids.append(self.prog_id(fd))
        except OSError:
            os.close(fd)
            raise
        return fd

    def prog_id(self, prog_fd: int) -> int:
        info = ctypes.create_string_buffer(PROG_INFO_SIZE)
        attr = _attr("<IIQ", prog_fd, PROG_INFO_SIZE, ctypes.addressof(info))
        self.sys.bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
        return struct.unpack_from("<I", info, PROG_INFO_ID_OFFSET)[0]

    def prog_exists(self, prog_id: int) -> bool:
        try:
            fd = self.sys.bpf(BPF_PROG_GET_FD_BY_ID, _attr("<I", prog_id),
                              f"BPF_PROG_GET_FD_BY_ID {prog_id}")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        os.close(fd)
        return True

    def wait_released(self, timeout: float = RELEASE_TIMEOUT_S) -> list[int]:
        """Wait for the kernel to free every program loaded here; return those still alive.

        Programs held only by a file descriptor vanish on close; one held by a tc filter
        or by a device of a namespace being dismantled is freed by deferred kernel work.
        """
        deadline = time.monotonic() + timeout
        alive = [pid for pid in self.loaded_ids if self.prog_exists(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(RELEASE_POLL_S)
            alive = [pid for pid in alive if self.prog_exists(pid)]
        return alive

    def link_create(self, prog_fd: int, target: int, attach_type: int, flags: int = 0,
                    extra: bytes = b"") -> int:
        """``extra``: the attach-type specific part of link_create (e.g. netfilter opts)."""
        attr = _attr(f"<IIII{len(extra)}s", prog_fd, target, attach_type, flags, extra)
        return self.sys.bpf(BPF_LINK_CREATE, attr, f"BPF_LINK_CREATE attach_type {attach_type}")

    def raw_tracepoint_open(self, prog_fd: int, name: bytes | None) -> int:
        """``name`` None for BTF-typed (fentry/tp_btf) programs: their target came at load."""
        name_buf = ctypes.create_string_buffer(name) if name is not None else None
        attr = _attr("<QI", ctypes.addressof(name_buf) if name_buf is not None else 0, prog_fd)
        return self.sys.bpf(BPF_RAW_TRACEPOINT_OPEN, attr, "BPF_RAW_TRACEPOINT_OPEN")

    def map_create(self, map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
        attr = _attr("<IIII", map_type, key_size, value_size, max_entries)
        return self.sys.bpf(BPF_MAP_CREATE, attr, f"BPF_MAP_CREATE type {map_type}")

    def perf_attach(self, prog_fd: int, perf_type: int, config: int, config1: int = 0) -> int:
        attr = ctypes.create_string_buffer(PERF_ATTR_SIZE)
        struct.pack_into("<IIQQQQQIIQQ", attr, 0, perf_type, PERF_ATTR_SIZE, config, 1, 0, 0,
                         0, 1, 0, config1, 0)
        perf_fd = self.sys.perf_event_open(attr, 0, f"perf_event_open type {perf_type}")
        try:
            self.sys.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd, "PERF_EVENT_IOC_SET_BPF")
        except OSError:
            os.close(perf_fd)
            raise
        return perf_fd


class FdSet:
    """Closes every fd it was given, last first."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def add(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        while self._fds:
            try:
                os.close(self._fds.pop())
            except OSError:
                pass

    def __enter__(self) -> "FdSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- individual probes (each returns None on success, raises OSError/ProbeError otherwise) -

def probe_kprobe(bpf: Bpf, tracefs_dir: Path | None) -> None:
    """Attach a kprobe on KPROBE_TARGET through the kprobe PMU, else through kprobe_events."""
    if PROC_KPROBE_TYPE.exists():
        perf_type = int(PROC_KPROBE_TYPE.read_text())
        with FdSet() as fds:
            prog = fds.add(bpf.load(PROG_KPROBE, 0))
            name = ctypes.create_string_buffer(KPROBE_TARGET.encode())
            fds.add(bpf.perf_attach(prog, perf_type, 0, ctypes.addressof(name)))
        return
    events = tracefs_dir / "kprobe_events" if tracefs_dir else None
    if events is None or not events.exists():
        raise ProbeError("kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe) "
                         "and no kprobe_events in tracefs (CONFIG_KPROBE_EVENTS off)")
    if tracefs_dir is None:
        raise ProbeError("tracefs is not mounted")
    event = f"latscope_cap_{os.getpid()}"
    try:
        with events.open("a") as out:
            out.write(f"p:{KPROBE_GROUP}/{event} {KPROBE_TARGET}\n")
    except OSError as exc:
        raise ProbeError(f"kprobe_events refused 'p:{KPROBE_GROUP}/{event} {KPROBE_TARGET}': "
                         f"{exc.strerror}") from exc
    try:
        tp_id = int((tracefs_dir / "events" / KPROBE_GROUP / event / "id").read_text())
        with FdSet() as fds:
            prog = fds.add(bpf.load(PROG_KPROBE, 0))
            fds.add(bpf.perf_attach(prog, PERF_TYPE_TRACEPOINT, tp_id))
    finally:
        with events.open("a") as out:  # after the perf event is closed, or this is EBUSY
            out.write(f"-:{KPROBE_GROUP}/{event}\n")


def probe_fentry(bpf: Bpf, btf: Btf | None) -> None:
    if btf is None:
        raise ProbeError("no BTF: fentry needs it")
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_TRACING, 0, ATTACH_TRACE_FENTRY,
                                btf.find_type(FENTRY_TARGET, KIND_FUNC)))
        fds.add(bpf.raw_tracepoint_open(prog, None))


def probe_tp_btf(bpf: Bpf, btf: Btf | None) -> None:
    if btf is None:
        raise ProbeError("no BTF: tp_btf needs it")
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_TRACING, 0, ATTACH_TRACE_RAW_TP,
                                btf.find_type(f"btf_trace_{TP_BTF_TARGET}", KIND_TYPEDEF)))
        fds.add(bpf.raw_tracepoint_open(prog, None))


def probe_raw_tracepoint(bpf: Bpf) -> None:
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_RAW_TRACEPOINT, 0))
        fds.add(bpf.raw_tracepoint_open(prog, RAW_TP_TARGET))


def probe_tracepoint_attach(bpf: Bpf, tracefs_dir: Path | None) -> None:
    if tracefs_dir is None:
        raise ProbeError("tracefs not mounted")
    id_file = tracefs_dir / "events" / TRACEPOINT_ATTACH_TARGET / "id"
    try:
        tp_id = int(id_file.read_text())
    except OSError as exc:
        raise ProbeError(f"cannot read {id_file}: {exc.strerror}") from exc
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_TRACEPOINT, 0))
        fds.add(bpf.perf_attach(prog, PERF_TYPE_TRACEPOINT, tp_id))


def probe_probe_read_kernel(bpf: Bpf) -> None:
    """Every tracepoint hook reads sk_buff/sock fields with it; lockdown=confidentiality
    removes it (load then fails with an unknown-helper error)."""
    os.close(bpf.load_insns(PROG_TRACEPOINT, probe_read_kernel_insns()))


def probe_netfilter_link(bpf: Bpf) -> None:
    """A BPF netfilter hook at IPv4 LOCAL_OUT (per network namespace: run it in a scratch one)."""
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_NETFILTER, NF_ACCEPT, ATTACH_NETFILTER))
        opts = struct.pack("<IIiI", NFPROTO_IPV4, NF_INET_LOCAL_OUT, NF_PRIORITY, 0)
        fds.add(bpf.link_create(prog, 0, ATTACH_NETFILTER, 0, opts))


def probe_ringbuf(bpf: Bpf) -> None:
    os.close(bpf.map_create(MAP_RINGBUF, 0, 0, os.sysconf("SC_PAGE_SIZE")))


def probe_cgroup(bpf: Bpf, cgroup_dir: Path, prog_type: int, attach_type: int, ret: int) -> None:
    """Attach to ``cgroup_dir`` through a link; closing the link detaches."""
    with FdSet() as fds:
        prog = fds.add(bpf.load(prog_type, ret, attach_type))
        cg = fds.add(os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY))
        fds.add(bpf.link_create(prog, cg, attach_type))


def probe_cgroup_skb(bpf: Bpf, cgroup_dir: Path) -> None:
    for attach_type in (ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_INET_INGRESS):
        probe_cgroup(bpf, cgroup_dir, PROG_CGROUP_SKB, attach_type, 1)


def probe_xdp(bpf: Bpf, ifindex: int, flags: int) -> None:
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_XDP, XDP_PASS, ATTACH_XDP))
        fds.add(bpf.link_create(prog, ifindex, ATTACH_XDP, flags))


def probe_tcx(bpf: Bpf, ifindex: int) -> None:
    with FdSet() as fds:
        prog = fds.add(bpf.load(PROG_SCHED_CLS, TC_ACT_OK))
        fds.add(bpf.link_create(prog, ifindex, ATTACH_TCX_INGRESS))


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _netlink_request(sock: socket.socket, msg_type: int, flags: int, body: bytes,
                     what: str) -> None:
    header = struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0)
    sock.send(header + body)
    reply = sock.recv(65536)
    length, reply_type = struct.unpack_from("=IH", reply, 0)
    if reply_type == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, 16)
        if code:
            raise OSError(-code, f"{what}: {os.strerror(-code)}")


def probe_tc_clsact(bpf: Bpf, ifindex: int) -> None:
    """clsact qdisc + direct-action bpf filter over rtnetlink (as ``tc filter ... bpf da``)."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    with FdSet() as fds, socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as nl:
        nl.settimeout(IP_TIMEOUT_S)
        prog = fds.add(bpf.load(PROG_SCHED_CLS, TC_ACT_OK))
        qdisc = struct.pack("=BxxxiIII", socket.AF_UNSPEC, ifindex, 0xFFFF0000, TC_H_CLSACT, 0)
        _netlink_request(nl, RTM_NEWQDISC, flags, qdisc + _nlattr(TCA_KIND, b"clsact\0"),
                         "RTM_NEWQDISC clsact")
        try:
            _tc_bpf_filter(nl, ifindex, prog)
        finally:
            # Deleting the qdisc drops the filter now rather than when the namespace dies.
            _netlink_request(nl, RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK,
                             qdisc + _nlattr(TCA_KIND, b"clsact\0"), "RTM_DELQDISC clsact")


def _tc_bpf_filter(nl: socket.socket, ifindex: int, prog: int) -> None:
    """``tc filter add dev <ifindex> ingress prio 1 protocol all bpf da fd <prog>``"""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    info = (1 << 16) | socket.htons(ETH_P_ALL)
    tcm = struct.pack("=BxxxiIII", socket.AF_UNSPEC, ifindex, 0, TC_H_CLSACT_INGRESS, info)
    options = (_nlattr(TCA_BPF_FD, struct.pack("=I", prog))
               + _nlattr(TCA_BPF_NAME, PROG_NAME + b"\0")
               + _nlattr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
    _netlink_request(nl, RTM_NEWTFILTER, flags,
                     tcm + _nlattr(TCA_KIND, b"bpf\0") + _nlattr(TCA_OPTIONS, options),
                     "RTM_NEWTFILTER bpf")


# ---- scratch network namespace and cgroup -------------------------------------------------

def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"'{' '.join(argv)}' failed: {exc}") from exc
    if result.returncode != 0:
        raise ProbeError(f"'{' '.join(argv)}' failed: {result.stderr.strip()}")


class ScratchNetns:
    """A namespace with an up veth pair; deleting it removes every XDP/tc attachment."""

    def __init__(self, sys: Syscalls) -> None:
        self.sys = sys
        self.loaded_ids: list[int] = []  # every program this object loaded, to check release
        self.name = f"{NETNS_PREFIX}{os.getpid()}"

    def __enter__(self) -> "ScratchNetns":
        self.__exit__()  # a namespace left by a killed probe with the same pid
        _run(["ip", "netns", "add", self.name])
        try:
            _run(["ip", "-n", self.name, "link", "add", VETH_A, "type", "veth", "peer", "name",
                  VETH_B])
            _run(["ip", "-n", self.name, "link", "set", VETH_A, "up"])
            _run(["ip", "-n", self.name, "link", "set", VETH_B, "up"])
        except ProbeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False,
                       timeout=IP_TIMEOUT_S)

    def run_inside(self, work: Callable[[int], None]) -> None:
        """Run ``work(ifindex of VETH_A)`` on a thread that has joined the namespace."""
        outcome: list[BaseException] = []

        def target() -> None:
            try:
                own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
                try:
                    ns = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                    try:
                        self.sys.setns(ns, CLONE_NEWNET, f"setns {self.name}")
                    finally:
                        os.close(ns)
                    try:
                        work(socket.if_nametoindex(VETH_A))
                    finally:
                        self.sys.setns(own, CLONE_NEWNET, "setns back")
                finally:
                    os.close(own)
            except BaseException as exc:  # re-raised on the caller's thread
                outcome.append(exc)

        thread = threading.Thread(target=target, name="latscope-cap-netns")
        thread.start()
        thread.join()
        if outcome:
            raise outcome[0]


class ScratchCgroup:
    def __init__(self, root: Path) -> None:
        self.path = root / f"{CGROUP_PREFIX}{os.getpid()}"

    def __enter__(self) -> Path:
        self.path.mkdir(exist_ok=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


# ---- facts that need no BPF ---------------------------------------------------------------

def bcc_version() -> str | None:
    """Read bcc/version.py without importing bcc (importing compiles nothing but is slow)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        return None
    return None


def systemd_is_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def tracepoints_present(tracefs_dir: Path | None, names: tuple[str, ...]) -> dict[str, bool]:
    if tracefs_dir is None:
        return {name: False for name in names}
    events = tracefs_dir / "events"
    return {name: (events / name.replace(":", "/") / "id").exists() for name in names}


def select_profile(caps: Capabilities) -> tuple[str, str, list[str]]:
    """(profile, reason, missing optional tracepoints)."""
    missing_optional = [n for n in OPTIONAL_TRACEPOINTS if not caps.tracepoints.get(n)]
    if caps.kprobes:
        return "kprobe", "kprobes attach", missing_optional
    why_not_kprobe = f"kprobes unusable ({caps.errors.get('kprobes', 'unknown')})"
    problems: list[str] = []
    missing = [n for n in REQUIRED_TRACEPOINTS if not caps.tracepoints.get(n)]
    if missing:
        problems.append(f"missing tracepoints {', '.join(missing)}")
    for name in ("tracepoint_attach", "probe_read_kernel", "sock_ops", "cgroup_skb"):
        if not getattr(caps, name):
            problems.append(f"{name} unusable ({caps.errors.get(name, 'unknown')})")
    if problems:
        return "none", f"{why_not_kprobe}; tracepoint profile impossible: " + "; ".join(
            problems), missing_optional
    return "tracepoint", f"{why_not_kprobe}; required tracepoints, sock_ops and cgroup_skb " \
                         f"attach", missing_optional


# ---- the probe -----------------------------------------------------------------------------

def _try(errors: dict[str, str], name: str, probe: Callable[[], None]) -> bool:
    try:
        probe()
    except (OSError, ProbeError, BtfError) as exc:
        errors[name] = str(exc) if not isinstance(exc, OSError) or not exc.errno else \
            f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
        return False
    return True


def probe_capabilities(ensure_mounts: bool = True, btf_path: Path = VMLINUX_BTF,
                       with_devices: bool = True) -> Capabilities:
    """Probe this host. ``ensure_mounts`` mounts tracefs/cgroup2 when missing (idempotent);
    ``with_devices`` runs the XDP/tc probes in a scratch network namespace."""
    started = time.perf_counter()
    errors: dict[str, str] = {}
    mounted: list[str] = []
    tracefs_dir: Path | None = None
    cgroup2: Path | None = None
    if ensure_mounts:
        try:
            mounts = kernel_mounts.ensure_kernel_mounts()
            tracefs_dir, cgroup2, mounted = mounts.tracefs, mounts.cgroup2, list(mounts.mounted)
        except kernel_mounts.KernelMountError as exc:
            errors["mounts"] = str(exc)
    if tracefs_dir is None:
        tracefs_dir = next((p for p in (kernel_mounts.TRACEFS_PATH, kernel_mounts.DEBUGFS_TRACING)
                            if (p / kernel_mounts.TRACEFS_MARKER).is_file()), None)
    if cgroup2 is None:
        try:
            cgroup2 = kernel_mounts.find_cgroup2()
        except kernel_mounts.KernelMountError as exc:
            errors["cgroup2"] = str(exc)

    btf: Btf | None = None
    try:
        btf = Btf.load(btf_path)
    except BtfError as exc:
        errors["btf"] = str(exc)

    sys_ = Syscalls()
    bpf = Bpf(sys_)
    result: dict[str, bool] = {}
    result["kprobes"] = _try(errors, "kprobes", lambda: probe_kprobe(bpf, tracefs_dir))
    result["fentry"] = _try(errors, "fentry", lambda: probe_fentry(bpf, btf))
    result["tp_btf"] = _try(errors, "tp_btf", lambda: probe_tp_btf(bpf, btf))
    result["raw_tracepoint"] = _try(errors, "raw_tracepoint", lambda: probe_raw_tracepoint(bpf))
    result["tracepoint_attach"] = _try(errors, "tracepoint_attach",
                                       lambda: probe_tracepoint_attach(bpf, tracefs_dir))
    result["ringbuf"] = _try(errors, "ringbuf", lambda: probe_ringbuf(bpf))
    result["probe_read_kernel"] = _try(errors, "probe_read_kernel",
                                       lambda: probe_probe_read_kernel(bpf))

    for name in ("sock_ops", "cgroup_skb"):
        result[name] = False
    if cgroup2 is None:
        errors["sock_ops"] = errors["cgroup_skb"] = "no cgroup2 hierarchy"
    else:
        try:
            with ScratchCgroup(cgroup2) as cg:
                result["sock_ops"] = _try(errors, "sock_ops", lambda: probe_cgroup(
                    bpf, cg, PROG_SOCK_OPS, ATTACH_CGROUP_SOCK_OPS, 1))
                result["cgroup_skb"] = _try(errors, "cgroup_skb",
                                            lambda: probe_cgroup_skb(bpf, cg))
        except OSError as exc:
            errors["sock_ops"] = errors["cgroup_skb"] = f"scratch cgroup: {exc}"

    device_probes: dict[str, Callable[[int], None]] = {
        "xdp_native": lambda ifindex: probe_xdp(bpf, ifindex, XDP_FLAGS_DRV_MODE),
        "xdp_generic": lambda ifindex: probe_xdp(bpf, ifindex, XDP_FLAGS_SKB_MODE),
        "tcx": lambda ifindex: probe_tcx(bpf, ifindex),
        "tc_clsact": lambda ifindex: probe_tc_clsact(bpf, ifindex),
        "netfilter_link": lambda ifindex: probe_netfilter_link(bpf),
    }
    for name in device_probes:
        result[name] = False
    if not with_devices:
        for name in device_probes:
            errors[name] = "not probed (with_devices=False)"
    else:
        try:
            with ScratchNetns(sys_) as netns:
                def run_all(ifindex: int) -> None:
                    for dev_name, dev_probe in device_probes.items():
                        result[dev_name] = _try(errors, dev_name, lambda: dev_probe(ifindex))
                netns.run_inside(run_all)
        except (OSError, ProbeError) as exc:
            for name in device_probes:
                errors.setdefault(name, f"scratch netns: {exc}")

    leftover = bpf.wait_released()
    if leftover:
        errors["cleanup"] = (f"programs {leftover} still loaded {RELEASE_TIMEOUT_S} s "
                             f"after the probe")

    caps = Capabilities(
        kernel_release=platform.release(),
        machine=platform.machine(),
        btf=btf is not None,
        tracefs=str(tracefs_dir) if tracefs_dir else None,
        cgroup2=str(cgroup2) if cgroup2 else None,
        bcc_version=bcc_version(),
        header_tree=_header_tree(errors),
        systemd_pid1=systemd_is_pid1(),
        tracepoints=tracepoints_present(tracefs_dir, REQUIRED_TRACEPOINTS + OPTIONAL_TRACEPOINTS),
        hook_profile="",
        profile_reason="",
        errors=errors,
        mounted=mounted,
        leftover_programs=leftover,
        **result,
    )
    caps.hook_profile, caps.profile_reason, caps.missing_optional = select_profile(caps)
    caps.probe_seconds = round(time.perf_counter() - started, 3)
    return caps


def _header_tree(errors: dict[str, str]) -> dict[str, str] | None:
    tree = headers.find_header_tree()
    if tree is None:
        errors["header_tree"] = "no header tree (run ensure_header_tree)"
        return None
    return tree.as_dict()
