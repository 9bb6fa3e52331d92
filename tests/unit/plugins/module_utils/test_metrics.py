"""The flow-metric definitions and the row layout (pure logic)."""

import re
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import schema
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.metrics import (
    COUNTERS, EXTRA_COLUMNS, METRIC_BY_COLUMN, METRIC_COLUMNS, METRICS, FlowMetrics)

REPO = Path(__file__).resolve().parents[4]
SEED_NAMES = ("FlightSize", "RWND", "CWND", "MSS", "RePackets", "BSent", "BReceived", "fastRetrans", "Timeout",
              "CurAppWQueue", "MaxAppWQueue", "SampleRTT", "SumRTT", "ReadByte", "WriteByte", "Duration")


def _row(**changes):
    raw = {"session": "s1", "host": "host1", "flow": ["198.18.0.3", "198.18.0.4", 40000, 5201], "at_ns": 10**12}
    raw.update({name: index * 10 for index, name in enumerate(METRIC_COLUMNS)})
    raw["max_app_wqueue"] = raw["cur_app_wqueue"] + 1
    raw.update(changes)
    return raw


def test_the_sixteen_seed_metrics_once_each():
    assert tuple(m.seed_name for m in METRICS) == SEED_NAMES
    assert len(set(METRIC_COLUMNS)) == 16
    assert not set(METRIC_COLUMNS) & set(EXTRA_COLUMNS)
    assert all(m.unit and m.source and m.kind in ("gauge", "counter") for m in METRICS)
    assert METRIC_BY_COLUMN["sample_rtt_us"].unit == "us" and METRIC_BY_COLUMN["cwnd"].unit == "packets"


def test_columns_are_the_schema_columns_in_order():
    assert METRIC_COLUMNS == schema.FLOW_METRICS


def test_counters_follow_the_c_header():
    header = (REPO / "files" / "bpf" / "flowmetrics.h").read_text()
    ids = {name: int(value) for name, value in re.findall(r"#define FM_C_(\w+)\s+(\d+)", header)}
    assert ids.pop("COUNT") == len(COUNTERS)
    assert sorted(ids, key=ids.get) == [name.upper() for name in COUNTERS]


def test_round_trip_and_the_schema_row():
    row = FlowMetrics.from_dict(_row(rtt_samples=4, bytes_acked=9, state=1))
    assert FlowMetrics.from_dict(row.as_dict()) == row
    assert row.flow == ("198.18.0.3", "198.18.0.4", 40000, 5201)
    assert row.metrics() == {name: getattr(row, name) for name in METRIC_COLUMNS}
    stored = schema.metric_row(row.schema_dict())
    assert len(stored) == len(schema.COLUMNS["flow_metrics"])
    assert stored[schema.COLUMNS["flow_metrics"].index("cwnd")] == row.cwnd


def test_extras_are_optional_and_the_mean_rtt():
    row = FlowMetrics.from_dict(_row(sum_rtt_us=300))
    assert row.rtt_samples == 0 and row.mean_rtt_us is None
    assert FlowMetrics.from_dict(_row(sum_rtt_us=300, rtt_samples=4)).mean_rtt_us == 75


@pytest.mark.parametrize("changes, field", [
    ({"cwnd": -1}, "metrics.cwnd"),
    ({"cwnd": True}, "metrics.cwnd"),
    ({"rwnd": "wide"}, "metrics.rwnd"),
    ({"bytes_sent": 1 << 64}, "metrics.bytes_sent"),
    ({"rtt_samples": 1.5}, "metrics.rtt_samples"),
    ({"flow": ["198.18.0.3", "nowhere", 1, 2]}, "metrics.flow.daddr"),
    ({"flow": ["198.18.0.3", "198.18.0.4", 1, 70000]}, "metrics.flow.dport"),
    ({"flow": ["198.18.0.3"]}, "metrics.flow"),
    ({"session": ""}, "metrics.session"),
    ({"host": "h" * 129}, "metrics.host"),
    ({"at_ns": -5}, "metrics.at_ns"),
    ({"colour": 1}, "metrics.colour"),
    ({"max_app_wqueue": 0, "cur_app_wqueue": 10}, "metrics.max_app_wqueue"),
])
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(InputError) as caught:
        FlowMetrics.from_dict(_row(**changes))
    assert caught.value.field == field


def test_missing_metric_is_named():
    raw = _row()
    del raw["duration_us"]
    with pytest.raises(InputError) as caught:
        FlowMetrics.from_dict(raw, prefix="rows[3]")
    assert caught.value.field == "rows[3].duration_us"


def test_not_a_mapping():
    with pytest.raises(InputError) as caught:
        FlowMetrics.from_dict(["cwnd", 10])
    assert caught.value.field == "metrics"


def test_schema_dict_has_exactly_the_columns_of_flow_metrics():
    from ansible_collections.latscope.latscope.plugins.module_utils.schema import COLUMNS, metric_row
    row = FlowMetrics.from_dict(_row()).schema_dict()
    stored = set(COLUMNS["flow_metrics"]) - {"session_id", "host", "saddr", "daddr", "sport", "dport", "at_ns"}
    assert set(row) - {"session", "host", "flow", "at_ns"} == stored
    assert len(metric_row(row)) == len(COLUMNS["flow_metrics"])
