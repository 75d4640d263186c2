"""Delivery decisions as data: Loki's answer to one push in, what to do with its entries out. No IO.

Every push holds one stream (shipper.pipeline seals a batch into one push per
stream), because Loki answers a push with the result of its *last* stream
only: an earlier stream refused by a per-stream rate limit would be answered
204 and lost (FACTS §4). With one stream per push the answer is about all of
the push, and Loki's text says which entries it refused:

* 2xx: every entry is stored (identical entries it already held included).
* 429 per-stream rate limit (ingester): up to 10 lines ``entry with timestamp
  <Go time> ignored, reason: '...'`` in push order, then ``total ignored: N
  out of M``. Loki 3 (shard_streams on) refuses the stream's entries all
  together (N == M); Loki 2.7 entry by entry. Entries not listed before the
  last listed one were stored; after it, N - 10 of the rest were refused. When
  those are all of the rest the answer is exact; otherwise (`uncertain`) the
  shipper asks Loki's query API which of them it holds (`resolve`), and
  where it cannot, pushes them all again and relies on Loki's head-block
  dedup (counted: `lines_resent_uncertain`).
* 429 tenant ingestion rate (distributor): nothing stored; all again.
* 400 validation (distributor): the named entries are refused for good, the
  others stored. Loki 3 groups the errors with counts ("N errors like: ...");
  Loki 2.7 names only the last one, so a line-too-long or too-old refusal is
  counted by its own limit (entries over the size, or older than the bound).
* 400 ``total ignored: N out of M`` (ingester, entries too far behind): N
  refused for good.
* 413: split in two. A push refused as a whole by a rate limit twice in a
  row is split too: one larger than the limit's burst could never pass.
* 5xx, 408, timeouts, transport errors, a 429 whose text is not Loki's (a
  gateway's): nothing known, the whole push again.
* Any other 4xx: refused for good.

Entries count as sent when Loki stored them, never twice: a push that carries
entries Loki may already hold knows how many (`Decision.uncertain`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from shipper.retry import is_retriable

# A push refused as a whole (rate limit, nothing stored) this many times in a
# row is split in two. Loki refuses a push larger than a limiter's burst
# forever (the tenant's ingestion_burst_size_mb, or a stream's
# per_stream_rate_limit_burst with Loki 3's whole-stream limiting), and its
# answer does not say whether the push is over the burst or the bucket just
# empty: a second refusal is the cheapest evidence. Halves that fit pass.
SPLIT_AFTER_WHOLE_REFUSALS = 2

_IGNORED = re.compile(r"entry with timestamp (.+?) ignored, reason: '")
_TOTAL = re.compile(r"total ignored: (\d+) out of (\d+)")
_GROUPED = re.compile(r"(?:^|; )(\d+) errors like: ")
_TENANT_RATE = "Ingestion rate limit exceeded"
# The limit a refusal names: "(limit: 256KB/sec)" (a stream's, dskit ByteSize:
# binary units) or "(limit: 1048576 bytes/sec)" (the tenant's).
_LIMIT = re.compile(r"\(limit: ([\d.]+) ?([KMGTP]?i?B|bytes)/sec\)")
_UNITS = {"B": 1, "bytes": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "PB": 2**50,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
# Loki 3 shards a stream whose rate (refused pushes included) passes
# shard_streams.desired_rate: the entries of one push are dealt round robin
# to `__stream_shard__` streams, and the answer is the last shard's only.
_SHARD = "__stream_shard__"
_TOO_LONG = re.compile(r"Max entry size '(\d+)' bytes exceeded")
_TOO_OLD = re.compile(r"has timestamp too old: .*?, oldest acceptable timestamp is: (\S+)")
# Go's time.Time.String(): 2026-12-01 06:26:25.717811967 +0000 UTC (fraction
# trimmed of trailing zeros, absent when zero; the zone as the server has it).
_GO_TIME = re.compile(r"(-?\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? ([+-])(\d\d)(\d\d)")
# RFC 3339 as Loki 2.7 prints the oldest acceptable time: 2026-11-24T07:00:00Z.
_RFC3339 = re.compile(r"(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))")

ACK = "ack"        # the push is answered for good: `stored` sent, `refused` dropped
RETRY = "retry"    # push `resend` again after the backoff
SPLIT = "split"    # push it again at once, as two halves


@dataclass(frozen=True)
class Decision:
    """What to do with a push after Loki's answer."""

    action: str                  # ACK, RETRY or SPLIT
    stored: int = 0              # entries of the push Loki holds now
    refused: int = 0             # entries Loki refused for good (dropped: "rejected")
    resend: tuple[int, ...] | None = None  # RETRY: indexes to push again; None: all of them
    uncertain: int = 0           # of `resend`, entries Loki may already hold
    whole: bool = False          # refused as a whole (nothing stored): counts toward a split
    cause: str = ""              # why, for the log and the retry metrics
    # RETRY: wait at least this long (s): what is pushed again at the rate the
    # refusal named. Pushing faster only burns the limit (and makes Loki 3
    # shard the stream, after which its answers no longer cover the push).
    min_delay: float = 0.0
    # RETRY and SPLIT: push at most this many bytes (Loki's count) at a time,
    # 0 for no bound: one second of the named rate, so each push fits a bucket
    # of at least that much burst, and a push's answer stays exact.
    max_push_bytes: int = 0


