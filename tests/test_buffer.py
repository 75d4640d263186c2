"""shipper.buffer in-process: a fake clock, a fake sink's answers, tables of cases (as Promtail's client_test.go).

Each case feeds reads of a file source through the accumulator into the
buffer, then answers its pushes one by one as the pipeline's sender would
(`deliver`: head -> judge -> settle), and asserts exactly which lines each
push held, in which order, what was sent, dropped and checkpointed. The
end-to-end suites (test_pipeline, test_faults, test_real_loki_delivery) are
the second layer, through the real process.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

import pytest

from shipper import config as config_module
from shipper import encoder, events
from shipper.batch import Accumulator, Stream
from shipper.buffer import Buffer, Sealed, entry_facts, seal
from shipper.cursor import Position
from shipper.spool import SpoolEntry
from tests.loki_receiver import load_push_pb2
from tests.test_delivery import TENANT_429, rate_limited_34

T0 = 1_764_570_385_717_811_967  # epoch ns of the reads
WALL = T0 / 1e9  # epoch s "now" when answers are settled
PATH = "/logs/task.log"
STREAM = Stream('{job="t", service_name="t"}', name="stdout")


def make_config(**top: object) -> config_module.Config:
    settings = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in top.items())
    return config_module.parse(f'max_line_bytes = 1024\n{settings}[loki]\nurl = "http://127.0.0.1:1/loki/api/v1/push"\n'
                               "batch_max_bytes = 2048\nmin_backoff = 0.5\nmax_backoff = 4.0\ncompression = \"none\"\n")


def half() -> float:
    return 0.0  # the backoff's jitter at its least: each delay is d / 2


@pytest.fixture(scope="module")
def pb() -> Any:
    return load_push_pb2()


def lines_of(pb: Any, body: bytes) -> list[str]:
    (stream,) = pb.PushRequest.FromString(encoder.uncompress(body)).streams
    return [e.line for e in stream.entries]


def feed(buf: Buffer, reads: list[list[bytes]], now: float = 100.0) -> list[Position]:
    """Each read its own batch, sealed and offered; returns the position each read ends at."""
    acc = Accumulator(batch_wait=0.5, batch_max_bytes=1 << 20)
    positions = []
    offset = 0
    for i, lines in enumerate(reads):
        offset += sum(len(line) + 1 for line in lines)
        position = Position(1, 2, offset)
        positions.append(position)
        assert acc.add(STREAM, lines, now, T0 + i * 1000, (PATH, position)) == []
        batch = acc.flush()
        assert batch is not None
        for item in seal(batch, buf.compression):
            buf.offer(item, now)
    return positions


@dataclass
class Delivered:
    pushes: list[list[str]] = field(default_factory=list)  # the lines of each push, in push order
    delays: list[float] = field(default_factory=list)  # each backoff, in order
    checkpoints: list[int] = field(default_factory=list)  # the file's offset each time positions moved
    sent: int = 0  # events.COUNTERS.lines_sent during the delivery
    rejected: int = 0  # lines dropped as "rejected"


Answer = tuple[int | BaseException, str]  # (status or transport error, Loki's text)


def deliver(pb: Any, buf: Buffer, answers: list[Answer] | Any, held: set[int] | None = None) -> Delivered:
    """Answer each push at the head in turn, as Pipeline._deliver does; `answers` may be a
    function of the push's lines. Ends when the queue is empty."""
    out = Delivered()
    sent = events.COUNTERS.lines_sent
    rejected = buf.dropped["rejected"]
    n = 0
    while (item := buf.head()) is not None:
        assert n < 50, "the queue never drained"
        body = item.body
        assert body is not None
        out.pushes.append(lines_of(pb, body))
        outcome, message = answers(out.pushes[-1], body) if callable(answers) else answers[n]
        n += 1
        verdict = buf.judge(item, body, outcome, message)
        if verdict.to_resolve:
            verdict = buf.resolved(verdict, held)
        step = buf.settle(item, body, verdict, message, None, 0.001, WALL)
        if step.moved:
            out.checkpoints.append(buf.positions[PATH].offset)
        if step.delay is not None:
            out.delays.append(step.delay)
    if not callable(answers):
        assert n == len(answers), "answers left over"
    out.sent = events.COUNTERS.lines_sent - sent
    out.rejected = buf.dropped["rejected"] - rejected
    return out


