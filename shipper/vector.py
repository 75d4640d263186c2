"""Translate the seed design's Vector sidecar config into the shipper's own.

Users run the seed's Vector sidecar, configured by the TOML in VECTOR_CONFIG:
a `file` source with `include` paths, a `remap` transform whose statements are
`.field = get_env_var("NAME") ?? "default"`, and a `loki` sink. `translate()`
turns exactly that shape into the shipper's native configuration and refuses
everything else with a `ConfigError` naming what it cannot translate (the CLI
exits 2). Pure: text in, `Translation` out; the CLI does the reading and
printing (`shipper migrate-vector`, and `shipper run` when only VECTOR_CONFIG
is set).

Two things of the seed never worked and are *not* carried over literally:
- `get_env_var("AIRFLOW_CTX_*")` read the sidecar's own environment, where
  Airflow never sets those variables (they live in the task process only,
  FACTS §1.3), so the seed always produced its default, "unknown". The
  translation maps each such field to the shipper's Airflow context, which
  comes from AIRFLOW_CTX_* when present and else from the downward-API
  annotations file, and says so in a comment of the output.
- `/proc/1/fd/1` and `/proc/1/fd/2` are kept as written (they are the
  shipper's defaults too), but in a Kubernetes sidecar /proc/1 is the sidecar
  itself (FACTS §1.1) and the shipper refuses to start on them. `capture_dir`
  rewrites them to the files written by the capture wrapper of
  k8s/pod-template-configmap.yaml (docs/deployment.md).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from shipper import toml_out
from shipper.config import CONTEXT_KEYS, DEFAULT_CONTEXT_LABELS, ConfigError
from shipper.labels import ENV_NAMES

# Vector's loki sink appends this path to `endpoint` unless `path` is set.
VECTOR_LOKI_PATH = "/loki/api/v1/push"

# AIRFLOW_CTX_* variable -> the shipper's context key (same table the shipper reads).
ENV_TO_CONTEXT: dict[str, str] = {name: key for key, names in ENV_NAMES.items() for name in names}

# `.field = get_env_var("NAME") ?? "default"`, optionally ending in `;`.
_STATEMENT = re.compile(
    r'\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*get_env_var\(\s*"(?P<var>[A-Za-z_][A-Za-z0-9_]*)"\s*\)'
    r'\s*\?\?\s*"(?P<default>(?:[^"\\]|\\.)*)"\s*;?\Z')
# A label value that is exactly one field template: "{{ dag_id }}" or "{{ .dag_id }}".
_TEMPLATE = re.compile(r"\{\{\s*\.?(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}\Z")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PROC_FD = re.compile(r"/proc/1/fd/(?P<fd>[12])\Z")

# Keys read per component; anything else is refused by name.
_TOP_KEYS = {"sources", "transforms", "sinks", "data_dir"}
_FILE_KEYS = {"type", "include", "read_from"}
_REMAP_KEYS = {"type", "inputs", "source"}
_LOKI_KEYS = {"type", "inputs", "endpoint", "path", "labels", "tenant_id", "batch", "encoding",
              "compression", "out_of_order_action", "remove_label_fields", "healthcheck"}
_BATCH_KEYS = {"timeout_secs", "max_bytes"}
_ENCODING_CODECS = {"text", "raw_message", "json"}


@dataclass
class Translation:
    """The native configuration (`config`, shaped like the TOML) and the notes to print with it."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Comments placed above a table or key in the TOML output, keyed by "top" (the document),
    # "table", "table.key" or "sources[i]".
    comments: dict[str, list[str]] = field(default_factory=dict)

    def to_toml(self) -> str:
        """The configuration as commented TOML, accepted by `shipper check-config`."""
        head = ["Translated from a Vector config by `shipper migrate-vector`.",
                "Check it with: shipper --config FILE check-config"]
        for note in self.notes:
            head += [f"{'NOTE:' if i == 0 else '     '} {line}" for i, line in enumerate(_wrap(note, 90))]
        comments = {"" if where == "top" else where: [line for text in texts for line in _wrap(text)]
                    for where, texts in self.comments.items()}
        comments[""] = head + comments.get("", [])
        return toml_out.dumps(self.config, comments=comments)

    def add_comment(self, where: str, text: str) -> None:
        self.comments.setdefault(where, []).append(text)


