"""Fault suite (issue 5, item 3): the real shipper against a Loki that misbehaves.

Loopback only: the strict receiver (tests/loki_receiver.py) answers with
scripted faults, or is not there at all. Every test asserts the exact list
of lines Loki ends up showing, in order, with none missing and none twice.
After a SIGKILL a replayed batch may reach Loki a second time with its
original timestamps: Loki (and the receiver) drop it as a duplicate
(`dedup_dropped`), which is allowed, but the visible lines stay exact.

Covered elsewhere, not repeated here: SIGTERM during an outage *without* a
spool (exit 1, dropped.shutdown_deadline) on a FIFO is
tests/test_lifecycle.py::test_loki_down_at_shutdown_exits_1_after_the_deadline;
a full buffer while Loki is down is tests/test_pipeline.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import launch, make_config, open_fifo_writer
from tests.loki_receiver import PUSH_PATH, Action, LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_sources import write_all

# Loki down for this long in the connection-refused test: the figure.
# It costs the suite ~35 s; the production backoff (0.5 s doubling to 5 s) is
# used there so the outage also runs the backoff up to its cap.
REFUSED_OUTAGE = 30.0
PRODUCTION_BACKOFF = {"min_backoff": 0.5, "max_backoff": 5.0}


# --- helpers ---------------------------------------------------------------------------

def numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i:05d}" for i in range(n)]


def text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def append(path: Path, lines: list[str]) -> None:
    with open(path, "ab") as f:
        f.write(text(lines))


def delivered(rx: LokiReceiver) -> list[str]:
    """The task's stdout lines as Loki shows them (by timestamp)."""
    return rx.lines(stream="stdout")


def no_drops(summary: dict[str, Any]) -> None:
    assert set(summary["dropped"].values()) == {0}, summary["dropped"]


def batch_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.batch")) if spool.exists() else []


def acknowledged_offset(checkpoint: Path, source: Path) -> int | None:
    """The offset the checkpoint records for `source`, None if not (yet) recorded."""
    position = acknowledged(checkpoint, source)
    return None if position is None else position[1]


def acknowledged(checkpoint: Path, source: Path) -> tuple[int, int] | None:
    """(inode, offset) the checkpoint records for `source`, None if not (yet) recorded."""
    try:
        data = json.loads(checkpoint.read_bytes())
    except (FileNotFoundError, ValueError):
        return None  # not written yet (it is replaced atomically, never half-written)
    for entry in data["files"]:
        if entry["path"] == str(source):
            return int(entry["ino"]), int(entry["offset"])
    return None


