"""Log lines of the workloads, stamped with their write time.

A stamped entry holds ``t=<time.time_ns()> `` where the message begins, so
the receiver (``tests/loki_receiver.py --record-arrivals``) can tell its
delivery latency while every line keeps the exact shape Airflow prints (a
stamp at the line start would make the shipper's default multiline grammar
see no record start). Five kinds of content (`CONTENTS`), all numbered by a
sequence number that makes every entry unique (so Loki's dedup never merges
two of them):

``airflow2`` (`make_lines`): Airflow 2 console lines (FACTS §2), exactly
`size` bytes including the newline::

    [2026-11-25T10:00:00.123+0000] {python.py:201} INFO - t=1764064800123456789 #12 Fetched ...

``cri``: the same 120-byte lines as a Kubernetes node log file writes them
(FACTS §3), ``<RFC3339Nano> stdout F <line>``; line `i` with
``i % CRI_PARTIAL_EVERY == CRI_PARTIAL_EVERY - 2`` is a ``P`` chunk holding the
first `CRI_SPLIT` characters of its line, and the next line the ``F`` chunk
with the rest: the shipper joins them into one entry (the ``F`` line starts
no entry of its own).

``json``: Airflow 3 task-log records (FACTS §2), one per line, whose
``event`` (the line the shipper ships with ``format = "json"``) is stamped::

    {"timestamp":"2026-11-25T10:00:00.123456Z","level":"info","event":"t=... #12 Fetched ...","logger":...}

``airflow3``: the same records, for the pod template's configuration (a raw
source with ``multiline`` and ``detect_level``): each record is shipped whole.

``tiny`` (`TINY`, not in `CONTENTS`: no peer runs it): one-byte lines,
``x\n``, unstamped, the worst case for memory per byte (a read of 64 KiB
holds 32,768 lines); the receiver counts them as stored entries.

``airflow3-raw`` (`AIRFLOW3_RAW`, not in `CONTENTS`; the peers tail it raw): the ``airflow3``
records through a raw source: what Airflow 3's larger lines cost with no
processing, the baseline the template's processing on them adds to.

``multiline``: ``airflow2`` lines where, in every `MULTILINE_EVERY` lines, an
``ERROR`` line is followed by a Python traceback of `len(TRACEBACK)` lines
(continuation lines: unstamped, merged into the ``ERROR`` entry).

`entries(content, first, count)` is how many entries lines ``first ..
first+count-1`` make once the shipper has joined and merged them: what the
receiver must store.
"""

from __future__ import annotations

import json
import time

LINE_BYTES = 120
CONTENTS = ("airflow2", "cri", "json", "multiline", "airflow3")
TINY = "tiny"  # one-byte lines, unstamped (module docstring); a burst workload's only
AIRFLOW3_RAW = "airflow3-raw"  # the airflow3 records, shipped raw (module docstring)
# Contents beyond CONTENTS, with no peer processing of their own (tiny lines are a FIFO's,
# which no peer reads; the peers tail the airflow3 records raw).
EXTRA_CONTENTS = (TINY, AIRFLOW3_RAW)

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

# CRI: which lines are P chunks, and where their line is cut.
CRI_PARTIAL_EVERY = 50
CRI_SPLIT = 90  # past the Airflow time, the origin and the stamp: the rest of a line does not depend on them

# JSON: the Airflow 3 record of each message above (level, logger, filename, lineno).
_RECORDS = (
    ("info", "airflow.task.hooks.airflow.providers.postgres.hooks.postgres.PostgresHook", "python.py", 201),
    ("info", "airflow.task.hooks.airflow.providers.amazon.aws.hooks.s3.S3Hook", "s3.py", 88),
    ("info", "airflow.task", "taskinstance.py", 1345),
    ("warning", "airflow.task.hooks.airflow.providers.http.hooks.http.HttpHook", "http.py", 173),
    ("info", "airflow.task", "logging_mixin.py", 190),
)
JSON_EVENT_CHARS = 100  # the event: the stamp, the sequence number, the message, filler
_compact = json.JSONEncoder(separators=(",", ":")).encode  # as Airflow 3 writes them

# Multiline: in every MULTILINE_EVERY lines, the last len(TRACEBACK) are a traceback
# continuing the ERROR line just before them.
MULTILINE_EVERY = 100
TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/home/airflow/.local/lib/python3.11/site-packages/airflow/models/taskinstance.py", '
    "line 465, in _execute_task",
    "    result = _execute_callable(context=context, **execute_callable_kwargs)",
    '  File "/home/airflow/.local/lib/python3.11/site-packages/airflow/models/taskinstance.py", '
    "line 432, in _execute_callable",
    "    return execute_callable(context=context, **execute_callable_kwargs)",
    '  File "/home/airflow/.local/lib/python3.11/site-packages/airflow/operators/python.py", '
    "line 235, in execute",
    "    return_value = self.execute_callable()",
    '  File "/opt/airflow/dags/etl_daily_load.py", line 42, in load_partition',
    '    raise ValueError(f"bad row {row_id} in partition {partition}")',
    "ValueError: bad row {seq} in partition 2026-11-25",
)
_ERROR_ORIGIN = "{taskinstance.py:3311} ERROR - "
_ERROR_MESSAGE = "#{seq} Task failed with exception"


def airflow_time(epoch_ns: int) -> str:
    """`2026-11-25T10:00:00.123+0000`, the Airflow 2 console timestamp."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}+0000"


def cri_time(epoch_ns: int) -> str:
    """`2026-11-25T10:00:00.123456789Z`, RFC 3339 with nanoseconds as the CRI writes it."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns:09d}Z"


