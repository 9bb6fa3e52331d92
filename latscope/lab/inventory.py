"""The Ansible inventory of a lab (pure: builds data, writes nothing).

The inventory is a directory, as a fleet's would be: ``hosts.yml`` with the
groups ``latscope_manager``, ``bare_metal`` and ``containers`` (each container
names the host it lives on in ``latscope_container_host``), and
``group_vars/all/secrets.yml`` with the passwords, the one file a real fleet
would encrypt with ansible-vault.

The collectors' own Redis passwords are not among them: as in a fleet that sets
no ``latscope_redis_collector_password``, deploy.yml's manager play generates one
per host and keeps it on the manager (``LabFiles.redis_collector_password``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latscope.lab.settings import LabPlan, Node

REDIS_PORT = 6379
MYSQL_PORT = 3306
MYSQL_DATABASE = "latscope"
MYSQL_USER = "latscope"
WHEELHOUSE = Path(__file__).resolve().parents[2] / ".venv" / "wheelhouse"
MANAGER = "manager"
# What Redis's default user may run in the lab: the issuer's commands and the collector's (control.py's
# Controller and Agent), because test sessions run agents of their own as that user, under private key prefixes.
LAB_DEFAULT_USER_COMMANDS = ["-@all", "+@connection", "-@admin", "-@dangerous", "+multi", "+exec", "+discard",
                             "+xadd", "+xread", "+xrange", "+xlen", "+hget", "+hgetall", "+hset", "+hdel", "+get",
                             "+mget", "+set", "+expire", "+sadd", "+smembers", "+exists", "+ttl"]


@dataclass(frozen=True)
class LabFiles:
    """Where a lab keeps what it made."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "lab.json"

    @property
    def inventory_dir(self) -> Path:
        return self.root / "inventory"

    @property
    def hosts_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def secrets_file(self) -> Path:
        return self.inventory_dir / "group_vars" / "all" / "secrets.yml"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.run_dir / "redis.pid"

    @property
    def mariadb_socket(self) -> Path:
        return self.root / "mariadb" / "run" / "mysqld.sock"

    def host_root(self, name: str) -> Path:
        """Where the roles write a lab machine's files (its observer_root / manager_root)."""
        return self.root / "hosts" / name

    def redis_collector_password(self, host: str) -> Path:
        """The Redis password the manager role generated for ``host``'s collector (after deploy.yml's manager play)."""
        return self.host_root(MANAGER) / "etc" / "latscope" / "redis-collectors" / f"{host}.password"


def _manager_vars(node: Node, files: LabFiles) -> dict[str, Any]:
    """Where the manager role finds the lab's Redis (it takes its config over) and MariaDB (root by socket).

    Test sessions use private key prefixes on the lab's Redis and run agents of their own as the default user, so
    that user may use every key and the collector's commands too here (each collector's own user stays narrow).
    """
    return {"manager_redis_config_file": str(files.redis_dir / "redis.conf"),
            "manager_redis_acl_file": str(files.redis_dir / "users.acl"),
            "manager_redis_dir": str(files.redis_dir),
            "manager_redis_pidfile": str(files.redis_pidfile),
            "manager_redis_bind": [node.address, "127.0.0.1"],
            "manager_redis_key_patterns": ["*"],
            "manager_redis_commands": LAB_DEFAULT_USER_COMMANDS,
            "manager_mysql_login_unix_socket": str(files.mariadb_socket)}


def _host_vars(node: Node, files: LabFiles) -> dict[str, Any]:
    entry: dict[str, Any] = {"ansible_host": node.address, "latscope_netns": node.netns,
                             "latscope_netns_path": f"/run/netns/{node.netns}"}
    # Lab hosts share this machine's filesystem: each gets its own root for what the roles write.
    root = str(files.host_root(node.name))
    if node.kind == "container":
        entry["latscope_container_host"] = node.parent
    elif node.kind == "manager":
        entry.update(manager_root=root, **_manager_vars(node, files))
    else:
        entry.update(observer_root=root, observer_interfaces=[node.uplink])
    if node.containers:
        entry["latscope_containers"] = list(node.containers)
    return entry


def build_inventory(lab: LabPlan, files: LabFiles) -> dict[str, Any]:
    """The content of ``hosts.yml`` for ``lab``."""
    ssh_args = (f"-o UserKnownHostsFile={files.known_hosts} -o StrictHostKeyChecking=yes "
                "-o ControlMaster=auto -o ControlPersist=60s")
    common = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(files.client_key),
        "ansible_ssh_common_args": ssh_args,
        "ansible_python_interpreter": "/usr/bin/python3",
        "latscope_lab_prefix": lab.settings.prefix,
        "latscope_manager_address": lab.manager.address,
        "latscope_redis_port": REDIS_PORT,
        "latscope_mysql_port": MYSQL_PORT,
        "latscope_mysql_database": MYSQL_DATABASE,
        "latscope_mysql_user": MYSQL_USER,
        # Lab hosts have no route to a package index: the roles install the collector's wheels from here.
        "latscope_wheelhouse": str(WHEELHOUSE),
    }
    return {
        "all": {
            "vars": common,
            "children": {
                "latscope_manager": {"hosts": {lab.manager.name: _host_vars(lab.manager, files)}},
                "bare_metal": {"hosts": {n.name: _host_vars(n, files) for n in lab.hosts}},
                "containers": {"hosts": {n.name: _host_vars(n, files) for n in lab.containers}},
            },
        }
    }


def build_secrets(redis_password: str, mysql_password: str) -> dict[str, str]:
    """The content of ``group_vars/all/secrets.yml``."""
    return {"latscope_redis_password": redis_password, "latscope_mysql_password": mysql_password}
