"""A strict, scriptable stand-in for Grafana Loki's push endpoint, for tests and benchmarks.

It runs an aiohttp server on 127.0.0.1 inside the caller's asyncio loop and
answers ``POST /loki/api/v1/push`` the way Loki 3.x does, decoding bodies with
the protobuf library compiled from ``proto/push.proto`` (``load_push_pb2``) so
that it never shares code with the shipper's hand-written encoder.

Use in a test::

    rx = LokiReceiver(script=[Action.status(503)])   # or rx.add_actions(...) later
    await rx.start()
    try:
        ...  # run the shipper against rx.url
        await rx.wait_for_entries(100, stream="stdout")
        assert rx.lines(stream="stdout") == expected
        assert rx.dedup_dropped == 0
    finally:
        await rx.stop()

Fault injection
---------------
Each push request takes the next ``Action`` from the script (FIFO); once the
script is empty every push gets ``Action.ok()``. Only pushes consume actions
(``/ready`` and ``/stats`` never do).

* ``Action.ok()``: strict handling, like Loki (below).
* ``Action.status(code, body="", headers=None)``: read the body, answer
  ``code`` with ``body`` exactly as given, store nothing.
* ``Action.reset()``: read the whole request, then abort the TCP connection
  with an RST (SO_LINGER 0): the client sees a connection reset, no answer.
* ``Action.reset_mid_body()``: abort (RST) as soon as the headers are parsed,
  without reading the body.
* ``Action.delay(seconds)``: sleep, then strict handling. Not a way to
  synchronise tests; use ``wait_for_requests``/``wait_for_entries``.
* ``Action.hang()``: read the body and never answer, until the client gives
  up or ``stop()`` is called (then the connection is reset).

Every push is recorded in ``requests`` (a ``RequestRecord``) as soon as its
headers arrive, so ``wait_for_requests`` also sees requests that hang; the
record's ``status`` is filled in when an answer is sent and stays ``None``
for reset and hang. ``wire_bytes`` is the body as sent (compressed),
``body_bytes`` the decompressed protobuf (what a batch size limit bounds).

``wait_for_entries``/``wait_for_requests`` wake on every store/arrival (no
polling) and raise AssertionError after ``timeout`` seconds (default 60; None
waits forever), so ``timeout`` cannot be used as a label filter name there.

Strict handling (what real Loki does, with its default limits)
--------------------------------------------------------------
* 401 ``no org id`` without a valid ``X-Scope-OrgID`` when ``require_tenant``.
* 400 unless ``Content-Type`` is ``application/x-protobuf`` or
  ``application/json`` (parameters allowed). A missing type is a 400 in Loki
  too (Go's mime.ParseMediaType); Loki reads any other type as protobuf,
  which a client must not rely on. ``Content-Encoding`` may be absent,
  ``snappy`` (Loki ignores that value) or ``gzip`` (the body is gunzipped
  first, whatever its type); anything else is a 400 here (Loki also takes
  raw ``deflate``).
* Protobuf: 400 if the body is not snappy *block* format (framed snappy is
  named as such in the message), or not a valid ``PushRequest`` (including bad
  UTF-8 in string fields, and timestamps Go's time cannot hold).
* JSON (``pkg/loghttp`` and ``pkg/util/unmarshal``, what Promtail's and
  Fluent Bit's JSON clients send): ``{"streams": [{"stream": {"name":
  "value", ...}, "values": [["<ns>", "<line>"], ["<ns>", "<line>",
  {"name": "value"}], ...]}]}``. Each stream's labels become the string
  Loki builds from the object (``LabelSet.String()``: sorted, Go-quoted), and
  from there it is handled exactly as a protobuf push (the same label
  parsing, validation, store and arrivals). The timestamp is a JSON string of
  decimal nanoseconds (an optional ``-``, int64), the line a string, the
  optional third element an object of strings: structured metadata (3.4; 2.7
  refuses a third element: ``array must contains 2 values``); a ``null``
  entry is skipped and elements past the third are ignored (3.4). Anything
  else is a 400 with a message of ours (Loki's are jsoniter's/jsonparser's);
  stricter than Loki: an entry of fewer than two elements, and label or
  metadata values that are not strings (jsonparser takes a bare number's
  text), are refused.
* 400 and *nothing stored* if any stream's labels string does not parse: Loki
  parses every stream's labels before writing any (``couldn't parse labels``).
* Per stream (the stream is refused, other streams are still written):
  no labels (empty values are dropped first, like Loki), more than 15 label
  names (``service_name`` not counted), name > 1024 or value > 2048 UTF-8
  bytes, duplicate names, names starting with ``__`` (see below).
* Distributor, per entry (the entry is refused, others go on): older than
  7 days, more than 10 minutes in the future, line > 256 KiB of UTF-8,
  structured metadata with an invalid name, > 64 KiB (names + values) or
  > 128 pairs. All of them are answered together, grouped as Loki 3.4's
  ``util.GroupedErrors`` (``N errors like: <msg>; M errors like: <msg>``; a
  single error alone; here in order of first occurrence, Go's map order is
  random) with 400, but only if the ingester then accepts the push; 2.7 keeps
  only the last one. Messages are Loki's (timestamps RFC 3339 in whole
  seconds, streams as Go prints the parsed label set).
* Distributor, the tenant's ingestion rate limit (``Limits.ingestion_rate``,
  off by default): a token bucket over the push's validated bytes; over it,
  429 ``Ingestion rate limit exceeded for user ...`` and nothing stored.
* Ingester, per stream (``stream.Push``): an entry equal (timestamp, line) to
  the stream's last line is skipped; the per-stream rate limit
  (``Limits.per_stream_rate_limit``, off by default) refuses the stream's
  entries of the push together (``rate_limit_whole_stream``, 3.4's default
  with shard_streams) or entry by entry (2.7); an entry older than the
  stream's highest timestamp minus max_chunk_age / 2 is "too far behind".
  The stream's answer is ``entry with timestamp <Go time> ignored, reason:
  '<why>',`` for the first 10 refused, then ``user '<tenant>', total ignored:
  N out of M for stream: <labels>``: 429 when the last refused entry was
  rate limited, else 400. **The push answers with its last stream's result
  only** (``instance.Push`` overwrites it per stream): refused entries of an
  earlier stream are gone and the answer is 204 if the last one was stored.
* Dedup: an entry whose (timestamp, line) is in its stream's head block (the
  newest unflushed block, cut once it holds ``chunk_block_size``, 256 KiB, of
  lines plus 8 bytes per structured metadata pair) is dropped silently and
  counted in ``dedup_dropped``; metadata is not compared. Once the block is
  cut, the same entry is stored again (a duplicate), as in Loki.
* ``service_name`` (``Limits.discover_service_name``, empty by default, so
  stored labels are those sent; ``Limits.loki3()`` has Loki 3's list): added
  to a stream without one before its labels are validated, from the first
  listed label with a value, else ``unknown_service``.
* 204 when everything was stored; 422 for a push without streams (3.4).
* ``Limits.loki27()`` answers as 2.7.7: its wording, only the last validation
  error, line bytes only in the sizes, structured metadata dropped, per-entry
  rate limiting.

Rate limiters read ``LokiReceiver(clock=...)`` (default ``time.monotonic``),
so a test can step time; the validation's "now" is the wall clock.

Stricter than Loki (a correct shipper never notices): label values must be
double-quoted (PromQL also takes single quotes and backticks), no trailing
comma or metric name before ``{``, label values must be valid UTF-8 after
unescaping, structured metadata names are refused instead of normalised,
label names starting with ``__`` (reserved in Prometheus) are refused although
Loki's push path lets them through.
Not modelled: stream limits, chunk cuts other than the head block's (a chunk
full at 1.5 MB compressed, idle or aged chunks flushed), ``detected_level``
in the stored metadata (only its size in the block), stream sharding.

Stored data: streams are keyed by their canonical label set, a sorted tuple of
``(name, value)``; entries keep arrival order; an entry's structured metadata
is a sorted tuple of ``(name, value)`` too (a label set to Loki: the order on
the wire means nothing).

As a separate process (benchmarks)::

    python -m tests.loki_receiver --port 0 --ready-file PATH [--require-tenant]
        [--record-arrivals PATH] [--keep-entries]

prints the push URL on stdout, writes it to the ready file (atomically), and
serves ``GET /stats`` (JSON counts) until SIGTERM/SIGINT. Without
``--keep-entries`` it keeps only counts and dedup fingerprints, not lines.
``--record-arrivals`` appends, per push that stored entries, a line
``P <receive_time_ns> <n_stored>``, and per stored entry that holds a
latency stamp a line ``L <receive_time_ns> <send_ns>`` (``time.time_ns()``
wall clock, taken once the body has been read and decoded). A stamp is the
first ``t=<10 to 20 decimal digits>`` at the line start or after a space or a
``"``, and followed by a space or a ``"`` (`ARRIVAL_STAMP`): at the start of
a line (``t=1764064800123456789 [2026-...] ...``), inside an Airflow line
(``... INFO - t=1764064800123456789 #12 Fetched ...``) or inside a JSON
record shipped whole (``..."event":"t=1764064800123456789 #12 ..."``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import cramjam
from aiohttp import web

PUSH_PATH = "/loki/api/v1/push"
# The latency stamp --record-arrivals looks for (see the module docstring).
ARRIVAL_STAMP: Final = re.compile(r'(?:^|[ "])t=([0-9]{10,20})(?=[ "])')
# jsonparser.ParseInt: an optional minus, then decimal digits only.
_JSON_TIMESTAMP: Final = re.compile(r"-?[0-9]+\Z")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
PROTO_PATH = Path(__file__).resolve().parent.parent / "proto" / "push.proto"

_SECOND_NS = 1_000_000_000
# Range of Go's time.Time that gogo's StdTimeUnmarshal accepts (0001-01-01 .. 9999-12-31).
_MIN_TS_SECONDS = -62135596800
_MAX_TS_SECONDS = 253402300799
_FRAMED_SNAPPY_MAGIC = b"\xff\x06\x00\x00sNaPpY"


# ---------------------------------------------------------------------------
# Protobuf: compiled from proto/push.proto with grpc_tools, never hand-decoded.
# ---------------------------------------------------------------------------

@functools.cache
def load_push_pb2() -> Any:
    """Compile proto/push.proto (once per process, cached on disk by content) and import push_pb2.

    All tests must get push_pb2 from here: importing a second copy of the
    generated module would register ``push.proto`` twice in protobuf's default
    descriptor pool.
    """
    source = PROTO_PATH.read_bytes()
    # The generated code depends on protoc's version as well as on the .proto.
    versions = f"{importlib.metadata.version('grpcio-tools')}/{importlib.metadata.version('protobuf')}"
    key = hashlib.sha256(source + versions.encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"shipper-push-pb2-{key}"
    module_path = out / "push_pb2.py"
    if not module_path.exists():
        # Compile into a private directory, then rename it into place: the
        # rename is atomic, so concurrent processes never import a half-written file.
        staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.", dir=out.parent))
        try:
            bundled = Path(str(importlib.resources.files("grpc_tools") / "_proto"))  # timestamp.proto
            done = subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_PATH.parent}", f"-I{bundled}",
                 f"--python_out={staging}", str(PROTO_PATH)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"protoc failed on {PROTO_PATH}:\n{done.stderr}")
            try:
                staging.rename(out)
            except OSError:
                if not module_path.exists():  # not simply another process winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("_shipper_tests_push_pb2", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Prometheus label sets: a small tokenizer, the grammar Loki's ParseLabels takes.
# ---------------------------------------------------------------------------

class LabelsSyntaxError(ValueError):
    """The labels string is not a well-formed ``{name="value", ...}`` set."""


_WHITESPACE = " \t\r\n"  # what the PromQL lexer skips between tokens
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"'}
_HEX_ESCAPE_WIDTH = {"x": 2, "u": 4, "U": 8}


def is_label_name(name: str) -> bool:
    """Prometheus' classic label name: ``[a-zA-Z_][a-zA-Z0-9_]*``."""
    return bool(name) and name[0] in _NAME_START and all(c in _NAME_CHARS for c in name)


