"""HTTP/1.1 for the Loki client: request heads out, responses in. No IO.

The client sends one shape of request (a POST or PUT with a Content-Length
body, one at a time on a keep-alive connection) and needs three things of
the answer: its status, its Retry-After, and the start of its body (Loki's
error message). This module frames exactly that, as RFC 9112 says a client
must: 1xx answers are skipped; a 204/304 has no body; Transfer-Encoding
chunked, else Content-Length, else "until the server closes" delimits the
body; the connection is reused only when the answer says it may be.

Why not h11: measured on a push after half
a second idle (the shipper's rhythm, caches cold), h11 spent about 185 us
building the request and 140 us parsing the answer, two thirds of a
millicore at two pushes a second, out of a 5-millicore budget; the same work
here costs a few tens of microseconds. tests/test_http1.py checks every
outcome against h11 as the reference parser, with inputs in every split.

Anything that is not HTTP/1.1 as framed above raises `ProtocolError`, a
ConnectionError: the client closes the connection and the push is retried,
as for any transport failure.

The metrics endpoint (shipper.server) reads its GET requests with
`RequestReader` and answers with `response_head`: request heads only (a
request with a body is answered and the connection closed), keep-alive as
HTTP/1.1 says, 400 for what is not a request and 431 for a huge head.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# A response head larger than this is not Loki's (nor a proxy's) answer.
MAX_HEAD_BYTES = 64 * 1024
# A body longer than this is not read to its end to keep the connection:
# the connection is closed instead (cheaper than reading a runaway body).
MAX_DRAIN_BYTES = 1024 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\r\n]*)?\Z")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
# Request header values we send come from config and files: no CR, LF or NUL.
_SAFE_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*\Z")  # no control characters but HTAB


class ProtocolError(ConnectionError):
    """The peer's bytes are not an HTTP/1.1 response (retried like a transport error)."""


class ClosedBeforeAnswer(ProtocolError):
    """The server closed the connection without sending a byte of an answer."""


def check_header(name: bytes, value: bytes) -> None:
    """ValueError unless `name: value` can be sent as one header line."""
    if not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if not _SAFE_VALUE.match(value) or value != value.strip(b" \t"):
        raise ValueError(f"invalid value for header {name.decode()} (control characters or surrounding spaces)")


def request_head(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], content_length: int) -> bytes:
    """The request line and headers of a request whose body is `content_length` bytes.

    Headers must have been checked with `check_header` (the client does it
    once, when it is built; the credential is safe by construction: a bearer
    token is checked printable ASCII when its file is read, basic auth is base64).
    """
    lines = b"".join([b"%s: %s\r\n" % pair for pair in headers])
    return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (method, target, lines, content_length)


@dataclass
class Response:
    """A complete answer: status, headers (names lower case, in order), body start."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # at most max_body bytes of it
    keep_alive: bool  # the connection may carry the next request

    def header(self, name: bytes) -> bytes | None:
        """The last value of header `name` (lower case), None if absent."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


