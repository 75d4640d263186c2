"""The targets of issue 3 (and issue 7's formats and exec mode), and which of them a run met."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import Workload


@dataclass(frozen=True)
class Check:
    """One target: what it asks, what was measured, and whether it holds."""

    what: str  # "delivery" | "cpu" | "throughput" | "memory" | "latency"
    target: str
    measured: str
    ok: bool


IDLE_TARGET_MILLICORES = 0.5
PACED_TARGET_MILLICORES = {1000: 5.0, 10_000: 50.0}  # by lines per second
BULK_TARGET_LINES_PER_CPU_S = 300_000
RSS_TARGET_MIB = 20.0
P99_TARGET_S = 0.75
OTHER_ENTRIES_MAX = 1  # unstamped entries a run may store: the shipper's exit summary


def checks(wl: Workload, r: dict[str, Any]) -> list[Check]:
    """The issue-3 targets that apply to this workload's result."""
    if "error" in r:
        return [Check("delivery", "run completes", r["error"], False)]
    # Entries: the lines written, less CRI P chunks and traceback lines joined to the line before.
    expected = r.get("entries_expected", r["lines_written"])
    out = [Check("delivery", "entries delivered == expected, none refused",
                 f"{r['lines_delivered']} / {expected}, refused {r['refused_entries']}",
                 r["lines_delivered"] == expected and r["refused_entries"] == 0),
           Check("delivery", "exit code 0", str(r["exit_code"]), r["exit_code"] == 0)]
    if wl.content != "airflow2" or wl.source == "exec":
        # Every workload entry is stamped: an unstamped one is a line that was not parsed,
        # joined or merged as it should have been (the shipper's exit summary is the one allowed).
        out.append(Check("delivery", f"other entries <= {OTHER_ENTRIES_MAX} (the exit summary)",
                         f"{r['other_entries']} other entries", r["other_entries"] <= OTHER_ENTRIES_MAX))
    if wl.source == "exec":
        out.append(Check("delivery", "passthrough bytes == bytes written",
                         f"{r['passthrough_bytes']:,} / {r['bytes_written']:,}",
                         r["passthrough_bytes"] == r["bytes_written"]))
    cpu_target = (IDLE_TARGET_MILLICORES if wl.kind == "idle"
                  else PACED_TARGET_MILLICORES.get(wl.rate) if wl.kind == "paced" else None)
    millicores = r["window"]["millicores"]
    if cpu_target is not None and millicores is not None:
        out.append(Check("cpu", f"<= {cpu_target:g} millicores", f"{millicores:.2f} millicores",
                         millicores <= cpu_target))
    if wl.kind == "bulk" and r.get("lines_per_cpu_s") is not None:
        out.append(Check("throughput", f">= {BULK_TARGET_LINES_PER_CPU_S:,} lines per CPU-second",
                         f"{r['lines_per_cpu_s']:,} lines per CPU-second",
                         r["lines_per_cpu_s"] >= BULK_TARGET_LINES_PER_CPU_S))
    out.append(Check("memory", f"peak RSS <= {RSS_TARGET_MIB:g} MiB", f"{r['peak_rss_mib']:.1f} MiB",
                     r["peak_rss_mib"] <= RSS_TARGET_MIB))
    if wl.kind == "paced" and r["latency_s"] is not None:
        p99 = r["latency_s"]["p99"]
        out.append(Check("latency", f"p99 <= {P99_TARGET_S} s", f"{p99:.3f} s", p99 <= P99_TARGET_S))
    return out
