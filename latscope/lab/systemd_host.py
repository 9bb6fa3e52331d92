"""Lab hosts where systemd is PID 1: the roles' systemd branch, for real, on one machine.

Such a host is a network namespace like any other, plus systemd (``/lib/systemd/systemd``) booted as
PID 1 of its own PID, mount, UTS and IPC namespaces (``ip netns exec NS unshare ...``). Before it starts,
``boot.sh`` gives it, in its mount namespace only:

- a cgroup v2 mount on ``/sys/fs/cgroup`` and a cgroup of its own, ``/latscope-lab-PREFIX-HOST``: systemd
  manages the subtree below it and nothing else (no cgroup namespace, so the collector's cgroup_skb
  programs still attach to the root cgroup, as on every other lab host);
- a private tmpfs on ``/run`` (with ``/run/latscope`` and ``/run/netns`` bound back in: the lab's state
  and the network namespaces stay reachable) and on ``/tmp``;
- a directory of the lab's state bound over ``/etc/systemd/system``: the units the roles install land
  there, never on the real machine, and two systemd hosts never share one;
- ``/proc/sys`` read-only except ``/proc/sys/net`` (its own network namespace), so nothing it runs
  changes a kernel-wide setting; ``/dev/null`` over ``/dev/console`` (systemd never writes to this
  machine's console); a tmpfs over ``/var/log/journal`` and ``Storage=volatile`` (its journal stays in
  memory and private; ``ReadKMsg=no``: the machine's kernel log stays out of it); its
  own ``/etc/hostname`` (the host's name).

systemd runs in container mode (``container=latscope-lab``) with its unit path cut down to
``/etc/systemd/system``, ``/run/systemd/system`` and the lab's own units (stub targets, the sshd
service, and journald linked from the distro's units), and no generators: the distro's other units
(udev, sysctl, tmpfiles, timers...) never load, so it starts exactly what the lab and the roles give
it. The lab's sshd is a service of that systemd, so Ansible's sessions live under it: ``systemctl`` and
``journalctl`` work over SSH and ``/proc/1/comm`` says systemd.

``stop`` SIGKILLs PID 1: the kernel kills every process of its PID namespace, the mount namespace goes
with the last of them, and the cgroup subtree is then removed (through a cgroup2 mount of a throwaway
mount namespace, never through the machine's ``/sys/fs/cgroup``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from latscope.lab.netops import CommandError, netns_pids, run, wait_listening
from latscope.lab.services import SSHD, wait_for
from latscope.lab.settings import Node

SYSTEMD = "/lib/systemd/systemd"
SSHD_UNIT = "latscope-lab-sshd.service"
CONTAINER = "latscope-lab"
BOOT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
TOOLS = ("unshare", "nsenter", "setsid", SYSTEMD)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# journald, from the distro's units (not its /dev/log socket: that one links /dev/log of this machine).
DISTRO_UNITS = Path("/lib/systemd/system")
JOURNALD = ("systemd-journald.socket", "systemd-journald.service")
# Stub targets: what the units of a Debian system order themselves against, without the distro's wants.
TARGETS = {
    "sysinit.target": f"Wants={' '.join(JOURNALD)}\n",
    "basic.target": "Requires=sysinit.target\nAfter=sysinit.target\n",
    "network.target": "",
    "network-online.target": "After=network.target\n",
    "multi-user.target": f"Requires=basic.target\nAfter=basic.target\nWants={SSHD_UNIT}\n",
}


class HostDirs:
    """Where one systemd host keeps its files, under the lab's state directory."""

    def __init__(self, lab_root: Path, node: Node) -> None:
        self.root = lab_root / "systemd" / node.name

    @property
    def etc_units(self) -> Path:
        """Bound over /etc/systemd/system inside the host."""
        return self.root / "etc-systemd-system"

    @property
    def units(self) -> Path:
        """The lab's own units (the last entry of the unit path)."""
        return self.root / "units"

    @property
    def empty(self) -> Path:
        """The generator paths: nothing to run."""
        return self.root / "no-generators"

    @property
    def boot(self) -> Path:
        return self.root / "boot.sh"

    @property
    def boot_log(self) -> Path:
        """What boot.sh says before systemd runs (systemd itself logs to its journal)."""
        return self.root / "boot.log"

    @property
    def hostname(self) -> Path:
        """Bound over /etc/hostname inside the host."""
        return self.root / "hostname"

    @property
    def cgroup_mount(self) -> Path:
        """Where ``stop`` mounts cgroup2 (in a throwaway mount namespace) to remove the host's cgroups."""
        return self.root / "cgroup"


