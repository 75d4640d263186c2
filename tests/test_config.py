"""shipper.config: defaults, refusals that name the key, load() precedence, dump() roundtrip."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.config import (
    CONTEXT_KEYS,
    AirflowConfig,
    Config,
    ConfigError,
    LokiConfig,
    SinkConfig,
    SourceConfig,
    Url,
    dump,
    load,
    parse,
    parse_url,
)

SOURCE = '[[sources]]\npath = "/tmp/task.log"\nstream = "stdout"\n'


def refused(text: str) -> str:
    """The ConfigError message for `text` (fails if it is accepted)."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


# --- defaults ------------------------------------------------------------------------

def test_defaults() -> None:
    c = Config()
    assert c.loki == LokiConfig(
        url="http://loki-gateway.monitoring.svc.cluster.local:80/loki/api/v1/push", tenant_id="",
        batch_wait=0.5, batch_max_bytes=1024 * 1024, timeout=10.0, min_backoff=0.5, max_backoff=5.0,
        reject_old_samples_max_age=7 * 24 * 3600.0, creation_grace_period=600.0)
    assert c.sources == (SourceConfig("/proc/1/fd/1", "stdout"), SourceConfig("/proc/1/fd/2", "stderr"))
    assert c.labels == {}
    assert c.sink == SinkConfig("loki")
    assert c.airflow == AirflowConfig("/etc/podinfo/annotations", "unknown", ("dag_id", "task_id"))
    assert (c.shutdown_timeout, c.max_line_bytes, c.buffer_max_bytes, c.file_poll_interval) == (
        10.0, 256 * 1024, 4 * 1024 * 1024, 1.0)


def test_empty_text_gives_the_defaults() -> None:
    assert parse("") == Config()
    assert parse("# only a comment\n") == Config()


def test_a_full_config_parses() -> None:
    c = parse("""
shutdown_timeout = 20
max_line_bytes = 2048
buffer_max_bytes = 8192
file_poll_interval = 0.25

[loki]
url = "https://loki.example.com/loki/api/v1/push"
tenant_id = "team-a"
batch_wait = 1
batch_max_bytes = 4096
timeout = 3.5
min_backoff = 0.1
max_backoff = 30

[sink]
type = "console"

[airflow]
annotations_file = "/podinfo/annotations"
missing = "n/a"
labels = ["dag_id"]

[labels]
cluster = "prod-eu"
task_id = "allowed: not a context label here"

[[sources]]
path = "/logs/task.log"
stream = "task"

[[sources]]
path = "/logs/other.log"
stream = "other"
""")
    assert c == Config(
        loki=LokiConfig("https://loki.example.com/loki/api/v1/push", "team-a", 1.0, 4096, 3.5, 0.1, 30.0),
        sources=(SourceConfig("/logs/task.log", "task"), SourceConfig("/logs/other.log", "other")),
        labels={"cluster": "prod-eu", "task_id": "allowed: not a context label here"},
        sink=SinkConfig("console"),
        airflow=AirflowConfig("/podinfo/annotations", "n/a", ("dag_id",)),
        shutdown_timeout=20.0, max_line_bytes=2048, buffer_max_bytes=8192, file_poll_interval=0.25)
    assert isinstance(c.shutdown_timeout, float)  # integers are taken for seconds


# --- wrong types -------------------------------------------------------------------

