"""Configuration as data: one frozen dataclass tree, loaded from TOML.

Every key has a default (the module constants below say why). Unknown keys,
wrong types and bad values are refused with a `ConfigError` that names the
key; the CLI turns that into exit code 2 before anything starts. Each
table's field types say how its values are converted and checked
(`Annotated` rules such as `Seconds`); what relates several values is that
table's own `_check`. Tables are checked in the order of their fields, so of
several problems the first one found is named.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin, get_type_hints

# Loki's in-cluster gateway as the seed design deploys it.
DEFAULT_URL = "http://loki-gateway.monitoring.svc.cluster.local:80/loki/api/v1/push"
# The seed's Vector sink used batch.timeout_secs = 0.5; p99 latency target is 0.75 s.
DEFAULT_BATCH_WAIT = 0.5
# Same as Promtail and Vector (1 MiB); far below Loki's 4 MB/s ingestion burst.
DEFAULT_BATCH_MAX_BYTES = 1024 * 1024
# How pushes are compressed (shipper.encoder.COMPRESSIONS says what each costs):
# gzip over snappy framing compresses twice as well as snappy and needs no
# native library; real snappy (python-snappy's cramjam) would take about 1.8 MiB
# of the 20 MiB budget. Loki 2.7 and 3.x read all three.
COMPRESSIONS = ("gzip", "snappy", "none")
DEFAULT_COMPRESSION = "gzip"
# Loki's default max_line_size is 256 KB; longer lines would be refused whole.
DEFAULT_MAX_LINE_BYTES = 256 * 1024
# Kubernetes gives the whole pod 30 s (terminationGracePeriodSeconds); the
# flush must leave room for the task container's own shutdown.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
# One request may take this long (connect + send + answer) before it is
# abandoned and retried; a Loki that accepts and never answers costs this much.
DEFAULT_REQUEST_TIMEOUT = 10.0
# Backoff between retries: 0.5 s doubling to 5 s, with full jitter. Retries are
# unlimited while running (lines are never given up while the shipper lives,
# the buffer bounds memory); at shutdown they are bounded by shutdown_timeout.
DEFAULT_MIN_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 5.0
# The timestamps the cluster's Loki accepts (limits_config in Loki's
# pkg/validation/limits.go; these are Loki's defaults): entries older than
# reject_old_samples_max_age or later than now + creation_grace_period are
# refused (400). An entry whose own time (CRI, JSON) is outside is stamped with
# its read time instead (shipper.batch.Stream); set them to the cluster's values.
DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_CREATION_GRACE_PERIOD = 10 * 60.0
# Lines read but not yet acknowledged by Loki. Beyond this the shipper stops
# reading (files lose nothing; a pipe writer blocks) until Loki catches up.
# 4 MiB keeps the whole process inside its 20 MiB budget (README "Footprint").
DEFAULT_BUFFER_MAX_BYTES = 4 * 1024 * 1024
# What happens when the buffer is full and a PIPE source has more to give
# while Loki is failing (files simply pause: the file keeps the lines; and a
# Loki that answers, only slower than the task writes, always gets
# backpressure, never drops). "drop_oldest": keep reading, give up the oldest
# queued batch (counted, reason buffer_full), so the task's write() never
# blocks on a dead Loki and its last lines (the traceback) win. "block": stop
# reading the pipe; nothing is dropped but the task blocks on write until
# Loki recovers.
DEFAULT_WHEN_FULL = "drop_oldest"
WHEN_FULL_CHOICES = ("drop_oldest", "block")
# A traceback is tens of lines; 500 bounds a runaway entry well under Loki's
# line limit (max_line_bytes cuts it anyway).
DEFAULT_MULTILINE_MAX_LINES = 500
# An open entry waits at most this for a continuation line: the batch tick, so
# the last entry of a task ships as promptly as any other line.
DEFAULT_MULTILINE_MAX_WAIT = 0.5
# JSON record keys a traceback may be in, the first present wins: Airflow 3.3
# writes `error_detail` (structlog's dict form, a list of stacks), structlog's
# own default is `exception` (that form, or a string). Rendered after the event.
DEFAULT_JSON_EXCEPTION_KEYS = ("error_detail", "exception")
FORMATS = ("raw", "cri", "json")
LEVEL_NAMES = ("trace", "debug", "info", "warning", "error", "critical")
# Disk spool (off unless spool_dir is set, e.g. an emptyDir): every sealed
# batch is written ahead of its first push and replayed after a restart. 64 MiB
# holds about 5 minutes of a task writing 1,000 lines/s (compressed ~5x).
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024
# How often an idle regular file (or a path that does not exist yet) is
# checked. Pipes and FIFOs never poll: they wake the shipper when written.
DEFAULT_FILE_POLL_INTERVAL = 1.0
# Downward-API annotations file (FACTS §2), used when AIRFLOW_CTX_* are absent.
DEFAULT_ANNOTATIONS_FILE = "/etc/podinfo/annotations"
# Value of dag_id / task_id when the Airflow context is missing (the seed's).
DEFAULT_MISSING = "unknown"
# Per-task values become labels; per-run values never do (FACTS §4, cardinality).
DEFAULT_CONTEXT_LABELS = ("dag_id", "task_id")
# The `service_name` label of the task's streams: Loki 3 would otherwise derive
# "unknown_service" (none of its discover_service_name labels is set), and
# Grafana's Logs Drilldown lists services by it. The exit-summary stream gets
# SUMMARY_SERVICE_NAME (shipper.labels) instead: the shipper's record, not the task's.
DEFAULT_SERVICE_NAME = "airflow"
# exec mode: where the shipper's own diagnostics and exit summary go. Its stderr
# is the task's (what `kubectl logs` shows), so by default nothing of the
# shipper's is added to it ("none": the summary goes to Loki's {job="shipper"}
# stream only); "stderr" adds warnings, errors and the summary there (the
# command's bytes stay unchanged around them); an absolute path gets every
# diagnostic (info and above) appended, one JSON object per line.
DEFAULT_EXEC_DIAGNOSTICS = "none"
EXEC_DIAGNOSTICS_CHOICES = ("none", "stderr")
# The metrics/health endpoint. 9337 is free in Prometheus' port registry
# neighbourhood used by log shippers (Promtail 9080, Vector 9598, Fluent Bit 2020).
DEFAULT_METRICS_LISTEN = "0.0.0.0:9337"
# TLS and auth for [loki] (all off by default; every secret comes from a file,
# a Kubernetes secret mount, never from the config text, so check-config and
# the logs can show the whole config). Certificate verification is always on
# unless insecure_skip_verify says otherwise; "" for ca_file means the
# system's CA store. Keys that only mean something for https:// are refused
# on an http:// URL instead of being silently ignored.
HTTPS_ONLY_KEYS = ("ca_file", "insecure_skip_verify", "cert_file", "key_file")
CONTEXT_KEYS = ("dag_id", "task_id", "run_id", "try_number", "map_index", "logical_date")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Tenant IDs as Loki validates them (dskit's tenant rules, Grafana's "About tenant IDs").
_TENANT_ID = re.compile(r"[A-Za-z0-9!\-_.*'()]{1,150}\Z")
# Loki's max_label_names_per_series.
MAX_LABELS = 15
# Largest integer accepted for any key: more than any size or count can be, and
# what keeps huge TOML integers (hex ones may have thousands of digits) out.
_INT_LIMIT = 2**63 - 1


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


# --- field rules ------------------------------------------------------------------
# A field's type says how it is checked: `Annotated[str, rule, ...]` runs each
# rule on the converted value, in order, and the first problem it names is
# refused as "<key>: <problem>" (_check_tree). What no single field can say
# (relations between fields and tables) is each table's own `_check`.

Rule = Callable[[Any], str | None]  # the problem with a value, or None


def _positive_seconds(value: float) -> str | None:
    if 0 < value < float("inf"):  # nan is refused too: every comparison with it is false
        return None
    return f"must be a positive finite number of seconds, got {value}"


def _no_nul(value: str) -> str | None:
    # The OS takes C strings: open() or getaddrinfo() would raise ValueError, a traceback.
    return "must not contain a NUL character" if "\0" in value else None


def _diagnostics_target(value: str) -> str | None:
    if value in EXEC_DIAGNOSTICS_CHOICES or value.startswith("/"):
        return None
    return f'must be "none", "stderr" or an absolute file path, got "{value}"'


@dataclass(frozen=True)
class _OneOf:
    """One of a few words."""

    choices: tuple[str, ...]

    def __call__(self, value: str) -> str | None:
        if value in self.choices:
            return None
        *rest, last = (f'"{c}"' for c in self.choices)
        return f'must be {", ".join(rest)} or {last}, got "{value}"'


@dataclass(frozen=True)
class _AtLeast:
    """An integer no smaller than `least`."""

    least: int

    def __call__(self, value: int) -> str | None:
        return None if value >= self.least else f"must be at least {self.least}, got {value}"


@dataclass(frozen=True)
class _NotEmpty:
    """A non-empty string; `why` is said after the refusal."""

    why: str = ""

    def __call__(self, value: str) -> str | None:
        return None if value else f"must not be empty{self.why}"


@dataclass(frozen=True)
class _Known:
    """A list whose every item is one of `names` (a `what`)."""

    what: str
    names: tuple[str, ...]

    def __call__(self, value: tuple[str, ...]) -> str | None:
        for item in value:
            if item not in self.names:
                return f"unknown {self.what} {item!r} (known: {', '.join(self.names)})"
        return None


# A duration: every timer and limit of the shipper needs one positive and finite.
Seconds = Annotated[float, _positive_seconds]
# A path or URL: handed to the OS as a C string.
CStr = Annotated[str, _no_nul]


class _Table:
    """A table of the configuration: its field types convert and check its values (`_build`, `_check_tree`)."""

    def _check(self, prefix: str) -> None:
        """Checks across this table's fields; `prefix` is its place ("loki.", "sources[0].")."""


