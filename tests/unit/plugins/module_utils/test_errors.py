"""The shared input-error type: one line naming the field."""

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int


def test_message_names_field_and_value():
    err = InputError("sampling.size", "must be positive", -1)
    assert str(err) == "sampling.size: must be positive (got -1)"
    assert err.field == "sampling.size"


@pytest.mark.parametrize("value, expected", [("5", 5), (5, 5), (5.0, 5)])
def test_require_int_accepts(value, expected):
    assert require_int("n", value, 1, 8) == expected


@pytest.mark.parametrize("value, fragment", [
    (True, "must be an integer"), ("x", "must be an integer"), (2.5, "must be an integer"),
    (None, "must be an integer"), (float("inf"), "must be an integer"), (0, "at least 1"), (9, "at most 8"),
])
def test_require_int_rejects(value, fragment):
    with pytest.raises(InputError) as info:
        require_int("hosts", value, 1, 8)
    assert str(info.value).startswith("hosts: ")
    assert fragment in str(info.value)
