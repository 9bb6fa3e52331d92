#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_timesync
short_description: Put every LatScope observer's clock on the manager's timebase
version_added: 0.1.0
description:
  - Runs one or more time-sync rounds from the manager. Each round asks the observers' collectors over
    the control plane to arm their XDP responders, sends bursts of probes stamped in BPF at the manager's
    device, and fits every observer's offset and skew with an error bound (docs/timesync.md).
  - Runs on the manager, with the collector code the C(manager) role installs (the prober is a BPF
    program; it needs root and the manager's interface). It is thin over C(latscope timesync sync).
  - With I(mysql_host), the estimates are stored in C(clock_estimates) for I(session), where the analysis
    reads them.
  - An observer that did not arm or did not answer gets an estimate that says so (C(synchronised=false)
    and the reason), never a previous one. With I(require_all=true) the task then fails naming it.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - latscope.latscope.redis
options:
  hosts:
    description: The observers to synchronise, inventory name to the address their responder answers on.
    type: dict
    required: true
  session:
    description: The session the estimates belong to.
    type: str
    required: true
  interface:
    description: The manager's device towards the observers (where probes are stamped).
    type: str
    required: true
  netns:
    description: Network namespace path of I(interface), when it is not the manager's own.
    type: path
  token_file:
    description: The deployment's time-sync token (32 hex digits, mode 0600), as the C(manager) role writes it.
    type: path
    required: true
  port:
    description: UDP port of the responders.
    type: int
    default: 31790
  rounds:
    description: Rounds to run; more than one re-synchronises every I(every) seconds.
    type: int
    default: 1
  every:
    description: Seconds between rounds.
    type: float
    default: 10.0
  bursts:
    description: Bursts of probes per round (the skew is fitted over them).
    type: int
    default: 8
  probes:
    description: Probes per burst (the minimum-delay ones are kept).
    type: int
    default: 16
  require_all:
    description: Fail when an observer could not be synchronised.
    type: bool
    default: false
  mysql_host:
    description: Where to store the estimates (the manager's MariaDB); not stored when omitted.
    type: str
  mysql_port:
    description: Port of MariaDB.
    type: int
    default: 3306
  mysql_user:
    description: A user allowed to insert into C(clock_estimates).
    type: str
    default: latscope
  mysql_password:
    description: Its password. Never logged.
    type: str
  mysql_database:
    description: The LatScope database.
    type: str
    default: latscope
  latscope_python:
    description: The Python of the collector code on the manager (the venv the C(manager) role makes).
    type: path
    default: /opt/latscope/venv/bin/python
attributes:
  check_mode:
    support: full
    details: In check mode nothing is probed or stored; the task reports what it would do.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: Each run takes new measurements and stores them as new estimates.
    support: none
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Synchronise the observers' clocks for run-42
  latscope.latscope.latscope_timesync:
    session: run-42
    hosts: "{{ dict(groups['bare_metal'] | zip(groups['bare_metal'] | map('extract', hostvars, 'ansible_host'))) }}"
    interface: eth0
    token_file: /etc/latscope/timesync.token
    redis_password: "{{ latscope_redis_password }}"
    mysql_host: 127.0.0.1
    mysql_password: "{{ latscope_mysql_password }}"
  register: __clocks
'''

RETURN = r'''
estimates:
  description: Per observer, the last round's estimate (offset and error in ns, skew in ppb).
  returned: success
  type: dict
  sample:
    host1: {offset_ns: 112, skew_ppb: -3, error_ns: 2310, synchronised: true, reason: "", replies: 128}
unsynchronised:
  description: The observers without a usable estimate.
  returned: success
  type: list
  elements: str
  sample: []
rounds:
  description: How many rounds ran.
  returned: success
  type: int
  sample: 1
'''

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.latscope.latscope.plugins.module_utils.ansible_control import redis_common_argument_spec
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int

ESTIMATE_KEYS = ("offset_ns", "skew_ppb", "error_ns", "skew_error_ppb", "synchronised", "reason", "replies", "probes_used",
                 "probes_lost", "at_ns")


def _secret_file(module: AnsibleModule, name: str, value: str) -> str:
    """A 0600 file in the module's private temporary directory holding ``value``."""
    path = os.path.join(module.tmpdir, name)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    return path


def _argv(module: AnsibleModule) -> list:
    params = module.params
    argv = [params["latscope_python"], "-m", "latscope", "timesync", "sync", "--interface", params["interface"],
            "--token-file", params["token_file"], "--port", str(params["port"]), "--session", params["session"],
            "--rounds", str(params["rounds"]), "--every", str(params["every"]), "--bursts", str(params["bursts"]),
            "--probes", str(params["probes"]), "--redis-host", params["redis_host"],
            "--redis-port", str(params["redis_port"]), "--redis-prefix", params["redis_prefix"]]
    for name, address in params["hosts"].items():
        argv += ["--host", f"{name}={address}"]
    if params["netns"]:
        argv += ["--netns", params["netns"]]
    if params["redis_user"]:
        argv += ["--redis-user", params["redis_user"]]
    if params["redis_password"]:
        argv += ["--redis-password-file", _secret_file(module, "redis", params["redis_password"])]
    if params["mysql_host"]:
        argv += ["--mysql-host", params["mysql_host"], "--mysql-port", str(params["mysql_port"]),
                 "--mysql-user", params["mysql_user"], "--mysql-database", params["mysql_database"]]
        if params["mysql_password"]:
            argv += ["--mysql-password-file", _secret_file(module, "mysql", params["mysql_password"])]
    return argv


def _check(params: dict) -> None:
    if not params["hosts"]:
        raise InputError("hosts", "must name at least one observer")
    for name, address in params["hosts"].items():
        if not isinstance(address, str) or not address:
            raise InputError(f"hosts.{name}", "must be the observer's address", address)
    require_int("rounds", params["rounds"], 1, 1000)
    require_int("bursts", params["bursts"], 1, 1000)
    require_int("probes", params["probes"], 1, 1000)
    require_int("port", params["port"], 1, 65535)
    if not 0 <= params["every"] <= 3600:
        raise InputError("every", "must be between 0 and 3600 seconds", params["every"])


def main() -> None:
    spec = redis_common_argument_spec()
    spec.update(hosts={"type": "dict", "required": True}, session={"type": "str", "required": True},
                interface={"type": "str", "required": True}, netns={"type": "path"},
                token_file={"type": "path", "required": True, "no_log": False},
                port={"type": "int", "default": 31790}, rounds={"type": "int", "default": 1},
                every={"type": "float", "default": 10.0}, bursts={"type": "int", "default": 8},
                probes={"type": "int", "default": 16}, require_all={"type": "bool", "default": False},
                mysql_host={"type": "str"}, mysql_port={"type": "int", "default": 3306},
                mysql_user={"type": "str", "default": "latscope"}, mysql_password={"type": "str", "no_log": True},
                mysql_database={"type": "str", "default": "latscope"},
                latscope_python={"type": "path", "default": "/opt/latscope/venv/bin/python"})
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params
    try:
        _check(params)
    except InputError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=bool(params["mysql_host"]), estimates={}, unsynchronised=[], rounds=0,
                         msg=f"would synchronise {', '.join(sorted(params['hosts']))}")
    if not os.access(params["latscope_python"], os.X_OK):
        module.fail_json(msg=f"latscope_python: {params['latscope_python']} is not there: deploy the manager role first")
    rc, out, err = module.run_command(_argv(module))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if rc != 0 or not lines:
        module.fail_json(msg=f"latscope timesync sync failed (exit {rc}): {err.strip() or out.strip()}", rc=rc)
    rounds = [json.loads(line) for line in lines]
    last = rounds[-1]["estimates"]
    estimates = {host: {key: value.get(key) for key in ESTIMATE_KEYS if key in value} for host, value in last.items()}
    unsynchronised = sorted(host for host, value in estimates.items() if not value.get("synchronised"))
    result = {"changed": bool(params["mysql_host"]), "estimates": estimates, "unsynchronised": unsynchronised,
              "rounds": len(rounds)}
    if unsynchronised and params["require_all"]:
        reasons = "; ".join(f"{host}: {estimates[host].get('reason') or 'no estimate'}" for host in unsynchronised)
        module.fail_json(msg=f"not synchronised: {reasons}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
