#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_analysis
short_description: Materialise the latency breakdown of a LatScope session in MySQL
version_added: 0.1.0
description:
  - Turns a session's raw rows (packet samples and stamps, clock estimates, flow metrics, drop counters)
    into the derived C(analysis_*) tables - the per-packet breakdown, per-layer summaries, the RTT
    decomposition with its closure, per-hop paths and flow-metric summaries (docs/analysis.md).
  - The session's derived rows are replaced in one transaction; readers never see a half-written session.
  - Without I(force), a session already analysed by this version of the analysis, from the same number
    of samples and clock estimates, is left as it is (C(changed=false)).
  - An unknown session, a session without receiver data, or a half-shipped one fails with a message
    naming what is missing; nothing stored is changed.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  session:
    description: The session to analyse.
    type: str
    required: true
  force:
    description: Materialise again even when the stored analysis is up to date.
    type: bool
    default: false
  mysql_host:
    description: The manager's MariaDB or MySQL.
    type: str
    default: 127.0.0.1
  mysql_port:
    description: Its port.
    type: int
    default: 3306
  mysql_user:
    description: A user that may read the raw tables and create and fill the C(analysis_*) tables.
    type: str
    default: latscope_analysis
  mysql_password:
    description: Its password. Never logged.
    type: str
  mysql_database:
    description: The LatScope database.
    type: str
    default: latscope
requirements:
  - PyMySQL (on the host that runs the module)
attributes:
  check_mode:
    support: full
    details: Checks the session and reports whether it would be analysed; writes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: A second run on unchanged raw rows changes nothing.
    support: full
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Materialise run-42
  latscope.latscope.latscope_analysis:
    session: run-42
    mysql_host: "{{ latscope_manager_address }}"
    mysql_password: "{{ latscope_mysql_analysis_password }}"
  register: __analysis
'''

RETURN = r'''
summary:
  description: What the (stored or new) analysis holds.
  returned: success
  type: dict
  sample:
    session: run-42
    synchronised: true
    samples: 4410
    excluded: 0
    data_pairs: 2190
    ack_pairs: 1102
    rtt_samples: 1099
    closure_ok: 1080
    closure_share: 0.9827
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError

try:
    import pymysql
    PYMYSQL_IMPORT_ERROR = None
except ImportError as import_error:
    pymysql = None
    PYMYSQL_IMPORT_ERROR = import_error

SUMMARY_COLUMNS = ("synchronised", "samples", "excluded", "data_pairs", "ack_pairs", "rtt_samples", "closure_ok")


def stored_summary(cursor, session: str):
    """The stored analysis of ``session`` if it is current (same version, samples and clock estimates)."""
    try:
        cursor.execute("SELECT version, " + ", ".join(SUMMARY_COLUMNS) + " FROM analysis_runs WHERE session_id = %s",
                       (session,))
        row = cursor.fetchone()
        if row is None or int(row[0]) != analysis_sql.ANALYSIS_VERSION:
            return None
        cursor.execute("SELECT COALESCE(SUM(estimates), 0) FROM analysis_clock WHERE session_id = %s", (session,))
        used_estimates = int(cursor.fetchone()[0])
    except pymysql.MySQLError:      # no analysis table yet
        return None
    cursor.execute("SELECT COUNT(*) FROM packet_samples WHERE session_id = %s", (session,))
    samples = int(cursor.fetchone()[0])
    cursor.execute("SELECT COUNT(*) FROM clock_estimates WHERE session_id = %s", (session,))
    estimates = int(cursor.fetchone()[0])
    summary = dict(zip(SUMMARY_COLUMNS, (int(value) for value in row[1:])))
    if summary["samples"] != samples or used_estimates != estimates:
        return None
    summary["synchronised"] = bool(summary["synchronised"])
    summary["session"] = session
    summary["closure_share"] = round(summary["closure_ok"] / summary["rtt_samples"], 4) \
        if summary["rtt_samples"] else None
    return summary


def main() -> None:
    module = AnsibleModule(
        argument_spec={"session": {"type": "str", "required": True}, "force": {"type": "bool", "default": False},
                       "mysql_host": {"type": "str", "default": "127.0.0.1"},
                       "mysql_port": {"type": "int", "default": 3306},
                       "mysql_user": {"type": "str", "default": "latscope_analysis"},
                       "mysql_password": {"type": "str", "no_log": True},
                       "mysql_database": {"type": "str", "default": "latscope"}},
        supports_check_mode=True)
    if pymysql is None:
        module.fail_json(msg=missing_required_lib("PyMySQL"), exception=str(PYMYSQL_IMPORT_ERROR))
    params = module.params
    try:
        session = analysis_sql.check_session(params["session"])
        connection = pymysql.connect(host=params["mysql_host"], port=params["mysql_port"], user=params["mysql_user"],
                                     password=params["mysql_password"] or "", database=params["mysql_database"],
                                     connect_timeout=10, read_timeout=900, write_timeout=900, autocommit=False)
    except InputError as exc:
        module.fail_json(msg=str(exc))
    except pymysql.MySQLError as exc:
        module.fail_json(msg=f"mysql: cannot connect to {params['mysql_host']}:{params['mysql_port']} as "
                             f"{params['mysql_user']} ({exc.args[-1]})")
    try:
        with connection.cursor() as cursor:
            current = None if params["force"] else stored_summary(cursor, session)
            if current is not None:
                module.exit_json(changed=False, summary=current)
            if module.check_mode:
                found = analysis_sql.inspect(cursor, session)
                if not found.has_session_row:
                    module.fail_json(msg=f"session: no session {session!r} in the database")
                module.exit_json(changed=True, summary={"session": session})
        result = analysis_sql.materialise(connection, session, database=params["mysql_database"])
    except InputError as exc:
        module.fail_json(msg=str(exc))
    except pymysql.MySQLError as exc:
        module.fail_json(msg=f"mysql: {exc.args[-1]}")
    finally:
        connection.close()
    module.exit_json(changed=True, summary=result.summary())


if __name__ == "__main__":
    main()
