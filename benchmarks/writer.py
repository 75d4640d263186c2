"""The workload writer: a separate process, so its CPU never counts as the shipper's.

    python -m benchmarks.writer PATH --summary FILE [--rate N --duration S]
                                     [--burst N --idle-before S]
                                     [--content airflow2|cri|json|multiline|airflow3|tiny|airflow3-raw] [--wait-go]

Opens PATH for writing (append; a FIFO must already have a reader; ``-`` is
its own stdout, as a task under ``shipper exec`` writes), then:

* ``--rate N --duration S``: every 10 ms writes, in one write(), the lines
  due by then (N lines/s; ``--rate 0`` writes nothing: idle);
* ``--burst N --idle-before S``: sleeps S seconds, then writes N lines at once.

Lines come from `benchmarks.lines` (`--content`, default airflow2), stamped
with the time of their write; a paced run that would end on a CRI ``P`` chunk
writes one more line, its ``F``. With ``--wait-go`` it first reads one line
from stdin (``shipper exec``: the harness starts the window when the shipper's
startup has settled). When done it writes a JSON summary to FILE (atomically:
lines, the entries they make, bytes, seconds, worst lag), then keeps PATH open
until its stdin is closed: the harness decides when a FIFO reaches end of
input, and when an exec'd writer exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.lines import CONTENTS, EXTRA_CONTENTS, entries, make_content, whole

TICK = 0.01  # seconds between writes of a paced workload


def paced(fd: int, rate: int, duration: float, content: str = "airflow2") -> tuple[int, int, float]:
    """Write `rate` lines/s for `duration` s; returns (lines, bytes, worst lag behind schedule in s)."""
    total = whole(content, round(rate * duration))
    written = size = 0
    worst_lag = 0.0
    start = time.monotonic()
    next_tick = start
    while written < total:
        next_tick += TICK
        pause = next_tick - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            worst_lag = max(worst_lag, -pause)
        due = min(total, int(rate * (time.monotonic() - start)))
        if due > written:
            data = make_content(content, written, due - written, time.time_ns())
            write_all(fd, data)
            written, size = due, size + len(data)
    remaining = start + duration - time.monotonic()
    if remaining > 0:  # rate 0 (idle), or the last lines were due early
        time.sleep(remaining)
    return written, size, worst_lag


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--summary", required=True, help="write the JSON summary here when done")
    parser.add_argument("--rate", type=int, default=0, help="lines per second (0: write nothing)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds of paced writing")
    parser.add_argument("--burst", type=int, default=0, help="write this many lines at once instead")
    parser.add_argument("--idle-before", type=float, default=0.0, help="seconds to wait before the burst")
    parser.add_argument("--content", default="airflow2", choices=(*CONTENTS, *EXTRA_CONTENTS),
                        help="what the lines are")
    parser.add_argument("--wait-go", action="store_true", help="read one line from stdin before writing")
    args = parser.parse_args(argv)

    fd = 1 if args.path == "-" else os.open(args.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    if args.wait_go:
        sys.stdin.buffer.readline()
    started = time.monotonic()
    lag = 0.0
    if args.burst:
        time.sleep(args.idle_before)
        started = time.monotonic()
        lines = whole(args.content, args.burst)
        data = make_content(args.content, 0, lines, time.time_ns())
        write_all(fd, data)
        size = len(data)
    else:
        lines, size, lag = paced(fd, args.rate, args.duration, args.content)
    summary = {"lines": lines, "entries": entries(args.content, 0, lines), "bytes": size,
               "seconds": round(time.monotonic() - started, 6), "max_lag_s": round(lag, 6)}
    partial = Path(args.summary + ".partial")
    partial.write_text(json.dumps(summary))
    partial.replace(args.summary)
    sys.stdin.buffer.read()  # hold the path open until the harness closes our stdin
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
