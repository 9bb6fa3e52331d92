"""Time sync on the real kernel: the XDP responder on host1, the BPF-stamped prober on the manager.

All lab namespaces share one kernel clock, so the true offset of every observer
is exactly 0: whatever the estimator reports is its error. The responder of
this module is compiled with the test knob, so one test can give host1's
stamps a known offset and skew and check the estimator finds them.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import clock
from ansible_collections.latscope.latscope.plugins.module_utils.control import Agent, Controller, RedisSettings, connect
from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.schema import migrate
from latscope.collector.control_loop import ControlLoop
from latscope.collector.shipper import connector
from latscope.lab import services
from latscope.lab.netops import wait_listening
from latscope.timesync import kernel
from latscope.timesync.prober import Prober, ProbeSettings, Target
from latscope.timesync.responder import Responder, ResponderSettings
from latscope.timesync.service import TimeSync, TimeSyncConfig, settings_from_dict, store_estimates, sync_round

pytestmark = pytest.mark.lab

PORT = clock.DEFAULT_PORT
ROUND = ProbeSettings(probes=16, bursts=10, burst_interval_s=0.03, reply_timeout_s=0.1)
ETH_P_ALL = 0x0003


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture(scope="module")
def token():
    return clock.new_token()


@pytest.fixture(scope="module")
def responder(lab, token):
    host1 = lab.plan.node("host1")
    settings = ResponderSettings(interface=host1.uplink, manager_address=lab.plan.manager.address, token=token,
                                 port=PORT, netns=f"/run/netns/{host1.netns}")
    own = Responder(settings, test_knob=True)
    own.attach()
    yield own
    own.close()


@pytest.fixture(scope="module")
def prober(lab, token, responder):
    own = Prober(lab.plan.manager.uplink, token, port=PORT, netns=f"/run/netns/{lab.plan.manager.netns}")
    yield own
    own.close()


@pytest.fixture(scope="module")
def host1(lab):
    return Target("host1", lab.plan.node("host1").address)


def xdp_attached(netns: str | None, ifname: str) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-d", "link", "show", "dev", ifname]
    info = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout)[0]
    return "xdp" in info


def test_responder_attaches_native_with_its_veth_peer(lab, responder):
    host1 = lab.plan.node("host1")
    state = responder.state()
    assert state["mode"] == "native" and state["peer"] == host1.peer, state
    assert xdp_attached(host1.netns, host1.uplink) and xdp_attached(None, host1.peer)


def test_true_offset_zero_over_1000_probes(prober, host1):
    """Per probe and per estimate, the reported offset is the error (the truth is 0)."""
    offsets, estimates = [], []
    for _round in range(8):
        seen = prober.probe([host1], ROUND)["host1"]
        offsets += [sample.offset for sample in seen.samples]
        estimates.append(prober.round([host1], ROUND)["host1"])
    assert len(offsets) >= 1000
    errors = [abs(value) for value in offsets]
    est_errors = [abs(e.offset_ns) for e in estimates]
    print(f"\nper probe (n={len(errors)}): median |error| {statistics.median(errors):.0f} ns, "
          f"p99 {quantile(errors, 0.99):.0f} ns; estimates: median |error| {statistics.median(est_errors):.0f} ns, "
          f"max {max(est_errors)} ns, bounds {min(e.error_ns for e in estimates)}-{max(e.error_ns for e in estimates)} ns")
    for estimate in estimates:
        assert estimate.synchronised and estimate.probes_lost == 0, estimate
        assert abs(estimate.offset_ns) <= estimate.error_ns, estimate
        assert abs(estimate.skew_ppb) <= estimate.skew_error_ppb, estimate
        assert not estimate.injected
    # the truth is 0: the error is half the lab path's asymmetry, which grows with the machine's load
    assert statistics.median(est_errors) < 3000
    assert statistics.median(errors) < 3000


def test_injected_offset_and_skew_are_recovered_within_the_bound(responder, prober, host1):
    offset_ns, skew_ppb = 3_700_000, 20_000
    responder.inject(offset_ns, skew_ppb)
    reference = responder.bpf["ts_inject"][0].ref_ns
    try:
        settings = ProbeSettings(probes=16, bursts=20, burst_interval_s=0.05, reply_timeout_s=0.1)
        estimates = [prober.round([host1], settings)["host1"] for _round in range(3)]
    finally:
        responder.inject(0, 0)
    for estimate in estimates:
        truth = offset_ns + skew_ppb * (estimate.at_ns - reference) / 1e9
        print(f"\ninjected {truth:.0f} ns, {skew_ppb} ppb: estimated {estimate.offset_ns} ns (error "
              f"{estimate.offset_ns - truth:+.0f}, bound {estimate.error_ns}), {estimate.skew_ppb} ppb "
              f"(bound {estimate.skew_error_ppb})")
        assert estimate.synchronised and estimate.injected
        assert abs(estimate.offset_ns - truth) <= estimate.error_ns
        assert abs(estimate.skew_ppb - skew_ppb) <= estimate.skew_error_ppb
        # a host stamp maps to the manager's timebase within the bound
        manager_ns = estimate.at_ns + 10_000_000
        host_ns = int(manager_ns + offset_ns + skew_ppb * (manager_ns - reference) / 1e9)
        assert abs(clock.to_manager_time(host_ns, estimate) - manager_ns) <= estimate.error_at(manager_ns)
    back = prober.round([host1], ROUND)["host1"]
    assert not back.injected and abs(back.offset_ns) <= back.error_ns


def _backlog(device: str) -> int:
    text = subprocess.run(["tc", "-s", "qdisc", "show", "dev", device], capture_output=True, text=True, check=False,
                          timeout=10).stdout
    words = text.split()
    return int(words[words.index("backlog") + 2].rstrip("p")) if "backlog" in words else 0


def test_asymmetric_path_bias_stays_within_the_bound(lab, prober, host1):
    """A rate-limited queue towards host1, kept full by a UDP flood: probes queue one way only.

    The envelope picks the probes that found the queue empty, so a round may see no asymmetry at all;
    rounds go on (bounded) until some saw the queue throughout."""
    peer, target = lab.plan.node("host1").peer, lab.plan.node("host1")
    subprocess.run(["tc", "qdisc", "replace", "dev", peer, "root", "tbf", "rate", "40mbit", "burst", "16kb",
                    "limit", "24kb"], check=True, timeout=10)
    server = subprocess.Popen(["ip", "netns", "exec", target.netns, "iperf3", "-s", "-1", "-B", target.address,
                               "-p", "5399"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood = None
    estimates = []
    try:
        wait_listening(target.netns, target.address, 5399)
        flood = subprocess.Popen(["ip", "netns", "exec", lab.plan.manager.netns, "iperf3", "-c", target.address,
                                  "-p", "5399", "-u", "-b", "100M", "-t", "20"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert kernel.wait_until(lambda: _backlog(peer) > 3, 15, 0.05), "the flood never filled the queue"
        settings = ProbeSettings(probes=8, bursts=6, burst_interval_s=0.02, reply_timeout_s=0.3)
        for _round in range(12):
            if flood.poll() is not None or sum(e.min_delay_ns > 200_000 for e in estimates) >= 2:
                break
            estimates.append(prober.round([host1], settings)["host1"])
    finally:
        if flood is not None and flood.poll() is None:
            flood.terminate()
            flood.wait(timeout=30)
        subprocess.run(["tc", "qdisc", "del", "dev", peer, "root"], check=False, timeout=10)
        if server.poll() is None:
            server.kill()
        server.wait()
    assert estimates
    for estimate in estimates:
        print(f"\nasymmetric path: bias {estimate.offset_ns} ns, bound {estimate.error_ns} ns, "
              f"min delay {estimate.min_delay_ns} ns, {estimate.probes_lost} lost")
        assert estimate.synchronised
        assert abs(estimate.offset_ns) <= estimate.error_ns
    queued = [e for e in estimates if e.min_delay_ns > 200_000]
    assert queued, "no round saw the queue"          # the test tested what it claims
    assert all(e.offset_ns > 50_000 for e in queued)  # ... and the queue did bias those estimates


# --- fuzz ----------------------------------------------------------------------------------------

def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(dst_mac: bytes, src_mac: bytes, src: str, dst: str, payload: bytes, *, sport: int = 40000,
           dport: int = PORT, frag: int = 0x4000, ihl: int = 5, udp_len: int | None = None,
           ethertype: int = 0x0800) -> bytes:
    options = b"\x01" * (4 * (ihl - 5))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload) if udp_len is None else udp_len, 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(udp), random.getrandbits(16), frag, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst)) + options
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return dst_mac + src_mac + struct.pack("!H", ethertype) + header + udp


def fuzz_frames(count: int, token: str, manager: str, host1: str, other: str, dst_mac: bytes, src_mac: bytes):
    """``count`` frames none of which the responder may answer, and how it must count them."""
    rng = random.Random(5)
    good = bytes.fromhex(token)
    expected = {"truncated": 0, "malformed": 0, "wrong_source": 0, "wrong_token": 0, "fragment": 0,
                "wrong_destination": 0, "other_sent": 0}
    frames = []
    for index in range(count):
        kind = index % 10
        probe = clock.encode_probe(good, rng.getrandbits(64))
        if kind == 0:            # random garbage to the port
            payload = rng.randbytes(rng.choice([0, 8, 40, 63, 64, 65, 120, 400]))
            frames.append(_frame(dst_mac, src_mac, manager, host1, payload))
            expected["truncated" if len(payload) < clock.PROBE_SIZE else "malformed"] += 1
        elif kind == 1:          # wrong token
            frames.append(_frame(dst_mac, src_mac, manager, host1, clock.encode_probe(rng.randbytes(16), index)))
            expected["wrong_token"] += 1
        elif kind == 2:          # the right token from the wrong source
            frames.append(_frame(dst_mac, src_mac, rng.choice([other, "198.51.100.7"]), host1, probe))
            expected["wrong_source"] += 1
        elif kind == 3:          # truncated: the probe cut short, or the IP header itself
            whole = _frame(dst_mac, src_mac, manager, host1, probe)
            frames.append(whole[:rng.choice([20, 30, 41, 50, 90, len(whole) - 1])])
            expected["truncated"] += 1
        elif kind == 4:          # not IPv4 at all
            frames.append(dst_mac + src_mac + struct.pack("!H", rng.choice([0x86DD, 0x88B5, 0x0806])) + probe)
            expected["other_sent"] += 1
        elif kind == 5:          # fragments: first (MF) and later ones
            frames.append(_frame(dst_mac, src_mac, manager, host1, probe, frag=rng.choice([0x2000, 0x0004, 0x2010])))
            expected["fragment"] += 1
        elif kind == 6:          # a reply sent at the responder (a reflection loop), or a wrong version
            bad = bytearray(probe)
            bad[rng.choice([4, 5])] = 2 if rng.random() < 0.5 else 9
            frames.append(_frame(dst_mac, src_mac, manager, host1, bytes(bad)))
            expected["malformed"] += 1
        elif kind == 7:          # IP options, or a UDP length that lies
            if rng.random() < 0.5:
                frames.append(_frame(dst_mac, src_mac, manager, host1, probe, ihl=6))
            else:
                frames.append(_frame(dst_mac, src_mac, manager, host1, probe, udp_len=8 + clock.PROBE_SIZE + 4))
            expected["malformed"] += 1
        elif kind == 8:          # a valid probe for another host, or to a group MAC
            if rng.random() < 0.5:
                frames.append(_frame(dst_mac, src_mac, manager, other, probe))
            else:
                frames.append(_frame(b"\xff" * 6, src_mac, manager, host1, probe))
            expected["wrong_destination"] += 1
        else:                    # a bit flipped somewhere in a valid probe's token
            bad = bytearray(probe)
            bad[8 + rng.randrange(16)] ^= 1 << rng.randrange(8)
            frames.append(_frame(dst_mac, src_mac, manager, host1, bytes(bad)))
            expected["wrong_token"] += 1
    return frames, expected


def _mac(netns: str | None, ifname: str) -> bytes:
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "link", "show", "dev", ifname]
    info = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


def _kernel_warnings() -> list[str]:
    text = subprocess.run(["dmesg"], capture_output=True, text=True, check=False, timeout=30).stdout
    markers = ("WARNING", "BUG", "Oops", "Call Trace", "general protection", "xdp", "bpf", "verifier")
    return [line for line in text.splitlines() if any(marker in line for marker in markers)]


def test_fuzzed_packets_get_no_reply_and_normal_traffic_flows(lab, responder, prober, host1, token, tmp_path):
    manager, target, other = lab.plan.manager, lab.plan.node("host1"), lab.plan.node("host2")
    warnings_before = _kernel_warnings()
    capture = tmp_path / "replies.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", target.peer, "-nn", "-U", "--immediate-mode", "-w", str(capture),
                             f"udp and src port {PORT}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = subprocess.Popen(["ip", "netns", "exec", target.netns, "iperf3", "-s", "-1", "-B", target.address,
                               "-p", "5398"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert "listening on" in dump.stderr.readline()
        wait_listening(target.netns, target.address, 5398)
        before = responder.counters()
        frames, expected = fuzz_frames(12_000, token, manager.address, target.address, other.address,
                                       _mac(target.netns, target.uplink), _mac(manager.netns, manager.uplink))
        # Straight into host1's eth0 from the other end of its veth: the lab bridge runs br_netfilter,
        # which would drop the truncated IPv4 packets before they reached the responder.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sent, failures = [], []

        def fuzz() -> None:
            with closing(sock):
                sock.bind((target.peer, 0))
                for frame in frames:
                    for _attempt in range(100):
                        try:
                            sock.send(frame)
                            break
                        except OSError as exc:      # a full queue under the transfer: wait, send again
                            failures.append(exc.errno)
                            time.sleep(0.005)
                    sent.append(1)
                    if len(sent) % 200 == 0:
                        time.sleep(0.01)     # bounded rate: the TCP transfer shares the link
        thread = threading.Thread(target=fuzz)
        thread.start()
        transfer = subprocess.run(["ip", "netns", "exec", manager.netns, "iperf3", "-c", target.address, "-p", "5398",
                                   "-t", "3", "-J"], capture_output=True, text=True, timeout=60, check=False)
        thread.join(timeout=120)
        assert len(sent) == len(frames) >= 10_000
        wanted = sum(v for k, v in expected.items() if k != "other_sent")
        kernel.wait_until(lambda: sum(responder.counters()[k] - before[k] for k in expected if k in before) >= wanted,
                          10)
        during = responder.counters()
        # the capture works: valid probes after the fuzz are answered and seen
        answered = prober.round([host1], ProbeSettings(probes=4, bursts=2))["host1"]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        time.sleep(0.5)
        dump.send_signal(signal.SIGINT)
        dump_report = dump.communicate(timeout=30)[1]
    assert transfer.returncode == 0, transfer.stdout[-500:] + transfer.stderr[-500:]
    assert json.loads(transfer.stdout)["end"]["sum_received"]["bytes"] > 1_000_000
    delta = {name: during[name] - before[name] for name in during}
    print(f"\nfuzz: {len(frames)} frames sent, responder counted {delta}")
    assert delta["replied"] == 0
    for name in ("truncated", "malformed", "wrong_source", "wrong_token", "fragment", "wrong_destination"):
        assert delta[name] == expected[name], (name, delta, expected)
    assert answered.synchronised and answered.probes_used >= 1
    replies = subprocess.run(["tcpdump", "-nn", "-r", str(capture)], capture_output=True, text=True, check=True,
                             timeout=30).stdout.splitlines()
    assert len(replies) == answered.replies, (replies[:5], dump_report)   # every reply on the wire is the valid round's
    new = [line for line in _kernel_warnings() if line not in warnings_before]
    assert not new, new


# --- unreachable observers, storage ----------------------------------------------------------------

@pytest.fixture
def database(lab, lab_secrets):
    config = Path(lab.files.root) / "mariadb" / "my.cnf"
    name = f"ls_ts_{secrets.token_hex(4)}"
    services.mariadb_sql(config, f"CREATE DATABASE `{name}`;\nGRANT ALL PRIVILEGES ON `{name}`.* TO 'latscope'@'%';\n")
    connect_db = connector(lab.plan.manager.address, 3306, "latscope", lab_secrets["latscope_mysql_password"], name)
    with closing(connect_db()) as connection:
        migrate(connection)
        yield connection
    services.mariadb_sql(config, f"DROP DATABASE IF EXISTS `{name}`;\n")


def test_unreachable_observer_says_so_and_no_stale_estimate_is_reused(lab, responder, prober, host1, database):
    hosts = {"host1": host1.address, "host2": lab.plan.node("host2").address,   # host2 runs no responder
             "ghost": str(lab.plan.node("host2").address).rsplit(".", 1)[0] + ".250"}
    good = sync_round(prober, hosts, "ts-unreachable", ROUND, connection=database)
    assert good["host1"].synchronised
    for name in ("host2", "ghost"):
        assert not good[name].synchronised and good[name].error_ns == clock.UNBOUNDED_NS
        assert f"no replies from {hosts[name]}" in good[name].reason
    responder.disable()          # host1 stops answering: its probes are passed and counted
    try:
        disabled_before = responder.counters()["disabled"]
        failed = sync_round(prober, {"host1": host1.address}, "ts-unreachable", ROUND, connection=database)
        assert responder.counters()["disabled"] > disabled_before
    finally:
        responder.configure(enabled=True)
    assert not failed["host1"].synchronised and "no replies" in failed["host1"].reason
    with pytest.raises(clock.NotSynchronised, match="host1's latest clock estimate is not synchronised"):
        clock.estimate_for([good["host1"], failed["host1"]], "host1")
    with database.cursor() as cursor:
        cursor.execute("SELECT host, synchronised, error_ns, probes_lost FROM clock_estimates "
                       "WHERE session_id = 'ts-unreachable' ORDER BY at_ns")
        rows = cursor.fetchall()
    assert [(row[0], row[1]) for row in rows if row[0] == "host1"] == [("host1", 1), ("host1", 0)]
    assert {row[0] for row in rows if row[1] == 0} == {"host1", "host2", "ghost"}
    assert all(row[2] == clock.UNBOUNDED_NS and row[3] > 0 for row in rows if row[1] == 0)


# --- lifecycle ---------------------------------------------------------------------------------

def test_responder_process_detaches_when_killed(lab, python, token):
    host2 = lab.plan.node("host2")
    proc = subprocess.Popen([python, "-m", "latscope.timesync", "respond", "--netns", f"/run/netns/{host2.netns}",
                             "--manager", lab.plan.manager.address, "--token", token],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("ready", {}).get("mode") == "native", proc.stderr.read() if proc.poll() is not None else ready
        assert xdp_attached(host2.netns, host2.uplink) and xdp_attached(None, host2.peer)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert kernel.wait_until(lambda: not xdp_attached(host2.netns, host2.uplink)
                             and not xdp_attached(None, host2.peer), 10)


def test_a_deployed_responder_has_no_test_knob(lab, token):
    host2 = lab.plan.node("host2")
    deployed = Responder(ResponderSettings(interface="eth0", manager_address=lab.plan.manager.address, token=token,
                                           netns=f"/run/netns/{host2.netns}"))
    try:
        assert "ts_inject" not in deployed.bpf.tables
        with pytest.raises(InputError, match="without the test knob"):
            deployed.inject(1000, 0)
    finally:
        deployed.close()


class SyncOnly:
    """The collector's handler as far as time sync goes: what Collector.sync does, with TimeSync."""

    def __init__(self, timesync: TimeSync) -> None:
        self.timesync = timesync

    def start(self, command):
        raise InputError("command.op", "not in this test", command.op)

    def stop(self, command):
        raise InputError("command.op", "not in this test", command.op)

    def sync(self, command):
        return self.timesync.sync(command)