@dataclass(frozen=True)
class LokiConfig(_Table):
    """Where and how batches are pushed."""

    url: CStr = DEFAULT_URL
    tenant_id: str = ""
    batch_wait: Seconds = DEFAULT_BATCH_WAIT
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    timeout: Seconds = DEFAULT_REQUEST_TIMEOUT
    min_backoff: Seconds = DEFAULT_MIN_BACKOFF
    max_backoff: Seconds = DEFAULT_MAX_BACKOFF
    # Seconds; must match the cluster's Loki limits_config (DEFAULT_* above say why).
    reject_old_samples_max_age: Seconds = DEFAULT_REJECT_OLD_SAMPLES_MAX_AGE
    creation_grace_period: Seconds = DEFAULT_CREATION_GRACE_PERIOD
    ca_file: CStr = ""                  # PEM CAs trusted for the server ("" = system CAs); replaces them
    insecure_skip_verify: bool = False  # true: no certificate check at all (logged loudly)
    cert_file: CStr = ""                # client certificate (PEM), with key_file
    key_file: CStr = ""                 # its private key (PEM, unencrypted)
    bearer_token_file: CStr = ""        # Authorization: Bearer <file content>
    basic_auth_user: str = ""           # Authorization: Basic, with basic_auth_password_file
    basic_auth_password_file: CStr = ""
    compression: Annotated[str, _OneOf(COMPRESSIONS)] = DEFAULT_COMPRESSION  # of push bodies

    def _check(self, prefix: str) -> None:
        parse_url(self.url, key=f"{prefix}url")
        tenant = self.tenant_id
        if tenant and (not _TENANT_ID.match(tenant) or tenant in (".", "..")):
            # Loki refuses any other tenant ID at every push (and a CR/LF would end the header).
            raise ConfigError(f"{prefix}tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), "
                              f"and not '.' or '..'; got {tenant!r}")
        if self.max_backoff < self.min_backoff:
            raise ConfigError(f"{prefix}max_backoff: must be >= {prefix}min_backoff")
        self._check_tls_auth(prefix)

    def _check_tls_auth(self, prefix: str) -> None:
        """TLS and credential keys: pairs complete, no contradictions, no dead keys.

        Only the text is checked here; the files are read when the client is built
        (`shipper run`), so check-config works where the secrets are not mounted.
        """
        if not self.url.startswith("https://"):
            for name in HTTPS_ONLY_KEYS:
                if getattr(self, name):
                    raise ConfigError(f"{prefix}{name}: only used with an https:// {prefix}url, "
                                      f"and {prefix}url is {self.url!r}")
        if self.insecure_skip_verify and self.ca_file:
            raise ConfigError(f"{prefix}insecure_skip_verify: cannot be combined with {prefix}ca_file "
                              "(nothing would be verified against it)")
        for have, need in (("cert_file", "key_file"), ("key_file", "cert_file"),
                           ("basic_auth_user", "basic_auth_password_file"),
                           ("basic_auth_password_file", "basic_auth_user")):
            if getattr(self, have) and not getattr(self, need):
                raise ConfigError(f"{prefix}{need}: needed with {prefix}{have} (both or neither)")
        if self.bearer_token_file and self.basic_auth_user:
            raise ConfigError(f"{prefix}bearer_token_file: cannot be combined with {prefix}basic_auth_user "
                              "(one Authorization header; choose one)")
        # RFC 7617: the user-id cannot contain a colon (it ends the user-id).
        if any(ch == ":" or _is_control(ch) for ch in self.basic_auth_user):
            raise ConfigError(f"{prefix}basic_auth_user: must not contain ':' or control characters")


