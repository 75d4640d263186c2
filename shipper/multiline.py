"""Multi-line entries: lines in, entries out. No IO; the clock is passed in.

A `Merger` joins the lines a reader takes for one entry (a log record and
its traceback, a message with newlines) and keeps every other line an entry
of its own (a `print()`). No line is ever dropped, reordered or held
without bound.

The default rule is a grammar per format, decided line by line by one
compiled regex (`_CLASSIFY`) and two tables (`_NEXT`, `_BEGIN`):

- A line that starts a record of any format begins a new entry, always:
  Airflow 2 `[2022-06-12T13:00:00.123+0000] {file.py:1} INFO - msg`
  (also a space separator, another datefmt, colored_console_log's ANSI
  codes); structlog's console format (Airflow 3 local runs)
  `2026-01-01T00:00:00.123456Z [info     ] msg [logger] loc=file.py:1`;
  a JSON record `{"...`; plain Python logging (a line starting with a
  timestamp, or basicConfig's `LEVEL:logger:msg`).
- Airflow 2: every line that is not a record start continues the open
  record. Airflow 2 wraps every `print()` in a record of its own
  (`{logging_mixin.py:N} INFO - `), so an unprefixed line is a traceback
  line or the rest of a multi-line message.
- structlog console: a record ends with the line that carries its
  ` [logger] key=value...` suffix; lines before that are the rest of its
  message. After the suffix only a traceback can follow (the exception the
  record was logged with, printed right after it); any other line is a
  print, an entry of its own.
- Plain Python logging: a record takes the indented lines right after it
  and a traceback; an unindented line is a print (prints are not wrapped
  there, so a multi-line message whose later lines are not indented is cut).
- JSON: one record per line, complete as it comes; nothing is glued to it.
- Tracebacks, after a record that may take one or on their own (an uncaught
  exception the interpreter printed): `Traceback (most recent call last):`
  (or `  + Exception Group Traceback (most recent call last):`), then
  indented lines (frames, source lines, 3.11+ `^^^^` markers, an exception
  group's `| ` lines) and blank lines, then the final `ExcType: message`.
  After it, blank and indented lines, `During handling of the above
  exception, another exception occurred:` / `The above exception was the
  direct cause of the following exception:` and the next traceback of the
  chain continue it; any other line begins a new entry.
- Any other line with no entry to continue is an entry of its own.

A custom `start` pattern instead applies Promtail's "firstline" rule: a line
matching it begins a new entry; any other line continues the open entry (or,
with none open, begins one that the next lines continue).

An entry is closed, and returned, when:
- a line arrives that does not continue it (returned by that `feed()`);
- it cannot be continued at all (a JSON record, a print): at once;
- it holds `max_lines` lines, or no further line could fit in `max_bytes`
  (returned by the `feed()` that filled it, at once);
- the next line would take it over `max_bytes` (that line begins the next
  entry);
- `max_wait` seconds passed since its last line (`due(now)`);
- `flush()` (end of input, shutdown).
A line that continues an entry a bound closed (`max_lines`, `max_bytes`,
`max_wait`) begins the next entry in the same state, so the rest of a long
traceback stays together; such lines are counted (`split_max_*`).

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
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, islice, repeat
from itertools import count as numbered
from operator import getitem, ne

_ANSI = rb"(?:\x1b\[[0-9;]*m)*"
# What a line is: the number of the group that matched (`lastindex`), or
# _OTHER. Tried with re.match (anchored at the line start); one call a line.
_CLASSIFY = re.compile(
    # 1 Airflow 2: `[2022-06-12T13:00:00.123+0000] {...`, any datefmt after `[`, ANSI colours.
    rb"(\[" + _ANSI + rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d)"
    # 2 structlog console: `2026-01-01T00:00:00.123456Z [info     ] `.
    rb"|(" + _ANSI + rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.,\d]*(?:Z|[+-]\d\d:?\d\d)?" + _ANSI
    + rb" \[" + _ANSI + rb"[a-z]+ *" + _ANSI + rb"\] )"
    # 3 a JSON record (Airflow 3, python-json-logger).
    rb'|(\{")'
    # 4 plain Python logging: `%(asctime)s ...`, basicConfig's `LEVEL:logger:msg`.
    rb"|(" + _ANSI + rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):)"
    # 5 a traceback; 6 an exception group's.
    rb"|(Traceback \(most recent call last\):\Z)"
    rb"|( *\+ Exception Group Traceback \(most recent call last\):\Z)"
    # 7 between two tracebacks of a chain.
    rb"|((?:During handling of the above exception, another exception occurred"
    rb"|The above exception was the direct cause of the following exception):\Z)"
    # 8 indented; 9 blank.
    rb"|([ \t])"
    rb"|(\Z)")
_A2, _SC, _JSON, _PY, _TB, _GROUP, _SEP, _INDENT, _BLANK, _OTHER = range(1, 11)
_KINDS = 11

# Every line that begins a record of a known format: exactly kinds 1-4.
_STARTS = (rb"\[" + _ANSI + rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d"
           rb"|" + _ANSI + rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d"
           rb'|\{"'
           rb"|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):")
DEFAULT_START = re.compile(_STARTS)
# A run of whole record-start lines, each ending in b"\n", matched over a chunk's
# lines joined: every one of them but the last is an entry alone (the next line
# begins a new entry whatever the state), so a run costs one C-level scan and
# a slice instead of a Python iteration a line (the common case: a stream of
# records with a traceback now and then).
_RUN = re.compile(rb"(?:(?:" + _STARTS + rb")[^\n]*\n)*")
# Airflow 2's default record start, `[%(asctime)s]` with its ISO datefmt, as
# its first 17 bytes with every digit made 0 (a line head so translated and
# equal to it begins a record: group 1 of _CLASSIFY).
_A2_HEAD = slice(0, 17)
_A2_START = b"[0000-00-00T00:00"
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")


def _heads(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The first 17 bytes of each line (a C-level map)."""
    return map(getitem, lines, repeat(_A2_HEAD))  # type: ignore[arg-type]  # typeshed overloads getitem

