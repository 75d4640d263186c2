"""The strict Loki receiver itself: protocol checks, Loki's limits, dedup, scripted failures, CLI.

Bodies are built with the protobuf module compiled from proto/push.proto and
compressed with cramjam's snappy, then POSTed with aiohttp over loopback.
(async tests run through pyproject's asyncio_mode = "auto"; there is no
module-wide asyncio mark because the parser tests are plain functions.)
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
import pytest
import snappy
from hypothesis import given
from hypothesis import strategies as st

from tests.loki_receiver import (
    PUSH_PATH,
    Action,
    Entry,
    LabelsSyntaxError,
    LokiReceiver,
    load_push_pb2,
    parse_labels,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}
MINUTE = 60 * 10**9
HOUR = 60 * MINUTE
DAY = 24 * HOUR
REPO = Path(__file__).resolve().parent.parent


# -- building requests ------------------------------------------------------------

Streams = Sequence[tuple[str, Sequence[Entry]]]


def serialize(streams: Streams) -> bytes:
    """A PushRequest as protobuf bytes, built with the library (never by hand)."""
    pb2 = load_push_pb2()
    request = pb2.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for entry in entries:
            pb_entry = stream.entries.add(line=entry.line)
            pb_entry.timestamp.seconds, pb_entry.timestamp.nanos = divmod(entry.ts_ns, 10**9)
            for name, value in entry.metadata:
                pb_entry.structuredMetadata.add(name=name, value=value)
    data: bytes = request.SerializeToString()
    return data


def block(raw: bytes) -> bytes:
    """Snappy block format, what Loki wants."""
    return bytes(cramjam.snappy.compress_raw(raw))


def body(*streams: tuple[str, Sequence[Entry]]) -> bytes:
    return block(serialize(streams))


async def post(session: aiohttp.ClientSession, rx: LokiReceiver, data: bytes | io.BytesIO,
               headers: Mapping[str, str] = PROTOBUF, **kwargs: Any) -> tuple[int, str]:
    async with session.post(rx.url, data=data, headers=dict(headers), **kwargs) as response:
        return response.status, await response.text()


def now() -> int:
    return time.time_ns()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# -- protobuf module -----------------------------------------------------------

def test_push_pb2_is_compiled_from_the_proto_once() -> None:
    pb2 = load_push_pb2()
    assert load_push_pb2() is pb2
    fields = {f.name: f.number for f in pb2.EntryAdapter.DESCRIPTOR.fields}
    assert fields == {"timestamp": 1, "line": 2, "structuredMetadata": 3}
    assert pb2.PushRequest.DESCRIPTOR.full_name == "logproto.PushRequest"


# -- the happy path ------------------------------------------------------------------

async def test_valid_push_is_stored_and_answered_204(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    md = (("run_id", "r1"), ("try_number", "2"))
    raw = serialize([  # metadata sent in any order comes back sorted
        ('{stream="stdout", app="airflow"}', [Entry(t, "one", md), Entry(t + 1, "two", md[::-1])]),
        ('{app="airflow",stream="stderr"}', [Entry(t + 2, "oops")]),
    ])
    data = block(raw)
    status, text = await post(session, receiver, data,
                              headers={**PROTOBUF, "User-Agent": "shipper/test", "X-Scope-OrgID": "t1"})
    assert (status, text) == (204, "")
    assert receiver.streams() == {
        (("app", "airflow"), ("stream", "stdout")): [Entry(t, "one", md), Entry(t + 1, "two", md)],
        (("app", "airflow"), ("stream", "stderr")): [Entry(t + 2, "oops")],
    }
    assert receiver.lines(stream="stdout") == ["one", "two"]
    assert receiver.lines(app="airflow") == ["one", "two", "oops"]
    assert receiver.lines(app="other") == []
    (record,) = receiver.requests
    assert (record.status, record.action, record.error) == (204, "ok", "")
    assert (record.content_type, record.user_agent, record.tenant) == ("application/x-protobuf", "shipper/test", "t1")
    assert (record.wire_bytes, record.body_bytes) == (len(data), len(raw))
    assert (record.streams, record.entries, record.stored, record.refused, record.deduplicated) == (2, 3, 3, 0, 0)
    assert receiver.dedup_dropped == 0


async def test_lines_come_back_in_timestamp_order(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    assert (await post(session, receiver, body(('{a="1"}', [Entry(t + 5, "late"), Entry(t + 1, "early")]))))[0] == 204
    assert (await post(session, receiver, body(('{a="1"}', [Entry(t + 3, "middle")]))))[0] == 204
    (entries,) = receiver.streams().values()
    assert [e.line for e in entries] == ["late", "early", "middle"]  # stored order
    assert receiver.lines() == ["early", "middle", "late"]


async def test_content_type_parameters_and_snappy_encoding_header_are_accepted(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "Application/X-Protobuf; charset=binary", "Content-Encoding": "snappy"}
    status, _ = await post(session, receiver, body(('{a="1"}', [Entry(now(), "x")])), headers=headers)
    assert status == 204
    assert receiver.lines() == ["x"]


# -- whole-request refusals -------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain", "application/octet-stream"])
async def test_missing_or_wrong_content_type_is_400(
        receiver: LokiReceiver, session: aiohttp.ClientSession, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with session.post(receiver.url, data=body(('{a="1"}', [Entry(now(), "x")])),
                            headers=headers, skip_auto_headers=["Content-Type"]) as response:
        status, text = response.status, await response.text()
    assert status == 400
    assert "media type" in text or "Content-Type" in text
    assert receiver.lines() == []
    assert receiver.requests[0].error == text.rstrip("\n")


async def test_unsupported_content_encoding_is_400(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    status, text = await post(session, receiver, body(('{a="1"}', [Entry(now(), "x")])),
                              headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 400 and "Content-Encoding" in text


@pytest.mark.parametrize("data", [b"", b"not snappy at all \xff\xff\xff\xff", b"\x05abc"])
async def test_body_that_is_not_snappy_block_is_400(
        receiver: LokiReceiver, session: aiohttp.ClientSession, data: bytes) -> None:
    status, text = await post(session, receiver, data)
    assert status == 400 and "snappy" in text


@pytest.mark.parametrize("compress", [
    lambda raw: bytes(cramjam.snappy.compress(raw)),
    lambda raw: snappy.StreamCompressor().add_chunk(raw),
], ids=["cramjam-framed", "python-snappy-stream"])
async def test_framed_snappy_is_400(receiver: LokiReceiver, session: aiohttp.ClientSession, compress: Any) -> None:
    status, text = await post(session, receiver, compress(serialize([('{a="1"}', [Entry(now(), "x")])])))
    assert status == 400 and "framed" in text
    assert receiver.lines() == []


async def test_snappy_of_something_that_is_not_a_push_request_is_400(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    status, text = await post(session, receiver, block(b"\x0a\xff\xff\xff\xff\x0f garbage"))
    assert status == 400 and "PushRequest" in text


async def test_invalid_utf8_in_a_string_field_is_400(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    raw = serialize([('{a="1"}', [Entry(now(), "ok"), Entry(now(), "MARK")])])
    assert raw.count(b"MARK") == 1
    status, text = await post(session, receiver, block(raw.replace(b"MARK", b"\xff\xfe\xfd\xfc")))
    assert status == 400 and "PushRequest" in text
    assert receiver.lines() == []  # a body that does not decode stores nothing


async def test_timestamp_out_of_gos_range_is_400(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    pb2 = load_push_pb2()
    request = pb2.PushRequest()
    entry = request.streams.add(labels='{a="1"}').entries.add(line="x")
    entry.timestamp.seconds, entry.timestamp.nanos = now() // 10**9, 1_500_000_000
    status, text = await post(session, receiver, block(request.SerializeToString()))
    assert status == 400 and "timestamp" in text


BAD_LABEL_STRINGS = [
    "",
    'a="b"',
    '{a="b"',
    '{a="b"}}',
    '{a="b"} x',
    'name{a="b"}',
    "{a=b}",
    "{a='b'}",
    "{a=`b`}",
    '{1a="b"}',
    '{a.b="c"}',
    '{a-b="c"}',
    '{"a"="b"}',
    '{a="b",}',
    '{,a="b"}',
    '{a="b" c="d"}',
    '{a!="b"}',
    '{a=~"b"}',
    '{a=="b"}',
    '{a="b}',
    '{a="unknown escape \\q"}',
    '{a="single quote escape \\\'"}',
    '{a="short hex \\x4"}',
    '{a="invalid utf8 \\xff"}',
    '{a="surrogate \\ud800"}',
    '{a="too big \\U00110000"}',
    '{a="octal \\400"}',
    '{a="raw\nnewline"}',
    '{a="trailing backslash\\',
]


@pytest.mark.parametrize("labels", BAD_LABEL_STRINGS)
async def test_malformed_label_set_refuses_the_whole_request(
        receiver: LokiReceiver, session: aiohttp.ClientSession, labels: str) -> None:
    # Like Loki, every stream's labels are parsed before anything is written.
    status, text = await post(session, receiver, body(('{good="yes"}', [Entry(now(), "kept?")]),
                                                      (labels, [Entry(now(), "x")])))
    assert status == 400
    assert text.startswith("couldn't parse labels")
    assert receiver.lines() == []


# -- label parser on its own ---------------------------------------------------------------

def test_parser_reads_go_quoted_values_and_free_whitespace() -> None:
    assert parse_labels('{a="x", b="y"}') == [("a", "x"), ("b", "y")]
    assert parse_labels(' { a = "x" ,\tb="y"\n} ') == [("a", "x"), ("b", "y")]
    assert parse_labels("{}") == []
    assert parse_labels('{_a1="", B_="v"}') == [("_a1", ""), ("B_", "v")]
    escaped = r'{v="q\" b\\ n\n t\t u\u00e9 U\U0001F600 x\x41 o\101 a\a b\b f\f r\r v\v"}'
    assert parse_labels(escaped) == [("v", 'q" b\\ n\n t\t u\u00e9 U\U0001f600 xA oA a\a b\b f\f r\r v\v')]
    assert parse_labels('{v="\\xc3\\xa9 raw é 😀"}') == [("v", "é raw é 😀")]  # bytes escapes forming UTF-8


@pytest.mark.parametrize("labels", BAD_LABEL_STRINGS)
def test_parser_refuses_malformed_sets(labels: str) -> None:
    with pytest.raises(LabelsSyntaxError):
        parse_labels(labels)


def go_quote(value: str) -> str:
    """Enough of Go's strconv.Quote for the round trip: escapes, \\u and \\U for non-printables."""
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out) + '"'


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@given(st.lists(st.tuples(label_names, label_values), max_size=8), st.sampled_from([",", ", ", " , ", ",\t"]))
def test_parser_round_trips_any_quoted_label_set(pairs: list[tuple[str, str]], comma: str) -> None:
    text = "{" + comma.join(f"{name}={go_quote(value)}" for name, value in pairs) + "}"
    assert parse_labels(text) == pairs


