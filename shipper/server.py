"""The metrics and health endpoint: GET /metrics, /healthz, /ready.

HTTP is parsed by h11 (already a runtime dependency), with keep-alive as
Prometheus uses it: a new TCP connection per scrape would cost the shipper
about 1 ms of CPU, several times the scrape itself. Requests are size- and
time-limited and never touch the shipping path: a bad or slow client costs
one short-lived task and is answered 400 or dropped; idle connections close
after KEEPALIVE_IDLE, and at most MAX_CONNECTIONS are open at once.
Nothing here exposes log content or secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import h11

from shipper import events, metrics

# A scrape request is a few hundred bytes; anything near this is not one.
MAX_REQUEST_BYTES = 8 * 1024
# A client that has not sent its request after this long is dropped.
REQUEST_TIMEOUT = 5.0
# An idle kept-alive connection is closed after this (Prometheus scrapes every
# 15-60 s and reconnects when needed).
KEEPALIVE_IDLE = 120.0
# Scrapers and probes are a handful; more connections than this are refused.
MAX_CONNECTIONS = 16


@dataclass(frozen=True)
class Status:
    """What the endpoint reports; produced by the lifecycle on each request."""

    healthy: bool      # the pipeline's tasks are alive
    ready: bool        # sources open and the last push succeeded (or none was due)
    reason: str        # why not ready / not healthy, for humans
    pending_lines: int
    pending_bytes: int
    sources_open: int


class MetricsServer:
    """Serves the endpoint on `host:port` until `close()`."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status
        self._server: asyncio.Server | None = None
        self._active = 0
        self._clients: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, host or None, port,
                                                  limit=MAX_REQUEST_BYTES, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end the connections still open (idle or mid-request).

        Their handlers see end of input and return. A handler left running
        would be cancelled when the loop closes, and Python 3.11's asyncio then
        prints a traceback (not JSON) to stderr for it.
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._clients:
            writer.close()
        handlers = {t for t in self._clients.values() if t is not None}
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS or self._server is None:
            writer.close()
            return
        self._active += 1
        self._clients[writer] = asyncio.current_task()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            timeout = REQUEST_TIMEOUT
            while True:
                async with asyncio.timeout(timeout):
                    request = await _read_request(conn, reader)
                if request is None:
                    return
                status, ctype, body = self._answer(request)
                _respond(conn, writer, status, ctype, body, head=request.method == b"HEAD")
                await writer.drain()
                # Keep-alive, as Prometheus scrapes: a new TCP connection per
                # scrape costs the shipper about 1 ms of CPU, more than the scrape.
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if not await _finish_request(conn, reader):
                        return
                timeout = KEEPALIVE_IDLE
        except h11.RemoteProtocolError as e:
            # Malformed or oversized: 400 (h11's hint may be 431 for huge headers).
            status = e.error_status_hint if 400 <= e.error_status_hint < 500 else 400
            try:
                _respond(conn, writer, status, "text/plain; charset=utf-8",
                         f"bad request: {e}\n".encode())
                await writer.drain()
            except (h11.LocalProtocolError, OSError):
                pass
        except (TimeoutError, OSError):
            pass  # slow or vanished client: just drop it
        finally:
            self._active -= 1
            del self._clients[writer]
            writer.close()

    def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        path = request.target.split(b"?", 1)[0]
        if path not in (b"/metrics", b"/healthz", b"/ready"):
            return 404, text, b"not found: try /metrics, /healthz or /ready\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed: use GET\n"
        st = self._status()
        if path == b"/metrics":
            gauges = {"pending_lines": st.pending_lines, "pending_bytes": st.pending_bytes,
                      "sources_open": st.sources_open}
            return 200, metrics.CONTENT_TYPE, metrics.render(events.COUNTERS, gauges,
                                                             metrics.sample_process())
        if path == b"/healthz":
            return (200, text, b"ok\n") if st.healthy else (503, text, f"{st.reason}\n".encode())
        return (200, text, b"ready\n") if st.ready else (503, text, f"not ready: {st.reason}\n".encode())


async def _finish_request(conn: h11.Connection, reader: asyncio.StreamReader) -> bool:
    """Read the rest of the request (a GET has no body) and start the next cycle; False: close."""
    while conn.their_state is h11.SEND_BODY:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(MAX_REQUEST_BYTES)
            if not data:
                return False
            conn.receive_data(data)
        elif isinstance(event, h11.Data) and conn.their_state is h11.SEND_BODY:
            return False  # a request body we do not want: close rather than read it
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(MAX_REQUEST_BYTES)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed before a request


def _respond(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, ctype: str,
             body: bytes, head: bool = False) -> None:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    if not head:
        writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