class ResponseReader:
    """Reads one response to a request already sent; `feed()` the bytes as they come.

    `feed(data)` returns the Response once complete, else None; `feed(b"")`
    means the server closed the connection. Raises ProtocolError.
    """

    def __init__(self, max_body: int = 64 * 1024) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._response: Response | None = None
        self._framing = ""  # "length", "chunked" or "close" once the head is read
        self._remaining = 0  # body bytes still to come ("length"), or of the current chunk
        self._chunk = "size"  # chunked: expecting a "size" line, chunk "data", its "crlf", or "trailers"
        self._body = bytearray()
        self._seen = 0  # bytes read after the head (chunk framing and trailers included)

    def feed(self, data: bytes) -> Response | None:
        eof = not data
        self._buf += data
        if self._response is None:
            if not self._read_head(eof):
                return None
        return self._read_body(eof)

    def _read_head(self, eof: bool) -> bool:
        while True:
            buf = self._buf
            # The first blank line, CRLF or bare LF (RFC 9112 lets a recipient accept
            # bare LF); a CRLF one further on may be in the body or the next answer.
            m = _HEAD_END.search(buf)
            if m is None:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
                if eof:
                    if not buf:
                        raise ClosedBeforeAnswer("server closed the connection before answering")
                    raise ProtocolError("server closed the connection in the middle of the response head")
                return False
            head, rest_at = bytes(buf[:m.start()]), m.end()
            if rest_at > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            del buf[:rest_at]
            status, minor, headers = _parse_head(head)
            if 100 <= status < 200:
                if status == 101:
                    raise ProtocolError("server switched protocols, which was not asked for")
                continue  # interim (100 Continue, 103 Early Hints): the final answer follows
            self._start_body(status, minor, headers)
            return True

    def _start_body(self, status: int, minor: int, headers: list[tuple[bytes, bytes]]) -> None:
        keep_alive = minor == 1
        encodings: list[bytes] = []
        lengths: list[bytes] = []
        for name, value in headers:
            if name == b"connection" and b"close" in _tokens(value):
                keep_alive = False
            elif name == b"transfer-encoding":
                encodings += _tokens(value)
            elif name == b"content-length":
                lengths += [t.strip() for t in value.split(b",")]
        self._response = Response(status, headers, b"", keep_alive)
        if status in (204, 304):
            self._framing = "length"
            self._remaining = 0
        elif encodings:
            if encodings[-1] == b"chunked":
                self._framing = "chunked"
            else:
                self._framing = "close"
            if lengths:
                self._response.keep_alive = False  # both framings given: RFC 9112 §6.1, close after
        elif lengths:
            if len(set(lengths)) != 1 or not _DIGITS.match(lengths[0]):
                raise ProtocolError(f"invalid Content-Length {b', '.join(lengths).decode('latin-1')!r}")
            self._framing = "length"
            self._remaining = int(lengths[0])
        else:
            self._framing = "close"
        if self._framing == "close":
            self._response.keep_alive = False

    def _take(self, n: int) -> None:
        """Move n body bytes from the buffer to the body (kept up to max_body)."""
        room = self.max_body - len(self._body)
        if room > 0:
            self._body += self._buf[:min(n, room)]
        del self._buf[:n]
        self._seen += n

    def _read_body(self, eof: bool) -> Response | None:
        response = self._response
        assert response is not None
        buf = self._buf
        if self._framing == "length":
            n = min(self._remaining, len(buf))
            self._take(n)
            self._remaining -= n
            done = not self._remaining
        elif self._framing == "close":
            self._take(len(buf))
            done = eof  # the body is what came before the server closed
        else:
            done = self._read_chunks()
        if not done:
            if self._seen >= MAX_DRAIN_BYTES:
                return self._finish(keep_alive=False)  # a runaway body: give the connection up
            if eof:
                part = "a chunked body" if self._framing == "chunked" else "the response body"
                raise ProtocolError(f"server closed the connection in the middle of {part}")
            return None
        # Anything after the answer to our one request is not HTTP we can use.
        return self._finish(keep_alive=response.keep_alive and not buf)

    def _read_chunks(self) -> bool:
        """Consume chunked body from the buffer; True once the last chunk and trailers are read.

        One step of the chunk state machine at a time (`_chunk`); a step answers None
        to go on, False when it needs more bytes, True when the body is complete.
        """
        while True:
            if self._seen >= MAX_DRAIN_BYTES:
                return False  # a runaway body (or endless trailers): the caller gives the connection up
            state = self._chunk
            if state == "size":
                done = self._chunk_size()
            elif state == "data":
                done = self._chunk_data()
            elif state == "crlf":
                done = self._chunk_crlf()
            else:
                done = self._chunk_trailer()
            if done is not None:
                return done

    def _chunk_size(self) -> bool | None:
        buf = self._buf
        m = _CHUNK_SIZE.match(buf)
        if m is None:
            if b"\n" in buf or len(buf) > 1024:
                raise ProtocolError(f"invalid chunk size line {bytes(buf[:40])!r}")
            return False
        size = int(m[1], 16)
        del buf[:m.end()]
        self._seen += m.end()
        self._chunk, self._remaining = ("data", size) if size else ("trailers", 0)
        return None

    def _chunk_data(self) -> bool | None:
        n = min(self._remaining, len(self._buf))
        self._take(n)
        self._remaining -= n
        if self._remaining:
            return False
        self._chunk = "crlf"
        return None

    def _chunk_crlf(self) -> bool | None:
        """The line end after a chunk's data."""
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._seen += 2
        elif buf[:1] == b"\n":
            del buf[:1]
            self._seen += 1
        elif len(buf) == 0 or buf == b"\r":
            return False
        else:
            raise ProtocolError("chunk data not followed by CRLF")
        self._chunk = "size"
        return None

    def _chunk_trailer(self) -> bool | None:
        """One trailer line: header lines until an empty one, which ends the body."""
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise ProtocolError("chunked trailers too long")
            return False
        line = bytes(buf[:end + 1])
        del buf[:end + 1]
        self._seen += len(line)
        return True if line in (b"\r\n", b"\n") else None

    def _finish(self, keep_alive: bool) -> Response:
        response = self._response
        assert response is not None
        response.body = bytes(self._body)
        response.keep_alive = keep_alive
        return response


