"""Every role documents every default in meta/argument_specs.yml, and nothing else (like prometheus.prometheus)."""

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir()))
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    documented = {name for name in options if not name.startswith("_common_notify")}
    assert set(defaults) == documented
    for name, option in options.items():
        assert option.get("description"), f"{role}: {name} has no description"
    if not role.startswith("_"):
        assert all(name.startswith(f"{role}_") for name in defaults), defaults


def test_bundle_is_reproducible_and_carries_no_build_output(tmp_path):
    from latscope import bundle

    first = bundle.write(tmp_path / "a.tar.gz")
    second = bundle.write(tmp_path / "a.tar.gz")
    assert first["changed"] and not second["changed"] and first["sha256"] == second["sha256"]
    import tarfile

    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        names = archive.getnames()
    assert "latscope/collector/observer.py" in names and "files/bpf/observer.bpf.c" in names
    assert "ansible_collections/latscope/latscope/plugins/module_utils/records.py" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