def translate(text: str, *, origin: str = "VECTOR_CONFIG", capture_dir: str | None = None) -> Translation:
    """Translate a Vector TOML config into the shipper's config; ConfigError names what cannot be.

    `capture_dir`: rewrite the seed's /proc/1/fd/1 and /proc/1/fd/2 sources to
    `<capture_dir>/stdout.log` and `<capture_dir>/stderr.log`, the files the
    capture wrapper of k8s/pod-template-configmap.yaml writes.
    """
    raw, sources, transforms, (sink_name, sink) = _read_top(text, origin)
    tr = Translation(config={})
    if "data_dir" in raw:
        tr.notes.append("data_dir is dropped: Vector's state directory means nothing to the shipper.")

    paths: list[tuple[str, str]] = []  # (path, stream)
    for name, src in sources.items():
        paths += _file_source(name, src, origin, tr)
    fields = _remap_fields(transforms, origin)
    _check_topology(sources, transforms, sink_name, sink, origin)
    loki, labels, context_labels = _loki_sink(sink_name, sink, fields, origin, tr)
    tr.config["airflow"] = _airflow_table(fields, context_labels, origin, tr)
    if labels:
        tr.config["labels"] = labels
    paths = _capture_paths(paths, capture_dir, tr)
    # A stable, readable order: loki, airflow, labels, sources.
    tr.config = {"loki": loki, "airflow": tr.config["airflow"],
                 **({"labels": tr.config["labels"]} if "labels" in tr.config else {}),
                 "sources": [{"path": p, "stream": s} for p, s in paths]}
    if capture_dir is not None:
        # The task's own output, as the pod template ships it: tracebacks as
        # one entry, the level as structured metadata.
        for src in tr.config["sources"]:
            src.update(multiline=True, detect_level=True)
        tr.add_comment("sources[0]", "multiline merges a traceback into the entry it belongs to; "
                       "detect_level sends info/warning/error as structured metadata `level`.")
    return tr


