"""Retry policy as data: which answers are retried, and how long to wait. No IO.

Like Vector's LokiRetryLogic and Promtail: 429, 5xx, timeouts and connection
errors are retried; any other 4xx means Loki refused the batch for good.
Retries are unlimited while the shipper runs (the buffer bounds memory); at
shutdown, `shutdown_timeout` bounds them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator


# A proxy's Retry-After is honoured but never beyond this: a sidecar that
# sleeps for an hour on a proxy's word is a sidecar that loses the pod's logs.
MAX_RETRY_AFTER = 60.0


def _urandom_unit() -> float:
    """Uniform in [0, 1) from os.urandom: jitter needs no `random` module (0.2 MiB)."""
    return int.from_bytes(os.urandom(4), "little") / 2**32


def is_retriable(outcome: int | BaseException) -> bool:
    """True when a push that ended with `outcome` (HTTP status or error) should be retried."""
    if isinstance(outcome, BaseException):
        # Transport errors (refused, reset, timeout, TLS) are transient by nature.
        # shipper.http1.ProtocolError is a ConnectionError: a peer (Loki or a
        # proxy) that died or spoke garbage in mid-answer.
        return isinstance(outcome, (OSError, TimeoutError, EOFError, ConnectionError))
    return outcome == 429 or outcome == 408 or 500 <= outcome <= 599


def backoff(minimum: float, maximum: float, rng: Callable[[], float] = _urandom_unit) -> Iterator[float]:
    """Delays for successive retries: exponential from `minimum` to `maximum`, with jitter.

    "Equal jitter": each delay is uniform in [d/2, d] for the exponential d, so
    thousands of pods that lost Loki at the same moment do not come back in step,
    and no delay collapses to zero.
    """
    d = minimum
    while True:
        yield d / 2 + rng() * d / 2
        d = min(maximum, d * 2)


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped.

    Returns None when the header is absent or malformed (then the backoff applies).
    """
    if not value:
        return None
    value = value.strip()
    # isascii() too: str.isdigit() is also true of "²" or "٣", which float() refuses.
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        from email.utils import parsedate_to_datetime  # rare path: import only when needed

        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now_epoch), MAX_RETRY_AFTER)
