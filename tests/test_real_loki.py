"""The real shipper process against a real Loki (3.4.6, and 2.7.7 where it applies).

Each test ships into its own unique `[labels] test_run` value (and a tenant
of tests/real_loki.py), waits for the shipper's exit, then reads back from
Loki exactly what it stored: which lines, in which order, with which labels
and structured metadata, each once; and checks that the shipper's own exit
summary (stderr and the `{job="shipper"}` entry in Loki) agrees with it.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import launch, make_config, open_fifo_writer
from tests.real_loki import RealLoki, any_loki, loki3, loki27, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess
from tests.test_sources import write_all

ANNOTATIONS = ('dag_id="etl_daily"\ntask_id="load"\nrun_id="scheduled__2026-12-01T06:00:00+00:00"\n'
               'try_number="2"\nkubernetes.io/config.seen="2026-12-01T06:00:01Z"\n')
RUN_META = {"run_id": "scheduled__2026-12-01T06:00:00+00:00", "try_number": "2"}


def unique() -> str:
    return uuid.uuid4().hex[:12]


def config_for(loki: RealLoki, tmp_path: Path, run: str, sources: list[tuple[Path, str]],
               tenant: str = "default", **top: object) -> str:
    annotations = tmp_path / "annotations"
    annotations.write_text(ANNOTATIONS)
    config = make_config(loki.push_url, sources, loki={"tenant_id": tenant}, labels={"test_run": run}, **top)
    return config.replace('annotations_file = "/nonexistent/annotations"', f'annotations_file = "{annotations}"')


def task_labels(loki: RealLoki, run: str, stream: str) -> dict[str, str]:
    # service_name: the shipper's ([airflow] service_name, default "airflow"), on Loki 2.7 and 3.4
    # alike; without it Loki 3 would add "unknown_service" (none of its discover_service_name labels is set).
    return {"dag_id": "etl_daily", "task_id": "load", "stream": stream, "test_run": run, "service_name": "airflow"}


def stored_meta(loki: RealLoki, meta: dict[str, str], detected: str = "unknown") -> dict[str, str]:
    """What Loki returns as structured metadata for an entry the shipper sent with `meta`."""
    if not loki.version.startswith("3."):
        return {}  # 2.7 has no structured metadata
    return {**meta, "detected_level": detected}  # 3.4's discover_log_levels adds detected_level


def summary_in_loki(loki: RealLoki, run: str, tenant: str = "default") -> tuple[dict[str, str], dict[str, object]]:
    rows = loki.query(f'{{job="shipper", test_run="{run}"}}', tenant)
    assert len(rows) == 1, rows
    labels, _, line, meta = rows[0]
    assert meta == stored_meta(loki, RUN_META, detected=meta.get("detected_level", "unknown")), meta
    return labels, json.loads(line)


def exit_summary(proc: ShipperProcess) -> dict[str, object]:
    """The stderr exit record without its log envelope (ts, level, msg): what goes to Loki."""
    return {k: v for k, v in proc.summary().items() if k not in ("ts", "level", "event", "msg")}


def task_rows(loki: RealLoki, run: str, tenant: str = "default") -> list[tuple[dict[str, str], int, str, dict[str, str]]]:
    return loki.query(f'{{test_run="{run}", stream=~"stdout|stderr"}}', tenant)


async def wait_for_lines(loki: RealLoki, selector: str, tenant: str, count: int) -> None:
    """Poll Loki (an external server: no event to await) until `count` lines match; 30 s at most."""
    import asyncio
    deadline = time.monotonic() + 30
    while len(loki.lines(selector, tenant)) < count:
        assert time.monotonic() < deadline, f"Loki never had {count} lines for {selector}"
        await asyncio.sleep(0.1)


async def test_file_and_fifo_sources_arrive_once_in_order_with_labels_and_metadata(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, unique()
    out_file, err_fifo = tmp_path / "stdout.log", tmp_path / "stderr"
    out_lines = [f"[2026-12-01T06:00:{i % 60:02d}.000+0000] {{etl.py:{i}}} INFO - row batch {i} loaded"
                 for i in range(1500)]
    out_file.write_text("\n".join(out_lines) + "\n")
    os.mkfifo(err_fifo)
    proc = await launch(procs, config_for(loki, tmp_path, run, [(out_file, "stdout"), (err_fifo, "stderr")]))
    await proc.wait_for_event("source_opened", path=str(err_fifo))
    err_lines = [f"warning {i}: disk at {50 + i % 40} %" for i in range(700)]
    fd = open_fifo_writer(err_fifo)
    write_all(fd, ("\n".join(err_lines) + "\n").encode())
    os.close(fd)
    await proc.wait_for_event("source_eof", path=str(err_fifo))
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0

    rows = task_rows(loki, run)
    by_stream: dict[str, list[tuple[dict[str, str], str, dict[str, str]]]] = {"stdout": [], "stderr": []}
    for labels, _, line, meta in rows:
        by_stream[labels["stream"]].append((labels, line, meta))
    info = "info" if loki.version.startswith("3.") else ""
    assert [(l, m) for _, l, m in by_stream["stdout"]] == [
        (line, stored_meta(loki, RUN_META, detected=info)) for line in out_lines]
    assert [(l, m) for _, l, m in by_stream["stderr"]] == [
        (line, stored_meta(loki, RUN_META, detected="warn" if info else "")) for line in err_lines]
    for stream in ("stdout", "stderr"):
        assert {json.dumps(labels, sort_keys=True) for labels, _, _ in by_stream[stream]} == {
            json.dumps(task_labels(loki, run, stream), sort_keys=True)}
    # Timestamps strictly increase per stream (each line its own; Loki dedups nothing).
    for stream in ("stdout", "stderr"):
        ts = [t for labels, t, _, _ in rows if labels["stream"] == stream]
        assert ts == sorted(set(ts))

    summary = proc.summary()
    assert (summary["code"], summary["lines_read"], summary["lines_sent"]) == (0, 2200, 2200)
    assert set(summary["dropped"].values()) == {0}
    labels, stored = summary_in_loki(loki, run)
    assert stored == exit_summary(proc)
    assert labels == {"job": "shipper", "dag_id": "etl_daily", "task_id": "load", "test_run": run,
                      "service_name": "shipper"}


async def test_sigterm_mid_stream_delivers_everything_read_including_an_unterminated_last_line(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, unique()
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, config_for(loki, tmp_path, run, [(fifo, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    first = [f"before {i}" for i in range(400)]
    write_all(fd, ("\n".join(first) + "\n").encode())
    await wait_for_lines(loki, f'{{test_run="{run}"}}', "default", 1)  # the shipper is mid-stream
    # In the pipe before the signal, the writer still open, the last line without a newline.
    second = [f"after {i}" for i in range(400)]
    write_all(fd, "\n".join(second).encode())
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    os.close(fd)

    rows = task_rows(loki, run)
    assert [line for _, _, line, _ in rows] == first + second
    assert {r[0]["stream"] for r in rows} == {"stdout"}
    summary = proc.summary()
    assert (summary["code"], summary["reason"], summary["lines_read"], summary["lines_sent"]) == (
        0, "SIGTERM", 800, 800)
    assert sum(summary["dropped"].values()) == 0
    _, stored = summary_in_loki(loki, run)
    assert stored == exit_summary(proc)


async def test_unterminated_last_line_of_a_file_at_end_of_a_fifo(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, unique()
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, config_for(loki, tmp_path, run, [(fifo, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    write_all(fd, b"one\ntwo\nthe end, no newline")
    os.close(fd)
    assert await proc.wait() == 0  # end of input: no signal needed
    assert [r[2] for r in task_rows(loki, run)] == ["one", "two", "the end, no newline"]
    assert proc.summary()["reason"] == "end of input"
    assert summary_in_loki(loki, run)[1]["lines_sent"] == 3


async def test_lines_over_the_tenants_max_line_size_are_rejected_and_counted_the_rest_stored(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Tenant `line-limited` (max_line_size 1KB): Loki answers 400 for the long line; it is counted."""
    loki, run = any_loki, unique()
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, config_for(loki, tmp_path, run, [(fifo, "stdout")], tenant="line-limited"))
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    write_all(fd, b"short one\n")
    await wait_for_lines(loki, f'{{test_run="{run}"}}', "line-limited", 1)
    write_all(fd, b"x" * 2000 + b"\n")
    os.close(fd)
    await proc.wait()
    stored = [r[2] for r in task_rows(loki, run, "line-limited")]
    summary = proc.summary()
    assert stored == ["short one"]
    assert summary["lines_read"] == 2
    assert summary["lines_sent"] + sum(summary["dropped"].values()) == 2
    assert summary["lines_sent"] == len(stored)
    assert summary["dropped"]["rejected"] == 1
    assert summary_in_loki(loki, run, "line-limited")[1] == exit_summary(proc)