WRONG_TYPES = [
    ('shutdown_timeout = "10"', "shutdown_timeout: expected a number, got a string"),
    ("shutdown_timeout = true", "shutdown_timeout: expected a number, got a boolean"),
    ("file_poll_interval = [1]", "file_poll_interval: expected a number, got an array"),
    ("file_poll_interval = 1979-05-27T07:32:00Z", "file_poll_interval: expected a number, got datetime"),
    ("max_line_bytes = 1024.0", "max_line_bytes: expected an integer, got a number"),
    ('max_line_bytes = "1024"', "max_line_bytes: expected an integer, got a string"),
    ("buffer_max_bytes = true", "buffer_max_bytes: expected an integer, got a boolean"),
    ('labels = "team=a"', "labels: expected a table of strings, got a string"),
    ("labels = {team = 1}", "labels.team: expected a string, got an integer"),
    ("labels = {team = {x = 'y'}}", "labels.team: expected a string, got a table"),
    ('sources = "/tmp/x"', "sources: expected an array of tables ([[sources]]), got a string"),
    ('sources = ["/tmp/x"]', "sources[0]: expected a table, got a string"),
    ("loki = 1", "loki: expected a table, got an integer"),
    ('sink = "console"', "sink: expected a table, got a string"),
    ("airflow = []", "airflow: expected a table, got an array"),
    ("[loki]\nurl = 1", "loki.url: expected a string, got an integer"),
    ("[loki]\ntenant_id = false", "loki.tenant_id: expected a string, got a boolean"),
    ('[loki]\ntenant_id = "team-a\\r\\nX-Injected: 1"',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got 'team-a\\r\\nX-Injected: 1'"),
    ('[loki]\ntenant_id = " team-a"',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got ' team-a'"),
    ('[loki]\ntenant_id = "team a"',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got 'team a'"),
    ('[loki]\ntenant_id = "a|b"',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got 'a|b'"),
    ('[loki]\ntenant_id = ".."',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got '..'"),
    ('[loki]\ntenant_id = "ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt"',
     "loki.tenant_id: Loki accepts at most 150 of A-Z a-z 0-9 ! - _ . * ' ( ), and not '.' or '..'; got 'ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt'"),
    ('[loki]\nbatch_wait = "1s"', "loki.batch_wait: expected a number, got a string"),
    ("[loki]\nbatch_max_bytes = 1.5", "loki.batch_max_bytes: expected an integer, got a number"),
    ("[loki]\ntimeout = {}", "loki.timeout: expected a number, got a table"),
    ('[loki]\nmin_backoff = "0.5"', "loki.min_backoff: expected a number, got a string"),
    ("[loki]\nmax_backoff = true", "loki.max_backoff: expected a number, got a boolean"),
    ("[sink]\ntype = 1", "sink.type: expected a string, got an integer"),
    ("[airflow]\nannotations_file = 1", "airflow.annotations_file: expected a string, got an integer"),
    ("[airflow]\nmissing = []", "airflow.missing: expected a string, got an array"),
    ('[airflow]\nlabels = "dag_id"', "airflow.labels: expected a list of strings, got a string"),
    ('[airflow]\nlabels = ["dag_id", 1]', "airflow.labels: expected a list of strings, got an array"),
    ('[[sources]]\npath = 1\nstream = "x"', "sources[0].path: expected a string, got an integer"),
    (SOURCE + '[[sources]]\npath = "/b"\nstream = 2', "sources[1].stream: expected a string, got an integer"),
]


@pytest.mark.parametrize(("text", "message"), WRONG_TYPES, ids=[m.split(":")[0] for _, m in WRONG_TYPES])
def test_wrong_type_is_refused_naming_the_key(text: str, message: str) -> None:
    assert refused(text) == message


# --- unknown and missing keys --------------------------------------------------------

TOP_KEYS = "loki, sources, labels, sink, airflow, metrics, shutdown_timeout, max_line_bytes, buffer_max_bytes, when_full, spool_dir, spool_max_bytes, checkpoint_file, file_poll_interval, stop_file, level_labels, exec_diagnostics"
LOKI_KEYS = ("url, tenant_id, batch_wait, batch_max_bytes, timeout, min_backoff, max_backoff, "
             "reject_old_samples_max_age, creation_grace_period, ca_file, "
             "insecure_skip_verify, cert_file, key_file, bearer_token_file, basic_auth_user, basic_auth_password_file, compression")


@pytest.mark.parametrize(("text", "message"), [
    ("bogus = 1", f"unknown key bogus (known keys in top level: {TOP_KEYS})"),
    ("zzz = 1\nbatch_wait = 1", f"unknown key batch_wait, zzz (known keys in top level: {TOP_KEYS})"),
    ("[loki]\nbatchwait = 1", f"unknown key loki.batchwait (known keys in loki: {LOKI_KEYS})"),
    ("[sink]\nkind = 'loki'", "unknown key sink.kind (known keys in sink: type)"),
    ("[airflow]\nlabel = []", "unknown key airflow.label (known keys in airflow: annotations_file, missing, labels, service_name)"),
    ('[[sources]]\npath = "/a"\nstream = "s"\nname = "x"',
     "unknown key sources[0].name (known keys in sources[0]: path, stream, format, multiline, multiline_start, multiline_max_lines, multiline_max_wait, detect_level, json_metadata, json_keep_record, json_exception_keys)"),
    (SOURCE + '[[sources]]\npath = "/b"\nstream = "s"\nfollow = true',
     "unknown key sources[1].follow (known keys in sources[1]: path, stream, format, multiline, multiline_start, multiline_max_lines, multiline_max_wait, detect_level, json_metadata, json_keep_record, json_exception_keys)"),
])
def test_unknown_keys_are_named(text: str, message: str) -> None:
    assert refused(text) == message


@pytest.mark.parametrize(("text", "message"), [
    ('[[sources]]\npath = "/a"', "sources[0]: missing required key stream"),
    ('[[sources]]\nstream = "s"', "sources[0]: missing required key path"),
    (SOURCE + "[[sources]]", "sources[1]: missing required key path, stream"),
    ("sources = []", "sources: at least one [[sources]] table is needed"),
    ('[[sources]]\npath = ""\nstream = "s"', "sources[0].path: must not be empty"),
    ('[[sources]]\npath = "/a"\nstream = ""', "sources[0].stream: must not be empty"),
    (SOURCE + '[[sources]]\npath = "/tmp/task.log"\nstream = "again"', "sources[1].path: /tmp/task.log is listed twice"),
])
def test_sources_are_checked(text: str, message: str) -> None:
    assert refused(text) == message


# --- URLs ------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "message"), [
    ("ftp://loki/loki/api/v1/push", "loki.url: scheme must be http or https, got 'ftp://loki/loki/api/v1/push'"),
    ("http:///loki/api/v1/push", "loki.url: 'http:///loki/api/v1/push' is not a valid URL (expected http://host[:port]/path)"),
    ("http://", "loki.url: 'http://' is not a valid URL (expected http://host[:port]/path)"),
    ("http://loki:0/loki/api/v1/push", "loki.url: port must be 1-65535 in 'http://loki:0/loki/api/v1/push'"),
    ("http://loki:99999/loki/api/v1/push", "loki.url: port must be 1-65535 in 'http://loki:99999/loki/api/v1/push'"),
    ("http://loki:123456/x", "loki.url: 'http://loki:123456/x' is not a valid URL (expected http://host[:port]/path)"),
    ("http://loki/loki/api/v1/push?tenant=a", "loki.url: must not carry a query or fragment: 'http://loki/loki/api/v1/push?tenant=a'"),
    ("http://loki/push#x", "loki.url: must not carry a query or fragment: 'http://loki/push#x'"),
    # the password is never printed
    ("http://user:pw@loki/push", "loki.url: must not carry credentials (use a token file): 'http://user:***@loki/push'"),
    ("not a url", "loki.url: 'not a url' is not a URL (expected http://host[:port]/path)"),
    ("loki:3100/loki/api/v1/push", "loki.url: 'loki:3100/loki/api/v1/push' is not a URL (expected http://host[:port]/path)"),
    ("", "loki.url: '' is not a URL (expected http://host[:port]/path)"),
    ("http://lo ki/push", "loki.url: 'http://lo ki/push' is not a valid URL (expected http://host[:port]/path)"),
])
def test_bad_urls_are_refused(url: str, message: str) -> None:
    assert refused(f"[loki]\nurl = {json.dumps(url)}") == message


@pytest.mark.parametrize(("url", "parts", "netloc"), [
    ("http://localhost:3100/loki/api/v1/push", Url("http", "localhost", 3100, "/loki/api/v1/push"), "localhost:3100"),
    ("https://loki.example.com/loki/api/v1/push", Url("https", "loki.example.com", 443, "/loki/api/v1/push"), "loki.example.com"),
    ("http://10.0.0.7", Url("http", "10.0.0.7", 80, "/"), "10.0.0.7"),
    ("http://[::1]:3100/push", Url("http", "::1", 3100, "/push"), "[::1]:3100"),
    ("https://h:8443/", Url("https", "h", 8443, "/"), "h:8443"),
    ("http://h:65535/", Url("http", "h", 65535, "/"), "h:65535"),
])
def test_good_urls(url: str, parts: Url, netloc: str) -> None:
    assert parse_url(url) == parts
    assert parse_url(url).netloc == netloc
    assert parse(f"[loki]\nurl = {json.dumps(url)}").loki.url == url


# --- numbers -----------------------------------------------------------------------

DURATIONS = ["loki.batch_wait", "loki.timeout", "loki.min_backoff", "loki.max_backoff", "shutdown_timeout",
             "file_poll_interval", "loki.reject_old_samples_max_age", "loki.creation_grace_period"]


def setting(key: str, value: str) -> str:
    table, _, name = key.rpartition(".")
    return f"[{table}]\n{name} = {value}\n" if table else f"{name} = {value}\n"


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize(("value", "shown"), [("0", "0.0"), ("0.0", "0.0"), ("-0.0", "-0.0"), ("-1", "-1.0"),
                                              ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")])
def test_durations_must_be_positive_and_finite(key: str, value: str, shown: str) -> None:
    assert refused(setting(key, value)) == f"{key}: must be a positive finite number of seconds, got {shown}"


def test_every_number_of_seconds_is_in_durations() -> None:
    # The check comes from the field's type (`Seconds`): a new float key is listed above, or
    # this fails and says which one it is.
    floats = [f"{prefix}{name}" for prefix, cls in (("", Config), ("loki.", LokiConfig))
              for name, typ in get_type_hints(cls).items() if typ is float]
    assert sorted(floats) == sorted(DURATIONS)


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize("value", [1e-3, 1e6])
def test_small_and_large_durations_are_accepted(key: str, value: float) -> None:
    text = setting(key, repr(value))
    if key == "loki.max_backoff":
        text += "min_backoff = 1e-3\n"  # max_backoff >= min_backoff
    if key == "loki.min_backoff":
        text += "max_backoff = 1e6\n"
    section, _, name = key.rpartition(".")
    c = parse(text)
    assert getattr(getattr(c, section) if section else c, name) == value


def test_entry_time_limits_are_lokis_defaults_and_configurable() -> None:
    # Loki's limits_config defaults (pkg/validation/limits.go): reject_old_samples_max_age 1w,
    # creation_grace_period 10m.
    assert (LokiConfig().reject_old_samples_max_age, LokiConfig().creation_grace_period) == (604800.0, 600.0)
    c = parse("[loki]\nreject_old_samples_max_age = 1209600\ncreation_grace_period = 1.5\n")
    assert (c.loki.reject_old_samples_max_age, c.loki.creation_grace_period) == (1209600.0, 1.5)
    assert refused('[loki]\ncreation_grace_period = "10m"') == (
        "loki.creation_grace_period: expected a number, got a string")


def test_max_backoff_must_not_be_below_min_backoff() -> None:
    assert refused("[loki]\nmin_backoff = 2\nmax_backoff = 1") == "loki.max_backoff: must be >= loki.min_backoff"
    assert parse("[loki]\nmin_backoff = 2\nmax_backoff = 2").loki.max_backoff == 2.0


def test_size_relations() -> None:
    assert refused("max_line_bytes = 1023") == "max_line_bytes: must be at least 1024, got 1023"
    assert refused("max_line_bytes = -5") == "max_line_bytes: must be at least 1024, got -5"
    assert refused("max_line_bytes = 1024\n[loki]\nbatch_max_bytes = 2047") == \
        "loki.batch_max_bytes: must be at least max_line_bytes + 1024 (2048), got 2047"
    assert parse("max_line_bytes = 1024\nbuffer_max_bytes = 2048\n[loki]\nbatch_max_bytes = 2048").loki.batch_max_bytes == 2048
    assert refused("[loki]\nbatch_max_bytes = 0") == \
        "loki.batch_max_bytes: must be at least max_line_bytes + 1024 (263168), got 0"
    assert refused("buffer_max_bytes = 1048575") == \
        "buffer_max_bytes: must be at least loki.batch_max_bytes (1048576), got 1048575"
    assert parse("buffer_max_bytes = 1048576").buffer_max_bytes == 1048576


def test_sink_type() -> None:
    assert refused('[sink]\ntype = "kafka"') == 'sink.type: must be "loki" or "console", got "kafka"'
    assert refused('[sink]\ntype = "Loki"') == 'sink.type: must be "loki" or "console", got "Loki"'
    assert parse('[sink]\ntype = "console"').sink.type == "console"


# --- labels ----------------------------------------------------------------------

NAME_RULE = "not a valid Loki label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)"


@pytest.mark.parametrize("name", ["a-b", "1abc", "", "é", "has space", "a.b", "__x", "__", "a\nb"])
def test_invalid_label_names(name: str) -> None:
    assert refused(f"[labels]\n{json.dumps(name)} = \"v\"") == f"labels.{name}: {NAME_RULE}"


@pytest.mark.parametrize("name", ["a", "_a", "A_1", "_", "cluster_name"])
def test_valid_label_names(name: str) -> None:
    assert parse(f'[labels]\n{name} = "v"').labels == {name: "v"}


@pytest.mark.parametrize(("text", "name"), [
    ('[labels]\nstream = "x"', "stream"),
    ('[labels]\ndag_id = "x"', "dag_id"),
    ('[labels]\ntask_id = "x"', "task_id"),
    ('[airflow]\nlabels = ["run_id"]\n[labels]\nrun_id = "x"', "run_id"),
])
def test_labels_set_by_the_shipper_cannot_be_configured(text: str, name: str) -> None:
    assert refused(text) == f"labels.{name}: set by the shipper itself; choose another name"


def test_a_context_key_that_is_not_a_label_may_be_a_static_label() -> None:
    assert parse('[airflow]\nlabels = ["run_id"]\n[labels]\ndag_id = "x"').labels == {"dag_id": "x"}


def test_airflow_labels_must_be_context_keys() -> None:
    assert refused('[airflow]\nlabels = ["stream"]') == \
        f"airflow.labels: unknown context key 'stream' (known: {', '.join(CONTEXT_KEYS)})"
    assert parse("[airflow]\nlabels = []").airflow.labels == ()


def test_at_most_15_labels() -> None:
    # Loki 2 counts service_name against its 15 (Loki 3 does not): counted while the shipper sets it.
    eleven = "".join(f'l{i} = "v"\n' for i in range(11))  # + stream + dag_id + task_id + service_name = 15
    assert len(parse("[labels]\n" + eleven).labels) == 11
    assert refused("[labels]\n" + eleven + 'l11 = "v"\n') == \
        "labels: Loki accepts at most 15 labels per stream, this config makes 16 (service_name included: " \
        "airflow.service_name)"
    twelve = eleven + 'l11 = "v"\n'
    assert len(parse('[airflow]\nservice_name = ""\n[labels]\n' + twelve).labels) == 12
    assert refused('[airflow]\nservice_name = ""\n[labels]\n' + twelve + 'l12 = "v"\n') == \
        "labels: Loki accepts at most 15 labels per stream, this config makes 16"
    all_context = json.dumps(list(CONTEXT_KEYS))
    assert refused(f"[airflow]\nlabels = {all_context}\n[labels]\n" + "".join(f'l{i} = "v"\n' for i in range(8))) == \
        "labels: Loki accepts at most 15 labels per stream, this config makes 16 (service_name included: " \
        "airflow.service_name)"


def test_service_name_defaults_to_airflow_and_is_settable() -> None:
    assert Config().airflow.service_name == "airflow"
    assert parse('[airflow]\nservice_name = "etl-tasks"').airflow.service_name == "etl-tasks"
    assert parse('[airflow]\nservice_name = ""').airflow.service_name == ""


@pytest.mark.parametrize(("text", "message"), [
    ('[labels]\nservice_name = "x"', "labels.service_name: set by the shipper itself; use airflow.service_name"),
    ('[airflow]\nservice_name = " airflow"',
     "airflow.service_name: no control characters or surrounding spaces, got ' airflow'"),
    ('[airflow]\nservice_name = "a\\nb"', "airflow.service_name: no control characters or surrounding spaces, "
     "got 'a\\nb'"),
    ('[airflow]\nservice_name = "' + "x" * 2049 + '"', "airflow.service_name: at most 2048 bytes"),
    ("[airflow]\nservice_name = 1", "airflow.service_name: expected a string, got an integer"),
])
def test_bad_service_names_are_refused(text: str, message: str) -> None:
    assert refused(text).startswith(message)


def test_airflow_missing_must_not_be_empty() -> None:
    assert refused('[airflow]\nmissing = ""') == "airflow.missing: must not be empty (Loki drops empty label values)"


def test_invalid_toml_names_the_origin() -> None:
    with pytest.raises(ConfigError, match=r"^<config> is not valid TOML: "):
        parse("[loki\n")
    with pytest.raises(ConfigError, match=r"^my.toml is not valid TOML: "):
        parse("a = ", origin="my.toml")


# --- load ------------------------------------------------------------------------

def test_config_path_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "shipper.toml"
    path.write_text("shutdown_timeout = 3\n")
    env = {"SHIPPER_CONFIG": "shutdown_timeout = 7\n"}
    config, origin = load(path=str(path), env=env)
    assert (config.shutdown_timeout, origin) == (3.0, str(path))
    config, origin = load(path=None, env=env)
    assert (config.shutdown_timeout, origin) == (7.0, "env SHIPPER_CONFIG")


def test_without_path_or_env_the_defaults_apply() -> None:
    assert load(path=None, env={}) == (Config(), "defaults")
    assert load(path=None, env={"SHIPPER_CONFIG": ""}) == (Config(), "defaults")


def test_a_bad_file_is_refused_even_when_the_env_is_good(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("bogus = 1\n")
    with pytest.raises(ConfigError, match=r"^unknown key bogus "):
        load(path=str(path), env={"SHIPPER_CONFIG": "shutdown_timeout = 7"})
    path.write_text("[loki\n")
    with pytest.raises(ConfigError) as info:
        load(path=str(path), env={})
    assert str(info.value).startswith(f"{path} is not valid TOML: ")


def test_env_errors_name_the_env_variable() -> None:
    with pytest.raises(ConfigError, match=r"^SHIPPER_CONFIG is not valid TOML: "):
        load(path=None, env={"SHIPPER_CONFIG": "= 1"})


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_unreadable_config_file_names_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "shipper.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b'[loki]\ntenant_id = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(path=str(path), env={"SHIPPER_CONFIG": "shutdown_timeout = 7"})
    assert str(info.value).startswith(f"cannot read config file {path}: ")


# --- dump ---------------------------------------------------------------------------

def test_dump_of_the_defaults_parses_back() -> None:
    text = dump(Config())
    assert parse(text) == Config()
    assert 'url = "http://loki-gateway.monitoring.svc.cluster.local:80/loki/api/v1/push"' in text.splitlines()
    assert 'labels = ["dag_id", "task_id"]' in text.splitlines()


ROUNDTRIP_CONFIGS = [
    Config(),
    Config(labels={"cluster": "prod", "team": 'quote " backslash \\ newline \n tab \t é 😀 \x00 \u2028'},
           sources=(SourceConfig("/logs/a b.log", "stdout"), SourceConfig('/logs/"q".log', "stderr ✓")),
           sink=SinkConfig("console"),
           airflow=AirflowConfig("/x/annotations", "—", ("dag_id", "task_id", "run_id")),
           loki=LokiConfig("https://[::1]:3100/loki/api/v1/push", "tenant_*'(x)!", 1e-3, 10**9, 1e9, 0.001, 0.001),
           shutdown_timeout=0.1, max_line_bytes=1024, buffer_max_bytes=10**12, file_poll_interval=123456.789),
    Config(airflow=AirflowConfig(labels=(), service_name=""), labels={f"l{i}": str(i) for i in range(14)}),
    Config(airflow=AirflowConfig(labels=(), service_name="etl tasks ✓"), labels={f"l{i}": str(i) for i in range(13)}),
]


@pytest.mark.parametrize("config", ROUNDTRIP_CONFIGS)
def test_dump_roundtrip(config: Config) -> None:
    assert parse(dump(config)) == config


def _text(max_size: int = 20, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=max_size)


def _path(max_size: int = 20, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any text but NUL, which a path may not hold (refused: tests/test_hostile_config.py)."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=min_size, max_size=max_size)


# Tenant IDs Loki accepts (or none).
tenant_st = st.from_regex(r"([A-Za-z0-9!\-_.*'()]{1,20})?", fullmatch=True).filter(lambda t: t not in (".", ".."))
seconds_st = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    max_line = draw(st.integers(1024, 10**7))
    batch = draw(st.integers(max_line + 1024, max_line + 10**8))
    min_backoff = draw(seconds_st)
    context_labels = tuple(draw(st.lists(st.sampled_from(CONTEXT_KEYS), unique=True, max_size=4)))
    names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(
        lambda n: not n.startswith("__") and n not in ("stream", "service_name") and n not in context_labels)
    labels = draw(st.dictionaries(names, _text(), max_size=13 - len(context_labels)))
    paths = draw(st.lists(_path(min_size=1), min_size=1, max_size=3, unique=True))
    host = draw(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True))
    port = draw(st.none() | st.integers(1, 65535))
    url = f"{draw(st.sampled_from(['http', 'https']))}://{host}{'' if port is None else f':{port}'}/loki/api/v1/push"
    return Config(
        loki=LokiConfig(url, draw(tenant_st), draw(seconds_st), batch, draw(seconds_st), min_backoff,
                        min_backoff * draw(st.floats(1.0, 1000.0)), draw(seconds_st), draw(seconds_st)),
        sources=tuple(SourceConfig(p, draw(_text(min_size=1))) for p in paths),
        labels=labels,
        sink=SinkConfig(draw(st.sampled_from(["loki", "console"]))),
        airflow=AirflowConfig(draw(_path()), draw(_text(min_size=1)), context_labels),
        shutdown_timeout=draw(seconds_st), max_line_bytes=max_line,
        buffer_max_bytes=draw(st.integers(batch, batch * 4)), file_poll_interval=draw(seconds_st))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_property_dump_roundtrip(config: Config) -> None:
    assert parse(dump(config)) == config


# Regression (was a strict xfail): json.dumps(ensure_ascii=False) left U+007F (DEL) raw, which
# TOML forbids in basic strings, so dump() was not valid TOML.
def test_dump_roundtrip_with_del_character() -> None:
    config = parse('[labels]\nteam = "a\\u007fb"\n' + SOURCE)
    assert parse(dump(config)) == config


# --- fuzz: nothing but ConfigError --------------------------------------------------

def accepts_or_config_error(text: str) -> None:
    try:
        parse(text)
    except ConfigError:
        pass


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_raises_only_config_error(text: str) -> None:
    accepts_or_config_error(text)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["[loki]\n", "[[sources]]\n", "[labels]\n", "[sink]\n", "[airflow]\n",
                                  'path = "/a"\n', 'stream = "s"\n', "url = 'http://x/'\n", "x = 1\n",
                                  "batch_wait = nan\n", "labels = [1]\n", "type = 'console'\n", "= \n",
                                  "max_line_bytes = 1024\n", "\"\" = ''\n", "sources = []\n"]), max_size=12))
def test_fuzz_toml_ish_fragments_raise_only_config_error(fragments: list[str]) -> None:
    accepts_or_config_error("".join(fragments))


def toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(to_toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {to_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {to_toml_value(v)}\n" for k, v in document.items())


KNOWN_KEYS = ["loki", "sources", "labels", "sink", "airflow", "shutdown_timeout", "max_line_bytes",
              "buffer_max_bytes", "file_poll_interval", "url", "tenant_id", "batch_wait", "batch_max_bytes",
              "timeout", "min_backoff", "max_backoff", "path", "stream", "type", "annotations_file", "missing"]
keys_st = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)
scalars_st = (st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=10)
              | st.sampled_from(["http://loki/push", "console", "loki", "dag_id", "/tmp/x", ""]))
values_st = st.recursive(scalars_st, lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(keys_st, children, max_size=5), max_leaves=25)


@settings(max_examples=500)
@given(st.dictionaries(keys_st, values_st, max_size=8))
def test_fuzz_arbitrary_nested_tables_raise_only_config_error(document: dict[str, Any]) -> None:
    text = to_toml(document)
    tomllib.loads(text)  # the test's serializer writes valid TOML
    accepts_or_config_error(text)


# Regressions (were strict xfails): each raised something other than ConfigError, so the CLI
# died with a traceback instead of exit 2: OverflowError from float(), tomllib's plain ValueError
# for more than 4300 digits, and tomllib's RecursionError.
def test_huge_integer_for_a_number_is_a_config_error() -> None:
    assert refused("shutdown_timeout = 1" + "0" * 400).startswith("shutdown_timeout: ")


def test_integer_of_5000_digits_is_a_config_error() -> None:
    assert refused("max_line_bytes = 1" + "0" * 5000).startswith("<config> is not valid TOML: ")


def test_deeply_nested_arrays_are_a_config_error() -> None:
    assert refused("x = " + "[" * 3000 + "]" * 3000).startswith("<config> is not valid TOML: ")
    assert refused("x = " + "{a = " * 3000 + "1" + "}" * 3000).startswith("<config> is not valid TOML: ")


@pytest.mark.parametrize("key", ["max_line_bytes", "buffer_max_bytes", "loki.batch_max_bytes"])
def test_integers_beyond_2_63_are_a_config_error(key: str) -> None:
    # A hex integer may have more than 4300 decimal digits: str() of it would raise ValueError.
    table, _, name = key.rpartition(".")
    head = f"[{table}]\n" if table else ""
    for value in [str(2**63), "0x" + "f" * 4000, "-" + str(2**63)]:
        assert refused(f"{head}{name} = {value}") == f"{key}: integer out of range (beyond 2**63)"


def test_a_metrics_port_of_5000_digits_is_a_config_error() -> None:
    assert refused('[metrics]\nlisten = ":' + "9" * 5000 + '"').startswith("metrics.listen: ")


@pytest.mark.parametrize("char", [chr(c) for c in [*range(0x20), 0x7F]])
def test_dump_escapes_every_control_character(char: str) -> None:
    config = Config(labels={"team": f"a{char}b"}, stop_file=char if char != "\0" else "x")  # NUL: no path
    text = dump(config)
    (line,) = [ln for ln in text.split("\n") if ln.startswith("team = ")]
    assert char not in line and line.endswith('b"')
    assert parse(text) == config
