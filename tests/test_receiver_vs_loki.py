"""Differential: the same pushes to tests.loki_receiver and to a real Loki, the same answers.

Each case builds its push bodies with the protobuf library (``load_push_pb2``)
and python-snappy (block format), sends the same sequence to a receiver
configured with the tenant's limits and to the real Loki (a unique ``run``
label per case), and compares status codes, the answer texts where they
matter (the ingester's whole text, the distributor's grouped error counts)
and what each stored (queried back from Loki; its querier merges away an
entry equal to the one before it, so duplicates stored in two blocks of a
chunk read back once). Rate limits are provoked by
sizes, never by timing: a stream's entries of one push over its burst, or a
tenant's push over its burst; whatever refills while Loki handles one push is
far below one entry.

Loki's grouped errors come in Go map order (random), so they are compared as
(message, count) multisets; the "oldest acceptable timestamp" of a too-old
message is the server's own now minus the maximum age, so it is masked.
"""

from __future__ import annotations

import collections
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import aiohttp
import pytest
import snappy

from tests.loki_receiver import Entry, Limits, LokiReceiver
from tests.real_loki import RealLoki, loki3, loki27, real_lokis  # noqa: F401 (fixtures)
from tests.test_loki_receiver import serialize

MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
KB = 1024

STREAM_LIMITS: dict[str, object] = {"per_stream_rate_limit": 20 * KB, "per_stream_rate_limit_burst": 40 * KB}
TENANT_LIMITS: dict[str, dict[str, object]] = {
    "default": {},
    "stream-limited": STREAM_LIMITS,
    "burst-limited": {"ingestion_rate": 1024 * KB, "ingestion_burst": 1024 * KB},
    "line-limited": {"max_line_size": KB},
    "age-limited": {"reject_old_samples_max_age_ns": HOUR, "creation_grace_period_ns": MINUTE},
}
# The example config's limits, which every tenant's overrides inherit.
EXAMPLE_LIMITS: dict[str, object] = {
    "ingestion_rate": 64 * KB * KB, "ingestion_burst": 128 * KB * KB,
    "per_stream_rate_limit": 64 * KB * KB, "per_stream_rate_limit_burst": 128 * KB * KB,
}

Streams = Sequence[tuple[str, Sequence[Entry]]]
Row = tuple[tuple[tuple[str, str], ...], int, str, tuple[tuple[str, str], ...]]


def push_body(*streams: tuple[str, Sequence[Entry]]) -> bytes:
    compressed: bytes = snappy.compress(serialize(streams))  # block format, what Loki reads
    return compressed


def entries(n: int, t: int, size: int = 100, step: int = 1, tag: str = "") -> list[Entry]:
    """n entries of `size` bytes each, timestamps t, t + step, ..."""
    return [Entry(t + i * step, (f"{tag}{i:07d} " + "x" * size)[:size]) for i in range(n)]


def limits_for(loki: RealLoki, tenant: str) -> Limits:
    changes = {**EXAMPLE_LIMITS, **TENANT_LIMITS[tenant]}
    if loki.version.startswith("2."):
        return Limits.loki27(**changes)
    return Limits.loki3(**changes)


class Both:
    """A real Loki (one tenant) and a receiver with that tenant's limits, pushed alike."""

    def __init__(self, loki: RealLoki, tenant: str, rx: LokiReceiver, session: aiohttp.ClientSession) -> None:
        self.loki, self.tenant, self.rx, self.session = loki, tenant, rx, session
        self.run = uuid.uuid4().hex[:12]

    def labels(self, **extra: str) -> str:
        pairs = {"run": self.run, **extra}
        return "{" + ", ".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"

    async def push(self, *streams: tuple[str, Sequence[Entry]]) -> tuple[tuple[int, str], tuple[int, str]]:
        """(Loki's (status, text), the receiver's), each text without Go's trailing newline."""
        data = push_body(*streams)
        status, text = self.loki.push(data, tenant=self.tenant)
        headers = {"Content-Type": "application/x-protobuf", "X-Scope-OrgID": self.tenant}
        async with self.session.post(self.rx.url, data=data, headers=headers) as r:
            mine = (r.status, await r.text())
        return (status, text.removesuffix("\n")), (mine[0], mine[1].removesuffix("\n"))

    def stored(self) -> tuple[list[Row], list[Row]]:
        """What Loki and the receiver hold for this case's run, sorted the same way."""
        real = [(tuple(sorted(labels.items())), ts, line, _meta(meta))
                for labels, ts, line, meta in self.loki.query(f'{{run="{self.run}"}}', self.tenant)]
        mine = [(key, e.ts_ns, e.line, _meta(dict(e.metadata)))
                for key, stored in self.rx.streams().items() if ("run", self.run) in key for e in stored]
        return sorted(real), sorted(mine)


