"""Entry timestamps Loki will take: shipper.batch.Stream's stamping rule, table-style,
then end to end with the real shipper against the receiver (which refuses entries older
than 7 days or more than 10 minutes ahead, as Loki does).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.batch import NEW_MARGIN_NS, OLD_MARGIN_NS, Accumulator, Stream, rfc3339_nano
from shipper.encoder import encode_metadata
from shipper.formats import parse_time
from tests.conftest import launch, make_config
from tests.loki_receiver import LokiReceiver, load_push_pb2
from tests.shipper_process import ShipperProcess

NS = 1_000_000_000
S, MIN, H, D = NS, 60 * NS, 3600 * NS, 86400 * NS
WALL = 1_700_000_000 * NS  # 2023-11-14T22:13:20Z, the read time of the first read
FLOOR = WALL - 7 * D + H      # oldest own time kept at WALL (default limits, 1 h margin)
CEILING = WALL + 10 * MIN - MIN  # latest own time kept at WALL (1 min margin)
Y2099 = 4_070_908_800 * NS  # 2099-01-01T00:00:00Z


@pytest.fixture(scope="module")
def pb() -> Any:
    return load_push_pb2()


@dataclass(frozen=True)
class Read:
    """One Accumulator.add: the wall clock of the read and its entries' own times (None: a raw read)."""

    wall: int
    times: Sequence[int] | None
    n: int = 0  # lines of a raw read

    def lines(self, first: int) -> list[bytes]:
        return [b"line %d" % (first + i) for i in range(self.n if self.times is None else len(self.times))]


Got = tuple[int, dict[str, str]]  # (timestamp, structured metadata)


def run(pb: Any, reads: Sequence[Read], stream: Stream | None = None,
        replaced: list[tuple[str, int, str]] | None = None) -> list[Got]:
    """Every entry of one stream, in read order, as Loki would get it."""
    stream = stream or Stream('{stream="stdout"}', name="stdout")
    calls: list[tuple[str, int, str]] = [] if replaced is None else replaced
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=1 << 20, on_replaced=lambda *a: calls.append(a))
    count = 0
    for read in reads:
        lines = read.lines(count)
        count += len(lines)
        assert acc.add(stream, lines, now=0.0, wall_ns=read.wall, times=read.times) == []
    batch = acc.flush()
    assert batch is not None
    (entries,) = [s.entries for s in pb.PushRequest.FromString(batch.body()).streams]
    assert [e.line for e in entries] == ["line %d" % i for i in range(count)]
    return [(e.timestamp.seconds * NS + e.timestamp.nanos, {p.name: p.value for p in e.structuredMetadata})
            for e in entries]


def own(t: int) -> dict[str, str]:
    return {"original_timestamp": rfc3339_nano(t)}


# --- own times: kept inside Loki's window, replaced outside ----------------------------

