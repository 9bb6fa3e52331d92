# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LatScope seed's ``conf/`` files as an Ansible inventory (pure: parsed YAML in, groups and vars out).

The seed describes its fleet in ``connect_info.yaml`` (one entry per server: SSH
address, port and user, ``hostname``, ``metadata_key``, ``novm`` for bare metal,
``isvm: KEY`` for a VM on the server whose metadata_key is KEY, ``iscontainer:
KEY`` for container addresses on server KEY, ``eth`` and ``other_address``),
``management_server_info.yaml`` (the manager), ``redis_info.yaml``,
``database_info.yaml``, ``sampling_info.yaml`` and ``ping_info.yaml``.
``build_inventory`` turns them into the groups ``bare_metal``, ``vms``,
``containers`` and ``latscope_manager`` with the collection's variables. Passwords
are never copied: they become references to vault variables. Every bad entry
raises one ``SeedConfError`` naming the file, the host and the field.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import Sampling

CONNECT = "connect_info.yaml"
MANAGEMENT = "management_server_info.yaml"
REDIS = "redis_info.yaml"
DATABASE = "database_info.yaml"
SAMPLING = "sampling_info.yaml"
PING = "ping_info.yaml"
REQUIRED_FILES = (CONNECT, MANAGEMENT)
OPTIONAL_FILES = (REDIS, DATABASE, SAMPLING, PING)
FILES = REQUIRED_FILES + OPTIONAL_FILES

GROUPS = ("latscope_manager", "bare_metal", "vms", "containers")
SERVER_KEYS = ("address", "port", "username", "password", "hostname", "metadata_key", "novm", "isvm",
               "eth", "other_address")
CONTAINER_KEYS = ("iscontainer", "address", "container_address")
MANAGEMENT_KEYS = ("address", "port", "username", "password", "hostname", "eth")
REDIS_KEYS = ("host", "address", "port", "password")
DATABASE_KEYS = ("user", "passwd", "password", "host", "port", "db")
SAMPLING_KEYS = ("size", "interval", "ports", "filter_retrans")
PING_KEYS = ("management_server", "servers")
PING_SERVER_KEYS = ("address", "port", "eth")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_IFNAME = re.compile(r"^[^\s/:{}]{1,15}$")
_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,63}$")
LOOPBACK = "lo"


class SeedConfError(InputError):
    """A bad seed conf entry: ``file``, ``host`` (None for file-wide settings) and ``setting`` name it."""

    def __init__(self, file: str, host: Optional[str], setting: str, message: str, value: Any = None) -> None:
        self.file = file
        self.host = host
        self.setting = setting
        where = f"{file}, host {host}, field {setting}" if host else f"{file}, field {setting}"
        super().__init__(where, message, value)


def vault_reference(name: str) -> str:
    """The template that reads a secret from the vault variable ``name`` (a value is never copied)."""
    return "{{ " + name + " }}"


def ssh_password_variable(host: str) -> str:
    """The vault variable holding ``host``'s SSH password: vault_latscope_ssh_password_<host, as a name>."""
    return "vault_latscope_ssh_password_" + re.sub(r"[^A-Za-z0-9_]", "_", host)


@dataclass
class SeedInventory:
    """Groups (group -> host -> host vars), the vars of ``all``, and notes for the user."""

    groups: Dict[str, Dict[str, Dict[str, Any]]] = field(default_factory=lambda: {g: {} for g in GROUPS})
    all_vars: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


class _Checker:
    """Field checks that raise SeedConfError for one (file, host)."""

    def __init__(self, file: str, host: Optional[str]) -> None:
        self.file = file
        self.host = host

    def fail(self, setting: str, message: str, value: Any = None) -> SeedConfError:
        return SeedConfError(self.file, self.host, setting, message, value)

    def mapping(self, setting: str, raw: Any, known: tuple) -> Dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(setting, "must be a mapping", type(raw).__name__)
        for key in raw:
            if key not in known:
                raise self.fail(str(key), "unknown field; known: " + ", ".join(sorted(known)))
        return raw

    def integer(self, setting: str, value: Any, minimum: int, maximum: int) -> int:
        try:
            return require_int(setting, value, minimum, maximum)
        except InputError as exc:
            raise self.fail(setting, exc.reason, value) from None

    def address(self, setting: str, value: Any) -> str:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if text:
            try:
                return str(ipaddress.ip_address(text))
            except ValueError:
                if _DNS.match(text) and not text.replace(".", "").isdigit():
                    return text
        raise self.fail(setting, "must be an IP address or a DNS name", value)

    def name(self, setting: str, value: Any) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.fail(setting, "must be a host name of letters, digits, '.', '_' and '-' (at most 63)",
                            value)
        return value

    def word(self, setting: str, value: Any) -> str:
        """A user or database name: no spaces and no template characters."""
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not _WORD.match(str(value)):
            raise self.fail(setting, "must be a name of letters, digits and _ . @ $ - (at most 64)", value)
        return str(value)

    def items(self, setting: str, value: Any) -> List[Any]:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return [value]
        if not isinstance(value, list) or not value:
            raise self.fail(setting, "must be a non-empty list", value)
        return value

    def interfaces(self, setting: str, value: Any) -> List[str]:
        names = []
        for item in self.items(setting, value):
            if not isinstance(item, str) or not _IFNAME.match(item):
                raise self.fail(setting, "must list interface names (at most 15 characters, no '/', ':' or spaces)",
                                item)
            names.append(item)
        return names


