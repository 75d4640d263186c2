"""`shipper exec`: the real shipper running a real command as its child.

The command's output must pass through byte for byte, be shipped line by
line, and its exit code (or 128+signal) must become the shipper's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.loki_receiver import LokiReceiver

# Writes to both streams, in pieces, with invalid UTF-8, \r\n, and no final newline.
TASK = r"""
import os, sys
os.write(1, b"[2026-11-24T10:00:00.000+0000] {task.py:1} INFO - start\n")
os.write(2, b"warning: \xff bytes\r\n")
os.write(1, b"half a li")
os.write(1, b"ne\nlast without newline")
os.write(2, b"err end")
sys.exit(3)
"""


async def run_exec(config: str, *argv: str, stdin: int | None = asyncio.subprocess.DEVNULL,
                   ) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = config
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", "exec", "--", *argv, env=env, stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_bare(*argv: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def split_diagnostics(stderr: bytes, task_stderr: bytes) -> list[dict[str, object]]:
    """The shipper's own stderr records after the command's passthrough bytes."""
    assert stderr.startswith(task_stderr), stderr
    rest = stderr[len(task_stderr):].decode()
    return [json.loads(line) for line in rest.splitlines()]


async def test_output_passes_through_unchanged_and_is_shipped(receiver: LokiReceiver) -> None:
    bare = await run_bare(sys.executable, "-c", TASK)
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", TASK)
    out, err = await proc.communicate()
    # stdout and stderr are the command's, byte for byte: by default (exec_diagnostics = "none")
    # the shipper adds nothing of its own, not even its summary (tests/test_exec_diagnostics.py).
    assert (proc.returncode, out, err) == (bare[0], bare[1], bare[2]) == (3, bare[1], bare[2])
    assert receiver.lines(stream="stdout") == [
        "[2026-11-24T10:00:00.000+0000] {task.py:1} INFO - start", "half a line", "last without newline"]
    assert receiver.lines(stream="stderr") == ["warning: \ufffd bytes", "err end"]
    assert receiver.dedup_dropped == 0


async def test_signals_are_forwarded_and_the_commands_exit_code_returned(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    ready = tmp_path / "ready"
    task = (
        "import os, signal, sys, time\n"
        "def stop(n, f):\n"
        "    print('got', signal.Signals(n).name, flush=True)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "while True:\n"
        "    signal.pause()\n"
    )
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", task)
    # The marker is made after the handler is installed: SIGTERM now reaches it.
    while not ready.exists():
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = await proc.communicate()
    assert (proc.returncode, out) == (7, b"got SIGTERM\n")
    assert receiver.lines(stream="stdout") == ["got SIGTERM"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
async def test_a_command_killed_by_a_signal_exits_128_plus_n(receiver: LokiReceiver, sig: int) -> None:
    task = f"import os; print('dying', flush=True); os.kill(os.getpid(), {int(sig)})"
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", task)
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (128 + sig, b"dying\n")
    assert receiver.lines(stream="stdout") == ["dying"]


async def test_the_command_outliving_its_pipes_is_waited_for(receiver: LokiReceiver) -> None:
    # Closing stdout/stderr is not the end of the task: its exit code is.
    task = "import os, time; os.write(1, b'bye\\n'); os.close(1); os.close(2); time.sleep(0.3); raise SystemExit(5)"
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", task)
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (5, b"bye\n")
    assert receiver.lines(stream="stdout") == ["bye"]


@pytest.mark.parametrize(("argv", "code", "why"), [
    (["/nonexistent/task"], 127, "/nonexistent/task: no such file"),
    (["no-such-command-anywhere"], 127, "no-such-command-anywhere: command not found"),
    (["/"], 126, "/: not an executable file"),
    (["{tmp}/text.txt"], 126, "{tmp}/text.txt: "),
])
async def test_a_command_that_cannot_run_exits_like_a_shell(
        tmp_path: Path, receiver: LokiReceiver, argv: list[str], code: int, why: str) -> None:
    text = tmp_path / "text.txt"
    text.write_text("not a program\n")
    text.chmod(0o755)  # executable bits, but no interpreter line: exec fails (even for root)
    argv = [a.format(tmp=tmp_path) for a in argv]
    why = why.format(tmp=tmp_path)
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), *argv)
    out, err = await proc.communicate()
    assert (proc.returncode, out) == (code, b"")
    (record,) = [json.loads(line) for line in err.decode().splitlines() if '"cannot run the command"' in line]
    assert why in record["error"]
    assert receiver.lines() == []


async def test_exec_without_a_command_is_a_usage_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", "exec", "--",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"exec needs a command" in err


def test_which_finds_what_shutil_which_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from shipper.exec import which

    not_executable, executable, directory = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (not_executable, executable, directory):
        d.mkdir()
    (not_executable / "tool").write_text("#!/bin/sh\n")
    (executable / "tool").write_text("#!/bin/sh\n")
    (executable / "tool").chmod(0o755)
    (directory / "tool").mkdir()
    monkeypatch.chdir(executable)
    for path in (f"{directory}:{not_executable}:{executable}", f"{not_executable}:{directory}",
                 f"{directory}::{not_executable}", "", f"{tmp_path}/missing:{executable}"):
        for name in ("tool", "absent"):
            assert which(name, path) == shutil.which(name, path=path), (name, path)
    assert which("tool", f"{directory}:{executable}") == str(executable / "tool")


async def test_the_command_starts_with_default_signals_and_an_empty_mask(receiver: LokiReceiver) -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals stay ignored
    # across exec: before the fix `yes | head -1` under the shipper never ended.
    script = ("grep -E '^Sig(Blk|Ign)' /proc/self/status; yes | head -1; "
              "while :; do echo x; done | head -1")
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), "sh", "-c", script)
    try:
        # A guard, not a threshold: before the fix this never ended.
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert (proc.returncode, out) == (0, b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\nx\n")
    assert receiver.lines(stream="stdout") == [
        "SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000", "y", "x"]


async def test_the_command_does_not_outlive_a_shipper_killed_with_sigkill(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    pid_file = tmp_path / "pid"
    task = f"import os, signal; open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid())); " \
           f"os.rename({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); signal.pause()"
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")]), sys.executable, "-c", task)
    while not pid_file.exists():
        await asyncio.sleep(0.02)
    pidfd = os.pidfd_open(int(pid_file.read_text()))
    try:
        proc.kill()
        await proc.communicate()
        # The command's pidfd becomes readable when it exits (PR_SET_PDEATHSIG).
        # Before the fix it ran on, orphaned, and this wait failed.
        exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, exited.set)
        await asyncio.wait_for(exited.wait(), 30)
        asyncio.get_running_loop().remove_reader(pidfd)
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


# A descendant that outlives the command: it holds the command's stdout and
# stderr (inherited) and writes once the test, having seen the shipper say it
# reads on after the command's exit, opens the FIFO `go`.
LATE_WRITER = r"""
import os, sys
go = sys.argv[1]
with open(go) as f:
    f.read()
