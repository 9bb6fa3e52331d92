"""Bring a lab up, tear it down, say what is there.

``up`` checks every setting and every name before it creates anything, then
makes only what is missing (a second ``up`` changes nothing). ``down`` stops
the lab's daemons, deletes its namespaces and links, and removes its state
directory; it succeeds when nothing is up. What a lab made is recorded in its
state file, so ``down`` never touches a namespace or link it did not create.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from latscope.lab import netops, services, systemd_host
from latscope.lab.inventory import (MYSQL_DATABASE, MYSQL_PORT, MYSQL_USER, REDIS_PORT, LabFiles,
                                    build_inventory, build_secrets)
from latscope.lab.netops import CommandError, run
from latscope.lab.settings import CONTAINER_BRIDGE, STATE_ROOT, LabPlan, LabSettings, Node, plan

Progress = Callable[[str], None]


@dataclass
class UpResult:
    plan: LabPlan
    files: LabFiles
    changes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _quiet(message: str) -> None:
    del message


def load_state(files: LabFiles) -> dict | None:
    try:
        return json.loads(files.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError("state_dir", f"the lab state file {files.state} is unreadable ({exc}); "
                         "remove the lab with `latscope lab down --force`") from None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _check_conflicts(lab: LabPlan, state: dict | None) -> None:
    """Refuse, before creating anything, to take over names or addresses that are not ours."""
    if state is not None:
        recorded = LabSettings.from_dict(state["settings"])
        for key, value in lab.settings.as_dict().items():
            if getattr(recorded, key) != value:
                raise InputError(key, f"the lab '{lab.settings.prefix}' is already up with {key}="
                                 f"{getattr(recorded, key)}; run `latscope lab down --prefix "
                                 f"{lab.settings.prefix}` before changing it", value)
        return
    taken_ns = netops.namespaces() & set(lab.namespaces)
    if taken_ns:
        raise InputError("prefix", f"namespace {sorted(taken_ns)[0]} already exists and is not part of "
                         "a lab this machine knows; choose another prefix", lab.settings.prefix)
    taken_links = set(netops.links()) & set(lab.root_links)
    if taken_links:
        raise InputError("prefix", f"link {sorted(taken_links)[0]} already exists in the root namespace; "
                         "choose another prefix", lab.settings.prefix)
    ours = ipaddress.IPv4Network(lab.settings.range)
    for cidr in netops.addresses():
        if ipaddress.IPv4Interface(cidr).network.overlaps(ours):
            raise InputError("range", f"overlaps {cidr}, already on this machine; choose another range",
                             lab.settings.range)
    for other in sorted(STATE_ROOT.glob("lab-*/lab.json")):
        try:
            theirs = json.loads(other.read_text())["settings"]
        except (OSError, ValueError, KeyError):
            continue
        if ipaddress.IPv4Network(theirs["range"]).overlaps(ours):
            raise InputError("range", f"overlaps the range of lab '{theirs['prefix']}' ({theirs['range']})",
                             lab.settings.range)


def _ensure_netns(name: str, changes: list[str]) -> None:
    if name not in netops.namespaces():
        run(["ip", "netns", "add", name])
        changes.append(f"netns {name}")
    if netops.ensure_link_up("lo", name):
        changes.append(f"lo up in {name}")


def _ensure_veth(outer: str, outer_ns: str | None, inner: str, inner_ns: str, changes: list[str]) -> None:
    if outer not in netops.links(outer_ns):
        argv = ["ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", inner_ns]
        run(argv, netns=outer_ns)
        changes.append(f"veth {outer}<->{inner_ns}:{inner}")


def _ensure_bridge(name: str, netns: str | None, changes: list[str]) -> None:
    if name not in netops.links(netns):
        run(["ip", "link", "add", name, "type", "bridge"], netns=netns)
        changes.append(f"bridge {name}")


def _ensure_enslaved(link: str, bridge: str, netns: str | None, changes: list[str]) -> None:
    if netops.links(netns)[link].get("master") != bridge:
        run(["ip", "link", "set", link, "master", bridge], netns=netns)
        changes.append(f"{link} on {bridge}")


def _note(changes: list[str], changed: bool, what: str) -> None:
    if changed:
        changes.append(what)


def _wire(lab: LabPlan, changes: list[str], progress: Progress) -> None:
    lan_len = ipaddress.IPv4Network(lab.lan).prefixlen
    _ensure_bridge(lab.bridge, None, changes)
    _note(changes, netops.ensure_address(lab.bridge, f"{lab.bridge_address}/{lan_len}"), "controller address")
    netops.ensure_link_up(lab.bridge)
    for node in [lab.manager, *lab.hosts]:
        progress(f"wiring {node.name} ({node.netns}, {node.address})")
        _ensure_netns(node.netns, changes)
        _ensure_veth(node.peer, None, node.uplink, node.netns, changes)
        _ensure_enslaved(node.peer, lab.bridge, None, changes)
        netops.ensure_link_up(node.peer)
        _note(changes, netops.ensure_address(node.uplink, f"{node.address}/{lan_len}", node.netns),
              f"{node.name} address")
        netops.ensure_link_up(node.uplink, node.netns)
    for host in lab.hosts:
        if not host.containers:
            continue
        subnet = ipaddress.IPv4Network(host.container_subnet or "")
        gateway = next(subnet.hosts())
        _ensure_bridge(CONTAINER_BRIDGE, host.netns, changes)
        _note(changes, netops.ensure_address(CONTAINER_BRIDGE, f"{gateway}/{subnet.prefixlen}", host.netns),
              f"{host.name} container gateway")
        netops.ensure_link_up(CONTAINER_BRIDGE, host.netns)
        _note(changes, netops.ensure_sysctl("net.ipv4.ip_forward", "1", host.netns), f"{host.name} forwarding")
        for name in host.containers:
            node = lab.node(name)
            progress(f"wiring {node.name} ({node.netns}, {node.address}) inside {host.name}")
            _ensure_netns(node.netns, changes)
            _ensure_veth(node.peer, host.netns, node.uplink, node.netns, changes)
            _ensure_enslaved(node.peer, CONTAINER_BRIDGE, host.netns, changes)
            netops.ensure_link_up(node.peer, host.netns)
            _note(changes, netops.ensure_address(node.uplink, f"{node.address}/{subnet.prefixlen}", node.netns),
                  f"{node.name} address")
            netops.ensure_link_up(node.uplink, node.netns)
            _note(changes, netops.ensure_route("default", node.gateway, node.uplink, node.netns),
                  f"{node.name} default route")
        # Every other machine reaches these containers through their host (host-gw routing).
        for other in [None, lab.manager, *lab.hosts]:
            if other is host:
                continue
            netns = other.netns if other else None
            dev = other.uplink if other else lab.bridge
            _note(changes, netops.ensure_route(str(subnet), host.address, dev, netns),
                  f"route to {subnet} in {other.name if other else 'root'}")


def _ensure_keys(files: LabFiles, lab: LabPlan, changes: list[str]) -> None:
    files.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not files.client_key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"latscope-lab-{lab.settings.prefix}",
             "-f", str(files.client_key)])
        changes.append("client key")
    authorized = files.ssh_dir / "authorized_keys"
    public = (files.ssh_dir / "id_ed25519.pub").read_text()
    if not authorized.exists() or authorized.read_text() != public:
        authorized.write_text(public)
        authorized.chmod(0o600)
    lines = []
    for node in lab.nodes:
        key = files.ssh_dir / f"host_{node.name}"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(key)])
        pub = Path(f"{key}.pub").read_text().split()
        lines.append(f"{node.address} {pub[0]} {pub[1]}")
    text = "\n".join(lines) + "\n"
    if not files.known_hosts.exists() or files.known_hosts.read_text() != text:
        files.known_hosts.write_text(text)


def _ensure_sshd(files: LabFiles, lab: LabPlan, node: Node, changes: list[str], progress: Progress) -> None:
    """sshd of ``node``: a daemon in its namespace, or a service of its systemd on a systemd host."""
    config = files.ssh_dir / f"sshd_{node.name}.conf"
    pidfile = files.run_dir / f"sshd_{node.name}.pid"
    text = services.sshd_config(node.name, node.address, files.ssh_dir / f"host_{node.name}",
                                files.ssh_dir / "authorized_keys", None if node.systemd else pidfile)
    config_changed = not config.exists() or config.read_text() != text
    if config_changed:
        config.write_text(text)
    if node.systemd:
        progress(f"systemd on {node.name}")
        dirs = systemd_host.HostDirs(files.root, node)
        started = systemd_host.ensure(lab.settings.prefix, node, dirs, config, restart_sshd=config_changed)
        _note(changes, started, f"systemd and sshd on {node.name}")
        return
    _note(changes, services.ensure_sshd(node.netns, config, pidfile), f"sshd on {node.name}")


def _secrets(files: LabFiles) -> dict[str, str]:
    """The lab's secrets; ones a newer version needs are added to an existing file (the others are kept)."""
    values: dict[str, str] = {}
    if files.secrets_file.exists():
        values = yaml.safe_load(files.secrets_file.read_text()) or {}
    wanted = {**build_secrets(secrets.token_urlsafe(24), secrets.token_urlsafe(24)),
              "latscope_redis_admin_password": secrets.token_urlsafe(24),
              "latscope_mysql_collector_password": secrets.token_urlsafe(24),
              "latscope_mysql_analysis_password": secrets.token_urlsafe(24),
              "latscope_timesync_token": secrets.token_hex(16)}
    missing = {key: value for key, value in wanted.items() if key not in values}
    if missing:
        values.update(missing)
        _write_private(files.secrets_file, "# LatScope lab secrets: encrypt the equivalent file of a real fleet "
                       "with ansible-vault\n" + yaml.safe_dump(values, default_flow_style=False))
    return values


