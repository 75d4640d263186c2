"""shipper.cursor: a file's reads in, the position safe to checkpoint out (tables, no files)."""

from __future__ import annotations

import pytest

from shipper.cursor import FileCursor, Position, resume_positions

DEV, INO = 8, 1234


def opened(size: int = 0, resume: Position | None = None) -> FileCursor:
    cursor = FileCursor()
    cursor.resume = resume
    cursor.open(DEV, INO, size)
    return cursor


# (what was read in turn, bytes the splitter still holds after each) -> position after each read.
READS = {
    "whole lines": ([b"a\nbb\n", b"ccc\n"], [0, 0], [5, 9]),
    "a partial line waits for its newline": ([b"a\nbb", b"b\n"], [2, 0], [2, 6]),
    "a read without a newline moves nothing": ([b"a\n", b"bbbb", b"bb"], [0, 4, 6], [2, 2, 2]),
    # A line longer than max_line_bytes is shipped in pieces before its newline: they count.
    "pieces of a long line already shipped": ([b"a\n" + b"x" * 10], [3], [9]),
}


@pytest.mark.parametrize(("chunks", "held", "expected"), READS.values(), ids=READS.keys())
def test_the_position_is_where_the_read_lines_end(chunks: list[bytes], held: list[int], expected: list[int]) -> None:
    cursor = opened()
    got = []
    for chunk, h in zip(chunks, held):
        position = cursor.advance(chunk, h)
        assert position == cursor.position
        got.append(position.offset if position is not None else None)
    assert got == expected
    assert cursor.end() == Position(DEV, INO, sum(map(len, chunks)))


def test_no_position_before_a_file_is_opened() -> None:
    cursor = FileCursor()
    assert (cursor.position, cursor.end(), cursor.at(5)) == (None, None, None)


RESUMES = {
    "its own file: resumed": (Position(DEV, INO, 40), 100, (Position(DEV, INO, 40), True)),
    "exactly at its end: resumed": (Position(DEV, INO, 100), 100, (Position(DEV, INO, 100), True)),
    "shorter than the position: from the start": (Position(DEV, INO, 101), 100, (Position(DEV, INO, 101), False)),
    "another file at the path (rotated): from the start": (Position(DEV, 999, 40), 100, (None, False)),
    "no resume position": (None, 100, (None, False)),
}


@pytest.mark.parametrize(("resume", "size", "expected"), RESUMES.values(), ids=RESUMES.keys())
def test_resume_applies_to_the_file_it_names_once(resume: Position | None, size: int,
                                                 expected: tuple[Position | None, bool]) -> None:
    cursor = FileCursor()
    cursor.resume = resume
    assert cursor.open(DEV, INO, size) == expected
    assert (cursor.offset, cursor.resume) == (0, None)  # the caller seeks; taken once
    assert cursor.open(DEV, INO, size) == (None, False)  # the next file at the path starts at 0


def test_seek_and_rewind_move_the_read_and_the_line_end_together() -> None:
    cursor = opened(100)
    cursor.seek(40)
    assert cursor.advance(b"xy", 2) == Position(DEV, INO, 40)  # a partial line after the resume point
    cursor.rewind()
    assert (cursor.offset, cursor.line_end) == (0, 0)
    assert cursor.advance(b"z\n", 0) == Position(DEV, INO, 2)


HOLDS = {
    "the processor holds nothing: released": ([0], [10]),
    "an entry open: kept until it is handed on": ([2, 1, 0], [None, None, 10]),
    "released once: nothing after": ([0, 0], [10, None]),
}


@pytest.mark.parametrize(("pending", "released"), HOLDS.values(), ids=HOLDS.keys())
def test_a_processed_sources_position_waits_for_its_processor(pending: list[int], released: list[int | None]) -> None:
    cursor = opened()
    cursor.hold(Position(DEV, INO, 10))
    got = [cursor.release(p) for p in pending]
    assert [p.offset if p is not None else None for p in got] == released


def test_a_newer_hold_replaces_the_one_still_waiting() -> None:
    cursor = opened()
    cursor.hold(Position(DEV, INO, 10))
    assert cursor.release(1) is None
    cursor.hold(Position(DEV, INO, 25))
    assert cursor.release(0) == Position(DEV, INO, 25)


def test_resume_positions_are_the_checkpoints_moved_on_by_the_spool_in_order() -> None:
    acked = {"/a": Position(1, 1, 10), "/b": Position(1, 2, 5)}
    spooled = [{"/a": Position(1, 1, 20)}, {}, {"/a": Position(1, 1, 30), "/c": Position(1, 3, 7)}]
    assert resume_positions(acked, spooled) == {
        "/a": Position(1, 1, 30), "/b": Position(1, 2, 5), "/c": Position(1, 3, 7)}
    assert acked == {"/a": Position(1, 1, 10), "/b": Position(1, 2, 5)}  # not changed in place
