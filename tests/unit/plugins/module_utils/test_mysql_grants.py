"""A user's privileges as data: presets, SHOW GRANTS lines, and the statements between them."""

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import mysql_grants as grants
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.schema import MIGRATIONS_TABLE, RAW_TABLES

ACCOUNT = "'c'@'%'"


def test_the_collector_preset_is_insert_on_every_raw_table_and_reading_the_version():
    wanted = grants.preset("collector", "latscope", "c", "%")
    assert {("latscope", t): frozenset({"INSERT"}) for t in RAW_TABLES}.items() <= wanted.items()
    assert wanted[("latscope", MIGRATIONS_TABLE)] == frozenset({"SELECT"})
    assert not any("DELETE" in names or "DROP" in names for names in wanted.values())


def test_the_analysis_preset_reads_everything_and_owns_only_its_tables():
    wanted = grants.preset("analysis", "latscope", "a", "%", ["analysis_runs"])
    assert wanted[("latscope", "*")] == frozenset({"SELECT", "CREATE TEMPORARY TABLES"})
    assert {"CREATE", "DROP", "INSERT", "DELETE"} <= wanted[("latscope", "analysis_runs")]
    with pytest.raises(InputError):
        grants.preset("analysis", "latscope", "a", "%", ["packet_samples"])


def test_show_grants_lines_of_mariadb_are_read_without_usage():
    lines = ["GRANT USAGE ON *.* TO `c`@`%` IDENTIFIED BY PASSWORD '*0123'",
             "GRANT INSERT ON `latscope`.`hosts` TO `c`@`%`",
             "GRANT SELECT, INSERT ON `latscope`.`schema_migrations` TO `c`@`%`",
             "GRANT ALL PRIVILEGES ON `latscope`.* TO `c`@`%` WITH GRANT OPTION"]
    found = grants.from_statements(lines)
    assert found == {("latscope", "hosts"): frozenset({"INSERT"}),
                     ("latscope", "schema_migrations"): frozenset({"SELECT", "INSERT"}),
                     ("latscope", "*"): frozenset({"ALL PRIVILEGES"})}


def test_column_grants_are_refused_rather_than_revoked():
    with pytest.raises(InputError, match="column-level"):
        grants.from_statements(["GRANT SELECT (a, b) ON `latscope`.`hosts` TO `c`@`%`"])


def test_changes_revoke_the_extra_and_grant_the_missing():
    found = {("latscope", "hosts"): frozenset({"INSERT", "DELETE"}), ("latscope", "*"): frozenset({"DROP"})}
    wanted = {("latscope", "hosts"): frozenset({"INSERT", "SELECT"}), ("latscope", "sessions"): frozenset({"INSERT"})}
    assert grants.changes(found, wanted, ACCOUNT) == [
        "REVOKE DROP ON `latscope`.* FROM 'c'@'%'",
        "REVOKE DELETE ON `latscope`.`hosts` FROM 'c'@'%'",
        "GRANT SELECT ON `latscope`.`hosts` TO 'c'@'%'",
        "GRANT INSERT ON `latscope`.`sessions` TO 'c'@'%'",
    ]
    assert grants.changes(wanted, wanted, ACCOUNT) == []


def test_all_privileges_is_replaced_whole():
    found = {("latscope", "*"): frozenset({"ALL PRIVILEGES"})}
    wanted = {("latscope", "*"): frozenset({"SELECT"})}
    assert grants.changes(found, wanted, ACCOUNT) == ["REVOKE ALL PRIVILEGES ON `latscope`.* FROM 'c'@'%'",
                                                      "GRANT SELECT ON `latscope`.* TO 'c'@'%'"]


@pytest.mark.parametrize("raw, field", [
    ({"latscope": "SELECT"}, "privileges.latscope"),
    ({"lat-scope.*": "SELECT"}, "privileges.lat-scope.*"),
    ({"latscope.*": "SELECT,FLY"}, "privileges.latscope.*"),
    ({"latscope.*": []}, "privileges.latscope.*"),
    (["latscope.*"], "privileges"),
])
def test_a_bad_mapping_names_the_entry(raw, field):
    with pytest.raises(InputError) as info:
        grants.from_mapping(raw)
    assert info.value.field == field


def test_a_mapping_accepts_lists_strings_and_all():
    assert grants.from_mapping({"latscope.*": "select, insert", "x.t": ["ALL"]}) == {
        ("latscope", "*"): frozenset({"SELECT", "INSERT"}), ("x", "t"): frozenset({"ALL PRIVILEGES"})}
