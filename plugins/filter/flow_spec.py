# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: flow_spec
short_description: Parse and check a LatScope flow spec against the inventory
version_added: 0.1.0
description:
  - Turns C(src=host1 dst=host2 dport=5201 duration=10s) into the settings of a measurement session -
    addresses, the observers that must run (a container is observed through its host), the flow filter,
    the sampling settings, the duration and the optional traffic generator.
  - Fails with one message naming the field on an unknown key, an unknown host, a port out of range or
    a malformed duration.
positional: _input, hostvars, hosts
options:
  _input:
    description: The flow spec.
    type: str
    required: true
  hostvars:
    description: The inventory's C(hostvars).
    type: dict
    required: true
  hosts:
    description: The inventory hosts to look in, usually C(groups['all']).
    type: list
    elements: str
    required: true
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Check the flow before anything runs
  ansible.builtin.set_fact:
    __flow: "{{ flow | latscope.latscope.flow_spec(hostvars, groups['all']) }}"
'''

RETURN = r'''
_value:
  description: src, dst (name, address, observer), observers, flow, sampling, traffic, rate, duration_s.
  type: dict
'''

from ansible.errors import AnsibleFilterError

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.flowspec import parse_flow_spec


def flow_spec(text, hostvars, hosts):
    known = {}
    for name in hosts:
        variables = hostvars[name]
        known[name] = {"ansible_host": variables.get("ansible_host", name),
                       "latscope_container_host": variables.get("latscope_container_host")}
    try:
        return parse_flow_spec(text, known)
    except InputError as exc:
        raise AnsibleFilterError(f"flow spec: {exc}") from None


class FilterModule:  # pylint: disable=too-few-public-methods
    def filters(self):
        return {"flow_spec": flow_spec}
