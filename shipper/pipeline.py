"""The pipeline: sources -> accumulator -> pending queue -> sink.

Two tasks share it. `intake()` reads sources on a tick and never waits for
Loki (except when the buffer is full); `sender()` pushes sealed batches one
at a time, oldest first, retrying with backoff while intake goes on.

Wakeups cost budget (FACTS §6: ~31 us each), so intake does not react to
every write. While lines flow it reads every `batch_wait` (sooner only when a
pipe would otherwise fill up); when nothing flows it arms a one-shot reader
callback on each pipe and sleeps with no timer at all, or polls regular files
every `file_poll_interval`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from itertools import repeat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shipper import checkpoint, delivery, encoder, events
from shipper.batch import Accumulator, Batch, Stream
from shipper.checkpoint import Position
from shipper.config import LEVEL_NAMES, Config
from shipper.labels import clean_value
from shipper.loki import Answer
from shipper.retry import MAX_RETRY_AFTER, backoff, parse_retry_after
from shipper.sources import GlobWatcher, Source
from shipper.spool import Spool, SpoolEntry

if TYPE_CHECKING:  # imported at run time only by sources that use it
    from collections.abc import Sequence

    from shipper.formats import Metadata
    from shipper.process import Run

# Lines given to Accumulator.add at once (see _add).
ADD_SLICE = 4096
# Shortest pause between reads of a busy pipe (reads are adaptive; see _next_read).
MIN_READ_INTERVAL = 0.02


class Sink(Protocol):
    """Where pushes go: shipper.loki.LokiClient or ConsoleSink."""

    timeout: float

    async def push(self, body: bytes, timeout: float | None = None) -> Answer: ...

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None: ...

    async def close(self) -> None: ...


@dataclass
class Sealed:
    """One push: a stream's part of a batch, encoded and compressed once.

    The same bytes are resent on retry; when Loki stored part of it, the
    rest becomes a new, smaller push in its place (shipper.delivery).
    """

    body: bytes | None  # None: only in the spool, read back when its turn comes
    lines: int
    line_bytes: int
    size: int  # bytes it holds against buffer_max_bytes (0 when only on disk)
    marks: dict[str, Position]  # file positions its lines end at (checkpoints)
    spooled: SpoolEntry | None = None
    counted: int = 0  # entries Loki may already hold, already counted as sent
    whole_refusals: int = 0  # times in a row Loki refused it as a whole (rate limits)


class Pipeline:
    """Moves lines from sources to the sink; see the module docstring."""

    def __init__(self, config: Config, sources: list[Source], sink: Sink, *,
                 spool: Spool | None = None, replay: list[SpoolEntry] | None = None,
                 checkpoint_file: str = "", positions: dict[str, Position] | None = None,
                 watchers: list[GlobWatcher] | None = None) -> None:
        self.config = config
        self.sources = sources  # grows when a watcher finds a new file
        self.watchers = watchers or []
        self.sink = sink
        self.spool = spool
        # Acknowledged positions, saved to checkpoint_file after each ack that moves one.
        self.checkpoint_file = checkpoint_file
        self.positions: dict[str, Position] = dict(positions or {})
        # Streams other than a source's own: a CRI line's stream, a routed level
        # (level_labels). Built once per (source stream, stream name, level).
        self._variants: dict[tuple[Stream, str | None, str | None], Stream] = {}
        self._level_labels = frozenset(config.level_labels)
        # Encoded structured metadata per distinct tuple (levels, JSON keys):
        # a handful of values, encoded once. Bounded: JSON values could vary,
        # so the cache is dropped when it grows past a few hundred.
        self._metadata_cache: dict[tuple[Metadata, str | None], bytes] = {}
        # The encoded `level` metadata of each level an entry can have (levels.detect's, or none).
        self._level_metadata: dict[str | None, bytes] = {
            level: encoder.encode_metadata([("level", level)]) for level in LEVEL_NAMES}
        self._level_metadata[None] = b""
        self._compression = config.loki.compression
        self.acc = Accumulator(config.loki.batch_wait, config.loki.batch_max_bytes,
                               reject_old_samples_max_age=config.loki.reject_old_samples_max_age,
                               creation_grace_period=config.loki.creation_grace_period)
        self.pending: deque[Sealed] = deque()
        self.pending_bytes = 0  # queued batches; the open batch is acc.open_bytes
        # What the run gave up, by reason (drop), and whether the latest push failed
        # and is being retried: what the supervisor's exit code and /ready read.
        self.dropped: dict[str, int] = dict.fromkeys(events.DROP_REASONS, 0)
        self.last_push_failed = False
        self.stopping = False  # set by stop(): read to the current end, then finish
        self.intake_done = False
        self._inflight: Sealed | None = None  # the batch the sender is pushing now
        self._failing = False  # the latest push failed (retrying): a full buffer may drop
        self._wake = asyncio.Event()  # intake: something to do
        self._queued = asyncio.Event()  # sender: a batch was queued (or intake ended)
        self._ready: set[Source] = set()  # pipes the loop reported readable
        self._armed: set[int] = set()
        self._loop = asyncio.get_running_loop()
        for entry in replay or []:
            # An earlier run's batches go first, with their original timestamps.
            self.pending.append(Sealed(None, entry.lines, entry.line_bytes, 0, entry.marks, entry))

    # --- control -------------------------------------------------------------

    def drop(self, reason: str, lines: int, **fields: Any) -> None:
        """Give up `lines` for `reason` (events.DROP_REASONS): counted here (the run's
        outcome, shipper.lifecycle.exit_code) and reported (events.lines_dropped)."""
        self.dropped[reason] += lines
        events.lines_dropped(reason, lines, **fields)

    def _push_failed(self, outcome: str, message: str, retry_in: float | None, seconds: float) -> None:
        self.last_push_failed = retry_in is not None  # a final refusal is an answer, not a failure
        events.push_failed(outcome, message, retry_in, seconds)

    def _sent(self, lines: int, line_bytes: int, body_bytes: int, seconds: float, status: int) -> None:
        self.last_push_failed = False
        events.batch_sent(lines, line_bytes, body_bytes, seconds, status)

    def stop(self) -> None:
        """Begin shutdown: intake reads every source to its current end, then ends."""
        self.stopping = True
        self._wake.set()

    @property
    def spooled_lines(self) -> int:
        """Queued lines that are safe in the spool (a restart replays them)."""
        return sum(s.lines for s in self.pending if s.spooled is not None)

    @property
    def undelivered_lines(self) -> int:
        """Lines read but not acknowledged (queued, or in the open batch)."""
        return sum(s.lines for s in self.pending) + self.acc.open_lines

    @property
    def undelivered_line_bytes(self) -> int:
        """Line bytes read but not acknowledged (queued, or in the open batch)."""
        return sum(s.line_bytes for s in self.pending) + self.acc.open_line_bytes

    # --- intake --------------------------------------------------------------

    async def intake(self) -> None:
        """Read, batch and queue until every source ended or stop() was called."""
        next_read = 0.0
        while True:
            now = time.monotonic()
            if self.stopping:
                await self._final_read()
                break
            got = 0
            # Woken early (the sender freed room, a signal): keep the schedule.
            read_now = now >= next_read or bool(self._ready)
            if read_now:
                got, full = self._read_all(now)
                if next_read and now >= next_read:
                    # A scheduled read while lines flow: what it read is pushed
                    # now, so no line waits more than one read interval plus
                    # the push (p99 latency ~ batch_wait, not twice that).
                    self._flush_open()
            else:
                full = self._buffer_full() and not self._drops_for_pipes()
            self._seal_due(time.monotonic(), after_read=read_now)
            if not self.watchers and all(s.finished for s in self.sources):
                break
            timeout: float | None
            if full:
                timeout = None  # the sender wakes us when it frees room
            elif got or self._next_due() is not None or not read_now:
                self._disarm()
                if read_now:
                    next_read = now + self._read_interval(got, now)
                due = self._next_due()
                timeout = max(0.0, min(next_read, due if due is not None else next_read) - time.monotonic())
            else:
                self._arm()
                next_read = 0.0  # wake from a pipe or the poll: read at once
                idle_poll = bool(self.watchers) or any(s.kind != "pipe" for s in self.sources if not s.finished)
                timeout = self.config.file_poll_interval if idle_poll else None
            await self._sleep(timeout)
        self._disarm()
        for source in self.sources:
            self._add(source, source.flush(), time.monotonic())
            if source.processor is not None:
                self._add_entries(source, source.processor.flush(time.monotonic(), time.time_ns()),
                                  time.monotonic())
        self._flush_open()
        for source in self.sources:
            source.close()
        self.intake_done = True
        self._queued.set()

    async def _final_read(self) -> None:
        """Shutdown: read every source to its current end, waiting for room if needed."""
        self._disarm()
        while True:
            _, full = self._read_all(time.monotonic())
            self._seal_due(time.monotonic())
            if not full:
                return
            await self._sleep(None)  # the sender frees room (or the deadline cancels us)

    async def _sleep(self, timeout: float | None) -> None:
        """Wait for `_wake` or `timeout` seconds, whichever comes first.

        A timer that sets the event, not asyncio.timeout(): a timeout is a
        task cancellation and two exceptions, several times the cost of the
        wakeup itself, and this runs on every tick and every idle file poll.
        """
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        timer = self._loop.call_later(timeout, self._wake.set)
        await self._wake.wait()
        timer.cancel()

    def _read_interval(self, got: int, now: float) -> float:
        """Seconds until the next read while lines flow.

        `batch_wait` normally; shorter when a pipe is filling faster than that,
        so the task's write() never blocks on a full pipe buffer.
        """
        interval = self.config.loki.batch_wait
        if got:
            for source in self.sources:
                if source.kind == "pipe" and source.pipe_size and source.read_rate > 0:
                    interval = min(interval, source.pipe_size / 2 / source.read_rate)
        return max(MIN_READ_INTERVAL, interval)

    def _read_all(self, now: float) -> tuple[int, bool]:
        """Read every open source within the buffer budget; returns (bytes, buffer full)."""
        total = 0
        for watcher in self.watchers:
            self.sources += watcher.scan(now)  # opened below, as any waiting source
        ready, self._ready = self._ready, set()
        for source in self.sources:
            if source.finished:
                continue
            if source.kind == "waiting" and not source.try_open():
                continue
            while True:
                budget = self._budget()
                if budget <= 0 and source.kind == "pipe" and self._drops_for_pipes():
                    budget = self._drop_oldest()
                if budget <= 0:
                    return total, True
                lines, n, more = source.read(budget, readiness=source in ready)
                source.note_read(n, now)
                total += n
                self._add(source, lines, now)
                if not more:
                    break
        return total, False

    def _add(self, source: Source, lines: list[bytes], now: float) -> None:
        """Lines just read (or flushed) from `source`; its last_mark is where they end."""
        if not lines:
            return
        mark = source.last_mark
        split, invalid = source.splitter.split_lines, source.splitter.invalid_utf8_lines
        if split or invalid:
            events.lines_cleaned(source.path, split, invalid)
            source.splitter.split_lines = source.splitter.invalid_utf8_lines = 0
        events.lines_read(source.path, len(lines), sum(map(len, lines)))
        if source.processor is not None:
            # In slices too (see below): a 64 KiB read of one-byte lines is 32,768 of
            # them, and processing them at once peaked at 19 MB of transient objects.
            # The read's mark goes with the last slice only: it covers all of them.
            feed = source.processor.feed
            for start in range(0, len(lines), ADD_SLICE):
                if start + ADD_SLICE >= len(lines):
                    source.held_mark = mark
                self._add_entries(source, feed(lines[start:start + ADD_SLICE], now, time.time_ns()), now)
            return
        marked = (source.path, mark) if mark is not None else None
        wall_ns = time.time_ns()
        # In slices: the encoder's transient objects are per line (~72 bytes
        # each), so one add() of 32,768 one-byte lines would peak at 2.4 MB.
        # The mark goes with the last slice; earlier slices may seal earlier
        # batches, which are answered first.
        for start in range(0, len(lines) - ADD_SLICE, ADD_SLICE):
            for batch in self.acc.add(source.stream, lines[start:start + ADD_SLICE], now, wall_ns):
                self._queue(batch)
        last = lines if len(lines) <= ADD_SLICE else lines[(len(lines) - 1) // ADD_SLICE * ADD_SLICE:]
        for batch in self.acc.add(source.stream, last, now, wall_ns, marked):
            self._queue(batch)

    def _add_entries(self, source: Source, runs: list[Run], now: float) -> None:
        """Processed entries (shipper.process runs) to the accumulator, a run at a time."""
        proc = source.processor
        assert proc is not None
        counts = proc.take_counts()
        if counts:
            _report(source.path, proc.format, counts)
        # The file position is only exact once the processor holds nothing back.
        mark = source.held_mark if proc.pending == 0 else None
        if mark is not None:
            source.held_mark = None
        wall_ns = time.time_ns()
        if self._level_labels:
            runs = [part for run in runs for part in self._routed(run)]
        last = len(runs) - 1
        for i, run in enumerate(runs):
            entry_levels = run.levels
            routed = entry_levels[0] if entry_levels and entry_levels[0] in self._level_labels else None
            stream = self._stream_for(source.stream, run.stream, routed)
            marked = (source.path, mark) if mark is not None and i == last else None
            for batch in self.acc.add(stream, run.lines, now, wall_ns, marked, times=run.times,
                                      each_metadata=self._encoded_metadata(run.metadata, entry_levels)):
                self._queue(batch)

    def _routed(self, run: Run) -> list[Run]:
        """`run` cut where the level routed to a label of its own (level_labels) changes."""
        entry_levels = run.levels
        if not entry_levels:
            return [run]
        from shipper.process import spans  # loaded: a processed source made this run

        labels = self._level_labels
        routed = [level if level in labels else None for level in entry_levels]
        if routed.count(routed[0]) == len(routed):
            return [run]
        return [run._replace(lines=run.lines[i:j], times=run.times[i:j] if run.times is not None else None,
                             metadata=run.metadata[i:j] if run.metadata is not None else None,
                             levels=entry_levels[i:j])
                for i, j in spans(routed)]

    def _encoded_metadata(self, metadata: Sequence[Metadata] | None,
                          entry_levels: Sequence[str | None] | None) -> list[bytes] | None:
        """Each entry's structured metadata, encoded, with its level last; None when no entry has any.

        Values repeat (a few levels, a few loggers): each distinct one is
        encoded once (and cached across calls), and the per-entry list is
        built by C-level lookups, not a Python loop.
        """
        if metadata is None:
            if entry_levels is None:
                return None
            # Levels only (the pod template's sources): one lookup an entry.
            return list(map(self._level_metadata.__getitem__, entry_levels))
        cache = self._metadata_cache
        if len(cache) > 256:
            cache.clear()
        keys = list(zip(metadata, entry_levels if entry_levels is not None else repeat(None)))
        encoded = {}
        for key in set(keys):
            md = cache.get(key)
            if md is None:
                pairs, level = key
                md = cache[key] = encoder.encode_metadata((*pairs, ("level", level)) if level else pairs)
            encoded[key] = md
        return list(map(encoded.__getitem__, keys))

    def _stream_for(self, base: Stream, name: str | None, level: str | None) -> Stream:
        """The source's stream, or its variant for a CRI stream name or a routed level."""
        routed = level if level in self._level_labels else None
        if (name is None or name == base.name) and routed is None:
            return base
        key = (base, name, routed)
        stream = self._variants.get(key)
        if stream is None:
            changes = {"stream": clean_value(name or base.name)}
            if routed:
                changes["level"] = routed
            stream = self._variants[key] = base.variant(**changes)
        return stream

    def _next_due(self) -> float | None:
        """When the open batch or a held multiline entry must be released."""
        times = [t for t in (self.acc.next_due(), *(s.processor.next_due() for s in self.sources
                                                   if s.processor is not None)) if t is not None]
        return min(times) if times else None

    def _drops_for_pipes(self) -> bool:
        """True when a full buffer makes room (drop_oldest) instead of pausing a pipe.

        Only while Loki is failing: a Loki that answers, just slower than the
        task writes, gets backpressure (the task's write() waits a moment),
        never lost lines. A Loki that is down would block the task forever.
        """
        return self.config.when_full == "drop_oldest" and self._failing and any(
            s.kind == "pipe" and not s.finished for s in self.sources)

    def _budget(self) -> int:
        """Bytes intake may read now.

        Memory holds the open batch and queued batches up to buffer_max_bytes.
        With a spool that has room, queued batches beyond that live on disk
        only, so only the open batch counts. A spool whose last write failed
        (disk full, I/O error, read-only) has no room (shipper.spool).
        """
        cfg = self.config
        if self.spool is not None and self.spool.has_room():
            return cfg.buffer_max_bytes - self.acc.open_bytes
        return cfg.buffer_max_bytes - self.pending_bytes - self.acc.open_bytes

    def _drop_oldest(self) -> int:
        """Give up queued batches, oldest first, until a quarter of the buffer is free.

        The batch being pushed right now is kept (its answer is on the way).
        Returns the budget then available.
        """
        cfg = self.config
        lines = 0
        goal = cfg.buffer_max_bytes // 4
        while self._budget() < goal:
            index = 1 if self.pending and self.pending[0] is self._inflight else 0
            if index >= len(self.pending):
                break
            item = self.pending[index]
            del self.pending[index]
            self._release(item)
            lines += item.lines
        if lines:
            self.drop("buffer_full", lines, buffer_max_bytes=cfg.buffer_max_bytes,
                                 spool_max_bytes=cfg.spool_max_bytes if self.spool else None)
        return self._budget()

    def _buffer_full(self) -> bool:
        return self._budget() <= 0

    def _flush_open(self) -> None:
        """Seal and queue the open batch, whatever its age."""
        batch = self.acc.flush()
        if batch is not None:
            self._queue(batch)

    def _seal_due(self, now: float, after_read: bool = True) -> None:
        # A held multiline entry is released only right after a read: lines
        # that continue it may be waiting in the source until then.
        for source in self.sources if after_read else ():
            if source.processor is not None:
                entries = source.processor.due(now)
                if entries:
                    self._add_entries(source, entries, now)
        batch = self.acc.due(now)
        if batch is not None:
            self._queue(batch)

    def _queue(self, batch: Batch) -> None:
        """Queue a sealed batch as one push per stream (Loki answers a push for its last stream only).

        The batch's file marks go with its last push: pushes are answered in
        order, so once that one is, every line before the marks is.
        """
        last = len(batch.parts) - 1
        for i, (stream, chunks) in enumerate(batch.parts.items()):
            lines, line_bytes, size = batch.counts[stream]
            body = encoder.compress_push(((stream.labels, chunks),), self._compression)
            self._enqueue(Sealed(body, lines, line_bytes, size, batch.marks if i == last else {}))

    def _enqueue(self, item: Sealed) -> None:
        assert item.body is not None
        spool = self.spool
        if spool is not None and spool.has_room():
            try:
                item.spooled = spool.write(item.lines, item.line_bytes, item.marks, item.body)
            except OSError as e:
                # The spool is a safety net: when it fails the batch stays in memory.
                events.log("error", "cannot write to the spool; keeping the batch in memory",
                           event="spool_write_failed", spool_dir=spool.directory, error=str(e))
            else:
                if self.pending_bytes + item.size > self.config.buffer_max_bytes:
                    item.body, item.size = None, 0  # memory is full: on disk only
        self.pending.append(item)
        self.pending_bytes += item.size
        self._queued.set()

    def _arm(self) -> None:
        """Idle: let each open pipe wake us once when it becomes readable."""
        for source in self.sources:
            fd = source.fd
            if source.kind == "pipe" and fd is not None and fd not in self._armed:
                self._loop.add_reader(fd, self._on_readable, source)
                self._armed.add(fd)

    def _disarm(self) -> None:
        for fd in self._armed:
            self._loop.remove_reader(fd)
        self._armed.clear()

    def _on_readable(self, source: Source) -> None:
        # One-shot: disarm everything; the intake loop reads on its own cadence.
        self._disarm()
        self._ready.add(source)
        self._wake.set()

    # --- sender --------------------------------------------------------------

    async def sender(self) -> None:
        """Push queued batches in order until intake is done and the queue is empty."""
        cfg = self.config.loki
        delays = backoff(cfg.min_backoff, cfg.max_backoff)
        while True:
            if not self.pending:
                if self.intake_done:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self._inflight = self.pending[0]
            try:
                body = self._body(item)
            except OSError as e:
                self._done(item)
                self.drop("spool_error", item.lines, error=str(e))
                continue
            started = time.monotonic()
            outcome: int | BaseException
            try:
                answer = await self.sink.push(body)
                outcome = answer.status
            except (OSError, TimeoutError, EOFError) as e:
                # Transport errors (http1.ProtocolError is a ConnectionError): the
                # policy decides below. Anything else is a bug: it ends the sender,
                # and the supervisor exits 3 naming it, instead of counting a refusal.
                answer = Answer(0, f"{type(e).__name__}: {e}")
                outcome = e
            if isinstance(outcome, int) and 200 <= outcome < 300:  # the usual case: nothing to decode
                self._failing = False
                self._done(item)
                self._sent(item.lines - item.counted, item.line_bytes, len(body),
                                  time.monotonic() - started, outcome)
                delays = backoff(cfg.min_backoff, cfg.max_backoff)
                continue
            label = str(outcome) if isinstance(outcome, int) else _error_kind(outcome)
            facts = _entry_facts(body) if outcome in (400, 429) else None
            decision = delivery.decide(outcome, answer.message, facts if facts is not None else
                                       [(0, 0, 0)] * item.lines, item.whole_refusals)
            if facts is None and outcome == 429 and decision.action == delivery.RETRY:
                decision = delivery.Decision(delivery.RETRY, whole=decision.whole, cause=decision.cause)
            seconds = time.monotonic() - started
            if decision.action == delivery.SPLIT and decision.max_push_bytes and facts is not None:
                groups = delivery.chunked(range(item.lines), facts, decision.max_push_bytes)
                if len(groups) > 1:
                    self._replace_head(item, body, facts, groups, item.counted)
                    events.push_cut(item.lines, len(groups), decision.cause)
                    self._push_failed(label, answer.message, 0.0, seconds)
                    continue
            if decision.action == delivery.SPLIT:
                if self._split(item, body):
                    self._push_failed(label, answer.message, 0.0, seconds)
                    continue  # the halves are at the front of the queue, in order
                decision = delivery.Decision(delivery.ACK, refused=item.lines, cause=decision.cause)
            if decision.action == delivery.ACK:
                self._done(item)
                stored = max(0, decision.stored - item.counted)
                # One request, counted once: by its refusal when it refused any.
                if decision.refused:
                    self._push_failed(label, answer.message, None, seconds)
                    events.entries_stored(stored, _share(item.line_bytes, stored, item.lines))
                    self.drop("rejected", decision.refused, status=label, cause=decision.cause)
                elif stored:
                    self._sent(stored, _share(item.line_bytes, stored, item.lines), len(body), seconds,
                                      outcome if isinstance(outcome, int) else 0)
                continue
            # RETRY: all of it, or what Loki did not store.
            self._failing = True
            self._wake.set()  # intake may be paused on a full buffer: it may drop now
            self._inflight = None  # while we back off, it may be dropped for room
            if decision.resend is not None and facts is not None:
                if decision.uncertain:
                    decision = await self._resolve(body, facts, decision)
                self._keep_part(item, body, facts, decision, label)
            else:
                item.whole_refusals = item.whole_refusals + 1 if decision.whole else 0
            delay = parse_retry_after(answer.retry_after, time.time())
            if delay is None:
                delay = next(delays)
            delay = max(delay, min(decision.min_delay, MAX_RETRY_AFTER))
            self._push_failed(label, answer.message, delay, seconds)
            await asyncio.sleep(delay)

    async def _resolve(self, body: bytes, facts: list[tuple[int, int, int]],
                       decision: delivery.Decision) -> delivery.Decision:
        """Ask Loki which of the entries its answer left uncertain it holds (see shipper.delivery)."""
        assert decision.resend is not None
        ((labels, _),) = encoder.push_streams(encoder.uncompress(body))
        times = [facts[i][0] for i in decision.resend]
        held = await self.sink.stored_times(labels.decode(), min(times), max(times))
        resolved = delivery.resolve(decision, facts, held)
        events.stored_asked(decision.uncertain, resolved.uncertain == 0)
        return resolved

    def _keep_part(self, item: Sealed, body: bytes, facts: list[tuple[int, int, int]],
                   decision: delivery.Decision, label: str) -> None:
        """Loki stored part of `item`: count that, drop what it refused for good, keep the rest."""
        already = min(item.counted, decision.stored)
        keep = decision.resend or ()
        stored_bytes = sum(f[1] for f in facts) - sum(facts[i][1] for i in keep)
        events.push_stored_part(label, decision.stored - already, max(0, stored_bytes), len(keep),
                                decision.uncertain, decision.cause)
        if decision.refused:
            self.drop("rejected", decision.refused, status=label, cause=decision.cause)
        groups = delivery.chunked(keep, facts, decision.max_push_bytes)
        self._replace_head(item, body, facts, groups, item.counted - already + decision.uncertain)

    def _replace_head(self, item: Sealed, body: bytes, facts: list[tuple[int, int, int]],
                      groups: Sequence[Sequence[int]], counted: int) -> None:
        """Put pushes of `groups` (indexes of `item`'s entries, in order) in its place at the front.

        The last one carries the file marks and the spool file, rewritten to
        hold every entry still to deliver: a restart replays them all, and
        Loki drops the copies of pieces it had already stored.
        """
        ((labels, raw),) = encoder.push_streams(encoder.uncompress(body))
        items: list[Sealed] = []
        for k, group in enumerate(groups):
            last = k == len(groups) - 1
            part = encoder.compress(encoder.encode_stream(labels, [raw[i] for i in group]), self._compression)
            line_bytes = sum(facts[i][1] for i in group)
            here = min(counted, len(group))  # which pieces hold them is unknown: a bound
            counted -= here
            items.append(Sealed(part, len(group), line_bytes, _share(item.size, len(group), item.lines),
                                item.marks if last else {}, None, counted=here))
        rest = items[-1]
        if item.spooled is not None and self.spool is not None:
            every = [i for group in groups for i in group]
            try:
                whole = encoder.compress(encoder.encode_stream(labels, [raw[i] for i in every]), self._compression)
                rest.spooled = self.spool.replace(item.spooled, len(every), sum(facts[i][1] for i in every),
                                                  whole)
            except OSError as e:
                # The old file stays: a restart would replay lines Loki holds (it dedups what it can).
                events.log("error", "cannot rewrite a spooled batch after a partial answer",
                           event="spool_rewrite_failed", path=item.spooled.path, error=str(e))
                rest.spooled = item.spooled
        self.pending.popleft()
        self.pending.extendleft(reversed(items))
        self.pending_bytes += sum(i.size for i in items) - item.size
        self._inflight = None

    def _split(self, item: Sealed, body: bytes) -> bool:
        """Replace a batch Loki found too large (413) by its two halves; False if it is one line.

        The halves keep the lines' timestamps. A spooled batch stays in the
        spool until its second half is acknowledged: a restart in between
        replays the whole batch and Loki deduplicates the first half.
        """
        try:
            halves = encoder.split_push(encoder.uncompress(body))
        except ValueError:
            halves = None  # cannot be reopened (see _entry_facts): refused as it is
        if halves is None:
            return False
        (body1, lines1, bytes1), (body2, lines2, bytes2) = halves
        size1 = item.size // 2
        counted1 = min(item.counted, lines1)  # which half holds them is unknown: a bound
        first = Sealed(encoder.compress(body1, self._compression), lines1, bytes1, size1, {}, counted=counted1)
        second = Sealed(encoder.compress(body2, self._compression), lines2, bytes2, item.size - size1, item.marks,
                        item.spooled, counted=item.counted - counted1)
        self.pending.popleft()
        self.pending.appendleft(second)
        self.pending.appendleft(first)
        self._inflight = None
        events.log("warn", "Loki refused the push as too large or over a limit's burst: splitting it",
                   event="push_split", lines=item.lines, halves=[lines1, lines2])
        return True

    def _body(self, item: Sealed) -> bytes:
        if item.body is not None:
            return item.body
        assert self.spool is not None and item.spooled is not None
        return self.spool.read_body(item.spooled)  # transient: dropped after the push

    def _done(self, item: Sealed) -> None:
        """The batch is answered for good (2xx, or refused): forget it, advance checkpoints."""
        self._inflight = None
        self.pending.popleft()
        self._release(item)
        if item.marks:
            self.positions.update(item.marks)
            if self.checkpoint_file:
                try:
                    checkpoint.save(self.checkpoint_file, self.positions)
                except OSError as e:
                    events.log("error", "cannot write the checkpoint", event="checkpoint_write_failed", path=self.checkpoint_file,
                               error=str(e))
        self._wake.set()  # intake may be waiting for room

    def _release(self, item: Sealed) -> None:
        self.pending_bytes -= item.size
        if item.spooled is not None and self.spool is not None:
            self.spool.remove(item.spooled)


