"""Ships packet records, flow metrics and counter snapshots to the manager's database; spools what it cannot.

The daemon loop calls ``add``/``add_metrics``/``add_counters`` as data comes in
and ``flush`` on its tick. Each batch is one transaction of ``INSERT IGNORE``
statements (the collector needs only the INSERT privilege, and a batch shipped
twice stores its rows once: a record's ``uid`` and every other table's primary
key are the same on replay).

When the database cannot be reached or refuses a batch, the batch goes to the
on-disk spool, the store is marked down, and no connection is tried again
before a backoff (doubling, with jitter, capped) has passed: the daemon loop
never spins on a dead server, and never sees an exception for an outage. When
a connection works again, the spool is replayed oldest first before any new
batch (a few segments per flush, so that a long outage does not stall the loop;
new batches queue behind them in the spool meanwhile). Bad input (not a record, a field out of range) raises InputError at
``add`` time, before anything is queued. Everything runs in the caller's
thread: there is no background thread.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import pymysql

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.records import PacketRecord
from ansible_collections.latscope.latscope.plugins.module_utils.schema import (
    RAW_TABLES, ROW_BUILDERS, Row, counter_dicts, insert_sql, record_rows)
from latscope.collector.spool import Spool, SpoolItem, TableRow

Connect = Callable[[], "pymysql.connections.Connection"]
DEFAULT_BATCH_SIZE = 2000
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
DEFAULT_REPLAY_SEGMENTS = 4     # per flush: a long outage's spool drains over several ticks, not in one stall


def connector(host: str, port: int, user: str, password: str, database: str, timeout_s: float = 5.0) -> Connect:
    """A ``connect`` for Shipper: PyMySQL with bounded waits, so an unreachable server costs seconds, not hours."""
    def connect() -> pymysql.connections.Connection:
        return pymysql.connect(host=host, port=port, user=user, password=password, database=database,
                               charset="utf8mb4", autocommit=False, connect_timeout=timeout_s,
                               read_timeout=timeout_s * 6, write_timeout=timeout_s * 6)
    return connect


@dataclass(frozen=True)
class _Item:
    """One queued item: what the spool keeps if it cannot ship, and the (table, row) pairs it inserts."""

    payload: SpoolItem
    rows: tuple[tuple[str, Row], ...]


def _record_item(record: Any, prefix: str) -> _Item:
    sample, stamps = record_rows(record, prefix)
    return _Item(record, (("packet_samples", sample),) + tuple(("packet_stamps", stamp) for stamp in stamps))


def _row_item(table: str, raw: Any, prefix: str) -> _Item:
    row = ROW_BUILDERS[table](raw, prefix)
    try:
        json.dumps(raw)   # the spool must be able to keep it: times as unix seconds, not datetimes
    except (TypeError, ValueError):
        raise InputError(prefix, "must be JSON-serialisable (give times as unix seconds)", raw) from None
    return _Item(TableRow(table, dict(raw)), ((table, row),))


class Shipper:
    """Batches rows into the raw tables; see the module docstring.

    Counters (``counters()``); an *item* is a packet record, a flow-metrics row or a counter snapshot:
    ``shipped_records`` items stored as they came, ``spooled_records`` items written to the spool,
    ``replayed_records`` items stored from the spool, ``spool_dropped`` items lost to the spool's
    bound, ``spool_corrupt`` spool lines that did not validate, ``ship_errors`` failed connects or
    batches. ``last_error`` says what the last failure was.
    """

    def __init__(self, connect: Connect, spool: Spool, batch_size: int = DEFAULT_BATCH_SIZE,
                 backoff_s: float = DEFAULT_BACKOFF_S, backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                 replay_segments: int = DEFAULT_REPLAY_SEGMENTS, clock: Callable[[], float] = time.monotonic) -> None:
        if not callable(connect):
            raise InputError("connect", "must be a callable returning a PyMySQL connection", connect)
        if not isinstance(spool, Spool):
            raise InputError("spool", "must be a Spool", type(spool).__name__)
        if not 0 < backoff_s <= backoff_max_s:
            raise InputError("backoff_s", f"must be more than 0 and at most backoff_max_s ({backoff_max_s})", backoff_s)
        self._connect = connect
        self._spool = spool
        self._batch_size = require_int("batch_size", batch_size, 1, 100_000)
        self._replay_segments = require_int("replay_segments", replay_segments, 1)
        self._backoff = (backoff_s, backoff_max_s)
        self._clock = clock
        self._pending: list[_Item] = []
        self._conn: pymysql.connections.Connection | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.last_error = ""
        self._counts = {"shipped_records": 0, "spooled_records": 0, "replayed_records": 0, "ship_errors": 0}

    # --- queueing --------------------------------------------------------------------------------

    def add(self, records: Iterable[PacketRecord]) -> None:
        """Queue packet records; all are validated before any is queued. Ships when a batch is full."""
        self._queue([_record_item(record, f"records[{index}]") for index, record in enumerate(records)])

    def add_rows(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue rows of another raw table (``schema.ROW_BUILDERS`` says which, and their fields)."""
        if table not in ROW_BUILDERS:
            raise InputError("table", f"must be one of {', '.join(ROW_BUILDERS)}", table)
        self._queue([_row_item(table, raw, f"{table}[{index}]") for index, raw in enumerate(rows)])

    def add_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Queue flow-metric snapshots (``schema.metric_row`` fields)."""
        self.add_rows("flow_metrics", rows)

    def add_counters(self, session: str, host: str, counters: Mapping[str, int], at_ns: int) -> None:
        """Queue one snapshot of cumulative counters (``{name: value}``) taken at ``at_ns``."""
        self.add_rows("drop_counters", counter_dicts(session, host, counters, at_ns))

    def _queue(self, items: list[_Item]) -> None:
        self._pending.extend(items)
        if len(self._pending) >= self._batch_size:
            self._drain(everything=False)

    # --- shipping --------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Ship the spool (oldest first), then everything queued; spool what cannot go.

        Returns True when the database holds everything (nothing queued, nothing spooled).
        """
        return self._drain(everything=True)

    def close(self) -> None:
        """Flush, then close the spool's open segment and the connection (nothing queued is lost)."""
        self.flush()
        self._spool.close()
        self._disconnect()

    def _drain(self, everything: bool) -> bool:
        if self._connected() and self._replay():
            while self._pending and (everything or len(self._pending) >= self._batch_size):
                batch = self._pending[:self._batch_size]
                if not self._ship(batch):
                    break
                del self._pending[:len(batch)]
                self._counts["shipped_records"] += len(batch)
        keep = 0 if everything else len(self._pending) % self._batch_size
        if len(self._pending) > keep:
            spooled = self._pending[:len(self._pending) - keep]
            self._spool.append([item.payload for item in spooled])
            self._counts["spooled_records"] += len(spooled)
            del self._pending[:len(spooled)]
        return not self._pending and self._spool.segments == 0

    def _replay(self) -> bool:
        """Ship up to ``replay_segments`` spooled batches, oldest first; True once the spool is empty."""
        for batch in itertools.islice(self._spool.replay(), self._replay_segments):
            items = [_record_item(item, "spool") if isinstance(item, PacketRecord)
                     else _row_item(item.table, item.row, "spool") for item in batch.items]
            if not self._ship(items):
                return False
            self._spool.confirm(batch)
            self._counts["replayed_records"] += len(items)
        return self._spool.segments == 0

    def _ship(self, items: list[_Item]) -> bool:
        """One transaction for the batch; False (and the store marked down) if it did not commit."""
        if not items:
            return True
        grouped: dict[str, list[Row]] = {table: [] for table in RAW_TABLES}
        for item in items:
            for table, row in item.rows:
                grouped[table].append(row)
        try:
            self._conn.begin()
            with self._conn.cursor() as cursor:
                for table, rows in grouped.items():
                    if rows:
                        cursor.executemany(insert_sql(table), rows)
            self._conn.commit()
        except pymysql.MySQLError as exc:
            self._failed(exc)
            return False
        self._failures = 0
        return True

    # --- the connection and its backoff ----------------------------------------------------------

    def _connected(self) -> bool:
        """A live connection, or False while the backoff after a failure has not passed."""
        if self._conn is not None:
            try:
                self._conn.ping(reconnect=False)
                return True
            except pymysql.MySQLError:
                self._disconnect()   # stale (server restarted, idle timeout): one fresh attempt below
        if self._clock() < self._retry_at:
            return False
        try:
            self._conn = self._connect()
        except (pymysql.MySQLError, OSError) as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: Exception) -> None:
        self._counts["ship_errors"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._disconnect()
        self._failures += 1
        base, cap = self._backoff
        delay = min(cap, base * 2 ** min(self._failures - 1, 30)) * random.uniform(0.5, 1.0)
        self._retry_at = self._clock() + delay

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pymysql.MySQLError:
                pass   # already closed by the failure
            self._conn = None

    # --- state -----------------------------------------------------------------------------------

    @property
    def db_up(self) -> bool:
        return self._conn is not None and self._failures == 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def counters(self) -> dict[str, int]:
        """Shipping and spool counters, plus what is queued and spooled now (all integers)."""
        return {**self._counts, **self._spool.status(), "pending": len(self._pending), "db_up": int(self.db_up)}
