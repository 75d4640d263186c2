"""Sources end to end: the real shipper process reading real FIFOs, pipes and files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import LokiReceiver
from tests.shipper_process import ShipperProcess

AIRFLOW_ENV = {
    "AIRFLOW_CTX_DAG_ID": "etl_daily",
    "AIRFLOW_CTX_TASK_ID": "load",
    "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-11-24T00:00:00+00:00",
    "AIRFLOW_CTX_TRY_NUMBER": "2",
    "AIRFLOW_CTX_LOGICAL_DATE": "2026-11-24T00:00:00+00:00",
}


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def test_fifo_lines_arrive_in_order_with_labels_and_metadata(tmp_path: Path, receiver: LokiReceiver) -> None:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(
        make_config(receiver.url, [(fifo, "stdout")], labels={"cluster": "prod"}), env=AIRFLOW_ENV)
    await proc.wait_for_event("source_opened", path=str(fifo))
    # Runs of identical lines: each must survive Loki's (timestamp, line) dedup.
    lines = [f"line {i} " + "x" * 100 for i in range(3000)] + ["same"] * 50 + ["", "", "last"]
    fd = open_fifo_writer(fifo)
    await asyncio.to_thread(write_all, fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    assert await proc.wait() == 0
    streams = receiver.streams()
    task_key = (("cluster", "prod"), ("dag_id", "etl_daily"), ("service_name", "airflow"), ("stream", "stdout"),
                ("task_id", "load"))
    summary_key = (("cluster", "prod"), ("dag_id", "etl_daily"), ("job", "shipper"), ("service_name", "shipper"),
                   ("task_id", "load"))
    assert sorted(streams) == sorted([task_key, summary_key])
    entries = streams[task_key]
    assert [e.line for e in entries] == lines
    assert receiver.dedup_dropped == 0
    assert all(a.ts_ns < b.ts_ns for a, b in zip(entries, entries[1:]))
    assert {e.metadata for e in entries} == {(
        ("logical_date", "2026-11-24T00:00:00+00:00"),
        ("run_id", "scheduled__2026-11-24T00:00:00+00:00"),
        ("try_number", "2"),
    )}
    summary = proc.summary()
    assert (summary["code"], summary["lines_read"], summary["lines_sent"]) == (0, len(lines), len(lines))
    # The same summary, as one entry of the task's own job="shipper" stream.
    (pushed,) = streams[summary_key]
    assert json.loads(pushed.line) == {k: v for k, v in summary.items() if k not in ("ts", "level", "event", "msg")}
    assert pushed.metadata == entries[0].metadata


async def test_fifo_opened_before_any_writer_waits_for_one(tmp_path: Path, receiver: LokiReceiver) -> None:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(fifo))
    # No writer yet: the shipper must neither exit nor spin. A first writer
    # that comes and goes is the end of input.
    fd = open_fifo_writer(fifo)
    write_all(fd, b"hello\nno newline at the end")
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["hello", "no newline at the end"]


async def test_anonymous_pipe_stdin_and_stderr_sources(tmp_path: Path, receiver: LokiReceiver) -> None:
    fifo = tmp_path / "stderr"
    os.mkfifo(fifo)
    read_end, write_end = os.pipe()
    proc = await ShipperProcess.start(
        make_config(receiver.url, [("/dev/stdin", "stdout"), (fifo, "stderr")]), stdin=read_end)
    os.close(read_end)
    await proc.wait_for_event("source_opened", path=str(fifo))
    err = open_fifo_writer(fifo)
    write_all(write_end, b"out 1\nout 2\n")
    write_all(err, b"err 1\r\nerr 2\n")
    os.close(write_end)
    os.close(err)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["out 1", "out 2"]
    assert receiver.lines(stream="stderr") == ["err 1", "err 2"]


async def test_file_is_tailed_through_rotation_and_truncation(tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"")
    proc = await ShipperProcess.start(make_config(receiver.url, [(log, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(log))
    first = [f"first {i}" for i in range(200)]
    with open(log, "ab") as f:
        f.write(("\n".join(first) + "\n").encode())
        f.flush()
        await receiver.wait_for_entries(len(first))
        # Rotation: rename, the writer keeps appending to the old file, then a
        # new file appears at the path. Nothing lost, nothing repeated.
        log.rename(tmp_path / "task.log.1")
        f.write(b"after rename 1\nafter rename 2 without newline")
    log.write_bytes(b"new file 1\nnew file 2\n")
    await receiver.wait_for_entries(len(first) + 4)
    await proc.wait_for_event("source_rotated", why="replaced")
    # Truncation (copytruncate): shorter content than before, from the start.
    with open(log, "r+b") as f:
        f.truncate(0)
    await proc.wait_for_event("source_rotated", why="truncated")
    with open(log, "ab") as f:
        f.write(b"after truncate\n")
    await receiver.wait_for_entries(len(first) + 5)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == first + [
        "after rename 1", "after rename 2 without newline", "new file 1", "new file 2", "after truncate"]
    assert receiver.dedup_dropped == 0


async def test_path_that_does_not_exist_yet_is_waited_for(tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "later.log"
    proc = await ShipperProcess.start(make_config(receiver.url, [(log, "stdout")]))
    await proc.wait_for_event("starting")
    log.write_bytes(b"appeared\n")
    await proc.wait_for_event("source_opened", path=str(log))
    await receiver.wait_for_entries(1)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["appeared"]


async def test_large_file_is_read_in_bounded_batches(tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "big.log"
    lines = [f"{i:08d} " + "y" * 111 for i in range(60_000)]  # ~7 MiB, over buffer_max_bytes
    log.write_bytes(("\n".join(lines) + "\n").encode())
    config = make_config(receiver.url, [(log, "stdout")], buffer_max_bytes=2 * 1024 * 1024,
                         loki={"batch_max_bytes": 512 * 1024})
    proc = await ShipperProcess.start(config)
    await receiver.wait_for_entries(len(lines))
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == lines
    # Every push stayed within batch_max_bytes of uncompressed protobuf.
    assert max(r.body_bytes for r in receiver.requests) <= 512 * 1024
