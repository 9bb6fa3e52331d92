"""``latscope supervise``: keep a daemon running where there is no systemd (containers, the lab).

It detaches (double fork, new session, stdin from /dev/null, output to a log
file), writes its pid file, runs the command, and restarts it when it exits
for any reason but a requested stop, with a backoff that doubles up to a cap
and resets after a run that lasted. SIGTERM stops the child (SIGTERM, then
SIGKILL after a grace period) and then the supervisor. A status file next to
the pid file says how often the child was restarted and why it last ended.

  latscope supervise start --pidfile P --log L -- COMMAND...
  latscope supervise stop --pidfile P
  latscope supervise status --pidfile P
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0
STOP_GRACE_S = 20.0
MARKER = "latscope-supervise"


def _alive(pidfile: Path) -> int | None:
    """The supervisor's pid if it runs (checked against its command line), else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return None
    return pid if "supervise" in cmdline and str(pidfile) in cmdline else None


def status(pidfile: Path) -> dict:
    info = {"running": False, "pid": None}
    pid = _alive(pidfile)
    if pid:
        info.update(running=True, pid=pid)
    try:
        info.update(json.loads(pidfile.with_suffix(".status").read_text()))
    except (OSError, ValueError):
        pass
    return info


def stop(pidfile: Path, timeout: float = STOP_GRACE_S + 10) -> bool:
    """Stop the supervisor (and its child); True if one was running."""
    pid = _alive(pidfile)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pidfile) == pid:
        time.sleep(0.05)
    if _alive(pidfile) == pid:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def start(pidfile: Path, log: Path, command: list[str]) -> int | None:
    """Detach a supervisor for ``command``; return its pid, or None if one already runs."""
    if _alive(pidfile):
        return None
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            text = pipe.read().strip()
        return int(text) if text.isdigit() else None
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # pylint: disable=protected-access  # the intermediate child of a double fork
    pid = os.getpid()
    pidfile.write_text(f"{pid}\n")
    os.write(write_end, f"{pid}\n".encode())
    os.close(write_end)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(out, 1)
    os.dup2(out, 2)
    try:
        code = _supervise(pidfile, command)
    finally:
        pidfile.unlink(missing_ok=True)
    os._exit(code)  # pylint: disable=protected-access  # never return into the caller's stack


def _supervise(pidfile: Path, command: list[str]) -> int:
    stopping: list[int] = []
    child: subprocess.Popen | None = None

    def on_signal(signum: int, frame: object) -> None:
        del frame
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    restarts, backoff = 0, BACKOFF_INITIAL_S
    state = pidfile.with_suffix(".status")
    while not stopping:
        started = time.monotonic()
        print(f"{time.strftime('%F %T')} {MARKER}: starting {' '.join(command)}", flush=True)
        child = subprocess.Popen(command)
        while True:
            try:
                code = child.wait(timeout=STOP_GRACE_S if stopping else None)
                break
            except subprocess.TimeoutExpired:
                child.kill()
        ran = time.monotonic() - started
        if not stopping:
            restarts += 1
        state.write_text(json.dumps({"restarts": restarts, "last_exit": code, "last_run_s": round(ran, 1)}))
        if stopping:
            break
        backoff = BACKOFF_INITIAL_S if ran >= STABLE_RUN_S else min(BACKOFF_MAX_S, backoff * 2)
        print(f"{time.strftime('%F %T')} {MARKER}: exited with {code} after {ran:.1f}s; "
              f"restart {restarts} in {backoff:.0f}s", flush=True)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="latscope supervise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("--log", type=Path)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action == "status":
        print(json.dumps(status(args.pidfile)))
        return 0
    if args.action == "stop":
        print(json.dumps({"changed": stop(args.pidfile)}))
        return 0
    if not command or args.log is None:
        parser.error("start needs --log and a command after --")
    pid = start(args.pidfile, args.log, command)
    print(json.dumps({"changed": pid is not None, "pid": pid or _alive(args.pidfile)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