# structlog console: the suffix of a record's last line, ` [logger]` and its
# sorted `key=value` pairs (Airflow's `loc=file.py:12`), searched (after
# removing ANSI codes, when the line has any).
_SC_END = re.compile(rb" \[[A-Za-z_][\w.\-]*\](?: [A-Za-z_][\w.\-]*=.*)?\Z")
_ANSI_CODE = re.compile(rb"\x1b\[[0-9;]*m")

# States of the open entry (what may continue it).
(_DONE, _GLUE, _SC_OPEN, _RECORD, _PY_RECORD, _TRACE, _TRACE_GROUP, _TRACE_END, _TRACE_SEP) = range(9)
_CHECK = -2  # a structlog line: _RECORD if it carries the suffix, else _SC_OPEN
_NO = -1  # the line does not continue the entry

# _NEXT[state * _KINDS + kind]: the state after a line of `kind` continues an
# entry in `state`, or _NO. A record start (kinds 1-4) never continues one.
_ROWS: dict[int, dict[int, int]] = {
    _DONE: {},
    _GLUE: {k: _GLUE for k in range(_TB, _OTHER + 1)},
    _SC_OPEN: {k: _CHECK for k in range(_TB, _OTHER + 1)},
    _RECORD: {_TB: _TRACE, _GROUP: _TRACE_GROUP},
    _PY_RECORD: {_TB: _TRACE, _GROUP: _TRACE_GROUP, _INDENT: _PY_RECORD},
    _TRACE: {_TB: _TRACE, _GROUP: _TRACE_GROUP, _SEP: _TRACE_SEP, _INDENT: _TRACE, _BLANK: _TRACE,
             _OTHER: _TRACE_END},
    # An exception group's lines are all indented: an unindented one after it is not its.
    _TRACE_GROUP: {_GROUP: _TRACE_GROUP, _SEP: _TRACE_SEP, _INDENT: _TRACE_GROUP, _BLANK: _TRACE_END},
    _TRACE_END: {_SEP: _TRACE_SEP, _INDENT: _TRACE_END, _BLANK: _TRACE_END},
    # After a separator: blank lines, then the next traceback (or, for one without
    # frames, its `ExcType: message` alone).
    _TRACE_SEP: {_TB: _TRACE, _GROUP: _TRACE_GROUP, _SEP: _TRACE_SEP, _INDENT: _TRACE_SEP, _BLANK: _TRACE_SEP,
                 _OTHER: _TRACE_END},
}
_NEXT = tuple(_ROWS[state].get(kind, _NO) for state in range(len(_ROWS)) for kind in range(_KINDS))
# _BEGIN[kind]: the state of an entry a line of `kind` begins (_DONE: complete at once).
_BEGIN = (_DONE, _GLUE, _CHECK, _DONE, _PY_RECORD, _TRACE, _TRACE_GROUP, _DONE, _DONE, _DONE, _DONE)