def cgroup_name(prefix: str, node: Node) -> str:
    return f"latscope-lab-{prefix}-{node.name}"


def unit_texts(node: Node, sshd_config: Path) -> dict[str, str]:
    """The lab's units for ``node``: the stub targets and the sshd service."""
    units = {name: f"# LatScope lab: stub target of {node.name}\n[Unit]\nDescription=lab {name}\n{extra}"
             for name, extra in TARGETS.items()}
    units[SSHD_UNIT] = "\n".join([
        f"# LatScope lab: the sshd of {node.name}, a service of its systemd",
        "[Unit]",
        f"Description=LatScope lab sshd of {node.name}",
        "After=network.target",
        "",
        "[Service]",
        "Type=notify",
        f"ExecStartPre={SSHD} -t -f {sshd_config}",
        f"ExecStart={SSHD} -D -f {sshd_config}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=sshd",
        "RuntimeDirectoryMode=0755",
        # Ansible's sessions survive a restart of the daemon (as with Debian's ssh.service).
        "KillMode=process",
        "Restart=on-failure",
        "",
    ])
    return units


def boot_script(prefix: str, node: Node, dirs: HostDirs) -> str:
    """The script that turns a fresh PID+mount namespace into the host and execs systemd."""
    cgroup = f"/sys/fs/cgroup/{cgroup_name(prefix, node)}"
    return f"""#!/bin/sh
# LatScope lab: boot systemd as PID 1 of {node.name} (generated by `latscope lab up`; see
# latscope/lab/systemd_host.py). Runs as PID 1 of a new PID and mount namespace inside {node.netns}.
set -eu
# cgroup v2, and a cgroup of its own that systemd takes as its root
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p {cgroup}
echo $$ > {cgroup}/cgroup.procs
# kernel-wide settings read-only; its own network namespace's writable
mount --bind /proc/sys /proc/sys
mount --bind /proc/sys/net /proc/sys/net
mount -o remount,bind,ro /proc/sys
# /tmp and /run of its own; the lab's state and the network namespaces bound back into /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir /tmp/.lab-latscope /tmp/.lab-netns
mount --rbind /run/latscope /tmp/.lab-latscope
mount --rbind /run/netns /tmp/.lab-netns
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/latscope /run/netns /run/lock
mount --move /tmp/.lab-latscope /run/latscope
mount --move /tmp/.lab-netns /run/netns
rmdir /tmp/.lab-latscope /tmp/.lab-netns
# units the roles install land in the lab's state, not on this machine
mount --bind {dirs.etc_units} /etc/systemd/system
# never this machine's console; a journal in memory; its own name
mount --bind /dev/null /dev/console
if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=2755 tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\n' > /run/systemd/journald.conf.d/zz-latscope-lab.conf
mount --bind {dirs.hostname} /etc/hostname
exec env -i PATH={PATH} container={CONTAINER} \\
  SYSTEMD_UNIT_PATH=/etc/systemd/system:/run/systemd/system:{dirs.units} \\
  SYSTEMD_GENERATOR_PATH={dirs.empty} SYSTEMD_ENVIRONMENT_GENERATOR_PATH={dirs.empty} \\
  {SYSTEMD} --unit=multi-user.target --log-target=journal --show-status=false
"""


