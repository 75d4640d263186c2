"""Labels and structured metadata: a config and an Airflow context in, label sets, streams and escaped label strings out.

Pure functions, no IO except `read_annotations()`, which takes a path. A value
from the environment or a log line can never break the label string: values
are escaped like Go's strconv.Quote (what Loki's parser unquotes) and cut to
Loki's length limit (property-tested in tests/test_labels.py).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shipper import encoder
from shipper.config import CONTEXT_KEYS

if TYPE_CHECKING:
    from shipper.batch import Stream
    from shipper.config import Config

# Loki's default max_label_value_length (bytes, pkg/validation/limits.go).
MAX_LABEL_VALUE_BYTES = 2048

# AIRFLOW_CTX_* names (FACTS §2) mapped to context keys; the first one set wins.
# There is no AIRFLOW_CTX_RUN_ID: the run id is AIRFLOW_CTX_DAG_RUN_ID.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "dag_id": ("AIRFLOW_CTX_DAG_ID",),
    "task_id": ("AIRFLOW_CTX_TASK_ID",),
    "run_id": ("AIRFLOW_CTX_DAG_RUN_ID",),
    "try_number": ("AIRFLOW_CTX_TRY_NUMBER",),
    "map_index": ("AIRFLOW_CTX_MAP_INDEX",),
    "logical_date": ("AIRFLOW_CTX_LOGICAL_DATE", "AIRFLOW_CTX_EXECUTION_DATE"),
}

# Loki 3's `service_name` (FACTS §4), what Grafana's Logs Drilldown lists services
# by. The task's streams carry `[airflow] service_name` ("airflow" by default); the
# exit-summary stream {job="shipper"} carries this one, so Drilldown shows the
# shipper's records apart from the task's lines. Set by the shipper rather than
# left to Loki's discovery: the same on Loki 2 (where it is a plain label), and
# independent of the cluster's `discover_service_name`.
SERVICE_NAME_LABEL = "service_name"
SUMMARY_SERVICE_NAME = "shipper"

# Annotation keys the KubernetesExecutor writes on worker pods (FACTS §2).
ANNOTATION_KEYS = ("dag_id", "task_id", "run_id", "try_number", "map_index")

_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\a": "\\a", "\b": "\\b", "\f": "\\f",
    "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
}
for _c in [*range(0x20), 0x7F]:
    _ESCAPES.setdefault(chr(_c), f"\\x{_c:02x}")
# Go's strconv.Quote writes U+FFFD raw, but Prometheus' lexer (which Loki's
# ParseLabels uses) cannot tell it from a decoding error and refuses the whole
# label set ("invalid UTF-8 rune"): escaped, it is accepted and unquoted as U+FFFD.
_ESCAPES["\ufffd"] = "\\ufffd"
_ESCAPE_TABLE = str.maketrans(_ESCAPES)

# Lone surrogates: what os.environ holds for bytes that are not UTF-8 (PEP 383).
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_value(value: str, limit: int = MAX_LABEL_VALUE_BYTES) -> str:
    """Make `value` valid UTF-8 of at most `limit` bytes, cut on a character boundary.

    Values from `os.environ` may hold lone surrogates (undecodable bytes);
    each becomes one U+FFFD, as the byte it stands for would when decoded.
    """
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        # Not via "surrogatepass" + decode: that makes 3 bytes of each
        # surrogate, and decoding them gives 3 U+FFFD per undecodable byte.
        raw = _SURROGATE.sub("\ufffd", value).encode("utf-8")
    else:
        if len(raw) <= limit:
            return value
    end = min(limit, len(raw))
    while end < len(raw) and end > 0 and (raw[end] & 0xC0) == 0x80:
        end -= 1  # do not cut a character in two
    return raw[:end].decode("utf-8")


def quote(value: str) -> str:
    """Quote a label value like Go's strconv.Quote, for Loki's parser.

    One difference: U+FFFD is written as the escape `\\ufffd`, which Loki's
    parser accepts where it refuses the raw character.
    """
    return '"' + value.translate(_ESCAPE_TABLE) + '"'


def label_string(labels: Mapping[str, str]) -> str:
    """`{a="x", b="y"}`, names sorted, empty values dropped (Loki drops them too)."""
    return "{" + ", ".join(f"{k}={quote(v)}" for k, v in sorted(labels.items()) if v) + "}"


def with_service_name(labels: Mapping[str, str], service: str) -> dict[str, str]:
    """`labels` plus `service_name` = `service` (cleaned); unchanged when `service` is ""
    (then Loki 3 derives one from its discover_service_name labels)."""
    out = dict(labels)
    if service:
        out[SERVICE_NAME_LABEL] = clean_value(service)
    return out


def task_labels(config: Config, ctx: Mapping[str, str]) -> dict[str, str]:
    """Static labels plus the context keys configured as labels (`dag_id`, `task_id`)."""
    air = config.airflow
    labels = {k: clean_value(v) for k, v in config.labels.items()}
    for key in air.labels:
        labels[key] = clean_value(ctx.get(key) or air.missing)
    return labels


def run_metadata(config: Config, ctx: Mapping[str, str]) -> bytes:
    """Per-run context (`run_id`, `try_number`, ...) as encoded structured metadata."""
    return encoder.encode_metadata(
        (key, clean_value(ctx[key])) for key in CONTEXT_KEYS
        if key not in config.airflow.labels and ctx.get(key))


def task_stream(config: Config, ctx: Mapping[str, str], name: str) -> Stream:
    """A source's stream: task labels + `stream` + `service_name`; per-run values as metadata."""
    from shipper.batch import Stream  # here, not at the top: batch.py imports label_string from this module

    labels = with_service_name(task_labels(config, ctx), config.airflow.service_name)
    labels["stream"] = clean_value(name)
    return Stream(label_string(labels), run_metadata(config, ctx), name, labels)


