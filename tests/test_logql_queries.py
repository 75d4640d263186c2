"""Every LogQL query the project documents, run against a real Loki 3.4.6 over data the real shipper shipped.

The queries are extracted by a parser (below) from `k8s/grafana-dashboard.json`
(panel `expr`s and template-variable queries), `k8s/loki-rules.yaml` (rule
`expr`s and the queries quoted in their annotations), `README.md` and
`docs/*.md` (inline code and code blocks that are a selector or a metric
query). Each has a check in CASES saying what its surrounding text claims it
returns; `test_every_documented_query_has_a_check` fails when a query is added
or changed without one, so none escapes.

The data, shipped by the real shipper with the pod template's processing
(`k8s/pod-template-configmap.yaml`: file sources, multiline, detect_level,
`namespace="airflow"`, dag_id/task_id from the pod annotations; run_id,
try_number, map_index as structured metadata) into a tenant of its own (the
rules and panels select `{service_name="airflow"}` and `{job="shipper"}`, so
only a tenant isolates them):

| run | dag.task | what it prints (FACTS §2) |
|---|---|---|
| A1, A2 | etl.load (two run_ids) | Airflow 2 text lines, success |
| B | etl.transform, try 1 | Airflow 2, `ERROR - Task failed with exception`, a traceback, `Marking task as FAILED` |
| B2 | etl.transform, same run, try 2 | Airflow 2, success |
| D | etl.extract | Airflow 2, one 300 KB line Loki refuses (max_line_size 256KB): dropped, `rejected` |
| C | hello_world.publish | Airflow 3 JSON lines, `"level": "error"` `Task failed with exception` |
| 2.10.5/*, 3.3.2/* | shipper_fixtures.* | the real task pods of `tests/fixtures/airflow` (issue 13 item 1): every level, a logged exception, a failure with a chained cause, prints, a mapped task's two instances |

Grafana's `$dag_id`/`$task_id` are replaced by concrete regexes, `$__interval`
and `$__range` by a window covering the runs; metric queries (rules, panels)
run as instant queries (`/loki/api/v1/query`). Each check compares what Loki
returns with what the stored entries and their metadata say it must be, and
with anchors taken from the fixtures' own text (the real Airflow 2 traceback
as one entry, a print that says ERROR not among the errors, ...).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_config
from tests.real_loki import RealLoki, loki3, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess

REPO = Path(__file__).resolve().parent.parent
TENANT = f"logql-{uuid.uuid4().hex[:8]}"
WINDOW = "2h"  # $__interval and $__range: covers every run of this module

# -- the parser ----------------------------------------------------------------------------------------

_LOGQL_START = re.compile(r"\{\s*[a-zA-Z_]\w*\s*(=~|!~|!=|=)|(sum|count|max|min|avg|topk|rate|count_over_time|"
                          r"sum_over_time|max_over_time|bytes_over_time|label_values)\s*(by\s*\([^)]*\)\s*)?\(")


def _is_logql(text: str) -> bool:
    return bool(_LOGQL_START.match(text.strip()))


def _selector_end(text: str, i: int) -> int:
    """Index after the `}` closing the selector that opens at text[i], quotes and `{{ }}` respected."""
    depth, quoted, j = 0, False, i
    while j < len(text):
        c = text[j]
        if quoted:
            if c == "\\":
                j += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(text)


def queries_in_prose(text: str) -> list[str]:
    """Selectors (with their pipeline) quoted in free text, e.g. a rule's annotation."""
    out, i = [], 0
    while (i := text.find("{", i)) >= 0:
        if text.startswith("{{", i) or not _LOGQL_START.match(text, i):
            i += 2 if text.startswith("{{", i) else 1
            continue
        end = _selector_end(text, i)
        # Stages: `| json`, `|= "text"`, `| name=~"value"` (quoted strings may hold a `|`).
        pipeline = re.match(r'(\s*\|[=~!]?\s*(?:"(?:[^"\\]|\\.)*"|[^|()"])+)*', text[end:])
        end += pipeline.end() if pipeline else 0
        out.append(text[i:end].strip())
        i = end
    return out


