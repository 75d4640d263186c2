"""Source formats: lines in, records out. No IO.

Each parser turns the complete lines of one source (from a LineSplitter) into
`Record`s: the line to ship plus what the format says about it. All share
one interface (`Parser`): `feed(lines) -> list[Record]` and, for the state a
format may hold across lines, `flush() -> list[Record]` at end of input.

- `RawParser`: each line as it is (the default format).
- `CriParser`: Kubernetes node log files (`/var/log/pods/...`, FACTS §3):
  `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <message>`. The prefix is
  stripped; `P` chunks of a stream are joined until its `F` into one line;
  the record carries the CRI time and stream.
- `JsonParser`: Airflow 3 task logs, one JSON object per line
  (`{"timestamp":...,"level":...,"event":...,"logger":...}`): the record's
  `timestamp` is its time, `event` its line (or the line is kept whole),
  `level` its level, chosen keys become structured metadata.

Never dropped: a line a parser cannot read (malformed CRI prefix, invalid
JSON, a missing key, an unreadable timestamp) becomes a record of the line
exactly as it came, with no time, stream, metadata or level, and is counted
in the parser's `malformed`.

Lines given are expected as a LineSplitter yields them (no terminator, valid
UTF-8); every record's line is then valid UTF-8 too. CriParser also takes
lines whose invalid UTF-8 was not replaced yet, and replaces it itself after
joining P chunks (see CriParser).
"""

from __future__ import annotations

import json
import re
from itertools import repeat
from operator import add, getitem, mul
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.scanner import make_scanner
from typing import Any, NamedTuple, Protocol, cast

from shipper import levels
from shipper.framing import LineSplitter

Metadata = tuple[tuple[str, str], ...]


class Record(NamedTuple):
    """One line to ship and what its format told about it."""

    line: bytes  # valid UTF-8, no terminator
    ts_ns: int | None = None  # the record's own time (epoch ns); None: stamp at read time
    stream: str | None = None  # "stdout" / "stderr" (CRI); None when unknown
    metadata: Metadata = ()  # structured metadata pairs for this entry
    level: str | None = None  # normalised level the format stated; None: use levels.detect(line)


# Records are built with `record_new(Record, (line, ts_ns, stream, metadata,
# level))`, all fields given: a NamedTuple's own __new__ costs about twice as
# much, on paths taken once per line (here and in shipper.process).
record_new = tuple.__new__


class Parser(Protocol):
    """What every format offers the pipeline."""

    malformed: int

    def feed(self, lines: Sequence[bytes]) -> list[Record]:
        """Records for `lines`, in order; a stateful format may hold some back."""
        ...

    def flush(self) -> list[Record]:
        """Records held back (end of input, rotation, shutdown)."""
        ...


class RawParser:
    """Each line as it is."""

    malformed = 0

    def feed(self, lines: Sequence[bytes]) -> list[Record]:
        return [record_new(Record, (line, None, None, (), None)) for line in lines]

    def flush(self) -> list[Record]:
        return []


# --- timestamps ----------------------------------------------------------------

_NS = 1_000_000_000
# Nanoseconds per unit of the last digit of an n-digit fraction, n = 0..9.
_SCALE = (0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)
_DATETIME = re.compile(rb"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)\Z")
_TAIL = re.compile(rb"(?:[.,](\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))?\Z")
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Epoch seconds of `YYYY-MM-DDTHH:MM:SS` prefixes seen lately: log times
# repeat their second for many lines. Bounded: cleared when full.
_SECONDS: dict[bytes, int] = {}
_SECONDS_MAX = 256


def parse_time(ts: bytes) -> int | None:
    """Epoch ns of an RFC 3339 / ISO 8601 timestamp, or None if it is not one.

    `YYYY-MM-DD(T|t|space)HH:MM:SS[(.|,)fraction][Z|z|+HH:MM|+HHMM]`: what
    containerd/CRI-O (RFC3339Nano: 0-9 fraction digits, `Z` or an offset),
    structlog (`...123456Z`) and Python's isoformat (`...+00:00`) write.
    Digits past the ninth are truncated. No offset means UTC.
    """
    second = _SECONDS.get(ts[:19])
    # Fast path: a second seen lately, then `.` 1-9 digits `Z` (CRI, structlog).
    if second is not None and 21 < len(ts) <= 30 and ts[-1] == 0x5A and ts[19] == 0x2E:
        digits = ts[20:-1]
        if digits.isdigit():
            return second * _NS + int(digits) * _SCALE[len(digits)]
    return _parse_time(ts, second)


