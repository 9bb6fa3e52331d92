# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A database user's privileges as data: wanted (a preset of ``schema`` or a mapping), found (SHOW GRANTS), and
the REVOKE/GRANT statements that turn the one into the other (pure: no driver, no connection).

Privileges are a mapping ``{(database, table): frozenset of privilege names}``, ``table`` being ``*`` for a
database-level grant and ``database`` ``*`` for a global one. ``USAGE`` (the right to log in) is never listed.
Column-level grants are not managed: finding one is an error naming it, so nothing is revoked by mistake.

The presets come from ``schema`` (one implementation of who may do what): ``collector`` (INSERT on the raw
tables, reading the schema version), ``analysis`` (read everything, own the named derived tables) and ``owner``
(everything on the database: runs the migrations).
"""

from __future__ import annotations

import re
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Tuple

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    analysis_grants, collector_grants, manager_grants)

Target = Tuple[str, str]
Privileges = Dict[Target, FrozenSet[str]]

PRESETS = ("collector", "analysis", "owner")
ALL = "ALL PRIVILEGES"
# Table- and database-level privileges of MariaDB 10.11 and MySQL 8 (what a mapping may ask for).
KNOWN = frozenset({
    ALL, "ALTER", "ALTER ROUTINE", "CREATE", "CREATE ROUTINE", "CREATE TEMPORARY TABLES", "CREATE VIEW", "DELETE",
    "DELETE HISTORY", "DROP", "EVENT", "EXECUTE", "INDEX", "INSERT", "LOCK TABLES", "REFERENCES", "SELECT",
    "SHOW VIEW", "TRIGGER", "UPDATE",
})
_IDENT = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<target>\S+) TO ", re.S)
_TARGET = re.compile(r"^(?:`(?P<db>(?:[^`]|``)+)`|(?P<dbstar>\*))\.(?:`(?P<table>(?:[^`]|``)+)`|(?P<tstar>\*))$")


def _names(field: str, value: Any) -> FrozenSet[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(field, "must be a list of privileges or a comma-separated string", value)
    names = set()
    for item in items:
        name = " ".join(str(item).upper().split())
        name = ALL if name == "ALL" else name
        if name not in KNOWN:
            raise InputError(field, f"unknown privilege {name!r}; known: {', '.join(sorted(KNOWN))}")
        names.add(name)
    return frozenset({ALL}) if ALL in names else frozenset(names)


def _target(field: str, text: Any) -> Target:
    if not isinstance(text, str) or text.count(".") != 1:
        raise InputError(field, "must be DATABASE.TABLE or DATABASE.*", text)
    database, table = text.split(".")
    if not _IDENT.match(database) or not (table == "*" or _IDENT.match(table)):
        raise InputError(field, "names must be 1-64 letters, digits or underscores (or * for every table)", text)
    return database, table


def from_mapping(raw: Any, field: str = "privileges") -> Privileges:
    """``{"db.table": "SELECT,INSERT", "db.*": [...]}`` as privileges, validated (errors name the entry)."""
    if not isinstance(raw, Mapping):
        raise InputError(field, "must be a mapping of DATABASE.TABLE to privileges", type(raw).__name__)
    wanted: Privileges = {}
    for key, value in raw.items():
        where = f"{field}.{key}"
        wanted[_target(where, key)] = _names(where, value)
    return wanted


def from_statements(statements: Iterable[str]) -> Privileges:
    """Privileges of GRANT statements (``schema``'s, or the lines of SHOW GRANTS); USAGE left out."""
    found: Dict[Target, set] = {}
    for line in statements:
        match = _GRANT.match(line.strip())
        if not match:
            continue                          # GRANT PROXY, roles: not privileges on tables
        privs, target = match.group("privs"), match.group("target")
        if target.startswith("PROXY") or privs.startswith("PROXY"):
            continue
        if "(" in privs:
            raise InputError("privileges", f"column-level grants are not managed: {line.split(' TO ')[0]}")
        parsed = _TARGET.match(target)
        if not parsed:
            raise InputError("privileges", f"cannot read the grant target {target!r}")
        key = (parsed.group("db").replace("``", "`") if parsed.group("db") else "*",
               parsed.group("table").replace("``", "`") if parsed.group("table") else "*")
        names = {" ".join(p.split()) for p in privs.split(",")} - {"USAGE"}
        if names:
            found.setdefault(key, set()).update(names)
    return {key: (frozenset({ALL}) if ALL in names else frozenset(names)) for key, names in found.items()}


def preset(name: str, database: str, user: str, host: str, tables: Iterable[str] = ()) -> Privileges:
    """The privileges ``schema`` gives a ``collector``, ``analysis`` or ``owner`` user."""
    if name == "collector":
        return from_statements(collector_grants(database, user, host))
    if name == "analysis":
        return from_statements(analysis_grants(database, user, host, list(tables)))
    if name == "owner":
        return from_statements(manager_grants(database, user, host))
    raise InputError("preset", f"must be one of {', '.join(PRESETS)}", name)


def _quoted(target: Target) -> str:
    return ".".join("*" if part == "*" else f"`{part}`" for part in target)


def changes(found: Privileges, wanted: Privileges, account: str) -> List[str]:
    """REVOKE then GRANT statements that make ``found`` equal ``wanted`` for ``account`` ('user'@'host')."""
    revokes, grants = [], []
    for target in sorted(set(found) | set(wanted)):
        have, want = found.get(target, frozenset()), wanted.get(target, frozenset())
        if have == want:
            continue
        extra, missing = have - want, want - have
        if ALL in have or ALL in want:
            extra, missing = (have if have else frozenset()), want
        if extra:
            revokes.append(f"REVOKE {', '.join(sorted(extra))} ON {_quoted(target)} FROM {account}")
        if missing:
            grants.append(f"GRANT {', '.join(sorted(missing))} ON {_quoted(target)} TO {account}")
    return revokes + grants


def as_text(privileges: Privileges) -> Dict[str, List[str]]:
    """Privileges for output: ``{"db.table": [sorted names]}``."""
    return {".".join(target): sorted(names) for target, names in sorted(privileges.items())}