def extract_queries() -> dict[tuple[str, str], None]:
    """(file, query text) for every LogQL query in the documented places, in document order."""
    found: dict[tuple[str, str], None] = {}
    dashboard = json.loads((REPO / "k8s/grafana-dashboard.json").read_text())
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            found["k8s/grafana-dashboard.json", target["expr"]] = None
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and _is_logql(q):
            found["k8s/grafana-dashboard.json", q] = None
    rules_cm = yaml.safe_load((REPO / "k8s/loki-rules.yaml").read_text())
    for doc in rules_cm["data"].values():
        for group in yaml.safe_load(doc)["groups"]:
            for rule in group["rules"]:
                found["k8s/loki-rules.yaml", " ".join(rule["expr"].split())] = None
                for text in rule.get("annotations", {}).values():
                    for q in queries_in_prose(text):
                        found["k8s/loki-rules.yaml", q] = None
    for md in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        name = str(md.relative_to(REPO))
        text = md.read_text()
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        for block in blocks:
            for line in block.splitlines():
                if _is_logql(line):
                    found[name, line.strip()] = None
        prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if _is_logql(span):
                found[name, span.strip()] = None
    return found


# -- the data --------------------------------------------------------------------------------------

A2_HEAD = "[2026-12-01T{t}+0000] {{{src}}} {lvl} - {msg}"


def af2(t: str, src: str, lvl: str, msg: str) -> str:
    return A2_HEAD.format(t=t, src=src, lvl=lvl, msg=msg)


def airflow2_success(dag: str, task: str, run_id: str, attempt: int = 1) -> list[str]:
    return [
        af2("06:00:05.101", "local_task_job_runner.py:123", "INFO", "::group::Pre task execution logs"),
        af2("06:00:05.180", "taskinstance.py:2614", "INFO", f"Dependencies all met for dep_context=non-requeueable "
            f"deps ti=<TaskInstance: {dag}.{task} {run_id} [queued]>"),
        af2("06:00:05.400", "taskinstance.py:2867", "INFO", f"Starting attempt {attempt} of 3"),
        af2("06:00:05.900", "logging_mixin.py:190", "INFO", "loaded 1200 rows"),
        af2("06:00:06.010", "taskinstance.py:352", "INFO", f"Marking task as SUCCESS. dag_id={dag}, task_id={task}, "
            f"run_id={run_id}, execution_date=20261201T060000, start_date=20261201T060005, "
            "end_date=20261201T060006"),
        af2("06:00:06.100", "local_task_job_runner.py:266", "INFO", "Task exited with return code 0"),
    ]


TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/home/airflow/.local/lib/python3.12/site-packages/airflow/models/taskinstance.py", line 768, '
    "in _execute_task",
    "    result = _execute_callable(context=context, **execute_callable_kwargs)",
    '  File "/opt/airflow/dags/etl.py", line 41, in transform',
    '    raise ValueError("column total missing")',
    "ValueError: column total missing",
]


def airflow2_failure(dag: str, task: str, run_id: str) -> list[str]:
    return [
        af2("06:05:01.000", "taskinstance.py:2867", "INFO", "Starting attempt 1 of 3"),
        af2("06:05:02.000", "taskinstance.py:3311", "ERROR", "Task failed with exception"),
        *TRACEBACK,
        af2("06:05:02.010", "taskinstance.py:1226", "INFO", f"Marking task as FAILED. dag_id={dag}, "
            f"task_id={task}, run_id={run_id}, execution_date=20261201T060000, start_date=20261201T060501, "
            "end_date=20261201T060502"),
        af2("06:05:02.100", "local_task_job_runner.py:266", "INFO", "Task exited with return code 1"),
    ]


def airflow2_with_a_huge_line() -> list[str]:
    return [
        af2("06:07:00.000", "taskinstance.py:2867", "INFO", "Starting attempt 1 of 3"),
        af2("06:07:01.000", "logging_mixin.py:190", "INFO", "payload " + "x" * 300_000),
        af2("06:07:02.000", "local_task_job_runner.py:266", "INFO", "Task exited with return code 0"),
    ]


def airflow3_failure() -> list[str]:
    def rec(t: str, level: str, event: str, logger: str, **extra: object) -> str:
        return json.dumps({"timestamp": f"2026-12-01T06:10:{t}Z", "level": level, "event": event,
                           "logger": logger, **extra})
    return [
        rec("00.100000", "info", "Executing workload", "airflow.sdk.execution_time.supervisor"),
        rec("00.400000", "info", "publishing report", "airflow.task", filename="hello.py", lineno=12),
        rec("00.500000", "error", "Task failed with exception", "task", error_detail=[{
            "exc_type": "ValueError", "exc_value": "boom", "is_cause": False,
            "frames": [{"filename": "/opt/airflow/dags/hello.py", "lineno": 14, "name": "publish"}]}]),
        rec("00.600000", "info", "::group::Post Execute", "task"),
    ]


