"""The workloads: what is written, where, and for how long."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.lines import AIRFLOW3_RAW, TINY

# The pod template's processing (k8s/pod-template-configmap.yaml): the default
# multiline grammar and level detection on a raw source, for Airflow 2 text
# and Airflow 3 JSON lines alike (issue 15: the budget is for what users run).
TEMPLATE_KEYS = "multiline = true\ndetect_level = true\n"
# The shipper's [[sources]] keys for each content (benchmarks/lines.py), rendered
# into {source_keys} of its config template.
SOURCE_KEYS = {
    "airflow2": "",
    "cri": 'format = "cri"\n',
    "json": 'format = "json"\njson_metadata = ["logger"]\n',
    "multiline": TEMPLATE_KEYS,
    "airflow3": TEMPLATE_KEYS,
    TINY: "",
    AIRFLOW3_RAW: "",
}


@dataclass(frozen=True)
class Workload:
    """What is written, where, and for how long."""

    name: str
    kind: str  # idle | paced | bulk | burst
    source: str  # fifo | file | exec (the writer is the child of `shipper exec`, on its stdout)
    duration: float = 0.0  # idle and paced: seconds
    rate: int = 0  # paced: lines per second
    lines: int = 0  # bulk and burst: lines written
    idle_before: float = 0.0  # burst: seconds of idle before the burst
    content: str = "airflow2"  # benchmarks.lines.CONTENTS; the source keys are SOURCE_KEYS[content]


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
    # Issue 15: 1,000,000 one-byte lines at once, the worst case for memory (a read is 32,768 lines).
    out.append(Workload("burst-tiny-fifo", "burst", "fifo", lines=n_bulk, idle_before=1.0, content=TINY))
    # Issue 7: each format and mode at 1,000 lines/s (lines as written: CRI P chunks and
    # traceback lines count, though they make no entry of their own).
    for content in ("cri", "json", "multiline", "airflow3"):
        out.append(Workload(f"paced-{content}-1000", "paced", "file", duration=paced_s, rate=1000, content=content))
    out.append(Workload("paced-exec-1000", "paced", "exec", duration=paced_s, rate=1000))
    # The Airflow 3 records raw: what their size alone costs over the raw workload's 120-byte lines.
    out.append(Workload("paced-airflow3-raw-1000", "paced", "file", duration=paced_s, rate=1000,
                        content=AIRFLOW3_RAW))
    return {w.name: w for w in out}
