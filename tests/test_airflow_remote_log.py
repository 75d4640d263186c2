"""Task logs in the Airflow UI, read back from a real Loki (issue 17).

The real-Airflow output of tests/fixtures/airflow is shipped by the real shipper
(the pod template's processing: multiline, detect_level) into the real Loki
3.4.6 (and 2.7.7 for the fallback) of tests/real_loki.py, each test under its
own `[labels] test_run`, then read back by shipper.airflow exactly as the
Airflow api-server / webserver calls it. The parts that need Airflow itself run
in an Airflow venv (tools/airflow_fixtures.py makes them) and skip, saying how
to get one, when there is none; everything else needs no Airflow.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shipper.airflow import loki_read as lr
from shipper.airflow.airflow3 import LokiRemoteLogIO
from shipper.airflow.client import read_try
from tests.conftest import launch, make_config, open_fifo_writer
from tests.real_loki import RealLoki, loki3, loki27, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess
from tests.test_sources import write_all

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "airflow"


def unique() -> str:
    return uuid.uuid4().hex[:12]


def annotations(ctx: dict[str, str]) -> str:
    return "".join(f'{k}={json.dumps(v)}\n' for k, v in ctx.items())


def pod_config(loki: RealLoki, tmp: Path, run: str, ctx: dict[str, str], sources: list[tuple[Path, str]],
               tenant: str = "default") -> str:
    """The pod template's sidecar config (multiline, detect_level) for a test's own labels."""
    ann = tmp / f"annotations-{unique()}"
    ann.write_text(annotations(ctx))
    config = make_config(loki.push_url, sources, loki={"tenant_id": tenant}, labels={"test_run": run})
    for _, stream in sources:
        config = config.replace(f'stream = "{stream}"', f'stream = "{stream}"\nmultiline = true\ndetect_level = true')
    return config.replace('annotations_file = "/nonexistent/annotations"', f'annotations_file = "{ann}"')


async def ship_files(procs: list[ShipperProcess], loki: RealLoki, tmp: Path, run: str, ctx: dict[str, str],
                     stdout: bytes, stderr: bytes = b"", tenant: str = "default") -> dict[str, Any]:
    """A task pod's output shipped as the sidecar does (files, SIGTERM at the end); its summary."""
    d = tmp / unique()
    d.mkdir()
    (d / "stdout.log").write_bytes(stdout)
    (d / "stderr.log").write_bytes(stderr)
    proc = await launch(procs, pod_config(loki, tmp, run, ctx, [(d / "stdout.log", "stdout"),
                                                                (d / "stderr.log", "stderr")], tenant))
    await proc.wait_for_event("source_opened", path=str(d / "stderr.log"))
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    return proc.summary()


def fixture(version: str, name: str) -> tuple[bytes, bytes, dict[str, Any]]:
    d = FIXTURES / version / name
    return (d / "stdout").read_bytes(), (d / "stderr").read_bytes(), json.loads((d / "meta.json").read_text())


def ctx_of(dag_id: str, task_id: str, run_id: str, try_number: int, map_index: int = -1) -> dict[str, str]:
    ctx = {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "try_number": str(try_number)}
    if map_index >= 0:
        ctx["map_index"] = str(map_index)  # the executor's annotation, only when >= 0 (FACTS §2)
    return ctx


def fake_ti(ctx: dict[str, str], start: datetime, end: datetime | None, state: str = "success") -> SimpleNamespace:
    """What Airflow passes: a TaskInstance / TaskInstanceHistory (only the attributes read)."""
    return SimpleNamespace(dag_id=ctx["dag_id"], task_id=ctx["task_id"], run_id=ctx["run_id"],
                           try_number=int(ctx["try_number"]), map_index=int(ctx.get("map_index", -1)),
                           state=state, start_date=start, end_date=end, queued_dttm=None)


def reader(loki: RealLoki, run: str, **kw: Any) -> LokiRemoteLogIO:
    return LokiRemoteLogIO(lr.ReadConfig(url=loki.push_url, tenant_id=kw.pop("tenant", "default"),
                                         selector={"test_run": run}, **kw))


