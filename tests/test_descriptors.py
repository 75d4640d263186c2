"""Descriptors stay bounded: idle files are closed, and running out never ends intake.

The real shipper reads a task-log directory source (Airflow's layout) of 150
files with RLIMIT_NOFILE lowered to 100 for its process alone (before: intake
died, exit 3, nothing shipped). Files read to their end are parked (closed)
and reopened by identity when they grow; a file replaced or truncated while
parked is read from its new start.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path

from tests.conftest import make_config
from tests.loki_receiver import LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_server import metrics_port, scrape_until, value

FILES = 150
LINES = 20
NOFILE = 100


async def start_limited(config: str, env: dict[str, str], nofile: int) -> ShipperProcess:
    """The real shipper with RLIMIT_NOFILE (soft and hard) set to `nofile` before it runs."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    full_env.update(env, SHIPPER_CONFIG=config)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", env=full_env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=limit)
    return ShipperProcess(proc)


def task_log(home: Path, i: int) -> Path:
    return home / "logs" / "dag_id=many" / "run_id=r1" / f"task_id=t{i:03d}" / "attempt=1.log"


async def test_150_task_log_files_under_a_100_descriptor_limit_are_all_shipped(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    home = tmp_path / "airflow"
    for i in range(FILES):
        path = task_log(home, i)
        path.parent.mkdir(parents=True)
        path.write_text("".join(f"t{i:03d} line {n}\n" for n in range(LINES)))
    config = make_config(receiver.url, [("{AIRFLOW_HOME}/logs/**/attempt=*.log", "stdout")])
    proc = await start_limited(config, {"AIRFLOW_HOME": str(home)}, NOFILE)
    try:
        port = await metrics_port(proc)
        await receiver.wait_for_entries(FILES * LINES, timeout=120)
        # The limit was reached (else this test proves nothing), warned about once per episode, counted.
        warning = (await proc.wait_for_event("descriptor_shortage"))
        assert warning["level"] == "warn" and warning["shortages"] >= 1, warning
        # Every file is parked once idle: no descriptor held for a file at its end.
        samples = await scrape_until(port, lambda s: value(s, "shipper_sources_open") == 0, "every file parked")
        assert value(samples, "process_open_fds") < 30, samples
        assert value(samples, "process_max_fds") == NOFILE
        assert value(samples, "shipper_descriptor_shortages_total") >= warning["shortages"]

        # Parked files that grow are reopened by identity and read on from where they were left.
        for i in range(0, FILES, 10):
            with task_log(home, i).open("a") as f:
                f.write(f"t{i:03d} appended\n")
        # One replaced (rename + new file) and one truncated while parked: read from their new start.
        replaced, truncated = task_log(home, 1), task_log(home, 2)
        replaced.rename(replaced.with_name("attempt=1.log.old"))
        replaced.write_text("t001 new file\n")
        truncated.write_text("t002 after truncation\n")
        extra = len(range(0, FILES, 10)) + 2
        await receiver.wait_for_entries(FILES * LINES + extra, timeout=120)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0, proc.stderr_text
    finally:
        await proc.kill()
    for i in range(FILES):
        got = receiver.lines(stream="stdout", task_id=f"t{i:03d}")
        want = [f"t{i:03d} line {n}" for n in range(LINES)]
        want += [f"t{i:03d} appended"] * (i % 10 == 0)
        want += {1: ["t001 new file"], 2: ["t002 after truncation"]}.get(i, [])
        assert got == want, (i, got)
    assert receiver.dedup_dropped == 0
    summary = proc.summary()
    assert summary["lines_sent"] == FILES * LINES + extra
    assert summary["code"] == 0


async def test_1000_finished_task_logs_hold_no_descriptor_once_idle(tmp_path: Path, receiver: LokiReceiver) -> None:
    # Before: 1,009 descriptors open for as long as the shipper ran.
    home = tmp_path / "airflow"
    n = 1000
    for i in range(n):
        path = task_log(home, i)
        path.parent.mkdir(parents=True)
        path.write_text(f"t{i:03d} done\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = make_config(receiver.url, [("{AIRFLOW_HOME}/logs/**/attempt=*.log", "stdout")])
    # A limit above what 1,000 open files need: only idleness closes them here.
    proc = await start_limited(config, {"AIRFLOW_HOME": str(home)}, min(hard, max(soft, 4096)))
    try:
        port = await metrics_port(proc)
        await receiver.wait_for_entries(n, timeout=120)
        # Parked once idle for IDLE_CLOSE_SECONDS (awaited, not timed).
        samples = await scrape_until(port, lambda s: value(s, "shipper_sources_open") == 0, "every file parked")
        assert value(samples, "process_open_fds") < 30, samples
        assert proc.events("descriptor_shortage") == []
        with task_log(home, 7).open("a") as f:
            f.write("t007 one more\n")
        await receiver.wait_for_entries(n + 1, timeout=120)
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0, proc.stderr_text
    finally:
        await proc.kill()
    assert receiver.lines(stream="stdout", task_id="t007") == ["t007 done", "t007 one more"]
    assert proc.summary()["lines_sent"] == n + 1
