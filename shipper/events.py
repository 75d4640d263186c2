"""Named telemetry events: each function logs and counts together.

Components call these and never touch a metrics library: the counters live
in `COUNTERS` (plain dicts, rendered by the metrics endpoint and written in the
exit summary). Diagnostics go to stderr as one JSON object per line, never
into the shipped streams.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, TextIO

# Every reason a line can be lost, initialised to 0 so dashboards and the exit
# summary always show all of them. A new reason must be added here.
DROP_REASONS = (
    "rejected",           # Loki answered a non-retriable 4xx (400, 401, 403, 413, ...)
    "shutdown_deadline",  # still undelivered when shutdown_timeout ran out
    "forced_exit",        # a second signal asked the shipper to exit at once
    "buffer_full",        # when_full = "drop_oldest": a pipe had more while Loki lagged
    "spool_error",        # a spooled batch could not be read back (file gone or unreadable)
    "internal_error",     # a pipeline task died (a bug); exit code 3
)


# Why a multiline entry was closed before the line that continues it
# (shipper.multiline.Merger): that line begins an entry of its own.
MULTILINE_SPLIT_REASONS = ("max_lines", "max_bytes", "max_wait")


# Why an entry's own time was replaced by its read time (shipper.batch.Stream):
# Loki would refuse it as older than reject_old_samples_max_age, or as later
# than now + creation_grace_period.
TIMESTAMP_REASONS = ("too_old", "too_new")


class Histogram:
    """Cumulative-bucket histogram; `observe` is two list operations on the hot path."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        i = 0
        for bound in self.bounds:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.sum += value


# Push duration buckets: loopback pushes take ~1 ms, a loaded gateway ~100 ms,
# a timeout 10 s.
PUSH_DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Batch sizes from a single short line to batch_max_bytes (1 MiB), x4 steps.
BATCH_SIZE_BOUNDS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class Counters:
    """All counters of the process. Plain attributes: cheap to bump on the hot path."""

    def __init__(self) -> None:
        self.lines_read: dict[str, int] = {}   # per source path
        self.bytes_read: dict[str, int] = {}
        self.lines_split = 0        # cuts of lines longer than max_line_bytes
        self.lines_invalid_utf8 = 0  # lines whose invalid UTF-8 was replaced
        self.lines_merged = 0       # continuation lines merged into an earlier entry (multiline)
        # Lines a format could not read (not CRI, not a JSON record with its keys),
        # shipped as they came, by format.
        self.records_malformed: dict[str, int] = {"cri": 0, "json": 0}
        self.cri_lines_joined = 0   # lines made of CRI `P` chunks (each one entry)
        self.json_kept_whole = 0    # JSON records shipped whole: their event line outgrew max_line_bytes
        # Continuation lines that began an entry of their own, by the bound that closed the one they continued.
        self.multiline_splits: dict[str, int] = dict.fromkeys(MULTILINE_SPLIT_REASONS, 0)
        # Entries whose own time (CRI, JSON) Loki would refuse, stamped with their
        # read time instead (shipper.batch.Stream), by reason; every reason at 0.
        self.timestamps_replaced: dict[str, int] = dict.fromkeys(TIMESTAMP_REASONS, 0)
        self.lines_sent = 0
        self.bytes_sent = 0         # line bytes acknowledged by Loki
        self.batches_sent = 0
        self.requests: dict[str, int] = {}  # by status code or error kind
        self.retries = 0
        # Entries pushed again though Loki may hold them (a per-entry rate-limit
        # answer that named only 10 of more refusals); Loki's dedup drops the copies.
        self.lines_resent_uncertain = 0
        # Opens that failed for want of descriptors (EMFILE/ENFILE), each retried later.
        self.descriptor_shortages = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.last_push_ok = 0.0     # epoch seconds of the last 2xx
        self.body_bytes_sent = 0    # compressed bodies acknowledged
        self.lines_spooled_at_exit = 0  # undelivered at exit but safe in the spool
        self.exec_pipes_cut = 0  # exec: output pipes descendants still held at the drain limit
        self.push_duration = Histogram(PUSH_DURATION_BOUNDS)
        self.batch_size = Histogram(BATCH_SIZE_BOUNDS)


COUNTERS = Counters()


_LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3}
_min_level = 1
# Where diagnostics go: the shipper's stderr (`run`; looked up at each write),
# an open file (`exec_diagnostics = "<path>"`), or nowhere (exec mode's default).
_STDERR: Final = "stderr"
_dest: TextIO | str | None = _STDERR


