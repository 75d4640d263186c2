"""The Loki client: one keep-alive HTTP/1.1 connection, one request in flight.

HTTP is parsed by h11 (a small, well-kept sans-IO state machine); this module
only moves its bytes over an asyncio stream. TLS (and so `ssl`, about 4 MiB of
memory) is imported only for `https://` URLs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TextIO
import h11

from shipper import __version__
from shipper.config import parse_url

USER_AGENT = f"shipper/{__version__}"
# Loki's error messages are short; a proxy's HTML error page is cut here.
MAX_RESPONSE_BODY = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """What the server said about one push."""

    status: int
    message: str = ""
    retry_after: str | None = None


class LokiClient:
    """Pushes snappy-compressed protobuf bodies to a Loki push URL."""

    def __init__(self, url: str, tenant_id: str = "", timeout: float = 10.0, *,
                 method: bytes = b"POST", content_type: bytes = b"application/x-protobuf") -> None:
        # method/content_type let the same client PUT the exit-time metrics to
        # a Pushgateway; Loki pushes use the defaults.
        parts = parse_url(url)
        self._method = method
        self._tls = parts.scheme == "https"
        self._host = parts.host
        self._port = parts.port
        self._target = parts.path.encode()
        self._headers = [
            (b"Host", parts.netloc.encode()),
            (b"Content-Type", content_type),
            (b"User-Agent", USER_AGENT.encode()),
        ]
        if tenant_id:
            self._headers.append((b"X-Scope-OrgID", tenant_id.encode()))
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn: h11.Connection | None = None

    async def push(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send one push; raises OSError/TimeoutError/h11 errors on transport failure."""
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await self._exchange(body)
        except BaseException:
            # After any failure the connection's state is unknown: never reuse it.
            await self.close()
            raise

    async def _exchange(self, body: bytes) -> Answer:
        if self._writer is None:
            ssl_context = None
            if self._tls:
                import ssl  # only https pays for OpenSSL

                ssl_context = ssl.create_default_context()
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, ssl=ssl_context, limit=MAX_RESPONSE_BODY)
            self._conn = h11.Connection(h11.CLIENT)
        conn, reader, writer = self._conn, self._reader, self._writer
        assert conn is not None and reader is not None
        headers = [*self._headers, (b"Content-Length", str(len(body)).encode())]
        writer.write(conn.send(h11.Request(method=self._method, target=self._target, headers=headers)) or b"")
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)  # b"" tells h11 the server closed
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                if size < MAX_RESPONSE_BODY:
                    chunks.append(bytes(event.data[: MAX_RESPONSE_BODY - size]))
                    size += len(chunks[-1])
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("server closed the connection before answering")
            # InformationalResponse (100 Continue) needs nothing.
        assert response is not None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive
        else:
            await self.close()
        retry_after = None
        for name, value in response.headers:
            if name == b"retry-after":
                retry_after = value.decode("latin-1")
        message = b"".join(chunks).decode("utf-8", "replace").strip()
        return Answer(response.status_code, message, retry_after)

    async def close(self) -> None:
        """Close the connection (it is reopened by the next push)."""
        writer, self._writer, self._reader, self._conn = self._writer, None, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, asyncio.CancelledError):
                pass


class ConsoleSink:
    """Prints each push, decoded, as one JSON line on stdout instead of sending it."""

    timeout = 1.0

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    async def push(self, body: bytes, timeout: float | None = None) -> Answer:
        import json
        import sys

        import snappy

        from shipper.encoder import decode_push

        streams = decode_push(snappy.uncompress(body))
        out = self._out or sys.stdout
        out.write(json.dumps({"streams": streams}, ensure_ascii=False) + "\n")
        out.flush()
        return Answer(204)

    async def close(self) -> None:
        """Nothing to close."""