def rel_path(ctx: dict[str, str]) -> str:
    m = f"map_index={ctx['map_index']}/" if "map_index" in ctx else ""
    return f"dag_id={ctx['dag_id']}/run_id={ctx['run_id']}/task_id={ctx['task_id']}/{m}attempt={ctx['try_number']}.log"


def text_lines(data: bytes) -> list[str]:
    text = data.decode()
    return (text[:-1] if text.endswith("\n") else text).split("\n") if text else []


def now() -> datetime:
    return datetime.now(timezone.utc)


def stream_lines(io: LokiRemoteLogIO, ctx: dict[str, str], ti: Any) -> tuple[list[str], list[str]]:
    sources, streams = io.stream(rel_path(ctx), ti)
    assert len(streams) == 1
    return sources, list(streams[0])


# -- Airflow 3: the records come back as the pod printed them, then the summary --------------------


@pytest.mark.parametrize("name", ["log_exception", "fail", "prints", "log_levels"])
async def test_an_airflow3_try_comes_back_exactly_with_its_summary_last(
        name: str, tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    stdout, stderr, meta = fixture("3.3.2", name)
    ctx = ctx_of(meta["dag_id"], meta["task_id"], meta["run_id"], meta["try_number"], meta["map_index"])
    start = now()
    summary = await ship_files(procs, loki3, tmp_path, run, ctx, stdout, stderr)
    ti = fake_ti(ctx, start, now())

    sources, lines = stream_lines(reader(loki3, run), ctx, ti)
    expected = text_lines(stdout) + text_lines(stderr)
    assert lines[:-1] == expected  # every record, unchanged, in order (tracebacks are error_detail records)
    last = json.loads(lines[-1])
    assert (last["logger"], last["level"], last["lines_read"], last["lines_sent"]) == (
        "shipper", "info", summary["lines_read"], summary["lines_sent"])
    assert last["event"].startswith("shipper: every line of this try was delivered: lines read ")
    assert any('| run_id="' in s and f'try_number="{ctx["try_number"]}"' in s for s in sources), sources
    # read() (the legacy interface) gives the same lines as one blob
    legacy_sources, blobs = reader(loki3, run).read(rel_path(ctx), ti)
    assert blobs is not None and blobs[0].split("\n") == lines


# -- Airflow 2: text, tracebacks whole ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["fail", "log_exception", "prints"])
async def test_an_airflow2_try_comes_back_as_its_text_tracebacks_whole(
        name: str, tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    stdout, stderr, meta = fixture("2.10.5", name)
    ctx = ctx_of(meta["dag_id"], meta["task_id"], meta["run_id"], meta["try_number"], meta["map_index"])
    start = now()
    await ship_files(procs, loki3, tmp_path, run, ctx, stdout, stderr)
    reading = read_try(lr.ReadConfig(url=loki3.url, tenant_id="default", selector={"test_run": run}),
                       lr.TryKey(ctx["dag_id"], ctx["task_id"], ctx["run_id"], int(ctx["try_number"])),
                       start_ns=int(start.timestamp() * 1e9), end_ns=time.time_ns(), running=False)
    items = list(reading.items())
    entries = [i[1] for i in items if i[0] == "line"]
    assert "\n".join(lr.airflow2_line(e) for e in entries) == stdout.decode().rstrip("\n")
    if name == "fail":  # the traceback is one entry: the line that starts it and every line of it
        tb = [e.line for e in entries if "Traceback (most recent call last)" in e.line]
        assert tb and all(t.count("\n") >= 5 for t in tb), tb
    assert items[-1][0] == "summary" and items[-1][1].level == "info"
    assert lr.airflow2_summary_line(items[-1][1], items[-1][2]).split(" ", 1)[1].startswith(
        "{shipper} INFO - shipper: every line of this try was delivered")


# -- tries and map indexes are apart ------------------------------------------------------------------


async def test_each_try_and_each_map_index_reads_only_its_own_lines(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    start = now()
    out0, _, m0 = fixture("3.3.2", "mapped-0")
    out1, _, m1 = fixture("3.3.2", "mapped-1")
    outf, _, mf = fixture("3.3.2", "fail")
    c0 = ctx_of(m0["dag_id"], "mapped", "run_a", 1, 0)
    c1 = ctx_of(m1["dag_id"], "mapped", "run_a", 1, 1)
    # try 1 and try 2 of `fail`, and try 1 of the same task in another run
    cf1 = ctx_of(mf["dag_id"], "fail", "run_a", 1)
    cf2 = ctx_of(mf["dag_id"], "fail", "run_a", 2)
    cfb = ctx_of(mf["dag_id"], "fail", "run_b", 1)
    marks = {"1": b'{"timestamp":"2026-12-01T08:20:00.000000Z","level":"info","event":"this is try 1"}\n',
             "2": b'{"timestamp":"2026-12-01T08:21:00.000000Z","level":"info","event":"this is try 2"}\n'}
    await asyncio.gather(
        ship_files(procs, loki3, tmp_path, run, c0, out0),
        ship_files(procs, loki3, tmp_path, run, c1, out1),
        ship_files(procs, loki3, tmp_path, run, cf1, outf + marks["1"]),
        ship_files(procs, loki3, tmp_path, run, cf2, outf + marks["2"]),
        ship_files(procs, loki3, tmp_path, run, cfb, b'{"timestamp":"2026-12-01T08:22:00Z","event":"run b"}\n'))
    end = now()
    io = reader(loki3, run)
    for ctx, out in ((c0, out0), (c1, out1)):
        _, lines = stream_lines(io, ctx, fake_ti(ctx, start, end))
        assert lines[:-1] == text_lines(out)
    for ctx, mark in ((cf1, "1"), (cf2, "2")):
        _, lines = stream_lines(io, ctx, fake_ti(ctx, start, end, state="failed" if mark == "1" else "success"))
        assert lines[:-1] == text_lines(outf + marks[mark])
        assert json.loads(lines[-1])["logger"] == "shipper"
    _, lines = stream_lines(io, cfb, fake_ti(cfb, start, end))
    assert [json.loads(x)["event"] for x in lines[:-1]] == ["run b"]


# -- a log bigger than a page, and bigger than Loki's own page limit -----------------------------------


async def test_a_log_bigger_than_the_page_limit_is_read_in_pages(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    ctx = ctx_of("big", "task", "r", 1)
    out = "".join(f'{{"timestamp":"2026-12-01T08:00:00.{i:06d}Z","level":"info","event":"line {i}"}}\n'
                  for i in range(12_000)).encode()
    err = "".join(f"stderr {i}\n" for i in range(3_000)).encode()
    start = now()
    await ship_files(procs, loki3, tmp_path, run, ctx, out, err)
    ti = fake_ti(ctx, start, now())
    # page_limit over the real Loki's max_entries_limit_per_query (500,000 in the servers' example)
    # is lowered to what Loki names; 1,000 gives 16 pages.
    for page_limit in (1000, 600_000):
        io = reader(loki3, run, page_limit=page_limit)
        reading = io._start(rel_path(ctx), ti)
        lines = [lr.airflow3_line(i[1]) for i in reading.items() if i[0] == "line"]
        assert [ln for ln in lines if ln.startswith('{"timestamp":"2026')] == text_lines(out)
        assert [json.loads(ln)["event"] for ln in lines if '"stderr ' in ln] == [f"stderr {i}" for i in range(3000)]
        assert reading._pager is not None
        if page_limit == 1000:
            assert reading._pager.pages >= 15
        else:
            assert reading._pager.limit == 500_000
    # and a cap on one read says where the rest is
    _, lines = stream_lines(reader(loki3, run, max_lines=100), ctx, ti)
    assert len(lines) == 101 and "more than 100 lines" in json.loads(lines[-1])["event"]


# -- a running try is streamed as it arrives ---------------------------------------------------------


async def test_a_running_try_is_streamed_and_each_poll_extends_the_last(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    ctx = ctx_of("live", "task", "r", 1)
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, pod_config(loki3, tmp_path, run, ctx, [(fifo, "stdout")]))
    await proc.wait_for_event("source_opened", path=str(fifo))
    start = now()
    io = reader(loki3, run, settle=0.3)
    ti = fake_ti(ctx, start, None, state="running")
    _, first = stream_lines(io, ctx, ti)
    assert first == []  # nothing printed yet: no line (a later poll would have to take it back)
    sources, _ = io.stream(rel_path(ctx), ti)
    assert any("no lines in Loki yet for this try" in s for s in sources), sources
    fd = open_fifo_writer(fifo)
    seen: list[list[str]] = []
    for batch in range(4):
        write_all(fd, "".join(f"batch {batch} line {i}\n" for i in range(50)).encode())
        deadline = time.monotonic() + 20
        while True:
            _, lines = stream_lines(io, ctx, ti)
            if len(lines) >= 50 * (batch + 1):
                break
            assert time.monotonic() < deadline, lines[-3:]
            await asyncio.sleep(0.2)
        seen.append(lines)
    for earlier, later in zip(seen, seen[1:]):
        assert later[:len(earlier)] == earlier  # what the UI showed stays; log_pos skips it
    assert not any(json.loads(x).get("logger") == "shipper" for x in seen[-1])  # no summary while running
    os.close(fd)
    assert await proc.wait() == 0
    ti_done = fake_ti(ctx, start, now())
    _, final = stream_lines(io, ctx, ti_done)
    assert [json.loads(x)["event"] for x in final[:-1]] == [f"batch {b} line {i}" for b in range(4) for i in range(50)]
    assert json.loads(final[-1])["logger"] == "shipper"


# -- failures a user can read ---------------------------------------------------------------------------


def test_loki_unreachable_is_said_in_the_log_and_the_sources() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = ctx_of("d", "t", "r", 1)
    io = LokiRemoteLogIO(lr.ReadConfig(url=f"http://127.0.0.1:{port}", timeout=2))
    sources, lines = stream_lines(io, ctx, fake_ti(ctx, now(), now()))
    record = json.loads(lines[0])
    assert len(lines) == 1 and record["level"] == "error"
    assert f"Loki at http://127.0.0.1:{port} is unreachable: ConnectionRefusedError" in record["event"]
    assert any("unreachable" in s for s in sources)


def test_401_without_a_tenant_is_explained(loki3: RealLoki) -> None:
    ctx = ctx_of("d", "t", "r", 1)
    io = LokiRemoteLogIO(lr.ReadConfig(url=loki3.url))  # auth is on: Loki wants X-Scope-OrgID
    _, lines = stream_lines(io, ctx, fake_ti(ctx, now(), now()))
    event = json.loads(lines[0])["event"]
    assert "401 Unauthorized" in event and "no tenant_id is configured" in event and "no org id" in event


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server answering every request 403, recording the headers it got."""
    got: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            got.append({k.lower(): v for k, v in self.headers.items()})
            body = b"access denied for tenant"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def test_403_is_explained_and_the_token_is_sent_but_never_shown(
        tmp_path: Path, refusing_server: tuple[str, list[dict[str, str]]]) -> None:
    url, got = refusing_server
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    ctx = ctx_of("d", "t", "r", 1)
    io = LokiRemoteLogIO(lr.ReadConfig(url=url, tenant_id="team-a", bearer_token_file=str(token)))
    sources, lines = stream_lines(io, ctx, fake_ti(ctx, now(), now()))
    event = json.loads(lines[0])["event"]
    assert "403 Forbidden" in event and "tenant 'team-a'" in event and "access denied for tenant" in event
    assert "s3cret" not in event and not any("s3cret" in s for s in sources)
    assert got and got[-1]["authorization"] == "Bearer s3cret-token" and got[-1]["x-scope-orgid"] == "team-a"


def test_a_try_with_no_lines(loki3: RealLoki) -> None:
    run = unique()
    ctx = ctx_of("nothing", "here", "r", 1)
    io = reader(loki3, run)
    _, lines = stream_lines(io, ctx, fake_ti(ctx, now(), now()))
    assert len(lines) == 1 and "no lines in Loki for this try" in json.loads(lines[0])["event"]
    sources, running = stream_lines(io, ctx, fake_ti(ctx, now(), None, state="running"))
    assert running == []


async def test_loki_2_without_structured_metadata_falls_back_to_labels_and_the_window(
        tmp_path: Path, loki27: RealLoki, procs: list[ShipperProcess]) -> None:
    run = unique()
    stdout, _, meta = fixture("3.3.2", "log_levels")
    ctx = ctx_of(meta["dag_id"], meta["task_id"], meta["run_id"], meta["try_number"])
    start = now()
    await ship_files(procs, loki27, tmp_path, run, ctx, stdout)
    ti = fake_ti(ctx, start, now())
    sources, lines = stream_lines(reader(loki27, run), ctx, ti)
    assert lines[:-1] == text_lines(stdout)
    assert json.loads(lines[-1])["logger"] == "shipper"
    assert any("Loki without structured metadata (2.x)" in s for s in sources), sources
    # told to use metadata on a Loki 2: no lines, and the message says why
    _, lines = stream_lines(reader(loki27, run, structured_metadata="on"), ctx, ti)
    assert len(lines) == 1 and "is structured metadata stored" in json.loads(lines[0])["event"]


# -- the sidecar never loads any of this -----------------------------------------------------------------


def test_the_sidecar_never_imports_shipper_airflow(tmp_path: Path) -> None:
    """A real run of the sidecar (console sink, a file source, end of input) and `--help`:
    `-X importtime` lists every module imported; none is shipper.airflow."""
    src = tmp_path / "in.log"
    src.write_text("one\ntwo\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[sink]\ntype = "console"\n[metrics]\nlisten = ""\n[[sources]]\npath = "{src}"\n'
                      'stream = "stdout"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [[sys.executable, "-X", "importtime", "-m", "shipper", "--help"],
            [sys.executable, "-X", "importtime", "-m", "shipper", "check-config", "--config", str(config)]]
    for cmd in runs:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "import time:" in line]
        assert any(m == "shipper" or m.startswith("shipper.") for m in imported), done.stderr[-2000:]
        assert not [m for m in imported if m.startswith("shipper.airflow")], cmd
    # and a real run that ships lines, probed from inside: sys.modules at exit
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.__stderr__.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
             "import runpy; sys.argv = ['shipper', '--config', sys.argv[1]]\n"
             "runpy.run_module('shipper', run_name='__main__')\n")
    proc = subprocess.Popen([sys.executable, "-c", probe, str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    modules = next(line for line in err.splitlines() if line.startswith("MODULES ")).split()[1:]
    assert "shipper.pipeline" in modules and "one" in out, (out, err[-2000:])
    assert not [m for m in modules if m.startswith("shipper.airflow")]


# -- a real Airflow reads the try through its own log reader ------------------------------------------
#
# The Airflow venvs are tools/airflow_fixtures.py's (`--workdir DIR` keeps DIR/venv-<version>):
# SHIPPER_TEST_AIRFLOW_VENVS=DIR, or SHIPPER_TEST_AIRFLOW3 / SHIPPER_TEST_AIRFLOW2 = a venv's python.

AIRFLOW_VERSIONS = {"3": "3.3.2", "2": "2.10.5"}

# The logging config modules of docs/airflow-ui.md, as the api-server / webserver import them.
LOGGING_MODULE = {
    "3": '''import os
from copy import deepcopy

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

from shipper.airflow.airflow3 import LokiRemoteLogIO

LOGGING_CONFIG = deepcopy(DEFAULT_LOGGING_CONFIG)
REMOTE_TASK_LOG = LokiRemoteLogIO.from_config_file(os.environ.get("SHIPPER_READ_CONFIG", "/etc/shipper/read.toml"))
''',
    "2": '''import os
from copy import deepcopy

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG

LOGGING_CONFIG = deepcopy(DEFAULT_LOGGING_CONFIG)
LOGGING_CONFIG["handlers"]["task"] = {
    "class": "shipper.airflow.airflow2.LokiTaskHandler",
    "formatter": "airflow",
    "base_log_folder": os.path.expanduser(BASE_LOG_FOLDER),
    "filters": ["mask_secrets"],
    "config_file": os.environ.get("SHIPPER_READ_CONFIG", "/etc/shipper/read.toml"),
}
''',
}

# Run in the Airflow venv after `dags trigger`: give each task instance the try the test shipped
# (times, state; `fail` has a try 1 in TaskInstanceHistory and a current try 2), then read every try
# through Airflow's TaskLogReader (what the UI's log endpoint calls) and print, per try, what it
# returned, and what Airflow makes of the pod's own output read as a local log file (the oracle).
PROBE = r'''
import json, sys
from datetime import datetime
import airflow
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.log.log_reader import TaskLogReader
major = int(airflow.__version__.split(".")[0])
if major >= 3:
    from airflow.utils.log.file_task_handler import _interleave_logs, _stream_lines_by_chunk
    from airflow.models.taskinstancehistory import TaskInstanceHistory
else:
    from airflow.utils.log.file_task_handler import _interleave_logs
    from airflow.models.taskinstancehistory import TaskInstanceHistory
plan = json.loads(open(sys.argv[1]).read())
ts = lambda s: datetime.fromisoformat(s)
out = []
with create_session() as session:
    for item in plan:
        ti = session.query(TaskInstance).filter_by(dag_id=item["dag_id"], task_id=item["task_id"],
                                                   run_id=item["run_id"], map_index=item["map_index"]).one()
        for t in item["tries"]:
            ti.try_number = t["try_number"]
            ti.state = t["state"]
            ti.start_date, ti.end_date = ts(t["start"]), ts(t["end"])
            session.merge(ti)
            session.flush()
            if t is not item["tries"][-1]:
                if major >= 3:
                    TaskInstanceHistory.record_ti(ti, session=session)
                else:
                    TaskInstanceHistory.record_ti(ti, session=session)
                session.flush()
    session.commit()
reader = TaskLogReader()
with create_session() as session:
    for item in plan:
        ti = session.query(TaskInstance).filter_by(dag_id=item["dag_id"], task_id=item["task_id"],
                                                   run_id=item["run_id"], map_index=item["map_index"]).one()
        for t in item["tries"]:
            if t["try_number"] != ti.try_number:
                ti_try = session.query(TaskInstanceHistory).filter_by(
                    dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index,
                    try_number=t["try_number"]).one()
            else:
                ti_try = ti
            if major >= 3:
                ti_arg = ti_try  # the log route passes the TI or TaskInstanceHistory of the try
                stream, meta = reader.read_log_chunks(ti_arg, t["try_number"], {})
                got = [m.model_dump(mode="json") for m in stream]
                oracle = [m.model_dump(mode="json") for m in
                          _interleave_logs(_stream_lines_by_chunk(open(t["stdout_file"], encoding="utf-8")))]
            else:
                logs, metas = reader.read_log_chunks(ti, t["try_number"], {})
                got, meta = logs[0][0][1], metas
                oracle = "\n".join(_interleave_logs(open(t["stdout_file"], encoding="utf-8").read()))
            out.append({"task_id": ti.task_id, "map_index": ti.map_index, "try_number": t["try_number"],
                        "got": got, "oracle": oracle, "end_of_log": meta.get("end_of_log")})
print("PROBE " + json.dumps(out))
'''


def airflow_python(major: str) -> str | None:
    explicit = os.environ.get(f"SHIPPER_TEST_AIRFLOW{major}")
    if explicit:
        return explicit
    venvs = os.environ.get("SHIPPER_TEST_AIRFLOW_VENVS")
    if venvs:
        py = Path(venvs) / f"venv-{AIRFLOW_VERSIONS[major]}" / "bin" / "python"
        if py.exists():
            return str(py)
    return None


def require_airflow(major: str) -> str:
    py = airflow_python(major)
    if py is None:
        # CI sets SHIPPER_REQUIRE_REAL_AIRFLOW=1 (.ci/run installs both): never a silent skip there.
        missing = pytest.fail if os.environ.get("SHIPPER_REQUIRE_REAL_AIRFLOW") == "1" else pytest.skip
        missing(f"no Airflow {AIRFLOW_VERSIONS[major]}: run `python tools/airflow_fixtures.py --workdir DIR` "
                    f"(it installs Airflow 2.10.5 and 3.3.2 in DIR/venv-<version>), then set "
                    f"SHIPPER_TEST_AIRFLOW_VENVS=DIR (or SHIPPER_TEST_AIRFLOW{major}=/path/to/venv/bin/python)")
    return py


def airflow_home(tmp: Path, major: str, py: str, loki: RealLoki, run: str, run_id: str) -> dict[str, str]:
    """An AIRFLOW_HOME (SQLite) with the fixture DAG triggered as `run_id`, our logging config module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("airflow_fixtures", REPO / "tools" / "airflow_fixtures.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    home = tmp / f"home-{major}"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / tool.DAG_FILE).write_text(tool.DAG_SOURCE)
    (home / "config").mkdir()
    (home / "config" / "loki_log_config.py").write_text(LOGGING_MODULE[major])
    read_toml = home / "read.toml"
    read_toml.write_text(f'[loki]\nurl = "{loki.push_url}"\ntenant_id = "default"\n[labels]\ntest_run = "{run}"\n')
    venv_bin = str(Path(py).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "PATH": f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}", "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "loki_log_config.LOGGING_CONFIG",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "PYTHONPATH": f"{home / 'config'}:{REPO}", "SHIPPER_READ_CONFIG": str(read_toml),
        "TZ": "UTC", "LANG": "C.UTF-8"})
    airflow = str(Path(venv_bin) / "airflow")
    for cmd in ([airflow, "db", "migrate"], [airflow, "dags", "reserialize"],
                [airflow, "dags", "trigger", tool.DAG_ID, "--run-id", run_id]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=home)
        assert done.returncode == 0, (cmd, done.stdout[-3000:], done.stderr[-3000:])
    return env


def run_probe(py: str, env: dict[str, str], plan: list[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
    (tmp / "plan.json").write_text(json.dumps(plan))
    (tmp / "probe.py").write_text(PROBE)
    done = subprocess.run([py, str(tmp / "probe.py"), str(tmp / "plan.json")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert done.returncode == 0 and line, (done.stdout[-3000:], done.stderr[-5000:])
    return json.loads(line[len("PROBE "):])


TASKS = [("log_exception", -1), ("fail", -1), ("prints", -1), ("mapped", 0), ("mapped", 1)]


async def ship_for_airflow(major: str, tmp: Path, loki: RealLoki, procs: list[ShipperProcess], run: str,
                           run_id: str) -> list[dict[str, Any]]:
    """Ship each fixture task's pod output as a try of `run_id`; `fail` twice (try 1 failed, try 2)."""
    version = AIRFLOW_VERSIONS[major]
    plan = []
    for task_id, map_index in TASKS:
        name = task_id + (f"-{map_index}" if map_index >= 0 else "")
        stdout, stderr, meta = fixture(version, name)
        tries = []
        for try_number in ((1, 2) if task_id == "fail" else (1,)):
            if task_id == "fail":  # each try its own last line (a second after the pod's last), to tell them apart
                last = max(datetime.fromisoformat(m[0].replace("Z", "+00:00")) for m in
                           (re.findall(r'^\{"timestamp":"([^"]+)"' if major == "3" else r"^\[([^\]]+)\]",
                                       line) for line in stdout.decode().splitlines()) if m)
                at = datetime.fromtimestamp(last.timestamp() + try_number, timezone.utc)
                marker = (f'{{"timestamp":"{at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}","level":"info",'
                          f'"event":"this is try {try_number}"}}\n' if major == "3" else
                          f"[{at.strftime('%Y-%m-%dT%H:%M:%S.')}{at.microsecond // 1000:03d}+0000] {{test.py:1}} "
                          f"INFO - this is try {try_number}\n")
                out = stdout + marker.encode()
            else:
                out = stdout
            f = tmp / f"{name}-{try_number}.stdout"
            f.write_bytes(out)
            start = now()
            await ship_files(procs, loki, tmp, run,
                             ctx_of(meta["dag_id"], task_id, run_id, try_number, map_index), out, stderr)
            tries.append({"try_number": try_number, "state": "failed" if (task_id, try_number) == ("fail", 1)
                          else "success", "start": start.isoformat(), "end": now().isoformat(),
                          "stdout_file": str(f)})
        plan.append({"dag_id": meta["dag_id"], "task_id": task_id, "run_id": run_id, "map_index": map_index,
                     "tries": tries})
    return plan


async def test_airflow3_log_reader_shows_each_try_from_loki_as_it_shows_the_pods_own_log(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    py = require_airflow("3")
    run, run_id = unique(), f"manual__loki_{unique()}"
    env = airflow_home(tmp_path, "3", py, loki3, run, run_id)
    plan = await ship_for_airflow("3", tmp_path, loki3, procs, run, run_id)
    results = run_probe(py, env, plan, tmp_path)
    assert len(results) == 6
    for r in results:
        got = r["got"]
        # Airflow's header: the source details group, naming Loki and the query
        end = next(i for i, m in enumerate(got) if m["event"] == "::endgroup::")
        assert got[0]["event"] == "::group::Log message source details"
        assert any("Loki http://127.0.0.1:" in m["event"] and f'try_number="{r["try_number"]}"' in m["event"]
                   for m in got[1:end]), got[:end + 1]
        body = got[end + 1:]
        assert body[:-1] == r["oracle"], (r["task_id"], r["map_index"], r["try_number"])
        assert body[-1]["logger"] == "shipper" and body[-1]["event"].startswith(
            "shipper: every line of this try was delivered"), body[-1]
        assert r["end_of_log"] is True
        if r["task_id"] == "fail":
            assert [m["event"] for m in body if m["event"].startswith("this is try")] == [
                f"this is try {r['try_number']}"]
        if r["task_id"] == "log_exception":  # the traceback, structured, whole
            exc = [m for m in body if m.get("error_detail")]
            assert exc and [d["exc_type"] for d in exc[0]["error_detail"]] == ["ValueError", "KeyError"]


async def test_airflow2_log_reader_shows_each_try_from_loki_as_it_shows_the_pods_own_log(
        tmp_path: Path, loki3: RealLoki, procs: list[ShipperProcess]) -> None:
    py = require_airflow("2")
    run, run_id = unique(), f"manual__loki_{unique()}"
    env = airflow_home(tmp_path, "2", py, loki3, run, run_id)
    plan = await ship_for_airflow("2", tmp_path, loki3, procs, run, run_id)
    results = run_probe(py, env, plan, tmp_path)
    assert len(results) == 6
    for r in results:
        text: str = r["got"]
        head, sep, body = text.partition(" INFO - ::endgroup::\n")
        assert sep and "Loki http://127.0.0.1:" in head and f'try_number="{r["try_number"]}"' in head, head
        lines = body.split("\n")
        assert "\n".join(lines[:-1]) == r["oracle"], (r["task_id"], r["map_index"], r["try_number"])
        assert " {shipper} INFO - shipper: every line of this try was delivered" in lines[-1]
        if r["task_id"] == "fail":
            assert [x for x in lines if x.endswith("- this is try 1") or x.endswith("- this is try 2")] == [
                x for x in lines if x.endswith(f"this is try {r['try_number']}")]
            assert "Traceback (most recent call last):" in body