def quiet() -> None:
    """Only warnings, errors and the exit summary from now on, still on stderr.

    exec mode with `exec_diagnostics = "stderr"`: stderr carries the command's
    own output too, so the shipper adds only what needs a reader.
    """
    global _min_level, _dest
    _min_level, _dest = _LEVELS["warn"], _STDERR


def silence() -> None:
    """No diagnostic anywhere from now on (exec mode's default): the task's stderr,
    what `kubectl logs` shows, stays exactly the command's. The exit summary
    still goes to Loki ({job="shipper"}); `announce` still reaches stderr."""
    global _dest
    _dest = None


def to_file(f: TextIO) -> None:
    """Every diagnostic (info and above, the exit summary) to `f` instead of stderr."""
    global _min_level, _dest
    _min_level, _dest = _LEVELS["info"], f


def log(level: str, msg: str, *, event: str, **fields: Any) -> None:
    """Write one JSON diagnostic line where diagnostics go (stderr unless routed).

    `event` is the record's stable name (snake_case, one of the set documented
    in docs/diagnostics.md): what tests and alerts match on. `msg` is the
    human-readable text and may be reworded.
    """
    if _dest is None or (_LEVELS.get(level, 3) < _min_level and event != "exit"):
        return
    _write(_dest, _record(level, event, msg, fields))


def announce(level: str, msg: str, *, event: str, **fields: Any) -> None:
    """`log`, and on stderr whatever the routing: for what the task's own log must
    say because the task did not run (exec: the command could not be started)."""
    line = _record(level, event, msg, fields)
    if _dest is not None and _dest != _STDERR:
        _write(_dest, line)
    _write(_STDERR, line)


def _record(level: str, event: str, msg: str, fields: dict[str, Any]) -> str:
    return json.dumps({"ts": round(time.time(), 3), "level": level, "event": event, "msg": msg, **fields},
                      default=str) + "\n"


def _write(dest: TextIO | str, line: str) -> None:
    out = sys.stderr if dest == _STDERR else dest
    assert not isinstance(out, str)
    try:
        out.write(line)
        out.flush()
    except (OSError, ValueError):
        pass  # stderr (or the file) closed or full: diagnostics must never take the shipper down


def lines_read(source: str, n: int, nbytes: int) -> None:
    c = COUNTERS
    c.lines_read[source] = c.lines_read.get(source, 0) + n
    c.bytes_read[source] = c.bytes_read.get(source, 0) + nbytes


def lines_cleaned(source: str, split: int, invalid_utf8: int) -> None:
    """Lines that were cut at max_line_bytes or had invalid UTF-8 replaced."""
    COUNTERS.lines_split += split
    COUNTERS.lines_invalid_utf8 += invalid_utf8
    if split:
        log("info", "line longer than max_line_bytes was split", event="lines_split", source=source, cuts=split)
    if invalid_utf8:
        log("info", "invalid UTF-8 replaced with U+FFFD", event="invalid_utf8_replaced",
            source=source, lines=invalid_utf8)


def lines_merged(source: str, n: int) -> None:
    """Continuation lines (a traceback's) that became part of an earlier entry."""
    COUNTERS.lines_merged += n


# (event, source) pairs already logged: a per-line condition is logged once per
# source and counted always (a source of the wrong format would log every read).
_TOLD: set[tuple[str, str]] = set()


def _first(event: str, source: str) -> bool:
    if (event, source) in _TOLD:
        return False
    _TOLD.add((event, source))
    return True


def records_malformed(source: str, fmt: str, n: int) -> None:
    """`n` lines of `source` that its `format` could not read, shipped as they came
    (logged the first time per source, counted every time)."""
    COUNTERS.records_malformed[fmt] = COUNTERS.records_malformed.get(fmt, 0) + n
    if _first("records_malformed", source):
        log("warn", "lines the source's format could not read, shipped as they came (logged once; "
            "shipper_records_malformed_total counts them)", event="records_malformed",
            source=source, format=fmt, lines=n)


def cri_lines_joined(source: str, n: int) -> None:
    """`n` lines of a CRI source were made of `P` chunks joined up to their `F`."""
    COUNTERS.cri_lines_joined += n


def json_kept_whole(source: str, n: int) -> None:
    """`n` JSON records were shipped whole: their event (with its traceback) outgrew max_line_bytes."""
    COUNTERS.json_kept_whole += n
    if _first("json_kept_whole", source):
        log("info", "JSON records shipped whole: their event line is longer than max_line_bytes (logged once; "
            "shipper_json_kept_whole_total counts them)", event="json_kept_whole", source=source, records=n)


