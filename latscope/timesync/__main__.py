"""``python -m latscope.timesync``: the responder, the prober and a Redis-driven sync round from a shell.

    respond   attach the XDP responder and answer probes until SIGTERM/SIGINT (or --seconds);
              prints one JSON line when attached ({"ready": ...}) and one with its counters at exit
    probe     probe observers (--host NAME=ADDRESS ...) for --rounds rounds, --every seconds apart;
              one JSON line per round: every host's estimate (and, with --samples, its raw stamps);
              with --session and --mysql-*, the estimates are stored in clock_estimates
    sync      like probe, but first asks the observers' collectors over Redis to arm (the ``sync`` op)
    token     print a new random token

Bad input is one line naming the field, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from ansible_collections.latscope.latscope.plugins.module_utils.clock import DEFAULT_PORT, new_token, parse_token
from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    DEFAULT_PREFIX, ControlPlaneError, Controller, RedisSettings, connect)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.timesync.prober import Prober, ProbeSettings, Target, estimate
from latscope.timesync.responder import MODES, Responder, ResponderSettings
from latscope.timesync.service import store_estimates, sync_round


def _token(args: argparse.Namespace) -> bytes:
    if args.token_file:
        try:
            return parse_token(Path(args.token_file).read_text(), "--token-file")
        except OSError as exc:
            raise InputError("--token-file", f"cannot be read ({exc.strerror})", args.token_file) from None
    if args.token:
        return parse_token(args.token, "--token")
    raise InputError("--token", "is required (or --token-file)")


def _hosts(values: list[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or not address:
            raise InputError("--host", "must be NAME=ADDRESS", value)
        hosts[name] = address
    if not hosts:
        raise InputError("--host", "at least one observer is required")
    return hosts


def _emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, sort_keys=True), flush=True)


def _stopper() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def respond(args: argparse.Namespace) -> int:
    settings = ResponderSettings(interface=args.interface, manager_address=args.manager, token=_token(args),
                                 port=args.port, netns=args.netns, mode=args.mode,
                                 peer_netns=tuple(args.peer_netns or ()), local_address=args.local_address)
    knob = args.inject_offset_ns is not None or args.inject_skew_ppb is not None
    stop = _stopper()
    responder = Responder(settings, test_knob=knob)
    try:
        responder.attach()
        if knob:
            responder.inject(args.inject_offset_ns or 0, args.inject_skew_ppb or 0)
        _emit({"ready": responder.state(), "attached": responder.attached})
        stop.wait(args.seconds if args.seconds else None)
        _emit({"counters": responder.counters()})
    finally:
        responder.close()
    return 0


def _connection(args: argparse.Namespace) -> Any:
    if not args.mysql_host:
        return None
    import pymysql  # noqa: PLC0415 - only when storing

    password = Path(args.mysql_password_file).read_text().strip() if args.mysql_password_file else ""
    return pymysql.connect(host=args.mysql_host, port=args.mysql_port, user=args.mysql_user, password=password,
                           database=args.mysql_database, charset="utf8mb4", autocommit=False, connect_timeout=5)


def probe(args: argparse.Namespace, redis_controller: Any = None) -> int:
    hosts = _hosts(args.host)
    settings = ProbeSettings(probes=args.probes, bursts=args.bursts, burst_interval_s=args.interval,
                             reply_timeout_s=args.timeout)
    if args.mysql_host and not args.session:
        raise InputError("--session", "is required to store estimates")
    stop = _stopper()
    prober = Prober(args.interface, _token(args), port=args.port, netns=args.netns,
                    local_address=args.local_address)
    connection = _connection(args)
    try:
        for number in range(args.rounds):
            if args.samples:
                seen = prober.probe([Target(name, address) for name, address in hosts.items()], settings)
                estimates = {name: estimate(host) for name, host in seen.items()}
                if connection is not None:
                    store_estimates(connection, args.session, estimates.values())
                samples = {name: [[s.burst, s.t1, s.t2, s.t3, s.t4] for s in host.samples]
                           for name, host in seen.items()}
            else:
                estimates = sync_round(prober, hosts, args.session or "timesync", settings,
                                       controller=redis_controller, connection=connection)
                samples = None
            payload: dict[str, Any] = {"round": number, "at_ns": time.monotonic_ns(),
                                       "estimates": {name: e.as_dict() for name, e in estimates.items()},
                                       "counters": prober.counters()}
            if samples is not None:
                payload["samples"] = samples
            _emit(payload)
            if number + 1 < args.rounds and stop.wait(args.every):
                break
    finally:
        prober.close()
        if connection is not None:
            connection.close()
    return 0


def sync(args: argparse.Namespace) -> int:
    password = Path(args.redis_password_file).read_text().strip() if args.redis_password_file else None
    client = connect(RedisSettings.from_dict({"host": args.redis_host, "port": args.redis_port,
                                              "user": args.redis_user, "password": password}))
    with closing(client):
        return probe(args, Controller(client, args.redis_prefix))


def token(args: argparse.Namespace) -> int:
    del args
    print(new_token())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latscope timesync", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interface", default="eth0")
        p.add_argument("--netns", help="namespace path of the interface (default: this process's)")
        p.add_argument("--token", help="32 hex digits (prefer --token-file)")
        p.add_argument("--token-file")
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        p.add_argument("--local-address")

    r = sub.add_parser("respond", help="the observer's XDP responder")
    common(r)
    r.add_argument("--manager", required=True, help="the manager's address (the only source answered)")
    r.add_argument("--mode", choices=MODES, default="auto")
    r.add_argument("--peer-netns", action="append", help="where the veth peer may live (repeatable)")
    r.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: at SIGTERM/SIGINT)")
    r.add_argument("--inject-offset-ns", type=int, help="TEST KNOB: add this offset to every stamp")
    r.add_argument("--inject-skew-ppb", type=int, help="TEST KNOB: and this skew")
    r.set_defaults(run=respond)

    for name, run in (("probe", probe), ("sync", sync)):
        p = sub.add_parser(name, help="the manager's prober" if name == "probe" else "arm over Redis, then probe")
        common(p)
        p.add_argument("--host", action="append", default=[], help="NAME=ADDRESS of an observer (repeatable)")
        p.add_argument("--bursts", type=int, default=8)
        p.add_argument("--probes", type=int, default=16)
        p.add_argument("--interval", type=float, default=0.05, help="seconds between bursts")
        p.add_argument("--timeout", type=float, default=0.05, help="seconds to wait for a reply")
        p.add_argument("--rounds", type=int, default=1)
        p.add_argument("--every", type=float, default=10.0, help="seconds between rounds (periodic re-sync)")
        p.add_argument("--samples", action="store_true", help="print every answered probe's stamps")
        p.add_argument("--session")
        p.add_argument("--mysql-host")
        p.add_argument("--mysql-port", type=int, default=3306)
        p.add_argument("--mysql-user", default="latscope")
        p.add_argument("--mysql-password-file")
        p.add_argument("--mysql-database", default="latscope")
        if name == "sync":
            p.add_argument("--redis-host", default="127.0.0.1")
            p.add_argument("--redis-port", type=int, default=6379)
            p.add_argument("--redis-user", help="Redis ACL user (default: Redis's default user)")
            p.add_argument("--redis-password-file")
            p.add_argument("--redis-prefix", default=DEFAULT_PREFIX)
        p.set_defaults(run=run)

    t = sub.add_parser("token", help="print a new random token")
    t.set_defaults(run=token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except InputError as exc:
        print(f"latscope timesync: {exc}", file=sys.stderr)
        return 2
    except (ControlPlaneError, OSError) as exc:
        print(f"latscope timesync: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