def _parse_time(ts: bytes, second: int | None) -> int | None:
    if second is None:
        second = _epoch_second(ts[:19])
        if second is None:
            return None
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        _SECONDS[ts[:19]] = second
    m = _TAIL.match(ts, 19)
    if m is None:
        return None
    digits = m[1] or b""
    ns = int(digits[:9]) * _SCALE[min(len(digits), 9)] if digits else 0
    if m[3] is not None:
        hours, minutes = int(m[4]), int(m[5])
        if hours > 23 or minutes > 59:
            return None
        offset = hours * 3600 + minutes * 60
        second -= offset if m[3] == b"+" else -offset
    return second * _NS + ns


def _epoch_second(head: bytes) -> int | None:
    """Epoch seconds of `YYYY-MM-DDTHH:MM:SS` (UTC), None if invalid."""
    m = _DATETIME.match(head)
    if m is None:
        return None
    year, month, day, hour, minute, second = map(int, m.groups())
    if not (1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 59):
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _MONTH_DAYS[month] + (month == 2 and leap):
        return None
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


# --- CRI -------------------------------------------------------------------------

_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}
_CRI_FRACTION = slice(20, -1)  # of `YYYY-MM-DDTHH:MM:SS.f...Z`
_SECOND_BYTES = slice(0, 19)
_PAD = [b"0" * (9 - n) for n in range(10)]  # zeros that make an n-digit fraction nanoseconds


