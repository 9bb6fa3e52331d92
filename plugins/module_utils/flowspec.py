# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flow spec of ``measure.yml -e flow=...`` (one implementation, used by the filter plugin and the CLI).

A flow spec is ``key=value`` words: ``src=host1 dst=host2 dport=5201 proto=tcp
duration=10s`` with optional ``sport``, ``size`` (sampling.size), ``interval``
and ``traffic=iperf3|none`` (start a demo flow or measure existing traffic).
``src`` and ``dst`` name inventory hosts (containers too). Everything is checked
before anything runs: an unknown key, an unknown host, a port out of range or a
duration that is not a duration gives one error naming the field.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

KEYS = ("src", "dst", "sport", "dport", "proto", "duration", "size", "interval", "traffic", "rate")
TRAFFIC = ("iperf3", "none")
_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m)?$")
_RATE = re.compile(r"^\d+(?:\.\d+)?[KMG]?$")
MAX_DURATION_S = 3600.0


def duration_seconds(field_name: str, text: Any) -> float:
    match = _DURATION.match(str(text).strip())
    if not match:
        raise InputError(field_name, "must be a duration such as 10s, 500ms or 2m", text)
    value = float(match.group("value")) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group("unit")]
    if not 0 < value <= MAX_DURATION_S:
        raise InputError(field_name, f"must be more than 0 and at most {MAX_DURATION_S:.0f}s", text)
    return value


def parse_flow_spec(text: Any, hosts: Mapping[str, Mapping[str, Any]], prefix: str = "flow") -> Dict[str, Any]:
    """Parse and check ``text`` against ``hosts`` (inventory name -> its vars: ansible_host, container host).

    Returns the session settings: ``src``/``dst`` (names and addresses), the ``observers`` that must
    run (a container is observed through its host), the FlowFilter and Sampling mappings, the duration
    and the traffic generator.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(prefix, "must be words like 'src=host1 dst=host2 dport=5201 duration=10s'", text)
    raw: Dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise InputError(prefix, "every word must be key=value", word)
        if key not in KEYS:
            raise InputError(f"{prefix}.{key}", f"unknown key; known: {', '.join(KEYS)}")
        if key in raw:
            raise InputError(f"{prefix}.{key}", "is given twice")
        raw[key] = value
    for key in ("src", "dst"):
        if key not in raw:
            raise InputError(f"{prefix}.{key}", "is required (an inventory host)")
    ends = {}
    for key in ("src", "dst"):
        name = raw[key]
        if name not in hosts:
            raise InputError(f"{prefix}.{key}", "is not a host of the inventory", name)
        address = hosts[name].get("ansible_host")
        if not address:
            raise InputError(f"{prefix}.{key}", "has no ansible_host address in the inventory", name)
        ends[key] = {"name": name, "address": str(address),
                     "observer": str(hosts[name].get("latscope_container_host") or name)}
    if ends["src"]["name"] == ends["dst"]["name"]:
        raise InputError(f"{prefix}.dst", "must differ from src", ends["dst"]["name"])
    proto = raw.get("proto", "tcp")
    if proto != "tcp":
        raise InputError(f"{prefix}.proto", "must be tcp", proto)
    dport: Optional[int] = require_int(f"{prefix}.dport", raw["dport"], 1, 65535) if "dport" in raw else None
    sport: Optional[int] = require_int(f"{prefix}.sport", raw["sport"], 1, 65535) if "sport" in raw else None
    traffic = raw.get("traffic", "none")
    if traffic not in TRAFFIC:
        raise InputError(f"{prefix}.traffic", f"must be one of {', '.join(TRAFFIC)}", traffic)
    if traffic == "iperf3" and dport is None:
        raise InputError(f"{prefix}.dport", "is required to start iperf3 (its port)")
    rate = raw.get("rate", "1G")
    if not _RATE.match(rate):
        raise InputError(f"{prefix}.rate", "must be a rate such as 500M or 1G (iperf3 -b)", rate)
    sampling: Dict[str, Any] = {"size": require_int(f"{prefix}.size", raw.get("size", 65536), 1, (1 << 32) - 1)}
    if "interval" in raw:
        sampling["interval"] = duration_seconds(f"{prefix}.interval", raw["interval"])
    flow = {"proto": "tcp", "src": ends["src"]["address"], "dst": ends["dst"]["address"]}
    if dport is not None:
        flow["dport"] = dport
    if sport is not None:
        flow["sport"] = sport
    return {"src": ends["src"], "dst": ends["dst"],
            "observers": sorted({ends["src"]["observer"], ends["dst"]["observer"]}),
            "flow": flow, "sampling": sampling, "traffic": traffic, "rate": rate,
            "duration_s": duration_seconds(f"{prefix}.duration", raw.get("duration", "10s"))}
