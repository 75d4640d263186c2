"""Smoke runs of the benchmark harness (benchmarks/run.py), so it never rots.

A few seconds each, through the documented command. They assert that every
line arrived and that the results have the documented shape, never a timing
or a footprint: those are what the full run measures, on a quiet machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUN_FIELDS = {"workload", "target", "command", "startup", "window", "exit_code", "lines_written", "entries_expected",
              "lines_delivered", "other_entries", "dedup_dropped", "refused_entries", "requests",
              "total_cpu_s", "peak_rss_mib", "max_rss_anon_mib", "latency_s", "lines_per_cpu_s",
              "exit_record", "checks"}
WINDOW_FIELDS = {"seconds", "cpu_s", "cpu_ticks_s", "user_s", "sys_s", "millicores", "writing_seconds",
                 "all_delivered_in_window"}


def run_harness(tmp_path: Path, *args: str) -> dict[str, Any]:
    out, markdown = tmp_path / "results.json", tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--duration", "1", "--bulk-lines", "3000",
         "--out", str(out), "--markdown", str(markdown), *args],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"harness failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    results: dict[str, Any] = json.loads(out.read_text())
    assert markdown.read_text() == done.stdout
    return results


def check_run(run: dict[str, Any]) -> None:
    assert "error" not in run, run["error"]
    assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
    assert WINDOW_FIELDS <= set(run["window"])
    assert run["lines_written"] > 0
    assert run["entries_expected"] > 0
    assert run["lines_delivered"] == run["entries_expected"]
    assert run["dedup_dropped"] == 0 and run["refused_entries"] == 0
    assert run["exit_code"] == 0
    assert run["peak_rss_mib"] > 0 and run["window"]["cpu_s"] >= 0
    assert [c for c in run["checks"] if c["what"] == "delivery" and not c["ok"]] == []


def test_paced_fifo_and_bulk_file(tmp_path: Path) -> None:
    results = run_harness(tmp_path, "--workloads", "paced-fifo-100,bulk-file")
    assert {"cores", "cpu_model", "harness_python", "shipper_python"} <= set(results["machine"])
    assert [w["name"] for w in results["workloads"]] == ["paced-fifo-100", "bulk-file"]
    paced, bulk = (w["runs"]["shipper"] for w in results["workloads"])
    for run in (paced, bulk):
        check_run(run)
    assert paced["lines_written"] == 100
    assert paced["latency_s"]["count"] == 100 and set(paced["latency_s"]) == {"count", "p50", "p99", "max"}
    assert bulk["lines_written"] == 3000 and bulk["lines_per_cpu_s"] > 0
    assert {c["what"] for c in paced["checks"]} == {"delivery", "memory", "latency"}
    assert {c["what"] for c in bulk["checks"]} == {"delivery", "memory", "throughput"}


def test_peer_template_with_the_shipper_as_peer(tmp_path: Path) -> None:
    """The --peer code path: placeholders rendered, same workload, ratios printed."""
    results = run_harness(
        tmp_path, "--workloads", "paced-file-1000", "--peer", "{python} -m shipper --config {config}",
        "--peer-config", str(REPO / "benchmarks" / "shipper.toml"), "--peer-name", "again")
    (workload,) = results["workloads"]
    assert set(workload["runs"]) == {"shipper", "again"}
    for run in workload["runs"].values():
        check_run(run)
    assert "--config" in workload["runs"]["again"]["command"]
    assert "{" not in workload["runs"]["again"]["command"]  # every placeholder was filled
    assert "### Ratios shipper / again" in (tmp_path / "results.md").read_text()


def test_cri_and_exec_workloads(tmp_path: Path) -> None:
    """Issue 7's workloads: entries counted after joining, and `shipper exec` with the writer as its child."""
    results = run_harness(tmp_path, "--workloads", "paced-cri-1000,paced-exec-1000")
    cri, exec_ = (w["runs"]["shipper"] for w in results["workloads"])
    for run in (cri, exec_):
        check_run(run)
        assert run["other_entries"] <= 1  # nothing shipped unparsed or unjoined
    # 1,000 lines: in each 50, a P chunk and the F line after it make one entry.
    assert (cri["lines_written"], cri["entries_expected"]) == (1000, 980)
    assert cri["latency_s"]["count"] == 980
    assert " exec -- " in exec_["command"] and "benchmarks.writer -" in exec_["command"]
    assert exec_["lines_written"] == exec_["entries_expected"] == 1000
    assert exec_["passthrough_bytes"] == exec_["bytes_written"] == 120_000
    assert exec_["scrapes"]["ok"] >= 1  # its metrics port, which exec mode does not log, was found


