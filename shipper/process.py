"""Per-source processing: lines in, runs of entries out (format parser -> multiline merger -> level). No IO; the clock is passed in.

Only sources that ask for it get a `Processor` (`SourceConfig.processed`: a
non-raw `format`, `multiline`, or `detect_level`); plain sources keep the
pipeline's fast path, where a chunk of lines goes to the accumulator as it is.

Output is a list of `Run`: consecutive entries that go to the same stream
and are stamped the same way, as columns (the lines, their own times or
None, their structured metadata, their levels), so a chunk's entries reach
the accumulator as a handful of lists, never an object per entry. An entry
has a time of its own when its format carries one (CRI, JSON), or when it
began in an earlier read (a multiline entry held open: the read time of its
first line); else it is stamped when read. Runs break where the stream (a
CRI file interleaves stdout and stderr) or the stamping changes; the
pipeline cuts them further where the level routed to a label of its own
(`level_labels`) changes.

The pod template's configuration (a raw source with `multiline` and
`detect_level`) is the common case and stays at C speed per chunk: the
merger passes runs of record lines through as slices, levels are found for a
whole chunk by `levels.detect_many`, and a chunk usually makes one `Run`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import groupby, repeat
from operator import eq
from typing import NamedTuple, TypeVar

from shipper import levels
from shipper.config import SourceConfig
from shipper.formats import CriParser, JsonParser, Metadata, RawParser, Record, make_parser, record_new
from shipper.multiline import Merger


T = TypeVar("T")


class Run(NamedTuple):
    """Consecutive entries of one stream, stamped the same way (columns, one item per entry)."""

    stream: str | None  # the stream the format named (CRI); None: the source's own
    lines: list[bytes]  # valid UTF-8, no terminator
    times: Sequence[int] | None  # each entry's own time (epoch ns); None: stamped when read
    metadata: Sequence[Metadata] | None  # each entry's structured metadata pairs; None: none
    levels: Sequence[str | None] | None  # each entry's level; None: none known


class Processor:
    """The chain for one source; `feed`/`due`/`flush` return finished entries as runs, in order."""

    def __init__(self, cfg: SourceConfig, max_line_bytes: int) -> None:
        self.parser = make_parser(cfg.format, max_bytes=max_line_bytes, metadata=cfg.json_metadata,
                                  keep_record=cfg.json_keep_record, exception_keys=cfg.json_exception_keys)
        self.format = cfg.format
        self.detect_level = cfg.detect_level
        self._merge = cfg.multiline
        # No multiline_start: the merger's grammar per format (None); a custom one: Promtail's firstline rule.
        start = re.compile(cfg.multiline_start.encode()) if cfg.multiline_start else None
        self._merger_args = (start, cfg.multiline_max_lines, cfg.multiline_max_wait, max_line_bytes)
        # One merger per stream: a CRI file interleaves stdout and stderr.
        self._mergers: dict[str | None, Merger] = {}
        self._seen: dict[str, int] = {}  # take_counts's totals at its last call

    def take_counts(self) -> dict[str, int]:
        """What the parser and mergers counted since the last call (telemetry), by name:
        the one way the pipeline reads them (zero counts left out; shipper.pipeline._report)."""
        p = self.parser
        mergers = self._mergers.values()
        totals = {
            "merged": sum(m.merged_lines for m in mergers),
            "split_max_lines": sum(m.split_max_lines for m in mergers),
            "split_max_bytes": sum(m.split_max_bytes for m in mergers),
            "split_max_wait": sum(m.split_max_wait for m in mergers),
            "malformed": p.malformed,
            "joined": getattr(p, "joined_lines", 0),
            "cut": getattr(p, "cut_lines", 0),
            "invalid_utf8": getattr(p, "invalid_utf8_lines", 0),
            "kept_whole": getattr(p, "kept_whole", 0),
        }
        seen = self._seen
        new = {name: total - seen.get(name, 0) for name, total in totals.items() if total != seen.get(name, 0)}
        self._seen = totals
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

    def feed(self, lines: Sequence[bytes], now: float, wall_ns: int) -> list[Run]:
        """Entries completed by these lines, read at `wall_ns`."""
        if self._merge and isinstance(self.parser, RawParser):
            # Raw lines go to the merger as they are: no Record each on the way.
            return self._merge_run(lines, [wall_ns] * len(lines), None, now, wall_ns, split_lines=True)
        if not self._merge and self.detect_level and isinstance(self.parser, RawParser):
            # Levels only: the lines are entries already, their levels found for the chunk
            # at once; no Record each.
            found = levels.detect_many(lines, single_lines=True)
            return [Run(None, list(lines), None, None, _unless_empty(found, None))] if lines else []
        if not self._merge and isinstance(self.parser, JsonParser):
            columns = self.parser.columns(lines)  # the whole chunk at C speed, when it can
            if columns is not None:
                return [self._json_run(*columns)]
        if not self._merge and isinstance(self.parser, CriParser):
            read = self.parser.columns(lines)  # the whole chunk at C speed, when it can
            return self._records(read, now, wall_ns) if isinstance(read, list) else self._cri_runs(*read)
        return self._records(self.parser.feed(lines), now, wall_ns)

    def _cri_runs(self, lines: list[bytes], times: list[int], streams: list[str]) -> list[Run]:
        """The runs of whole CRI lines CriParser.columns read (as _record_runs would make them)."""
        found = _unless_empty(levels.detect_many(lines, single_lines=True), None) if self.detect_level else None
        if streams.count(streams[0]) == len(streams):
            return [Run(streams[0], lines, times, None, found)]
        return [Run(streams[i], lines[i:j], times[i:j], None, found[i:j] if found is not None else None)
                for i, j in spans(streams)]

    def _json_run(self, lines: list[bytes], times: list[int], metadata: list[Metadata] | None,
                  entry_levels: list[str | None]) -> Run:
        """The run of a chunk JsonParser.columns read whole (as _record_runs would make it)."""
        if self.detect_level and None in entry_levels:  # records without a level of their own
            detect = levels.detect
            entry_levels = [level if level is not None else detect(line) for line, level in zip(lines, entry_levels)]
        return Run(None, lines, times, None if metadata is None else _unless_empty(metadata, ()),
                   _unless_empty(entry_levels, None))

    def due(self, now: float) -> list[Run]:
        """Entries whose max wait has passed."""
        out: list[Run] = []
        for stream, merger in self._mergers.items():
            stamps: list[int] = []
            out += self._finish(merger.due(now, stamps), stamps, stream, None)
        return out

    def flush(self, now: float, wall_ns: int) -> list[Run]:
        """Everything held (end of input, shutdown)."""
        out = self._records(self.parser.flush(), now, wall_ns)
        for stream, merger in self._mergers.items():
            stamps: list[int] = []
            out += self._finish(merger.flush(stamps), stamps, stream, None)
        return out

    def _records(self, records: list[Record], now: float, wall_ns: int) -> list[Run]:
        if not records:
            return []
        if not self._merge:
            # Records are entries already; only those without a level of their own may get one.
            if self.detect_level:
                detect = levels.detect
                records = [r if r.level is not None else
                           record_new(Record, (r.line, r.ts_ns, r.stream, r.metadata, detect(r.line))) for r in records]
            return self._record_runs(records)
        # Merging: consecutive records of one stream go to its merger together.
        out: list[Run] = []
        for i, j in spans([r.stream for r in records]):
            run = records[i:j]
            out += self._merge_run([r.line for r in run], [r.ts_ns if r.ts_ns is not None else wall_ns for r in run],
                                   run[0].stream, now, wall_ns)
        return out

    def _record_runs(self, records: list[Record]) -> list[Run]:
        """Records cut into runs: same stream, and all with or all without a time."""
        lines, times, streams, metadata, entry_levels = zip(*records)  # columns, one C-level pass
        if streams.count(streams[0]) == len(streams) and (None not in times or times.count(None) == len(times)):
            bounds = [(0, len(records))]  # the usual case: one stream, one way of stamping
        else:
            bounds = spans(list(zip(streams, [t is None for t in times])))
        return [Run(streams[i], list(lines[i:j]), None if times[i] is None else times[i:j],
                    _unless_empty(metadata[i:j], ()), _unless_empty(entry_levels[i:j], None))
                for i, j in bounds]

    def _merge_run(self, lines: Sequence[bytes], times: list[int], stream: str | None, now: float,
                   wall_ns: int, split_lines: bool = False) -> list[Run]:
        """Entries that lines of one stream (each with its time) complete in its merger.

        `split_lines`: the lines are a LineSplitter's (none holds a newline; a
        parser's record, a JSON event, may).
        """
        merger = self._mergers.get(stream)
        if merger is None:
            merger = self._mergers[stream] = Merger(*self._merger_args)
        stamps: list[int] = []
        joined: list[tuple[int, bytes]] = []
        merged = merger.feed(lines, now, times, stamps, joined)
        firsts = None
        if split_lines and self.detect_level:
            firsts = merged
            if joined:  # a traceback joined to its record: its level is its first line's
                firsts = merged.copy()
                for i, first in joined:
                    firsts[i] = first
        return self._finish(merged, stamps, stream, wall_ns, firsts)

    def _finish(self, merged: list[bytes], stamps: list[int], stream: str | None,
                wall_ns: int | None, firsts: list[bytes] | None = None) -> list[Run]:
        """Runs of merged entries. An entry's time is its first line's (read time, or the CRI time);
        one read in this very call (`wall_ns`) needs no time of its own: the accumulator stamps
        those as a block, in one C-level pass. `firsts`: each entry's first line, when known
        (levels.detect_many's chunk form)."""
        if not merged:
            return []
        found = levels.detect_many(merged, firsts=firsts) if self.detect_level else None
        if wall_ns is not None and stamps.count(wall_ns) == len(merged):
            return [Run(stream, merged, None, None, found)]  # the common case: one run
        # Entries held open from earlier reads (usually the first: it might have
        # continued) keep their first line's time: runs where the stamping changes.
        return [Run(stream, merged[i:j], None if stamps[i] == wall_ns else stamps[i:j], None,
                    found[i:j] if found is not None else None)
                for i, j in spans(map(eq, stamps, repeat(wall_ns)))]


def spans(keys: Iterable[object]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of equal consecutive keys, in order: how entries are cut into runs.

    groupby walks the keys at C speed; Python runs once per span (a chunk has a few).
    """
    out = []
    i = 0
    for _, run in groupby(keys):
        j = i + len(list(run))
        out.append((i, j))
        i = j
    return out


def _unless_empty(column: Sequence[T], empty: T) -> Sequence[T] | None:
    """`column`, or None when every item of it is `empty` (no metadata, no level: nothing to encode)."""
    return None if column.count(empty) == len(column) else column
