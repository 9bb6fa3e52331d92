"""The analysis end to end on the lab: a real iperf3 flow host1 -> host2, observed by the real
observers on both hosts (as ``latscope demo`` runs them), shipped as rows, materialised in SQL.

The lab's namespaces share one kernel clock, and this test stores no clock estimate: the analysis
runs with offset 0 and says so (``synchronised`` false) - which is the truth here.
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils import analysis_sql
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    insert_sql, migrate, sample_rows, session_row)
from latscope.analysis import data, report_text
from latscope.collector.shipper import connector
from latscope.demo import ObserverProcess, measure_flow
from latscope.lab import services
from latscope.lab.netops import run, wait_listening

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MYSQL_PORT = 3306
SESSION = "lab-iperf"
CLOSED_SHARE = 0.95


@pytest.fixture
def db(lab, lab_secrets):
    config = Path(lab.files.root) / "mariadb" / "my.cnf"
    name = f"ls_analysis_lab_{secrets.token_hex(4)}"
    services.mariadb_sql(config, f"CREATE DATABASE `{name}`;\nGRANT ALL PRIVILEGES ON `{name}`.* TO 'latscope'@'%';\n")
    connect = connector(lab.plan.manager.address, MYSQL_PORT, "latscope", lab_secrets["latscope_mysql_password"], name,
                        timeout_s=10)
    try:
        with closing(connect()) as connection:
            migrate(connection)
            yield connection
    finally:
        services.mariadb_sql(config, f"DROP DATABASE IF EXISTS `{name}`;\n")


def ship(connection, records, session: str = SESSION, port: int = 5207) -> None:
    samples, stamps = sample_rows([dataclasses.replace(record, session=session) for record in records])
    with connection.cursor() as cursor:
        cursor.executemany(insert_sql("packet_samples"), samples)
        cursor.executemany(insert_sql("packet_stamps"), stamps)
        started = {"id": session, "started_at": 1_700_000_000, "flow": {"dport": port}}
        cursor.execute(insert_sql("sessions"), session_row(started))
    connection.commit()


def busiest(report: data.Report) -> dict:
    """The directions of the flow with the most matched data samples (iperf3's control connection
    shares the port)."""
    flow = max((d for d in report.directions if d.direction == "data"), key=lambda d: d.matched).flow
    return {d.direction: d for d in report.directions if d.flow == flow}


def test_iperf3_flow_breakdown_both_directions_and_closure(lab, db, capsys):
    sent, received = measure_flow(lab.plan, "host1", "host2", port=5207, seconds=3, rate="200M")
    assert sent and received
    ship(db, sent + received)
    result = analysis_sql.materialise(db, SESSION)
    summary = result.summary()
    assert summary["synchronised"] is False           # shared kernel clock, no estimate stored: said, not hidden
    assert result.data_pairs > 50 and result.ack_pairs > 50, summary
    report = data.load(db, SESSION)
    directions = busiest(report)
    assert {"data", "ack", "rtt"} <= set(directions)
    assert (directions["data"].sender, directions["data"].receiver) == ("host1", "host2")
    assert (directions["ack"].sender, directions["ack"].receiver) == ("host2", "host1")
    for name in ("data", "ack"):
        layers = {layer.layer: layer for layer in directions[name].layers}
        assert layers["net"].n > 50 and layers["net"].p50 is not None and layers["net"].p50 >= 0
        assert layers["total"].p50 > 0
    # the parts add up to the sender's RTT for (nearly) every sample
    assert result.rtt_samples > 50
    share = result.closure_ok / result.rtt_samples
    text = report_text.render(report)
    with capsys.disabled():
        print(f"\nclosure within 5%: {result.closure_ok}/{result.rtt_samples} = {share:.1%}; "
              f"{result.data_pairs} data pairs, {result.ack_pairs} ACK pairs in {result.seconds:.2f}s\n{text}")
    assert share >= CLOSED_SHARE, text
    assert "UNSYNCHRONISED" in text


def test_a_delay_at_one_layer_shows_in_that_layers_row(lab, db):
    """A token bucket (20 Mbit/s, up to 20 ms of queue) on host1's uplink, under a 50 Mbit/s flow:
    packets wait in that qdisc. The data direction's device layers on host1 (qdisc + driver:
    dev_queue -> dev_xmit, a few us without it) carry the wait; the network and the receiver do not.
    (netem would be the obvious tool; this kernel has no sch_netem.)"""
    host1 = lab.plan.node("host1")
    run(["tc", "qdisc", "add", "dev", host1.uplink, "root", "tbf", "rate", "20mbit", "burst", "32kbit",
         "latency", "20ms"], netns=host1.netns)
    try:
        sent, received = measure_flow(lab.plan, "host1", "host2", port=5208, seconds=2, rate="50M")
    finally:
        run(["tc", "qdisc", "del", "dev", host1.uplink, "root"], netns=host1.netns)
    ship(db, sent + received, "lab-delay", 5208)
    analysis_sql.materialise(db, "lab-delay")
    report = data.load(db, "lab-delay")
    layers = {layer.layer: layer for layer in busiest(report)["data"].layers}
    # the qdisc is stamped (enqueue -> dequeue): the wait is in its row, a few us without the bucket
    assert layers["tx_qdisc"].p50 >= 1_000_000, layers
    assert layers["net"].p50 < 1_000_000 and layers["rx_ip"].p50 < 1_000_000 and layers["rx_nic"].p50 < 1_000_000
    text = report_text.render(report)
    qdisc = next(line for line in text.splitlines() if line.lstrip().startswith("qdisc") and "host1" in line)
    assert float(qdisc.split()[2]) >= 1000, text          # p50 in us


def measure_container_flow(plan, port: int, seconds: int = 2) -> list:
    """iperf3 from host1's container to host2; host1's observer also observes the container's namespace
    (as a collector of a container host does), host2's observes host2."""
    container, src, dst = plan.node("host1-c1"), plan.node("host1"), plan.node("host2")
    args = ["--size", "65536", "--port", str(port), "--seconds", "300"]
    with tempfile.TemporaryDirectory(prefix="latscope-analysis-") as tmp:
        observers = [ObserverProcess(src.netns, "host1", Path(tmp) / "tx.jsonl",
                                     args + ["--netns", f"/run/netns/{container.netns}"]),
                     ObserverProcess(dst.netns, "host2", Path(tmp) / "rx.jsonl", args)]
        server = subprocess.Popen(["ip", "netns", "exec", dst.netns, "iperf3", "-s", "-1", "-B", dst.address, "-p",
                                   str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for observer in observers:
                observer.wait_attached()
            wait_listening(dst.netns, dst.address, port)
            client = subprocess.run(["ip", "netns", "exec", container.netns, "iperf3", "-c", dst.address, "-p",
                                     str(port), "-t", str(seconds), "-b", "200M"],
                                    capture_output=True, text=True, timeout=seconds + 60, check=False)
            assert client.returncode == 0, client.stderr
            for observer in observers:
                observer.stop()
            return observers[0].records() + observers[1].records()
        finally:
            for process in [server, *(o.proc for o in observers)]:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def test_container_flow_has_its_hops(lab, db):
    records = measure_container_flow(lab.plan, 5209)
    ship(db, records, "lab-container", 5209)
    result = analysis_sql.materialise(db, "lab-container")
    report = data.load(db, "lab-container")
    directions = busiest(report)
    assert {"data", "ack", "rtt"} <= set(directions)
    assert directions["data"].sender == "host1" and directions["data"].matched > 50
    assert result.closure_ok >= CLOSED_SHARE * result.rtt_samples
    # the container's veth, host1's bridge port and uplink: one row per hop of the sender's side
    hops = _query(db, "SELECT hop_no, netns, ifindex, samples, p50_ns FROM analysis_paths WHERE "
                      "session_id = 'lab-container' AND direction = 'data' AND side = 'tx' ORDER BY samples DESC, hop_no")
    assert len({(netns, ifindex) for _h, netns, ifindex, _n, _p in hops}) >= 3, hops
    layers = {layer.layer: layer for layer in directions["data"].layers}
    assert layers["tx_virt"].p50 > 0 and layers["tx_virt"].n > 50


def _query(connection, sql: str) -> list:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    connection.commit()
    return [tuple(row) for row in rows]
