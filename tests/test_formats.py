"""shipper.formats: CRI and JSON lines to records; exact outcomes, nothing ever dropped.

Stateful parsers are fed whole, one line at a time, and split in two at every
position; all runs must give identical records and counters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.formats import (CriParser, JsonParser, Parser, RawParser, Record, make_parser, parse_time,
                             render_exception)

NS = 1_000_000_000
T0 = 1475713029  # 2016-10-06T00:17:09Z


def epoch_ns(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


# --- timestamps ----------------------------------------------------------------------

@pytest.mark.parametrize("text, ns", [
    (b"2016-10-06T00:17:09.669794202Z", T0 * NS + 669794202),
    (b"2016-10-06T00:17:09.6697942Z", T0 * NS + 669794200),  # RFC3339Nano trims trailing zeros
    (b"2016-10-06T00:17:09.1Z", T0 * NS + 100000000),
    (b"2016-10-06T00:17:09Z", T0 * NS),
    (b"2016-10-06T00:17:09z", T0 * NS),
    (b"2016-10-06t00:17:09Z", T0 * NS),
    (b"2016-10-06 00:17:09Z", T0 * NS),
    (b"2016-10-06T00:17:09", T0 * NS),  # no offset: UTC
    (b"2016-10-06T00:17:09,5", T0 * NS + 500000000),
    (b"2016-10-06T00:17:09.123456789123Z", T0 * NS + 123456789),  # past the ninth digit: truncated
    (b"2016-10-06T02:17:09.5+02:00", T0 * NS + 500000000),
    (b"2016-10-06T02:17:09+0200", T0 * NS),
    (b"2016-10-05T19:47:09.000001-04:30", T0 * NS + 1000),
    (b"2016-10-06T00:17:09+00:00", T0 * NS),
    (b"2016-10-06T00:17:09-00:00", T0 * NS),
    (b"1970-01-01T00:00:00Z", 0),
    (b"1969-12-31T23:59:59.5Z", -NS // 2),
    (b"2024-02-29T00:00:00Z", 1709164800 * NS),
    (b"2000-02-29T12:00:00Z", 951825600 * NS),
    (b"9999-12-31T23:59:59Z", 253402300799 * NS),
])
def test_parse_time(text: bytes, ns: int) -> None:
    assert parse_time(text) == ns
    assert parse_time(text) == ns  # again, from the cache of seconds


@pytest.mark.parametrize("text", [
    b"", b"2016", b"2016-10-06", b"2016-10-06T00:17", b"2016-10-06T00:17:9Z", b"2016-10-06T00:17:09.Z",
    b"2016-10-06T00:17:09.1ZZ", b"2016-10-06T00:17:09 Z", b"2016-10-06T00:17:09.12x4Z", b"2016-10-06T00:17:09+2",
    b"2016-10-06T00:17:09+02:0", b"2016-10-06T00:17:09+24:00", b"2016-10-06T00:17:09+02:60",
    b"2016-13-06T00:17:09Z", b"2016-00-06T00:17:09Z", b"2016-10-00T00:17:09Z", b"2016-09-31T00:17:09Z",
    b"2023-02-29T00:00:00Z", b"1900-02-29T00:00:00Z", b"2016-10-06T24:00:00Z", b"2016-10-06T00:60:00Z",
    b"2016-10-06T00:17:60Z", b"2016-10-06X00:17:09Z", b"+016-10-06T00:17:09Z", b"2016-1-06T00:17:09Z",
    b"\xd9\xa1016-10-06T00:17:09Z", b"2016-10-06T00:17:09.\xd9\xa1Z", b"2016-10-06T00:17:09.1_0Z",
    b" 2016-10-06T00:17:09Z", b"2016-10-06T00:17:09Z ",
])
def test_parse_time_rejects(text: bytes) -> None:
    assert parse_time(text) is None


@settings(max_examples=300)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8)), timezone(timedelta(minutes=-1))])),
       st.sampled_from(["Z", "isoformat", "nano"]))
def test_parse_time_agrees_with_datetime(dt: datetime, style: str) -> None:
    if style == "isoformat":
        text = dt.isoformat()  # 2024-01-01T12:00:00.123456+05:30 (no fraction when zero)
    else:
        utc = dt.astimezone(timezone.utc)
        frac = f"{utc.microsecond:06d}" + ("123" if style == "nano" else "")
        text = utc.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + "." + frac.rstrip("0") + "Z"
        text = text.replace(".Z", "Z")
    expected = epoch_ns(dt) + (123 if style == "nano" else 0)
    assert parse_time(text.encode()) == expected, text


# --- raw -------------------------------------------------------------------------------

def test_raw() -> None:
    p = RawParser()
    assert p.feed([b"a", b""]) == [Record(b"a"), Record(b"")]
    assert p.flush() == [] and p.malformed == 0


# --- CRI -------------------------------------------------------------------------------

def cri(stream: str, tag: str, message: bytes, ts: bytes = b"2016-10-06T00:17:09.669794202Z") -> bytes:
    return ts + b" " + stream.encode() + b" " + tag.encode() + b" " + message


TS = T0 * NS + 669794202


def feed_all_ways(lines: list[bytes], max_bytes: int = 1024) -> tuple[list[Record], tuple[int, ...]]:
    """Records and counters of a fresh CriParser fed `lines` then flushed; the same for every split."""
    def run(chunks: list[list[bytes]]) -> tuple[list[Record], tuple[int, ...]]:
        p = CriParser(max_bytes)
        out: list[Record] = []
        for chunk in chunks:
            out += p.feed(chunk)
        out += p.flush()
        assert p.pending_bytes == 0
        return out, (p.malformed, p.joined_lines, p.cut_lines, p.invalid_utf8_lines)

    expected = run([lines])
    for chunks in chunkings(lines):
        assert run(chunks) == expected, f"differs when fed as {chunks!r}"
    return expected


def chunkings(lines: list[bytes]) -> Iterator[list[list[bytes]]]:
    yield [[line] for line in lines]
    for i in range(len(lines) + 1):
        yield [lines[:i], lines[i:]]


T1 = b"2016-10-06T00:17:10.5Z"
T2 = b"2016-10-06T02:17:11+02:00"


@pytest.mark.parametrize("lines, records", [
    ([], []),
    ([cri("stdout", "F", b"hello world")], [Record(b"hello world", TS, "stdout")]),
    ([cri("stderr", "F", b"oops")], [Record(b"oops", TS, "stderr")]),
    ([cri("stdout", "F", b"x", T2)], [Record(b"x", (T0 + 2) * NS, "stdout")]),
    # The message is everything after the third space, spaces kept.
    ([cri("stdout", "F", b" a  b ")], [Record(b" a  b ", TS, "stdout")]),
    ([cri("stdout", "F", b"")], [Record(b"", TS, "stdout")]),
    ([b"2016-10-06T00:17:09.669794202Z stdout F"], [Record(b"", TS, "stdout")]),
    # P chunks join until F; the line has the first chunk's time.
    ([cri("stdout", "P", b"ab"), cri("stdout", "P", b"cd", T1), cri("stdout", "F", b"ef", T1)],
     [Record(b"abcdef", TS, "stdout")]),
    ([cri("stdout", "P", b"ab"), cri("stdout", "F", b"")], [Record(b"ab", TS, "stdout")]),
    # Streams join separately; lines come out as they complete.
    ([cri("stdout", "P", b"o1"), cri("stderr", "P", b"e1", T1), cri("stderr", "F", b"e2"), cri("stdout", "F", b"o2")],
     [Record(b"e1e2", (T0 + 1) * NS + NS // 2, "stderr"), Record(b"o1o2", TS, "stdout")]),
    ([cri("stdout", "P", b"o1"), cri("stderr", "F", b"e"), cri("stdout", "F", b"o2")],
     [Record(b"e", TS, "stderr"), Record(b"o1o2", TS, "stdout")]),
    # More tags after the first (`F:x`); the first decides.
    ([cri("stdout", "P:x", b"a"), cri("stdout", "F:y:z", b"b")], [Record(b"ab", TS, "stdout")]),
    # A P run whose F never came is shipped at flush().
    ([cri("stdout", "P", b"tail")], [Record(b"tail", TS, "stdout")]),
    ([cri("stdout", "P", b"o"), cri("stderr", "P", b"e")], [Record(b"o", TS, "stdout"), Record(b"e", TS, "stderr")]),
])
def test_cri(lines: list[bytes], records: list[Record]) -> None:
    assert feed_all_ways(lines)[0] == records


MALFORMED = [
    b"",
    b"hello",
    b"plain text with spaces",
    b"2016-10-06T00:17:09Z stdout",
    b"2016-10-06T00:17:09Z stdin F x",
    b"2016-10-06T00:17:09Z STDOUT F x",
    b"yesterday stdout F x",
    b"2016-10-06T00:17:09 stdout F x ",  # (valid: no offset is UTC) -- replaced below
    b"2016-10-06T00:17:61Z stdout F x",
    b"2016-10-06T00:17:09Z stdout X x",
    b"2016-10-06T00:17:09Z stdout p x",
    b"2016-10-06T00:17:09Z stdout FP x",
    b"2016-10-06T00:17:09Z  stdout F x",
    b"2016-10-06T00:17:09Z stdout :F x",
]
MALFORMED[7] = b"2016-10-06T00:17:09Zstdout F x"


@pytest.mark.parametrize("line", MALFORMED)
def test_cri_malformed_is_shipped_as_is(line: bytes) -> None:
    records, counters = feed_all_ways([line])
    assert records == [Record(line)]
    assert counters == (1, 0, 0, 0)


def test_cri_malformed_invalid_utf8_is_replaced() -> None:
    records, counters = feed_all_ways([b"junk \xff"])
    assert records == [Record("junk \ufffd".encode())]
    assert counters == (1, 0, 0, 1)


def test_cri_malformed_line_leaves_partials_alone() -> None:
    lines = [cri("stdout", "P", b"a"), b"junk", cri("stdout", "F", b"b")]
    records, counters = feed_all_ways(lines)
    assert records == [Record(b"junk"), Record(b"ab", TS, "stdout")]
    assert counters == (1, 1, 0, 0)


def test_cri_counters() -> None:
    lines = [cri("stdout", "P", b"a"), cri("stdout", "F", b"b"), cri("stdout", "F", b"c"), cri("stderr", "P", b"d")]
    assert feed_all_ways(lines)[1] == (0, 2, 0, 0)


def test_cri_long_joined_line_is_cut_as_it_grows() -> None:
    p = CriParser(8)
    assert p.feed([cri("stdout", "P", b"abcdef")]) == []
    assert p.pending_bytes == 6
    assert p.feed([cri("stdout", "P", b"ghijkl", T1)]) == [Record(b"abcdefgh", TS, "stdout")]
    assert p.pending_bytes == 4  # never much more than max_bytes per stream
    assert p.feed([cri("stdout", "F", b"mn", T1)]) == [Record(b"ijklmn", TS, "stdout")]
    assert (p.cut_lines, p.joined_lines) == (1, 1)


def test_cri_long_full_line_is_cut() -> None:
    lines = [cri("stdout", "F", b"abcdefghij"), cri("stdout", "F", b"12345678")]
    records, counters = feed_all_ways(lines, max_bytes=8)
    assert [r.line for r in records] == [b"abcdefgh", b"ij", b"12345678"]
    assert all(r[1:] == (TS, "stdout", (), None) for r in records)
    assert counters == (0, 0, 1, 0)
    # On character boundaries: "é" is 2 bytes.
    records, _ = feed_all_ways([cri("stdout", "F", "abcdefgé".encode())], max_bytes=8)
    assert [r.line for r in records] == [b"abcdefg", "é".encode()]


def test_cri_utf8_character_split_between_chunks() -> None:
    e = "é".encode()  # b"\xc3\xa9"
    records, counters = feed_all_ways([cri("stdout", "P", b"ab" + e[:1]), cri("stdout", "F", e[1:] + b"cd")])
    assert records == [Record("abécd".encode(), TS, "stdout")]
    assert counters == (0, 1, 0, 0)


def test_cri_invalid_utf8_is_replaced_and_counted() -> None:
    lines = [cri("stdout", "F", b"a\xffb"), cri("stderr", "P", b"\xfe"), cri("stderr", "F", b"c")]
    records, counters = feed_all_ways(lines)
    assert records == [Record("a\ufffdb".encode(), TS, "stdout"), Record("\ufffdc".encode(), TS, "stderr")]
    assert counters == (0, 1, 0, 2)


CRI_LINE = st.one_of(
    st.builds(cri, st.sampled_from(["stdout", "stderr"]), st.sampled_from(["F", "P", "F:x", "P:y"]),
              st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=12).map(str.encode),
              st.sampled_from([b"2016-10-06T00:17:09.669794202Z", T1, T2])),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")).filter(lambda b: b.isascii()),
)


def cri_model(lines: list[bytes]) -> list[Record]:
    """What a CriParser must give for lines without cuts or invalid UTF-8: a plain model."""
    out: list[Record] = []
    partial: dict[str, tuple[bytes, int]] = {}
    for line in lines:
        fields = line.split(b" ", 3)
        if len(fields) == 3:
            fields.append(b"")
        ts = parse_time(fields[0]) if len(fields) == 4 else None
        tag = fields[2].split(b":")[0] if len(fields) == 4 else b""
        if ts is None or fields[1] not in (b"stdout", b"stderr") or tag not in (b"F", b"P"):
            out.append(Record(line))
            continue
        stream = fields[1].decode()
        text, first = partial.get(stream, (b"", ts))
        if tag == b"P":
            partial[stream] = (text + fields[3], first)  # a stream keeps its place: flushed in order of first chunk
        else:
            partial.pop(stream, None)
            out.append(Record(text + fields[3], first, stream))
    out += [Record(text, first, stream) for stream, (text, first) in partial.items()]
    return out


@settings(max_examples=300)
@given(st.lists(CRI_LINE, max_size=12))
def test_cri_never_drops_a_line(lines: list[bytes]) -> None:
    records, counters = feed_all_ways(lines)
    assert records == cri_model(lines)
    assert counters[0] == sum(1 for r in records if r.ts_ns is None)


# What a CRI message can hold: no line break (the runtime splits lines there; a
# final \r is taken by LineSplitter's CRLF rule), no lone surrogate.
MESSAGE_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n")


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["P", "F"]), st.text(MESSAGE_CHARS, max_size=20).map(str.encode)),
                max_size=8),
       st.integers(4, 16))
def test_cri_cut_pieces_rebuild_the_line(chunks: list[tuple[str, bytes]], max_bytes: int) -> None:
    lines = [cri("stdout", tag, message) for tag, message in chunks]
    records, counters = feed_all_ways(lines, max_bytes)
    assert all(len(r.line) <= max_bytes for r in records)
    assert b"".join(r.line for r in records) == b"".join(m for _, m in chunks)
    assert counters[0] == counters[3] == 0


# --- JSON ------------------------------------------------------------------------------

AIRFLOW3 = (b'{"timestamp":"2025-04-01T12:00:00.123456Z","level":"info","event":"Marking task as SUCCESS.",'
            b'"logger":"airflow.task","filename":"taskinstance.py","lineno":1234}')
A3_TS = 1743508800 * NS + 123456000


def test_json_airflow3_record() -> None:
    p = JsonParser()
    assert p.feed([AIRFLOW3]) == [Record(b"Marking task as SUCCESS.", A3_TS, None, (), "info")]
    assert p.flush() == [] and p.malformed == 0


def test_json_keep_record() -> None:
    assert JsonParser(keep_record=True).parse(AIRFLOW3) == Record(AIRFLOW3, A3_TS, None, (), "info")
    # No event needed then.
    line = b'{"timestamp":"2025-04-01T12:00:00.123456Z","msg":"x"}'
    assert JsonParser(keep_record=True).parse(line) == Record(line, A3_TS)


def test_json_metadata() -> None:
    line = json.dumps({
        "timestamp": "2025-04-01T12:00:00.123456Z", "level": "warning", "event": "e", "logger": "airflow.task",
        "lineno": 12, "ratio": 1.5, "ok": True, "no": False, "ctx": {"a": [1, "b"]}, "none": None, "empty": "",
        "name": "ünï",
    }).encode()
    p = JsonParser(metadata=["logger", "lineno", "ratio", "ok", "no", "ctx", "none", "empty", "missing", "name"])
    assert p.parse(line) == Record(b"e", A3_TS, None, (
        ("logger", "airflow.task"), ("lineno", "12"), ("ratio", "1.5"), ("ok", "true"), ("no", "false"),
        ("ctx", '{"a":[1,"b"]}'), ("name", "ünï")), "warning")
    renamed = JsonParser(metadata={"logger": "logger_name", "lineno": "line"})
    assert renamed.parse(line).metadata == (("logger_name", "airflow.task"), ("line", "12"))


@pytest.mark.parametrize("level, normalised", [
    ("info", "info"), ("WARN", "warning"), ("exception", "error"), ("fatal", "critical"), ("notice", None),
    (30, None), (None, None),
])
def test_json_level(level: object, normalised: str | None) -> None:
    line = json.dumps({"timestamp": "2025-04-01T12:00:00.123456Z", "event": "x", "level": level}).encode()
    assert JsonParser().parse(line).level == normalised


@pytest.mark.parametrize("event, line", [
    ("", b""), ("multi\nline", b"multi\nline"), ("ünïcode ✓", "ünïcode ✓".encode()), (42, b"42"),
    (1.5, b"1.5"), (True, b"true"), ({"a": 1, "b": [None]}, b'{"a":1,"b":[null]}'), (["x"], b'["x"]'),
    ("a\ud800b", b"a?b"),  # a lone surrogate (JSON escape) cannot be UTF-8
])
def test_json_event_to_line(event: object, line: bytes) -> None:
    record = json.dumps({"timestamp": "2025-04-01T12:00:00.123456Z", "event": event})
    assert JsonParser().parse(record.encode()).line == line


def test_json_lone_surrogate_in_metadata() -> None:
    record = b'{"timestamp":"2025-04-01T12:00:00Z","event":"x","logger":"\\udfffy"}'
    assert JsonParser(metadata=["logger"]).parse(record).metadata == (("logger", "?y"),)


def test_json_custom_keys() -> None:
    p = JsonParser(time_key="ts", message_key="msg", level_key="severity")
    line = b'{"ts":"2025-04-01T12:00:00.123456+00:00","msg":"hi","severity":"ERROR","timestamp":"x"}'
    assert p.parse(line) == Record(b"hi", A3_TS, None, (), "error")


@pytest.mark.parametrize("line", [
    b"",
    b"not json",
    b"[2022-06-12T13:00:00.123+0000] {x.py:1} INFO - airflow 2 text",
    b"[1, 2]",
    b'"string"',
    b" " + AIRFLOW3,
    AIRFLOW3[:-1],
    b'{"event":"no timestamp"}',
    b'{"timestamp":"yesterday","event":"x"}',
    b'{"timestamp":1743508800,"event":"x"}',
    b'{"timestamp":null,"event":"x"}',
    b'{"timestamp":"2025-04-01T12:00:00Z","level":"info"}',
    b'{"timestamp":"2025-04-01T12:00:00Z","event":null}',
    b'{"timestamp":"2025-04-01T12:00:00Z","event":"\xff"}',
    b'{"timestamp":"2025-04-01T12:00:00Z","event":"x"} trailing',
    b'{"timestamp":"2025-04-01T12:00:00Z","event":"x"}{"b":1}',
    # Valid JSON nested deeper than the decoder's recursion limit: raw, not a crash.
    b'{"timestamp":"2025-04-01T12:00:00Z","event":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_json_malformed_is_shipped_as_is(line: bytes) -> None:
    p = JsonParser(metadata=["logger"])
    assert p.feed([line, line]) == [Record(line), Record(line)]
    assert p.malformed == 2


def test_json_trailing_whitespace_is_allowed() -> None:
    assert JsonParser().parse(AIRFLOW3 + b" \t") == JsonParser().parse(AIRFLOW3)


def test_json_metadata_values_that_compare_equal_keep_their_own_text() -> None:
    # 1 == True == 1.0 (and "1" is not): the metadata cache must not mix them up.
    p = JsonParser(metadata=["v"])
    values: list[object] = ["1", 1, True, 1.0, "1", True, 0, False, 0.0, None, "x"]
    lines = [json.dumps({"timestamp": "2025-04-01T12:00:00Z", "event": "e", "v": v}).encode() for v in values]
    assert [r.metadata for r in p.feed(lines)] == [
        (("v", "1"),), (("v", "1"),), (("v", "true"),), (("v", "1.0"),), (("v", "1"),), (("v", "true"),),
        (("v", "0"),), (("v", "false"),), (("v", "0.0"),), (), (("v", "x"),)]


def test_json_last_duplicate_key_wins() -> None:
    line = b'{"timestamp":"2025-04-01T12:00:00Z","event":"first","event":"second"}'
    assert JsonParser().parse(line).line == b"second"


EXC = [
    {"exc_type": "ValueError", "exc_value": "boom", "exc_notes": [], "syntax_error": None, "is_cause": False,
     "frames": [{"filename": "/opt/airflow/dags/d.py", "lineno": 12, "name": "execute"},
                {"filename": "/opt/airflow/dags/d.py", "lineno": 30, "name": "fail", "line": "  raise ValueError  "}],
     "is_group": False, "exceptions": []},
    {"exc_type": "KeyError", "exc_value": "'k'", "is_cause": True,
     "frames": [{"filename": "/x.py", "lineno": 3, "name": "lookup"}]},
    {"exc_type": "OSError", "exc_value": "", "is_cause": False, "frames": []},
]
EXC_TEXT = """OSError

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/x.py", line 3, in lookup
KeyError: 'k'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/airflow/dags/d.py", line 12, in execute
  File "/opt/airflow/dags/d.py", line 30, in fail
    raise ValueError
ValueError: boom"""


def test_render_exception() -> None:
    assert render_exception(EXC) == EXC_TEXT
    assert render_exception(EXC[:1]) == EXC_TEXT[EXC_TEXT.rindex("Traceback"):]
    assert render_exception("Traceback (most recent call last):\n...") == "Traceback (most recent call last):\n..."
    assert render_exception([{}]) == "Exception"
    for not_one in (None, 5, [], [1], {"exc_type": "X"}, [{"exc_type": "X"}, "y"]):
        assert render_exception(not_one) is None


def test_json_exception_joins_the_event() -> None:
    record = {"timestamp": "2025-04-01T12:00:00.123456Z", "level": "error", "event": "Task failed with exception",
              "logger": "airflow.task", "exception": EXC[:1]}
    line = json.dumps(record).encode()
    expected = ("Task failed with exception\n" + EXC_TEXT[EXC_TEXT.rindex("Traceback"):]).encode()
    assert JsonParser().parse(line) == Record(expected, A3_TS, None, (), "error")
    assert JsonParser(exception_keys=()).parse(line).line == b"Task failed with exception"
    assert JsonParser(keep_record=True).parse(line).line == line
    assert JsonParser().parse(json.dumps(record | {"event": ""}).encode()).line.startswith(b"Traceback")
    assert JsonParser().parse(json.dumps(record | {"exception": 5}).encode()).line == b"Task failed with exception"


def structlog_stacks(exc: BaseException) -> list[dict[str, object]]:
    """What structlog's ExceptionDictTransformer makes of `exc` (structlog.tracebacks.extract,
    followed here with the source line of each frame, which Python prints too)."""
    import traceback
    stacks: list[dict[str, object]] = []
    is_cause = False
    current: BaseException | None = exc
    while current is not None:
        stack: dict[str, object] = {
            "exc_type": type(current).__name__, "exc_value": str(current), "exc_notes": list(getattr(current, "__notes__", [])),
            "syntax_error": None, "is_cause": is_cause, "is_group": False, "exceptions": [],
            "frames": [{"filename": f.filename, "lineno": f.lineno, "name": f.name, "line": f.line}
                       for f in traceback.extract_tb(current.__traceback__)]}
        if isinstance(current, BaseExceptionGroup):
            stack["is_group"] = True
            stack["exceptions"] = [{"stacks": structlog_stacks(e)} for e in current.exceptions]
        stacks.append(stack)
        if current.__cause__ is not None:
            current, is_cause = current.__cause__, True
        elif current.__context__ is not None and not current.__suppress_context__:
            current, is_cause = current.__context__, False
        else:
            current = None
    return stacks


def raised(code: str) -> BaseException:
    try:
        exec(compile(code, "/opt/airflow/dags/t.py", "exec"), {})
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("no exception")


RAISED_LINE = raised.__code__.co_firstlineno + 2  # its exec() line


@pytest.mark.parametrize("code", [
    "def f():\n    raise ValueError('boom')\nf()",
    "try:\n    raise KeyError('k')\nexcept KeyError as e:\n    raise ValueError('boom') from e",
    "try:\n    raise KeyError('k')\nexcept KeyError:\n    raise ValueError('boom')",
    "try:\n    raise KeyError('k')\nexcept KeyError:\n    raise ValueError('boom') from None",
    "e = ValueError('noted')\ne.add_note('a note')\ne.add_note('another')\nraise e",
    "raise ValueError('')",
    "raise ExceptionGroup('eg', [ValueError('a'), TypeError('b')])",
    "def g():\n    raise TypeError('b')\ntry:\n    g()\nexcept TypeError as t:\n    raise ExceptionGroup('eg', "
    "[ValueError('a'), ExceptionGroup('inner', [t, KeyError('c')])]) from t",
    "try:\n    raise ExceptionGroup('eg', [ValueError('a')])\nexcept Exception as e:\n    raise RuntimeError('x') from e",
])
def test_rendered_exception_is_what_python_prints(code: str) -> None:
    """Item 2 of issue 13: an exception structlog stored as dicts reads exactly as Python prints it
    (these raise whole-line statements, so Python 3.11 prints no ^^^^ markers, which structlog has no data for)."""
    import traceback
    exc = raised(code)
    printed = "".join(traceback.format_exception(exc)).rstrip("\n")
    assert render_exception(structlog_stacks(exc)) == printed


def test_json_error_detail_of_airflow_3_3_is_rendered_with_its_level() -> None:
    exc = raised("try:\n    raise KeyError('k')\nexcept KeyError as e:\n    raise ValueError('boom') from e")
    stacks = structlog_stacks(exc)
    for s in stacks:  # Airflow 3.3's frames carry no source line
        for f in s["frames"]:  # type: ignore[attr-defined]
            del f["line"]
    record = {"timestamp": "2025-04-01T12:00:00.123456Z", "level": "error", "event": "Task failed with exception",
              "logger": "task", "error_detail": stacks}
    rendered = JsonParser().parse(json.dumps(record).encode())
    assert rendered.level == "error"
    assert rendered.line.decode() == f"""Task failed with exception
