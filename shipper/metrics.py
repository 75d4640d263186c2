"""Prometheus text exposition: counters, gauges and a process sample in, text out (`render`, no IO).

`sample_process()` is the one reader here: it takes the process_* figures from /proc.

`render()` turns `events.COUNTERS`, the pipeline's gauges and a process sample
into the text format (version 0.0.4). It is written by hand because
`prometheus_client` costs about 5 MiB per pod (FACTS §6); the tests parse the
output with `prometheus_client` and lint it with `promtool check metrics`.

Names follow Prometheus conventions: base units, `_total` counters,
`_seconds`, `_bytes`. The `process_*` families use the standard names of the
official client libraries so existing dashboards work unchanged.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shipper import __version__
from shipper.events import Counters, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ProcessSample:
    """What /proc says about this process at scrape time."""

    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    open_fds: int
    max_fds: int
    start_time: float


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_BOOT: list[float] = []  # /proc/stat btime, read once: it never changes


def _boot_time() -> float:
    if not _BOOT:
        with open("/proc/stat", "rb") as f:
            _BOOT.append(next(float(line.split()[1]) for line in f if line.startswith(b"btime")))
    return _BOOT[0]


def sample_process(pid: int | str = "self") -> ProcessSample | None:
    """Read /proc for the process_* metrics; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().rsplit(b")", 1)[1].split()
        boot = _boot_time()
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        max_fds = -1
        with open(f"/proc/{pid}/limits", "rb") as f:
            for line in f:
                if line.startswith(b"Max open files"):
                    max_fds = int(line.split()[3])
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    ticks, page = _TICKS, _PAGE
    # Fields after the ")" of comm, 0-based: utime 11, stime 12, starttime 19, vsize 20, rss 21.
    return ProcessSample(
        cpu_seconds=(int(stat[11]) + int(stat[12])) / ticks,
        resident_bytes=int(stat[21]) * page,
        virtual_bytes=int(stat[20]),
        open_fds=open_fds,
        max_fds=max_fds,
        start_time=boot + int(stat[19]) / ticks,
    )


def render(c: Counters, gauges: Mapping[str, float], process: ProcessSample | None) -> bytes:
    """The whole exposition as UTF-8 bytes.

    `gauges` holds the pipeline's point-in-time values: `pending_lines`,
    `pending_bytes`, `sources_open`.
    """
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_num(value)}\n")

    def one(name: str, kind: str, help_text: str, value: float) -> None:
        family(name, kind, help_text, [({}, value)])

    py = ".".join(map(str, sys.version_info[:3]))
    family("shipper_build_info", "gauge", "Version of the shipper and of Python; always 1.",
           [({"version": __version__, "python": py}, 1)])
    family("shipper_source_lines_read_total", "counter", "Lines read, per source path.",
           [({"source": k}, v) for k, v in sorted(c.lines_read.items())])
    family("shipper_source_bytes_read_total", "counter",
           "Bytes of line content read (newlines excluded), per source path.",
           [({"source": k}, v) for k, v in sorted(c.bytes_read.items())])
    one("shipper_lines_split_total", "counter",
        "Cuts made in lines longer than max_line_bytes (each cut adds one entry).", c.lines_split)
    one("shipper_lines_invalid_utf8_total", "counter",
        "Lines whose invalid UTF-8 was replaced with U+FFFD.", c.lines_invalid_utf8)
    one("shipper_lines_merged_total", "counter",
        "Continuation lines merged into an earlier entry (multiline).", c.lines_merged)
    family("shipper_records_malformed_total", "counter",
           "Lines a source's format (cri, json) could not read, shipped as they came, by format.",
           [({"format": k}, v) for k, v in sorted(c.records_malformed.items())])
    one("shipper_cri_lines_joined_total", "counter", "Lines made of CRI P chunks joined up to their F.",
        c.cri_lines_joined)
    one("shipper_json_kept_whole_total", "counter",
        "JSON records shipped whole because their event line outgrew max_line_bytes.", c.json_kept_whole)
    family("shipper_multiline_splits_total", "counter",
           "Continuation lines that began an entry of their own, by the bound that closed the entry they continued.",
           [({"reason": k}, v) for k, v in c.multiline_splits.items()])
    family("shipper_timestamps_replaced_total", "counter",
           "Entries whose own time Loki would refuse, stamped with their read time instead, by reason.",
           [({"reason": k}, v) for k, v in c.timestamps_replaced.items()])
    one("shipper_lines_sent_total", "counter", "Lines acknowledged by Loki.", c.lines_sent)
    one("shipper_bytes_sent_total", "counter", "Bytes of line content acknowledged by Loki.", c.bytes_sent)
    one("shipper_batches_sent_total", "counter", "Pushes acknowledged by Loki.", c.batches_sent)
    one("shipper_push_body_bytes_total", "counter",
        "Compressed request body bytes of acknowledged pushes.", c.body_bytes_sent)
    family("shipper_lines_dropped_total", "counter", "Lines given up, by reason.",
           [({"reason": k}, v) for k, v in c.dropped.items()])
    family("shipper_push_requests_total", "counter",
           "Push attempts by outcome: HTTP status code, or the transport error.",
           [({"status": k}, v) for k, v in sorted(c.requests.items())])
    one("shipper_push_retries_total", "counter", "Pushes that failed and were retried.", c.retries)
    one("shipper_descriptor_shortages_total", "counter",
        "Opens that failed for want of file descriptors (EMFILE/ENFILE), each retried.",
        c.descriptor_shortages)
    one("shipper_lines_resent_uncertain_total", "counter",
        "Lines pushed again though Loki may already hold them (its dedup drops such copies).",
        c.lines_resent_uncertain)
    _histogram(out, "shipper_push_duration_seconds", "Time one push took, answer or error.",
               c.push_duration)
    _histogram(out, "shipper_batch_size_bytes", "Line content bytes per acknowledged push.",
               c.batch_size)
    one("shipper_pending_lines", "gauge", "Lines read and not yet acknowledged.",
        gauges.get("pending_lines", 0))
    one("shipper_pending_bytes", "gauge", "Line bytes read and not yet acknowledged.",
        gauges.get("pending_bytes", 0))
    one("shipper_sources_open", "gauge", "Sources currently open.", gauges.get("sources_open", 0))
    one("shipper_last_push_success_timestamp_seconds", "gauge",
        "Unix time of the last acknowledged push; 0 before the first.", c.last_push_ok)
    if process is not None:
        one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
            process.cpu_seconds)
        one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
            process.resident_bytes)
        one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
            process.virtual_bytes)
        one("process_open_fds", "gauge", "Number of open file descriptors.", process.open_fds)
        one("process_max_fds", "gauge", "Maximum number of open file descriptors.", process.max_fds)
        one("process_start_time_seconds", "gauge",
            "Start time of the process since unix epoch in seconds.", process.start_time)
    return "".join(out).encode()


def _histogram(out: list[str], name: str, help_text: str, h: Histogram) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} histogram\n")
    total = 0
    for bound, count in zip(h.bounds, h.counts):
        total += count
        out.append(f'{name}_bucket{{le="{_num(bound)}"}} {total}\n')
    total += h.counts[-1]
    out.append(f'{name}_bucket{{le="+Inf"}} {total}\n{name}_sum {_num(h.sum)}\n{name}_count {total}\n')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    # The text format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
