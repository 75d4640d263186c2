"""The delivery buffer: sealed batches and Loki's answers in; the next push, the room left and the positions to checkpoint out. No IO (the spool is injected); the clock is passed in.

The steps of delivery that decide, between the accumulator and the sink:

* seal: a batch becomes one compressed push per stream (`seal`), because
  Loki answers a push for its last stream only (FACTS §4); the batch's file
  positions go with its last push. `Buffer.offer` writes it to the spool
  first, when there is one with room, and queues it.
* room: memory holds the open batch and queued pushes up to
  buffer_max_bytes; with a spool that has room, queued pushes beyond that
  live on disk only (`budget`). When the buffer is full, `when_full`
  decides: "block" pauses intake (the task's write() waits), "drop_oldest"
  gives up queued pushes, oldest first, but only while Loki is failing and a
  pipe is being read (`drops_for_pipes`, `make_room`): a Loki that answers,
  slower than the task writes, gets backpressure, never lost lines.
* decide: `judge` reads Loki's answer to the push at the head of the queue
  (shipper.delivery decides); `settle` applies the decision: acknowledge
  (its positions may be checkpointed), put smaller pushes in its place
  (413, a rate limit's burst, what Loki did not store), or back off.

Pushes go one at a time, oldest first: once a push with positions is
answered, every line before those positions is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from shipper import delivery, encoder, events
from shipper.batch import Batch
from shipper.cursor import Positions
from shipper.retry import MAX_RETRY_AFTER, backoff, parse_retry_after

if TYPE_CHECKING:
    from shipper.config import Config
    from shipper.spool import SpoolEntry


class Spooler(Protocol):
    """Where sealed pushes are kept on disk (shipper.spool.Spool): the IO, injected."""

    directory: str

    def has_room(self, now: float | None = None) -> bool: ...

    def write(self, lines: int, line_bytes: int, positions: Positions, body: bytes) -> SpoolEntry: ...

    def replace(self, entry: SpoolEntry, lines: int, line_bytes: int, body: bytes) -> SpoolEntry: ...

    def remove(self, entry: SpoolEntry) -> None: ...


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
    positions: Positions  # file positions its lines end at (shipper.cursor: rule 3)
    spooled: SpoolEntry | None = None
    counted: int = 0  # entries Loki may already hold, already counted as sent
    whole_refusals: int = 0  # times in a row Loki refused it as a whole (rate limits)


def seal(batch: Batch, compression: str) -> list[Sealed]:
    """A sealed batch as one push per stream; its positions go with the last one."""
    last = len(batch.parts) - 1
    out = []
    for i, (stream, chunks) in enumerate(batch.parts.items()):
        lines, line_bytes, size = batch.counts[stream]
        body = encoder.compress_push(((stream.labels, chunks),), compression)
        out.append(Sealed(body, lines, line_bytes, size, batch.positions if i == last else {}))
    return out


@dataclass
class Verdict:
    """Loki's answer to one push, decided (`Buffer.judge`); `Buffer.settle` applies it."""

    decision: delivery.Decision
    label: str  # the outcome as telemetry names it: the status, or the transport error's kind
    status: int  # the HTTP status; 0 for a transport error
    facts: list[tuple[int, int, int]] | None = None  # the push's entries (delivery.Facts), when decoded
    ok: bool = False  # a 2xx: everything stored, nothing decoded

    @property
    def to_resolve(self) -> bool:
        """Entries Loki may hold are to be resent: ask Loki first (`lookup`, delivery.resolve)."""
        d = self.decision
        return d.action == delivery.RETRY and d.resend is not None and self.facts is not None and d.uncertain > 0


@dataclass
class Step:
    """What the shell does after an answer is settled."""

    answered: bool = False  # the push is gone for good: room was freed
    moved: bool = False  # acknowledged positions moved: save the checkpoint
    delay: float | None = None  # retry: back off this long before the next push


