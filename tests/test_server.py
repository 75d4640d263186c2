"""The metrics and health endpoint of the real shipper process, over real TCP sockets.

Requests are written byte for byte on a raw socket (no HTTP client library
between the test and the server), so malformed and oversized requests are
exactly what the test says they are. /metrics is parsed with
`prometheus_client`'s parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper import events
from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Every wait below is for an event; this only bounds a broken run.
GIVE_UP = 60.0


# --- a tiny HTTP/1.1 client on a raw socket --------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def request_bytes(method: str, path: str, *extra_headers: str) -> bytes:
    # One request per connection here (read to EOF); keep-alive has its own test.
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def parse_reply(data: bytes, *, head_only: bool = False) -> Reply:
    """One response as sent by a `Connection: close` server (the body runs to EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, code, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not head_only:
        assert int(headers["content-length"]) == len(body), (headers, body[:200])
    return Reply(int(code), headers, body)


async def exchange(port: int, raw: bytes, *, head_only: bool = False) -> Reply:
    """Send `raw` on a fresh connection, read the answer to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(GIVE_UP):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return parse_reply(data, head_only=head_only)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    return await exchange(port, request_bytes(method, path), head_only=method == "HEAD")


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(port: int) -> Samples:
    reply = await get(port, "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_metrics(reply.body.decode())


async def scrape_until(port: int, done: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape every 50 ms until `done(samples)`; fail after GIVE_UP seconds."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(GIVE_UP):
            while True:
                samples = await scrape(port)
                if done(samples):
                    return samples
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last scrape: {samples}") from None


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


# --- the shipper ------------------------------------------------------------------

async def metrics_port(proc: ShipperProcess) -> int:
    record = await proc.wait_for_event("metrics_listening")
    assert record["host"] == "127.0.0.1"
    port = record["port"]
    assert isinstance(port, int) and port > 0
    return port


async def start_on_fifo(tmp_path: Path, receiver: LokiReceiver, *,
                        env: dict[str, str] | None = None,
                        **config: object) -> tuple[ShipperProcess, Path, int]:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")], **config),  # type: ignore[arg-type]
                                      env=env)
    port = await metrics_port(proc)
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, fifo, port


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def text_of(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# --- tests --------------------------------------------------------------------------

async def test_metrics_count_exactly_the_lines_shipped(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    before = await scrape(port)
    assert value(before, "shipper_lines_sent_total") == 0
    assert value(before, "shipper_sources_open") == 1
    lines = [f"line {i} " + "x" * (i % 97) for i in range(2500)]
    fd = open_fifo_writer(fifo)
    await asyncio.to_thread(write_all, fd, text_of(lines))
    await receiver.wait_for_entries(len(lines), stream="stdout")
    # Loki stores before it answers: the counter moves once the answer is read.
    after = await scrape_until(port, lambda s: value(s, "shipper_lines_sent_total") == len(lines),
                               f"shipper_lines_sent_total == {len(lines)}")
    line_bytes = sum(len(line) for line in lines)
    pushes = list(receiver.requests)  # the exit summary adds one later
    assert [r.status for r in pushes] == [204] * len(pushes)
    assert value(after, "shipper_source_lines_read_total", source=str(fifo)) == len(lines)
    assert value(after, "shipper_source_bytes_read_total", source=str(fifo)) == line_bytes
    assert value(after, "shipper_bytes_sent_total") == line_bytes
    assert value(after, "shipper_batches_sent_total") == len(pushes)
    assert by_label(after, "shipper_push_requests_total", "status") == {"204": len(pushes)}
    assert value(after, "shipper_push_body_bytes_total") == sum(r.wire_bytes for r in pushes)
    assert value(after, "shipper_push_retries_total") == 0
    assert by_label(after, "shipper_lines_dropped_total", "reason") == dict.fromkeys(events.DROP_REASONS, 0)
    assert value(after, "shipper_push_duration_seconds_count") == len(pushes)
    assert value(after, "shipper_batch_size_bytes_count") == len(pushes)
    assert value(after, "shipper_batch_size_bytes_sum") == line_bytes
    assert value(after, "shipper_batch_size_bytes_bucket", le="+Inf") == len(pushes)
    assert (value(after, "shipper_pending_lines"), value(after, "shipper_pending_bytes")) == (0, 0)
    assert value(after, "shipper_sources_open") == 1
    assert value(after, "shipper_last_push_success_timestamp_seconds") > 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "process_resident_memory_bytes") > 0
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == lines
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"], summary["bytes_sent"], summary["batches_sent"]) == (
        len(lines), len(lines), line_bytes, len(pushes))


async def test_routes_methods_and_malformed_requests(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    try:
        healthz = await get(port, "/healthz")
        assert (healthz.status, healthz.body) == (200, b"ok\n")
        assert healthz.headers["content-type"] == "text/plain; charset=utf-8"
        assert healthz.headers["connection"] == "close"
        # Source open, nothing read yet: no push was due, so ready.
        ready = await get(port, "/ready")
        assert (ready.status, ready.body) == (200, b"ready\n")
        assert (await get(port, "/metrics?name[]=shipper_lines_sent_total")).status == 200

        for path in ("/other", "/", "/metrics/", "/healthz/x", "/METRICS"):
            reply = await get(port, path)
            assert (reply.status, reply.body) == (404, b"not found: try /metrics, /healthz or /ready\n"), path
        for method, path in (("POST", "/metrics"), ("PUT", "/ready"), ("DELETE", "/healthz")):
            reply = await exchange(port, request_bytes(method, path, "Content-Length: 0"))
            assert (reply.status, reply.body) == (405, b"method not allowed: use GET\n"), (method, path)

        # A POST with a body is refused too, its body unread.
        post = request_bytes("POST", "/metrics", "Content-Length: 65536") + b"p" * 65536
        reply = await exchange(port, post)
        assert (reply.status, reply.body) == (405, b"method not allowed: use GET\n")

        head = await get(port, "/healthz", method="HEAD")
        assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "3")
        head = await get(port, "/metrics", method="HEAD")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert int(head.headers["content-length"]) > 0

        for raw in (b"GARBAGE\r\n\r\n",                           # no method/target/version
                    b"GET /metrics\r\n\r\n",                      # HTTP/0.9-style, no version
                    b"GET /metrics HTTP/1.1\r\n\r\n",             # HTTP/1.1 without Host
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n"):  # TLS hello
            reply = await exchange(port, raw)
            assert reply.status == 400, raw
            assert reply.body.startswith(b"bad request: "), reply
        # The malformed ones disturbed nothing.
        assert (await get(port, "/healthz")).status == 200
    finally:
        await proc.kill()


async def test_ready_reports_why_not_while_source_waits_and_loki_fails(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    log = tmp_path / "later.log"
    # The first push gets 503, its retry hangs until the client's 1 s timeout,
    # the next retry succeeds: /ready is observed in each state without racing.
    receiver.add_actions(Action.status(503, "ingester unavailable"), Action.hang())
    proc = await ShipperProcess.start(make_config(receiver.url, [(log, "stdout")], loki={"timeout": 1.0}))
    try:
        port = await metrics_port(proc)
        ready = await get(port, "/ready")
        assert (ready.status, ready.body) == (503, f"not ready: waiting for source {log}\n".encode())
        # Waiting is not unhealthy.
        assert (await get(port, "/healthz")).body == b"ok\n"
        assert value(await scrape(port), "shipper_sources_open") == 0

        log.write_bytes(b"one\ntwo\nthree\n")
        await proc.wait_for_event("source_opened", path=str(log))
        await receiver.wait_for_requests(2)  # the 503 was handled; its retry now hangs
        ready = await get(port, "/ready")
        assert (ready.status, ready.body) == (503, b"not ready: the last push failed; retrying\n")
        assert (await get(port, "/healthz")).body == b"ok\n"
        failing = await scrape(port)
        assert value(failing, "shipper_pending_lines") == 3
        assert value(failing, "shipper_pending_bytes") == len("one" "two" "three")
        assert value(failing, "shipper_lines_sent_total") == 0

        async with asyncio.timeout(GIVE_UP):
            while (ready := await get(port, "/ready")).status != 200:
                assert ready.status == 503, ready
                await asyncio.sleep(0.05)
        assert ready.body == b"ready\n"
        recovered = await scrape(port)
        assert by_label(recovered, "shipper_push_requests_total", "status") == {"503": 1, "timeout": 1, "204": 1}
        assert value(recovered, "shipper_push_retries_total") == 2
        assert value(recovered, "shipper_lines_sent_total") == 3
        assert value(recovered, "shipper_pending_lines") == 0
        assert value(recovered, "shipper_sources_open") == 1
        assert value(recovered, "shipper_push_duration_seconds_count") == 3
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == ["one", "two", "three"]
    finally:
        await proc.kill()


async def test_bad_clients_never_disturb_shipping(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    fd = open_fifo_writer(fifo)
    first = [f"first {i}" for i in range(500)]
    second = [f"second {i}" for i in range(500)]
    await asyncio.to_thread(write_all, fd, text_of(first))

    # A client that connects and never sends a byte.
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    # ... does not block other scrapes.
    assert (await get(port, "/healthz")).status == 200
    await scrape(port)

    # A 100 KB header: refused, answered as a client error.
    huge = request_bytes("GET", "/metrics", "X-Padding: " + "a" * 100_000)
    reply = await exchange(port, huge)
    assert reply.status in (400, 431), reply
    assert reply.body.startswith(b"bad request: "), reply
    # A 100 KB request line too.
    reply = await exchange(port, request_bytes("GET", "/metrics?" + "q" * 100_000))
    assert reply.status in (400, 414, 431), reply

    await asyncio.to_thread(write_all, fd, text_of(second))
    await receiver.wait_for_entries(len(first) + len(second), stream="stdout")
    # The idle client is dropped by the server's request timeout (5 s), unanswered,
    # while the shipper runs on.
    async with asyncio.timeout(GIVE_UP):
        assert await idle_reader.read() == b""
    idle_writer.close()
    assert proc.proc.returncode is None
    assert (await get(port, "/healthz")).status == 200
    os.close(fd)
    assert await proc.wait() == 0
    # Every line arrived exactly once, in order.
    assert receiver.lines(stream="stdout") == first + second
    assert receiver.dedup_dropped == 0
    assert proc.summary()["lines_sent"] == len(first) + len(second)


async def test_a_client_connected_at_exit_does_not_garble_stderr(tmp_path: Path, receiver: LokiReceiver) -> None:
    # ShipperProcess fails the test on any stderr line that is not one JSON record.
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    partial_reader, partial_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        partial_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert (await get(port, "/healthz")).status == 200  # both connections are being handled
        fd = open_fifo_writer(fifo)
        os.write(fd, b"last words\n")
        os.close(fd)
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == ["last words"]
        assert proc.summary()["code"] == 0
        # The server closed both, unanswered.
        for reader in (idle_reader, partial_reader):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
    finally:
        for writer in (idle_writer, partial_writer):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await proc.kill()


async def how_it_ends(reader: asyncio.StreamReader) -> str:
    """Await the server's end of a connection: "reset" (evicted: aborted) or "eof" (closed)."""
    try:
        async with asyncio.timeout(GIVE_UP):
            while await reader.read(65536):
                pass  # answers to earlier requests
    except ConnectionResetError:
        return "reset"
    return "eof"


async def test_at_the_limit_a_probe_is_served_and_the_connection_idle_longest_is_closed(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    from shipper.server import MAX_CONNECTIONS

    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    idle = []
    try:
        # Every slot held by a kept-alive connection, answered and idle, oldest first.
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(GIVE_UP):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head.lower()
                assert await reader.readexactly(3) == b"ok\n"
            idle.append((reader, writer))
        # A probe is served all the same ...
        reply = await get(port, "/healthz")
        assert (reply.status, reply.body) == (200, b"ok\n")
        # ... by closing (aborting) the connection idle longest; the others are
        # closed (FIN) once idle for KEEPALIVE_IDLE, never having sent another request.
        ends = await asyncio.gather(*(how_it_ends(r) for r, _ in idle))
        assert ends == ["reset"] + ["eof"] * (MAX_CONNECTIONS - 1)
        fd = open_fifo_writer(fifo)
        os.write(fd, b"still shipping\n")
        os.close(fd)
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == ["still shipping"]
    finally:
        for _, w in idle:
            w.close()
        await proc.kill()


async def test_with_no_idle_connection_the_slowest_incomplete_request_makes_room(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    from shipper.server import MAX_CONNECTIONS

    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    slow = []
    try:
        async def slowloris() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a head never finished
            await writer.drain()
            slow.append((reader, writer))

        # Every slot held by a request that never completes, oldest first.
        for _ in range(MAX_CONNECTIONS):
            await slowloris()
        reply = await get(port, "/healthz")
        assert (reply.status, reply.body) == (200, b"ok\n")
        # The probe's slot is free again once answered: one more slowloris
        # takes it, and the next probe closes the (now) oldest for its own.
        await slowloris()
        reply = await get(port, "/healthz")
        assert (reply.status, reply.body) == (200, b"ok\n")
        ends = await asyncio.gather(*(how_it_ends(r) for r, _ in slow))
        # The rest are dropped unanswered by REQUEST_TIMEOUT.
        assert ends == ["reset"] * 2 + ["eof"] * (MAX_CONNECTIONS - 1)
        fd = open_fifo_writer(fifo)
        os.close(fd)
        assert await proc.wait() == 0
    finally:
        for _, w in slow:
            w.close()
        await proc.kill()


@pytest.mark.filterwarnings("always::UserWarning")
async def test_healthz_answers_every_probe_under_1000_idle_and_many_slowloris_clients(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    # The kubelet restarts the sidecar after failureThreshold (3) failed probes:
    # before, 16 idle keep-alive connections failed every probe for 120 s.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_idle, want_slow, rounds, wave = 1000, 300, 40, 10
    wanted = want_idle + want_slow + 2 * wave * rounds
    reserve = 256  # the test's own descriptors: the receiver, pipes, the probes
    limit = wanted + reserve if hard == resource.RLIM_INFINITY else min(hard, wanted + reserve)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    scale = min(1.0, (limit - reserve) / wanted)
    n_idle, n_slow, wave = int(want_idle * scale), int(want_slow * scale), max(1, int(wave * scale))
    if scale < 1.0:
        warnings.warn(f"RLIMIT_NOFILE hard limit {hard} is low: {n_idle} idle and {n_slow} slowloris "
                      f"clients, waves of {wave}, instead of {want_idle}, {want_slow} and 10", UserWarning)
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    clients: list[asyncio.StreamWriter] = []
    slowloris: list[asyncio.StreamWriter] = []

    async def connect(head: bytes) -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionResetError:
            return None  # evicted by the server before open_connection returned
        writer.write(head)
        clients.append(writer)
        return writer

    async def open_many(n: int, head: bytes) -> list[asyncio.StreamWriter]:
        opened: list[asyncio.StreamWriter] = []
        for start in range(0, n, 50):  # in steps: the listen backlog is 100
            got = await asyncio.gather(*(connect(head) for _ in range(start, min(n, start + 50))))
            opened += [w for w in got if w is not None]
        return opened

    keep_alive = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # answered, then idle; never read
    begun = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # a head never finished
    try:
        idle = await open_many(n_idle, keep_alive)
        slowloris += await open_many(n_slow, begun)
        assert idle and slowloris
        answers = []
        for _ in range(rounds):
            # Fresh contenders for the slots, then one more header line from every
            # slowloris client (those the server closed take it without complaint).
            await open_many(wave, keep_alive)
            slowloris += await open_many(wave, begun)
            for w in slowloris:
                if not w.is_closing():
                    w.write(b"X-Slow: 1\r\n")
            reply = await get(port, "/healthz")
            answers.append((reply.status, reply.body))
        assert answers == [(200, b"ok\n")] * rounds
        fd = open_fifo_writer(fifo)
        os.write(fd, b"shipped all along\n")
        os.close(fd)
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == ["shipped all along"]
    finally:
        for w in clients:
            w.close()
        await proc.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_listen_on_a_port_in_use_exits_2_naming_the_setting(tmp_path: Path, receiver: LokiReceiver) -> None:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")], metrics={"listen": listen}))
        assert await proc.wait() == 2
    (refusal,) = proc.events("refusing_to_start")
    assert refusal["level"] == "error"
    assert refusal["error"].startswith(f"metrics.listen: cannot listen on {listen}: "), refusal
    assert proc.events("metrics_listening") == []
    assert receiver.requests == []


async def test_empty_listen_disables_the_endpoint(tmp_path: Path, receiver: LokiReceiver) -> None:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")], metrics={"listen": ""}))
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    os.write(fd, b"a\nb\n")
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["a", "b"]
    assert proc.events("metrics_listening") == []
    assert proc.summary()["lines_sent"] == 2


async def test_scrapes_reuse_one_kept_alive_connection(tmp_path: Path, receiver: LokiReceiver) -> None:
    # As Prometheus scrapes: several requests on one connection, each answered whole.
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for path in ("/metrics", "/healthz", "/metrics"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            async with asyncio.timeout(GIVE_UP):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                body = await reader.readexactly(length)
            assert b"connection: close" not in head.lower()
            statuses.append((head.split(b" ")[1], body[:14]))
        assert statuses == [(b"200", b"# HELP shipper"), (b"200", b"ok\n"), (b"200", b"# HELP shipper")]
        # The client's "Connection: close" ends it after the answer.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(GIVE_UP):
            rest = await reader.read()
        assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nok\n")
        writer.close()
    finally:
        await proc.kill()


async def test_clients_that_never_read_their_answers_are_dropped(tmp_path: Path, receiver: LokiReceiver) -> None:
    # Every connection slot taken by a client that pipelines scrapes and never
    # reads: the answers fill the socket buffers and the server's write waits.
    # That wait is time-limited like the read, so the probes get through again.
    proc, fifo, port = await start_on_fifo(tmp_path, receiver)
    stuck = []
    try:
        requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 600
        for _ in range(16):  # server.MAX_CONNECTIONS
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", port))
            client.sendall(requests)
            stuck.append(client)

        async def probe() -> bytes:
            """A liveness probe's answer, b"" while it is turned away."""
            try:
                async with asyncio.timeout(1.0):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except (OSError, TimeoutError):
                return b""
            try:
                async with asyncio.timeout(1.0):
                    writer.write(request_bytes("GET", "/healthz"))
                    return await reader.read()
            except (OSError, TimeoutError):
                return b""
            finally:
                writer.close()

        async with asyncio.timeout(GIVE_UP):
            while not (await probe()).startswith(b"HTTP/1.1 200 OK\r\n"):
                await asyncio.sleep(0.2)
    finally:
        for client in stuck:
            client.close()
        await proc.kill()
