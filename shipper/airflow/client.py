"""Loki's query API over urllib, and the reading of one try (page by page, lazily).

Runs in the Airflow api-server / webserver, never in the sidecar. TLS and
credentials as the sidecar's `[loki]` section: `ca_file` (else the system CAs),
`insecure_skip_verify`, `cert_file` + `key_file`, `bearer_token_file` or
`basic_auth_user` + `basic_auth_password_file`; the files are read at each
request (a rotated Secret needs no restart). Credentials never appear in a message.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from shipper import __version__
from shipper.airflow import loki_read as lr

USER_AGENT = f"shipper-airflow/{__version__}"
MAX_BODY = 64 * 1024 * 1024  # one page of 5,000 entries of 256 KiB lines would be over 1 GB: Loki's own limits apply first


class LokiQueryError(Exception):
    """A query Loki refused or could not be sent; `message` is for the Airflow user."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(16 * 1024 + 1)
    except OSError as e:
        raise LokiQueryError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > 16 * 1024:
        raise LokiQueryError(f"{what} {path} is larger than 16 KiB: not a credential")
    return data.decode("utf-8", "replace").rstrip("\r\n")


class LokiHTTP:
    """GET requests to Loki's query API, with the reader's TLS and credentials."""

    def __init__(self, config: lr.ReadConfig) -> None:
        self.config = config
        self._ssl: ssl.SSLContext | None = None
        self._ssl_signature: tuple[Any, ...] | None = None

    def headers(self) -> dict[str, str]:
        c = self.config
        h = {"User-Agent": USER_AGENT, "Accept": "application/json",
             # Loki 3: structured metadata apart from stream labels (ignored by Loki 2).
             "X-Loki-Response-Encoding-Flags": "categorize-labels"}
        if c.tenant_id:
            h["X-Scope-OrgID"] = c.tenant_id
        if c.bearer_token_file:
            h["Authorization"] = "Bearer " + _read_secret(c.bearer_token_file, "bearer_token_file")
        elif c.basic_auth_user:
            password = _read_secret(c.basic_auth_password_file, "basic_auth_password_file")
            token = base64.b64encode(f"{c.basic_auth_user}:{password}".encode()).decode()
            h["Authorization"] = "Basic " + token
        return h

    def ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.url.startswith("https://"):
            return None
        files = [f for f in (c.ca_file, c.cert_file, c.key_file) if f]
        signature = tuple(_stat_signature(f) for f in files)
        if self._ssl is not None and signature == self._ssl_signature:
            return self._ssl
        try:
            context = ssl.create_default_context(cafile=c.ca_file or None)
            if c.insecure_skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if c.cert_file:
                context.load_cert_chain(c.cert_file, c.key_file)
        except (OSError, ssl.SSLError) as e:
            raise LokiQueryError(f"TLS files for Loki ({', '.join(files)}) are not usable: {e}") from None
        self._ssl, self._ssl_signature = context, signature
        return context

    def get(self, path: str, params: dict[str, str]) -> tuple[int, bytes]:
        """(status, body); transport failures raise LokiQueryError with a readable message."""
        url = self.config.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=self.headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout, context=self.ssl_context()) as r:
                return r.status, r.read(MAX_BODY)
        except urllib.error.HTTPError as e:
            body = e.read(64 * 1024)
            return e.code, body
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise LokiQueryError(lr.explain_unreachable(e, self.config)) from None

    def get_json(self, path: str, params: dict[str, str]) -> Any:
        status, body = self.get(path, params)
        text = body.decode("utf-8", "replace")
        if status != 200:
            raise LokiQueryError(lr.explain_status(status, text, self.config), status, text)
        try:
            doc = json.loads(text)
        except ValueError:
            raise LokiQueryError(f"Loki at {self.config.url} answered something that is not JSON: "
                                 f"{text[:200]!r}") from None
        return doc

    def major_version(self) -> int | None:
        """Loki's major version from /loki/api/v1/status/buildinfo; None when it cannot say."""
        try:
            status, body = self.get("/loki/api/v1/status/buildinfo", {})
        except LokiQueryError:
            return None
        if status != 200:
            return None
        try:
            return lr.loki_major_version(json.loads(body))
        except ValueError:
            return None