def airflow3_time(epoch_ns: int) -> str:
    """`2026-11-25T10:00:00.123456Z`, the Airflow 3 record timestamp."""
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


def _text(seq: int, prefix: str, size: int, stamp: str = "") -> str:
    """Line `seq` without its newline: `prefix`, origin, `stamp`, number, message, cut to size - 1 characters."""
    origin, message = _MESSAGES[seq % len(_MESSAGES)]
    return (f"{prefix}{origin}{stamp}#{seq} {message} {_FILLER}")[: size - 1]


def _prefix(now_ns: int) -> str:
    return f"[{airflow_time(now_ns)}] "


def _stamp(stamp_ns: int | None) -> str:
    return f"t={stamp_ns} " if stamp_ns is not None else ""


def make_lines(first_seq: int, count: int, stamp_ns: int | None, size: int = LINE_BYTES) -> bytes:
    """`count` airflow2 lines numbered from `first_seq`; stamped with `stamp_ns` unless it is None."""
    prefix, stamp = _prefix(stamp_ns if stamp_ns is not None else time.time_ns()), _stamp(stamp_ns)
    return "".join(_text(seq, prefix, size, stamp) + "\n" for seq in range(first_seq, first_seq + count)).encode()


def _cri_lines(first_seq: int, count: int, stamp_ns: int) -> bytes:
    ts, prefix, partial = cri_time(stamp_ns), _prefix(stamp_ns), CRI_PARTIAL_EVERY - 2
    stamp = _stamp(stamp_ns)
    out = []
    for seq in range(first_seq, first_seq + count):
        phase = seq % CRI_PARTIAL_EVERY
        if phase == partial:
            out.append(f"{ts} stdout P {_text(seq, prefix, LINE_BYTES, stamp)[:CRI_SPLIT]}\n")
        elif phase == partial + 1:  # the rest of the line the P chunk began
            out.append(f"{ts} stdout F {_text(seq - 1, prefix, LINE_BYTES, stamp)[CRI_SPLIT:]}\n")
        else:
            out.append(f"{ts} stdout F {_text(seq, prefix, LINE_BYTES, stamp)}\n")
    return "".join(out).encode()


def _json_lines(first_seq: int, count: int, stamp_ns: int) -> bytes:
    ts, out = airflow3_time(stamp_ns), []
    for seq in range(first_seq, first_seq + count):
        level, logger, filename, lineno = _RECORDS[seq % len(_RECORDS)]
        message = _MESSAGES[seq % len(_MESSAGES)][1]
        event = f"t={stamp_ns} #{seq} {message} {_FILLER}"[:JSON_EVENT_CHARS]
        out.append(_compact({"timestamp": ts, "level": level, "event": event, "logger": logger,
                             "filename": filename, "lineno": lineno}) + "\n")
    return "".join(out).encode()


def _multiline_lines(first_seq: int, count: int, stamp_ns: int) -> bytes:
    prefix, stamp, out = _prefix(stamp_ns), _stamp(stamp_ns), []
    error_at = MULTILINE_EVERY - len(TRACEBACK) - 1
    for seq in range(first_seq, first_seq + count):
        phase = seq % MULTILINE_EVERY
        if phase < error_at:
            out.append(_text(seq, prefix, LINE_BYTES, stamp))
        elif phase == error_at:
            out.append(prefix + _ERROR_ORIGIN + stamp + _ERROR_MESSAGE.replace("{seq}", str(seq)))
        else:  # a traceback line; the last names the ERROR line's number
            out.append(TRACEBACK[phase - error_at - 1].replace("{seq}", str(seq - phase + error_at)))
    return ("\n".join(out) + "\n").encode() if out else b""


def make_content(content: str, first_seq: int, count: int, stamp_ns: int) -> bytes:
    """Lines `first_seq .. first_seq+count-1` of `content` (one of CONTENTS), stamped `stamp_ns`."""
    if content == "airflow2":
        return make_lines(first_seq, count, stamp_ns)
    if content == "cri":
        return _cri_lines(first_seq, count, stamp_ns)
    if content in ("json", "airflow3", AIRFLOW3_RAW):
        return _json_lines(first_seq, count, stamp_ns)
    if content == "multiline":
        return _multiline_lines(first_seq, count, stamp_ns)
    if content == TINY:
        return b"x\n" * count
    raise ValueError(f"unknown content {content!r}: one of {', '.join((*CONTENTS, *EXTRA_CONTENTS))}")


def _starts(seq: int, content: str) -> bool:
    """Whether line `seq` begins an entry (else the shipper joins it to the entry before it)."""
    if content == "cri":
        return seq % CRI_PARTIAL_EVERY != CRI_PARTIAL_EVERY - 1
    if content == "multiline":
        return seq % MULTILINE_EVERY < MULTILINE_EVERY - len(TRACEBACK)
    return True


def entries(content: str, first_seq: int, count: int) -> int:
    """How many entries lines `first_seq .. first_seq+count-1` make (P chunks joined, tracebacks merged)."""
    if content not in ("cri", "multiline"):
        return count
    return sum(1 for seq in range(first_seq, first_seq + count) if _starts(seq, content))


def whole(content: str, lines: int) -> int:
    """At least `lines` lines, ending where an entry may end (never on a CRI P chunk)."""
    if content == "cri" and lines % CRI_PARTIAL_EVERY == CRI_PARTIAL_EVERY - 1:
        return lines + 1
    return lines
