# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the control-plane modules share: their common options and the connection to Redis."""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.latscope.latscope.plugins.module_utils.control import (
    REDIS_IMPORT_ERROR, ControlPlaneError, Controller, RedisSettings, connect)
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError


def redis_common_argument_spec() -> Dict[str, Any]:
    """The options of plugins/doc_fragments/redis.py; each module ``update()``s its own in."""
    return {
        "redis_host": {"type": "str", "default": "127.0.0.1"},
        "redis_port": {"type": "int", "default": 6379},
        "redis_user": {"type": "str"},
        "redis_password": {"type": "str", "no_log": True},
        "redis_prefix": {"type": "str", "default": "latscope"},
    }


def controller(module: Any) -> Controller:
    """A connected Controller, or fail_json with one line (never the password)."""
    if REDIS_IMPORT_ERROR:
        module.fail_json(msg="the Python library 'redis' is required on the host running this module",
                         exception=REDIS_IMPORT_ERROR)
    params = module.params
    try:
        settings = RedisSettings.from_dict({"host": params["redis_host"], "port": params["redis_port"],
                                            "user": params["redis_user"], "password": params["redis_password"]})
        return Controller(connect(settings), params["redis_prefix"])
    except (InputError, ControlPlaneError) as exc:
        module.fail_json(msg=str(exc))
        raise  # not reached: fail_json exits
