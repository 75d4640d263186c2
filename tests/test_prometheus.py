"""The shipper against the real Prometheus server and the real Pushgateway.

Both are Debian's packages (`prometheus`, `prometheus-pushgateway`), started
on loopback with a free port each (`:0`, read back from their "Listening on"
log line) and a private storage directory. A test is skipped, saying so,
only when the binary is not installed; .ci/run installs both.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shipper import events
from tests.conftest import open_fifo_writer
from tests.loki_receiver import LokiReceiver
from tests.test_server import (
    GIVE_UP, by_label, get, parse_metrics, scrape, scrape_until, start_on_fifo, text_of,
    value, write_all,
)

# Values with "/" and spaces: they must survive the Pushgateway's URL path.
DAG_ID = "team/etl daily"
TASK_ID = "load group/step 1"
AIRFLOW_ENV = {
    "AIRFLOW_CTX_DAG_ID": DAG_ID,
    "AIRFLOW_CTX_TASK_ID": TASK_ID,
    "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-11-25T10:00:00+00:00",
    "AIRFLOW_CTX_TRY_NUMBER": "1",
}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package `{name}`; .ci/run installs it)")
    return path


class GoServer:
    """A Prometheus-ecosystem server process; its logfmt stderr is followed line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stderr is not None
        self._follower = asyncio.create_task(self._follow(proc.stderr))

    @classmethod
    async def start(cls, *argv: str) -> GoServer:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _follow(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            async with self._changed:
                self.log.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        """The first log line matching `pattern`; fails if the process ends first."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            return next((m for line in self.log if (m := regex.search(line))), None)

        async with asyncio.timeout(GIVE_UP), self._changed:
            while (match := find()) is None:
                if self._follower.done() or self.proc.returncode is not None:
                    raise AssertionError(f"{pattern!r} never logged; log:\n" + "\n".join(self.log))
                await self._changed.wait()
        return match

    async def address(self) -> str:
        """host:port from the `msg="Listening on" address=...` line (real port when started on :0)."""
        return (await self.wait_for_line(r'msg="Listening on" address=(\S+)')).group(1)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        await self._follower


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def start_prometheus(tmp_path: Path, target_port: int) -> tuple[GoServer, str]:
    """A real Prometheus scraping 127.0.0.1:`target_port` every second; returns it and its base URL."""
    prometheus = binary("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: shipper\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n")
    server = await GoServer.start(
        prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        "--web.listen-address=127.0.0.1:0", "--log.level=info")
    try:
        address = await server.address()
        await server.wait_for_line(r'msg="Server is ready to receive web requests."')
    except BaseException:
        await server.stop()
        raise
    return server, f"http://{address}"


async def prom_query(http: aiohttp.ClientSession, base: str, query: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": query}) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["status"] == "success", answer
    assert answer["data"]["resultType"] == "vector", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def prom_until(http: aiohttp.ClientSession, base: str, query: str,
                     done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Query every 200 ms until `done(result)`; fail after GIVE_UP seconds."""
    result: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(GIVE_UP):
            while not done(result := await prom_query(http, base, query)):
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"Prometheus never satisfied the condition on {query!r}; last result {result}") from None
    return result


def single_value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


