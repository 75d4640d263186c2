"""Every LogQL query the project documents, run against a real Loki 3.4.6 over data the real shipper shipped.

The queries are extracted by a parser (below) from `k8s/grafana-dashboard.json`
(panel `expr`s and template-variable queries), `k8s/loki-rules.yaml` (rule
`expr`s and the queries quoted in their annotations), `README.md` and
`docs/*.md` (inline code and code blocks that are a selector or a metric
query). Each has a check in CASES saying what its surrounding text claims it
returns; `test_every_documented_query_has_a_check` fails when a query is added
or changed without one, so none escapes.

The data: five task runs shipped by the real shipper with the pod template's
processing (`k8s/pod-template-configmap.yaml`: file sources, multiline,
detect_level, `namespace="airflow"`, dag_id/task_id from the pod annotations),
into a tenant of its own (the rules and panels select `{namespace="airflow"}`
and `{job="shipper"}`, so only a tenant isolates them):

| run | dag.task | what it prints (FACTS §2) |
|---|---|---|
| A1, A2 | etl.load (two run_ids) | Airflow 2 text lines, success |
| B | etl.transform | Airflow 2, `ERROR - Task failed with exception`, a traceback, `Marking task as FAILED` |
| D | etl.extract | Airflow 2, one 300 KB line Loki refuses (max_line_size 256KB): dropped, `rejected` |
| C | hello_world.publish | Airflow 3 JSON lines, `"level": "error"` `Task failed with exception` |

Grafana's `$dag_id`/`$task_id` are replaced by concrete regexes, `$__interval`
and `$__range` by a window covering the runs; metric queries (rules, panels)
run as instant queries (`/loki/api/v1/query`). A query that does not return
what its text claims is `xfail(strict=True)` with the reason: the docs are not
changed here.
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
        pipeline = re.match(r'(\s*\|[=~!]?\s*(?:"(?:[^"\\]|\\.)*"|[^|()"]+))*', text[end:])
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


def airflow2_success(dag: str, task: str, run_id: str) -> list[str]:
    return [
        af2("06:00:05.101", "local_task_job_runner.py:123", "INFO", "::group::Pre task execution logs"),
        af2("06:00:05.180", "taskinstance.py:2614", "INFO", f"Dependencies all met for dep_context=non-requeueable "
            f"deps ti=<TaskInstance: {dag}.{task} {run_id} [queued]>"),
        af2("06:00:05.400", "taskinstance.py:2867", "INFO", "Starting attempt 1 of 3"),
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
    dag: str
    task: str
    run_id: str
    stdout: list[str]
    summary: dict[str, object] = field(default_factory=dict)
    entries: list[str] = field(default_factory=list)  # what Loki stored for the task


RUNS = {
    "A1": Run("etl", "load", "scheduled__2026-12-01T06:00:00+00:00", []),
    "A2": Run("etl", "load", "manual__2026-12-01T07:00:00+00:00", []),
    "B": Run("etl", "transform", "scheduled__2026-12-01T06:00:00+00:00", []),
    "D": Run("etl", "extract", "scheduled__2026-12-01T06:00:00+00:00", []),
    "C": Run("hello_world", "publish", "scheduled__2026-12-01T06:00:00+00:00", []),
}
RUNS["A1"].stdout = airflow2_success("etl", "load", RUNS["A1"].run_id)
RUNS["A2"].stdout = airflow2_success("etl", "load", RUNS["A2"].run_id)
RUNS["B"].stdout = airflow2_failure("etl", "transform", RUNS["B"].run_id)
RUNS["D"].stdout = airflow2_with_a_huge_line()
RUNS["C"].stdout = airflow3_failure()


def pod_config(loki: RealLoki, folder: Path, run: Run) -> str:
    """The pod template's SHIPPER_CONFIG, with this Loki, this tenant and this pod's files."""
    annotations = folder / "annotations"
    annotations.write_text(f'dag_id="{run.dag}"\ntask_id="{run.task}"\nrun_id="{run.run_id}"\ntry_number="1"\n')
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
    folder.mkdir()
    (folder / "stdout.log").write_text("\n".join(run.stdout) + "\n")
    (folder / "stderr.log").write_text("")
    proc = await ShipperProcess.start(pod_config(loki, folder, run))
    try:
        for stream in ("stdout", "stderr"):
            await proc.wait_for_log("source opened", path=str(folder / f"{stream}.log"))
        # File sources are opened before the SIGTERM handler is installed; the metrics endpoint
        # answers only once the event loop runs again, after it is (no await in between).
        port = (await proc.wait_for_log("metrics endpoint listening"))["port"]
        await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
        proc.signal(signal.SIGTERM)  # the task is done: read the files to their end, flush, exit
        assert await proc.wait() == 0, proc.stderr_text
    finally:
        await proc.kill()
    run.summary = {k: v for k, v in proc.summary().items() if k not in ("ts", "level", "msg")}


@pytest.fixture(scope="module")
def shipped(loki3: RealLoki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("logql")

    async def all_runs() -> None:
        for name, run in RUNS.items():
            await ship(loki3, base / name, run)

    asyncio.run(all_runs())
    for run in RUNS.values():
        sel = f'{{namespace="airflow", dag_id="{run.dag}", task_id="{run.task}", stream=~"stdout|stderr"}}'
        run.entries = [line for _, _, line, meta in loki3.query(sel, TENANT) if meta.get("run_id") == run.run_id]
        assert run.summary["lines_sent"] == len(run.entries), (run, run.summary)
    assert RUNS["D"].summary["dropped"]["rejected"] == 1  # type: ignore[index]
    assert RUNS["B"].summary["lines_merged"] == len(TRACEBACK)
    return RUNS


# -- the checks ------------------------------------------------------------------------------------

Check = Callable[[RealLoki, dict[str, Run], str], None]


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


def error_entries(runs: dict[str, Run]) -> list[str]:
    b = runs["B"].stdout
    return ["\n".join(b[1:2 + len(TRACEBACK)]), runs["C"].stdout[2]]


def check_recent_executions(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    rows = loki.query(q, TENANT)
    assert [json.loads(line) for _, _, line, _ in rows] == summaries_of(runs, "A1", "A2", "B", "D")
    # `| json` makes the summary's fields columns of the panel.
    assert [r[0]["lines_sent"] for r in rows] == [str(runs[n].summary["lines_sent"]) for n in ("A1", "A2", "B", "D")]


def check_error_stream(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert [line for _, _, line, _ in loki.query(q, TENANT)] == error_entries(runs)


def check_runs_per_dag(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(("dag_id", "etl"),): 4.0, (("dag_id", "hello_world"),): 1.0}


def check_durations(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    want: dict[tuple[tuple[str, str], ...], float] = {}
    for run in runs.values():
        key = (("dag_id", run.dag), ("task_id", run.task))
        want[key] = max(want.get(key, 0.0), float(run.summary["seconds"]))  # type: ignore[arg-type]
    assert series(loki, q) == want


def check_runs_with_drops(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(): 1.0}  # run D only


def check_lines_delivered(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(): float(sum(len(r.entries) for r in runs.values()))}


def check_failed_runs(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(): 2.0}  # runs B and C failed


def check_label_values(label: str, want: list[str]) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", q)
        assert m and m[2] == label, q
        data = loki._get_json(f"/loki/api/v1/label/{label}/values", {"query": m[1]}, TENANT)
        assert sorted(data) == want
    return check


def check_failed_alert(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    got = series(loki, q)
    assert set(got) == {(("dag_id", "etl"), ("task_id", "transform")), (("dag_id", "hello_world"), ("task_id", "publish"))}


def check_dropped_alert(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {(("dag_id", "etl"), ("task_id", "extract")): 1.0}


def check_shipper_failed_alert(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    assert series(loki, q) == {}  # every shipper here exited 0


def check_failure_lines(run: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        got = [line for _, _, line, _ in loki.query(q, TENANT)]
        want = {"B": [error_entries(runs)[0], runs["B"].stdout[-2]], "C": [error_entries(runs)[1]]}[run]
        assert got == want
    return check


def check_summaries(*names: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        assert [json.loads(r[2]) for r in loki.query(q, TENANT)] == summaries_of(runs, *names)
    return check


def check_audit(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    # Claimed: "audits a fleet": the runs that did not deliver what they read (run D only).
    assert [json.loads(r[2]) for r in loki.query(q, TENANT)] == summaries_of(runs, "D")


def check_task_lines(*names: str) -> Check:
    def check(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
        assert [r[2] for r in loki.query(q, TENANT)] == [e for n in names for e in runs[n].entries]
    return check


def check_dag_lines(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    # The DAG's task lines, then its run's exit summary: {job="shipper"} carries the static
    # labels too (namespace="airflow"), so a selector without `stream` includes it.
    rows = loki.query(q, TENANT)
    assert [r[2] for r in rows if r[0].get("job") != "shipper"] == runs["C"].entries
    assert [json.loads(r[2]) for r in rows if r[0].get("job") == "shipper"] == summaries_of(runs, "C")
    assert rows[-1][0].get("job") == "shipper"


def check_run_lines(loki: RealLoki, runs: dict[str, Run], q: str) -> None:
    """Every entry of the run (all its tasks), and the exit summaries carry the same run_id."""
    rows = loki.query(q, TENANT)
    assert {r[3]["run_id"] for r in rows} == {runs["A1"].run_id}
    assert [r[2] for r in rows if r[0].get("job") != "shipper"] == [
        *runs["A1"].entries, *runs["B"].entries, *runs["D"].entries]
    assert [json.loads(r[2]) for r in rows if r[0].get("job") == "shipper"] == summaries_of(runs, "A1", "B", "D")


GRAFANA = {"$dag_id": "etl", "$task_id": ".+", "$__interval": WINDOW, "$__range": WINDOW}
ALL_DAGS = {**GRAFANA, "$dag_id": ".+"}
ETL = '"etl"'
AF2_FAILS_TWICE = ("Airflow 2 prints both `ERROR - Task failed with exception` and `Marking task as FAILED` for one "
                   "failure: the panel counts matching lines, not failed runs (3 for 2 runs)")

CASES: dict[tuple[str, str], Case] = {
    ("k8s/grafana-dashboard.json", '{job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} | json'):
        Case(GRAFANA, check_recent_executions),
    ("k8s/grafana-dashboard.json", '{namespace="airflow", stream=~"stdout|stderr", dag_id=~"$dag_id", '
     'task_id=~"$task_id"} | level=~"error|critical"'):
        Case(ALL_DAGS, check_error_stream),
    ("k8s/grafana-dashboard.json", 'sum by (dag_id) (count_over_time({job="shipper", dag_id=~"$dag_id", '
     'task_id=~"$task_id"} [$__interval]))'):
        Case(ALL_DAGS, check_runs_per_dag),
    ("k8s/grafana-dashboard.json", 'max by (dag_id, task_id) (max_over_time({job="shipper", dag_id=~"$dag_id", '
     'task_id=~"$task_id"} | json | __error__="" | unwrap seconds [$__interval]))'):
        Case(ALL_DAGS, check_durations),
    ("k8s/grafana-dashboard.json", 'sum(count_over_time({job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} '
     '| json | dropped_rejected > 0 or dropped_shutdown_deadline > 0 or dropped_forced_exit > 0 or '
     'dropped_buffer_full > 0 or dropped_spool_error > 0 or dropped_internal_error > 0 [$__range]))'):
        Case(ALL_DAGS, check_runs_with_drops),
    ("k8s/grafana-dashboard.json", 'sum(sum_over_time({job="shipper", dag_id=~"$dag_id", task_id=~"$task_id"} '
     '| json | __error__="" | unwrap lines_sent [$__range]))'):
        Case(ALL_DAGS, check_lines_delivered),
    ("k8s/grafana-dashboard.json", 'sum(count_over_time({namespace="airflow", stream=~"stdout|stderr", '
     'dag_id=~"$dag_id", task_id=~"$task_id"} |~ "Marking task as FAILED|Task failed with exception" '
     '[$__range]))'):
        Case(ALL_DAGS, check_failed_runs, xfail=AF2_FAILS_TWICE),
    ("k8s/grafana-dashboard.json", 'label_values({job="shipper"}, dag_id)'):
        Case({}, check_label_values("dag_id", ["etl", "hello_world"])),
    ("k8s/grafana-dashboard.json", 'label_values({job="shipper", dag_id=~"$dag_id"}, task_id)'):
        Case(GRAFANA, check_label_values("task_id", ["extract", "load", "transform"])),
    ("k8s/loki-rules.yaml", 'sum by (dag_id, task_id) ( count_over_time({namespace="airflow", '
     'stream=~"stdout|stderr"} |~ "Marking task as FAILED|Task failed with exception" [5m]) ) > 0'):
        Case({}, check_failed_alert),
    ("k8s/loki-rules.yaml", '{namespace="airflow", dag_id="{{ $labels.dag_id }}", task_id="{{ $labels.task_id }}"} '
     '|~ "ERROR|FAILED"'):
        Case({"{{ $labels.dag_id }}": "hello_world", "{{ $labels.task_id }}": "publish"}, check_failure_lines("C"),
             xfail='case-sensitive `|~ "ERROR|FAILED"` misses Airflow 3\'s JSON `"level": "error"` record: '
                   'the alert\'s own query shows nothing for an Airflow 3 failure'),
    ("k8s/loki-rules.yaml", 'sum by (dag_id, task_id) ( count_over_time({job="shipper"} | json | '
     'dropped_rejected > 0 or dropped_shutdown_deadline > 0 or dropped_forced_exit > 0 or dropped_buffer_full > 0 '
     'or dropped_spool_error > 0 or dropped_internal_error > 0 [15m]) ) > 0'):
        Case({}, check_dropped_alert),
    ("k8s/loki-rules.yaml", '{job="shipper", dag_id="{{ $labels.dag_id }}"}'):
        Case({"{{ $labels.dag_id }}": "etl"}, check_summaries("A1", "A2", "B", "D")),
    ("k8s/loki-rules.yaml", 'sum by (dag_id, task_id) ( count_over_time({job="shipper"} | json | code > 0 [15m]) ) > 0'):
        Case({}, check_shipper_failed_alert),
    ("k8s/loki-rules.yaml", '{job="shipper", dag_id="{{ $labels.dag_id }}", task_id="{{ $labels.task_id }}"}'):
        Case({"{{ $labels.dag_id }}": "etl", "{{ $labels.task_id }}": "extract"}, check_summaries("D")),
    ("README.md", '{job="shipper", dag_id=..., task_id=...}'):
        Case({"dag_id=...": f"dag_id={ETL}", "task_id=...": 'task_id="load"'}, check_summaries("A1", "A2")),
    ("README.md", '{job="shipper"} | json | lines_sent != lines_read'):
        Case({}, check_audit, xfail="not valid LogQL: a label filter compares a label with a literal, not with another "
             "label (Loki 3.4.6: 400 'parse error at line 1, col 40: syntax error: unexpected IDENTIFIER'); "
             "and the idea is off too: with the pod template's multiline = true a traceback makes "
             "lines_sent (entries) < lines_read (lines) in a run that lost nothing (run B)"),
    ("docs/deployment.md", '{namespace="airflow", dag_id="<dag>", task_id="<task>", stream="stdout|stderr"}'):
        Case({"<dag>": "etl", "<task>": "load"}, check_task_lines("A1", "A2"),
             xfail='`stream="stdout|stderr"` is an exact match of the text "stdout|stderr" (needs `=~`): '
                   "returns nothing"),
    ("docs/deployment.md", '{job="shipper", dag_id=..., task_id=...}'):
        Case({"dag_id=...": f"dag_id={ETL}", "task_id=...": 'task_id="transform"'}, check_summaries("B")),
    ("docs/deployment.md", '{job="shipper", <task labels>}'):
        Case({"<task labels>": 'dag_id="hello_world", task_id="publish"'}, check_summaries("C")),
    ("docs/deployment.md", '{namespace="airflow", dag_id="hello_world"}'):
        Case({}, check_dag_lines),
    ("docs/deployment.md", '{dag_id="etl"} | run_id="scheduled__..."'):
        Case({"scheduled__...": RUNS["A1"].run_id}, check_run_lines),
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