def _read_top(text: str, origin: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                                dict[str, dict[str, Any]], tuple[str, dict[str, Any]]]:
    """The parsed config, its sources, its transforms and its one sink (name, table)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin} is not valid TOML (only TOML Vector configs are translated): {e}") from None
    _refuse_unknown(raw, _TOP_KEYS, "", origin)
    sources = _table(raw.get("sources"), "sources", origin)
    transforms = _table(raw.get("transforms", {}), "transforms", origin)
    sinks = _table(raw.get("sinks"), "sinks", origin)
    if not sources:
        raise ConfigError(f"{origin}: no [sources.*] table: nothing to read")
    if len(sinks) != 1:
        raise ConfigError(f"{origin}: exactly one sink can be translated, found {len(sinks)} "
                          f"({', '.join(sinks) or 'none'})")
    ((sink_name, sink),) = sinks.items()
    return raw, sources, transforms, (sink_name, sink)


def _remap_fields(transforms: dict[str, dict[str, Any]], origin: str) -> dict[str, tuple[str, str, str]]:
    """remap field -> (context key, default, env var), over every transform."""
    fields: dict[str, tuple[str, str, str]] = {}
    for name, transform in transforms.items():
        for fld, ctx_default in _remap(name, transform, origin).items():
            if fld in fields:
                raise ConfigError(f"{origin}: transforms.{name}: field .{fld} is set twice")
            fields[fld] = ctx_default
    return fields


def _airflow_table(fields: dict[str, tuple[str, str, str]], context_labels: list[str], origin: str,
                   tr: Translation) -> dict[str, Any]:
    """[airflow]: the Airflow context, what the seed tried to read from AIRFLOW_CTX_*."""
    defaults = {d for _, d, _ in fields.values()}
    if len(defaults) > 1:
        listing = ", ".join(f".{f} ?? {json.dumps(d)}" for f, (_, d, _) in fields.items())
        raise ConfigError(f"{origin}: remap defaults differ ({listing}); the shipper has one "
                          "value for a missing context value ([airflow] missing): use the same default")
    airflow: dict[str, Any] = {}
    if defaults:
        (missing,) = defaults
        if not missing:
            raise ConfigError(f'{origin}: remap default "" cannot be translated: Loki drops empty '
                              'label values; use a non-empty default such as "unknown"')
        airflow["missing"] = missing
    airflow["labels"] = list(context_labels)
    if fields:
        names = ", ".join(f'.{f} = get_env_var("{var}")' for f, (_, _, var) in fields.items())
        tr.add_comment("airflow", (
            f"Vector's remap ({names}) read the sidecar's own environment, where Airflow never sets "
            "AIRFLOW_CTX_*: they exist only inside the task process, so the seed always shipped its "
            "default. The shipper takes the Airflow context from AIRFLOW_CTX_* when they are set, else "
            "from the downward-API annotations file [airflow] annotations_file (default "
            "/etc/podinfo/annotations, see k8s/pod-template-configmap.yaml): dag_id, task_id, run_id, "
            "try_number, map_index."))
    tr.add_comment("airflow.labels", (
        "Context values sent as labels; the others (run_id, try_number, map_index, logical_date) "
        "go to structured metadata, never labels (one stream per task, not per run)."))
    return airflow


def _capture_paths(paths: list[tuple[str, str]], capture_dir: str | None,
                   tr: Translation) -> list[tuple[str, str]]:
    """`paths` with /proc/1/fd/1 and 2 read from the capture wrapper's files in `capture_dir`
    (given), else as they are, with a note when they are /proc/1/fd paths."""
    if capture_dir is None:
        if any(_PROC_FD.match(p) for p, _ in paths):
            tr.notes.append(
                "/proc/1/fd/1 and /proc/1/fd/2 are kept as written, but in a Kubernetes sidecar /proc/1 is the "
                "sidecar itself, not the task, and reading another process's stdout pipe steals its lines: the "
                "shipper refuses to start on them there. Use the capture path of docs/deployment.md "
                "(`shipper migrate-vector --capture-dir /var/log/task`).")
        return paths
    capture_dir = capture_dir.rstrip("/") or "/"
    rewritten = []
    for path, stream in paths:
        m = _PROC_FD.match(path)
        if m:
            path = f"{capture_dir}/{'stdout' if m.group('fd') == '1' else 'stderr'}.log"
        rewritten.append((path, stream))
    tr.add_comment("top", (
        f"Sources are the files the capture wrapper writes in {capture_dir} (docs/deployment.md). "
        "On clusters without native sidecars (< 1.29) the shipper runs as a regular container and "
        f"must also stop by itself: add  stop_file = \"{capture_dir}/.done\"  (the wrapper creates "
        "it once the task's output is complete). Leave it out for a native sidecar, which is "
        "stopped by SIGTERM after the task container has exited."))
    return rewritten


def config_file_path(value: str) -> str | None:
    """The file VECTOR_CONFIG names, if it names one (Vector itself reads it as a path), else None.

    Vector takes VECTOR_CONFIG as a comma-separated list of config file paths;
    the seed put the TOML text itself there. Text with a newline, `=` or `[`
    is config text; one path is read; several (Vector merges them) are refused.
    """
    value = value.strip()
    if not value or any(c in value for c in "\n=[") or '"' in value:
        return None
    if "," in value:
        raise ConfigError(f"VECTOR_CONFIG lists several files ({value}); translate them one at a time "
                          "with `shipper migrate-vector --config FILE`")
    return value


def _file_source(name: str, src: dict[str, Any], origin: str, tr: Translation) -> list[tuple[str, str]]:
    where = f"sources.{name}"
    kind = src.get("type")
    if kind != "file":
        raise ConfigError(f"{origin}: {where}: source type {kind!r} cannot be translated (only \"file\")")
    _refuse_unknown(src, _FILE_KEYS, where + ".", origin)
    include = src.get("include")
    if not isinstance(include, list) or not include or not all(isinstance(p, str) for p in include):
        raise ConfigError(f"{origin}: {where}.include: expected a non-empty list of paths")
    read_from = src.get("read_from", "beginning")
    if read_from != "beginning":
        raise ConfigError(f"{origin}: {where}.read_from = {read_from!r} cannot be translated: the shipper "
                          "always reads a file from its beginning")
    out = []
    for path in include:
        if any(c in path for c in "*?[{"):
            raise ConfigError(f"{origin}: {where}.include: glob {path!r} cannot be translated; list each "
                              "file the shipper should read")
        out.append((path, _stream_name(path)))
    streams = [s for _, s in out]
    if len(set(streams)) != len(streams):  # e.g. two files with the same stem
        out = [(p, f"{s}_{i}") for i, (p, s) in enumerate(out)]
    return out


def _stream_name(path: str) -> str:
    m = _PROC_FD.match(path) or re.match(r"/proc/(?:\d+|self)/fd/(?P<fd>[12])\Z", path)
    if m:
        return "stdout" if m.group("fd") == "1" else "stderr"
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "file"


def _remap(name: str, transform: dict[str, Any], origin: str) -> dict[str, tuple[str, str, str]]:
    """Fields set by one remap: field -> (context key, default, env var)."""
    where = f"transforms.{name}"
    kind = transform.get("type")
    if kind != "remap":
        raise ConfigError(f"{origin}: {where}: transform type {kind!r} cannot be translated (only \"remap\")")
    _refuse_unknown(transform, _REMAP_KEYS, where + ".", origin)
    source = transform.get("source")
    if not isinstance(source, str):
        raise ConfigError(f"{origin}: {where}.source: expected the VRL program as a string")
    fields: dict[str, tuple[str, str, str]] = {}
    for lineno, line in enumerate(source.splitlines(), 1):
        stmt = line.strip()
        if not stmt or stmt.startswith("#"):
            continue
        m = _STATEMENT.match(stmt)
        if m is None:
            raise ConfigError(
                f"{origin}: {where}.source line {lineno}: cannot translate VRL {stmt!r}; only statements "
                "of the form .field = get_env_var(\"AIRFLOW_CTX_...\") ?? \"default\" are translated")
        fld, var = m.group("field"), m.group("var")
        try:
            default = json.loads('"' + m.group("default") + '"')
        except ValueError:
            raise ConfigError(f"{origin}: {where}.source line {lineno}: cannot translate the string "
                              f"escape in {stmt!r}") from None
        key = ENV_TO_CONTEXT.get(var)
        if key is None:
            raise ConfigError(
                f"{origin}: {where}.source line {lineno}: get_env_var({json.dumps(var)}) cannot be translated: "
                f"the shipper knows the Airflow context ({', '.join(sorted(ENV_TO_CONTEXT))}) but does not "
                "copy other environment variables; set a static value under [labels] instead")
        if fld != key:
            raise ConfigError(
                f"{origin}: {where}.source line {lineno}: field .{fld} cannot be translated: the shipper "
                f"names this value {key!r} (from {var}); rename the field to .{key}")
        fields[fld] = (key, default, var)
    return fields


def _check_topology(sources: dict[str, Any], transforms: dict[str, Any], sink_name: str,
                    sink: dict[str, Any], origin: str) -> None:
    """Every source must reach the sink and every remap must lie on the way (the shipper has one pipeline)."""
    known = set(sources) | set(transforms)
    graph: dict[str, list[str]] = {}
    for name, transform in transforms.items():
        graph[name] = _inputs(transform, f"transforms.{name}", known, origin, default=sorted(sources))
    fed = {i for ins in graph.values() for i in ins}
    leaves = sorted(n for n in known if n not in fed)
    sink_inputs = _inputs(sink, f"sinks.{sink_name}", known, origin, default=leaves)

    def reaches(node: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if node in seen:
            raise ConfigError(f"{origin}: transforms.{node}: inputs form a cycle")
        out = {node}
        for parent in graph.get(node, []):
            out |= reaches(parent, seen | {node})
        return out

    upstream: set[str] = set()
    for node in sink_inputs:
        upstream |= reaches(node)
    for name in sources:
        if name not in upstream:
            raise ConfigError(f"{origin}: sources.{name} does not reach sinks.{sink_name}; "
                              "the shipper ships every source it reads")
    for name in transforms:
        if name not in upstream:
            raise ConfigError(f"{origin}: transforms.{name} does not feed sinks.{sink_name}")
    if transforms:
        for node in sink_inputs:
            if node in sources:
                raise ConfigError(f"{origin}: sinks.{sink_name} reads sources.{node} around the remap; "
                                  "the shipper applies the Airflow context to every source")


def _inputs(component: dict[str, Any], where: str, known: set[str], origin: str, default: list[str]) -> list[str]:
    inputs = component.get("inputs")
    if inputs is None:
        return default  # the seed's sink has no `inputs`: one pipeline, so it is unambiguous
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise ConfigError(f"{origin}: {where}.inputs: expected a list of component names")
    for i in inputs:
        if any(c in i for c in "*?["):
            raise ConfigError(f"{origin}: {where}.inputs: wildcard {i!r} cannot be translated; name the inputs")
        if i not in known:
            raise ConfigError(f"{origin}: {where}.inputs: unknown component {i!r}")
    return list(inputs)


def _loki_sink(name: str, sink: dict[str, Any], fields: dict[str, tuple[str, str, str]], origin: str,
               tr: Translation) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """[loki] table, static labels and context labels from the sink."""
    where = f"sinks.{name}"
    kind = sink.get("type")
    if kind != "loki":
        raise ConfigError(f"{origin}: {where}: sink type {kind!r} cannot be translated (only \"loki\")")
    _refuse_unknown(sink, _LOKI_KEYS, where + ".", origin)
    loki: dict[str, Any] = {"url": _loki_url(where, sink, origin, tr)}
    tenant = sink.get("tenant_id")
    if tenant is not None:
        if not isinstance(tenant, str) or "{{" in tenant:
            raise ConfigError(f"{origin}: {where}.tenant_id: only a literal string can be translated")
        loki["tenant_id"] = tenant
    loki.update(_loki_batch(where, sink, origin))
    _loki_encoding(where, sink, origin, tr)
    for key in ("compression", "out_of_order_action", "remove_label_fields", "healthcheck"):
        if key in sink:
            tr.notes.append(f"{where}.{key} is dropped: the shipper sends protobuf (gzip over snappy framing "
                            "unless [loki] compression says otherwise), with strictly increasing timestamps "
                            "per stream and no label fields in the line.")
            break
    labels, context_labels = _sink_labels(where, sink, fields, origin, tr)
    return loki, labels, context_labels


def _loki_url(where: str, sink: dict[str, Any], origin: str, tr: Translation) -> str:
    """[loki] url: Vector's endpoint and push path joined."""
    endpoint = sink.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError(f"{origin}: {where}.endpoint: expected the Loki base URL as a string")
    if "{{" in endpoint:
        raise ConfigError(f"{origin}: {where}.endpoint: templates cannot be translated")
    path = sink.get("path", VECTOR_LOKI_PATH)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{origin}: {where}.path: expected a path starting with /")
    tr.add_comment("loki.url", f"Vector's endpoint {endpoint} plus its push path {path}.")
    return endpoint.rstrip("/") + path


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


