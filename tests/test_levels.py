"""shipper.levels: the level a line shows, normalised; exact outcomes per form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.levels import HEAD, detect, detect_many, normalize

LEVELS = {None, "trace", "debug", "info", "warning", "error", "critical"}


@pytest.mark.parametrize("line, level", [
    # Airflow 2 default format, every level Python logging has.
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} DEBUG - msg", "debug"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} INFO - msg", "info"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} WARNING - msg", "warning"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} ERROR - msg", "error"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} CRITICAL - msg", "critical"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} FATAL - msg", "critical"),
    (b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:123} WARN - msg", "warning"),
    # The first level wins over words in the message.
    (b"[2022-06-12T13:00:00.123+0000] {x.py:1} INFO - retry - ERROR - [WARNING] level=error", "info"),
    (b"[2022-06-12T13:00:00.123+0000] {x.py:1} INFO - ", "info"),
    # Older Airflow 2 (comma milliseconds), simple_log_format, colored_console_log.
    (b"[2021-01-01 10:00:00,123] {x.py:1} ERROR - msg", "error"),
    (b"2021-01-01 10:00:00,123 WARNING - msg", "warning"),
    (b"[\x1b[34m2022-06-12T13:00:00.123+0000\x1b[0m] {\x1b[34mtaskinstance.py:\x1b[0m123} "
     b"\x1b[31mERROR\x1b[0m - \x1b[31mboom\x1b[0m", "error"),
    # Airflow 3 JSON (compact, msgspec) and other JSON loggers.
    (b'{"timestamp":"2025-04-01T12:00:00.123456Z","level":"error","event":"x"}', "error"),
    (b'{"timestamp":"2025-04-01T12:00:00.123456Z","level":"warning","event":"x"}', "warning"),
    (b'{"timestamp": "2025-04-01T12:00:00Z", "level": "critical", "event": "x"}', "critical"),
    (b'{"event":"x","level" : "WARN"}', "warning"),
    (b'{"levelname": "ERROR", "message": "x"}', "error"),
    (b'{"levels":[1],"level":"exception"}', "error"),
    (b'{"level":"notice","event":"x"}', None),
    (b'{"event":"[ERROR] x"}', None),  # JSON: only the level key counts
    (b'{"level":3}', None),
    # Plain Python logging.
    (b"ERROR:root:msg", "error"),
    (b"WARNING:py.warnings:/x.py:1: DeprecationWarning: y", "warning"),
    (b"DEBUG:urllib3.connectionpool:Starting new HTTPS connection", "debug"),
    (b"error: could not open file", "error"),
    (b"Warning: low disk", "warning"),
    (b"INFO     2024-01-01 12:00:00 msg", "info"),
    (b"2024-01-01 12:00:00,123 - my.module - ERROR - msg", "error"),
    (b"2024-01-01 12:00:00,123 - my.module - INFO     - padded", "info"),
    (b"2024-01-01 12:00:00,123 [ERROR] my.module: msg", "error"),
    (b"2024-01-01 12:00:00,123 [INFO    ] padded", "info"),
    (b"[2024-01-01 12:00:00] [warning] lower", "warning"),
    (b"2024-01-01 12:00:00.123 | ERROR    | mod:func:12 - loguru", "error"),
    (b'time="2024-01-01T12:00:00Z" level=warning msg="logfmt"', "warning"),
    (b'ts=1 level="error" msg=x', "error"),
    (b"ts=1 loglevel=error msg=x", None),  # a longer key is not `level`
    (b"Traceback (most recent call last):", "error"),
    # structlog's console format (Airflow 3 local runs): the bracketed level, not words in the message.
    (b"2026-12-01T08:20:34.845421Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676", "error"),
    (b"2026-12-01T08:20:28.829604Z [info     ] retry - ERROR - x [airflow.task] loc=a.py:1", "info"),
    (b"2026-12-01T08:20:29.578674Z [warning  ] Using `httpx` [py.warnings] category=X lineno=1", "warning"),
    (b"2026-12-01T08:20:29Z [debug    ] d", "debug"),
    (b"\x1b[2m2026-01-05T10:00:04.000000Z\x1b[0m [\x1b[31m\x1b[1merror    \x1b[0m] \x1b[1mboom\x1b[0m", "error"),
    # `%(asctime)s %(levelname)s %(name)s: %(message)s`: upper case only after a bare time.
    (b"2024-01-01 12:00:00,123 ERROR root: bad", "error"),
    (b"2024-01-01T12:00:00+00:00 WARNING x", "warning"),
    (b"2024-01-01 12:00 Error handling is on", None),
    # Trace level (structlog, Go, Rust loggers).
    (b"2024-01-01 12:00:00 [TRACE] x", "trace"),
    # No level.
    (b"", None),
    (b"hello world", None),
    (b"Error handling enabled", None),  # Title case + space at the start is prose
    (b"[Errno 2] No such file or directory", None),
    (b"2024-01-01 12:00:00,123 - my.module - msg without level", None),
    (b"[2022-06-12T13:00:00.123+0000] {x.py:1} NOTICE - msg", None),
    (b"  File \"/x.py\", line 1, in f", None),
    (b"ValueError: boom", None),
    (b"INFORMATION: x", None),
    (b"{taskinstance.py:12} INFO - a custom log_format without asctime", "info"),
])
def test_detect(line: bytes, level: str | None) -> None:
    assert detect(line) == level


@pytest.mark.parametrize("word, level", [
    (b"INFO", "info"), (b"info", "info"), (b"Info", "info"),
    (b"WARN", "warning"), (b"warn", "warning"), (b"Warning", "warning"),
    (b"EXCEPTION", "error"), (b"Exception", "error"),
    (b"FATAL", "critical"), (b"fatal", "critical"), (b"Critical", "critical"),
    (b"iNFO", None), (b"ERR", None), (b"CRIT", None),
])
def test_level_words(word: bytes, level: str | None) -> None:
    assert detect(b"2024-01-01 12:00:00 [" + word + b"] x") == level
    assert detect(b"[2024-01-01T12:00:00] {x.py:1} " + word + b" - x") == level


def test_merged_entry_takes_the_first_lines_level() -> None:
    entry = b"\n".join([
        b"[2022-06-12T13:00:00.123+0000] {taskinstance.py:441} ERROR - Task failed with exception",
        b"Traceback (most recent call last):",
        b"INFO - x [WARNING] level=info",
    ])
    assert detect(entry) == "error"
    assert detect(b"Traceback (most recent call last):\n  File \"x\", line 1\nValueError: a - b") == "error"
    # Forms found only after the first line do not count.
    assert detect(b"hello\n[ERROR] x") is None
    assert detect(b"hello\nts=1 level=error") is None
    assert detect(b"hello\n2024-01-01 - x - ERROR - y") is None


def test_only_the_head_is_examined() -> None:
    prefix = b"x" * (HEAD - len(b" [ERROR]"))
    assert detect(prefix + b" [ERROR]") == "error"
    assert detect(prefix + b"x [ERROR]") is None


@pytest.mark.parametrize("name, level", [
    ("error", "error"), ("ERROR", "error"), ("Warn", "warning"), ("exception", "error"), ("fatal", "critical"),
    ("critical", "critical"), ("debug", "debug"), ("trace", "trace"), ("info", "info"),
    ("notice", None), ("", None), ("err", None),
])
def test_normalize(name: str, level: str | None) -> None:
    assert normalize(name) == level


@given(st.binary(max_size=400))
def test_detect_any_bytes(line: bytes) -> None:
    assert detect(line) in LEVELS


@given(st.lists(st.sampled_from([b" - ", b"[", b"]", b"|", b"level=", b"{", b"}", b"ERROR", b"info", b" ", b"\n",
                                 b"\x1b[31m", b"m", b":", b'"level":"warn"']), max_size=30))
def test_detect_fragments(parts: list[bytes]) -> None:
    assert detect(b"".join(parts)) in LEVELS


# detect_many: lines of the two chunk forms and every way they can go wrong
# (no form, a word that is no level, a second form later in the line, the
# form past the head, JSON in another spelling, mixed JSON and text).
_CHUNK_LINES = [
    b"[2026-11-25T10:00:00.123+0000] {python.py:201} INFO - Fetched 512 rows",
    b"[2026-11-25T10:00:00.123+0000] {http.py:173} WARNING - Retrying } ERROR - x",
    b"[2026-11-25T10:00:00.123+0000] {x.py:1} NOTICE - not a level, then [ERROR] is",
    b"[2026-11-25T10:00:00.123+0000] {x.py:1} info - lower case",
    b"plain print() output",
    b"ERROR:root:basicConfig",
    b"x" * (HEAD - 5) + b"} ERROR - past the head",
    b"x" * 300 + b" [ERROR] a long line with its level past the head",
    b"[2026-11-25T10:00:00.123+0000] {x.py:1} ERROR - " + b"y" * 300,
    b"",
    b'{"timestamp":"2026-11-25T10:00:00.123456Z","level":"info","event":"x"}',
    b'{"timestamp":"2026-11-25T10:00:00.123456Z","level":"wArN","event":"x"}',
    b'{"levelname": "ERROR", "message": "python-json-logger"}',
    b'{"event":"no level key"}',
    b'{"event":"} ERROR - in a JSON record","level" : "debug"}',
    b'{"level":"x", "then": {"level": "error"}}',
]


@given(st.lists(st.sampled_from(_CHUNK_LINES), max_size=40))
def test_detect_many_is_detect_of_each_line(lines: list[bytes]) -> None:
    assert detect_many(lines, single_lines=True) == [detect(line) for line in lines]


@given(st.lists(st.sampled_from(_CHUNK_LINES[:2] + _CHUNK_LINES[10:11]), min_size=2, max_size=40))
def test_detect_many_of_uniform_chunks(lines: list[bytes]) -> None:
    """The chunk forms' own cases: every line Airflow 2, or every line a JSON record."""
    assert detect_many(lines, single_lines=True) == [detect(line) for line in lines]