class CriParser:
    """Kubernetes CRI log lines; see the module docstring.

    `P` chunks are joined per stream (stdout and stderr interleave in one
    file), and the joined line gets the time of its first chunk. A joined line
    longer than `max_bytes` is shipped in pieces of at most that size, cut on
    character boundaries, as it grows (so a never-ending `P` run holds about
    `max_bytes` per stream). Invalid UTF-8 is replaced after joining, so a
    character cut between two chunks survives when the lines given were not
    cleaned yet (a LineSplitter that already replaced invalid UTF-8 turns such
    a character into two U+FFFD first).
    """

    __slots__ = ("max_bytes", "_partial", "_oneshot", "malformed", "joined_lines", "cut_lines",
                 "invalid_utf8_lines")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # stream -> (splitter holding its P chunks so far, time of the first chunk)
        self._partial: dict[str, tuple[LineSplitter, int]] = {}
        self._oneshot = LineSplitter(max_bytes)  # cleans and cuts an unusual F line
        # Counters read by the caller (telemetry); never reset here.
        self.malformed = 0  # lines that were not CRI, shipped as they came
        self.joined_lines = 0  # lines made of P chunks
        self.cut_lines = 0  # cuts made in lines longer than max_bytes
        self.invalid_utf8_lines = 0  # lines in which invalid UTF-8 was replaced

    @property
    def pending_bytes(self) -> int:
        """Bytes of P chunks waiting for their F."""
        return sum(s.pending_bytes for s, _ in self._partial.values())

    def feed(self, lines: Sequence[bytes]) -> list[Record]:
        # Complexity above 15 on purpose: the fast path for a whole F line is
        # inlined in the per-line loop (a helper would cost a call a line).
        out: list[Record] = []
        append = out.append
        max_bytes = self.max_bytes
        partial = self._partial
        streams_get = _STREAMS.get
        seconds_get = _SECONDS.get
        for line in lines:
            fields = line.split(b" ", 3)
            # Fast path, nearly every line: a whole (F) ASCII line, no P chunks
            # waiting, and a time whose second was seen lately (parse_time's
            # fast path, inlined: this loop runs once per line).
            if len(fields) == 4 and fields[2] == b"F" and not partial:
                ts_field, stream_field, _, message = fields
                stream = streams_get(stream_field)
                second = seconds_get(ts_field[:19])
                if (stream is not None and second is not None and 21 < len(ts_field) <= 30
                        and ts_field[-1] == 0x5A and ts_field[19] == 0x2E and (digits := ts_field[20:-1]).isdigit()
                        and len(message) <= max_bytes and message.isascii()):
                    when = second * _NS + int(digits) * _SCALE[len(digits)]
                    append(record_new(Record, (message, when, stream, (), None)))
                    continue
            if len(fields) == 4:
                ts_field, stream_field, tag, message = fields
            elif len(fields) == 3:
                ts_field, stream_field, tag = fields  # `<time> <stream> F`: an empty message
                message = b""
            else:
                append(self._malformed(line))
                continue
            stream = _STREAMS.get(stream_field)
            ts = parse_time(ts_field) if stream is not None else None
            if tag != b"F" and tag != b"P":
                tag = tag.split(b":", 1)[0]  # `F:tag2:...`: the first tag decides
            if ts is None or (tag != b"F" and tag != b"P"):
                append(self._malformed(line))
                continue
            assert stream is not None
            pending = partial.get(stream)
            if tag == b"F" and pending is None:
                if len(message) <= max_bytes and (message.isascii() or _is_utf8(message)):
                    append(record_new(Record, (message, ts, stream, (), None)))
                else:
                    for piece in self._oneshot.feed(message) + self._oneshot.flush():
                        append(record_new(Record, (piece, ts, stream, (), None)))
                    self._count(self._oneshot)
                continue
            if pending is None:
                pending = partial[stream] = (LineSplitter(max_bytes), ts)
            splitter, first_ts = pending
            pieces = splitter.feed(message)
            if tag == b"F":
                # flush() gives nothing only when the whole line is empty (after
                # a cut, the rest held back is never empty): still one line.
                pieces += splitter.flush() or [b""]
                del partial[stream]
                self.joined_lines += 1
            for piece in pieces:
                append(record_new(Record, (piece, first_ts, stream, (), None)))
            self._count(splitter)
        return out

    def columns(self, lines: Sequence[bytes]) -> list[Record] | tuple[list[bytes], list[int], list[str]]:
        """`feed(lines)`, as columns (messages, times, streams) when every line has the usual shape.

        Nearly every line of a container log is a whole ASCII line with a time
        of the usual shape: a chunk of those is read by C-level passes (split,
        zip, dict lookups, one int parse a time), not a Record each. P chunks
        among them go through `feed` line by line, in order, and their joined
        lines are put back in the columns where `feed` returns them, so a chunk
        stays one set of columns. A chunk with any other line (malformed,
        another tag or time shape, non-ASCII or long) is `feed`'s records.
        Either way the entries, in order, are exactly `feed`'s.
        """
        fields = list(map(bytes.split, lines, repeat(b" "), repeat(3)))
        if not fields or set(map(len, fields)) != {4}:
            return self.feed(lines)
        stamps, names, tags, messages = zip(*fields)
        whole = self._whole_lines(stamps, names, tags, messages)
        if whole is None:
            return self.feed(lines)
        n = len(lines)
        if tags.count(b"F") == n and not self._partial:
            return whole  # the usual chunk
        cut_messages, cut_times, cut_streams = whole
        out_messages: list[bytes] = []
        out_times: list[int] = []
        out_streams: list[str] = []
        start = 0
        while start < n:
            if self._partial or tags[start] != b"F":
                # A P chunk, or a line while a P run waits: one line the per-line way. Every line
                # has the usual shape (checked above), so each record has its time and stream.
                for record in self.feed(lines[start:start + 1]):
                    assert record.ts_ns is not None and record.stream is not None
                    out_messages.append(record.line)
                    out_times.append(record.ts_ns)
                    out_streams.append(record.stream)
                start += 1
                continue
            try:
                end = tags.index(b"P", start)  # the F run ends at the next P
            except ValueError:
                end = n
            out_messages += cut_messages[start:end]
            out_times += cut_times[start:end]
            out_streams += cut_streams[start:end]
            start = end
        return out_messages, out_times, out_streams

    def _whole_lines(self, stamps: Sequence[bytes], names: Sequence[bytes], tags: Sequence[bytes],
                     messages: Sequence[bytes]) -> tuple[list[bytes], list[int], list[str]] | None:
        """Columns of CRI lines split in four (F or P), when every one has feed's fast shape; else None."""
        if tags.count(b"F") + tags.count(b"P") != len(tags):
            return None  # another tag (`F:x`, malformed): the per-line way
        streams: list[Any] = list(map(_STREAMS.get, names))
        if None in streams or max(map(len, messages)) > self.max_bytes or not b"".join(messages).isascii():
            return None
        times = _cri_times(stamps)
        if times is None:
            return None
        return list(messages), times, streams

    def flush(self) -> list[Record]:
        """Lines whose F never came, one per stream (end of input, rotation)."""
        out: list[Record] = []
        for stream, (splitter, first_ts) in self._partial.items():
            out += [record_new(Record, (piece, first_ts, stream, (), None))
                    for piece in splitter.flush() or [b""]]
            self.joined_lines += 1
            self._count(splitter)
        self._partial.clear()
        return out

    def _malformed(self, line: bytes) -> Record:
        self.malformed += 1
        if not (line.isascii() or _is_utf8(line)):
            line = line.decode("utf-8", "replace").encode("utf-8")
            self.invalid_utf8_lines += 1
        return record_new(Record, (line, None, None, (), None))

    def _count(self, splitter: LineSplitter) -> None:
        self.cut_lines += splitter.split_lines
        self.invalid_utf8_lines += splitter.invalid_utf8_lines
        splitter.split_lines = splitter.invalid_utf8_lines = 0


