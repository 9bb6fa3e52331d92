# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by the modules that talk to the LatScope control plane (Redis)."""

from __future__ import annotations


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r'''
options:
  redis_host:
    description:
      - Address of the control plane's Redis (the manager).
    type: str
    default: 127.0.0.1
  redis_port:
    description:
      - Port of the control plane's Redis.
    type: int
    default: 6379
  redis_user:
    description:
      - Redis ACL user to log in as. Unset, the module logs in as Redis's C(default) user, which the
        C(latscope.latscope.manager) role keeps for the issuers of commands (modules, the prober).
      - The C(latscope-<host>) users that role creates belong to each host's collector and may not issue commands.
    type: str
  redis_password:
    description:
      - Password of I(redis_user) (of the C(default) user when I(redis_user) is unset). Never logged.
    type: str
  redis_prefix:
    description:
      - Prefix of every LatScope key in Redis; the collectors must use the same.
    type: str
    default: latscope
requirements:
  - redis (Python library, on the host that runs the module)
'''
