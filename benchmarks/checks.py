"""The targets (issues 3, 7 and 15), and which of them a run met.

Per workload (`checks`): delivery, CPU, throughput, memory, latency. Across
workloads of one run (`relative_checks`, issue 15): a processed workload's
CPU against the raw workload's measured minutes apart, and the pod
template's processing against Fluent Bit's CPU on the same workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.workloads import SOURCE_KEYS, Workload


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
# At 1,000 lines/s a pod keeps headroom under its 20 MiB request (issue 15).
PACED_1000_RSS_TARGET_MIB = 18.0
# Processing (a format, the pod template's multiline and levels) costs at most this
# much more than raw lines at the same rate, measured in the same run (issue 15).
PROCESSING_EXTRA_MILLICORES = 1.0
RAW_WORKLOAD = "paced-file-1000"
# The pod template's processing costs at most this share of Fluent Bit's CPU, same workload.
FLUENT_BIT_SHARE = 0.2
TEMPLATE_CONTENTS = ("multiline", "airflow3")  # SOURCE_KEYS[c] is the template's
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
    if wl.kind == "paced" and wl.content in ("cri", "json"):
        cpu_target = None  # a format's target is relative to raw lines (relative_checks)
    millicores = r["window"]["millicores"]
    if cpu_target is not None and millicores is not None:
        out.append(Check("cpu", f"<= {cpu_target:g} millicores", f"{millicores:.2f} millicores",
                         millicores <= cpu_target))
    if wl.kind == "bulk" and r.get("lines_per_cpu_s") is not None:
        out.append(Check("throughput", f">= {BULK_TARGET_LINES_PER_CPU_S:,} lines per CPU-second",
                         f"{r['lines_per_cpu_s']:,} lines per CPU-second",
                         r["lines_per_cpu_s"] >= BULK_TARGET_LINES_PER_CPU_S))
    rss_target = PACED_1000_RSS_TARGET_MIB if wl.kind == "paced" and wl.rate == 1000 else RSS_TARGET_MIB
    out.append(Check("memory", f"peak RSS <= {rss_target:g} MiB", f"{r['peak_rss_mib']:.1f} MiB",
                     r["peak_rss_mib"] <= rss_target))
    if wl.kind == "paced" and r["latency_s"] is not None:
        p99 = r["latency_s"]["p99"]
        out.append(Check("latency", f"p99 <= {P99_TARGET_S} s", f"{p99:.3f} s", p99 <= P99_TARGET_S))
    return out


def relative_checks(wl: Workload, r: dict[str, Any], raw: dict[str, Any] | None,
                    fluent_bit: dict[str, Any] | None) -> list[Check]:
    """Issue 15's targets of a processed paced workload, against other runs of the same benchmark run.

    `raw`: the shipper's RAW_WORKLOAD run (None: not in this run, which the
    check then says); `fluent_bit`: Fluent Bit's run of `wl` (None: no peers).
    """
    if wl.kind != "paced" or not SOURCE_KEYS[wl.content] or wl.source == "exec" or "error" in r:
        return []
    millicores = r["window"]["millicores"]
    out = []
    target = f"<= {RAW_WORKLOAD} + {PROCESSING_EXTRA_MILLICORES:g} millicores"
    if raw is None or "error" in raw or raw["window"]["millicores"] is None:
        out.append(Check("cpu", target, f"{RAW_WORKLOAD} not measured in this run", False))
    elif millicores is not None:
        base = raw["window"]["millicores"]
        out.append(Check("cpu", target, f"{millicores:.2f} millicores ({RAW_WORKLOAD}: {base:.2f})",
                         millicores <= base + PROCESSING_EXTRA_MILLICORES))
    if wl.content in TEMPLATE_CONTENTS and fluent_bit is not None and "error" not in fluent_bit:
        peer = fluent_bit["window"]["millicores"]
        if peer and millicores is not None:
            out.append(Check("cpu", f"<= {FLUENT_BIT_SHARE:g} x Fluent Bit's",
                             f"{millicores:.2f} / {peer:.2f} millicores = {millicores / peer:.2f}",
                             millicores <= FLUENT_BIT_SHARE * peer))
    return out
