"""Fault suite against a real Loki 3.4.6: the faults of tests/test_faults.py
that a TCP proxy between the real shipper and the real Loki can put there.

The proxy (`FaultProxy`, below) reads each HTTP request the shipper sends
and, per push, answers 503 itself, or forwards it to Loki and passes the
answer back, or forwards it and then drops Loki's answer and resets the
connection (Loki stored the batch; the shipper never learns it). It can
also stop listening (connection refused) and listen again on the same port.
tests/test_faults.py's `AnswerEatingProxy` cannot stand in: it pipes bytes,
so it cannot count pushes, answer by itself, or reset after Loki answered.

Each test ships into its own `test_run` label value in tenant "default",
waits for the shipper's exit, and reads back from Loki every line once, in
order, with the task's labels, and the shipper's exit summary (stderr and
the `{job="shipper"}` entry) with `lines_sent` equal to what Loki stored.
Synchronisation is on the shipper's log records, its exit, or the proxy's
own request counter; only reading Loki back is polled (an external server).

Not covered here (tests/test_faults.py only): reset mid-body and 413
splits (a real Loki answers 413 only past its 100 MB gRPC limit).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import launch, open_fifo_writer
from tests.real_loki import RealLoki, free_port, loki3, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess
from tests.test_real_loki import (RUN_META, config_for, exit_summary, stored_meta, summary_in_loki,
                                   task_labels, task_rows, unique, wait_for_lines)
from tests.test_sources import write_all

PUSH_PATH = b"/loki/api/v1/push"
TENANT = "default"


def numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i:05d}" for i in range(n)]


def text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


class FaultProxy:
    """An HTTP-aware TCP proxy in front of a real Loki, one request per connection.

    `plan` holds one action per coming push (POST /loki/api/v1/push), used
    up in order; when it is empty pushes are forwarded. Other requests (the
    shipper's rare query_range) are always forwarded. Actions:
      "503"     answer 503 without asking Loki;
      "forward" pass the request to Loki and its answer back;
      "eat"     pass the request to Loki, read its whole answer (Loki stored
                the batch), then reset the shipper's connection instead;
      "hang"    never answer and never ask Loki (a gateway that hangs): the
                shipper's request timeout ends it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PUSH_PATH.decode()}"
        self.plan: list[str] = []
        self.pushes: list[tuple[str, int | None]] = []  # (action, Loki's status or None)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def listen(self) -> None:
        assert self._server is None
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    def refuse(self) -> None:
        """Stop listening: connections are refused (as when nothing listens on Loki's port)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def stop(self) -> None:
        self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_pushes(self, n: int, timeout: float = 30.0) -> None:
        """Until `n` pushes were handled to the end (answered, or their answer eaten)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.pushes) >= n), timeout)

    async def _record(self, action: str, status: int | None) -> None:
        async with self._changed:
            self.pushes.append((action, status))
            self._changed.notify_all()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one_request(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the shipper went away, or stop(): end quietly
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head[:-4].split(b"\r\n")
        length = 0
        kept = []
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() != b"connection":
                kept.append(line)
        body = await reader.readexactly(length)
        method, target, _ = request_line.split(b" ", 2)
        is_push = method == b"POST" and target.split(b"?")[0] == PUSH_PATH
        action = self.plan.pop(0) if is_push and self.plan else "forward"
        if action == "hang":
            await self._record(action, None)
            await reader.read()  # until the shipper gives up and closes
            return
        if action == "503":
            answer = b"overloaded\n"
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            await self._record(action, None)
            return
        # One request per upstream connection: Loki closes after its answer, which
        # then ends at EOF (no response framing to parse here).
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            up_writer.write(b"\r\n".join([request_line, *kept, b"Connection: close"]) + b"\r\n\r\n" + body)
            await up_writer.drain()
            response = await up_reader.read()
        finally:
            up_writer.close()
        status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None
        if action == "eat":
            # Loki has answered (and stored the push): reset instead of passing it on.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.write(response)
            await writer.drain()
        if is_push:
            await self._record(action, status)


def proxied(config: str, loki: RealLoki, proxy: FaultProxy, **loki_settings: Any) -> str:
    """`config_for`'s config with the proxy as Loki's URL, and more [loki] settings."""
    assert f'url = "{loki.push_url}"' in config
    config = config.replace(f'url = "{loki.push_url}"', f'url = "{proxy.url}"')
    extra = "".join(f"{k} = {v!r}\n" for k, v in loki_settings.items())
    return config.replace("[loki]\n", "[loki]\n" + extra, 1)


def fifo_config(loki: RealLoki, tmp_path: Path, run: str, proxy: FaultProxy, **top: Any) -> str:
    """The task's stdout on the FIFO `start_on_fifo` makes, shipped through `proxy`."""
    return proxied(config_for(loki, tmp_path, run, [(tmp_path / "stdout", "stdout")], **top), loki, proxy)


async def start_proxy(loki: RealLoki, listening: bool = True) -> FaultProxy:
    proxy = FaultProxy(loki.http_port)
    if listening:
        await proxy.listen()
    return proxy


async def start_on_fifo(tmp_path: Path, procs: list[ShipperProcess], config: str) -> tuple[ShipperProcess, int]:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, config)
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, open_fifo_writer(fifo)


