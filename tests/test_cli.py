"""The real CLI as a subprocess: `python -m shipper ...`, its exit codes and diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipper import __version__
from shipper.cli import USAGE
from shipper.config import Config, dump, parse

TOP_KEYS = "loki, sources, labels, sink, airflow, metrics, shutdown_timeout, max_line_bytes, buffer_max_bytes, when_full, spool_dir, spool_max_bytes, checkpoint_file, file_poll_interval, stop_file, level_labels, exec_diagnostics"
NO_ANNOTATIONS = '[airflow]\nannotations_file = "/nonexistent/annotations"\n'


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def records(self) -> list[dict[str, Any]]:
        """stderr, one JSON object per line (every diagnostic is JSON)."""
        return [json.loads(line) for line in self.stderr.splitlines()]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The records of the event `name` (docs/diagnostics.md)."""
        return [r for r in self.records if r.get("event") == name]


def shipper(*args: str, config: str | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPPER_", "AIRFLOW_CTX_"))}
    if config is not None:
        env["SHIPPER_CONFIG"] = config
    done = subprocess.run([sys.executable, "-m", "shipper", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def source_config(path: str | Path) -> str:
    return NO_ANNOTATIONS + f"[[sources]]\npath = {json.dumps(str(path))}\nstream = \"stdout\"\n"


def refusal(run: Run) -> str:
    """The error of the single 'refusing to start' record; asserts nothing was started."""
    assert run.code == 2, run
    assert run.stdout == ""
    (record,) = run.events("refusing_to_start")
    assert record["level"] == "error"
    return str(record["error"])


# --- check-config, --version, usage ----------------------------------------------

def test_check_config_prints_the_effective_defaults() -> None:
    run = shipper("check-config")
    assert run.code == 0
    assert run.stderr == ""
    assert run.stdout == "# effective configuration (from defaults)\n" + dump(Config())
    assert parse(run.stdout) == Config()


def test_check_config_from_the_environment() -> None:
    run = shipper("check-config", config="shutdown_timeout = 3\n[labels]\ncluster = \"prod\"\n")
    assert run.code == 0
    assert run.stdout.startswith("# effective configuration (from env SHIPPER_CONFIG)\n")
    assert parse(run.stdout) == Config(shutdown_timeout=3.0, labels={"cluster": "prod"})


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_check_config_from_a_file_wins_over_the_environment(tmp_path: Path, form: str) -> None:
    path = tmp_path / "shipper.toml"
    path.write_text("shutdown_timeout = 4\n")
    args = ["--config", str(path)] if form == "separate" else [f"--config={path}"]
    run = shipper(*args, "check-config", config="shutdown_timeout = 9\n")
    assert run.code == 0
    assert run.stdout.startswith(f"# effective configuration (from {path})\n")
    assert parse(run.stdout).shutdown_timeout == 4.0


def test_version() -> None:
    run = shipper("--version")
    assert (run.code, run.stdout, run.stderr) == (0, f"shipper {__version__}\n", "")
    assert __version__ == "0.1.0"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag: str) -> None:
    run = shipper(flag)
    assert (run.code, run.stdout, run.stderr) == (0, USAGE, "")


@pytest.mark.parametrize(("args", "message"), [
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["start"], "unknown argument 'start'"),
    (["check-config", "extra"], "unknown argument 'extra'"),
    (["--config"], "--config needs a PATH"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    run = shipper(*args)
    assert (run.code, run.stdout, run.stderr) == (2, "", f"shipper: {message}\n{USAGE}")


# --- configuration refused: exit 2, nothing started ---------------------------------

@pytest.mark.parametrize("command", [[], ["run"], ["check-config"]])
def test_unknown_key_exits_2_naming_the_key(command: list[str]) -> None:
    run = shipper(*command, config="bogus = 1\n")
    assert refusal(run) == f"unknown key bogus (known keys in top level: {TOP_KEYS})"
    assert run.records == [{"level": "error", "event": "refusing_to_start", "msg": "refusing to start",
                            "error": f"unknown key bogus (known keys in top level: {TOP_KEYS})"}]
    assert run.events("starting") == []


def test_unknown_key_in_a_table_is_named() -> None:
    run = shipper(config="[loki]\nbatchwait = 1\n")
    assert refusal(run).startswith("unknown key loki.batchwait (known keys in loki: ")
    assert run.events("starting") == []


def test_missing_config_file_exits_2_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    run = shipper("--config", str(path))
    assert refusal(run).startswith(f"cannot read config file {path}: ")
    assert run.events("starting") == []


# --- source paths refused --------------------------------------------------------------

def test_dev_null_source_exits_2() -> None:
    run = shipper(config=source_config("/dev/null"))
    error = refusal(run)
    assert error.startswith("source /dev/null resolves to /dev/null: nothing will ever be read from it.")
    assert run.events("starting") == []


def test_symlink_to_dev_null_exits_2(tmp_path: Path) -> None:
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")
    error = refusal(shipper(config=source_config(link)))
    assert error.startswith(f"source {link} resolves to /dev/null")


@pytest.mark.parametrize(("path", "fd"), [("/proc/self/fd/1", 1), ("/proc/self/fd/2", 2),
                                           ("/proc/thread-self/fd/1", 1), ("/dev/stdout", 1)])
def test_the_shippers_own_output_as_source_exits_2(path: str, fd: int) -> None:
    run = shipper(config=source_config(path))
    error = refusal(run)
    assert error.startswith(f"source {path} is the shipper's own fd {fd}: ")
    assert "/proc/1 inside the sidecar is the sidecar itself, not the task" in error
    assert run.events("starting") == []


def test_a_directory_as_source_exits_2(tmp_path: Path) -> None:
    run = shipper(config=source_config(tmp_path))
    assert refusal(run) == f"source {tmp_path} is a directory; give a file, FIFO or pipe path"
    assert run.events("exit") == []


# Regression (was a strict xfail): an OverflowError escaped config.py _convert(), so the CLI died
# with a traceback and exit 1 instead of exit 2 with a JSON error naming the key.
def test_a_number_too_large_for_a_float_exits_2() -> None:
    run = shipper("check-config", config="shutdown_timeout = 1" + "0" * 400 + "\n")
    assert refusal(run).startswith("shutdown_timeout: ")


@pytest.mark.parametrize("text", ["max_line_bytes = 1" + "0" * 5000, "x = " + "[" * 3000 + "]" * 3000,
                                  "max_line_bytes = 0x" + "f" * 4000])
def test_toml_that_python_cannot_convert_exits_2(text: str) -> None:
    # tomllib's plain ValueError (over 4300 digits) and RecursionError, and an integer
    # with too many digits for str(), are refusals like any other, not tracebacks.
    assert refusal(shipper("check-config", config=text + "\n"))
