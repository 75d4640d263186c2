"""The pipeline under a Loki outage: bounded buffer, and what a full buffer does to a pipe.

Real shipper process, real FIFO, the strict receiver answering 503 until the
test lets it recover.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_sources import write_all

# Small sizes so a few MiB of output overflow the buffer many times over.
SMALL = {"max_line_bytes": 1024, "buffer_max_bytes": 65536}
SMALL_LOKI = {"batch_max_bytes": 16384}


def numbered(n: int) -> list[str]:
    return [f"line {i:06d} " + "x" * 90 for i in range(n)]


async def start(tmp_path: Path, receiver: LokiReceiver, when_full: str) -> tuple[ShipperProcess, Path]:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(
        receiver.url, [(fifo, "stdout")], loki=SMALL_LOKI, when_full=when_full, **SMALL))
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, fifo


async def test_drop_oldest_never_blocks_the_writer_and_counts_every_lost_line(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(*[Action.status(503)] * 100_000)
    proc, fifo = await start(tmp_path, receiver, "drop_oldest")
    # 3 MiB: three times the 1 MiB pipe plus the 64 KiB buffer. With Loki down
    # the whole write completes only if the shipper keeps reading.
    lines = numbered(30_000)
    fd = open_fifo_writer(fifo)
    await asyncio.to_thread(write_all, fd, ("\n".join(lines) + "\n").encode())
    await proc.wait_for_event("lines_dropped", reason="buffer_full")
    receiver.clear_actions()  # Loki recovers
    os.close(fd)
    assert await proc.wait() == 1  # lines were lost: the exit code says so
    got = receiver.lines(stream="stdout")
    index = {line: i for i, line in enumerate(lines)}
    positions = [index[line] for line in got]
    # What arrived is in order, never twice, and ends with the newest lines.
    assert positions == sorted(set(positions))
    assert positions[-1] == len(lines) - 1
    summary = proc.summary()
    assert summary["lines_read"] == len(lines)
    assert summary["dropped"]["buffer_full"] == len(lines) - len(got)
    assert summary["lines_sent"] == len(got)
    assert receiver.dedup_dropped == 0


async def test_block_loses_nothing_and_holds_the_writer_until_loki_recovers(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(*[Action.status(503)] * 100_000)
    proc, fifo = await start(tmp_path, receiver, "block")
    lines = numbered(30_000)
    data = memoryview(("\n".join(lines) + "\n").encode())
    fd = open_fifo_writer(fifo)
    os.set_blocking(fd, False)
    # Write until the pipe is full: the shipper stopped reading (buffer full).
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError as e:
            assert e.errno == errno.EAGAIN
            break
    assert data, "the pipe never filled: the shipper did not hold the writer"
    await proc.wait_for_event("push_failed")
    receiver.clear_actions()
    os.set_blocking(fd, True)
    await asyncio.to_thread(write_all, fd, bytes(data))
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == lines
    assert proc.summary()["dropped"]["buffer_full"] == 0
    assert receiver.dedup_dropped == 0


async def test_a_slow_but_healthy_loki_gets_backpressure_not_drops(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    # Every push is answered, slowly: a burst far larger than the pipe and the
    # buffer must wait for Loki, never be dropped, even with drop_oldest.
    receiver.add_actions(*[Action.delay(0.05)] * 1000)
    proc, fifo = await start(tmp_path, receiver, "drop_oldest")
    lines = numbered(30_000)
    fd = open_fifo_writer(fifo)
    await asyncio.to_thread(write_all, fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == lines
    assert proc.summary()["dropped"]["buffer_full"] == 0