def _document(docs: Mapping[str, Any], name: str) -> Any:
    if name in REQUIRED_FILES and docs.get(name) is None:
        raise SeedConfError(name, None, "(file)", "is required and missing or empty")
    return docs.get(name)


def _parse_server(index: int, raw: Any) -> Dict[str, Any]:
    label = raw.get("hostname") if isinstance(raw, dict) and isinstance(raw.get("hostname"), str) else None
    check = _Checker(CONNECT, label or f"servers[{index}]")
    raw = check.mapping(f"servers[{index}]", raw, SERVER_KEYS)
    for key in ("hostname", "address", "metadata_key"):
        if raw.get(key) is None:
            raise check.fail(key, "is required")
    server: Dict[str, Any] = {
        "name": check.name("hostname", raw["hostname"]),
        "key": check.integer("metadata_key", raw["metadata_key"], 0, 2 ** 31 - 1),
        "address": check.address("address", raw["address"]),
    }
    if raw.get("novm") is not None and raw.get("isvm") is not None:
        raise check.fail("isvm", "a server is either bare metal (novm) or a VM (isvm), not both", raw["isvm"])
    if raw.get("novm") is not None:
        check.integer("novm", raw["novm"], 0, 2 ** 31 - 1)
    server["hypervisor_key"] = (check.integer("isvm", raw["isvm"], 0, 2 ** 31 - 1)
                                if raw.get("isvm") is not None else None)
    server["vars"] = {"ansible_host": server["address"], "latscope_metadata_key": server["key"]}
    if raw.get("port") is not None:
        server["vars"]["ansible_port"] = check.integer("port", raw["port"], 1, 65535)
    if raw.get("username") is not None:
        server["vars"]["ansible_user"] = check.word("username", raw["username"])
    server["has_password"] = raw.get("password") not in (None, "")
    if raw.get("eth") is not None:
        uplinks = [name for name in check.interfaces("eth", raw["eth"]) if name != LOOPBACK]
        if uplinks:
            server["vars"]["observer_interfaces"] = uplinks
    if raw.get("other_address") is not None:
        server["vars"]["latscope_other_addresses"] = [check.address("other_address", a)
                                                      for a in check.items("other_address", raw["other_address"])]
    return server


def _parse_containers(index: int, raw: Any) -> Dict[str, Any]:
    check = _Checker(CONNECT, f"servers[{index}]")
    raw = check.mapping(f"servers[{index}]", raw, CONTAINER_KEYS)
    key = check.integer("iscontainer", raw["iscontainer"], 0, 2 ** 31 - 1)
    addresses: List[str] = []
    if raw.get("address") is not None:
        addresses.append(check.address("address", raw["address"]))
    if raw.get("container_address") is not None:
        addresses += [check.address("container_address", a)
                      for a in check.items("container_address", raw["container_address"])]
    if not addresses:
        raise check.fail("container_address", "is required: the container's addresses (or address)")
    return {"host_key": key, "addresses": addresses}


