"""CPU per line of the shipper's in-process path, per content, without IO.

    python -m benchmarks.inprocess [CONTENT ...] [--lines N] [--profile]

Feeds the lines of each content (benchmarks/lines.py) through what the shipper
does between a read and a push: line splitting, the source's processing
(format, multiline, levels: the same [[sources]] keys as the benchmark
workloads), the accumulator and the encoder, then the compression ([loki] compression, gzip by default). No sockets, no event
loop, no timers: this isolates per-line cost from wakeups and scrapes, so a
change to a hot path can be compared before and after in seconds. The figure
is the best of 5 runs of process CPU time divided by the lines fed; a warm
loop, so real runs (benchmarks/run.py, cold caches between ticks) cost about
twice as much per line. The context labels and metadata are an Airflow task's
(dag_id, task_id; run_id, try_number), as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from benchmarks.lines import CONTENTS, make_content
from benchmarks.workloads import SOURCE_KEYS
from shipper import labels, lifecycle
from shipper.config import parse
from shipper.framing import LineSplitter
from shipper.loki import Answer
from shipper.pipeline import Pipeline

CONTEXT = {"dag_id": "etl_daily_load", "task_id": "load_partition", "run_id": "scheduled__2026-11-25T00:00:00+00:00",
           "try_number": "1"}
READ_BYTES = 60_000  # about what one read takes at 1,000 lines/s with batch_wait 0.5 s


class NullSink:
    """Takes nothing: pushes never happen here (batches are compressed and dropped)."""

    timeout = 1.0

    async def push(self, body: bytes, timeout: float | None = None) -> Answer:
        raise AssertionError("not used")

    async def stored_times(self, selector: str, start_ns: int, end_ns: int) -> set[int] | None:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


async def measure(content: str, lines: int, profile: bool, compression: str = "gzip") -> float:
    """Best-of-5 CPU seconds per line for `content`."""
    config = parse(f'[loki]\ncompression = "{compression}"\n'
                   f'[[sources]]\npath = "/bench"\nstream = "stdout"\n{SOURCE_KEYS[content]}')
    source = lifecycle.new_source(config, config.sources[0], "/bench",
                                  labels.task_stream(config, CONTEXT, "stdout"))
    pipeline = Pipeline(config, [source], NullSink())
    queued = pipeline.buffer.pending  # the sealed pushes: compressed, queued, then forgotten here
    data = make_content(content, 0, lines, time.time_ns())
    chunks = [data[i:i + READ_BYTES] for i in range(0, len(data), READ_BYTES)]
    splitter = LineSplitter(config.max_line_bytes)
    best = float("inf")
    for run in range(1 if profile else 5):
        gc.collect()
        now = run * 1000.0
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.process_time()
        for chunk in chunks:
            now += config.loki.batch_wait
            pipeline._add(source, splitter.feed(chunk), now)
            pipeline._seal_due(now)
            pipeline._flush_open()
            queued.clear()
            pipeline.buffer.pending_bytes = 0
        best = min(best, time.process_time() - started)
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return best / lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("contents", nargs="*", metavar="CONTENT", help=f"any of {', '.join(CONTENTS)} (default: all)")
    parser.add_argument("--lines", type=int, default=25_000)
    parser.add_argument("--profile", action="store_true", help="one cProfile'd run per content instead")
    parser.add_argument("--compression", default="gzip", choices=("gzip", "snappy", "none"),
                        help="[loki] compression of the pushes (default: %(default)s, the shipper's)")
    args = parser.parse_args()
    for content in args.contents or CONTENTS:
        if content not in CONTENTS:
            parser.error(f"unknown content {content!r}: use {', '.join(CONTENTS)}")
        seconds = asyncio.run(measure(content, args.lines, args.profile, args.compression))
        print(f"{content:10s} {seconds * 1e6:6.2f} us/line")


if __name__ == "__main__":
    main()
