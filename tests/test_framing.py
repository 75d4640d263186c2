"""shipper.framing.LineSplitter: the same lines whatever the chunking.

Every example is fed h11-style: whole, one byte at a time, and split in two at
every position; all runs must give identical lines and counters. Hypothesis
adds random multi-way splits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.framing import LineSplitter

REPLACEMENT = "\ufffd".encode()


@dataclass(frozen=True)
class Result:
    lines: list[bytes]
    split_lines: int
    invalid_utf8_lines: int


def run(chunks: list[bytes], max_line_bytes: int, *, flush: bool = True) -> Result:
    """Feed `chunks` to a fresh splitter (then flush); what came out."""
    splitter = LineSplitter(max_line_bytes)
    lines: list[bytes] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    if flush:
        lines += splitter.flush()
        assert splitter.pending_bytes == 0
    return Result(lines, splitter.split_lines, splitter.invalid_utf8_lines)


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """Whole, one byte at a time, and every 2-way split."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]


def feed_all_ways(data: bytes, max_line_bytes: int = 1024, *, flush: bool = True) -> Result:
    """The result of feeding `data` whole; asserts every other chunking gives the same."""
    expected = run([data], max_line_bytes, flush=flush)
    for chunks in chunkings(data):
        assert run(chunks, max_line_bytes, flush=flush) == expected, f"differs when fed as {chunks!r}"
    return expected


def lines_of(data: bytes, max_line_bytes: int = 1024) -> list[bytes]:
    return feed_all_ways(data, max_line_bytes).lines


# --- newlines ----------------------------------------------------------------

def test_lines_end_at_newline() -> None:
    assert lines_of(b"one\ntwo\nthree\n") == [b"one", b"two", b"three"]


def test_crlf_is_normalised_even_when_cr_and_lf_arrive_in_different_chunks() -> None:
    # chunkings() includes the split between \r and \n of each line.
    result = feed_all_ways(b"one\r\ntwo\r\n\r\nthree\n")
    assert result.lines == [b"one", b"two", b"", b"three"]
    assert run([b"one\r", b"\ntwo\r", b"\n"], 1024).lines == [b"one", b"two"]


def test_only_the_cr_right_before_the_newline_is_dropped() -> None:
    assert lines_of(b"a\rb\n\rc\nd\r\r\n") == [b"a\rb", b"\rc", b"d\r"]


def test_lone_cr_is_not_a_line_end() -> None:
    assert lines_of(b"progress 10%\rprogress 20%\rdone\n") == [b"progress 10%\rprogress 20%\rdone"]


def test_empty_lines_are_kept() -> None:
    assert lines_of(b"\n\na\n\n") == [b"", b"", b"a", b""]


def test_last_line_without_newline_comes_only_from_flush() -> None:
    assert feed_all_ways(b"first\nlast", flush=False).lines == [b"first"]
    splitter = LineSplitter(1024)
    assert splitter.feed(b"first\nlast") == [b"first"]
    assert splitter.pending_bytes == 4
    assert splitter.flush() == [b"last"]
    assert splitter.pending_bytes == 0
    assert splitter.flush() == []
    assert lines_of(b"first\nlast") == [b"first", b"last"]


def test_flush_after_a_final_newline_returns_nothing() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"a\n") == [b"a"]
    assert splitter.flush() == []


def test_a_trailing_cr_at_end_of_input_is_dropped_by_flush() -> None:
    # The \r of a CRLF whose LF never came: consistent with the split property below.
    assert lines_of(b"a\nb\r") == [b"a", b"b"]
    assert lines_of(b"\r") == [b""]


def test_empty_feed_returns_nothing() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"") == []
    assert splitter.flush() == []


def test_nul_bytes_are_kept() -> None:
    result = feed_all_ways(b"a\x00b\n\x00\n")
    assert result.lines == [b"a\x00b", b"\x00"]
    assert result.invalid_utf8_lines == 0


# --- long lines ----------------------------------------------------------------

def test_line_of_exactly_max_bytes_is_not_cut() -> None:
    result = feed_all_ways(b"x" * 10 + b"\n" + b"y" * 10, 10)
    assert result.lines == [b"x" * 10, b"y" * 10]
    assert result.split_lines == 0


