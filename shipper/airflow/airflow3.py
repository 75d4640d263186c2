"""Airflow 3: task logs in the UI read from Loki, as a `RemoteLogIO` / `RemoteLogStreamIO`.

Airflow 3.3's protocol (`airflow/_shared/logging/remote.py`): `processors`,
`upload(path, ti)`, `read(relative_path, ti) -> (sources, messages)`, and for
`RemoteLogStreamIO` `stream(relative_path, ti) -> (sources, [line generator])`.
The api-server finds the object as the module attribute `REMOTE_TASK_LOG`
beside the dict named by `[logging] logging_config_class`
(`airflow/_shared/logging/factory.py` `resolve_remote_task_log`: a user module's
`REMOTE_TASK_LOG` wins, whatever `[logging] remote_logging` says), and
`FileTaskHandler._read_remote_logs` calls `stream` when the object has it,
with the rendered log path and the task instance of the try asked for (the log
route loads the `TaskInstance` or `TaskInstanceHistory` of that try number).

Each line `stream` yields is parsed by Airflow as a `StructuredLogMessage` JSON
(else as text): an Airflow 3 record is passed through as the pod printed it, so
the UI renders it exactly as it renders the task's own log file (level, logger,
`error_detail` tracebacks...). Airflow itself orders the records by their
timestamps, as it does for a local file.

This module imports nothing from Airflow: the protocol is structural.
docs/airflow-ui.md has the settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from shipper.airflow import _ti
from shipper.airflow import loki_read as lr
from shipper.airflow.client import LokiHTTP, TryRead, read_try


class LokiRemoteLogIO:
    """Reads a try's log from Loki (never writes: the sidecar shipped every line)."""

    def __init__(self, config: lr.ReadConfig | None = None, *, now: Callable[[], int] = time.time_ns,
                 **kwargs: Any) -> None:
        self.config = config if config is not None else lr.ReadConfig(**kwargs)
        self._now = now
        self._http = LokiHTTP(self.config)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str]) -> LokiRemoteLogIO:
        """From a TOML file: `[loki]` as the sidecar's, `[labels]`, `[airflow] labels`, `[read]`."""
        return cls(lr.config_from_toml(Path(path).read_text()))

    @property
    def processors(self) -> tuple[Any, ...]:
        """None: nothing is transformed or uploaded on the task's write path."""
        return ()

    def upload(self, path: os.PathLike[str] | str, ti: Any = None) -> None:
        """Does nothing, on purpose: the shipper sidecar already sent every line the
        task printed to Loki as it was printed (and its exit summary), so there is
        nothing left to upload, and the worker needs no Loki credentials."""

    def _start(self, relative_path: str, ti: Any) -> TryRead:
        key = _ti.try_key(ti, relative_path=relative_path)
        return read_try(self.config, key, start_ns=_ti.start_of(ti), end_ns=_ti.end_of(ti),
                        running=_ti.is_running(ti, key.try_number), now=self._now, http=self._http)

    def stream(self, relative_path: str, ti: Any) -> tuple[list[str], list[Generator[str, None, None]]]:
        """(sources, [one generator of JSON lines]): the try's lines, stdout and stderr
        merged in time order, then the shipper's exit summary. The first page is read
        now (so a failure is in `sources` and in the log at once), the rest lazily as
        Airflow consumes the generator. A running try's lines are those up to a moment
        ago (`[read] settle`); Airflow's next poll asks again and gets the new ones."""
        reading = self._start(relative_path, ti)
        return reading.sources, [_lines(reading)]

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        """The legacy interface: the same lines as `stream`, as one text blob."""
        reading = self._start(relative_path, ti)
        lines = list(_lines(reading))
        return reading.sources, ["\n".join(lines)] if lines else None


def _lines(reading: TryRead) -> Generator[str, None, None]:
    for item in reading.items():
        kind = item[0]
        if kind == "line":
            yield lr.airflow3_line(item[1])
        elif kind == "summary":
            yield lr.airflow3_summary_line(item[1], item[2])
        else:
            _, text, level, ts = item
            yield lr.airflow3_message(text, ts, level)
