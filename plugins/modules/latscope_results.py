#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_results
short_description: Gather the per-host counters and summaries of a LatScope session
version_added: 0.1.0
description:
  - Reads what each collector published to the control plane for I(session) - records, drops by
    cause, spool and store counters, and its summary.
  - Fails naming every host that published nothing for the session (collector down, or never started).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - latscope.latscope.redis
options:
  session:
    description: Session id.
    type: str
    required: true
  hosts:
    description: The observers whose results are expected.
    type: list
    elements: str
    required: true
attributes:
  check_mode:
    support: full
    details: Read only.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: Read only.
    support: full
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Results of run-42
  latscope.latscope.latscope_results:
    session: run-42
    hosts: "{{ groups['bare_metal'] }}"
    redis_host: "{{ latscope_manager_address }}"
    redis_password: "{{ latscope_redis_password }}"
  delegate_to: localhost
  register: __results
'''

RETURN = r'''
hosts:
  description: Per host, its counters, summary and the time of its last update (epoch seconds).
  returned: success
  type: dict
  sample:
    host1:
      counters: {created: 4102, emitted: 4100, ringbuf_full: 0, evicted: 0, store_spooled_records: 0}
      summary: {}
      last_update: 1795412345.2
totals:
  description: Every counter summed over the hosts.
  returned: success
  type: dict
  sample: {emitted: 8200, ringbuf_full: 0}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.latscope.latscope.plugins.module_utils.ansible_control import (
    controller, redis_common_argument_spec)
from ansible_collections.latscope.latscope.plugins.module_utils.control import ControlPlaneError
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError


def main() -> None:
    spec = redis_common_argument_spec()
    spec.update(session={"type": "str", "required": True},
                hosts={"type": "list", "elements": "str", "required": True})
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    control = controller(module)
    try:
        found = control.session_results(module.params["session"], module.params["hosts"])
    except (InputError, ControlPlaneError) as exc:
        module.fail_json(msg=str(exc))
    results = {host: {"counters": r.counters, "summary": r.summary, "last_update": r.last_update}
               for host, r in found.items()}
    totals = {}
    for entry in results.values():
        for name, value in entry["counters"].items():
            totals[name] = totals.get(name, 0) + value
    module.exit_json(changed=False, hosts=results, totals=totals)


if __name__ == "__main__":
    main()
