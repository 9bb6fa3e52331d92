"""Clock maths: the probe format, one probe's arithmetic, the fit and its bound, the conversion."""

from __future__ import annotations

import random

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import clock
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.schema import clock_row

TOKEN = "00112233445566778899aabbccddeeff"
BASE = 5_000_000_000_000      # manager ktime at the start of the synthetic rounds


def probes(offset_ns, skew_ppb, forward, backward, bursts=10, per_burst=16, spacing_ns=50_000_000, seed=1,
           jitter_ns=300, turnaround_ns=80):
    """Synthetic samples of an observer whose clock reads m + offset + skew * (m - BASE) / 1e9."""
    rng = random.Random(seed)

    def host(m):
        return int(m + offset_ns + skew_ppb * (m - BASE) / 1e9)

    samples = []
    for burst in range(bursts):
        for index in range(per_burst):
            t1 = BASE + burst * spacing_ns + index * 20_000
            arrive = t1 + forward + rng.expovariate(1 / jitter_ns)
            leave = arrive + turnaround_ns
            t4 = int(leave + backward + rng.expovariate(1 / jitter_ns))
            samples.append(clock.Sample(t1, host(arrive), host(leave), t4, burst, burst * per_burst + index))
    return samples


def true_offset(offset_ns, skew_ppb, at_ns):
    return offset_ns + skew_ppb * (at_ns - BASE) / 1e9


def test_probe_round_trips_and_rejects_what_is_not_a_probe():
    data = clock.encode_probe(TOKEN, 42, clock.KIND_REPLY, clock.F_T1, 1, 2, 3, 4)
    assert len(data) == clock.PROBE_SIZE == 64
    probe = clock.decode_probe(data)
    assert (probe.kind, probe.flags, probe.probe_id, probe.t1, probe.t4) == (clock.KIND_REPLY, clock.F_T1, 42, 1, 4)
    assert probe.token == bytes.fromhex(TOKEN)
    with pytest.raises(InputError, match="probe.size"):
        clock.decode_probe(data[:-1])
    with pytest.raises(InputError, match="probe.magic"):
        clock.decode_probe(b"XXXX" + data[4:])
    with pytest.raises(InputError, match="probe.kind"):
        clock.decode_probe(data[:5] + b"\x07" + data[6:])
    with pytest.raises(InputError, match="token"):
        clock.parse_token("not hex at all, 32 characters!!")
    assert len(clock.parse_token(clock.new_token())) == 16


def test_one_probe_is_ntp_arithmetic():
    sample = clock.Sample(t1=1000, t2=5600, t3=5700, t4=2300)   # offset 4000, 600 out, 600... back
    assert sample.offset == ((5600 - 1000) + (5700 - 2300)) / 2
    assert sample.delay == (2300 - 1000) - (5700 - 5600)
    assert sample.lower <= sample.offset <= sample.upper
    assert sample.error == sample.delay / 2
    assert not clock.Sample(t1=10, t2=5, t3=4, t4=20).consistent()


def test_envelope_keeps_the_least_delay_probe_of_each_burst_and_drops_queued_bursts():
    samples = probes(0, 0, 2000, 2000, bursts=4)
    slow = [clock.Sample(s.t1, s.t2 + 50_000, s.t3 + 50_000, s.t4 + 100_000, 9, 0) for s in samples[:16]]
    kept = clock.envelope(samples + slow)
    assert {s.burst for s in kept} == {0, 1, 2, 3}
    for sample in kept:
        assert sample.delay == min(s.delay for s in samples if s.burst == sample.burst)


@pytest.mark.parametrize("offset_ns,skew_ppb,forward,backward", [
    (0, 0, 2000, 2000),
    (3_700_000, 20_000, 2000, 1800),
    (-123_456_789_000, -50_000, 1500, 9000),        # a large negative offset, a strongly asymmetric path
    (10 ** 14, 0, 100_000, 100_000),                 # days apart, a WAN-like round trip
])
def test_fit_recovers_offset_and_skew_within_its_bound(offset_ns, skew_ppb, forward, backward):
    estimate = clock.fit(probes(offset_ns, skew_ppb, forward, backward), "h1", probes_sent=170, probes_lost=10)
    truth = true_offset(offset_ns, skew_ppb, estimate.at_ns)
    assert estimate.synchronised and not estimate.reason
    assert abs(estimate.offset_ns - truth) <= estimate.error_ns
    assert abs(estimate.skew_ppb - skew_ppb) <= estimate.skew_error_ppb
    # the bias is half the asymmetry; the bound is about half the best round trip
    assert abs(estimate.offset_ns - truth) <= abs(forward - backward) / 2 + 300
    assert estimate.error_ns <= (forward + backward) / 2 + 1000
    assert estimate.probes_used == 10 and estimate.probes_lost == 10 and estimate.probes_sent == 170
    far = estimate.window_ns[1] + 10 * 10 ** 9     # ten seconds after the window: the bound grows with the skew's
    assert abs(estimate.offset_at(far) - true_offset(offset_ns, skew_ppb, far)) <= estimate.error_at(far)


