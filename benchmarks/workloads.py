"""The workloads: what is written, where, and for how long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """What is written, where, and for how long."""

    name: str
    kind: str  # idle | paced | bulk | burst
    source: str  # fifo | file
    duration: float = 0.0  # idle and paced: seconds
    rate: int = 0  # paced: lines per second
    lines: int = 0  # bulk and burst: lines written
    idle_before: float = 0.0  # burst: seconds of idle before the burst


def build_workloads(quick: bool, duration: float | None, bulk_lines: int | None) -> dict[str, Workload]:
    """Every workload by name, at full length or shortened by --quick / overrides."""
    idle_s = duration or (5.0 if quick else 30.0)
    paced_s = duration or (5.0 if quick else 25.0)
    n_bulk = bulk_lines or (100_000 if quick else 1_000_000)
    n_burst = 20_000 if quick else 100_000
    out = [Workload("idle-fifo", "idle", "fifo", duration=idle_s),
           Workload("idle-file", "idle", "file", duration=idle_s)]
    for rate in (100, 1000, 10_000):
        for source in ("fifo", "file"):
            out.append(Workload(f"paced-{source}-{rate}", "paced", source, duration=paced_s, rate=rate))
    out.append(Workload("bulk-file", "bulk", "file", lines=n_bulk))
    out.append(Workload("burst-fifo", "burst", "fifo", lines=n_burst, idle_before=1.0 if quick else 5.0))
    return {w.name: w for w in out}
