"""shipper.airflow.loki_read, the pure part of reading a try back from Loki: table tests.

The pager is run against `fake_loki`, which answers query_range as Loki does
(forward, `start` inclusive, `end` exclusive, the first `limit` entries by time
over all streams, grouped by stream); tests/test_airflow_remote_log.py runs the
same code against the real Loki.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from shipper.airflow import loki_read as lr

NS = lr.NS
T0 = 1_764_577_190_106_514_000  # 2025-12-01T08:19:50.106514Z


@pytest.mark.parametrize("value, quoted", [
    ("plain", '"plain"'),
    ('a"b', '"a\\"b"'),
    ("back\\slash", '"back\\\\slash"'),
    ("new\nline\ttab", '"new\\nline\\ttab"'),
    ("manual__2026-12-01T08:19:19.166780+00:00", '"manual__2026-12-01T08:19:19.166780+00:00"'),
    ("\x01", '"\\x01"'),
    ("héllo ✓", '"héllo ✓"'),
])
def test_quote(value: str, quoted: str) -> None:
    assert lr.quote(value) == quoted


CFG = lr.ReadConfig(url="http://loki:3100")


@pytest.mark.parametrize("key, config, metadata, query", [
    (lr.TryKey("etl", "load", "r1", 2), CFG, True,
     '{dag_id="etl", task_id="load"} | run_id="r1" | try_number="2" | map_index=""'),
    (lr.TryKey("etl", "load", "r1", 1, 0), CFG, True,
     '{dag_id="etl", task_id="load"} | run_id="r1" | try_number="1" | map_index="0"'),
    (lr.TryKey("etl", "load", "r1", 1, 7), lr.ReadConfig(selector={"namespace": "airflow"}), True,
     '{namespace="airflow", dag_id="etl", task_id="load"} | run_id="r1" | try_number="1" | map_index="7"'),
    # run_id configured as a label in the sidecar ([airflow] labels): in the selector, not filtered
    (lr.TryKey("etl", "load", "r1", 3), lr.ReadConfig(label_keys=("dag_id", "task_id", "run_id")), True,
     '{dag_id="etl", task_id="load", run_id="r1"} | try_number="3" | map_index=""'),
    # map_index as a label, unmapped task: matched empty, after the others
    (lr.TryKey("etl", "load", "r1", 3), lr.ReadConfig(label_keys=("map_index", "dag_id", "task_id")), True,
     '{dag_id="etl", task_id="load", map_index=""} | run_id="r1" | try_number="3"'),
    # Loki 2.x: no structured metadata, labels only (the window narrows it)
    (lr.TryKey("etl", "load", "r1", 2, 1), CFG, False, '{dag_id="etl", task_id="load"}'),
    (lr.TryKey('we"ird', "t", 'r"\n', 1), CFG, True,
     '{dag_id="we\\"ird", task_id="t"} | run_id="r\\"\\n" | try_number="1" | map_index=""'),
])
def test_build_query(key: lr.TryKey, config: lr.ReadConfig, metadata: bool, query: str) -> None:
    assert lr.build_query(key, config, metadata=metadata) == query


@pytest.mark.parametrize("url, base", [
    ("http://loki-gateway.monitoring.svc.cluster.local:80/loki/api/v1/push",
     "http://loki-gateway.monitoring.svc.cluster.local:80"),
    ("https://loki.example.com/", "https://loki.example.com"),
    ("https://gw.example.com/tenant-a/loki/api/v1/query_range", "https://gw.example.com/tenant-a"),
    ("http://127.0.0.1:3100", "http://127.0.0.1:3100"),
])
def test_base_url(url: str, base: str) -> None:
    assert lr.ReadConfig(url=url).url == base
    assert lr.ReadConfig(url=url).query_range_url == base + "/loki/api/v1/query_range"


@pytest.mark.parametrize("url", ["loki:3100", "ftp://x/", "http:///path"])
def test_bad_url_is_refused_naming_the_key(url: str) -> None:
    with pytest.raises(lr.ReadConfigError, match="^url: "):
        lr.ReadConfig(url=url)


@pytest.mark.parametrize("kwargs, key", [
    ({"structured_metadata": "maybe"}, "structured_metadata"),
    ({"page_limit": 0}, "page_limit"),
    ({"settle": -1}, "settle"),
    ({"cert_file": "/c"}, "cert_file"),
    ({"basic_auth_user": "u"}, "basic_auth_password_file"),
    ({"bearer_token_file": "/t", "basic_auth_user": "u", "basic_auth_password_file": "/p"}, "bearer_token_file"),
])
def test_bad_config_names_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(lr.ReadConfigError, match=f"^{key}"):
        lr.ReadConfig(**kwargs)


def test_the_sidecars_own_config_file_configures_the_reader() -> None:
    """The pod template's SHIPPER_CONFIG (plus tenant and a token) read as the reader's config."""
    text = """