def _write(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    path.chmod(mode)
    return True


def write_files(prefix: str, node: Node, dirs: HostDirs, sshd_config: Path) -> bool:
    """Write the host's units and boot script; True if a unit changed (a running systemd must reload)."""
    for directory in (dirs.root, dirs.etc_units, dirs.units, dirs.empty):
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    _write(dirs.hostname, f"{node.name}\n")
    changed = False
    wanted = unit_texts(node, sshd_config)
    for name, text in wanted.items():
        changed |= _write(dirs.units / name, text)
    for name in JOURNALD:
        link = dirs.units / name
        if not link.is_symlink() or os.readlink(link) != str(DISTRO_UNITS / name):
            link.unlink(missing_ok=True)
            link.symlink_to(DISTRO_UNITS / name)
            changed = True
    for stale in dirs.units.iterdir():
        if stale.name not in wanted and stale.name not in JOURNALD:
            stale.unlink()
            changed = True
    _write(dirs.boot, boot_script(prefix, node, dirs), 0o755)
    return changed


def _ns_pid(pid: int) -> list[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def systemd_pid(netns: str) -> int | None:
    """The (machine's) pid of the systemd that is PID 1 of a PID namespace inside ``netns``, if one runs."""
    for pid in netns_pids(netns):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "systemd" and _ns_pid(pid)[-1:] == ["1"] and len(_ns_pid(pid)) > 1:
            return pid
    return None


def inside(pid: int, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in every namespace of the host whose PID 1 is ``pid`` (systemctl talks to it there)."""
    return run(["nsenter", "-t", str(pid), "-a", *argv], check=check)


def state(pid: int) -> str:
    return inside(pid, ["systemctl", "is-system-running"], check=False).stdout.strip()


def _failed_units(pid: int) -> str:
    return inside(pid, ["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"], check=False).stdout.strip()


def boot(prefix: str, node: Node, dirs: HostDirs) -> int:
    """Start systemd for ``node``; return its pid once the system runs and sshd listens."""
    argv = ["setsid", "-f", "ip", "netns", "exec", node.netns, "unshare", "--pid", "--fork", "--mount", "--uts",
            "--ipc", "--propagation", "slave", "--mount-proc", "/bin/sh", str(dirs.boot)]
    with open(dirs.boot_log, "ab") as log:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)
    found: list[int] = []

    def running() -> bool:
        pid = found[0] if found else systemd_pid(node.netns)
        if pid is None:
            return False
        found[:1] = [pid]
        now = state(pid)
        if now == "degraded":
            raise CommandError(f"systemd on {node.name} is degraded: {_failed_units(pid)} "
                               f"(journalctl inside it: nsenter -t {pid} -a journalctl -b)")
        return now == "running"

    try:
        wait_for(running, f"systemd on {node.name}", timeout=BOOT_TIMEOUT_S, interval=0.1)
    except CommandError as exc:
        tail = dirs.boot_log.read_text(errors="replace")[-1500:]
        raise CommandError(f"{exc}\n{dirs.boot_log}: {tail}") from None
    wait_listening(node.netns, node.address, 22, timeout=BOOT_TIMEOUT_S)
    return found[0]


def ensure(prefix: str, node: Node, dirs: HostDirs, sshd_config: Path, restart_sshd: bool = False) -> bool:
    """Boot the host's systemd unless it runs, and make sure its sshd does; True if anything was done.

    ``restart_sshd``: the sshd config changed, so a running sshd must restart to read it.
    """
    units_changed = write_files(prefix, node, dirs, sshd_config)
    pid = systemd_pid(node.netns)
    if pid is None:
        remove_cgroup(prefix, node, dirs)   # what a host that died (killed, say) left behind
        boot(prefix, node, dirs)
        return True
    if units_changed:
        inside(pid, ["systemctl", "daemon-reload"])
    if units_changed or restart_sshd:
        inside(pid, ["systemctl", "restart", SSHD_UNIT])
    elif inside(pid, ["systemctl", "is-active", "--quiet", SSHD_UNIT], check=False).returncode != 0:
        inside(pid, ["systemctl", "start", SSHD_UNIT])
    else:
        return False
    wait_listening(node.netns, node.address, 22, timeout=BOOT_TIMEOUT_S)
    return True


def sshd_active(node: Node) -> bool:
    pid = systemd_pid(node.netns)
    return bool(pid) and inside(pid, ["systemctl", "is-active", "--quiet", SSHD_UNIT], check=False).returncode == 0


def stop(prefix: str, node: Node, dirs: HostDirs) -> int | None:
    """SIGKILL the host's PID 1 (and so every process of it), then remove its cgroups; its pid if it ran."""
    pid = systemd_pid(node.netns)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    remove_cgroup(prefix, node, dirs)
    return pid


def remove_cgroup(prefix: str, node: Node, dirs: HostDirs) -> None:
    """Remove the host's cgroup subtree (empty once its processes are gone) if it exists."""
    if not dirs.root.exists():
        return
    dirs.cgroup_mount.mkdir(parents=True, exist_ok=True)
    script = ('mount -t cgroup2 cgroup2 "$1" || exit 1\n'
              'if [ -d "$1/$2" ]; then find "$1/$2" -depth -type d -exec rmdir {} + || status=1; fi\n'
              'umount "$1"\nexit ${status:-0}\n')
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        proc = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                    str(dirs.cgroup_mount), cgroup_name(prefix, node)], check=False)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"cannot remove the cgroup {cgroup_name(prefix, node)} of {node.name}: "
                               f"{proc.stderr.strip()}")
        time.sleep(0.1)
