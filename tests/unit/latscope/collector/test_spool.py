"""The on-disk spool, with real files: bounded, oldest dropped and counted, corrupt and torn lines survived."""

from __future__ import annotations

import json

import pytest

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError
from ansible_collections.latscope.latscope.plugins.module_utils.records import Flow, PacketRecord, Stamp
from latscope.collector.spool import Spool, TableRow, item_to_dict


def make_record(index: int) -> PacketRecord:
    return PacketRecord(session="s1", host="host1", direction="tx", kind="data",
                        flow=Flow("10.1.2.3", "10.1.2.4", 40000, 5201), key=index,
                        stamps=(Stamp("tcp_xmit", 1_000 + index, 0, 1 << 40), Stamp("dev_xmit", 2_000 + index, 7, 1 << 40)))


def line_bytes(item) -> int:
    return len(json.dumps(item_to_dict(item), separators=(",", ":"), sort_keys=True)) + 1


def replay_all(spool: Spool, confirm: bool = True) -> list:
    items = []
    for batch in spool.replay():
        items.extend(batch.items)
        if confirm:
            spool.confirm(batch)
    return items


def disk_bytes(spool: Spool) -> int:
    return sum(path.stat().st_size for path in spool.directory.iterdir())


def test_items_come_back_oldest_first_and_equal(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024, segment_bytes=1024)
    metric = TableRow("flow_metrics", {"session": "s1", "host": "host1", "flow": ["10.0.0.1", "10.0.0.2", 1, 2],
                                       "at_ns": 7, "cwnd": 10})
    first = [make_record(i) for i in range(20)]
    second = [metric] + [make_record(i) for i in range(20, 40)]
    assert spool.append(first) == 20 and spool.append(second) == 21
    assert spool.segments > 2   # 41 lines of ~250 bytes over 1 KiB segments
    assert replay_all(spool) == first + second
    assert spool.segments == 0 and list(spool.directory.iterdir()) == []
    assert spool.status()["spool_dropped"] == 0 and spool.status()["spool_corrupt"] == 0


def test_a_segment_stays_until_its_batch_is_confirmed(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=1024)
    spool.append([make_record(i) for i in range(10)])
    batches = list(spool.replay())
    assert len(batches) >= 2
    spool.confirm(batches[0])
    again = list(spool.replay())
    assert [b.segment for b in again] == [b.segment for b in batches[1:]]
    assert again[0].items == batches[1].items
    assert not batches[0].segment.exists() and all(b.segment.exists() for b in again)


def test_the_bound_holds_and_the_oldest_segments_are_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
    written = []
    for start in range(0, 200, 10):
        batch = [make_record(i) for i in range(start, start + 10)]
        written += batch
        spool.append(batch)
        assert spool.total_bytes <= 4096 and disk_bytes(spool) <= 4096
    kept = replay_all(spool)
    dropped = spool.status()["spool_dropped"]
    assert dropped > 0 and len(kept) + dropped == len(written)
    assert kept == written[dropped:]   # whole oldest segments went; the newest are all there, in order


def test_a_spool_reopened_after_a_restart_keeps_its_segments_and_its_bound(tmp_path):
    spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
    spool.append([make_record(i) for i in range(10)])
    old = {path.name for path in tmp_path.iterdir()}
    # a process that died without close(): its file objects are gone, the data is in the files
    reopened = Spool(tmp_path, max_bytes=2048, segment_bytes=1024)
    assert reopened.total_bytes <= 2048   # the smaller bound applies at once, oldest first
    assert reopened.status()["spool_dropped"] > 0
    reopened.append([make_record(100)])
    new = {path.name for path in tmp_path.iterdir()} - old
    assert len(new) == 1   # a new process writes a new segment, never after an old (maybe torn) line
    items = replay_all(reopened)
    assert items[-1] == make_record(100)
    assert len(items) + reopened.status()["spool_dropped"] == 11


def test_a_torn_last_line_is_counted_not_fatal(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * 1024)
    spool.append([make_record(i) for i in range(5)])
    spool.close()
    (segment,) = tmp_path.iterdir()
    data = segment.read_bytes()
    segment.write_bytes(data[:-(line_bytes(make_record(4)) // 2)])   # the crash came in the middle of the last line

    after_crash = Spool(tmp_path, max_bytes=64 * 1024)
    assert [batch.items for batch in after_crash.replay()] == [[make_record(i) for i in range(4)]]
    assert after_crash.status()["spool_corrupt"] == 1
    assert replay_all(after_crash) == [make_record(i) for i in range(4)]
    assert after_crash.status()["spool_corrupt"] == 1   # counted once, however often it is read


def test_corrupt_lines_are_skipped_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * 1024)
    spool.append([make_record(0)])
    spool.close()
    (segment,) = tmp_path.iterdir()
    bad_record = item_to_dict(make_record(1))
    bad_record["flow"][0] = "10.1.2.999"
    unhashable_layer = item_to_dict(make_record(2))
    unhashable_layer["stamps"][0][0] = ["tcp_xmit"]
    with open(segment, "ab") as out:
        out.write(b"not json at all\n")
        out.write(json.dumps(bad_record).encode() + b"\n")
        out.write(json.dumps(unhashable_layer).encode() + b"\n")
        out.write(b'{"table": "flow_metrics", "row": {"session": "s1"}}\n')
        out.write(b'{"table": ["hosts"], "row": {}}\n')
        out.write(b"\xff\xfe\n")
        out.write(json.dumps(item_to_dict(make_record(3))).encode() + b"\n")
    reopened = Spool(tmp_path, max_bytes=64 * 1024)
    assert replay_all(reopened) == [make_record(0), make_record(3)]
    assert reopened.status()["spool_corrupt"] == 6


def test_a_line_larger_than_the_whole_spool_is_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=1024, segment_bytes=256)
    huge = TableRow("hosts", {"name": "h" * 128, "kind": "vm", "first_seen": 0, "padding": "x" * 2000})
    assert spool.append([make_record(0), huge]) == 1
    assert spool.status()["spool_dropped"] == 1 and spool.total_bytes <= 1024


@pytest.mark.parametrize("settings, field", [
    ({"max_bytes": 100}, "spool.max_bytes"),
    ({"max_bytes": "lots"}, "spool.max_bytes"),
    ({"max_bytes": 4096, "segment_bytes": 4096}, "spool.segment_bytes"),
])
def test_bad_settings_name_the_setting(tmp_path, settings, field):
    with pytest.raises(InputError) as info:
        Spool(tmp_path, **settings)
    assert info.value.field == field
