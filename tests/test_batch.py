"""shipper.batch: Accumulator and Stream, with the clock passed in.

Batch bodies are decoded with the protobuf library compiled from proto/push.proto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import config, lifecycle
from shipper.batch import _ENTRY_OVERHEAD, _STREAM_OVERHEAD, Accumulator, Batch, Stream
from shipper.encoder import encode_metadata
from tests.loki_receiver import load_push_pb2

NS = 1_000_000_000
WALL = 1_700_000_000 * NS  # an epoch ns "now"


@pytest.fixture(scope="session")
def pb() -> Any:
    return load_push_pb2()


@dataclass(frozen=True)
class Decoded:
    labels: str
    entries: list[tuple[int, bytes]]  # (timestamp ns, line)
    metadata: list[list[tuple[str, str]]]


def decode(pb: Any, batch: Batch) -> list[Decoded]:
    out = []
    for s in pb.PushRequest.FromString(batch.body()).streams:
        out.append(Decoded(
            s.labels,
            [(e.timestamp.seconds * NS + e.timestamp.nanos, e.line.encode()) for e in s.entries],
            [[(p.name, p.value) for p in e.structuredMetadata] for e in s.entries]))
    return out


# --- due / flush ---------------------------------------------------------------

def test_due_only_after_batch_wait_since_the_first_line() -> None:
    acc = Accumulator(batch_wait=0.5, batch_max_bytes=10_000)
    s = Stream('{a="b"}')
    assert acc.due(0.0) is None
    assert acc.next_due() is None
    assert acc.open_bytes == 0
    assert acc.add(s, [b"first"], now=100.0, wall_ns=WALL) == []
    assert acc.next_due() == 100.5
    assert acc.due(100.0) is None
    assert acc.due(100.499) is None
    # A later line does not move the deadline.
    assert acc.add(s, [b"second"], now=100.4, wall_ns=WALL + 1) == []
    assert acc.next_due() == 100.5
    batch = acc.due(100.5)
    assert batch is not None
    assert (batch.opened, batch.lines, batch.line_bytes) == (100.0, 2, 11)
    assert acc.due(1000.0) is None
    assert acc.next_due() is None
    assert acc.open_bytes == 0


def test_the_next_batch_opens_with_its_own_first_line() -> None:
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=10_000)
    s = Stream('{a="b"}')
    acc.add(s, [b"x"], now=5.0, wall_ns=WALL)
    assert acc.due(6.0) is not None
    acc.add(s, [b"y"], now=9.0, wall_ns=WALL)
    assert acc.next_due() == 10.0
    assert acc.due(9.99) is None


def test_flush_seals_the_open_batch_whatever_its_age(pb: Any) -> None:
    acc = Accumulator(batch_wait=60.0, batch_max_bytes=10_000)
    assert acc.flush() is None
    s = Stream('{a="b"}')
    acc.add(s, [b"one", b"two"], now=1.0, wall_ns=WALL)
    batch = acc.flush()
    assert batch is not None
    assert [d.entries for d in decode(pb, batch)] == [[(WALL, b"one"), (WALL + 1, b"two")]]
    assert acc.flush() is None
    assert acc.due(1e9) is None


def test_adding_no_lines_opens_no_batch() -> None:
    acc = Accumulator(batch_wait=0.5, batch_max_bytes=10_000)
    assert acc.add(Stream('{a="b"}'), [], now=1.0, wall_ns=WALL) == []
    assert acc.next_due() is None
    assert acc.flush() is None


# --- size limit -----------------------------------------------------------------

def test_add_seals_a_batch_that_one_more_line_would_overflow(pb: Any) -> None:
    s = Stream('{a="b"}')  # 7 bytes of labels: the stream costs 7 + 12
    per_line = 50 + _ENTRY_OVERHEAD
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=7 + _STREAM_OVERHEAD + 2 * per_line)  # room for 2
    lines = [bytes([65 + i]) * 50 for i in range(5)]
    sealed = acc.add(s, lines, now=0.0, wall_ns=WALL)
    assert [b.lines for b in sealed] == [2, 2]
    assert [b.line_bytes for b in sealed] == [100, 100]
    assert [b.size for b in sealed] == [acc.batch_max_bytes] * 2
    assert acc.open_bytes == 7 + _STREAM_OVERHEAD + per_line
    rest = acc.flush()
    assert rest is not None and rest.lines == 1
    got = [d.entries for b in [*sealed, rest] for d in decode(pb, b)]
    assert got == [[(WALL, lines[0]), (WALL + 1, lines[1])],
                   [(WALL + 2, lines[2]), (WALL + 3, lines[3])],
                   [(WALL + 4, lines[4])]]
    for b in sealed:
        assert len(b.body()) <= acc.batch_max_bytes


def test_a_line_that_fits_exactly_is_added() -> None:
    s = Stream('{a="b"}', encode_metadata([("run_id", "r")]))
    per_line = _ENTRY_OVERHEAD + len(s.metadata)
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=7 + _STREAM_OVERHEAD + per_line + 30)
    assert acc.add(s, [b"x" * 30], now=0.0, wall_ns=WALL) == []
    assert acc.open_bytes == acc.batch_max_bytes
    sealed = acc.add(s, [b""], now=0.0, wall_ns=WALL)
    assert [b.lines for b in sealed] == [1]


def test_a_second_stream_pays_for_its_labels() -> None:
    a, b = Stream('{s="a"}'), Stream('{s="b"}')
    per_line = 10 + _ENTRY_OVERHEAD
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=2 * (7 + _STREAM_OVERHEAD) + 2 * per_line)
    assert acc.add(a, [b"a" * 10], now=0.0, wall_ns=WALL) == []
    assert acc.add(b, [b"b" * 10], now=0.0, wall_ns=WALL) == []
    sealed = acc.add(a, [b"a" * 10], now=0.0, wall_ns=WALL)
    assert [x.lines for x in sealed] == [2]


def test_a_line_too_big_even_for_an_empty_batch_is_shipped_alone(pb: Any) -> None:
    # Config bounds the line but not the labels and metadata, so this happens with a config
    # that parse() accepts (see the regression tests below). It used to raise AssertionError,
    # which killed the intake task; the entry now goes alone, in the one batch over the limit.
    s = Stream('{a="b"}', encode_metadata([("run_id", "r")]))  # 19 + 35 per line: 46 bytes of line fit
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=100)
    lines = [b"small", b"x" * 100, b"y" * 40, b"z" * 10]
    sealed = acc.add(s, lines, now=0.0, wall_ns=WALL)
    last = acc.flush()
    assert last is not None
    batches = [*sealed, last]
    assert [[line for d in decode(pb, b) for _, line in d.entries] for b in batches] == [[line] for line in lines]
    for b in batches:
        assert len(b.body()) <= b.size  # size stays an upper bound
        assert b.line_bytes == sum(len(line) for d in decode(pb, b) for _, line in d.entries)
    assert [len(b.body()) > 100 for b in batches] == [False, True, False, False]


# --- timestamps and grouping ---------------------------------------------------------

def test_timestamps_strictly_increase_per_stream_whatever_the_wall_clock(pb: Any) -> None:
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=100_000)
    s, other = Stream('{s="a"}'), Stream('{s="b"}')
    acc.add(s, [b"a", b"b"], now=0.0, wall_ns=1000)
    acc.add(s, [b"c"], now=0.0, wall_ns=1000)       # same instant again
    acc.add(s, [b"d", b"e"], now=0.0, wall_ns=500)  # clock stepped back
    acc.add(s, [b"f"], now=0.0, wall_ns=1004)       # ahead of the clock, behind the stream
    acc.add(s, [b"g"], now=0.0, wall_ns=5000)       # clock ahead again: taken as is
    acc.add(other, [b"x"], now=0.0, wall_ns=1000)   # streams are independent
    batch = acc.flush()
    assert batch is not None
    got = decode(pb, batch)
    assert got[0].entries == [(1000, b"a"), (1001, b"b"), (1002, b"c"), (1003, b"d"), (1004, b"e"),
                              (1005, b"f"), (5000, b"g")]
    assert got[1].entries == [(1000, b"x")]
    assert (s.last_ts, other.last_ts) == (5000, 1000)


def test_stamp_reserves_consecutive_timestamps() -> None:
    s = Stream("{}")
    assert s.stamp(3, 100) == 100
    assert s.last_ts == 102
    assert s.stamp(1, 50) == 103
    assert s.stamp(2, 0) == 104
    assert s.last_ts == 105
    fresh = Stream("{}")
    assert fresh.stamp(1, 0) == 1  # strictly after the initial last_ts of 0


def test_timestamps_continue_across_batches_sealed_inside_one_add(pb: Any) -> None:
    s = Stream('{a="b"}')
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=7 + _STREAM_OVERHEAD + 3 * (1 + _ENTRY_OVERHEAD))
    lines = [b"%d" % i for i in range(10)]
    batches = [*acc.add(s, lines, now=0.0, wall_ns=WALL)]
    last = acc.flush()
    assert last is not None
    batches.append(last)
    assert [b.lines for b in batches] == [3, 3, 3, 1]
    entries = [e for b in batches for d in decode(pb, b) for e in d.entries]
    assert entries == [(WALL + i, line) for i, line in enumerate(lines)]


def test_entries_are_grouped_per_stream_in_read_order(pb: Any) -> None:
    meta = encode_metadata([("run_id", "manual__1"), ("try_number", "2")])
    a = Stream('{stream="stdout"}', meta, "stdout")
    b = Stream('{stream="stderr"}', meta, "stderr")
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=100_000)
    acc.add(a, [b"a1"], now=0.0, wall_ns=WALL)
    acc.add(b, [b"b1"], now=0.0, wall_ns=WALL + 10)
    acc.add(a, [b"a2", b"a3"], now=0.0, wall_ns=WALL + 20)
    acc.add(b, [b"b2"], now=0.0, wall_ns=WALL + 30)
    batch = acc.flush()
    assert batch is not None
    assert (batch.lines, batch.line_bytes) == (5, 10)
    got = decode(pb, batch)
    assert [d.labels for d in got] == ['{stream="stdout"}', '{stream="stderr"}']
    assert got[0].entries == [(WALL, b"a1"), (WALL + 20, b"a2"), (WALL + 21, b"a3")]
    assert got[1].entries == [(WALL + 10, b"b1"), (WALL + 30, b"b2")]
    assert all(m == [("run_id", "manual__1"), ("try_number", "2")] for d in got for m in d.metadata)


# --- property: sizes, order, counts ------------------------------------------------

@st.composite
def workloads(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, list[int], int]]]:
    """(max_line_bytes, batch_max_bytes, [(stream index, line sizes, wall ns step)])."""
    max_line = draw(st.integers(0, 400))
    # Large enough for one max-size line with the longest stream framing used below.
    batch_max = draw(st.integers(max_line + _ENTRY_OVERHEAD + 40 + _STREAM_OVERHEAD + 30, 3000))
    adds = draw(st.lists(st.tuples(st.integers(0, 1), st.lists(st.integers(0, max_line), max_size=30),
                                   st.integers(-5, 5)), max_size=12))
    return max_line, batch_max, adds


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_property_batches_respect_the_limit_and_keep_every_line(
        pb: Any, workload: tuple[int, int, list[tuple[int, list[int], int]]]) -> None:
    _, batch_max, adds = workload
    streams = [Stream('{stream="stdout"}'), Stream('{stream="stderr", x="y"}', encode_metadata([("run_id", "r" * 20)]))]
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=batch_max)
    read: list[tuple[int, bytes]] = []  # (stream index, line) in read order
    sealed: list[Batch] = []
    wall = WALL
    counter = 0
    for index, sizes, step in adds:
        lines = []
        for size in sizes:
            lines.append((b"%d:" % counter + b"x" * size)[:size])  # exactly `size` bytes, told apart
            counter += 1
        wall += step
        read += [(index, line) for line in lines]
        sealed += acc.add(streams[index], lines, now=0.0, wall_ns=wall)
    last = acc.flush()
    batches = sealed + ([last] if last is not None else [])

    position = 0
    per_stream: dict[str, list[tuple[int, bytes]]] = {}
    for i, batch in enumerate(batches):
        body = batch.body()
        assert 0 < batch.lines
        assert len(body) <= batch_max
        assert len(body) <= batch.size  # size is an upper bound of the body
        mine = read[position:position + batch.lines]
        assert batch.line_bytes == sum(len(line) for _, line in mine)
        got = decode(pb, batch)
        for index in (0, 1):
            expected = [line for s, line in mine if s == index]
            entries = next((d.entries for d in got if d.labels == streams[index].labels), [])
            assert [line for _, line in entries] == expected
            per_stream.setdefault(streams[index].labels, []).extend(entries)
        if i < len(sealed):
            # Sealed by add() only because the next line read would not have fitted.
            index, line = read[position + batch.lines]
            cost = len(line) + _ENTRY_OVERHEAD + len(streams[index].metadata)
            if streams[index] not in batch.parts:
                cost += len(streams[index].labels.encode()) + _STREAM_OVERHEAD
            assert batch.size + cost > batch_max
        position += batch.lines
    assert position == len(read)
    for entries in per_stream.values():
        stamps = [ts for ts, _ in entries]
        assert stamps == sorted(set(stamps))  # strictly increasing across batches


# --- regressions (each was a strict xfail) ---------------------------------------------

def test_a_config_accepted_by_parse_never_trips_the_accumulator_assertion() -> None:
    # config only requires batch_max_bytes >= max_line_bytes + 1024, but the label string
    # and metadata take room too: this first 1024-byte line raised AssertionError (exit 3).
    cfg = config.parse(
        'max_line_bytes = 1024\nbuffer_max_bytes = 4096\n[loki]\nbatch_max_bytes = 2048\n'
        f'[labels]\nteam = "{"t" * 1100}"\n'
        '[[sources]]\npath = "/tmp/task.log"\nstream = "stdout"\n')
    (stream,) = lifecycle.build_streams(cfg, {"run_id": "scheduled__2024-05-01T00:00:00+00:00"})
    acc = Accumulator(cfg.loki.batch_wait, cfg.loki.batch_max_bytes)
    acc.add(stream, [b"x" * cfg.max_line_bytes], now=0.0, wall_ns=WALL)
    batch = acc.flush()
    assert batch is not None and batch.lines == 1
    assert len(batch.body()) <= batch.size


def test_body_never_exceeds_the_limit_with_lines_of_2_mib() -> None:
    # _ENTRY_OVERHEAD = 22 assumed length varints of at most 3 bytes (lines < 2 MiB), and
    # config does not cap max_line_bytes: this gave a 6291542-byte body for a 6291541 limit.
    line = b"x" * 2**21
    s = Stream('{a="b"}')
    batch_max = len(s.labels) + _STREAM_OVERHEAD + 3 * (len(line) + _ENTRY_OVERHEAD)
    config.parse(f"max_line_bytes = {len(line)}\nbuffer_max_bytes = {2 * batch_max}\n"
                 f"[loki]\nbatch_max_bytes = {batch_max}\n")  # accepted
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=batch_max)
    batches = acc.add(s, [line] * 3, now=0.0, wall_ns=WALL + NS - 1000)
    last = acc.flush()
    if last is not None:
        batches.append(last)
    assert all(len(b.body()) <= batch_max for b in batches), [len(b.body()) for b in batches]
