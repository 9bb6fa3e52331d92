"""A bounded on-disk spool for batches the shipper could not ship (the database was down).

Items are appended as JSON lines to *segment* files in one directory
(``0000000000000001.jsonl``, ...; the number only grows). A segment is closed,
and fsynced, when it reaches ``segment_bytes`` or before a replay; a new process
never appends to an old segment, so a line torn by a crash stays the last line
of its file. The spool never holds more than ``max_bytes``: to make room, the
*oldest* segment is deleted and its item count added to ``spool_dropped`` (lost,
but counted, never silently).

``replay()`` yields one batch per segment, oldest first; the segment is deleted
only when the caller ``confirm``s the batch shipped. Every line is validated
again on replay (``records.record_from_dict``, or the schema's row builder for
table rows): a line that does not parse or validate, including a torn last
line, is counted in ``spool_corrupt`` once and skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ansible_collections.latscope.latscope.plugins.module_utils.errors import InputError, require_int
from ansible_collections.latscope.latscope.plugins.module_utils.records import (
    PacketRecord, record_from_dict, record_to_dict)
from ansible_collections.latscope.latscope.plugins.module_utils.schema import ROW_BUILDERS

SUFFIX = ".jsonl"
MIN_MAX_BYTES = 1024
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TableRow:
    """A row of a raw table other than the packet tables, as the mapping its schema builder validates."""

    table: str
    row: Mapping[str, Any]


SpoolItem = PacketRecord | TableRow


def item_to_dict(item: SpoolItem) -> dict[str, Any]:
    """The JSON form of an item: a record's own dict, or ``{"table": ..., "row": {...}}``."""
    if isinstance(item, PacketRecord):
        return record_to_dict(item)
    if isinstance(item, TableRow):
        return {"table": item.table, "row": dict(item.row)}
    raise InputError("item", "must be a PacketRecord or a TableRow", type(item).__name__)


def item_from_dict(raw: Any, prefix: str = "item") -> SpoolItem:
    """Validate one spooled item; raise InputError naming the bad field."""
    if isinstance(raw, dict) and "table" in raw:
        table, row = raw.get("table"), raw.get("row")
        if not isinstance(table, str) or table not in ROW_BUILDERS:
            raise InputError(f"{prefix}.table", f"must be one of {', '.join(ROW_BUILDERS)}", table)
        ROW_BUILDERS[table](row, f"{prefix}.row")
        return TableRow(table, row)
    return record_from_dict(raw, prefix)


@dataclass
class SpoolBatch:
    """The valid items of one segment, oldest segment first; ``Spool.confirm`` deletes the segment."""

    segment: Path
    items: list[SpoolItem]


@dataclass(eq=False)
class _Segment:
    path: Path
    size: int
    lines: int
    checked: bool = False   # its corrupt lines were counted already (count once, however often replayed)


@dataclass
class Spool:
    """Append-only, size-bounded JSON-lines segments in ``directory``; see the module docstring."""

    directory: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    segment_bytes: int = 0          # 0: max_bytes / 8, at most DEFAULT_SEGMENT_BYTES
    counters: dict[str, int] = field(default_factory=lambda: {"spool_dropped": 0, "spool_corrupt": 0}, init=False)
    _segments: list[_Segment] = field(default_factory=list, init=False)
    _open: Any = field(default=None, init=False)   # the file object of the last segment while it is written

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.max_bytes = require_int("spool.max_bytes", self.max_bytes, MIN_MAX_BYTES)
        if not self.segment_bytes:
            self.segment_bytes = min(self.max_bytes // 8, DEFAULT_SEGMENT_BYTES)
        self.segment_bytes = require_int("spool.segment_bytes", self.segment_bytes, MIN_MAX_BYTES // 8,
                                         self.max_bytes // 2)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            if path.stem.isdigit():
                data = path.read_bytes()
                lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
                self._segments.append(_Segment(path, len(data), lines))
        self._make_room(0)

    # --- writing ---------------------------------------------------------------------------------

    def append(self, items: list[SpoolItem]) -> int:
        """Write ``items`` (after the oldest segments are dropped if needed); return how many were kept."""
        lines = [(json.dumps(item_to_dict(item), separators=(",", ":"), sort_keys=True) + "\n").encode()
                 for item in items]
        kept = 0
        for line in lines:
            if len(line) > self.max_bytes:   # could never fit: drop it, not the older segments
                self.counters["spool_dropped"] += 1
                continue
            segment = self._segments[-1] if self._open is not None else None
            if segment is not None and segment.size and segment.size + len(line) > self.segment_bytes:
                self._close()
            if not self._make_room(len(line)):
                self.counters["spool_dropped"] += 1
                continue
            if self._open is None:
                number = int(self._segments[-1].path.stem) + 1 if self._segments else 1
                path = self.directory / f"{number:016d}{SUFFIX}"
                self._open = open(path, "ab")   # pylint: disable=consider-using-with  # kept open across calls
                self._segments.append(_Segment(path, 0, 0))
            self._open.write(line)
            self._segments[-1].size += len(line)
            self._segments[-1].lines += 1
            kept += 1
        if self._open is not None:
            self._open.flush()   # in the kernel's hands: survives a crash of this process
        return kept

    def _make_room(self, size: int) -> bool:
        """Drop the oldest closed segments until ``size`` more bytes fit; False if they cannot."""
        closed = len(self._segments) - (1 if self._open is not None else 0)
        while self.total_bytes + size > self.max_bytes and closed > 0:
            oldest = self._segments.pop(0)
            closed -= 1
            oldest.path.unlink(missing_ok=True)
            self.counters["spool_dropped"] += oldest.lines
        return self.total_bytes + size <= self.max_bytes

    def _close(self) -> None:
        """Close the segment being written, fsyncing it and the directory entry."""
        if self._open is None:
            return
        self._open.flush()
        os.fsync(self._open.fileno())
        self._open.close()
        self._open = None
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        self._close()

    # --- replay ----------------------------------------------------------------------------------

    def replay(self) -> Iterator[SpoolBatch]:
        """Yield the spooled batches oldest first; a segment stays until its batch is confirmed."""
        self._close()
        for segment in list(self._segments):
            if segment in self._segments:
                yield SpoolBatch(segment.path, self._read(segment))

    def _read(self, segment: _Segment) -> list[SpoolItem]:
        items: list[SpoolItem] = []
        corrupt = 0
        try:
            data = segment.path.read_bytes()
        except FileNotFoundError:
            data = b""
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                items.append(item_from_dict(json.loads(line), f"{segment.path.name}:{number}"))
            except (ValueError, TypeError):   # InputError, JSONDecodeError, UnicodeDecodeError; TypeError: unhashable
                corrupt += 1
        if not segment.checked:
            self.counters["spool_corrupt"] += corrupt
            segment.lines -= corrupt   # what a later drop would lose: the valid items only
            segment.checked = True
        return items

    def confirm(self, batch: SpoolBatch) -> None:
        """The batch is stored: delete its segment."""
        for segment in self._segments:
            if segment.path == batch.segment:
                self._segments.remove(segment)
                segment.path.unlink(missing_ok=True)
                return

    # --- state -----------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    @property
    def items(self) -> int:
        """Lines in the spool (valid items, plus lines of segments not yet read back)."""
        return sum(segment.lines for segment in self._segments)

    @property
    def segments(self) -> int:
        return len(self._segments)

    def status(self) -> dict[str, int]:
        """The counters plus what the spool holds now."""
        return {**self.counters, "spool_items": self.items, "spool_bytes": self.total_bytes,
                "spool_segments": len(self._segments)}
