# -*- coding: utf-8 -*-
# Copyright: LatScope contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type for bad input, shared by the modules, the daemon and the CLI.

Every input from outside (flow specs, inventory variables, config files, Redis
messages, probe packets, records) is validated against it, so that a user gets
one line naming the field, the value and what is expected, wherever the input
came in.
"""

from __future__ import annotations

from typing import Any, Optional


class InputError(ValueError):
    """Bad input: ``field`` names where it came from, ``value`` what it was."""

    def __init__(self, field: str, message: str, value: Any = None) -> None:
        self.field = field
        self.value = value
        self.reason = message
        if value is None:
            text = f"{field}: {message}"
        else:
            text = f"{field}: {message} (got {value!r})"
        super().__init__(text)


def require_int(field: str, value: Any, minimum: Optional[int] = None,
                maximum: Optional[int] = None) -> int:
    """Return ``value`` as an int within [minimum, maximum], or raise InputError."""
    if isinstance(value, bool):
        raise InputError(field, "must be an integer", value)
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(field, "must be an integer", value) from None
    if isinstance(value, float) and value != number:
        raise InputError(field, "must be an integer", value)
    if minimum is not None and number < minimum:
        raise InputError(field, f"must be at least {minimum}", value)
    if maximum is not None and number > maximum:
        raise InputError(field, f"must be at most {maximum}", value)
    return number
