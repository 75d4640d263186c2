"""Partial acceptance against a real Loki: what it stores is what the shipper counts, each line once.

Each test runs the real shipper on real files into a tenant of
tests/real_loki.py whose limits the task exceeds, waits for the shipper's
exit, and reads back everything Loki stored: every line exactly once, in
order, and the shipper's `lines_sent` / `dropped` equal to what Loki holds.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import launch
from tests.real_loki import RealLoki, any_loki, loki3, loki27, real_lokis  # noqa: F401  (fixtures)
from tests.shipper_process import ShipperProcess
from tests.test_real_loki import (config_for, exit_summary, summary_in_loki, task_rows, unique,
                                   wait_for_lines)


def numbered(prefix: str, n: int) -> list[str]:
    # Lines of varying length ("... 7" vs "... 70000"): a per-entry limiter then
    # refuses a scattered set, not a suffix, which is the hard case.
    return [f"{prefix} line {i} of the task's output" for i in range(n)]


async def run_to_exit(proc: ShipperProcess, loki: RealLoki, run: str, tenant: str) -> int:
    # Signal handlers exist once the shipper runs its pipeline: Loki holding a
    # first line says it does (an external server: polled, see wait_for_lines).
    await wait_for_lines(loki, f'{{test_run="{run}"}}', tenant, 1)
    proc.signal(signal.SIGTERM)  # read every source to its end, deliver, exit
    return await proc.wait()


def assert_exactly_once(loki: RealLoki, run: str, tenant: str, expected: dict[str, list[str]]) -> None:
    rows = task_rows(loki, run, tenant)
    got: dict[str, list[str]] = {name: [] for name in expected}
    for labels, _, line, _ in rows:
        got[labels["stream"]].append(line)
    for name, lines in expected.items():
        assert len(got[name]) == len(lines), (name, len(got[name]), len(lines))
        assert got[name] == lines  # every line once, in order


async def test_100000_lines_through_a_per_stream_limit_arrive_exactly_once(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Loki 2.7 refuses entry by entry, Loki 3.4 a stream's push whole: neither loses or duplicates."""
    loki, run, tenant = any_loki, unique(), "stream-limited-fast"
    out = tmp_path / "stdout.log"
    lines = numbered("out", 100_000)
    out.write_text("\n".join(lines) + "\n")
    proc = await launch(procs, config_for(loki, tmp_path, run, [(out, "stdout")], tenant=tenant,
                                          shutdown_timeout=300.0))
    assert await run_to_exit(proc, loki, run, tenant) == 0
    assert_exactly_once(loki, run, tenant, {"stdout": lines})
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"]) == (100_000, 100_000)
    assert set(summary["dropped"].values()) == {0}
    assert summary["retries"] > 0  # the limit was exceeded: Loki refused, the shipper resent
    assert summary_in_loki(loki, run, tenant)[1] == exit_summary(proc)


