"""Lifecycle with real signals: read to the end, flush under a deadline, exit codes.

Most tests run the real process; the supervisor's own rules (a task that dies,
the exit-code table) are also driven in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from shipper import config as config_module
from shipper import events, lifecycle
from shipper.lifecycle import Outcome, exit_code
from shipper.loki import Answer
from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess


async def start_on_fifo(tmp_path: Path, receiver: LokiReceiver, **config: object) -> tuple[ShipperProcess, int]:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")], **config))  # type: ignore[arg-type]
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, open_fifo_writer(fifo)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_mid_stream_delivers_everything_already_written(
        tmp_path: Path, receiver: LokiReceiver, sig: signal.Signals) -> None:
    proc, fd = await start_on_fifo(tmp_path, receiver)
    first = [f"before {i}" for i in range(300)]
    os.write(fd, ("\n".join(first) + "\n").encode())
    await receiver.wait_for_entries(1)
    # Written (in the pipe) before the signal, writer still open, last line unterminated.
    second = [f"after {i}" for i in range(300)]
    os.write(fd, ("\n".join(second)).encode())
    proc.signal(sig)
    assert await proc.wait() == 0
    os.close(fd)
    assert receiver.lines(stream="stdout") == first + second
    summary = proc.summary()
    assert (summary["code"], summary["reason"], summary["lines_sent"]) == (0, sig.name, 600)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("moment", ["starting", "source_opened", "metrics_listening"])
async def test_a_signal_while_sources_open_is_a_shutdown_not_a_kill(
        tmp_path: Path, receiver: LokiReceiver, sig: signal.Signals, moment: str) -> None:
    """Before the pipeline runs (file sources opening, the metrics endpoint starting) a
    signal is recorded and acted on once it runs, exactly once: every line shipped, exit 0,
    a summary. Each moment is a log record on the way there (the signal lands around it)."""
    out = tmp_path / "stdout.log"
    lines = [f"line {i}" for i in range(2000)]
    out.write_text("\n".join(lines) + "\n")
    proc = await ShipperProcess.start(make_config(receiver.url, [(out, "stdout")]))
    await proc.wait_for_event(moment)
    proc.signal(sig)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == lines
    summary = proc.summary()
    assert (summary["code"], summary["reason"], summary["lines_sent"]) == (0, sig.name, 2000)
    assert proc.events("second_signal") == []


async def test_loki_down_at_shutdown_exits_1_after_the_deadline(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(*[Action.status(503)] * 1000)
    proc, fd = await start_on_fifo(tmp_path, receiver, shutdown_timeout=1.0)
    os.write(fd, b"one\ntwo\nthree\n")
    await proc.wait_for_event("push_failed")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 1
    os.close(fd)
    assert receiver.lines() == []
    summary = proc.summary()
    assert summary["dropped"]["shutdown_deadline"] == 3
    assert proc.events("shutdown_deadline_reached")[0]["lines"] == 3


async def test_second_signal_exits_at_once(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.hang())
    proc, fd = await start_on_fifo(tmp_path, receiver, shutdown_timeout=60.0)
    os.write(fd, b"stuck\n")
    await receiver.wait_for_requests(1)
    proc.signal(signal.SIGTERM)
    await proc.wait_for_event("signal_received")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 1
    os.close(fd)
    assert proc.summary()["dropped"]["forced_exit"] == 1
    assert proc.summary()["reason"] == "SIGTERM"


async def test_end_of_input_exits_0_without_a_signal(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fd = await start_on_fifo(tmp_path, receiver)
    os.write(fd, b"a\nb\n")
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["a", "b"]
    assert proc.summary()["reason"] == "end of input"


async def test_diagnostics_never_enter_the_shipped_stream(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.status(500))
    proc, fd = await start_on_fifo(tmp_path, receiver)
    os.write(fd, b"only this\n")
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["only this"]
    assert proc.stdout_lines == []
    assert len(proc.events("push_failed")) == 1


async def test_bad_input_lines_are_cleaned_and_counted(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fd = await start_on_fifo(tmp_path, receiver)
    big = b"z" * (1024 * 1024)
    data = b"ok\r\n" + b"bad \xff\xfe utf8\n" + b"nul\x00byte\n" + big + b"\n" + "emoji \U0001f600 \"q\" \\".encode()
    await asyncio.to_thread(os.write, fd, data)
    os.close(fd)
    assert await proc.wait() == 0
    got = receiver.lines(stream="stdout")
    assert got[:3] == ["ok", "bad \ufffd\ufffd utf8", "nul\x00byte"]
    assert got[3:7] == ["z" * (256 * 1024)] * 4
    assert got[7:] == ["emoji \U0001f600 \"q\" \\"]
    summary = proc.summary()
    assert (summary["lines_split"], summary["lines_invalid_utf8"]) == (3, 1)


@pytest.mark.parametrize(("ending", "lost", "dropped", "spooled", "code"), [
    ("delivered", 0, {}, 0, 0),
    ("delivered", 0, {"rejected": 7}, 0, 0),          # Loki's refusal is an answer, counted
    ("delivered", 0, {"buffer_full": 3}, 0, 1),       # dropped while Loki was down
    ("delivered", 0, {}, 12, 4),                      # safe in the spool for the next run
    ("delivered", 0, {"buffer_full": 3}, 12, 1),      # a loss outweighs the spool
    ("shutdown_deadline", 5, {"shutdown_deadline": 5}, 0, 1),
    ("shutdown_deadline", 0, {}, 20, 4),
    ("forced_exit", 0, {}, 0, 0),                      # a second signal with nothing pending
    ("forced_exit", 2, {"forced_exit": 2}, 0, 1),
    ("internal_error", 0, {}, 0, 3),
    ("internal_error", 9, {"internal_error": 9}, 5, 3),
])
def test_exit_code(ending: str, lost: int, dropped: dict[str, int], spooled: int, code: int) -> None:
    assert exit_code(Outcome(ending, lost, dropped, spooled)) == code


class _BuggySink:
    """A sink whose push fails with an exception no transport raises: the sender dies of it."""

    timeout = 1.0

    def __init__(self) -> None:
        self.closed = False

    async def push(self, body: bytes, timeout: float | None = None) -> Answer:
        raise KeyError("a bug in the sink")

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None:
        return None

    async def close(self) -> None:
        self.closed = True


async def test_a_task_that_dies_is_exit_3_unhealthy_and_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process: the sender dies of a bug on its first push; the supervisor's loop sees it
    at once (the file source would keep intake alive forever), exits 3 naming the task, and
    the endpoint's health says so."""
    monkeypatch.setattr(events, "COUNTERS", events.Counters())  # this run's counts only
    log = tmp_path / "task.log"
    log.write_text("one\ntwo\n")
    cfg = config_module.parse(make_config("http://127.0.0.1:1/loki/api/v1/push", [(log, "stdout")]))
    (stream,) = lifecycle.build_streams(cfg, {})
    sources = [lifecycle.new_source(cfg, cfg.sources[0], str(log), stream)]
    sink = _BuggySink()
    supervisor = lifecycle.Supervisor(cfg, sources, sink, {}, None, lifecycle.Durable(), None)
    async with asyncio.timeout(10):
        assert await supervisor.run() == 3
    status = supervisor.status()
    assert (status.healthy, status.ready, status.reason) == (False, False, "pipeline task died: sender")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    died = [r for r in records if r["event"] == "internal_error"]
    assert [(r["level"], r["task"], r["error"]) for r in died] == [("error", "sender", "KeyError: 'a bug in the sink'")]
    summary = next(r for r in records if r["event"] == "exit")
    assert (summary["code"], summary["dropped"]["internal_error"], summary["dropped"]["rejected"]) == (3, 2, 0)
    assert sink.closed and all(s.fd is None for s in sources)
