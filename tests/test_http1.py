"""shipper.http1: responses in every split, checked against h11 as the reference parser."""

from __future__ import annotations

from collections.abc import Iterator

import h11
import pytest

from shipper.http1 import (MAX_DRAIN_BYTES, MAX_HEAD_BYTES, BadRequest, ProtocolError, Request, RequestReader,
                           Response, ResponseReader, check_header, request_head, response_head)


def splits(data: bytes) -> Iterator[list[bytes]]:
    """`data` whole, one byte at a time (h11's tr()), and cut in two at every point."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


def read(chunks: list[bytes], eof: bool, max_body: int = 64 * 1024) -> Response:
    reader = ResponseReader(max_body)
    for i, chunk in enumerate(chunks):
        response = reader.feed(chunk)
        if response is not None:
            assert i == len(chunks) - 1, "complete before all its bytes were fed"
            return response
    assert eof, "incomplete without end of input"
    response = reader.feed(b"")
    assert response is not None
    return response


def h11_read(data: bytes, eof: bool) -> tuple[int, bytes, bool]:
    """What h11 makes of the same bytes: status, body, reusable."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            try:
                conn.start_next_cycle()  # refused unless the connection may carry another request
            except h11.LocalProtocolError:
                return status, body, False
            return status, body, not eof
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            raise AssertionError(f"h11 needs more: {event}")


