"""`shipper exec`: where the shipper's own diagnostics go (issue 13, item 6), with the real shipper process.

In exec mode the shipper's stderr is the task's: what `kubectl logs` shows.
By default (`exec_diagnostics = "none"`) the shipper adds nothing to it, not
even its exit summary, which goes to Loki's `{job="shipper"}` stream only.
`"stderr"` adds warnings, errors and the summary after the command's bytes;
an absolute path (a file, or `/dev/fd/N` given by the parent) gets every
diagnostic, info included. What must be read because the task did not run
(the command cannot be started, a bad config) reaches stderr whatever the
setting.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.loki_receiver import LokiReceiver
from tests.real_loki import free_port
from tests.test_exec import TASK, run_bare, run_exec, split_diagnostics

ENVELOPE = ("ts", "level", "event", "msg")


def summary_in_loki(receiver: LokiReceiver) -> dict[str, object]:
    (line,) = receiver.lines(job="shipper")
    summary: dict[str, object] = json.loads(line)
    return summary


async def test_by_default_stderr_is_exactly_the_commands_and_the_summary_goes_to_loki(
        receiver: LokiReceiver) -> None:
    bare = await run_bare(sys.executable, "-c", TASK)
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", TASK)
    out, err = await proc.communicate()
    assert (proc.returncode, out, err) == bare
    summary = summary_in_loki(receiver)
    assert (summary["code"], summary["reason"], summary["lines_read"], summary["lines_sent"]) == (
        0, "command exited with 3", 5, 5)


async def test_by_default_nothing_reaches_stderr_even_when_loki_is_down() -> None:
    # Every push fails (nothing listens), so the shipper warns, retries, then drops at its deadline.
    url = f"http://127.0.0.1:{free_port()}/loki/api/v1/push"
    bare = await run_bare(sys.executable, "-c", TASK)
    proc = await run_exec(make_config(url, [("/unused", "x")], shutdown_timeout=1.0), sys.executable, "-c", TASK)
    out, err = await proc.communicate()
    assert (proc.returncode, out, err) == bare


async def test_stderr_carries_warnings_errors_and_the_summary_after_the_commands_bytes_when_asked() -> None:
    url = f"http://127.0.0.1:{free_port()}/loki/api/v1/push"
    bare = await run_bare(sys.executable, "-c", TASK)
    config = make_config(url, [("/unused", "x")], shutdown_timeout=1.0, exec_diagnostics="stderr")
    proc = await run_exec(config, sys.executable, "-c", TASK)
    out, err = await proc.communicate()
    assert (proc.returncode, out) == bare[:2]
    records = split_diagnostics(err, bare[2])
    # Warnings and errors (Loki is down), and of the info records the summary only.
    assert {r["level"] for r in records} == {"warn", "error", "info"}
    assert [r["event"] for r in records if r["level"] == "info"] == ["exit"]
    assert {r["event"] for r in records if r["level"] != "info"} == {
        "push_failed", "lines_dropped", "shutdown_deadline_reached", "exit_push_failed"}
    assert [(r["event"], r.get("target")) for r in records[-2:]] == [("exit", None), ("exit_push_failed", "summary")]
    exit_record = records[-2]
    assert (exit_record["code"], exit_record["lines_read"], exit_record["dropped"]) == (  # type: ignore[index]
        1, 5, {"rejected": 0, "shutdown_deadline": 5, "forced_exit": 0, "buffer_full": 0, "spool_error": 0,
               "internal_error": 0})


async def test_a_file_gets_every_diagnostic_and_the_same_summary_as_loki(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "shipper.log"
    log.write_text('{"earlier": "run"}\n')  # appended to, never truncated
    bare = await run_bare(sys.executable, "-c", TASK)
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")], exec_diagnostics=str(log)),
                          sys.executable, "-c", TASK)
    out, err = await proc.communicate()
    assert (proc.returncode, out, err) == bare
    earlier, *records = [json.loads(line) for line in log.read_text().splitlines()]
    assert earlier == {"earlier": "run"}
    names = [r["event"] for r in records]
    assert names[:2] == ["starting", "command_started"]
    assert "command_exited" in names
    assert names[-2:] == ["exit", "exit_pushed"] and records[-1]["target"] == "summary"
    (exit_record,) = [r for r in records if r["event"] == "exit"]
    assert {k: v for k, v in exit_record.items() if k not in ENVELOPE} == summary_in_loki(receiver)


async def test_a_file_descriptor_the_parent_passes_gets_the_diagnostics(receiver: LokiReceiver) -> None:
    bare = await run_bare(sys.executable, "-c", TASK)
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = make_config(receiver.url, [("/unused", "x")], exec_diagnostics=f"/dev/fd/{w}")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipper", "exec", "--", sys.executable, "-c", TASK, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            pass_fds=(w,))
    finally:
        os.close(w)
    out, err = await proc.communicate()
    with os.fdopen(r, "rb") as f:
        records = [json.loads(line) for line in f.read().splitlines()]  # EOF: the shipper has exited
    assert (proc.returncode, out, err) == bare
    (exit_record,) = [r for r in records if r["event"] == "exit"]
    assert {k: v for k, v in exit_record.items() if k not in ENVELOPE} == summary_in_loki(receiver)


async def test_a_diagnostics_file_that_cannot_be_opened_stops_before_the_command_runs(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    marker = tmp_path / "ran"
    config = make_config(receiver.url, [("/unused", "x")], exec_diagnostics=str(tmp_path / "no" / "dir.log"))
    proc = await run_exec(config, sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    out, err = await proc.communicate()
    assert (proc.returncode, out) == (2, b"")
    (record,) = [json.loads(line) for line in err.decode().splitlines()]
    assert record["event"] == "refusing_to_start"
    assert record["error"].startswith(f"exec_diagnostics: cannot open {tmp_path / 'no' / 'dir.log'} for appending: ")
    assert not marker.exists()
    assert receiver.lines() == []


@pytest.mark.parametrize("where", ["shipper.log", "STDERR", ""])
async def test_exec_diagnostics_is_none_stderr_or_an_absolute_path(receiver: LokiReceiver, where: str) -> None:
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")], exec_diagnostics=where), "true")
    _, err = await proc.communicate()
    assert proc.returncode == 2
    (record,) = [json.loads(line) for line in err.decode().splitlines()]
    assert record["error"] == f'exec_diagnostics: must be "none", "stderr" or an absolute file path, got "{where}"'


async def test_a_command_that_cannot_run_is_still_said_on_stderr_with_diagnostics_elsewhere(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "shipper.log"
    for where in ("none", str(log)):
        proc = await run_exec(make_config(receiver.url, [("/unused", "x")], exec_diagnostics=where),
                              "/nonexistent/task")
        out, err = await proc.communicate()
        assert (proc.returncode, out) == (127, b"")
        (record,) = [json.loads(line) for line in err.decode().splitlines()]
        # The task's log says it in words: the wording is what a reader of `kubectl logs` gets.
        assert (record["event"], record["msg"], record["error"]) == (
            "command_not_run", "cannot run the command", "exec: /nonexistent/task: no such file")
    assert [r["event"] for r in map(json.loads, log.read_text().splitlines())] == ["starting", "command_not_run"]


async def test_run_mode_keeps_every_diagnostic_on_stderr(receiver: LokiReceiver) -> None:
    # exec_diagnostics is for exec mode only: `shipper run` (the sidecar) owns its stderr.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = make_config(receiver.url, [("/dev/stdin", "stdout")], exec_diagnostics="none")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", "run", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(b"one\n")  # a pipe: read to EOF, then the shipper exits
    assert proc.returncode == 0
    names = [json.loads(line)["event"] for line in err.decode().splitlines()]
    assert names[0] == "starting" and names[-2:] == ["exit", "exit_pushed"]
    assert receiver.lines(stream="stdout") == ["one"]
