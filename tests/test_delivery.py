"""Delivery decisions: Loki's answer in, decision out (table tests, like retry.py's).

The answer texts are Loki's own formats (pkg/ingester/stream.go
errorForFailedEntries, pkg/distributor/distributor.go, pkg/validation), as
2.7.7 and 3.4.6 print them; tests/test_real_loki_delivery.py checks the
decisions against the real servers.
"""

from __future__ import annotations

import time

import pytest

from dataclasses import replace

from shipper import delivery
from shipper.delivery import ACK, RETRY, SPLIT, Decision, decide

T0 = 1_764_570_385_717_811_967  # 2025-12-01 06:26:25.717811967 UTC
STREAM = '{job="t", service_name="t"}'


def go_time(ns: int, offset_minutes: int = 0, zone: str = "UTC") -> str:
    """What Go's time.Time.String() prints for `ns` (fraction trimmed of zeros)."""
    seconds, nanos = divmod(ns + offset_minutes * 60 * 10**9, 10**9)
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    sign = "+" if offset_minutes >= 0 else "-"
    h, m = divmod(abs(offset_minutes), 60)
    return f"{text} {sign}{h:02d}{m:02d} {zone}"


def entries(n: int, size: int = 100) -> list[tuple[int, int, int]]:
    return [(T0 + i, size, size + 50) for i in range(n)]


def rate_limited_34(refused: list[int], total: int, es: list[tuple[int, int, int]]) -> str:
    """Loki 3.4's 429 text for a stream whose entries `refused` (indexes) were refused."""
    lines = [f"entry with timestamp {go_time(es[i][0])} ignored, reason: 'Per stream rate limit exceeded "
             f"(limit: 20KB/sec) while attempting to ingest for stream '{STREAM}' totaling 101B, consider "
             f"splitting a stream via additional labels or contact your Loki administrator to see if the "
             f"limit can be increased'," for i in refused[:10]]
    return "\n".join(lines) + f"\nuser 'fake', total ignored: {len(refused)} out of {total} for stream: {STREAM}"


def rate_limited_27(refused: list[int], total: int, es: list[tuple[int, int, int]]) -> str:
    """Loki 2.7's wording of the same answer."""
    lines = [f"entry with timestamp {go_time(es[i][0])} ignored, reason: 'Per stream rate limit exceeded "
             f"(limit: 20KB/sec) while attempting to ingest for stream '{STREAM}' totaling 101B, consider "
             f"splitting a stream via additional labels or contact your Loki administrator to see if the "
             f"limit can be increased' for stream: {STREAM}," for i in refused[:10]]
    return "\n".join(lines) + f"\ntotal ignored: {len(refused)} out of {total}"


TENANT_429 = ("Ingestion rate limit exceeded for user fake (limit: 1048576 bytes/sec) while attempting to "
              "ingest '20000' lines totaling '2400000' bytes, reduce log volume or contact your Loki "
              "administrator to see if the limit can be increased")


@pytest.mark.parametrize("fmt", [rate_limited_34, rate_limited_27])
@pytest.mark.parametrize(("refused", "n", "want"), [
    # Whole stream refused (Loki 3's shard_streams): nothing stored, all again...
    (list(range(100)), 100, Decision(RETRY, whole=True, cause="per_stream_rate_limit")),
    # ... or in pieces of a second of the named rate when it is more than that (past the burst?).
    (list(range(300)), 300, Decision(SPLIT, whole=True, cause="per_stream_rate_limit")),
    # Per entry, all named: exactly those again, the rest stored.
    ([5, 7, 9], 20, Decision(RETRY, stored=17, resend=(5, 7, 9), cause="per_stream_rate_limit")),
    # Per entry, a suffix refused, more than 10: the 10 named and the rest after them are all refused.
    (list(range(50, 100)), 100, Decision(RETRY, stored=50, resend=tuple(range(50, 100)),
                                         cause="per_stream_rate_limit")),
    # Per entry, more than 10 and not a suffix: the tail after the 10th named holds 2 refused
    # of 6; all 6 again with the 10 named, 4 of them Loki holds (uncertain: its dedup drops them).
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14], 16,
     Decision(RETRY, stored=4, resend=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), uncertain=4,
              cause="per_stream_rate_limit")),
])
def test_per_stream_rate_limit(fmt, refused, n, want) -> None:
    es = entries(n)
    got = decide(429, fmt(refused, n, es), es)
    assert replace(got, min_delay=0.0, max_push_bytes=0) == want
    # Paced: what goes out again, in Loki's bytes (line + metadata), at the rate the answer
    # named, in pushes of at most a second of it.
    again = n if want.resend is None else len(want.resend)
    assert got.max_push_bytes == 20 * 1024
    assert got.min_delay == (0.0 if want.action == SPLIT else min(again * 150, 20480) / 20480)