# Vector's batch key -> (the shipper's [loki] key, the check, what the error says it expects, conversion)
_BATCH = {
    "timeout_secs": ("batch_wait", _positive_number, "a positive number", float),
    "max_bytes": ("batch_max_bytes", _positive_int, "a positive integer", int),
}


def _loki_batch(where: str, sink: dict[str, Any], origin: str) -> dict[str, Any]:
    """The [loki] keys Vector's `batch` table translates to."""
    batch = sink.get("batch", {})
    if not isinstance(batch, dict):
        raise ConfigError(f"{origin}: {where}.batch: expected a table")
    _refuse_unknown(batch, _BATCH_KEYS, where + ".batch.", origin)
    out: dict[str, Any] = {}
    for key, (ours, valid, expected, convert) in _BATCH.items():
        if key in batch:
            if not valid(batch[key]):
                raise ConfigError(f"{origin}: {where}.batch.{key}: expected {expected}")
            out[ours] = convert(batch[key])
    return out


def _loki_encoding(where: str, sink: dict[str, Any], origin: str, tr: Translation) -> None:
    """Vector's `encoding`: only a codec the shipper's plain lines stand for."""
    encoding = sink.get("encoding")
    if encoding is None:
        return
    if not isinstance(encoding, dict) or set(encoding) != {"codec"} or encoding["codec"] not in _ENCODING_CODECS:
        raise ConfigError(f"{origin}: {where}.encoding: only encoding.codec = "
                          f"{' | '.join(sorted(_ENCODING_CODECS))} can be translated")
    if encoding["codec"] == "json":
        tr.notes.append("encoding.codec = \"json\" is dropped: the shipper sends each line as it was "
                        "written, not wrapped in a JSON event; queries that parsed the event "
                        "(`| json` and its message field) must match the plain line instead.")