def stored_count(loki: RealLoki, run: str) -> int:
    """Entries Loki stored for the task (the metric path: not hidden when identical and adjacent)."""
    result = loki.instant(f'sum(count_over_time({{test_run="{run}", stream=~"stdout|stderr"}}[1h]))', TENANT)
    return int(result[0][1]) if result else 0


def assert_stored_exactly(loki: RealLoki, run: str, expected: list[str]) -> None:
    """Every expected line once, in order, with the task's labels and metadata; nothing else."""
    rows = task_rows(loki, run, TENANT)
    lines = [line for _, _, line, _ in rows]
    assert len(lines) == len(expected), (len(lines), len(expected))
    assert lines == expected
    assert len(set(lines)) == len(lines)
    assert all(labels == task_labels(loki, run, "stdout") for labels, _, _, _ in rows), rows[0][0]
    assert all(meta == stored_meta(loki, RUN_META) for _, _, _, meta in rows), rows[0][3]
    ts = [t for _, t, _, _ in rows]
    assert ts == sorted(set(ts))  # each line its own timestamp, in the order written
    assert stored_count(loki, run) == len(expected)


def assert_summary_matches_loki(loki: RealLoki, proc: ShipperProcess, run: str, sent: int) -> dict[str, Any]:
    summary = proc.summary()
    assert summary["lines_sent"] == sent == stored_count(loki, run)
    assert set(summary["dropped"].values()) == {0}, summary["dropped"]
    _, stored = summary_in_loki(loki, run, TENANT)
    assert stored == exit_summary(proc)
    return summary


# --- 503 for a while, then recovery ------------------------------------------------------------

