"""The strict Loki receiver itself: protocol checks, Loki's limits, dedup, scripted failures, CLI.

Bodies are built with the protobuf module compiled from proto/push.proto and
compressed with cramjam's snappy, then POSTed with aiohttp over loopback.
(async tests run through pyproject's asyncio_mode = "auto"; there is no
module-wide asyncio mark because the parser tests are plain functions.)
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import signal
import sys
import time
from dataclasses import replace
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
    Limits,
    LokiReceiver,
    TokenBucket,
    go_labels_string,
    load_push_pb2,
    parse_labels,
)
from tests.loki_receiver import go_quote as strconv_quote

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


def rfc3339(ts_ns: int) -> str:
    """Go's time.RFC3339 in UTC (whole seconds), as in Loki's messages."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ns // 10**9))


def go_time(ts_ns: int) -> str:
    """Go's time.Time.String() in UTC."""
    seconds, nanos = divmod(ts_ns, 10**9)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + fraction + " +0000 UTC"


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

@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/octet-stream"])
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
                              headers={**PROTOBUF, "Content-Encoding": "lz4"})
    assert (status, text) == (400, "Content-Encoding 'lz4' not supported\n")


async def test_gzipped_protobuf_is_gunzipped_then_read_as_snappy(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    data = gzip.compress(body(('{a="1"}', [Entry(now(), "x")])))
    status, _ = await post(session, receiver, data, headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert status == 204 and receiver.lines() == ["x"]
    assert receiver.requests[0].wire_bytes == len(data)


# -- JSON pushes (Loki's pkg/loghttp format: what Fluent Bit's loki output sends) -------------------------

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_json_push_is_stored_like_a_protobuf_one(
        receiver: LokiReceiver, session: aiohttp.ClientSession, encoding: str) -> None:
    t = now()
    doc = {"streams": [
        {"stream": {"stream": "stdout", "app": "airflow"},
         "values": [[str(t + 5), "late"], [str(t + 1), "early", {"try_number": "2", "run_id": "r1"}],
                    None, [str(t + 3), "caf\u00e9 \"quoted\"\nnext"]]},
        {"stream": {"app": "airflow", "stream": "stderr"}, "values": [[str(t + 2), "oops"]]},
    ]}
    raw = json.dumps(doc).encode()
    data = gzip.compress(raw) if encoding else raw
    headers = {"Content-Type": "application/json; charset=utf-8", **({"Content-Encoding": encoding} if encoding else {})}
    status, text = await post(session, receiver, data, headers=headers)
    assert (status, text) == (204, "")
    assert receiver.streams() == {
        (("app", "airflow"), ("stream", "stdout")): [
            Entry(t + 5, "late"), Entry(t + 1, "early", (("run_id", "r1"), ("try_number", "2"))),
            Entry(t + 3, 'café "quoted"\nnext')],
        (("app", "airflow"), ("stream", "stderr")): [Entry(t + 2, "oops")],
    }
    assert receiver.lines(stream="stdout") == ["early", 'café "quoted"\nnext', "late"]  # by timestamp
    (record,) = receiver.requests
    assert (record.streams, record.entries, record.stored, record.refused) == (2, 4, 4, 0)
    assert (record.wire_bytes, record.body_bytes) == (len(data), len(raw))


async def test_json_push_goes_through_the_same_validation_and_dedup(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    t = now()
    doc = {"streams": [{"stream": {"a": "1"},
                        "values": [[str(t), "x"], [str(t), "x"], [str(t - 8 * DAY), "old"]]}]}
    status, text = await post(session, receiver, json.dumps(doc).encode(), headers=JSON)
    assert status == 400 and text.startswith("entry for stream '{a=\"1\"}' has timestamp too old: ")
    assert receiver.lines() == ["x"] and receiver.dedup_dropped == 1 and receiver.refused_entries == 1


async def test_json_label_names_are_parsed_as_loki_parses_the_string_it_builds(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    doc = {"streams": [{"stream": {"a-b": "1"}, "values": [[str(now()), "x"]]}]}
    status, text = await post(session, receiver, json.dumps(doc).encode(), headers=JSON)
    assert status == 400 and text.startswith("couldn't parse labels")
    assert receiver.lines() == []


@pytest.mark.parametrize("doc", [
    b"not json", b"[]", b'{"streams": {}}', b'{"streams": [[]]}',
    b'{"streams": [{"stream": {"a": 1}, "values": [["1", "x"]]}]}',  # a label value that is not a string
    b'{"streams": [{"stream": {"a": "1"}, "values": [[1764064800000000000, "x"]]}]}',  # a number, not a string
    b'{"streams": [{"stream": {"a": "1"}, "values": [["1764064800.5", "x"]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": [[" 17", "x"]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": [["9223372036854775808", "x"]]}]}',  # > int64
    b'{"streams": [{"stream": {"a": "1"}, "values": [["17", 5]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": [["17"]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": [["17", "x", {"k": 1}]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": [["17", "x", ["k"]]]}]}',
    b'{"streams": [{"stream": {"a": "1"}, "values": "x"}]}',
    b'\xff{}',
], ids=lambda d: d.decode(errors="replace")[:40])
async def test_malformed_json_push_is_400_and_stores_nothing(
        receiver: LokiReceiver, session: aiohttp.ClientSession, doc: bytes) -> None:
    status, text = await post(session, receiver, doc, headers=JSON)
    assert status == 400 and text.startswith("json: "), text
    assert receiver.lines() == [] and receiver.requests[0].stored == 0


async def test_json_push_to_loki27_refuses_structured_metadata(session: aiohttp.ClientSession) -> None:
    rx = LokiReceiver(limits=Limits.loki27())
    await rx.start()
    try:
        t = now()
        doc = {"streams": [{"stream": {"a": "1"}, "values": [[str(t), "x", {"k": "v"}]]}]}
        status, text = await post(session, rx, json.dumps(doc).encode(), headers=JSON)
        assert (status, text) == (400, "json: error reading entry: array must contains 2 values\n")
        doc = {"streams": [{"stream": {"a": "1"}, "values": [[str(t), "x"]]}]}
        assert (await post(session, rx, json.dumps(doc).encode(), headers=JSON))[0] == 204
        assert rx.lines() == ["x"]
    finally:
        await rx.stop()


async def test_corrupt_gzip_is_400(receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    status, text = await post(session, receiver, b"not gzip", headers={**JSON, "Content-Encoding": "gzip"})
    assert status == 400 and text.startswith("gzip: ")
    assert receiver.lines() == []


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
    assert "Max entry size '262144' bytes exceeded" in text  # Loki's capital M
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
        ('{a="1"}', [Entry(t - 61 * MINUTE, "behind"), Entry(t - 59 * MINUTE, "within the hour")])))
    assert status == 400
    assert text == (f"entry with timestamp {go_time(t - 61 * MINUTE)} ignored, reason: 'entry too far behind, "
                    f"entry timestamp is: {rfc3339(t - 61 * MINUTE)}, oldest acceptable timestamp is: "
                    f"{rfc3339(t - HOUR)}',\nuser 'fake', total ignored: 1 out of 2 for stream: {{a=\"1\"}}\n")
    assert receiver.lines(a="1") == ["within the hour", "newest"]
    # The push answers for its last stream only (Loki's instance.Push): stored, so 204.
    status, text = await post(session, receiver, body(
        ('{a="1"}', [Entry(t - 62 * MINUTE, "behind again")]),
        ('{a="2"}', [Entry(t - 61 * MINUTE, "other stream")])))
    assert (status, text) == (204, "")
    assert receiver.lines(a="1") == ["within the hour", "newest"]
    assert receiver.lines(a="2") == ["other stream"]
    assert receiver.requests[-1].refused == 1
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


async def test_validation_errors_are_grouped_by_message(
        receiver: LokiReceiver, session: aiohttp.ClientSession) -> None:
    # util.GroupedErrors: "N errors like: <msg>" per distinct message, joined by "; ".
    old_second = (now() - 8 * DAY) // 10**9 * 10**9  # RFC 3339 in the message: whole seconds
    stale = [Entry(old_second + i, "old") for i in range(25)]  # one second: one message
    status, text = await post(session, receiver, body(('{a="1"}', stale)))
    assert status == 400
    assert text.startswith("25 errors like: entry for stream '{a=\"1\"}' has timestamp too old: "
                           f"{rfc3339(old_second)}, oldest acceptable timestamp is: ")
    assert text.count("errors like") == 1 and text.endswith("\n")
    # One refused entry: the message alone.
    status, text = await post(session, receiver, body(('{a="1"}', [Entry(now() + HOUR, "new")])))
    assert status == 400 and text.startswith("entry for stream '{a=\"1\"}' has timestamp too new: ")
    # Distinct messages each get a count, even of 1.
    t = now()
    status, text = await post(session, receiver, body(
        ('{a="2"}', [Entry(old_second, "old"), Entry(old_second + 1, "old"), Entry(t, "x" * 262145),
                     Entry(t + 1, "kept")])))
    assert status == 400
    groups = dict(parse_grouped(text.rstrip("\n")))
    assert list(groups.values()) == [2, 1]
    assert "Max entry size '262144' bytes exceeded for stream '{a=\"2\"}'" in list(groups)[1]
    assert receiver.lines(a="2") == ["kept"]


def parse_grouped(text: str) -> list[tuple[str, int]]:
    """GroupedErrors text back into (message, count) pairs."""
    import re
    parts = re.split(r"; (?=\d+ errors like: )", text)
    out = []
    for part in parts:
        match = re.match(r"(\d+) errors like: (.*)", part, re.S)
        out.append((match.group(2), int(match.group(1))) if match else (part, 1))
    return out


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

        # The stamp inside the line (an Airflow message, a JSON record shipped whole), over JSON.
        arrivals.write_text("")
        inside = [f"[2026-11-25T10:00:00.123+0000] {{python.py:201}} INFO - t={t - 7} #12 Fetched",
                  f'{{"timestamp":"2026-11-25T10:00:00.123456Z","event":"t={t - 6} #13 Uploading"}}',
                  f"2026-11-25T10:00:00.123456789Z stdout F [2026-11-25] {{s3.py:88}} INFO - t={t - 5} #14 x",
                  f"no t={t - 4}x: digits must end at a space or a quote",
                  f"at=t={t - 3} not after a space",
                  f"t=123 too short, then t={t - 2} the first valid one, t={t - 1} not",
                  f"t={t - 1}"]  # no space after: not a stamp, as before
        doc = {"streams": [{"stream": {"a": "2"}, "values": [[str(t + 10 + i), line] for i, line in enumerate(inside)]}]}
        async with session.post(url, data=json.dumps(doc), headers=JSON) as r:
            assert r.status == 204
        lines = arrivals.read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["P", "L", "L", "L", "L"]
        assert lines[0].split()[2] == str(len(inside))
        assert [int(line.split()[2]) for line in lines[1:]] == [t - 7, t - 6, t - 5, t - 2]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


# -- what Loki's distributor and ingester do beyond validation ------------------------------------------------

class FakeClock:
    """A monotonic clock the test steps by hand (the receiver's token buckets read it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_is_x_time_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 100, clock)
    assert bucket.allow(60) and not bucket.allow(41)  # starts full; a refusal takes nothing
    assert bucket.allow(40) and not bucket.allow(1)
    clock.now += 0.5  # 5 tokens back
    assert not bucket.allow(6) and bucket.allow(5)
    clock.now += 3600  # refills to the burst, no further
    assert not bucket.allow(101) and bucket.allow(100)
    assert bucket.allow(0)


def test_go_formatting_helpers() -> None:
    assert go_labels_string([("b", 'q"\n\x01é\u00ad'), ("a", "x")]) == '{a="x", b="q\\"\\n\\x01é\\u00ad"}'
    assert strconv_quote("tab\there\\ \x7f \U0001f600 \U000e0001") == '"tab\\there\\\\ \\x7f 😀 \\U000e0001"'


def streams_of(n: int, labels: str, t: int, size: int = 100, prefix: str = "") -> tuple[str, list[Entry]]:
    return labels, [Entry(t + i, f"{prefix}{i:06d} " + "x" * (size - 7)) for i in range(n)]


STREAM_LIMITED = Limits(per_stream_rate_limit=20 * 1024, per_stream_rate_limit_burst=40 * 1024)


async def test_stream_over_its_rate_limit_is_refused_whole_with_lokis_text(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(limits=STREAM_LIMITED, clock=FakeClock()) as rx:
        t = now()
        status, text = await post(session, rx, body(streams_of(500, '{run="x"}', t)))  # 50,000 B > 40 KiB
        assert status == 429
        lines = text.rstrip("\n").split("\n")
        assert len(lines) == 11
        assert lines[0] == (f"entry with timestamp {go_time(t)} ignored, reason: 'Per stream rate limit exceeded "
                            "(limit: 20KB/sec) while attempting to ingest for stream '{run=\"x\"}' totaling 100B, "
                            "consider splitting a stream via additional labels or contact your Loki administrator "
                            "to see if the limit can be increased',")
        assert lines[9].startswith(f"entry with timestamp {go_time(t + 9)} ignored")
        assert lines[10] == "user 'fake', total ignored: 500 out of 500 for stream: {run=\"x\"}"
        assert rx.lines() == [] and rx.requests[0].refused == 500
        # A refused push takes no tokens: 400 entries (40,000 B) still fit the 40 KiB burst.
        assert await post(session, rx, body(streams_of(400, '{run="x"}', t + 1000))) == (204, "")
        assert rx.count() == 400


async def test_push_answers_for_its_last_stream_only(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(limits=STREAM_LIMITED, clock=FakeClock()) as rx:
        t = now()
        # First stream over its limit, last stored: 204, the first stream's entries gone.
        data = body(streams_of(500, '{run="a"}', t), streams_of(3, '{run="b"}', t))
        assert await post(session, rx, data) == (204, "")
        assert (rx.count(run="a"), rx.count(run="b")) == (0, 3)
        assert (rx.requests[0].stored, rx.requests[0].refused) == (3, 500)
        # The other way round: the refused stream is the last, so the push is a 429.
        status, text = await post(session, rx, body(streams_of(3, '{run="c"}', t), streams_of(500, '{run="d"}', t)))
        assert status == 429 and text.endswith("total ignored: 500 out of 500 for stream: {run=\"d\"}\n")
        assert (rx.count(run="c"), rx.count(run="d")) == (3, 0)


async def test_per_entry_rate_limit_stores_what_fits(session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    limits = replace(STREAM_LIMITED, rate_limit_whole_stream=False)
    async with LokiReceiver(limits=limits, clock=clock) as rx:
        t = now()
        status, text = await post(session, rx, body(streams_of(500, '{run="x"}', t)))
        assert status == 429
        assert text.endswith("user 'fake', total ignored: 91 out of 500 for stream: {run=\"x\"}\n")
        assert text.startswith(f"entry with timestamp {go_time(t + 409)} ignored")  # 409 x 100 B <= 40,960
        assert rx.count() == 409
        clock.now += 1  # 20 KiB more
        status, _ = await post(session, rx, body(streams_of(300, '{run="x"}', t + 1000)))
        assert status == 429 and rx.count() == 409 + 205


async def test_rate_limited_last_in_the_stream_decides_429_over_too_far_behind(
        session: aiohttp.ClientSession) -> None:
    limits = replace(STREAM_LIMITED, rate_limit_whole_stream=False, per_stream_rate_limit_burst=250)
    async with LokiReceiver(limits=limits, clock=FakeClock()) as rx:
        t = now()
        entries = [Entry(t, "a" * 100), Entry(t - 2 * HOUR, "b" * 100), Entry(t + 1, "c" * 100)]
        status, text = await post(session, rx, body(('{run="x"}', entries)))
        # The behind entry took tokens (the rate check comes first): the third is over the burst.
        assert status == 429 and "total ignored: 2 out of 3" in text
        assert "entry too far behind" in text and "Per stream rate limit exceeded" in text
        assert rx.lines() == ["a" * 100]


async def test_tenant_ingestion_rate_limit_refuses_the_whole_push(session: aiohttp.ClientSession) -> None:
    limits = Limits(ingestion_rate=1024 * 1024, ingestion_burst=1024 * 1024)
    async with LokiReceiver(limits=limits, clock=FakeClock()) as rx:
        t = now()
        # Two streams of 600 KB: 1.2 MB validated > the 1 MiB burst; the too-old entry is not counted.
        data = body(streams_of(6000, '{run="a"}', t), streams_of(6000, '{run="b"}', t),
                    ('{run="c"}', [Entry(t - 8 * DAY, "old")]))
        headers = {**PROTOBUF, "X-Scope-OrgID": "burst"}
        status, text = await post(session, rx, data, headers=headers)
        assert (status, text) == (429, "Ingestion rate limit exceeded for user burst (limit: 1048576 bytes/sec) "
                                       "while attempting to ingest '12000' lines totaling '1200000' bytes, reduce "
                                       "log volume or contact your Loki administrator to see if the limit can be "
                                       "increased\n")
        assert rx.count() == 0 and rx.requests[0].refused == 12001
        # Nothing was taken from the bucket: half of it passes.
        assert (await post(session, rx, body(streams_of(6000, '{run="a"}', t)), headers=headers))[0] == 204


async def test_validation_400_only_when_the_ingester_accepts(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(limits=STREAM_LIMITED, clock=FakeClock()) as rx:
        t = now()
        old = ('{run="old"}', [Entry(t - 8 * DAY, "old")])
        status, text = await post(session, rx, body(old, streams_of(500, '{run="x"}', t)))
        assert status == 429 and "total ignored: 500 out of 500" in text and "too old" not in text
        status, text = await post(session, rx, body(old, streams_of(5, '{run="y"}', t)))
        assert status == 400 and "has timestamp too old" in text
        assert rx.count(run="y") == 5


async def test_dedup_only_within_the_head_block(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(limits=Limits(chunk_block_size=1000)) as rx:
        t = now()
        first = streams_of(5, '{run="x"}', t)  # 500 B: still in the head block
        assert await post(session, rx, body(first)) == (204, "")
        assert await post(session, rx, body(first)) == (204, "")
        assert rx.count() == 5 and rx.dedup_dropped == 5
        # 600 B more: the block reaches 1,000 B and is cut; the first five are no longer compared.
        assert await post(session, rx, body(streams_of(6, '{run="x"}', t + 100))) == (204, "")
        assert await post(session, rx, body(first)) == (204, "")
        assert rx.count() == 16 and rx.dedup_dropped == 5
        # The stream's last line is compared whatever the block: a resend of the last entry is dropped.
        assert await post(session, rx, body(('{run="x"}', first[1][-1:]))) == (204, "")
        assert rx.count() == 16 and rx.dedup_dropped == 6


async def test_structured_metadata_and_detected_level_count_in_the_block_size(
        session: aiohttp.ClientSession) -> None:
    # Loki 3 adds detected_level (8 bytes in the head block per pair); 92 B lines + 8 = 100 B an entry.
    async with LokiReceiver(limits=Limits(chunk_block_size=1000, discover_log_levels=True)) as rx:
        t = now()
        entries = [Entry(t + i, f"{i:03d}" + "y" * 89) for i in range(10)]
        assert await post(session, rx, body(('{run="x"}', entries))) == (204, "")
        assert await post(session, rx, body(('{run="x"}', entries[:9]))) == (204, "")  # block was cut at 10
        assert rx.count() == 19


async def test_service_name_discovery(session: aiohttp.ClientSession) -> None:
    async with LokiReceiver(limits=Limits.loki3()) as rx:
        t = now()
        data = body(('{app="web", job="j"}', [Entry(t, "1")]), ('{run="r"}', [Entry(t, "2")]),
                    ('{service_name="mine", app="web"}', [Entry(t, "3")]), ("{}", [Entry(t, "4")]),
                    ('{container="c", name="n"}', [Entry(t, "5")]))
        assert await post(session, rx, data) == (204, "")
        assert set(rx.streams()) == {
            (("app", "web"), ("job", "j"), ("service_name", "web")),
            (("run", "r"), ("service_name", "unknown_service")),
            (("app", "web"), ("service_name", "mine")),
            (("service_name", "unknown_service"),),  # Loki 3 accepts {}: service_name is added first
            (("container", "c"), ("name", "n"), ("service_name", "n")),
        }
        status, text = await post(session, rx, body(('{run="r"}', [Entry(t - 8 * DAY, "old")])))
        assert status == 400 and "for stream '{run=\"r\", service_name=\"unknown_service\"}'" in text


async def test_empty_push_is_422_in_loki3_and_204_in_27(session: aiohttp.ClientSession) -> None:
    for limits, expected in ((Limits(), (422, "error at least one valid stream is required for ingestion\n")),
                             (Limits.loki27(), (204, ""))):
        async with LokiReceiver(limits=limits) as rx:
            assert await post(session, rx, body()) == expected


async def test_loki27_answers(session: aiohttp.ClientSession) -> None:
    limits = Limits.loki27(per_stream_rate_limit=1000, per_stream_rate_limit_burst=1000)
    async with LokiReceiver(limits=limits, clock=FakeClock()) as rx:
        t = now()
        # Only the last validation error; structured metadata dropped.
        data = body(('{a="1"}', [Entry(t + HOUR, "new"), Entry(t - 8 * DAY, "old"),
                                 Entry(t, "kept", (("k", "v"),))]))
        status, text = await post(session, rx, data)
        assert status == 400 and text.startswith("entry for stream '{a=\"1\"}' has timestamp too old: ")
        assert "errors like" not in text and "too new" not in text
        assert rx.entries() == [Entry(t, "kept")]
        # Per entry by default, and 2.7's wording.
        status, text = await post(session, rx, body(streams_of(12, '{run="x"}', t)))
        assert status == 429
        assert text.startswith(f"entry with timestamp {go_time(t + 10)} ignored, reason: 'Per stream rate limit "
                               "exceeded (limit: 1000B/sec) while attempting to ingest for stream '{run=\"x\"}' "
                               "totaling 100B, consider")
        assert "limit can be increased' for stream: {run=\"x\"},\n" in text
        assert text.endswith("\ntotal ignored: 2 out of 12\n")
        assert rx.count(run="x") == 10
