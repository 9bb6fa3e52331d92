#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_facts
short_description: Probe what a host's kernel offers LatScope and pick its hook profile
version_added: 0.1.0
description:
  - Probes the running kernel directly (tiny programs loaded through C(bpf(2)), no compiler) for
    BTF, kprobes, fentry and tp_btf, raw tracepoints, XDP (native and generic), tc and tcx,
    cgroup v2, sock_ops, cgroup_skb, ring buffers, the netfilter BPF link, the tracepoints the
    C(tracepoint) profile needs, the BCC version, the header tree BCC compiles against and whether
    systemd is PID 1.
  - Chooses the hook profile the observer will run (C(kprobe), C(tracepoint) or C(none) with the
    reason) and returns everything as C(ansible_facts.latscope).
  - Nothing is left loaded or attached afterwards.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  devices:
    description:
      - Also probe XDP and tc, on a veth pair in a scratch network namespace that is removed afterwards.
    type: bool
    default: true
  mount:
    description:
      - Mount tracefs and a cgroup v2 hierarchy when the host has none where the collector needs them
        (processes started by C(ip netns exec) see a fresh C(/sys)). With C(false), report what is there.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: >-
      The probe only reads. With I(mount=true) it may mount tracefs or cgroup2; in check mode it mounts them
      in a private mount namespace that ends with the module, so the facts are the real run's and the host
      is left unchanged.
  diff_mode:
    support: none
  platform:
    platforms: linux
  idempotent:
    description: Probing twice reports the same facts and changes nothing.
    support: full
notes:
  - Needs root (loading BPF programs). Runs on the observed host.
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: Probe the host
  latscope.latscope.latscope_facts:

- name: Refuse hosts that cannot run any profile
  ansible.builtin.assert:
    that: ansible_facts.latscope.hook_profile != 'none'
    fail_msg: "{{ inventory_hostname }}: {{ ansible_facts.latscope.profile_reason }}"

- name: Quick probe without the XDP/tc checks
  latscope.latscope.latscope_facts:
    devices: false
'''

RETURN = r'''
ansible_facts:
  description: Facts under the key C(latscope).
  returned: always
  type: dict
  contains:
    latscope:
      description: Every capability probed, the chosen profile and why, and any probe errors.
      returned: always
      type: dict
      sample:
        kernel_release: 6.18.44
        btf: true
        kprobes: false
        fentry: false
        raw_tracepoint: true
        xdp_native: true
        sock_ops: true
        cgroup_skb: true
        ringbuf: true
        systemd_pid1: false
        hook_profile: tracepoint
        profile_reason: "kprobes unusable (...); required tracepoints, sock_ops and cgroup_skb attach"
        errors: {kprobes: "kernel has no kprobe PMU ..."}
hook_profile:
  description: The profile the observer will run on this host.
  returned: always
  type: str
  sample: tracepoint
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.latscope.latscope.plugins.module_utils.kernel import mounts as kernel_mounts
from ansible_collections.latscope.latscope.plugins.module_utils.kernel.capabilities import probe_capabilities


def main() -> None:
    module = AnsibleModule(argument_spec={"devices": {"type": "bool", "default": True},
                                          "mount": {"type": "bool", "default": True}},
                           supports_check_mode=True)
    mount = module.params["mount"]
    if mount and module.check_mode:
        # Probe as the real run would (tracefs and cgroup2 mounted where missing), but in a mount namespace of
        # this process's own: the mounts vanish with it. cgroup2 goes on /sys/fs/cgroup there, so that not even
        # the fallback mount point is created on the host. Without the namespace, report what is there.
        mount = False
        try:
            kernel_mounts.enter_private_mount_namespace()
            kernel_mounts.ensure_kernel_mounts(cgroup2_fallback=kernel_mounts.SYSFS_CGROUP)
        except kernel_mounts.KernelMountError:
            pass
    caps = probe_capabilities(ensure_mounts=mount, with_devices=module.params["devices"])
    facts = caps.as_dict()
    module.exit_json(changed=False, ansible_facts={"latscope": facts}, hook_profile=facts["hook_profile"])


if __name__ == "__main__":
    main()