async def test_real_prometheus_scrapes_the_counters_as_lines_flow(
        tmp_path: Path, receiver: LokiReceiver, http: aiohttp.ClientSession) -> None:
    binary("prometheus")
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    prometheus = None
    try:
        prometheus, base = await start_prometheus(tmp_path, port)
        fd = open_fifo_writer(fifo)
        sent = 0
        for chunk in range(3):
            lines = [f"chunk {chunk} line {i}" for i in range(700)]
            await asyncio.to_thread(write_all, fd, text_of(lines))
            sent += len(lines)
            # Prometheus itself reports the counter at exactly the lines shipped so far.
            result = await prom_until(http, base, "shipper_lines_sent_total",
                                      lambda r, n=sent: single_value(r) == n)  # type: ignore[misc]
        assert result[0]["metric"] == {"__name__": "shipper_lines_sent_total", "job": "shipper",
                                       "instance": f"127.0.0.1:{port}"}
        final = await scrape(port)
        assert value(final, "shipper_lines_sent_total") == sent
        read = await prom_until(http, base, f'shipper_source_lines_read_total{{source="{fifo}"}}',
                                lambda r: single_value(r) == sent)
        assert read[0]["metric"]["source"] == str(fifo)
        batches = value(final, "shipper_batches_sent_total")
        assert batches == len(receiver.requests)
        await prom_until(http, base, 'shipper_push_requests_total{status="204"}',
                         lambda r: single_value(r) == batches)
        await prom_until(http, base, "shipper_push_duration_seconds_count",
                         lambda r: single_value(r) == batches)
        await prom_until(http, base, "sum(shipper_lines_dropped_total)", lambda r: single_value(r) == 0)
        up = await prom_query(http, base, 'up{job="shipper"}')
        assert single_value(up) == 1
        # The live exposition passes Prometheus' own lint.
        body = (await get(port, "/metrics")).body
        lint = subprocess.run([binary("promtool"), "check", "metrics"], input=body, capture_output=True,
                              timeout=60, check=False)
        assert (lint.returncode, lint.stdout, lint.stderr) == (0, b"", b""), body.decode()
        os.close(fd)
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == [
            f"chunk {c} line {i}" for c in range(3) for i in range(700)]
    finally:
        if prometheus is not None:
            await prometheus.stop()
        await proc.kill()


def b64(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


async def start_pushgateway() -> tuple[GoServer, str]:
    pushgateway = binary("prometheus-pushgateway")
    # Debian's build persists to /var/lib/prometheus by default: tests start empty.
    server = await GoServer.start(pushgateway, "--web.listen-address=127.0.0.1:0", "--log.level=info",
                                  "--persistence.file=")
    try:
        address = await server.address()
    except BaseException:
        await server.stop()
        raise
    return server, f"http://{address}"


async def pushgateway_samples(http: aiohttp.ClientSession, base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


async def test_real_pushgateway_gets_the_final_metrics_grouped_by_task(
        tmp_path: Path, receiver: LokiReceiver, http: aiohttp.ClientSession) -> None:
    binary("prometheus-pushgateway")
    gateway, base = await start_pushgateway()
    proc = None
    try:
        proc, fifo, port = await start_on_fifo(tmp_path, receiver, env=AIRFLOW_ENV,
                                               metrics={"pushgateway_url": base + "/"})
        lines = [f"task line {i}" for i in range(1234)]
        fd = open_fifo_writer(fifo)
        await asyncio.to_thread(write_all, fd, text_of(lines))
        await receiver.wait_for_entries(len(lines), stream="stdout")
        await scrape_until(port, lambda s: value(s, "shipper_lines_sent_total") == len(lines), "all lines sent")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        os.close(fd)
        assert len(proc.events("exit_pushed", target="pushgateway")) == 1
        assert proc.events("exit_push_failed", target="pushgateway") == proc.events("exit_push_refused", target="pushgateway") == []

        samples = await pushgateway_samples(http, base)
        group = {"job": "shipper", "dag_id": DAG_ID, "task_id": TASK_ID, "instance": ""}

        def pushed(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted({**group, **labels}.items())))]

        summary = proc.summary()
        assert pushed("shipper_lines_sent_total") == len(lines) == summary["lines_sent"]
        assert pushed("shipper_source_lines_read_total", source=str(fifo)) == len(lines)
        assert pushed("shipper_batches_sent_total") == summary["batches_sent"]
        assert pushed("shipper_pending_lines") == 0
        assert pushed("shipper_sources_open") == 0
        for reason in events.DROP_REASONS:
            assert pushed("shipper_lines_dropped_total", reason=reason) == 0
        assert pushed("push_time_seconds") > 0
        assert pushed("push_failure_time_seconds") == 0
        # Exactly one group was pushed, under the task's labels.
        groups = {labels for (name, labels), _ in samples.items() if name == "push_time_seconds"}
        assert groups == {tuple(sorted(group.items()))}

        # The group is addressable by the documented base64 grouping key.
        url = f"{base}/metrics/job/shipper/dag_id@base64/{b64(DAG_ID)}/task_id@base64/{b64(TASK_ID)}"
        async with http.delete(url) as resp:
            assert resp.status == 202
        after = await pushgateway_samples(http, base)
        assert not [key for key in after if key[0] == "shipper_lines_sent_total"]
    finally:
        await gateway.stop()
        if proc is not None:
            await proc.kill()


