"""Real Airflow output (tests/fixtures/airflow, written by tools/airflow_fixtures.py) through every capture path.

Each fixture is one task instance as a KubernetesExecutor pod ran it (Airflow
2.10.5 `airflow tasks run --local`, Airflow 3.3.2 `execute_workload`) or as
`airflow tasks test` printed it (Airflow 3's console format): the pod's stdout
and stderr bytes, its task log file and meta.json. The real shipper ships them

- from files, as the pod template's capture wrapper leaves them
  (`/var/log/task/stdout.log`, `stderr.log`; dag_id, task_id, run_id,
  try_number, map_index from a downward-API annotations file),
- in `shipper exec`, the command being `cat` of the fixture's bytes,
- from the task-log directory (`{AIRFLOW_HOME}/logs/**/attempt=*.log`; the
  context from each file's path),

with `format = "json"` for Airflow 3 pods and raw lines with `detect_level`
for Airflow 2 and the console format. First: nothing lost, every byte of every
line once, in order, in its stream, with its labels and metadata, whatever the
grouping. Then the entries a reader wants (issue 13 items 2 and 3): each
traceback one entry with its log line and level=error (Airflow 3's
`error_detail` rendered as Python prints the chain), each multi-line log
message one entry, each print its own entry, nothing glued across a finished
record; the expected split is computed by small per-format readers below,
spelled out literally for the entries that matter in
`test_the_readers_split_of_the_fixtures`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import launch, make_config
from tests.loki_receiver import Entry, LokiReceiver
from tests.shipper_process import ShipperProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "airflow"
# The sidecar's processing keys per kind of output (k8s/pod-template-configmap.yaml
# has multiline and detect_level on; the JSON format is what Airflow 3 pods print).
SETTINGS: dict[str, dict[str, object]] = {
    "airflow2": {"detect_level": True},
    "airflow3": {"format": "json"},
    "console": {"detect_level": True},
}


@dataclass(frozen=True)
class Fixture:
    path: Path
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def kind(self) -> str:
        if self.path.parent.name.endswith("-console"):
            return "console"
        return "airflow2" if self.meta["airflow"].startswith("2.") else "airflow3"

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    @property
    def has_task_log(self) -> bool:
        return (self.path / "task.log").exists()

    def annotations(self) -> str:
        """The executor's pod annotations as the downward API writes them (map_index only when >= 0)."""
        keys = {k: self.meta[k] for k in ("dag_id", "task_id", "run_id", "try_number") if self.meta[k] is not None}
        if self.meta["map_index"] >= 0:
            keys["map_index"] = self.meta["map_index"]
        return "".join(f"{k}={json.dumps(str(v))}\n" for k, v in keys.items())

    def labels(self, stream: str) -> set[tuple[str, str]]:
        """The labels its entries must carry (others, e.g. service_name, may be added)."""
        return {("dag_id", self.meta["dag_id"]), ("stream", stream), ("task_id", self.meta["task_id"])}

    def run_metadata(self) -> dict[str, str]:
        """The metadata every entry of this task instance carries (run_id, try_number, map_index)."""
        out = {k: str(self.meta[k]) for k in ("run_id", "try_number") if self.meta[k] is not None}
        if self.meta["map_index"] >= 0:
            out["map_index"] = str(self.meta["map_index"])
        return out


def load_fixtures() -> list[Fixture]:
    found = [Fixture(p.parent, json.loads(p.read_text())) for p in sorted(FIXTURES.glob("*/*/meta.json"))]
    assert found, f"no fixtures under {FIXTURES}: run tools/airflow_fixtures.py"
    return found


ALL = load_fixtures()
POD = [f for f in ALL if f.kind != "console"]


def by_id(fixture_id: str) -> Fixture:
    (f,) = [f for f in ALL if f.id == fixture_id]
    return f


def physical_lines(data: bytes) -> list[str]:
    """The lines a reader sees in the bytes: split on \\n, a last line without newline kept."""
    text = data.decode("utf-8")
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in physical_lines(data)]