def test_tiny_burst_counts_unstamped_lines_as_stored_entries(tmp_path: Path) -> None:
    """burst-tiny-fifo (issue 15's memory worst case): one-byte lines carry no stamp, so every
    stored entry counts, and the one stored past them is the shipper's exit summary."""
    results = run_harness(tmp_path, "--workloads", "burst-tiny-fifo")
    (workload,) = results["workloads"]
    run = workload["runs"]["shipper"]
    check_run(run)
    assert (run["lines_written"], run["entries_expected"], run["lines_delivered"]) == (3000, 3000, 3000)
    assert run["other_entries"] == 1 and run["latency_s"] is None
    assert {c["what"] for c in run["checks"]} == {"delivery", "memory"}


def test_airflow3_records_raw_are_a_raw_workload(tmp_path: Path) -> None:
    """paced-airflow3-raw-1000: the Airflow 3 records through a raw source, each shipped whole,
    held to raw lines' targets (no processing target: nothing is processed)."""
    results = run_harness(tmp_path, "--workloads", "paced-airflow3-raw-1000")
    (workload,) = results["workloads"]
    run = workload["runs"]["shipper"]
    check_run(run)
    assert run["lines_written"] == run["entries_expected"] == run["lines_delivered"] == 1000
    assert [c["target"] for c in run["checks"] if c["what"] == "cpu"] == ["<= 5 millicores"]


def test_inprocess_runs_every_content_through_the_real_path() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.inprocess", "--lines", "2000"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["airflow2", "cri", "json", "multiline", "airflow3"]
    assert all(line.endswith(" us/line") for line in done.stdout.splitlines())


def test_push_cost_pushes_through_the_receiver_and_prints_its_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.push_cost", "--pushes", "20"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert " us of CPU per push (20 pushes of 5 lines; " in done.stdout


def test_relative_targets_of_issue_15() -> None:
    """Processed workloads against raw lines and Fluent Bit measured in the same run (pure)."""
    from benchmarks.checks import relative_checks
    from benchmarks.workloads import build_workloads
    wls = build_workloads(False, None, None)

    def run(millicores: float) -> dict[str, Any]:
        return {"window": {"millicores": millicores}}

    def verdicts(name: str, mc: float, raw: float | None, fluent_bit: float | None = None) -> list[tuple[str, bool]]:
        return [(c.measured, c.ok) for c in relative_checks(wls[name], run(mc), None if raw is None else run(raw),
                                                            None if fluent_bit is None else run(fluent_bit))]

    assert verdicts("paced-json-1000", 3.0, 2.0) == [("3.00 millicores (paced-file-1000: 2.00)", True)]
    assert verdicts("paced-cri-1000", 3.01, 2.0) == [("3.01 millicores (paced-file-1000: 2.00)", False)]
    assert verdicts("paced-multiline-1000", 2.5, 2.0, fluent_bit=20.0) == [
        ("2.50 millicores (paced-file-1000: 2.00)", True), ("2.50 / 20.00 millicores = 0.12", True)]
    assert verdicts("paced-airflow3-1000", 4.5, 3.6, fluent_bit=20.0) == [
        ("4.50 millicores (paced-file-1000: 3.60)", True), ("4.50 / 20.00 millicores = 0.23", False)]
    assert verdicts("paced-json-1000", 3.0, None) == [("paced-file-1000 not measured in this run", False)]
    assert verdicts("paced-file-1000", 3.0, 3.0) == [] and verdicts("paced-exec-1000", 3.0, 3.0) == []