CHUNKED = (b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

# (response bytes, end of input after them, expected status, body, keep-alive, Retry-After)
VALID = [
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True, None),
    (b"HTTP/1.1 204\r\n\r\n", False, 204, b"", True, None),  # no reason phrase
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, 200, b"hello", True, None),
    (b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 3\r\nContent-Length: 3\r\n\r\nabc", False, 200, b"abc", True, None),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\nConnection: close\r\n\r\nentry too old", False,
     400, b"entry too ol", False, None),
    (b"HTTP/1.1 400 Bad Request\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", False,
     400, b"", False, None),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, 200, b"ok", False, None),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True, None),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False,
     200, b"x", True, None),
    (CHUNKED, False, 500, b"hello world", True, None),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<html>bad gateway</html>", True,
     502, b"<html>bad gateway</html>", False, None),
    (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\nhi", False,
     429, b"hi", True, b"3"),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", False, 304, b"", True, None),
    (b"HTTP/1.1 503 Unavailable\r\nX-Long: a\r\n  b\r\nContent-Length: 0\r\n\r\n", False, 503, b"", True, None),
]
# Where h11 differs by design: it reuses a connection whose answer had both
# framings, and refuses a transfer coding other than chunked.
NOT_H11 = [
    # Both framings: chunked wins, and the connection is not reused (RFC 9112 6.1).
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", False,
     200, b"x", False, None),
    # Not chunked last: the body runs until the server closes.
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", True, 200, b"zz", False, None),
]
# Bare LF line ends, which RFC 9112 lets a recipient accept (h11 does not: no reference).
BARE_LF = [
    (b"HTTP/1.1 429 Too Many\nRetry-After: 2\nContent-Length: 2\n\nhi", False, 429, b"hi", True, b"2"),
    (b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nab\n0\n\n", False, 200, b"ab", True, None),
    # The head ends at the first blank line, even when a CRLF one comes later (found by review).
    (b"HTTP/1.1 100 Continue\n\nHTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True, None),
    (b"HTTP/1.1 500 Oops\nContent-Length: 10\n\nerr\r\n\r\nxyz", False, 500, b"err\r\n\r\nxyz", True, None),
]


@pytest.mark.parametrize("data, eof, status, body, keep_alive, retry_after", VALID + NOT_H11 + BARE_LF)
def test_valid_responses_in_every_split(data: bytes, eof: bool, status: int, body: bytes, keep_alive: bool,
                                        retry_after: bytes | None) -> None:
    for chunks in splits(data):
        response = read(chunks, eof, max_body=12)
        assert (response.status, response.body, response.keep_alive) == (status, body[:12], keep_alive), chunks
        assert response.header(b"retry-after") == retry_after


@pytest.mark.parametrize("data, eof, status, body, keep_alive, retry_after", VALID)
def test_h11_reads_the_same(data: bytes, eof: bool, status: int, body: bytes, keep_alive: bool,
                            retry_after: bytes | None) -> None:
    ours = read([data], eof)
    assert (ours.status, ours.body, ours.keep_alive) == h11_read(data, eof)


@pytest.mark.parametrize("data, eof, message", [
    (b"", True, "server closed the connection before answering"),
    (b"HTTP/1.1 204 No", True, "in the middle of the response head"),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, "not an HTTP/1.x status line"),
    (b"HTTP/2 200\r\n\r\n", False, "not an HTTP/1.x status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", False, "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", False, "invalid header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", False, "invalid header line"),
    (b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n", False, "folded header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", False, "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", False, "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", True, "in the middle of the response body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True, "in the middle of a chunked body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, "invalid chunk size line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", False, "not followed by CRLF"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", False, "switched protocols"),
])
def test_what_is_not_an_answer_is_a_protocol_error(data: bytes, eof: bool, message: str) -> None:
    for chunks in splits(data) if data else [[]]:
        reader = ResponseReader()
        with pytest.raises(ProtocolError, match=message):
            for chunk in chunks:
                assert reader.feed(chunk) is None
            if eof:
                reader.feed(b"")
            raise AssertionError("no error")


def test_a_protocol_error_is_a_connection_error() -> None:
    # The client's retry policy retries ConnectionErrors: a garbled answer is retried, not dropped.
    assert issubclass(ProtocolError, ConnectionError)


def test_a_head_that_never_ends_is_refused() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(ProtocolError, match="response head longer than"):
        for _ in range(MAX_HEAD_BYTES // 1024 + 1):
            reader.feed(b"X-Pad: " + b"a" * 1015 + b"\r\n")


def test_a_runaway_body_is_not_read_to_its_end() -> None:
    # A huge error page: its start is kept, then the connection is given up instead of drained.
    reader = ResponseReader(max_body=10)
    assert reader.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % (10 * MAX_DRAIN_BYTES)) is None
    response = None
    sent = 0
    while response is None:
        response = reader.feed(b"e" * 65536)
        sent += 65536
    assert (response.status, response.body, response.keep_alive) == (500, b"e" * 10, False)
    assert sent == MAX_DRAIN_BYTES


@pytest.mark.parametrize("piece", [
    b"1;" + b"e" * 1000 + b"\r\nx\r\n",  # chunk-size lines full of extensions
    b"1\r\nx\r\n",  # many tiny chunks
])
def test_a_runaway_chunked_body_is_not_read_to_its_end(piece: bytes) -> None:
    # Everything read after the head counts toward MAX_DRAIN_BYTES, not only chunk data.
    reader = ResponseReader(max_body=4)
    assert reader.feed(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n") is None
    response, sent = None, 0
    while response is None:
        response = reader.feed(piece * 64)
        sent += len(piece) * 64
    assert (response.status, response.body, response.keep_alive) == (500, b"x" * 4, False)
    assert sent < MAX_DRAIN_BYTES + 64 * len(piece)


def test_endless_trailers_are_not_read_to_their_end() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n") is None
    response, sent = None, 0
    while response is None:
        response = reader.feed(b"X-Trailer: " + b"t" * 1000 + b"\r\n")
        sent += 1013
    assert (response.status, response.body, response.keep_alive) == (200, b"x", False)
    assert sent < MAX_DRAIN_BYTES + 1013


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    response = read([b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n"], False)
    assert (response.status, response.keep_alive) == (204, False)


def test_request_head_is_what_h11_would_send() -> None:
    headers = [(b"Host", b"loki:3100"), (b"Content-Type", b"application/x-protobuf"), (b"X-Scope-OrgID", b"t")]
    ours = request_head(b"POST", b"/loki/api/v1/push", headers, 1234)
    conn = h11.Connection(h11.CLIENT)
    theirs = conn.send(h11.Request(method=b"POST", target=b"/loki/api/v1/push",
                                   headers=[*headers, (b"Content-Length", b"1234")]))
    assert ours == theirs


@pytest.mark.parametrize("name, value", [
    (b"X-Scope-OrgID", b"team\r\nX-Injected: 1"), (b"X-Scope-OrgID", b"a\nb"), (b"X-Scope-OrgID", b"nul\x00"),
    (b"X-Scope-OrgID", b" padded"), (b"Bad Name", b"v"), (b"", b"v"),
])
def test_header_that_cannot_be_sent_is_refused(name: bytes, value: bytes) -> None:
    with pytest.raises(ValueError):
        check_header(name, value)


# --- the server side: request heads ------------------------------------------------------

def read_request(chunks: list[bytes], max_head: int = 8192) -> Request:
    reader = RequestReader(max_head)
    for i, chunk in enumerate(chunks):
        reader.feed(chunk)
        request = reader.next_request()
        if request is not None:
            assert i == len(chunks) - 1, "complete before all its bytes were fed"
            return request
    raise AssertionError("incomplete")


def conn_request(data: bytes) -> tuple[bytes, bytes]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event.method, event.target


# (request bytes, method, target, keep-alive, has a body)
REQUESTS = [
    (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9337\r\nAccept: */*\r\n\r\n", b"GET", b"/metrics", True, False),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET", b"/healthz", False, False),
    (b"HEAD /ready HTTP/1.0\r\n\r\n", b"HEAD", b"/ready", False, False),
    (b"GET /metrics?name[]=up HTTP/1.1\r\nhost: x\r\nContent-Length: 0\r\n\r\n", b"GET", b"/metrics?name[]=up",
     True, False),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", b"POST", b"/metrics", False, True),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"POST", b"/metrics", False, True),
]


@pytest.mark.parametrize("data, method, target, keep_alive, has_body", REQUESTS)
def test_request_heads_in_every_split(data: bytes, method: bytes, target: bytes, keep_alive: bool,
                                      has_body: bool) -> None:
    for chunks in splits(data):
        request = read_request(chunks)
        assert (request.method, request.target, request.keep_alive, request.has_body) == (
            method, target, keep_alive, has_body), chunks
    assert conn_request(data) == (method, target)  # h11 reads the same request line


def test_pipelined_requests_are_read_one_after_the_other() -> None:
    reader = RequestReader(8192)
    reader.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\nGET /met")
    first, second = reader.next_request(), reader.next_request()
    assert first is not None and second is not None
    assert (first.target, second.target, reader.next_request()) == (b"/healthz", b"/ready", None)
    reader.feed(b"rics HTTP/1.1\r\nHost: x\r\n\r\n")
    third = reader.next_request()
    assert third is not None and third.target == b"/metrics"


@pytest.mark.parametrize("data, status, message", [
    (b"GARBAGE\r\n\r\n", 400, "not an HTTP/1.x request line"),
    (b"GET /metrics\r\n\r\n", 400, "not an HTTP/1.x request line"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400, "not an HTTP/1.x request line"),  # h11 takes any version
    (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not an HTTP/1.x request line"),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 400, "exactly one Host header"),
    (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "exactly one Host header"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "invalid header line"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content-Length"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", 400, "not an HTTP/1.x request line"),
    # Complete but over the limit (h11 limits only incomplete heads).
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431, "request head longer than"),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000, 431, "request head longer than"),
])
def test_what_is_not_a_request_is_answered_400_or_431(data: bytes, status: int, message: str) -> None:
    reader = RequestReader(8192)
    reader.feed(data)
    with pytest.raises(BadRequest, match=message) as info:
        reader.next_request()
    assert info.value.status == status
    if b"HTTP/2.0" in data or (status == 431 and data.endswith(b"\r\n\r\n")):
        return  # stricter than h11 here, by choice (see the table)
    # h11 refuses the same heads (the reference agrees they are not requests).
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8192)
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


def test_response_head_is_what_h11_would_send() -> None:
    for close in (False, True):
        ours = response_head(503, b"text/plain; charset=utf-8", 42, close)
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        conn.next_event()
        theirs = conn.send(h11.Response(status_code=503, reason=b"Service Unavailable", headers=[
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "42")]))
        assert ours.lower() == theirs.lower()