def _sink_labels(where: str, sink: dict[str, Any], fields: dict[str, tuple[str, str, str]], origin: str,
                 tr: Translation) -> tuple[dict[str, str], list[str]]:
    """The sink's `labels`: static labels, and the context keys its templates name."""
    labels: dict[str, str] = {}
    context_labels: list[str] = []
    raw_labels = sink.get("labels")
    if raw_labels is None:
        # The seed sets no sink labels; its intent ("labeling with DAG ID, task ID") is the default.
        return labels, list(DEFAULT_CONTEXT_LABELS)
    if not isinstance(raw_labels, dict):
        raise ConfigError(f"{origin}: {where}.labels: expected a table")
    for label, value in raw_labels.items():
        lw = f"{where}.labels.{label}"
        if not _LABEL_NAME.match(label):
            raise ConfigError(f"{origin}: {lw}: label name cannot be translated (wildcards and dynamic "
                              "names are not supported)")
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: {lw}: expected a string")
        m = _TEMPLATE.match(value.strip())
        if m:
            key = _template_key(lw, label, value, m.group("field"), fields, origin)
            if key not in context_labels:
                context_labels.append(key)
        elif "{{" in value or "{%" in value:
            raise ConfigError(f"{origin}: {lw}: template {value!r} cannot be translated (only a whole "
                              "{{ field }} or a literal)")
        elif label == "stream" or label in CONTEXT_KEYS:
            raise ConfigError(f"{origin}: {lw}: {label!r} is set by the shipper itself")
        else:
            labels[label] = value
    per_run = [k for k in context_labels if k not in DEFAULT_CONTEXT_LABELS]
    if per_run:
        tr.notes.append(f"{', '.join(per_run)} as labels make one Loki stream per task run (high "
                        "cardinality); consider leaving them to structured metadata.")
    return labels, context_labels


def _template_key(lw: str, label: str, value: str, fld: str, fields: dict[str, tuple[str, str, str]],
                  origin: str) -> str:
    """The context key a label template `{{ fld }}` stands for (through the remap, or named directly)."""
    if fld in fields:
        key = fields[fld][0]
    elif fld in CONTEXT_KEYS:
        key = fld
    else:
        raise ConfigError(f"{origin}: {lw}: template {value!r} cannot be translated: .{fld} is not "
                          "set by the remap; the shipper's labels are stream, the Airflow context "
                          f"({', '.join(CONTEXT_KEYS)}) and static values")
    if label != key:
        raise ConfigError(f"{origin}: {lw}: the shipper names this label {key!r}; rename it")
    return key


def _refuse_unknown(table: dict[str, Any], allowed: set[str], prefix: str, origin: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{origin}: {', '.join(prefix + k for k in unknown)} cannot be translated "
                          f"(translated keys here: {', '.join(sorted(allowed))})")


def _table(value: Any, name: str, origin: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{origin}: {name}: expected tables [{name}.<name>]")
    return value


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines
