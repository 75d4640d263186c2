"""Bad-input suite (issue 5, item 4): hostile bytes, labels, context and configs.

End to end with the real shipper process and the strict receiver (which
decodes with the protobuf library and parses label strings like Loki), plus
hypothesis fuzzing where the existing unit tests stop.

Already covered elsewhere, not repeated here:
- a 1 MiB ASCII line, invalid UTF-8, NUL bytes, ``\\r\\n``, quotes/backslash/emoji
  in a line, through a FIFO: tests/test_lifecycle.py::test_bad_input_lines_are_cleaned_and_counted;
- no trailing newline at EOF of a FIFO: tests/test_sources.py::test_fifo_opened_before_any_writer_waits_for_one;
- label escaping and clean_value as properties: tests/test_labels.py (test_property_*);
  the encoder against protobuf: tests/test_encoder.py (test_property_*);
- config refusals as unit tests (every message): tests/test_config.py; unknown
  top-level and [loki] keys, a missing config file and numbers/nesting TOML
  cannot convert, through the CLI: tests/test_cli.py;
- fuzz of the config parser (random text, TOML-ish fragments, random nested
  tables): tests/test_config.py::test_fuzz_*; the line splitter in any
  chunking against a reference at small limits:
  tests/test_framing.py::test_property_any_bytes_give_the_reference_result_in_any_chunking.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import Config, ConfigError, load
from shipper.framing import LineSplitter
from tests.conftest import launch, make_config, open_fifo_writer
from tests.loki_receiver import LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_framing import reference as framing_reference
from tests.test_sources import write_all

MAX_LINE = 256 * 1024  # the default max_line_bytes (Loki's max_line_size)
CHUNK = 64 * 1024  # shipper.sources.CHUNK: one read() of a regular file
NO_ANNOTATIONS = 'annotations_file = "/nonexistent/annotations"'


# --- helpers ---------------------------------------------------------------------------

def reference(data: bytes, limit: int = MAX_LINE) -> tuple[list[str], int, int]:
    """What the shipper must make of `data`: (lines, cuts, lines with invalid UTF-8).

    The line splitter's reference model (tests/test_framing.py), as text.
    """
    result = framing_reference(data, limit)
    return [line.decode() for line in result.lines], result.split_lines, result.invalid_utf8_lines


async def ship(tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], data: bytes,
               kind: str, **config: Any) -> ShipperProcess:
    """Ship `data` from a regular file or a FIFO; returns the exited process (exit 0 asserted)."""
    limit = int(config.get("max_line_bytes", MAX_LINE))
    expected, _, _ = reference(data, limit)
    if kind == "file":
        path = tmp_path / "task.log"
        path.write_bytes(data)
        proc = await launch(procs, make_config(receiver.url, [(path, "stdout")], **config))
        # A file is followed, never at its end: an unterminated last line waits for shutdown.
        tail = data.rsplit(b"\n", 1)[-1]
        terminated = len(expected) - len(reference(tail, limit)[0])
        await receiver.wait_for_entries(terminated, stream="stdout")
        proc.signal(signal.SIGTERM)
    else:
        path = tmp_path / "stdout"
        os.mkfifo(path)
        proc = await launch(procs, make_config(receiver.url, [(path, "stdout")], **config))
        await proc.wait_for_event("source_opened", path=str(path))
        fd = open_fifo_writer(path)
        await asyncio.to_thread(write_all, fd, data)
        os.close(fd)
    assert await proc.wait() == 0
    return proc


def check_delivery(receiver: LokiReceiver, proc: ShipperProcess, data: bytes, limit: int = MAX_LINE) -> None:
    expected, cuts, invalid = reference(data, limit)
    assert receiver.lines(stream="stdout") == expected
    assert receiver.refused_entries == 0 and receiver.dedup_dropped == 0
    summary = proc.summary()
    assert (summary["lines_sent"], summary["lines_split"], summary["lines_invalid_utf8"]) == (
        len(expected), cuts, invalid)
    assert set(summary["dropped"].values()) == {0}


# --- bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "fifo"])
async def test_one_mib_line_of_multibyte_characters_is_cut_on_character_boundaries(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], kind: str) -> None:
    # 1, 2, 3 and 4-byte characters: 256 KiB cuts land inside characters.
    unit = "aé€😀"  # 10 bytes
    line = (unit * (1024 * 1024 // 10 + 1)).encode()
    data = b"before\n" + line + b"\nafter\n"
    proc = await ship(tmp_path, receiver, procs, data, kind)
    check_delivery(receiver, proc, data)
    got = receiver.lines(stream="stdout")
    assert len(got) == 2 + 5 and "".join(got[1:-1]).encode() == line
    assert all(len(piece.encode()) <= MAX_LINE for piece in got)


def awkward_bytes() -> bytes:
    """Hostile bytes, some placed exactly across the shipper's 64 KiB read boundaries."""
    out = bytearray(b"plain line\n")

    def pad_to(offset: int) -> None:
        # A filler line ending just before `offset`.
        room = offset - len(out) - 1
        assert room > 10
        out.extend(b"f" * room + b"\n")

    pad_to(CHUNK - 1)
    out.extend(b"\r\n")  # CR is the chunk's last byte, LF the next chunk's first
    pad_to(2 * CHUNK - 2)
    out.extend("😀 straddles a read\n".encode())  # a 4-byte character across the boundary
    pad_to(3 * CHUNK - 1)
    out.extend(b"\xff\xfe invalid across a read\n")
    out.extend(b"\x00\x00\x00\n")  # only NULs
    out.extend(b"nul \x00 inside\n")
    out.extend(b"\n\n")  # empty lines
    out.extend(b"lone \r carriage return\n")
    out.extend(b"two CRs\r\r\n")  # only the one before the LF goes
    out.extend(b"cut short \xe2\x82\n")  # an incomplete 3-byte character
    out.extend(b"surrogate \xed\xa0\x80 overlong \xc0\xaf\n")
    out.extend("bidi \u202e and zero width \u200b and BOM \ufeff\n".encode())
    out.extend(b"\x1b[31mANSI colour\x1b[0m\n")
    out.extend(b"no trailing newline\r")  # EOF: the last line, its CR dropped
    return bytes(out)