@dataclass
class Run:
    """One task try as a pod runs it: what it prints, and (after shipping) what Loki holds of it."""

    dag: str
    task: str
    run_id: str
    stdout: bytes
    try_number: int = 1
    map_index: int = -1
    failed: bool = False  # the try failed: known from how the run was made, not read from its log
    stderr: bytes = b""
    summary: dict[str, object] = field(default_factory=dict)
    rows: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)  # (ts, line, metadata) in Loki

    @property
    def entries(self) -> list[str]:
        return [line for _, line, _ in self.rows]


def lines(*text: str) -> bytes:
    return ("\n".join(text) + "\n").encode()


ETL_RUN = "scheduled__2026-12-01T06:00:00+00:00"
RUNS = {
    "A1": Run("etl", "load", ETL_RUN, lines(*airflow2_success("etl", "load", ETL_RUN))),
    "A2": Run("etl", "load", "manual__2026-12-01T07:00:00+00:00",
              lines(*airflow2_success("etl", "load", "manual__2026-12-01T07:00:00+00:00"))),
    "B": Run("etl", "transform", ETL_RUN, lines(*airflow2_failure("etl", "transform", ETL_RUN)), failed=True),
    # B's retry, which succeeds: the same run, try 2.
    "B2": Run("etl", "transform", ETL_RUN, lines(*airflow2_success("etl", "transform", ETL_RUN, attempt=2)),
              try_number=2),
    "D": Run("etl", "extract", ETL_RUN, lines(*airflow2_with_a_huge_line())),
    "C": Run("hello_world", "publish", ETL_RUN, lines(*airflow3_failure()), failed=True),
}
AF2_STDOUT = {n: RUNS[n].stdout.decode().splitlines() for n in ("A1", "B", "C")}
B_TRACEBACK_ENTRY = "\n".join(AF2_STDOUT["B"][1:2 + len(TRACEBACK)])
C_ERROR_ENTRY = AF2_STDOUT["C"][2]

# Real Airflow 2.10.5 and 3.3.2 task pods (tests/fixtures/airflow, issue 13 item 1): DAG
# shipper_fixtures, whose task `fail` raises and every other task succeeds. The `-console`
# fixtures (`airflow tasks test`, a local run) are not what a pod prints and are left out.
FIXTURES = REPO / "tests" / "fixtures" / "airflow"
FIXTURE_VERSIONS = ("2.10.5", "3.3.2")
for _version in FIXTURE_VERSIONS:
    for _meta_file in sorted((FIXTURES / _version).glob("*/meta.json")):
        _meta = json.loads(_meta_file.read_text())
        RUNS[f"{_version}/{_meta_file.parent.name}"] = Run(
            _meta["dag_id"], _meta["task_id"], _meta["run_id"], (_meta_file.parent / "stdout").read_bytes(),
            try_number=_meta["try_number"], map_index=_meta["map_index"], failed=_meta["task_id"] == "fail",
            stderr=(_meta_file.parent / "stderr").read_bytes())
FIXTURE_RUNS = [n for n in RUNS if "/" in n]


def fixture_lines(name: str) -> list[str]:
    return RUNS[name].stdout.decode().splitlines()


def pod_config(loki: RealLoki, folder: Path, run: Run) -> str:
    """The pod template's SHIPPER_CONFIG, with this Loki, this tenant and this pod's files."""
    annotations = folder / "annotations"
    text = f'dag_id="{run.dag}"\ntask_id="{run.task}"\nrun_id="{run.run_id}"\ntry_number="{run.try_number}"\n'
    if run.map_index >= 0:  # the executor writes it only for a mapped task (FACTS §2)
        text += f'map_index="{run.map_index}"\n'
    annotations.write_text(text)
    top: dict[str, object] = {}
    loki_settings: dict[str, object] = {"tenant_id": TENANT}
    if run is RUNS["D"]:  # lets Loki's max_line_size (256KB) be the one that refuses the line
        top["max_line_bytes"] = 400_000
        loki_settings["batch_max_bytes"] = 1_048_576
    config = make_config(loki.push_url, [], loki=loki_settings, labels={"namespace": "airflow"}, **top)
    config = config.replace('annotations_file = "/nonexistent/annotations"',
                            f'annotations_file = "{annotations}"\nlabels = ["dag_id", "task_id"]')
    for stream in ("stdout", "stderr"):
        config += (f'[[sources]]\npath = "{folder / (stream + ".log")}"\nstream = "{stream}"\n'
                   "multiline = true\ndetect_level = true\n")
    return config