def meta_of(entry: Entry) -> dict[str, str]:
    """An entry's metadata without original_timestamp (added once a fixture is older than Loki's window)."""
    return {k: v for k, v in entry.metadata if k != "original_timestamp"}


# -- running the shipper ---------------------------------------------------------------------------------


def sources_toml(sources: list[tuple[Path | str, str]], settings: Mapping[str, object]) -> str:
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return "".join(f'[[sources]]\npath = "{path}"\nstream = "{stream}"\n{keys}' for path, stream in sources)


def config_for(receiver: LokiReceiver, sources: list[tuple[Path | str, str]], settings: Mapping[str, object],
               annotations: Path | None = None) -> str:
    config = make_config(receiver.url, [])
    if annotations is not None:
        config = config.replace('annotations_file = "/nonexistent/annotations"',
                                f"annotations_file = {json.dumps(str(annotations))}")
    return config + sources_toml(sources, settings)


async def ship_files(procs: list[ShipperProcess], receiver: LokiReceiver, tmp_path: Path, fixture: Fixture,
                     settings: Mapping[str, object]) -> ShipperProcess:
    """The pod template's capture: the wrapper's two files on the emptyDir, the annotations file."""
    task_dir = tmp_path / "var-log-task"
    task_dir.mkdir()
    paths = {}
    for stream in ("stdout", "stderr"):
        paths[stream] = task_dir / f"{stream}.log"
        paths[stream].write_bytes(fixture.read(stream))
    podinfo = tmp_path / "annotations"
    podinfo.write_text(fixture.annotations())
    proc = await launch(procs, config_for(receiver, [(paths["stdout"], "stdout"), (paths["stderr"], "stderr")],
                                          settings, podinfo))
    for path in paths.values():
        await proc.wait_for_event("source_opened", path=str(path))
    proc.signal(signal.SIGTERM)  # the task is done: read both files to their end, flush, exit
    assert await proc.wait() == 0, proc.stderr_text
    return proc