Facts = Sequence[tuple[int, int, int]]  # per entry, in push order: timestamp ns, line bytes, Loki's bytes


def decide(outcome: int | BaseException, message: str, entries: Facts, whole_refusals: int = 0) -> Decision:
    """The decision for a push of `entries` (see `Facts`; encoder.entry_facts).

    `outcome` is the HTTP status, or the transport error the push ended with
    (a bug's exception never gets here: it is not Loki's answer);
    `whole_refusals` how many times in a row this push was refused as a whole.
    """
    n = len(entries)
    if isinstance(outcome, BaseException):
        return Decision(RETRY, cause="transport")
    status = outcome
    if 200 <= status < 300:
        return Decision(ACK, stored=n)
    if status == 413:
        return Decision(SPLIT, cause="too_large") if n > 1 else Decision(ACK, refused=n, cause="too_large")
    if status == 429:
        return _rate_limited(message, entries, whole_refusals)
    if status == 400:
        return _invalid(message, entries)
    if is_retriable(status):
        return Decision(RETRY, cause="server")
    return Decision(ACK, refused=n, cause="refused")


def _rate_limited(message: str, entries: Facts, whole_refusals: int) -> Decision:
    decision = _rate_limited_part(message, entries, whole_refusals)
    rate = _named_rate(message)
    if decision.action != RETRY or rate is None:
        return decision
    again = entries if decision.resend is None else [entries[i] for i in decision.resend]
    size = sum(e[2] for e in again)
    cap = max(1, int(rate))
    if decision.whole and len(entries) > 1 and size > rate:
        # More than a second of the limit, refused whole: it may be over the
        # burst and never pass. In pieces of a second's worth, now.
        return replace(decision, action=SPLIT, max_push_bytes=cap)
    return replace(decision, min_delay=min(size, rate) / rate, max_push_bytes=cap)


def chunked(indexes: Sequence[int], entries: Facts, max_bytes: int) -> list[tuple[int, ...]]:
    """`indexes` in order, in runs of at most `max_bytes` (Loki's count; at least one entry each).

    With `max_bytes` 0, one run.
    """
    if not max_bytes:
        return [tuple(indexes)]
    runs: list[tuple[int, ...]] = []
    run: list[int] = []
    size = 0
    for i in indexes:
        cost = entries[i][2]
        if run and size + cost > max_bytes:
            runs.append(tuple(run))
            run, size = [], 0
        run.append(i)
        size += cost
    if run:
        runs.append(tuple(run))
    return runs


def _named_rate(message: str) -> float | None:
    m = _LIMIT.search(message)
    if m is None:
        return None
    rate = float(m.group(1)) * _UNITS[m.group(2)]
    return rate if rate > 0 else None


def _rate_limited_part(message: str, entries: Facts, whole_refusals: int) -> Decision:
    n = len(entries)
    total = _TOTAL.search(message)
    if total is None:
        cause = "ingestion_rate_limit" if _TENANT_RATE in message else "rate_limit"
        return _whole(cause, n, whole_refusals)
    if _SHARD in message[total.end():]:
        # The answer covers one shard of the push: nothing is known of the rest.
        return Decision(RETRY, cause="sharded_stream")
    refused, reached = int(total.group(1)), int(total.group(2))
    if refused >= reached:
        return _whole("per_stream_rate_limit", n, whole_refusals)
    listed = _listed(message, entries)
    if listed is None:
        # Loki's text, but timestamps that are not this push's: all again.
        return Decision(RETRY, cause="per_stream_rate_limit")
    stored = reached - refused
    unlisted = refused - len(listed)
    tail = range(listed[-1] + 1, n) if listed else range(0)
    if unlisted == 0:
        # All of them named: exact. Entries that never reached the ingester
        # (n > reached) were refused by validation, for good.
        return Decision(RETRY, stored=stored, refused=n - reached, resend=tuple(listed),
                        cause="per_stream_rate_limit")
    resend = (*listed, *tail)
    # The rest of the tail (after the last named entry) holds `unlisted`
    # refused entries and some stored ones: exact only when it is all refused.
    uncertain = max(0, len(tail) - unlisted)
    return Decision(RETRY, stored=stored, resend=resend, uncertain=min(uncertain, stored),
                    cause="per_stream_rate_limit")