def test_long_line_is_cut_into_pieces_of_at_most_max_bytes_and_each_cut_is_counted() -> None:
    result = feed_all_ways(b"a" * 25 + b"\nshort\n" + b"b" * 21 + b"\n" + b"c" * 20, 10)
    assert result.lines == [b"a" * 10, b"a" * 10, b"a" * 5, b"short",
                            b"b" * 10, b"b" * 10, b"b", b"c" * 10, b"c" * 10]
    assert result.split_lines == 2 + 2 + 1


def test_long_line_pieces_are_shipped_before_its_newline_arrives() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"z" * 24) == [b"z" * 10, b"z" * 10]
    assert splitter.pending_bytes == 4
    assert splitter.split_lines == 2
    assert splitter.feed(b"\n") == [b"z" * 4]
    assert splitter.split_lines == 2


def test_crlf_line_of_max_bytes_is_not_cut() -> None:
    assert run([b"x" * 10 + b"\r\n"], 10) == Result([b"x" * 10], 0, 0)


@pytest.mark.parametrize(("char", "prefix"), [("é", 9), ("€", 8), ("€", 9), ("😀", 7), ("😀", 8), ("😀", 9)])
def test_cut_never_splits_a_multibyte_character(char: str, prefix: int) -> None:
    line = b"a" * prefix + char.encode() + b"b" * 12
    result = feed_all_ways(line + b"\n", 10)
    assert b"".join(result.lines) == line
    assert all(len(piece) <= 10 for piece in result.lines)
    for piece in result.lines:
        piece.decode("utf-8")  # every piece is whole characters
    # The character does not fit after the prefix: the first cut is right before it.
    assert result.lines[0] == b"a" * prefix
    assert result.lines[1].startswith(char.encode())
    assert result.invalid_utf8_lines == 0
    assert result.split_lines == len(result.lines) - 1


def test_multibyte_text_is_cut_at_the_last_boundary_within_the_limit() -> None:
    text = "€" * 10  # 30 bytes; 3 characters (9 bytes) fit in 10
    result = feed_all_ways(text.encode() + b"\n", 10)
    assert result.lines == ["€€€".encode()] * 3 + ["€".encode()]
    assert result.split_lines == 3


def test_invalid_bytes_are_replaced_before_the_cut() -> None:
    # Continuation bytes only: each becomes a 3-byte U+FFFD, then the line is
    # cut like any other, so no piece exceeds the limit. The line is counted once.
    result = feed_all_ways(b"\x80" * 25 + b"\n", 10)
    assert result.lines == [REPLACEMENT * 3] * 8 + [REPLACEMENT]
    assert result.split_lines == 8
    assert result.invalid_utf8_lines == 1


def test_invalid_utf8_in_a_line_shipped_in_pieces_is_counted_once() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"\xff" + b"a" * 20) == [REPLACEMENT + b"a" * 7, b"a" * 10]
    assert (splitter.split_lines, splitter.invalid_utf8_lines) == (2, 1)
    assert splitter.feed(b"\xfe\n") == [b"aaa" + REPLACEMENT]
    assert (splitter.split_lines, splitter.invalid_utf8_lines) == (2, 1)
    assert splitter.feed(b"\xfd\n") == [REPLACEMENT]
    assert (splitter.split_lines, splitter.invalid_utf8_lines) == (2, 2)


def test_a_character_split_across_chunks_at_the_cut_is_not_invalid() -> None:
    # An unterminated long line ending in an incomplete character keeps it pending.
    splitter = LineSplitter(10)
    assert splitter.feed(b"a" * 9 + b"xy" + "€".encode()[:2]) == [b"a" * 9 + b"x"]
    assert splitter.feed("€".encode()[2:] + b"\n") == [b"y" + "€".encode()]
    assert splitter.invalid_utf8_lines == 0


# --- invalid UTF-8 -------------------------------------------------------------

def test_invalid_utf8_is_replaced_and_counted_per_line() -> None:
    result = feed_all_ways(b"ok\n\xff\nalso \xfe\xfe bad\n\xc3\nfine \xc3\xa9\n")
    assert result.lines == [b"ok", REPLACEMENT, b"also " + REPLACEMENT * 2 + b" bad", REPLACEMENT,
                            "fine é".encode()]
    assert result.invalid_utf8_lines == 3


