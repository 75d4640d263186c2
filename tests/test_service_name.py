"""Loki 3 conventions (issue 13, item 5): the `service_name` of the task's streams, against a real Loki.

Loki 3 derives `service_name` from the first of its `discover_service_name`
labels (FACTS §4); the shipper's task streams have none of them, so Loki 3
stored `unknown_service` and Grafana's Logs Drilldown listed every Airflow
task under it. The shipper now sets it: `[airflow] service_name` ("airflow"
by default) on the task's streams, "shipper" on the exit-summary stream
(`{job="shipper"}`: the shipper's record of a run, not the task's output),
the same on Loki 2.7 (a plain label there) and 3.4. `service_name = ""`
leaves it to Loki's discovery. No label changes from run to run or try to
try: two runs of one task are the same streams.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

from tests.conftest import launch, make_config
from tests.real_loki import RealLoki, any_loki, loki3, loki27, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess


def annotations(run_id: str, try_number: int) -> str:
    return f'dag_id="etl"\ntask_id="load"\nrun_id="{run_id}"\ntry_number="{try_number}"\n'


async def ship_run(loki: RealLoki, folder: Path, procs: list[ShipperProcess], run: str, *,
                   run_id: str = "scheduled__2026-12-01T06:00:00+00:00", try_number: int = 1,
                   airflow: str = "") -> None:
    """One task pod: its stdout/stderr files shipped with the pod template's keys, then SIGTERM."""
    folder.mkdir()
    (folder / "annotations").write_text(annotations(run_id, try_number))
    (folder / "stdout.log").write_text(f"out of {run_id} try {try_number}\n")
    (folder / "stderr.log").write_text(f"err of {run_id} try {try_number}\n")
    config = make_config(loki.push_url, [(folder / "stdout.log", "stdout"), (folder / "stderr.log", "stderr")],
                         loki={"tenant_id": "default"}, labels={"test_run": run, "namespace": "airflow"})
    config = config.replace('annotations_file = "/nonexistent/annotations"',
                            f'annotations_file = "{folder / "annotations"}"\nlabels = ["dag_id", "task_id"]\n'
                            + airflow)
    proc = await launch(procs, config)
    for stream in ("stdout", "stderr"):
        await proc.wait_for_event("source_opened", path=str(folder / f"{stream}.log"))
    proc.signal(signal.SIGTERM)  # the task is done: read to the end, flush, exit
    assert await proc.wait() == 0, proc.stderr_text
    assert proc.summary()["lines_sent"] == 2, proc.stderr_text


def series(loki: RealLoki, run: str) -> list[dict[str, str]]:
    """Every stream Loki holds for this test (`/loki/api/v1/series`), sorted."""
    lo, hi = loki.default_window()
    data = loki._get_json("/loki/api/v1/series", {"match[]": f'{{test_run="{run}"}}', "start": str(lo),
                                                   "end": str(hi)}, "default")
    return sorted((dict(s) for s in data), key=lambda s: sorted(s.items()))


def stream(name: str, run: str, **extra: str) -> dict[str, str]:
    return {"dag_id": "etl", "task_id": "load", "namespace": "airflow", "test_run": run, "stream": name, **extra}


def summary_stream(run: str, **extra: str) -> dict[str, str]:
    return {"dag_id": "etl", "task_id": "load", "namespace": "airflow", "test_run": run, "job": "shipper", **extra}


async def test_task_streams_are_service_airflow_and_two_runs_of_a_task_are_the_same_streams(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, uuid.uuid4().hex[:12]
    await ship_run(loki, tmp_path / "first", procs, run)
    # Another run and another try of the same task: new structured metadata, no new stream.
    await ship_run(loki, tmp_path / "retry", procs, run, run_id="manual__2026-12-01T07:00:00+00:00", try_number=2)
    assert series(loki, run) == sorted([
        stream("stderr", run, service_name="airflow"), stream("stdout", run, service_name="airflow"),
        summary_stream(run, service_name="shipper")], key=lambda s: sorted(s.items()))
    rows = loki.query(f'{{service_name="airflow", test_run="{run}", stream="stdout"}}', "default")
    assert [(r[2], r[3].get("run_id"), r[3].get("try_number")) for r in rows] == [
        ("out of scheduled__2026-12-01T06:00:00+00:00 try 1", *(("scheduled__2026-12-01T06:00:00+00:00", "1")
                                                               if loki.version.startswith("3.") else (None, None))),
        ("out of manual__2026-12-01T07:00:00+00:00 try 2", *(("manual__2026-12-01T07:00:00+00:00", "2")
                                                            if loki.version.startswith("3.") else (None, None)))]
    assert len(loki.query(f'{{service_name="shipper", test_run="{run}"}}', "default")) == 2  # one summary a run


async def test_what_logs_drilldown_lists(tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    # Drilldown's service list is the values of service_name (its first request, Grafana 11).
    run = uuid.uuid4().hex[:12]
    await ship_run(loki3, tmp_path / "run", procs, run)
    lo, hi = loki3.default_window()
    values = loki3._get_json("/loki/api/v1/label/service_name/values",
                             {"query": f'{{test_run="{run}"}}', "start": str(lo), "end": str(hi)}, "default")
    assert sorted(values) == ["airflow", "shipper"]


async def test_service_name_is_settable(tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, uuid.uuid4().hex[:12]
    await ship_run(loki, tmp_path / "run", procs, run, airflow='service_name = "airflow-etl"\n')
    assert series(loki, run) == sorted([
        stream("stderr", run, service_name="airflow-etl"), stream("stdout", run, service_name="airflow-etl"),
        summary_stream(run, service_name="shipper")], key=lambda s: sorted(s.items()))


async def test_an_empty_service_name_leaves_it_to_lokis_discovery(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    loki, run = any_loki, uuid.uuid4().hex[:12]
    await ship_run(loki, tmp_path / "run", procs, run, airflow='service_name = ""\n')
    if loki.version.startswith("3."):  # discovery: none of its labels on the task, `job` on the summary
        want = [stream("stderr", run, service_name="unknown_service"),
                stream("stdout", run, service_name="unknown_service"), summary_stream(run, service_name="shipper")]
    else:  # Loki 2.7 has no service_name
        want = [stream("stderr", run), stream("stdout", run), summary_stream(run)]
    assert series(loki, run) == sorted(want, key=lambda s: sorted(s.items()))