def _cri_times(stamps: Sequence[bytes]) -> list[int] | None:
    """Epoch ns of each CRI time of the usual shape (`YYYY-MM-DDTHH:MM:SS.f...Z`, 1 to 9
    fraction digits: RFC3339Nano trims zeros), as parse_time reads it; None unless all are."""
    lengths = set(map(len, stamps))
    # `YYYY-MM-DDTHH:MM:SS.f...Z`, 1 to 9 fraction digits (RFC3339Nano trims zeros).
    if min(lengths) < 22 or max(lengths) > 30 or set(map(getitem, stamps, repeat(19))) != {0x2E} \
            or set(map(getitem, stamps, repeat(-1))) != {0x5A}:
        return None
    fractions: list[bytes] = list(map(getitem, stamps, repeat(_CRI_FRACTION)))  # type: ignore[arg-type]  # typeshed overloads getitem
    if not b"".join(fractions).isdigit():
        return None
    heads: list[bytes] = list(map(getitem, stamps, repeat(_SECOND_BYTES)))  # type: ignore[arg-type]
    seconds: dict[bytes, bytes] = {}
    for head in set(heads):
        second = _SECONDS.get(head)
        if second is None:
            second = _epoch_second(head)
            if second is None:
                return None
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            _SECONDS[head] = second
        seconds[head] = b"%d" % second
    if len(seconds) != 1 or min(seconds.values())[:1] == b"-":
        # Several seconds, or one before 1970: the arithmetic, per line.
        secs = {head: int(digits) for head, digits in seconds.items()}
        times = list(map(add, map(mul, map(secs.__getitem__, heads), repeat(_NS)),
                         map(mul, map(int, fractions), map(_SCALE.__getitem__, map(len, fractions)))))
    else:
        # One second (the usual read): its digits, then the fraction's padded to nine, as one int.
        (digits,) = seconds.values()
        nines = fractions if lengths == {30} else list(map(add, fractions, map(_PAD.__getitem__, map(len, fractions))))
        times = list(map(int, map(digits.__add__, nines)))
    return times


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- JSON ------------------------------------------------------------------------



# Where Airflow's structlog puts a record's exception: Airflow 3.3 `error_detail`
# (a list of stacks), structlog's default `exception` (a list, or a string).
DEFAULT_EXCEPTION_KEYS = ("error_detail", "exception")