# Why the last entry was closed before a line that does not continue it closed
# it: the reason a continuation line arriving next is counted under.
_NONE, _LINES, _BYTES, _WAIT = 0, 1, 2, 3


def _sc_end(line: bytes) -> bool:
    """Whether a structlog console line carries the ` [logger] key=value` suffix of a record's last line."""
    if b"\x1b" in line:
        line = _ANSI_CODE.sub(b"", line)
    # Nearly always the last " [" (values seldom hold one): one match there, else a search.
    i = line.rfind(b" [")
    return i >= 0 and (_SC_END.match(line, i) is not None or _SC_END.search(line) is not None)


class Merger:
    """Joins continuation lines to their entry; see the module docstring.

    `start=None` means the default grammar. A custom pattern is applied with
    `start.match(line)`: anchored at the line start, as if it began with `^`.
    `max_lines=1` turns merging off (every line is an entry).
    """

    __slots__ = ("max_lines", "max_wait", "max_bytes", "_match", "_grammar", "_parts", "_size",
                 "_opened", "_stamp", "_state", "_closed_by", "entries", "merged_entries", "merged_lines",
                 "split_max_lines", "split_max_bytes", "split_max_wait")

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
        self._grammar = start is None
        self._match = (_CLASSIFY if start is None else start).match
        self._parts: list[bytes] = []  # lines of the open entry; empty when none is open
        self._size = 0  # len(b"\n".join(self._parts))
        self._opened = 0.0  # `now` of the open entry's last line
        self._stamp = 0  # caller's stamp of the open entry's first line
        self._state = _DONE  # what may continue the open entry (or the one a bound closed)
        self._closed_by = _NONE
        # Counters read by the caller (telemetry); never reset here.
        self.entries = 0  # entries returned
        self.merged_entries = 0  # entries returned that hold more than one line
        self.merged_lines = 0  # continuation lines joined to an earlier line
        # Continuation lines that began an entry of their own because the entry
        # they continued had been closed by max_lines / max_bytes / max_wait.
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
             out_stamps: list[int] | None = None, out_firsts: list[tuple[int, bytes]] | None = None) -> list[bytes]:
        """Add `lines` (read at `now`); return the entries they complete, in order.

        `stamps`, if given, has one int per line; see the module docstring.
        `out_firsts`, if given, gets `(i, first line)` for each returned entry
        `i` that joins several lines (what levels.detect_many reads of it).
        """
        if not self._grammar:
            return self._feed_firstline(lines, now, stamps, out_stamps)
        # Complexity above 15 on purpose: the per-line state machine is one loop
        # with its state in locals; split into helpers it would pay a Python call
        # a line (the hot path of the pod template's sources).
        out: list[bytes] = []
        # No release by time here: lines fed now were written before `now`, so
        # they continue the open entry however long it waited (the reader
        # pulls on a tick; releasing first would cut a traceback in two).
        # The loop keeps all state in locals (this runs once per line) and
        # writes it back at the end; an entry is emitted where it closes.
        append = out.append
        join = b"\n".join
        match = self._match
        begin = _BEGIN
        table = _NEXT
        max_lines = self.max_lines
        max_bytes = self.max_bytes
        parts = self._parts
        size = self._size
        opened = self._opened
        stamp = self._stamp
        state = self._state
        closed_by = self._closed_by
        merged_lines = merged_entries = split_lines = split_bytes = split_wait = 0
        count = len(lines)
        blob = join(lines) if count > 2 else b""
        run = _RUN.match
        pos = 0  # offset of lines[index] in blob
        index = -1
        try_run = True  # whether lines[index:] may begin a run of record starts
        while True:
            index += 1
            if index >= count:
                break
            if try_run:
                rest = count - index
                if rest >= 2 and blob.startswith(b'{"', pos) and all(
                        map(bytes.startswith, islice(lines, index + 1, None), repeat(b'{"'))):
                    # JSON records to the end (Airflow 3 on a raw source): a C-level
                    # look at each line's first two bytes, not a scan of every byte.
                    starts = rest
                    end = len(blob) + 1
                elif rest >= 2 and (starts := next(compress(numbered(), map(ne, map(
                        bytes.translate, _heads(islice(lines, index, None)), repeat(_DIGITS_TO_0)),
                        repeat(_A2_START))), rest)) >= 2:
                    # Airflow 2 records from here (`[2026-11-25T10:00`, digits
                    # aside the same 17 bytes): a C-level look at each line's
                    # head; 1.7 times cheaper than _RUN, which steps through
                    # every byte of every line.
                    end = pos + sum(map(len, islice(lines, index, index + starts))) + starts
                else:
                    end = run(blob, pos).end()  # type: ignore[union-attr]  # `*` always matches
                    starts = blob.count(b"\n", pos, end) if end > pos else 0
                if starts >= 2:
                    # Whole record starts from here: the open entry ends, and all
                    # but the last of them are entries alone.
                    if parts:
                        if len(parts) == 1:
                            append(parts[0])
                        else:
                            append(join(parts))
                            merged_entries += 1
                            if out_firsts is not None:
                                out_firsts.append((len(out) - 1, parts[0]))
                        if out_stamps is not None:
                            out_stamps.append(stamp)
                        parts = []
                        size = 0
                    last = index + starts - 1
                    out += lines[index:last]
                    if out_stamps is not None:
                        out_stamps += stamps[index:last] if stamps is not None else [0] * (last - index)
                    state = _DONE
                    closed_by = _NONE
                    index = last
                    pos = end - len(lines[last]) - 1
            line = lines[index]
            pos += len(line) + 1
            m = match(line)
            # (Every alternative of _CLASSIFY is a group: lastindex is never None.)
            kind: int = _OTHER if m is None else m.lastindex  # type: ignore[assignment]
            try_run = kind <= _PY
            # What the line does to the entry open (or to the one a bound closed).
            after = table[state * _KINDS + kind]
            if after == _CHECK:
                after = _RECORD if _sc_end(line) else _SC_OPEN
            if parts:
                if after > 0:
                    grown = size + 1 + len(line)
                    if grown <= max_bytes:
                        # The common continuation: join it to the open entry.
                        parts.append(line)
                        size = grown
                        state = after
                        opened = now  # max_wait counts from the last line joined
                        merged_lines += 1
                        if len(parts) < max_lines and size < max_bytes:
                            continue
                        # Full: no further line can join, so it is complete now.
                        closed_by = _LINES if len(parts) >= max_lines else _BYTES
                        append(join(parts))
                        merged_entries += 1
                        if out_firsts is not None:
                            out_firsts.append((len(out) - 1, parts[0]))
                        if out_stamps is not None:
                            out_stamps.append(stamp)
                        parts = []
                        size = 0
                        continue
                    # It does not fit: the entry ends here, the line begins the
                    # next one, which goes on in the same state.
                    split_bytes += 1
                else:
                    after = begin[kind]
                # The entry ends before this line.
                if len(parts) == 1:
                    append(parts[0])
                else:
                    append(join(parts))
                    merged_entries += 1
                    if out_firsts is not None:
                        out_firsts.append((len(out) - 1, parts[0]))
                if out_stamps is not None:
                    out_stamps.append(stamp)
            elif closed_by != _NONE and after > 0:
                # No entry open, and this line continues one a bound closed.
                if closed_by == _WAIT:
                    split_wait += 1
                elif closed_by == _LINES:
                    split_lines += 1
                else:
                    split_bytes += 1
            else:
                after = begin[kind]
            if after == _CHECK:
                after = _RECORD if _sc_end(line) else _SC_OPEN
            # Begin an entry with `line`.
            state = after
            closed_by = _NONE
            if after == _DONE or max_lines == 1 or len(line) >= max_bytes:
                # Nothing can continue it: complete at once.
                if after != _DONE:
                    closed_by = _LINES if max_lines == 1 else _BYTES
                append(line)
                if out_stamps is not None:
                    out_stamps.append(stamps[index] if stamps is not None else 0)
                parts = []
                size = 0
                continue
            parts = [line]
            size = len(line)
            opened = now
            stamp = stamps[index] if stamps is not None else 0
        self._parts = parts
        self._size = size
        self._opened = opened
        self._stamp = stamp
        self._state = state
        self._closed_by = closed_by
        self.entries += len(out)
        self.merged_entries += merged_entries
        self.merged_lines += merged_lines
        self.split_max_lines += split_lines
        self.split_max_bytes += split_bytes
        self.split_max_wait += split_wait
        return out

    def _feed_firstline(self, lines: Sequence[bytes], now: float, stamps: Sequence[int] | None,
                        out_stamps: list[int] | None) -> list[bytes]:
        """feed() with a custom start pattern: Promtail's firstline rule.

        A loop of its own (the grammar's bookkeeping a line made this path 9 %
        slower in benchmarks.inprocess): a line matching `start` begins an
        entry, any other line joins the open one.
        """
        # Complexity above 15 on purpose, as feed's: one loop a line, state in locals.
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
        self._state = _DONE
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