def resolve(decision: Decision, entries: Facts, held: set[int] | None) -> Decision:
    """`decision` with its uncertain entries settled by what Loki says it holds (their timestamps).

    Exact only if the count matches what the answer implied (`uncertain`
    held among those to resend); otherwise, or with no answer (None), the
    decision stays as it was: resend, and rely on Loki's dedup.
    """
    if held is None or decision.resend is None or not decision.uncertain:
        return decision
    keep = tuple(i for i in decision.resend if entries[i][0] not in held)
    if len(decision.resend) - len(keep) != decision.uncertain:
        return decision
    return replace(decision, resend=keep, uncertain=0)


def _whole(cause: str, n: int, whole_refusals: int) -> Decision:
    # Only Loki's own limits: a gateway's 429 says nothing of a burst.
    if n > 1 and cause != "rate_limit" and whole_refusals + 1 >= SPLIT_AFTER_WHOLE_REFUSALS:
        return Decision(SPLIT, whole=True, cause=cause)
    return Decision(RETRY, whole=True, cause=cause)


def _invalid(message: str, entries: Facts) -> Decision:
    n = len(entries)
    total = _TOTAL.search(message)
    if total is not None:
        # The ingester's 400: entries too far behind the stream's newest.
        refused, reached = int(total.group(1)), int(total.group(2))
        refused = min(n, refused + max(0, n - reached))
        return Decision(ACK, stored=n - refused, refused=refused, cause="invalid")
    grouped = _GROUPED.findall(message)
    by_limit = _counted_by_limit(message, entries)
    if grouped:
        # Loki 3: every error, counted; a long answer may be cut short
        # (shipper.loki keeps its first MAX_RESPONSE_BODY bytes), so the
        # limits it names count too, and the larger count holds.
        refused = min(n, max(sum(map(int, grouped)), by_limit if by_limit < n else 0))
    else:
        refused = by_limit
    return Decision(ACK, stored=n - refused, refused=refused, cause="invalid")


def _counted_by_limit(message: str, entries: Facts) -> int:
    """Entries the validation errors named in `message` stand for (Loki 2.7 names only the last one).

    Entries over the size a line-too-long error names, older than the bound
    a too-old error names; at least one. Unknown messages (a gateway's, a
    whole stream's labels) refuse all: Loki validates labels before any entry.
    """
    too_long = _TOO_LONG.search(message)
    too_old = _TOO_OLD.search(message)
    oldest = parse_rfc3339(too_old.group(1)) if too_old is not None else None
    if too_long is None and oldest is None:
        if "timestamp too new" in message:
            return 1  # Loki 2.7 does not say the bound; Loki 3 would have grouped them
        return len(entries)
    limit = int(too_long.group(1)) if too_long is not None else None
    return max(1, sum(1 for ts, size, _ in entries
                      if (limit is not None and size > limit) or (oldest is not None and ts < oldest)))


def _listed(message: str, entries: Facts) -> list[int] | None:
    """Indexes of the entries Loki named, in push order; None if one is not in the push."""
    index = {e[0]: i for i, e in enumerate(entries)}
    out = []
    for text in _IGNORED.findall(message):
        ts = parse_go_time(text)
        i = index.get(ts) if ts is not None else None
        if i is None:
            return None
        out.append(i)
    out.sort()
    return out


def parse_go_time(text: str) -> int | None:
    """Epoch nanoseconds of a Go `time.Time.String()` text; None if it is not one."""
    m = _GO_TIME.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    offset = (int(oh) * 60 + int(om)) * 60 * (-1 if sign == "-" else 1)
    return _epoch_ns(int(year), int(month), int(day), int(hour), int(minute), int(second), frac, offset)


def parse_rfc3339(text: str) -> int | None:
    """Epoch nanoseconds of an RFC 3339 time; None if it is not one."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    offset = 0 if sign is None else (int(oh) * 60 + int(om)) * 60 * (-1 if sign == "-" else 1)
    return _epoch_ns(int(year), int(month), int(day), int(hour), int(minute), int(second), frac, offset)


def _epoch_ns(year: int, month: int, day: int, hour: int, minute: int, second: int,
              frac: str | None, offset: int) -> int:
    # Days from the civil date (Howard Hinnant's algorithm): exact, and no
    # datetime import on the sidecar's path for a rarely taken branch.
    y = year - (month <= 2)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    nanos = int((frac or "").ljust(9, "0")) if frac else 0
    return seconds * 1_000_000_000 + nanos
