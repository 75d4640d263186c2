"""A real Grafana Loki (3.4.6 and 2.7.7) for the tests: one process per version per session.

Binaries: env `SHIPPER_TEST_LOKI` (a Loki 3.x binary) and `SHIPPER_TEST_LOKI_27`
(a 2.7 binary); otherwise `<servers>/unpack loki-3.4.6` (`loki-2.7.7`), where
`<servers>` is env `SHIPPER_SERVERS_DIR`, else `<repo>/../shared/servers`, else
`/work/shared/servers` (see the README there). Without a binary the fixture
skips, unless `SHIPPER_REQUIRE_REAL_LOKI=1` (CI sets it): then it fails.

The config is the servers folder's example (`loki-<version>.example.yaml`:
filesystem storage, tsdb/v13 on 3.4 so structured metadata is stored) with
`auth_enabled: true` and a runtime-config overrides file, so one Loki serves
the whole session and tests isolate by tenant (`X-Scope-OrgID`) and by a
unique label value per test. Tenants and their limits (everything else is the
example's `limits_config`, which an override inherits):

| tenant | limits | provokes |
|---|---|---|
| `default` | the example's: 64 MB/s ingestion (burst 128), 64 MB/s per stream | nothing |
| `stream-limited` | `per_stream_rate_limit: 20KB`, `per_stream_rate_limit_burst: 40KB` | 429 per stream |
| `stream-limited-fast` | `per_stream_rate_limit: 256KB`, burst `512KB` | 429 per stream, 100,000 lines in seconds |
| `burst-limited` | `ingestion_rate_mb: 1`, `ingestion_burst_size_mb: 1` | 429: a 2 MB push never passes whole |
| `line-limited` | `max_line_size: 1KB`, `max_line_size_truncate: false` | 400 line too long |
| `age-limited` | `reject_old_samples: true`, `reject_old_samples_max_age: 1h`, `creation_grace_period: 1m` | 400 too old / too new |

(The keys are those of `pkg/validation/limits.go` at v2.7.7 and v3.4.6; the
runtime config's `overrides:` map is `pkg/loki/runtime_config.go`. The file is
read when Loki starts, and again every `period`.)

Loki 3.4 adds the label `service_name` to every stream and, with its default
`discover_log_levels`, a `detected_level` structured metadata entry where it
finds a level; `query()` returns them as Loki stores them.

    def test_x(loki3: RealLoki) -> None:
        status, text = loki3.push(body, tenant="line-limited")
        rows = loki3.query('{run="abc"}', tenant="line-limited")
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VERSIONS = ("3.4.6", "2.7.7")
FIXTURE_VERSION = {"loki3": "3.4.6", "loki27": "2.7.7"}
BINARY_ENV = {"3.4.6": "SHIPPER_TEST_LOKI", "2.7.7": "SHIPPER_TEST_LOKI_27"}
READY_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parent.parent

TENANT_LIMITS: dict[str, dict[str, object]] = {
    "stream-limited": {"per_stream_rate_limit": "20KB", "per_stream_rate_limit_burst": "40KB"},
    "burst-limited": {"ingestion_rate_mb": 1, "ingestion_burst_size_mb": 1},
    # A task exceeds it, but 100,000 lines get through in seconds, not minutes (CI time).
    "stream-limited-fast": {"per_stream_rate_limit": "256KB", "per_stream_rate_limit_burst": "512KB"},
    "line-limited": {"max_line_size": "1KB", "max_line_size_truncate": False},
    "age-limited": {"reject_old_samples": True, "reject_old_samples_max_age": "1h",
                    "creation_grace_period": "1m"},
}
TENANTS = ("default", *TENANT_LIMITS)

Row = tuple[dict[str, str], int, str, dict[str, str]]


def skip_message(version: str) -> str:
    short = ".".join(version.split(".")[:2])
    env = BINARY_ENV[version]
    return (f"no real Loki {short}: set {env}=/path/to/loki (or SHIPPER_SERVERS_DIR to a folder with "
            f"unpack and loki-{version}.xz)")


def servers_dir() -> Path | None:
    """The folder with `unpack` and the `.xz` binaries, or None."""
    candidates = [os.environ.get("SHIPPER_SERVERS_DIR") or "", str(REPO.parent / "shared" / "servers"),
                  "/work/shared/servers"]
    for c in candidates:
        if c and (Path(c) / "unpack").is_file():
            return Path(c)
    return None


def find_binary(version: str) -> tuple[str | None, str]:
    """(path of a Loki binary for `version`, or None; why not)."""
    explicit = os.environ.get(BINARY_ENV[version])
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"{BINARY_ENV[version]}={explicit} is not an executable"
    folder = servers_dir()
    if folder is None:
        return None, "no servers folder found"
    name = f"loki-{version}"
    if not (folder / f"{name}.xz").is_file():
        return None, f"no {name}.xz in {folder}"
    done = subprocess.run([str(folder / "unpack"), name], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not os.access(path, os.X_OK):
        return None, f"{folder}/unpack {name} failed ({done.returncode}): {done.stderr.strip()}"
    return path, ""


def _die_with_parent() -> None:
    """In the Loki child: SIGKILL it when the test process dies, however it dies.

    atexit does not run for a test run killed by a signal; without this its
    Lokis lived on (seen: five orphans from interrupted runs).
    """
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _example_config(version: str) -> str:
    folder = servers_dir()
    if folder is not None and (folder / f"loki-{version}.example.yaml").is_file():
        return (folder / f"loki-{version}.example.yaml").read_text()
    return _FALLBACK_EXAMPLES[version]


def render_config(version: str, data_dir: Path, http_port: int, grpc_port: int, runtime_file: Path) -> str:
    """The example config with @DIR@, the ports, auth and the runtime-config overrides filled in."""
    text = _example_config(version).replace("@DIR@", str(data_dir))
    default_http, default_grpc = ("3110", "9106") if version.startswith("3.") else ("3100", "9096")
    text = text.replace(f"http_listen_port: {default_http}", f"http_listen_port: {http_port}")
    text = text.replace(f"grpc_listen_port: {default_grpc}", f"grpc_listen_port: {grpc_port}")
    assert f"http_listen_port: {http_port}" in text and f"grpc_listen_port: {grpc_port}" in text, text
    assert "auth_enabled: false" in text, text
    text = text.replace("auth_enabled: false", "auth_enabled: true")
    return text + f"runtime_config: {{file: {runtime_file}, period: 1s}}\n"


def render_overrides() -> str:
    lines = ["overrides:"]
    for tenant, limits in TENANT_LIMITS.items():
        lines.append(f"  {tenant}:")
        lines += [f"    {k}: {json.dumps(v)}" for k, v in limits.items()]
    return "\n".join(lines) + "\n"


class RealLoki:
    """One running Loki process (auth on; tenants as in the module docstring)."""

    version: str
    url: str
    push_url: str

    def __init__(self, version: str, binary: str) -> None:
        self.version = version
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix=f"real-loki-{version}-"))
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.push_url = self.url + "/loki/api/v1/push"
        self.config_file = self.dir / "loki.yaml"
        runtime = self.dir / "overrides.yaml"
        runtime.write_text(render_overrides())
        self.config_file.write_text(render_config(version, self.dir, self.http_port, self.grpc_port, runtime))
        self.stderr_file = self.dir / "loki.stderr"
        self._stderr = self.stderr_file.open("wb")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [binary, f"-config.file={self.config_file}"], stdin=subprocess.DEVNULL,
            stdout=self._stderr, stderr=self._stderr, cwd=self.dir, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self._ready = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll /ready until 200; raise with the tail of Loki's output if it dies or times out."""
        if self._ready:
            return
        deadline = self.started_at + timeout
        last = ""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"Loki {self.version} exited ({self.proc.returncode}) before it was ready; "
                                   f"config {self.config_file}; output:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        self._ready = True
                        return
                    last = f"{r.status}"
            except urllib.error.HTTPError as e:
                last = f"{e.code} {e.read()[:200]!r}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Loki {self.version} not ready after {timeout:.0f} s (last /ready: {last}); "
                                   f"config {self.config_file}; output:\n{self.tail()}")
            time.sleep(0.2)  # polling an external process that has no event to await

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.stderr_file.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"(no output: {e})"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stderr.close()

    # -- HTTP ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, tenant: str | None = None, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if tenant is not None:
            req.add_header("X-Scope-OrgID", tenant)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def push(self, body: bytes, tenant: str = "default",
             content_type: str = "application/x-protobuf") -> tuple[int, str]:
        """Raw POST of an already encoded push body; (status, response text)."""
        headers = {"Content-Type": content_type} if content_type else {}
        status, text = self._request("POST", "/loki/api/v1/push", tenant=tenant, body=body, headers=headers)
        return status, text.decode("utf-8", "replace")

    def _get_json(self, path: str, params: dict[str, str], tenant: str,
                  headers: dict[str, str] | None = None) -> Any:
        status, text = self._request("GET", path + "?" + urllib.parse.urlencode(params), tenant=tenant,
                                     headers=headers)
        if status != 200:
            raise AssertionError(f"Loki {self.version} GET {path} {params} -> {status}: {text[:2000]!r}")
        doc = json.loads(text)
        assert doc.get("status") == "success", doc
        return doc["data"]

    @staticmethod
    def default_window() -> tuple[int, int]:
        now = time.time_ns()
        return now - 2 * 3600 * 10**9, now + 3600 * 10**9

    def query(self, logql: str, tenant: str, *, start_ns: int | None = None, end_ns: int | None = None,
              limit: int = 5000) -> list[Row]:
        """Every entry the log query matches, oldest first: (stream labels, ts_ns, line, structured metadata).

        Pages forward by time until all are read (a page of `limit` entries
        continues from its last timestamp, skipping what it already returned).
        On 3.x the `categorize-labels` encoding flag separates stream labels
        from structured metadata (and from parsed labels, which are merged
        into the returned labels); 2.7 has no structured metadata: {}.
        """
        lo, hi = self.default_window()
        start = lo if start_ns is None else start_ns
        end = hi if end_ns is None else end_ns
        headers = {"X-Loki-Response-Encoding-Flags": "categorize-labels"} if self.version.startswith("3.") else {}
        out: list[Row] = []
        seen_at_start: set[tuple[str, int, str, str]] = set()
        while True:
            data = self._get_json("/loki/api/v1/query_range", {
                "query": logql, "start": str(start), "end": str(end), "limit": str(limit),
                "direction": "forward"}, tenant, headers)
            assert data["resultType"] == "streams", data["resultType"]
            page: list[Row] = []
            for stream in data["result"]:
                labels = dict(stream["stream"])
                for value in stream["values"]:
                    ts, line = int(value[0]), value[1]
                    meta: dict[str, str] = {}
                    if len(value) > 2 and value[2]:
                        cat = value[2]
                        meta = dict(cat.get("structuredMetadata") or {})
                        row_labels = {**labels, **(cat.get("parsed") or {})}
                    else:
                        row_labels = labels
                    page.append((row_labels, ts, line, meta))
            page.sort(key=lambda r: r[1])  # streams come one by one; merge them by time (stable)
            fresh = [r for r in page if _key(r) not in seen_at_start]
            out += fresh
            if len(page) < limit:
                return out
            last = page[-1][1]
            if page[0][1] == last:
                raise AssertionError(f"more than {limit} entries at one timestamp {last}: raise the limit")
            start = last
            seen_at_start = {_key(r) for r in page if r[1] == last}

    def lines(self, selector: str, tenant: str) -> list[str]:
        """The lines `selector` matches, in timestamp order."""
        return [r[2] for r in self.query(selector, tenant)]

    def instant(self, logql: str, tenant: str, *, time_ns: int | None = None) -> list[tuple[dict[str, str], float]]:
        """A metric query at one instant (`/loki/api/v1/query`): (labels, value) per series."""
        params = {"query": logql, "time": str(time.time_ns() if time_ns is None else time_ns)}
        data = self._get_json("/loki/api/v1/query", params, tenant)
        if data["resultType"] == "vector":
            return [(dict(s["metric"]), float(s["value"][1])) for s in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        raise AssertionError(f"not a metric query result: {data['resultType']}")

    def metric_range(self, logql: str, tenant: str, *, start_ns: int | None = None, end_ns: int | None = None,
                     step: str = "60s") -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """A metric query over a range (`/loki/api/v1/query_range`): (labels, [(t, value)]) per series."""
        lo, hi = self.default_window()
        data = self._get_json("/loki/api/v1/query_range", {
            "query": logql, "start": str(lo if start_ns is None else start_ns),
            "end": str(hi if end_ns is None else end_ns), "step": step}, tenant)
        assert data["resultType"] == "matrix", data["resultType"]
        return [(dict(s["metric"]), [(float(t), float(v)) for t, v in s["values"]]) for s in data["result"]]

    def metrics_text(self) -> str:
        status, text = self._request("GET", "/metrics")
        assert status == 200, status
        return text.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the /metrics samples named `name` whose labels include `labels` (0 when none)."""
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def _key(r: Row) -> tuple[str, int, str, str]:
    return (json.dumps(r[0], sort_keys=True), r[1], r[2], json.dumps(r[3], sort_keys=True))


# -- process-wide registry: one Loki per version, whichever test module asks -----------------------

_LOKIS: dict[str, RealLoki] = {}
_MISSING: dict[str, str] = {}


def start(version: str) -> RealLoki | None:
    """Start (once per process) the Loki of `version` without waiting for it; None if no binary."""
    if version in _LOKIS:
        return _LOKIS[version]
    if version in _MISSING:
        return None
    binary, why = find_binary(version)
    if binary is None:
        _MISSING[version] = why
        return None
    _LOKIS[version] = loki = RealLoki(version, binary)
    return loki


def stop_all() -> None:
    for loki in list(_LOKIS.values()):
        loki.stop()


atexit.register(stop_all)


def get(version: str) -> RealLoki:
    """The ready Loki of `version`, or skip (fail under SHIPPER_REQUIRE_REAL_LOKI=1)."""
    loki = start(version)
    if loki is None:
        message = skip_message(version)
        if os.environ.get("SHIPPER_REQUIRE_REAL_LOKI") == "1":
            pytest.fail(f"{message} [{_MISSING.get(version, '')}]")
        pytest.skip(message)
    loki.wait_ready()
    return loki


@pytest.fixture(scope="session")
def real_lokis(request: pytest.FixtureRequest) -> Iterator[None]:
    """Starts, at once and in parallel, every Loki version some collected test asks for."""
    wanted = {FIXTURE_VERSION[name] for item in request.session.items
              for name in getattr(item, "fixturenames", ()) if name in FIXTURE_VERSION}
    for version in VERSIONS:
        if version in wanted:
            start(version)
    yield
    stop_all()


@pytest.fixture(scope="session")
def loki3(real_lokis: None) -> RealLoki:
    """The session's real Loki 3.4.6 (auth on; tenants in the module docstring)."""
    return get("3.4.6")


@pytest.fixture(scope="session")
def loki27(real_lokis: None) -> RealLoki:
    """The session's real Loki 2.7.7 (auth on; tenants in the module docstring)."""
    return get("2.7.7")


@pytest.fixture(scope="session", params=VERSIONS, ids=["loki-3.4.6", "loki-2.7.7"])
def any_loki(request: pytest.FixtureRequest, real_lokis: None) -> RealLoki:
    """Each real Loki version in turn (tests that apply to both)."""
    return get(str(request.param))


# The servers folder's examples (2026-12-01), used only when it is absent but a binary was given by env.
_FALLBACK_EXAMPLES = {
    "3.4.6": """auth_enabled: false
server: {http_listen_address: 127.0.0.1, http_listen_port: 3110, grpc_listen_address: 127.0.0.1, grpc_listen_port: 9106, log_level: warn, grpc_server_max_recv_msg_size: 104857600, grpc_server_max_send_msg_size: 104857600}
common:
  instance_addr: 127.0.0.1
  path_prefix: @DIR@/data
  storage: {filesystem: {chunks_directory: @DIR@/data/chunks, rules_directory: @DIR@/data/rules}}
  replication_factor: 1
  ring: {kvstore: {store: inmemory}}
schema_config:
  configs: [{from: 2020-10-24, store: tsdb, object_store: filesystem, schema: v13, index: {prefix: index_, period: 24h}}]
limits_config:
  ingestion_rate_mb: 64
  ingestion_burst_size_mb: 128
  per_stream_rate_limit: 64MB
  per_stream_rate_limit_burst: 128MB
  max_entries_limit_per_query: 500000
  allow_structured_metadata: true
  volume_enabled: true
pattern_ingester: {enabled: false}
ruler: {enable_api: false}
analytics: {reporting_enabled: false}
ingester: {lifecycler: {min_ready_duration: 0s, final_sleep: 0s}}
""",
    "2.7.7": """auth_enabled: false
server: {http_listen_address: 127.0.0.1, http_listen_port: 3100, grpc_listen_address: 127.0.0.1, grpc_listen_port: 9096, log_level: warn, grpc_server_max_recv_msg_size: 104857600, grpc_server_max_send_msg_size: 104857600}
common:
  instance_addr: 127.0.0.1
  path_prefix: @DIR@/data
  storage: {filesystem: {chunks_directory: @DIR@/data/chunks, rules_directory: @DIR@/data/rules}}
  replication_factor: 1
  ring: {kvstore: {store: inmemory}}
schema_config:
  configs: [{from: 2020-10-24, store: boltdb-shipper, object_store: filesystem, schema: v11, index: {prefix: index_, period: 24h}}]
limits_config:
  ingestion_rate_mb: 64
  ingestion_burst_size_mb: 128
  per_stream_rate_limit: 64MB
  per_stream_rate_limit_burst: 128MB
  max_entries_limit_per_query: 500000
analytics: {reporting_enabled: false}
ingester: {lifecycler: {min_ready_duration: 0s, final_sleep: 0s}}
""",
}
