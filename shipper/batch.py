"""The batch accumulator: lines in, sealed batches out. No IO; the clock is passed in.

One open batch collects entries of every stream, in read order per stream.
It is sealed when `batch_wait` has passed since its first line (`due(now)`)
or when one more line would take it over `batch_max_bytes` (returned by
`add()`). A sealed batch is encoded once and its bytes are reused across
retries, so every line keeps the timestamp it got when it was read.

The one batch that may exceed `batch_max_bytes` holds a single entry that
would not fit even in an empty batch: config bounds the line, but not the
stream's labels and metadata (context values are only known at run time).
Shipping it alone, a little over the limit, beats crashing or dropping it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shipper import encoder, events
from shipper.cursor import Position, Positions
from shipper.config import DEFAULT_CREATION_GRACE_PERIOD, DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE
from shipper.labels import label_string


def _entry_overhead(max_entry_bytes: int) -> int:
    """Upper bound of an entry's framing besides its line and metadata.

    For entries shorter than `max_entry_bytes`: entry tag and length, timestamp
    field (2 + 12: two tags, seconds and nanos varints of up to 5 bytes), line
    tag and length. Using a bound, not the exact size, keeps the size check out
    of the per-line loop; the two lengths are bounded by the largest entry, not
    fixed, because a line of 2 MiB or more has 4-byte length varints.
    """
    return 1 + _varint_size(max_entry_bytes) + 14 + 1 + _varint_size(max_entry_bytes)


def _varint_size(n: int) -> int:
    """Bytes of the protobuf varint of `n` (>= 0)."""
    return max(1, (n.bit_length() + 6) // 7)


# The bound for entries under 2 MiB (3-byte lengths), e.g. in the default 1 MiB
# batches: 22 bytes.
_ENTRY_OVERHEAD = _entry_overhead(2**21 - 1)
# Stream framing besides the label string: two tags and two lengths.
_STREAM_OVERHEAD = 12


# How far inside Loki's window an entry's own time must be to be kept
# (Stream's rule 2). Old side: an entry is stamped when read but reaches Loki
# later: its batch can wait in the retry queue through an outage (retries are
# unlimited) or in the spool across a restart. One hour of margin keeps an
# entry accepted for an hour of such waiting; an entry closer to
# reject_old_samples_max_age than that gets its read time instead. Future
# side: time only passes between the read and Loki's check, which makes a
# future time more acceptable, not less; one minute covers a difference
# between this node's clock and Loki's (NTP keeps them within milliseconds)
# and the nanosecond per entry that keeps stamps unique. Each margin is at most
# half its window, so a small configured window never closes.
OLD_MARGIN_NS = 3600 * 1_000_000_000
NEW_MARGIN_NS = 60 * 1_000_000_000
# A ceiling no stamp reaches (int64 ns ends in 2262): Stream.stamp without limits.
_NO_CEILING = 1 << 63
ORIGINAL_TIMESTAMP = "original_timestamp"  # structured metadata of a replaced entry time


class Stream:
    """One Loki stream: a label set, per-stream metadata, and its last timestamp.

    Stamping rule, per stream, with `now` the wall clock (epoch ns) of the read
    (`Accumulator.add`'s `wall_ns`) and the bounds `floor` = now -
    reject_old_samples_max_age + 1 h and `ceiling` = now + creation_grace_period
    - 1 min (the margins: OLD_MARGIN_NS, NEW_MARGIN_NS):

    1. An entry without a time of its own (a raw line) gets max(now, last + 1).
    2. An entry with a time of its own (CRI, JSON, a merged entry) keeps it when
       it is inside [floor, ceiling]; outside, it is treated as read now (its
       own time goes to its structured metadata `original_timestamp`, counted
       too_old / too_new). Then, as 1: max(time, last + 1).
    3. last + 1 never carries a stream past what Loki accepts: when the
       stream's last stamp is at or after `ceiling` (the clock stepped back by
       more than the grace period since it was given), the stream comes back
       to the clock: stamps restart from `now` (raw lines) or from their own
       times, and go on strictly increasing from there. A step back by less
       keeps last + 1, ahead of the clock but inside the grace period.
       Loki's unordered writes take the step back when it is under
       max_chunk_age / 2 (1 h) behind the stream's newest entry; a larger one
       is refused as "too far behind" whatever the shipper does, until the
       clock has caught up to within the hour (following the clock is the
       choice that recovers, running ahead would be refused as too new).

    So stamps are strictly increasing per stream, hence unique, except across
    a step back of the clock by more than the grace period: from there they
    are unique among themselves, and can coincide with a stamp given before the
    step only to the nanosecond in the span the clock goes through again (Loki
    drops only an identical (timestamp, line); a later line with the same
    timestamp and other content is stored). Entries later than `ceiling` by
    one nanosecond per entry before them in the same read can happen (entries
    with the same own time at the ceiling); the one-minute margin covers it.

    Entries read in one call and written before the read keep their own times
    only while those are after the stream's last stamp: the entries that
    follow a replaced one in the same read (written before `now`) get last + 1,
    less than one read interval after their own times; the next reads keep
    their own times again.
    """

    __slots__ = ("labels", "metadata", "last_ts", "name", "label_map")

    def __init__(self, labels: str, metadata: bytes = b"", name: str = "",
                 label_map: Mapping[str, str] | None = None) -> None:
        self.labels = labels
        self.metadata = metadata  # encoded structuredMetadata fields, same for each entry
        self.last_ts = 0  # ns; the last stamp given (see the class docstring)
        self.name = name  # the source's stream name, for telemetry
        # The label set `labels` was rendered from: a variant of this stream
        # (a CRI line's stream, a routed level) starts from it.
        self.label_map: dict[str, str] = dict(label_map or {})

    def variant(self, **changes: str) -> Stream:
        """The same stream with some labels changed (and its own timestamps)."""
        labels = {**self.label_map, **changes}
        return Stream(label_string(labels), self.metadata, self.name, labels)

    def stamp(self, n: int, wall_ns: int, ceiling: int = _NO_CEILING) -> int:
        """Reserve `n` consecutive timestamps starting no earlier than `wall_ns`
        (rule 1), from `wall_ns` itself when the stream is at or past `ceiling`
        (rule 3)."""
        last = self.last_ts
        first = wall_ns if wall_ns > last or last >= ceiling else last + 1
        self.last_ts = first + n - 1
        return first

    def stamp_each(self, times: Sequence[int], ceiling: int = _NO_CEILING) -> list[int]:
        """Timestamps for entries with times of their own, all inside Loki's
        window (rule 2): each kept unless it would not be after the previous one."""
        out = []
        last = self.last_ts
        if last >= ceiling:
            last = min(times) - 1  # rule 3: back to the entries' own times
        for t in times:
            last = t if t > last else last + 1
            out.append(last)
        self.last_ts = last
        return out

    def stamp_checked(self, times: Sequence[int], wall_ns: int, floor: int,
                      ceiling: int) -> tuple[list[int], list[int], list[int]]:
        """`stamp_each` for entries some of which are outside [floor, ceiling]:
        those are stamped as read at `wall_ns`. Returns the stamps and the
        indexes of the entries too old and too new (the slow path)."""
        old: list[int] = []
        new: list[int] = []
        out = []
        last = self.last_ts
        if last >= ceiling:
            last = min(min(times), wall_ns) - 1  # rule 3
        for i, t in enumerate(times):
            if t < floor:
                old.append(i)
                t = wall_ns
            elif t > ceiling:
                new.append(i)
                t = wall_ns
            last = t if t > last else last + 1
            out.append(last)
        self.last_ts = last
        return out, old, new


@dataclass
class Batch:
    """Entries of one push, grouped per stream."""

    opened: float  # monotonic time of the first line
    parts: dict[Stream, list[bytes]] = field(default_factory=dict)
    # Per stream: [lines, line bytes, size bound], so each stream can be pushed
    # on its own (Loki answers a push for its last stream only: FACTS §4).
    counts: dict[Stream, list[int]] = field(default_factory=dict)
    lines: int = 0
    line_bytes: int = 0  # sum of line lengths (what users call "log bytes")
    size: int = 0  # upper bound of the uncompressed PushRequest size
    # Per file source: the position its lines in this batch end at. Once the
    # batch is acknowledged, a checkpoint may record it (shipper.cursor: rule 3).
    positions: Positions = field(default_factory=dict)

    def body(self) -> bytes:
        """The uncompressed PushRequest."""
        return encoder.encode_push((s.labels, chunks) for s, chunks in self.parts.items())


class Accumulator:
    """Collects lines into batches; see the module docstring."""

    def __init__(self, batch_wait: float, batch_max_bytes: int, *,
                 reject_old_samples_max_age: float = DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE,
                 creation_grace_period: float = DEFAULT_CREATION_GRACE_PERIOD,
                 on_replaced: Callable[[str, int, str], None] = events.timestamps_replaced) -> None:
        self.batch_wait = batch_wait
        self.batch_max_bytes = batch_max_bytes
        # Loki's window for entry times, relative to the read time, with the
        # margins of OLD_MARGIN_NS / NEW_MARGIN_NS (Stream's docstring).
        max_age = int(reject_old_samples_max_age * 1e9)
        grace = int(creation_grace_period * 1e9)
        self._floor_offset = max_age - min(OLD_MARGIN_NS, max_age // 2)  # floor = wall - this
        self._ceiling_offset = grace - min(NEW_MARGIN_NS, grace // 2)  # ceiling = wall + this
        # Telemetry for entries whose own time was replaced (stream name, entries, reason).
        self._on_replaced = on_replaced
        # An entry that fits in a batch is shorter than the batch, which bounds
        # its length varints (never below the usual 22: smaller batches are tests).
        self._entry_overhead = max(_ENTRY_OVERHEAD, _entry_overhead(batch_max_bytes))
        self._open: Batch | None = None

    @property
    def open_bytes(self) -> int:
        """Size bound of the open batch (0 when none is open)."""
        return self._open.size if self._open else 0

    @property
    def open_lines(self) -> int:
        """Lines in the open batch (0 when none is open)."""
        return self._open.lines if self._open else 0

    @property
    def open_line_bytes(self) -> int:
        """Line bytes in the open batch (0 when none is open)."""
        return self._open.line_bytes if self._open else 0

    def next_due(self) -> float | None:
        """Monotonic time at which the open batch becomes due, None if none is open."""
        return self._open.opened + self.batch_wait if self._open else None

    def add(self, stream: Stream, lines: list[bytes], now: float, wall_ns: int,
            position: tuple[str, Position] | None = None, *, times: Sequence[int] | None = None,
            each_metadata: Sequence[bytes] | None = None) -> list[Batch]:
        """Add `lines` read at `wall_ns` (epoch ns) / `now` (monotonic s).

        Returns the batches this filled up (sealed, oldest first); usually none.
        With a `position` (a file source's key and the position these lines
        end at) the lines are kept in one batch when they fit in an empty one
        (the open batch is sealed first if needed), so the position is exact
        for the batch that gets it. `times` gives each line a time of its own, kept
        when Loki would accept it (Stream's docstring: the stamping rule; an
        entry outside gets `original_timestamp` metadata and `on_replaced` is
        told); `each_metadata` gives each line its own encoded metadata (e.g.
        its level) after the stream's.
        """
        # Complexity above 15 on purpose (the per-line hot path): one pass per call does the stamping, the
        # size arithmetic and the encoding of a chunk of lines (once per read),
        # its state in locals. Split into helpers it would pass a dozen of them
        # back and forth on every chunk for nothing a reader gains.
        if not lines:
            return []
        sealed: list[Batch] = []
        metadata = stream.metadata
        ceiling = wall_ns + self._ceiling_offset
        stamps = None
        if times is not None:
            floor = wall_ns - self._floor_offset
            if min(times) >= floor and max(times) <= ceiling:  # two C-level passes: the usual case
                stamps = stream.stamp_each(times, ceiling)
            else:
                stamps, each_metadata = self._stamp_outside(stream, times, wall_ns, floor, ceiling, each_metadata)
        extra = max(map(len, each_metadata)) if each_metadata else 0  # a bound, as the overhead
        per_line = self._entry_overhead + len(metadata) + extra
        if position is not None and self._open is not None and self._open.lines:
            room = self.batch_max_bytes - self._open.size
            if stream not in self._open.parts:
                room -= len(stream.labels.encode()) + _STREAM_OVERHEAD
            if sum(map(len, lines)) + per_line * len(lines) > room:
                sealed.append(self._seal())
        first_ts = stream.stamp(len(lines), wall_ns, ceiling) if stamps is None else 0
        start = 0
        while start < len(lines):
            batch = self._open
            if batch is None:
                batch = self._open = Batch(opened=now)
            room = self.batch_max_bytes - batch.size
            if stream not in batch.parts:
                room -= len(stream.labels.encode()) + _STREAM_OVERHEAD
            # Fast path: everything fits (one C-level sum over the lines).
            chunk = lines if start == 0 else lines[start:]
            line_bytes = sum(map(len, chunk))
            cost = line_bytes + per_line * len(chunk)
            end = len(lines)
            if cost > room:
                end, cost = _fit(lines, start, per_line, room)
                line_bytes = cost - per_line * (end - start)
                if end == start:
                    if batch.lines:
                        sealed.append(self._seal())
                        continue
                    # Too big even for an empty batch: the labels and metadata
                    # took the room. Alone, over the limit (module docstring).
                    end = start + 1
                    line_bytes = len(lines[start])
                    cost = line_bytes + _entry_overhead(line_bytes + per_line) + len(metadata)
                chunk = lines[start:end]
            if stream not in batch.parts:
                batch.parts[stream] = []
                framing = len(stream.labels.encode()) + _STREAM_OVERHEAD
                batch.counts[stream] = [0, 0, framing]
                batch.size += framing
            if stamps is None and each_metadata is None:
                batch.parts[stream].append(encoder.encode_entries(chunk, first_ts + start, metadata))
            else:
                if each_metadata is None:
                    mds: Sequence[bytes] = [metadata] * len(chunk)
                elif metadata:
                    # The stream's metadata before each entry's own; few distinct values.
                    combined = {m: metadata + m for m in set(each_metadata[start:end])}
                    mds = list(map(combined.__getitem__, each_metadata[start:end]))
                else:
                    mds = each_metadata[start:end]
                batch.parts[stream].append(encoder.encode_entries_each(
                    chunk, stamps[start:end] if stamps is not None else None, first_ts + start, mds))
            batch.lines += len(chunk)
            batch.line_bytes += line_bytes
            batch.size += cost
            counts = batch.counts[stream]
            counts[0] += len(chunk)
            counts[1] += line_bytes
            counts[2] += cost
            start = end
            if start < len(lines):
                sealed.append(self._seal())
        if position is not None:
            assert self._open is not None  # the last lines stay in the open batch
            self._open.positions[position[0]] = position[1]
        return sealed

    def _stamp_outside(self, stream: Stream, times: Sequence[int], wall_ns: int, floor: int, ceiling: int,
                       each_metadata: Sequence[bytes] | None) -> tuple[list[int], Sequence[bytes]]:
        """Stamps when some own times are outside [floor, ceiling] (Stream's rule 2),
        and each entry's metadata with `original_timestamp` added to the replaced ones."""
        stamps, old, new = stream.stamp_checked(times, wall_ns, floor, ceiling)
        mds = list(each_metadata) if each_metadata is not None else [b""] * len(times)
        for i in (*old, *new):
            mds[i] += encoder.encode_metadata([(ORIGINAL_TIMESTAMP, rfc3339_nano(times[i]))])
        if old:
            self._on_replaced(stream.name, len(old), "too_old")
        if new:
            self._on_replaced(stream.name, len(new), "too_new")
        return stamps, mds

    def due(self, now: float) -> Batch | None:
        """Seal and return the open batch if `batch_wait` has passed since its first line."""
        if self._open is not None and now - self._open.opened >= self.batch_wait:
            return self._seal()
        return None

    def flush(self) -> Batch | None:
        """Seal and return the open batch whatever its age (shutdown, EOF)."""
        return self._seal() if self._open is not None else None

    def _seal(self) -> Batch:
        batch, self._open = self._open, None
        assert batch is not None
        return batch


def rfc3339_nano(ns: int) -> str:
    """Epoch ns as Go's RFC3339Nano in UTC (`2006-01-02T15:04:05.999999999Z`:
    trailing zeros of the fraction dropped, no fraction for a whole second)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    days, second = divmod(seconds, 86400)
    # Civil date of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    sign = "-" if year < 0 else ""
    return (f"{sign}{abs(year):04d}-{month:02d}-{day:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:"
            f"{second % 60:02d}{fraction}Z")


def _fit(lines: list[bytes], start: int, per_line: int, room: int) -> tuple[int, int]:
    """How many lines from `start` fit in `room`; returns (end index, their cost)."""
    cost = 0
    end = start
    for line in lines[start:]:
        c = len(line) + per_line
        if cost + c > room:
            break
        cost += c
        end += 1
    return end, cost
