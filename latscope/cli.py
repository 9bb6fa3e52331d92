"""The ``latscope`` command line.

  latscope lab up [--hosts N] [--containers M] [--systemd-hosts K] [--range CIDR] [--prefix P]
  latscope lab down [--prefix P | --all]
  latscope lab status [--prefix P]
  latscope headers [--ensure]
  latscope facts [--no-devices]
  latscope observe [--dport P] [--netns PATH] [--seconds S]
  latscope collector [--config FILE] [--check]
  latscope schema migrate|version [--config FILE]
  latscope analyse --session S [--config FILE]
  latscope report --session S [--html DIR] [--analyse] [--config FILE]
  latscope supervise start|stop|status --pidfile P [--log L -- COMMAND...]
  latscope demo

Errors are one line on stderr naming the field, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError

EXIT_INPUT = 2
EXIT_FAILURE = 1

EPILOG = """examples:
  latscope lab up                       # manager + 2 hosts, 1 container each, in 198.18.0.0/16
  latscope lab up --hosts 8 --containers 0
  latscope lab up --systemd-hosts 1     # host1 runs systemd as its PID 1 (the roles' systemd branch)
  latscope lab status
  latscope lab down --all               # remove every lab on this machine
  latscope demo                         # lab up, then every lab machine answers over SSH
