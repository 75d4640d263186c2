#!/usr/bin/env python3
"""Record what real Airflow 2 and 3 task pods print, as test fixtures (issue 13, item 1).

Not run by the tests: it installs Airflow from PyPI (minutes, ~300 MB per
version) and runs a small DAG (DAG_SOURCE below) the way a KubernetesExecutor
pod runs a task. The tests (tests/test_airflow_fixtures.py) ship what it wrote.

    python tools/airflow_fixtures.py [--workdir DIR] [--out tests/fixtures/airflow]
                                     [--airflow2 2.10.5] [--airflow3 3.3.2]

How each version is run (what a worker pod's `base` container does):

* Airflow 2.x. The pod's args are
  `airflow tasks run <dag> <task> <run_id> --local --subdir DAGS_FOLDER/<file> [--map-index N]`
  with `AIRFLOW_IS_K8S_EXECUTOR_POD=True` (pod_generator / KubernetesExecutor).
  Here: `airflow db migrate` (SQLite), `airflow dags reserialize`, `airflow dags
  trigger` (creates the run and its task instances, the mapped task expanded to
  its 2 literal map indexes), then the scheduler's part done by a few lines of
  Python in the venv (QUEUE_HELPER: run state `running`, each task instance
  `try_number += 1` and state `queued`, as the scheduler does before it hands
  the task to the executor), then that exact `airflow tasks run ... --local`
  command, one per task instance, stdout and stderr to files.

* Airflow 3.x. The pod's args are
  `python -m airflow.sdk.execution_time.execute_workload --json-string <ExecuteTask JSON>`
  (cncf-kubernetes 10.x). The workload carries a JWT the task's supervisor
  presents to the Execution API of the api-server, so an `airflow api-server`
  runs beside it (same SQLite DB, same `[api_auth] jwt_secret`,
  `[core] execution_api_server_url` pointing at it). Same migrate / reserialize
  / trigger; the scheduler's part (QUEUE_HELPER) also builds each workload with
  `airflow.executors.workloads.ExecuteTask.make(ti, generator=JWTGenerator(...))`,
  the call the scheduler makes (scheduler_job_runner.py, `_enqueue_task_instances`)
  with the generator `BaseExecutor.jwt_generator` builds. Then
  `python -m airflow.sdk.execution_time.execute_workload --json-string ...` per task
  instance.

  Also recorded: Airflow 3's console format for local runs,
  `airflow tasks test <dag> <task> [--map-index N]` (structlog's ConsoleRenderer;
  no colours, since stdout is not a terminal), stdout and stderr, under
  `<version>-console/`.

Constraints: the official constraints file
(raw.githubusercontent.com/apache/airflow/constraints-<v>/constraints-<py>.txt) is
used when it can be fetched; without it plain `pip install apache-airflow==<v>`
plus `apache-airflow-providers-cncf-kubernetes` (pip took 10.10.0 for 2.10.5 and
10.25.0 for 3.3.2); this imports and runs on Python 3.11, nothing else pinned.

Where this differs from a real pod (and what it changes in the fixtures):
  - No Kubernetes, no apache/airflow image: the commands run on this machine, so
    paths are /tmp/... not /opt/airflow, the hostname is the machine's.
  - The scheduler's part is QUEUE_HELPER, not a scheduler; `[core] executor` is
    left at its default, and the cncf provider's pod_generator, finding no
    pod_template_file, logs `WARNING - Model file  does not exist` in every 2.x
    task (a real pod has a template; that line would be absent).
  - SQLite, not Postgres. The 3.x supervisor reaches the api-server on
    127.0.0.1 instead of a Service.
  - `log.debug` does not show (default level INFO), as in a default pod.
  - A write without a final newline never ends a pod's output: Airflow 2 logs it
    as a `logging_mixin` record, Airflow 3 as a `task.stdout` record, both with a
    newline. Only the console format (`tasks test`) prints it raw, and there the
    next record's line follows it on the same line.

Output, per task instance, under <out>/<version>/<task>[-<map_index>]/:
  stdout, stderr   the command's bytes, exactly
  task.log         {AIRFLOW_HOME}/logs/dag_id=.../attempt=N.log, exactly
  meta.json        dag_id, task_id, run_id, try_number, map_index, exit_code,
                   the command, log_relpath (the task log's path under logs/),
                   airflow version, python version
Nothing is rewritten: timestamps and paths are those of the run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

DAG_ID = "shipper_fixtures"
DAG_FILE = "shipper_fixtures.py"

# The DAG: one task per kind of output a reader must get back intact. Written so
# the same file runs on Airflow 2 (airflow.decorators) and 3 (airflow.sdk).
DAG_SOURCE = r'''
"""Fixtures for the shipper's tests: every kind of output a task pod prints."""
import logging
import sys
from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task