def _meta(meta: dict[str, str]) -> tuple[tuple[str, str], ...]:
    # Loki 3 adds detected_level to every entry; the receiver does not store it.
    return tuple(sorted((k, v) for k, v in meta.items() if k != "detected_level"))


_OLDEST = re.compile(r"(has timestamp too old: [^\s;]+, oldest acceptable timestamp is: )[^\s;]+")


def grouped(text: str) -> collections.Counter[str]:
    """util.GroupedErrors text as a multiset of messages (the order of Go's map iteration is random)."""
    counts: collections.Counter[str] = collections.Counter()
    for part in re.split(r"; (?=\d+ errors like: )", _OLDEST.sub(r"\1<now - max age>", text)):
        match = re.fullmatch(r"(\d+) errors like: (.*)", part, re.S)
        if match:
            counts[match.group(2)] += int(match.group(1))
        else:
            counts[part] += 1
    return counts


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def case(loki: RealLoki, tenant: str, session: aiohttp.ClientSession, **changes: object) -> Both:
    limits = limits_for(loki, tenant)
    if changes:
        limits = replace(limits, **changes)  # type: ignore[arg-type]
    rx = LokiReceiver(limits=limits)
    await rx.start()
    return Both(loki, tenant, rx, session)


@pytest.fixture
async def started() -> AsyncIterator[list[Both]]:
    cases: list[Both] = []
    yield cases
    for c in cases:
        await c.rx.stop()


# -- the per-stream rate limit (ingester) ------------------------------------------------------------------

async def test_first_of_two_streams_over_its_limit_is_lost_and_answered_204(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "stream-limited", session))
    t = time.time_ns()
    # 500 x 100 B = 50,000 B in one push: over the 40 KiB burst however full the bucket.
    real, mine = await c.push((c.labels(s="a"), entries(500, t)), (c.labels(s="b"), entries(3, t, tag="b")))
    assert real == mine == (204, "")
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows
    assert {dict(r[0])["s"] for r in real_rows} == {"b"} and len(real_rows) == 3


async def test_stream_over_its_limit_alone_is_429_with_lokis_text(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "stream-limited", session))
    t = time.time_ns()
    real, mine = await c.push((c.labels(), entries(500, t)))
    assert real[0] == mine[0] == 429
    assert real[1] == mine[1]  # ten listed entries with Go timestamps, then "total ignored: 500 out of 500"
    assert real[1].endswith(f"user 'stream-limited', total ignored: 500 out of 500 for stream: "
                            f'{{run="{c.run}", service_name="unknown_service"}}')
    assert c.stored() == ([], [])
    # Nothing was taken from the bucket: a push within the burst is stored whole.
    real, mine = await c.push((c.labels(), entries(300, t + 1000)))
    assert real == mine == (204, "")
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and len(real_rows) == 300


async def test_validation_errors_give_way_to_the_ingesters_429(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "stream-limited", session))
    t = time.time_ns()
    too_old = [Entry(t - 8 * 24 * HOUR, "old")]  # the default 7-day limit
    real, mine = await c.push((c.labels(s="old"), too_old), (c.labels(s="a"), entries(500, t)))
    assert real[0] == mine[0] == 429
    assert real[1] == mine[1] and "too old" not in real[1]
    real, mine = await c.push((c.labels(s="old"), too_old), (c.labels(s="b"), entries(5, t)))
    assert real[0] == mine[0] == 400
    assert grouped(real[1]) == grouped(mine[1])
    assert c.stored()[0] == c.stored()[1]


async def test_per_entry_partial_acceptance_on_27(
        loki27: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki27, "stream-limited", session))
    assert c.rx.limits.rate_limit_whole_stream is False
    t = time.time_ns()
    # 30 x 4,000 B: the 40 KiB burst takes 10; the next needs 3,040 B more, 150 ms of refill.
    real, mine = await c.push((c.labels(), entries(30, t, size=4000)))
    assert real[0] == mine[0] == 429
    assert real[1] == mine[1]
    assert real[1].endswith("total ignored: 20 out of 30")
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and [r[1] for r in real_rows] == [t + i for i in range(10)]


# -- dedup ---------------------------------------------------------------------------------------------------