"""


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _lab_settings(args: argparse.Namespace):
    from latscope.lab.settings import LabSettings

    raw = {"prefix": args.prefix, "hosts": args.hosts, "containers": args.containers, "range": args.range,
           "systemd_hosts": args.systemd_hosts}
    if args.state_dir:
        raw["state_dir"] = args.state_dir
    return LabSettings.from_dict(raw)


def cmd_lab_up(args: argparse.Namespace) -> int:
    from latscope.lab import lab

    result = lab.up(_lab_settings(args), progress=None if args.json else _progress)
    if args.json:
        print(json.dumps({"changed": bool(result.changes), "changes": result.changes,
                          "inventory": str(result.files.inventory_dir), "seconds": round(result.seconds, 2),
                          "hosts": [n.name for n in result.plan.hosts],
                          "systemd_hosts": [n.name for n in result.plan.hosts if n.systemd],
                          "containers": [n.name for n in result.plan.containers]}))
        return 0
    what = ", ".join(result.changes) if result.changes else "nothing (already up)"
    print(f"lab {result.plan.settings.prefix}: up in {result.seconds:.1f}s; "
          f"{len(result.plan.hosts)} hosts, {len(result.plan.containers)} containers; changed: "
          f"{len(result.changes)}")
    if args.verbose:
        print(f"  changes: {what}")
    print(f"inventory: {result.files.inventory_dir}")
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from latscope.lab import lab

    prefixes = lab.known_labs() if args.all else [args.prefix]
    if not prefixes and not args.json:
        print("no lab is up")
    removed = []
    for prefix in prefixes:
        result = lab.down(prefix, state_dir=None if args.all else args.state_dir,
                          progress=None if args.json else _progress)
        removed.extend(result.removed)
        if not args.json:
            print(f"lab {prefix}: down in {result.seconds:.1f}s; removed {len(result.removed)} items")
    if args.json:
        print(json.dumps({"changed": bool(removed), "removed": removed}))
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    from latscope.lab import lab

    print(json.dumps(lab.status(args.prefix), indent=2))
    return 0


def cmd_headers(args: argparse.Namespace) -> int:
    from ansible_collections.latscope.latscope.plugins.module_utils.kernel import headers

    if args.ensure:
        tree, changed = headers.ensure_header_tree()
        print(f"{'built' if changed else 'using'} {tree.source} header tree {tree.path}")
        return 0
    tree = headers.find_header_tree()
    print(json.dumps(tree.as_dict() if tree else None))
    return 0 if tree else EXIT_FAILURE


def cmd_facts(args: argparse.Namespace) -> int:
    from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import probe_capabilities

    caps = probe_capabilities(with_devices=not args.no_devices)
    print(json.dumps(caps.as_dict(), indent=2, sort_keys=True))
    return 0 if caps.hook_profile != "none" else EXIT_FAILURE


def cmd_observe(args: argparse.Namespace) -> int:
    from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling
    from latscope.collector.observe import run_observe
    from latscope.collector.observer import ObserverLimits

    sampling = Sampling.from_dict({"size": args.size, "ports": args.port or []})
    flow = FlowFilter.from_dict({k: v for k, v in (("src", args.src), ("dst", args.dst), ("sport", args.sport),
                                                   ("dport", args.dport)) if v is not None})
    return run_observe(sampling, flow, args.netns or [], args.interface or ["eth0"], args.seconds, args.host,
                       args.session, ObserverLimits(), print_source=args.print_source)


def cmd_collector(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from latscope.collector.config import load_config

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(Path(args.config))
    if args.check:
        print(f"{args.config}: valid (host {config.host})")
        return 0
    from latscope.collector.daemon import run_daemon

    return run_daemon(config)


def cmd_schema(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pymysql

    from ansible_collections.latscope.latscope.plugins.module_utils.schema import MIGRATIONS, migrate, schema_version
    from latscope.collector.config import load_config

    mysql = load_config(Path(args.config)).mysql
    try:
        conn = pymysql.connect(host=mysql.host, port=mysql.port, user=mysql.user, password=mysql.password,
                               database=mysql.database, connect_timeout=10)
    except pymysql.MySQLError as exc:
        raise InputError("mysql", f"cannot connect to {mysql.host}:{mysql.port} as {mysql.user} ({exc.args[-1]})") \
            from None
    with conn:
        if args.action == "migrate":
            applied = migrate(conn)
            print(json.dumps({"changed": bool(applied), "applied": applied, "version": schema_version(conn)}))
        else:
            version = schema_version(conn)
            print(json.dumps({"version": version, "latest": MIGRATIONS[-1].version}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from latscope.demo import run_demo

    return run_demo(_lab_settings(args), progress=_progress)


def _add_lab_options(parser: argparse.ArgumentParser, full: bool = True) -> None:
    from latscope.lab.settings import DEFAULT_PREFIX, DEFAULT_RANGE

    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="names the lab's namespaces and links "
                        f"(default {DEFAULT_PREFIX})")
    parser.add_argument("--state-dir", default=None, help="where the lab keeps its files "
                        "(default /run/latscope/lab-PREFIX)")
    if full:
        parser.add_argument("--hosts", type=str, default="2", help="lab hosts, 1-8 (default 2)")
        parser.add_argument("--containers", type=str, default="1", help="containers per host, 0-4 (default 1)")
        parser.add_argument("--systemd-hosts", type=str, default="0", help="how many of the hosts (the first ones) "
                            "run systemd as PID 1 of their own PID and mount namespaces (default 0)")
        parser.add_argument("--range", default=DEFAULT_RANGE, help=f"address range (default {DEFAULT_RANGE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latscope", description="Where the latency of a flow goes.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    lab_parser = sub.add_parser("lab", help="the local lab: a small fleet in network namespaces")
    lab_sub = lab_parser.add_subparsers(dest="lab_command", required=True)
    p = lab_sub.add_parser("up", help="create the lab (idempotent)")
    _add_lab_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="list what changed")
    p.add_argument("--json", action="store_true", help="print the result as JSON, nothing else")
    p.set_defaults(func=cmd_lab_up)
    p = lab_sub.add_parser("down", help="remove the lab (succeeds when nothing is up)")
    _add_lab_options(p, full=False)
    p.add_argument("--all", action="store_true", help="remove every lab on this machine")
    p.add_argument("--json", action="store_true", help="print the result as JSON, nothing else")
    p.set_defaults(func=cmd_lab_down)
    p = lab_sub.add_parser("status", help="what of the lab exists, as JSON")
    _add_lab_options(p, full=False)
    p.set_defaults(func=cmd_lab_status)

    p = sub.add_parser("headers", help="the kernel header tree BCC compiles against")
    p.add_argument("--ensure", action="store_true", help="build the merged generic tree when missing")
    p.set_defaults(func=cmd_headers)

    p = sub.add_parser("facts", help="probe this host's kernel and print its capabilities and hook profile (JSON)")
    p.add_argument("--no-devices", action="store_true", help="skip the XDP/tc probes (they use a scratch namespace)")
    p.set_defaults(func=cmd_facts)

    p = sub.add_parser("observe", help="run the packet observer here and print records as JSON lines",
                       epilog="example: latscope observe --dport 5201 --netns /run/netns/ls-h1c1 --seconds 10",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="65536", help="sampling.size in bytes (default 65536)")
    p.add_argument("--port", action="append", help="sampling.ports (repeat); default: every port")
    p.add_argument("--src", help="flow filter: source address or network")
    p.add_argument("--dst", help="flow filter: destination address or network")
    p.add_argument("--sport", help="flow filter: source port")
    p.add_argument("--dport", help="flow filter: destination port")
    p.add_argument("--netns", action="append", help="also observe this namespace (e.g. /run/netns/NAME)")
    p.add_argument("--interface", action="append", help="uplink device where TX records end (default eth0)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until SIGINT/SIGTERM)")
    p.add_argument("--host", default="local", help="host name written into the records")
    p.add_argument("--session", default="observe", help="session id written into the records")
    p.add_argument("--print-source", action="store_true", help="print the BPF C and its cflags, load nothing")
    p.set_defaults(func=cmd_observe)

    p = sub.add_parser("collector", help="run the collector daemon in the foreground")
    p.add_argument("--config", default="/etc/latscope/collector.yml", help="its configuration file")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_collector)

    p = sub.add_parser("schema", help="create or check the raw tables (needs CREATE on the database)")
    p.add_argument("action", choices=("migrate", "version"))
    p.add_argument("--config", default="/etc/latscope/collector.yml", help="a config file with a mysql section")
    p.set_defaults(func=cmd_schema)

    sub.add_parser("timesync", help="time sync: respond | probe | sync | token (latscope timesync -h)")
    sub.add_parser("supervise", help="keep a command running without systemd (latscope supervise -h)")

    from latscope.analysis.commands import add_parsers as add_analysis_parsers

    add_analysis_parsers(sub, "/etc/latscope/collector.yml")

    p = sub.add_parser("demo", help="the main job on the local lab")
    _add_lab_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["supervise"]:
        from latscope.supervise import main as supervise_main

        return supervise_main(argv[1:])
    if argv[:1] == ["timesync"]:
        from latscope.timesync.__main__ import main as timesync_main

        return timesync_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"latscope: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("latscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's one line for anything else
        if getattr(args, "debug", False):
            raise
        print(f"latscope: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
