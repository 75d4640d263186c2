"""Per-source processing: format parser -> multiline merger -> level. No IO; the clock is passed in.

Only sources that ask for it get a `Processor` (`SourceConfig.processed`: a
non-raw `format`, `multiline`, or `detect_level`); plain sources keep the
pipeline's fast path, where a chunk of lines goes to the accumulator as it is.

Output is a list of `Entry` (a `formats.Record`): the line, its own timestamp
when the format carries one (CRI, JSON; else None = stamped when read), the
`stream` label the format says (CRI), extra structured metadata (JSON keys),
and the level. Without merging or level detection, a parser's records pass
through untouched: no per-line work here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shipper import levels
from shipper.config import SourceConfig
from shipper.formats import RawParser, Record, make_parser, record_new
from shipper.multiline import Merger

# One log entry ready for the accumulator: a format's Record, its level filled
# in where detection found one. (Its metadata does not hold the level: the
# pipeline adds `level` when it encodes an entry's metadata.)
Entry = Record


class Processor:
    """The chain for one source; `feed`/`due`/`flush` return finished entries in order."""

    def __init__(self, cfg: SourceConfig, max_line_bytes: int) -> None:
        self.parser = make_parser(cfg.format, max_bytes=max_line_bytes, metadata=cfg.json_metadata,
                                  keep_record=cfg.json_keep_record, exception_keys=cfg.json_exception_keys)
        self.detect_level = cfg.detect_level
        self._merge = cfg.multiline
        # No multiline_start: the merger's grammar per format (None); a custom one: Promtail's firstline rule.
        start = re.compile(cfg.multiline_start.encode()) if cfg.multiline_start else None
        self._merger_args = (start, cfg.multiline_max_lines, cfg.multiline_max_wait, max_line_bytes)
        # One merger per stream: a CRI file interleaves stdout and stderr.
        self._mergers: dict[str | None, Merger] = {}
        self._merged_seen = 0

    def take_merged(self) -> int:
        """Continuation lines merged into an earlier entry since the last call (telemetry)."""
        total = sum(m.merged_lines for m in self._mergers.values())
        new, self._merged_seen = total - self._merged_seen, total
        return new

    @property
    def pending(self) -> int:
        """Lines held back (an entry still open, a CRI partial line)."""
        held = sum(m.pending_lines for m in self._mergers.values())
        return held + getattr(self.parser, "pending_bytes", 0)

    def next_due(self) -> float | None:
        """When an open multiline entry must be released; None when nothing is held."""
        times = [t for t in (m.next_due() for m in self._mergers.values()) if t is not None]
        return min(times) if times else None

    def feed(self, lines: Sequence[bytes], now: float, wall_ns: int) -> list[Entry]:
        """Entries completed by these lines, read at `wall_ns`."""
        if self._merge and isinstance(self.parser, RawParser):
            # Raw lines go to the merger as they are: no Record each on the way.
            return self._merge_run(lines, [wall_ns] * len(lines), None, now, wall_ns)
        return self._entries(self.parser.feed(lines), now, wall_ns)

    def due(self, now: float) -> list[Entry]:
        """Entries whose max wait has passed."""
        out: list[Entry] = []
        for stream, merger in self._mergers.items():
            stamps: list[int] = []
            out += self._finish(merger.due(now, stamps), stamps, stream)
        return out

    def flush(self, now: float, wall_ns: int) -> list[Entry]:
        """Everything held (end of input, shutdown)."""
        out = self._entries(self.parser.flush(), now, wall_ns)
        for stream, merger in self._mergers.items():
            stamps: list[int] = []
            out += self._finish(merger.flush(stamps), stamps, stream)
        return out

    def _entries(self, records: list[Record], now: float, wall_ns: int) -> list[Entry]:
        if not records:
            return []
        if not self._merge:
            # Records are entries already; only those without a level of their own may get one.
            if not self.detect_level:
                return records
            detect = levels.detect
            return [r if r.level is not None else
                    record_new(Record, (r.line, r.ts_ns, r.stream, r.metadata, detect(r.line))) for r in records]
        # Merging: consecutive records of one stream go to its merger together.
        out: list[Entry] = []
        i = 0
        while i < len(records):
            stream = records[i].stream
            j = i
            while j < len(records) and records[j].stream == stream:
                j += 1
            run = records[i:j]
            out += self._merge_run([r.line for r in run], [r.ts_ns if r.ts_ns is not None else wall_ns for r in run],
                                   stream, now, wall_ns)
            i = j
        return out

    def _merge_run(self, lines: Sequence[bytes], times: list[int], stream: str | None, now: float,
                   wall_ns: int) -> list[Entry]:
        """Entries that lines of one stream (each with its time) complete in its merger."""
        merger = self._mergers.get(stream)
        if merger is None:
            merger = self._mergers[stream] = Merger(*self._merger_args)
        stamps: list[int] = []
        return self._finish(merger.feed(lines, now, times, stamps), stamps, stream, wall_ns)

    def _finish(self, merged: list[bytes], stamps: list[int], stream: str | None,
                wall_ns: int | None = None) -> list[Entry]:
        # An entry's time is its first line's (read time, or the CRI time).
        # One read in this very call needs no time of its own (None): the
        # accumulator's fast path stamps a whole run at once.
        if self.detect_level:
            detect = levels.detect
            return [record_new(Record, (line, None if ts == wall_ns else ts, stream, (), detect(line)))
                    for line, ts in zip(merged, stamps)]
        return [record_new(Record, (line, None if ts == wall_ns else ts, stream, (), None))
                for line, ts in zip(merged, stamps)]
