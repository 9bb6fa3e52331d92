"""The lab's settings and its address and name plan (pure: no system calls).

A lab is one bridge in the root namespace, a manager namespace and N host
namespaces each with a veth on the bridge, and M "containers" per host: a
namespace behind a veth pair on a bridge inside the host namespace, routed
(no NAT) the way flannel's host-gw or Calico wire pods, so the controller and
every host reach every container by its own address.

Addresses come from ``range``: its first /24 is the hosts' LAN (.1 the
controller's bridge, .2 the manager, .11 onward the hosts), its second /24 is
cut into one /28 per host for that host's containers (.1 the host's container
bridge, .2 onward the containers).

The first ``systemd_hosts`` hosts run systemd as PID 1 of their own PID and
mount namespaces (docs/lab.md), so the roles' systemd branch runs for real;
the other hosts, the manager and the containers run plain daemons.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

MAX_HOSTS = 8
MAX_CONTAINERS = 4
LAN_PREFIXLEN = 24
CONTAINER_PREFIXLEN = 28
HOST_OFFSET = 10
DEFAULT_RANGE = "198.18.0.0/16"
DEFAULT_PREFIX = "ls"
STATE_ROOT = Path("/run/latscope")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")


@dataclass(frozen=True)
class LabSettings:
    """What a user may choose about a lab."""

    prefix: str = DEFAULT_PREFIX
    hosts: int = 2
    containers: int = 1
    range: str = DEFAULT_RANGE
    state_dir: str = ""
    systemd_hosts: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LabSettings":
        """Validate ``raw`` (CLI flags or a YAML mapping); raise InputError naming the setting."""
        known = set(cls.__dataclass_fields__)
        for key in raw:
            if key not in known:
                raise InputError(key, f"unknown lab setting; known: {', '.join(sorted(known))}")
        prefix = str(raw.get("prefix", DEFAULT_PREFIX))
        if not _PREFIX.match(prefix):
            raise InputError("prefix", "must be 1-6 lowercase letters or digits, starting with a letter "
                             "(it names namespaces and links, which are limited to 15 characters)", prefix)
        hosts = require_int("hosts", raw.get("hosts", 2), 1, MAX_HOSTS)
        containers = require_int("containers", raw.get("containers", 1), 0, MAX_CONTAINERS)
        systemd_hosts = require_int("systemd_hosts", raw.get("systemd_hosts", 0), 0, MAX_HOSTS)
        if systemd_hosts > hosts:
            raise InputError("systemd_hosts", f"must be at most hosts ({hosts}): the first N hosts run systemd",
                             systemd_hosts)
        text = str(raw.get("range", DEFAULT_RANGE))
        try:
            network = ipaddress.IPv4Network(text, strict=True)
        except ValueError as exc:
            raise InputError("range", f"must be an IPv4 network in CIDR form ({exc})", text) from None
        needed = LAN_PREFIXLEN - 1 if containers else LAN_PREFIXLEN
        if network.prefixlen > needed:
            raise InputError("range", f"is too small: this lab needs a /{needed} or larger "
                             "(a /24 for the hosts' LAN" + (" and a /24 for containers)" if containers else ")"),
                             text)
        state_dir = str(raw.get("state_dir") or STATE_ROOT / f"lab-{prefix}")
        if not Path(state_dir).is_absolute():
            raise InputError("state_dir", "must be an absolute path", state_dir)
        return cls(prefix=prefix, hosts=hosts, containers=containers, range=str(network),
                   state_dir=state_dir, systemd_hosts=systemd_hosts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Node:
    """One machine of the lab: the manager, a host or a container."""

    name: str            # inventory name: manager, host1, host1-c1
    kind: str            # manager, bare_metal or container
    netns: str
    address: str
    uplink: str          # its end of the veth pair inside its namespace
    peer: str            # the other end: in the root namespace or in its host's namespace
    parent: str | None = None       # for a container: the host it lives on
    gateway: str | None = None      # for a container: its host's container bridge address
    container_subnet: str | None = None  # for a host: the /28 its containers use
    containers: tuple[str, ...] = field(default_factory=tuple)
    systemd: bool = False           # for a host: systemd is PID 1 of its own PID and mount namespaces


@dataclass(frozen=True)
class LabPlan:
    """Every name and address a lab uses, derived from its settings."""

    settings: LabSettings
    bridge: str
    bridge_address: str
    lan: str
    nodes: tuple[Node, ...]

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def hosts(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "bare_metal"]

    @property
    def containers(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "container"]

    def node(self, name: str) -> Node:
        for candidate in self.nodes:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    @property
    def namespaces(self) -> list[str]:
        return [n.netns for n in self.nodes]

    @property
    def root_links(self) -> list[str]:
        return [self.bridge] + [n.peer for n in self.nodes if n.parent is None]


CONTAINER_BRIDGE = "ctr0"
UPLINK = "eth0"


def plan(settings: LabSettings) -> LabPlan:
    """Allocate names and addresses for ``settings`` (already validated)."""
    network = ipaddress.IPv4Network(settings.range)
    lan = next(network.subnets(new_prefix=LAN_PREFIXLEN))
    lan_hosts = list(lan.hosts())
    bridge_address = lan_hosts[0]
    prefix = settings.prefix
    container_subnets: list[ipaddress.IPv4Network] = []
    if settings.containers:
        block = list(network.subnets(new_prefix=LAN_PREFIXLEN))[1]
        container_subnets = list(block.subnets(new_prefix=CONTAINER_PREFIXLEN))[:settings.hosts]

    nodes: list[Node] = [Node(name="manager", kind="manager", netns=f"{prefix}-mgr",
                              address=str(lan_hosts[1]), uplink=UPLINK, peer=f"{prefix}-mgr")]
    for i in range(1, settings.hosts + 1):
        subnet = container_subnets[i - 1] if settings.containers else None
        names = tuple(f"host{i}-c{j}" for j in range(1, settings.containers + 1))
        nodes.append(Node(name=f"host{i}", kind="bare_metal", netns=f"{prefix}-h{i}",
                          address=str(lan_hosts[HOST_OFFSET + i - 1]), uplink=UPLINK, peer=f"{prefix}-h{i}",
                          container_subnet=str(subnet) if subnet else None, containers=names,
                          systemd=i <= settings.systemd_hosts))
    for host in list(nodes[1:]):
        if not host.container_subnet:
            continue
        subnet_hosts = list(ipaddress.IPv4Network(host.container_subnet).hosts())
        for j, name in enumerate(host.containers, start=1):
            nodes.append(Node(name=name, kind="container", netns=f"{host.netns}c{j}",
                              address=str(subnet_hosts[j]), uplink=UPLINK, peer=f"veth-c{j}",
                              parent=host.name, gateway=str(subnet_hosts[0])))
    return LabPlan(settings=settings, bridge=f"{prefix}-br", bridge_address=str(bridge_address),
                   lan=str(lan), nodes=tuple(nodes))