def test_entries_refused_by_validation_before_the_ingester_are_refused_for_good() -> None:
    # 10 entries sent, 2 refused by the distributor (too long), the ingester saw 8 and refused 1 (named).
    es = entries(10)
    message = rate_limited_34([3], 8, es)
    assert decide(429, message, es) == Decision(RETRY, stored=7, refused=2, resend=(3,),
                                                cause="per_stream_rate_limit", min_delay=150 / 20480,
                                                max_push_bytes=20480)


@pytest.mark.parametrize(("offset", "zone"), [(0, "UTC"), (60, "CET"), (-300, "EST"), (330, "IST")])
def test_named_timestamps_are_read_in_the_servers_zone(offset: int, zone: str) -> None:
    es = entries(5)
    text = (f"entry with timestamp {go_time(es[2][0], offset, zone)} ignored, reason: 'Per stream rate limit "
            f"exceeded',\nuser 'fake', total ignored: 1 out of 5 for stream: {STREAM}")
    assert decide(429, text, es).resend == (2,)


@pytest.mark.parametrize("ns", [T0, T0 - T0 % 10**9, T0 - T0 % 10**6, 0, 86400 * 10**9 * 365 * 130])
def test_go_time_roundtrip(ns: int) -> None:
    assert delivery.parse_go_time(go_time(ns)) == ns


def test_a_named_timestamp_not_in_the_push_means_all_again() -> None:
    es = entries(5)
    text = rate_limited_34([1], 5, entries(5, 100)).replace(go_time(es[1][0]), go_time(T0 + 999))
    assert decide(429, text, es) == Decision(RETRY, cause="per_stream_rate_limit", min_delay=5 * 150 / 20480,
                                             max_push_bytes=20480)


@pytest.mark.parametrize(("whole_refusals", "n", "want"), [
    # Under a second of the named rate: again, paced; split after two refusals.
    (0, 5000, Decision(RETRY, whole=True, cause="ingestion_rate_limit", min_delay=5000 * 120 / 2**20,
                       max_push_bytes=2**20)),
    (1, 5000, Decision(SPLIT, whole=True, cause="ingestion_rate_limit")),
    # Over a second of it: in pieces of a second's worth at once (it may be over the burst).
    (0, 20000, Decision(SPLIT, whole=True, cause="ingestion_rate_limit", max_push_bytes=2**20)),
    # One entry cannot be split.
    (5, 1, Decision(RETRY, whole=True, cause="ingestion_rate_limit", min_delay=120 / 2**20,
                    max_push_bytes=2**20)),
])
def test_tenant_rate_limit_retries_then_splits(whole_refusals: int, n: int, want: Decision) -> None:
    assert decide(429, TENANT_429, [(0, 100, 120)] * n, whole_refusals) == want


def test_a_whole_stream_refused_twice_is_split() -> None:
    es = entries(300)
    assert decide(429, rate_limited_34(list(range(300)), 300, es), es, 1) == Decision(
        SPLIT, whole=True, cause="per_stream_rate_limit")


@pytest.mark.parametrize(("limit", "rate"), [("20KB", 20480), ("3MB", 3 * 2**20), ("1.5MB", 1.5 * 2**20),
                                              ("512B", 512), ("1048576 bytes", 2**20)])