def _ensure_manager_services(files: LabFiles, lab: LabPlan, secret: dict[str, str],
                             changes: list[str], progress: Progress) -> None:
    manager = lab.manager
    redis_dir = files.redis_dir
    redis_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    redis_conf = redis_dir / "redis.conf"
    if not redis_conf.exists():   # a bare server; the manager role owns this file once it has run
        _write_private(redis_conf, services.redis_config([manager.address, "127.0.0.1"], REDIS_PORT,
                                                         secret["latscope_redis_password"], redis_dir))
    progress("starting Redis on the manager")
    _note(changes, services.ensure_redis(manager.netns, redis_conf, files.redis_pidfile, redis_dir / "redis.log",
                                         REDIS_PORT), "redis")

    maria_dir = files.root / "mariadb"
    maria_dir.mkdir(parents=True, exist_ok=True)
    maria_dir.chmod(0o755)
    maria_conf = maria_dir / "my.cnf"
    (maria_dir / "tmp").mkdir(mode=0o700, exist_ok=True)
    shutil.chown(maria_dir / "tmp", "mysql", "mysql")
    sock_dir = maria_dir / "run"
    text = services.mariadb_config(manager.address, MYSQL_PORT, maria_dir / "data", sock_dir / "mysqld.sock",
                                   sock_dir / "mysqld.pid", sock_dir / "error.log")
    if not maria_conf.exists() or maria_conf.read_text() != text:
        maria_conf.write_text(text)
        maria_conf.chmod(0o644)
    progress("starting MariaDB on the manager")
    started = services.ensure_mariadb(manager.netns, maria_conf, maria_dir / "data", sock_dir / "mysqld.sock",
                                      sock_dir / "mysqld.pid")
    _note(changes, started, "mariadb")
    password = secret["latscope_mysql_password"].replace("'", "''")
    services.mariadb_sql(maria_conf, (
        f"CREATE DATABASE IF NOT EXISTS `{MYSQL_DATABASE}`;\n"
        f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'%' IDENTIFIED BY '{password}';\n"
        f"ALTER USER '{MYSQL_USER}'@'%' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL PRIVILEGES ON `{MYSQL_DATABASE}`.* TO '{MYSQL_USER}'@'%';\n"))