async def ship_exec(receiver: LokiReceiver, tmp_path: Path, fixture: Fixture,
                    settings: Mapping[str, object]) -> tuple[bytes, bytes]:
    """`shipper exec -- <cat of the fixture's bytes>`; returns what passed through (stdout, stderr)."""
    podinfo = tmp_path / "annotations"
    podinfo.write_text(fixture.annotations())
    config = config_for(receiver, [("/not/read/stdout", "stdout"), ("/not/read/stderr", "stderr")],
                        settings, podinfo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = config
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shipper", "exec", "--", "sh", "-c", 'cat "$1"; cat "$2" >&2', "sh",
        str(fixture.path / "stdout"), str(fixture.path / "stderr"), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out, err


async def ship_task_logs(procs: list[ShipperProcess], receiver: LokiReceiver, tmp_path: Path,
                         fixtures: list[Fixture], settings: Mapping[str, object]) -> ShipperProcess:
    """An AIRFLOW_HOME holding the task logs of `fixtures`, each at its real path, read by one glob."""
    home = tmp_path / "airflow-home"
    for f in fixtures:
        target = home / "logs" / f.meta["log_relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read("task.log"))
    proc = await launch(procs, config_for(receiver, [("{AIRFLOW_HOME}/logs/**/attempt=*.log", "stdout")], settings),
                        env={"AIRFLOW_HOME": str(home)})
    await proc.wait_for_event("source_found", count=len(fixtures))
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr_text
    return proc


def task_entries(receiver: LokiReceiver, fixture: Fixture, stream: str) -> list[Entry]:
    """The entries of `fixture`'s stream (the mapped task's two map indexes share one: told apart by map_index)."""
    streams = [v for k, v in receiver.streams().items() if fixture.labels(stream) <= set(k)]
    assert len(streams) <= 1, "one stream per task and stream: nothing per run in the labels"
    entries = streams[0] if streams else []
    want = fixture.run_metadata()
    return [e for e in entries if {k: meta_of(e).get(k) for k in want} == want]


# -- what must hold whatever the grouping: nothing lost ---------------------------------------------------


def assert_nothing_lost(receiver: LokiReceiver, fixture: Fixture, stream: str, data: bytes,
                        settings: Mapping[str, object]) -> None:
    """Every byte of every line of `data` in the stream's entries, in order, each once, with its metadata."""
    entries = task_entries(receiver, fixture, stream)
    assert receiver.refused_entries == receiver.dedup_dropped == 0
    assert all(a.ts_ns < b.ts_ns for a, b in zip(entries, entries[1:])), "timestamps not increasing"
    for e in entries:
        assert {k: v for k, v in meta_of(e).items() if k != "level"} == fixture.run_metadata(), e
    if settings.get("format") == "json":
        got = [e.line for e in entries]
        want = records(data)
        if settings.get("json_keep_record"):
            assert got == physical_lines(data)
        else:
            assert len(got) == len(want)
            for line, record in zip(got, want):
                # The event is the entry's line; a rendered traceback may follow it (item 2).
                assert line == record["event"] or line.startswith(record["event"] + "\n"), (line, record)
        assert [meta_of(e).get("level") for e in entries] == [r["level"] for r in want]
    else:
        # Raw lines: joined back with the newline that split them, the entries are the bytes.
        assert "\n".join(e.line for e in entries) == "\n".join(physical_lines(data))
        if not settings.get("multiline"):
            assert len(entries) == len(physical_lines(data))


def fixture_params(fixtures: list[Fixture]) -> list[Any]:
    return [pytest.param(f, id=f.id) for f in fixtures]


@pytest.mark.parametrize("fixture", fixture_params(ALL))
async def test_files_of_the_capture_wrapper_arrive_whole(
        fixture: Fixture, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    settings = SETTINGS[fixture.kind]
    await ship_files(procs, receiver, tmp_path, fixture, settings)
    for stream in ("stdout", "stderr"):
        assert_nothing_lost(receiver, fixture, stream, fixture.read(stream), settings)
    assert sum(len(v) for k, v in receiver.streams().items() if ("job", "shipper") not in k) == sum(
        len(task_entries(receiver, fixture, s)) for s in ("stdout", "stderr"))


@pytest.mark.parametrize("fixture", fixture_params([f for f in ALL if f.kind == "airflow2"]))
async def test_files_with_the_pod_templates_multiline_lose_nothing(
        fixture: Fixture, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    settings = {"multiline": True, "detect_level": True}  # k8s/pod-template-configmap.yaml
    await ship_files(procs, receiver, tmp_path, fixture, settings)
    assert_nothing_lost(receiver, fixture, "stdout", fixture.read("stdout"), settings)


@pytest.mark.parametrize("fixture", fixture_params([f for f in ALL if f.kind == "airflow3"]))
async def test_airflow3_records_kept_whole_arrive_byte_for_byte(
        fixture: Fixture, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    settings = {"format": "json", "json_keep_record": True}
    await ship_files(procs, receiver, tmp_path, fixture, settings)
    assert_nothing_lost(receiver, fixture, "stdout", fixture.read("stdout"), settings)


@pytest.mark.parametrize("fixture", fixture_params(ALL))
async def test_exec_passes_the_bytes_through_and_ships_them(
        fixture: Fixture, tmp_path: Path, receiver: LokiReceiver) -> None:
    settings = SETTINGS[fixture.kind]
    out, err = await ship_exec(receiver, tmp_path, fixture, settings)
    # What kubectl logs shows is the task's own output, byte for byte.
    assert out == fixture.read("stdout")
    assert err.startswith(fixture.read("stderr"))
    for stream in ("stdout", "stderr"):
        assert_nothing_lost(receiver, fixture, stream, fixture.read(stream), settings)


@pytest.mark.parametrize("kind", ["airflow2", "airflow3"])
async def test_the_task_log_directory_arrives_whole_labelled_from_the_paths(
        kind: str, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    fixtures = [f for f in POD if f.kind == kind and f.has_task_log]
    assert len(fixtures) == 6  # log_levels, log_exception, fail, prints, mapped x 2
    await ship_task_logs(procs, receiver, tmp_path, fixtures, SETTINGS[kind])
    for f in fixtures:
        assert task_entries(receiver, f, "stdout"), f.id
        assert_nothing_lost(receiver, f, "stdout", f.read("task.log"), SETTINGS[kind])
    # Every entry is one of the files': nothing unlabelled, nothing extra.
    shipped = sum(len(v) for k, v in receiver.streams().items() if ("job", "shipper") not in k)
    assert shipped == sum(len(task_entries(receiver, f, "stdout")) for f in fixtures)


# -- what the fixtures themselves say (FACTS §2), so a re-recording that changes it is noticed -------------


def test_the_fixtures_show_what_task_pods_print() -> None:
    for f in POD:
        out = f.read("stdout").decode()
        assert f.meta["exit_code"] == 0, f.id  # even the failing task: the log says how it ended
        assert "TaskInstance Finished" not in out and "DagRun Finished" not in out
        if f.kind == "airflow2":
            assert all(re.match(r"\[\d{4}-\d\d-\d\dT[\d:.]+\+0000\] \{", line) or not line[:1] == "["
                       for line in physical_lines(f.read("stdout")))
            assert f.read("stderr") == b""
        else:
            assert all(isinstance(r["level"], str) and r["level"].islower() for r in records(f.read("stdout")))
            assert f.read("stderr") == b""
            assert "Marking task as FAILED" not in out
    fail2, fail3 = by_id("2.10.5/fail"), by_id("3.3.2/fail")
    assert "ERROR - Task failed with exception" in fail2.read("stdout").decode()
    assert "Marking task as FAILED" in fail2.read("stdout").decode()
    failed = [r for r in records(fail3.read("stdout")) if r["event"] == "Task failed with exception"]
    assert [r["level"] for r in failed] == ["error"] and "error_detail" in failed[0]
    assert records(fail3.read("stdout"))[-1]["final_state"] == "failed"
    # Airflow 2 wraps a print in a logging_mixin line; Airflow 3 in a task.stdout / task.stderr record.
    assert "{logging_mixin.py:190} WARNING - a print to stderr" in by_id("2.10.5/prints").read("stdout").decode()
    prints3 = {r["event"]: r for r in records(by_id("3.3.2/prints").read("stdout"))}
    assert (prints3["a print to stderr"]["logger"], prints3["a print to stderr"]["level"]) == ("task.stderr", "error")
    # The long line is whole in every fixture that printed it.
    for f in ALL:
        if f.meta["task_id"] == "prints":
            assert ("long line: " + "0123456789" * 2000) in f.read("stdout").decode(), f.id


# -- how a reader splits them: issue 13 items 2 and 3 -----------------------------------------------------

AIRFLOW2_RECORD = re.compile(r"\[\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4}\] \{[^}]*\} ([A-Z]+) - ")
CONSOLE_RECORD = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[(\w+) *\] ")
# A record's last line: ` [logger]`, then its key=value pairs (`loc=file:N`, the callsite, among them).
CONSOLE_RECORD_END = re.compile(r" \[[\w.]+\](?: \w+=.*)?$")
CHAIN = ("The above exception was the direct cause of the following exception:",
         "During handling of the above exception, another exception occurred:")


def split_airflow2(data: bytes) -> list[tuple[str, str]]:
    """Airflow 2: every record (a print too) starts `[time] {file:N} LEVEL - `; every other line is the
    rest of the record before it (a traceback, a multi-line message). (line, level) per entry."""
    out: list[tuple[list[str], str]] = []
    for line in physical_lines(data):
        m = AIRFLOW2_RECORD.match(line)
        if m or not out:
            out.append(([line], m.group(1).lower() if m else ""))
        else:
            out[-1][0].append(line)
    return [("\n".join(lines), level) for lines, level in out]


def split_console(data: bytes) -> list[tuple[str, str | None]]:
    """structlog's console format: a record runs from its `time [level]` line to the line carrying its
    ` [logger] key=value...` suffix (or to the next record); a traceback after a record is that record's; any other line is a print,
    an entry of its own (no level). (line, level) per entry."""
    out: list[tuple[list[str], str | None]] = []
    lines = physical_lines(data)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = CONSOLE_RECORD.match(line)
        if m:
            group = [line]
            while (not CONSOLE_RECORD_END.search(group[-1]) and i + 1 < len(lines)
                   and not CONSOLE_RECORD.match(lines[i + 1])):
                i += 1
                group.append(lines[i])
            out.append((group, "warning" if m.group(1) == "warn" else m.group(1)))
        elif line == "Traceback (most recent call last):" and out and out[-1][1] is not None:
            tb, i = traceback_block(lines, i)
            out[-1][0].extend(tb)
            continue
        else:
            out.append(([line], None))
        i += 1
    return [("\n".join(group), level) for group, level in out]


def traceback_block(lines: list[str], i: int) -> tuple[list[str], int]:
    """Python's traceback grammar from lines[i] (the header): frames, the exception line, chained causes."""
    block: list[str] = []
    while i < len(lines) and lines[i] == "Traceback (most recent call last):":
        block.append(lines[i])
        i += 1
        while i < len(lines) and lines[i].startswith("  "):
            block.append(lines[i])
            i += 1
        if i < len(lines):
            block.append(lines[i])  # ExcType: message
            i += 1
        if lines[i:i + 3] and lines[i] == "" and lines[i + 1] in CHAIN and lines[i + 2] == "":
            block += lines[i:i + 3]
            i += 3
    return block, i


def python_traceback(error_detail: list[dict[str, Any]]) -> str:
    """structlog's exception dicts (raised first, its cause after) as Python prints the chain: oldest first."""
    blocks = []
    for n, stack in reversed(list(enumerate(error_detail))):
        lines = ["Traceback (most recent call last):"]
        lines += [f'  File "{fr["filename"]}", line {fr["lineno"]}, in {fr["name"]}' for fr in stack["frames"]]
        lines.append(f'{stack["exc_type"]}: {stack["exc_value"]}')
        blocks.append("\n".join(lines))
        if n:
            blocks.append(CHAIN[0] if stack["is_cause"] else CHAIN[1])
    return "\n\n".join(blocks)


def assert_entries(receiver: LokiReceiver, fixture: Fixture, stream: str,
                   want: list[tuple[str, str | None]]) -> None:
    entries = task_entries(receiver, fixture, stream)
    assert [(e.line, meta_of(e).get("level")) for e in entries] == want


def test_the_readers_split_of_the_fixtures() -> None:
    """The expected entries below, spelled out where they matter (tracebacks, prints, multi-line)."""
    fail2 = split_airflow2(by_id("2.10.5/fail").read("stdout"))
    (tb,) = [(line, level) for line, level in fail2 if "Task failed with exception" in line]
    assert tb[1] == "error" and tb[0].endswith("\nRuntimeError: the task failed on purpose")
    assert f"\n\n{CHAIN[0]}\n\n" in tb[0] and "\nValueError: invalid literal for int() with base 10" in tb[0]
    prints2 = [line.split(" - ", 1)[1] for line, _ in split_airflow2(by_id("2.10.5/prints").read("stdout"))
               if "logging_mixin" in line]
    assert prints2 == ["a print to stdout", "a print to stderr", "this print mentions ERROR but is not an error",
                       "a print\nover three lines\nthe third", "unicode print: h\u00e9llo w\u00f6rld \u2713 "
                       "\u65e5\u672c\u8a9e \U0001f680", "long line: " + "0123456789" * 2000,
                       "the last line, without a newline"]
    console = split_console(by_id("3.3.2-console/prints").read("stdout"))
    assert [line for line, level in console if level is None] == [
        "a print to stdout", "this print mentions ERROR but is not an error", "a print", "over three lines",
        "the third", "unicode print: h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f680",
        "long line: " + "0123456789" * 2000,
        # the print without a newline shares its physical line with the next record: one line, one entry
        next(line for line, _ in console if line.startswith("the last line, without a newline2026-"))]
    (fail_c,) = [e for e in split_console(by_id("3.3.2-console/fail").read("stdout")) if "Task failed" in e[0]]
    assert fail_c[1] == "error" and fail_c[0].endswith("\nRuntimeError: the task failed on purpose")
    (multi,) = [e for e in split_console(by_id("3.3.2-console/log_levels").read("stdout")) if "a log message" in e[0]]
    assert multi[0].split("\n")[1] == "over three lines" and multi[0].split("\n")[2].startswith("the third [")
    assert multi[1] == "info"


@pytest.mark.parametrize("fixture", fixture_params([f for f in ALL if f.kind == "airflow2"]))
@pytest.mark.parametrize("capture", ["files", "exec"])
async def test_airflow2_pod_output_splits_as_a_reader_would(
        fixture: Fixture, capture: str, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    """Each record one entry: its traceback or the rest of its multi-line message with it, level kept."""
    settings = {"multiline": True, "detect_level": True}  # k8s/pod-template-configmap.yaml
    if capture == "files":
        await ship_files(procs, receiver, tmp_path, fixture, settings)
    else:
        await ship_exec(receiver, tmp_path, fixture, settings)
    assert_entries(receiver, fixture, "stdout", split_airflow2(fixture.read("stdout")))


async def test_airflow2_task_logs_split_as_a_reader_would(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    fixtures = [f for f in POD if f.kind == "airflow2"]
    await ship_task_logs(procs, receiver, tmp_path, fixtures, {"multiline": True, "detect_level": True})
    for f in fixtures:
        assert_entries(receiver, f, "stdout", split_airflow2(f.read("task.log")))


@pytest.mark.parametrize("fixture", fixture_params([f for f in ALL if f.kind == "airflow3"]))
@pytest.mark.parametrize("capture", ["files", "exec"])
async def test_airflow3_error_detail_reads_as_a_python_traceback(
        fixture: Fixture, capture: str, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    """Each record one entry; a record's `error_detail` follows its event as Python prints the chain
    (oldest exception first, `The above exception was the direct cause...` between), level kept."""
    settings = {"format": "json"}
    if capture == "files":
        await ship_files(procs, receiver, tmp_path, fixture, settings)
    else:
        await ship_exec(receiver, tmp_path, fixture, settings)
    want = [(r["event"] + ("\n" + python_traceback(r["error_detail"]) if "error_detail" in r else ""), r["level"])
            for r in records(fixture.read("stdout"))]
    assert_entries(receiver, fixture, "stdout", want)


@pytest.mark.parametrize("fixture", fixture_params([f for f in ALL if f.kind == "console"]))
@pytest.mark.parametrize("capture", ["files", "exec"])
async def test_console_output_splits_as_a_reader_would(
        fixture: Fixture, capture: str, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    """structlog's console format (`airflow tasks test`): each record one entry (its traceback, the rest of
    its multi-line message with it), each print its own entry, nothing glued across a finished record."""
    settings = {"multiline": True, "detect_level": True}
    if capture == "files":
        await ship_files(procs, receiver, tmp_path, fixture, settings)
    else:
        await ship_exec(receiver, tmp_path, fixture, settings)
    want = split_console(fixture.read("stdout"))
    entries = task_entries(receiver, fixture, "stdout")
    assert [e.line for e in entries] == [line for line, _ in want]
    # A record's level is its own; a traceback's entry is error. (A print's level is not asserted.)
    assert [(e.line, meta_of(e).get("level")) for e, (_, level) in zip(entries, want) if level is not None] == [
        (line, level) for line, level in want if level is not None]
