"""The pipeline: a line's journey from its source to the checkpoint, one module a step. The asyncio shell.

    read         sources.Source.read          bytes from a pipe, FIFO or file (IO)
    frame        framing.LineSplitter         bytes in, complete lines out
    process      process.Processor            lines in, runs of entries out (format, multiline, level)
    route        route.Router                 runs in, each with its stream and encoded metadata
    accumulate   batch.Accumulator            entries in, sealed batches out (stamps, batch_wait, size)
    seal         buffer.seal, Buffer.offer    a batch in, one compressed push per stream, spooled, queued
    push         Sink.push (loki)             a push body in, Loki's answer out (IO)
    decide       Buffer.judge (delivery)      the answer in: ack, retry or split
    acknowledge  Buffer.settle, checkpoint    answered positions (shipper.cursor) to the checkpoint file

The methods right below the constructor are that chain, top to bottom:
`_read` -> `_add` -> `_process` -> `_route` -> `_accumulate` -> `_seal`, and
`_deliver` -> `_push` -> `buffer.judge` -> `buffer.settle` -> `_acknowledge`.
What is left here is the IO and the schedule: two tasks share the pipeline.
`intake()` reads sources on a tick and never waits for Loki (except when the
buffer is full); `sender()` pushes queued batches one at a time, oldest
first, sleeping through the backoff while intake goes on.

Wakeups cost budget (FACTS §6: ~31 us each), so intake does not react to
every write. While lines flow it reads every `batch_wait` (sooner only when a
pipe would otherwise fill up); when nothing flows it arms a one-shot reader
callback on each pipe and sleeps with no timer at all, or polls regular files
every `file_poll_interval`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from shipper import checkpoint, events
from shipper.batch import Accumulator, Batch, Stream
from shipper.buffer import Buffer, Sealed, Step, Verdict, seal
from shipper.config import Config
from shipper.cursor import Position, Positions
from shipper.loki import Answer
from shipper.route import Router
from shipper.sources import GlobWatcher, Source
from shipper.spool import Spool, SpoolEntry

if TYPE_CHECKING:  # imported at run time only by sources that use it
    from collections import deque
    from collections.abc import Sequence

    from shipper.process import Run

# Lines given to Accumulator.add (and a processor) at once (see _add). A 64 KiB
# read holds more only when its lines average under 64 bytes; each line in
# a slice costs about 100 bytes of transient objects, and 1,000,000 one-byte
# lines through a FIFO peaked at 21.9 MiB with slices of 4,096 lines, 19.0
# with 1,024 (benchmarks.run, burst-tiny-fifo). Lines of 64 bytes or more never
# fill a slice, so usual lines pay nothing for it.
ADD_SLICE = 1024
# Shortest pause between reads of a busy pipe (reads are adaptive; see _read_interval).
MIN_READ_INTERVAL = 0.02


class Sink(Protocol):
    """Where pushes go: shipper.loki.LokiClient or ConsoleSink."""

    timeout: float

    async def push(self, body: bytes, timeout: float | None = None) -> Answer: ...

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None: ...

    async def close(self) -> None: ...


class Pipeline:
    """Moves lines from sources to the sink; see the module docstring."""

    def __init__(self, config: Config, sources: list[Source], sink: Sink, *,
                 spool: Spool | None = None, replay: Sequence[SpoolEntry] = (),
                 checkpoint_file: str = "", positions: Positions | None = None,
                 watchers: list[GlobWatcher] | None = None) -> None:
        self.config = config
        self.sources = sources  # grows when a watcher finds a new file
        self.watchers = watchers or []
        self.sink = sink
        self.spool = spool
        # Acknowledged positions (buffer.positions) are saved here after each ack that moves one.
        self.checkpoint_file = checkpoint_file
        self.router = Router(config.level_labels)
        self.acc = Accumulator(config.loki.batch_wait, config.loki.batch_max_bytes,
                               reject_old_samples_max_age=config.loki.reject_old_samples_max_age,
                               creation_grace_period=config.loki.creation_grace_period)
        self.buffer = Buffer(config, spool, replay, positions)
        self.stopping = False  # set by stop(): read to the current end, then finish
        self.intake_done = False
        self._wake = asyncio.Event()  # intake: something to do
        self._queued = asyncio.Event()  # sender: a batch was queued (or intake ended)
        self._ready: set[Source] = set()  # pipes the loop reported readable
        self._armed: set[int] = set()
        self._loop = asyncio.get_running_loop()

    # --- the journey: read -> frame -> process -> route -> accumulate -> seal ---

    def _read(self, source: Source, budget: int, ready: bool, now: float) -> tuple[int, bool]:
        """One read of `source` down the chain; returns (bytes read, more to read now)."""
        lines, n, more = source.read(budget, readiness=ready)  # read, frame: sources, framing
        source.note_read(n, now)
        self._add(source, lines, now)
        return n, more

    def _add(self, source: Source, lines: list[bytes], now: float) -> None:
        """Lines just read (or flushed) from `source`; its cursor's position is where they end."""
        if not lines:
            return
        position = source.cursor.position
        split, invalid = source.splitter.split_lines, source.splitter.invalid_utf8_lines
        if split or invalid:
            events.lines_cleaned(source.path, split, invalid)
            source.splitter.split_lines = source.splitter.invalid_utf8_lines = 0
        events.lines_read(source.path, len(lines), sum(map(len, lines)))
        if source.processor is not None:
            self._process(source, lines, position, now)
            return
        marked = (source.path, position) if position is not None else None
        wall_ns = time.time_ns()
        # In slices: the encoder's transient objects are per line (~72 bytes
        # each), so one add() of 32,768 one-byte lines would peak at 2.4 MB.
        # The position goes with the last slice; earlier slices may seal
        # earlier batches, which are answered first.
        for start in range(0, len(lines) - ADD_SLICE, ADD_SLICE):
            self._accumulate(source.stream, lines[start:start + ADD_SLICE], now, wall_ns)
        last = lines if len(lines) <= ADD_SLICE else lines[(len(lines) - 1) // ADD_SLICE * ADD_SLICE:]
        self._accumulate(source.stream, last, now, wall_ns, marked)

    def _process(self, source: Source, lines: list[bytes], position: Position | None, now: float) -> None:
        """A processed source's lines through its processor (shipper.process), in slices.

        A 64 KiB read of one-byte lines is 32,768 of them, and processing them
        at once peaked at 19 MB of transient objects. The read's position is
        held with the last slice only: it covers all of them (shipper.cursor: rule 2).
        """
        assert source.processor is not None
        feed = source.processor.feed
        for start in range(0, len(lines), ADD_SLICE):
            if start + ADD_SLICE >= len(lines):
                source.cursor.hold(position)
            self._route(source, feed(lines[start:start + ADD_SLICE], now, time.time_ns()), now)

    def _route(self, source: Source, runs: list[Run], now: float) -> None:
        """Processed entries, each run to its stream (shipper.route), to the accumulator."""
        proc = source.processor
        assert proc is not None
        counts = proc.take_counts()
        if counts:
            _report(source.path, proc.format, counts)
        position = source.cursor.release(proc.pending)
        wall_ns = time.time_ns()
        routed = self.router.route(source.stream, runs)
        last = len(routed) - 1
        for i, (stream, run, metadata) in enumerate(routed):
            marked = (source.path, position) if position is not None and i == last else None
            self._accumulate(stream, run.lines, now, wall_ns, marked, run.times, metadata)

    def _accumulate(self, stream: Stream, lines: list[bytes], now: float, wall_ns: int,
                    position: tuple[str, Position] | None = None, times: Sequence[int] | None = None,
                    metadata: Sequence[bytes] | None = None) -> None:
        """Entries to the open batch (shipper.batch); the batches they fill up are sealed."""
        for batch in self.acc.add(stream, lines, now, wall_ns, position, times=times, each_metadata=metadata):
            self._seal(batch)

    def _seal(self, batch: Batch) -> None:
        """A sealed batch as one push per stream, spooled and queued (shipper.buffer)."""
        now = time.monotonic()
        for item in seal(batch, self.buffer.compression):
            self.buffer.offer(item, now)
        self._queued.set()

    # --- the journey: push -> decide -> acknowledge -----------------------------

    async def _deliver(self, item: Sealed) -> float | None:
        """The push at the head of the queue, answered and settled; the backoff before the next, if any."""
        body = self._body(item)
        if body is None:
            return None
        started = time.monotonic()
        outcome, answer = await self._push(body)
        seconds = time.monotonic() - started
        verdict = self.buffer.judge(item, body, outcome, answer.message)  # decide: shipper.delivery
        if verdict.to_resolve:
            verdict = await self._resolve(verdict, body)
        step = self.buffer.settle(item, body, verdict, answer.message, answer.retry_after, seconds, time.time())
        self._acknowledge(step)
        return step.delay

    def _body(self, item: Sealed) -> bytes | None:
        """The push's bytes, from the spool when only there; None when they cannot be read back."""
        if item.body is not None:
            return item.body
        assert self.spool is not None and item.spooled is not None
        try:
            return self.spool.read_body(item.spooled)  # transient: dropped after the push
        except OSError as e:
            self._acknowledge(Step(answered=True, moved=self.buffer.acknowledge(item)))
            self.buffer.drop("spool_error", item.lines, error=str(e))
            return None

    async def _push(self, body: bytes) -> tuple[int | BaseException, Answer]:
        """The sink's answer: its status, or the transport error the push ended with."""
        try:
            answer = await self.sink.push(body)
        except (OSError, TimeoutError, EOFError) as e:
            # Transport errors (http1.ProtocolError is a ConnectionError): the
            # policy decides. Anything else is a bug: it ends the sender, and
            # the supervisor exits 3 naming it, instead of counting a refusal.
            return e, Answer(0, f"{type(e).__name__}: {e}")
        return answer.status, answer

    async def _resolve(self, verdict: Verdict, body: bytes) -> Verdict:
        """Ask Loki which of the entries its answer left uncertain it holds (see shipper.delivery)."""
        held = await self.sink.stored_times(*self.buffer.lookup(verdict, body))
        return self.buffer.resolved(verdict, held)

    def _acknowledge(self, step: Step) -> None:
        """Save the checkpoint when acknowledged positions moved; wake intake when room was freed."""
        if step.moved and self.checkpoint_file:
            try:
                checkpoint.save(self.checkpoint_file, self.buffer.positions)
            except OSError as e:
                events.log("error", "cannot write the checkpoint", event="checkpoint_write_failed",
                           path=self.checkpoint_file, error=str(e))
        if step.answered or step.delay is not None:
            # Room was freed, or Loki is failing (a full buffer may drop now).
            self._wake.set()

    # --- control -------------------------------------------------------------

    def drop(self, reason: str, lines: int, **fields: Any) -> None:
        """Give up `lines` for `reason` (events.DROP_REASONS); see Buffer.drop."""
        self.buffer.drop(reason, lines, **fields)

    @property
    def dropped(self) -> dict[str, int]:
        """Lines the run gave up, by reason (what the supervisor's exit code reads)."""
        return self.buffer.dropped

    @property
    def last_push_failed(self) -> bool:
        """The latest push failed and is being retried (what /ready reads)."""
        return self.buffer.last_push_failed

    @property
    def pending(self) -> deque[Sealed]:
        """Queued pushes, oldest first."""
        return self.buffer.pending

    @property
    def positions(self) -> Positions:
        """Acknowledged file positions (what the checkpoint holds)."""
        return self.buffer.positions

    def stop(self) -> None:
        """Begin shutdown: intake reads every source to its current end, then ends."""
        self.stopping = True
        self._wake.set()

    @property
    def spooled_lines(self) -> int:
        """Queued lines that are safe in the spool (a restart replays them)."""
        return self.buffer.spooled_lines

    @property
    def undelivered_lines(self) -> int:
        """Lines read but not acknowledged (queued, or in the open batch)."""
        return self.buffer.lines + self.acc.open_lines

    @property
    def undelivered_line_bytes(self) -> int:
        """Line bytes read but not acknowledged (queued, or in the open batch)."""
        return self.buffer.line_bytes + self.acc.open_line_bytes

    # --- intake: the read schedule ---------------------------------------------

    async def intake(self) -> None:
        """Read, batch and queue until every source ended or stop() was called."""
        next_read = 0.0
        while True:
            if self.stopping:
                await self._final_read()
                break
            now = time.monotonic()
            # Woken early (the sender freed room, a signal): keep the schedule.
            read_now = now >= next_read or bool(self._ready)
            got, full = self._tick(now, next_read, read_now)
            if not self.watchers and all(s.finished for s in self.sources):
                break
            timeout, next_read = self._schedule(now, next_read, read_now, got, full)
            await self._sleep(timeout)
        self._end_intake()

    def _tick(self, now: float, next_read: float, read_now: bool) -> tuple[int, bool]:
        """Read (when it is time), seal what is due; returns (bytes read, buffer full)."""
        got = 0
        if read_now:
            got, full = self._read_all(now)
            if next_read and now >= next_read:
                # A scheduled read while lines flow: what it read is pushed
                # now, so no line waits more than one read interval plus
                # the push (p99 latency ~ batch_wait, not twice that).
                self._flush_open()
        else:
            full = self._budget(now) <= 0 and not self._drops_for_pipes()
        self._seal_due(time.monotonic(), after_read=read_now)
        return got, full

    def _schedule(self, now: float, next_read: float, read_now: bool, got: int,
                  full: bool) -> tuple[float | None, float]:
        """How long to sleep (None: until woken) and when to read next (0: at once when woken)."""
        if full:
            return None, next_read  # the sender wakes us when it frees room
        if got or self._next_due() is not None or not read_now:
            self._disarm()
            if read_now:
                next_read = now + self._read_interval(got, now)
            due = self._next_due()
            return max(0.0, min(next_read, due if due is not None else next_read) - time.monotonic()), next_read
        # Idle: a pipe wakes us (one-shot), files are polled.
        self._arm()
        idle_poll = bool(self.watchers) or any(s.kind != "pipe" for s in self.sources if not s.finished)
        return (self.config.file_poll_interval if idle_poll else None), 0.0

    def _end_intake(self) -> None:
        """Every source ended or shutdown: ship what is held (partial lines, open entries), then close."""
        self._disarm()
        for source in self.sources:
            self._add(source, source.flush(), time.monotonic())
            if source.processor is not None:
                self._route(source, source.processor.flush(time.monotonic(), time.time_ns()), time.monotonic())
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
                budget = self._budget(now)
                if budget <= 0 and source.kind == "pipe" and self._drops_for_pipes():
                    budget = self.buffer.make_room(self.acc.open_bytes, now)
                if budget <= 0:
                    return total, True
                n, more = self._read(source, budget, source in ready, now)
                total += n
                if not more:
                    break
        return total, False

    def _budget(self, now: float) -> int:
        """Bytes intake may read now (shipper.buffer: the open batch counts too)."""
        return self.buffer.budget(self.acc.open_bytes, now)

    def _drops_for_pipes(self) -> bool:
        """A full buffer makes room instead of pausing a pipe (Buffer.drops_for_pipes)."""
        return self.buffer.drops_for_pipes(any(s.kind == "pipe" and not s.finished for s in self.sources))

    def _next_due(self) -> float | None:
        """When the open batch or a held multiline entry must be released."""
        times = [t for t in (self.acc.next_due(), *(s.processor.next_due() for s in self.sources
                                                   if s.processor is not None)) if t is not None]
        return min(times) if times else None

    def _flush_open(self) -> None:
        """Seal and queue the open batch, whatever its age."""
        batch = self.acc.flush()
        if batch is not None:
            self._seal(batch)

    def _seal_due(self, now: float, after_read: bool = True) -> None:
        # A held multiline entry is released only right after a read: lines
        # that continue it may be waiting in the source until then.
        for source in self.sources if after_read else ():
            if source.processor is not None:
                entries = source.processor.due(now)
                if entries:
                    self._route(source, entries, now)
        batch = self.acc.due(now)
        if batch is not None:
            self._seal(batch)

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
        while True:
            item = self.buffer.head()
            if item is None:
                if self.intake_done:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            delay = await self._deliver(item)
            if delay is not None:
                await asyncio.sleep(delay)


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
