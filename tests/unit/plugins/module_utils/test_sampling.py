"""Sample keys, sampling settings and flow filters (pure logic)."""

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.sampling import (
    SEQ_SPACE, FlowFilter, Sampling, ack_key, sample_keys)


@pytest.mark.parametrize("seq, length, size, expected", [
    (0, 1, 65536, [0]),
    (1, 65535, 65536, []),
    (1, 65536, 65536, [65536]),
    (65536, 1448, 65536, [65536]),
    (72399, 2, 72400, [72400]),
    (100, 200000, 72400, [72400, 144800]),  # a TSO segment holding two sampled bytes
])
def test_keys_are_the_multiples_inside_the_segment(seq, length, size, expected):
    keys = sample_keys(seq, length, size)[0]
    assert keys == expected


def test_resegmentation_gives_the_same_key():
    """However the byte stream is cut (TSO on one side, GRO on the other), the byte k*N is sampled once."""
    size = 72400
    stream = range(3_000_000_000, 3_000_000_000 + 2_000_000)
    for cut in (1448, 9000, 65160):
        seen = []
        for seq in range(stream.start, stream.stop, cut):
            seen += sample_keys(seq % SEQ_SPACE, min(cut, stream.stop - seq), size)[0]
        first = (stream.start + size - 1) // size * size
        expected = list(range(first, stream.stop, size))
        assert seen == expected


def test_wraparound_with_a_size_that_does_not_divide_the_space():
    size = 72400
    last = (SEQ_SPACE - 1) // size * size
    keys, truncated = sample_keys(SEQ_SPACE - 100, 300, size)
    assert keys == [0] and not truncated
    assert sample_keys(last - 5, 10, size)[0] == [last]


def test_limit_reports_truncation():
    keys, truncated = sample_keys(0, 10 * 1024, 1024, limit=4)
    assert keys == [0, 1024, 2048, 3072] and truncated


def test_ack_key_is_the_last_sampled_byte_acknowledged():
    assert ack_key(65537, 65536) == 65536
    assert ack_key(65536, 65536) == 0
    assert ack_key(0, 72400) == (SEQ_SPACE - 1) // 72400 * 72400


def test_sampling_defaults_and_seed_values():
    assert Sampling.from_dict(None) == Sampling(65536, (), 1.0)
    seed = Sampling.from_dict({"size": 72400, "ports": [5201, "22"], "interval": 2})
    assert seed.size == 72400 and seed.ports == (22, 5201) and seed.interval == 2.0


@pytest.mark.parametrize("raw, field", [
    ({"size": 0}, "sampling.size"), ({"size": -5}, "sampling.size"), ({"size": "big"}, "sampling.size"),
    ({"ports": [0]}, "sampling.ports"), ({"ports": [70000]}, "sampling.ports"), ({"ports": {"a": 1}}, "sampling.ports"),
    ({"interval": 0}, "sampling.interval"), ({"interval": "soon"}, "sampling.interval"),
    ({"rate": 3}, "sampling.rate"),
])
def test_bad_sampling_names_the_field(raw, field):
    with pytest.raises(InputError) as info:
        Sampling.from_dict(raw)
    assert info.value.field == field


def test_flow_filter_matches_both_directions():
    flow = FlowFilter.from_dict({"src": "198.18.0.11", "dst": "198.18.0.0/24", "dport": 5201})
    assert flow.matches("198.18.0.11", "198.18.0.12", 40000, 5201)
    assert flow.matches("198.18.0.12", "198.18.0.11", 5201, 40000)
    assert not flow.matches("198.18.0.13", "198.18.0.12", 40000, 5201)
    assert not flow.matches("198.18.0.11", "198.18.0.12", 40000, 5202)


@pytest.mark.parametrize("raw, field", [
    ({"proto": "udp"}, "flow.proto"), ({"src": "host1"}, "flow.src"), ({"dport": 0}, "flow.dport"),
    ({"sport": "x"}, "flow.sport"), ({"daddr": "1.2.3.4"}, "flow.daddr"),
])
def test_bad_flow_filter_names_the_field(raw, field):
    with pytest.raises(InputError) as info:
        FlowFilter.from_dict(raw)
    assert info.value.field == field


@pytest.mark.parametrize("raw", [[1, 2], "size=5", 7])
def test_settings_that_are_not_mappings_name_the_block(raw):
    with pytest.raises(InputError) as info:
        Sampling.from_dict(raw)
    assert info.value.field == "sampling"
    with pytest.raises(InputError) as info:
        FlowFilter.from_dict(raw)
    assert info.value.field == "flow"
