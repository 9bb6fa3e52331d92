"""``latscope analyse`` and ``latscope report``: the CLI side of the analysis.

Both connect to MySQL exactly as ``latscope schema`` does: the ``mysql`` section of a collector
config file (``--config``; password or password_file, never printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError


def connect(config: str) -> Any:
    """A PyMySQL connection from the ``mysql`` section of the collector config ``config``."""
    import pymysql

    from latscope.collector.config import load_config

    mysql = load_config(Path(config)).mysql
    try:
        return pymysql.connect(host=mysql.host, port=mysql.port, user=mysql.user, password=mysql.password,
                               database=mysql.database, connect_timeout=10, read_timeout=900, write_timeout=900,
                               autocommit=False)
    except pymysql.MySQLError as exc:
        raise InputError("mysql", f"cannot connect to {mysql.host}:{mysql.port} as {mysql.user} ({exc.args[-1]})") \
            from None


def cmd_analyse(args: argparse.Namespace) -> int:
    """Materialise the session; print its summary as JSON."""
    with closing(connect(args.config)) as connection:
        result = analysis_sql.materialise(connection, args.session)
    print(json.dumps(result.summary()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the terminal report (analysing first with --analyse); write the HTML report with --html."""
    from latscope.analysis import data, report_text

    with closing(connect(args.config)) as connection:
        if args.analyse:
            analysis_sql.materialise(connection, args.session)
        report = data.load(connection, args.session)
        color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
        print(report_text.render(report, color=color))
        if args.html:
            from latscope.analysis import report_html

            index = report_html.write(connection, report, Path(args.html))
            print(f"\nHTML report: {index}")
    return 0


def add_parsers(sub: Any, config_default: str) -> None:
    """The ``analyse`` and ``report`` subcommands."""
    p = sub.add_parser("analyse", help="materialise a session's analysis in SQL (replaces its rows); JSON summary",
                       epilog="example: latscope analyse --session s1 --config /etc/latscope/collector.yml")
    p.add_argument("--session", required=True, help="the session id")
    p.add_argument("--config", default=config_default, help="a config file with a mysql section")
    p.set_defaults(func=cmd_analyse)
    p = sub.add_parser("report", help="where a session's latency went: terminal table, and HTML with plots",
                       epilog="example: latscope report --session s1 --html /tmp/report-s1")
    p.add_argument("--session", required=True, help="the session id")
    p.add_argument("--config", default=config_default, help="a config file with a mysql section")
    p.add_argument("--html", metavar="DIR", help="also write DIR/index.html and its PNG plots")
    p.add_argument("--analyse", action="store_true", help="materialise the analysis first")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="highlight the largest share (default: when stdout is a terminal)")
    p.set_defaults(func=cmd_report)
