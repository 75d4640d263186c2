"""Airflow-like log lines of a fixed size, optionally stamped with their write time.

A stamped line starts with ``t=<time.time_ns()> `` so the receiver
(``tests/loki_receiver.py --record-arrivals``) can tell its delivery latency;
the rest looks like an Airflow 2 console line (FACTS §2)::

    t=1764064800123456789 [2026-11-25T10:00:00.123+0000] {taskinstance.py:123} INFO - Fetched ...

Every line is exactly `size` bytes including its newline, and unique (it
carries a sequence number), so Loki's dedup never merges two of them.
"""

from __future__ import annotations

import time

LINE_BYTES = 120

# (origin and level, message); the sequence number goes between them so that
# cutting the line to size never cuts it off.
_MESSAGES = (
    ("{python.py:201} INFO - ", "Fetched 512 rows from postgres_default in 0.031s"),
    ("{s3.py:88} INFO - ", "Uploading part to s3://data-lake/raw/events/2026/11/25/"),
    ("{taskinstance.py:1345} INFO - ", "Marking task as RUNNING, pool default_pool"),
    ("{http.py:173} WARNING - ", "Retrying GET /api/v2/items?page=3 after 503"),
    ("{logging_mixin.py:190} INFO - ", "Processed batch, watermark advanced to offset"),
)
# Pads short lines with realistic text (a run of one letter would compress unrealistically well).
_FILLER = "attempt=1 pool=default_pool queue=default executor=KubernetesExecutor hostname=etl-daily-load-7f9c"


def airflow_time(epoch_ns: int) -> str:
    """`2026-11-25T10:00:00.123+0000`, the Airflow 2 console timestamp."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}+0000"


def make_lines(first_seq: int, count: int, stamp_ns: int | None, size: int = LINE_BYTES) -> bytes:
    """`count` lines numbered from `first_seq`; stamped with `stamp_ns` unless it is None."""
    now_ns = stamp_ns if stamp_ns is not None else time.time_ns()
    prefix = (f"t={stamp_ns} " if stamp_ns is not None else "") + f"[{airflow_time(now_ns)}] "
    out = []
    for seq in range(first_seq, first_seq + count):
        origin, message = _MESSAGES[seq % len(_MESSAGES)]
        text = f"{prefix}{origin}#{seq} {message} "
        out.append((text + _FILLER)[: size - 1] + "\n")
    return "".join(out).encode()