def test_fixture_skips_without_a_binary_and_fails_when_real_loki_is_required(tmp_path: Path) -> None:
    """The real-Loki fixtures never pass silently: no binary -> skip, or fail under SHIPPER_REQUIRE_REAL_LOKI=1."""
    import subprocess
    import sys
    probe = tmp_path / "test_probe.py"
    probe.write_text("from tests.real_loki import loki3, real_lokis  # noqa: F401\n"
                     "def test_probe(loki3):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPPER_")}
    env.update(SHIPPER_TEST_LOKI="", SHIPPER_SERVERS_DIR=str(tmp_path / "none"), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    repo = Path(__file__).resolve().parent.parent
    # Only when no other servers folder is reachable can the skip path be seen.
    if (repo.parent / "shared" / "servers" / "unpack").is_file() or Path("/work/shared/servers/unpack").is_file():
        env["SHIPPER_TEST_LOKI"] = str(tmp_path / "missing-loki")  # a path that is not an executable
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-rs",
           str(probe), "--rootdir", str(tmp_path)]
    skipped = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    assert "no real Loki 3.4: set SHIPPER_TEST_LOKI=/path/to/loki (or SHIPPER_SERVERS_DIR" in skipped.stdout
    failed = subprocess.run(cmd, cwd=repo, env={**env, "SHIPPER_REQUIRE_REAL_LOKI": "1"},
                            capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout + failed.stderr
    assert "no real Loki 3.4: set SHIPPER_TEST_LOKI=/path/to/loki" in failed.stdout


@pytest.mark.parametrize("tenant,limit", [("stream-limited", "per_stream_rate_limit")])
async def test_a_task_over_the_per_stream_rate_limit_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess], tenant: str, limit: str) -> None:
    """Tenant `stream-limited` (20KB/s, burst 40KB): Loki answers 429; the shipper retries until it fits.

    (3.4 refuses the stream's entries of a push together; 2.7 entry by entry, storing part of it.)
    """
    loki, run = any_loki, unique()
    out_file, err_fifo = tmp_path / "stdout.log", tmp_path / "stderr"
    out_lines = [f"{i:05d} " + "p" * 94 for i in range(1200)]  # 120 KB: 3x the burst
    out_file.write_text("\n".join(out_lines) + "\n")
    os.mkfifo(err_fifo)
    before = loki.metric("loki_discarded_samples_total", tenant=tenant, reason=limit)
    proc = await launch(procs, config_for(loki, tmp_path, run, [(out_file, "stdout"), (err_fifo, "stderr")],
                                          tenant=tenant, shutdown_timeout=60.0))
    await proc.wait_for_event("source_opened", path=str(err_fifo))
    fd = open_fifo_writer(err_fifo)
    write_all(fd, b"stderr one\nstderr two\n")
    os.close(fd)
    await proc.wait_for_event("push_failed")  # Loki refused some of it
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    rows = task_rows(loki, run, tenant)
    assert [r[2] for r in rows if r[0]["stream"] == "stdout"] == out_lines
    assert [r[2] for r in rows if r[0]["stream"] == "stderr"] == ["stderr one", "stderr two"]
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"]) == (1202, 1202)
    assert summary["retries"] >= 1
    assert loki.metric("loki_discarded_samples_total", tenant=tenant, reason=limit) > before