async def ship(loki: RealLoki, folder: Path, run: Run) -> None:
    folder.mkdir(parents=True)
    (folder / "stdout.log").write_bytes(run.stdout)
    (folder / "stderr.log").write_bytes(run.stderr)
    proc = await ShipperProcess.start(pod_config(loki, folder, run))
    try:
        for stream in ("stdout", "stderr"):
            await proc.wait_for_event("source_opened", path=str(folder / f"{stream}.log"))
        # File sources are opened before the SIGTERM handler is installed; the metrics endpoint
        # answers only once the event loop runs again, after it is (no await in between).
        port = (await proc.wait_for_event("metrics_listening"))["port"]
        await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
        proc.signal(signal.SIGTERM)  # the task is done: read the files to their end, flush, exit
        assert await proc.wait() == 0, proc.stderr_text
    finally:
        await proc.kill()
    run.summary = {k: v for k, v in proc.summary().items() if k not in ("ts", "level", "event", "msg")}


def belongs(run: Run, meta: dict[str, str]) -> bool:
    """An entry's structured metadata names this try (run, try, map index)."""
    return (meta.get("run_id"), meta.get("try_number"), meta.get("map_index")) == (
        run.run_id, str(run.try_number), str(run.map_index) if run.map_index >= 0 else None)