class Buffer:
    """Queued pushes, oldest first, and the rules of room and answers; see the module docstring."""

    def __init__(self, config: Config, spool: Spooler | None = None, replay: Sequence[SpoolEntry] = (),
                 positions: Positions | None = None, rng: Callable[[], float] | None = None) -> None:
        self.max_bytes = config.buffer_max_bytes
        self.when_full = config.when_full
        self.spool_max_bytes = config.spool_max_bytes
        self.compression = config.loki.compression
        self._rng = rng  # the backoff's jitter (retry.backoff's own unless given: tests)
        self._backoff = (config.loki.min_backoff, config.loki.max_backoff)
        self._delays: Iterator[float] = self._new_backoff()
        self.spool = spool
        self.pending: deque[Sealed] = deque()
        self.pending_bytes = 0  # queued pushes held in memory; the open batch is the accumulator's
        # Acknowledged positions: what the checkpoint records (shipper.cursor: rule 3).
        self.positions: Positions = dict(positions or {})
        self.inflight: Sealed | None = None  # the push being pushed now: never dropped for room
        self.failing = False  # the latest push failed (retrying): a full buffer may drop
        # What the run gave up, by reason (drop), and whether the latest push failed
        # and is being retried: what the supervisor's exit code and /ready read.
        self.dropped: dict[str, int] = dict.fromkeys(events.DROP_REASONS, 0)
        self.last_push_failed = False
        for entry in replay:
            # An earlier run's batches go first, with their original timestamps.
            self.pending.append(Sealed(None, entry.lines, entry.line_bytes, 0, entry.positions, entry))

    def _new_backoff(self) -> Iterator[float]:
        return backoff(*self._backoff) if self._rng is None else backoff(*self._backoff, self._rng)

    # --- counts ----------------------------------------------------------------

    @property
    def lines(self) -> int:
        """Queued lines."""
        return sum(s.lines for s in self.pending)

    @property
    def line_bytes(self) -> int:
        """Queued line bytes."""
        return sum(s.line_bytes for s in self.pending)

    @property
    def spooled_lines(self) -> int:
        """Queued lines that are safe in the spool (a restart replays them)."""
        return sum(s.lines for s in self.pending if s.spooled is not None)

    def clear(self) -> None:
        """Forget every queued push (the run gave them up, or they are safe in the spool)."""
        self.pending.clear()
        self.pending_bytes = 0

    def drop(self, reason: str, lines: int, **fields: Any) -> None:
        """Give up `lines` for `reason` (events.DROP_REASONS): counted here (the run's
        outcome, shipper.lifecycle.exit_code) and reported (events.lines_dropped)."""
        self.dropped[reason] += lines
        events.lines_dropped(reason, lines, **fields)

    # --- room ------------------------------------------------------------------

    def budget(self, open_bytes: int, now: float) -> int:
        """Bytes intake may read now, with `open_bytes` in the open batch.

        A spool whose last write failed (disk full, I/O error, read-only) has
        no room (shipper.spool): memory bounds the queue again.
        """
        if self.spool is not None and self.spool.has_room(now):
            return self.max_bytes - open_bytes
        return self.max_bytes - self.pending_bytes - open_bytes

    def drops_for_pipes(self, pipes_open: bool) -> bool:
        """True when a full buffer makes room (drop_oldest) instead of pausing a pipe.

        Only while Loki is failing: a Loki that answers, just slower than the
        task writes, gets backpressure (the task's write() waits a moment),
        never lost lines. A Loki that is down would block the task forever.
        """
        return self.when_full == "drop_oldest" and self.failing and pipes_open

    def make_room(self, open_bytes: int, now: float) -> int:
        """Give up queued pushes, oldest first, until a quarter of the buffer is free.

        The push in flight is kept (its answer is on the way). Returns the
        budget then available.
        """
        lines = 0
        goal = self.max_bytes // 4
        while self.budget(open_bytes, now) < goal:
            index = 1 if self.pending and self.pending[0] is self.inflight else 0
            if index >= len(self.pending):
                break
            item = self.pending[index]
            del self.pending[index]
            self._release(item)
            lines += item.lines
        if lines:
            self.drop("buffer_full", lines, buffer_max_bytes=self.max_bytes,
                      spool_max_bytes=self.spool_max_bytes if self.spool else None)
        return self.budget(open_bytes, now)

    def offer(self, item: Sealed, now: float) -> None:
        """Queue a sealed push, written to the spool first when it has room."""
        assert item.body is not None
        spool = self.spool
        if spool is not None and spool.has_room(now):
            try:
                item.spooled = spool.write(item.lines, item.line_bytes, item.positions, item.body)
            except OSError as e:
                # The spool is a safety net: when it fails the batch stays in memory.
                events.log("error", "cannot write to the spool; keeping the batch in memory",
                           event="spool_write_failed", spool_dir=spool.directory, error=str(e))
            else:
                if self.pending_bytes + item.size > self.max_bytes:
                    item.body, item.size = None, 0  # memory is full: on disk only
        self.pending.append(item)
        self.pending_bytes += item.size

    # --- answers ---------------------------------------------------------------

    def head(self) -> Sealed | None:
        """The next push (oldest first), now in flight; None when the queue is empty."""
        if not self.pending:
            return None
        self.inflight = self.pending[0]
        return self.inflight

    def acknowledge(self, item: Sealed) -> bool:
        """`item` (the head) is answered for good: forget it; True when acknowledged positions moved."""
        self.inflight = None
        self.pending.popleft()
        self._release(item)
        if not item.positions:
            return False
        self.positions.update(item.positions)
        return True

    def judge(self, item: Sealed, body: bytes, outcome: int | BaseException, message: str) -> Verdict:
        """Loki's answer (a status, or the transport error the push ended with) to `item`, decided."""
        if isinstance(outcome, int) and 200 <= outcome < 300:  # the usual case: nothing to decode
            return Verdict(delivery.Decision(delivery.ACK, stored=item.lines), str(outcome), outcome, ok=True)
        label = str(outcome) if isinstance(outcome, int) else _error_kind(outcome)
        facts = entry_facts(body) if outcome in (400, 429) else None
        decision = delivery.decide(outcome, message, facts if facts is not None else [(0, 0, 0)] * item.lines,
                                   item.whole_refusals)
        if facts is None and outcome == 429 and decision.action == delivery.RETRY:
            # Entries not decoded: nothing is known of which were stored, all again.
            decision = delivery.Decision(delivery.RETRY, whole=decision.whole, cause=decision.cause)
        return Verdict(decision, label, outcome if isinstance(outcome, int) else 0, facts)

    def lookup(self, verdict: Verdict, body: bytes) -> tuple[str, int, int]:
        """(selector, start ns, end ns) to ask Loki which uncertain entries it holds (`to_resolve`)."""
        assert verdict.decision.resend is not None and verdict.facts is not None
        ((labels, _),) = encoder.push_streams(encoder.uncompress(body))
        times = [verdict.facts[i][0] for i in verdict.decision.resend]
        return labels.decode(), min(times), max(times)

    def resolved(self, verdict: Verdict, held: set[int] | None) -> Verdict:
        """`verdict` with its uncertain entries settled by the timestamps Loki holds (None: it could not say)."""
        assert verdict.facts is not None
        decision = delivery.resolve(verdict.decision, verdict.facts, held)
        events.stored_asked(verdict.decision.uncertain, decision.uncertain == 0)
        return replace(verdict, decision=decision)

    def settle(self, item: Sealed, body: bytes, verdict: Verdict, message: str, retry_after: str | None,
               seconds: float, wall: float) -> Step:
        """Apply `verdict` to `item`, the head, whose push took `seconds`; `wall` is the epoch time now."""
        decision, label = verdict.decision, verdict.label
        if verdict.ok:
            self.failing = False
            moved = self.acknowledge(item)
            self._sent(item.lines - item.counted, item.line_bytes, len(body), seconds, verdict.status)
            self._delays = self._new_backoff()
            return Step(answered=True, moved=moved)
        if decision.action == delivery.SPLIT:
            if self._cut(item, body, verdict) or self._split(item, body):
                self._push_failed(label, message, 0.0, seconds)
                return Step()  # the pieces are at the front of the queue, in order
            decision = delivery.Decision(delivery.ACK, refused=item.lines, cause=decision.cause)
        if decision.action == delivery.ACK:
            return self._answered(item, body, decision, verdict, message, seconds)
        # RETRY: all of it, or what Loki did not store.
        self.failing = True
        if decision.resend is not None and verdict.facts is not None:
            self._keep_part(item, body, verdict.facts, decision, label)
        else:
            item.whole_refusals = item.whole_refusals + 1 if decision.whole else 0
        self.inflight = None  # while we back off, it may be dropped for room
        delay = parse_retry_after(retry_after, wall)
        if delay is None:
            delay = next(self._delays)
        delay = max(delay, min(decision.min_delay, MAX_RETRY_AFTER))
        self._push_failed(label, message, delay, seconds)
        return Step(delay=delay)

    def _answered(self, item: Sealed, body: bytes, decision: delivery.Decision, verdict: Verdict, message: str,
                  seconds: float) -> Step:
        """A final answer that is not a plain 2xx: count what Loki stored, drop what it refused."""
        moved = self.acknowledge(item)
        label = verdict.label
        stored = max(0, decision.stored - item.counted)
        # One request, counted once: by its refusal when it refused any.
        if decision.refused:
            self._push_failed(label, message, None, seconds)
            events.entries_stored(stored, _share(item.line_bytes, stored, item.lines))
            self.drop("rejected", decision.refused, status=label, cause=decision.cause)
        elif stored:
            self._sent(stored, _share(item.line_bytes, stored, item.lines), len(body), seconds, verdict.status)
        return Step(answered=True, moved=moved)

    def _push_failed(self, outcome: str, message: str, retry_in: float | None, seconds: float) -> None:
        self.last_push_failed = retry_in is not None  # a final refusal is an answer, not a failure
        events.push_failed(outcome, message, retry_in, seconds)

    def _sent(self, lines: int, line_bytes: int, body_bytes: int, seconds: float, status: int) -> None:
        self.last_push_failed = False
        events.batch_sent(lines, line_bytes, body_bytes, seconds, status)

    def _cut(self, item: Sealed, body: bytes, verdict: Verdict) -> bool:
        """A SPLIT bounded by the bytes a push may hold (a rate limit's burst): pieces of at most that."""
        decision, facts = verdict.decision, verdict.facts
        if not decision.max_push_bytes or facts is None:
            return False
        groups = delivery.chunked(range(item.lines), facts, decision.max_push_bytes)
        if len(groups) <= 1:
            return False
        self._replace_head(item, body, facts, groups, item.counted)
        events.push_cut(item.lines, len(groups), decision.cause)
        return True

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

        The last one carries the file positions and the spool file, rewritten
        to hold every entry still to deliver: a restart replays them all, and
        Loki drops the copies of pieces it had already stored.
        """
        ((labels, raw),) = encoder.push_streams(encoder.uncompress(body))
        items: list[Sealed] = []
        for k, group in enumerate(groups):
            last = k == len(groups) - 1
            part = encoder.compress(encoder.encode_stream(labels, [raw[i] for i in group]), self.compression)
            line_bytes = sum(facts[i][1] for i in group)
            here = min(counted, len(group))  # which pieces hold them is unknown: a bound
            counted -= here
            items.append(Sealed(part, len(group), line_bytes, _share(item.size, len(group), item.lines),
                                item.positions if last else {}, None, counted=here))
        rest = items[-1]
        if item.spooled is not None and self.spool is not None:
            every = [i for group in groups for i in group]
            try:
                whole = encoder.compress(encoder.encode_stream(labels, [raw[i] for i in every]), self.compression)
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
        self.inflight = None

    def _split(self, item: Sealed, body: bytes) -> bool:
        """Replace a push Loki found too large (413) by its two halves; False if it is one line.

        The halves keep the lines' timestamps. A spooled batch stays in the
        spool until its second half is acknowledged: a restart in between
        replays the whole batch and Loki deduplicates the first half.
        """
        try:
            halves = encoder.split_push(encoder.uncompress(body))
        except ValueError:
            halves = None  # cannot be reopened (see entry_facts): refused as it is
        if halves is None:
            return False
        (body1, lines1, bytes1), (body2, lines2, bytes2) = halves
        size1 = item.size // 2
        counted1 = min(item.counted, lines1)  # which half holds them is unknown: a bound
        first = Sealed(encoder.compress(body1, self.compression), lines1, bytes1, size1, {}, counted=counted1)
        second = Sealed(encoder.compress(body2, self.compression), lines2, bytes2, item.size - size1,
                        item.positions, item.spooled, counted=item.counted - counted1)
        self.pending.popleft()
        self.pending.appendleft(second)
        self.pending.appendleft(first)
        self.inflight = None
        events.log("warn", "Loki refused the push as too large or over a limit's burst: splitting it",
                   event="push_split", lines=item.lines, halves=[lines1, lines2])
        return True

    def _release(self, item: Sealed) -> None:
        self.pending_bytes -= item.size
        if item.spooled is not None and self.spool is not None:
            self.spool.remove(item.spooled)


def entry_facts(body: bytes) -> list[tuple[int, int, int]] | None:
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