log = logging.getLogger(__name__)

with DAG("shipper_fixtures", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         tags=["shipper"]):

    @task
    def log_levels():
        log.debug("debug message (below the default level INFO)")
        log.info("info message")
        log.warning("warning message")
        log.error("error message, the task goes on")
        log.critical("critical message")
        log.info("a log message\nover three lines\nthe third")
        log.info("unicode log: h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f680")

    @task
    def log_exception():
        try:
            try:
                {}["missing"]
            except KeyError as e:
                raise ValueError("could not parse the payload") from e
        except ValueError:
            log.exception("caught exception")
        log.info("the task goes on after the exception")

    @task
    def fail():
        log.info("about to fail")
        try:
            int("not a number")
        except ValueError as e:
            raise RuntimeError("the task failed on purpose") from e

    @task
    def prints():
        print("a print to stdout")
        print("a print to stderr", file=sys.stderr)
        print("this print mentions ERROR but is not an error")
        print("a print\nover three lines\nthe third")
        print("unicode print: h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001f680")
        print("long line: " + "0123456789" * 2000)
        sys.stdout.write("the last line, without a newline")
        sys.stdout.flush()

    @task
    def mapped(x):
        log.info("mapped task got x=%s", x)
        print(f"print from the mapped task, x={x}")

    log_levels()
    log_exception()
    fail()
    prints()
    mapped.expand(x=[1, 2])
'''

# Run with the venv's python after `airflow dags trigger`: what the scheduler does
# to a triggered run before its executor starts a pod. Prints one JSON object per
# task instance (and, on Airflow 3, its ExecuteTask workload).
QUEUE_HELPER = r'''
import json, sys
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.utils import timezone
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState, TaskInstanceState
import airflow

dag_id = sys.argv[1]
major = int(airflow.__version__.split(".")[0])
out = []
with create_session() as session:
    (dr,) = session.query(DagRun).filter(DagRun.dag_id == dag_id).all()
    dr.state = DagRunState.RUNNING
    dr.start_date = timezone.utcnow()
    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                             TaskInstance.run_id == dr.run_id).all()
    for ti in tis:
        ti.try_number += 1  # the scheduler's increment when it schedules a try
        ti.state = TaskInstanceState.QUEUED
        ti.queued_dttm = timezone.utcnow()
    session.commit()
    generator = None
    if major >= 3:
        from airflow.api_fastapi.auth.tokens import JWTGenerator, get_signing_args
        from airflow.configuration import conf
        from airflow.executors import workloads
        generator = JWTGenerator(  # as BaseExecutor.jwt_generator
            valid_for=conf.getint("execution_api", "jwt_expiration_time"),
            audience=conf.get_mandatory_list_value("execution_api", "jwt_audience")[0],
            issuer=conf.get("api_auth", "jwt_issuer", fallback=None),
            **get_signing_args(make_secret_key_if_needed=False))
    for ti in sorted(tis, key=lambda t: (t.task_id, t.map_index)):
        item = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
                "try_number": ti.try_number, "map_index": ti.map_index}
        if generator is not None:
            item["workload"] = workloads.ExecuteTask.make(ti, generator=generator).model_dump_json()
        out.append(item)