class _LabelsParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> LabelsSyntaxError:
        at = self.pos if pos is None else pos
        return LabelsSyntaxError(f"1:{at + 1}: parse error: {message}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of input"
            raise self.error(f"unexpected {found}, expected {what}")
        self.pos += 1

    def parse(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        self.skip_ws()
        self.expect("{", "'{'")
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                self.skip_ws()
                name = self.name()
                self.skip_ws()
                self.expect("=", "'=' after label name")  # also refuses =~, != and !~
                self.skip_ws()
                pairs.append((name, self.string()))
                self.skip_ws()
                if self.peek() == "}":
                    self.pos += 1
                    break
                self.expect(",", "',' or '}'")
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.text[self.pos]!r} after '}}'")
        return pairs

    def name(self) -> str:
        start = self.pos
        if self.peek() not in _NAME_START or not self.peek():
            found = repr(self.peek()) if self.peek() else "end of input"
            raise self.error(f"unexpected {found}, expected a label name")
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def string(self) -> str:
        """A Go double-quoted string literal (what strconv.Quote writes), unescaped."""
        start = self.pos
        self.expect('"', 'a double-quoted label value')
        text, out = self.text, bytearray()
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated quoted string", start)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                break
            if char == "\n":  # Go string literals cannot span lines
                raise self.error("unterminated quoted string (raw newline)", start)
            if char != "\\":
                run_end = self.pos
                while run_end < len(text) and text[run_end] not in '"\\\n':
                    run_end += 1
                try:
                    out += text[self.pos:run_end].encode("utf-8")
                except UnicodeEncodeError:
                    raise self.error("label value is not valid UTF-8") from None
                self.pos = run_end
                continue
            self.pos += 1
            out += self.escape()
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("label value is not valid UTF-8 after unescaping", start) from None

    def escape(self) -> bytes:
        """The escape after a backslash: Go's set, no more (no \\' in a double-quoted string)."""
        at = self.pos - 1
        kind = self.peek()
        if kind in _SIMPLE_ESCAPES:
            self.pos += 1
            return _SIMPLE_ESCAPES[kind].encode()
        if kind in _HEX_ESCAPE_WIDTH:
            width = _HEX_ESCAPE_WIDTH[kind]
            digits = self.text[self.pos + 1:self.pos + 1 + width]
            if len(digits) != width or not all(d in _HEX for d in digits):
                raise self.error(f"\\{kind} escape needs {width} hex digits", at)
            self.pos += 1 + width
            value = int(digits, 16)
            if kind == "x":
                return bytes([value])  # a raw byte, checked as UTF-8 with the whole value
            if value > 0x10FFFF or 0xD800 <= value < 0xE000:
                raise self.error("escape sequence is an invalid Unicode code point", at)
            return chr(value).encode("utf-8")
        if kind in _OCTAL:
            digits = self.text[self.pos:self.pos + 3]
            if len(digits) != 3 or not all(d in _OCTAL for d in digits) or int(digits, 8) > 255:
                raise self.error("octal escape needs 3 octal digits, at most \\377", at)
            self.pos += 3
            return bytes([int(digits, 8)])
        found = repr(kind) if kind else "end of input"
        raise self.error(f"unknown escape sequence \\{found}", at)


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parse a Prometheus label set ``{a="x", b="y"}`` into pairs, in the order written.

    Only syntax is checked here (LabelsSyntaxError); duplicates, empty sets,
    reserved names and lengths are per-stream validation, as in Loki.
    """
    return _LabelsParser(text).parse()


# ---------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------

StreamKey = tuple[tuple[str, str], ...]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored log entry."""

    ts_ns: int
    line: str
    metadata: Metadata = ()


# Loki 3.4.6's default discover_service_name (pkg/validation/limits.go): the first of these labels
# with a value becomes service_name, else "unknown_service".
LOKI3_SERVICE_NAME_LABELS: Final = (
    "service", "app", "application", "app_name", "name", "app_kubernetes_io_name", "container",
    "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name")
UNKNOWN_SERVICE: Final = "unknown_service"
LokiVersion = Literal["3.4", "2.7"]


@dataclass(frozen=True)
class Limits:
    """Loki's limits (pkg/validation/limits.go, the ingester's config), Loki's defaults unless noted.

    Sizes are bytes (of UTF-8, like Go's len()), rates bytes per second,
    times nanoseconds. Three defaults differ from Loki's so that a receiver
    built with ``Limits()`` stores exactly what was sent and never throttles:
    the rate limits are off (``None``; Loki: 4 MB/s burst 6 MB per tenant,
    3 MB/s burst 15 MB per stream), ``discover_service_name`` is empty (as
    Loki with ``discover_service_name: []``; pass ``LOKI3_SERVICE_NAME_LABELS``
    for Loki 3's default) and ``discover_log_levels`` is off.
    """

    max_line_size: int = 256 * 1024  # bytes of UTF-8
    max_label_names_per_series: int = 15
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048  # bytes of UTF-8, like Go's len()
    reject_old_samples: bool = True
    reject_old_samples_max_age_ns: int = 7 * 24 * 3600 * _SECOND_NS
    creation_grace_period_ns: int = 10 * 60 * _SECOND_NS
    # Unordered writes accept entries down to newest-in-stream minus max_chunk_age / 2.
    max_chunk_age_ns: int = 2 * 3600 * _SECOND_NS
    max_structured_metadata_size: int = 64 * 1024  # sum of len(name) + len(value), bytes
    max_structured_metadata_entries: int = 128
    max_recv_msg_size: int = 100 * 1024 * 1024  # compressed body and decompressed protobuf
    # Distributor: the tenant's token bucket over the validated entries of a push (line + metadata bytes).
    ingestion_rate: float | None = None  # ingestion_rate_mb * 2**20
    ingestion_burst: int = 6 * 1024 * 1024  # ingestion_burst_size_mb * 2**20
    # Ingester: each stream's token bucket (per_stream_rate_limit, per_stream_rate_limit_burst).
    per_stream_rate_limit: float | None = None
    per_stream_rate_limit_burst: int = 15 * 1024 * 1024
    # shard_streams.enabled (3.4's default True, 2.7's False): a stream over its rate limit is
    # refused whole for that push; False: entry by entry, the first ones that fit are stored.
    rate_limit_whole_stream: bool = True
    # The head block that dedups (timestamp, line) is cut once its uncompressed size reaches this.
    chunk_block_size: int = 256 * 1024
    max_returned_stream_errors: int = 10  # entries an ingester refusal lists (0: all)
    discover_service_name: tuple[str, ...] = ()
    # Loki 3 adds a detected_level structured metadata pair to each entry: it counts in the head
    # block's size (8 bytes a pair), so it moves the block cut. The pair is not stored here.
    discover_log_levels: bool = False
    # Whose answers: "3.4" (grouped validation errors, messages of 3.4.6) or "2.7" (2.7.7: the last
    # validation error only, its wording, sizes of lines only, no structured metadata limits).
    version: LokiVersion = "3.4"

    @classmethod
    def loki3(cls, **changes: Any) -> Limits:
        """Loki 3.4.6 as configured by default: service_name and detected_level discovery on."""
        return cls(**{"discover_service_name": LOKI3_SERVICE_NAME_LABELS, "discover_log_levels": True,
                      **changes})

    @classmethod
    def loki27(cls, **changes: Any) -> Limits:
        """Loki 2.7.7 as configured by default: per-entry rate limiting, its messages."""
        return cls(**{"version": "2.7", "rate_limit_whole_stream": False, **changes})


class TokenBucket:
    """golang.org/x/time/rate's Limiter as Loki uses it (AllowN only): starts full, refills at
    `rate` per second up to `burst`; a refused AllowN takes nothing; n > burst never passes."""

    __slots__ = ("rate", "burst", "tokens", "last", "clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.last = clock()

    def allow(self, n: int) -> bool:
        now = self.clock()
        last = min(self.last, now)
        tokens = min(float(self.burst), self.tokens + (now - last) * self.rate)
        if n > self.burst or tokens < n:
            return False
        self.tokens, self.last = tokens - n, now
        return True


ActionKind = Literal["ok", "status", "reset", "reset_mid_body", "delay", "hang"]


@dataclass(frozen=True)
class Action:
    """How the receiver answers one push request; build with the class methods."""

    kind: ActionKind
    code: int = 0
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    gate: asyncio.Event | None = None  # "status": answer only once it is set

    @classmethod
    def ok(cls) -> Action:
        """Strict Loki handling (also what every push gets once the script is empty)."""
        return cls("ok")

    @classmethod
    def status(cls, code: int, body: str = "", headers: Mapping[str, str] | None = None,
               gate: asyncio.Event | None = None) -> Action:
        """Answer `code` with `body` (sent as is) and `headers`, storing nothing;
        with a `gate`, only once the test sets it (something happens in between)."""
        return cls("status", code=code, body=body, headers=tuple((headers or {}).items()), gate=gate)

    @classmethod
    def reset(cls) -> Action:
        """Read the whole request, then reset the connection without answering."""
        return cls("reset")

    @classmethod
    def reset_mid_body(cls) -> Action:
        """Reset the connection right after the headers, before reading the body."""
        return cls("reset_mid_body")

    @classmethod
    def delay(cls, seconds: float) -> Action:
        """Wait `seconds`, then handle the push strictly (a slow Loki)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls) -> Action:
        """Read the request and never answer (until the client gives up or stop())."""
        return cls("hang")


@dataclass
class RequestRecord:
    """One push request as received; filled in while it is handled."""

    received_ns: int  # time.time_ns() when the headers arrived
    action: ActionKind
    headers: dict[str, str]  # all request headers, names lower-cased
    content_type: str | None
    content_encoding: str | None
    user_agent: str | None
    tenant: str | None  # X-Scope-OrgID
    wire_bytes: int = 0  # body as received (snappy- or gzip-compressed)
    body_bytes: int = 0  # decompressed protobuf, or the JSON; 0 if the body could not be decompressed
    streams: int = 0  # in the decoded PushRequest
    entries: int = 0  # in the decoded PushRequest
    stored: int = 0
    deduplicated: int = 0
    refused: int = 0  # entries refused by validation (stream or entry level)
    status: int | None = None  # None: not answered (yet), or reset/hang
    error: str = ""  # the text of a non-2xx answer


class _Stream:
    """One stream as Loki's ingester keeps it: stored entries, the last line, the highest
    timestamp, the head block's (timestamp, line) pairs and size, and the stream's rate limiter."""

    __slots__ = ("labels", "entries", "count", "head", "head_size", "newest_ns", "last", "limiter")

    def __init__(self, key: StreamKey, keep_entries: bool) -> None:
        self.labels = dict(key)
        self.entries: list[Entry] | None = [] if keep_entries else None
        self.count = 0
        # (ts, line) pairs in the head block; only their hash when lines are not kept.
        self.head: set[object] = set()
        self.head_size = 0
        self.newest_ns: int | None = None
        self.last: tuple[int, str] | None = None
        self.limiter: TokenBucket | None = None

    def matches(self, label_filter: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in label_filter.items())

    def fingerprint(self, ts_ns: int, line: str) -> object:
        """Dedup identity: the pair itself, or only its 64-bit hash when lines are not kept."""
        return (ts_ns, line) if self.entries is not None else hash((ts_ns, line))


class _Failed:
    """An entry the ingester refused: its timestamp, the reason, and whether it is a rate limit."""

    __slots__ = ("ts_ns", "reason", "rate_limited")

    def __init__(self, ts_ns: int, reason: str, rate_limited: bool) -> None:
        self.ts_ns = ts_ns
        self.reason = reason
        self.rate_limited = rate_limited


class _Rejected(Exception):
    """The whole request is refused with this status and message (nothing stored)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------
# The receiver
# ---------------------------------------------------------------------------

class LokiReceiver:
    """A strict Loki push endpoint on 127.0.0.1 with scripted failures; see the module docstring."""

    def __init__(self, *, require_tenant: bool = False, script: Iterable[Action] = (),
                 limits: Limits | None = None, keep_entries: bool = True, port: int = 0,
                 record_arrivals: str | os.PathLike[str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, keepalive_timeout: float = 75.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # ssl_context: serve https (url starts with https://); CERT_REQUIRED on it asks for client certs.
        # keepalive_timeout: an idle kept-alive connection is closed after this (aiohttp's and
        # nginx's default, 75 s), as a Loki gateway does.
        self.keepalive_timeout = keepalive_timeout
        self.require_tenant = require_tenant
        self._ssl_context = ssl_context
        self.limits = limits or Limits()
        self.keep_entries = keep_entries
        self.requests: list[RequestRecord] = []
        self.dedup_dropped = 0
        self.refused_entries = 0
        self._script: collections.deque[Action] = collections.deque(script)
        self._streams: dict[StreamKey, _Stream] = {}  # the streams with an entry stored
        self._states: dict[StreamKey, _Stream] = {}  # every stream the ingester has seen
        self._tenant_buckets: dict[str, TokenBucket] = {}
        # clock: seconds, for the rate limiters' token buckets (a test may step it by hand).
        self._clock = clock
        self._total = 0
        # Replaced on every change: waiters grab the current one, re-check, and
        # wait; a notifier sets it. Synchronous to signal, no lost wake-ups.
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._port = port
        self._record_path = record_arrivals
        self._record: IO[str] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Bind 127.0.0.1 (a free port unless one was given) and serve in the running loop."""
        load_push_pb2()  # compile now: a first push must not wait for protoc
        app = web.Application(client_max_size=self.limits.max_recv_msg_size)
        app.router.add_post(PUSH_PATH, self._handle_push)
        app.router.add_get("/ready", self._handle_ready)
        app.router.add_get("/stats", self._handle_stats)
        # Own the socket so the chosen port is known without aiohttp internals.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        # Hung and delayed handlers end on stop(), so a short shutdown wait suffices.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0,
                               keepalive_timeout=self.keepalive_timeout)
        try:
            await runner.setup()
            await web.SockSite(runner, sock, ssl_context=self._ssl_context).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        if self._record_path is not None:
            self._record = open(self._record_path, "a", encoding="ascii")
        self.port = sock.getsockname()[1]
        scheme = "https" if self._ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}{PUSH_PATH}"

    async def stop(self) -> None:
        """Reset hung connections, close everything; idempotent."""
        self._stopping.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._record is not None:
            self._record.close()
            self._record = None

    async def __aenter__(self) -> LokiReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- script ---------------------------------------------------------------

    def add_actions(self, *actions: Action) -> None:
        """Append to the script; each push takes the next action, then Action.ok() forever."""
        self._script.extend(actions)

    def clear_actions(self) -> None:
        """Drop the rest of the script: every later push is accepted (Loki recovered)."""
        self._script.clear()

    @property
    def script_remaining(self) -> int:
        """Actions not yet taken by a push."""
        return len(self._script)

    # -- results ----------------------------------------------------------------

    def streams(self) -> dict[StreamKey, list[Entry]]:
        """Stored entries per stream (canonical sorted label tuple), in stored order."""
        return {key: list(self._entries_of(s)) for key, s in self._streams.items()}

    def entries(self, **label_filter: str) -> list[Entry]:
        """Entries of streams whose labels include `label_filter`, by timestamp (stable)."""
        found = [e for s in self._streams.values() if s.matches(label_filter) for e in self._entries_of(s)]
        found.sort(key=lambda e: e.ts_ns)
        return found

    def lines(self, **label_filter: str) -> list[str]:
        """Lines of streams whose labels include `label_filter`, by timestamp (stable)."""
        return [e.line for e in self.entries(**label_filter)]

    def count(self, **label_filter: str) -> int:
        """Number of stored entries in streams whose labels include `label_filter`."""
        if not label_filter:
            return self._total
        return sum(s.count for s in self._streams.values() if s.matches(label_filter))

    async def wait_for_entries(self, n: int, *, timeout: float | None = 60.0, **label_filter: str) -> None:
        """Return once at least `n` entries matching `label_filter` are stored.

        Fails (AssertionError) after `timeout` seconds so a broken shipper
        cannot hang a test; pass None to wait forever.
        """
        await self._wait(lambda: self.count(**label_filter) >= n,
                         lambda: f"{n} entries matching {label_filter} (have {self.count(**label_filter)})",
                         timeout)

    async def wait_for_requests(self, n: int, *, timeout: float | None = 60.0) -> None:
        """Return once at least `n` push requests have arrived (answered or not)."""
        await self._wait(lambda: len(self.requests) >= n,
                         lambda: f"{n} requests (have {len(self.requests)})", timeout)

    def stats(self) -> dict[str, Any]:
        """Counts, as served on GET /stats."""
        by_status = collections.Counter("none" if r.status is None else str(r.status) for r in self.requests)
        return {
            "total_entries": self._total,
            "dedup_dropped": self.dedup_dropped,
            "refused_entries": self.refused_entries,
            "requests": len(self.requests),
            "requests_by_status": dict(sorted(by_status.items())),
            "streams": [{"labels": s.labels, "entries": s.count} for s in self._streams.values()],
        }

    # -- internals ------------------------------------------------------------

    def _entries_of(self, stream: _Stream) -> list[Entry]:
        if stream.entries is None:
            raise RuntimeError("this receiver was created with keep_entries=False")
        return stream.entries

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, done: Callable[[], bool], what: Callable[[], str], timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await self._changed.wait()
        except TimeoutError:
            statuses = [r.status for r in self.requests[-10:]]
            errors = [r.error for r in self.requests if r.error][-3:]
            raise AssertionError(f"timed out after {timeout}s waiting for {what()}; "
                                 f"last statuses {statuses}, last errors {errors}") from None

    async def _handle_ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle_push(self, request: web.Request) -> web.StreamResponse:
        action = self._script.popleft() if self._script else Action.ok()
        headers = request.headers
        record = RequestRecord(
            received_ns=time.time_ns(), action=action.kind,
            headers={k.lower(): v for k, v in headers.items()},
            content_type=headers.get("Content-Type"), content_encoding=headers.get("Content-Encoding"),
            user_agent=headers.get("User-Agent"), tenant=headers.get("X-Scope-OrgID"))
        self.requests.append(record)
        self._notify()

        if action.kind == "reset_mid_body":
            return self._reset(request)
        if action.kind == "delay":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), action.seconds)
            if self._stopping.is_set():
                return self._reset(request)
        if action.kind in ("ok", "delay"):
            try:
                # Before reading the body, as Loki does (its tenant check is middleware).
                # aiohttp would also try to decode a gzip/deflate/br body on read.
                self._check_before_body(record)
            except _Rejected as rejected:
                return self._answer(record, rejected.status, rejected.message)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._answer(record, 413, f"request body larger than {self.limits.max_recv_msg_size} bytes")
        except web.RequestPayloadError as e:
            # aiohttp undoes gzip (and, for scripted actions, deflate/br) itself and failed.
            if action.kind in ("ok", "delay"):
                return self._answer(record, 400, f"{record.content_encoding}: {e}")
            body = b""
        # aiohttp gunzips on read: what came over the wire is the declared length.
        gzipped = (record.content_encoding or "").lower() == "gzip"
        record.wire_bytes = (request.content_length or len(body)) if gzipped else len(body)
        if action.kind == "reset":
            self._describe(record, body)
            return self._reset(request)
        if action.kind == "hang":
            self._describe(record, body)
            await self._stopping.wait()
            return self._reset(request)
        if action.kind == "status":
            self._describe(record, body)
            if action.gate is not None:
                await action.gate.wait()
            return self._answer(record, action.code, action.body, dict(action.headers), newline=False)
        return self._handle_strictly(record, body)

    def _handle_strictly(self, record: RequestRecord, body: bytes) -> web.Response:
        """The distributor (validation, the tenant's rate limit), then the ingester (per stream)."""
        try:
            self._check_content_type(record)
            push = self._decode(record, body)
            streams = self._parse_all_labels(push)
        except _Rejected as rejected:
            return self._answer(record, rejected.status, rejected.message)
        lim = self.limits
        v3 = lim.version == "3.4"
        if v3 and not push.streams:
            return self._answer(record, 422, "error at least one valid stream is required for ingestion")
        received_ns = time.time_ns()
        tenant = record.tenant or "fake"  # Loki's tenant without auth
        errors: list[str] = []
        accepted: list[tuple[StreamKey, str, list[tuple[int, Any]]]] = []
        validated_bytes = validated_count = 0
        for stream, pairs in zip(push.streams, streams):
            if not stream.entries:
                continue  # Loki skips empty streams before validating their labels
            raw = stream.labels
            pairs = _without_empty_values(pairs)
            if v3 and lim.discover_service_name and all(n != "service_name" for n, _ in pairs):
                # push.ParseLokiRequest, before validation: the labels string becomes the parsed set's.
                service = next((v for wanted in lim.discover_service_name for n, v in pairs if n == wanted),
                               UNKNOWN_SERVICE)
                pairs = [*pairs, ("service_name", service)]
                raw = go_labels_string(pairs)
            problem = self._stream_problem(raw, pairs)
            if problem is not None:
                errors.append(problem)
                record.refused += len(stream.entries)
                continue
            key: StreamKey = tuple(sorted(pairs))
            name = go_labels_string(key)
            valid: list[tuple[int, Any]] = []
            for entry in stream.entries:
                ts_ns = entry.timestamp.seconds * _SECOND_NS + entry.timestamp.nanos
                problem = self._entry_problem(name, ts_ns, entry, received_ns)
                if problem is not None:
                    errors.append(problem)
                    record.refused += 1
                    continue
                valid.append((ts_ns, entry))
                validated_bytes += self._entry_size(entry)
                validated_count += 1
            if valid or not v3:  # 2.7 sends a stream left empty on to the ingester (which accepts it)
                accepted.append((key, name, valid))
        validation_error = (_grouped_errors(errors) if v3 else errors[-1]) if errors else ""
        if not accepted:
            return self._answer(record, 400, validation_error) if errors else self._answer(record, 204, "")
        if lim.ingestion_rate is not None:
            bucket = self._tenant_buckets.get(tenant)
            if bucket is None:
                bucket = self._tenant_buckets[tenant] = TokenBucket(lim.ingestion_rate, lim.ingestion_burst,
                                                                    self._clock)
            if not bucket.allow(validated_bytes):
                record.refused += validated_count
                self.refused_entries += record.refused
                return self._answer(record, 429, (
                    f"Ingestion rate limit exceeded for user {tenant} (limit: {int(lim.ingestion_rate)} bytes/sec) "
                    f"while attempting to ingest '{validated_count}' lines totaling '{validated_bytes}' bytes, "
                    "reduce log volume or contact your Loki administrator to see if the limit can be increased"))
        stored: list[Entry] = []
        append_error: tuple[int, str] | None = None
        for key, name, valid in accepted:
            # instance.Push: each stream's result replaces the previous one; the push answers the last.
            append_error = self._push_stream(record, key, name, valid, tenant, stored)
        self.refused_entries += record.refused
        if stored:
            self._record_arrivals(received_ns, stored)
            self._notify()
        if append_error is not None:
            return self._answer(record, *append_error)
        if errors:
            return self._answer(record, 400, validation_error)
        return self._answer(record, 204, "")

    def _check_before_body(self, record: RequestRecord) -> None:
        if self.require_tenant:
            # dskit's tenant.ValidTenantID; "a|b" (several tenants) is not allowed on push either.
            tenant = record.tenant
            if not tenant:
                raise _Rejected(401, "no org id")
            allowed = all(c.isascii() and (c.isalnum() or c in "!-_.*'()") for c in tenant)
            if not allowed or len(tenant) > 150 or tenant in (".", ".."):
                raise _Rejected(401, f"invalid tenant ID {tenant!r}")
        if record.content_encoding not in (None, "", "snappy", "gzip"):
            raise _Rejected(400, f"Content-Encoding {record.content_encoding!r} not supported")

    def _check_content_type(self, record: RequestRecord) -> None:
        self._media_type(record)

    @staticmethod
    def _media_type(record: RequestRecord) -> str:
        """``application/x-protobuf`` or ``application/json``; _Rejected for anything else."""
        if not record.content_type or not record.content_type.strip():
            raise _Rejected(400, "mime: no media type")
        media_type = record.content_type.split(";", 1)[0].strip().lower()
        if media_type not in ("application/x-protobuf", "application/json"):
            raise _Rejected(400, f"unsupported Content-Type {record.content_type!r}: this receiver takes "
                                 "application/x-protobuf (snappy block-compressed PushRequest) or "
                                 "application/json (Loki's JSON push)")
        return media_type

    def _decode(self, record: RequestRecord, body: bytes) -> Any:
        """The body as a PushRequest of the compiled protobuf module; _Rejected on any failure."""
        try:
            media_type = self._media_type(record)
        except _Rejected:
            media_type = "application/x-protobuf"  # scripted answers: describe what can be described
        if media_type == "application/json":
            push = self._decode_json(body)
            record.body_bytes = len(body)
            record.streams = len(push.streams)
            record.entries = sum(len(s.entries) for s in push.streams)
            return push
        return self._decode_protobuf(record, body)

    def _decode_json(self, body: bytes) -> Any:
        """Loki's JSON push (see the module docstring) into the same PushRequest message a protobuf
        push decodes to: labels as LabelSet.String() builds them, entries in the order sent."""
        try:
            doc = json.loads(body)
        except ValueError as e:  # UnicodeDecodeError is a ValueError too
            raise _Rejected(400, f"json: cannot parse push request: {e}") from None
        if not isinstance(doc, dict):
            raise _Rejected(400, "json: a push request is an object")
        streams = doc.get("streams")
        if streams is not None and not isinstance(streams, list):
            raise _Rejected(400, "json: streams must be an array")
        v3 = self.limits.version == "3.4"
        push = load_push_pb2().PushRequest()
        for stream in streams or ():
            if not isinstance(stream, dict):
                raise _Rejected(400, "json: each stream must be an object")
            labels = stream.get("stream")
            if labels is None:
                labels = {}
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise _Rejected(400, "json: a stream's labels must be an object of strings")
            out = push.streams.add(labels=go_labels_string(labels.items()))
            values = stream.get("values")
            if values is not None and not isinstance(values, list):
                raise _Rejected(400, "json: values must be an array")
            for value in values or ():
                if value is None:
                    continue  # jsonparser skips a null entry
                if not isinstance(value, list) or len(value) < 2:
                    raise _Rejected(400, "json: an entry is [timestamp, line] or [timestamp, line, metadata]")
                if not v3 and len(value) > 2:
                    raise _Rejected(400, "json: error reading entry: array must contains 2 values")
                ts, line = value[0], value[1]
                if not isinstance(ts, str) or not isinstance(line, str):
                    raise _Rejected(400, "json: an entry's timestamp and line must be strings")
                if not _JSON_TIMESTAMP.match(ts) or not _INT64_MIN <= int(ts) <= _INT64_MAX:
                    raise _Rejected(400, f"json: timestamp {ts!r} is not decimal nanoseconds (int64)")
                entry = out.entries.add(line=line)
                entry.timestamp.seconds, entry.timestamp.nanos = divmod(int(ts), _SECOND_NS)
                if len(value) > 2:
                    metadata = value[2]
                    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                        raise _Rejected(400, "json: structured metadata must be an object of strings")
                    for name, text in metadata.items():
                        entry.structuredMetadata.add(name=name, value=text)
        return push

    def _decode_protobuf(self, record: RequestRecord, body: bytes) -> Any:
        """Snappy block, then PushRequest via the compiled protobuf; _Rejected on any failure."""
        if body.startswith(_FRAMED_SNAPPY_MAGIC):
            raise _Rejected(400, "body is snappy *framed* (stream) format; Loki wants the snappy block format")
        try:
            declared = cramjam.snappy.decompress_raw_len(body)
            if declared > self.limits.max_recv_msg_size:
                raise _Rejected(413, f"decompressed body of {declared} bytes exceeds "
                                     f"{self.limits.max_recv_msg_size}")
            raw = bytes(cramjam.snappy.decompress_raw(body))
        except cramjam.DecompressionError as e:
            raise _Rejected(400, f"snappy: corrupt input: {e}") from None
        record.body_bytes = len(raw)
        pb2 = load_push_pb2()
        push = pb2.PushRequest()
        try:
            push.ParseFromString(raw)
        except Exception as e:  # protobuf's DecodeError (upb also refuses bad UTF-8)
            raise _Rejected(400, f"proto: cannot parse PushRequest: {e}") from None
        record.streams = len(push.streams)
        record.entries = sum(len(s.entries) for s in push.streams)
        for stream in push.streams:
            for entry in stream.entries:
                ts = entry.timestamp
                if not 0 <= ts.nanos < _SECOND_NS or not _MIN_TS_SECONDS <= ts.seconds <= _MAX_TS_SECONDS:
                    raise _Rejected(400, f"proto: timestamp: seconds:{ts.seconds} nanos:{ts.nanos} "
                                         "is out of the range Go's time.Time accepts")
        return push

    def _describe(self, record: RequestRecord, body: bytes) -> None:
        """Best-effort decode for the record only (scripted answers store nothing)."""
        with contextlib.suppress(_Rejected):
            self._decode(record, body)

    def _parse_all_labels(self, push: Any) -> list[list[tuple[str, str]]]:
        # Loki parses every stream's labels before writing any: one bad string fails the request.
        parsed = []
        for stream in push.streams:
            try:
                parsed.append(parse_labels(stream.labels))
            except LabelsSyntaxError as e:
                raise _Rejected(400, f"couldn't parse labels: {e} (labels: {stream.labels!r})") from None
        return parsed

    def _stream_problem(self, raw: str, pairs: list[tuple[str, str]]) -> str | None:
        """Loki's per-stream label validation; pairs have empty values removed already."""
        lim = self.limits
        if not pairs:
            return "error at least one label pair is required per stream"
        count = sum(1 for name, _ in pairs if name != "service_name")
        if count > lim.max_label_names_per_series:
            return f"entry for stream '{raw}' has {count} label names; limit {lim.max_label_names_per_series}"
        names: set[str] = set()
        for name, value in sorted(pairs):
            if len(name) > lim.max_label_name_length:
                return f"stream '{raw}' has label name too long: '{name}'"
            if len(value.encode()) > lim.max_label_value_length:
                return f"stream '{raw}' has label value too long: '{value}'"
            if name in names:
                return f"stream '{raw}' has duplicate label name: '{name}'"
            if name.startswith("__"):
                return f"stream '{raw}' has label name starting with '__' (reserved): '{name}'"
            names.add(name)
        return None

    def _entry_size(self, entry: Any) -> int:
        """util.EntryTotalSize: line plus structured metadata bytes (detected_level not counted); 2.7: the line."""
        size = _utf8_len(entry.line)
        if self.limits.version == "3.4":
            for pair in entry.structuredMetadata:
                if pair.name != "detected_level":
                    size += _utf8_len(pair.name) + _utf8_len(pair.value)
        return size

    def _entry_problem(self, name: str, ts_ns: int, entry: Any, received_ns: int) -> str | None:
        """The distributor's checks of one entry (Validator.ValidateEntry), in its order; `name` is
        the stream's parsed label set as Go prints it."""
        lim = self.limits
        if lim.reject_old_samples and ts_ns < received_ns - lim.reject_old_samples_max_age_ns:
            return (f"entry for stream '{name}' has timestamp too old: {_go_rfc3339(ts_ns)}, oldest acceptable "
                    f"timestamp is: {_go_rfc3339(received_ns - lim.reject_old_samples_max_age_ns)}")
        if ts_ns > received_ns + lim.creation_grace_period_ns:
            return f"entry for stream '{name}' has timestamp too new: {_go_rfc3339(ts_ns)}"
        line = entry.line
        # A str of n code points has at most 4n UTF-8 bytes: encode only when it may matter.
        if (lim.max_line_size and len(line) * 4 > lim.max_line_size
                and (size := _utf8_len(line)) > lim.max_line_size):
            return (f"Max entry size '{lim.max_line_size}' bytes exceeded for stream '{name}' "
                    f"while adding an entry with length '{size}' bytes")
        metadata = entry.structuredMetadata
        if metadata and lim.version == "3.4":  # 2.7 has no structured metadata (drops the field)
            for pair in metadata:
                if not is_label_name(pair.name):  # stricter than Loki, which normalises the name
                    return f"stream '{name}' has structured metadata with invalid name: '{pair.name}'"
            size = sum(_utf8_len(p.name) + _utf8_len(p.value) for p in metadata if p.name != "detected_level")
            if lim.max_structured_metadata_size and size > lim.max_structured_metadata_size:
                return (f"stream '{name}' has structured metadata too large: '{size}' bytes, "
                        f"limit: '{lim.max_structured_metadata_size}' bytes. Please see "
                        "`limits_config.max_structured_metadata_size` or contact your Loki administrator "
                        "to increase it.")
            if lim.max_structured_metadata_entries and len(metadata) > lim.max_structured_metadata_entries:
                return (f"stream '{name}' has too many structured metadata labels: '{len(metadata)}', "
                        f"limit: '{lim.max_structured_metadata_entries}'. Please see "
                        "`limits_config.max_structured_metadata_entries_count` or contact your Loki "
                        "administrator to increase it.")
        return None

    def _push_stream(self, record: RequestRecord, key: StreamKey, name: str, entries: list[tuple[int, Any]],
                     tenant: str, stored: list[Entry]) -> tuple[int, str] | None:
        """The ingester's stream.Push: validateEntries, then the head block; the stream's answer or None."""
        lim = self.limits
        v3 = lim.version == "3.4"
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _Stream(key, self.keep_entries)
        limiter = state.limiter
        if limiter is None and lim.per_stream_rate_limit is not None:
            limiter = state.limiter = TokenBucket(lim.per_stream_rate_limit, lim.per_stream_rate_limit_burst,
                                                  self._clock)
        whole = lim.rate_limit_whole_stream
        window = lim.max_chunk_age_ns // 2
        failed: list[_Failed] = []
        to_store: list[tuple[int, Any, int]] = []
        last, highest = state.last, state.newest_ns
        valid_bytes = total_bytes = skipped = 0
        for ts_ns, entry in entries:
            line = entry.line
            if (ts_ns, line) == last:  # the stream's last line again: skipped silently
                skipped += 1
                continue
            size = self._entry_size(entry)
            total_bytes += size
            if not whole and limiter is not None and not limiter.allow(size):
                failed.append(_Failed(ts_ns, self._rate_limit_reason(name, size), True))
                continue
            if highest is not None and ts_ns < highest - window:
                cutoff = highest - window
                reason = (f"entry too far behind, entry timestamp is: {_go_rfc3339(ts_ns)}, oldest acceptable "
                          f"timestamp is: {_go_rfc3339(cutoff)}" if v3 else
                          f"entry too far behind, oldest acceptable timestamp is: {_go_rfc3339(cutoff)}")
                failed.append(_Failed(ts_ns, reason, False))
                continue
            valid_bytes += size
            last = (ts_ns, line)
            if highest is None or ts_ns > highest:
                highest = ts_ns
            to_store.append((ts_ns, entry, size))
        self.dedup_dropped += skipped
        record.deduplicated += skipped
        if whole and limiter is not None and not limiter.allow(valid_bytes if v3 else total_bytes):
            # All or nothing: 3.4 lists the entries it would have stored, 2.7 every entry of the stream.
            if v3:
                failed = [_Failed(ts, self._rate_limit_reason(name, size), True) for ts, _, size in to_store]
            else:
                failed = [_Failed(ts, self._rate_limit_reason(name, _utf8_len(e.line)), True) for ts, e in entries]
            record.refused += len(entries) - skipped
            return self._error_for_failed(failed, len(entries), name, tenant)
        record.refused += len(failed)
        pairs_extra = 1 if lim.discover_log_levels else 0
        for ts_ns, entry, _ in to_store:
            line = entry.line
            state.last = (ts_ns, line)
            if state.newest_ns is None or ts_ns > state.newest_ns:
                state.newest_ns = ts_ns
            fingerprint = state.fingerprint(ts_ns, line)
            if fingerprint in state.head:  # the head block keeps one (timestamp, line); metadata not compared
                self.dedup_dropped += 1
                record.deduplicated += 1
                continue
            state.head.add(fingerprint)
            state.head_size += _utf8_len(line)
            if v3:  # 4 bytes per name and per value (symbol references)
                state.head_size += (len(entry.structuredMetadata) + pairs_extra) * 8
            if state.head_size >= lim.chunk_block_size:  # MemChunk.Append cuts the block
                state.head.clear()
                state.head_size = 0
            metadata = tuple(sorted((p.name, p.value) for p in entry.structuredMetadata)) if v3 else ()
            stored_entry = Entry(ts_ns, line, metadata)
            if state.count == 0:
                self._streams[key] = state  # a stream is listed only once it has an entry, as in Loki
            if state.entries is not None:
                state.entries.append(stored_entry)
            state.count += 1
            self._total += 1
            record.stored += 1
            stored.append(stored_entry)
        return self._error_for_failed(failed, len(entries), name, tenant)

    def _rate_limit_reason(self, name: str, size: int) -> str:
        assert self.limits.per_stream_rate_limit is not None
        return (f"Per stream rate limit exceeded (limit: {_go_byte_size(int(self.limits.per_stream_rate_limit))}/sec) "
                f"while attempting to ingest for stream '{name}' totaling {_go_byte_size(size)}, consider "
                "splitting a stream via additional labels or contact your Loki administrator to see if the "
                "limit can be increased")

    def _error_for_failed(self, failed: list[_Failed], total: int, name: str, tenant: str) -> tuple[int, str] | None:
        """errorForFailedEntries: 429 if the last refusal is a rate limit, else 400 (too far behind)."""
        if not failed:
            return None
        status = 429 if failed[-1].rate_limited else 400
        most = self.limits.max_returned_stream_errors
        listed = failed[:most] if most > 0 else failed
        if self.limits.version == "3.4":
            text = "".join(f"entry with timestamp {_go_time_string(f.ts_ns)} ignored, reason: '{f.reason}',\n"
                           for f in listed)
            text += f"user '{tenant}', total ignored: {len(failed)} out of {total} for stream: {name}"
        else:
            text = "".join(f"entry with timestamp {_go_time_string(f.ts_ns)} ignored, reason: '{f.reason}' "
                           f"for stream: {name},\n" for f in listed)
            text += f"total ignored: {len(failed)} out of {total}"
        return status, text

    def _record_arrivals(self, received_ns: int, stored: list[Entry]) -> None:
        if self._record is None:
            return
        out = [f"P {received_ns} {len(stored)}\n"]
        search = ARRIVAL_STAMP.search
        for entry in stored:
            found = search(entry.line)
            if found is not None:
                out.append(f"L {received_ns} {found.group(1)}\n")
        self._record.write("".join(out))
        self._record.flush()  # a harness may read it while we run

    def _answer(self, record: RequestRecord, status: int, message: str,
                headers: Mapping[str, str] | None = None, *, newline: bool = True) -> web.Response:
        record.status = status
        record.error = message if status >= 300 else ""
        if status in (204, 304) or (100 <= status < 200):
            return web.Response(status=status, headers=headers)
        # Loki answers errors with Go's http.Error: text/plain, message plus a newline.
        text = message + "\n" if newline and message else message
        return web.Response(status=status, text=text, headers=headers)

    def _reset(self, request: web.Request) -> web.Response:
        """Abort the connection with an RST (SO_LINGER 0) instead of answering."""
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # aiohttp swallows the ConnectionError of writing this to the aborted transport.
        return web.Response(status=500)


def _utf8_len(text: str) -> int:
    """len() of the UTF-8 encoding, as Go's len() of a string (ASCII without encoding)."""
    return len(text) if text.isascii() else len(text.encode())


def _without_empty_values(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """labels.NewBuilder(ls).Labels(): a name with an empty value is deleted (every pair of that name)."""
    empty = {n for n, v in pairs if not v}
    return [(n, v) for n, v in pairs if n not in empty] if empty else pairs


def go_quote(value: str) -> str:
    """Go's strconv.Quote."""
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _GO_NAMED_ESCAPES:
            out.append(_GO_NAMED_ESCAPES[char])
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


_GO_NAMED_ESCAPES: Final = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                            "\t": "\\t", "\v": "\\v"}


def go_labels_string(pairs: Iterable[tuple[str, str]]) -> str:
    """Prometheus' labels.Labels.String() of the set: sorted, ``{a="x", b="y"}``, values Go-quoted."""
    return "{" + ", ".join(f"{n}={go_quote(v)}" for n, v in sorted(pairs)) + "}"


def _go_rfc3339(ts_ns: int) -> str:
    """Go's t.Format(time.RFC3339) in UTC: whole seconds."""
    seconds = ts_ns // _SECOND_NS
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"{ts_ns}ns"


def _go_time_string(ts_ns: int) -> str:
    """Go's t.String() in UTC: "2006-01-02 15:04:05.999999999 +0000 UTC" (trailing zeros dropped)."""
    seconds, nanos = divmod(ts_ns, _SECOND_NS)
    try:
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return f"{ts_ns}ns"
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{text}{fraction} +0000 UTC"


def _go_byte_size(size: int) -> str:
    """flagext.ByteSize.String() (c2h5oh/datasize): the largest unit of 1024 dividing it exactly."""
    if size == 0:
        return "0B"
    for unit, factor in (("EB", 1 << 60), ("PB", 1 << 50), ("TB", 1 << 40), ("GB", 1 << 30),
                         ("MB", 1 << 20), ("KB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _grouped_errors(messages: list[str]) -> str:
    """util.GroupedErrors.Error(): "N errors like: <msg>" per distinct message, joined by "; "
    (no count when there is one message once). Go iterates a map (random order); here first seen first."""
    counts = collections.Counter(messages)
    prefix = len(counts) > 1
    return "; ".join(f"{n} errors like: {m}" if prefix or n > 1 else m for m, n in counts.items())


# ---------------------------------------------------------------------------
# Separate process: python -m tests.loki_receiver
# ---------------------------------------------------------------------------

async def _serve(args: argparse.Namespace) -> None:
    receiver = LokiReceiver(require_tenant=args.require_tenant, keep_entries=args.keep_entries,
                            port=args.port, record_arrivals=args.record_arrivals)
    await receiver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.ready_file:
            ready = Path(args.ready_file)
            partial = ready.with_name(ready.name + ".partial")
            partial.write_text(receiver.url + "\n")
            partial.replace(ready)  # readers never see a half-written URL
        print(receiver.url, flush=True)  # last: whoever reads it may rely on the ready file too
        await stop.wait()
    finally:
        await receiver.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.loki_receiver", description="A strict Loki push receiver.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--ready-file", help="write the push URL here once listening")
    parser.add_argument("--require-tenant", action="store_true", help="401 without X-Scope-OrgID")
    parser.add_argument("--record-arrivals", metavar="PATH",
                        help="append 'P <recv_ns> <n>' per push and 'L <recv_ns> <send_ns>' per t=<ns> line")
    parser.add_argument("--keep-entries", action="store_true",
                        help="keep every line in memory (default: counts and dedup fingerprints only)")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