def test_invalid_utf8_in_the_unterminated_last_line_is_counted_at_flush() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"good\nbad \xff") == [b"good"]
    assert splitter.invalid_utf8_lines == 0
    assert splitter.flush() == [b"bad " + REPLACEMENT]
    assert splitter.invalid_utf8_lines == 1


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_character_split_across_chunks_is_not_invalid(char: str) -> None:
    data = ("caf" + char + "\n" + char + "\n").encode()
    result = feed_all_ways(data)  # includes every split inside each character
    assert result.lines == [("caf" + char).encode(), char.encode()]
    assert result.invalid_utf8_lines == 0


def test_counters_accumulate_and_are_never_reset() -> None:
    splitter = LineSplitter(4)
    splitter.feed(b"\xff\n123456789\n")
    splitter.feed(b"\xfe\nabcdef\n")
    splitter.flush()
    assert (splitter.split_lines, splitter.invalid_utf8_lines) == (3, 2)


# --- regressions (each was a strict xfail) --------------------------------------

def test_crlf_after_a_max_length_line_split_between_cr_and_lf() -> None:
    # The \r ending an unterminated max-length line may be the CR of a CRLF:
    # it must not be shipped as a piece (that gave [x*10, b""] and one cut).
    assert run([b"x" * 10 + b"\r", b"\n"], 10) == Result([b"x" * 10], 0, 0)
    assert feed_all_ways(b"x" * 10 + b"\r\n" + b"y" * 10 + b"\r", 10) == Result([b"x" * 10, b"y" * 10], 0, 0)


def test_lone_cr_at_a_cut_boundary_is_kept_whatever_the_chunking() -> None:
    # A piece cut off an unterminated line used to lose a \r that ended it.
    result = feed_all_ways(b"x" * 9 + b"\r" + b"y" * 5 + b"\n", 10)
    assert result == Result([b"x" * 9 + b"\r", b"y" * 5], 1, 0)
    result = feed_all_ways(b"x" * 9 + b"\r\r" + b"y" * 5 + b"\r\n", 10)
    assert result == Result([b"x" * 9 + b"\r", b"\r" + b"y" * 5], 1, 0)


def test_replacement_never_makes_a_line_longer_than_max_line_bytes() -> None:
    # Replacing after the cut made a 10-byte piece of b"\xff" a 30-byte line.
    result = run([b"\xff" * 10 + b"\n", "é".encode("latin-1") * 25 + b"\n"], 10)
    assert all(len(line) <= 10 for line in result.lines), [len(line) for line in result.lines]
    assert result == Result([REPLACEMENT * 3] * 3 + [REPLACEMENT] + [REPLACEMENT * 3] * 8 + [REPLACEMENT],
                            3 + 8, 2)
    assert feed_all_ways(b"\xff" * 10 + b"\n" + "é".encode("latin-1") * 25 + b"\n", 10) == result


def test_pieces_are_valid_utf8_even_with_a_tiny_limit() -> None:
    # Validity used to be checked before the cut, which could split a valid
    # character into uncounted invalid pieces. Below 4 bytes (no config allows
    # it) a character wider than the limit is a piece of its own.
    result = run([b"\xc2\x80\n"], 1)
    for line in result.lines:
        line.decode("utf-8")
    assert result == run([b"\xc2", b"\x80", b"\n"], 1)
    assert result == Result([b"\xc2\x80"], 0, 0)
    assert feed_all_ways("a€😀b".encode() + b"\n", 2) == Result([b"a", "€".encode(), "😀".encode(), b"b"], 3, 0)
    assert feed_all_ways(b"a\xffb\n", 2) == Result([b"a", REPLACEMENT, b"b"], 2, 1)


# --- properties ----------------------------------------------------------------

