"""The Loki client: one keep-alive HTTP/1.1 connection, one request in flight.

HTTP/1.1 is framed by shipper.http1 (sans-IO; see there why not h11); this
module only moves its bytes over an asyncio stream. TLS (and so `ssl`, about 4 MiB of
memory) is imported only for `https://` URLs.

Security ([loki] keys, see shipper.config): the server's certificate is
verified (system CAs, or `ca_file`) unless `insecure_skip_verify`; a client
certificate (`cert_file` + `key_file`) is offered when configured. A bearer
token or basic-auth password is read from a file (a Kubernetes secret mount)
and re-read when the file changes: one stat() per push, a read only when the
file's identity, size or mtime changed. Secrets are never logged: messages
name the key and the path, never the content.
"""

from __future__ import annotations

import asyncio
import binascii  # loaded anyway: shipper.lifecycle imports base64
import os
import socket
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO
from shipper import __version__, http1
from shipper.encoder import content_encoding
from shipper.config import ConfigError, LokiConfig, parse_url

if TYPE_CHECKING:
    import ssl

USER_AGENT = f"shipper/{__version__}"
# A proxy's HTML error page is cut here; Loki 3's grouped validation errors
# (one ~250-byte message per refused entry) fit for about 4,000 entries, and
# shipper.delivery counts the rest by the limits the message names.
MAX_RESPONSE_BODY = 1024 * 1024
# Which entries of a push Loki holds, asked when its answer could not say
# (shipper.delivery "uncertain"): entries per query page (Loki's default
# max_entries_limit_per_query), and the answer's size bound (lines are
# emptied by the query: ~30 bytes of JSON per entry).
STORED_QUERY_PAGE = 5000
MAX_QUERY_BODY = 1024 * 1024


# A credential file larger than this is not a token or a password (Kubernetes
# service-account tokens are ~1-2 KiB); it would also make an oversized header.
MAX_SECRET_BYTES = 16 * 1024


class TLSCertificateError(ConnectionError):
    """The server's certificate did not verify (retried like any transport error)."""


class SecretFile:
    """A credential read from a file and re-read when the file changes.

    `current()` costs one stat() when nothing changed. A file that cannot be
    read (or holds an unusable value) at construction is a ConfigError naming
    `key`; later, the last good value is kept and one warning is logged until
    the file is good again. Trailing CR/LF is stripped (`echo token > file`).
    Write the file atomically (rename, as the kubelet does for secret mounts):
    an in-place rewrite may be read half-written.
    """

    def __init__(self, key: str, path: str, *, token: bool = False) -> None:
        self.key = key
        self.path = path
        self._token = token  # a bearer token must be printable ASCII without spaces
        self._failing = False
        value, signature, problem = self._load()
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")
        self._value, self._signature = value, signature

    def current(self) -> bytes:
        """The value, re-read first if the file changed since the last read."""
        try:
            st = os.stat(self.path)
            changed = _signature(st) != self._signature
        except OSError as e:
            self._failed(e.strerror or str(e))
            return self._value
        if changed:
            value, signature, problem = self._load()
            if problem is not None:
                self._failed(problem)  # the signature is kept: retried at the next push
            else:
                from shipper import events

                self._value, self._signature = value, signature
                events.log("info", "credential file changed, re-read", event="credential_reread",
                           key=self.key, path=self.path)
                self._failing = False
        elif self._failing:
            self._failing = False  # back to the file we last read successfully
        return self._value

    def _failed(self, problem: str) -> None:
        if not self._failing:
            from shipper import events

            self._failing = True
            events.log("warn", "credential file unreadable, keeping the last good value",
                       event="credential_unreadable", key=self.key, path=self.path, error=problem)

    def _load(self) -> tuple[bytes, tuple[int, ...], str | None]:
        """(value, signature, None) or (b"", (), problem); the problem never quotes the value."""
        try:
            # O_NONBLOCK: a FIFO at this path must not block the event loop in open().
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            return b"", (), f"cannot read {self.path}: {e.strerror or e}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return b"", (), f"{self.path} is not a regular file"
            data = os.read(fd, MAX_SECRET_BYTES + 1)
        except OSError as e:
            return b"", (), f"cannot read {self.path}: {e.strerror or e}"
        finally:
            os.close(fd)
        if len(data) > MAX_SECRET_BYTES:
            return b"", (), f"{self.path} is larger than {MAX_SECRET_BYTES} bytes"
        value = data.rstrip(b"\r\n")
        if not value:
            return b"", (), f"{self.path} is empty"
        if self._token and not all(0x21 <= b <= 0x7E for b in value):
            return b"", (), f"{self.path}: a bearer token must be printable ASCII without spaces"
        return value, _signature(st), None


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # A kubelet secret update swaps a symlink: new inode. An in-place write: new mtime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _tls_files(c: LokiConfig) -> list[tuple[str, str]]:
    """(key, path) of the TLS files [loki] names."""
    return [(key, path) for key, path in (("loki.ca_file", c.ca_file), ("loki.cert_file", c.cert_file),
                                          ("loki.key_file", c.key_file)) if path]