def test_detect_many_of_merged_entries_is_detect_of_each() -> None:
    entries = [b"[2026-11-25T10:00:00.123+0000] {x.py:1} ERROR - failed\nTraceback (most recent call last):",
               b"[2026-11-25T10:00:00.123+0000] {x.py:1} INFO - ok"]
    assert detect_many(entries) == ["error", "info"]


# Continuation lines a merger may join to an entry: some show a level form of
# their own (which must not count: the entry's level is its first line's form,
# or whatever detect finds in the whole entry when the first line has none).
_CONTINUATIONS = [
    b"Traceback (most recent call last):",
    b'  File "/x.py", line 1, in f',
    b"    log.info('} ERROR - in a source line')",
    b'{"level":"error"}',
    b"ValueError: boom",
    b"",
    b"z" * 300,
]


@given(st.lists(st.tuples(st.sampled_from(_CHUNK_LINES),
                          st.lists(st.sampled_from(_CONTINUATIONS), max_size=3)), max_size=30))
def test_detect_many_of_merged_entries_given_first_lines_is_detect_of_each(
        entries_lines: list[tuple[bytes, list[bytes]]]) -> None:
    entries = [b"\n".join([first, *rest]) for first, rest in entries_lines]
    firsts = [first for first, _ in entries_lines]
    assert detect_many(entries, firsts=firsts) == [detect(entry) for entry in entries]