OWN_TIMES: list[tuple[str, list[Read], list[Got], list[tuple[str, int, str]]]] = [
    ("inside the window: kept",
     [Read(WALL, [FLOOR, WALL - 6 * D, WALL - H, WALL - S, WALL, WALL + 5 * MIN, CEILING])],
     [(FLOOR, {}), (WALL - 6 * D, {}), (WALL - H, {}), (WALL - S, {}), (WALL, {}), (WALL + 5 * MIN, {}),
      (CEILING, {})], []),
    ("one ns older than the floor: the read time, own time as metadata",
     [Read(WALL, [FLOOR - 1])], [(WALL, own(FLOOR - 1))], [("stdout", 1, "too_old")]),
    ("one ns after the ceiling: the read time",
     [Read(WALL, [CEILING + 1])], [(WALL, own(CEILING + 1))], [("stdout", 1, "too_new")]),
    ("too old and too new in one read, counted per reason; unique stamps",
     [Read(WALL, [0, WALL - 8 * D, Y2099, WALL - S])],
     [(WALL, own(0)), (WALL + 1, own(WALL - 8 * D)), (WALL + 2, own(Y2099)), (WALL + 3, {})],
     [("stdout", 2, "too_old"), ("stdout", 1, "too_new")]),
    ("a 2099 record does not poison its stream: later reads keep their own times",
     [Read(WALL, [WALL - 2 * S, Y2099]), Read(WALL + S, [WALL + 300_000_000, WALL + 700_000_000]),
      Read(WALL + 2 * S, [WALL + 1_500_000_000])],
     [(WALL - 2 * S, {}), (WALL, own(Y2099)), (WALL + 300_000_000, {}), (WALL + 700_000_000, {}),
      (WALL + 1_500_000_000, {})], [("stdout", 1, "too_new")]),
    ("entries read with the 2099 one and written before the read follow it (last + 1): unique, in order",
     [Read(WALL, [Y2099, WALL - 2 * S, WALL - S]), Read(WALL + S, [WALL + 500_000_000])],
     [(WALL, own(Y2099)), (WALL + 1, {}), (WALL + 2, {}), (WALL + 500_000_000, {})],
     [("stdout", 1, "too_new")]),
    ("before 1970: replaced (the encoder never sees a negative time)",
     [Read(WALL, [-1])], [(WALL, own(-1))], [("stdout", 1, "too_old")]),
    ("a time ahead inside the grace period carries the stream, still inside it",
     [Read(WALL, [WALL + 8 * MIN, WALL - S]), Read(WALL + S, None, 2)],
     [(WALL + 8 * MIN, {}), (WALL + 8 * MIN + 1, {}), (WALL + 8 * MIN + 2, {}), (WALL + 8 * MIN + 3, {})], []),
    ("entries at the ceiling go on by a nanosecond each (the margin covers it)",
     [Read(WALL, [CEILING, CEILING, CEILING])], [(CEILING, {}), (CEILING + 1, {}), (CEILING + 2, {})], []),
    ("the floor and ceiling move with the read time",
     [Read(WALL, [WALL]), Read(WALL + 2 * H, [FLOOR + H, WALL + 2 * H + 9 * MIN])],
     [(WALL, {}), (WALL + 2 * H, own(FLOOR + H)), (WALL + 2 * H + 9 * MIN, {})], [("stdout", 1, "too_old")]),
]


@pytest.mark.parametrize(("reads", "expected", "replaced"), [c[1:] for c in OWN_TIMES], ids=[c[0] for c in OWN_TIMES])
def test_own_times_are_kept_only_inside_lokis_window(
        pb: Any, reads: list[Read], expected: list[Got], replaced: list[tuple[str, int, str]]) -> None:
    calls: list[tuple[str, int, str]] = []
    assert run(pb, reads, replaced=calls) == expected
    assert calls == replaced


def test_a_replaced_time_is_kept_after_the_entry_and_stream_metadata(pb: Any) -> None:
    stream = Stream('{stream="stdout"}', encode_metadata([("run_id", "r1")]), "stdout")
    acc = Accumulator(batch_wait=1.0, batch_max_bytes=1 << 20, on_replaced=lambda *a: None)
    level = encode_metadata([("logger", "airflow.task"), ("level", "error")])
    acc.add(stream, [b"a", b"b"], now=0.0, wall_ns=WALL, times=[Y2099 + 5, WALL - S], each_metadata=[level, b""])
    batch = acc.flush()
    assert batch is not None
    (entries,) = [s.entries for s in pb.PushRequest.FromString(batch.body()).streams]
    assert [[(p.name, p.value) for p in e.structuredMetadata] for e in entries] == [
        [("run_id", "r1"), ("logger", "airflow.task"), ("level", "error"),
         ("original_timestamp", "2099-01-01T00:00:00.000000005Z")],
        [("run_id", "r1")]]
    assert len(batch.body()) <= batch.size  # the added metadata is in the size bound


