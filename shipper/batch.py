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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shipper import encoder
from shipper.checkpoint import Position
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


class Stream:
    """One Loki stream: a label set, per-stream metadata, and its last timestamp."""

    __slots__ = ("labels", "metadata", "last_ts", "name", "label_map")

    def __init__(self, labels: str, metadata: bytes = b"", name: str = "",
                 label_map: Mapping[str, str] | None = None) -> None:
        self.labels = labels
        self.metadata = metadata  # encoded structuredMetadata fields, same for each entry
        self.last_ts = 0  # ns; timestamps are strictly increasing per stream
        self.name = name  # the source's stream name, for telemetry
        # The label set `labels` was rendered from: a variant of this stream
        # (a CRI line's stream, a routed level) starts from it.
        self.label_map: dict[str, str] = dict(label_map or {})

    def variant(self, **changes: str) -> Stream:
        """The same stream with some labels changed (and its own timestamps)."""
        labels = {**self.label_map, **changes}
        return Stream(label_string(labels), self.metadata, self.name, labels)

    def stamp(self, n: int, wall_ns: int) -> int:
        """Reserve `n` consecutive timestamps starting no earlier than `wall_ns`."""
        first = wall_ns if wall_ns > self.last_ts else self.last_ts + 1
        self.last_ts = first + n - 1
        return first

    def stamp_each(self, times: Sequence[int]) -> list[int]:
        """Timestamps for entries with times of their own (CRI, JSON, merged
        entries): each kept unless it would not be after the previous one."""
        out = []
        last = self.last_ts
        for t in times:
            last = t if t > last else last + 1
            out.append(last)
        self.last_ts = last
        return out


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
    # batch is acknowledged, a checkpoint may record it (shipper.checkpoint).
    marks: dict[str, Position] = field(default_factory=dict)

    def body(self) -> bytes:
        """The uncompressed PushRequest."""
        return encoder.encode_push((s.labels, chunks) for s, chunks in self.parts.items())


class Accumulator:
    """Collects lines into batches; see the module docstring."""

    def __init__(self, batch_wait: float, batch_max_bytes: int) -> None:
        self.batch_wait = batch_wait
        self.batch_max_bytes = batch_max_bytes
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
            mark: tuple[str, Position] | None = None, *, times: Sequence[int] | None = None,
            each_metadata: Sequence[bytes] | None = None) -> list[Batch]:
        """Add `lines` read at `wall_ns` (epoch ns) / `now` (monotonic s).

        Returns the batches this filled up (sealed, oldest first); usually none.
        With a `mark` (a file source's key and the position these lines end
        at) the lines are kept in one batch when they fit in an empty one (the
        open batch is sealed first if needed), so the mark is exact for the
        batch that gets it. `times` gives each line a time of its own (kept
        strictly increasing per stream); `each_metadata` gives each line its
        own encoded metadata (e.g. its level) after the stream's.
        """
        if not lines:
            return []
        sealed: list[Batch] = []
        metadata = stream.metadata
        extra = max(map(len, each_metadata)) if each_metadata else 0  # a bound, as the overhead
        per_line = self._entry_overhead + len(metadata) + extra
        stamps = stream.stamp_each(times) if times is not None else None
        if mark is not None and self._open is not None and self._open.lines:
            room = self.batch_max_bytes - self._open.size
            if stream not in self._open.parts:
                room -= len(stream.labels.encode()) + _STREAM_OVERHEAD
            if sum(map(len, lines)) + per_line * len(lines) > room:
                sealed.append(self._seal())
        first_ts = stream.stamp(len(lines), wall_ns) if stamps is None else 0
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
        if mark is not None:
            assert self._open is not None  # the last lines stay in the open batch
            self._open.marks[mark[0]] = mark[1]
        return sealed

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