async def poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition on files the shipper writes (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A loopback port nothing listens on (for now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class AnswerEatingProxy:
    """A TCP proxy in front of the receiver that can swallow Loki's answers.

    With `swallow` set, requests still reach Loki (which stores them) but no
    answer comes back: a batch Loki has, whose acknowledgement is lost. (The
    receiver's Action.delay cannot stand in: once the client is gone it can no
    longer read the body.)
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.swallow = False
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{PUSH_PATH}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._copy(reader, up_writer, answers=False),
                                 self._copy(up_reader, writer, answers=True))
        except (OSError, asyncio.CancelledError):
            pass  # stop(): end quietly (a cancelled connection callback is logged as an error)
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
        while data := await src.read(65536):
            if answers and self.swallow:
                continue
            dst.write(data)
            await dst.drain()
        dst.close()


async def start_on_fifo(tmp_path: Path, procs: list[ShipperProcess], url: str,
                        **config: Any) -> tuple[ShipperProcess, int]:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, make_config(url, [(fifo, "stdout")], **config))
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, open_fifo_writer(fifo)


# --- Loki answering errors for a while, then recovering ------------------------------------

@pytest.mark.parametrize(("status", "headers"), [
    (500, {}), (502, {}), (503, {}), (429, {}),
    (429, {"Retry-After": "1"}),  # Loki sends none, a proxy in front of it may
    (502, {"Content-Type": "text/html"}),  # a proxy's 2 MB error page (the client keeps 64 KiB)
], ids=["500", "502", "503", "429", "429-retry-after", "502-huge-html"])
async def test_error_answers_for_a_while_then_recovery(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess],
        status: int, headers: dict[str, str]) -> None:
    body = "<html>" + "bad gateway " * 175_000 + "</html>" if "Content-Type" in headers else "overloaded\n"
    receiver.add_actions(*[Action.status(status, body, headers)] * 100_000)
    proc, fd = await start_on_fifo(tmp_path, procs, receiver.url)
    failures = 2 if "Retry-After" in headers else 4
    before, during, after = numbered("before", 300), numbered("during", 300), numbered("after", 300)
    write_all(fd, text(before))
    await proc.wait_for_event("push_failed", count=failures, outcome=str(status))
    write_all(fd, text(during))  # lines keep coming while Loki fails
    await proc.wait_for_event("push_failed", count=2 * failures, outcome=str(status))
    receiver.clear_actions()  # Loki recovers
    write_all(fd, text(after))
    os.close(fd)
    assert await proc.wait() == 0
    assert delivered(receiver) == before + during + after
    assert receiver.dedup_dropped == 0
    refused = [r for r in receiver.requests if r.status != 204]
    assert len(refused) >= 2 * failures and {r.status for r in refused} == {status}
    if "Retry-After" in headers:
        assert {r["retry_in"] for r in proc.events("push_failed")} == {1.0}
    # The diagnostic quotes the answer, cut short.
    assert all(len(r["error"]) <= 512 for r in proc.events("push_failed"))
    summary = proc.summary()
    assert (summary["code"], summary["lines_read"], summary["lines_sent"]) == (0, 900, 900)
    assert summary["retries"] == len(refused)
    no_drops(summary)


# --- nothing listening for 30 s ------------------------------------------------------------

async def test_connection_refused_for_30_seconds_then_loki_comes_up(
        tmp_path: Path, procs: list[ShipperProcess]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PUSH_PATH}"
    proc, fd = await start_on_fifo(tmp_path, procs, url, loki=PRODUCTION_BACKOFF)
    before, during, after = numbered("before", 200), numbered("during", 200), numbered("after", 200)
    write_all(fd, text(before))
    await proc.wait_for_event("push_failed", outcome="connection_refused")
    down_since = time.monotonic()
    await asyncio.sleep(REFUSED_OUTAGE / 2)
    write_all(fd, text(during))
    await asyncio.sleep(REFUSED_OUTAGE - (time.monotonic() - down_since))
    rx = LokiReceiver(port=port)
    await rx.start()
    try:
        up = time.monotonic()
        await rx.wait_for_entries(len(before + during), stream="stdout")
        recovered_in = time.monotonic() - up
        write_all(fd, text(after))
        os.close(fd)
        assert await proc.wait() == 0
        assert delivered(rx) == before + during + after
        assert rx.dedup_dropped == 0
    finally:
        await rx.stop()
    failed = proc.events("push_failed")
    assert {r["outcome"] for r in failed} == {"connection_refused"}
    # Backoff grew to its cap during the outage and never beyond it; the
    # first push after Loki came up waited at most one capped delay.
    delays = [r["retry_in"] for r in failed]
    assert max(delays) <= 5.0 and max(delays) >= 2.5, delays
    assert recovered_in < 5.0 + 2.0
    summary = proc.summary()
    assert (summary["code"], summary["lines_sent"], summary["retries"]) == (0, 600, len(failed))
    no_drops(summary)


# --- Loki accepting and never answering ---------------------------------------------------

async def test_loki_that_never_answers_is_timed_out_and_retried(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    receiver.add_actions(Action.hang(), Action.hang())
    proc, fd = await start_on_fifo(tmp_path, procs, receiver.url, loki={"timeout": 0.5})
    lines = numbered("line", 500)
    write_all(fd, text(lines))
    os.close(fd)
    assert await proc.wait() == 0
    assert delivered(receiver) == lines
    assert receiver.dedup_dropped == 0
    hung, retried = receiver.requests[:2], receiver.requests[2]
    assert [r.status for r in hung] == [None, None] and retried.status == 204
    # Each hung push was given up after the request timeout, not before.
    gaps = [(b.received_ns - a.received_ns) / 1e9 for a, b in zip(receiver.requests, receiver.requests[1:3])]
    assert min(gaps) >= 0.5, gaps
    assert [r["outcome"] for r in proc.events("push_failed")] == ["timeout", "timeout"]
    summary = proc.summary()
    assert (summary["code"], summary["lines_sent"], summary["retries"]) == (0, 500, 2)
    no_drops(summary)


async def test_answer_lost_after_loki_stored_the_batch_is_deduplicated_on_retry(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # Loki stored the push, but its answer never came back (a proxy lost it,
    # or Loki answered after the request timeout): the retry carries the same
    # timestamps, so Loki drops it as a duplicate and nothing shows twice.
    proxy = AnswerEatingProxy(receiver.port)
    await proxy.start()
    try:
        proxy.swallow = True
        proc, fd = await start_on_fifo(tmp_path, procs, proxy.url,
                                       loki={"timeout": 1.0, "min_backoff": 0.5, "max_backoff": 1.0})
        lines = numbered("line", 300)
        write_all(fd, text(lines))
        await receiver.wait_for_entries(300, stream="stdout")
        await proc.wait_for_event("push_failed", outcome="timeout")
        proxy.swallow = False
        os.close(fd)
        assert await proc.wait() == 0
    finally:
        await proxy.stop()
    assert delivered(receiver) == lines
    assert receiver.dedup_dropped == 300
    summary = proc.summary()
    assert (summary["code"], summary["lines_sent"], summary["retries"]) == (0, 300, 1)
    no_drops(summary)


# --- connection reset --------------------------------------------------------------------

@pytest.mark.parametrize("fault", [Action.reset_mid_body, Action.reset], ids=["mid-body", "after-body"])
async def test_connection_reset_is_retried(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess],
        fault: Callable[[], Action]) -> None:
    receiver.add_actions(fault(), fault(), fault())
    log = tmp_path / "task.log"
    # Incompressible lines, already in the file: one batch of ~800 KB, far
    # larger than a segment, so a reset after the headers cuts the body short.
    lines = [f"{i:05d} {secrets.token_hex(100)}" for i in range(4000)]
    append(log, lines)
    proc = await launch(procs, make_config(receiver.url, [(log, "stdout")]))
    await receiver.wait_for_entries(len(lines), stream="stdout")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert delivered(receiver) == lines
    assert receiver.dedup_dropped == 0
    assert [r.status for r in receiver.requests[:4]] == [None, None, None, 204]
    assert receiver.requests[3].wire_bytes > 400_000
    failed = proc.events("push_failed")
    assert len(failed) == 3
    assert {r["outcome"] for r in failed} <= {"connection_reset", "transport_error"}
    summary = proc.summary()
    assert (summary["code"], summary["lines_sent"], summary["retries"]) == (0, len(lines), 3)
    no_drops(summary)


# --- 413: split the batch and retry ----------------------------------------------------------

# Entries per push when the first `n` pushes get 413: each 413 halves the
# batch at the front of the queue (half = n // 2 entries first).
SPLITS = {1: [100, 50, 50], 2: [100, 50, 25, 25, 50], 3: [100, 50, 25, 12, 13, 25, 50]}


@pytest.mark.parametrize(("refusals", "spool"), [(1, False), (2, False), (3, False), (2, True)],
                         ids=["once", "twice", "three-times", "twice-spooled"])
async def test_413_splits_the_batch_and_every_line_arrives_once(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess],
        refusals: int, spool: bool) -> None:
    receiver.add_actions(*[Action.status(413, "request entity too large\n")] * refusals)
    spool_dir = tmp_path / "spool"
    extra: dict[str, Any] = {"spool_dir": str(spool_dir)} if spool else {}
    proc, fd = await start_on_fifo(tmp_path, procs, receiver.url, **extra)
    lines = numbered("line", 100)
    write_all(fd, text(lines))  # < PIPE_BUF: one read, one batch
    os.close(fd)
    assert await proc.wait() == 0
    assert delivered(receiver) == lines
    assert receiver.dedup_dropped == 0
    *pushes, exit_summary = receiver.requests
    assert exit_summary.entries == 1  # the run's summary, pushed last
    assert [r.entries for r in pushes] == SPLITS[refusals]
    assert [r.status for r in pushes] == [413] * refusals + [204] * (len(pushes) - refusals)
    summary = proc.summary()
    assert (summary["code"], summary["lines_sent"]) == (0, 100)
    no_drops(summary)  # dropped.rejected == 0 in particular
    if spool:
        assert batch_files(spool_dir) == []


async def test_413_for_a_single_line_is_a_counted_rejection(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # One entry cannot be split: it is refused for good, like any other 4xx.
    receiver.add_actions(Action.status(413, "request entity too large\n"))
    proc, fd = await start_on_fifo(tmp_path, procs, receiver.url)
    write_all(fd, b"alone\n")
    os.close(fd)
    assert await proc.wait() == 0  # refused by Loki and counted: not "undelivered"
    assert delivered(receiver) == []
    (refused,) = proc.events("push_refused")
    assert refused["outcome"] == "413"
    assert proc.summary()["dropped"]["rejected"] == 1


# --- SIGKILL mid-stream, then restart ---------------------------------------------------------

@pytest.mark.parametrize("in_flight", ["never-stored", "stored-but-unacknowledged"])
async def test_sigkill_mid_stream_with_spool_then_restart(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], in_flight: str) -> None:
    log, spool = tmp_path / "task.log", tmp_path / "spool"
    proxy = AnswerEatingProxy(receiver.port)
    await proxy.start()
    try:
        config = make_config(proxy.url, [(log, "stdout")], spool_dir=str(spool))
        phases = [numbered(f"phase{k}", 300) for k in range(1, 5)]
        append(log, phases[0])
        first = await launch(procs, config)
        # Acknowledged (not only stored): the checkpoint moved past phase 1.
        await poll(lambda: acknowledged_offset(spool / "checkpoint.json", log) == len(text(phases[0])),
                   "phase 1 to be acknowledged")
        # The next push is in flight when the shipper dies: Loki either never
        # stores it (hang), or stores it and its answer is lost on the way back.
        if in_flight == "never-stored":
            receiver.add_actions(Action.hang())
        else:
            proxy.swallow = True
        n_before = len(receiver.requests)
        append(log, phases[1])
        await receiver.wait_for_requests(n_before + 1)
        in_flight_request = receiver.requests[n_before]
        if in_flight == "stored-but-unacknowledged":
            await poll(lambda: in_flight_request.status is not None, "Loki to store the push")
            assert in_flight_request.status == 204 and in_flight_request.stored > 0
        append(log, phases[2])  # read and spooled behind the batch in flight
        await poll(lambda: len(batch_files(spool)) >= 2, "two spooled batches")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        append(log, phases[3])  # written while no shipper runs

        proxy.swallow = False
        second = await launch(procs, config)
        replay = await second.wait_for_event("spool_replay")
        assert replay["lines"] >= 300
        await receiver.wait_for_entries(1200, stream="stdout")
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
    finally:
        await proxy.stop()
    assert delivered(receiver) == phases[0] + phases[1] + phases[2] + phases[3]
    # The replay kept the original timestamps: what Loki already had was a duplicate.
    assert receiver.dedup_dropped == in_flight_request.stored
    assert batch_files(spool) == []
    no_drops(second.summary())


@pytest.mark.parametrize("processing, n", [("", 300), ("multiline = true\ndetect_level = true\n", 6000)],
                         ids=["raw", "template-in-slices"])
async def test_sigkill_with_checkpoint_only_resends_nothing_acknowledged(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], processing: str, n: int) -> None:
    """Also with the pod template's processing, whose reads of more than 1,024 lines (pipeline.ADD_SLICE) are
    processed in slices: the read's file mark goes with its last slice only."""
    log, checkpoint = tmp_path / "task.log", tmp_path / "checkpoint.json"
    config = make_config(receiver.url, [(log, "stdout")], checkpoint_file=str(checkpoint))
    config = config.replace('stream = "stdout"', 'stream = "stdout"\n' + processing)
    acked, in_flight, later = numbered("acked", n), numbered("in-flight", n), numbered("later", n)
    append(log, acked)
    first = await launch(procs, config)
    acked_bytes = len(text(acked))
    await poll(lambda: acknowledged_offset(checkpoint, log) == acked_bytes, "the checkpoint to reach the acked lines")
    receiver.add_actions(Action.hang())
    n_before = len(receiver.requests)
    append(log, in_flight)
    await receiver.wait_for_requests(n_before + 1)
    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    assert acknowledged_offset(checkpoint, log) == acked_bytes  # never advanced without a 2xx
    append(log, later)

    second = await launch(procs, config)
    resumed = await second.wait_for_event("source_resumed")
    assert resumed["offset"] == acked_bytes
    await receiver.wait_for_entries(3 * n, stream="stdout")
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == acked + in_flight + later
    assert receiver.dedup_dropped == 0
    assert second.summary()["lines_read"] == 2 * n  # the acknowledged lines were not read again
    assert acknowledged_offset(checkpoint, log) == len(text(acked + in_flight + later))


async def test_sigkill_between_the_halves_of_a_413_split_then_restart(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # 413, first half stored and acknowledged, second half in flight: killed.
    # The spool still holds the whole batch; the restart replays it and Loki
    # drops the first half as a duplicate.
    log, spool = tmp_path / "task.log", tmp_path / "spool"
    config = make_config(receiver.url, [(log, "stdout")], spool_dir=str(spool))
    receiver.add_actions(Action.status(413), Action.ok(), Action.hang())
    lines, later = numbered("line", 100), numbered("later", 100)
    append(log, lines)
    first = await launch(procs, config)
    await receiver.wait_for_requests(3)
    await poll(lambda: receiver.requests[2].entries > 0, "the second half to reach Loki")
    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    assert [r.entries for r in receiver.requests] == [100, 50, 50]
    assert receiver.count(stream="stdout") == 50
    append(log, later)
    second = await launch(procs, config)
    await receiver.wait_for_entries(200, stream="stdout")
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == lines + later
    assert receiver.dedup_dropped == 50
    assert batch_files(spool) == []


async def test_sigkill_after_a_rotation_resumes_in_the_new_file(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    log, checkpoint = tmp_path / "task.log", tmp_path / "checkpoint.json"
    config = make_config(receiver.url, [(log, "stdout")], checkpoint_file=str(checkpoint))
    phases = [numbered(f"phase{k}", 200) for k in range(1, 6)]
    append(log, phases[0])
    first = await launch(procs, config)
    await poll(lambda: acknowledged_offset(checkpoint, log) == len(text(phases[0])), "phase 1 acknowledged")
    rotated = tmp_path / "task.log.1"
    log.rename(rotated)
    append(rotated, phases[1])  # the writer's last lines go to the old file
    append(log, phases[2])  # then a new file at the path
    new_ino = log.stat().st_ino
    await receiver.wait_for_entries(600, stream="stdout")
    await poll(lambda: acknowledged(checkpoint, log) == (new_ino, len(text(phases[2]))), "the new file acknowledged")
    receiver.add_actions(Action.hang())
    n_before = len(receiver.requests)
    append(log, phases[3])
    await receiver.wait_for_requests(n_before + 1)
    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    append(log, phases[4])
    second = await launch(procs, config)
    resumed = await second.wait_for_event("source_resumed")
    assert resumed["offset"] == len(text(phases[2]))
    await receiver.wait_for_entries(1000, stream="stdout")
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == [line for phase in phases for line in phase]
    assert receiver.dedup_dropped == 0


@pytest.mark.parametrize("spool", [False, True], ids=["checkpoint", "spool"])
async def test_sigkill_while_a_long_line_is_shipped_in_pieces_then_restart(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], spool: bool) -> None:
    # A line longer than max_line_bytes is shipped in pieces before its newline
    # arrives (tests/test_framing.py); the pieces shipped and acknowledged must
    # not be shipped again after a SIGKILL.
    log, state = tmp_path / "task.log", tmp_path / "state"
    durable: dict[str, Any] = {"spool_dir": str(state)} if spool else {"checkpoint_file": str(state)}
    config = make_config(receiver.url, [(log, "stdout")], max_line_bytes=1024, buffer_max_bytes=65536,
                         loki={"batch_max_bytes": 16384}, **durable)
    head = numbered("head", 10)
    long_line = "L" * 5000
    with open(log, "ab") as f:
        f.write(text(head) + long_line.encode())  # its newline is not written yet
    first = await launch(procs, config)
    await receiver.wait_for_entries(10 + 4, stream="stdout")  # 4 full pieces shipped, 904 bytes held
    await first.wait_for_event("lines_split")
    await asyncio.sleep(0.5)  # the acknowledgement is processed (nothing to observe it by)
    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    append(log, ["", "after"])  # the long line's newline, then one more line
    second = await launch(procs, config)
    await receiver.wait_for_entries(10 + 5 + 1, stream="stdout")
    await asyncio.sleep(0.5)  # anything shipped twice arrives too
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == head + ["L" * 1024] * 4 + ["L" * 904, "after"]


# --- SIGTERM during an outage ---------------------------------------------------------------

@pytest.mark.parametrize("volume", ["small", "beyond-memory"])
async def test_sigterm_during_outage_with_spool_exits_4_and_the_next_run_replays(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], volume: str) -> None:
    spool = tmp_path / "spool"
    receiver.add_actions(*[Action.status(503)] * 100_000)
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    n = 500
    sizes: dict[str, Any] = {}
    if volume == "beyond-memory":
        # 2 MB through a 64 KiB buffer: most batches live only in the spool.
        n = 20_000
        sizes = {"max_line_bytes": 1024, "buffer_max_bytes": 65536, "loki": {"batch_max_bytes": 16384}}
    config = make_config(receiver.url, [(fifo, "stdout")], spool_dir=str(spool), shutdown_timeout=1.0, **sizes)
    first = await launch(procs, config)
    await first.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    lines = [f"{line} " + "s" * 90 for line in numbered("line", n)] if n > 500 else numbered("line", n)
    await asyncio.to_thread(write_all, fd, text(lines))
    await first.wait_for_event("push_failed")
    first.signal(signal.SIGTERM)
    started = time.monotonic()
    assert await first.wait() == 4
    assert time.monotonic() - started < 1.0 + 3.0  # bounded by shutdown_timeout (plus the summary try)
    os.close(fd)
    summary = first.summary()
    assert (summary["code"], summary["lines_read"], summary["lines_sent"], summary["lines_spooled"]) == (4, n, 0, n)
    no_drops(summary)
    assert first.events("lines_left_in_spool")[0]["lines"] == n
    assert delivered(receiver) == []
    assert batch_files(spool)

    receiver.clear_actions()  # Loki is back
    restarted_ns = time.time_ns()
    second = await launch(procs, config)
    assert (await second.wait_for_event("spool_replay"))["lines"] == n
    await receiver.wait_for_entries(n, stream="stdout")
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == lines
    assert receiver.dedup_dropped == 0
    # Timestamps are the ones the lines got when first read, not the replay's.
    assert max(e.ts_ns for e in receiver.entries(stream="stdout")) < restarted_ns
    assert batch_files(spool) == []
    summary = second.summary()
    assert (summary["code"], summary["lines_sent"], summary["lines_spooled"]) == (0, n, 0)
    no_drops(summary)


async def test_sigterm_during_outage_without_spool_a_checkpointed_file_is_reread(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # Without a spool the undelivered lines are counted lost (exit 1; the FIFO
    # case is tests/test_lifecycle.py::test_loki_down_at_shutdown_exits_1_after_the_deadline),
    # but a regular file still holds them: the checkpoint never covered them,
    # so the next run reads them again and delivers them once.
    log, checkpoint = tmp_path / "task.log", tmp_path / "checkpoint.json"
    config = make_config(receiver.url, [(log, "stdout")], checkpoint_file=str(checkpoint), shutdown_timeout=1.0)
    acked, unacked = numbered("acked", 200), numbered("unacked", 200)
    append(log, acked)
    first = await launch(procs, config)
    await receiver.wait_for_entries(200, stream="stdout")
    receiver.add_actions(*[Action.status(503)] * 100_000)
    append(log, unacked)
    await first.wait_for_event("push_failed")
    first.signal(signal.SIGTERM)
    assert await first.wait() == 1
    summary = first.summary()
    assert summary["dropped"]["shutdown_deadline"] == 200
    assert summary["lines_spooled"] == 0
    assert acknowledged_offset(checkpoint, log) == len(text(acked))

    receiver.clear_actions()
    second = await launch(procs, config)
    await receiver.wait_for_entries(400, stream="stdout")
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0
    assert delivered(receiver) == acked + unacked
    assert receiver.dedup_dropped == 0


# --- a source file deleted while being read ----------------------------------------------------

async def test_source_file_deleted_while_being_read(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    log = tmp_path / "task.log"
    # Small buffer: the shipper holds only a sliver of the file when it is deleted.
    small: dict[str, Any] = {"max_line_bytes": 1024, "buffer_max_bytes": 65536}
    config = make_config(receiver.url, [(log, "stdout")], loki={"batch_max_bytes": 16384}, **small)
    before = [f"{i:06d} " + "d" * 93 for i in range(20_000)]  # 2 MB
    after = numbered("after delete", 100)
    receiver.add_actions(*[Action.status(503)] * 3)  # nothing delivered yet when the file goes
    writer = open(log, "ab")
    try:
        writer.write(text(before))
        writer.flush()
        proc = await launch(procs, config)
        await proc.wait_for_event("source_opened", path=str(log))
        await receiver.wait_for_requests(1)
        log.unlink()  # the task's log is deleted under the shipper (its fd stays valid)
        assert receiver.count(stream="stdout") < len(before)
        writer.write(text(after))  # the task still writes to its open file
        writer.flush()
        await receiver.wait_for_entries(len(before) + len(after), stream="stdout")
    finally:
        writer.close()
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert delivered(receiver) == before + after
    assert receiver.dedup_dropped == 0
    no_drops(proc.summary())
