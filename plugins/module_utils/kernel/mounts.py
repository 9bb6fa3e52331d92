"""Make sure tracefs and a cgroup v2 hierarchy are reachable; return where they are.

Tracepoint attachment needs tracefs (event ids live under ``events/``), and
``sock_ops``/``cgroup_skb`` programs need a cgroup v2 directory to attach to.
Neither can be assumed: ``ip netns exec`` starts processes in a fresh mount
namespace with a new sysfs on ``/sys``, in which ``/sys/kernel/tracing`` and
``/sys/fs/cgroup/*`` are empty directories.

Call :func:`ensure_kernel_mounts` before ``import bcc``: BCC picks its tracefs
path (``/sys/kernel/debug/tracing`` if it exists, else ``/sys/kernel/tracing``)
once, at import time. Every function is idempotent: it mounts only what is
missing, and reports what it mounted.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
TRACEFS_PATH = Path("/sys/kernel/tracing")
DEBUGFS_PATH = Path("/sys/kernel/debug")
DEBUGFS_TRACING = DEBUGFS_PATH / "tracing"
CGROUP2_FALLBACK = Path("/run/latscope/cgroup2")
SYSFS_CGROUP = Path("/sys/fs/cgroup")  # where the kernel offers cgroup filesystems a mount point
TRACEFS_MARKER = "available_events"
CGROUP2_MARKER = "cgroup.procs"
MOUNT_TIMEOUT_S = 10
CLONE_NEWNS = 0x00020000


class KernelMountError(RuntimeError):
    """A filesystem LatScope needs is missing and cannot be mounted."""


@dataclass(frozen=True)
class MountEntry:
    mount_point: Path
    fs_type: str
    source: str
    root: str


@dataclass(frozen=True)
class KernelMounts:
    tracefs: Path
    cgroup2: Path
    mounted: tuple[str, ...]  # mount points this call created (empty when nothing changed)

    @property
    def changed(self) -> bool:
        return bool(self.mounted)

    def as_dict(self) -> dict[str, object]:
        return {"tracefs": str(self.tracefs), "cgroup2": str(self.cgroup2),
                "mounted": list(self.mounted)}


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out: list[str] = []
    i = 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries: list[MountEntry] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        entries.append(MountEntry(Path(_unescape(fields[4])), rest[0], _unescape(rest[1]),
                                  _unescape(fields[3])))
    return entries


def read_mounts(mountinfo: Path = MOUNTINFO) -> list[MountEntry]:
    try:
        return parse_mountinfo(mountinfo.read_text())
    except OSError as exc:
        raise KernelMountError(f"cannot read {mountinfo}: {exc.strerror}") from exc


def _mount(fs_type: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", fs_type, fs_type, str(target)], check=False,
                                capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelMountError(f"cannot mount {fs_type} at {target}: {exc}") from exc
    if result.returncode != 0:
        raise KernelMountError(f"cannot mount {fs_type} at {target}: "
                               f"{(result.stderr or result.stdout).strip()}")


def _is_tracefs(path: Path) -> bool:
    return (path / TRACEFS_MARKER).is_file()


def ensure_tracefs(mountinfo: Path = MOUNTINFO) -> tuple[Path, list[str]]:
    """Return (tracefs directory, mount points created)."""
    if _is_tracefs(TRACEFS_PATH):
        return TRACEFS_PATH, []
    for entry in read_mounts(mountinfo):
        if entry.fs_type == "tracefs" and _is_tracefs(entry.mount_point):
            return entry.mount_point, []
    if _is_tracefs(DEBUGFS_TRACING):  # debugfs automounts tracefs here
        return DEBUGFS_TRACING, []
    errors: list[str] = []
    if TRACEFS_PATH.is_dir():
        try:
            _mount("tracefs", TRACEFS_PATH)
            if _is_tracefs(TRACEFS_PATH):
                return TRACEFS_PATH, [str(TRACEFS_PATH)]
            errors.append(f"{TRACEFS_PATH} mounted but has no {TRACEFS_MARKER}")
        except KernelMountError as exc:
            errors.append(str(exc))
    else:
        errors.append(f"{TRACEFS_PATH} does not exist")
    try:
        mounted = []
        if not any(e.fs_type == "debugfs" and e.mount_point == DEBUGFS_PATH
                   for e in read_mounts(mountinfo)):
            _mount("debugfs", DEBUGFS_PATH)
            mounted.append(str(DEBUGFS_PATH))
        if _is_tracefs(DEBUGFS_TRACING):
            return DEBUGFS_TRACING, mounted
        errors.append(f"{DEBUGFS_TRACING} has no {TRACEFS_MARKER}")
    except KernelMountError as exc:
        errors.append(str(exc))
    raise KernelMountError("tracefs unavailable: " + "; ".join(errors))


def find_cgroup2(mountinfo: Path = MOUNTINFO) -> Path | None:
    """An existing cgroup2 mount of the whole hierarchy (root "/"), preferring /sys/fs/cgroup."""
    candidates = [e.mount_point for e in read_mounts(mountinfo)
                  if e.fs_type == "cgroup2" and e.root == "/"
                  and (e.mount_point / CGROUP2_MARKER).exists()]
    if not candidates:
        return None
    candidates.sort(key=lambda p: (p != Path("/sys/fs/cgroup"), len(str(p)), str(p)))
    return candidates[0]


def ensure_cgroup2(mountinfo: Path = MOUNTINFO,
                   fallback: Path = CGROUP2_FALLBACK) -> tuple[Path, list[str]]:
    """Return (cgroup2 root directory, mount points created)."""
    found = find_cgroup2(mountinfo)
    if found is not None:
        return found, []
    _mount("cgroup2", fallback)
    if not (fallback / CGROUP2_MARKER).exists():
        raise KernelMountError(f"cgroup2 mounted at {fallback} but it has no {CGROUP2_MARKER}")
    return fallback, [str(fallback)]


def ensure_kernel_mounts(mountinfo: Path = MOUNTINFO,
                         cgroup2_fallback: Path = CGROUP2_FALLBACK) -> KernelMounts:
    tracefs, mounted_t = ensure_tracefs(mountinfo)
    cgroup2, mounted_c = ensure_cgroup2(mountinfo, cgroup2_fallback)
    return KernelMounts(tracefs, cgroup2, tuple(mounted_t + mounted_c))


def enter_private_mount_namespace() -> None:
    """Move this process into a mount namespace of its own from which no mount propagates.

    What it (or a child) mounts afterwards is seen by nobody else and disappears when it exits: check mode
    probes with tracefs and cgroup2 mounted, as the real run would, and leaves the host as it was.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        code = ctypes.get_errno()
        raise KernelMountError(f"cannot create a private mount namespace: {os.strerror(code)}")
    try:
        result = subprocess.run(["mount", "--make-rprivate", "/"], check=False, capture_output=True, text=True,
                                timeout=MOUNT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelMountError(f"cannot make the mounts private: {exc}") from exc
    if result.returncode != 0:
        raise KernelMountError(f"cannot make the mounts private: {(result.stderr or result.stdout).strip()}")