@pytest.mark.parametrize("kind", ["file", "fifo"])
async def test_awkward_bytes_across_read_boundaries(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], kind: str) -> None:
    data = awkward_bytes()
    proc = await ship(tmp_path, receiver, procs, data, kind)
    check_delivery(receiver, proc, data)
    got = receiver.lines(stream="stdout")
    assert got[-1] == "no trailing newline"
    assert "😀 straddles a read" in got and "\x00\x00\x00" in got and "two CRs\r" in got


async def test_unterminated_line_in_a_file_waits_for_its_newline(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # A task printing "progress..." then "done\n" later: one line, not two.
    log = tmp_path / "task.log"
    log.write_bytes(b"first\nprogress...")
    proc = await launch(procs, make_config(receiver.url, [(log, "stdout")]))
    await receiver.wait_for_entries(1, stream="stdout")
    await asyncio.sleep(0.5)  # several batch_wait and file_poll_interval periods
    assert receiver.lines(stream="stdout") == ["first"]
    with open(log, "ab") as f:
        f.write(b" done\n")
    await receiver.wait_for_entries(2, stream="stdout")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["first", "progress... done"]


async def test_100000_line_burst_through_a_fifo(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    lines = [f"burst {i:06d}" for i in range(100_000)]
    data = "".join(line + "\n" for line in lines).encode()
    proc = await ship(tmp_path, receiver, procs, data, "fifo")  # default buffer and when_full
    check_delivery(receiver, proc, data)
    entries = receiver.entries(stream="stdout")
    assert all(a.ts_ns < b.ts_ns for a, b in zip(entries, entries[1:]))
    assert proc.summary()["lines_read"] == 100_000


@pytest.mark.parametrize("seed", [2, 10, 11])  # seeds whose data has lines cut at the limit
async def test_a_binary_file_as_source(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], seed: int) -> None:
    # Someone points a source at a core dump or a tarball: every byte value,
    # long runs without a newline (some lines pass max_line_bytes once their
    # invalid bytes become 3-byte U+FFFD). Everything that arrives must be valid
    # UTF-8 within the limits (the receiver refuses anything else).
    data = random.Random(seed).randbytes(1024 * 1024) + b"\n"
    proc = await ship(tmp_path, receiver, procs, data, "file", max_line_bytes=4096,
                      loki={"batch_max_bytes": 65536}, buffer_max_bytes=262144)
    check_delivery(receiver, proc, data, limit=4096)


# --- labels and the Airflow context ---------------------------------------------------------

def toml_string(s: str) -> str:
    """A TOML basic string (JSON's escapes, plus DEL, which TOML wants escaped)."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def with_labels(config: str, labels: dict[str, str]) -> str:
    """`config` with a [labels] table written here (make_config's JSON escapes emoji as surrogates)."""
    table = "[labels]\n" + "".join(f"{k} = {toml_string(v)}\n" for k, v in labels.items())
    head, sep, tail = config.partition("[[sources]]")
    return head + table + sep + tail


def with_airflow(config: str, **keys: str) -> str:
    """`config` with these [airflow] keys instead of the test's missing annotations file."""
    assert NO_ANNOTATIONS in config
    return config.replace(NO_ANNOTATIONS, "".join(f"{k} = {toml_string(v)}\n" for k, v in keys.items()).rstrip())


async def labelled_run(tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], config_of: Any,
                       env: dict[str, str]) -> tuple[ShipperProcess, dict[str, str], tuple[tuple[str, str], ...]]:
    """Ship two lines; returns (process, the task stream's labels, its entries' metadata)."""
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await launch(procs, config_of(make_config(receiver.url, [(fifo, "stdout")])), env=env)
    await proc.wait_for_event("source_opened", path=str(fifo))
    fd = open_fifo_writer(fifo)
    write_all(fd, b"one\ntwo\n")
    os.close(fd)
    assert await proc.wait() == 0
    assert receiver.refused_entries == 0
    streams = receiver.streams()
    (task_key,) = [k for k in streams if ("stream", "stdout") in k]
    (summary_key,) = [k for k in streams if ("job", "shipper") in k]
    task_labels = dict(task_key)
    # The exit summary's stream carries the same task labels, service_name "shipper" (the task's: "airflow").
    assert task_labels["service_name"] == "airflow"
    assert dict(summary_key) == {**{k: v for k, v in task_labels.items() if k != "stream"}, "job": "shipper",
                                 "service_name": "shipper"}
    entries = streams[task_key]
    assert [e.line for e in entries] == ["one", "two"]
    assert entries[0].metadata == entries[1].metadata
    return proc, task_labels, entries[0].metadata


HOSTILE_STATIC = {
    "quote": 'say "hi"',
    "backslash": "C:\\temp\\new\\",
    "newline": "two\nlines\r\n",
    "emoji": "🚀 ünïcödé ✓ 日本",
    "control": "tab\there bell\x07 del\x7f esc\x1b",
    "replacement": "\ufffd",
    "braces": '{a="b"}, c=`d`',
    "separators": "\u2028\u2029\u0085",
}


async def test_hostile_label_values_arrive_exactly(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    env = {
        "AIRFLOW_CTX_DAG_ID": 'dag "quoted" \\ back',
        "AIRFLOW_CTX_TASK_ID": "task\nwith newline 🎉",
        "AIRFLOW_CTX_DAG_RUN_ID": 'manual__"q"\\\n😀',
        "AIRFLOW_CTX_TRY_NUMBER": "1",
        "AIRFLOW_CTX_MAP_INDEX": "-1",
        "AIRFLOW_CTX_EXECUTION_DATE": "2026-01-01T00:00:00+00:00",  # the older name, still read
    }
    _, labels, metadata = await labelled_run(
        tmp_path, receiver, procs, lambda c: with_labels(c, HOSTILE_STATIC), env)
    assert labels == {**HOSTILE_STATIC, "dag_id": 'dag "quoted" \\ back', "task_id": "task\nwith newline 🎉",
                      "stream": "stdout", "service_name": "airflow"}
    assert metadata == (("logical_date", "2026-01-01T00:00:00+00:00"), ("map_index", "-1"),
                        ("run_id", 'manual__"q"\\\n😀'), ("try_number", "1"))


async def test_10000_character_values_are_cut_to_lokis_2048_byte_limit(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # shipper.labels.clean_value: at most 2048 UTF-8 bytes, cut on a character
    # boundary (Loki refuses the whole stream above max_label_value_length).
    env = {
        "AIRFLOW_CTX_DAG_ID": "a" + "😀" * 9_999,  # 10,000 characters, 39,997 bytes
        "AIRFLOW_CTX_TASK_ID": "t" * 10_000,
        "AIRFLOW_CTX_DAG_RUN_ID": "r" * 10_000,  # structured metadata
    }
    _, labels, metadata = await labelled_run(
        tmp_path, receiver, procs, lambda c: with_labels(c, {"note": "é" * 10_000}), env)
    assert labels == {"dag_id": "a" + "😀" * 511, "task_id": "t" * 2048, "note": "é" * 1024, "stream": "stdout", "service_name": "airflow"}
    assert len(labels["dag_id"].encode()) == 2045  # the next emoji would not fit
    assert metadata == (("run_id", "r" * 2048),)


async def test_no_airflow_context_at_all(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    proc, labels, metadata = await labelled_run(tmp_path, receiver, procs, lambda c: c, {})
    assert labels == {"dag_id": "unknown", "task_id": "unknown", "stream": "stdout", "service_name": "airflow"}
    assert metadata == ()
    assert proc.events("starting")[0]["context_keys"] == []


async def test_partial_airflow_context_dag_id_only(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    env = {"AIRFLOW_CTX_DAG_ID": "etl", "AIRFLOW_CTX_TASK_ID": "", "AIRFLOW_CTX_TRY_NUMBER": ""}
    proc, labels, metadata = await labelled_run(
        tmp_path, receiver, procs, lambda c: with_airflow(c, annotations_file="/nonexistent", missing="n/a"), env)
    assert labels == {"dag_id": "etl", "task_id": "n/a", "stream": "stdout", "service_name": "airflow"}
    assert metadata == ()
    assert proc.events("starting")[0]["context_keys"] == ["dag_id"]


async def test_partial_context_completed_from_the_annotations_file(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    annotations = tmp_path / "annotations"
    annotations.write_text('dag_id="from annotations"\ntask_id="load \\"x\\" \\u00e9"\nrun_id="r\\n1"\n'
                           'kubernetes.io/config.seen="2026-01-01"\nbroken line\n')
    # The environment wins where it has a value; a value that is not UTF-8
    # (PEP 383 surrogate in os.environ) becomes U+FFFD.
    env = {"AIRFLOW_CTX_DAG_ID": "env \udcff dag"}
    _, labels, metadata = await labelled_run(
        tmp_path, receiver, procs, lambda c: with_airflow(c, annotations_file=str(annotations)), env)
    assert labels == {"dag_id": "env \ufffd dag", "task_id": 'load "x" é', "stream": "stdout", "service_name": "airflow"}
    assert metadata == (("run_id", "r\n1"),)


# --- configuration refused: exit 2, a JSON error naming the problem, nothing started ---------------

def replaced(old: str, new: str) -> Any:
    def change(config: str) -> str:
        assert old in config
        return config.replace(old, new, 1)
    return change


def rebuilt(**settings: Any) -> Any:
    """A config made again with these make_config settings (url and sources kept)."""
    return settings


# (id, how the good config is spoiled, the start of the error message)
CONFIG_REFUSALS: list[tuple[str, Any, str]] = [
    # wrong types
    ("number-as-string", replaced("batch_wait = 0.1", 'batch_wait = "0.1"'),
     "loki.batch_wait: expected a number, got a string"),
    ("bool-for-number", rebuilt(shutdown_timeout=True), "shutdown_timeout: expected a number, got a boolean"),
    ("float-for-integer", rebuilt(max_line_bytes=2048.0), "max_line_bytes: expected an integer, got a number"),
    ("integer-label", replaced("[metrics]", "[labels]\nteam = 7\n[metrics]"),
     "labels.team: expected a string, got an integer"),
    ("integer-stream", replaced('stream = "stdout"', "stream = 1"),
     "sources[0].stream: expected a string, got an integer"),
    ("table-for-url", replaced("[loki]\nurl = ", "[loki]\nurl = {}\ntenant_id = "), "loki.url: expected a string, got a table"),
    # negative, zero and non-finite durations
    ("negative-shutdown-timeout", rebuilt(shutdown_timeout=-1.0),
     "shutdown_timeout: must be a positive finite number of seconds, got -1.0"),
    ("negative-request-timeout", rebuilt(loki={"timeout": -5.0}),
     "loki.timeout: must be a positive finite number of seconds, got -5.0"),
    ("zero-batch-wait", rebuilt(loki={"batch_wait": 0.0}),
     "loki.batch_wait: must be a positive finite number of seconds, got 0.0"),
    ("negative-poll", rebuilt(file_poll_interval=-0.05),
     "file_poll_interval: must be a positive finite number of seconds, got -0.05"),
    ("nan-backoff", rebuilt(loki={"max_backoff": float("nan")}),
     "loki.max_backoff: must be a positive finite number of seconds, got nan"),
    # bad URLs (each still points at the receiver: accepted, it would be pushed to)
    ("url-with-query", "query", "loki.url: must not carry a query or fragment: "),
    ("url-ftp", "ftp", "loki.url: scheme must be http or https, got "),
    ("url-credentials", "credentials", "loki.url: must not carry credentials (use a token file): "),
    ("url-no-scheme", "no-scheme", "loki.url: "),
    ("url-port-0", "port-0", "loki.url: port must be 1-65535 in "),
    # unknown keys below the top level and [loki] (those: tests/test_cli.py)
    ("unknown-source-key", replaced('stream = "stdout"', 'stream = "stdout"\nfollow = true'),
     "unknown key sources[0].follow "),
    ("unknown-metrics-key", replaced("[metrics]", "[metrics]\nport = 9337"), "unknown key metrics.port "),
    # bad values
    ("when-full", rebuilt(when_full="drop_newest"), 'when_full: must be "drop_oldest" or "block"'),
    ("spool-smaller-than-a-batch", rebuilt(spool_dir="/tmp/never-created-spool", spool_max_bytes=1000),
     "spool_max_bytes: must be at least loki.batch_max_bytes"),
    ("metrics-listen", rebuilt(metrics={"listen": "everywhere"}), "metrics.listen: expected host:port"),
    ("too-many-labels", replaced("[metrics]", "[labels]\n" + "".join(f'l{i} = "v"\n' for i in range(13)) + "[metrics]"),
     "labels: Loki accepts at most 15 labels per stream"),
    # not TOML
    ("unclosed-table", lambda c: c + "[loki\n", "SHIPPER_CONFIG is not valid TOML: "),
    ("table-twice", lambda c: c + "[loki]\n", "SHIPPER_CONFIG is not valid TOML: "),
    ("byte-order-mark", lambda c: "\ufeff" + c, "SHIPPER_CONFIG is not valid TOML: "),
    ("unterminated-string", replaced('stream = "stdout"', 'stream = "stdout'), "SHIPPER_CONFIG is not valid TOML: "),
]


def spoil_url(url: str, how: str) -> str:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    return {
        "query": url + "?tenant=a",
        "ftp": url.replace("http://", "ftp://"),
        "credentials": url.replace("http://", "http://user:pw@"),
        "no-scheme": url.replace("http://", ""),
        "port-0": url.replace(host_port, "127.0.0.1:0"),
    }[how]


async def assert_refused(proc: ShipperProcess, receiver: LokiReceiver, message: str) -> str:
    """Exit 2 with one JSON error starting with `message`; nothing started, nothing sent."""
    assert await proc.wait() == 2
    assert [r["event"] for r in proc.records] == ["refusing_to_start"]
    (record,) = proc.records
    assert record["level"] == "error" and record["error"].startswith(message), record
    assert proc.stdout_lines == []
    assert receiver.requests == []
    return str(record["error"])


@pytest.mark.parametrize(("spoil", "message"), [c[1:] for c in CONFIG_REFUSALS], ids=[c[0] for c in CONFIG_REFUSALS])
async def test_bad_config_exits_2_and_starts_nothing(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], spoil: Any, message: str) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"a line that must not be shipped\n")
    sources = [(log, "stdout")]
    if isinstance(spoil, dict):
        config = make_config(receiver.url, sources, **spoil)
    elif isinstance(spoil, str):
        config = make_config(spoil_url(receiver.url, spoil), sources)
    else:
        config = spoil(make_config(receiver.url, sources))
    proc = await launch(procs, config)
    await assert_refused(proc, receiver, message)


@pytest.mark.parametrize("kind", ["directory", "not-utf-8", "mode-000"])
async def test_unreadable_config_file_exits_2_and_starts_nothing(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], kind: str) -> None:
    # (A missing file: tests/test_cli.py::test_missing_config_file_exits_2_naming_the_path.)
    log = tmp_path / "task.log"
    log.write_bytes(b"a line that must not be shipped\n")
    good = make_config(receiver.url, [(log, "stdout")])
    path = tmp_path / "shipper.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf-8":
        path.write_bytes(good.replace("[metrics]", '[labels]\nteam = "caf\xe9"\n[metrics]').encode("latin-1"))
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a mode 000 file anyway (the directory case covers an unreadable path)")
        path.write_text(good)
        path.chmod(0)
    # The file is named, so it wins over the good SHIPPER_CONFIG in the environment.
    proc = await launch(procs, good, "--config", str(path))
    await assert_refused(proc, receiver, f"cannot read config file {path}: ")


@pytest.mark.parametrize("kind", ["checkpoint-not-json", "checkpoint-malformed", "checkpoint-is-a-directory",
                                  "spool-dir-is-a-file"])
async def test_unusable_checkpoint_or_spool_exits_2_and_ships_nothing(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], kind: str) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"a line that must not be shipped\n")
    state = tmp_path / "state"
    settings: dict[str, Any] = {"checkpoint_file": str(state)}
    if kind == "checkpoint-not-json":
        state.write_bytes(b"\x00garbage{")
        message = f"checkpoint {state}: cannot read it: "
    elif kind == "checkpoint-malformed":
        state.write_text('{"version": 1, "files": [{"path": "x"}]}')
        message = f"checkpoint {state}: malformed "
    elif kind == "checkpoint-is-a-directory":
        state.mkdir()
        message = f"checkpoint {state}: cannot read it: "
    else:
        state.write_text("a file where the spool directory should be")
        settings = {"spool_dir": str(state)}
        message = f"spool_dir {state}: "
    proc = await launch(procs, make_config(receiver.url, [(log, "stdout")], **settings))
    assert await proc.wait() == 2
    (record,) = proc.events("refusing_to_start")
    assert record["error"].startswith(message), record
    # Refused before "starting", before any source is opened, any endpoint bound or any push made.
    assert [r["event"] for r in proc.records] == ["refusing_to_start"]
    assert receiver.requests == []


async def test_unreadable_spool_files_are_set_aside_and_the_rest_replayed(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    # A spool left by an earlier run, damaged: each bad file is named in the
    # log and renamed *.corrupt; the run goes on (nothing else to replay here).
    # (The same at unit level: tests/test_spool.py.)
    spool = tmp_path / "spool"
    spool.mkdir()
    bad = {
        "000000000001.batch": b"not json\n\x00\x01",
        "000000000002.batch": b'{"lines": 1}\n',  # header without its keys
        "000000000003.batch": b'{"lines": null, "line_bytes": 1, "marks": []}\n',
        "000000000004.batch": b'{"lines": 1, "line_bytes": 1, "marks": [["p", "x", 1, 2]]}\n',
        "not-a-number.batch": b'{"lines": 1, "line_bytes": 1, "marks": []}\n',
        "000000000005.batch": b"",
    }
    for name, content in bad.items():
        (spool / name).write_bytes(content)
    (spool / "000000000006.batch.tmp").write_bytes(b"half-written")  # a write cut short: removed
    log = tmp_path / "task.log"
    log.write_bytes(b"fresh line\n")
    proc = await launch(procs, make_config(receiver.url, [(log, "stdout")], spool_dir=str(spool)))
    await receiver.wait_for_entries(1, stream="stdout")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert receiver.lines(stream="stdout") == ["fresh line"]
    set_aside = sorted(r["path"] for r in proc.events("spool_file_set_aside"))
    assert set_aside == sorted(str(spool / name) + ".corrupt" for name in bad)
    assert sorted(p.name for p in spool.iterdir()) == sorted([name + ".corrupt" for name in bad] + ["checkpoint.json"])


async def test_checkpoint_file_in_a_missing_directory_is_refused_or_works(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess]) -> None:
    log = tmp_path / "task.log"
    log.write_bytes(b"one line\n")
    checkpoint = tmp_path / "no such directory" / "checkpoint.json"
    proc = await launch(procs, make_config(receiver.url, [(log, "stdout")], checkpoint_file=str(checkpoint)))
    try:
        code: int | None = await asyncio.wait_for(asyncio.shield(proc.proc.wait()), 2.0)
    except TimeoutError:
        code = None
    if code is not None:  # refused: the whole problem named, nothing shipped
        assert code == 2
        (record,) = proc.events("refusing_to_start")
        assert "checkpoint_file" in record["error"] and str(checkpoint.parent) in record["error"]
        assert receiver.requests == []
        return
    # Accepted: then the checkpoint must really be kept.
    await receiver.wait_for_entries(1, stream="stdout")
    deadline = asyncio.get_running_loop().time() + 3.0
    while not checkpoint.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert proc.events("checkpoint_write_failed") == []
    assert json.loads(checkpoint.read_bytes())["files"][0]["offset"] == len(b"one line\n")


# --- fuzz ---------------------------------------------------------------------------------

config_bytes_st = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.lists(st.sampled_from([b"[loki]\n", b"[[sources]]\n", b'path = "/a"\n', b'stream = "s"\n', b"\xff",
                              b"\xef\xbb\xbf", b"url = 'http://x/'\n", b"timeout = -1\n", b"\x00", b"\r\n",
                              b"batch_wait = 1e999\n", b"= \n", b'"\\ud800" = 1\n', b"a.b.c = 1\n"]),
             max_size=12).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(config_bytes_st)
def test_fuzz_config_file_bytes_give_a_config_or_config_error(raw: bytes) -> None:
    # tests/test_config.py fuzzes parse(text); this goes through load(path=...),
    # where the bytes need not even be UTF-8.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "shipper.toml")
        with open(path, "wb") as f:
            f.write(raw)
        try:
            config, origin = load(path=path, env={})
        except ConfigError as e:
            assert str(e)
        else:
            assert isinstance(config, Config) and origin == path


long_line_pieces_st = st.lists(
    st.one_of(
        st.text(max_size=3000).map(str.encode),  # long lines at a realistic limit
        st.binary(max_size=20),
        st.sampled_from([b"\n", b"\r\n", b"\r", b"\xff", b"\xe2\x82", "😀".encode(), "😀".encode()[:3], b"\x00"]),
    ),
    max_size=20,
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(st.data(), long_line_pieces_st)
def test_fuzz_line_splitter_random_chunks_give_the_same_lines_as_one_feed(data: st.DataObject, raw: bytes) -> None:
    # At max_line_bytes = 1024 (the smallest allowed) with lines of up to
    # ~12 KB, so long lines are shipped in pieces while their chunks arrive;
    # tests/test_framing.py does the same at 4-12 byte limits.
    limit = 1024
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    bounds = [0, *cuts, len(raw)]
    chunks = [raw[a:b] for a, b in zip(bounds, bounds[1:])]

    def feed(parts: list[bytes]) -> tuple[list[bytes], int, int]:
        splitter = LineSplitter(limit)
        lines = [line for part in parts for line in splitter.feed(part)] + splitter.flush()
        return lines, splitter.split_lines, splitter.invalid_utf8_lines

    whole = feed([raw])
    assert feed(chunks) == whole
    lines, cuts_counted, invalid = whole
    expected = reference(raw, limit)
    assert ([line.decode("utf-8") for line in lines], cuts_counted, invalid) == expected
    assert all(len(line) <= limit for line in lines)