def build_streams(config: Config, ctx: Mapping[str, str],
                  names: Sequence[str] | None = None) -> list[Stream]:
    """One Stream per [[sources]] entry (or per name given: exec's "stdout", "stderr")."""
    return [task_stream(config, ctx, name)
            for name in (names if names is not None else [s.stream for s in config.sources])]


def summary_labels(config: Config, ctx: Mapping[str, str]) -> dict[str, str]:
    """The exit summary's labels: {job="shipper", <task labels>}, service_name="shipper"
    (unless airflow.service_name is "": then Loki's discovery names it)."""
    labels = task_labels(config, ctx)
    if config.airflow.service_name:
        labels = with_service_name(labels, SUMMARY_SERVICE_NAME)
    labels["job"] = "shipper"
    return labels


def context_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Airflow context from AIRFLOW_CTX_* variables (set only in the task's own process)."""
    ctx = {}
    for key, names in ENV_NAMES.items():
        for name in names:
            if env.get(name):
                ctx[key] = env[name]
                break
    return ctx


# {AIRFLOW_HOME}/logs/dag_id=<d>/run_id=<r>/task_id=<t>/[map_index=<m>/]attempt=<n>.log (FACTS §2)
_TASK_LOG = re.compile(r"(?:^|/)dag_id=(?P<dag_id>[^/]+)/run_id=(?P<run_id>[^/]+)/task_id=(?P<task_id>[^/]+)/"
                       r"(?:map_index=(?P<map_index>-?\d+)/)?attempt=(?P<try_number>\d+)\.log\Z")


def context_from_log_path(path: str) -> dict[str, str]:
    """Airflow context from a task-log file's path; empty when it is not in Airflow's layout.

    The attempt number is the task's `try_number`.
    """
    m = _TASK_LOG.search(path)
    return {k: v for k, v in m.groupdict().items() if v is not None} if m else {}


def parse_annotations(text: str) -> dict[str, str]:
    """Parse a downward-API annotations file: one `key="go-quoted value"` per line.

    Lines that do not parse are skipped (the file also holds annotations of
    other tools); only the Airflow keys are kept.
    """
    out = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or key not in ANNOTATION_KEYS:
            continue
        try:
            out[key] = go_unquote(quoted)
        except ValueError:
            continue
    return out


# The downward-API annotations file holds a pod's annotations: Kubernetes caps
# them at 256 KiB in all. Anything larger is not that file.
MAX_ANNOTATIONS_BYTES = 256 * 1024


def read_annotations(path: str) -> dict[str, str]:
    """`parse_annotations` of the file at `path`; {} when it does not exist.

    Only a regular file of at most MAX_ANNOTATIONS_BYTES is read (opened
    without blocking, so a FIFO or a device never hangs the start, and read
    with a bound, so /dev/zero or a huge file never fills memory); anything
    else is a ValueError saying why.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ValueError(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file (the downward-API annotations file is one)")
        data = b""
        while len(data) <= MAX_ANNOTATIONS_BYTES:
            chunk = os.read(fd, MAX_ANNOTATIONS_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_ANNOTATIONS_BYTES:
            raise ValueError(f"{path} is larger than {MAX_ANNOTATIONS_BYTES} bytes "
                             "(a pod's annotations are at most 256 KiB)")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return parse_annotations(data.decode("utf-8", "replace"))


_UNESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
              "v": "\v", "\\": "\\", '"': '"', "'": "'"}


def go_unquote(s: str) -> str:
    """Inverse of Go's strconv.Quote for double-quoted strings; ValueError if malformed."""
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise ValueError("not a double-quoted string")
    body = s[1:-1]
    if "\\" not in body:
        if '"' in body:
            raise ValueError("unescaped quote")
        return body
    out: list[str] = []
    raw = bytearray()  # \xNN and octal escapes are bytes, may form UTF-8 sequences
    i = 0
    while i < len(body):
        c = body[i]
        if c == '"':
            raise ValueError("unescaped quote")
        piece, i = _escape(body, i + 1) if c == "\\" else (c, i + 1)
        if isinstance(piece, int):
            raw.append(piece)
            continue
        if raw:
            out.append(raw.decode("utf-8", "replace"))
            raw.clear()
        out.append(piece)
    if raw:
        out.append(raw.decode("utf-8", "replace"))
    return "".join(out)


def _escape(body: str, j: int) -> tuple[str | int, int]:
    """The escape whose backslash is at `j - 1`, and the index after it: a character,
    or a byte (\\xNN, octal) that may form a UTF-8 sequence with the bytes around it."""
    if j >= len(body):
        raise ValueError("trailing backslash")
    e = body[j]
    if e in _UNESCAPES:
        return _UNESCAPES[e], j + 1
    if e == "x":
        return int(_hex(body, j + 1, 2), 16), j + 3
    if e in "01234567":
        digits = body[j:j + 3]
        if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
            raise ValueError("bad octal escape")
        return int(digits, 8), j + 3
    if e in "uU":
        n = 4 if e == "u" else 8
        cp = int(_hex(body, j + 1, n), 16)
        if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            raise ValueError("bad code point")
        return chr(cp), j + 1 + n
    raise ValueError(f"unknown escape \\{e}")


def _hex(s: str, start: int, n: int) -> str:
    digits = s[start:start + n]
    if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
        raise ValueError("bad hex escape")
    return digits
