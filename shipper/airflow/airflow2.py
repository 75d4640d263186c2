"""Airflow 2.10: task logs in the UI read from Loki, as a `FileTaskHandler` subclass.

Airflow 2.10's `FileTaskHandler._read(ti, try_number, metadata)`
(`airflow/utils/log/file_task_handler.py`) calls `self._read_remote_logs(ti,
try_number, metadata)` and expects `(messages, logs)`: `messages` are shown in
the "Log message source details" group, each element of `logs` is the content
of one log (text); when `logs` is empty Airflow falls back to the local file and
the worker's log server. It then interleaves all logs by the timestamps it
parses at the start of each line (`[2026-12-01T08:19:50.106+0000] ...`; a line
without one, such as a traceback's, keeps the time of the line before) and cuts
what the UI already has by `log_pos` (characters) while the task runs.

For a try other than the current one Airflow passes the current task instance;
its times are the current try's, so this handler reads the try's own start and
end from `TaskInstanceHistory` (2.10).

Configured in the logging config module as the `task` handler (docs/airflow-ui.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from airflow.utils.log.file_task_handler import FileTaskHandler  # type: ignore[import-not-found, unused-ignore]

from shipper.airflow import _ti
from shipper.airflow import loki_read as lr
from shipper.airflow.client import LokiHTTP, read_try


class LokiTaskHandler(FileTaskHandler):  # type: ignore[misc, unused-ignore]
    """FileTaskHandler whose remote log is the try's lines in Loki.

    `config_file`: a TOML file as for the Airflow 3 reader (`[loki]`, `[labels]`,
    `[read]`); or `loki`: a dict of ReadConfig keys. Writing is the parent's (the
    local file the task writes in its own pod); nothing is uploaded: the sidecar
    shipped every line.
    """

    def __init__(self, base_log_folder: str, config_file: str | None = None, loki: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(base_log_folder, **kwargs)
        if config_file:
            self.loki_config = lr.config_from_toml(Path(config_file).read_text())
        else:
            self.loki_config = lr.ReadConfig(**(loki or {}))
        self._http = LokiHTTP(self.loki_config)

    def _read_remote_logs(self, ti: Any, try_number: int, metadata: Any = None) -> tuple[list[str], list[str]]:
        key = _ti.try_key(ti, try_number)
        times = _try_times(ti, try_number)
        running = _ti.is_running(ti, try_number)
        reading = read_try(self.loki_config, key, start_ns=times[0], end_ns=times[1], running=running,
                           http=self._http)
        lines: list[str] = []
        now = time.time_ns()
        for item in reading.items():
            kind = item[0]
            if kind == "line":
                lines.append(lr.airflow2_line(item[1]))
            elif kind == "summary":
                lines.append(lr.airflow2_summary_line(item[1], item[2]))
            else:
                _, text, level, ts = item
                lines.append(lr.airflow2_message(text, ts if ts is not None else now, level))
        return reading.sources, ["\n".join(lines)] if lines else []


def _try_times(ti: Any, try_number: int) -> tuple[int | None, int | None]:
    """(start, end) of the try in ns: the TI's for its current try, TaskInstanceHistory's for an earlier one."""
    if int(getattr(ti, "try_number", try_number)) == try_number:
        return _ti.start_of(ti), _ti.end_of(ti)
    try:
        from airflow.models.taskinstancehistory import (  # type: ignore[import-not-found, unused-ignore]
            TaskInstanceHistory)
        from airflow.utils.session import create_session  # type: ignore[import-not-found, unused-ignore]

        with create_session() as session:
            row = session.query(TaskInstanceHistory).filter(
                TaskInstanceHistory.dag_id == ti.dag_id, TaskInstanceHistory.task_id == ti.task_id,
                TaskInstanceHistory.run_id == ti.run_id, TaskInstanceHistory.map_index == ti.map_index,
                TaskInstanceHistory.try_number == try_number).one_or_none()
            if row is not None:
                return _ti.start_of(row), _ti.end_of(row)
    except Exception:  # no history table (before 2.10), or no database here: the wide window below
        pass
    # Unknown: from the run's start to the current try's start; the metadata filters select the try.
    dag_run_start = getattr(getattr(ti, "dag_run", None), "start_date", None)
    return _ti.ns(dag_run_start), _ti.start_of(ti)
