"""The lab's daemons: one sshd per machine, Redis and MariaDB on the manager.

Each runs inside its namespace (``ip netns exec``), keeps its pid file, config
and data under the lab's state directory, and is found again by pid file and
command line, so ``up`` can tell "running" from "stale" and ``down`` stops
exactly what the lab started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from latscope.lab.netops import CommandError, run

SSHD = "/usr/sbin/sshd"
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 60.0


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and its command line has ``marker``."""
    pid = _read_pid(pidfile)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return pid if marker in cmdline else None


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM ``pid``, then SIGKILL if it outlives ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_for(predicate, what: str, timeout: float = START_TIMEOUT_S, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true, and return that; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise CommandError(f"timed out after {timeout:.0f}s waiting for {what}")


# --- sshd -------------------------------------------------------------------

def sshd_config(name: str, address: str, host_key: Path, authorized_keys: Path, pidfile: Path | None) -> str:
    """The config of a lab machine's sshd; no pid file (``None``) where systemd runs it."""
    return "\n".join([
        "# LatScope lab: sshd of one lab machine (key-only, root by key)",
        f"ListenAddress {address}",
        "Port 22",
        f"HostKey {host_key}",
        f"PidFile {pidfile or 'none'}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "MaxStartups 64:30:128",
        "MaxSessions 64",
        "Subsystem sftp internal-sftp",
        f"SetEnv LATSCOPE_LAB_NODE={name}",
        "",
    ])


def ensure_sshd(netns: str, config: Path, pidfile: Path) -> bool:
    """Start sshd in ``netns`` with ``config`` unless it already runs; True if started."""
    if running_pid(pidfile, str(config)):
        return False
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    run([SSHD, "-t", "-f", str(config)], netns=netns)
    run([SSHD, "-f", str(config)], netns=netns)
    wait_for(lambda: running_pid(pidfile, str(config)) is not None, f"sshd in {netns}")
    return True


# --- Redis ------------------------------------------------------------------
#
# The lab starts a bare server (one password) the way the manager role runs Redis where systemd is not
# PID 1: under ``latscope supervise`` with the pid file and config file the lab inventory gives the role
# (manager_redis_pidfile, manager_redis_config_file). The first deploy.yml then rewrites that config (ACL
# users, persistence) and restarts it through the same supervisor; ``up`` never writes the file again.

def redis_config(addresses: list[str], port: int, password: str, data_dir: Path) -> str:
    return "\n".join([
        "# LatScope lab: the control plane, bare (the manager role takes this file over)",
        f"bind {' '.join(addresses)}",
        f"port {port}",
        "protected-mode yes",
        f'requirepass "{password}"',
        "daemonize no",
        f"dir {data_dir}",
        'logfile ""',
        'save ""',
        "appendonly no",
        "",
    ])


def redis_listening(netns: str, port: int) -> bool:
    """Redis answers on loopback in ``netns`` (a refused password counts: it is up)."""
    proc = run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"], netns=netns, check=False)
    return "PONG" in proc.stdout or "NOAUTH" in proc.stdout + proc.stderr


def ensure_redis(netns: str, config: Path, pidfile: Path, log: Path, port: int) -> bool:
    """Start redis-server with ``config`` under ``latscope supervise`` unless it runs; True if started."""
    if running_pid(pidfile, "redis-server"):
        return False
    run([sys.executable, "-m", "latscope", "supervise", "start", "--pidfile", str(pidfile), "--log", str(log),
         "--", "redis-server", str(config)], netns=netns)
    wait_for(lambda: redis_listening(netns, port), f"redis-server in {netns}")
    return True


# --- MariaDB ----------------------------------------------------------------

def mariadb_config(address: str, port: int, data_dir: Path, socket: Path, pidfile: Path, log: Path) -> str:
    return "\n".join([
        "# LatScope lab: the data store",
        "[mysqld]",
        "user = mysql",
        f"datadir = {data_dir}",
        # its own temporary directory: large sorts spill here, out of reach of whatever cleans /tmp
        f"tmpdir = {data_dir.parent / 'tmp'}",
        f"socket = {socket}",
        f"pid-file = {pidfile}",
        f"log-error = {log}",
        f"bind-address = {address}",
        f"port = {port}",
        "skip-name-resolve",
        "innodb_buffer_pool_size = 256M",
        "innodb_flush_log_at_trx_commit = 2",
        "max_connections = 200",
        "",
        "[client]",
        f"socket = {socket}",
        "",
    ])


def _mysql_owned(path: Path) -> None:
    shutil.chown(path, user="mysql", group="mysql")


def ensure_mariadb(netns: str, config: Path, data_dir: Path, socket: Path, pidfile: Path) -> bool:
    """Initialise the data directory once and start mariadbd; True if anything was done."""
    if running_pid(pidfile, "mariadbd") and socket.exists():
        return False
    if not (data_dir / "mysql").is_dir():
        data_dir.mkdir(parents=True, exist_ok=True)
        _mysql_owned(data_dir)
        run(["mariadb-install-db", f"--defaults-file={config}", "--auth-root-authentication-method=socket",
             "--skip-test-db"])
    # Socket, pid file and log live in a directory the server's own user can write.
    socket.parent.mkdir(parents=True, exist_ok=True)
    _mysql_owned(socket.parent)
    out = data_dir.parent / "mariadbd.out"
    with open(out, "ab") as log:
        server = subprocess.Popen(["ip", "netns", "exec", netns, "mariadbd", f"--defaults-file={config}"],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def ready() -> bool:
        if server.poll() is not None:
            raise CommandError(f"mariadbd in {netns} exited ({server.returncode}); see {out}")
        return run(["mariadb-admin", f"--defaults-file={config}", "--connect-timeout=2", "ping"],
                   check=False).returncode == 0

    wait_for(ready, f"mariadbd in {netns}")
    return True


def mariadb_sql(config: Path, sql: str) -> str:
    """Run ``sql`` as the local root over the socket (no password, socket auth)."""
    return run(["mariadb", f"--defaults-file={config}", "--batch", "--skip-column-names"],
               input_text=sql).stdout