def _parse_connect(raw: Any, inventory: SeedInventory) -> Dict[str, Dict[str, Any]]:
    """Servers by inventory name; adds bare_metal, vms and containers to ``inventory``."""
    check = _Checker(CONNECT, None)
    raw = check.mapping("(file)", raw, ("servers",))
    entries = raw.get("servers")
    if not isinstance(entries, list) or not entries:
        raise check.fail("servers", "must be a non-empty list of servers", entries)
    servers: Dict[str, Dict[str, Any]] = {}
    by_key: Dict[int, Dict[str, Any]] = {}
    container_entries = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("iscontainer") is not None:
            container_entries.append((index, _parse_containers(index, entry)))
            continue
        server = _parse_server(index, entry)
        if server["name"] in servers:
            raise SeedConfError(CONNECT, server["name"], "hostname", "is used by two servers", server["name"])
        if server["key"] in by_key:
            raise SeedConfError(CONNECT, server["name"], "metadata_key",
                                f"is also the key of {by_key[server['key']]['name']}", server["key"])
        servers[server["name"]] = by_key[server["key"]] = server
    for server in servers.values():
        group = "bare_metal"
        if server["hypervisor_key"] is not None:
            hypervisor = by_key.get(server["hypervisor_key"])
            if hypervisor is None or hypervisor["hypervisor_key"] is not None:
                raise SeedConfError(CONNECT, server["name"], "isvm", "must be the metadata_key of a bare-metal "
                                    "server of this file (the VM's hypervisor)", server["hypervisor_key"])
            server["vars"]["latscope_vm_hypervisor"] = hypervisor["name"]
            group = "vms"
        inventory.groups[group][server["name"]] = server["vars"]
    seen: Dict[str, str] = {}
    for index, entry in container_entries:
        host = by_key.get(entry["host_key"])
        if host is None:
            raise SeedConfError(CONNECT, f"servers[{index}]", "iscontainer",
                                "must be the metadata_key of a server of this file (the container's host)",
                                entry["host_key"])
        names = host["vars"].setdefault("latscope_containers", [])
        for address in entry["addresses"]:
            if address in seen:
                raise SeedConfError(CONNECT, f"servers[{index}]", "container_address",
                                    f"is already the address of {seen[address]}", address)
            name = f"{host['name']}-c{len(names) + 1}"
            seen[address] = name
            names.append(name)
            inventory.groups["containers"][name] = {"ansible_host": address,
                                                    "latscope_container_host": host["name"]}
    return servers


def _parse_management(raw: Any, inventory: SeedInventory, servers: Mapping[str, Any]) -> Dict[str, Any]:
    check = _Checker(MANAGEMENT, raw.get("hostname") if isinstance(raw, dict) and raw.get("hostname") else None)
    raw = check.mapping("(file)", raw, MANAGEMENT_KEYS)
    for key in ("hostname", "address"):
        if raw.get(key) is None:
            raise check.fail(key, "is required")
    name = check.name("hostname", raw["hostname"])
    if name in servers:
        raise check.fail("hostname", f"is also a server of {CONNECT}; the manager needs a name of its own", name)
    address = check.address("address", raw["address"])
    host_vars: Dict[str, Any] = {"ansible_host": address}
    if raw.get("port") is not None:
        host_vars["ansible_port"] = check.integer("port", raw["port"], 1, 65535)
    if raw.get("username") is not None:
        host_vars["ansible_user"] = check.word("username", raw["username"])
    if raw.get("eth") is not None:
        uplinks = [n for n in check.interfaces("eth", raw["eth"]) if n != LOOPBACK]
        if uplinks:
            host_vars["latscope_timesync_interface"] = uplinks[0]
    inventory.groups["latscope_manager"][name] = host_vars
    inventory.all_vars["latscope_manager_address"] = address
    return {"name": name, "address": address, "has_password": raw.get("password") not in (None, "")}


def _parse_redis(raw: Any, inventory: SeedInventory, manager_address: str) -> None:
    inventory.all_vars["latscope_redis_password"] = vault_reference("vault_latscope_redis_password")
    if raw is None:
        return
    check = _Checker(REDIS, None)
    raw = check.mapping("(file)", raw, REDIS_KEYS)
    host = raw.get("host", raw.get("address"))
    if host is not None:
        host = check.address("host", host)
        if host not in (manager_address, "127.0.0.1", "localhost"):
            inventory.all_vars["observer_redis_host"] = host
    if raw.get("port") is not None:
        inventory.all_vars["latscope_redis_port"] = check.integer("port", raw["port"], 1, 65535)


def _parse_database(raw: Any, inventory: SeedInventory, manager_address: str) -> None:
    inventory.all_vars["latscope_mysql_password"] = vault_reference("vault_latscope_mysql_password")
    if raw is None:
        return
    check = _Checker(DATABASE, None)
    raw = check.mapping("(file)", raw, DATABASE_KEYS)
    if raw.get("host") is not None:
        host = check.address("host", raw["host"])
        if host not in (manager_address, "127.0.0.1", "localhost"):
            inventory.all_vars["observer_mysql_host"] = host
            inventory.all_vars["manager_mysql_host"] = host
    if raw.get("port") is not None:
        inventory.all_vars["latscope_mysql_port"] = check.integer("port", raw["port"], 1, 65535)
    if raw.get("user") is not None:
        inventory.all_vars["latscope_mysql_user"] = check.word("user", raw["user"])
    if raw.get("db") is not None:
        inventory.all_vars["latscope_mysql_database"] = check.word("db", raw["db"])


