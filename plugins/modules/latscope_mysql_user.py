#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_mysql_user
short_description: A least-privilege MariaDB/MySQL user of the LatScope store
version_added: 0.1.0
description:
  - Creates, updates or removes one database user and makes its privileges exactly the wanted ones (privileges
    it has beyond them are revoked), over PyMySQL, in the manner of C(community.mysql.mysql_user).
  - The wanted privileges are a I(preset) of the store's schema (C(collector) - INSERT on the raw tables;
    C(analysis) - read everything, own the derived I(tables); C(owner) - everything on the database, for the
    migrations), or an explicit I(privileges) mapping.
  - The password is compared with the stored hash (C(PASSWORD()), MariaDB and mysql_native_password), so a run
    with the same password changes nothing. Where that cannot be compared, use I(update_password=on_create).
  - Changes something only when the user, its password or its privileges differ.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  name:
    description: User name.
    type: str
    required: true
  host:
    description: Host part of the account (C(%) for any).
    type: str
    default: "%"
  password:
    description: Its password; required to create the user.
    type: str
  update_password:
    description: C(always) sets the password when it differs; C(on_create) only when the user is created.
    type: str
    choices: [always, on_create]
    default: always
  state:
    description: C(present) or C(absent).
    type: str
    choices: [present, absent]
    default: present
  preset:
    description: Privileges from the store's schema; needs I(database). Mutually exclusive with I(privileges).
    type: str
    choices: [collector, analysis, owner]
  database:
    description: The store's database (for I(preset) and I(create_database)).
    type: str
  tables:
    description: For I(preset=analysis) - the derived tables the analysis creates, fills and drops.
    type: list
    elements: str
    default: []
  privileges:
    description:
      - 'Explicit privileges: a mapping of C(DATABASE.TABLE) or C(DATABASE.*) to a list (or a comma-separated
        string) of privilege names. Mutually exclusive with I(preset).'
      - Without I(preset) and I(privileges), the user's privileges are left as they are.
    type: dict
  create_database:
    description: Create I(database) first when it is missing (utf8mb4).
    type: bool
    default: false
  login_unix_socket:
    description: Log in over this socket (as I(login_user), by socket authentication when no password is given).
    type: path
  login_host:
    description: Or over TCP to this host.
    type: str
    default: 127.0.0.1
  login_port:
    description: Its port.
    type: int
    default: 3306
  login_user:
    description: An account allowed to create users and grant (root, by socket, on the manager).
    type: str
    default: root
  login_password:
    description: Its password.
    type: str
  connect_timeout:
    description: Seconds to wait for the server.
    type: int
    default: 10
requirements:
  - PyMySQL (on the host the module runs on; the LatScope virtualenv has it)
attributes:
  check_mode:
    support: full
    details: Reads the user and its grants and reports the statements it would run.
  diff_mode:
    support: full
    details: Privileges before and after (never the password).
  platform:
    platforms: posix
  idempotent:
    description: A second run with the same options changes nothing (passwords compared by hash).
    support: full
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: The collectors' user - INSERT on the raw tables only
  latscope.latscope.latscope_mysql_user:
    name: latscope_collector
    password: "{{ latscope_mysql_collector_password }}"
    preset: collector
    database: latscope
    login_unix_socket: /run/mysqld/mysqld.sock
  no_log: true

- name: The analysis user - reads the raw tables, owns its derived tables
  latscope.latscope.latscope_mysql_user:
    name: latscope_analysis
    password: "{{ latscope_mysql_analysis_password }}"
    preset: analysis
    database: latscope
    tables: [analysis_runs, analysis_packets]
    login_unix_socket: /run/mysqld/mysqld.sock
  no_log: true

- name: A read-only reporting user
  latscope.latscope.latscope_mysql_user:
    name: report
    host: 10.0.0.%
    password: "{{ vault_report_password }}"
    privileges:
      latscope.*: SELECT
    login_host: db.example.net
    login_user: admin
    login_password: "{{ vault_db_admin_password }}"
  no_log: true