@pytest.fixture(scope="module")
def shipped(loki3: RealLoki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("logql")

    async def all_runs() -> None:
        for name, run in RUNS.items():
            await ship(loki3, base / name, run)

    asyncio.run(all_runs())
    for run in RUNS.values():
        sel = f'{{namespace="airflow", dag_id="{run.dag}", task_id="{run.task}", stream=~"stdout|stderr"}}'
        run.rows = [(ts, line, meta) for _, ts, line, meta in loki3.query(sel, TENANT) if belongs(run, meta)]
        assert run.summary["lines_sent"] == len(run.rows), (run, run.summary)
    assert RUNS["D"].summary["dropped"]["rejected"] == 1  # type: ignore[index]
    assert RUNS["B"].summary["lines_merged"] == len(TRACEBACK)
    assert len(FIXTURE_RUNS) == 12, FIXTURE_RUNS
    return RUNS


# -- the checks ------------------------------------------------------------------------------------

Check = Callable[[RealLoki, dict[str, Run], str], None]
Pred = Callable[[Run, str, dict[str, str]], bool]


@dataclass
class Case:
    subs: dict[str, str]
    check: Check
    xfail: str = ""


def substitute(query: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        query = query.replace(k, v)
    assert "$" not in query.replace("$labels", "") and "<" not in query and "..." not in query, query
    return query


def series(loki: RealLoki, q: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in loki.instant(q, TENANT)}


def summaries_of(runs: dict[str, Run], *names: str) -> list[dict[str, object]]:
    return [runs[n].summary for n in names]


def lines_where(runs: dict[str, Run], pred: Pred) -> list[str]:
    """The stored task entries `pred` selects, oldest first (what a log query returns)."""
    rows = sorted((ts, line) for r in runs.values() for ts, line, meta in r.rows if pred(r, line, meta))
    return [line for _, line in rows]


def is_error(r: Run, line: str, meta: dict[str, str]) -> bool:
    return meta.get("level") in ("error", "critical")


def is_failure(r: Run, line: str, meta: dict[str, str]) -> bool:
    """The entry that says a try failed, once per failed try in both versions (FACTS §2): Airflow 2
    prints `ERROR - Task failed with exception` and then `Marking task as FAILED` (counted once:
    only the first); Airflow 3 its JSON error record, never `Marking task as FAILED`."""
    return meta.get("level") == "error" and "Task failed with exception" in line


def fixture_failure_entries(runs: dict[str, Run]) -> list[str]:
    """The real fixtures' failure entries, as a reader splits them: Airflow 2's ERROR line with its
    whole (chained) traceback, up to `Marking task as FAILED`; Airflow 3's one JSON record."""
    af2 = fixture_lines("2.10.5/fail")
    first = next(i for i, line in enumerate(af2) if "ERROR - Task failed with exception" in line)
    end = next(i for i, line in enumerate(af2) if "Marking task as FAILED" in line)
    af3 = [line for line in fixture_lines("3.3.2/fail") if '"event":"Task failed with exception"' in line]
    assert len(af3) == 1 and '"error_detail"' in af3[0]
    return ["\n".join(af2[first:end]), af3[0]]


def check_recent_executions(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    rows = loki.query(q, TENANT)
    etl = [n for n, r in runs.items() if r.dag == "etl"]
    assert etl == ["A1", "A2", "B", "B2", "D"]
    assert [json.loads(line) for _, _, line, _ in rows] == summaries_of(runs, *etl)
    # `| json` makes the summary's fields columns of the panel.
    assert [r[0]["lines_sent"] for r in rows] == [str(runs[n].summary["lines_sent"]) for n in etl]


def check_errors(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    got = [line for _, _, line, _ in loki.query(q, TENANT)]
    assert got == lines_where(runs, is_error)
    # What that is, in the data: the tracebacks as one entry each with their log line, Airflow 3's
    # JSON error records, the real fixtures' error and critical lines; no print (a print that
    # says ERROR is an INFO line in Airflow 2, a task.stdout info record in Airflow 3).
    for entry in (B_TRACEBACK_ENTRY, C_ERROR_ENTRY, *fixture_failure_entries(runs)):
        assert got.count(entry) == 1, entry[:200]
    af2_levels = fixture_lines("2.10.5/log_levels")
    for text in ("ERROR - error message, the task goes on", "CRITICAL - critical message"):
        (line,) = [line for line in af2_levels if text in line]
        assert line in got
    af3_levels = [json.loads(line) for line in fixture_lines("3.3.2/log_levels")]
    assert sum(1 for r in af3_levels if r["level"] in ("error", "critical")) == sum(
        1 for line in got if line.startswith("{") and json.loads(line).get("event") in (
            "error message, the task goes on", "critical message"))
    assert not [line for line in got if "this print mentions ERROR" in line]


def check_dag_errors(dag: str, *want: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        got = [line for _, _, line, _ in loki.query(q, TENANT)]
        assert got == lines_where(runs, lambda r, line, meta: r.dag == dag and is_error(r, line, meta))
        assert got == list(want)
    return check


def check_task_errors(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    # The alert's annotation for shipper_fixtures.fail: its errors in both Airflow versions.
    got = [line for _, _, line, _ in loki.query(q, TENANT)]
    want = lines_where(runs, lambda r, line, meta: (r.dag, r.task) == ("shipper_fixtures", "fail")
                       and is_error(r, line, meta))
    assert got == want
    assert set(fixture_failure_entries(runs)) <= set(got)


def check_level(level: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        got = [line for _, _, line, _ in loki.query(q, TENANT)]
        assert got == lines_where(runs, lambda r, line, meta: meta.get("level") == level)
        (af2,) = [line for line in fixture_lines("2.10.5/log_levels") if "WARNING - warning message" in line]
        assert af2 in got and sum('"event":"warning message"' in line for line in got) == 1  # Airflow 3
    return check


def check_runs_per_dag(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    want: dict[tuple[tuple[str, str], ...], float] = {}
    for r in runs.values():
        want[(("dag_id", r.dag),)] = want.get((("dag_id", r.dag),), 0.0) + 1
    assert want == {(("dag_id", "etl"),): 5.0, (("dag_id", "hello_world"),): 1.0,
                    (("dag_id", "shipper_fixtures"),): 12.0}
    assert series(loki, q) == want


def check_durations(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    want: dict[tuple[tuple[str, str], ...], float] = {}
    for run in runs.values():
        key = (("dag_id", run.dag), ("task_id", run.task))
        want[key] = max(want.get(key, 0.0), float(run.summary["seconds"]))  # type: ignore[arg-type]
    assert series(loki, q) == want


def check_runs_with_drops(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(): 1.0}  # run D only


def check_lines_delivered(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(): float(sum(len(r.rows) for r in runs.values()))}


def check_failed_tries(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert [n for n, r in runs.items() if r.failed] == ["B", "C", "2.10.5/fail", "3.3.2/fail"]
    assert series(loki, q) == {(): 4.0}
    assert len(lines_where(runs, is_failure)) == 4


def check_failed_tries_by_task(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    want: dict[tuple[tuple[str, str], ...], float] = {}
    for r in runs.values():
        if r.failed:
            key = (("dag_id", r.dag), ("task_id", r.task))
            want[key] = want.get(key, 0.0) + 1
    assert want == {(("dag_id", "etl"), ("task_id", "transform")): 1.0,
                    (("dag_id", "hello_world"), ("task_id", "publish")): 1.0,
                    (("dag_id", "shipper_fixtures"), ("task_id", "fail")): 2.0}
    assert series(loki, q) == want


def check_errors_per_dag(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    want: dict[tuple[tuple[str, str], ...], float] = {}
    for r in runs.values():
        n = sum(1 for _, line, meta in r.rows if is_error(r, line, meta))
        if n:
            want[(("dag_id", r.dag),)] = want.get((("dag_id", r.dag),), 0.0) + n
    assert set(want) == {(("dag_id", "etl"),), (("dag_id", "hello_world"),), (("dag_id", "shipper_fixtures"),)}
    assert series(loki, q) == want


def check_how_tries_ended(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    got = [line for _, _, line, _ in loki.query(q, TENANT)]
    per_run = {n: [line for _, line, meta in r.rows if meta.get("level") == "info" and (
        "Marking task as" in line or "Workload finished" in line)] for n, r in runs.items()}
    assert got == lines_where(runs, lambda r, line, meta: meta.get("level") == "info" and (
        "Marking task as" in line or "Workload finished" in line))
    # One entry per try that ran to its end: Airflow 2's `Marking task as <STATE>`, Airflow 3's
    # `Workload finished` record (with its final_state). D and C were cut short by their makers.
    assert {n for n, found in per_run.items() if found} == set(runs) - {"C", "D"}
    assert all(len(found) <= 1 for found in per_run.values())
    assert '"final_state":"failed"' in per_run["3.3.2/fail"][0]
    assert "Marking task as FAILED" in per_run["2.10.5/fail"][0] and "Marking task as FAILED" in per_run["B"][0]


def check_label_values(label: str, want: list[str]) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", q)
        assert m and m[2] == label, q
        data = loki._get_json(f"/loki/api/v1/label/{label}/values", {"query": m[1]}, TENANT)
        assert sorted(data) == want
    return check


def check_dropped_alert(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(("dag_id", "etl"), ("task_id", "extract")): 1.0}


def check_shipper_failed_alert(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {}  # every shipper here exited 0


def check_summaries(*names: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        assert [json.loads(r[2]) for r in loki.query(q, TENANT)] == summaries_of(runs, *names)
    return check


def check_all_summaries(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    rows = loki.query(q, TENANT)
    assert [json.loads(r[2]) for r in rows] == summaries_of(runs, *runs)
    assert {r[0]["service_name"] for r in rows} == {"shipper"}


def check_audit(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    # Claimed: the runs that did not deliver everything they read, or ended badly: run D only
    # (one line Loki refused). Not run B, whose traceback made 6 lines one entry.
    assert [json.loads(r[2]) for r in loki.query(q, TENANT)] == summaries_of(runs, "D")


def check_task_lines(*names: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        rows = loki.query(q, TENANT)
        assert [r[2] for r in rows] == [e for n in names for e in runs[n].entries]
        assert {r[0]["service_name"] for r in rows} == {"airflow"}
    return check


def check_dag_lines(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    # The DAG's task lines, then its run's exit summary: {job="shipper"} carries the static
    # labels too (namespace="airflow"), so a selector without `stream` includes it.
    rows = loki.query(q, TENANT)
    assert [r[2] for r in rows if r[0].get("job") != "shipper"] == runs["C"].entries
    assert [json.loads(r[2]) for r in rows if r[0].get("job") == "shipper"] == summaries_of(runs, "C")
    assert rows[-1][0].get("job") == "shipper"


def check_run_lines(with_summaries: bool) -> Check:
    """Every entry of the run (all its tasks and tries); the exit summaries carry the same run_id."""
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        rows = loki.query(q, TENANT)
        names = ("A1", "B", "B2", "D")
        assert [n for n, r in runs.items() if r.dag == "etl" and r.run_id == ETL_RUN] == list(names)
        assert {r[3]["run_id"] for r in rows} == {ETL_RUN}
        assert [r[2] for r in rows if r[0].get("job") != "shipper"] == [e for n in names for e in runs[n].entries]
        got_summaries = [json.loads(r[2]) for r in rows if r[0].get("job") == "shipper"]
        assert got_summaries == (summaries_of(runs, *names) if with_summaries else [])
    return check


GRAFANA = {"$dag_id": "etl", "$task_id": ".+", "$__interval": WINDOW, "$__range": WINDOW}
ALL_DAGS = {**GRAFANA, "$dag_id": ".+"}
ETL = '"etl"'
DROPPED_ANY = ("dropped_rejected > 0 or dropped_shutdown_deadline > 0 or dropped_forced_exit > 0 or "
               "dropped_buffer_full > 0 or dropped_spool_error > 0 or dropped_internal_error > 0")
FAILURE = '| level="error" |= "Task failed with exception"'
LOGQL_MD = "docs/logql.md"

CASES: dict[tuple[str, str], Case] = {
    # -- the dashboard
    ("k8s/grafana-dashboard.json", '{job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} | json'):
        Case(GRAFANA, check_recent_executions),
    ("k8s/grafana-dashboard.json", '{service_name="airflow", dag_id=~"$dag_id", task_id=~"$task_id"} '
     '| level=~"error|critical"'):
        Case(ALL_DAGS, check_errors),
    ("k8s/grafana-dashboard.json", 'sum by (dag_id) (count_over_time({job="shipper", dag_id=~"$dag_id", '
     'task_id=~"$task_id"} [$__interval]))'):
        Case(ALL_DAGS, check_runs_per_dag),
    ("k8s/grafana-dashboard.json", 'max by (dag_id, task_id) (max_over_time({job="shipper", dag_id=~"$dag_id", '
     'task_id=~"$task_id"} | json | __error__="" | unwrap seconds [$__interval]))'):
        Case(ALL_DAGS, check_durations),
    ("k8s/grafana-dashboard.json", 'sum(count_over_time({job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} '
     f'| json | {DROPPED_ANY} [$__range]))'):
        Case(ALL_DAGS, check_runs_with_drops),
    ("k8s/grafana-dashboard.json", 'sum(sum_over_time({job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} '
     '| json | __error__="" | unwrap lines_sent [$__range]))'):
        Case(ALL_DAGS, check_lines_delivered),
    ("k8s/grafana-dashboard.json", 'sum(count_over_time({service_name="airflow", dag_id=~"$dag_id", '
     f'task_id=~"$task_id"}} {FAILURE} [$__range]))'):
        Case(ALL_DAGS, check_failed_tries),
    ("k8s/grafana-dashboard.json", 'label_values({job="shipper"}, dag_id)'):
        Case({}, check_label_values("dag_id", ["etl", "hello_world", "shipper_fixtures"])),
    ("k8s/grafana-dashboard.json", 'label_values({job="shipper", dag_id=~"$dag_id"}, task_id)'):
        Case(GRAFANA, check_label_values("task_id", ["extract", "load", "transform"])),
    # -- the alert rules
    ("k8s/loki-rules.yaml", f'sum by (dag_id, task_id) ( count_over_time({{service_name="airflow"}} {FAILURE} '
     '[5m]) ) > 0'):
        Case({}, check_failed_tries_by_task),
    ("k8s/loki-rules.yaml", '{service_name="airflow", dag_id="{{ $labels.dag_id }}", '
     'task_id="{{ $labels.task_id }}"} | level=~"error|critical"'):
        Case({"{{ $labels.dag_id }}": "shipper_fixtures", "{{ $labels.task_id }}": "fail"}, check_task_errors),
    ("k8s/loki-rules.yaml", f'sum by (dag_id, task_id) ( count_over_time({{job="shipper"}} | json | {DROPPED_ANY} '
     '[15m]) ) > 0'):
        Case({}, check_dropped_alert),
    ("k8s/loki-rules.yaml", '{job="shipper", dag_id="{{ $labels.dag_id }}"}'):
        Case({"{{ $labels.dag_id }}": "etl"}, check_summaries("A1", "A2", "B", "B2", "D")),
    ("k8s/loki-rules.yaml", 'sum by (dag_id, task_id) ( count_over_time({job="shipper"} | json | code > 0 [15m]) ) > 0'):
        Case({}, check_shipper_failed_alert),
    ("k8s/loki-rules.yaml", '{job="shipper", dag_id="{{ $labels.dag_id }}", task_id="{{ $labels.task_id }}"}'):
        Case({"{{ $labels.dag_id }}": "etl", "{{ $labels.task_id }}": "extract"}, check_summaries("D")),
    # -- README
    ("README.md", '{job="shipper"}'):
        Case({}, check_all_summaries),
    ("README.md", '{job="shipper", dag_id=..., task_id=...}'):
        Case({"dag_id=...": f"dag_id={ETL}", "task_id=...": 'task_id="load"'}, check_summaries("A1", "A2")),
    ("README.md", f'{{job="shipper"}} | json | code != 0 or {DROPPED_ANY}'):
        Case({}, check_audit),
    ("README.md", '{job="shipper", service_name="shipper", dag_id=..., task_id=...}'):
        Case({"dag_id=...": f"dag_id={ETL}", "task_id=...": 'task_id="transform"'}, check_summaries("B", "B2")),
    # -- docs/deployment.md
    ("docs/deployment.md", '{namespace="airflow", dag_id="<dag>", task_id="<task>", stream=~"stdout|stderr"}'):
        Case({"<dag>": "etl", "<task>": "load"}, check_task_lines("A1", "A2")),
    ("docs/deployment.md", '{job="shipper", dag_id=..., task_id=...}'):
        Case({"dag_id=...": f"dag_id={ETL}", "task_id=...": 'task_id="transform"'}, check_summaries("B", "B2")),
    ("docs/deployment.md", '{job="shipper", <task labels>}'):
        Case({"<task labels>": 'dag_id="hello_world", task_id="publish"'}, check_summaries("C")),
    ("docs/deployment.md", '{namespace="airflow", dag_id="hello_world"}'):
        Case({}, check_dag_lines),
    ("docs/deployment.md", '{dag_id="etl"} | run_id="scheduled__..."'):
        Case({"scheduled__...": ETL_RUN}, check_run_lines(with_summaries=True)),
    # -- docs/logql.md: LogQL for Airflow
    (LOGQL_MD, '{service_name="airflow", dag_id="etl"}'):
        Case({}, check_task_lines("A1", "A2", "B", "B2", "D")),
    (LOGQL_MD, '{service_name="airflow", dag_id="etl", task_id="transform"}'):
        Case({}, check_task_lines("B", "B2")),
    (LOGQL_MD, f'{{service_name="airflow", dag_id="etl"}} | run_id="{ETL_RUN}"'):
        Case({}, check_run_lines(with_summaries=False)),
    (LOGQL_MD, f'{{service_name="airflow", dag_id="etl", task_id="transform"}} | run_id="{ETL_RUN}" '
     '| try_number="2"'):
        Case({}, check_task_lines("B2")),
    (LOGQL_MD, '{service_name="airflow", dag_id="etl"} | level=~"error|critical"'):
        Case({}, check_dag_errors("etl", B_TRACEBACK_ENTRY)),
    (LOGQL_MD, '{service_name="airflow"} | level="warning"'):
        Case({}, check_level("warning")),
    (LOGQL_MD, f'{{service_name="airflow", dag_id="etl", task_id="transform"}} | run_id="{ETL_RUN}" '
     f'| try_number="1" {FAILURE}'):
        Case({}, check_dag_errors("etl", B_TRACEBACK_ENTRY)),
    (LOGQL_MD, f'sum by (dag_id, task_id) (count_over_time({{service_name="airflow"}} {FAILURE} [1h]))'):
        Case({}, check_failed_tries_by_task),
    (LOGQL_MD, 'sum by (dag_id) (count_over_time({service_name="airflow"} | level=~"error|critical" [1h]))'):
        Case({}, check_errors_per_dag),
    (LOGQL_MD, '{service_name="airflow"} | level="info" |~ "Marking task as|Workload finished"'):
        Case({}, check_how_tries_ended),
    (LOGQL_MD, '{job="shipper"}'):
        Case({}, check_all_summaries),
    (LOGQL_MD, 'max by (dag_id, task_id) (max_over_time({job="shipper"} | json | unwrap seconds [1h]))'):
        Case({}, check_durations),
}

def test_every_documented_query_has_a_check() -> None:
    found = list(extract_queries())
    assert sorted(set(found) - set(CASES)) == [], "documented LogQL queries without a check in CASES"
    assert sorted(set(CASES) - set(found)) == [], "CASES entries no longer found in the docs"


def _params() -> Iterator[object]:
    for key, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(key, id=f"{key[0]}:{key[1][:60]}", marks=marks)


@pytest.mark.parametrize("key", list(_params()))
def test_documented_query_returns_what_its_text_claims(
        key: tuple[str, str], loki3: RealLoki, shipped: dict[str, Run]) -> None:
    assert key in extract_queries(), f"{key} is no longer in the docs"
    case = CASES[key]
    case.check(loki3, shipped, substitute(key[1], case.subs))
