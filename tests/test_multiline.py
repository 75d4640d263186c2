"""shipper.multiline.Merger: continuation lines joined to their entry, the same however fed.

Every table case is fed at one `now` whole, one line at a time, and split in
two at every position; all runs must give identical entries, stamps and
counters. Hypothesis checks that no byte is ever lost, added or reordered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import levels
from shipper.multiline import DEFAULT_START, Merger

BIG = 256 * 1024
# A custom start that matches nothing: the first line begins an entry every later one continues.
NEVER = re.compile(rb"(?!)")


@dataclass(frozen=True)
class Result:
    entries: list[bytes]
    stamps: list[int]
    counters: tuple[int, ...]
    pending: int  # lines still open before flush


def counters(m: Merger) -> tuple[int, ...]:
    return (m.entries, m.merged_entries, m.merged_lines, m.split_max_lines, m.split_max_bytes, m.split_max_wait)


def run(chunks: list[list[bytes]], *, start: re.Pattern[bytes] | None = None, max_lines: int = 1000,
        max_bytes: int = BIG, now: float = 0.0) -> Result:
    """Feed `chunks` (each one feed() call) at one `now`, then flush."""
    m = Merger(start, max_lines, 5.0, max_bytes)
    entries: list[bytes] = []
    stamps: list[int] = []
    i = 0
    for chunk in chunks:
        entries += m.feed(chunk, now, list(range(i, i + len(chunk))), stamps)
        i += len(chunk)
    pending = m.pending_lines
    entries += m.flush(stamps)
    assert m.pending_lines == 0 and m.pending_bytes == 0 and m.next_due() is None
    return Result(entries, stamps, counters(m), pending)


def chunkings(lines: list[bytes]) -> Iterator[list[list[bytes]]]:
    yield [lines]
    yield [[line] for line in lines]
    for i in range(len(lines) + 1):
        yield [lines[:i], lines[i:]]


def merge_all_ways(lines: list[bytes], *, start: re.Pattern[bytes] | None = None, max_lines: int = 1000,
                   max_bytes: int = BIG) -> Result:
    """The result of feeding `lines` at once; asserts every other split gives the same."""
    expected = run([lines], start=start, max_lines=max_lines, max_bytes=max_bytes)
    for chunks in chunkings(lines):
        got = run(chunks, start=start, max_lines=max_lines, max_bytes=max_bytes)
        assert got == expected, f"differs when fed as {chunks!r}"
    return expected


def entries_of(lines: list[bytes], start: re.Pattern[bytes] | None = None) -> list[bytes]:
    return merge_all_ways(lines, start=start).entries


A1 = b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} INFO - msg one"
A2 = b"[2022-06-12T13:00:01.456+0000] {taskinstance.py:441} ERROR - Task failed with exception"
A3 = b"[2022-06-12T13:00:02.000+0000] {local_task_job.py:212} INFO - Task exited with return code 1"
TRACEBACK = [
    b"Traceback (most recent call last):",
    b'  File "/opt/airflow/dags/x.py", line 12, in fail',
    b'    raise ValueError("boom")',
    b"ValueError: boom",
]
CHAINED = [
    b"Traceback (most recent call last):",
    b'  File "/a.py", line 3, in f',
    b"KeyError: 'k'",
    b"",
    b"During handling of the above exception, another exception occurred:",
    b"",
    b"Traceback (most recent call last):",
    b'  File "/a.py", line 5, in f',
    b"ValueError: boom",
]
JSON1 = b'{"timestamp":"2025-04-01T12:00:00.123456Z","level":"info","event":"one","logger":"airflow.task"}'
JSON2 = b'{"timestamp":"2025-04-01T12:00:01.000000Z","level":"error","event":"two","logger":"airflow.task"}'


# structlog's console format, as Airflow 3 local runs print it (events padded to 30).
SC1 = b"2026-01-05T10:00:00.123456Z [info     ] Task started                   [airflow.task] loc=task_runner.py:12"
SC_ERR = (b"2026-01-05T10:00:01.000000Z [error    ] Task failed with exception     [task] "
          b"dag_id=etl loc=task_runner.py:900")
SC2 = b"2026-01-05T10:00:02.000000Z [info     ] ::endgroup::                   [airflow.task] loc=x.py:3"
SC_OPEN = b"2026-01-05T10:00:03.000000Z [warning  ] first line of a message"
SC_CLOSE = b"its last line                  [airflow.task] loc=x.py:4"
SC_COLOUR = (b"\x1b[2m2026-01-05T10:00:04.000000Z\x1b[0m [\x1b[31m\x1b[1merror    \x1b[0m] \x1b[1mboom\x1b[0m "
             b"[\x1b[0m\x1b[1m\x1b[34mairflow.task\x1b[0m]\x1b[0m \x1b[36mloc\x1b[0m=\x1b[35mx.py:5\x1b[0m")
# Plain Python logging.
PY_ERR = b"2024-01-01 12:00:00,123 ERROR root: bad"
PY_OK = b"2024-01-01 12:00:01,000 INFO root: ok"
CAUSE = [
    b"Traceback (most recent call last):",
    b'  File "/a.py", line 3, in f',
    b"    d[k]",
    b"    ~^^^",
    b"KeyError: 'k'",
    b"",
    b"The above exception was the direct cause of the following exception:",
    b"",
    b"Traceback (most recent call last):",
    b'  File "/a.py", line 5, in f',
    b"    raise ValueError('boom') from e",
    b"ValueError: boom",
]
GROUP = [
    b"  + Exception Group Traceback (most recent call last):",
    b'  |   File "/tmp/eg.py", line 2, in f',
    b'  |     raise ExceptionGroup("eg", [ValueError("a"), TypeError("b")])',
    b"  | ExceptionGroup: eg (2 sub-exceptions)",
    b"  +-+---------------- 1 ----------------",
    b"    | ValueError: a",
    b"    +---------------- 2 ----------------",
    b"    | TypeError: b",
    b"    +------------------------------------",
]
PRINT = b"hello from print()"


def j(*lines: bytes | list[bytes]) -> bytes:
    """The entry of these lines (lists spliced in)."""
    flat: list[bytes] = []
    for line in lines:
        flat += line if isinstance(line, list) else [line]
    return b"\n".join(flat)


@pytest.mark.parametrize("lines, expected", [
    ([], []),
    ([A1], [A1]),
    ([A1, A2, A3], [A1, A2, A3]),
    # Airflow 2: every unprefixed line continues the record (prints are prefixed records).
    ([A1, A2, *TRACEBACK, A3], [A1, j(A2, TRACEBACK), A3]),
    ([A2, *CHAINED], [j(A2, CHAINED)]),
    ([A1, b"second line of the message", b"", b"third", A3], [j(A1, b"second line of the message", b"", b"third"), A3]),
    ([A2, *TRACEBACK, b"rest of a multi-line exception message", A3],
     [j(A2, TRACEBACK, b"rest of a multi-line exception message"), A3]),
    ([b"", b"", A1, b""], [b"", b"", A1 + b"\n"]),
    # Airflow with a space separator, and colored_console_log's ANSI codes.
    ([b"[2022-06-12 13:00:00,123] {x.py:1} INFO - a", b"[\x1b[34m2022-06-12T13:00:00.123+0000\x1b[0m] {x.py:1} I - b"],
     [b"[2022-06-12 13:00:00,123] {x.py:1} INFO - a", b"[\x1b[34m2022-06-12T13:00:00.123+0000\x1b[0m] {x.py:1} I - b"]),
    # Not starts: a bracket without a timestamp, an indented timestamp.
    ([A1, b"[not a timestamp]", b" [2022-06-12T13:00:00] indented"],
     [j(A1, b"[not a timestamp]", b" [2022-06-12T13:00:00] indented")]),
    # structlog console: a record ends at its ` [logger] key=value` line; then only a traceback joins it.
    ([SC1, PRINT, SC2], [SC1, PRINT, SC2]),
    ([SC1, SC_ERR, *TRACEBACK, b"", PRINT, SC2], [SC1, j(SC_ERR, TRACEBACK, b""), PRINT, SC2]),
    ([SC_ERR, PRINT, b"  an indented print", b""], [SC_ERR, PRINT, b"  an indented print", b""]),
    ([SC2, b"x" * 20_000, b"last line"], [SC2, b"x" * 20_000, b"last line"]),
    ([SC_OPEN, b"middle", b"", SC_CLOSE, PRINT], [j(SC_OPEN, b"middle", b"", SC_CLOSE), PRINT]),
    ([SC_OPEN, SC1], [SC_OPEN, SC1]),  # a record whose suffix never came still ends at the next record
    ([SC_COLOUR, *TRACEBACK, PRINT], [j(SC_COLOUR, TRACEBACK), PRINT]),
    ([SC1, PRINT, *TRACEBACK], [SC1, PRINT, j(TRACEBACK)]),  # a print between: the traceback is not the record's
    # Plain Python logging: indented lines and a traceback join a record; a print does not.
    ([PY_ERR, *TRACEBACK, PY_OK], [j(PY_ERR, TRACEBACK), PY_OK]),
    ([PY_OK, b"  detail: 1", b"  detail: 2", PRINT, PY_OK], [j(PY_OK, b"  detail: 1", b"  detail: 2"), PRINT, PY_OK]),
    ([b"2024-01-01 12:00:00,123 - root - ERROR - bad", *TRACEBACK, PRINT],
     [j(b"2024-01-01 12:00:00,123 - root - ERROR - bad", TRACEBACK), PRINT]),
    ([b"ERROR:root:bad", *CAUSE, b"INFO:root:ok"], [j(b"ERROR:root:bad", CAUSE), b"INFO:root:ok"]),
    # JSON: one record per line; nothing joins it.
    ([JSON1, JSON2], [JSON1, JSON2]),
    ([JSON1, *TRACEBACK, JSON2], [JSON1, j(TRACEBACK), JSON2]),
    ([JSON1, PRINT, b"  indented", b"", JSON2], [JSON1, PRINT, b"  indented", b"", JSON2]),
    # Tracebacks on their own: the grammar decides where one ends.
    (TRACEBACK, [j(TRACEBACK)]),
    ([*TRACEBACK, PRINT, b"another print"], [j(TRACEBACK), PRINT, b"another print"]),
    ([*CHAINED, PRINT], [j(CHAINED), PRINT]),
    ([*CAUSE, b"", PRINT], [j(CAUSE, b""), PRINT]),
    ([*TRACEBACK, *TRACEBACK], [j(TRACEBACK), j(TRACEBACK)]),  # no separator: two tracebacks
    ([*GROUP, PRINT], [j(GROUP), PRINT]),
    ([*GROUP, b"", CAUSE[6], b"", *TRACEBACK, PRINT], [j(GROUP, b"", CAUSE[6], b"", TRACEBACK), PRINT]),
    ([*TRACEBACK[:2], b"", *TRACEBACK[2:], PRINT], [j(TRACEBACK[:2], b"", TRACEBACK[2:]), PRINT]),
    # A chained exception printed without frames is its `ExcType: message` alone.
    ([*TRACEBACK, b"", CHAINED[4], b"", b"RuntimeError: no frames", PRINT],
     [j(TRACEBACK, b"", CHAINED[4], b"", b"RuntimeError: no frames"), PRINT]),
    # Anything else alone is an entry of its own: every print.
    ([b"hello", b"world", A1], [b"hello", b"world", A1]),
    ([CHAINED[4], b"  x", b""], [CHAINED[4], b"  x", b""]),
])
def test_default_rule(lines: list[bytes], expected: list[bytes]) -> None:
    assert entries_of(lines) == expected


def python_traceback(code: str) -> list[bytes]:
    """The lines Python itself prints for the exception `code` raises."""
    import sys
    import traceback
    limit = sys.getrecursionlimit()
    try:
        exec(compile(code, "/opt/airflow/dags/t.py", "exec"), {})
    except BaseException as e:  # noqa: BLE001  # whatever it raised
        return "".join(traceback.format_exception(e)).encode().rstrip(b"\n").split(b"\n")
    finally:
        sys.setrecursionlimit(limit)
    raise AssertionError("no exception")


@pytest.mark.parametrize("code", [
    "def f():\n    return {}['k']\nf()",
    "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('boom') from e",
    "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('boom')",
    "def f(x):\n    return x.a.b\nf(None)",
    "raise ExceptionGroup('eg', [ValueError('a'), ExceptionGroup('inner', [TypeError('b')])])",
    "try:\n    raise ExceptionGroup('eg', [ValueError('a')])\nexcept Exception as e:\n    raise RuntimeError('x') from e",
    "import sys\nsys.setrecursionlimit(60)\ndef f():\n    f()\nf()",
])
@pytest.mark.parametrize("before", [A2, SC_ERR, PY_ERR, None])
def test_what_python_prints_is_one_entry_and_the_next_print_is_not(code: str, before: bytes | None) -> None:
    traceback_lines = python_traceback(code)
    head = [before] if before is not None else []
    assert entries_of([*head, *traceback_lines, JSON1]) == [j(*head, traceback_lines), JSON1]
    if before != A2:  # (in Airflow 2 output an unprefixed line continues the record)
        assert entries_of([*head, *traceback_lines, PRINT]) == [j(*head, traceback_lines), PRINT]


def test_known_limit_unindented_lines_after_the_final_line_outside_airflow_2() -> None:
    """A multi-line exception message or a 3.11 note reads like a print after the traceback:
    outside Airflow 2 (where prints are prefixed, so such a line continues the record) it is cut off."""
    lines = python_traceback("e = ValueError('first line\\nsecond line')\ne.add_note('a note')\nraise e")
    assert lines[-3:] == [b"ValueError: first line", b"second line", b"a note"]
    assert entries_of([SC_ERR, *lines]) == [j(SC_ERR, lines[:-2]), b"second line", b"a note"]
    assert entries_of([A2, *lines]) == [j(A2, lines)]


def test_levels_of_merged_entries() -> None:
    """A traceback's entry keeps its record's level; a print after an error record is not an error."""
    entries = entries_of([SC1, SC_ERR, *TRACEBACK, b"", PRINT, SC2])
    assert [levels.detect(e) for e in entries] == ["info", "error", None, "info"]
    entries = entries_of([JSON1, *TRACEBACK, JSON2])
    assert [levels.detect(e) for e in entries] == ["info", "error", "error"]


def test_airflow_traceback_is_one_error_entry() -> None:
    """The issue's "done when": a task's traceback is one entry, and its level is error."""
    entries = entries_of([A1, A2, *TRACEBACK, A3])
    assert [levels.detect(e) for e in entries] == ["info", "error", "info"]
    assert entries[1].count(b"\n") == len(TRACEBACK)
    # An uncaught exception the interpreter printed (no logging prefix).
    entries = entries_of([A1, *TRACEBACK])
    assert entries == [b"\n".join([A1, *TRACEBACK])]
    entries = entries_of(TRACEBACK)
    assert [levels.detect(e) for e in entries] == ["error"]


def test_default_start_pattern() -> None:
    starts = [A1, JSON1, b'{"a": 1}', b"2024-01-01T00:00:00Z msg", b"2024-01-01 00:00 msg", b"WARNING:py.warnings:x",
              b"[2024-01-01T00:00:00]"]
    not_starts = [b"Traceback (most recent call last):", b'  File "x.py", line 1, in f', b"ValueError: boom",
                  b"", b"  [2024-01-01T00:00:00]", b"[2024-01-01]", b"{ }", b"info:root:x", b"During handling"]
    assert [bool(DEFAULT_START.match(x)) for x in starts] == [True] * len(starts)
    assert [bool(DEFAULT_START.match(x)) for x in not_starts] == [False] * len(not_starts)


def test_stamps_are_those_of_first_lines() -> None:
    # run() stamps line i with i.
    result = merge_all_ways([b"x", A1, *TRACEBACK, A2, A3])
    assert result.stamps == [0, 1, 6, 7]
    assert len(result.stamps) == len(result.entries)


def test_stamps_default_to_zero() -> None:
    m = Merger(None, 100, 1.0, BIG)
    out: list[int] = []
    assert m.feed([A1, A2], 0.0, out_stamps=out) == [A1]
    assert m.flush(out) == [A2]
    assert out == [0, 0]


def test_counters() -> None:
    result = merge_all_ways([A1, A2, *TRACEBACK, A3, *CHAINED])
    entries, merged_entries, merged_lines, split_lines, split_bytes, split_wait = result.counters
    # A1 | A2 + traceback | A3 + the chained traceback
    assert (entries, merged_entries, merged_lines) == (3, 2, len(TRACEBACK) + len(CHAINED))
    assert (split_lines, split_bytes, split_wait) == (0, 0, 0)
    assert result.pending == 1 + len(CHAINED)


@pytest.mark.parametrize("max_lines, expected, split", [
    (1, [A2, *TRACEBACK], 4),
    (2, [b"\n".join([A2, TRACEBACK[0]]), b"\n".join(TRACEBACK[1:3]), TRACEBACK[3]], 2),
    (3, [b"\n".join([A2, *TRACEBACK[:2]]), b"\n".join(TRACEBACK[2:])], 1),
    (5, [b"\n".join([A2, *TRACEBACK])], 0),
    (6, [b"\n".join([A2, *TRACEBACK])], 0),
])
def test_max_lines(max_lines: int, expected: list[bytes], split: int) -> None:
    result = merge_all_ways([A2, *TRACEBACK], max_lines=max_lines)
    assert result.entries == expected
    assert result.counters[3] == split  # split_max_lines


def test_max_lines_full_entry_is_returned_at_once() -> None:
    m = Merger(None, 3, 1.0, BIG)
    assert m.feed([A2, TRACEBACK[0]], 0.0) == []
    assert m.feed([TRACEBACK[1]], 0.0) == [b"\n".join([A2, *TRACEBACK[:2]])]
    assert m.next_due() is None
    # A start line next is no split.
    assert m.feed([A3], 0.0) == []
    assert m.split_max_lines == 0


@pytest.mark.parametrize("max_bytes, lines, expected, split", [
    # "abc\nde" is 6 bytes.
    (6, [b"abc", b"de", b"f"], [b"abc\nde", b"f"], 1),
    (5, [b"abc", b"de", b"f"], [b"abc", b"de\nf"], 1),
    (7, [b"abc", b"de", b"f"], [b"abc\nde", b"f"], 1),
    (8, [b"abc", b"de", b"f"], [b"abc\nde\nf"], 0),
    # A line alone longer than max_bytes is shipped alone, whole (never cut here).
    (4, [b"abcdefgh", b"i", b"j"], [b"abcdefgh", b"i\nj"], 1),
    (4, [b"a", b"bcdefgh", b"i"], [b"a", b"bcdefgh", b"i"], 2),
    # Empty lines cost their separator.
    (3, [b"a", b"", b"", b""], [b"a\n\n", b""], 1),
])
def test_max_bytes(max_bytes: int, lines: list[bytes], expected: list[bytes], split: int) -> None:
    result = merge_all_ways(lines, start=NEVER, max_bytes=max_bytes)
    assert result.entries == expected
    assert result.counters[4] == split  # split_max_bytes
    assert all(len(e) <= max_bytes or b"\n" not in e for e in result.entries)


def test_custom_start_pattern() -> None:
    # Java/Go style: a line that does not begin with whitespace starts an entry.
    start = re.compile(rb"\S")
    lines = [b"Exception in thread main", b"\tat a.b(C.java:1)", b"\tat d.e(F.java:2)", b"next", b"  more"]
    assert entries_of(lines, start=start) == [b"\n".join(lines[:3]), b"next\n  more"]
    # match() is anchored at the line start.
    assert entries_of([b"x INFO", b"y INFO", b"INFO z"], start=re.compile(rb"INFO")) == [b"x INFO\ny INFO", b"INFO z"]


def test_max_wait() -> None:
    m = Merger(None, 100, 2.0, BIG)
    assert m.next_due() is None
    assert m.feed([A2, TRACEBACK[0]], 10.0) == []
    assert m.next_due() == 12.0
    assert m.due(11.9) == []
    assert m.feed([TRACEBACK[1]], 11.9) == []  # still in time: joins
    assert m.next_due() == 13.9  # counted from the last line joined (Promtail's max_wait_time)
    assert m.due(13.8) == []
    assert m.due(13.9) == [b"\n".join([A2, *TRACEBACK[:2]])]
    assert m.next_due() is None and m.due(100.0) == []  # idle: nothing due, no timer
    # The rest of the traceback came too late: an entry of its own, counted.
    assert m.feed(TRACEBACK[2:], 14.5) == []
    assert m.split_max_wait == 1
    assert m.flush() == [b"\n".join(TRACEBACK[2:])]
    assert m.flush() == []
    assert m.entries == 2


def test_due_at_next_due_despite_rounding() -> None:
    m = Merger(None, 100, 2.0, BIG)
    opened = 2.4264871248072192
    m.feed([A1], opened)
    now = m.next_due()
    assert now is not None and now - opened < 2.0  # rounding: the difference falls short
    assert m.due(now) == [A1]


def test_feed_never_releases_by_time() -> None:
    """Lines fed late were written before they were read: they still join the entry.

    (The reader pulls on a tick; only due(), called after a read that brought
    nothing for the entry, releases it.) With due() first, the late lines are
    an entry of their own, counted.
    """
    def go(call_due: bool) -> tuple[list[bytes], int]:
        m = Merger(None, 100, 1.0, BIG)
        out = m.feed([A2, TRACEBACK[0]], 0.0)
        if call_due:
            out += m.due(1.5)
        out += m.feed(TRACEBACK[1:], 1.5)
        out += m.flush()
        return out, m.split_max_wait

    assert go(False) == ([b"\n".join([A2, *TRACEBACK])], 0)
    assert go(True) == ([b"\n".join([A2, TRACEBACK[0]]), b"\n".join(TRACEBACK[1:])], 1)


def test_start_line_after_wait_is_no_split() -> None:
    m = Merger(None, 100, 1.0, BIG)
    m.feed([A1], 0.0)
    assert m.due(1.0) == [A1]
    assert m.feed([A2], 5.0) == []
    assert m.split_max_wait == 0
    # flush() forgets why the last entry closed.
    assert m.flush() == [A2]
    m.feed([b"orphan"], 6.0)
    assert m.split_max_wait == 0


@pytest.mark.parametrize("kw", [
    {"max_lines": 0}, {"max_bytes": 0}, {"max_wait": 0.0}, {"max_wait": -1.0},
])
def test_rejects_bad_bounds(kw: dict[str, float]) -> None:
    args: dict[str, float] = {"max_lines": 10, "max_wait": 1.0, "max_bytes": 100} | kw
    with pytest.raises(ValueError):
        Merger(None, int(args["max_lines"]), args["max_wait"], int(args["max_bytes"]))


def test_pending() -> None:
    m = Merger(NEVER, 100, 1.0, BIG)
    m.feed([b"ab", b"cde"], 0.0)
    assert (m.pending_lines, m.pending_bytes) == (2, 6)


# --- properties --------------------------------------------------------------------

LINE = st.one_of(
    st.sampled_from([A1, A2, A3, JSON1, b"", b"x", *TRACEBACK, *CHAINED]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
)


@st.composite
def fed(draw: st.DrawFn) -> tuple[list[bytes], list[list[bytes]]]:
    lines = draw(st.lists(LINE, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), max_size=6)))
    bounds = [0, *cuts, len(lines)]
    return lines, [lines[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300)
@given(fed(), st.integers(1, 8), st.integers(1, 300))
def test_no_byte_lost_added_or_reordered(data: tuple[list[bytes], list[list[bytes]]], max_lines: int,
                                         max_bytes: int) -> None:
    lines, chunks = data
    whole = run([lines], max_lines=max_lines, max_bytes=max_bytes)
    assert run(chunks, max_lines=max_lines, max_bytes=max_bytes) == whole
    # Lines hold no b"\n", so splitting each entry gives back its lines exactly.
    assert [line for entry in whole.entries for line in entry.split(b"\n")] == lines
    assert len(whole.stamps) == len(whole.entries)
    position = 0
    for entry, stamp in zip(whole.entries, whole.stamps):
        parts = entry.split(b"\n")
        assert stamp == position  # the stamp of the entry's first line
        assert len(parts) <= max_lines
        assert len(entry) <= max_bytes or len(parts) == 1
        # Only an entry's first line may be a start line.
        assert not any(DEFAULT_START.match(p) for p in parts[1:])
        position += len(parts)
    entries, merged_entries, merged_lines = whole.counters[:3]
    assert entries == len(whole.entries)
    assert merged_entries == sum(1 for e in whole.entries if b"\n" in e)
    assert merged_lines == len(lines) - len(whole.entries)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.lists(LINE, max_size=5), st.floats(0, 3)), max_size=12), st.floats(0.1, 2.0))
def test_with_time_nothing_is_lost_and_nothing_stays_overdue(steps: list[tuple[list[bytes], float]],
                                                             max_wait: float) -> None:
    m = Merger(None, 6, max_wait, 200)
    now = 0.0
    out: list[bytes] = []
    fed_lines: list[bytes] = []
    for lines, gap in steps:
        now += gap
        out += m.feed(lines, now)
        out += m.due(now)  # as the pipeline does: due() right after each read
        fed_lines += lines
        nd = m.next_due()
        assert (nd is None) == (m.pending_lines == 0)
        assert nd is None or nd > now  # after due(), nothing overdue stays open
    out += m.flush()
    assert [line for entry in out for line in entry.split(b"\n")] == fed_lines
    assert m.entries == len(out)


@settings(max_examples=300)
@given(fed(), st.integers(1, 8), st.integers(1, 300))
def test_out_firsts_names_each_joined_entry_and_its_first_line(
        data: tuple[list[bytes], list[list[bytes]]], max_lines: int, max_bytes: int) -> None:
    _, chunks = data
    m = Merger(None, max_lines, 5.0, max_bytes)
    for chunk in chunks:
        firsts: list[tuple[int, bytes]] = []
        entries = m.feed(chunk, 0.0, None, None, firsts)
        # Lines hold no b"\n": an entry holds one exactly when it joins several lines.
        assert firsts == [(i, e.split(b"\n")[0]) for i, e in enumerate(entries) if b"\n" in e]
