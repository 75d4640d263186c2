"""Vector -> shipper config translation (shipper/vector.py) and `shipper migrate-vector`.

Table-style: each case is a Vector TOML config and either the expected native
config (a subset of the translated dict) or a fragment of the refusal message.
Every successful translation is also fed back through the shipper's own config
parser, so the TOML printed by `migrate-vector` is always accepted by `run`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from shipper.config import ConfigError, parse
from shipper.vector import translate

# The seed's VECTOR_CONFIG exactly as the container sees it (the YAML block
# scalar of seed/000_a71c70d894dc988a.txt, with its whitespace-only lines).
SEED_VECTOR_CONFIG = (
    '[sources.task]\n'
    'type = "file"\n'
    'include = ["/proc/1/fd/1", "/proc/1/fd/2"]\n'
    '\n'
    '[transforms.add_metadata]\n'
    'type = "remap"\n'
    'inputs = ["task"]\n'
    "source = '''\n"
    '.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"\n'
    '.task_id = get_env_var("AIRFLOW_CTX_TASK_ID") ?? "unknown"\n'
    "'''\n"
    '\n'
    '[sinks.loki]\n'
    'type = "loki"\n'
    'endpoint = "http://loki-gateway.monitoring.svc.cluster.local:80"\n'
    'batch.timeout_secs = 0.5\n'
)

SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_a71c70d894dc988a.txt"

SOURCE = '[sources.task]\ntype = "file"\ninclude = ["/var/log/task/stdout.log", "/var/log/task/stderr.log"]\n'
REMAP = ('[transforms.ctx]\ntype = "remap"\ninputs = ["task"]\nsource = \'\'\'\n'
         '.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"\n'
         '.task_id = get_env_var("AIRFLOW_CTX_TASK_ID") ?? "unknown"\n\'\'\'\n')
SINK = '[sinks.out]\ntype = "loki"\ninputs = ["ctx"]\nendpoint = "http://loki:3100"\n'


def remap(*statements: str, name: str = "ctx", inputs: str = '["task"]') -> str:
    body = "\n".join(statements)
    return f"[transforms.{name}]\ntype = \"remap\"\ninputs = {inputs}\nsource = '''\n{body}\n'''\n"


# --- the seed -------------------------------------------------------------------


def test_seed_constant_is_the_seed_documents_text() -> None:
    if not SEED_DOC.exists():
        pytest.skip(f"{SEED_DOC} not beside the repository")
    import yaml

    doc = SEED_DOC.read_text()
    block = re.search(r"```yaml\n(- name: vector\n.*?)```", doc, re.S)
    assert block is not None
    (container,) = yaml.safe_load(block.group(1))
    (env,) = container["env"]
    assert env["name"] == "VECTOR_CONFIG"
    assert env["value"] == SEED_VECTOR_CONFIG


def test_seed_translates_to_the_shippers_defaults_with_a_context_comment() -> None:
    tr = translate(SEED_VECTOR_CONFIG)
    assert tr.config == {
        "loki": {"url": "http://loki-gateway.monitoring.svc.cluster.local:80/loki/api/v1/push",
                 "batch_wait": 0.5},
        "airflow": {"missing": "unknown", "labels": ["dag_id", "task_id"]},
        "sources": [{"path": "/proc/1/fd/1", "stream": "stdout"},
                    {"path": "/proc/1/fd/2", "stream": "stderr"}],
    }
    text = tr.to_toml()
    assert tomllib.loads(text) == tr.config
    # The output says why get_env_var("AIRFLOW_CTX_*") is not carried over literally.
    comments = " ".join(" ".join(line[2:] for line in text.splitlines() if line.startswith("# ")).split())
    assert 'get_env_var("AIRFLOW_CTX_DAG_ID")' in comments
    assert "never sets AIRFLOW_CTX_*" in comments
    assert "annotations file" in comments
    assert "/proc/1 is the sidecar itself" in comments
    config = parse(text)
    assert config.airflow.labels == ("dag_id", "task_id")
    assert config.airflow.missing == "unknown"
    assert config.loki.batch_wait == 0.5


def test_seed_with_capture_dir_reads_the_wrappers_files() -> None:
    tr = translate(SEED_VECTOR_CONFIG, capture_dir="/var/log/task/")
    airflow_aware = {"multiline": True, "detect_level": True}
    assert tr.config["sources"] == [{"path": "/var/log/task/stdout.log", "stream": "stdout", **airflow_aware},
                                    {"path": "/var/log/task/stderr.log", "stream": "stderr", **airflow_aware}]
    text = tr.to_toml()
    assert "/proc/1" not in text
    assert 'stop_file = "/var/log/task/.done"' in text  # suggested in a comment for pre-1.29 clusters
    assert "stop_file" not in tomllib.loads(text)
    parse(text)


# --- accepted constructs ------------------------------------------------------------

ACCEPTED: list[tuple[str, str, dict[str, Any]]] = [
    ("sink labels as templates and literals",
     SOURCE + REMAP + SINK + '[sinks.out.labels]\ndag_id = "{{ dag_id }}"\ntask_id = "{{.task_id}}"\n'
                            'namespace = "airflow"\n',
     {"airflow": {"missing": "unknown", "labels": ["dag_id", "task_id"]},
      "labels": {"namespace": "airflow"}}),
    ("only dag_id as label",
     SOURCE + REMAP + SINK + '[sinks.out.labels]\ndag_id = "{{ dag_id }}"\n',
     {"airflow": {"missing": "unknown", "labels": ["dag_id"]}}),
    ("tenant, batch size, path and a custom default",
     SOURCE + remap('.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "n/a";') + SINK
     + 'tenant_id = "airflow"\npath = "/custom/push"\nbatch.max_bytes = 2097152\nbatch.timeout_secs = 1\n',
     {"loki": {"url": "http://loki:3100/custom/push", "tenant_id": "airflow", "batch_wait": 1.0,
               "batch_max_bytes": 2097152},
      "airflow": {"missing": "n/a", "labels": ["dag_id", "task_id"]}}),
    ("file sources become [[sources]] named by their file",
     SOURCE + REMAP + SINK,
     {"sources": [{"path": "/var/log/task/stdout.log", "stream": "stdout"},
                  {"path": "/var/log/task/stderr.log", "stream": "stderr"}]}),
    ("no transform at all",
     SOURCE + '[sinks.out]\ntype = "loki"\nendpoint = "https://loki.example.com/"\n',
     {"loki": {"url": "https://loki.example.com/loki/api/v1/push"},
      "airflow": {"labels": ["dag_id", "task_id"]}}),
    ("Airflow 3 logical date and run id map to the context",
     SOURCE + remap('.logical_date = get_env_var("AIRFLOW_CTX_LOGICAL_DATE") ?? "unknown"',
                    '.run_id = get_env_var("AIRFLOW_CTX_DAG_RUN_ID") ?? "unknown"') + SINK,
     {"airflow": {"missing": "unknown", "labels": ["dag_id", "task_id"]}}),
    ("comments, blank lines, data_dir, text encoding, snappy compression",
     'data_dir = "/var/lib/vector"\n' + SOURCE
     + remap("# context", "", '.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"')
     + SINK + 'compression = "snappy"\nencoding.codec = "text"\n',
     {"airflow": {"missing": "unknown", "labels": ["dag_id", "task_id"]}}),
    ("two file sources into one remap",
     '[sources.a]\ntype = "file"\ninclude = ["/logs/a.log"]\nread_from = "beginning"\n'
     '[sources.b]\ntype = "file"\ninclude = ["/logs/b.log"]\n'
     + remap('.task_id = get_env_var("AIRFLOW_CTX_TASK_ID") ?? "unknown"', inputs='["a", "b"]') + SINK,
     {"sources": [{"path": "/logs/a.log", "stream": "a"}, {"path": "/logs/b.log", "stream": "b"}]}),
]


@pytest.mark.parametrize(("vector", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(vector: str, expected: dict[str, Any]) -> None:
    tr = translate(vector)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert {k: tr.config[key].get(k) for k in value} == value, key
        else:
            assert tr.config[key] == value, key
    text = tr.to_toml()
    assert tomllib.loads(text) == tr.config
    parse(text)  # the shipper accepts what migrate-vector prints


def test_json_codec_and_per_run_labels_are_noted() -> None:
    vector = (SOURCE + remap('.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"',
                             '.try_number = get_env_var("AIRFLOW_CTX_TRY_NUMBER") ?? "unknown"')
              + SINK + 'encoding.codec = "json"\n[sinks.out.labels]\ndag_id = "{{ dag_id }}"\n'
              'try_number = "{{ try_number }}"\n')
    tr = translate(vector)
    assert tr.config["airflow"]["labels"] == ["dag_id", "try_number"]
    notes = " ".join(tr.notes)
    assert "json" in notes and "cardinality" in notes
    parse(tr.to_toml())


# --- refused constructs: the message names what cannot be translated -----------------

REFUSED: list[tuple[str, str, str]] = [
    ("not TOML", "sources:\n  task:\n    type: file\n", "not valid TOML"),
    ("other VRL", SOURCE + remap('.level = "info"') + SINK,
     "source line 1: cannot translate VRL '.level = \"info\"'"),
    ("VRL function call", SOURCE + remap(". = parse_json!(.message)") + SINK, "parse_json!"),
    ("get_env_var without default", SOURCE + remap('.dag_id = get_env_var!("AIRFLOW_CTX_DAG_ID")') + SINK,
     "cannot translate VRL"),
    ("second statement on a later line",
     SOURCE + remap('.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"', "del(.file)") + SINK,
     "source line 2: cannot translate VRL 'del(.file)'"),
    ("other environment variable", SOURCE + remap('.env = get_env_var("DEPLOY_ENV") ?? "prod"') + SINK,
     'get_env_var("DEPLOY_ENV") cannot be translated'),
    ("renamed context field", SOURCE + remap('.dag = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"') + SINK,
     "field .dag cannot be translated"),
    ("different defaults",
     SOURCE + remap('.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? "unknown"',
                    '.task_id = get_env_var("AIRFLOW_CTX_TASK_ID") ?? "none"') + SINK,
     "remap defaults differ"),
    ("empty default", SOURCE + remap('.dag_id = get_env_var("AIRFLOW_CTX_DAG_ID") ?? ""') + SINK,
     'remap default ""'),
    ("other source type", '[sources.k]\ntype = "kubernetes_logs"\n' + SINK.replace('["ctx"]', '["k"]'),
     "sources.k: source type 'kubernetes_logs' cannot be translated"),
    ("other transform type", SOURCE + '[transforms.ctx]\ntype = "filter"\ninputs = ["task"]\n'
     'condition = "true"\n' + SINK, "transforms.ctx: transform type 'filter' cannot be translated"),
    ("other sink type", SOURCE + '[sinks.out]\ntype = "console"\ninputs = ["task"]\n',
     "sinks.out: sink type 'console' cannot be translated"),
    ("two sinks", SOURCE + SINK.replace("[sinks.out]", "[sinks.a]").replace('["ctx"]', '["task"]')
     + SINK.replace("[sinks.out]", "[sinks.b]").replace('["ctx"]', '["task"]'), "exactly one sink"),
    ("glob include", '[sources.task]\ntype = "file"\ninclude = ["/var/log/*.log"]\n'
     + SINK.replace('["ctx"]', '["task"]'), "glob '/var/log/*.log' cannot be translated"),
    ("read_from end", SOURCE.replace('include', 'read_from = "end"\ninclude') + REMAP + SINK,
     "read_from = 'end' cannot be translated"),
    ("unknown source key", SOURCE + 'fingerprint.strategy = "device_and_inode"\n' + REMAP + SINK,
     "sources.task.fingerprint cannot be translated"),
    ("unknown sink key", SOURCE + REMAP + SINK + 'auth.strategy = "basic"\n',
     "sinks.out.auth cannot be translated"),
    ("unknown batch key", SOURCE + REMAP + SINK + "batch.max_events = 10\n",
     "sinks.out.batch.max_events cannot be translated"),
    ("unknown top-level key", '[api]\nenabled = true\n' + SOURCE + REMAP + SINK, "api cannot be translated"),
    ("label template of an unknown field", SOURCE + REMAP + SINK + '[sinks.out.labels]\nfile = "{{ file }}"\n',
     "sinks.out.labels.file: template '{{ file }}' cannot be translated"),
    ("label renamed", SOURCE + REMAP + SINK + '[sinks.out.labels]\ndag = "{{ dag_id }}"\n',
     "sinks.out.labels.dag: the shipper names this label 'dag_id'"),
    ("partial template", SOURCE + REMAP + SINK + '[sinks.out.labels]\napp = "airflow-{{ dag_id }}"\n',
     "sinks.out.labels.app: template"),
    ("wildcard label", SOURCE + REMAP + SINK + '[sinks.out.labels]\n"pod_labels_*" = "{{ x }}"\n',
     "label name cannot be translated"),
    ("templated tenant", SOURCE + REMAP + SINK + 'tenant_id = "{{ tenant }}"\n', "tenant_id"),
    ("encoding options", SOURCE + REMAP + SINK + 'encoding.codec = "logfmt"\n', "sinks.out.encoding"),
    ("sink bypasses the remap", SOURCE + REMAP + SINK.replace('["ctx"]', '["ctx", "task"]'),
     "reads sources.task around the remap"),
    ("remap that feeds nothing", SOURCE + REMAP + SINK.replace('["ctx"]', '["task"]'),
     "transforms.ctx does not feed sinks.out"),
    ("unknown input", SOURCE + REMAP + SINK.replace('["ctx"]', '["nope"]'), "unknown component 'nope'"),
    ("wildcard input", SOURCE + REMAP + SINK.replace('["ctx"]', '["c*"]'), "wildcard 'c*'"),
    ("no source", SINK.replace('inputs = ["ctx"]\n', ""), "no [sources.*] table"),
    ("no endpoint", SOURCE + '[sinks.out]\ntype = "loki"\n', "sinks.out.endpoint"),
]


@pytest.mark.parametrize(("vector", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(vector: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        translate(vector)
    assert message in str(info.value)
    assert str(info.value).startswith("VECTOR_CONFIG")


def test_translated_url_is_still_checked_by_the_shipper() -> None:
    vector = SOURCE + '[sinks.out]\ntype = "loki"\nendpoint = "ftp://loki"\n'
    with pytest.raises(ConfigError, match="loki.url: scheme must be http or https"):
        parse(translate(vector).to_toml())


# --- the printed TOML holds any string the Vector config held --------------------------

def vector_string(s: str) -> str:
    """`s` as a TOML basic string of the Vector config (its own writer: control characters, `"`, `\\` as \\uXXXX)."""
    return '"' + "".join(f"\\u{ord(c):04x}" if c < " " or c in '\x7f"\\' else c for c in s) + '"'


HOSTILE_VALUES = {
    "del": "a\x7fb",  # DEL: JSON's escaping leaves it raw, and tomllib refuses it raw
    "every control character": "".join(chr(c) for c in [*range(0x20), 0x7F]),
    "quotes and backslashes": 'quote " backslash \\ both \\" end',
    "non-ascii": "é ✓ 😀 \u2028 \ufeff",
    "toml quoting": "''' \"\"\" # [x] = y",
}


@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_a_label_value_with_any_characters_survives_the_translation(value: str) -> None:
    vector = SOURCE + REMAP + SINK + f"[sinks.out.labels]\nteam = {vector_string(value)}\n"
    tr = translate(vector)
    assert tr.config["labels"] == {"team": value}
    text = tr.to_toml()
    assert tomllib.loads(text) == tr.config
    assert parse(text).labels == {"team": value}


def test_a_control_character_quoted_in_a_comment_is_written_as_text() -> None:
    # The endpoint is quoted in the comment above loki.url: raw there, a DEL makes tomllib
    # refuse the whole output and a newline turns the rest of the comment into TOML.
    endpoint = "http://loki:3100/a\x7fb\nurl = 1"
    sink = f'[sinks.out]\ntype = "loki"\ninputs = ["ctx"]\nendpoint = {vector_string(endpoint)}\n'
    tr = translate(SOURCE + REMAP + sink)
    assert tomllib.loads(tr.to_toml()) == tr.config
    assert tr.config["loki"]["url"] == endpoint + "/loki/api/v1/push"


# --- the CLI ------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SHIPPER_", "AIRFLOW_CTX_")) and k != "VECTOR_CONFIG"}
    return subprocess.run([sys.executable, "-m", "shipper", *args], env={**base, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)


def _cli_has_migrate_vector() -> bool:
    return "migrate-vector" in _cli("--help").stdout


needs_cli = pytest.mark.skipif(not _cli_has_migrate_vector(), reason="shipper/cli.py has no migrate-vector yet")


@needs_cli
def test_migrate_vector_reads_env_and_prints_native_toml() -> None:
    done = _cli("migrate-vector", env={"VECTOR_CONFIG": SEED_VECTOR_CONFIG})
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout) == translate(SEED_VECTOR_CONFIG).config
    assert done.stdout == translate(SEED_VECTOR_CONFIG).to_toml()


@needs_cli
def test_migrate_vector_reads_a_file_and_rewrites_the_capture_dir(tmp_path: Path) -> None:
    path = tmp_path / "vector.toml"
    path.write_text(SEED_VECTOR_CONFIG)
    done = _cli("migrate-vector", "--config", str(path), "--capture-dir", "/var/log/task")
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["sources"][0]["path"] == "/var/log/task/stdout.log"
    # What it printed is a config the shipper accepts.
    check = _cli("check-config", env={"SHIPPER_CONFIG": done.stdout})
    assert check.returncode == 0, check.stderr


@needs_cli
def test_migrate_vector_refuses_with_exit_2_naming_the_construct() -> None:
    done = _cli("migrate-vector", env={"VECTOR_CONFIG": SOURCE + remap('.level = "info"') + SINK})
    assert done.returncode == 2
    assert done.stdout == ""
    (record,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert "cannot translate VRL '.level = \"info\"'" in record["error"]


@needs_cli
def test_migrate_vector_without_input_is_a_usage_error() -> None:
    done = _cli("migrate-vector")
    assert done.returncode == 2
    assert "VECTOR_CONFIG" in done.stderr


@needs_cli
def test_run_and_check_config_fall_back_to_vector_config() -> None:
    vector = SEED_VECTOR_CONFIG.replace("/proc/1/fd/1", "/nonexistent/stdout.log").replace(
        "/proc/1/fd/2", "/nonexistent/stderr.log")
    done = _cli("check-config", env={"VECTOR_CONFIG": vector})
    assert done.returncode == 0, done.stderr
    assert "VECTOR_CONFIG" in done.stdout.splitlines()[0]
    effective = tomllib.loads(done.stdout)
    assert [s["path"] for s in effective["sources"]] == ["/nonexistent/stdout.log", "/nonexistent/stderr.log"]
    # SHIPPER_CONFIG wins over VECTOR_CONFIG.
    native = '[[sources]]\npath = "/nonexistent/x"\nstream = "x"\n'
    done = _cli("check-config", env={"VECTOR_CONFIG": vector, "SHIPPER_CONFIG": native})
    assert [s["path"] for s in tomllib.loads(done.stdout)["sources"]] == ["/nonexistent/x"]


@needs_cli
def test_run_refuses_an_untranslatable_vector_config_with_exit_2() -> None:
    done = _cli("run", env={"VECTOR_CONFIG": SOURCE + remap(". = parse_json!(.message)") + SINK})
    assert done.returncode == 2
    (record,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert record["event"] == "refusing_to_start"
    assert "parse_json!" in record["error"]


@needs_cli
def test_run_logs_that_it_translated_vector_config(tmp_path: Path) -> None:
    log_file = tmp_path / "out.log"
    log_file.write_text("hello\n")
    vector = (f'[sources.task]\ntype = "file"\ninclude = ["{log_file}"]\n'
              + '[sinks.out]\ntype = "loki"\nendpoint = "http://127.0.0.1:9"\n')
    # The sink is unreachable: the run ends at the shutdown deadline. Only the log line matters here,
    # so stop it right away with SIGTERM.
    proc = subprocess.Popen([sys.executable, "-m", "shipper", "run"],
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("SHIPPER_")},
                                 "VECTOR_CONFIG": vector},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert "VECTOR_CONFIG" in json.dumps(first)
    assert "translat" in json.dumps(first)


@pytest.mark.parametrize(("value", "expected"), [
    ("/etc/vector/vector.toml", "/etc/vector/vector.toml"),
    ("  /etc/vector/vector.toml\n", "/etc/vector/vector.toml"),
    (SEED_VECTOR_CONFIG, None),
    ('sources.task.type = "file"', None),
    ("", None),
])
def test_vector_config_may_name_a_file_as_vector_itself_reads_it(value: str, expected: str | None) -> None:
    from shipper.vector import config_file_path

    assert config_file_path(value) == expected


def test_vector_config_listing_several_files_is_refused() -> None:
    from shipper.vector import config_file_path

    with pytest.raises(ConfigError, match="several files"):
        config_file_path("/a.toml,/b.toml")


@needs_cli
def test_migrate_vector_reads_the_file_vector_config_names(tmp_path: Path) -> None:
    path = tmp_path / "vector.toml"
    path.write_text(SEED_VECTOR_CONFIG)
    done = _cli("migrate-vector", env={"VECTOR_CONFIG": str(path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == translate(SEED_VECTOR_CONFIG, origin=str(path)).to_toml()


def test_seed_translation_with_capture_dir_matches_the_pod_template() -> None:
    """`migrate-vector --capture-dir` gives what k8s/pod-template-configmap.yaml ships."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    cm = yaml.safe_load((root / "k8s" / "pod-template-configmap.yaml").read_text())
    pod = yaml.safe_load(cm["data"]["pod-template.yaml"])
    (shipper,) = pod["spec"]["initContainers"]
    (manifest_text,) = [e["value"] for e in shipper["env"] if e["name"] == "SHIPPER_CONFIG"]
    (base,) = pod["spec"]["containers"]
    (capture_dir,) = [e["value"] for e in base["env"] if e["name"] == "SHIPPER_CAPTURE_DIR"]
    manifest = parse(manifest_text)
    translated = parse(translate(SEED_VECTOR_CONFIG, capture_dir=capture_dir).to_toml())
    assert translated.sources == manifest.sources
    assert translated.loki.url == manifest.loki.url
    assert translated.loki.batch_wait == manifest.loki.batch_wait
    assert translated.airflow == manifest.airflow
