"""shipper.encoder: hand-written protobuf, checked against golden bytes, the protobuf
library compiled from proto/push.proto, and a deliberately naive reference encoder."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import Any

import pytest
import snappy
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.encoder import (compress, content_encoding, decode_push, encode_entries, encode_entries_each,
                             encode_metadata, encode_push, snappy_frame, split_push, uncompress, unsnappy, varint)
from tests.loki_receiver import load_push_pb2

NS = 1_000_000_000
# Largest epoch ns the shipper can hold (int64); protobuf's Timestamp allows up to
# seconds 253402300799 (year 9999), which is beyond it.
MAX_TS = 2**63 - 1


@pytest.fixture(scope="session")
def pb() -> Any:
    """push_pb2 compiled from proto/push.proto (shared with the receiver: one copy per process)."""
    return load_push_pb2()


# --- a naive reference: one field at a time, varint by loop ----------------------

def ref_varint(n: int) -> bytes:
    assert n >= 0
    out = []
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def ref_key(field: int, wire_type: int) -> bytes:
    return ref_varint(field << 3 | wire_type)


def ref_bytes_field(field: int, payload: bytes) -> bytes:
    return ref_key(field, 2) + ref_varint(len(payload)) + payload


def ref_timestamp(ts: int) -> bytes:
    seconds, nanos = divmod(ts, NS)
    out = b""
    if seconds:  # proto3 omits zero scalars
        out += ref_key(1, 0) + ref_varint(seconds)
    if nanos:
        out += ref_key(2, 0) + ref_varint(nanos)
    return out


def ref_entries(lines: Sequence[bytes], first_ts: int, metadata: bytes = b"") -> bytes:
    """EntryAdapter fields; the timestamp message and the line are always written
    (an empty line as `12 00`, as the shipper does: valid proto3, decoded the same)."""
    out = b""
    for i, line in enumerate(lines):
        entry = ref_bytes_field(1, ref_timestamp(first_ts + i)) + ref_bytes_field(2, line) + metadata
        out += ref_bytes_field(2, entry)
    return out


# --- golden bytes ----------------------------------------------------------------

# Derived by hand from the wire format (key = field << 3 | wire type):
GOLDEN = bytes.fromhex(
    # PushRequest.streams[0]: 0x40 = 64 bytes
    "0a 40"
    "   0a 07 7b613d2262227d"                 # labels = {a="b"}
    # entry: ts {} (seconds 0, nanos 0: both omitted), line "hi", metadata k=v
    "   12 0e  0a 00  12 02 6869  1a 06 0a 01 6b 12 01 76"
    # entry: ts {nanos: 1} (one-byte varint), line "yo", metadata k=v
    "   12 10  0a 02 10 01  12 02 796f  1a 06 0a 01 6b 12 01 76"
    # entry: ts {seconds: 5, nanos: 300 = ac 02}, line "é" (c3 a9), metadata k=v
    "   12 13  0a 05 08 05 10 ac 02  12 02 c3a9  1a 06 0a 01 6b 12 01 76"
    # PushRequest.streams[1]: 0x29 = 41 bytes
    "0a 29"
    "   0a 07 7b733d2278227d"                 # labels = {s="x"}
    # entry: ts {seconds: 1700000000 = 80 e2 cf aa 06, nanos: 999999999 = ff 93 eb dc 03}, line "a"
    "   12 11  0a 0c 08 80e2cfaa06 10 ff93ebdc03  12 01 61"
    # entry: next ns rolls over: ts {seconds: 1700000001 = 81 e2 cf aa 06} (nanos 0 omitted), line "b"
    "   12 0b  0a 06 08 81e2cfaa06  12 01 62"
)


def golden_body() -> bytes:
    meta = encode_metadata([("k", "v")])
    stream_a = encode_entries([b"hi", b"yo"], 0, meta) + encode_entries(["é".encode()], 5 * NS + 300, meta)
    stream_b = encode_entries([b"a", b"b"], 1_700_000_000 * NS + 999_999_999)
    return encode_push([('{a="b"}', stream_a), ('{s="x"}', stream_b)])


def test_golden_bytes() -> None:
    assert golden_body().hex(" ") == GOLDEN.hex(" ")


def test_golden_bytes_decode_with_protobuf(pb: Any) -> None:
    req = pb.PushRequest.FromString(GOLDEN)
    assert [s.labels for s in req.streams] == ['{a="b"}', '{s="x"}']
    assert [s.hash for s in req.streams] == [0, 0]
    a, b = req.streams
    assert [(e.timestamp.seconds, e.timestamp.nanos, e.line) for e in a.entries] == [
        (0, 0, "hi"), (0, 1, "yo"), (5, 300, "é")]
    assert all([(p.name, p.value) for p in e.structuredMetadata] == [("k", "v")] for e in a.entries)
    assert all(e.HasField("timestamp") for e in a.entries)
    assert [(e.timestamp.seconds, e.timestamp.nanos, e.line) for e in b.entries] == [
        (1_700_000_000, 999_999_999, "a"), (1_700_000_001, 0, "b")]
    assert all(len(e.structuredMetadata) == 0 for e in b.entries)


def test_golden_bytes_equal_the_naive_reference() -> None:
    meta = encode_metadata([("k", "v")])
    a = ref_entries([b"hi", b"yo"], 0, meta) + ref_entries(["é".encode()], 5 * NS + 300, meta)
    b = ref_entries([b"a", b"b"], 1_700_000_000 * NS + 999_999_999)
    ref = ref_bytes_field(1, ref_bytes_field(1, b'{a="b"}') + a) + ref_bytes_field(1, ref_bytes_field(1, b'{s="x"}') + b)
    assert ref == GOLDEN


# --- pieces ------------------------------------------------------------------------

VARINT_EDGES = [0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**35, 2**63 - 1, 2**64 - 1]


@pytest.mark.parametrize("n", VARINT_EDGES)
def test_varint_edges(n: int) -> None:
    assert varint(n) == ref_varint(n)


@given(st.integers(0, 2**64 - 1))
def test_property_varint_equals_reference(n: int) -> None:
    assert varint(n) == ref_varint(n)


def test_encode_metadata_bytes() -> None:
    assert encode_metadata([]) == b""
    assert encode_metadata([("k", "v")]) == bytes.fromhex("1a 06 0a 01 6b 12 01 76")
    # An empty value is proto3's default: the value field is omitted.
    assert encode_metadata([("k", "")]) == bytes.fromhex("1a 03 0a 01 6b")
    assert encode_metadata([("é", "ü")]) == bytes.fromhex("1a 08 0a 02 c3a9 12 02 c3bc")


def test_encode_metadata_decodes_with_protobuf(pb: Any) -> None:
    pairs = [("run_id", "manual__2024-05-01T10:00:00+00:00"), ("try_number", "1"), ("empty", ""),
             ("ünï", "😀\n\"\\")]
    entry = pb.EntryAdapter.FromString(ref_bytes_field(2, b"x") + encode_metadata(pairs))
    assert [(p.name, p.value) for p in entry.structuredMetadata] == pairs


def test_empty_inputs() -> None:
    assert encode_entries([], 123) == b""
    assert encode_push([]) == b""
    assert encode_push([("{}", b"")]) == bytes.fromhex("0a 04 0a 02 7b7d")
    assert decode_push(b"") == []


def test_empty_line_is_an_entry(pb: Any) -> None:
    body = encode_push([('{a="b"}', encode_entries([b""], 7))])
    (stream,) = pb.PushRequest.FromString(body).streams
    (entry,) = stream.entries
    assert (entry.line, entry.timestamp.seconds, entry.timestamp.nanos) == ("", 0, 7)


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16383 - 40, 16383, 16384, 2**21 + 3])
def test_line_and_entry_length_prefixes(pb: Any, length: int) -> None:
    line = b"x" * length
    meta = encode_metadata([("k", "v" * 50)])
    entries = encode_entries([line, line], 1_700_000_000 * NS + 123, meta)
    assert entries == ref_entries([line, line], 1_700_000_000 * NS + 123, meta)
    req = pb.PushRequest.FromString(encode_push([("{}", entries)]))
    assert [len(e.line) for e in req.streams[0].entries] == [length, length]


# Timestamps around every place the hot loop's cached varint changes shape:
# nanos 0 / <128 / >=128 (the cached high part changes every 128 ns), varint
# length steps at 2**14, 2**21, 2**28, the second boundary, seconds == 0.
TS_STARTS = [0, 1, 100, 127, 128, 200, 255, 256, 2**14 - 100, 2**21 - 100, 2**28 - 100,
             NS - 200, NS - 1, NS, 5 * NS - 130, 1_700_000_000 * NS + NS - 300, MAX_TS - 400]


@pytest.mark.parametrize("first_ts", TS_STARTS)
def test_timestamps_are_consecutive_nanoseconds(pb: Any, first_ts: int) -> None:
    lines = [f"line {i}".encode() for i in range(400)]
    entries = encode_entries(lines, first_ts)
    assert entries == ref_entries(lines, first_ts)
    req = pb.PushRequest.FromString(encode_push([('{a="b"}', entries)]))
    got = [(e.timestamp.seconds, e.timestamp.nanos) for e in req.streams[0].entries]
    assert got == [divmod(first_ts + i, NS) for i in range(400)]
    assert [e.line for e in req.streams[0].entries] == [f"line {i}" for i in range(400)]


# --- properties ----------------------------------------------------------------------

labels_st = st.text(max_size=30)
lines_st = st.lists(st.text(max_size=40).map(str.encode), max_size=20)
meta_st = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=4)


@st.composite
def streams_st(draw: st.DrawFn) -> list[tuple[str, list[bytes], int, list[tuple[str, str]]]]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        lines = draw(lines_st)
        first_ts = draw(st.integers(0, MAX_TS - len(lines)) | st.integers(0, 10 * NS))
        out.append((draw(labels_st), lines, first_ts, draw(meta_st)))
    return out


@settings(max_examples=200)
@given(streams_st())
def test_property_protobuf_roundtrip(pb: Any, streams: list[tuple[str, list[bytes], int, list[tuple[str, str]]]]) -> None:
    body = encode_push([(labels, encode_entries(lines, ts, encode_metadata(meta)))
                        for labels, lines, ts, meta in streams])
    req = pb.PushRequest.FromString(body)
    assert len(req.streams) == len(streams)
    for got, (labels, lines, first_ts, meta) in zip(req.streams, streams):
        assert got.labels == labels
        assert got.hash == 0
        assert [e.line.encode() for e in got.entries] == lines
        assert [(e.timestamp.seconds, e.timestamp.nanos) for e in got.entries] == [
            divmod(first_ts + i, NS) for i in range(len(lines))]
        assert all([(p.name, p.value) for p in e.structuredMetadata] == meta for e in got.entries)


@settings(max_examples=300)
@given(lines_st, st.integers(0, MAX_TS - 20) | st.integers(0, 3 * NS), meta_st)
def test_property_hot_loop_equals_naive_reference(lines: list[bytes], first_ts: int, meta: list[tuple[str, str]]) -> None:
    metadata = encode_metadata(meta)
    assert encode_entries(lines, first_ts, metadata) == ref_entries(lines, first_ts, metadata)


@settings(max_examples=200)
@given(st.integers(0, 2000), st.integers(0, 20_000) | st.integers(0, MAX_TS - 20_000))
def test_property_long_runs_equal_naive_reference(n: int, first_ts: int) -> None:
    lines = [b"%d" % i for i in range(n)]
    assert encode_entries(lines, first_ts) == ref_entries(lines, first_ts)


@settings(max_examples=200)
@given(streams_st())
def test_property_console_decoder_roundtrip(streams: list[tuple[str, list[bytes], int, list[tuple[str, str]]]]) -> None:
    body = encode_push([(labels, encode_entries(lines, ts, encode_metadata(meta)))
                        for labels, lines, ts, meta in streams])
    assert decode_push(body) == [
        {"labels": labels,
         "entries": [{"ts": ts + i, "line": line.decode(), "metadata": dict(meta)} for i, line in enumerate(lines)]}
        for labels, lines, ts, meta in streams]


def test_console_decoder_on_golden_bytes() -> None:
    assert decode_push(GOLDEN) == [
        {"labels": '{a="b"}', "entries": [
            {"ts": 0, "line": "hi", "metadata": {"k": "v"}},
            {"ts": 1, "line": "yo", "metadata": {"k": "v"}},
            {"ts": 5 * NS + 300, "line": "é", "metadata": {"k": "v"}}]},
        {"labels": '{s="x"}', "entries": [
            {"ts": 1_700_000_000 * NS + 999_999_999, "line": "a", "metadata": {}},
            {"ts": 1_700_000_001 * NS, "line": "b", "metadata": {}}]},
    ]


def test_console_decoder_refuses_unknown_wire_types() -> None:
    with pytest.raises(ValueError, match="unexpected wire type 5"):
        decode_push(bytes.fromhex("0d 00000000"))  # field 1, wire type 5 (fixed32)


# --- compression: gzip over snappy framing, real snappy, snappy framing alone ---------------

FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"
BODIES = [b"", b"x", b"y" * 60, b"z" * 61, GOLDEN, GOLDEN * 500, bytes(range(256)) * 300]


@pytest.mark.parametrize("method", ["gzip", "snappy", "none"])
@pytest.mark.parametrize("body", BODIES)
def test_each_compression_is_what_loki_reads(method: str, body: bytes) -> None:
    """Snappy's block format (not the framed one), under gzip for "gzip": read back by the
    reference snappy and gzip, and by the shipper's own uncompress."""
    compressed = compress(body, method)
    block = gzip.decompress(compressed) if method == "gzip" else compressed
    assert snappy.uncompress(block) == body
    # The block format starts with the uncompressed length as a varint; the framed
    # format (which Loki refuses) starts with its stream identifier chunk.
    assert block.startswith(ref_varint(len(body)))
    assert not block.startswith(FRAMED_MAGIC)
    assert uncompress(compressed) == body
    assert content_encoding(compressed) == (b"gzip" if method == "gzip" else None)


def test_gzip_is_the_default_and_snappy_framing_is_one_literal() -> None:
    assert compress(GOLDEN) == compress(GOLDEN, "gzip")
    # varint(len), then one literal: tag 60 << 2 (one byte of length - 1 follows) for < 256 bytes.
    assert snappy_frame(b"ab") == b"\x02\x04ab"
    assert snappy_frame(b"a" * 60) == b"\x3c" + bytes((59 << 2,)) + b"a" * 60  # the longest one-byte tag
    assert snappy_frame(b"a" * 61) == ref_varint(61) + bytes((60 << 2, 60)) + b"a" * 61
    assert snappy_frame(b"a" * 300) == ref_varint(300) + bytes((61 << 2,)) + (299).to_bytes(2, "little") + b"a" * 300
    assert snappy_frame(b"") == b"\x00"


def test_compress_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown compression 'lz4'"):
        compress(b"x", "lz4")


@settings(max_examples=300)
@given(st.binary(max_size=3000) | st.lists(st.sampled_from([b"ab", b"abc", b"\x00" * 70, b"line\n"]),
                                              max_size=400).map(b"".join))
def test_property_unsnappy_reads_what_the_reference_snappy_writes(data: bytes) -> None:
    """The pure decoder (for bodies reopened after a partial answer, and spooled ones from
    a version that sent real snappy) against python-snappy's encoder: copies, overlapping
    copies and long literals."""
    assert unsnappy(snappy.compress(data)) == data
    assert unsnappy(snappy_frame(data)) == data


@pytest.mark.parametrize("block, problem", [
    (b"", "ends inside"),
    (b"\x05\x10abc", "literal runs past the end"),
    (b"\x04\x01\x01", "copy reaches before the start"),
    (b"\x08\x00a\x05\x02", "copy reaches before the start"),
    (b"\x04\x08abc", "3 bytes decoded, the block says 4"),
    (b"\x05\x00a\x02", "ends inside a copy"),
    (b"\x05\xf4\x01", "ends inside a literal's length"),
])
def test_unsnappy_names_a_corrupt_block(block: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        unsnappy(block)


def test_compressed_golden_body_roundtrips_through_protobuf(pb: Any) -> None:
    req = pb.PushRequest.FromString(uncompress(compress(golden_body())))
    assert [len(s.entries) for s in req.streams] == [3, 2]


# --- split_push: what a 413 makes of a batch -------------------------------------

def _flat(pb: Any, body: bytes) -> list[tuple[str, int, int, str, list[tuple[str, str]]]]:
    """Every entry as (labels, seconds, nanos, line, metadata), in body order."""
    return [(s.labels, e.timestamp.seconds, e.timestamp.nanos, e.line,
             [(p.name, p.value) for p in e.structuredMetadata])
            for s in pb.PushRequest.FromString(body).streams for e in s.entries]


@settings(max_examples=200)
@given(streams_st())
def test_property_split_push_halves_keep_every_entry_exactly(
        pb: Any, streams: list[tuple[str, list[bytes], int, list[tuple[str, str]]]]) -> None:
    body = encode_push([(labels, encode_entries(lines, ts, encode_metadata(meta)))
                        for labels, lines, ts, meta in streams])
    total = sum(len(lines) for _, lines, _, _ in streams)
    halves = split_push(body)
    if total < 2:
        assert halves is None
        return
    assert halves is not None
    (first, n1, b1), (second, n2, b2) = halves
    assert (n1, n2) == (total // 2, total - total // 2)
    assert b1 + b2 == sum(len(line) for _, lines, _, _ in streams for line in lines)
    # Same entries, same timestamps and metadata; each stream's order kept.
    assert sorted(_flat(pb, first) + _flat(pb, second)) == sorted(_flat(pb, body))
    if len({labels for labels, _, _, _ in streams}) == len(streams):
        # Distinct label sets (the shipper's case): the body order is kept exactly.
        assert _flat(pb, first) + _flat(pb, second) == _flat(pb, body)


def test_split_push_of_one_stream_cuts_in_the_middle(pb: Any) -> None:
    body = encode_push([("{a=\"1\"}", encode_entries([b"l0", b"l1", b"l2", b"l3", b"l4"], 10))])
    halves = split_push(body)
    assert halves is not None
    assert [[e[3] for e in _flat(pb, h[0])] for h in halves] == [["l0", "l1"], ["l2", "l3", "l4"]]
    assert [h[1:] for h in halves] == [(2, 4), (3, 6)]
    assert uncompress(compress(body)) == body


@settings(max_examples=200)
@given(lines_st, st.integers(0, MAX_TS - 20) | st.integers(0, 3 * NS), meta_st, st.booleans())
def test_property_encode_entries_each_equals_one_call_per_line(
        lines: list[bytes], first_ts: int, meta: list[tuple[str, str]], own_times: bool) -> None:
    metadata = [encode_metadata(meta[: i % (len(meta) + 1)]) for i in range(len(lines))]
    times = [first_ts + 7 * i for i in range(len(lines))] if own_times else None
    expected = b"".join(encode_entries([line], times[i] if times else first_ts + i, metadata[i])
                        for i, line in enumerate(lines))
    assert encode_entries_each(lines, times, first_ts, metadata) == expected


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=300), min_size=2, max_size=400),
       st.sampled_from([0, 1, 127, 128, 2**21 - 3, 2**28 - 200, NS - 300, NS - 1]).flatmap(
           lambda edge: st.integers(0, 3).map(lambda sec: sec * NS + edge)) | st.integers(0, MAX_TS - 1000),
       st.none() | st.lists(st.sampled_from([b"", b"\x1a\x02\x0a\x00", b"\x1a\x07\x0a\x01l\x12\x02ok"]),
                            min_size=400, max_size=400))
def test_property_the_slots_encoder_is_the_loop(lines: list[bytes], first_ts: int, each: list[bytes] | None) -> None:
    """encode_entries's chunk path (slice assignments per group of 128 stamps) gives the loop's bytes
    exactly: across nanos varint lengths (2**21, 2**28), second boundaries, and the first 128 ns of
    a second (omitted or one-byte nanos), with one metadata for all or one each."""
    from shipper.encoder import _entries_by_loop, _entries_by_slots
    metadata: bytes | list[bytes] = b"\x1a\x05\x0a\x01r\x12\x00" if each is None else each[:len(lines)]
    assert _entries_by_slots(lines, first_ts, metadata) == _entries_by_loop(lines, first_ts, metadata)


@settings(max_examples=300)
@given(st.sampled_from([(0, 127), (128, 600), (0, 600), (100, 16500)]).flatmap(
           lambda bounds: st.lists(st.integers(*bounds), min_size=2, max_size=300)),
       st.integers(0, MAX_TS - 1000),
       st.lists(st.sampled_from([b"", b"\x1a\x02\x0a\x00", b"\x1a\x07\x0a\x01l\x12\x02ok",
                                 b"\x1a\x0e\x0a\x05level\x12\x05error"]), min_size=300, max_size=300))
def test_property_per_entry_metadata_heads_are_the_loops(lengths: list[int], first_ts: int, each: list[bytes]) -> None:
    """With metadata per entry, a head is keyed by line + metadata length when every line's
    length prefix has the same size (all under 128 bytes, or all 128 to 16,383), else by both
    lengths: the bytes are the loop's either way, across prefix sizes and entry sizes."""
    from shipper.encoder import _entries_by_loop, _entries_by_slots
    lines = [bytes([0x61 + i % 26]) * n for i, n in enumerate(lengths)]
    metadata = each[:len(lines)]
    assert _entries_by_slots(lines, first_ts, metadata) == _entries_by_loop(lines, first_ts, metadata)


@pytest.mark.parametrize("method", ["gzip", "snappy", "none"])
def test_compress_push_is_compress_of_the_body(method: str) -> None:
    """The streaming form (gzip fed piece by piece) reads back as the assembled body."""
    from shipper.encoder import compress_push
    streams = [('{a="1"}', [encode_entries([b"x" * n for n in range(90)], 5 * NS + 500), b""]),
               ('{b="2"}', encode_entries([b"y"], 7))]
    body = encode_push(streams)
    assert uncompress(compress_push(streams, method)) == body
    assert content_encoding(compress_push(streams, method)) == (b"gzip" if method == "gzip" else None)
    assert uncompress(compress_push([], method)) == b""
