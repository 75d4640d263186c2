"""The metrics and health endpoint: GET /metrics, /healthz, /ready.

HTTP is read and written by shipper.http1 (sans-IO), with keep-alive for
requests that come back to back. Requests are size- and time-limited and
never touch the shipping path: a bad or slow client costs one short-lived
task and is answered 400 or dropped. At most MAX_CONNECTIONS are open at
once, and a new connection is always served: the kubelet's probe opens one
per probe, and a probe turned away three times restarts the sidecar in the
middle of the task. When every slot is taken, the connection idle the
longest is closed to make room, else the one whose request has been
incomplete the longest (a slowloris client, or one that does not read its
answer); idle connections close after KEEPALIVE_IDLE anyway.
Nothing here exposes log content or secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from shipper import events, http1, metrics

# A scrape request is a few hundred bytes; anything near this is not one.
MAX_REQUEST_BYTES = 8 * 1024
# A client that has not sent its request after this long is dropped.
REQUEST_TIMEOUT = 5.0
# An idle kept-alive connection is closed after this. A few seconds cover the
# requests that do come back to back (a scrape's retry, one client asking
# /healthz then /ready); Prometheus scrapes every 15-60 s, so it reconnects per
# scrape (~1 ms of CPU: 0.07 millicores at 15 s) and, the server's FIN long
# gone by then, never sends a scrape on a connection being closed. Longer
# would buy nothing but idle connections holding descriptors and slots.
KEEPALIVE_IDLE = 5.0
# Scrapers and probes are a handful. More connections than this are not
# refused: the oldest idle (else the slowest incomplete) one is closed for
# the newcomer, so a probe is served whatever holds the other slots.
MAX_CONNECTIONS = 16
TEXT = b"text/plain; charset=utf-8"
# After refusing a request, what the client still sends is read and dropped for
# at most this long / this much, so it can read the refusal (lingering close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Status:
    """What the endpoint reports; produced by the lifecycle on each request."""

    healthy: bool      # the pipeline's tasks are alive
    ready: bool        # sources open and the last push succeeded (or none was due)
    reason: str        # why not ready / not healthy, for humans
    pending_lines: int
    pending_bytes: int
    sources_open: int


@dataclass(eq=False)
class _Connection:
    """One open connection: what it is doing and since when (loop time)."""

    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    idle: bool = False  # between requests, answered, nothing of the next read
    since: float = field(default=0.0)  # accepted, last answered, or its request begun


class MetricsServer:
    """Serves the endpoint on `host:port` until `close()`."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, _Connection] = {}

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
        handlers = {c.task for c in self._clients.values() if c.task is not None}
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)

    def _make_room(self) -> None:
        """Close one connection so a new one fits: the idle one idle longest, else the
        one whose request (or answer) has been pending longest."""
        victim = min(self._clients.values(), key=lambda c: (not c.idle, c.since))
        del self._clients[victim.writer]
        # A reset (SO_LINGER 0, then abort()): close() would first wait to flush
        # what a client that does not read never takes, and a reset leaves no
        # FIN_WAIT/TIME_WAIT behind. The handler then sees the connection lost.
        sock = victim.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.close()
            return
        loop = asyncio.get_running_loop()
        while len(self._clients) >= MAX_CONNECTIONS:
            self._make_room()
        conn = _Connection(writer, asyncio.current_task(), since=loop.time())
        self._clients[writer] = conn
        requests = http1.RequestReader(MAX_REQUEST_BYTES)
        try:
            timeout = REQUEST_TIMEOUT
            while True:
                async with asyncio.timeout(timeout) as deadline:
                    while (request := requests.next_request()) is None:
                        data = await reader.read(MAX_REQUEST_BYTES)
                        if not data:
                            return  # the client closed (between requests, or mid-head), or was closed
                        if conn.idle:
                            # The next request has begun: it gets REQUEST_TIMEOUT from now.
                            conn.idle, conn.since = False, loop.time()
                            deadline.reschedule(conn.since + REQUEST_TIMEOUT)
                        requests.feed(data)
                conn.idle = False
                status, ctype, body = self._answer(request)
                close = not request.keep_alive  # a request body is never read: answer, then close
                writer.write(http1.response_head(status, ctype, len(body), close))
                if request.method != b"HEAD":
                    writer.write(body)
                async with asyncio.timeout(REQUEST_TIMEOUT):  # a client that never reads is dropped
                    await writer.drain()
                if close:
                    return
                # Keep-alive, for requests that come back to back.
                conn.idle, conn.since = True, loop.time()
                timeout = KEEPALIVE_IDLE
        except http1.BadRequest as e:
            # Malformed (400) or oversized (431): answered, then closed.
            conn.idle = False
            message = f"bad request: {e}\n".encode()
            try:
                writer.write(http1.response_head(e.status, TEXT, len(message), close=True) + message)
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await writer.drain()
                # Lingering close (as nginx does): closing with the rest of a
                # huge request unread makes the kernel reset the connection,
                # and the client may lose the answer. Read and discard what it
                # still sends, bounded in time and size.
                writer.write_eof()
                async with asyncio.timeout(LINGER_SECONDS):
                    discarded = 0
                    while discarded < LINGER_BYTES and (data := await reader.read(65536)):
                        discarded += len(data)
            except (TimeoutError, OSError):
                pass
        except (TimeoutError, OSError):
            pass  # slow, vanished or evicted client: just drop it
        finally:
            if self._clients.get(writer) is conn:
                del self._clients[writer]
            writer.close()

    def _answer(self, request: http1.Request) -> tuple[int, bytes, bytes]:
        text = TEXT
        path = request.target.split(b"?", 1)[0]
        if path not in (b"/metrics", b"/healthz", b"/ready"):
            return 404, text, b"not found: try /metrics, /healthz or /ready\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed: use GET\n"
        st = self._status()
        if path == b"/metrics":
            gauges = {"pending_lines": st.pending_lines, "pending_bytes": st.pending_bytes,
                      "sources_open": st.sources_open}
            return 200, metrics.CONTENT_TYPE.encode(), metrics.render(events.COUNTERS, gauges,
                                                             metrics.sample_process())
        if path == b"/healthz":
            return (200, text, b"ok\n") if st.healthy else (503, text, f"{st.reason}\n".encode())
        return (200, text, b"ready\n") if st.ready else (503, text, f"not ready: {st.reason}\n".encode())