# -- per-stream refusals: the other streams are still written --------------------------------

LABELS_16 = "{" + ", ".join(f"l{i}=\"v\"" for i in range(16)) + "}"
LABELS_15 = "{" + ", ".join(f"l{i}=\"v\"" for i in range(15)) + "}"


@pytest.mark.parametrize(("labels", "message"), [
    ("{}", "at least one label pair is required"),
    ('{a="", b=""}', "at least one label pair is required"),  # empty values are dropped, like Loki
    (LABELS_16, "has 16 label names; limit 15"),
    ('{a="1", a="2"}', "duplicate label name: 'a'"),
    ('{__name__="x"}', "starting with '__'"),
    ('{__meta="x", ok="y"}', "starting with '__'"),
    ("{" + "n" * 1025 + '="v"}', "label name too long"),
    ('{a="' + "é" * 1025 + '"}', "label value too long"),  # 1025 characters, 2050 bytes
])
async def test_invalid_stream_is_refused_and_valid_streams_are_kept(
        receiver: LokiReceiver, session: aiohttp.ClientSession, labels: str, message: str) -> None:
    t = now()
    status, text = await post(session, receiver, body(('{good="yes"}', [Entry(t, "kept")]),
                                                      (labels, [Entry(t, "refused 1"), Entry(t + 1, "refused 2")])))
    assert status == 400
    assert message in text
    assert receiver.streams() == {(("good", "yes"),): [Entry(t, "kept")]}
    record = receiver.requests[0]
    assert (record.stored, record.refused, record.error) == (1, 2, text.rstrip("\n"))
    assert receiver.refused_entries == 2