async def test_stdout_and_stderr_over_their_limit_lose_nothing_to_a_204(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Two streams of one task, each over the per-stream limit: Loki answers a push for its
    last stream only, so a push holding both would have lost the first one's refused entries."""
    loki, run, tenant = any_loki, unique(), "stream-limited-fast"
    files = {name: tmp_path / f"{name}.log" for name in ("stdout", "stderr")}
    expected = {name: numbered(name, 30_000) for name in files}
    for name, path in files.items():
        path.write_text("\n".join(expected[name]) + "\n")
    proc = await launch(procs, config_for(loki, tmp_path, run, [(p, n) for n, p in files.items()],
                                          tenant=tenant, shutdown_timeout=300.0))
    assert await run_to_exit(proc, loki, run, tenant) == 0
    assert_exactly_once(loki, run, tenant, expected)
    summary = proc.summary()
    assert (summary["lines_read"], summary["lines_sent"]) == (60_000, 60_000)
    assert set(summary["dropped"].values()) == {0}


async def test_a_batch_bigger_than_the_tenants_burst_is_split_until_it_passes(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Tenant `burst-limited` (1 MB burst): a 3 MB batch is refused whole forever unless split."""
    loki, run, tenant = any_loki, unique(), "burst-limited"
    out = tmp_path / "stdout.log"
    lines = [f"{i:06d} " + "x" * 140 for i in range(20_000)]
    out.write_text("\n".join(lines) + "\n")
    proc = await launch(procs, config_for(loki, tmp_path, run, [(out, "stdout")], tenant=tenant,
                                          shutdown_timeout=120.0, buffer_max_bytes=16 * 1024 * 1024)
                        .replace("[loki]\n", "[loki]\nbatch_max_bytes = 4194304\n", 1))
    assert await run_to_exit(proc, loki, run, tenant) == 0
    assert_exactly_once(loki, run, tenant, {"stdout": lines})
    summary = proc.summary()
    assert (summary["lines_sent"], sum(summary["dropped"].values())) == (20_000, 0)


async def test_lines_over_max_line_size_are_counted_exactly(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Tenant `line-limited` (1 KB): 10 long lines among 1,000 in one push; Loki stores 990."""
    loki, run, tenant = any_loki, unique(), "line-limited"
    out = tmp_path / "stdout.log"
    lines = [("y" * 2000 if i % 100 == 50 else f"short {i}") for i in range(1000)]
    out.write_text("\n".join(lines) + "\n")
    proc = await launch(procs, config_for(loki, tmp_path, run, [(out, "stdout")], tenant=tenant))
    assert await run_to_exit(proc, loki, run, tenant) == 0
    kept = [line for line in lines if len(line) <= 1024]
    assert_exactly_once(loki, run, tenant, {"stdout": kept})
    summary = proc.summary()
    assert (summary["lines_sent"], summary["dropped"]["rejected"]) == (990, 10)
    assert summary_in_loki(loki, run, tenant)[1] == exit_summary(proc)


async def test_a_record_stamped_2099_does_not_poison_the_rest_of_its_stream(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """An Airflow 3 JSON record stamped 2099: it gets its read time (its own kept as
    `original_timestamp`), and every later record keeps its own time and is stored."""
    import json
    import time as _time

    loki, run, tenant = any_loki, unique(), "default"
    out = tmp_path / "stdout.log"
    now = int(_time.time())

    def record(t: str, event: str) -> str:
        return json.dumps({"timestamp": t, "level": "info", "event": event, "logger": "task"})

    def iso(seconds: int, ms: int) -> str:
        return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds)) + f".{ms:03d}000Z"

    records = [record(iso(now - 60, 0), "before"), record("2099-01-01T00:00:00.000000Z", "from the future")]
    records += [record(iso(now - 30 + i // 1000, i % 1000), f"after {i}") for i in range(500)]
    out.write_text("\n".join(records) + "\n")
    config = config_for(loki, tmp_path, run, [(out, "stdout")], tenant=tenant)
    config = config.replace('stream = "stdout"', 'stream = "stdout"\nformat = "json"')
    proc = await launch(procs, config)
    assert await run_to_exit(proc, loki, run, tenant) == 0
    rows = task_rows(loki, run, tenant)
    assert [line for _, _, line, _ in rows] == ["before", "from the future", *(f"after {i}" for i in range(500))]
    # In the order written, stamps strictly increasing, none carried toward 2099 (Loki took them all).
    stamps = [ts for _, ts, _, _ in rows]
    assert stamps == sorted(set(stamps)) and stamps[-1] < (now + 600) * 10**9
    if loki.version.startswith("3."):
        meta = {line: m for _, _, line, m in rows}
        assert meta["from the future"]["original_timestamp"] == "2099-01-01T00:00:00Z"
    summary = proc.summary()
    assert (summary["lines_sent"], sum(summary["dropped"].values())) == (502, 0)
    assert summary["timestamps_replaced"] == {"too_old": 0, "too_new": 1}


def json_records(events_at: list[tuple[int, str]]) -> str:
    import json
    import time as _time
    return "".join(json.dumps({"timestamp": _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(t)) + ".000000Z",
                               "level": "info", "event": event}) + "\n" for t, event in events_at)


async def ship_old_and_new(tmp_path: Path, loki: RealLoki, procs: list[ShipperProcess],
                           loki_settings: str = "") -> tuple[str, list[str], list[str], ShipperProcess]:
    """300 JSON records two hours old, then 300 ten minutes old, into tenant `age-limited` (1 h)."""
    import time as _time
    run, now = unique(), int(_time.time())
    out = tmp_path / "stdout.log"
    old = [(now - 7200 + i, f"old {i}") for i in range(300)]
    new = [(now - 600 + i, f"new {i}") for i in range(300)]
    out.write_text(json_records(old + new))
    config = config_for(loki, tmp_path, run, [(out, "stdout")], tenant="age-limited")
    config = config.replace('stream = "stdout"', 'stream = "stdout"\nformat = "json"')
    proc = await launch(procs, config.replace("[loki]\n", "[loki]\n" + loki_settings, 1))
    assert await run_to_exit(proc, loki, run, "age-limited") == 0
    return run, [e for _, e in old], [e for _, e in new], proc


async def test_too_old_records_are_counted_exactly_when_the_shippers_window_is_wider_than_lokis(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """Tenant `age-limited` (1 h) but the shipper left at Loki's default 7 d: Loki refuses the
    300 two-hour-old records for good; the 300 current ones are stored; counts match exactly."""
    run, _, new, proc = await ship_old_and_new(tmp_path, any_loki, procs)
    assert [line for _, _, line, _ in task_rows(any_loki, run, "age-limited")] == new
    summary = proc.summary()
    assert (summary["lines_sent"], summary["dropped"]["rejected"]) == (300, 300)


async def test_with_the_clusters_window_configured_every_record_is_stored(
        tmp_path: Path, any_loki: RealLoki, procs: list[ShipperProcess]) -> None:
    """The same records with `[loki] reject_old_samples_max_age = 3600` (the tenant's): the old
    ones get their read time, their own kept as `original_timestamp`; all 600 stored."""
    run, old, new, proc = await ship_old_and_new(
        tmp_path, any_loki, procs, "reject_old_samples_max_age = 3600.0\ncreation_grace_period = 60.0\n")
    rows = task_rows(any_loki, run, "age-limited")
    assert sorted(line for _, _, line, _ in rows) == sorted(old + new)
    assert len(rows) == 600
    if any_loki.version.startswith("3."):  # 2.7 stores no structured metadata
        assert {line for _, _, line, meta in rows if "original_timestamp" in meta} == set(old)
    summary = proc.summary()
    assert (summary["lines_sent"], sum(summary["dropped"].values())) == (600, 0)
    assert summary["timestamps_replaced"] == {"too_old": 300, "too_new": 0}
