"""Reading one Airflow try's log back from Loki: the pure part (no IO, no clock).

What the sidecar stores (shipper.lifecycle, shipper.labels): the task's lines
in the streams `{dag_id, task_id, stream="stdout"|"stderr", service_name="airflow",
<[labels]>}` with `run_id`, `try_number`, `map_index` (only when >= 0), `level`
as structured metadata (Loki 3); and at exit one summary entry (a JSON object:
lines read, sent, dropped by reason...) in `{job="shipper", dag_id, task_id,
service_name="shipper", <[labels]>}` with the same metadata. So one query per
page selects both the try's lines and its summary:

    {dag_id="d", task_id="t"} | run_id="r" | try_number="2" | map_index=""

(`map_index=""` matches an entry without the key: an unmapped task). Pages go
forward in time, at most `page_limit` entries each (within Loki's
`max_entries_limit_per_query`), over windows no longer than Loki's
`max_query_length`, from the try's start (minus a margin: the pod prints before
Airflow marks the try running) to its end (plus a margin: the sidecar ships
after the task ends), or for a running try to "now minus `settle`" so a later
poll never finds a line before one it already showed.

Everything here is data in, data out: `Pager` says which request comes next
and digests Loki's answer; the IO is in shipper.airflow.client.
"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

NS = 1_000_000_000

# Context keys that are labels by default ([airflow] labels of the sidecar); the
# rest are structured metadata.
DEFAULT_LABEL_KEYS = ("dag_id", "task_id")
METADATA_KEYS = ("run_id", "try_number", "map_index")


class ReadConfigError(ValueError):
    """A bad reader configuration, naming the key."""


@dataclass(frozen=True)
class ReadConfig:
    """How to query Loki for a try's log.

    `url` is Loki's (or its gateway's) base URL; a sidecar push URL
    (`.../loki/api/v1/push`) is accepted and cut to its base. Credentials and
    TLS files are those of the sidecar's `[loki]` section and are read at
    every request (a rotated Secret is picked up).
    """

    url: str = "http://loki-gateway.monitoring.svc.cluster.local:80"
    tenant_id: str = ""
    timeout: float = 10.0
    ca_file: str = ""
    insecure_skip_verify: bool = False
    cert_file: str = ""
    key_file: str = ""
    bearer_token_file: str = ""
    basic_auth_user: str = ""
    basic_auth_password_file: str = ""
    # The sidecar's static [labels] (e.g. namespace="airflow"): part of the selector.
    selector: Mapping[str, str] = field(default_factory=dict)
    # The sidecar's [airflow] labels: context keys that are stream labels.
    label_keys: tuple[str, ...] = DEFAULT_LABEL_KEYS
    page_limit: int = 5000             # Loki's default max_entries_limit_per_query
    max_query_length: float = 721 * 3600.0  # Loki's default max_query_length (721h)
    before: float = 600.0              # seconds before the try's start (pod start-up output)
    after: float = 600.0               # seconds after its end (the sidecar's flush, the summary)
    settle: float = 2.0                # a running try is read up to now - settle
    structured_metadata: str = "auto"  # "auto" (ask Loki's version), "on", "off" (Loki 2.x)
    fallback_margin: float = 30.0      # "off": the try's own window, this much wider each side
    max_lines: int = 1_000_000         # a read stops here, saying so

    def __post_init__(self) -> None:
        if self.structured_metadata not in ("auto", "on", "off"):
            raise ReadConfigError(f"structured_metadata: {self.structured_metadata!r} is not auto, on or off")
        for key in ("page_limit", "max_lines"):
            if int(getattr(self, key)) < 1:
                raise ReadConfigError(f"{key}: must be >= 1")
        for key in ("timeout", "max_query_length"):
            if float(getattr(self, key)) <= 0:
                raise ReadConfigError(f"{key}: must be > 0")
        for key in ("before", "after", "settle", "fallback_margin"):
            if float(getattr(self, key)) < 0:
                raise ReadConfigError(f"{key}: must be >= 0")
        if bool(self.cert_file) != bool(self.key_file):
            raise ReadConfigError("cert_file, key_file: set both or neither")
        if self.basic_auth_user and not self.basic_auth_password_file:
            raise ReadConfigError("basic_auth_password_file: required with basic_auth_user")
        if self.bearer_token_file and self.basic_auth_user:
            raise ReadConfigError("bearer_token_file, basic_auth_user: choose one")
        object.__setattr__(self, "url", base_url(self.url))

    @property
    def query_range_url(self) -> str:
        return self.url + "/loki/api/v1/query_range"


# Keys of the sidecar's [loki] section the reader has no use for (the same file may be mounted).
_SIDECAR_ONLY_LOKI_KEYS = frozenset({
    "batch_wait", "batch_max_bytes", "min_backoff", "max_backoff", "reject_old_samples_max_age",
    "creation_grace_period"})
_LOKI_KEYS = frozenset({"url", "tenant_id", "timeout", "ca_file", "insecure_skip_verify", "cert_file",
                        "key_file", "bearer_token_file", "basic_auth_user", "basic_auth_password_file"})
_READ_KEYS = frozenset({"page_limit", "max_query_length", "before", "after", "settle", "structured_metadata",
                        "fallback_margin", "max_lines"})


def config_from_toml(text: str) -> ReadConfig:
    """A ReadConfig from TOML: `[loki]` as in the sidecar's config (its push-only keys are
    ignored, so the sidecar's own file can be mounted), `[labels]` (static labels: part of
    the selector), `[airflow] labels` (which context keys are labels), and `[read]` for
    the reader's own keys. Unknown keys are refused, naming them."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ReadConfigError(f"not TOML: {e}") from None
    kwargs: dict[str, Any] = {}
    # [loki] before [read]: the first unknown key named is the same as ever.
    for section, allowed, ignored in _KEYED_SECTIONS:
        kwargs.update(_section_keys(doc, section, allowed, ignored))
    kwargs["selector"] = _static_labels(doc)
    airflow_labels = (doc.get("airflow") or {}).get("labels")
    if airflow_labels is not None:
        kwargs["label_keys"] = tuple(str(k) for k in airflow_labels)
    _check_sections(doc)
    try:
        return ReadConfig(**kwargs)
    except TypeError as e:
        raise ReadConfigError(str(e)) from None