def _write_inventory(files: LabFiles, lab: LabPlan, changes: list[str]) -> None:
    text = ("# Generated by `latscope lab up`; removed by `latscope lab down`.\n"
            + yaml.safe_dump(build_inventory(lab, files), default_flow_style=False, sort_keys=False))
    if not files.hosts_file.exists() or files.hosts_file.read_text() != text:
        files.hosts_file.parent.mkdir(parents=True, exist_ok=True)
        files.hosts_file.write_text(text)
        changes.append("inventory")


def up(settings: LabSettings, progress: Progress | None = None) -> UpResult:
    """Create what is missing of the lab ``settings`` describes; validate everything first."""
    progress = progress or _quiet
    started = time.monotonic()
    lab = plan(settings)
    files = LabFiles(Path(settings.state_dir))
    state = load_state(files)
    _check_conflicts(lab, state)
    tools = ("ip", "ssh-keygen", services.SSHD, "redis-server", "mariadbd", "mariadb-install-db")
    for tool in tools + (systemd_host.TOOLS if settings.systemd_hosts else ()):
        if shutil.which(tool) is None and not Path(tool).exists():
            raise InputError("packages", f"{tool} is not installed; run scripts/bootstrap.sh")
    result = UpResult(plan=lab, files=files)
    files.root.mkdir(parents=True, exist_ok=True, mode=0o755)
    files.run_dir.mkdir(exist_ok=True)
    if state is None:
        _write_private(files.state, json.dumps({"settings": settings.as_dict(), "complete": False}, indent=2))
        result.changes.append("state")
    _wire(lab, result.changes, progress)
    _ensure_keys(files, lab, result.changes)
    progress("starting sshd on every machine")
    for node in lab.nodes:
        _ensure_sshd(files, lab, node, result.changes, progress)
    secret = _secrets(files)
    _ensure_manager_services(files, lab, secret, result.changes, progress)
    _write_inventory(files, lab, result.changes)
    state_text = json.dumps({"settings": settings.as_dict(), "complete": True}, indent=2)
    if files.state.read_text() != state_text:
        _write_private(files.state, state_text)
    result.seconds = time.monotonic() - started
    return result