def _files_signature(files: list[tuple[str, str]]) -> tuple[tuple[int, ...] | None, ...]:
    out: list[tuple[int, ...] | None] = []
    for _, path in files:
        try:
            out.append(_signature(os.stat(path)))
        except OSError:
            out.append(None)  # gone for now: a change, tried at the next connection
    return tuple(out)


class Authorization:
    """The Authorization header value for each push: Bearer or Basic, from a SecretFile."""

    def __init__(self, secret: SecretFile, user: str | None = None) -> None:
        self._secret = secret
        self._user = None if user is None else user.encode()
        self.kind = "bearer" if user is None else "basic"
        self._used = b""

    def rotated(self) -> bool:
        """True if the file now holds another secret than the last `value()` sent."""
        return self._secret.current() != self._used

    def value(self) -> bytes:
        """Re-reads the file if it changed (call once per push)."""
        secret = self._used = self._secret.current()
        if self._user is None:
            return b"Bearer " + secret
        return b"Basic " + binascii.b2a_base64(self._user + b":" + secret, newline=False)


def tls_context(c: LokiConfig) -> ssl.SSLContext:
    """The client's TLS settings from [loki]; files are loaded now (ConfigError naming the key)."""
    import ssl  # only https pays for OpenSSL

    if c.ca_file:
        _check_readable("loki.ca_file", c.ca_file)
    try:
        context = ssl.create_default_context(cafile=c.ca_file or None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"loki.ca_file: cannot load CA certificates from {c.ca_file}: {_reason(e)}") from None
    if c.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if c.cert_file:
        _check_readable("loki.cert_file", c.cert_file)
        _check_readable("loki.key_file", c.key_file)
        try:
            # password: an encrypted key fails here instead of prompting on a terminal.
            context.load_cert_chain(c.cert_file, c.key_file, password=lambda: b"")
        except (OSError, ValueError) as e:
            raise ConfigError(f"loki.cert_file: cannot load the client certificate {c.cert_file} with "
                              f"loki.key_file {c.key_file} (PEM, unencrypted, matching): {_reason(e)}") from None
    return context


def _check_readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None


def _reason(e: Exception) -> str:
    return str(e) if not isinstance(e, OSError) or not e.strerror else e.strerror


@dataclass(frozen=True)
class Answer:
    """What the server said about one push."""

    status: int
    message: str = ""
    retry_after: str | None = None


async def _open(host: str, port: int,
                ssl_context: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `host`: each of its addresses in the resolver's order until one answers."""
    error: OSError | None = None
    for family, address in await resolve(host, port):
        try:
            return await asyncio.open_connection(address, port, family=family, ssl=ssl_context,
                                                 server_hostname=host if ssl_context is not None else None,
                                                 limit=MAX_RESPONSE_BODY)
        except OSError as e:
            if ssl_context is not None:
                import ssl  # loaded: ssl_context is one

                if isinstance(e, ssl.SSLError):
                    raise  # the server answered: its certificate, not the address, is the problem
            error = e
    assert error is not None  # resolve() returns at least one address or raises
    raise error


async def resolve(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) of each TCP address of `host`, in the system resolver's order.

    An IP literal is its own address. A name goes to getaddrinfo() on a
    short-lived thread of its own rather than through the loop's
    getaddrinfo, whose default executor would load concurrent.futures and
    logging (shipper.imports: about 0.4 MiB) for a lookup per connection.
    socket.gaierror (an OSError) when the name does not resolve.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, host)]
    key = (host, port)
    future = _LOOKUPS.get(key)
    if future is None or future.done():
        # One lookup in flight per name: a push that timed out while the resolver
        # hung leaves its lookup running, and the next attempt waits for that one
        # instead of starting another thread.
        loop = asyncio.get_running_loop()
        future = _LOOKUPS[key] = loop.create_future()
        future.add_done_callback(lambda f: _LOOKUPS.pop(key, None) if _LOOKUPS.get(key) is f else None)
        try:
            threading.Thread(target=_lookup, args=(loop, future, host, port), name="resolve", daemon=True).start()
        except RuntimeError as e:  # no thread to be had (a pod's process limit): a transport error, retried
            future.set_exception(OSError(f"cannot resolve {host!r}: {e}"))
    return await asyncio.shield(future)