@pytest.mark.parametrize(("max_age", "grace", "floor", "ceiling"), [
    (7 * 86400.0, 600.0, WALL - 7 * D + H, WALL + 9 * MIN),     # Loki's defaults
    (30 * 86400.0, 3600.0, WALL - 30 * D + H, WALL + 59 * MIN),  # a cluster's own limits
    (3600.0, 60.0, WALL - 30 * MIN, WALL + 30 * S),             # small windows: half of each is the margin
])
def test_the_window_follows_the_configured_limits(
        pb: Any, max_age: float, grace: float, floor: int, ceiling: int) -> None:
    assert (OLD_MARGIN_NS, NEW_MARGIN_NS) == (H, MIN)
    for t, kept in ((floor, True), (floor - 1, False), (ceiling, True), (ceiling + 1, False)):
        acc = Accumulator(batch_wait=1.0, batch_max_bytes=1 << 20, reject_old_samples_max_age=max_age,
                          creation_grace_period=grace, on_replaced=lambda *a: None)
        acc.add(Stream("{}"), [b"x"], now=0.0, wall_ns=WALL, times=[t])
        batch = acc.flush()
        assert batch is not None
        (stream,) = pb.PushRequest.FromString(batch.body()).streams
        stamp = stream.entries[0].timestamp.seconds * NS + stream.entries[0].timestamp.nanos
        assert stamp == (t if kept else WALL), (t, kept)


# --- the wall clock jumps --------------------------------------------------------------

CLOCK_JUMPS: list[tuple[str, list[Read], list[int]]] = [
    ("forward 3 h: stamps follow the clock",
     [Read(WALL, None, 2), Read(WALL + 3 * H, None, 1), Read(WALL + 3 * H + S, [WALL + 3 * H + 1])],
     [WALL, WALL + 1, WALL + 3 * H, WALL + 3 * H + 1]),
    ("back 5 min (inside the grace period): last + 1, ahead of the clock, unique",
     [Read(WALL, None, 2), Read(WALL - 5 * MIN, None, 2), Read(WALL - 5 * MIN + S, [WALL - 5 * MIN])],
     [WALL, WALL + 1, WALL + 2, WALL + 3, WALL + 4]),
    ("back 1 h: raw lines come back to the clock instead of running ahead into too new",
     [Read(WALL, None, 2), Read(WALL - H, None, 2), Read(WALL - H + S, None, 1)],
     [WALL, WALL + 1, WALL - H, WALL - H + 1, WALL - H + S]),
    ("back 1 h: entries with own times come back to them",
     [Read(WALL, [WALL - S, WALL]), Read(WALL - H, [WALL - H - 2 * S, WALL - H - S])],
     [WALL - S, WALL, WALL - H - 2 * S, WALL - H - S]),
    ("back 1 h with a replaced time: the read time, then on from it",
     [Read(WALL, [WALL]), Read(WALL - H, [Y2099, WALL - H - S])],
     [WALL, WALL - H, WALL - H + 1]),
    ("back by exactly grace - margin (9 min): the stream is at the ceiling, back to the clock",
     [Read(WALL, None, 1), Read(WALL - 9 * MIN, None, 1)], [WALL, WALL - 9 * MIN]),
    ("back by 1 ns less: last + 1 is the ceiling itself, still taken",
     [Read(WALL, None, 1), Read(WALL - 9 * MIN + 1, None, 1)], [WALL, WALL + 1]),
    ("back, then forward again past the old stamps",
     [Read(WALL, None, 1), Read(WALL - H, None, 1), Read(WALL + S, None, 1)], [WALL, WALL - H, WALL + S]),
]


@pytest.mark.parametrize(("reads", "expected"), [c[1:] for c in CLOCK_JUMPS], ids=[c[0] for c in CLOCK_JUMPS])
def test_a_jumping_wall_clock_keeps_stamps_unique_and_acceptable(
        pb: Any, reads: list[Read], expected: list[int]) -> None:
    assert [ts for ts, _ in run(pb, reads)] == expected


@st.composite
def read_sequences(draw: st.DrawFn) -> list[Read]:
    reads = []
    wall = WALL
    for _ in range(draw(st.integers(1, 12))):
        wall += draw(st.sampled_from([0, 1, S, MIN, -MIN, 9 * MIN, -9 * MIN, H, -H, 3 * D]))
        if draw(st.booleans()):
            reads.append(Read(wall, None, draw(st.integers(1, 4))))
        else:
            offsets = st.sampled_from([0, -S, -H, -8 * D, -7 * D + H, 9 * MIN, 9 * MIN + 1, 11 * MIN, 80 * 365 * D])
            reads.append(Read(wall, [wall + draw(offsets) for _ in range(draw(st.integers(1, 4)))]))
    return reads


