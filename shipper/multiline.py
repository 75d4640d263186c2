"""Multi-line entries: lines in, entries out. No IO; the clock is passed in.

A `Merger` joins continuation lines (a Python traceback, a message with
newlines) to the line that started them, so users read them as one Loki
entry. Its rule is Promtail's "firstline": a line matching the `start`
pattern begins a new entry; any other line continues the open entry. A line
that matches nothing while no entry is open (the first line ever, or one that
comes after an entry was closed) begins an entry of its own, so no line is
ever dropped or held without bound.

An entry is closed, and returned, when:
- the next start line arrives (returned by that `feed()`);
- it holds `max_lines` lines, or no further line could fit in `max_bytes`
  (returned by the `feed()` that filled it, at once);
- the next line would take it over `max_bytes` (that line begins the next
  entry);
- `max_wait` seconds passed since its first line (`due(now)`, and also the
  next `feed()`, so results do not depend on whether `due()` ran first);
- `flush()` (end of input, shutdown).

Lines of an entry are joined with b"\\n". Entries come out in input order and
their bytes are exactly the input's: `b"\\n".join(entries) ==
b"\\n".join(lines)` for any input, and how the lines are split across
`feed()` calls (at the same `now`) does not change the entries.

An entry is at most `max_bytes` long unless a single line is longer: the
merger joins lines, it never cuts one (LineSplitter cuts lines to
max_line_bytes; configure max_bytes >= max_line_bytes, and <= Loki's
max_line_size).

Optional stamps: callers that need each entry's time as the time of its
first line (the read time of that line, or a CRI/JSON record's own time)
pass `stamps` (one int per line) to `feed()` and an `out_stamps` list to
`feed()`, `due()` and `flush()`; the stamp of each returned entry's first
line is appended to it, parallel to the returned entries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Default start rule, tried with re.match (anchored at the line start):
# - Airflow 2: `[2022-06-12T13:00:00.123+0000] {file.py:1} INFO - msg`, also
#   with a space separator, a custom datefmt, or colored_console_log's ANSI codes;
# - a bare timestamp: Airflow 2's simple_log_format and Python logging's
#   `%(asctime)s ...` formats;
# - a JSON record `{"...`: Airflow 3 (`{"timestamp":...`), python-json-logger;
# - logging.basicConfig's `LEVEL:logger:msg`.
# A traceback's lines (`Traceback (most recent call last):`, `  File ...`, the
# final `ValueError: boom`, `During handling ...`) match none of these.
DEFAULT_START = re.compile(
    rb"(?:\[(?:\x1b\[[0-9;]*m)?)?\d{4}-\d\d-\d\d[T ]\d\d:\d\d"
    rb'|\{"'
    rb"|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):")

# Why the last entry was closed before a start line closed it: the reason a
# continuation line arriving next is counted under.
_NONE, _LINES, _BYTES, _WAIT = 0, 1, 2, 3


class Merger:
    """Joins continuation lines to their entry; see the module docstring.

    `start=None` means DEFAULT_START. A custom pattern is applied with
    `start.match(line)`: anchored at the line start, as if it began with `^`.
    `max_lines=1` turns merging off (every line is an entry).
    """

    __slots__ = ("max_lines", "max_wait", "max_bytes", "_match", "_parts", "_size", "_opened", "_stamp",
                 "_closed_by", "entries", "merged_entries", "merged_lines", "split_max_lines",
                 "split_max_bytes", "split_max_wait")

    def __init__(self, start: re.Pattern[bytes] | None, max_lines: int, max_wait: float, max_bytes: int) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, got {max_lines}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if not max_wait > 0:
            raise ValueError(f"max_wait must be positive, got {max_wait}")
        self.max_lines = max_lines
        self.max_wait = max_wait
        self.max_bytes = max_bytes
        self._match = (DEFAULT_START if start is None else start).match
        self._parts: list[bytes] = []  # lines of the open entry; empty when none is open
        self._size = 0  # len(b"\n".join(self._parts))
        self._opened = 0.0  # `now` of the open entry's first line
        self._stamp = 0  # caller's stamp of the open entry's first line
        self._closed_by = _NONE
        # Counters read by the caller (telemetry); never reset here.
        self.entries = 0  # entries returned
        self.merged_entries = 0  # entries returned that hold more than one line
        self.merged_lines = 0  # continuation lines joined to an earlier line
        # Continuation lines that began an entry of their own because the entry
        # they continued had been closed by max_lines / max_bytes / max_wait.
        # (max_wait also counts a line that is really unrelated output which
        # matches no start pattern and follows a quiet pause.)
        self.split_max_lines = 0
        self.split_max_bytes = 0
        self.split_max_wait = 0

    @property
    def pending_lines(self) -> int:
        """Lines of the open entry."""
        return len(self._parts)

    @property
    def pending_bytes(self) -> int:
        """Size of the open entry (0 when none is open)."""
        return self._size

    def next_due(self) -> float | None:
        """`now` at which the open entry becomes due, None if none is open (idle: no timer)."""
        return self._opened + self.max_wait if self._parts else None

    def feed(self, lines: Sequence[bytes], now: float, stamps: Sequence[int] | None = None,
             out_stamps: list[int] | None = None) -> list[bytes]:
        """Add `lines` (read at `now`); return the entries they complete, in order.

        `stamps`, if given, has one int per line; see the module docstring.
        """
        out: list[bytes] = []
        # No release by time here: lines fed now were written before `now`, so
        # they continue the open entry however long it waited (the reader
        # pulls on a tick; releasing first would cut a traceback in two).
        # The loop keeps all state in locals (this runs once per line) and
        # writes it back at the end; an entry is emitted where it closes.
        append = out.append
        join = b"\n".join
        match = self._match
        max_lines = self.max_lines
        max_bytes = self.max_bytes
        parts = self._parts
        size = self._size
        opened = self._opened
        stamp = self._stamp
        closed_by = self._closed_by
        merged_lines = merged_entries = split_lines = split_bytes = split_wait = 0
        for index, line in enumerate(lines):
            if parts:
                if match(line) is None:
                    grown = size + 1 + len(line)
                    if grown <= max_bytes:
                        # The common continuation: join it to the open entry.
                        parts.append(line)
                        size = grown
                        opened = now  # max_wait counts from the last line joined
                        merged_lines += 1
                        if len(parts) < max_lines and size < max_bytes:
                            continue
                        # Full: no further line can join, so it is complete now.
                        closed_by = _LINES if len(parts) >= max_lines else _BYTES
                        append(join(parts))
                        merged_entries += 1
                        if out_stamps is not None:
                            out_stamps.append(stamp)
                        parts = []
                        size = 0
                        continue
                    # It does not fit: the entry ends here, the line begins the next.
                    split_bytes += 1
                # A start line (or one that did not fit) closes the open entry.
                if len(parts) == 1:
                    append(parts[0])
                else:
                    append(join(parts))
                    merged_entries += 1
                if out_stamps is not None:
                    out_stamps.append(stamp)
            elif closed_by != _NONE and match(line) is None:
                # No entry open, and this line continues one a bound closed.
                if closed_by == _WAIT:
                    split_wait += 1
                elif closed_by == _LINES:
                    split_lines += 1
                else:
                    split_bytes += 1
            # Begin an entry with `line`.
            parts = [line]
            size = len(line)
            opened = now
            stamp = stamps[index] if stamps is not None else 0
            closed_by = _NONE
            if max_lines == 1 or size >= max_bytes:
                closed_by = _LINES if max_lines == 1 else _BYTES
                append(line)
                if out_stamps is not None:
                    out_stamps.append(stamp)
                parts = []
                size = 0
        self._parts = parts
        self._size = size
        self._opened = opened
        self._stamp = stamp
        self._closed_by = closed_by
        self.entries += len(out)
        self.merged_entries += merged_entries
        self.merged_lines += merged_lines
        self.split_max_lines += split_lines
        self.split_max_bytes += split_bytes
        self.split_max_wait += split_wait
        return out

    def due(self, now: float, out_stamps: list[int] | None = None) -> list[bytes]:
        """The open entry, if no line joined it for `max_wait`; else [].

        Call it after reading what was written up to `now` (as Promtail's
        max_wait_time: the wait counts from the last line received).
        """
        if self._parts and now >= self._opened + self.max_wait:
            out: list[bytes] = []
            self._close(out, out_stamps, _WAIT)
            self.entries += 1
            return out
        return []

    def flush(self, out_stamps: list[int] | None = None) -> list[bytes]:
        """The open entry whatever its age (end of input, shutdown); [] if none."""
        out: list[bytes] = []
        if self._parts:
            self._close(out, out_stamps, _NONE)
            self.entries += 1
        self._closed_by = _NONE
        return out

    def _close(self, out: list[bytes], out_stamps: list[int] | None, closed_by: int) -> None:
        """Append the open entry to `out` (its stamp to `out_stamps`); no entry is open after."""
        parts = self._parts
        if len(parts) == 1:
            out.append(parts[0])
        else:
            out.append(b"\n".join(parts))
            self.merged_entries += 1
        if out_stamps is not None:
            out_stamps.append(self._stamp)
        self._parts = []
        self._size = 0
        self._closed_by = closed_by
