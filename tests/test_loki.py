"""The Loki client and sender against a strict receiver that misbehaves on cue.

Each test runs the real shipper on a FIFO, scripts the receiver's answers,
and asserts the exact lines stored: all of them, in order, none twice.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess

LINES = [f"{i:05d} the quick brown fox" for i in range(500)]


async def ship(tmp_path: Path, receiver: LokiReceiver, lines: list[str] = LINES, **config: object) -> ShipperProcess:
    """Start the shipper on a FIFO, write `lines`, close the FIFO (end of input)."""
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")], **config))  # type: ignore[arg-type]
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    await asyncio.to_thread(os.write, fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    return proc


async def test_5xx_and_429_are_retried_until_loki_recovers(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.status(500), Action.status(502), Action.status(503), Action.status(429))
    proc = await ship(tmp_path, receiver)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == LINES
    assert [r.status for r in receiver.requests][:5] == [500, 502, 503, 429, 204]
    summary = proc.summary()
    assert summary["retries"] == 4
    assert summary["dropped"] == {"rejected": 0, "shutdown_deadline": 0, "forced_exit": 0, "buffer_full": 0, "spool_error": 0, "internal_error": 0}
    assert {r.user_agent for r in receiver.requests} == {"shipper/0.1.0"}


async def test_retry_after_from_a_proxy_is_honoured(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.status(429, headers={"Retry-After": "1"}))
    proc = await ship(tmp_path, receiver)
    await proc.wait_for_event("push_failed", retry_in=1.0)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == LINES


async def test_400_drops_the_batch_counts_it_and_goes_on(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.status(400, body="entry out of order"))
    first, rest = LINES[:10], LINES[10:]
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    os.write(fd, ("\n".join(first) + "\n").encode())
    refused = await proc.wait_for_event("push_refused")
    assert (refused["outcome"], refused["error"]) == ("400", "entry out of order")
    os.write(fd, ("\n".join(rest) + "\n").encode())
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == rest
    assert proc.summary()["dropped"]["rejected"] == len(first)
    assert len(proc.events("push_refused")) == 1


async def test_connection_reset_and_slow_answers_lose_and_repeat_nothing(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.reset(), Action.reset_mid_body(), Action.delay(0.5), Action.reset())
    proc = await ship(tmp_path, receiver)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == LINES


async def test_loki_that_never_answers_times_out_and_is_retried(tmp_path: Path, receiver: LokiReceiver) -> None:
    receiver.add_actions(Action.hang())
    proc = await ship(tmp_path, receiver, loki={"timeout": 0.5})
    failed = await proc.wait_for_event("push_failed")
    assert failed["outcome"] == "timeout"
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == LINES


async def test_tenant_header_is_sent(tmp_path: Path) -> None:
    receiver = LokiReceiver(require_tenant=True)
    await receiver.start()
    try:
        proc = await ship(tmp_path, receiver, loki={"tenant_id": "team-a"})
        assert await proc.wait() == 0
        assert receiver.lines(stream="stdout") == LINES
        assert {r.tenant for r in receiver.requests} == {"team-a"}
    finally:
        await receiver.stop()


async def test_missing_tenant_is_a_401_and_is_dropped_loudly(tmp_path: Path) -> None:
    receiver = LokiReceiver(require_tenant=True)
    await receiver.start()
    try:
        proc = await ship(tmp_path, receiver)
        assert await proc.wait() == 0
        assert receiver.lines() == []
        assert proc.summary()["dropped"]["rejected"] == len(LINES)
        assert {r.status for r in receiver.requests} == {401}
    finally:
        await receiver.stop()


async def server_closed_our_connection(port: int) -> None:
    """Until a TCP connection to 127.0.0.1:`port` is in CLOSE_WAIT (the server closed it, we did not yet)."""
    async with asyncio.timeout(30):
        while True:
            with open("/proc/net/tcp") as table:
                rows = [line.split() for line in table.readlines()[1:]]
            # remote address 127.0.0.1:port (hex, little-endian IPv4), state 08 = CLOSE_WAIT
            if any(r[2] == f"0100007F:{port:04X}" and r[3] == "08" for r in rows):
                return
            await asyncio.sleep(0.05)


async def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_a_failure(tmp_path: Path) -> None:
    # A Loki gateway closes idle keep-alive connections (nginx: after 75 s). The
    # next push finds its connection closed: it goes out again at once on a new
    # one, with no "push failed" and no retry counted (alerts watch those).
    receiver = LokiReceiver(keepalive_timeout=0.2)
    await receiver.start()
    try:
        fifo = tmp_path / "stdout"
        os.mkfifo(fifo)
        proc = await ShipperProcess.start(make_config(receiver.url, [(fifo, "stdout")]))
        await proc.wait_for_event("source_opened", path=str(fifo))
        fd = open_fifo_writer(fifo)
        try:
            await asyncio.to_thread(os.write, fd, b"before the idle close\n")
            await receiver.wait_for_entries(1, stream="stdout")
            await server_closed_our_connection(receiver.port)
            await asyncio.to_thread(os.write, fd, b"after it\n")
            await receiver.wait_for_entries(2, stream="stdout")
        finally:
            os.close(fd)
        assert await proc.wait() == 0
    finally:
        await receiver.stop()
    assert receiver.lines(stream="stdout") == ["before the idle close", "after it"]
    assert proc.events("push_failed") == []
    assert proc.summary()["retries"] == 0


@pytest.mark.parametrize("compression, encoding", [(None, "gzip"), ("gzip", "gzip"), ("snappy", None),
                                                   ("none", None)])
async def test_each_compression_is_sent_with_its_content_encoding(
        tmp_path: Path, receiver: LokiReceiver, compression: str | None, encoding: str | None) -> None:
    """gzip (the default) is announced as Content-Encoding: gzip; snappy framing needs no header."""
    loki = {"compression": compression} if compression else {}
    proc = await ship(tmp_path, receiver, loki=loki)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == LINES
    pushes = [r for r in receiver.requests if r.status == 204]
    assert pushes and {r.content_encoding for r in pushes} == {encoding}


def test_snappy_without_python_snappy_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from shipper.config import ConfigError, LokiConfig
    from shipper.loki import LokiClient
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snappy" else
                        real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r'loki.compression: "snappy" needs python-snappy, which is not installed'):
        LokiClient.from_config(LokiConfig(compression="snappy"))
    assert LokiClient.from_config(LokiConfig(compression="gzip")) is not None


async def test_a_certificate_refused_on_one_address_is_not_hidden_by_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS handshake that fails is the server's answer: raised at once, not replaced by the
    next address's connection error."""
    import socket
    import ssl

    from shipper import loki
    tried: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[tuple[int, str]]:
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]

    async def fake_open(address: str, port: int, **kwargs: object) -> object:
        tried.append(address)
        if address == "127.0.0.1":
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(loki, "resolve", fake_resolve)
    monkeypatch.setattr(asyncio, "open_connection", fake_open)
    with pytest.raises(ssl.SSLCertVerificationError):
        await loki._open("loki.test", 443, ssl.create_default_context())
    assert tried == ["127.0.0.1"]
    with pytest.raises(ConnectionRefusedError):  # without TLS, every address is tried
        await loki._open("loki.test", 80, None)
    assert tried == ["127.0.0.1", "127.0.0.1", "::1"]


async def test_one_lookup_per_name_in_flight_and_no_thread_is_an_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    from shipper import loki
    release = threading.Event()
    calls: list[str] = []

    def slow_getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        calls.append(host)
        release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    for _ in range(3):  # pushes that time out while the resolver hangs
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loki.resolve("loki.hangs", 80), 0.05)
    release.set()
    assert await loki.resolve("loki.hangs", 80) == [(socket.AF_INET, "10.0.0.7")]
    assert calls == ["loki.hangs"]  # one thread, shared by every attempt

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(OSError, match="cannot resolve 'loki.other': can't start new thread"):
        await loki.resolve("loki.other", 80)