print(json.dumps(out))
'''


def log(msg: str) -> None:
    print(f"[airflow_fixtures] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd if len(" ".join(cmd)) < 300 else [*cmd[:4], "..."]))
    done: subprocess.CompletedProcess[str] = subprocess.run(cmd, env=env, check=True, text=True, **kw)
    return done


def constraints_url(version: str) -> str | None:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    url = f"https://raw.githubusercontent.com/apache/airflow/constraints-{version}/constraints-{py}.txt"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if resp.status == 200:
                return url
    except OSError as e:
        log(f"constraints not reachable ({url}: {e}); installing without them")
    return None


def make_venv(workdir: Path, version: str) -> Path:
    venv = workdir / f"venv-{version}"
    py = venv / "bin" / "python"
    if py.exists():
        probe = subprocess.run([str(py), "-c", "import airflow, airflow.providers.cncf.kubernetes; "
                                "print(airflow.__version__)"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == version:
            log(f"reusing {venv}")
            return venv
    run([sys.executable, "-m", "venv", "--clear", str(venv)], dict(os.environ))
    # The cncf-kubernetes provider is in every image a KubernetesExecutor pod runs
    # (Airflow 2 imports it for a task run with AIRFLOW_IS_K8S_EXECUTOR_POD=True);
    # pip picks the newest release compatible with the pinned Airflow.
    cmd = [str(py), "-m", "pip", "install", "-q", f"apache-airflow=={version}",
           "apache-airflow-providers-cncf-kubernetes"]
    url = constraints_url(version)
    if url:
        cmd += ["--constraint", url]
    run(cmd, dict(os.environ))
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(venv),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "TZ": "UTC",
        "LANG": "C.UTF-8",
    })
    return env


def prepare_home(workdir: Path, version: str) -> Path:
    home = workdir / f"home-{version}"
    if home.exists():
        shutil.rmtree(home)
    (home / "dags").mkdir(parents=True)
    (home / "dags" / DAG_FILE).write_text(DAG_SOURCE)
    return home


def trigger_and_queue(venv: Path, env: dict[str, str], home: Path) -> list[dict[str, Any]]:
    airflow = str(venv / "bin" / "airflow")
    run([airflow, "db", "migrate"], env, stdout=subprocess.DEVNULL)
    run([airflow, "dags", "reserialize"], env, stdout=subprocess.DEVNULL)
    run([airflow, "dags", "trigger", DAG_ID], env, stdout=subprocess.DEVNULL)
    helper = home / "queue_helper.py"
    helper.write_text(QUEUE_HELPER)
    done = run([str(venv / "bin" / "python"), str(helper), DAG_ID], env, capture_output=True)
    items: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return items


def fixture_name(item: dict[str, Any]) -> str:
    m = int(item["map_index"])
    return str(item["task_id"]) + (f"-{m}" if m >= 0 else "")


def log_relpath(item: dict[str, Any]) -> str:
    m = int(item["map_index"])
    return (f"dag_id={item['dag_id']}/run_id={item['run_id']}/task_id={item['task_id']}/"
            + (f"map_index={m}/" if m >= 0 else "") + f"attempt={item['try_number']}.log")


def record(out: Path, item: dict[str, Any], cmd: list[str], env: dict[str, str], home: Path,
           version: str, *, task_log: bool = True, timeout: float = 300) -> None:
    target = out / fixture_name(item)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shown = [c if len(c) < 200 else "<workload JSON, see workload.json>" for c in cmd]
    log("$ " + " ".join(shown))
    with open(target / "stdout", "wb") as so, open(target / "stderr", "wb") as se:
        proc = subprocess.run(cmd, env=env, stdout=so, stderr=se, stdin=subprocess.DEVNULL,
                              cwd=home, timeout=timeout)
    meta: dict[str, Any] = {k: item[k] for k in ("dag_id", "task_id", "run_id", "try_number", "map_index")}
    meta["exit_code"] = proc.returncode
    meta["command"] = shown
    meta["airflow"] = version
    meta["python"] = ".".join(map(str, sys.version_info[:3]))
    if task_log:
        rel = log_relpath(item)
        meta["log_relpath"] = rel
        src = home / "logs" / rel
        if src.exists():
            shutil.copyfile(src, target / "task.log")
        else:
            meta["log_relpath_missing"] = True
            log(f"no task log at {src}")
    (target / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log(f"  -> {target} exit {proc.returncode}, stdout {(target / 'stdout').stat().st_size} B, "
        f"stderr {(target / 'stderr').stat().st_size} B")


def airflow2(workdir: Path, out: Path, version: str) -> None:
    venv = make_venv(workdir, version)
    home = prepare_home(workdir, version)
    env = base_env(venv, home)
    items = trigger_and_queue(venv, env, home)
    pod_env = {**env, "AIRFLOW_IS_K8S_EXECUTOR_POD": "True"}
    for item in items:
        cmd = ["airflow", "tasks", "run", str(item["dag_id"]), str(item["task_id"]), str(item["run_id"]),
               "--local", "--subdir", f"DAGS_FOLDER/{DAG_FILE}"]
        if int(item["map_index"]) >= 0:
            cmd += ["--map-index", str(item["map_index"])]
        record(out / version, item, cmd, pod_env, home, version)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"api-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"api-server not answering at {url}")


def airflow3(workdir: Path, out: Path, version: str) -> None:
    venv = make_venv(workdir, version)
    home = prepare_home(workdir, version)
    port = free_port()
    env = base_env(venv, home)
    env.update({
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    })
    items = trigger_and_queue(venv, env, home)
    api_log = open(workdir / f"api-server-{version}.log", "wb")
    api = subprocess.Popen([str(venv / "bin" / "airflow"), "api-server", "--port", str(port),
                            "--host", "127.0.0.1"], env=env, stdout=api_log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", api)
        pod_env = {**env, "AIRFLOW_IS_K8S_EXECUTOR_POD": "True"}
        for item in items:
            workload = str(item.pop("workload"))
            cmd = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", workload]
            record(out / version, item, cmd, pod_env, home, version)
            (out / version / fixture_name(item) / "workload.json").write_text(
                json.dumps({**json.loads(workload), "token": "<redacted JWT>"}, indent=2) + "\n")
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
        api_log.close()
    # Local runs: the console format (`airflow tasks test`), for the structlog console fixture.
    for item in items:
        cmd = ["airflow", "tasks", "test", str(item["dag_id"]), str(item["task_id"])]
        if int(item["map_index"]) >= 0:
            cmd += ["--map-index", str(item["map_index"])]
        # `tasks test` runs the task in this process against a temporary run of its own
        # (`__airflow_temporary_run_<time>__`, named in the output) and writes no task log.
        record(out / f"{version}-console", {**item, "try_number": None, "run_id": None}, cmd, env, home,
               version, task_log=False)


def write_index(out: Path) -> None:
    """<out>/README.md: where the fixtures come from and what each one is."""
    rows = []
    for meta_path in sorted(out.glob("*/*/meta.json")):
        meta = json.loads(meta_path.read_text())
        d = meta_path.parent
        sizes = ", ".join(f"{f.name} {f.stat().st_size:,} B" for f in sorted(d.iterdir())
                          if f.name in ("stdout", "stderr", "task.log"))
        rows.append(f"| `{d.parent.name}/{d.name}` | {' '.join(meta['command'][:3])} ... | "
                    f"{meta['exit_code']} | {sizes} |")
    (out / "README.md").write_text(
        "# Real Airflow output (issue 13)\n\n"
        "Written by `tools/airflow_fixtures.py` (its docstring says how each Airflow was run);\n"
        "do not edit by hand, run the script again. Each directory holds one task instance's\n"
        "`stdout` and `stderr` (the exact bytes the pod's `base` container printed), `task.log`\n"
        "(`{AIRFLOW_HOME}/logs/<meta.json log_relpath>`, exact), `meta.json` (dag_id, task_id,\n"
        "run_id, try_number, map_index, exit code, command) and, for Airflow 3, `workload.json`\n"
        "(the ExecuteTask workload, its token redacted). `*-console/`: `airflow tasks test`\n"
        "(Airflow 3's console format for local runs; no task log, a temporary run).\n\n"
        "| fixture | command | exit | sizes |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="venvs and AIRFLOW_HOMEs (default: a temp dir, kept)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                        / "tests" / "fixtures" / "airflow")
    parser.add_argument("--airflow2", default="2.10.5")
    parser.add_argument("--airflow3", default="3.3.2")
    parser.add_argument("--only", choices=["2", "3"], help="run one version only")
    parser.add_argument("--index-only", action="store_true", help="only rewrite <out>/README.md")
    args = parser.parse_args()
    if args.index_only:
        write_index(args.out)
        return
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="airflow-fixtures-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    if args.only != "3":
        airflow2(workdir, args.out, args.airflow2)
    if args.only != "2":
        airflow3(workdir, args.out, args.airflow3)
    write_index(args.out)


if __name__ == "__main__":
    main()