def test_pacing_reads_the_limit_loki_named(limit: str, rate: float) -> None:
    es = entries(4)
    message = f"entry with timestamp {go_time(es[0][0])} ignored, reason: 'Per stream rate limit exceeded " \
              f"(limit: {limit}/sec) while attempting',\nuser 'fake', total ignored: 4 out of 4 for stream: {STREAM}"
    got = decide(429, message, es)
    assert got.max_push_bytes == int(rate)
    if 4 * 150 > rate:
        assert (got.action, got.min_delay) == (SPLIT, 0.0)
    else:
        assert (got.action, got.min_delay) == (RETRY, 4 * 150 / rate)


@pytest.mark.parametrize(("max_bytes", "want"), [
    (0, [(0, 1, 2, 3, 4)]),
    (300, [(0, 1), (2, 3), (4,)]),
    (100, [(0,), (1,), (2,), (3,), (4,)]),  # an entry over the bound goes alone
])
def test_chunked(max_bytes: int, want: list[tuple[int, ...]]) -> None:
    assert delivery.chunked(range(5), entries(5), max_bytes) == want


def test_an_answer_for_one_shard_of_a_stream_knows_nothing_of_the_rest() -> None:
    es = entries(6)
    sharded = '{job="t", __stream_shard__="1"}'
    message = (f"entry with timestamp {go_time(es[1][0])} ignored, reason: 'Per stream rate limit exceeded "
               f"(limit: 20KB/sec) while attempting',\nuser 'fake', total ignored: 1 out of 3 for stream: {sharded}")
    got = decide(429, message, es)
    assert (got.action, got.resend, got.stored, got.cause) == (RETRY, None, 0, "sharded_stream")


@pytest.mark.parametrize(("message", "want"), [
    ("", Decision(RETRY, whole=True, cause="rate_limit")),  # a gateway's bare 429
    ("<html>Too Many Requests</html>", Decision(RETRY, whole=True, cause="rate_limit")),
])
def test_a_429_that_is_not_lokis_text_resends_all(message: str, want: Decision) -> None:
    assert decide(429, message, entries(4)) == want
    assert decide(429, message, entries(4), whole_refusals=5) == want  # never split: no burst is named


TOO_LONG = ("Max entry size '1024' bytes exceeded for stream '{job=\"t\"}' while adding an entry with length "
            "'2000' bytes")


@pytest.mark.parametrize(("message", "sizes", "want"), [
    # Loki 2.7: one error named; counted by the limit it names.
    (TOO_LONG, [100] * 990 + [2000] * 10, Decision(ACK, stored=990, refused=10, cause="invalid")),
    # Loki 3.4: grouped with counts.
    ("10 errors like: " + TOO_LONG, [100] * 990 + [2000] * 10,
     Decision(ACK, stored=990, refused=10, cause="invalid")),
    ("3 errors like: " + TOO_LONG + "; 2 errors like: entry for stream '{job=\"t\"}' has timestamp too new: x",
     [100] * 10, Decision(ACK, stored=5, refused=5, cause="invalid")),
    # A label error refuses the whole stream.
    ("error at least one label pair is required per stream", [100] * 10,
     Decision(ACK, refused=10, cause="invalid")),
])
def test_validation_400(message: str, sizes: list[int], want: Decision) -> None:
    es = [(T0 + i, s, s) for i, s in enumerate(sizes)]
    assert decide(400, message, es) == want


def test_too_old_counted_by_the_bound_loki_27_names() -> None:
    old = 1_700_000_000 * 10**9
    es = [(old + i, 10, 10) for i in range(300)] + [(T0 + i, 10, 10) for i in range(300)]
    message = ("entry for stream '{job=\"t\"}' has timestamp too old: 2023-11-14T22:13:20Z, oldest acceptable "
               "timestamp is: 2025-11-24T06:26:25Z")
    assert decide(400, message, es) == Decision(ACK, stored=300, refused=300, cause="invalid")


def test_too_far_behind_is_refused_for_good() -> None:
    es = entries(10)
    message = "\n".join(f"entry with timestamp {go_time(es[i][0])} ignored, reason: 'entry too far behind, "
                        f"entry timestamp is: x, oldest acceptable timestamp is: y'," for i in (0, 1))
    message += f"\nuser 'fake', total ignored: 2 out of 10 for stream: {STREAM}"
    assert decide(400, message, es) == Decision(ACK, stored=8, refused=2, cause="invalid")