READS = [[b"a1", b"a2"], [b"b1", b"b2", b"b3", b"b4"]]
A, B = ["a1", "a2"], ["b1", "b2", "b3", "b4"]
OFFSETS = [6, 18]  # where each read ends in the file


def partial_429(lines: list[str], body: bytes) -> Answer:
    """Loki 3.4's per-stream rate limit refusing the last two entries of a push of B, then 204."""
    if lines != B:
        return 204, ""
    facts = entry_facts(body)
    assert facts is not None
    return 429, rate_limited_34([2, 3], 4, facts)


@dataclass
class Case:
    answers: list[Answer] | Any
    pushes: list[list[str]]
    sent: int
    delays: list[float] = field(default_factory=list)
    rejected: int = 0
    reads: list[list[bytes]] = field(default_factory=lambda: READS)
    # The file's offset each time the checkpoint moved: where each read ends, once answered.
    checkpoints: list[int] = field(default_factory=lambda: OFFSETS)


CASES = {
    "every push stored": Case([(204, ""), (204, "")], [A, B], sent=6),
    "an outage: the same push again with backoff, then stored": Case(
        [(503, "down"), (503, "down"), (502, "bad gateway"), (204, ""), (204, "")],
        [A, A, A, A, B], sent=6, delays=[0.25, 0.5, 1.0]),
    "transport errors are retried": Case(
        [(ConnectionRefusedError(111, "refused"), "refused"), (TimeoutError(), ""), (204, ""), (204, "")],
        [A, A, A, B], sent=6, delays=[0.25, 0.5]),
    "the backoff starts again after a success": Case(
        [(503, ""), (204, ""), (503, ""), (204, "")], [A, A, B, B], sent=6, delays=[0.25, 0.25]),
    "413: halves, the position goes with the second half": Case(
        [(204, ""), (413, "too large"), (204, ""), (204, "")],
        [A, B, B[:2], B[2:]], sent=6),
    "413 of one line: refused for good, its position acknowledged": Case(
        [(413, "too large"), (204, "")], [["a1"], B], sent=4, rejected=1, reads=[[b"a1"], READS[1]],
        checkpoints=[3, 15]),
    "413 of a half again: quarters": Case(
        [(204, ""), (413, ""), (413, ""), (204, ""), (204, ""), (204, "")],
        [A, B, B[:2], B[:1], B[1:2], B[2:]], sent=6),
    "partial acceptance: only what Loki did not store is pushed again": Case(
        partial_429, [A, B, B[2:]], sent=6, delays=[0.25]),
    "a tenant rate limit: all again, then split after a second whole refusal": Case(
        [(204, ""), (429, TENANT_429), (429, TENANT_429), (204, ""), (204, "")],
        # The first refusal backs off (longer than the named rate needs for 4 short entries).
        [A, B, B, B[:2], B[2:]], sent=6, delays=[0.25]),
    "400 refusing every entry: dropped, not resent": Case(
        [(204, ""), (400, "error at stream labels")], [A, B], sent=2, rejected=4),
    "401: refused for good": Case([(401, "no org id"), (204, "")], [A, B], sent=4, rejected=2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_answers(pb: Any, case: Case) -> None:
    buf = Buffer(make_config(), rng=half)
    positions = feed(buf, case.reads)
    got = deliver(pb, buf, case.answers)
    assert got.pushes == case.pushes
    assert got.delays == case.delays
    assert got.sent == case.sent
    assert got.rejected == case.rejected
    assert got.checkpoints == case.checkpoints
    assert buf.positions == {PATH: positions[-1]}
    assert (buf.pending_bytes, buf.lines, buf.inflight) == (0, 0, None)
    assert buf.last_push_failed is False


def test_a_retry_marks_the_push_failed_until_an_answer() -> None:
    buf = Buffer(make_config(), rng=half)
    feed(buf, READS[:1])
    item = buf.head()
    assert item is not None and item.body is not None
    step = buf.settle(item, item.body, buf.judge(item, item.body, 503, ""), "", None, 0.0, WALL)
    assert (step.answered, step.moved, step.delay) == (False, False, 0.25)
    assert buf.last_push_failed and buf.failing and buf.inflight is None
    assert buf.positions == {}  # nothing acknowledged: nothing to checkpoint
    step = buf.settle(item, item.body, buf.judge(item, item.body, 204, ""), "", None, 0.0, WALL)
    assert (step.answered, step.moved, step.delay) == (True, True, None)
    assert not buf.last_push_failed and not buf.failing


def test_retry_after_is_honoured_and_a_named_rate_waits_at_least_its_second() -> None:
    buf = Buffer(make_config(), rng=half)
    feed(buf, READS[:1])
    item = buf.head()
    assert item is not None and item.body is not None
    step = buf.settle(item, item.body, buf.judge(item, item.body, 503, ""), "", "7", 0.0, WALL)
    assert step.delay == 7.0


# --- a full buffer, per when_full --------------------------------------------------

LINE = b"x" * 200


def fill(buf: Buffer, now: float) -> int:
    """Offer one-line pushes until the buffer has no room; returns how many."""
    n = 0
    while buf.budget(0, now) > 0:
        feed(buf, [[LINE]], now)
        n += 1
    return n


@dataclass
class FullCase:
    when_full: str
    failing: bool  # Loki's latest answer was a failure (retrying)
    pipes_open: bool
    drops: bool  # the buffer makes room by dropping (else intake pauses: backpressure)


FULL = {
    "block never drops, even while Loki is down": FullCase("block", True, True, drops=False),
    "drop_oldest drops while Loki is down and a pipe is read": FullCase("drop_oldest", True, True, drops=True),
    "drop_oldest with a Loki that answers: backpressure": FullCase("drop_oldest", False, True, drops=False),
    "drop_oldest with files only: files wait": FullCase("drop_oldest", True, False, drops=False),
}


@pytest.mark.parametrize("case", FULL.values(), ids=FULL.keys())
def test_a_full_buffer(case: FullCase) -> None:
    buf = Buffer(make_config(buffer_max_bytes=4096, when_full=case.when_full), rng=half)
    queued = fill(buf, 0.0)
    assert buf.budget(0, 0.0) <= 0
    buf.failing = case.failing
    assert buf.drops_for_pipes(case.pipes_open) is case.drops
    if not case.drops:
        assert buf.lines == queued and buf.dropped["buffer_full"] == 0
        return
    # Making room: oldest first, until a quarter of the buffer is free.
    first = buf.pending[0]
    budget = buf.make_room(0, 0.0)
    assert budget >= 4096 // 4
    assert first not in buf.pending
    assert buf.dropped["buffer_full"] == queued - buf.lines > 0
    assert buf.pending_bytes == sum(s.size for s in buf.pending)


def test_making_room_keeps_the_push_in_flight() -> None:
    buf = Buffer(make_config(buffer_max_bytes=4096, when_full="drop_oldest"), rng=half)
    fill(buf, 0.0)
    inflight = buf.head()
    buf.failing = True
    second = buf.pending[1]
    buf.make_room(0, 0.0)
    assert buf.pending[0] is inflight  # its answer is on the way
    assert second not in buf.pending


# --- the spool, injected; its clock passed in ----------------------------------------

class FakeSpool:
    """In memory, as shipper.spool.Spool behaves: room until max_bytes, none for a while after a failure."""

    directory = "/spool"

    def __init__(self, max_bytes: int = 1 << 20, fail: bool = False) -> None:
        self.max_bytes = max_bytes
        self.fail = fail
        self.files: dict[int, tuple[int, bytes]] = {}
        self.failed_at: float | None = None
        self.seq = 0

    def has_room(self, now: float | None = None) -> bool:
        assert now is not None  # the buffer passes its clock
        if self.failed_at is not None and now - self.failed_at < 10.0:
            return False
        return sum(len(b) for _, b in self.files.values()) < self.max_bytes

    def write(self, lines: int, line_bytes: int, positions: dict[str, Position], body: bytes) -> SpoolEntry:
        if self.fail:
            self.failed_at = self.now
            raise OSError(28, "No space left on device")
        self.seq += 1
        self.files[self.seq] = (lines, body)
        return SpoolEntry(self.seq, f"/spool/{self.seq}", lines, line_bytes, dict(positions), len(body))

    def replace(self, entry: SpoolEntry, lines: int, line_bytes: int, body: bytes) -> SpoolEntry:
        self.files[entry.seq] = (lines, body)
        return SpoolEntry(entry.seq, entry.path, lines, line_bytes, dict(entry.positions), len(body))

    def remove(self, entry: SpoolEntry) -> None:
        del self.files[entry.seq]

    now = 0.0


def test_with_a_spool_memory_holds_only_what_fits_and_the_rest_is_on_disk_only() -> None:
    spool = FakeSpool()
    buf = Buffer(make_config(buffer_max_bytes=4096), spool)
    for _ in range(40):
        feed(buf, [[LINE]], 0.0)
    assert buf.budget(0, 0.0) == 4096  # queued pushes are on disk: only the open batch counts
    assert len(spool.files) == 40
    in_memory = [s for s in buf.pending if s.body is not None]
    assert 0 < len(in_memory) < 40 and buf.pending_bytes == sum(s.size for s in in_memory) <= 4096
    assert all(s.size == 0 and s.spooled is not None for s in buf.pending if s.body is None)
    assert buf.spooled_lines == 40


def test_a_failing_spool_keeps_batches_in_memory_and_has_no_room_until_its_retry() -> None:
    spool = FakeSpool(fail=True)
    buf = Buffer(make_config(buffer_max_bytes=4096), spool)
    spool.now = 5.0
    feed(buf, [[LINE]], 5.0)
    assert spool.failed_at == 5.0 and buf.pending[0].spooled is None and buf.pending[0].body is not None
    assert buf.budget(0, 14.9) == 4096 - buf.pending_bytes  # memory bounds the queue again
    assert buf.budget(0, 15.0) == 4096  # the spool may be tried again


def test_an_acknowledged_push_leaves_the_spool_and_a_partial_answer_rewrites_its_file(pb: Any) -> None:
    spool = FakeSpool()
    buf = Buffer(make_config(), spool, rng=half)
    feed(buf, READS)
    assert [lines for lines, _ in spool.files.values()] == [2, 4]
    got = deliver(pb, buf, partial_429)
    assert got.pushes == [A, B, B[2:]]
    assert spool.files == {}


def test_replayed_batches_go_first_read_from_the_spool() -> None:
    entry = SpoolEntry(7, "/spool/7", 3, 30, {PATH: Position(1, 2, 40)}, 99)
    buf = Buffer(make_config(), FakeSpool(), [entry])
    feed(buf, READS[:1])
    first = buf.head()
    assert first is not None
    assert (first.body, first.spooled, first.lines, first.positions) == (None, entry, 3, {PATH: Position(1, 2, 40)})
    assert buf.lines == 5 and buf.pending_bytes == buf.pending[1].size  # on disk only: no memory


def test_seal_is_one_push_per_stream_with_the_positions_on_the_last(pb: Any) -> None:
    acc = Accumulator(batch_wait=0.5, batch_max_bytes=1 << 20)
    err = STREAM.variant(stream="stderr")
    acc.add(STREAM, [b"o1"], 0.0, T0)
    acc.add(err, [b"e1", b"e2"], 0.0, T0, ("/f", Position(1, 1, 9)))
    batch = acc.flush()
    assert batch is not None
    items: list[Sealed] = seal(batch, "none")
    assert [lines_of(pb, i.body) for i in items if i.body is not None] == [["o1"], ["e1", "e2"]]
    assert [(i.lines, i.line_bytes, i.positions) for i in items] == [(1, 2, {}), (2, 4, {"/f": Position(1, 1, 9)})]


def test_a_body_that_cannot_be_reopened_is_decided_whole() -> None:
    """A spooled body damaged on disk (the spool keeps no checksum of it): no facts, so
    Loki's answer is taken for the push as a whole, never an exception in the sender."""
    good = encoder.compress(encoder.encode_push([('{a="1"}', encoder.encode_entries([b"x", b"y"], 10**18))]))
    assert entry_facts(good) == [(10**18, 1, 1), (10**18 + 1, 1, 1)]
    assert entry_facts(good[:-5]) is None  # gzip cut short
    assert entry_facts(gzip.compress(encoder.snappy_frame(b"\x0a\xff"))) is None  # protobuf cut short
    assert entry_facts(b"\x05\x10abc") is None  # snappy block cut short


@pytest.mark.parametrize(("status", "delay", "rejected"), [(429, 0.25, 0), (413, None, 3), (400, None, 3)])
def test_a_damaged_body_is_answered_as_a_whole(status: int, delay: float | None, rejected: int) -> None:
    buf = Buffer(make_config(), rng=half)
    buf.offer(Sealed(b"\x05\x10abc", 3, 30, 10, {}), 0.0)
    item = buf.head()
    assert item is not None and item.body is not None
    step = buf.settle(item, item.body, buf.judge(item, item.body, status, "?"), "?", None, 0.0, WALL)
    assert step.delay == delay
    assert buf.dropped["rejected"] == rejected
    assert buf.lines == (3 if delay is not None else 0)