@dataclass(frozen=True)
class SourceConfig(_Table):
    """One path to read; `stream` becomes the `stream` label."""

    path: Annotated[str, _no_nul, _NotEmpty()]
    stream: Annotated[str, _NotEmpty()]
    # "raw" lines; "cri" Kubernetes node log lines (<time> <stream> <P|F> msg);
    # "json" Airflow 3 records (timestamp -> entry time, event -> line).
    format: Annotated[str, _OneOf(FORMATS)] = "raw"
    # One entry per record, split per format as a reader would (shipper.multiline:
    # tracebacks and multi-line messages with their record, every print alone).
    # Off by default: it doubles the per-line CPU of a plain source and holds a
    # record up to multiline_max_wait; the Airflow pod template turns it on.
    multiline: bool = False
    multiline_start: str = ""  # regex a new entry starts with instead (firstline); "" = the per-format rules
    multiline_max_lines: Annotated[int, _AtLeast(1)] = DEFAULT_MULTILINE_MAX_LINES
    multiline_max_wait: Seconds = DEFAULT_MULTILINE_MAX_WAIT
    detect_level: bool = False  # send the level as structured metadata `level`
    json_metadata: tuple[str, ...] = ()  # json: record keys sent as structured metadata
    json_keep_record: bool = False  # json: ship the whole record, not just `event`
    # json: keys whose traceback is rendered Python-style after the event ([] = none)
    json_exception_keys: tuple[str, ...] = DEFAULT_JSON_EXCEPTION_KEYS

    @property
    def processed(self) -> bool:
        """True when lines need more than splitting (shipper.process, imported only then)."""
        return self.format != "raw" or self.multiline or self.detect_level

    def _check(self, prefix: str) -> None:
        json = self.format == "json"
        if self.multiline and json:
            raise ConfigError(f"{prefix}multiline: json records are whole entries already; "
                              "multiline is for raw and cri sources")
        if self.multiline_start:
            _check_regex(self.multiline_start, f"{prefix}multiline_start")
        if (self.json_metadata or self.json_keep_record) and not json:
            raise ConfigError(f'{prefix}json_metadata: only for format = "json"')
        if self.json_exception_keys != DEFAULT_JSON_EXCEPTION_KEYS and not json:
            raise ConfigError(f'{prefix}json_exception_keys: only for format = "json"')
        if any(not key for key in self.json_exception_keys):
            raise ConfigError(f"{prefix}json_exception_keys: a key may not be empty")