@dataclass
class DownResult:
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def known_labs() -> list[str]:
    """Prefixes of the labs with a state directory on this machine."""
    return sorted(p.parent.name[len("lab-"):] for p in STATE_ROOT.glob("lab-*/lab.json"))


def down(prefix: str, state_dir: str | None = None, progress: Progress | None = None) -> DownResult:
    """Remove everything the lab ``prefix`` made; nothing to do is success."""
    progress = progress or _quiet
    started = time.monotonic()
    result = DownResult()
    files = LabFiles(Path(state_dir) if state_dir else STATE_ROOT / f"lab-{prefix}")
    try:
        state = load_state(files)
    except InputError:
        state = None
    if state is None:
        if files.root.exists():
            shutil.rmtree(files.root)
            result.removed.append(str(files.root))
        result.seconds = time.monotonic() - started
        return result
    lab = plan(LabSettings.from_dict(state["settings"]))
    existing = netops.namespaces()
    # systemd hosts first: SIGKILL to their PID 1 ends every process in them (SIGTERM would make it re-execute);
    # their cgroups go too, also those of one that died before.
    for node in lab.hosts:
        if node.systemd:
            pid = systemd_host.stop(lab.settings.prefix, node, systemd_host.HostDirs(files.root, node))
            if pid:
                progress(f"stopped systemd on {node.name} ({pid})")
                result.removed.append(f"systemd {pid} on {node.name}")
    # Daemons next, by pid file, then anything else still running in our namespaces.
    for pidfile, marker in [(files.run_dir / "redis.pid", "redis-server"),
                            (files.root / "mariadb" / "run" / "mysqld.pid", "mariadbd"),
                            *[(files.run_dir / f"sshd_{n.name}.pid", "sshd") for n in lab.nodes]]:
        pid = services.running_pid(pidfile, marker)
        if pid:
            progress(f"stopping {marker} ({pid})")
            services.stop_pid(pid)
            result.removed.append(f"{marker} {pid}")
    for netns in lab.namespaces:
        if netns in existing:
            for pid in netops.netns_pids(netns):
                services.stop_pid(pid, timeout=5)
                result.removed.append(f"process {pid} in {netns}")
    for netns in reversed(lab.namespaces):
        if netns in existing:
            progress(f"deleting namespace {netns}")
            run(["ip", "netns", "delete", netns])
            result.removed.append(f"netns {netns}")
    present = netops.links()
    for link in lab.root_links:
        if link in present:
            run(["ip", "link", "delete", link], check=False)
            result.removed.append(f"link {link}")
    shutil.rmtree(files.root, ignore_errors=True)
    result.removed.append(str(files.root))
    result.seconds = time.monotonic() - started
    return result


def status(prefix: str) -> dict:
    """What of the lab ``prefix`` exists now."""
    files = LabFiles(STATE_ROOT / f"lab-{prefix}")
    state = load_state(files)
    if state is None:
        return {"prefix": prefix, "up": False}
    lab = plan(LabSettings.from_dict(state["settings"]))
    existing = netops.namespaces()
    nodes = []
    for node in lab.nodes:
        entry = {"name": node.name, "kind": node.kind, "address": node.address, "netns": node.netns,
                 "netns_present": node.netns in existing}
        if node.systemd:
            pid = systemd_host.systemd_pid(node.netns) if node.netns in existing else None
            entry.update(init="systemd", systemd_pid=pid,
                         systemd_state=systemd_host.state(pid) if pid else None,
                         sshd=bool(pid) and systemd_host.sshd_active(node))
        else:
            entry["sshd"] = bool(services.running_pid(files.run_dir / f"sshd_{node.name}.pid", "sshd"))
        nodes.append(entry)
    return {"prefix": prefix, "up": bool(state.get("complete")), "settings": state["settings"],
            "inventory": str(files.inventory_dir), "nodes": nodes}


__all__ = ["CommandError", "DownResult", "UpResult", "down", "known_labs", "status", "up"]