shutdown_timeout = 10
[[sources]]
path = "/var/log/task/stdout.log"
stream = "stdout"
multiline = true
[loki]
url = "https://loki-gateway.monitoring.svc.cluster.local/loki/api/v1/push"
batch_wait = 0.5
tenant_id = "airflow"
bearer_token_file = "/var/run/secrets/loki/token"
ca_file = "/etc/loki-ca/ca.crt"
[labels]
namespace = "airflow"
[airflow]
annotations_file = "/etc/podinfo/annotations"
labels = ["dag_id", "task_id"]
[metrics]
listen = "0.0.0.0:9337"
[read]
page_limit = 2000
settle = 1.5
"""
    c = lr.config_from_toml(text)
    assert (c.url, c.tenant_id, c.bearer_token_file, c.ca_file) == (
        "https://loki-gateway.monitoring.svc.cluster.local", "airflow", "/var/run/secrets/loki/token",
        "/etc/loki-ca/ca.crt")
    assert dict(c.selector) == {"namespace": "airflow"} and c.label_keys == ("dag_id", "task_id")
    assert (c.page_limit, c.settle) == (2000, 1.5)


@pytest.mark.parametrize("text, error", [
    ("[loki]\nurl = 'http://x'\npasword_file = 'p'\n", r"\[loki\] pasword_file: unknown key"),
    ("[read]\npage = 1\n", r"\[read\] page: unknown key"),
    ("[reader]\npage_limit = 1\n", r"\[reader\]: unknown section"),
    ("[loki\n", "not TOML"),
])
def test_bad_toml_names_the_key(text: str, error: str) -> None:
    with pytest.raises(lr.ReadConfigError, match=error):
        lr.config_from_toml(text)


# -- windows ---------------------------------------------------------------------------------------

NOW = T0 + 3600 * NS


@pytest.mark.parametrize("start, end, running, metadata, window", [
    # finished: before/after margins (600 s each)
    (T0, T0 + 60 * NS, False, True, (T0 - 600 * NS, T0 + 660 * NS)),
    # running: up to now - settle (2 s)
    (T0, None, True, True, (T0 - 600 * NS, NOW - 2 * NS)),
    (T0, T0 + 60 * NS, True, True, (T0 - 600 * NS, NOW - 2 * NS)),
    # queued, no start yet: the last `before` seconds
    (None, None, True, True, (NOW - 600 * NS, NOW - 2 * NS)),
    # Loki 2.x fallback: the try's own window, 30 s wider each side
    (T0, T0 + 60 * NS, False, False, (T0 - 30 * NS, T0 + 90 * NS)),
    # an end in the future (clock skew) is capped at now + 1 s
    (T0, NOW + 3600 * NS, False, True, (T0 - 600 * NS, NOW + NS)),
])
def test_try_window(start: int | None, end: int | None, running: bool, metadata: bool,
                    window: tuple[int, int]) -> None:
    assert lr.try_window(CFG, start_ns=start, end_ns=end, now_ns=NOW, running=running,
                         metadata=metadata) == window


@pytest.mark.parametrize("start, end, max_len, windows", [
    (0, 10, 4, [(0, 4), (4, 8), (8, 10)]),
    (0, 10, 10, [(0, 10)]),
    (5, 5, 3, []),
])
def test_plan_windows(start: int, end: int, max_len: int, windows: list[tuple[int, int]]) -> None:
    assert lr.plan_windows(start, end, max_len) == windows


# -- paging against a Loki that answers as Loki does -----------------------------------------------

Row = tuple[dict[str, str], int, str, dict[str, str]]


def fake_loki(rows: list[Row], params: dict[str, str], *, max_entries: int = 10**9,
              max_length_ns: int = 10**30) -> tuple[int, Any]:
    start, end, limit = int(params["start"]), int(params["end"]), int(params["limit"])
    assert params["direction"] == "forward"
    if limit > max_entries:
        return 400, f"max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {max_entries})"
    if end - start > max_length_ns:
        return 400, "the query time range exceeds the limit (query length: 800h0m1s, limit: 30d1h)"
    hits = sorted((r for r in rows if start <= r[1] < end), key=lambda r: r[1])[:limit]
    streams: dict[str, dict[str, Any]] = {}
    for labels, ts, line, meta in hits:
        s = streams.setdefault(json.dumps(labels, sort_keys=True), {"stream": labels, "values": []})
        s["values"].append([str(ts), line, {"structuredMetadata": meta}])
    # Loki returns each stream's entries together, streams in no particular order
    return 200, {"resultType": "streams", "result": list(reversed(streams.values()))}


def read_all(pager: lr.Pager, rows: list[Row], **loki: int) -> list[lr.Entry]:
    out: list[lr.Entry] = []
    while (params := pager.params()) is not None:
        status, answer = fake_loki(rows, params, **loki)
        if status == 400:
            if (n := lr.refused_limit(answer)) is not None:
                pager.limit_refused(n)
                continue
            if (d := lr.refused_length(answer)) is not None:
                pager.length_refused(d)
                continue
            raise AssertionError(answer)
        out += pager.feed(answer)
    return out


OUT = {"dag_id": "d", "task_id": "t", "stream": "stdout"}
ERR = {"dag_id": "d", "task_id": "t", "stream": "stderr"}
SUMMARY = {"dag_id": "d", "task_id": "t", "job": "shipper"}
META = {"run_id": "r", "try_number": "1"}


def task_rows(n_out: int, n_err: int, *, same_times: bool = False) -> list[Row]:
    rows: list[Row] = [(OUT, T0 + 10 * i, f"out {i}", META) for i in range(n_out)]
    step = 10 if same_times else 7
    rows += [(ERR, T0 + step * i + (0 if same_times else 3), f"err {i}", META) for i in range(n_err)]
    return rows


@pytest.mark.parametrize("n_out, n_err, limit, same_times", [
    (0, 0, 100, False),
    (50, 0, 100, False),
    (100, 0, 100, False),   # exactly one full page, then an empty one
    (12_345, 0, 1000, False),
    (3000, 2000, 500, False),
    (3000, 3000, 501, True),   # stdout and stderr entries at the same nanoseconds across page ends
    (999, 999, 3, True),       # pages of three: two timestamps shared by the two streams, one cut
])
def test_pages_return_every_entry_once_in_time_order(n_out: int, n_err: int, limit: int, same_times: bool) -> None:
    rows = task_rows(n_out, n_err, same_times=same_times)
    rows.append((SUMMARY, T0 + 10**9, '{"code": 0}', META))
    pager = lr.Pager("{q}", T0 - NS, T0 + 2 * 10**9, limit=limit, max_length_ns=10**30)
    got = read_all(pager, rows)
    expected = sorted(rows, key=lambda r: (r[1], r[0].get("stream") != "stdout", "job" in r[0]))
    assert [(e.ts_ns, e.line) for e in got] == [(r[1], r[2]) for r in expected]
    assert pager.done
    assert pager.pages >= max(1, len(rows) // limit)


def test_a_page_limit_over_lokis_is_lowered_to_what_loki_names() -> None:
    rows = task_rows(2500, 0)
    pager = lr.Pager("{q}", T0, T0 + 10**9, limit=5000, max_length_ns=10**30)
    got = read_all(pager, rows, max_entries=1000)
    assert pager.limit == 1000 and len(got) == 2500 and pager.pages == 3


def test_a_window_over_lokis_max_query_length_is_cut_to_it() -> None:
    day = 86400 * NS
    rows: list[Row] = [(OUT, T0 + i * day, f"day {i}", META) for i in range(70)]
    pager = lr.Pager("{q}", T0, T0 + 70 * day, limit=1000, max_length_ns=10**30)
    got = read_all(pager, rows, max_length_ns=(30 * 24 + 1) * 3600 * NS)
    assert [e.line for e in got] == [f"day {i}" for i in range(70)]
    assert pager.max_length_ns == (30 * 24 + 1) * 3600 * NS


def test_more_entries_at_one_nanosecond_than_a_page_is_an_error_not_a_loop() -> None:
    rows: list[Row] = [({**OUT, "n": str(i)}, T0, "same", META) for i in range(5)]
    pager = lr.Pager("{q}", T0, T0 + 1, limit=3, max_length_ns=10**30)
    with pytest.raises(lr.PagingError, match="more than 3 entries at one timestamp"):
        read_all(pager, rows)


@pytest.mark.parametrize("body, limit", [
    ("max entries limit per query exceeded, limit > max_entries_limit_per_query (999999 > 500000)", 500000),  # 3.4.6
    ("max entries limit per query exceeded, limit > max_entries_limit (999999 > 5000)", 5000),  # 2.7.7
    ("something else", None),
])
def test_refused_limit(body: str, limit: int | None) -> None:
    assert lr.refused_limit(body) == limit


@pytest.mark.parametrize("body, hours", [
    ("the query time range exceeds the limit (query length: 800h0m1s, limit: 30d1h)", 721),  # 3.4.6
    ("the query time range exceeds the limit (query length: 800h0m1s, limit: 721h0m0s)", 721),  # 2.7.7
    ("nothing", None),
])
def test_refused_length(body: str, hours: int | None) -> None:
    got = lr.refused_length(body)
    assert (got if got is None else got / 3600 / NS) == hours


def test_parse_streams_reads_categorized_and_plain_values() -> None:
    data = {"resultType": "streams", "result": [
        {"stream": ERR, "values": [[str(T0 + 1), "e", {"structuredMetadata": {"level": "error"}, "parsed": {}}]]},
        {"stream": OUT, "values": [[str(T0 + 1), "o"], [str(T0), "first"]]},
    ]}
    got = lr.parse_streams(data)
    assert [(e.line, e.stream, dict(e.metadata)) for e in got] == [
        ("first", "stdout", {}), ("o", "stdout", {}), ("e", "stderr", {"level": "error"})]
    with pytest.raises(lr.PagingError, match="not log streams"):
        lr.parse_streams({"resultType": "matrix", "result": []})


# -- rendering ---------------------------------------------------------------------------------------

AF3_RECORD = ('{"timestamp":"2026-12-01T08:19:50.106514Z","level":"error","event":"caught exception",'
              '"error_detail":[{"exc_type":"ValueError","exc_value":"x","frames":[]}],"logger":"task"}')


@pytest.mark.parametrize("line, meta, expected", [
    (AF3_RECORD, {}, AF3_RECORD),  # an Airflow 3 record: unchanged
    ("a raw line", {}, {"timestamp": "2025-12-01T08:19:50.106514Z", "event": "a raw line"}),
    ("Traceback (most recent call last):\n  File \"x\"\nValueError: y", {"level": "error"},
     {"timestamp": "2025-12-01T08:19:50.106514Z", "event": "Traceback (most recent call last):\n  File \"x\"\n"
      "ValueError: y", "level": "error"}),
    ('{"no_event": 1}', {}, {"timestamp": "2025-12-01T08:19:50.106514Z", "event": '{"no_event": 1}'}),
    ("{not json", {}, {"timestamp": "2025-12-01T08:19:50.106514Z", "event": "{not json"}),
])
def test_airflow3_line(line: str, meta: dict[str, str], expected: str | dict[str, str]) -> None:
    got = lr.airflow3_line(lr.Entry(T0, line, OUT, meta))
    if isinstance(expected, str):
        assert got == expected
    else:
        assert json.loads(got) == expected


def test_airflow2_lines_are_the_text_the_task_printed() -> None:
    text = "[2026-12-01T08:19:50.106+0000] {taskinstance.py:3311} ERROR - Task failed\nTraceback ...\n  File"
    assert lr.airflow2_line(lr.Entry(T0, text, OUT, {})) == text


@pytest.mark.parametrize("summary, finished, level, text", [
    ({"code": 0, "reason": "SIGTERM", "lines_read": 120, "lines_sent": 120, "dropped": {"buffer_full": 0}},
     True, "info", "shipper: every line of this try was delivered: lines read 120, sent 120, dropped 0 (exit 0, SIGTERM)"),
    ({"code": 1, "reason": "shutdown deadline", "lines_read": 120, "lines_sent": 100,
      "dropped": {"shutdown_deadline": 15, "rejected": 5, "buffer_full": 0}}, True, "error",
     "shipper: this log is incomplete: lines read 120, sent 100, dropped 20 (rejected 5, shutdown_deadline 15) "
     "(exit 1, shutdown deadline)"),
    ({"code": 4, "reason": "SIGTERM", "lines_read": 10, "lines_sent": 4, "dropped": {}, "lines_spooled": 6},
     True, "warning", "shipper: this log is incomplete: lines read 10, sent 4, dropped 0, left in the pod's spool 6 "
     "(exit 4, SIGTERM)"),
    (None, True, "warning", "shipper: no exit summary in Loki for this try (yet)"),
    ("not json", True, "warning", "shipper: exit summary not readable: not json"),
])
def test_the_summary_line_says_whether_the_log_is_complete(summary: Any, finished: bool, level: str,
                                                           text: str) -> None:
    entry = None if summary is None else lr.Entry(
        T0, summary if isinstance(summary, str) else json.dumps(summary), SUMMARY, META)
    view = lr.summarize(entry, finished=finished)
    assert view is not None
    assert view.level == level
    assert view.text.startswith(text)
    record = json.loads(lr.airflow3_summary_line(view, T0))
    assert (record["timestamp"], record["level"], record["event"], record["logger"]) == (
        "2025-12-01T08:19:50.106514Z", level, view.text, "shipper")
    line2 = lr.airflow2_summary_line(view, T0)
    # Airflow 2's _parse_timestamp: the first word, without [], is an ISO time
    assert re.match(r"\[2025-12-01T08:19:50\.106\+0000\] \{shipper\} (INFO|WARNING|ERROR) - shipper: ", line2)


def test_a_running_try_has_no_summary_line_yet() -> None:
    assert lr.summarize(None, finished=False) is None


@pytest.mark.parametrize("status, config, expected", [
    (401, lr.ReadConfig(), "no tenant_id is configured and this Loki requires one"),
    (401, lr.ReadConfig(tenant_id="a"), "no credential is configured"),
    (401, lr.ReadConfig(bearer_token_file="/run/secrets/token"), "the bearer token in /run/secrets/token was not accepted"),
    (401, lr.ReadConfig(basic_auth_user="reader", basic_auth_password_file="/p"), "user 'reader' with the password in /p"),
    (403, lr.ReadConfig(tenant_id="a"), "403 Forbidden to the log query: the credential is not allowed to read this tenant"),
    (404, lr.ReadConfig(url="http://gw/x"), "404 to http://gw/x/loki/api/v1/query_range"),
    (429, lr.ReadConfig(), "rate-limiting queries (429)"),
    (502, lr.ReadConfig(), "failed the log query (502)"),
    (400, lr.ReadConfig(), "refused the log query (400)"),
])
def test_refusals_are_explained(status: int, config: lr.ReadConfig, expected: str) -> None:
    assert expected in lr.explain_status(status, "Loki's text", config)


def test_no_lines_messages() -> None:
    key = lr.TryKey("d", "t", "r", 1)
    window = (T0, T0 + NS)
    assert "no lines in Loki yet" in lr.no_lines_text(key, "{q}", window, finished=False)
    assert "no lines in Loki for this try" in lr.no_lines_text(key, "{q}", window, finished=True)
    assert "is structured metadata stored" in lr.no_lines_text(key, "{q}", window, finished=True,
                                                               labels_only_hits=True)


@pytest.mark.parametrize("buildinfo, major", [
    ({"version": "3.4.6"}, 3), ({"version": "v2.7.7"}, 2), ({"version": ""}, None), ({}, None)])
def test_loki_major_version(buildinfo: dict[str, str], major: int | None) -> None:
    assert lr.loki_major_version(buildinfo) == major
