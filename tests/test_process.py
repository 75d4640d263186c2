"""Airflow-aware input end to end: the real shipper with multiline, levels, CRI and JSON sources.

(The parsers themselves are tested table-style in test_multiline.py,
test_levels.py and test_formats.py; this checks what reaches Loki.)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_sources import write_all

TASK_OUTPUT = [
    "[2026-11-24T10:00:00.000+0000] {taskinstance.py:1} INFO - starting",
    "[2026-11-24T10:00:01.000+0000] {taskinstance.py:2} ERROR - Task failed with exception",
    "Traceback (most recent call last):",
    '  File "/opt/airflow/dags/etl.py", line 12, in load',
    "    raise ValueError('boom')",
    "ValueError: boom",
    "[2026-11-24T10:00:02.000+0000] {taskinstance.py:3} WARNING - marking as FAILED",
    "plain print() output",
]
MERGED = [
    TASK_OUTPUT[0],
    "\n".join(TASK_OUTPUT[1:6]),
    TASK_OUTPUT[6] + "\n" + TASK_OUTPUT[7],
]


def sources_toml(path: Path, **extra: object) -> str:
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f'[[sources]]\npath = "{path}"\nstream = "stdout"\n{keys}'


async def run_fifo(tmp_path: Path, receiver: LokiReceiver, data: bytes, env: dict[str, str] | None = None,
                   **extra: object) -> ShipperProcess:
    tmp_path.mkdir(exist_ok=True)
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    top = {k: extra.pop(k) for k in list(extra) if k == "level_labels"}
    config = make_config(receiver.url, [], **top) + sources_toml(fifo, **extra)  # type: ignore[arg-type]
    proc = await ShipperProcess.start(config, env=env)
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    write_all(fd, data)
    os.close(fd)
    assert await proc.wait() == 0
    return proc


async def test_a_traceback_arrives_as_one_entry_with_level_error(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc = await run_fifo(tmp_path, receiver, ("\n".join(TASK_OUTPUT) + "\n").encode(),
                          multiline=True, detect_level=True)
    entries = receiver.entries(stream="stdout")
    assert [e.line for e in entries] == MERGED
    assert [dict(e.metadata).get("level") for e in entries] == ["info", "error", "warning"]
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"], summary["lines_merged"]) == (8, 3, 5)


async def test_level_labels_route_errors_to_their_own_stream(tmp_path: Path, receiver: LokiReceiver) -> None:
    await run_fifo(tmp_path, receiver, ("\n".join(TASK_OUTPUT) + "\n").encode(),
                   multiline=True, detect_level=True, level_labels=["error", "critical"])
    assert receiver.lines(stream="stdout", level="error") == [MERGED[1]]
    assert [k for k in receiver.streams()if ("level", "error") in k] == [
        (("dag_id", "unknown"), ("level", "error"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "unknown"))]
    # The other entries stay in the source's stream, without a level label.
    plain = (("dag_id", "unknown"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "unknown"))
    assert [e.line for e in receiver.streams()[plain]] == [MERGED[0], MERGED[2]]


def recent_second() -> tuple[int, str]:
    """An entry time Loki accepts today (an hour ago, at a whole second ending in 0..8),
    and its RFC 3339 text without fraction or zone: fixed dates age out of Loki's window."""
    import time
    t = int(time.time()) - 3600
    t -= t % 10  # the tests add one second by the last digit
    return t, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))