- name: Remove a user
  latscope.latscope.latscope_mysql_user:
    name: old_collector
    state: absent
    login_unix_socket: /run/mysqld/mysqld.sock
'''

RETURN = r'''
user:
  description: The account, C('name'@'host').
  returned: always
  type: str
  sample: "'latscope_collector'@'%'"
created:
  description: Whether the user was (or, in check mode, would be) created.
  returned: always
  type: bool
  sample: false
password_changed:
  description: Whether its password was (or would be) set.
  returned: always
  type: bool
  sample: false
database_created:
  description: Whether I(database) was (or would be) created.
  returned: always
  type: bool
  sample: false
privileges:
  description: Its privileges after the run, privilege names by C(db.table) or C(db.*).
  returned: when I(state=present)
  type: dict
  sample: {"latscope.packet_samples": ["INSERT"], "latscope.schema_migrations": ["SELECT"]}
statements:
  description: The statements run (or, in check mode, that would run); passwords shown as C(********).
  returned: always
  type: list
  elements: str
  sample: ["CREATE USER 'latscope_collector'@'%' IDENTIFIED BY ********", "GRANT INSERT ON `latscope`.`hosts` TO 'latscope_collector'@'%'"]
'''

import re
import traceback
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.latscope.latscope.plugins.module_utils import mysql_grants
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError

PYMYSQL_IMPORT_ERROR: Optional[str]
try:
    import pymysql
    PYMYSQL_IMPORT_ERROR = None
except ImportError:
    pymysql = None
    PYMYSQL_IMPORT_ERROR = traceback.format_exc()

_USER = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:-]{1,255}$")
_DATABASE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
HIDDEN = "********"


def _check(params: Dict[str, Any]) -> None:
    if not _USER.match(params["name"]):
        raise InputError("name", "must be 1-32 letters, digits, '_', '.' or '-'", params["name"])
    if not _HOST.match(params["host"]):
        raise InputError("host", "must be a host name, address or pattern (letters, digits, '.', '%', ':')",
                         params["host"])
    database = params["database"]
    if database is not None and not _DATABASE.match(database):
        raise InputError("database", "must be 1-64 letters, digits or underscores", database)
    if (params["preset"] or params["create_database"]) and database is None:
        raise InputError("database", "is required with preset or create_database")


def _wanted(params: Dict[str, Any]) -> Optional[mysql_grants.Privileges]:
    if params["preset"]:
        return mysql_grants.preset(params["preset"], params["database"], params["name"], params["host"],
                                   params["tables"])
    if params["privileges"] is not None:
        return mysql_grants.from_mapping(params["privileges"])
    return None


def _connect(params: Dict[str, Any]) -> Any:
    common = {"user": params["login_user"], "password": params["login_password"] or "",
              "connect_timeout": params["connect_timeout"], "charset": "utf8mb4", "autocommit": True}
    if params["login_unix_socket"]:
        return pymysql.connect(unix_socket=params["login_unix_socket"], **common)
    return pymysql.connect(host=params["login_host"], port=params["login_port"], **common)


def _user_exists(cursor: Any, name: str, host: str) -> bool:
    cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s", (name, host))
    return int(cursor.fetchone()[0]) > 0


def _password_differs(cursor: Any, name: str, host: str, password: str) -> bool:
    cursor.execute("SELECT authentication_string FROM mysql.user WHERE User = %s AND Host = %s", (name, host))
    stored = cursor.fetchone()[0] or ""
    try:
        cursor.execute("SELECT PASSWORD(%s)", (password,))
    except pymysql.MySQLError:
        raise InputError("update_password", "this server cannot compare passwords (no PASSWORD()); "
                         "use update_password=on_create") from None
    return cursor.fetchone()[0] != stored


def _grants(cursor: Any, account: Tuple[str, str]) -> mysql_grants.Privileges:
    cursor.execute("SHOW GRANTS FOR %s@%s", account)
    return mysql_grants.from_statements(row[0] for row in cursor.fetchall())


def _database_exists(cursor: Any, database: str) -> bool:
    cursor.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
    return int(cursor.fetchone()[0]) > 0


def run(module: AnsibleModule, cursor: Any) -> Dict[str, Any]:
    params = module.params
    name, host, password = params["name"], params["host"], params["password"]
    account = f"'{name}'@'{host}'"
    result: Dict[str, Any] = {"changed": False, "user": account, "created": False, "password_changed": False,
                              "database_created": False, "statements": []}
    todo: List[Tuple[str, Tuple[Any, ...], str]] = []      # (SQL, its parameters, what is reported)
    if params["create_database"] and not _database_exists(cursor, params["database"]):
        sql = f"CREATE DATABASE `{params['database']}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        todo.append((sql, (), sql))
        result["database_created"] = True
    exists = _user_exists(cursor, name, host)
    before: mysql_grants.Privileges = _grants(cursor, (name, host)) if exists else {}
    if params["state"] == "absent":
        if exists:
            todo.append(("DROP USER %s@%s", (name, host), f"DROP USER {account}"))
        after: mysql_grants.Privileges = {}
    else:
        if not exists:
            if not password:
                raise InputError("password", "is required to create the user")
            todo.append(("CREATE USER %s@%s IDENTIFIED BY %s", (name, host, password),
                         f"CREATE USER {account} IDENTIFIED BY {HIDDEN}"))
            result["created"] = result["password_changed"] = True
        elif password and params["update_password"] == "always" and _password_differs(cursor, name, host, password):
            todo.append(("ALTER USER %s@%s IDENTIFIED BY %s", (name, host, password),
                         f"ALTER USER {account} IDENTIFIED BY {HIDDEN}"))
            result["password_changed"] = True
        wanted = _wanted(params)
        after = before if wanted is None else wanted
        for statement in mysql_grants.changes(before, after, account):
            todo.append((statement, (), statement))
        result["privileges"] = mysql_grants.as_text(after)
    result["statements"] = [shown for _sql, _args, shown in todo]
    result["changed"] = bool(todo)
    if module._diff:   # pylint: disable=protected-access
        result["diff"] = {"before": {"exists": exists, "privileges": mysql_grants.as_text(before)},
                          "after": {"exists": params["state"] == "present",
                                    "privileges": mysql_grants.as_text(after)}}
    if not module.check_mode:
        for sql, args, _shown in todo:
            cursor.execute(sql, args or None)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "host": {"type": "str", "default": "%"},
            "password": {"type": "str", "no_log": True},
            "update_password": {"type": "str", "choices": ["always", "on_create"], "default": "always"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "preset": {"type": "str", "choices": list(mysql_grants.PRESETS)},
            "database": {"type": "str"},
            "tables": {"type": "list", "elements": "str", "default": []},
            "privileges": {"type": "dict"},
            "create_database": {"type": "bool", "default": False},
            "login_unix_socket": {"type": "path"},
            "login_host": {"type": "str", "default": "127.0.0.1"},
            "login_port": {"type": "int", "default": 3306},
            "login_user": {"type": "str", "default": "root"},
            "login_password": {"type": "str", "no_log": True},
            "connect_timeout": {"type": "int", "default": 10},
        },
        mutually_exclusive=[["preset", "privileges"]],
        supports_check_mode=True,
    )
    if pymysql is None:
        module.fail_json(msg=missing_required_lib("PyMySQL"), exception=PYMYSQL_IMPORT_ERROR)
    try:
        _check(module.params)
        connection = _connect(module.params)
    except InputError as err:
        module.fail_json(msg=str(err), field=err.field)
    except pymysql.MySQLError as exc:
        where = module.params["login_unix_socket"] or f"{module.params['login_host']}:{module.params['login_port']}"
        module.fail_json(msg=f"cannot log in to the database at {where} as {module.params['login_user']}: "
                             f"{exc.args[-1] if exc.args else exc}")
    try:
        with connection.cursor() as cursor:
            result = run(module, cursor)
    except InputError as err:
        module.fail_json(msg=str(err), field=err.field)
    except pymysql.MySQLError as exc:
        module.fail_json(msg=f"database error for '{module.params['name']}'@'{module.params['host']}': "
                             f"{exc.args[-1] if exc.args else exc}")
    finally:
        connection.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
