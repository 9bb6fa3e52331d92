"""Network namespaces as the kernel side sees them: by cookie.

BPF programs identify a namespace by its cookie (``bpf_get_netns_cookie``, or
``net->net_cookie`` read through BTF), the same 64-bit number the socket option
``SO_NETNS_COOKIE`` returns inside that namespace. The collector resolves the
namespaces it is told to observe (its own, plus its containers', by a path
such as ``/run/netns/NAME`` or ``/proc/PID/ns/net``) to cookies once, in a
short-lived thread that enters the namespace, so the daemon itself never moves.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

SO_NETNS_COOKIE = 71
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace could not be entered or asked for its cookie."""


def own_cookie() -> int:
    """The cookie of the namespace this process is in."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


@dataclass(frozen=True)
class NamespaceInfo:
    path: str
    cookie: int
    interfaces: dict[str, int]


def run_inside(path: str, work: Callable[[], T]) -> T:
    """Run ``work()`` in the network namespace at ``path``, on a throwaway thread that entered it.

    The calling thread (and so the daemon) never changes namespace; what ``work`` returns or raises
    is handed back. Failing to enter is a NetnsError.
    """
    result: list[Any] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"cannot enter network namespace {path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=worker, name="latscope-netns", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def describe(path: str) -> NamespaceInfo:
    """Cookie and interfaces of the namespace at ``path`` (entered in a throwaway thread)."""
    if not os.path.exists(path):
        raise NetnsError(f"network namespace {path} does not exist")
    return run_inside(path, lambda: NamespaceInfo(path=path, cookie=own_cookie(), interfaces={
        name: index for index, name in socket.if_nameindex()}))


def describe_own() -> NamespaceInfo:
    return NamespaceInfo(path="/proc/self/ns/net", cookie=own_cookie(),
                         interfaces={name: index for index, name in socket.if_nameindex()})
