"""The built-in peers of `benchmarks.run --peer` (benchmarks/peers): configs, lookup, the ratio table.

The pure parts are checked exactly: each peer's config for each workload
content (parsed back as YAML), the binary lookup and its errors, which
workloads a peer does not run and why, and the ratio table with its n/a
cells. Then, if the servers folder has them, Promtail 2.7.7 and Fluent Bit
4.2.8 themselves tail a file through the rendered config into the test
receiver: every line once, in order. Without the binaries that test skips,
naming SHIPPER_SERVERS_DIR, unless SHIPPER_REQUIRE_REAL_LOKI=1 (CI, see
tests/real_loki.py): then it fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks import run
from benchmarks.lines import CONTENTS, entries, make_content, make_lines
from benchmarks.peers import (FLUENT_BIT, PEERS, PROMTAIL, RAW_TAIL, SERVERS_ENV, TEMPLATE_DEFAULTS,
                              PeersNotFound, Processing, find_binary, render)
from benchmarks.report import peer_table
from benchmarks.workloads import build_workloads
from tests.loki_receiver import LokiReceiver

VALUES = {"push_url": "http://127.0.0.1:3100/loki/api/v1/push", "loki_url": "http://127.0.0.1:3100",
          "push_host": "127.0.0.1", "push_port": "3100", "source_path": "/w/source.log", "stream": "stdout",
          "workdir": "/w", "batch_wait": "0.5"}
AIRFLOW2_START = r"^\[\d{4}-\d\d-\d\d[T ]\d\d:\d\d"
OUR_PLACEHOLDERS = re.compile(r"\{(" + "|".join([*VALUES, *TEMPLATE_DEFAULTS, "config"]) + r")\}")


def promtail_stages(content: str) -> Any:
    config = yaml.safe_load(PROMTAIL.render_config(content, VALUES))
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["localhost"], "labels": {
        "job": "bench", "stream": "stdout", "__path__": "/w/source.log"}}]
    assert config["clients"] == [{"url": VALUES["push_url"], "batchwait": "500ms", "batchsize": 1048576}]
    return job["pipeline_stages"]


def fluent_bit(content: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(FLUENT_BIT.render_config(content, VALUES))
    assert config["service"] == {"flush": 0.5, "grace": 1, "log_level": "warn", "http_server": False}
    return config


# -- configs per peer per content ---------------------------------------------------------------------

@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
@pytest.mark.parametrize("content", CONTENTS)
def test_every_content_renders_a_complete_config(peer: Any, content: str) -> None:
    text = peer.render_config(content, VALUES)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))  # usage comments name {config}
    assert OUR_PLACEHOLDERS.search(body) is None, text
    assert isinstance(yaml.safe_load(text), dict)
    assert not peer.processing_for(content).raw  # both peers process every content


def test_promtail_stages_per_content() -> None:
    assert promtail_stages("airflow2") == []
    assert promtail_stages("cri") == [{"cri": {}}]
    assert promtail_stages("json") == [
        {"json": {"expressions": {"event": "event", "timestamp": "timestamp"}}},
        {"timestamp": {"source": "timestamp", "format": "RFC3339Nano"}},
        {"output": {"source": "event"}}]
    assert promtail_stages("multiline") == [{"multiline": {"firstline": AIRFLOW2_START, "max_wait_time": "1s"}}]
    assert promtail_stages("airflow3") == [{"multiline": {"firstline": r"^\{", "max_wait_time": "1s"}}]


def test_fluent_bit_raw_lines() -> None:
    config = fluent_bit("airflow2")
    assert set(config) == {"service", "pipeline"}  # no parsers
    assert config["pipeline"] == {
        "inputs": [{"name": "tail", "path": "/w/source.log", "db": "/w/tail.db", "read_from_head": True,
                    "refresh_interval": 1}],
        "outputs": [{"name": "loki", "match": "*", "host": "127.0.0.1", "port": 3100,
                     "labels": "job=bench, stream=stdout", "drop_single_key": "raw"}]}


def test_fluent_bit_cri_and_json() -> None:
    cri = fluent_bit("cri")["pipeline"]
    assert cri["inputs"][0]["multiline.parser"] == "cri"
    assert cri["outputs"][0]["remove_keys"] == "time, stream, _p"
    config = fluent_bit("json")
    assert config["parsers"] == [{"name": "airflow3_json", "format": "json", "time_key": "timestamp",
                                  "time_format": "%Y-%m-%dT%H:%M:%S.%LZ"}]
    assert config["pipeline"]["inputs"][0]["parser"] == "airflow3_json"
    output = config["pipeline"]["outputs"][0]
    assert (output["structured_metadata"], output["remove_keys"]) == (
        "logger=$logger", "timestamp, level, logger, filename, lineno")  # the line is `event`


@pytest.mark.parametrize(("content", "name", "start", "level_regex"), [
    ("multiline", "airflow2", AIRFLOW2_START, r"^\[[^\]]*\] \{[^}]*\} (?<level>[A-Z]+) - "),
    ("airflow3", "airflow3", r"^\{", r'"level":"(?<level>[a-z]+)"'),
])
def test_fluent_bit_multiline_and_level(content: str, name: str, start: str, level_regex: str) -> None:
    config = fluent_bit(content)
    assert config["multiline_parsers"] == [{"name": name, "type": "regex", "flush_timeout": 1000, "rules": [
        {"state": "start_state", "regex": f"/{start}/", "next_state": "cont"},
        {"state": "cont", "regex": f"/^(?!{start[1:]})/", "next_state": "cont"}]}]
    assert config["parsers"] == [{"name": f"{name}_level", "format": "regex", "regex": level_regex}]
    pipeline = config["pipeline"]
    assert pipeline["inputs"][0]["multiline.parser"] == name
    assert pipeline["filters"] == [{"name": "parser", "match": "*", "key_name": "log", "parser": f"{name}_level",
                                    "reserve_data": True, "preserve_key": True}]
    output = pipeline["outputs"][0]
    assert (output["structured_metadata"], output["remove_keys"]) == ("level=$level", "level")


@pytest.mark.parametrize("content", ["multiline", "airflow3"])
def test_the_entry_start_rules_split_the_workload_into_its_entries(content: str) -> None:
    """Promtail's firstline and Fluent Bit's start state find exactly the entries the shipper makes."""
    lines = make_content(content, 0, 300, time.time_ns()).decode().splitlines()
    (stage,) = promtail_stages(content)
    start = re.compile(stage["multiline"]["firstline"])
    assert sum(1 for line in lines if start.search(line)) == entries(content, 0, 300)
    cont = re.compile(fluent_bit(content)["multiline_parsers"][0]["rules"][1]["regex"].strip("/"))
    assert all(bool(cont.search(line)) != bool(start.search(line)) for line in lines)


def test_a_content_without_processing_is_a_raw_tail() -> None:
    peer = PROMTAIL.__class__(**{**PROMTAIL.__dict__, "processing": {}})
    assert peer.processing_for("cri") == Processing(RAW_TAIL, raw=True)
    assert peer.values_for("cri") == {"pipeline_stages": "[]"}


def test_template_placeholders_are_filled_as_a_raw_tail() -> None:
    """--peer TEMPLATE --peer-config benchmarks/peers/fluent-bit.yaml still renders a valid config."""
    text = render(FLUENT_BIT.config_path.read_text(), {**VALUES, **TEMPLATE_DEFAULTS})
    assert yaml.safe_load(text)["pipeline"] == yaml.safe_load(FLUENT_BIT.render_config("airflow2", VALUES))["pipeline"]


# -- which workloads, the binaries, the command line ----------------------------------------------------------

def test_peers_run_file_workloads_only_and_say_why_not_the_others() -> None:
    workloads = build_workloads(True, None, None)
    target = run.peer_target(PROMTAIL, "/bin/promtail")
    assert target.argv == ["/bin/promtail", "-config.file={config}"] and target.config_suffix == ".yaml"
    reasons = {name: target.not_run_reason(wl) for name, wl in workloads.items()}
    assert reasons["idle-fifo"] == reasons["burst-fifo"] == "Promtail tails regular files only: it reads no FIFO"
    assert reasons["paced-exec-1000"] == ("exec mode is the shipper's own: it starts the task as its child and "
                                          "reads its stdout pipe; a peer has no such mode")
    assert {n for n, r in reasons.items() if r is None} == {n for n, w in workloads.items() if w.source == "file"}
    fb = run.peer_target(FLUENT_BIT, "/bin/fluent-bit")
    assert fb.argv == ["/bin/fluent-bit", "-c", "{config}"]
    assert fb.not_run_reason(workloads["paced-fifo-1000"]) == "Fluent Bit's tail input reads regular files only: no FIFO"
    assert fb.processing["cri"] == FLUENT_BIT.processing["cri"].note
    assert fb.content_values["cri"] == {**FLUENT_BIT.defaults, **FLUENT_BIT.processing["cri"].values}


def test_peer_argument_alone_template_or_absent() -> None:
    assert run.parse_args(["--peer", "--workloads", "idle-file"]).peer == run.BUILTIN_PEERS
    assert run.parse_args(["--peer", "vector --config {config}"]).peer == "vector --config {config}"
    assert run.parse_args([]).peer is None


def fake_servers(tmp_path: Path, script: str, binaries: tuple[str, ...] = ("promtail-2.7.7",)) -> Path:
    folder = tmp_path / "servers"
    folder.mkdir()
    (folder / "unpack").write_text("#!/bin/sh\n" + script)
    (folder / "unpack").chmod(0o755)
    for name in binaries:
        (folder / f"{name}.xz").write_bytes(b"")
    return folder


def test_binary_lookup_prefers_the_env_folder(tmp_path: Path) -> None:
    folder = fake_servers(tmp_path, f'echo "{tmp_path}/bin/$1"\n')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "promtail-2.7.7").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "promtail-2.7.7").chmod(0o755)
    assert find_binary("promtail-2.7.7", {SERVERS_ENV: str(folder)}) == f"{tmp_path}/bin/promtail-2.7.7"


def test_binary_lookup_errors_name_the_env_variable(tmp_path: Path) -> None:
    with pytest.raises(PeersNotFound) as e:
        find_binary("promtail-2.7.7", {SERVERS_ENV: str(tmp_path / "nowhere")}, defaults=(str(tmp_path / "nope"),))
    assert str(e.value) == (f"--peer needs the servers folder with unpack and promtail-2.7.7.xz: none found "
                            f"(looked in ${SERVERS_ENV}={tmp_path / 'nowhere'}, {tmp_path / 'nope'}); "
                            f"set {SERVERS_ENV} to it")
    folder = fake_servers(tmp_path, "echo unpack: broken >&2; exit 1\n")
    with pytest.raises(PeersNotFound) as e:
        find_binary("fluent-bit-4.2.8", {SERVERS_ENV: str(folder)}, defaults=())
    assert str(e.value) == (f"--peer needs fluent-bit-4.2.8.xz in the servers folder {folder} (from {SERVERS_ENV} "
                            "or the default places); it is not there")
    with pytest.raises(PeersNotFound) as e:
        find_binary("promtail-2.7.7", {SERVERS_ENV: str(folder)}, defaults=())
    assert str(e.value) == (f"{folder}/unpack promtail-2.7.7 failed (exit 1): unpack: broken "
                            f"(servers folder from {SERVERS_ENV} or the default places)")


def test_peer_without_binaries_exits_with_the_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SERVERS_ENV, str(tmp_path))
    monkeypatch.setattr(run, "DEFAULT_SERVERS_DIRS", ())
    monkeypatch.setattr(run.builtin_peer_targets, "__defaults__", (os.environ, ()))
    with pytest.raises(SystemExit) as e:
        run.main(["--peer", "--workloads", "idle-file", "--out", str(tmp_path / "r.json"),
                  "--markdown", str(tmp_path / "r.md")])
    assert str(e.value).startswith("--peer: --peer needs the servers folder with unpack and promtail-2.7.7.xz: "
                                   f"none found (looked in ${SERVERS_ENV}={tmp_path}); set {SERVERS_ENV} to it")
    assert not (tmp_path / "r.json").exists()


# -- the ratio table -------------------------------------------------------------------------------------------

def result(millicores: float | None, rss: float, processing: str = "", delivered: bool = True) -> dict[str, Any]:
    return {"window": {"millicores": millicores}, "peak_rss_mib": rss, "processing": processing,
            "checks": [{"what": "delivery", "ok": delivered, "measured": "9 / 10, refused 0"},
                       {"what": "memory", "ok": False, "measured": "64 MiB"}]}


def test_ratio_table_with_na_cells_errors_and_losses() -> None:
    results = {"workloads": [
        {"name": "paced-file-1000", "not_run": {},
         "runs": {"shipper": result(5.0, 20.0), "promtail": result(50.0, 64.0, "raw lines"),
                  "fluent-bit": result(25.0, 10.0, "raw tail (no processing)")}},
        {"name": "paced-fifo-1000", "not_run": {"promtail": "reads no FIFO", "fluent-bit": "no FIFO either"},
         "runs": {"shipper": result(4.0, 19.0)}},
        {"name": "paced-cri-1000", "not_run": {},
         "runs": {"shipper": result(8.0, 20.0), "promtail": {"error": "RuntimeError: exited | 1", "checks": []},
                  "fluent-bit": result(30.0, 11.0, "cri parser", delivered=False)}},
        {"name": "paced-exec-1000", "not_run": {}, "runs": {}},  # the shipper did not run: no row
    ]}
    assert peer_table(results, "shipper", ["promtail", "fluent-bit"]) == [
        "### Peers side by side (same run, minutes apart; ratios peer / shipper)",
        "",
        "| workload | shipper millicores | shipper peak RSS MiB | promtail millicores | promtail peak RSS MiB "
        "| fluent-bit millicores | fluent-bit peak RSS MiB | CPU promtail / shipper | RSS promtail / shipper "
        "| CPU fluent-bit / shipper | RSS fluent-bit / shipper | what each peer did |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| paced-file-1000 | 5.00 | 20.0 | 50.00 | 64.0 | 25.00 | 10.0 | 10.00 | 3.20 | 5.00 | 0.50 "
        "| promtail: raw lines; fluent-bit: raw tail (no processing) |",
        "| paced-fifo-1000 | 4.00 | 19.0 | n/a: reads no FIFO | n/a | n/a: no FIFO either | n/a | n/a | n/a | n/a | n/a "
        "| - |",
        "| paced-cri-1000 | 8.00 | 20.0 | error: RuntimeError: exited / 1 | - "
        "| 30.00 (**delivery FAIL**: 9 / 10, refused 0) | 11.0 | - | - | - | - | fluent-bit: cri parser |",
    ]


# -- the real peers, if the servers folder has them ---------------------------------------------------------

def real_binary(peer: Any) -> str:
    try:
        return find_binary(peer.binary)
    except PeersNotFound as e:
        if os.environ.get("SHIPPER_REQUIRE_REAL_LOKI") == "1":
            pytest.fail(f"SHIPPER_REQUIRE_REAL_LOKI=1 but {e}")
        pytest.skip(f"no {peer.binary}: set {SERVERS_ENV} to a folder with unpack and {peer.binary}.xz ({e})")


@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
async def test_real_peer_ships_every_line_once_in_order(peer: Any, tmp_path: Path) -> None:
    """The peer on the benchmark's rendered config tails a file: 600 lines in 6 appends, each once, in order."""
    binary = real_binary(peer)
    rx = LokiReceiver()
    await rx.start()
    source = tmp_path / "source.log"
    source.touch()
    base = rx.url.split("/loki/", 1)[0]
    values = {**VALUES, "push_url": rx.url, "loki_url": base, "push_port": base.rsplit(":", 1)[1],
              "source_path": str(source), "workdir": str(tmp_path)}
    config = tmp_path / ("target" + peer.config_path.suffix)
    config.write_text(peer.render_config("airflow2", values))
    values["config"] = str(config)
    with open(tmp_path / "peer.err", "wb") as err:
        proc = subprocess.Popen([binary, *(render(a, values) for a in peer.argv)], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        written: list[str] = []
        for first in range(0, 600, 100):
            data = make_lines(first, 100, time.time_ns())
            with open(source, "ab") as f:
                f.write(data)
            written += data.decode().splitlines()
            await asyncio.sleep(0.2)
        await rx.wait_for_entries(600, timeout=20)
        await asyncio.sleep(1.0)  # anything sent twice would arrive by now
        (stream,) = rx.streams().items()
        labels, stored = stream
        assert {("job", "bench"), ("stream", "stdout")} <= set(labels)
        assert [e.line for e in stored] == written  # every line once, in the order written
        assert rx.dedup_dropped == 0 and rx.refused_entries == 0
        assert all(r.status == 204 for r in rx.requests)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        await rx.stop()
    assert code == 0, (tmp_path / "peer.err").read_text()[-2000:]