def _report(path: str, fmt: str, counts: dict[str, int]) -> None:
    """A processor's new counts (Processor.take_counts) as their named events."""
    if "merged" in counts:
        events.lines_merged(path, counts["merged"])
    for reason in events.MULTILINE_SPLIT_REASONS:
        if f"split_{reason}" in counts:
            events.multiline_split(path, reason, counts[f"split_{reason}"])
    if "malformed" in counts:
        events.records_malformed(path, fmt, counts["malformed"])
    if "joined" in counts:
        events.cri_lines_joined(path, counts["joined"])
    if "cut" in counts or "invalid_utf8" in counts:
        events.lines_cleaned(path, counts.get("cut", 0), counts.get("invalid_utf8", 0))
    if "kept_whole" in counts:
        events.json_kept_whole(path, counts["kept_whole"])


def _entry_facts(body: bytes) -> list[tuple[int, int, int]] | None:
    """encoder.entry_facts of each entry of a one-stream push; None for several streams.

    Several streams: a batch spooled by a version that pushed a batch whole;
    Loki's answer names only its last stream, so it is resent whole.
    """
    try:
        streams = encoder.push_streams(encoder.uncompress(body))
        if len(streams) != 1:
            return None
        return [encoder.entry_facts(raw) for raw in streams[0][1]]
    except ValueError:
        # A body that cannot be reopened (a spooled file damaged on disk: the spool
        # has no checksum of the body): decided as a whole, as Loki answered it.
        return None


def _share(total: int, part: int, whole: int) -> int:
    """`total` scaled to `part` of `whole` (sizes of part of a push)."""
    return total * part // whole if whole else 0


def _error_kind(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(e, ConnectionResetError):
        return "connection_reset"
    return "transport_error"
