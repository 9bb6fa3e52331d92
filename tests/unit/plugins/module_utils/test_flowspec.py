"""The measure.yml flow spec (pure logic)."""

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.flowspec import duration_seconds, parse_flow_spec

HOSTS = {"host1": {"ansible_host": "198.18.0.11"}, "host2": {"ansible_host": "198.18.0.12"},
         "host1-c1": {"ansible_host": "198.18.1.2", "latscope_container_host": "host1"}}


def test_a_container_flow_is_observed_through_its_host():
    spec = parse_flow_spec("src=host1-c1 dst=host2 dport=5201 proto=tcp duration=10s size=72400", HOSTS)
    assert spec["observers"] == ["host1", "host2"]
    assert spec["flow"] == {"proto": "tcp", "src": "198.18.1.2", "dst": "198.18.0.12", "dport": 5201}
    assert spec["sampling"] == {"size": 72400} and spec["duration_s"] == 10.0 and spec["traffic"] == "none"


@pytest.mark.parametrize("text, value", [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("3", 3.0)])
def test_durations(text, value):
    assert duration_seconds("d", text) == value


@pytest.mark.parametrize("text, field", [
    ("", "flow"), ("src=host1", "flow.dst"), ("src=host1 dst=nope", "flow.dst"), ("src=x dst=host2", "flow.src"),
    ("src=host1 dst=host2 dport=0", "flow.dport"), ("src=host1 dst=host2 sport=99999", "flow.sport"),
    ("src=host1 dst=host2 proto=udp", "flow.proto"), ("src=host1 dst=host2 duration=0s", "flow.duration"),
    ("src=host1 dst=host2 duration=2h", "flow.duration"), ("src=host1 dst=host2 size=0", "flow.size"),
    ("src=host1 dst=host2 traffic=iperf3", "flow.dport"), ("src=host1 dst=host2 traffic=ping", "flow.traffic"),
    ("src=host1 dst=host1", "flow.dst"), ("src=host1 src=host2 dst=host2", "flow.src"),
    ("src=host1 dst=host2 colour=red", "flow.colour"), ("src=host1 dst=host2 rate=fast", "flow.rate"),
    ("src=host1 dst", "flow"),
])
def test_bad_specs_name_the_field(text, field):
    with pytest.raises(InputError) as info:
        parse_flow_spec(text, HOSTS)
    assert info.value.field == field