@pytest.mark.parametrize(("outcome", "want"), [
    (204, Decision(ACK, stored=3)),
    (200, Decision(ACK, stored=3)),
    (500, Decision(RETRY, cause="server")),
    (503, Decision(RETRY, cause="server")),
    (408, Decision(RETRY, cause="server")),
    (401, Decision(ACK, refused=3, cause="refused")),
    (403, Decision(ACK, refused=3, cause="refused")),
    (404, Decision(ACK, refused=3, cause="refused")),
    (413, Decision(SPLIT, cause="too_large")),
    (ConnectionResetError(), Decision(RETRY, cause="transport")),
    (TimeoutError(), Decision(RETRY, cause="transport")),
    (EOFError(), Decision(RETRY, cause="transport")),
])
def test_statuses(outcome: int | BaseException, want: Decision) -> None:
    assert decide(outcome, "", entries(3)) == want


def test_a_single_entry_too_large_is_refused() -> None:
    assert decide(413, "", entries(1)) == Decision(ACK, refused=1, cause="too_large")


def uncertain_decision() -> tuple[Decision, list[tuple[int, int, int]]]:
    es = entries(16)
    message = rate_limited_27([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14], 16, es)
    return decide(429, message, es), es


def test_resolve_settles_the_uncertain_entries_by_what_loki_holds() -> None:
    decision, es = uncertain_decision()
    held = {es[i][0] for i in (10, 11, 13, 15)}  # the four stored ones of the tail
    assert delivery.resolve(decision, es, held) == replace(
        decision, resend=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 14), uncertain=0)


@pytest.mark.parametrize("held", [None, set(), {T0 + 10}, {T0 + i for i in range(16)}])
def test_resolve_keeps_the_decision_when_the_answer_does_not_add_up(held: set[int] | None) -> None:
    decision, es = uncertain_decision()
    assert delivery.resolve(decision, es, held) == decision


def test_a_grouped_answer_cut_short_is_counted_by_the_limit_it_names() -> None:
    """Loki 3 lists one message per refused entry; the client keeps the first 1 MiB of an answer."""
    old = 1_700_000_000 * 10**9
    es = [(old + i, 10, 10) for i in range(300)] + [(T0 + i, 10, 10) for i in range(300)]
    one = ("1 errors like: entry for stream '{job=\"t\"}' has timestamp too old: 2023-11-14T22:13:20Z, "
           "oldest acceptable timestamp is: 2025-11-24T06:26:25Z")
    cut = "; ".join([one] * 5)  # 5 of the 300 groups made it
    assert decide(400, cut, es) == Decision(ACK, stored=300, refused=300, cause="invalid")


class _BuggySink:
    """A sink whose push fails with an exception no transport raises (a bug)."""

    timeout = 1.0

    async def push(self, body: bytes, timeout: float | None = None) -> object:
        raise KeyError("a bug in the sink")

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None:
        return None

    async def close(self) -> None:
        pass


async def test_a_bug_in_the_sink_ends_the_sender_instead_of_counting_a_refusal() -> None:
    """The supervisor turns a dead sender into exit 3 (shipper.lifecycle); the lines are not `rejected`."""
    from shipper import config as config_module, events
    from shipper.batch import Stream
    from shipper.pipeline import Pipeline

    cfg = config_module.parse('[loki]\nurl = "http://127.0.0.1:1/loki/api/v1/push"\n')
    pipeline = Pipeline(cfg, [], _BuggySink())  # type: ignore[arg-type]
    pipeline.acc.add(Stream('{stream="stdout"}'), [b"one", b"two"], 0.0, T0)
    pipeline._flush_open()
    rejected = events.COUNTERS.dropped["rejected"]
    with pytest.raises(KeyError, match="a bug in the sink"):
        await pipeline.sender()
    assert events.COUNTERS.dropped["rejected"] == rejected
    assert pipeline.undelivered_lines == 2