# The sections whose keys become ReadConfig's: (section, keys taken, keys skipped).
_KEYED_SECTIONS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("loki", _LOKI_KEYS, _SIDECAR_ONLY_LOKI_KEYS),
    ("read", _READ_KEYS, frozenset()),
)
# Sections a reader's file may hold: its own and the sidecar's (the same file may be mounted).
_KNOWN_SECTIONS = ("loki", "read", "labels", "airflow", "metrics", "sink")


def _section_keys(doc: Mapping[str, Any], section: str, allowed: frozenset[str],
                  ignored: frozenset[str]) -> dict[str, Any]:
    """The `allowed` keys of `[section]`, without the `ignored` ones; any other key is refused."""
    taken: dict[str, Any] = {}
    for key, value in dict(doc.get(section) or {}).items():
        if key in ignored:
            continue
        if key not in allowed:
            raise ReadConfigError(f"[{section}] {key}: unknown key")
        taken[key] = value
    return taken


def _static_labels(doc: Mapping[str, Any]) -> dict[str, str]:
    """The `[labels]` section (the sidecar's static labels), checked to be strings."""
    labels = doc.get("labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise ReadConfigError("[labels]: values must be strings")
    return dict(labels)


def _check_sections(doc: Mapping[str, Any]) -> None:
    """Refuse a section that is neither the reader's nor the sidecar's."""
    for section, value in doc.items():
        # The sidecar's own sections and top-level keys are not ours and not an error.
        if isinstance(value, dict) and section not in _KNOWN_SECTIONS:
            raise ReadConfigError(f"[{section}]: unknown section")


def base_url(url: str) -> str:
    """`scheme://host[:port][/prefix]` of a Loki URL (a push or query URL is cut to its base)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReadConfigError(f"url: {url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    for suffix in ("/loki/api/v1/push", "/loki/api/v1/query_range", "/loki/api/v1/query", "/api/prom/push"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


# -- the query ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TryKey:
    """One try of one task instance."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int = -1

    def context(self) -> dict[str, str]:
        """The values as the sidecar ships them (map_index only when >= 0, FACTS §2)."""
        ctx = {"dag_id": self.dag_id, "task_id": self.task_id, "run_id": self.run_id,
               "try_number": str(self.try_number)}
        if self.map_index >= 0:
            ctx["map_index"] = str(self.map_index)
        return ctx


def quote(value: str) -> str:
    """A LogQL string literal (Go-style double-quoted)."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def selector(key: TryKey, config: ReadConfig) -> str:
    """The stream selector: the context keys that are labels, plus the static labels.

    A label the try lacks (map_index of an unmapped task, when it is a label) is
    matched empty, after the others (Loki needs one matcher that is not empty).
    """
    ctx = key.context()
    pairs: dict[str, str] = dict(config.selector)
    for k in config.label_keys:
        pairs[k] = ctx.get(k, "")
    ordered = [kv for kv in pairs.items() if kv[1]] + [kv for kv in pairs.items() if not kv[1]]
    return "{" + ", ".join(f"{k}={quote(v)}" for k, v in ordered) + "}"


def build_query(key: TryKey, config: ReadConfig, *, metadata: bool = True) -> str:
    """The one LogQL query of a page: `{labels} | run_id="..." | try_number="..." | map_index="..."`."""
    query = selector(key, config)
    if not metadata:
        return query
    ctx = key.context()
    for k in METADATA_KEYS:
        if k in config.label_keys:
            continue
        query += f" | {k}={quote(ctx.get(k, ''))}"
    return query


# -- the time window and pages -----------------------------------------------------------------------


def try_window(config: ReadConfig, *, start_ns: int | None, end_ns: int | None, now_ns: int,
               running: bool, metadata: bool = True) -> tuple[int, int]:
    """[start, end) to read: the try's times widened by the margins; a running try up to now - settle.

    A try Airflow has no start for yet (queued) is read over the last `before` seconds.
    Without structured metadata the window is the try's own (plus `fallback_margin`),
    since time is then all that tells this try from the task's other runs.
    """
    lo_margin = config.before if metadata else config.fallback_margin
    hi_margin = config.after if metadata else config.fallback_margin
    start = (start_ns if start_ns is not None else now_ns) - int(lo_margin * NS)
    if running or end_ns is None:
        end = now_ns - int(config.settle * NS)
    else:
        end = min(end_ns + int(hi_margin * NS), now_ns + NS)
    return start, max(start, end)


@dataclass(frozen=True)
class Entry:
    ts_ns: int
    line: str
    labels: Mapping[str, str]
    metadata: Mapping[str, str]

    @property
    def is_summary(self) -> bool:
        return self.labels.get("job") == "shipper"

    @property
    def stream(self) -> str:
        return self.labels.get("stream", "")

    def key(self) -> tuple[str, int, str]:
        return (json.dumps(dict(self.labels), sort_keys=True), self.ts_ns, self.line)


class PagingError(Exception):
    """Paging cannot go on (more entries at one nanosecond than a page holds)."""


def parse_streams(data: Mapping[str, Any]) -> list[Entry]:
    """The entries of a query_range `data` (resultType streams), oldest first, streams merged.

    With `X-Loki-Response-Encoding-Flags: categorize-labels` (Loki 3) a value is
    `[ts, line, {"structuredMetadata": {...}, "parsed": {...}}]` and the stream's
    labels are only the stream labels; without it (Loki 2) `[ts, line]`.
    """
    if data.get("resultType") != "streams":
        raise PagingError(f"Loki answered a {data.get('resultType')!r} result, not log streams")
    out: list[Entry] = []
    for stream in data.get("result") or []:
        labels = dict(stream.get("stream") or {})
        for value in stream.get("values") or []:
            meta: dict[str, str] = {}
            if len(value) > 2 and isinstance(value[2], dict):
                meta = dict(value[2].get("structuredMetadata") or {})
            out.append(Entry(int(value[0]), str(value[1]), labels, meta))
    out.sort(key=lambda e: (e.ts_ns, e.stream != "stdout", e.is_summary))
    return out


def plan_windows(start_ns: int, end_ns: int, max_length_ns: int) -> list[tuple[int, int]]:
    """[start, end) cut into windows no longer than Loki's max_query_length."""
    out = []
    lo = start_ns
    while lo < end_ns:
        hi = min(end_ns, lo + max_length_ns)
        out.append((lo, hi))
        lo = hi
    return out


class Pager:
    """The pages of one query over [start, end): forward, `limit` entries at most each.

    `params()` is the next request's query string (None when done); `feed(data)`
    takes Loki's answer to it and returns the entries not returned before, in
    time order. A full page continues from its last timestamp (Loki's start is
    inclusive), skipping the entries it already returned at that timestamp.
    `limit_refused(n)` / `length_refused(ns)` re-plan after Loki refused a limit
    or a window as too large.
    """

    def __init__(self, query: str, start_ns: int, end_ns: int, *, limit: int, max_length_ns: int) -> None:
        self.query = query
        self.end_ns = end_ns
        self.limit = limit
        self.max_length_ns = max_length_ns
        self.cursor = start_ns
        self.window_end = min(end_ns, start_ns + max_length_ns)
        self.seen: set[tuple[str, int, str]] = set()
        self.pages = 0

    @property
    def done(self) -> bool:
        return self.cursor >= self.end_ns

    def params(self) -> dict[str, str] | None:
        if self.done:
            return None
        return {"query": self.query, "start": str(self.cursor), "end": str(self.window_end),
                "limit": str(self.limit), "direction": "forward"}

    def feed(self, data: Mapping[str, Any]) -> list[Entry]:
        page = parse_streams(data)
        self.pages += 1
        fresh = [e for e in page if e.key() not in self.seen]
        if len(page) < self.limit:
            self.cursor = self.window_end  # this window is exhausted
            self.window_end = min(self.end_ns, self.cursor + self.max_length_ns)
            self.seen = set()
            return fresh
        last = page[-1].ts_ns
        if not fresh or page[0].ts_ns == last:
            raise PagingError(f"more than {self.limit} entries at one timestamp ({last} ns): raise page_limit")
        self.cursor = last
        self.seen = {e.key() for e in page if e.ts_ns == last}
        return fresh

    def limit_refused(self, allowed: int) -> None:
        if allowed < 1 or allowed >= self.limit:
            raise PagingError(f"Loki refused a page of {self.limit} entries (allows {allowed})")
        self.limit = allowed

    def length_refused(self, allowed_ns: int) -> None:
        if allowed_ns < NS or allowed_ns >= self.window_end - self.cursor:
            raise PagingError(f"Loki refused a window of {(self.window_end - self.cursor) / NS:.0f} s")
        self.max_length_ns = allowed_ns
        self.window_end = min(self.end_ns, self.cursor + allowed_ns)


_LIMIT_REFUSED = re.compile(r"max entries limit per query exceeded.*?\((\d+) > (\d+)\)", re.S)
_LENGTH_REFUSED = re.compile(r"query time range exceeds the limit \(query length: ([0-9a-zµ.]+), limit: ([0-9a-zµ.]+)\)")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_UNIT_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": NS, "m": 60 * NS, "h": 3600 * NS,
            "d": 86400 * NS, "w": 7 * 86400 * NS, "y": 365 * 86400 * NS}