def multiline_split(source: str, reason: str, n: int) -> None:
    """`n` continuation lines began an entry of their own: the entry they continued was
    closed by a bound (`reason`, one of MULTILINE_SPLIT_REASONS)."""
    COUNTERS.multiline_splits[reason] += n
    if _first(f"multiline_split_{reason}", source):
        log("info", "multiline entry closed by a bound: the lines after it begin the next entry (logged once "
            "per bound; shipper_multiline_splits_total counts them)", event="multiline_split",
            source=source, reason=reason, lines=n)


def timestamps_replaced(stream: str, n: int, reason: str) -> None:
    """`n` entries of `stream` whose own time Loki would refuse (`reason`, one of
    TIMESTAMP_REASONS) got their read time instead; the own time is kept as the
    entry's structured metadata `original_timestamp`."""
    COUNTERS.timestamps_replaced[reason] += n
    log("info", "entry time outside what Loki accepts, read time used instead", event="timestamps_replaced",
        stream=stream,
        entries=n, reason=reason)


def source_opened(path: str, kind: str) -> None:
    log("info", "source opened", event="source_opened", path=path, kind=kind)


def source_rotated(path: str, why: str) -> None:
    log("info", "source file replaced, reading the new one", event="source_rotated", path=path, why=why)


def source_eof(path: str) -> None:
    log("info", "source reached end of input", event="source_eof", path=path)


def batch_sent(lines: int, line_bytes: int, body_bytes: int, seconds: float, status: int) -> None:
    c = COUNTERS
    c.lines_sent += lines
    c.bytes_sent += line_bytes
    c.batches_sent += 1
    c.body_bytes_sent += body_bytes
    key = str(status)
    c.requests[key] = c.requests.get(key, 0) + 1
    c.last_push_ok = time.time()
    c.push_duration.observe(seconds)
    c.batch_size.observe(line_bytes)


def push_failed(outcome: str, message: str, retry_in: float | None, seconds: float) -> None:
    """A push did not succeed; `retry_in` is None when the batch is given up."""
    c = COUNTERS
    c.requests[outcome] = c.requests.get(outcome, 0) + 1
    c.push_duration.observe(seconds)
    if retry_in is not None:
        c.retries += 1
        log("warn", "push failed, will retry", event="push_failed", outcome=outcome, error=message[:512],
            retry_in=round(retry_in, 3))
    else:
        log("error", "push refused by Loki, batch dropped", event="push_refused",
            outcome=outcome, error=message[:512])


def push_cut(lines: int, pieces: int, cause: str) -> None:
    """A push Loki refused whole, larger than a second of the rate it named, goes again in `pieces`."""
    log("warn", "Loki refused a push whole: pushing it in pieces of its named rate", event="push_cut",
        lines=lines, pieces=pieces, cause=cause)


def stored_asked(uncertain: int, resolved: bool) -> None:
    """Loki was asked which of `uncertain` entries it holds (an answer that named too few)."""
    log("info", "asked Loki which entries of a partly refused push it holds", event="stored_asked",
        uncertain=uncertain, resolved=resolved)


def entries_stored(n: int, line_bytes: int) -> None:
    """`n` entries of a push Loki answered with a refusal of the others were stored: sent."""
    COUNTERS.lines_sent += n
    COUNTERS.bytes_sent += line_bytes


def push_stored_part(outcome: str, stored: int, stored_bytes: int, again: int, uncertain: int,
                     cause: str) -> None:
    """Loki stored `stored` entries of a push and refused `again` for now: those go out again.

    Counted as sent now, so `lines_sent` is what Loki holds; `uncertain` of
    the `again` ones may already be stored (see shipper.delivery).
    """
    c = COUNTERS
    c.lines_sent += stored
    c.bytes_sent += stored_bytes
    c.lines_resent_uncertain += uncertain
    log("warn", "Loki stored part of a push; pushing the rest again", event="push_stored_part",
        outcome=outcome, cause=cause,
        stored=stored, again=again, uncertain=uncertain)


def descriptor_shortage(path: str, error: str, first_of_episode: bool) -> None:
    """An open of `path` failed for want of descriptors; it is retried at the next poll.

    Logged once per episode (the first failure after a calm spell), counted each time.
    """
    COUNTERS.descriptor_shortages += 1
    if first_of_episode:
        log("warn", "out of file descriptors: closing idle files, retrying the open", event="descriptor_shortage",
            path=path, error=error, shortages=COUNTERS.descriptor_shortages)


def lines_dropped(reason: str, n: int, **detail: Any) -> None:
    """Lines given up for `reason` (one of DROP_REASONS)."""
    if reason not in COUNTERS.dropped:
        raise ValueError(f"unknown drop reason {reason!r}")
    COUNTERS.dropped[reason] += n
    if n:
        log("error", "lines dropped", event="lines_dropped", reason=reason, lines=n, **detail)