def test_detect_many_given_first_lines_of_airflow_2_entries_with_tracebacks() -> None:
    """The chunk form's own case (Airflow 2 records, one with its traceback)."""
    firsts = [b"[2026-11-25T10:00:00.123+0000] {x.py:1} ERROR - failed",
              b"[2026-11-25T10:00:00.123+0000] {x.py:1} WARNING - retrying",
              b"[2026-11-25T10:00:00.123+0000] {x.py:1} INFO - ok"]
    entries = [firsts[0] + b"\nTraceback (most recent call last):\n    log.info('} DEBUG - x')\nValueError: boom",
               firsts[1], firsts[2]]
    assert detect_many(entries, firsts=firsts) == ["error", "warning", "info"]


_A3 = b'{"timestamp":"2026-11-25T10:00:00.123456Z","level":"'
_A3_RECORDS = [
    _A3 + b'info","event":"x","logger":"task"}',
    _A3 + b'warning","event":"x"}',
    _A3 + b'ERROR","event":"x"}',
    _A3 + b'wArN","event":"x"}',  # another spelling: detect's normalisation
    _A3 + b'notalevel","event":"x","level":"error"}',
    _A3 + b'"}',  # an empty word
    _A3 + b'abcdefghijklmnopqrstuvwxyz"}',  # longer than a level word can be
    _A3 + b'in fo","event":"x"}',
    _A3 + b'info',  # cut short
    b'{"timestamp":"2026-11-25T10:00:00.123Z","level":"info","event":"milliseconds: another shape"}',
    b'{"timestamp":"2026-11-25T10:00:00.123456Z", "level":"info","event":"a space: another shape"}',
]


@given(st.lists(st.sampled_from(_A3_RECORDS), min_size=2, max_size=40))
def test_detect_many_of_airflow_3_records_is_detect_of_each(lines: list[bytes]) -> None:
    """Records of Airflow 3's shape (the fixed-place path), mixed with others (the regex's)."""
    assert detect_many(lines, single_lines=True) == [detect(line) for line in lines]
