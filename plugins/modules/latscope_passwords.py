#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: latscope_passwords
short_description: Keep one password per name in a directory of 0600 files, generating missing ones
version_added: 0.1.0
description:
  - Keeps the file C(<path>/<name>.password) (mode 0600, the directory 0700) for every name of I(passwords).
  - A name given a password gets exactly that password in its file (from the inventory - vault it). A name
    given none keeps the password its file holds, or gets a new one of I(length) letters and digits from the
    system's random source when there is no file yet.
  - With I(prune), the password files of names no longer listed are removed.
  - Returns each password's SHA-256 - what a Redis ACL file stores for a password (C(#<sha256>)) - and never
    a password. The C(latscope.latscope.manager) role keeps its per-collector Redis passwords with it; the
    observer role reads each host's file from the manager.
  - Runs with any Python 3 (standard library only).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description: Directory of the password files (created with mode 0700).
    type: path
    required: true
  passwords:
    description:
      - A mapping of names (1-128 letters, digits, C(_), C(.) or C(-)) to a password, or to null (or an empty
        string) for a generated one.
      - A given password may not start or end with white space nor hold a line break (its readers strip the file).
    type: dict
    required: true
  length:
    description: Length of a generated password (16-256 characters).
    type: int
    default: 32
  prune:
    description: Remove the C(*.password) files of I(path) whose name is not in I(passwords).
    type: bool
    default: true
notes:
  - Keep C(no_log) on the task - the hashes of passwords chosen by people can be guessed at.
  - To change a generated password, remove its file and run the module again (then update its users).
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be written or removed, writing nothing.
      - A password that would be generated is represented in I(sha256) by the hash of a random value that is thrown away.
  diff_mode:
    support: none
  platform:
    platforms: posix
  idempotent:
    description: A second run with the same options changes nothing (generated passwords are kept).
    support: full
author:
  - LatScope Engineering (@latscope)
'''

EXAMPLES = r'''
- name: One Redis password per collector, generated unless the inventory sets latscope_redis_collector_password
  latscope.latscope.latscope_passwords:
    path: /etc/latscope/redis-collectors
    passwords: "{{ dict(groups['bare_metal'] | zip(groups['bare_metal']
                   | map('extract', hostvars) | map(attribute='latscope_redis_collector_password', default=none))) }}"
  register: __collector_passwords
  no_log: true
'''

RETURN = r'''
path:
  description: The directory of the password files.
  returned: always
  type: str
  sample: /etc/latscope/redis-collectors
sha256:
  description: Per name, the SHA-256 (hexadecimal) of its password.
  returned: success
  type: dict
  sample: {host1: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8}
generated:
  description: Names whose password was (or in check mode would be) generated.
  returned: success
  type: list
  elements: str
  sample: [host2]
updated:
  description: Names whose file was (or would be) written with the password given for them.
  returned: success
  type: list
  elements: str
  sample: [host1]
removed:
  description: Names whose file was (or would be) removed (I(prune)).
  returned: success
  type: list
  elements: str
  sample: [old-host]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.passwords import apply, plan


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True},
                       "passwords": {"type": "dict", "required": True, "no_log": True},
                       "length": {"type": "int", "default": 32},
                       "prune": {"type": "bool", "default": True}},
        supports_check_mode=True)
    params = module.params
    try:
        result = plan(params["path"], params["passwords"], params["length"], params["prune"])
    except InputError as exc:
        module.fail_json(msg=str(exc))
    if result.changed and not module.check_mode:
        try:
            apply(result)
        except OSError as exc:
            module.fail_json(msg=f"path: cannot write {exc.filename or params['path']} ({exc.strerror})")
    module.exit_json(changed=result.changed, path=params["path"], sha256=result.sha256, generated=result.generated,
                     updated=result.updated, removed=result.removals)


if __name__ == "__main__":
    main()