def test_the_bound_holds_whatever_the_asymmetry():
    """Every forward delay long (a queue one way): the bias is large but inside the bound."""
    for seed in range(20):
        samples = probes(777, 5_000, 60_000, 1_500, seed=seed, jitter_ns=20_000)
        estimate = clock.fit(samples, "h1", 160, 0)
        truth = true_offset(777, 5_000, estimate.at_ns)
        assert 20_000 < estimate.offset_ns - truth <= estimate.error_ns


def test_no_reply_is_not_synchronised_and_refuses_to_convert():
    estimate = clock.fit([], "h2", probes_sent=64, probes_lost=64)
    assert not estimate.synchronised and "64 of 64 probes lost" in estimate.reason
    assert estimate.error_ns == clock.UNBOUNDED_NS
    with pytest.raises(clock.NotSynchronised, match="h2 is not synchronised"):
        clock.to_manager_time(123, estimate)
    row = clock_row(estimate.row("s1"))
    assert row[-1] == 0 and row[5] == clock.UNBOUNDED_NS


def test_conversion_is_exact_both_ways():
    estimate = clock.fit(probes(3_700_000, 20_000, 2000, 2000), "h1", 160, 0)
    for manager_ns in (BASE, BASE + 1, BASE + 7 * 10 ** 9, BASE - 10 ** 9):
        host_ns = clock.to_host_time(manager_ns, estimate)
        assert abs(clock.to_manager_time(host_ns, estimate) - manager_ns) <= 1
    # a host stamp of the synthetic observer maps back to the manager time it was taken at
    manager_ns = BASE + 2 * 10 ** 9
    host_ns = int(manager_ns + true_offset(3_700_000, 20_000, manager_ns))
    assert abs(clock.to_manager_time(host_ns, estimate) - manager_ns) <= estimate.error_at(manager_ns)


def test_a_failed_round_is_never_hidden_by_an_older_estimate():
    good = clock.fit(probes(500, 0, 2000, 2000), "h1", 160, 0)
    failed = clock.unsynchronised("h1", "no replies from 198.18.0.11", good.at_ns + 10 ** 10, 64, 64)
    assert clock.estimate_for([good], "h1") == good
    with pytest.raises(clock.NotSynchronised, match="latest clock estimate is not synchronised"):
        clock.estimate_for([good, failed], "h1")
    with pytest.raises(clock.NotSynchronised, match="no synchronised clock estimate"):
        clock.estimate_for([failed], "h1")
    with pytest.raises(clock.NotSynchronised):
        clock.estimate_for([good], "h2")


def test_inconsistent_probes_still_give_a_bound_and_say_why():
    samples = probes(0, 0, 2000, 2000, bursts=6)
    stepped = [clock.Sample(s.t1, s.t2 + 1_000_000, s.t3 + 1_000_000, s.t4, s.burst, s.probe_id)
               for s in samples if s.burst >= 3]           # the host's clock stepped by 1 ms mid-round
    estimate = clock.fit([s for s in samples if s.burst < 3] + stepped, "h1", 96, 0)
    assert estimate.synchronised and "inconsistent" in estimate.reason
    assert estimate.error_ns >= 400_000


def test_rows_and_dicts_round_trip():
    estimate = clock.fit(probes(42, 10, 2000, 2000), "h1", 160, 0, injected=True)
    again = clock.estimate_from_dict(estimate.as_dict())
    assert again == estimate
    row = clock_row(estimate.row("session-1"))
    assert row[:3] == ("session-1", "h1", estimate.at_ns) and row[-1] == 1
    with pytest.raises(InputError, match="estimate.synchronised"):
        clock.estimate_from_dict({**estimate.as_dict(), "synchronised": "yes"})
