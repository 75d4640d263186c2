"""What the reader needs of an Airflow task instance (2.10 and 3.x alike, duck-typed)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from shipper.airflow import loki_read as lr

# Airflow's default log_filename_template: .../[map_index=<m>/]attempt=<n>.log (FACTS §2)
_ATTEMPT = re.compile(r"(?:^|/)(?:map_index=(?P<map_index>-?\d+)/)?attempt=(?P<try_number>\d+)\.log\Z")

# Airflow's states in which a try may still write lines.
UNFINISHED = frozenset({"running", "deferred", "queued", "scheduled", "restarting", "up_for_reschedule", "none",
                        ""})


def _state(ti: Any) -> str:
    state = getattr(ti, "state", None)
    return str(getattr(state, "value", state) or "").lower()


def is_running(ti: Any, try_number: int) -> bool:
    """The try may still write: it is the TI's current try and the TI is not finished."""
    if int(getattr(ti, "try_number", try_number) or 0) != try_number:
        return False  # an earlier try (Airflow 2 passes the current TI for every try)
    return _state(ti) in UNFINISHED or getattr(ti, "end_date", None) is None


def try_key(ti: Any, try_number: int | None = None, relative_path: str = "") -> lr.TryKey:
    """The try to read: the ti's ids; the try number asked for (or in the log path, else the ti's)."""
    if try_number is None:
        m = _ATTEMPT.search(relative_path or "")
        try_number = int(m.group("try_number")) if m else int(ti.try_number)
    map_index = getattr(ti, "map_index", -1)
    return lr.TryKey(str(ti.dag_id), str(ti.task_id), str(ti.run_id), int(try_number),
                     -1 if map_index is None else int(map_index))


def ns(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    return int(dt.timestamp() * 1_000_000) * 1000


def start_of(ti: Any) -> int | None:
    """When the try's pod may have started printing: queued (if known), else started."""
    for name in ("queued_dttm", "start_date"):
        value = ns(getattr(ti, name, None))
        if value is not None:
            return value
    return None


def end_of(ti: Any) -> int | None:
    return ns(getattr(ti, "end_date", None))
