"""The demo's per-segment breakdown (pure logic on hand-built records)."""

from ansible_collections.latscope.latscope.plugins.module_utils.records import FLAG_REPEAT, Flow, PacketRecord, Stamp
from latscope.breakdown import breakdown, render

FLOW = Flow("198.18.0.11", "198.18.0.12", 40000, 5201)


def _tx(key, base, flags=0):
    stamps = (Stamp("app_send", base), Stamp("tcp_xmit", base + 10_000), Stamp("ip_out", base + 11_000),
              Stamp("dev_queue", base + 12_000, 2, 7), Stamp("dev_xmit", base + 13_000, 2, 7))
    return PacketRecord("s", "host1", "tx", "data", FLOW, key, stamps, flags=flags)


def _rx(key, base):
    stamps = (Stamp("dev_rx", base + 20_000, 2, 8), Stamp("netif_rx", base + 21_000, 2, 8),
              Stamp("tcp_rx", base + 22_000), Stamp("app_copy", base + 72_000), Stamp("app_recv", base + 73_000))
    return PacketRecord("s", "host2", "rx", "data", FLOW, key, stamps)


def test_segments_in_path_order_with_the_wire_between_hosts():
    sent = [_tx(k, k * 1000) for k in range(10)] + [_tx(99, 0, FLAG_REPEAT)]
    received = [_rx(k, k * 1000) for k in range(10)] + [_rx(99, 0)]
    rows, matched = breakdown(sent, received, "host1", "host2", {(7, 2): "host1:eth0", (8, 2): "host2:eth0"})
    assert matched == 10
    names = [(segment.where, segment.name) for segment, _values in rows]
    assert names[0] == ("host1", "socket send queue + TCP")
    assert ("wire", "sender NIC -> receiver NIC") in names
    assert names[-2:] == [("host2", "TCP receive queue"), ("host2", "copy to app")]
    assert dict(zip(names, (values[0] for _segment, values in rows)))[("wire", "sender NIC -> receiver NIC")] == 7_000
    text = render(rows, matched, "title")
    assert "TCP receive queue" in text.splitlines()[-3] and "<== largest" in text.splitlines()[-3]


def test_unmatched_samples_are_not_counted():
    rows, matched = breakdown([_tx(1, 0)], [_rx(2, 0)], "host1", "host2")
    assert (rows, matched) == ([], 0)