Traceback (most recent call last):
  File "/opt/airflow/dags/t.py", line 2, in <module>
KeyError: 'k'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "{__file__}", line {RAISED_LINE}, in raised
  File "/opt/airflow/dags/t.py", line 4, in <module>
ValueError: boom"""
    # error_detail first, then exception; a configured key instead; a key whose value is no traceback is skipped.
    both = record | {"exception": "Traceback (most recent call last):\nX: y"}
    assert JsonParser().parse(json.dumps(both).encode()).line == rendered.line
    assert JsonParser(exception_keys=["exception"]).parse(json.dumps(both).encode()).line == (
        b"Task failed with exception\nTraceback (most recent call last):\nX: y")
    custom = {k: v for k, v in record.items() if k != "error_detail"} | {"err": stacks, "error_detail": 5}
    assert JsonParser(exception_keys=["error_detail", "err"]).parse(json.dumps(custom).encode()).line == rendered.line


def test_render_syntax_error() -> None:
    stack = {"exc_type": "SyntaxError", "exc_value": "'(' was never closed (t.py, line 1)", "frames": [],
             "syntax_error": {"offset": 4, "filename": "t.py", "line": "foo(\n", "lineno": 1,
                              "msg": "'(' was never closed"}}
    assert render_exception([stack]) == """  File "t.py", line 1
    foo(
       ^
SyntaxError: '(' was never closed"""


def test_json_event_line_longer_than_max_bytes_ships_the_record_whole() -> None:
    record = {"timestamp": "2025-04-01T12:00:00.123456Z", "level": "error", "event": "e", "exception": EXC}
    line = json.dumps(record, separators=(",", ":")).encode()
    rendered = ("e\n" + EXC_TEXT).encode()
    p = JsonParser(max_bytes=len(rendered))
    assert p.parse(line) == Record(rendered, A3_TS, None, (), "error")
    p = JsonParser(max_bytes=len(rendered) - 1)
    assert p.parse(line) == Record(line, A3_TS, None, (), "error")
    assert (p.kept_whole, p.malformed) == (1, 0)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(max_size=60).map(lambda t: t.encode("utf-8", "replace")), st.just(AIRFLOW3),
                          st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
                              st.sampled_from(["timestamp", "event", "level", "logger"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                        st.just("2025-04-01T12:00:00Z"))))),
                max_size=10))
def test_json_never_drops_a_line(lines: list[bytes]) -> None:
    p = JsonParser(metadata=["logger", "level"])
    records = p.feed(lines)
    assert len(records) == len(lines)
    for line, record in zip(lines, records):
        if record.ts_ns is None:
            assert record == Record(line)
        record.line.decode("utf-8")  # always valid UTF-8
        assert all(isinstance(v, str) and v.encode() for _, v in record.metadata)
    assert p.malformed == sum(1 for r in records if r.ts_ns is None)


@settings(max_examples=200)
@given(st.text(), st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)), st.booleans())
def test_json_event_roundtrip(event: str, when: datetime, ascii_only: bool) -> None:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    line = json.dumps({"timestamp": stamp, "level": "info", "event": event}, ensure_ascii=ascii_only).encode()
    record = JsonParser().parse(line)
    assert record.ts_ns == epoch_ns(when.replace(tzinfo=timezone.utc))
    assert record.line == event.encode("utf-8", "replace")


# --- the factory ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("raw", RawParser), ("cri", CriParser), ("json", JsonParser)])
def test_make_parser(name: str, kind: Callable[..., Parser]) -> None:
    parser: Parser = make_parser(name, max_bytes=1024)
    assert isinstance(parser, kind)  # type: ignore[arg-type]
    assert parser.malformed == 0


def test_make_parser_unknown() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        make_parser("xml", max_bytes=1024)


# --- JsonParser.columns: a whole chunk at once, exactly what feed() gives ---------------------------

_JSON_PIECES = [
    b'{"timestamp":"2026-11-25T10:00:00.123456Z","level":"info","event":"Fetched rows","logger":"task"}',
    b'{"timestamp":"2026-11-25T10:00:01.000001Z","level":"WARNING","event":"retry","logger":"airflow.task"}',
    b'{"timestamp":"2026-11-25T10:00:01.5Z","level":"info","event":"short fraction"}',
    b'{"timestamp":"2026-11-25T10:00:02.123456+00:00","level":"info","event":"offset"}',
    b'{"timestamp":"2026-02-30T10:00:02.123456Z","level":"info","event":"no such day"}',
    b'{"timestamp":"2026-11-25T10:00:03.12345\xd9\xa3Z","level":"info","event":"arabic digit"}',
    b'{"timestamp":"2026-11-25T10:00:04.123456Z","level":"Warn","event":"other spelling","logger":7}',
    b'{"timestamp":"2026-11-25T10:00:05.123456Z","level":"notice","event":"no level"}',
    b'{"timestamp":"2026-11-25T10:00:06.123456Z","event":"no level key","logger":["a"]}',
    b'{"timestamp":"2026-11-25T10:00:07.123456Z","level":"error","event":"boom","error_detail":[{"exc_type":"E",'
    b'"exc_value":"x","frames":[]}]}',
    b'{"timestamp":"2026-11-25T10:00:08.123456Z","level":"info","event":{"structured":1}}',
    b'{"timestamp":"2026-11-25T10:00:09.123456Z","level":"info","event":"\\ud800 lone surrogate"}',
    b'{"timestamp":"2026-11-25T10:00:10.123456Z","level":"info","event":"trailing space"} ',
    b'{"timestamp":"2026-11-25T10:00:11.123456Z","level":"info"}',
    b'{"timestamp":1764064800,"level":"info","event":"numeric time"}',
    b'not json at all',
    b'[1, 2]',
    b'{"timestamp":"2026-11-25T10:00:12.123456Z","level":"info","event":"' + b"x" * 300 + b'"}',
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_JSON_PIECES), min_size=1, max_size=12), st.booleans(), st.booleans())
def test_json_columns_are_what_feed_gives(lines: list[bytes], keep_record: bool, with_metadata: bool) -> None:
    def parser() -> JsonParser:
        return JsonParser(metadata=["logger"] if with_metadata else (), keep_record=keep_record, max_bytes=256)
    columns = parser().columns(lines)
    records = parser().feed(lines)
    if columns is None:
        return  # the per-line path: feed() is the answer
    out, times, metadata, entry_levels = columns
    assert out == [r.line for r in records]
    assert times == [r.ts_ns for r in records]
    assert (metadata if metadata is not None else [()] * len(lines)) == [r.metadata for r in records]
    assert entry_levels == [r.level for r in records]


def test_json_columns_read_airflow_3_records_whole() -> None:
    lines = [_JSON_PIECES[0], _JSON_PIECES[1]]
    columns = JsonParser(metadata=["logger"]).columns(lines)
    assert columns == ([b"Fetched rows", b"retry"], [1795600800 * NS + 123_456_000, 1795600801 * NS + 1_000],
                       [(("logger", "task"),), (("logger", "airflow.task"),)], ["info", "warning"])
    for other in _JSON_PIECES[2:]:  # any other shape sends the chunk down the per-line path
        if other not in _JSON_PIECES[6:9]:  # (other levels and metadata values are the fast path's too)
            assert JsonParser(metadata=["logger"], max_bytes=256).columns(lines + [other]) is None, other


def test_json_columns_of_a_chunk_spanning_more_seconds_than_the_cache_holds() -> None:
    """600 records a second apart (an old log replayed): every time read, none lost to the
    bounded cache of seconds being cleared halfway through the chunk."""
    start = 1795600800
    lines = [json.dumps({"timestamp": datetime.fromtimestamp(start + i, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S") + f".{i:06d}Z", "level": "info", "event": f"e{i}"}).encode() for i in range(600)]
    columns = JsonParser().columns(lines)
    assert columns is not None
    assert columns[1] == [(start + i) * NS + i * 1000 for i in range(600)]
    assert columns[1] == [r.ts_ns for r in JsonParser().feed(lines)]


def test_json_columns_leave_times_before_1970_to_the_per_line_path() -> None:
    line = b'{"timestamp":"1969-12-31T23:59:59.500000Z","level":"info","event":"m"}'
    assert JsonParser().columns([line, line]) is None
    assert [r.ts_ns for r in JsonParser().feed([line])] == [-500_000_000]


# CriParser.columns: the chunk path gives exactly feed's records, whatever the chunk holds.
_CRI_STAMPS = [b"2026-11-25T10:00:00.123456789Z", b"2026-11-25T10:00:00.12345678Z", b"2026-11-25T10:00:00.1Z",
               b"2026-11-25T10:00:01.5Z", b"1969-12-31T23:59:59.25Z", b"2026-11-25T10:00:00Z",
               b"2026-11-25T10:00:00.123+01:00", b"2026-13-25T10:00:00.1Z", b"2026-11-25T10:00:00.1234567890Z"]
_CRI_LINE = st.builds(
    lambda stamp, stream, tag, message: b" ".join([stamp, stream, tag, message]) if message is not None
    else b" ".join([stamp, stream, tag]),
    st.sampled_from(_CRI_STAMPS), st.sampled_from([b"stdout", b"stderr", b"stdin"]),
    st.sampled_from([b"F", b"F", b"F", b"P", b"F:x", b"X"]),
    st.one_of(st.none(), st.sampled_from([b"", b"ok", b"a b c", "caf\u00e9".encode(), b"\xff", b"x" * 20])))


def _flat(read: list[Record] | tuple[list[bytes], list[int], list[str]]) -> list[Record]:
    if isinstance(read, list):
        return read
    return [Record(line, ts, stream, (), None) for line, ts, stream in zip(*read)]


@settings(max_examples=300)
@given(st.lists(st.lists(_CRI_LINE, max_size=12), max_size=4))
def test_cri_columns_are_feeds_records(chunks: list[list[bytes]]) -> None:
    by_feed, by_columns = CriParser(16), CriParser(16)
    for lines in chunks:
        assert _flat(by_columns.columns(lines)) == by_feed.feed(lines)
    assert by_columns.flush() == by_feed.flush()
    assert (by_columns.malformed, by_columns.joined_lines, by_columns.cut_lines, by_columns.invalid_utf8_lines) == \
        (by_feed.malformed, by_feed.joined_lines, by_feed.cut_lines, by_feed.invalid_utf8_lines)


def test_cri_columns_of_whole_lines_and_p_chunks() -> None:
    """The chunk path's own case: whole lines as columns, a P run between them the per-line way and
    its joined line put back in order: the chunk stays one set of columns."""
    p = CriParser(1000)
    lines = [b"2026-11-25T10:00:00.123456789Z stdout F one", b"2026-11-25T10:00:00.5Z stderr F two",
             b"2026-11-25T10:00:01.25Z stdout P thr", b"2026-11-25T10:00:01.3Z stderr F four",
             b"2026-11-25T10:00:01.4Z stdout F ee", b"2026-11-25T10:00:02.000000001Z stdout F five",
             b"2026-11-25T10:00:02.1Z stdout P not a time",
             b"2026-11-25T10:00:02.2Z stdout F ime", b"2026-11-25T10:00:03.5Z stdout F six"]
    t = 1795600800 * 10**9  # 2026-11-25T10:00:00Z
    assert p.columns(lines) == (
        [b"one", b"two", b"four", b"three", b"five", b"not a timeime", b"six"],
        [t + 123456789, t + 500000000, t + 1_300_000_000, t + 1_250_000_000, t + 2_000_000_001,
         t + 2_100_000_000, t + 3_500_000_000],
        ["stdout", "stderr", "stderr", "stdout", "stdout", "stdout", "stdout"])
    # One line that is not CRI: the whole chunk the per-line way (its records, as feed gives them).
    assert p.columns([b"not CRI at all", lines[0]]) == [
        Record(b"not CRI at all", None, None, (), None), Record(b"one", t + 123456789, "stdout", (), None)]