async def test_cri_lines_keep_their_time_and_stream_and_p_chunks_are_joined(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "0.log"
    base_s, day = recent_second()
    log.write_bytes((
        f"{day}.000000001Z stdout F first\n"
        f"{day[:-1]}{int(day[-1]) + 1}.5Z stderr P half \n"
        f"{day[:-1]}{int(day[-1]) + 1}.6Z stdout F second\n"
        f"{day[:-1]}{int(day[-1]) + 1}.7Z stderr F and half\n"
        "not a cri line\n").encode())
    config = make_config(receiver.url, []) + sources_toml(log, format="cri")
    proc = await ShipperProcess.start(config)
    await receiver.wait_for_entries(4)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    base = base_s * 10**9
    out = receiver.entries(stream="stdout")
    err = receiver.entries(stream="stderr")
    assert [(e.ts_ns - base, e.line) for e in out[:2]] == [(1, "first"), (1_600_000_000, "second")]
    assert [(e.ts_ns - base, e.line) for e in err] == [(1_500_000_000, "half and half")]
    # A malformed line is shipped raw in the source's stream, never dropped.
    assert out[2].line == "not a cri line"


async def test_json_records_give_time_line_and_metadata(tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "attempt=1.log"
    base_s, day = recent_second()
    records = [
        {"timestamp": f"{day}.250000Z", "level": "info", "event": "hello",
         "logger": "airflow.task", "filename": "etl.py", "lineno": 3},
        {"timestamp": f"{day[:-1]}{int(day[-1]) + 1}Z", "level": "error", "event": "failed",
         "logger": "airflow.task"},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    config = make_config(receiver.url, []) + sources_toml(log, format="json", json_metadata=["logger"])
    proc = await ShipperProcess.start(config)
    await receiver.wait_for_entries(3)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    base = base_s * 10**9
    got = receiver.entries(stream="stdout")
    assert [(e.ts_ns - base, e.line, dict(e.metadata)) for e in got[:2]] == [
        (250_000_000, "hello", {"logger": "airflow.task", "level": "info"}),
        (1_000_000_000, "failed", {"logger": "airflow.task", "level": "error"}),
    ]
    assert got[2].line == "{broken"


async def test_task_log_files_are_found_and_labelled_from_their_path(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    logs = tmp_path / "logs"
    first = logs / "dag_id=etl" / "run_id=manual__2026-11-24T10:00:00+00:00" / "task_id=load" / "attempt=1.log"
    later = (logs / "dag_id=etl" / "run_id=manual__2026-11-24T10:00:00+00:00" / "task_id=fan_out"
             / "map_index=3" / "attempt=2.log")
    first.parent.mkdir(parents=True)
    first.write_text("one\ntwo\n")
    (logs / "not-a-task.txt").write_text("ignored\n")
    config = make_config(receiver.url, []) + sources_toml(Path("{AIRFLOW_HOME}/logs/**/attempt=*.log"))
    proc = await ShipperProcess.start(config, env={"AIRFLOW_HOME": str(tmp_path)})
    await receiver.wait_for_entries(2)
    # A file that appears later is picked up by the next scan.
    later.parent.mkdir(parents=True)
    later.write_text("three\n")
    await receiver.wait_for_entries(3)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    run = ("run_id", "manual__2026-11-24T10:00:00+00:00")
    got = {k: [(e.line, e.metadata) for e in v] for k, v in receiver.streams().items() if ("stream", "stdout") in k}
    assert got == {
        (("dag_id", "etl"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "load")): [
            ("one", (run, ("try_number", "1"))), ("two", (run, ("try_number", "1")))],
        (("dag_id", "etl"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "fan_out")): [
            ("three", (("map_index", "3"), run, ("try_number", "2")))],
    }
    assert [r["path"] for r in proc.events("source_found")] == [str(first), str(later)]


async def test_a_routed_level_keeps_the_labels_a_task_log_file_got_from_its_path(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "logs" / "dag_id=etl" / "run_id=r1" / "task_id=load" / "attempt=1.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(TASK_OUTPUT) + "\n")
    config = make_config(receiver.url, [], level_labels=["error"]) + sources_toml(
        Path("{AIRFLOW_HOME}/logs/**/attempt=*.log"), multiline=True, detect_level=True)
    proc = await ShipperProcess.start(config, env={"AIRFLOW_HOME": str(tmp_path)})
    await receiver.wait_for_entries(3, stream="stdout")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    # The error entry's own stream: dag_id/task_id from the file's path, not "unknown".
    assert {k: [e.line for e in v] for k, v in receiver.streams().items() if ("stream", "stdout") in k} == {
        (("dag_id", "etl"), ("level", "error"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "load")): [MERGED[1]],
        (("dag_id", "etl"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "load")): [MERGED[0], MERGED[2]],
    }


async def test_the_same_task_output_arrives_identically_from_stdout_a_task_log_file_and_exec(
        tmp_path: Path) -> None:
    """Issue 7's bar: one task's output, captured three ways with the sidecar's
    settings (multiline, levels), gives the same streams, entries and metadata."""
    data = ("\n".join(TASK_OUTPUT) + "\n").encode()
    context = {"AIRFLOW_CTX_DAG_ID": "etl", "AIRFLOW_CTX_TASK_ID": "load", "AIRFLOW_CTX_DAG_RUN_ID": "r1",
               "AIRFLOW_CTX_TRY_NUMBER": "1"}
    settings = {"multiline": True, "detect_level": True}

    async def shipped(capture: str) -> dict[object, list[tuple[str, object]]]:
        receiver = LokiReceiver()
        await receiver.start()
        try:
            if capture == "stdout":
                await run_fifo(tmp_path / capture, receiver, data, env=context, **settings)
            elif capture == "task-log file":
                log = tmp_path / capture / "logs" / "dag_id=etl" / "run_id=r1" / "task_id=load" / "attempt=1.log"
                log.parent.mkdir(parents=True)
                log.write_bytes(data)
                config = make_config(receiver.url, []) + sources_toml(
                    Path("{AIRFLOW_HOME}/logs/**/attempt=*.log"), **settings)
                proc = await ShipperProcess.start(config, env={"AIRFLOW_HOME": str(tmp_path / capture)})
                await receiver.wait_for_entries(len(MERGED), stream="stdout")
                proc.signal(signal.SIGTERM)
                assert await proc.wait() == 0
            else:
                # exec: [[sources]] paths are not read; the stdout entry's settings apply to the command's stdout.
                config = make_config(receiver.url, []) + sources_toml(Path("/not/read"), **settings)
                proc = await ShipperProcess.start(
                    config, "exec", "--", sys.executable, "-c", f"import sys; sys.stdout.buffer.write({data!r})",
                    env=context)
                assert await proc.wait() == 0
            assert receiver.refused_entries == receiver.dedup_dropped == 0
            return {k: [(e.line, e.metadata) for e in v] for k, v in receiver.streams().items()
                    if ("stream", "stdout") in k}
        finally:
            await receiver.stop()

    results = {capture: await shipped(capture) for capture in ("stdout", "task-log file", "exec")}
    run_metadata = (("run_id", "r1"), ("try_number", "1"))  # the receiver sorts metadata by name
    assert results["stdout"] == {
        (("dag_id", "etl"), ("service_name", "airflow"), ("stream", "stdout"), ("task_id", "load")): [
            (MERGED[0], (("level", "info"), *run_metadata)),
            (MERGED[1], (("level", "error"), *run_metadata)),
            (MERGED[2], (("level", "warning"), *run_metadata))],
    }
    assert results["task-log file"] == results["stdout"]
    assert results["exec"] == results["stdout"]


# --- multiline per format (issue 13, item 3) ---------------------------------------

STRUCTLOG = [
    "2026-12-01T08:20:34.843838Z [info     ] ::endgroup::                   [task] loc=task_runner.py:2232",
    "a print to stdout",
    "2026-12-01T08:20:34.845421Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676",
    "Traceback (most recent call last):",
    '  File "/opt/airflow/dags/etl.py", line 12, in load',
    "    raise ValueError('boom')",
    "ValueError: boom",
    "a print after the error",
    "2026-12-01T08:20:34.846000Z [info     ] a log message",
    "over two lines                 [airflow.task] loc=etl.py:20",
    "x" * 20_000,
    "the last line, without a newline",
]
PYTHON_LOGGING = [
    "2026-12-01 08:20:34,843 INFO etl: loading",
    "  rows: 12",
    "a print",
    "2026-12-01 08:20:34,845 ERROR etl: failed",
    "Traceback (most recent call last):",
    '  File "/opt/etl.py", line 3, in <module>',
    "KeyError: 'k'",
    "",
    "The above exception was the direct cause of the following exception:",
    "",
    "Traceback (most recent call last):",
    '  File "/opt/etl.py", line 5, in <module>',
    "RuntimeError: load failed",
    "another print",
]
JSON_LINES = [
    '{"timestamp":"2026-12-01T08:20:34.843838Z","level":"info","event":"::endgroup::","logger":"task"}',
    "Traceback (most recent call last):",
    '  File "/opt/x.py", line 1, in <module>',
    "SystemExit: 1",
    "a line printed past the logging",
    '{"timestamp":"2026-12-01T08:20:34.845421Z","level":"error","event":"failed","logger":"task"}',
]
# (lines, the entries a reader wants, their levels)
FORMATS: dict[str, tuple[list[str], list[str], list[str | None]]] = {
    "airflow2": (TASK_OUTPUT, MERGED, ["info", "error", "warning"]),
    "structlog": (STRUCTLOG, [STRUCTLOG[0], STRUCTLOG[1], "\n".join(STRUCTLOG[2:7]), STRUCTLOG[7],
                              "\n".join(STRUCTLOG[8:10]), STRUCTLOG[10], STRUCTLOG[11]],
                  ["info", None, "error", None, "info", None, None]),
    "python": (PYTHON_LOGGING, ["\n".join(PYTHON_LOGGING[:2]), PYTHON_LOGGING[2], "\n".join(PYTHON_LOGGING[3:13]),
                                PYTHON_LOGGING[13]], ["info", None, "error", None]),
    "json": (JSON_LINES, [JSON_LINES[0], "\n".join(JSON_LINES[1:4]), JSON_LINES[4], JSON_LINES[5]],
             ["info", "error", None, "error"]),
}


def output_of(lines: list[str], newline_at_end: bool) -> bytes:
    return ("\n".join(lines) + ("\n" if newline_at_end else "")).encode()


def processed(chunks: list[bytes]) -> list[tuple[bytes, str | None]]:
    """Entries (line, level) of the bytes `chunks` through LineSplitter and the Processor of a
    `multiline = true, detect_level = true` source, one read per chunk, then end of input."""
    from shipper.config import SourceConfig
    from shipper.framing import LineSplitter
    from shipper.process import Processor
    processor = Processor(SourceConfig("/x", "stdout", multiline=True, detect_level=True), 262_144)
    splitter = LineSplitter(262_144)
    runs = []
    for chunk in chunks:
        runs += processor.feed(splitter.feed(chunk), 1.0, 5)
    runs += processor.feed(splitter.flush(), 1.0, 5) + processor.flush(1.0, 5)
    assert processor.pending == 0
    return [(line, level) for run in runs for line, level in zip(run.lines, run.levels or [None] * len(run.lines))]


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_splits_as_a_reader_would_however_the_bytes_are_read(name: str) -> None:
    lines, want, want_levels = FORMATS[name]
    data = output_of(lines, newline_at_end=name != "structlog")
    expected = [(e.encode(), level) for e, level in zip(want, want_levels)]
    assert processed([data]) == expected
    step = max(1, len(data) // 300)  # every split point of the short ones; ~300 of the 20 kB one
    for i in range(0, len(data) + 1, step):
        assert processed([data[:i], data[i:]]) == expected, f"split at {i}"
    if len(data) < 5000:
        assert processed([data[i:i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize("name", FORMATS)
async def test_the_real_shipper_splits_each_format_as_a_reader_would(
        name: str, tmp_path: Path, receiver: LokiReceiver) -> None:
    lines, want, want_levels = FORMATS[name]
    proc = await run_fifo(tmp_path, receiver, output_of(lines, newline_at_end=name != "structlog"),
                          multiline=True, detect_level=True)
    entries = receiver.entries(stream="stdout")
    assert [e.line for e in entries] == want
    assert [dict(e.metadata).get("level") for e in entries] == want_levels
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"]) == (len(lines), len(want))


async def test_the_real_shipper_renders_airflow_3_3_error_detail(tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "attempt=1.log"
    _, day = recent_second()
    detail = [{"exc_type": "RuntimeError", "exc_value": "failed", "is_cause": False, "is_group": False,
               "frames": [{"filename": "/opt/airflow/dags/etl.py", "lineno": 9, "name": "load"}]},
              {"exc_type": "KeyError", "exc_value": "'k'", "is_cause": True, "is_group": False,
               "frames": [{"filename": "/opt/airflow/dags/etl.py", "lineno": 5, "name": "lookup"}]}]
    log.write_text(json.dumps({"timestamp": f"{day}.5Z", "level": "error", "event": "Task failed with exception",
                               "logger": "task", "error_detail": detail}) + "\n")
    config = make_config(receiver.url, []) + sources_toml(log, format="json")
    proc = await ShipperProcess.start(config)
    await receiver.wait_for_entries(1)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    (entry,) = receiver.entries(stream="stdout")
    assert entry.line == """Task failed with exception
Traceback (most recent call last):
  File "/opt/airflow/dags/etl.py", line 5, in lookup
KeyError: 'k'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/airflow/dags/etl.py", line 9, in load
RuntimeError: failed"""
    assert dict(entry.metadata)["level"] == "error"


async def test_what_a_format_could_not_read_and_a_bound_cut_is_counted(tmp_path: Path, receiver: LokiReceiver) -> None:
    """The parsers' and the merger's own counts reach the exit summary (and /metrics) by
    named events: malformed JSON lines by format, continuation lines a bound split off."""
    good = json.dumps({"timestamp": "2026-11-24T10:00:00.000001Z", "level": "info", "event": "ok"})
    lines = [good, "not json", good, '{"event": "no timestamp"}', good]
    proc = await run_fifo(tmp_path / "json", receiver, ("\n".join(lines) + "\n").encode(), format="json")
    assert [e.line for e in receiver.entries(stream="stdout")] == ["ok", "not json", "ok", '{"event": "no timestamp"}',
                                                                 "ok"]
    summary = proc.summary()
    assert summary["records_malformed"] == {"cri": 0, "json": 2}
    assert summary["multiline_splits"] == {"max_lines": 0, "max_bytes": 0, "max_wait": 0}
    told = proc.events("records_malformed")
    assert [(r["level"], r["lines"]) for r in told] == [("warn", 2)]


async def test_continuation_lines_a_bound_split_off_are_counted(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc = await run_fifo(tmp_path, receiver, output_of(TASK_OUTPUT, newline_at_end=True), multiline=True,
                          multiline_max_lines=2)
    # The 5-line record of the ERROR and its traceback: 2 lines, 2, then 1 (the two later
    # pieces each begin with a continuation line: the 2 splits); the WARNING takes the print.
    assert [e.line for e in receiver.entries(stream="stdout")] == [
        TASK_OUTPUT[0], "\n".join(TASK_OUTPUT[1:3]), "\n".join(TASK_OUTPUT[3:5]), TASK_OUTPUT[5],
        "\n".join(TASK_OUTPUT[6:8])]
    assert proc.summary()["multiline_splits"] == {"max_lines": 2, "max_bytes": 0, "max_wait": 0}


@pytest.mark.parametrize("name", FORMATS)
def test_levels_without_multiline_are_detect_of_each_line_in_one_run(name: str) -> None:
    """`detect_level` alone: each line is an entry, in one run, with `levels.detect`'s level
    (the chunk form where it applies, detect one by one where it does not)."""
    from shipper import levels
    from shipper.config import SourceConfig
    from shipper.process import Processor, Run
    processor = Processor(SourceConfig("/x", "stdout", detect_level=True), 262_144)
    lines = [line.encode() for line in FORMATS[name][0]]
    found = [levels.detect(line) for line in lines]
    assert processor.feed(lines, 1.0, 5) == [Run(None, lines, None, None, None if found == [None] * len(lines)
                                                 else found)]
    assert processor.feed([b"no level here", b"nor here"], 1.0, 6) == [
        Run(None, [b"no level here", b"nor here"], None, None, None)]
    assert processor.feed([], 1.0, 7) == [] and processor.flush(1.0, 8) == [] and processor.pending == 0


def test_an_entry_held_open_across_reads_keeps_its_first_lines_read_time() -> None:
    """The entry a read leaves open (it may continue) is returned by the next read with the
    time its first line was read, in a run of its own; the rest of that read is stamped then."""
    from shipper.config import SourceConfig
    from shipper.process import Processor, Run
    processor = Processor(SourceConfig("/x", "stdout", multiline=True, detect_level=True), 262_144)
    first = b"[2026-11-25T10:00:00.123+0000] {x.py:1} ERROR - failed"
    rec = [b"[2026-11-25T10:00:01.123+0000] {x.py:1} INFO - next %d" % i for i in range(3)]
    assert processor.feed([first, b"Traceback (most recent call last):"], 1.0, 100) == []
    runs = processor.feed([b'  File "/x.py", line 1, in f', b"ValueError: boom", *rec], 1.5, 200)
    assert runs == [
        Run(None, [b"\n".join([first, b"Traceback (most recent call last):", b'  File "/x.py", line 1, in f',
                               b"ValueError: boom"])], [100], None, ["error"]),
        Run(None, rec[:2], None, None, ["info", "info"]),
    ]
    assert processor.flush(2.0, 300) == [Run(None, [rec[2]], [200], None, ["info"])]
