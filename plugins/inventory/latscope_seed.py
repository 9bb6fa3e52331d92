# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: latscope_seed
short_description: The LatScope seed's conf/ directory as an inventory
version_added: 0.1.0
author: LatScope contributors (@latscope)
description:
  - Reads the C(conf/) files of the LatScope seed (C(connect_info.yaml), C(management_server_info.yaml),
    C(redis_info.yaml), C(database_info.yaml), C(sampling_info.yaml), C(ping_info.yaml)) and yields the
    collection's groups C(bare_metal), C(vms), C(containers) and C(latscope_manager) with their variables,
    so that users of the seed move over without rewriting their fleet description.
  - Servers with C(isvm) go to C(vms) with C(latscope_vm_hypervisor) naming their host; the addresses of
    C(iscontainer) entries become hosts C(<host>-c1), C(<host>-c2)... of C(containers) with
    C(latscope_container_host).
  - No password is copied. SSH, Redis and MySQL passwords become references to vault variables
    (C(vault_latscope_ssh_password_<host>), C(vault_latscope_redis_password),
    C(vault_latscope_mysql_password)), which the user defines in an ansible-vault file.
  - A bad entry fails the inventory with one message naming the file, the host and the field.
  - The inventory source is a YAML file whose name ends in C(latscope_seed.yml) or C(latscope_seed.yaml).
options:
  plugin:
    description: Marks the file as a source for this plugin.
    required: true
    type: str
    choices: [latscope.latscope.latscope_seed]
  conf_dir:
    description:
      - The seed's C(conf/) directory; a relative path is taken from the directory of the source file.
      - C(connect_info.yaml) and C(management_server_info.yaml) are required, the other files optional.
    required: true
    type: str
  ssh_passwords:
    description:
      - Set C(ansible_password) of every host whose seed entry has a password to a reference to
        C(vault_latscope_ssh_password_<host>). Turn off where the hosts are reached with SSH keys.
    type: bool
    default: true
"""

EXAMPLES = r"""
# seed.latscope_seed.yml, next to the seed's conf/ directory:
#   ansible-inventory -i seed.latscope_seed.yml --graph
#   ansible-playbook -i seed.latscope_seed.yml -i vault_vars/ latscope.latscope.deploy
plugin: latscope.latscope.latscope_seed
conf_dir: conf
ssh_passwords: false
"""

import os
import re

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.seedconf import FILES, build_inventory

try:
    import yaml
except ImportError:  # ansible-core depends on PyYAML; kept for a clear message
    yaml = None

try:  # ansible-core 2.19+: our vault references must be templated, the seed's text never
    from ansible.template import trust_as_template
except ImportError:
    def trust_as_template(value):
        return value

_REFERENCE = re.compile(r"^\{\{ vault_latscope_[A-Za-z0-9_]+ \}\}$")


class InventoryModule(BaseInventoryPlugin):
    """Groups and variables from the seed's conf/ files (the logic lives in module_utils/seedconf.py)."""

    NAME = "latscope.latscope.latscope_seed"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("latscope_seed.yml", "latscope_seed.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if yaml is None:
            raise AnsibleParserError("the latscope_seed inventory needs PyYAML")
        self._read_config_data(path)
        conf_dir = os.path.join(os.path.dirname(os.path.abspath(path)),
                                os.path.expanduser(self.get_option("conf_dir")))
        if not os.path.isdir(conf_dir):
            raise AnsibleParserError(f"{path}: conf_dir: not a directory: {conf_dir}")
        try:
            seed = build_inventory(self._read_conf(conf_dir), ssh_passwords=self.get_option("ssh_passwords"))
        except InputError as exc:
            raise AnsibleParserError(f"{conf_dir}/{exc}") from None
        for group, hosts in seed.groups.items():
            self.inventory.add_group(group)
            for host, host_vars in hosts.items():
                self.inventory.add_host(host, group=group)
                for key, value in host_vars.items():
                    self.inventory.set_variable(host, key, self._value(value))
        for key, value in seed.all_vars.items():
            self.inventory.set_variable("all", key, self._value(value))
        for warning in seed.warnings:
            self.display.warning(f"latscope_seed: {warning}")

    @staticmethod
    def _value(value):
        if isinstance(value, str) and _REFERENCE.match(value):
            return trust_as_template(value)
        return value

    @staticmethod
    def _read_conf(conf_dir):
        docs = {}
        for name in FILES:
            file_path = os.path.join(conf_dir, name)
            if not os.path.exists(file_path):
                continue
            try:
                with open(file_path, encoding="utf-8") as handle:
                    docs[name] = yaml.safe_load(handle)
            except (OSError, yaml.YAMLError) as exc:
                raise AnsibleParserError(f"{file_path}: cannot be read as YAML: {to_native(exc)}") from None
        return docs
