# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Password files: one secret per name, each in ``<directory>/<name>.password`` (mode 0600, directory 0700).

The manager role keeps the per-collector Redis passwords this way: a password given
(from the inventory, vaulted) is written, a missing one is generated once and then
kept, files of names no longer wanted are removed. What leaves this module is
each password's SHA-256 (what a Redis ACL stores: ``#<hex>``), never a password.

``plan`` reads the directory and decides; ``apply`` carries the plan out (writes
are atomic: a temporary file in the same directory, then a rename). Check mode
is ``plan`` alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import string
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

SUFFIX = ".password"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ALPHABET = string.ascii_letters + string.digits
MIN_LENGTH = 16
MAX_LENGTH = 256
MAX_PASSWORD_CHARS = 1024
FILE_MODE = 0o600
DIR_MODE = 0o700


def check_name(name: object, field_name: str = "passwords") -> str:
    """A name that is also a safe file name: 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(field_name, "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
                         name if isinstance(name, str) else type(name).__name__)
    return name


def check_password(value: object, field_name: str) -> Optional[str]:
    """A given password (None or empty: generate one). Errors never show the value."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(field_name, "must be a string (the value is not shown)")
    if len(value) > MAX_PASSWORD_CHARS:
        raise InputError(field_name, f"must be at most {MAX_PASSWORD_CHARS} characters (the value is not shown)")
    if value != value.strip() or any(ch in value for ch in "\r\n\0"):
        raise InputError(field_name, "must not start or end with white space nor hold a line break "
                                     "(its file is read stripped; the value is not shown)")
    return value


def generate(length: int) -> str:
    """A new password of ``length`` letters and digits from the system's CSPRNG."""
    length = require_int("length", length, MIN_LENGTH, MAX_LENGTH)
    return "".join(secrets.choice(ALPHABET) for _position in range(length))


def sha256_hex(password: str) -> str:
    """What Redis's ACL stores for a password (``#<hex>``)."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def read_password(path: str) -> Optional[str]:
    """A file's password, stripped as its readers strip it; None when the file is missing or blank."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return text or None


@dataclass
class Plan:
    """What ``apply`` would do, and the resulting hashes (the passwords to write stay out of repr)."""

    directory: str
    create_directory: bool
    fix_directory_mode: bool
    writes: Dict[str, str] = field(default_factory=dict, repr=False)
    chmods: List[str] = field(default_factory=list)
    removals: List[str] = field(default_factory=list)
    generated: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    sha256: Dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.create_directory or self.fix_directory_mode or self.writes or self.chmods or self.removals)


def path_of(directory: str, name: str) -> str:
    return os.path.join(directory, name + SUFFIX)


def _mode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _stale(directory: str, wanted: Mapping[str, Optional[str]]) -> List[str]:
    """Names with a password file in ``directory`` that are not wanted."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    names = (entry[:-len(SUFFIX)] for entry in entries if entry.endswith(SUFFIX))
    return sorted(name for name in names if NAME_RE.fullmatch(name) and name not in wanted)


def plan(directory: str, wanted: Mapping[str, Optional[str]], length: int = 32, prune: bool = True) -> Plan:
    """Decide, for each wanted name, whether its file is kept, set (a given password) or generated."""
    if not isinstance(directory, str) or not os.path.isabs(directory):
        raise InputError("path", "must be an absolute directory path", directory)
    require_int("length", length, MIN_LENGTH, MAX_LENGTH)
    given = {check_name(name): check_password(value, f"passwords.{name}") for name, value in wanted.items()}
    directory_mode = _mode(directory)
    result = Plan(directory=directory, create_directory=directory_mode is None,
                  fix_directory_mode=directory_mode not in (None, DIR_MODE))
    for name in sorted(given):
        path = path_of(directory, name)
        current = read_password(path)
        password = given[name] or current
        if password is None:
            password = generate(length)
            result.generated.append(name)
        elif given[name] is not None and given[name] != current:
            result.updated.append(name)
        if password != current:
            result.writes[name] = password
        elif _mode(path) != FILE_MODE:
            result.chmods.append(name)
        result.sha256[name] = sha256_hex(password)
    if prune:
        result.removals.extend(_stale(directory, given))
    return result


def _write(directory: str, name: str, password: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(password)
        os.replace(temporary, path_of(directory, name))
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def apply(result: Plan) -> None:
    """Carry ``result`` out: the directory (0700), the files to write or chmod (0600), the stale ones removed."""
    if result.create_directory:
        os.makedirs(result.directory, mode=DIR_MODE)
    if result.create_directory or result.fix_directory_mode:
        os.chmod(result.directory, DIR_MODE)
    for name, password in result.writes.items():
        _write(result.directory, name, password)
    for name in result.chmods:
        os.chmod(path_of(result.directory, name), FILE_MODE)
    for name in result.removals:
        os.unlink(path_of(result.directory, name))