def go_duration_ns(text: str) -> int:
    """Nanoseconds of a Go (`721h0m0s`) or Prometheus (`30d1h`) duration string."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def refused_limit(body: str) -> int | None:
    """Loki's max_entries_limit_per_query, from its 400 refusing a larger page."""
    m = _LIMIT_REFUSED.search(body)
    return int(m.group(2)) if m else None


def refused_length(body: str) -> int | None:
    """Loki's max_query_length (ns), from its 400 refusing a longer window."""
    m = _LENGTH_REFUSED.search(body)
    if not m:
        return None
    try:
        return go_duration_ns(m.group(2))
    except ValueError:
        return None


def loki_major_version(buildinfo: Mapping[str, Any]) -> int | None:
    """The major version in /loki/api/v1/status/buildinfo's answer (None if unknown)."""
    m = re.match(r"v?(\d+)\.", str(buildinfo.get("version") or ""))
    return int(m.group(1)) if m else None


# -- rendering ---------------------------------------------------------------------------------------


def rfc3339(ts_ns: int) -> str:
    """`2026-12-01T08:19:50.106514Z` (microseconds, UTC: as Airflow 3's records)."""
    dt = datetime.fromtimestamp(ts_ns // NS, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns % NS) // 1000:06d}Z"


def airflow2_time(ts_ns: int) -> str:
    """`2026-12-01T08:19:50.106+0000` (milliseconds: Airflow 2's log_format time)."""
    dt = datetime.fromtimestamp(ts_ns // NS, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ts_ns % NS) // 10**6:03d}+0000"


def airflow3_line(entry: Entry) -> str:
    """One entry as the JSON line Airflow 3's reader parses into a StructuredLogMessage.

    An Airflow 3 record (a JSON object with a string `event`, what a task pod prints)
    is returned unchanged: the UI shows it as it shows the task's own log file. Any
    other line becomes `{"timestamp": <Loki's time>, "event": <line>, "level": ...}`
    (level from the `level` structured metadata, when the sidecar detected one).
    """
    line = entry.line
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            return line
    record: dict[str, Any] = {"timestamp": rfc3339(entry.ts_ns), "event": line}
    level = entry.metadata.get("level")
    if level:
        record["level"] = level
    return json.dumps(record, ensure_ascii=False)


def airflow2_line(entry: Entry) -> str:
    """One entry as Airflow 2 text: the line as the task printed it (a merged traceback keeps its newlines)."""
    return entry.line


@dataclass(frozen=True)
class SummaryView:
    """What the user is told about the try's completeness, from the shipper's exit summary."""

    text: str
    level: str  # "info" when nothing was lost, else "warning"/"error"
    fields: Mapping[str, Any]


def summarize(entry: Entry | None, *, finished: bool) -> SummaryView | None:
    """The last line of a try's log: the shipper's exit summary, or why there is none."""
    if entry is None:
        return _no_summary(finished)
    s = _summary_object(entry.line)
    if s is None:
        return SummaryView(f"shipper: exit summary not readable: {entry.line[:200]}", "warning", {})
    dropped = {k: v for k, v in dict(s.get("dropped") or {}).items() if isinstance(v, int) and v}
    lost = sum(dropped.values())
    spooled = int(s.get("lines_spooled") or 0)
    code = s.get("code")
    parts = _summary_counts(s, dropped, lost, spooled)
    how = f"exit {code}" + (f", {s['reason']}" if s.get("reason") else "")
    head, level = _summary_verdict(lost, spooled, code)
    fields: dict[str, Any] = {k: s[k] for k in ("lines_read", "lines_sent", "dropped", "code", "reason") if k in s}
    return SummaryView(f"{head}: {', '.join(parts)} ({how})", level, fields)


def _no_summary(finished: bool) -> SummaryView | None:
    """What a try without an exit summary ends with: nothing while it runs, a warning once finished."""
    if not finished:
        return None
    return SummaryView(
        "shipper: no exit summary in Loki for this try (yet): the sidecar may still be flushing, or it "
        "was killed before it could send one; lines may be missing", "warning", {})


def _summary_object(line: str) -> dict[str, Any] | None:
    """The summary entry's JSON object, None when the line is not one."""
    try:
        s = json.loads(line)
    except ValueError:
        return None
    return s if isinstance(s, dict) else None


def _summary_counts(s: Mapping[str, Any], dropped: Mapping[str, int], lost: int, spooled: int) -> list[str]:
    """The summary's counts as phrases: read, sent, dropped (by reason), left in the spool."""
    parts = [f"lines read {s.get('lines_read', '?')}", f"sent {s.get('lines_sent', '?')}", f"dropped {lost}"]
    if dropped:
        parts[-1] += " (" + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) + ")"
    if spooled:
        parts.append(f"left in the pod's spool {spooled}")
    return parts


def _summary_verdict(lost: int, spooled: int, code: Any) -> tuple[str, str]:
    """(head, level): complete ("info") or not (an error if lines were dropped, else a warning)."""
    if lost or spooled or code not in (0, None):
        return "shipper: this log is incomplete", "error" if lost else "warning"
    return "shipper: every line of this try was delivered", "info"


def airflow3_summary_line(view: SummaryView, ts_ns: int) -> str:
    record: dict[str, Any] = {"timestamp": rfc3339(ts_ns), "level": view.level, "event": view.text,
                              "logger": "shipper"}
    record.update({k: v for k, v in view.fields.items() if k not in record})
    return json.dumps(record, ensure_ascii=False)


def airflow2_summary_line(view: SummaryView, ts_ns: int) -> str:
    return f"[{airflow2_time(ts_ns)}] {{shipper}} {view.level.upper()} - {view.text}"


def airflow3_message(text: str, ts_ns: int | None, level: str = "error") -> str:
    """A message of the reader itself (Loki unreachable, refused...) as an Airflow 3 record."""
    record: dict[str, Any] = {"event": text, "level": level, "logger": "shipper.airflow"}
    if ts_ns is not None:
        record = {"timestamp": rfc3339(ts_ns), **record}
    return json.dumps(record, ensure_ascii=False)


def airflow2_message(text: str, ts_ns: int, level: str = "error") -> str:
    return f"[{airflow2_time(ts_ns)}] {{shipper.airflow}} {level.upper()} - {text}"


# -- failures a user can read ------------------------------------------------------------------------


def explain_status(status: int, body: str, config: ReadConfig) -> str:
    """Loki's refusal of a query, for the Airflow user (never a credential)."""
    where = f"Loki at {config.url}" + (f" (tenant {config.tenant_id!r})" if config.tenant_id else "")
    detail = " ".join(body.split())[:300]
    if status == 401:
        cred = _credential_hint(config)
        return (f"{where} answered 401 Unauthorized to the log query: {cred} "
                f"(Loki said: {detail or 'nothing'})")
    if status == 403:
        return (f"{where} answered 403 Forbidden to the log query: the credential is not allowed to read "
                f"this tenant (Loki said: {detail or 'nothing'})")
    if status == 404:
        return (f"{where} answered 404 to {config.query_range_url}: is the url Loki's base URL (or a gateway "
                f"that routes /loki/api/v1/query_range)? (said: {detail or 'nothing'})")
    if status == 429:
        return f"{where} is rate-limiting queries (429): try again in a moment (Loki said: {detail})"
    if status >= 500:
        return f"{where} failed the log query ({status}): {detail or 'no message'}"
    return f"{where} refused the log query ({status}): {detail or 'no message'}"


def _credential_hint(config: ReadConfig) -> str:
    if config.bearer_token_file:
        return f"the bearer token in {config.bearer_token_file} was not accepted"
    if config.basic_auth_user:
        return (f"user {config.basic_auth_user!r} with the password in {config.basic_auth_password_file} "
                "was not accepted")
    if not config.tenant_id:
        return "no tenant_id is configured and this Loki requires one (X-Scope-OrgID)"
    return "no credential is configured (bearer_token_file or basic_auth_user) and this Loki requires one"


def explain_unreachable(error: BaseException, config: ReadConfig) -> str:
    reason = getattr(error, "reason", None) or error
    return (f"Loki at {config.url} is unreachable: {type(reason).__name__}: {reason}. "
            "The lines are safe in Loki; reload when it is back")


def no_lines_text(key: TryKey, query: str, window: tuple[int, int], *, finished: bool,
                  labels_only_hits: bool = False) -> str:
    """Why a try has no lines: not yet written, none matched, or structured metadata missing."""
    span = f"between {rfc3339(window[0])} and {rfc3339(window[1])}"
    if labels_only_hits:
        return (f"Loki holds lines of {key.dag_id}.{key.task_id} {span}, but none with this try's "
                f"run_id/try_number/map_index: is structured metadata stored (Loki 3 with "
                f"allow_structured_metadata and a v13 schema)? For Loki 2.x set [read] "
                f"structured_metadata = \"off\". Query: {query}")
    if not finished:
        return f"no lines in Loki yet for this try ({span}); the task may not have printed anything yet"
    return f"no lines in Loki for this try {span}. Query: {query}"


def fallback_note(window: tuple[int, int]) -> str:
    return ("Loki without structured metadata (2.x): lines selected by dag_id/task_id and the try's time "
            f"window only ({rfc3339(window[0])} to {rfc3339(window[1])}); lines of other runs, tries or "
            "map indexes of this task in that window are included")


def source_line(config: ReadConfig, query: str, count: int, pages: int) -> str:
    tenant = f", tenant {config.tenant_id}" if config.tenant_id else ""
    return f"Loki {config.url}{tenant}: {count} lines in {pages} page(s), query {query}"


def split_summaries(entries: Iterable[Entry]) -> tuple[list[Entry], list[Entry]]:
    lines: list[Entry] = []
    summaries: list[Entry] = []
    for e in entries:
        (summaries if e.is_summary else lines).append(e)
    return lines, summaries


def merge(pages: Sequence[Sequence[Entry]]) -> list[Entry]:
    """Entries of several pages (or streams) in time order (stdout first at equal times); stable."""
    out = [e for page in pages for e in page]
    out.sort(key=lambda e: (e.ts_ns, e.stream != "stdout", e.is_summary))
    return out
