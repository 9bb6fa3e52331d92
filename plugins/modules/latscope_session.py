#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_session
short_description: Start or stop a LatScope measurement session on a set of observers
version_added: 0.1.0
description:
  - Sends session commands to the collectors of I(hosts) through the control plane (Redis) and waits
    for every collector's acknowledgement, up to I(timeout) seconds.
  - Idempotent - hosts already running I(session) are not asked to start it again, hosts not running
    it are not asked to stop it; nothing is sent when there is nothing to do (C(changed=false)).
  - Fails before sending anything when the flow or sampling settings are invalid (the message names
    the field) or when a host's collector has no live heartbeat.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - latscope.latscope.redis
options:
  hosts:
    description:
      - The observers (their inventory names, as their collectors know themselves).
    type: list
    elements: str
    required: true
  session:
    description:
      - Session id, C(^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$).
    type: str
    required: true
  state:
    description:
      - C(started) - the session runs on every host. C(stopped) - it runs on none.
    type: str
    choices: [started, stopped]
    default: started
  flow:
    description:
      - 5-tuple filter; unset fields match anything, and either direction of a flow matches.
    type: dict
    suboptions:
      proto:
        description: Transport protocol.
        type: str
        choices: [tcp]
        default: tcp
      src:
        description: Source address or IPv4 network.
        type: str
      dst:
        description: Destination address or IPv4 network.
        type: str
      sport:
        description: Source port.
        type: int
      dport:
        description: Destination port.
        type: int
  sampling:
    description:
      - Sampling settings (the seed's C(sampling_info)).
    type: dict
    suboptions:
      size:
        description: Sample one byte in every I(size) of each flow (any positive integer).
        type: int
        default: 65536
      ports:
        description: Only flows with one of these ports (empty - every port).
        type: list
        elements: int
      interval:
        description: Seconds between counter and flow-metric snapshots.
        type: float
        default: 1.0
  hook_profile:
    description:
      - Hook profile to run; C(auto) lets each collector use the one its facts chose.
    type: str
    choices: [auto, tracepoint, kprobe]
    default: auto
  duration:
    description:
      - Seconds after which each collector ends the session by itself.
    type: float
  timeout:
    description:
      - Seconds to wait for all acknowledgements.
    type: float
    default: 30
  require_alive:
    description:
      - Fail before sending when a host's collector has no live heartbeat.
    type: bool
    default: true
  wait_alive:
    description:
      - With I(require_alive), seconds to wait for every collector's heartbeat before failing (a collector
        just (re)started by C(deploy.yml) compiles its BPF programs first).
    type: float
    default: 0
attributes:
  check_mode:
    support: full
    details: Reads the hosts' states and reports which would change; sends nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: A second run with the same arguments sends nothing and reports no change.
    support: full
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Measure iperf3 traffic to host2 on both ends
  latscope.latscope.latscope_session:
    hosts: [host1, host2]
    session: run-42
    flow: {dst: 198.18.0.12, dport: 5201}
    sampling: {size: 72400, interval: 1}
    redis_host: "{{ latscope_manager_address }}"
    redis_password: "{{ latscope_redis_password }}"
  delegate_to: localhost

- name: Stop it
  latscope.latscope.latscope_session:
    hosts: [host1, host2]
    session: run-42
    state: stopped
    redis_host: "{{ latscope_manager_address }}"
    redis_password: "{{ latscope_redis_password }}"
  delegate_to: localhost
'''

RETURN = r'''
session:
  description: The session id.
  returned: always
  type: str
  sample: run-42
changed_hosts:
  description: Hosts that were (or in check mode would be) asked to change.
  returned: always
  type: list
  elements: str
  sample: [host1, host2]
hosts:
  description: Per host - whether it acknowledged, its error if any, and its state afterwards.
  returned: always
  type: dict
  sample:
    host1: {ok: true, error: "", timed_out: false, state: {state: running, session: run-42, hooks: 14}}
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.latscope.latscope.plugins.module_utils.ansible_control import (
    controller, redis_common_argument_spec)
from ansible_collections.latscope.latscope.plugins.module_utils.control import ControlPlaneError, check_session
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import FlowFilter, Sampling


def _clean(raw):
    return {key: value for key, value in (raw or {}).items() if value is not None}


def main() -> None:
    spec = redis_common_argument_spec()
    spec.update(
        hosts={"type": "list", "elements": "str", "required": True},
        session={"type": "str", "required": True},
        state={"type": "str", "choices": ["started", "stopped"], "default": "started"},
        flow={"type": "dict", "options": {"proto": {"type": "str", "choices": ["tcp"], "default": "tcp"},
                                          "src": {"type": "str"}, "dst": {"type": "str"},
                                          "sport": {"type": "int"}, "dport": {"type": "int"}}},
        sampling={"type": "dict", "options": {"size": {"type": "int", "default": 65536},
                                              "ports": {"type": "list", "elements": "int"},
                                              "interval": {"type": "float", "default": 1.0}}},
        hook_profile={"type": "str", "choices": ["auto", "tracepoint", "kprobe"], "default": "auto"},
        duration={"type": "float"},
        timeout={"type": "float", "default": 30.0},
        require_alive={"type": "bool", "default": True},
        wait_alive={"type": "float", "default": 0.0},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params
    try:
        session = check_session(params["session"])
        flow = FlowFilter.from_dict(_clean(params["flow"])).as_dict()
        sampling = Sampling.from_dict(_clean(params["sampling"])).as_dict()
    except InputError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    hosts = list(dict.fromkeys(params["hosts"]))
    if not hosts:
        module.fail_json(msg="hosts: must name at least one observer", field="hosts")
    control = controller(module)
    try:
        states = control.host_states(hosts)
        if params["state"] == "started":
            todo = [h for h in hosts if not (states[h].get("session") == session and states[h].get("state") == "running")]
        else:
            todo = [h for h in hosts if states[h].get("session") == session]
        result = {"changed": bool(todo), "session": session, "changed_hosts": todo,
                  "hosts": {h: {"ok": True, "error": "", "timed_out": False, "state": states[h]} for h in hosts}}
        if not todo or module.check_mode:
            module.exit_json(**result)
        if params["require_alive"]:
            deadline = time.monotonic() + max(0.0, params["wait_alive"])
            dead = [h for h, beat in control.alive(todo).items() if beat is None]
            while dead and time.monotonic() < deadline:
                time.sleep(1.0)
                dead = [h for h, beat in control.alive(dead).items() if beat is None]
            if dead:
                module.fail_json(msg=f"hosts: no live collector heartbeat from {', '.join(dead)} "
                                     "(is the observer deployed and running?)", field="hosts", **result)
        if params["state"] == "started":
            acks = control.start_session(todo, session, flow, sampling, params["hook_profile"], params["duration"],
                                         params["timeout"])
        else:
            acks = control.stop_session(todo, session, params["timeout"])
    except (InputError, ControlPlaneError) as exc:
        module.fail_json(msg=str(exc))
    for host, ack in acks.items():
        result["hosts"][host] = {"ok": ack.ok, "error": ack.error, "timed_out": ack.timed_out, "state": ack.state}
    failed = {h: (a.error or "no acknowledgement within the timeout") for h, a in acks.items() if not a.ok}
    if failed:
        module.fail_json(msg="; ".join(f"{h}: {e}" for h, e in failed.items()), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