async def test_label_limits_are_inclusive(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    labels_15_plus_service_name = LABELS_15[:-1] + ', service_name="svc"}'  # Loki does not count it
    long_name_and_value = "{" + "n" * 1024 + '="' + "é" * 1024 + '"}'  # 2048 bytes
    status, text = await post(session, receiver, body((LABELS_15, [Entry(t, "15")]),
                                                      (labels_15_plus_service_name, [Entry(t, "15+svc")]),
                                                      (long_name_and_value, [Entry(t, "long")]),
                                                      ('{a="1", b=""}', [Entry(t, "empty dropped")])))
    assert (status, text) == (204, "")
    assert len(receiver.streams()) == 4
    assert receiver.lines(a="1") == ["empty dropped"]
    assert (("a", "1"),) in receiver.streams()


async def test_empty_stream_is_ignored(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    status, _ = await post(session, receiver, body(("{}", []), ('{a="1"}', [Entry(now(), "x")])))
    assert status == 204
    assert receiver.lines() == ["x"]


# -- per-entry refusals ---------------------------------------------------------------------

async def test_line_size_limit_counts_utf8_bytes(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    fits, too_long, multibyte = "x" * 262144, "x" * 262145, "é" * 131073  # 262146 bytes
    status, text = await post(session, receiver, body(
        ('{a="1"}', [Entry(t, fits), Entry(t + 1, too_long), Entry(t + 2, multibyte), Entry(t + 3, "small")])))
    assert status == 400
    assert "max entry size '262144' bytes exceeded" in text
    assert "length '262145' bytes" in text and "length '262146' bytes" in text
    assert receiver.lines() == [fits, "small"]


async def test_too_old_and_too_new_timestamps(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    entries = [Entry(t - 7 * DAY - MINUTE, "too old"), Entry(t + 11 * MINUTE, "too new"),
               Entry(t - 7 * DAY + MINUTE, "old but fine"), Entry(t + 9 * MINUTE, "in the grace period")]
    # Two streams: "too far behind" is per stream, the 7-day limit is not.
    status, text = await post(session, receiver, body(('{a="1"}', entries[:2] + entries[2:3]),
                                                      ('{a="2"}', entries[3:])))
    assert status == 400
    assert "timestamp too old" in text and "timestamp too new" in text
    assert receiver.lines() == ["old but fine", "in the grace period"]


async def test_entry_too_far_behind_the_newest_in_its_stream(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    assert (await post(session, receiver, body(('{a="1"}', [Entry(t, "newest")]))))[0] == 204
    status, text = await post(session, receiver, body(
        ('{a="1"}', [Entry(t - 61 * MINUTE, "behind"), Entry(t - 59 * MINUTE, "within the hour")]),
        ('{a="2"}', [Entry(t - 61 * MINUTE, "other stream")])))
    assert status == 400 and "entry too far behind" in text
    assert receiver.lines(a="1") == ["within the hour", "newest"]
    assert receiver.lines(a="2") == ["other stream"]
    # Within one request too: the newest entry moves the window for those after it.
    status, text = await post(session, receiver, body(
        ('{a="3"}', [Entry(t - 2 * HOUR, "first"), Entry(t, "jump"), Entry(t - 90 * MINUTE, "now behind")])))
    assert status == 400 and "entry too far behind" in text
    assert receiver.lines(a="3") == ["first", "jump"]


async def test_structured_metadata_limits(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    entries = [
        Entry(t, "bad name", (("try-number", "1"),)),
        Entry(t + 1, "129 pairs", tuple((f"k{i}", "v") for i in range(129))),
        Entry(t + 2, "too large", (("big", "v" * (64 * 1024)),)),
        Entry(t + 3, "128 pairs", tuple((f"k{i}", "v") for i in range(128))),
        Entry(t + 4, "just fits", (("big", "v" * (64 * 1024 - 3)),)),
        Entry(t + 5, "empty value", (("k", ""),)),
    ]
    status, text = await post(session, receiver, body(('{a="1"}', entries)))
    assert status == 400
    assert "invalid name: 'try-number'" in text
    assert "too many structured metadata" in text and "structured metadata too large" in text
    assert receiver.lines() == ["128 pairs", "just fits", "empty value"]


async def test_error_body_lists_ten_problems_then_counts(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    stale = [Entry(now() - 8 * DAY + i, "old") for i in range(25)]
    status, text = await post(session, receiver, body(('{a="1"}', stale)))
    assert status == 400
    assert text.endswith("... and 15 more\n")
    assert text.count("timestamp too old") == 10


# -- dedup ----------------------------------------------------------------------------------------

async def test_identical_entries_are_dropped_silently(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    first = body(('{a="1"}', [Entry(t, "same"), Entry(t, "same"), Entry(t, "other line"), Entry(t + 1, "same")]))
    assert (await post(session, receiver, first)) == (204, "")
    # Again, out of order, and with different structured metadata (Loki compares timestamp and line only).
    again = body(('{a="1"}', [Entry(t + 1, "same"), Entry(t, "same", (("k", "v"),))]),
                 ('{a="2"}', [Entry(t, "same")]))  # another stream: not a duplicate
    assert (await post(session, receiver, again)) == (204, "")
    assert receiver.streams() == {
        (("a", "1"),): [Entry(t, "same"), Entry(t, "other line"), Entry(t + 1, "same")],
        (("a", "2"),): [Entry(t, "same")],
    }
    assert receiver.dedup_dropped == 3
    assert [r.deduplicated for r in receiver.requests] == [1, 2]


async def test_without_kept_entries_only_counts_and_dedup_remain(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(keep_entries=False) as rx:
        t = now()
        data = body(('{a="1"}', [Entry(t, "x"), Entry(t, "x"), Entry(t + 1, "x")]), ('{a="2"}', [Entry(t, "x")]))
        assert await post(session, rx, data) == (204, "")
        assert await post(session, rx, data) == (204, "")
        assert (rx.count(), rx.count(a="1"), rx.dedup_dropped) == (3, 2, 5)
        await rx.wait_for_entries(2, a="1")
        with pytest.raises(RuntimeError):
            rx.lines()


async def test_stream_with_every_entry_refused_is_not_listed(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    status, _ = await post(session, receiver, body(('{a="1"}', [Entry(now() - 8 * DAY, "old")])))
    assert status == 400
    assert receiver.streams() == {}
    assert receiver.stats()["streams"] == []


# -- tenant ------------------------------------------------------------------------------------------

async def test_required_tenant(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(require_tenant=True) as rx:
        data = body(('{a="1"}', [Entry(now(), "x")]))
        assert await post(session, rx, data) == (401, "no org id\n")
        assert (await post(session, rx, data, headers={**PROTOBUF, "X-Scope-OrgID": "a|b"}))[0] == 401
        assert (await post(session, rx, data, headers={**PROTOBUF, "X-Scope-OrgID": "team-a"}))[0] == 204
        assert [(r.status, r.tenant) for r in rx.requests] == [(401, None), (401, "a|b"), (204, "team-a")]
        assert rx.lines() == ["x"]


# -- scripted actions -----------------------------------------------------------------------------------

async def test_status_actions_answer_as_told_and_store_nothing(session: aiohttp.ClientSession) -> None:
    script = [Action.status(500, "boom"), Action.status(429, headers={"Retry-After": "7"}), Action.status(400)]
    async with LokiReceiver(script=script) as rx:
        data = body(('{a="1"}', [Entry(now(), "x")]))
        async with session.post(rx.url, data=data, headers=PROTOBUF) as r:
            assert (r.status, await r.text()) == (500, "boom")
        async with session.post(rx.url, data=data, headers=PROTOBUF) as r:
            assert (r.status, r.headers["Retry-After"]) == (429, "7")
        assert (await post(session, rx, data))[0] == 400
        assert rx.lines() == []
        assert rx.script_remaining == 0
        assert await post(session, rx, data) == (204, "")  # script used up: strict handling
        assert rx.lines() == ["x"]
        assert [(r.action, r.status, r.entries) for r in rx.requests] == [
            ("status", 500, 1), ("status", 429, 1), ("status", 400, 1), ("ok", 204, 1)]


async def test_reset_after_reading_the_request(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    receiver.add_actions(Action.reset())
    data = body(('{a="1"}', [Entry(now(), "x")]))
    with pytest.raises(aiohttp.ClientError):
        await post(session, receiver, data)
    (record,) = receiver.requests
    assert (record.action, record.status, record.wire_bytes, record.entries) == ("reset", None, len(data), 1)
    assert receiver.lines() == []
    assert await post(session, receiver, data) == (204, "")
    assert receiver.lines() == ["x"]


async def test_reset_mid_body(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    receiver.add_actions(Action.reset_mid_body())
    with pytest.raises(aiohttp.ClientError):
        # Far more than socket buffers hold (BytesIO: aiohttp warns about big bytes bodies).
        await post(session, receiver, io.BytesIO(os.urandom(8 * 1024 * 1024)))
    (record,) = receiver.requests
    assert (record.action, record.status, record.wire_bytes) == ("reset_mid_body", None, 0)
    assert await post(session, receiver, body(('{a="1"}', [Entry(now(), "x")]))) == (204, "")


async def test_delay_then_strict_handling(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    receiver.add_actions(Action.delay(0.3))
    start = time.monotonic()
    assert await post(session, receiver, body(('{a="1"}', [Entry(now(), "slow")]))) == (204, "")
    assert time.monotonic() - start >= 0.3
    assert receiver.lines() == ["slow"]


async def test_hang_until_the_client_gives_up(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    receiver.add_actions(Action.hang())
    data = body(('{a="1"}', [Entry(now(), "x")]))
    with pytest.raises(TimeoutError):
        await post(session, receiver, data, timeout=aiohttp.ClientTimeout(total=0.3))
    assert [(r.action, r.status) for r in receiver.requests] == [("hang", None)]
    assert await post(session, receiver, data) == (204, "")


async def test_hang_is_visible_to_wait_for_requests_and_ends_on_stop(session: aiohttp.ClientSession) -> None:
    rx = LokiReceiver(script=[Action.hang()])
    await rx.start()
    try:
        pending = asyncio.create_task(post(session, rx, body(('{a="1"}', [Entry(now(), "x")]))))
        await rx.wait_for_requests(1)
        assert not pending.done() and rx.requests[0].status is None
    finally:
        start = time.monotonic()
        await rx.stop()
    assert time.monotonic() - start < 1.5
    with pytest.raises(aiohttp.ClientError):
        await pending
    await rx.stop()  # idempotent


# -- waiting -----------------------------------------------------------------------------------------------

async def test_wait_for_entries_wakes_on_stores(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(receiver.wait_for_entries(3, stream="stdout"))
    t = now()
    await post(session, receiver, body(('{stream="stdout"}', [Entry(t, "1"), Entry(t + 1, "2")]),
                                       ('{stream="stderr"}', [Entry(t, "e")])))
    await asyncio.sleep(0)
    assert not waiter.done()
    await post(session, receiver, body(('{stream="stdout"}', [Entry(t + 2, "3")])))
    await asyncio.wait_for(waiter, 5)
    await receiver.wait_for_entries(4)
    await receiver.wait_for_requests(2)
    with pytest.raises(AssertionError, match="5 entries"):
        await receiver.wait_for_entries(5, timeout=0.05)


# -- other endpoints and the separate process ----------------------------------------------------------------

async def test_ready_and_stats(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    base = receiver.url.removesuffix(PUSH_PATH)
    async with session.get(base + "/ready") as r:
        assert (r.status, await r.text()) == (200, "ready")
    t = now()
    await post(session, receiver, body(('{a="1"}', [Entry(t, "x"), Entry(t, "x"), Entry(t - 8 * DAY, "old")])))
    async with session.get(base + "/stats") as r:
        stats = await r.json()
    assert stats == {"total_entries": 1, "dedup_dropped": 1, "refused_entries": 1, "requests": 1,
                     "requests_by_status": {"400": 1}, "streams": [{"labels": {"a": "1"}, "entries": 1}]}


async def test_separate_process_serves_stats_and_records_arrivals(
        tmp_path: Path, session: aiohttp.ClientSession) -> None:
    ready, arrivals = tmp_path / "ready", tmp_path / "arrivals"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.loki_receiver", "--port", "0", "--ready-file", str(ready),
        "--record-arrivals", str(arrivals), cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith(PUSH_PATH)
        assert ready.read_text().strip() == url
        t = now()
        entries = [Entry(t, f"t={t - 5} hello"), Entry(t + 1, "no stamp"), Entry(t + 2, f"t={t - 3} bye"),
                   Entry(t + 3, "t=12x not a number"), Entry(t + 4, f"t={t}")]  # no space after: not a stamp
        async with session.post(url, data=body(('{a="1"}', entries)), headers=PROTOBUF) as r:
            assert r.status == 204
        async with session.get(url.removesuffix(PUSH_PATH) + "/stats") as r:
            stats = await r.json()
        assert (stats["total_entries"], stats["requests_by_status"]) == (5, {"204": 1})
        lines = arrivals.read_text().splitlines()
        kinds = [line.split()[0] for line in lines]
        assert kinds == ["P", "L", "L"]
        received = {int(line.split()[1]) for line in lines}
        assert len(received) == 1 and received.pop() >= t - 10**9
        assert lines[0].split()[2] == "5"
        assert [int(line.split()[2]) for line in lines[1:]] == [t - 5, t - 3]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
