"""Password files: plan decides (keep, set, generate, prune), apply writes; no password ever in a repr or error."""

import hashlib
import os
import stat

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.passwords import (
    apply, check_name, generate, plan, read_password, sha256_hex)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_passwords_are_letters_and_digits_of_the_length_asked_and_differ():
    first, second = generate(32), generate(32)
    assert len(first) == 32 and first.isalnum() and first.isascii() and first != second
    with pytest.raises(InputError) as info:
        generate(8)
    assert info.value.field == "length"


def test_the_hash_is_what_redis_stores():
    assert sha256_hex("foobar") == hashlib.sha256(b"foobar").hexdigest()


def test_a_first_run_creates_the_directory_generates_and_sets(tmp_path):
    directory = str(tmp_path / "collectors")
    result = plan(directory, {"host1": None, "host2": "Given-pass-2"})
    assert result.changed and result.create_directory
    assert result.generated == ["host1"] and result.updated == ["host2"]
    assert "Given-pass-2" not in repr(result) and result.writes["host1"] not in repr(result)
    apply(result)
    assert _mode(directory) == 0o700
    for name in ("host1", "host2"):
        assert _mode(os.path.join(directory, f"{name}.password")) == 0o600
    assert read_password(os.path.join(directory, "host2.password")) == "Given-pass-2"
    generated = read_password(os.path.join(directory, "host1.password"))
    assert result.sha256 == {"host1": sha256_hex(generated), "host2": sha256_hex("Given-pass-2")}
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_a_second_run_keeps_generated_passwords_and_changes_nothing(tmp_path):
    directory = str(tmp_path / "collectors")
    first = plan(directory, {"host1": None, "host2": ""})
    apply(first)
    again = plan(directory, {"host1": None, "host2": ""})
    assert not again.changed and again.sha256 == first.sha256 and again.generated == []


def test_a_given_password_replaces_the_file_and_a_widened_mode_is_repaired(tmp_path):
    directory = str(tmp_path / "collectors")
    apply(plan(directory, {"host1": None, "host2": "Given-pass-2"}))
    os.chmod(os.path.join(directory, "host2.password"), 0o644)
    result = plan(directory, {"host1": "Now-from-the-vault", "host2": "Given-pass-2"})
    assert result.updated == ["host1"] and list(result.writes) == ["host1"] and result.chmods == ["host2"]
    apply(result)
    assert read_password(os.path.join(directory, "host1.password")) == "Now-from-the-vault"
    assert _mode(os.path.join(directory, "host2.password")) == 0o600


def test_names_left_out_are_pruned_and_other_files_are_left_alone(tmp_path):
    directory = tmp_path / "collectors"
    apply(plan(str(directory), {"host1": None, "host2": None}))
    (directory / "notes.txt").write_text("not a password file")
    kept = plan(str(directory), {"host1": None}, prune=False)
    assert kept.removals == [] and not kept.changed
    result = plan(str(directory), {"host1": None})
    assert result.removals == ["host2"] and result.changed
    apply(result)
    assert sorted(os.listdir(directory)) == ["host1.password", "notes.txt"]


def test_a_blank_file_is_treated_as_missing(tmp_path):
    directory = tmp_path / "collectors"
    directory.mkdir(mode=0o700)
    (directory / "host1.password").write_text("\n")
    result = plan(str(directory), {"host1": None})
    assert result.generated == ["host1"]


@pytest.mark.parametrize("name", ["../etc", ".hidden", "-x", "a/b", "", "x" * 129, 5])
def test_names_must_be_safe_file_names(name):
    with pytest.raises(InputError) as info:
        check_name(name)
    assert info.value.field == "passwords"


@pytest.mark.parametrize("password", [" padded", "trailing ", "two\nlines", 7, "x" * 1025])
def test_bad_given_passwords_are_named_without_their_value(tmp_path, password):
    with pytest.raises(InputError) as info:
        plan(str(tmp_path), {"host1": password})
    assert info.value.field == "passwords.host1"
    assert str(password) not in str(info.value) or isinstance(password, int)


def test_the_directory_must_be_absolute():
    with pytest.raises(InputError) as info:
        plan("relative/dir", {"host1": None})
    assert info.value.field == "path"