class JsonParser:
    """JSON lines, Airflow 3 task logs by default; see the module docstring.

    `metadata`: record keys to send as structured metadata, either names
    (the metadata name is the key) or a mapping key -> metadata name. Values
    are sent as text: strings as they are, other values as compact JSON
    (`1234`, `true`); null and "" are left out, and so are missing keys.
    `keep_record=True` ships the line whole instead of its `event`.
    `time_key` must be present with a parsable timestamp (else the line is
    malformed); so must `message_key` unless keep_record. The record's
    `level_key` value, normalised, becomes the Record's level.
    `exception_keys`: the first of these keys the record holds a traceback in
    (Airflow 3.3's `"error_detail": [{"exc_type":..., "frames": [...]}]`,
    structlog's `"exception"` list or string) is rendered Python-style after
    the event (`render_exception`), so the traceback reads as one entry with
    its log line and keeps the record's level; () renders none.
    `max_bytes`: should the line so built be longer (a rendered traceback can
    outgrow its JSON), the record is shipped whole instead (counted in
    `kept_whole`), so a line never exceeds what the input line did.
    """

    __slots__ = ("keep_record", "time_key", "message_key", "level_key", "exception_keys", "max_bytes",
                 "_metadata", "_keys", "_cache", "malformed", "kept_whole")

    def __init__(self, *, metadata: Mapping[str, str] | Iterable[str] = (), keep_record: bool = False,
                 time_key: str = "timestamp", message_key: str = "event", level_key: str = "level",
                 exception_keys: Sequence[str] = DEFAULT_EXCEPTION_KEYS, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.keep_record = keep_record
        self.time_key = time_key
        self.message_key = message_key
        self.level_key = level_key
        self.exception_keys = tuple(exception_keys)
        pairs = metadata.items() if isinstance(metadata, Mapping) else ((k, k) for k in metadata)
        self._metadata: tuple[tuple[str, str], ...] = tuple(pairs)
        self._keys = tuple(key for key, _ in self._metadata)
        self._cache: dict[tuple[object, ...], Metadata] = {}  # record values -> metadata
        # Counters read by the caller (telemetry); never reset here.
        self.malformed = 0  # lines shipped as they came (not JSON, or a key missing)
        self.kept_whole = 0  # records shipped whole because their event line exceeded max_bytes

    def feed(self, lines: Sequence[bytes]) -> list[Record]:
        parse = self.parse
        return [parse(line) for line in lines]

    def flush(self) -> list[Record]:
        return []

    def columns(self, lines: Sequence[bytes]) -> tuple[list[bytes], list[int], list[Metadata] | None,
                                                       list[str | None]] | None:
        """`feed(lines)` as columns (lines, times, metadata or None, levels), for a chunk whose
        every line is a record this parser reads the common way; None for any other chunk
        (the caller then uses `feed`, one line at a time).

        The common way: a JSON object with a string time of Airflow 3's shape
        (`2026-11-25T10:00:00.123456Z`), a string message (or keep_record), no
        exception to render, nothing over max_bytes. Each step is one C-level
        pass over the chunk (the scanner, dict.get, str.encode by map), so a
        chunk costs a few Python operations, not a dozen a line.
        """
        records = _objects(lines)
        if records is None:
            return None
        get = dict.get
        times = _airflow_times(list(map(get, records, repeat(self.time_key))))
        if times is None:
            return None
        out = list(lines) if self.keep_record else self._events(records)
        if out is None:
            return None
        found_levels = list(map(get, records, repeat(self.level_key)))
        return out, times, self._metadata_column(records), _levels_column(found_levels)

    def _events(self, records: Sequence[dict[str, Any]]) -> list[bytes] | None:
        """Each record's message as the line, or None when one needs the per-line path
        (an exception to render, a message that is not text, a lone surrogate, over max_bytes)."""
        get = dict.get
        for key in self.exception_keys:
            if any(map(get, records, repeat(key))):
                return None  # a traceback to render
        events: list[Any] = list(map(get, records, repeat(self.message_key)))
        if set(map(type, events)) != {str}:
            return None
        try:
            out = list(map(str.encode, events))
        except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
            return None
        if self.max_bytes is not None and max(map(len, out)) > self.max_bytes:
            return None
        return out

    def _metadata_column(self, records: Sequence[dict[str, Any]]) -> list[Metadata] | None:
        """Each record's metadata pairs (None: no metadata keys configured)."""
        if not self._metadata:
            return None
        get = dict.get
        # Value tuples of the metadata keys, looked up in the cache by a C-level map
        # (it holds only all-text tuples; any other tuple misses, or is unhashable).
        values = list(zip(*[map(get, records, repeat(key)) for key in self._keys]))
        try:
            cached: list[Metadata | None] = list(map(self._cache.get, values))
        except TypeError:  # a list or object value
            cached = [None] * len(values)
        if None not in cached:
            return cast("list[Metadata]", cached)
        keys = self._keys
        return [md if md is not None else self._metadata_of(dict(zip(keys, v)).get) for md, v in zip(cached, values)]

    def parse(self, line: bytes) -> Record:
        """The record of one line (no state: usable on CRI messages too)."""
        # Complexity above 15 on purpose: this runs once per line of every chunk
        # `columns` cannot take (an exception to render, another time shape), so
        # its steps stay inline rather than a Python call each.
        # Runs once per line: json's C scanner is called directly (decode()
        # wraps it in two Python calls and two regex matches, as much again),
        # and levels and metadata values, which repeat, come from caches.
        if line[:1] != b"{":
            return self._raw(line)
        try:
            text = line.decode("utf-8")
            record, end = _scan(text, 0)
        except (ValueError, StopIteration, RecursionError):  # not JSON, or nested past the C stack
            return self._raw(line)
        if end != len(text) and not text[end:].isspace() or type(record) is not dict:
            return self._raw(line)
        get = record.get
        when = get(self.time_key)
        ts = parse_time(when.encode()) if type(when) is str else None
        if ts is None:
            return self._raw(line)
        if self.keep_record:
            out = line
        else:
            event = get(self.message_key)
            if event is None:
                return self._raw(line)
            message = event if type(event) is str else _compact(event)
            for key in self.exception_keys:
                exc = get(key)
                if exc:
                    rendered = render_exception(exc)
                    if rendered:
                        message = f"{message}\n{rendered}" if message else rendered
                        break
            try:
                out = message.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
                out = message.encode("utf-8", "replace")
            if self.max_bytes is not None and len(out) > self.max_bytes:
                self.kept_whole += 1
                out = line
        level = get(self.level_key)
        level = levels.normalize(level) if type(level) is str else None
        metadata: Metadata = ()
        if self._metadata:
            metadata = self._metadata_of(get)
        return record_new(Record, (out, ts, None, metadata, level))

    def _metadata_of(self, get: Callable[[str], object]) -> Metadata:
        values = tuple(map(get, self._keys))
        try:
            found = self._cache.get(values)
        except TypeError:  # a list or object value: not hashable, not cached
            found = None
        if found is not None:
            return found
        pairs = []
        for (_, name), value in zip(self._metadata, values):
            if value is not None and value != "":
                pairs.append((name, _text(value)))
        metadata = tuple(pairs)
        # Only all-text keys are kept: 1 == True == 1.0 as dict keys, but
        # their metadata text differs; a str key equals only itself.
        if all(v is None or type(v) is str for v in values):
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[values] = metadata
        return metadata

    def _raw(self, line: bytes) -> Record:
        self.malformed += 1
        return record_new(Record, (line, None, None, (), None))


# Normalised levels of the spellings records use (levels.normalize's fast cases).
_LEVELS = {name: levels.normalize(name) for name in
           ("trace", "debug", "info", "warning", "warn", "error", "exception", "critical", "fatal",
            "TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "EXCEPTION", "CRITICAL", "FATAL")}
# Epoch seconds of `YYYY-MM-DDTHH:MM:SS` prefixes (as text) seen lately; bounded as _SECONDS.
_SECONDS_TEXT: dict[str, str] = {}  # the epoch second's decimal digits
_TIME_SHAPE = slice(19, None, 7)  # of `...:SS.ffffffZ`: the "." and the "Z"
_FRACTION = slice(20, 26)
_SECOND = slice(0, 19)


def _objects(lines: Sequence[bytes]) -> list[dict[str, Any]] | None:
    """Each line as the JSON object it holds whole, or None unless every line does
    (JsonParser.columns: the scanner over the chunk by a C-level map)."""
    if not lines:
        return None
    try:
        texts = list(map(bytes.decode, lines))
        scanned = list(map(_scan, texts, repeat(0)))
    except (ValueError, StopIteration, RecursionError):
        return None
    if len(scanned) != len(texts):
        # The scanner's StopIteration (no JSON value at all) ends map() early instead of raising.
        return None
    records, ends = zip(*scanned)
    if list(ends) != list(map(len, texts)) or set(map(type, records)) != {dict}:
        return None  # trailing text after a record, or a line that is not an object
    return list(records)


def _levels_column(found: list[Any]) -> list[str | None]:
    """Each record's level value, normalised (levels.normalize), None where it is not text."""
    if set(map(type, found)) <= {str}:
        entry_levels: list[str | None] = list(map(_LEVELS.get, found))
        if None in entry_levels:  # another spelling ("Warn"): normalised one by one
            entry_levels = [levels.normalize(v) for v in found]
        return entry_levels
    return [levels.normalize(v) if type(v) is str else None for v in found]


def _parts(texts: list[str], part: slice) -> list[str]:
    """`[t[part] for t in texts]`, by a C-level map."""
    return list(map(getitem, texts, repeat(part)))


def _airflow_times(whens: list[object]) -> list[int] | None:
    """Epoch ns of each `YYYY-MM-DDTHH:MM:SS.ffffffZ` (Airflow 3's record time), None unless all are.

    C-level passes (lengths, shape, digits by map), then one dict lookup per
    distinct second; what parse_time would make of each, for this shape.
    """
    if set(map(type, whens)) != {str}:
        return None
    texts: list[str] = whens  # type: ignore[assignment]  # all str, checked above
    if set(map(len, texts)) != {27} or set(_parts(texts, _TIME_SHAPE)) != {".Z"}:
        return None
    fractions = _parts(texts, _FRACTION)
    if not all(map(str.isdigit, fractions)) or not all(map(str.isascii, fractions)):
        return None
    heads = _parts(texts, _SECOND)
    cache = _SECONDS_TEXT
    seconds: dict[str, str] = {}  # this chunk's, so a full cache cleared meanwhile loses none
    for head in set(heads):
        digits = cache.get(head)
        if digits is None:
            second = _epoch_second(head.encode()) if head.isascii() else None
            if second is None or second < 0:  # before 1970: the digits trick needs a positive second
                return None
            digits = str(second)
            if len(cache) >= _SECONDS_MAX:
                cache.clear()
            cache[head] = digits
        seconds[head] = digits
    # The epoch second's digits, the fraction's, and three zeros, read as one int:
    # one parse a record (cheaper than two ints, a product and a sum of big ints).
    return list(map(int, map(add, map(add, map(seconds.__getitem__, heads), fractions), repeat("000"))))


# One JSON value at an index -> (value, end); StopIteration or ValueError if none.
_scan = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed types the class as its own argument
# Bound of the metadata cache (distinct value tuples, e.g. logger names), cleared when full.
_CACHE_MAX = 256


# json.dumps with non-default options builds an encoder per call; this one is built once.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _text(value: object) -> str:
    """A metadata value as text, encodable as UTF-8: strings as they are, others as JSON."""
    kind = type(value)
    if kind is str:
        return _clean(value)  # type: ignore[arg-type]
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    return _clean(_compact(value))


def _clean(text: str) -> str:
    """`text`, with lone surrogates (JSON `\\ud800` escapes) replaced: never fails to encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# Between two exceptions of a chain, as Python prints them (traceback._cause_message/_context_message).
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def render_exception(exc: object) -> str | None:
    """A Python-style traceback of a structured exception value, None if not one.

    A string (structlog's format_exc_info, Airflow 2-era `exception`) is
    returned as it is. A list of stacks (structlog's ExceptionDictTransformer:
    Airflow 3 writes it as `error_detail`) is rendered as Python prints it:
    the list holds the raised exception first, then its cause or context
    (`is_cause` of a stack says whether it was the `__cause__` of the one
    before it), and Python prints the oldest first, each followed by "The
    above exception was the direct cause of the following exception:" or
    "During handling of the above exception, another exception occurred:".
    Each stack is `Traceback (most recent call last):`, a `  File "f", line
    N, in name` per frame (and its source line when given), then `ExcType:
    value`, its notes (`exc_notes`); a SyntaxError gets its location and
    caret; an exception group (`is_group`, `exceptions`) its sub-exceptions
    inside Python's `| ` margins.
    """
    if isinstance(exc, str):
        return exc
    if not _is_stacks(exc):
        return None
    out: list[str] = []
    _render_chain(exc, 0, out, [False])  # type: ignore[arg-type]  # checked by _is_stacks
    return _clean("".join(out).rstrip("\n"))


def _is_stacks(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(s, dict) for s in value)


def _emit(out: list[str], depth: int, text: str, margin: str = "|") -> None:
    """Append `text` (whole lines), indented for an exception group `depth` deep (traceback._ExceptionPrintContext)."""
    if not depth:
        out.append(text)
        return
    prefix = "  " * depth + margin + " "
    out.extend(prefix + line + "\n" for line in text.splitlines())


def _render_chain(stacks: list[dict[str, object]], depth: int, out: list[str], need_close: list[bool]) -> None:
    """One exception and its causes (structlog's Trace.stacks), oldest first, at group `depth`.

    `need_close` is traceback's `_ctx.need_close`: a group ending in a group shares its closing line.
    """
    for i in range(len(stacks) - 1, -1, -1):
        stack = stacks[i]
        if i < len(stacks) - 1:
            _emit(out, depth, _CAUSE if stacks[i + 1].get("is_cause") else _CONTEXT)
        subs = stack.get("exceptions")
        group = bool(stack.get("is_group")) and isinstance(subs, list) and bool(subs)
        toplevel = group and depth == 0
        at = 1 if toplevel else depth  # a top-level group's own lines sit in its margin
        _render_stack(stack, at, out, group, toplevel)
        if group:
            assert isinstance(subs, list)
            _render_group(subs, at, out, need_close)


def _render_stack(stack: dict[str, object], depth: int, out: list[str], group: bool, toplevel: bool) -> None:
    """One stack: its traceback header and frames (when it has frames), then `ExcType: value`."""
    frames = stack.get("frames")
    if isinstance(frames, list) and frames:
        if group:
            _emit(out, depth, "Exception Group Traceback (most recent call last):\n", "+" if toplevel else "|")
        else:
            _emit(out, depth, "Traceback (most recent call last):\n")
        _emit(out, depth, "".join(_frame(f) for f in frames if isinstance(f, dict)))
    _emit(out, depth, _exception_only(stack))


def _render_group(subs: list[object], depth: int, out: list[str], need_close: list[bool]) -> None:
    """An exception group's sub-exceptions, numbered, inside traceback's `+---` separators."""
    indent = "  " * depth
    need_close[0] = False
    for n, sub in enumerate(subs, 1):
        if n == len(subs):
            need_close[0] = True  # the closing line, unless a nested group's writes it
        out.append(f"{indent}{'+-' if n == 1 else '  '}+---------------- {n} ----------------\n")
        inner = sub.get("stacks") if isinstance(sub, dict) else None
        if _is_stacks(inner):
            _render_chain(inner, depth + 1, out, need_close)  # type: ignore[arg-type]  # checked by _is_stacks
        else:
            _emit(out, depth + 1, "Exception\n")
        if n == len(subs) and need_close[0]:
            out.append(f"{indent}  +------------------------------------\n")
            need_close[0] = False


def _frame(frame: dict[str, object]) -> str:
    text = f'  File "{frame.get("filename")}", line {frame.get("lineno")}, in {frame.get("name")}\n'
    source = frame.get("line")
    if isinstance(source, str) and source.strip():
        text += f"    {source.strip()}\n"
    return text


def _exception_only(stack: dict[str, object]) -> str:
    """`ExcType: value` and its notes, as traceback.format_exception_only writes them."""
    exc_type = stack.get("exc_type") or "Exception"
    value = stack.get("exc_value")
    text = ""
    syntax = stack.get("syntax_error")
    if isinstance(syntax, dict):
        text = f'  File "{syntax.get("filename")}", line {syntax.get("lineno")}\n'
        source = syntax.get("line")
        if isinstance(source, str) and source.strip():
            stripped = source.strip()
            text += f"    {stripped}\n"
            offset = syntax.get("offset")
            if type(offset) is int:
                caret = offset - 1 - (len(source) - len(source.lstrip()))
                text += "    " + " " * max(0, min(caret, len(stripped))) + "^\n"
        if isinstance(syntax.get("msg"), str):
            value = syntax["msg"]
    text += f"{exc_type}: {value}\n" if value not in (None, "") else f"{exc_type}\n"
    notes = stack.get("exc_notes")
    if isinstance(notes, list):
        text += "".join(f"{note}\n" for note in notes if isinstance(note, str))
    return text


def make_parser(name: str, *, max_bytes: int, metadata: Mapping[str, str] | Iterable[str] = (),
                keep_record: bool = False, exception_keys: Sequence[str] = DEFAULT_EXCEPTION_KEYS) -> Parser:
    """The parser for a source's `format` setting: "raw", "cri" or "json"."""
    if name == "raw":
        return RawParser()
    if name == "cri":
        return CriParser(max_bytes)
    if name == "json":
        return JsonParser(metadata=metadata, keep_record=keep_record, exception_keys=exception_keys,
                          max_bytes=max_bytes)
    raise ValueError(f"unknown format {name!r}: use raw, cri or json")
