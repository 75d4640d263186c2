"""Task logs in the Airflow UI, read back from Loki (issue 17).

Installed with the `airflow` extra (`pip install 'shipper[airflow]'`) on the
Airflow api-server (3.x) or webserver (2.10), never in the sidecar: the
sidecar's code never imports this package (tests/test_airflow_remote_log.py
checks it), so none of it counts against the sidecar's memory budget.

- `shipper.airflow.loki_read`: pure (no IO): the LogQL query of a try, the
  paging plan, merging stdout and stderr, the exit summary line, rendering as
  Airflow 3 records or Airflow 2 text, readable error messages.
- `shipper.airflow.client`: the query client (urllib; TLS and credentials from
  files like the sidecar's `[loki]` section) and the reading loop.
- `shipper.airflow.airflow3`: `LokiRemoteLogIO`, Airflow 3's `RemoteLogIO` /
  `RemoteLogStreamIO` (set as `REMOTE_TASK_LOG` in the logging config module).
- `shipper.airflow.airflow2`: `LokiTaskHandler`, an Airflow 2.10
  `FileTaskHandler` whose `_read_remote_logs` reads Loki.

docs/airflow-ui.md has the Airflow settings.
"""