@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def reference_short_lines(data: bytes) -> tuple[list[bytes], int]:
    """The contract when no line exceeds the limit: split at \\n, drop one \\r before it,
    invalid UTF-8 replaced (and counted); the unterminated last line comes from flush()."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    lines, invalid = [], 0
    for part in parts:
        if part.endswith(b"\r"):
            part = part[:-1]
        try:
            part.decode("utf-8")
        except UnicodeDecodeError:
            invalid += 1
            part = part.decode("utf-8", "replace").encode()
        lines.append(part)
    return lines, invalid


@settings(max_examples=300)
@given(st.data(), st.lists(st.text(max_size=12).map(str.encode), max_size=12), st.booleans(),
       st.lists(st.sampled_from(["\n", "\r\n", "\r", ""]), min_size=12, max_size=12))
def test_property_valid_short_lines_are_the_input_split_at_newlines(
        data: st.DataObject, texts: list[bytes], final_newline: bool, ends: list[str]) -> None:
    joined = b"".join(t + ends[i].encode() for i, t in enumerate(texts))
    if final_newline:
        joined += b"\n"
    limit = 10_000  # no line exceeds it
    chunks = data.draw(split_points(joined))
    # lines == input.split(b"\n"), one trailing \r stripped from each, the last (if any) via flush()
    expected, invalid = reference_short_lines(joined)
    assert invalid == 0
    assert run(chunks, limit) == Result(expected, 0, 0)
    assert run(chunks, limit, flush=False).lines == expected[:len(joined.split(b"\n")) - 1]


@settings(max_examples=300)
@given(st.data(), st.binary(max_size=200))
def test_property_arbitrary_bytes_with_short_lines(data: st.DataObject, raw: bytes) -> None:
    limit = 16
    # Keep every line (with its \r) within the limit: then only replacement can make a line
    # longer (U+FFFD is 3 bytes), and such a line is cut like any other (reference() below).
    raw = b"\n".join(part[i:i + limit] for part in raw.split(b"\n") for i in range(0, max(len(part), 1), limit))
    chunks = data.draw(split_points(raw))
    assert run(chunks, limit) == reference(raw, limit)
    assert run([raw], limit) == reference(raw, limit)


def reference_cut(line: str, limit: int) -> list[bytes]:
    """Greedy: the longest run of whole characters that fits in `limit` bytes, repeated."""
    pieces: list[bytes] = []
    current = b""
    for ch in line:
        b = ch.encode()
        if len(current) + len(b) > limit:
            pieces.append(current)
            current = b""
        current += b
    pieces.append(current)
    return pieces


@settings(max_examples=300)
@given(st.data(), st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40), max_size=8),
       st.integers(4, 20))
def test_property_long_valid_lines_are_cut_on_character_boundaries(
        data: st.DataObject, texts: list[str], limit: int) -> None:
    raw = b"".join(t.encode() + b"\n" for t in texts)
    chunks = data.draw(split_points(raw))
    result = run(chunks, limit)
    expected = [piece for t in texts for piece in reference_cut(t, limit)]
    cuts = sum(len(reference_cut(t, limit)) - 1 for t in texts)
    assert result == Result(expected, cuts, 0)
    assert all(len(line) <= limit for line in result.lines)


def reference(data: bytes, limit: int) -> Result:
    """The whole contract, one line at a time: split at \\n (the unterminated last line
    too, as flush() gives it), drop one \\r at the end, replace invalid UTF-8 (counting
    the line), then cut greedily on character boundaries (counting the cuts)."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    lines: list[bytes] = []
    cuts = invalid = 0
    for part in parts:
        if part.endswith(b"\r"):
            part = part[:-1]
        try:
            text = part.decode("utf-8")
        except UnicodeDecodeError:
            invalid += 1
            text = part.decode("utf-8", "replace")
        pieces = reference_cut(text, limit)
        cuts += len(pieces) - 1
        lines += pieces
    return Result(lines, cuts, invalid)


# Bytes that exercise the edge cases far more often than uniform random bytes do.
tricky_bytes_st = st.lists(
    st.binary(max_size=8) | st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r", b"\xff", b"\x80", b"\xed\xa0",
                                             "é€😀".encode(), "😀".encode()[:3], "€".encode()[:2]]),
    max_size=40).map(b"".join)


@settings(max_examples=500)
@given(st.data(), tricky_bytes_st, st.integers(4, 12))
def test_property_any_bytes_give_the_reference_result_in_any_chunking(
        data: st.DataObject, raw: bytes, limit: int) -> None:
    # Any line length, invalid UTF-8 and lone or trailing \r included.
    chunks = data.draw(split_points(raw))
    whole = run([raw], limit)
    assert whole == reference(raw, limit)
    assert run(chunks, limit) == whole
    assert run([raw[i:i + 1] for i in range(len(raw))], limit) == whole
    for line in whole.lines:
        line.decode("utf-8")
        assert len(line) <= limit