def _parse_sampling(raw: Any, inventory: SeedInventory) -> None:
    if raw is None:
        return
    check = _Checker(SAMPLING, None)
    raw = check.mapping("(file)", raw, SAMPLING_KEYS)
    settings = {key: raw[key] for key in ("size", "interval", "ports") if raw.get(key) is not None}
    if "size" in settings and check.integer("size", settings["size"], 0, 2 ** 32 - 1) == 0:
        # The seed samples every packet when size is 0 (data_len >= 0); size 1 puts a sampled byte in every one.
        settings["size"] = 1
    try:
        sampling = Sampling.from_dict(settings, prefix="sampling")
    except InputError as exc:
        raise check.fail(exc.field.split(".", 1)[-1], exc.reason, exc.value) from None
    inventory.all_vars["latscope_sampling"] = sampling.as_dict()
    if raw.get("filter_retrans") is not None and check.integer("filter_retrans", raw["filter_retrans"], 0, 1):
        inventory.warnings.append(f"{SAMPLING}: filter_retrans is not carried over; LatScope records "
                                  "retransmitted segments and the analysis tells them apart")


def _parse_ping(raw: Any, inventory: SeedInventory, servers: Mapping[str, Dict[str, Any]],
                manager_address: str) -> None:
    if raw is None:
        return
    check = _Checker(PING, None)
    raw = check.mapping("(file)", raw, PING_KEYS)
    if raw.get("management_server") is not None:
        prober = check.address("management_server", raw["management_server"])
        if prober != manager_address:
            inventory.all_vars["latscope_timesync_manager_address"] = prober
    by_address = {server["address"]: server for server in servers.values()}
    for index, entry in enumerate(raw.get("servers") or []):
        check = _Checker(PING, f"servers[{index}]")
        entry = check.mapping(f"servers[{index}]", entry, PING_SERVER_KEYS)
        if entry.get("address") is None:
            raise check.fail("address", "is required")
        address = check.address("address", entry["address"])
        server = by_address.get(address)
        if server is None:
            raise check.fail("address", f"is not the address of a server of {CONNECT}", address)
        check = _Checker(PING, server["name"])
        if entry.get("port") is not None:
            server["vars"]["latscope_timesync_port"] = check.integer("port", entry["port"], 1, 65535)
        if entry.get("eth") is not None:
            uplinks = [n for n in check.interfaces("eth", entry["eth"]) if n != LOOPBACK]
            if uplinks:
                server["vars"]["latscope_timesync_interface"] = uplinks[0]


def build_inventory(docs: Mapping[str, Any], ssh_passwords: bool = True) -> SeedInventory:
    """The inventory of the seed conf ``docs`` (file name -> its parsed YAML, None when absent).

    With ``ssh_passwords`` every host whose seed entry has a password gets
    ``ansible_password`` as a reference to ``vault_latscope_ssh_password_<host>``.
    """
    unknown = sorted(set(docs) - set(FILES))
    if unknown:
        raise SeedConfError(unknown[0], None, "(file)", "is not a seed conf file; known: " + ", ".join(FILES))
    inventory = SeedInventory()
    servers = _parse_connect(_document(docs, CONNECT), inventory)
    manager = _parse_management(_document(docs, MANAGEMENT), inventory, servers)
    _parse_redis(docs.get(REDIS), inventory, manager["address"])
    _parse_database(docs.get(DATABASE), inventory, manager["address"])
    _parse_sampling(docs.get(SAMPLING), inventory)
    _parse_ping(docs.get(PING), inventory, servers, manager["address"])
    with_password = [s["name"] for s in servers.values() if s["has_password"]]
    if manager["has_password"]:
        with_password.append(manager["name"])
    needed = []
    if ssh_passwords:
        for group in ("latscope_manager", "bare_metal", "vms"):
            for name, host_vars in inventory.groups[group].items():
                if name in with_password:
                    host_vars["ansible_password"] = vault_reference(ssh_password_variable(name))
                    needed.append(ssh_password_variable(name))
    needed += ["vault_latscope_redis_password", "vault_latscope_mysql_password"]
    inventory.warnings.append("no password is copied from the seed conf; define these in a vault: "
                              + ", ".join(needed))
    return inventory