async def test_503_from_the_proxy_for_a_while_then_recovery(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = loki3, unique()
    proxy = await start_proxy(loki)
    refusals = 6
    proxy.plan = ["503"] * refusals
    try:
        proc, fd = await start_on_fifo(tmp_path, procs, fifo_config(loki, tmp_path, run, proxy))
        before, during = numbered("before", 300), numbered("during", 300)
        write_all(fd, text(before))
        await proc.wait_for_event("push_failed", count=refusals // 2, outcome="503")
        write_all(fd, text(during))  # lines keep coming while "Loki" fails
        await proc.wait_for_event("push_failed", count=refusals, outcome="503")
        os.close(fd)  # end of input: the shipper delivers and exits
        assert await proc.wait() == 0
    finally:
        await proxy.stop()
    assert [a for a, _ in proxy.pushes[:refusals]] == ["503"] * refusals
    assert {s for a, s in proxy.pushes[refusals:]} == {204}  # then every push reached Loki and was stored
    assert_stored_exactly(loki, run, before + during)
    summary = assert_summary_matches_loki(loki, proc, run, 600)
    assert (summary["code"], summary["lines_read"], summary["retries"]) == (0, 600, refusals)


# --- connection refused, then Loki comes up -------------------------------------------------------

async def test_connection_refused_for_a_while_then_loki_comes_up(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = loki3, unique()
    proxy = await start_proxy(loki, listening=False)
    try:
        proc, fd = await start_on_fifo(tmp_path, procs, fifo_config(loki, tmp_path, run, proxy))
        before, during, after = numbered("before", 200), numbered("during", 200), numbered("after", 200)
        write_all(fd, text(before))
        await proc.wait_for_event("push_failed", count=3, outcome="connection_refused")
        write_all(fd, text(during))
        await proc.wait_for_event("push_failed", count=6, outcome="connection_refused")
        await proxy.listen()  # Loki comes up
        await proxy.wait_pushes(1)
        write_all(fd, text(after))
        os.close(fd)
        assert await proc.wait() == 0
    finally:
        await proxy.stop()
    failed = proc.events("push_failed")
    assert {r["outcome"] for r in failed} == {"connection_refused"}
    assert {s for _, s in proxy.pushes} == {204}
    assert_stored_exactly(loki, run, before + during + after)
    summary = assert_summary_matches_loki(loki, proc, run, 600)
    assert (summary["code"], summary["lines_read"], summary["retries"]) == (0, 600, len(failed))


# --- the answer lost after Loki stored the push ----------------------------------------------------

async def test_answer_lost_after_loki_stored_the_push_is_deduplicated_by_loki(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = loki3, unique()
    proxy = await start_proxy(loki)
    proxy.plan = ["eat"]
    try:
        proc, fd = await start_on_fifo(tmp_path, procs, fifo_config(loki, tmp_path, run, proxy))
        lines = numbered("line", 300)
        write_all(fd, text(lines))  # 3.3 KB < PIPE_BUF: one read, one batch
        await proxy.wait_pushes(1)
        assert proxy.pushes[0] == ("eat", 204)  # Loki stored it; the shipper got a reset instead
        await proc.wait_for_event("push_failed")
        os.close(fd)
        assert await proc.wait() == 0
    finally:
        await proxy.stop()
    failed = proc.events("push_failed")
    assert len(failed) == 1 and failed[0]["outcome"] in {"connection_reset", "transport_error"}, failed
    assert {s for _, s in proxy.pushes} == {204}  # the retry too: Loki took it, and dropped it as a duplicate
    assert_stored_exactly(loki, run, lines)
    summary = assert_summary_matches_loki(loki, proc, run, 300)
    assert (summary["code"], summary["lines_read"], summary["retries"]) == (0, 300, 1)


# --- SIGTERM during an outage with a spool, then the next run replays -------------------------------

@pytest.mark.parametrize("spooled_as, replayed_as", [
    ("gzip", "gzip"),
    ("snappy", "gzip"),  # batches spooled as real snappy (a version before gzip), replayed by a gzip one
    ("gzip", "none"),
])
async def test_sigterm_while_refused_with_spool_exits_4_and_the_next_run_replays(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess], spooled_as: str,
        replayed_as: str) -> None:
    """[loki] compression may change between the runs: every spooled body says how it was
    compressed (shipper.encoder.compress), and Loki reads each as it was sent."""
    loki, run = loki3, unique()
    spool = tmp_path / "spool"
    proxy = await start_proxy(loki, listening=False)
    n = 500
    lines = numbered("line", n)
    try:
        config = proxied(config_for(loki, tmp_path, run, [(tmp_path / "stdout", "stdout")], spool_dir=str(spool),
                                    shutdown_timeout=1.0), loki, proxy, compression=spooled_as)
        first, fd = await start_on_fifo(tmp_path, procs, config)
        write_all(fd, text(lines))
        await first.wait_for_event("push_failed", outcome="connection_refused")
        first.signal(signal.SIGTERM)
        assert await first.wait() == 4
        os.close(fd)
        summary = first.summary()
        assert (summary["code"], summary["lines_read"], summary["lines_sent"], summary["lines_spooled"]) == (
            4, n, 0, n)
        assert set(summary["dropped"].values()) == {0}
        assert first.events("lines_left_in_spool")[0]["lines"] == n
        assert proxy.pushes == []  # nothing reached Loki
        assert sorted(spool.glob("*.batch"))

        await proxy.listen()  # Loki is back
        config = config.replace(f"compression = {spooled_as!r}", f"compression = {replayed_as!r}")
        assert f"compression = {replayed_as!r}" in config
        second = await launch(procs, config)
        assert (await second.wait_for_event("spool_replay"))["lines"] == n
        await wait_for_lines(loki, f'{{test_run="{run}", stream="stdout"}}', TENANT, n)
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
    finally:
        await proxy.stop()
    assert {s for _, s in proxy.pushes} == {204}
    assert_stored_exactly(loki, run, lines)
    assert sorted(spool.glob("*.batch")) == []
    summary = assert_summary_matches_loki(loki, second, run, n)
    assert (summary["code"], summary["lines_spooled"]) == (0, 0)


# --- a gateway that never answers ----------------------------------------------------------------

async def test_a_push_never_answered_is_timed_out_and_resent(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = loki3, unique()
    proxy = await start_proxy(loki)
    proxy.plan = ["hang", "hang"]
    try:
        config = proxied(config_for(loki, tmp_path, run, [(tmp_path / "stdout", "stdout")]), loki, proxy)
        assert "\ntimeout = 5.0\n" in config
        config = config.replace("\ntimeout = 5.0\n", "\ntimeout = 1.0\n")
        proc, fd = await start_on_fifo(tmp_path, procs, config)
        lines = numbered("line", 300)
        write_all(fd, text(lines))
        await proc.wait_for_event("push_failed", count=2, outcome="timeout")
        os.close(fd)
        assert await proc.wait() == 0
    finally:
        await proxy.stop()
    assert [a for a, _ in proxy.pushes[:2]] == ["hang", "hang"]
    assert_stored_exactly(loki, run, lines)
    summary = assert_summary_matches_loki(loki, proc, run, 300)
    assert (summary["code"], summary["retries"]) == (0, 2)


# --- SIGKILL with a push stored but unacknowledged, a spool, then a restart -------------------------

async def test_sigkill_with_a_stored_unacknowledged_push_and_spool_then_restart(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    """The replay resends the push Loki stored (same timestamps): Loki's dedup drops it, once."""
    from tests.test_faults import acknowledged_offset, append, batch_files, poll

    loki, run = loki3, unique()
    log, spool = tmp_path / "task.log", tmp_path / "spool"
    proxy = await start_proxy(loki)
    try:
        config = proxied(config_for(loki, tmp_path, run, [(log, "stdout")], spool_dir=str(spool)), loki, proxy)
        phases = [numbered(f"phase{k}", 300) for k in range(1, 5)]
        append(log, phases[0])
        first = await launch(procs, config)
        await poll(lambda: acknowledged_offset(spool / "checkpoint.json", log) == len(text(phases[0])),
                   "phase 1 to be acknowledged")
        proxy.plan = ["eat", "hang"]  # the next push stored, its answer lost; the one after never answered
        append(log, phases[1])
        await proxy.wait_pushes(2)
        assert proxy.pushes[1] == ("eat", 204)
        append(log, phases[2])  # read and spooled behind the batch in flight
        await poll(lambda: len(batch_files(spool)) >= 2, "two spooled batches")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        append(log, phases[3])  # written while no shipper runs
        second = await launch(procs, config)
        assert (await second.wait_for_event("spool_replay"))["lines"] >= 300
        await wait_for_lines(loki, f'{{test_run="{run}", stream="stdout"}}', TENANT, 1200)
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
    finally:
        await proxy.stop()
    assert_stored_exactly(loki, run, [line for phase in phases for line in phase])
    assert batch_files(spool) == []
