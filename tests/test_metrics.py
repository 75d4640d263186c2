"""The Prometheus text exposition, pure: hand-built counters in, exact samples out.

The output is parsed with `prometheus_client`'s parser (never the shipper's
own code) and linted with the real `promtool check metrics`.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper import __version__, events, metrics
from shipper.events import Counters, Histogram
from shipper.metrics import ProcessSample

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# A source path with every character the text format escapes in a label value.
NASTY_SOURCE = 'C:\\logs\\"quoted"\nsecond line'
PLAIN_SOURCE = "/var/log/task/stdout"
PYTHON = ".".join(map(str, sys.version_info[:3]))
PROCESS = ProcessSample(cpu_seconds=1.25, resident_bytes=12_345_678, virtual_bytes=98_765_432,
                        open_fds=9, max_fds=1024, start_time=1_795_000_000.5)


def parse(text: bytes) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and every family's type by name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text.decode()):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples, types


def hand_built() -> Counters:
    c = Counters()
    c.lines_read = {PLAIN_SOURCE: 120, NASTY_SOURCE: 3}
    c.bytes_read = {PLAIN_SOURCE: 4800, NASTY_SOURCE: 30}
    c.lines_split = 2
    c.lines_invalid_utf8 = 1
    c.lines_merged = 7
    c.records_malformed["json"] = 5
    c.cri_lines_joined = 8
    c.json_kept_whole = 1
    c.multiline_splits["max_wait"] = 2
    c.timestamps_replaced["too_new"] = 4
    c.lines_sent = 110
    c.bytes_sent = 4500
    c.batches_sent = 3
    c.body_bytes_sent = 999
    c.requests = {"204": 3, "503": 2, "timeout": 1, "400": 1}
    c.retries = 3
    c.dropped["rejected"] = 7
    c.dropped["shutdown_deadline"] = 6
    c.last_push_ok = 1_795_000_123.25
    for seconds in (0.001, 0.005, 0.02, 0.02, 0.3, 11.0):
        c.push_duration.observe(seconds)
    for size in (100, 256, 257, 5000, 5_000_000):
        c.batch_size.observe(size)
    return c


def L(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_every_family_renders_exactly() -> None:
    gauges = {"pending_lines": 13, "pending_bytes": 330, "sources_open": 2}
    samples, types = parse(metrics.render(hand_built(), gauges, PROCESS))
    duration_cumulative = [2, 2, 4, 4, 4, 4, 5, 5, 5, 5, 5]  # at 0.005 .. 10; 11.0 is above all
    size_cumulative = [2, 3, 3, 4, 4, 4, 4, 4]               # at 256 .. 4194304
    expected: Samples = {
        ("shipper_build_info", L(version=__version__, python=PYTHON)): 1,
        ("shipper_source_lines_read_total", L(source=PLAIN_SOURCE)): 120,
        ("shipper_source_lines_read_total", L(source=NASTY_SOURCE)): 3,
        ("shipper_source_bytes_read_total", L(source=PLAIN_SOURCE)): 4800,
        ("shipper_source_bytes_read_total", L(source=NASTY_SOURCE)): 30,
        ("shipper_lines_split_total", ()): 2,
        ("shipper_lines_invalid_utf8_total", ()): 1,
        ("shipper_lines_merged_total", ()): 7,
        ("shipper_records_malformed_total", L(format="cri")): 0,
        ("shipper_records_malformed_total", L(format="json")): 5,
        ("shipper_cri_lines_joined_total", ()): 8,
        ("shipper_json_kept_whole_total", ()): 1,
        **{("shipper_multiline_splits_total", L(reason=r)): 0 for r in events.MULTILINE_SPLIT_REASONS},
        ("shipper_multiline_splits_total", L(reason="max_wait")): 2,
        **{("shipper_timestamps_replaced_total", L(reason=r)): 0 for r in events.TIMESTAMP_REASONS},
        ("shipper_timestamps_replaced_total", L(reason="too_new")): 4,
        ("shipper_lines_sent_total", ()): 110,
        ("shipper_bytes_sent_total", ()): 4500,
        ("shipper_batches_sent_total", ()): 3,
        ("shipper_push_body_bytes_total", ()): 999,
        # Every reason is exposed, at 0 when nothing was dropped for it.
        **{("shipper_lines_dropped_total", L(reason=r)): 0 for r in events.DROP_REASONS},
        ("shipper_lines_dropped_total", L(reason="rejected")): 7,
        ("shipper_lines_dropped_total", L(reason="shutdown_deadline")): 6,
        ("shipper_push_requests_total", L(status="204")): 3,
        ("shipper_push_requests_total", L(status="503")): 2,
        ("shipper_push_requests_total", L(status="400")): 1,
        ("shipper_push_requests_total", L(status="timeout")): 1,
        ("shipper_push_retries_total", ()): 3,
        ("shipper_lines_resent_uncertain_total", ()): 0,
        ("shipper_descriptor_shortages_total", ()): 0,
        **{("shipper_push_duration_seconds_bucket", L(le=le)): n
           for le, n in zip(["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"],
                            duration_cumulative)},
        ("shipper_push_duration_seconds_bucket", L(le="+Inf")): 6,
        ("shipper_push_duration_seconds_count", ()): 6,
        ("shipper_push_duration_seconds_sum", ()): 0.001 + 0.005 + 0.02 + 0.02 + 0.3 + 11.0,
        **{("shipper_batch_size_bytes_bucket", L(le=le)): n
           for le, n in zip(["256", "1024", "4096", "16384", "65536", "262144", "1048576", "4194304"],
                            size_cumulative)},
        ("shipper_batch_size_bytes_bucket", L(le="+Inf")): 5,
        ("shipper_batch_size_bytes_count", ()): 5,
        ("shipper_batch_size_bytes_sum", ()): 100 + 256 + 257 + 5000 + 5_000_000,
        ("shipper_pending_lines", ()): 13,
        ("shipper_pending_bytes", ()): 330,
        ("shipper_sources_open", ()): 2,
        ("shipper_last_push_success_timestamp_seconds", ()): 1_795_000_123.25,
        ("process_cpu_seconds_total", ()): 1.25,
        ("process_resident_memory_bytes", ()): 12_345_678,
        ("process_virtual_memory_bytes", ()): 98_765_432,
        ("process_open_fds", ()): 9,
        ("process_max_fds", ()): 1024,
        ("process_start_time_seconds", ()): 1_795_000_000.5,
    }
    assert samples == expected
    # Counters are exposed with _total (the parser names the family without it).
    assert types == {
        "shipper_build_info": "gauge",
        "shipper_source_lines_read": "counter",
        "shipper_source_bytes_read": "counter",
        "shipper_lines_split": "counter",
        "shipper_lines_invalid_utf8": "counter", "shipper_lines_merged": "counter",
        "shipper_records_malformed": "counter", "shipper_cri_lines_joined": "counter",
        "shipper_json_kept_whole": "counter", "shipper_multiline_splits": "counter",
        "shipper_timestamps_replaced": "counter",
        "shipper_lines_sent": "counter",
        "shipper_bytes_sent": "counter",
        "shipper_batches_sent": "counter",
        "shipper_push_body_bytes": "counter",
        "shipper_lines_dropped": "counter",
        "shipper_push_requests": "counter",
        "shipper_push_retries": "counter",
        "shipper_lines_resent_uncertain": "counter",
        "shipper_descriptor_shortages": "counter",
        "shipper_push_duration_seconds": "histogram",
        "shipper_batch_size_bytes": "histogram",
        "shipper_pending_lines": "gauge",
        "shipper_pending_bytes": "gauge",
        "shipper_sources_open": "gauge",
        "shipper_last_push_success_timestamp_seconds": "gauge",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_virtual_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_max_fds": "gauge",
        "process_start_time_seconds": "gauge",
    }


def test_label_values_are_escaped_exactly() -> None:
    text = metrics.render(hand_built(), {}, None).decode()
    # Backslash, double quote and newline are the three escapes of the text format.
    assert 'shipper_source_lines_read_total{source="C:\\\\logs\\\\\\"quoted\\"\\nsecond line"} 3\n' in text
    assert 'shipper_source_lines_read_total{source="/var/log/task/stdout"} 120\n' in text
    # The newline in the path never reaches the output raw: no line starts with its tail.
    assert not [line for line in text.splitlines() if line.startswith("second line")]


def test_histogram_lines_are_cumulative_and_end_with_inf_equal_to_count() -> None:
    c = Counters()
    for seconds in (0.004, 0.005, 0.006, 7.0, 10.0, 10.5, 99.0):
        c.push_duration.observe(seconds)
    text = metrics.render(c, {}, None).decode()
    lines = [line for line in text.splitlines() if line.startswith("shipper_push_duration_seconds")]
    assert lines == [
        'shipper_push_duration_seconds_bucket{le="0.005"} 2',
        'shipper_push_duration_seconds_bucket{le="0.01"} 3',
        'shipper_push_duration_seconds_bucket{le="0.025"} 3',
        'shipper_push_duration_seconds_bucket{le="0.05"} 3',
        'shipper_push_duration_seconds_bucket{le="0.1"} 3',
        'shipper_push_duration_seconds_bucket{le="0.25"} 3',
        'shipper_push_duration_seconds_bucket{le="0.5"} 3',
        'shipper_push_duration_seconds_bucket{le="1"} 3',
        'shipper_push_duration_seconds_bucket{le="2.5"} 3',
        'shipper_push_duration_seconds_bucket{le="5"} 3',
        'shipper_push_duration_seconds_bucket{le="10"} 5',
        'shipper_push_duration_seconds_bucket{le="+Inf"} 7',
        f"shipper_push_duration_seconds_sum {0.004 + 0.005 + 0.006 + 7.0 + 10.0 + 10.5 + 99.0!r}",
        "shipper_push_duration_seconds_count 7",
    ]


def test_fresh_counters_show_every_drop_reason_at_zero_and_no_process_families() -> None:
    samples, types = parse(metrics.render(Counters(), {}, None))
    assert {labels: v for (name, labels), v in samples.items() if name == "shipper_lines_dropped_total"} == {
        L(reason=r): 0 for r in events.DROP_REASONS}
    assert samples[("shipper_push_duration_seconds_bucket", L(le="+Inf"))] == 0
    assert samples[("shipper_push_duration_seconds_count", ())] == 0
    assert samples[("shipper_push_duration_seconds_sum", ())] == 0
    assert samples[("shipper_last_push_success_timestamp_seconds", ())] == 0
    assert samples[("shipper_pending_lines", ())] == 0
    # Families without samples are still declared (HELP/TYPE), so dashboards see the type.
    assert types["shipper_source_lines_read"] == "counter"
    assert types["shipper_push_requests"] == "counter"
    assert not [name for name in types if name.startswith("process_")]
    assert {name for name, _ in samples} <= {f"{n}_total" if t == "counter" else n for n, t in types.items()} | {
        f"{n}_{suffix}" for n, t in types.items() if t == "histogram" for suffix in ("bucket", "sum", "count")}


def test_content_type_is_the_text_format_0_0_4() -> None:
    assert metrics.CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("value, expected", [
    (0, "0"), (7, "7"), (2.0, "2"), (0.25, "0.25"), (1e20, "1e+20"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (1_795_000_123.25, "1795000123.25"),
])
def test_gauge_values_render_as_prometheus_numbers(value: float, expected: str) -> None:
    c = Counters()
    c.last_push_ok = value
    text = metrics.render(c, {}, None).decode()
    assert f"shipper_last_push_success_timestamp_seconds {expected}\n" in text


def test_promtool_check_metrics_reports_no_problems() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    gauges = {"pending_lines": 13, "pending_bytes": 330, "sources_open": 2}
    for process in (PROCESS, metrics.sample_process(), None):
        text = metrics.render(hand_built(), gauges, process)
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              timeout=60, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), text.decode()


# --- Histogram.observe -------------------------------------------------------------

@pytest.mark.parametrize("value, slot", [
    (-1.0, 0),
    (0.0, 0),
    (1.0, 0),            # le is inclusive: a value on a bound belongs to that bucket
    (1.0000001, 1),
    (2.5, 1),
    (2.5000001, 2),
    (5, 2),
    (5.0000001, 3),      # above every bound: the +Inf slot
    (math.inf, 3),
])
def test_histogram_observe_at_bucket_edges(value: float, slot: int) -> None:
    h = Histogram((1.0, 2.5, 5.0))
    h.observe(value)
    assert h.counts == [1 if i == slot else 0 for i in range(4)]
    assert h.sum == value


def test_histogram_observe_accumulates_counts_and_sum() -> None:
    h = Histogram((10, 20))
    for value in (1, 10, 11, 20, 21, 30):
        h.observe(value)
    assert (h.counts, h.sum) == ([2, 2, 2], 93.0)


def test_histogram_bounds_of_the_shipper_are_sorted_and_finite() -> None:
    for bounds in (events.PUSH_DURATION_BOUNDS, events.BATCH_SIZE_BOUNDS):
        assert list(bounds) == sorted(set(bounds))
        assert all(math.isfinite(b) for b in bounds)


# --- sample_process ----------------------------------------------------------------

def test_sample_process_reads_another_process_from_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    page = os.sysconf("SC_PAGE_SIZE")
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        # An echo proves `cat` has been exec'd and now sits blocked in read().
        child.stdin.write(b"x\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"x\n"
        sample = metrics.sample_process(child.pid)
        assert sample is not None
        statm = Path(f"/proc/{child.pid}/statm").read_text().split()
        assert sample.virtual_bytes == int(statm[0]) * page
        # RSS is in pages; the kernel's per-CPU RSS counters make stat and statm
        # differ by a few pages, so only its shape is checked.
        assert 0 < sample.resident_bytes <= sample.virtual_bytes
        assert sample.resident_bytes % page == 0
        assert sample.open_fds == len(os.listdir(f"/proc/{child.pid}/fd"))
        # The child inherited our soft limit on open files.
        assert sample.max_fds == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # The child started after this process, and (sanity) today.
        me = metrics.sample_process()
        assert me is not None and me.start_time <= sample.start_time
        assert abs(sample.start_time - time.time()) < 86400
        assert sample.cpu_seconds >= 0
    finally:
        child.kill()
        child.communicate()


def test_sample_process_of_self_counts_cpu_between_two_readings_of_times() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    before = os.times()
    sample = metrics.sample_process()
    after = os.times()
    assert sample is not None
    # Both come from the same per-process tick counters.
    assert before.user + before.system <= sample.cpu_seconds + 1e-9
    assert sample.cpu_seconds <= after.user + after.system + 1e-9


def test_sample_process_of_a_process_that_is_gone_is_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert metrics.sample_process(child.pid) is None