os.write(1, b"written after the command exited\n")
os.write(2, b"late stderr\n")
if sys.argv[2] == "hold":
    with open(go) as f:  # keeps the pipes open until the test opens the FIFO again
        f.read()
"""


def release(fifo: Path, *, wait: bool = True) -> None:
    """Let LATE_WRITER go on: open its FIFO for writing once it waits there, and close it.

    `wait=False` (cleanup after a failure): only if it is waiting there now.
    """
    try:
        fd = os.open(fifo, os.O_WRONLY | (0 if wait else os.O_NONBLOCK))
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return
    os.close(fd)


def late_writer(tmp_path: Path, then: str) -> tuple[Path, str]:
    """LATE_WRITER's FIFO (`release` it to make it write) and its shell command; `then`: exit or hold."""
    go = tmp_path / "go"
    os.mkfifo(go)
    writer = tmp_path / "late.py"
    writer.write_text(LATE_WRITER)
    return go, f"{sys.executable} {writer} {go} {then}"


async def test_output_its_descendants_write_after_the_command_exits_is_passed_through_and_shipped(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    go, late = late_writer(tmp_path, "exit")
    script = f"{late} & echo command done; exit 3"
    config = make_config(receiver.url, [("/unused", "x")], exec_diagnostics="stderr")  # its records, after the task's
    proc = await run_exec(config, "sh", "-c", script)
    assert proc.stderr is not None and proc.stdout is not None
    # The shipper's own records come on stderr once the command is gone.
    try:
        record = json.loads(await proc.stderr.readline())
        assert record["event"] == "output_held_open"
        assert record["pipes"] == ["exec:stdout", "exec:stderr"]
        release(go)  # the descendant writes now
        out, err = await proc.communicate()
    finally:
        release(go, wait=False)  # before the fix the shipper is gone and the descendant waits
    assert (proc.returncode, out) == (3, b"command done\nwritten after the command exited\n")
    assert err.startswith(b"late stderr\n")
    summary = json.loads(err.splitlines()[-1])
    assert (summary["event"], summary["exec_pipes_cut"]) == ("exit", 0)
    assert receiver.lines(stream="stdout") == ["command done", "written after the command exited"]
    assert receiver.lines(stream="stderr") == ["late stderr"]


async def test_descendants_holding_the_output_open_are_cut_after_the_drain_limit_and_counted(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    go, late = late_writer(tmp_path, "hold")
    script = f"{late} & exit 0"
    proc = await run_exec(make_config(receiver.url, [("/unused", "x")], exec_diagnostics="stderr"), "sh", "-c", script)
    assert proc.stderr is not None
    try:
        record = json.loads(await proc.stderr.readline())
        assert record["event"] == "output_held_open"
        release(go)  # it writes its lines, then waits on the FIFO again with the pipes open
        out, err = await proc.communicate()
    finally:
        release(go, wait=False)  # let the descendant end
    assert (proc.returncode, out) == (0, b"written after the command exited\n")
    records = [json.loads(line) for line in err.splitlines()[1:]]
    assert records[0]["event"] == "drain_limit_passed"
    assert records[0]["pipes"] == ["exec:stdout", "exec:stderr"]
    assert (records[-1]["event"], records[-1]["exec_pipes_cut"]) == ("exit", 2)
    assert receiver.lines(stream="stdout") == ["written after the command exited"]
    assert receiver.lines(stream="stderr") == ["late stderr"]