def _check_regex(pattern: str, key: str) -> None:
    try:
        re.compile(pattern.encode())
    except re.error as e:
        raise ConfigError(f"{key}: not a valid regular expression: {e}") from None
    except (RecursionError, OverflowError, MemoryError) as e:  # thousands of nested groups
        raise ConfigError(f"{key}: regular expression too complex to compile ({type(e).__name__})") from None


@dataclass(frozen=True)
class SinkConfig(_Table):
    """`loki` pushes over HTTP; `console` prints each push, decoded, as JSON."""

    type: Annotated[str, _OneOf(("loki", "console"))] = "loki"


@dataclass(frozen=True)
class AirflowConfig(_Table):
    """Where the Airflow context comes from and which parts are labels."""

    annotations_file: CStr = DEFAULT_ANNOTATIONS_FILE
    missing: Annotated[str, _NotEmpty(" (Loki drops empty label values)")] = DEFAULT_MISSING
    labels: Annotated[tuple[str, ...], _Known("context key", CONTEXT_KEYS)] = DEFAULT_CONTEXT_LABELS
    # `service_name` label of the task's streams ("" = none: Loki 3 derives one).
    service_name: str = DEFAULT_SERVICE_NAME

    def _check(self, prefix: str) -> None:
        service = self.service_name
        if service != service.strip() or any(_is_control(ch) for ch in service):
            raise ConfigError(f"{prefix}service_name: no control characters or surrounding spaces, "
                              f"got {service!r}")
        if len(service.encode()) > 2048:
            raise ConfigError(f"{prefix}service_name: at most 2048 bytes (Loki's label value limit)")