@settings(max_examples=300, deadline=None)
@given(read_sequences())
def test_property_every_stamp_is_acceptable_and_unique_between_clock_steps_back(pb: Any, reads: list[Read]) -> None:
    got = run(pb, reads)
    i = 0
    last = 0
    for read in reads:
        n = read.n if read.times is None else len(read.times)
        stamps = [ts for ts, _ in got[i:i + n]]
        floor, ceiling = read.wall - 7 * D + H, read.wall + 9 * MIN
        # Acceptable to Loki at the read time (the margins give up to n ns past the ceiling).
        assert all(floor <= ts <= ceiling + n for ts in stamps), (read, stamps)
        assert stamps == sorted(set(stamps))
        if last < ceiling:  # no step back beyond the grace period: strictly after every earlier stamp
            assert stamps[0] > last
        own_times: Sequence[int | None] = read.times if read.times is not None else [None] * n
        for (_, md), t in zip(got[i:i + n], own_times):
            if t is not None and not floor <= t <= ceiling:
                assert md == own(t)
            else:
                assert md == {}
        last = stamps[-1]
        i += n


# --- RFC3339Nano --------------------------------------------------------------------------

@pytest.mark.parametrize(("ns", "text"), [
    (0, "1970-01-01T00:00:00Z"),
    (1_500_000_000, "1970-01-01T00:00:01.5Z"),
    (-1, "1969-12-31T23:59:59.999999999Z"),
    (Y2099 + 120_000, "2099-01-01T00:00:00.00012Z"),
    (1_709_164_800 * NS + 86399 * NS + 1, "2024-02-29T23:59:59.000000001Z"),
    (-62_167_219_200 * NS, "0000-01-01T00:00:00Z"),
    (253_402_300_799 * NS + 999_999_999, "9999-12-31T23:59:59.999999999Z"),
    (-62_167_219_200 * NS - 3600 * NS, "-0001-12-31T23:00:00Z"),  # 0000-01-01T00:00:00+01:00
])
def test_rfc3339_nano_as_go_writes_it(ns: int, text: str) -> None:
    assert rfc3339_nano(ns) == text


@settings(max_examples=500)
@given(st.integers(-62_167_219_200 * NS, 253_402_300_799 * NS + 999_999_999))
def test_property_rfc3339_nano_parses_back(ns: int) -> None:
    assert parse_time(rfc3339_nano(ns).encode()) == ns


# --- end to end ---------------------------------------------------------------------------

async def test_a_2099_record_does_not_cost_the_rest_of_the_log(tmp_path: Path, receiver: LokiReceiver,
                                                               procs: list[ShipperProcess]) -> None:
    """A JSON record stamped 2099 used to carry its stream past what Loki takes: every later
    record refused as too new. Now it gets its read time and the later records their own."""
    log = tmp_path / "attempt=1.log"
    log.write_text(json.dumps({"timestamp": "2099-01-01T00:00:00.5Z", "level": "info", "event": "from 2099"}) + "\n")
    config = make_config(receiver.url, []) + f'[[sources]]\npath = "{log}"\nstream = "stdout"\nformat = "json"\n'
    proc = await launch(procs, config)
    await receiver.wait_for_entries(1)
    times = []
    with log.open("a") as f:
        for i in range(5):
            t = time.time_ns() - 1000  # written a microsecond after it happened, as a task does
            times.append(t)
            f.write(json.dumps({"timestamp": rfc3339_nano(t), "level": "info", "event": f"later {i}"}) + "\n")
            f.flush()
    await receiver.wait_for_entries(6)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    entries = receiver.entries(stream="stdout")
    assert [(e.line, e.ts_ns) for e in entries[1:]] == [(f"later {i}", t) for i, t in enumerate(times)]
    first = entries[0]
    assert (first.line, dict(first.metadata)) == (
        "from 2099", {"level": "info", "original_timestamp": "2099-01-01T00:00:00.5Z"})
    assert first.ts_ns < times[0]  # its read time, before the later records were written
    assert proc.summary()["timestamps_replaced"] == {"too_old": 0, "too_new": 1}
    assert (receiver.stats()["refused_entries"], receiver.stats()["requests_by_status"].keys()) == (0, {"204"})