def test_sync_over_the_control_plane_arms_the_responder_and_stores_estimates(
        lab, lab_secrets, token, prober, database):
    host2 = lab.plan.node("host2")
    settings = RedisSettings(host=lab.plan.manager.address, port=6379, password=lab_secrets["latscope_redis_password"])
    prefix = f"ts{secrets.token_hex(3)}"
    config = settings_from_dict({"interface": "eth0", "manager_address": lab.plan.manager.address, "token": token})
    # the daemon runs inside host2's namespace; this test process is outside it
    config = TimeSyncConfig(enabled=True, responder=replace(config.responder, netns=f"/run/netns/{host2.netns}"))
    timesync = TimeSync(config)

    def agent() -> Agent:
        return Agent(connect(settings), "host2", prefix)

    loop = ControlLoop(agent, SyncOnly(timesync), 0.5)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            loop.run_once(0.1)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        with closing(connect(settings)) as client:
            estimates = sync_round(prober, {"host2": host2.address, "host9": "198.51.100.9"}, "ts-redis", ROUND,
                                   controller=Controller(client, prefix), connection=database, ack_timeout_s=5)
        assert estimates["host2"].synchronised and abs(estimates["host2"].offset_ns) <= estimates["host2"].error_ns
        assert not estimates["host9"].synchronised and "sync not acknowledged" in estimates["host9"].reason
        assert loop.state["timesync"] == "armed" and loop.state["timesync_address"] == host2.address
        assert timesync.counters()["timesync.replied"] >= estimates["host2"].replies
        with database.cursor() as cursor:
            cursor.execute("SELECT host, synchronised FROM clock_estimates WHERE session_id = 'ts-redis'")
            assert sorted(cursor.fetchall()) == [("host2", 1), ("host9", 0)]
    finally:
        stop.set()
        runner.join(timeout=30)
        timesync.close()
    assert kernel.wait_until(lambda: not xdp_attached(host2.netns, host2.uplink), 10)


def test_store_validates_rows(database):
    with pytest.raises(InputError, match=r"estimates\[0\].host"):
        store_estimates(database, "s", [clock.ClockEstimate("h1" * 100, 1, 0, 0, 1, 1, 1, 0, True)])