def _stat_signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_VERSIONS: dict[str, int | None] = {}


@dataclass
class TryRead:
    """One try, being read. `sources` is known once `start()` returned; `items()` goes on lazily.

    Items: ("line", Entry), ("summary", SummaryView, ts_ns), ("message", text, level, ts_ns | None).
    """

    config: lr.ReadConfig
    key: lr.TryKey
    start_ns: int | None
    end_ns: int | None
    running: bool
    now_ns: int = field(default_factory=time.time_ns)
    http: LokiHTTP | None = None
    sources: list[str] = field(default_factory=list)
    count: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.http = self.http or LokiHTTP(self.config)
        self._first: list[lr.Entry] = []
        self._pager: lr.Pager | None = None
        self._summaries: list[lr.Entry] = []
        self.metadata = True
        self.query = ""
        self.window = (0, 0)
        self.probe: str | None = None

    # -- the first page, eagerly: sources and failures are known before Airflow shows anything --

    def start(self) -> TryRead:
        assert self.http is not None
        mode = self.config.structured_metadata
        metadata = self._wants_metadata(mode)
        try:
            self._read_first(metadata, mode)
        except (LokiQueryError, lr.PagingError) as e:
            self.error = getattr(e, "message", None) or str(e)
            self.sources.append(f"could not read this try's log from Loki: {self.error}")
            return self
        self._describe_sources()
        return self

    def _wants_metadata(self, mode: str) -> bool:
        """Whether to query by structured metadata: as configured, or for "auto" by Loki's version."""
        assert self.http is not None
        if mode != "auto":
            return mode == "on"
        # Loki's buildinfo names its version (a build without version info says ""): a 2.x
        # has no structured metadata. Unknown: the metadata query first, probed if empty.
        if self.config.url not in _VERSIONS:
            _VERSIONS[self.config.url] = self.http.major_version()
        major = _VERSIONS[self.config.url]
        return major is None or major >= 3

    def _read_first(self, metadata: bool, mode: str) -> None:
        """The first page; an empty metadata query probed, and in "auto" redone without metadata if need be."""
        self._plan(metadata)
        if metadata and self._empty():
            self.probe = self._probe()
            if self.probe == "no metadata" and mode == "auto":
                self._plan(False)  # Loki stores this task's lines without any metadata: Loki 2.x

    def _describe_sources(self) -> None:
        """The `sources` Airflow shows above the log: where and how it was read, and why it is empty."""
        tenant = f" (tenant {self.config.tenant_id})" if self.config.tenant_id else ""
        self.sources.append(f"Loki {self.config.url}{tenant}: {self.query}, "
                            f"{lr.rfc3339(self.window[0])} to {lr.rfc3339(self.window[1])}")
        if not self.metadata:
            self.sources.append(lr.fallback_note(self.window))
        if self.running and self._empty():
            # said here, not as a line: a later poll would have to take a line back
            self.sources.append(lr.no_lines_text(self.key, self.query, self.window, finished=False,
                                                 labels_only_hits=self.probe == "no metadata"))

    def _empty(self) -> bool:
        """Whether the query found nothing at all: no line, no summary, no page left."""
        return not self._first and not self._summaries and self._pager_done()

    def _pager_done(self) -> bool:
        return self._pager is None or self._pager.done

    def _plan(self, metadata: bool) -> None:
        """Query, window and pager for `metadata` (or the Loki 2.x fallback); the first page read."""
        self.metadata = metadata
        self.query = lr.build_query(self.key, self.config, metadata=metadata)
        self.window = lr.try_window(self.config, start_ns=self.start_ns, end_ns=self.end_ns, now_ns=self.now_ns,
                                    running=self.running, metadata=metadata)
        self._pager = lr.Pager(self.query, *self.window, limit=self.config.page_limit,
                               max_length_ns=int(self.config.max_query_length * lr.NS))
        self._summaries = []
        self._first = self._next_page()

    def _next_page(self) -> list[lr.Entry]:
        assert self._pager is not None and self.http is not None
        while True:
            params = self._pager.params()
            if params is None:
                return []
            try:
                doc = self.http.get_json("/loki/api/v1/query_range", params)
            except LokiQueryError as e:
                if e.status == 400 and (allowed := lr.refused_limit(e.body)) is not None:
                    self._pager.limit_refused(allowed)
                    continue
                if e.status == 400 and (allowed_ns := lr.refused_length(e.body)) is not None:
                    self._pager.length_refused(allowed_ns)
                    continue
                raise
            data = doc.get("data") or {}
            entries = self._pager.feed(data)
            lines, summaries = lr.split_summaries(entries)
            self._summaries += summaries
            if lines or self._pager.done:
                return lines

    def items(self) -> Iterator[tuple[Any, ...]]:
        finished = not self.running
        if self.error is not None:
            yield ("message", f"could not read this try's log from Loki: {self.error}", "error", None)
            return
        complete, last_ts = yield from self._lines()
        if complete:
            yield from self._ending(finished, last_ts)

    def _lines(self) -> Generator[tuple[Any, ...], None, tuple[bool, int | None]]:
        """The try's lines, page by page; returns (read to the end, the last line's time)."""
        page = self._first
        self._first = []
        last_ts: int | None = None
        while page:
            for entry in page:
                if self.count >= self.config.max_lines:
                    yield ("message", f"this log has more than {self.config.max_lines} lines: the rest is in "
                           f"Loki ({self.query})", "warning", last_ts)
                    return False, last_ts
                self.count += 1
                last_ts = entry.ts_ns
                yield ("line", entry)
            try:
                page = self._next_page()
            except (LokiQueryError, lr.PagingError) as e:
                text = getattr(e, "message", None) or str(e)
                yield ("message", f"reading from Loki stopped after {self.count} lines: {text}", "error", last_ts)
                return False, last_ts
        return True, last_ts

    def _ending(self, finished: bool, last_ts: int | None) -> Iterator[tuple[Any, ...]]:
        """After the last line: why there is none, or the shipper's exit summary (or why there is none)."""
        if self.count == 0 and not self._summaries:
            hits = self.probe == "no metadata"
            text = lr.no_lines_text(self.key, self.query, self.window, finished=finished, labels_only_hits=hits)
            if finished or hits:
                yield ("message", text, "warning", None)
            return
        summary = self._summaries[-1] if self._summaries else None
        view = lr.summarize(summary, finished=finished)
        if view is not None:
            ts = summary.ts_ns if summary is not None else (last_ts or self.window[1])
            yield ("summary", view, max(ts, last_ts or 0))

    def _probe(self) -> str | None:
        """One entry of the task (labels only) in the window: "metadata" if Loki stores this task's
        lines with run_id/try_number (so this try has none), "no metadata" if without (Loki 2.x,
        or a Loki 3 not storing structured metadata), None if Loki has no line of the task there."""
        assert self.http is not None
        doc = self.http.get_json("/loki/api/v1/query_range", {
            "query": lr.selector(self.key, self.config), "start": str(self.window[0]),
            "end": str(self.window[1]), "limit": "1", "direction": "forward"})
        entries = lr.parse_streams(doc.get("data") or {})
        if not entries:
            return None
        return "metadata" if any(k in entries[0].metadata for k in lr.METADATA_KEYS) else "no metadata"


def read_try(config: lr.ReadConfig, key: lr.TryKey, *, start_ns: int | None, end_ns: int | None,
             running: bool, now: Callable[[], int] = time.time_ns, http: LokiHTTP | None = None) -> TryRead:
    """Start reading one try: the first page is fetched now, the rest when `items()` is iterated."""
    return TryRead(config, key, start_ns, end_ns, running, now(), http).start()