async def test_summary_in_loki_matches_the_last_scrape_before_sigterm(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fifo, port = await start_on_fifo(tmp_path, receiver, env=AIRFLOW_ENV, labels={"cluster": "prod"})
    try:
        lines = [f"audited {i}" for i in range(4321)]
        fd = open_fifo_writer(fifo)
        await asyncio.to_thread(write_all, fd, text_of(lines))
        await receiver.wait_for_entries(len(lines), stream="stdout")
        last = await scrape_until(port, lambda s: value(s, "shipper_lines_sent_total") == len(lines),
                                  "all lines sent")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        os.close(fd)
        (entry,) = receiver.entries(job="shipper")
        key = (("cluster", "prod"), ("dag_id", DAG_ID), ("job", "shipper"), ("service_name", "shipper"),
               ("task_id", TASK_ID))
        assert receiver.streams()[key] == [entry]
        record = json.loads(entry.line)
        assert record["lines_sent"] == value(last, "shipper_lines_sent_total") == len(lines)
        assert record["lines_read"] == value(last, "shipper_source_lines_read_total", source=str(fifo))
        assert record["bytes_sent"] == value(last, "shipper_bytes_sent_total")
        assert record["bytes_read"] == value(last, "shipper_source_bytes_read_total", source=str(fifo))
        assert record["batches_sent"] == value(last, "shipper_batches_sent_total")
        assert record["retries"] == value(last, "shipper_push_retries_total") == 0
        assert record["dropped"] == by_label(last, "shipper_lines_dropped_total", "reason")
        assert (record["code"], record["reason"]) == (0, "SIGTERM")
        # The Loki entry is the stderr summary, field for field.
        assert record == {k: v for k, v in proc.summary().items() if k not in ("ts", "level", "event", "msg")}
        assert dict(entry.metadata) == {"run_id": AIRFLOW_ENV["AIRFLOW_CTX_DAG_RUN_ID"], "try_number": "1"}
    finally:
        await proc.kill()


async def test_unreachable_pushgateway_costs_a_log_line_and_nothing_else(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        proc, fifo, port = await start_on_fifo(tmp_path, receiver, env=AIRFLOW_ENV,
                                               metrics={"pushgateway_url": url})
        try:
            fd = open_fifo_writer(fifo)
            os.write(fd, b"one\ntwo\n")
            os.close(fd)
            assert await proc.wait() == 0
        finally:
            await proc.kill()
    (failed,) = proc.events("exit_push_failed", target="pushgateway")
    assert failed["level"] == "warn"
    assert failed["error"].startswith("ConnectionRefusedError"), failed
    assert receiver.lines(stream="stdout") == ["one", "two"]
    (entry,) = receiver.entries(job="shipper")
    assert json.loads(entry.line)["lines_sent"] == 2


async def test_pushgateway_group_uses_the_same_cleaned_labels_as_loki(
        tmp_path: Path, receiver: LokiReceiver, http: aiohttp.ClientSession) -> None:
    binary("prometheus-pushgateway")
    gateway, base = await start_pushgateway()
    proc = None
    try:
        # An undecodable byte in the environment reaches Python as a lone surrogate.
        env = {**AIRFLOW_ENV, "AIRFLOW_CTX_DAG_ID": "bad\udcffdag"}
        proc, fifo, port = await start_on_fifo(tmp_path, receiver, env=env, metrics={"pushgateway_url": base})
        fd = open_fifo_writer(fifo)
        os.write(fd, b"x\n")
        os.close(fd)
        assert await proc.wait() == 0
        assert {dict(k)["dag_id"] for k in receiver.streams()} == {"bad\ufffddag"}
        samples = await pushgateway_samples(http, base)
        group = (("dag_id", "bad\ufffddag"), ("instance", ""), ("job", "shipper"), ("task_id", TASK_ID))
        assert samples[("shipper_lines_sent_total", group)] == 1
    finally:
        await gateway.stop()
        if proc is not None:
            await proc.kill()