def _parse_head(head: bytes) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    """(status, HTTP minor version, headers) of a response head without its final blank line."""
    lines = head.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    m = _STATUS_LINE.match(status_line)
    if m is None:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    return int(m[2]), int(m[1]), _fields(lines[1:], ProtocolError)


def _tokens(value: bytes) -> list[bytes]:
    """The comma-separated tokens of a header value (Connection, Transfer-Encoding), lower case."""
    return [t.strip().lower() for t in value.split(b",")]


def _fields(lines: list[bytes], error: type[ProtocolError]) -> list[tuple[bytes, bytes]]:
    """Header fields (names lower case) of a head's lines after its first."""
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            # obs-fold: a continuation of the previous header's value (RFC 9112 §5.2).
            if not headers:
                raise error("the head starts with a folded header line")
            name, value = headers[-1]
            headers[-1] = (name, (value + b" " + line.strip(b" \t")).strip(b" "))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise error(f"invalid header line {line[:80]!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    return headers


# --- the server side (the metrics endpoint) -------------------------------------------

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP/1\.([01])\Z")
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class BadRequest(ProtocolError):
    """A request the endpoint cannot read; `status` is the answer (400, or 431 for a huge head)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """A request head."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool  # the client will send another request on this connection
    has_body: bool  # a body follows: the server answers and closes instead of reading it


class RequestReader:
    """Request heads from one connection: `feed()` bytes, `next_request()` takes one.

    Requests may be pipelined: bytes after a head stay for the next one.
    """

    def __init__(self, max_head: int) -> None:
        self.max_head = max_head
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_request(self) -> Request | None:
        """The next complete request head, or None until more bytes came. Raises BadRequest."""
        buf = self._buf
        m = _HEAD_END.search(buf)
        if m is None:
            if len(buf) > self.max_head:
                raise BadRequest(f"request head longer than {self.max_head} bytes", 431)
            return None
        if m.end() > self.max_head:
            raise BadRequest(f"request head longer than {self.max_head} bytes", 431)
        head = bytes(buf[:m.start()])
        del buf[:m.end()]
        lines = head.split(b"\n")
        request_line = lines[0].rstrip(b"\r")
        r = _REQUEST_LINE.match(request_line)
        if r is None:
            raise BadRequest(f"not an HTTP/1.x request line: {request_line[:80]!r}")
        headers = _fields(lines[1:], BadRequest)
        minor = int(r[3])
        if minor == 1 and [name for name, _ in headers].count(b"host") != 1:
            raise BadRequest("an HTTP/1.1 request needs exactly one Host header")
        keep_alive, has_body = _request_framing(minor, headers)
        return Request(r[1], r[2], headers, keep_alive and not has_body, has_body)


def _request_framing(minor: int, headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """(the client keeps the connection, a body follows) from a request's headers."""
    keep_alive = minor == 1
    has_body = False
    for name, value in headers:
        if name == b"connection" and b"close" in _tokens(value):
            keep_alive = False
        elif name == b"transfer-encoding":
            has_body = True
        elif name == b"content-length":
            if not _DIGITS.match(value):
                raise BadRequest(f"invalid Content-Length {value[:20]!r}")
            has_body = has_body or int(value) > 0
    return keep_alive, has_body


def response_head(status: int, content_type: bytes, content_length: int, close: bool) -> bytes:
    """Status line and headers of an answer whose body is `content_length` bytes."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status, REASONS.get(status, b""), content_type, content_length, b"Connection: close\r\n" if close else b"")