# resolve()'s lookups in flight, by (host, port).
_LOOKUPS: dict[tuple[str, int], asyncio.Future[list[tuple[int, str]]]] = {}


def _lookup(loop: asyncio.AbstractEventLoop, future: asyncio.Future[list[tuple[int, str]]], host: str,
            port: int) -> None:
    """resolve()'s thread: getaddrinfo, its result (or error) handed back to the loop."""
    result: list[tuple[int, str]] | None = None
    error: BaseException | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        result = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos]
        if not result:
            error = socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    except Exception as e:  # gaierror; UnicodeError of a name IDNA cannot encode
        error = e if isinstance(e, OSError) else OSError(f"cannot resolve {host!r}: {e}")
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop closed while we looked up (shutdown): nobody waits
        pass


def _settle(future: asyncio.Future[list[tuple[int, str]]], result: list[tuple[int, str]] | None,
            error: BaseException | None) -> None:
    if future.done():  # the push timed out and was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


class LokiClient:
    """Pushes protobuf bodies (shipper.encoder.compress) to a Loki push URL."""

    def __init__(self, url: str, tenant_id: str = "", timeout: float = 10.0, *,
                 method: bytes = b"POST", content_type: bytes = b"application/x-protobuf",
                 ssl_context: ssl.SSLContext | None = None, authorization: Authorization | None = None) -> None:
        # method/content_type let the same client PUT the exit-time metrics to
        # a Pushgateway; Loki pushes use the defaults. Without ssl_context an
        # https URL gets the default one (system CAs) at the first connection.
        parts = parse_url(url)
        self._method = method
        self._tls = parts.scheme == "https"
        self._ssl_context = ssl_context if self._tls else None
        self._authorization = authorization
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
        for name, value in self._headers:
            http1.check_header(name, value)  # ValueError naming the header (a tenant_id with a newline...)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answered = False  # the current request got at least a byte of an answer
        # [loki] and the TLS files' signatures when they were loaded (from_config, https with files).
        self._tls_reload: tuple[LokiConfig, tuple[tuple[int, ...] | None, ...]] | None = None

    @classmethod
    def from_config(cls, c: LokiConfig) -> LokiClient:
        """The Loki client of [loki]: reads the TLS and credential files now (ConfigError names the key)."""
        if c.compression == "snappy":
            import importlib.util

            if importlib.util.find_spec("snappy") is None:
                raise ConfigError('loki.compression: "snappy" needs python-snappy, which is not installed '
                                  "(pip install 'shipper[snappy]'), or use \"gzip\" (the default) or \"none\"")
        authorization = None
        if c.bearer_token_file:
            authorization = Authorization(SecretFile("loki.bearer_token_file", c.bearer_token_file, token=True))
        elif c.basic_auth_password_file:
            authorization = Authorization(SecretFile("loki.basic_auth_password_file", c.basic_auth_password_file),
                                          user=c.basic_auth_user)
        if not c.url.startswith("https://"):
            return cls(c.url, c.tenant_id, c.timeout, authorization=authorization)
        files = _tls_files(c)
        client = cls(c.url, c.tenant_id, c.timeout, ssl_context=tls_context(c), authorization=authorization)
        if files:
            client._tls_reload = (c, _files_signature(files))
        return client

    async def push(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send one push; raises OSError/TimeoutError/http1.ProtocolError on transport failure."""
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                reused = self._writer is not None
                try:
                    answer = await self._exchange(body)
                except (http1.ClosedBeforeAnswer, ConnectionResetError, BrokenPipeError):
                    if not reused or self._answered:
                        raise
                    # A kept-alive connection the server closed while it was idle (a
                    # gateway's keep-alive timeout, often 60-75 s): not a failure of
                    # Loki. Once more at once on a new connection; a server that did
                    # take the push deduplicates it (same bytes, same timestamps).
                    await self.close()
                    answer = await self._exchange(body)
                if answer.status in (401, 403) and self._authorization is not None and self._authorization.rotated():
                    # The credential was rotated while this push was on its way (a
                    # token refresh racing the push): once more with the new one,
                    # instead of losing the batch to a refusal of the old one.
                    from shipper import events

                    events.log("info", "refused with a credential its file no longer holds; "
                               "pushing again with the new one", event="credential_stale_retry",
                               status=answer.status)
                    answer = await self._exchange(body)
                return answer
        except BaseException:
            # After any failure the connection's state is unknown: never reuse it.
            await self.close()
            raise

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None:
        """Timestamps Loki holds for `selector` in [start_ns, end_ns], or None if it cannot say.

        The rare path of shipper.delivery (an answer that named only 10 of more
        refusals): the push URL's `/push` becomes `/query_range`, same host,
        tenant and credentials. None when the URL has no such sibling, or the
        query is refused (a write-only gateway), fails, or is not Loki's JSON.
        """
        if not self._target.endswith(b"/push"):
            return None
        import json
        from urllib.parse import urlencode

        held: set[int] = set()
        start = start_ns
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    query = urlencode({"query": selector + ' | line_format ""', "start": start, "end": end_ns,
                                       "limit": STORED_QUERY_PAGE, "direction": "forward"})
                    target = self._target[:-len(b"push")] + b"query_range?" + query.encode()
                    answer = await self._exchange(b"", method=b"GET", target=target, max_body=MAX_QUERY_BODY)
                    if answer.status != 200:
                        return None
                    times = [int(value[0]) for stream in json.loads(answer.message)["data"]["result"]
                             for value in stream["values"]]
                    held.update(times)
                    if len(times) < STORED_QUERY_PAGE:
                        return held
                    start = max(times) + 1
        except BaseException as e:
            await self.close()
            if isinstance(e, (OSError, TimeoutError, EOFError, ValueError, KeyError, TypeError, IndexError)):
                return None
            raise

    async def _exchange(self, body: bytes, *, method: bytes | None = None, target: bytes | None = None,
                        max_body: int = MAX_RESPONSE_BODY) -> Answer:
        if self._writer is None:
            await self._connect()
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        headers = self._headers
        encoding = content_encoding(body)
        if encoding is not None:
            headers = [*headers, (b"Content-Encoding", encoding)]
        if self._authorization is not None:
            headers = [*headers, (b"Authorization", self._authorization.value())]
        self._answered = False  # no byte of an answer to this request yet
        writer.write(http1.request_head(method or self._method, target or self._target, headers, len(body)))
        writer.write(body)
        await writer.drain()
        answer = http1.ResponseReader(max_body)
        while True:
            data = await reader.read(65536)  # b"": the server closed
            self._answered = self._answered or bool(data)
            response = answer.feed(data)
            if response is not None:
                break
        if not response.keep_alive:
            await self.close()
        retry_after = response.header(b"retry-after")
        return Answer(response.status, response.body.decode("utf-8", "replace").strip(),
                      None if retry_after is None else retry_after.decode("latin-1"))

    async def _connect(self) -> None:
        if self._tls_reload is not None:
            self._reload_tls_if_changed()
        if self._tls and self._ssl_context is None:
            import ssl  # only https pays for OpenSSL

            self._ssl_context = ssl.create_default_context()
        try:
            self._reader, self._writer = await _open(self._host, self._port, self._ssl_context)
        except OSError as e:
            if self._ssl_context is not None:
                import ssl  # already imported: self._ssl_context is one

                if isinstance(e, ssl.SSLCertVerificationError):
                    raise TLSCertificateError(
                        f"certificate of {self._host}:{self._port} not trusted: {e.verify_message} "
                        f"(loki.ca_file must hold the CA that signed it, and the certificate "
                        f"must name the host of loki.url)") from e
            raise

    def _reload_tls_if_changed(self) -> None:
        """Before a new connection: rebuild the TLS context if ca_file/cert_file/key_file changed.

        cert-manager and the kubelet rotate these files; a kept-alive connection
        keeps its handshake, the next connection uses the new files. A file
        caught half-written (or bad) keeps the previous context, logged once
        per change, and is tried again at the next connection.
        """
        assert self._tls_reload is not None
        c, seen = self._tls_reload
        now = _files_signature(_tls_files(c))
        if now == seen:
            return
        from shipper import events

        self._tls_reload = (c, now)
        try:
            self._ssl_context = tls_context(c)
        except ConfigError as e:
            events.log("warn", "TLS files changed but cannot be loaded; keeping the previous ones",
                       event="tls_reload_failed", error=str(e))
            return
        events.log("info", "TLS files changed, reloaded for the next connection",
                   event="tls_reloaded", files=[path for _, path in _tls_files(c)])

    async def close(self) -> None:
        """Close the connection (it is reopened by the next push)."""
        writer, self._writer, self._reader = self._writer, None, None
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

        from shipper.encoder import decode_push, uncompress

        streams = decode_push(uncompress(body))
        out = self._out or sys.stdout
        out.write(json.dumps({"streams": streams}, ensure_ascii=False) + "\n")
        out.flush()
        return Answer(204)

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None:
        """The console holds nothing: it cannot say."""
        return None

    async def close(self) -> None:
        """Nothing to close."""
