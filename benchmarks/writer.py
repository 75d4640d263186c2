"""The workload writer: a separate process, so its CPU never counts as the shipper's.

    python -m benchmarks.writer PATH --summary FILE [--rate N --duration S]
                                     [--burst N --idle-before S]

Opens PATH for writing (append; a FIFO must already have a reader), then:

* ``--rate N --duration S``: every 10 ms writes, in one write(), the lines
  due by then (N lines/s; ``--rate 0`` writes nothing: idle);
* ``--burst N --idle-before S``: sleeps S seconds, then writes N lines at once.

Lines come from `benchmarks.lines`, stamped with the time of their write.
When done it writes a JSON summary to FILE (atomically), then keeps PATH open
until its stdin is closed: the harness decides when a FIFO reaches end of input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.lines import LINE_BYTES, make_lines

TICK = 0.01  # seconds between writes of a paced workload


def paced(fd: int, rate: int, duration: float) -> tuple[int, float]:
    """Write `rate` lines/s for `duration` s; returns (lines, worst lag behind schedule in s)."""
    total = round(rate * duration)
    written = 0
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
            write_all(fd, make_lines(written, due - written, time.time_ns()))
            written = due
    remaining = start + duration - time.monotonic()
    if remaining > 0:  # rate 0 (idle), or the last lines were due early
        time.sleep(remaining)
    return written, worst_lag


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
    args = parser.parse_args(argv)

    fd = os.open(args.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    started = time.monotonic()
    lag = 0.0
    if args.burst:
        time.sleep(args.idle_before)
        started = time.monotonic()
        write_all(fd, make_lines(0, args.burst, time.time_ns()))
        lines = args.burst
    else:
        lines, lag = paced(fd, args.rate, args.duration)
    summary = {"lines": lines, "bytes": lines * LINE_BYTES,
               "seconds": round(time.monotonic() - started, 6), "max_lag_s": round(lag, 6)}
    partial = Path(args.summary + ".partial")
    partial.write_text(json.dumps(summary))
    partial.replace(args.summary)
    sys.stdin.buffer.read()  # hold the path open until the harness closes our stdin
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