@dataclass(frozen=True)
class MetricsConfig(_Table):
    """The Prometheus endpoint and the exit-time Pushgateway push."""

    listen: str = DEFAULT_METRICS_LISTEN  # host:port; "" disables the endpoint
    pushgateway_url: CStr = ""            # e.g. http://pushgateway:9091; "" = no push

    def _check(self, prefix: str) -> None:
        if self.listen:
            parse_listen(self.listen)
        if self.pushgateway_url:
            parse_url(self.pushgateway_url, key=f"{prefix}pushgateway_url")


DEFAULT_SOURCES = (
    SourceConfig("/proc/1/fd/1", "stdout"),
    SourceConfig("/proc/1/fd/2", "stderr"),
)


@dataclass(frozen=True)
class Config(_Table):
    """The whole configuration."""

    loki: LokiConfig = field(default_factory=LokiConfig)
    sources: tuple[SourceConfig, ...] = DEFAULT_SOURCES
    labels: dict[str, str] = field(default_factory=dict)
    sink: SinkConfig = field(default_factory=SinkConfig)
    airflow: AirflowConfig = field(default_factory=AirflowConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shutdown_timeout: Seconds = DEFAULT_SHUTDOWN_TIMEOUT
    max_line_bytes: Annotated[int, _AtLeast(1024)] = DEFAULT_MAX_LINE_BYTES
    buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES
    when_full: Annotated[str, _OneOf(WHEN_FULL_CHOICES)] = DEFAULT_WHEN_FULL
    spool_dir: CStr = ""  # "" = no spool
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    # Acknowledged offsets of regular files, per (device, inode); "" = none,
    # or <spool_dir>/checkpoint.json when spool_dir is set.
    checkpoint_file: CStr = ""
    file_poll_interval: Seconds = DEFAULT_FILE_POLL_INTERVAL
    # When this path exists, behave as on SIGTERM (read to the end, flush,
    # exit): how the sidecar learns the task ended on clusters without native
    # sidecars (< 1.29). Checked every file_poll_interval; "" = off.
    stop_file: CStr = ""
    # Levels whose entries also get a `level` label (their own Loki stream, the
    # seed's "conditional routing"), e.g. ["error", "critical"]. Needs
    # detect_level on the source. Few values: every one is a stream per task.
    level_labels: Annotated[tuple[str, ...], _Known("level", LEVEL_NAMES)] = ()
    # exec mode only: "none", "stderr" or an absolute file path (DEFAULT_EXEC_DIAGNOSTICS says why).
    exec_diagnostics: Annotated[str, _no_nul, _diagnostics_target] = DEFAULT_EXEC_DIAGNOSTICS

    def _check(self, prefix: str) -> None:
        self._check_sizes()
        if self.level_labels and not any(s.detect_level or s.format == "json" for s in self.sources):
            raise ConfigError("level_labels: no source detects levels (set detect_level = true on one)")
        if not self.sources:
            raise ConfigError("sources: at least one [[sources]] table is needed")
        seen: set[str] = set()
        for i, s in enumerate(self.sources):
            if s.path in seen:
                raise ConfigError(f"sources[{i}].path: {s.path} is listed twice")
            seen.add(s.path)
        self._check_labels()

    def _check_sizes(self) -> None:
        """Each size holds the one it feeds."""
        batch = self.loki.batch_max_bytes
        # One batch must hold at least one full-size line plus its framing.
        if batch < self.max_line_bytes + 1024:
            raise ConfigError(f"loki.batch_max_bytes: must be at least max_line_bytes + 1024 "
                              f"({self.max_line_bytes + 1024}), got {batch}")
        if self.buffer_max_bytes < batch:
            raise ConfigError(f"buffer_max_bytes: must be at least loki.batch_max_bytes ({batch}), "
                              f"got {self.buffer_max_bytes}")
        if self.spool_dir and self.spool_max_bytes < batch:
            raise ConfigError(f"spool_max_bytes: must be at least loki.batch_max_bytes ({batch}), "
                              f"got {self.spool_max_bytes}")

    def _check_labels(self) -> None:
        """Static label names, and how many labels a stream gets in all."""
        context = self.airflow.labels
        for name in self.labels:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ConfigError(f"labels.{name}: not a valid Loki label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)")
            if name == "stream" or name in context:
                raise ConfigError(f"labels.{name}: set by the shipper itself; choose another name")
            if name == "service_name":
                raise ConfigError("labels.service_name: set by the shipper itself; use airflow.service_name")
        service = self.airflow.service_name
        # Loki 3 does not count service_name against max_label_names_per_series; Loki 2 does.
        count = len(self.labels) + 1 + len(context) + (1 if service else 0)
        if count > MAX_LABELS:
            raise ConfigError(f"labels: Loki accepts at most {MAX_LABELS} labels per stream, this config makes "
                              f"{count}" + (" (service_name included: airflow.service_name)" if service else ""))


def _is_control(ch: str) -> bool:
    return ch < " " or ch == "\x7f"


def load(*, path: str | None, env: dict[str, str] | os._Environ[str]) -> tuple[Config, str]:
    """Load from `--config PATH`, else from `SHIPPER_CONFIG`, else defaults.

    Returns the config and a description of where it came from.
    """
    if path is not None:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        return parse(text, origin=path), path
    env_text = env.get("SHIPPER_CONFIG")
    if env_text:
        return parse(env_text, origin="SHIPPER_CONFIG"), "env SHIPPER_CONFIG"
    return Config(), "defaults"


def parse(text: str, origin: str = "<config>") -> Config:
    """Parse TOML text into a validated `Config`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin} is not valid TOML: {e}") from None
    except ValueError as e:
        # tomllib converts decimal integers with int(), whose plain ValueError
        # for more than 4300 digits it does not wrap. The advice after ";"
        # (sys.set_int_max_str_digits) is for programmers, not for operators.
        raise ConfigError(f"{origin} is not valid TOML: {str(e).split(';')[0]}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{origin} is not valid TOML: arrays or tables nested too deeply") from None
    config: Config = _build(Config, raw, "")
    _check_tree(config, "")
    return config


# --- from TOML values to the dataclasses, by the fields' types -----------------------

def _types(cls: type) -> dict[str, Any]:
    """Field name -> its type, `Annotated` rules stripped (what `_convert` dispatches on)."""
    if cls not in _TYPES:
        _TYPES[cls] = get_type_hints(cls)
    return _TYPES[cls]


def _rules(cls: type) -> dict[str, tuple[Rule, ...]]:
    """Field name -> the rules its `Annotated` type carries (none for most)."""
    if cls not in _RULES:
        hints = get_type_hints(cls, include_extras=True)
        _RULES[cls] = {f.name: getattr(hints[f.name], "__metadata__", ()) for f in dataclasses.fields(cls)}
    return _RULES[cls]


# Filled on first use: get_type_hints evaluates the annotations, which cost nothing until a config is parsed.
_TYPES: dict[type, dict[str, Any]] = {}
_RULES: dict[type, dict[str, tuple[Rule, ...]]] = {}


def _build(cls: Any, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing missing and unknown keys and wrong types."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {_kind(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(f"{where}: missing required key {', '.join(missing)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown key {names} (known keys in {where}: {', '.join(fields)})")
    types = _types(cls)
    return cls(**{name: _convert(types[name], value, prefix + name) for name, value in raw.items()})


def _convert(typ: Any, value: Any, key: str) -> Any:
    """`value` as the field type `typ` wants, or ConfigError naming `key` and what was found."""
    scalar = _SCALARS.get(typ)
    if scalar is not None:
        return scalar(value, key)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, key + ".")
    args = get_args(typ)
    if get_origin(typ) is dict and args == (str, str):
        return _to_string_table(value, key)
    if get_origin(typ) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is str:
            return _to_strings(value, key)
        if dataclasses.is_dataclass(args[0]):
            return _to_tables(args[0], value, key)
    raise AssertionError(f"no converter for {typ}")  # a new kind of field type needs one here


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {_kind(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond the float range (about 1.8e308)
        raise ConfigError(f"{key}: number too large") from None


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {_kind(value)}")
    if not -_INT_LIMIT <= value <= _INT_LIMIT:
        # Not printed: a hex integer may have too many digits for str().
        raise ConfigError(f"{key}: integer out of range (beyond 2**63)")
    return value


def _to_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_kind(value)}")
    return value


def _to_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_kind(value)}")
    return value


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {float: _to_float, int: _to_int, bool: _to_bool, str: _to_str}


def _to_string_table(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table of strings, got {_kind(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise ConfigError(f"{key}.{k}: expected a string, got {_kind(v)}")
    return dict(value)


def _to_strings(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {_kind(value)}")
    return tuple(value)


def _to_tables(cls: Any, value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected an array of tables ([[{key}]]), got {_kind(value)}")
    return tuple(_build(cls, item, f"{key}[{i}].") for i, item in enumerate(value))


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _check_tree(table: _Table, prefix: str) -> None:
    """Check `table` field by field (its fields' rules; a nested table in full), then its `_check`."""
    for name, rules in _rules(type(table)).items():
        value = getattr(table, name)
        for rule in rules:
            problem = rule(value)
            if problem is not None:
                raise ConfigError(f"{prefix}{name}: {problem}")
        if isinstance(value, _Table):
            _check_tree(value, f"{prefix}{name}.")
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, _Table):
                    _check_tree(item, f"{prefix}{name}[{i}].")
    table._check(prefix)


# scheme://host[:port][/path]. Hand-written rather than urllib.parse: it is
# the only URL the shipper parses, and urllib.parse costs ~0.4 MiB per pod.
_URL = re.compile(r"(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-fA-F:.]+\]|[^/:?#@\[\]\s]+)"
                  r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[^?#\s]*)?\Z")


@dataclass(frozen=True)
class Url:
    """The parts of a Loki push URL the client needs."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def netloc(self) -> str:
        """host[:port] as written for the Host header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) for metrics.listen."""
    host, sep, port = listen.rpartition(":")
    # len() first: int() of more than 4300 digits is a ValueError, not a ConfigError.
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics.listen: expected host:port (e.g. 0.0.0.0:9337), got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(c in host for c in "/[]@ "):
        raise ConfigError(f"metrics.listen: {host!r} is not a host name or address")
    return host, int(port)


def redact_url(url: str) -> str:
    """`url` with the password of a `user:password@` part replaced by `***` (messages never show it)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def parse_url(url: str, key: str = "loki.url") -> Url:
    """Parse and check an http(s) URL; ConfigError names the key and what is wrong."""
    try:
        return _parse_url(url, key)
    except ConfigError as e:
        shown = redact_url(url)
        if shown == url:
            raise
        raise ConfigError(str(e).replace(url, shown).replace(repr(url), repr(shown))) from None


def _parse_url(url: str, key: str) -> Url:
    m = _URL.match(url)
    if m is None:
        if "://" not in url:
            raise ConfigError(f"{key}: {url!r} is not a URL (expected http://host[:port]/path)")
        if any(c in url for c in "?#"):
            raise ConfigError(f"{key}: must not carry a query or fragment: {url!r}")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError(f"{key}: must not carry credentials (use a token file): {url!r}")
        raise ConfigError(f"{key}: {url!r} is not a valid URL (expected http://host[:port]/path)")
    scheme = m.group("scheme")
    if scheme not in ("http", "https"):
        raise ConfigError(f"{key}: scheme must be http or https, got {url!r}")
    port = int(m.group("port")) if m.group("port") else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port must be 1-65535 in {url!r}")
    host = m.group("host")
    if host.startswith("["):
        host = host[1:-1]
    return Url(scheme, host, port, m.group("path") or "/")


def dump(c: Config) -> str:
    """The effective configuration as TOML (for `shipper check-config`): what `parse` reads back to `c`."""
    from shipper import toml_out  # here: `shipper run` never writes TOML, so never loads the writer

    top = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    tables = {name: dataclasses.asdict(top.pop(name)) for name in ("loki", "sink", "airflow", "metrics")}
    labels, sources = top.pop("labels"), top.pop("sources")
    return toml_out.dumps({**top, **tables, "labels": labels,
                           "sources": [dataclasses.asdict(s) for s in sources]})
