# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks the lab targets run on what the playbooks printed and what the lab's machines hold.

Run by lab.sh with the controller's Python: ``python labcheck.py COMMAND ...``. Each check prints one line
that says what it verified, or ``FAILED: ...`` naming what is wrong, and exits 1. Secrets are never printed:
a leak is reported by the secret's name and the file it was found in.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import stat
import sys
from pathlib import Path

import yaml

TASK_RE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**$")
RESULT_RE = re.compile(r"^(?P<status>changed|ok|fatal|failed|skipping): \[(?P<host>[^\]]+)\]")
RECAP_RE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>ok=.*)$")
# A log, by its name (anything under a log/ directory is one too): it may never hold a secret. Other files may
# (password files, the servers' data) when nobody but their owner and group can read them.
LOG_NAME_RE = re.compile(r"(\.log|\.out|\.err)(\.\d+)?$")
MIN_SECRET_LEN = 8


class CheckFailed(Exception):
    """A check did not hold; the message says what and where."""


def play_output(path: Path) -> str:
    return path.read_text(errors="replace")


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host."""
    found: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = RECAP_RE.match(line) if in_recap else None
        if match:
            found[match["host"]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match["counts"])}
    return found


def results(output: str) -> list[tuple[str, str, str]]:
    """(task, host, status) of every result line, in order (loop items count once per item)."""
    found, task = [], ""
    for line in output.splitlines():
        task_match = TASK_RE.match(line)
        if task_match:
            task = task_match["name"]
            continue
        result = RESULT_RE.match(line)
        if result and task:
            found.append((task, result["host"].split(" -> ")[0], result["status"]))
    return found


def changed_tasks(output: str) -> dict[str, set[str]]:
    """Per host, the names of the tasks (and handlers) that reported a change."""
    changed: dict[str, set[str]] = {}
    for task, host, status in results(output):
        if status == "changed":
            changed.setdefault(host, set()).add(task)
    return changed


def _format(changed: dict[str, set[str]]) -> str:
    return "; ".join(f"{host}: {', '.join(sorted(tasks))}" for host, tasks in sorted(changed.items()))


# ---- checks on play output -------------------------------------------------------------------------------------

def check_changes(args: argparse.Namespace) -> str:
    """Every host of the recap changed something (``--some``) or nothing (``--none``)."""
    output = play_output(args.output)
    counts = recap(output)
    if not counts:
        raise CheckFailed(f"{args.output.name}: no PLAY RECAP")
    if args.none:
        changed = {host: tasks for host, tasks in changed_tasks(output).items() if tasks}
        if changed or any(c["changed"] for c in counts.values()):
            raise CheckFailed(f"{args.output.name}: expected changed=0 everywhere, changed: {_format(changed)}")
        return f"{args.output.name}: changed=0 on {', '.join(sorted(counts))}"
    idle = sorted(host for host, c in counts.items() if not c["changed"])
    if idle:
        raise CheckFailed(f"{args.output.name}: expected changes on every host, none on {', '.join(idle)}")
    return f"{args.output.name}: " + ", ".join(f"{h} changed={c['changed']}" for h, c in sorted(counts.items()))


def check_prediction(args: argparse.Namespace) -> str:
    """Check mode's changes equal the real run's, but for the tasks check mode cannot run (``--gaps``)."""
    predicted, made = changed_tasks(play_output(args.check)), changed_tasks(play_output(args.run))
    gaps = yaml.safe_load(args.gaps.read_text())
    problems, used = [], set()
    for host in sorted(set(predicted) | set(made)):
        wrong = predicted.get(host, set()) - made.get(host, set())
        if wrong:
            problems.append(f"{host}: check mode predicted changes the run did not make: {', '.join(sorted(wrong))}")
        unpredicted = made.get(host, set()) - predicted.get(host, set())
        unexplained = sorted(task for task in unpredicted if _short(task) not in gaps)
        if unexplained:
            problems.append(f"{host}: the run changed what check mode did not predict: {', '.join(unexplained)}")
        used |= {_short(task) for task in unpredicted}
    if problems:
        raise CheckFailed("; ".join(problems))
    total = sum(len(tasks) for tasks in predicted.values())
    return (f"check mode predicted {total} changed task results, all made by the first run; the run also made "
            f"{len(used)} of the {len(gaps)} changes check mode cannot run ({', '.join(sorted(used))})")


def _short(task: str) -> str:
    """'latscope.latscope.observer : Write x' -> 'observer : Write x' (gaps are written without the namespace)."""
    return re.sub(r"^latscope\.latscope\.", "", task)


def check_refused(args: argparse.Namespace) -> str:
    """The play failed in its first task with one error naming ``--field``; no other task ran anywhere."""
    output = play_output(args.output)
    fatal = [line for line in output.splitlines() if line.startswith(("fatal:", "failed:"))]
    ran = results(output)
    tasks = sorted({task for task, _host, _status in ran})
    counts = recap(output)
    problems = []
    if args.status == 0:
        problems.append("the play succeeded")
    if len(fatal) != 1:
        problems.append(f"{len(fatal)} failed results, not one")
    if args.field not in output:
        problems.append(f"no message names {args.field!r}")
    if len(tasks) != 1 or any(status != "fatal" for _task, _host, status in ran):
        problems.append(f"tasks ran besides the failing one: {tasks}")
    if any(c["ok"] or c["changed"] for c in counts.values()):
        problems.append(f"the recap shows work done: {counts}")
    if problems:
        raise CheckFailed(f"{args.output.name}: " + "; ".join(problems))
    line = next(line for line in output.splitlines() if args.field in line)
    start = max(0, line.index(args.field) - 60)
    message = ("..." if start else "") + line[start:line.index(args.field) + len(args.field) + 60]
    return f"{args.output.name}: refused in {tasks[0]!r}, nothing else ran: {message}"


def said(args: argparse.Namespace) -> str:
    """The message of the play's last task result that has one (an assert's success_msg, a debug msg)."""
    lines = play_output(args.output).splitlines()
    message = ""
    for index, line in enumerate(lines):
        if not RESULT_RE.match(line) or not line.rstrip().endswith("=>"):
            continue
        block = []
        for following in lines[index + 1:]:
            if following and not following.startswith(" "):
                break
            block.append(following)
        try:
            result = yaml.safe_load("\n".join(block))
        except yaml.YAMLError:
            continue
        if isinstance(result, dict) and result.get("msg"):
            message = result["msg"] if isinstance(result["msg"], str) else "\n".join(map(str, result["msg"]))
    if not message:
        raise CheckFailed(f"{args.output.name}: no task result with a message")
    return message


# ---- snapshots of the machines ---------------------------------------------------------------------------------

def _snapshot(path: Path) -> dict:
    return json.loads(path.read_text())


def _entries(host: dict) -> dict[str, str]:
    """path -> what identifies its content: code and configuration by size and time, the rest by existence."""
    entries = {}
    for line in host["files"]:
        path, _sep, attrs = line.partition(" ")
        if "/__pycache__" in path:     # bytecode Python writes when a module is first imported: not deployed state
            continue
        kind, mode, size, mtime = (attrs.split() + ["", "", "", ""])[:4]
        relative = path[len(host["root"]):]
        volatile = not relative.startswith(("/etc/", "/opt/")) or kind != "f"
        entries[relative] = f"{kind} {mode}" if volatile else f"{kind} {mode} {size} {mtime}"
    return entries


def check_same(args: argparse.Namespace) -> str:
    """Nothing LatScope owns on any machine changed between two snapshots: files, processes, Redis's files."""
    before, after = _snapshot(args.before), _snapshot(args.after)
    problems = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            problems.append(f"{name}: in only one snapshot")
            continue
        old_files, new_files = _entries(old), _entries(new)
        for path in sorted(set(old_files) | set(new_files)):
            if old_files.get(path) != new_files.get(path):
                problems.append(f"{name}: {path or '/'} {old_files.get(path, 'absent')} -> "
                                f"{new_files.get(path, 'absent')}")
        if sorted(old["processes"]) != sorted(new["processes"]):
            problems.append(f"{name}: processes {old['processes']} -> {new['processes']}")
        if old.get("server_files") != new.get("server_files"):
            problems.append(f"{name}: server files {old.get('server_files')} -> {new.get('server_files')}")
    if problems:
        raise CheckFailed(f"{args.after.name} differs from {args.before.name}: " + "; ".join(problems[:20]))
    return f"{args.after.name}: the machines are as in {args.before.name} ({', '.join(sorted(after))})"


