"""CPU of one push: what a stream pushed on its own costs (shipper.pipeline: one push per stream).

    python -m benchmarks.push_cost [--pushes N] [--lines L]

Encodes, compresses and pushes N small one-stream bodies (L lines of 100
bytes each, the task's labels) with shipper.loki.LokiClient over a kept-alive
connection to tests/loki_receiver.py in its own process, and prints this
process's CPU (user + system) per push. Since every push holds one stream
(Loki answers a push for its last stream only), a tick in which both stdout
and stderr have lines costs one push more than a tick of one stream: at two
ticks a second, twice this figure per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipper import encoder
from shipper.loki import LokiClient

LABELS = '{dag_id="etl_daily", service_name="airflow", stream="stderr", task_id="load"}'


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(pushes: int, lines: int) -> float:
    """Seconds of CPU per push, after a warm-up of 50."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        receiver = subprocess.Popen([sys.executable, "-m", "tests.loki_receiver", "--port", "0",
                                     "--ready-file", str(ready)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not ready.exists():
                if receiver.poll() is not None:
                    raise SystemExit("the receiver exited")
                await asyncio.sleep(0.05)
            client = LokiClient(ready.read_text().strip())
            line = [b"x" * 100] * lines
            ts = time.time_ns()
            for i in range(50):
                await client.push(encoder.compress(encoder.encode_push([(LABELS, encoder.encode_entries(line, ts))])))
                ts += lines
            start = _cpu()
            for i in range(pushes):
                body = encoder.compress(encoder.encode_push([(LABELS, encoder.encode_entries(line, ts))]))
                ts += lines
                await client.push(body)
            spent = _cpu() - start
            await client.close()
            return spent / pushes
        finally:
            receiver.terminate()
            receiver.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.push_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=5)
    args = parser.parse_args(argv)
    per_push = asyncio.run(measure(args.pushes, args.lines))
    print(f"{per_push * 1e6:.0f} us of CPU per push ({args.pushes} pushes of {args.lines} lines; "
          f"one more push every 0.5 s tick: {per_push * 2 * 1000:.2f} millicores), load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