async def test_dedup_only_within_the_newest_block(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "default", session))
    t = time.time_ns() - 10 * MINUTE
    batch = entries(10, t, tag="first")
    assert await c.push((c.labels(), batch)) == ((204, ""), (204, ""))
    assert await c.push((c.labels(), batch)) == ((204, ""), (204, ""))  # in the head block: dropped
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and len(real_rows) == 10
    # 300 x 1,000 B later: the head block (256 KiB) is cut once, the batch is in a cut block.
    later = entries(300, t + MINUTE, size=1000, tag="later")
    assert await c.push((c.labels(), later)) == ((204, ""), (204, ""))
    # Resent: the batch is stored again; entries still in the head block are not (the last one
    # is the stream's last line, so take two before it).
    assert await c.push((c.labels(), [*batch, *later[-3:-1]])) == ((204, ""), (204, ""))
    # The receiver holds the batch twice, as Loki's chunk does (stream.go, MemChunk.Append). Loki's
    # query cannot show it: the querier's merge iterator drops an entry equal (stream, timestamp,
    # line) to the one before it, so the query reads each once; compared the same way.
    assert c.rx.count(run=c.run) == 10 + 300 + 10 and c.rx.dedup_dropped == 10 + 2
    real_rows, my_rows = c.stored()
    assert real_rows == sorted(set(my_rows))
    assert len(real_rows) == 10 + 300


# -- distributor validation ----------------------------------------------------------------------------------

async def test_too_old_and_too_new_are_400_and_the_rest_is_stored(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "age-limited", session))
    t = time.time_ns()
    second = (t - 2 * HOUR) // 10**9 * 10**9  # three too old in one second, two in another: two messages
    old = [Entry(second + i, f"old {i}") for i in range(3)] + [Entry(second + 10**9 + i, f"older {i}")
                                                                 for i in range(2)]
    new = [Entry(t + 5 * MINUTE, "new")]
    real, mine = await c.push((c.labels(s="a"), [*old[:3], *entries(5, t), *new]), (c.labels(s="b"), old[3:]))
    assert real[0] == mine[0] == 400
    assert grouped(real[1]) == grouped(mine[1])
    assert sorted(grouped(real[1]).values()) == [1, 2, 3]
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and len(real_rows) == 5


async def test_too_long_lines_are_400_grouped_and_the_rest_is_stored(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "line-limited", session))
    t = time.time_ns()
    batch = [*entries(3, t, size=1025, tag="a"), *entries(2, t + 10, size=2000, tag="b"),
             *entries(4, t + 20, size=1024, tag="c")]
    real, mine = await c.push((c.labels(), batch))
    assert real[0] == mine[0] == 400
    assert grouped(real[1]) == grouped(mine[1])
    assert sorted(grouped(real[1]).values()) == [2, 3]
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and len(real_rows) == 4


# -- the ingester's order window -----------------------------------------------------------------------------

async def test_out_of_order_beyond_the_hour_is_too_far_behind(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "default", session))
    t = time.time_ns()
    assert await c.push((c.labels(), [Entry(t, "newest")])) == ((204, ""), (204, ""))
    behind = [Entry(t - 61 * MINUTE, "behind"), Entry(t - 59 * MINUTE, "within"),
              Entry(t - 90 * MINUTE, "further behind")]
    real, mine = await c.push((c.labels(), behind))
    assert real[0] == mine[0] == 400
    assert real[1] == mine[1]
    assert "total ignored: 2 out of 3" in real[1] and "entry too far behind" in real[1]
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and [r[2] for r in real_rows] == ["within", "newest"]


# -- the tenant's ingestion rate limit (distributor) ------------------------------------------------------------

async def test_tenant_burst_exceeded_is_429_and_nothing_is_stored(
        loki3: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki3, "burst-limited", session))
    t = time.time_ns()
    # 2 x 600 KB = 1.2 MB in one push: over the 1 MiB burst however full the bucket.
    real, mine = await c.push((c.labels(s="a"), entries(600, t, size=1000)),
                              (c.labels(s="b"), entries(600, t, size=1000)))
    assert real[0] == mine[0] == 429
    assert real[1] == mine[1]
    assert "while attempting to ingest '1200' lines totaling '1200000' bytes" in real[1]
    assert c.stored() == ([], [])


# -- Loki 2.7.7 ------------------------------------------------------------------------------------------------

async def test_27_answers_its_last_validation_error_only(
        loki27: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki27, "line-limited", session))
    t = time.time_ns()
    batch = [*entries(3, t, size=1025, tag="a"), *entries(2, t + 10, size=2000, tag="b"),
             *entries(4, t + 20, size=1024, tag="c")]
    real, mine = await c.push((c.labels(), batch))
    assert real == mine
    assert real[0] == 400 and "with length '2000' bytes" in real[1] and "errors like" not in real[1]
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows and len(real_rows) == 4


async def test_27_first_of_two_streams_over_its_limit_is_answered_204(
        loki27: RealLoki, session: aiohttp.ClientSession, started: list[Both]) -> None:
    started.append(c := await case(loki27, "stream-limited", session))
    t = time.time_ns()
    real, mine = await c.push((c.labels(s="a"), entries(30, t, size=4000)), (c.labels(s="b"), entries(3, t)))
    assert real == mine == (204, "")
    real_rows, my_rows = c.stored()
    assert real_rows == my_rows
    assert collections.Counter(dict(r[0])["s"] for r in real_rows) == {"a": 10, "b": 3}