def _kept(kind: str, item: str, keeps: list[str], match) -> bool:
    for keep in keeps:
        keep_kind, _sep, pattern = keep.partition(":")
        if keep_kind == kind and match(item, pattern):
            return True
    return False


def check_nothing_deployed(args: argparse.Namespace) -> str:
    """No machine has a file under its root, a directory of LatScope's or a process started from its root, but for
    what ``--keep`` / ``--keep-process`` allow (KIND:GLOB on paths relative to the root / KIND:TEXT in a command
    line, KIND manager or observer). Empty generic directories (etc, var/log, ...) may stay."""
    snapshot = _snapshot(args.snapshot)
    problems = []
    for name, host in sorted(snapshot.items()):
        left = sorted(path for path, attrs in _entries(host).items()
                      if (not attrs.startswith("d ") or "latscope" in path)
                      and not _kept(host["kind"], path, args.keep, fnmatch.fnmatchcase))
        if left:
            problems.append(f"{name}: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
        running = [line for line in host["processes"]
                   if not _kept(host["kind"], line, args.keep_process, lambda text, part: part in text)]
        if running:
            problems.append(f"{name}: processes {running}")
    if problems:
        raise CheckFailed(f"{args.snapshot.name}: LatScope is (still) there: " + "; ".join(problems))
    return (f"{args.snapshot.name}: no file, no LatScope directory and no process of LatScope's on "
            f"{', '.join(sorted(snapshot))}" + (f" (but {', '.join(args.keep + args.keep_process)})"
                                                if args.keep or args.keep_process else ""))


# ---- secrets ---------------------------------------------------------------------------------------------------

def _secrets(path: Path) -> dict[str, bytes]:
    values = yaml.safe_load(path.read_text()) or {}
    found = {name: str(value).encode() for name, value in values.items()
             if isinstance(value, (str, int)) and len(str(value)) >= MIN_SECRET_LEN}
    if not found:
        raise CheckFailed(f"{path}: no secret to look for")
    return found


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        if path.is_dir():
            out.extend(p for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink())
        elif path.is_file():
            out.append(path)
    return out


def _leaks(path: Path, secrets: dict[str, bytes]) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return sorted(name for name, value in secrets.items() if value in data)


def check_secrets(args: argparse.Namespace) -> str:
    """No secret in the play output and logs; at rest, only in files nobody else may read."""
    secrets = _secrets(args.secrets)
    # The collectors' Redis passwords the manager role generated (none in the inventory): secrets as well.
    generated = sorted(path for tree in args.tree for path in tree.rglob("redis-collectors/*.password"))
    for path in generated:
        secrets[f"the Redis password of {path.stem}'s collector"] = path.read_bytes().strip()
    problems, private, outputs, scanned = [], [], _files(args.output), 0
    if len(outputs) < args.min_outputs:
        raise CheckFailed(f"{len(outputs)} output files to scan, expected at least {args.min_outputs}")
    for path in outputs:
        leaked = _leaks(path, secrets)
        if leaked:
            problems.append(f"{path.name}: {', '.join(leaked)}")
    for path in _files(args.tree):
        if path.resolve() == args.secrets.resolve():
            continue
        scanned += 1
        leaked = _leaks(path, secrets)
        if not leaked:
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if LOG_NAME_RE.search(path.name) or "/log/" in str(path):
            problems.append(f"log {path}: {', '.join(leaked)}")
        elif mode & 0o007:
            problems.append(f"{path} (mode {mode:04o}, readable by others): {', '.join(leaked)}")
        else:
            private.append(f"{path.name} {mode:04o}")
    if problems:
        raise CheckFailed("secrets leaked (by name): " + "; ".join(problems))
    return (f"none of the {len(secrets)} secrets ({len(generated)} generated on the manager) in {len(outputs)} output files or in the logs among {scanned} "
            f"files of the lab; at rest only in files private to their owner: {', '.join(sorted(set(private)))}")


# ---- helpers for the targets -----------------------------------------------------------------------------------

def config_value(args: argparse.Namespace) -> str:
    values = yaml.safe_load(args.file.read_text()) or {}
    if not values.get(args.key):
        raise CheckFailed(f"{args.file}: no {args.key}")
    return str(values[args.key])


def inventory_without(args: argparse.Namespace) -> str:
    """A copy of the lab's inventory (private directory) whose secrets file lacks ``--key``."""
    source, dest = args.inventory, args.dest
    secrets_rel = Path("group_vars/all/secrets.yml")
    values = yaml.safe_load((source / secrets_rel).read_text())
    if args.key not in values:
        raise CheckFailed(f"{source / secrets_rel} has no {args.key} to leave out")
    del values[args.key]
    os.makedirs(dest / secrets_rel.parent, mode=0o700)
    os.chmod(dest, 0o700)
    (dest / "hosts.yml").write_text((source / "hosts.yml").read_text())
    fd = os.open(dest / secrets_rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(values, out)
    return f"{dest}: the lab's inventory without {args.key}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print KEY of an integration_config.yml")
    p.add_argument("file", type=Path)
    p.add_argument("key")
    p.set_defaults(func=config_value)
    p = sub.add_parser("said", help="print the message of the last task result that has one")
    p.add_argument("output", type=Path)
    p.set_defaults(func=said)
    p = sub.add_parser("changes", help="the recap shows changes on every host, or none anywhere")
    p.add_argument("output", type=Path)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--some", action="store_true")
    kind.add_argument("--none", action="store_true")
    p.set_defaults(func=check_changes)
    p = sub.add_parser("prediction", help="check mode predicted the real run's changes")
    p.add_argument("check", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--gaps", type=Path, required=True, help="YAML: task -> why check mode cannot report it")
    p.set_defaults(func=check_prediction)
    p = sub.add_parser("refused", help="the play stopped at its first task, with one error naming FIELD")
    p.add_argument("output", type=Path)
    p.add_argument("--status", type=int, required=True)
    p.add_argument("--field", required=True)
    p.set_defaults(func=check_refused)
    p = sub.add_parser("same", help="two snapshots of the machines are the same")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.set_defaults(func=check_same)
    p = sub.add_parser("nothing-deployed", help="a snapshot has no file, no LatScope directory and no process")
    p.add_argument("snapshot", type=Path)
    p.add_argument("--keep", nargs="*", default=[], help="KIND:GLOB of paths (relative to the root) that may stay")
    p.add_argument("--keep-process", nargs="*", default=[], help="KIND:TEXT of command lines that may stay")
    p.set_defaults(func=check_nothing_deployed)
    p = sub.add_parser("secrets", help="no secret in outputs and logs, only private files hold them")
    p.add_argument("--secrets", type=Path, required=True)
    p.add_argument("--output", type=Path, nargs="+", required=True)
    p.add_argument("--min-outputs", type=int, default=1)
    p.add_argument("--tree", type=Path, nargs="+", required=True)
    p.set_defaults(func=check_secrets)
    p = sub.add_parser("inventory-without", help="copy the lab's inventory without one secret")
    p.add_argument("inventory", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--key", required=True)
    p.set_defaults(func=inventory_without)
    args = parser.parse_args(argv)
    try:
        print(args.func(args))
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
