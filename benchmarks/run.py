"""Benchmark the shipper (and optionally a peer) against a Loki-compatible receiver.

    python -m benchmarks.run [--workloads NAME,...] [--quick] [--python PATH] [--uvloop]
                             [--peer | --peer 'COMMAND TEMPLATE' [--peer-config FILE]]

``--peer`` alone runs the built-in peers, Promtail 2.7.7 and Fluent Bit 4.2.8
from the servers folder (benchmarks/peers), with the processing equivalent
to the shipper's for each workload's content, and writes a ratio table.

For each workload and each target (the shipper, then the peers if any), in a
fresh directory: start ``tests/loki_receiver.py`` in its own process, start
the target, wait until its CPU settles (startup), then write the workload
with ``benchmarks/writer.py`` in another process (for ``exec`` workloads, the
shipper's own child) and follow the target's /proc entry until the receiver
has every entry. Then SIGTERM, and check that exactly the entries written
arrived. See benchmarks/README.md for what each
number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.lines import AIRFLOW3_RAW, CONTENTS, EXTRA_CONTENTS, LINE_BYTES, TINY, make_lines
from benchmarks.procstat import MIB, ProcessMonitor, Sample
from benchmarks.checks import RAW_WORKLOAD, checks, relative_checks
from benchmarks.peers import DEFAULT_SERVERS_DIRS, PEERS, TEMPLATE_DEFAULTS, Peer, PeersNotFound, find_binary, render
from benchmarks.workloads import SOURCE_KEYS, Workload, build_workloads
from benchmarks.report import render_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BATCH_WAIT = 0.5  # the production default; the latency target assumes it
POLL = 0.1  # seconds between /proc samples and arrival-file reads
STALL = 15.0  # seconds without a new line arriving after which a run stops waiting for the rest
BUILTIN_PEERS = "builtin"  # --peer without a template
UVLOOP_LAUNCHER = ("import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
                   "from shipper.cli import main; sys.exit(main())")


# --- targets: the processes under test ------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A command template (and config template) for one shipper under test."""

    name: str
    argv: list[str]  # each argument may hold {placeholders}
    config_template: str | None = None  # rendered to {config}
    sources: frozenset[str] = frozenset({"fifo", "file"})  # workload sources it can read
    contents: frozenset[str] = frozenset({"airflow2"})  # workload contents it can parse (benchmarks.lines)
    env: dict[str, str] = field(default_factory=dict)
    config_suffix: str = ".conf"  # of the rendered config file (Fluent Bit picks its format by it)
    # By content: placeholder values of its processing (a built-in peer's), and what it does.
    content_values: dict[str, dict[str, str]] = field(default_factory=dict)
    processing: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # by workload source: why it cannot run it
    shipper: bool = False  # the shipper under test (its checks are the targets; the rest are peers)

    def not_run_reason(self, wl: Workload) -> str | None:
        """Why this target does not run `wl`, or None if it does."""
        if wl.source not in self.sources:
            return self.not_run.get(wl.source) or f"reads no {wl.source} source (--peer-sources)"
        if wl.content not in self.contents:
            return f"no processing for {wl.content} content in its template"
        return None


def peer_target(peer: Peer, binary: str) -> Target:
    """A built-in peer (benchmarks/peers) run from `binary` (the Airflow 3 records raw: a raw tail)."""
    contents = (*CONTENTS, AIRFLOW3_RAW)
    return Target(name=peer.name, argv=[binary, *peer.argv], config_template=peer.config_path.read_text(),
                  sources=frozenset({"file"}), contents=frozenset(contents),
                  config_suffix=peer.config_path.suffix,
                  content_values={c: peer.values_for(c) for c in contents},
                  processing={c: peer.processing_for(c).note for c in contents}, not_run=dict(peer.not_run))


def builtin_peer_targets(env: Mapping[str, str] = os.environ,
                         defaults: Sequence[str] = DEFAULT_SERVERS_DIRS) -> list[Target]:
    """Promtail and Fluent Bit from the servers folder; PeersNotFound names SHIPPER_SERVERS_DIR."""
    return [peer_target(peer, find_binary(peer.binary, env, defaults)) for peer in PEERS]


def shipper_target(config: Path, uvloop: bool = False) -> Target:
    """The shipper of this working tree (PYTHONPATH) on {python} and its installed dependencies."""
    code = ["-c", UVLOOP_LAUNCHER] if uvloop else ["-m", "shipper"]
    return Target(name="shipper+uvloop" if uvloop else "shipper",
                  argv=["{python}", *code, "--config", "{config}"],
                  config_template=config.read_text(),
                  sources=frozenset({"fifo", "file", "exec"}), contents=frozenset({*CONTENTS, *EXTRA_CONTENTS}),
                  env={"PYTHONPATH": str(REPO)}, shipper=True,
                  processing={c: SOURCE_KEYS[c].strip().replace("\n", "; ") or "raw lines" for c in (*CONTENTS, *EXTRA_CONTENTS)})


# What the downward API writes for a KubernetesExecutor task pod's annotations (FACTS §2).
POD_ANNOTATIONS = ('dag_id="etl_daily_load"\ntask_id="load_partition"\n'
                   'run_id="scheduled__2026-11-25T00:00:00+00:00"\ntry_number="1"\n')


# --- the receiver ---------------------------------------------------------------------------

class Receiver:
    """`python -m tests.loki_receiver` in its own process, and its arrivals file."""

    def __init__(self, workdir: Path, unstamped: bool = False) -> None:
        ready = workdir / "receiver.url"
        self.arrivals_path = workdir / "arrivals.txt"
        self.arrivals_path.touch()
        self._log = open(workdir / "receiver.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.loki_receiver", "--port", "0", "--ready-file", str(ready),
             "--record-arrivals", str(self.arrivals_path)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the receiver did not start; see {workdir / 'receiver.log'}")
            time.sleep(0.05)
        self.push_url = ready.read_text().strip()
        self.base_url = self.push_url.split("/loki/", 1)[0]
        self._arrivals = open(self.arrivals_path, "rb")
        self._partial = b""
        self.stored = 0  # every entry stored (sum of P records), the target's own lines too
        self.latencies_ns: list[int] = []  # receive - write, per workload line (L records)
        # The workload's lines carry no stamp (benchmarks.lines.TINY): every stored entry counts.
        self.unstamped = unstamped

    def poll(self) -> None:
        """Read the arrival records appended since the last call."""
        data = self._partial + self._arrivals.read()
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            kind, received, value = line.split()
            if kind == b"P":
                self.stored += int(value)
            elif kind == b"L":
                self.latencies_ns.append(int(received) - int(value))

    @property
    def delivered(self) -> int:
        """Workload lines stored: every workload line is stamped, and only those are
        (unstamped lines: every entry stored, the shipper's exit summary too)."""
        return self.stored if self.unstamped else len(self.latencies_ns)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/stats", timeout=10) as answer:
            stats: dict[str, Any] = json.load(answer)
            return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if hasattr(self, "_arrivals"):
            self._arrivals.close()


class DeliveryWatch:
    """done() once every entry arrived, or once nothing new arrived for `stall` seconds."""

    def __init__(self, receiver: Receiver, expected: int, stall: float) -> None:
        self.receiver, self.expected, self.stall = receiver, expected, stall
        self.seen, self.since = -1, time.monotonic()

    def done(self) -> bool:
        stored = self.receiver.stored
        if stored != self.seen:
            self.seen, self.since = stored, time.monotonic()
        return self.receiver.delivered >= self.expected or time.monotonic() - self.since > self.stall


# --- one run: one target through one workload -----------------------------------------------

@dataclass
class Settings:
    """Harness options that apply to every run."""

    python: str = sys.executable  # {python}: the interpreter the shipper runs on

    settle_min: float = 1.0  # startup: wait at least this long ...
    settle_quiet: float = 0.5  # ... and until no CPU was used for this long ...
    settle_max: float = 15.0  # ... or this long at most
    eof_grace: float = 5.0  # FIFO workloads: wait this long for an exit at end of input before SIGTERM
    shutdown_grace: float = 30.0  # after SIGTERM, before SIGKILL
    scrape_interval: float = 1.0  # scrape the shipper's /metrics this often (0: never)


def run_one(target: Target, wl: Workload, settings: Settings, base: Path) -> dict[str, Any]:
    """Run `target` through `wl`; returns the measurements (see README, "results.json")."""
    run = Run(target, wl, settings, Path(tempfile.mkdtemp(prefix=f"{target.name}-{wl.name}-", dir=base)))
    try:
        run.start()
        run.measure()
        run.finish()
    except Exception as e:  # a broken run is reported, not fatal to the others
        run.result["error"] = f"{type(e).__name__}: {e}"
    finally:
        run.close()
    return run.result


class Run:
    """One target through one workload, in its own directory with its own receiver."""

    def __init__(self, target: Target, wl: Workload, settings: Settings, workdir: Path) -> None:
        self.target, self.wl, self.settings, self.workdir = target, wl, settings, workdir
        self.result: dict[str, Any] = {"workload": wl.name, "target": target.name, "workdir": str(workdir)}
        # exec: the shipper reads its child, not this path (its config names it, unused)
        self.source = workdir / ("source.fifo" if wl.source == "fifo" else "source.log")
        self.keeper: int | None = None  # our read-write fd on the FIFO
        if wl.source == "fifo":
            os.mkfifo(self.source)
            # Read-write, so it never blocks: the FIFO has a writer from the start (like a
            # task's stdout), and a peer that opens it with a shell `<` does not wait for us.
            self.keeper = os.open(self.source, os.O_RDWR | os.O_CLOEXEC)
        elif wl.kind != "bulk" and wl.source == "file":
            self.source.touch()  # bulk: the file appears (by rename) when the window starts
        self.receiver: Receiver | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.mon = ProcessMonitor(0)
        self.ready = Sample(0.0, 0.0, 0, 0, 0, 0)  # the target once started: the window starts here
        self.writer: subprocess.Popen[bytes] | None = None
        self.scraper: subprocess.Popen[bytes] | None = None
        self.metrics_port: int | None = None  # exec: the port we chose (exec mode does not log it)
        self.written = 0  # lines written
        self.entries = 0  # entries they make (benchmarks.lines.entries): what must arrive
        self.bytes_written = 0

    def start(self) -> None:
        """Start the receiver, render the config, start the target, wait for its startup to settle."""
        rx = self.receiver = Receiver(self.workdir, unstamped=self.wl.content == TINY)
        values = {"push_url": rx.push_url, "loki_url": rx.base_url,
                  "push_host": rx.base_url.split("://", 1)[1].rsplit(":", 1)[0],
                  "push_port": rx.base_url.rsplit(":", 1)[1],
                  "source_path": str(self.source), "stream": "stdout", "workdir": str(self.workdir),
                  "batch_wait": str(BATCH_WAIT), "repo": str(REPO), "python": self.settings.python,
                  "source_keys": SOURCE_KEYS[self.wl.content], "metrics_listen": "127.0.0.1:0",
                  **TEMPLATE_DEFAULTS, **self.target.content_values.get(self.wl.content, {})}
        if self.wl.content in self.target.processing:
            self.result["processing"] = self.target.processing[self.wl.content]
        template = self.target.config_template
        if template is not None:
            if SOURCE_KEYS[self.wl.content] and "{source_keys}" not in template and not self.target.content_values:
                raise RuntimeError(f"workload {self.wl.name} needs {{source_keys}} in the config template")
            if self.wl.source == "exec" and "{metrics_listen}" in template:
                self.metrics_port = free_port()
                values["metrics_listen"] = f"127.0.0.1:{self.metrics_port}"
            config = self.workdir / ("target" + self.target.config_suffix)
            config.write_text(render(template, values))
            # The downward-API file of a KubernetesExecutor task pod: as in production,
            # every entry carries the task's labels and run_id/try_number metadata.
            (self.workdir / "annotations").write_text(POD_ANNOTATIONS)
            values["config"] = str(config)
        argv = [render(arg, values) for arg in self.target.argv]
        stdin = subprocess.DEVNULL
        if self.wl.source == "exec":
            # The writer is the shipper's child, on its stdout. Our pipe is the shipper's
            # stdin, which the child inherits: one line starts the writing, EOF ends it.
            argv += ["exec", "--", *self.writer_argv("-")]
            stdin = subprocess.PIPE
        self.result["command"] = shlex.join(argv)
        if self.wl.kind == "bulk":
            prewrite(self.workdir / "bulk.prewrite", self.wl.lines)
        with open(self.workdir / "target.out", "wb") as out, open(self.workdir / "target.err", "wb") as err:
            # Its own session: whatever a wrapper leaves behind can be cleaned up as a group.
            # exec: the child's passthrough goes to target.out and target.err too.
            self.proc = subprocess.Popen(argv, cwd=self.workdir, env={**clean_env(), **self.target.env},
                                         stdin=stdin, stdout=out, stderr=err, start_new_session=True)
        self.mon = ProcessMonitor(self.proc.pid)
        self.ready, seconds = settle(self.mon, self.proc, self.settings)
        self.start_scraper()
        self.result["startup"] = {"seconds": round(seconds, 3), "cpu_s": round(self.ready.cpu_s, 4),
                                  "rss_mib": mib(self.ready.rss), "peak_rss_mib": mib(self.ready.hwm)}

    def start_scraper(self) -> None:
        """Scrape the target's /metrics every second (issue 4: the budget holds while scraped)."""
        port = metrics_port(self.workdir / "target.err") or self.metrics_port
        if port is None or self.settings.scrape_interval <= 0:
            return
        self.scraper = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scraper", f"http://127.0.0.1:{port}/metrics",
             "--interval", str(self.settings.scrape_interval), "--out", str(self.workdir / "scrapes.txt")],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)

    def stop_scraper(self) -> None:
        if self.scraper is not None:
            self.scraper.kill()
            self.scraper.wait()
            self.scraper = None
            scrapes = (self.workdir / "scrapes.txt").read_text().splitlines() \
                if (self.workdir / "scrapes.txt").exists() else []
            ok = [line.split() for line in scrapes if line.split()[1] == "200"]
            self.result["scrapes"] = {"count": len(scrapes), "ok": len(ok),
                                      "last_lines_sent": ok[-1][3] if ok else None}

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Sample the target and read arrivals until done() (True), timeout or the target exits."""
        assert self.receiver is not None
        deadline = time.monotonic() + timeout
        while True:
            self.receiver.poll()
            if done():
                return True
            if self.mon.sample() is None or time.monotonic() > deadline:
                return False
            time.sleep(POLL)

    def measure(self) -> None:
        """The window: write the workload, wait until every line arrived."""
        wl, rx, t0 = self.wl, self.receiver, time.monotonic()
        assert rx is not None
        writing_s = 0.0
        if wl.kind == "bulk":
            os.rename(self.workdir / "bulk.prewrite", self.source)
            self.written = self.entries = wl.lines
        elif wl.kind == "idle":
            self.wait(lambda: False, wl.duration)
        else:
            writing_s = self.write()
        all_in = self.wait(DeliveryWatch(rx, self.entries, stall=STALL).done, 30 + self.written / 10_000)
        end, window_s = self.mon.sample() or self.mon.last or self.ready, time.monotonic() - t0
        cpu_s = end.cpu_s - self.ready.cpu_s
        per = writing_s if wl.kind == "paced" else window_s
        self.result["window"] = {
            "seconds": round(window_s, 3), "cpu_s": round(cpu_s, 4),
            "cpu_ticks_s": round(end.cpu_ticks_s - self.ready.cpu_ticks_s, 2),
            "user_s": round(end.user_s - self.ready.user_s, 2), "sys_s": round(end.sys_s - self.ready.sys_s, 2),
            "millicores": round(1000 * cpu_s / per, 3) if per > 0 else None,
            "writing_seconds": round(writing_s, 3), "all_delivered_in_window": all_in}
        self.result["lines_per_cpu_s"] = round(self.written / cpu_s) if self.written and cpu_s > 0 else None
        if wl.kind == "bulk":
            self.result["lines_per_s"] = round(self.written / window_s)

    def writer_argv(self, path: str) -> list[str]:
        """The benchmarks.writer command line for this paced or burst workload, writing to `path`."""
        wl = self.wl
        opts = (["--burst", str(wl.lines), "--idle-before", str(wl.idle_before)] if wl.kind == "burst"
                else ["--rate", str(wl.rate), "--duration", str(wl.duration)])
        go = ["--wait-go"] if wl.source == "exec" else []
        return [sys.executable, "-m", "benchmarks.writer", path, "--summary", str(self.workdir / "writer.json"),
                *opts, "--content", wl.content, *go]

    def write(self) -> float:
        """Run benchmarks.writer for a paced or burst workload (exec: tell the shipper's child to
        start); sets the lines, entries and bytes written; returns the seconds of writing."""
        wl, proc = self.wl, self.proc
        assert proc is not None
        summary_path = self.workdir / "writer.json"
        if wl.source == "exec":
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            writer = proc  # the writer is its child: when the shipper is gone, so is the writing
        else:
            writer = self.writer = subprocess.Popen(self.writer_argv(str(self.source)), cwd=REPO,
                                                    stdin=subprocess.PIPE)
        self.wait(lambda: summary_path.exists() or writer.poll() is not None, wl.duration + wl.idle_before + 600)
        if not summary_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the target exited ({proc.returncode}) while the writer wrote")
            raise RuntimeError(f"the writer failed (exit {writer.poll()}) in {self.workdir}")
        summary = json.loads(summary_path.read_text())
        self.result["writer_max_lag_s"] = summary["max_lag_s"]
        self.written, self.entries, self.bytes_written = summary["lines"], summary["entries"], summary["bytes"]
        seconds: float = summary["seconds"]
        return seconds

    def finish(self) -> None:
        """End of input, SIGTERM, and the delivery check."""
        proc, rx = self.proc, self.receiver
        assert proc is not None and rx is not None
        # End of input first (a FIFO's writers close, and a target may exit by itself,
        # as a sidecar does when its task ends), then SIGTERM: read to the end, flush, exit.
        self.stop_scraper()
        self.close_input()
        if self.wl.source in ("fifo", "exec"):  # exec: the child exits at EOF on its stdin, then the shipper
            self.wait(lambda: proc.poll() is not None, self.settings.eof_grace)
        self.result["exit_code"] = stop_target(proc, self.mon, self.settings.shutdown_grace)
        final = self.mon.last or self.ready
        rx.poll()
        stats = rx.stats()
        if self.wl.source == "exec":  # what the shipper copied through to its stdout
            self.result.update(bytes_written=self.bytes_written,
                               passthrough_bytes=(self.workdir / "target.out").stat().st_size)
        # Unstamped lines cannot be told from the exit summary: what is stored past
        # the expected entries counts as other entries (at most the summary is allowed).
        delivered = min(rx.delivered, self.entries) if rx.unstamped else rx.delivered
        self.result.update(
            lines_written=self.written, entries_expected=self.entries, lines_delivered=delivered,
            other_entries=rx.stored - delivered,
            dedup_dropped=stats["dedup_dropped"], refused_entries=stats["refused_entries"],
            requests=stats["requests"], total_cpu_s=round(final.cpu_s, 4), peak_rss_mib=mib(final.hwm),
            max_rss_anon_mib=mib(self.mon.max_anon),
            latency_s=None if self.wl.kind == "bulk" else latency_summary(rx.latencies_ns),
            exit_record=exit_record(self.workdir / "target.err"))

    def close_input(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()  # exec: the shipper's child reads EOF and exits
        if self.writer is not None:
            close_writer(self.writer)
            self.writer = None
        if self.keeper is not None:
            os.close(self.keeper)
            self.keeper = None

    def close(self) -> None:
        """Whatever happened: no process of ours is left running."""
        self.stop_scraper()
        self.close_input()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # children a wrapper left behind
        if self.receiver is not None:
            self.receiver.stop()


def clean_env() -> dict[str, str]:
    """The harness's environment without anything that configures a shipper."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SHIPPER_", "AIRFLOW_CTX_", "PYTHONPATH", "VIRTUAL_ENV"))}


def free_port() -> int:
    """A free loopback port (for a listener whose port would otherwise go unreported)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prewrite(path: Path, lines: int) -> None:
    """The bulk file, written before the window (stamped only to be counted on arrival)."""
    with open(path, "wb") as f:
        for first in range(0, lines, 10_000):
            f.write(make_lines(first, min(10_000, lines - first), time.time_ns()))


def settle(mon: ProcessMonitor, proc: subprocess.Popen[bytes], s: Settings) -> tuple[Sample, float]:
    """Wait until the target's CPU stops moving (its startup is over); returns that sample and when."""
    started = time.monotonic()
    quiet_since = started
    last_ns = -1
    while True:
        sample = mon.sample()
        now = time.monotonic()
        if sample is None:
            raise RuntimeError(f"the target exited during startup (exit {proc.wait()})")
        if sample.cpu_ns != last_ns:
            last_ns, quiet_since = sample.cpu_ns, now
        if now - started >= s.settle_max or (now - started >= s.settle_min and now - quiet_since >= s.settle_quiet):
            return sample, now - started
        time.sleep(POLL / 2)


def close_writer(writer: subprocess.Popen[bytes]) -> None:
    assert writer.stdin is not None
    writer.stdin.close()  # the writer closes its end of the source and exits
    try:
        writer.wait(timeout=10)
    except subprocess.TimeoutExpired:
        writer.kill()
        writer.wait()


def stop_target(proc: subprocess.Popen[bytes], mon: ProcessMonitor, grace: float) -> int:
    """SIGTERM, keep sampling until it exits (SIGKILL after `grace`); returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None:
        mon.sample()
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(POLL / 2)
    return proc.returncode


def latency_summary(latencies_ns: list[int]) -> dict[str, Any] | None:
    """p50, p99 and max in seconds (nearest rank), or None without stamped lines."""
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)] / 1e9, 4)

    return {"count": len(ordered), "p50": rank(0.50), "p99": rank(0.99), "max": rank(1.0)}


def metrics_port(stderr_path: Path) -> int | None:
    """The port the shipper logged its metrics endpoint on (None for peers)."""
    for line in stderr_path.read_text(errors="replace").splitlines():
        if '"metrics endpoint listening"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["port"])
    return None


def exit_record(stderr_path: Path) -> dict[str, Any] | None:
    """The shipper's final JSON "exit" diagnostic, if the target wrote one."""
    for line in reversed(stderr_path.read_text(errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "exit":
            return record
    return None


def mib(n: int) -> float:
    return round(n / MIB, 2)


# --- main -----------------------------------------------------------------------------------

def machine(python: str) -> dict[str, Any]:
    """What the README table names: cores, CPU, kernel, Python versions."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    target_python = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                   capture_output=True, text=True, check=False).stdout.strip()
    git = ["git", "-C", str(REPO)]
    revision = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=False).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "shipper"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return {"cores": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "harness_python": platform.python_version(), "shipper_python": target_python,
            "shipper_interpreter": python, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "shipper_revision": revision + (" with uncommitted changes in shipper/" if dirty else "")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(build_workloads(False, None, None))
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="all", help=f"comma-separated names, or 'all' (default): {names}")
    p.add_argument("--quick", action="store_true", help="short smoke run: 5 s workloads, 100k bulk lines")
    p.add_argument("--duration", type=float, help="seconds of every idle and paced workload (overrides)")
    p.add_argument("--bulk-lines", type=int, help="lines pre-written for bulk-file (overrides)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs the shipper, with its installed dependencies (the code is "
                        "this working tree's); default: this one")
    p.add_argument("--shipper-config", default=str(HERE / "shipper.toml"), metavar="FILE",
                   help="the shipper's config template (default: %(default)s)")
    p.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                   help="scrape the shipper's /metrics every S seconds from a separate process, "
                        "as Prometheus would (default 1; 0 disables)")
    p.add_argument("--uvloop", action="store_true",
                   help="also run the shipper on uvloop (needs uvloop installed for --python)")
    p.add_argument("--peer", metavar="TEMPLATE", nargs="?", const=BUILTIN_PEERS,
                   help="alone: also run Promtail 2.7.7 and Fluent Bit 4.2.8 from the servers folder "
                        "($SHIPPER_SERVERS_DIR, else ../shared/servers) on the same workloads, and write "
                        "the ratio table; with TEMPLATE: the command line of another shipper, with "
                        "{placeholders}")
    p.add_argument("--peer-config", metavar="FILE", help="config template rendered to the peer's {config}")
    p.add_argument("--peer-name", help="name of the peer in the tables (default: its program name)")
    p.add_argument("--peer-sources", default="file", choices=("file", "fifo", "all"),
                   help="workload sources the peer runs (default file: vector, promtail and "
                        "fluent-bit tail files, not FIFOs)")
    p.add_argument("--out", default=str(HERE / "results.json"), help="JSON results (default: %(default)s)")
    p.add_argument("--markdown", default=str(HERE / "results.md"), help="markdown tables (default: %(default)s)")
    p.add_argument("--fail-on-targets", action="store_true",
                   help="exit 1 when a CPU/memory/latency target is missed, not only on lost lines")
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs, configs, arrivals)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = build_workloads(args.quick, args.duration, args.bulk_lines)
    names = list(workloads) if args.workloads == "all" else [n.strip() for n in args.workloads.split(",")]
    unknown = [n for n in names if n not in workloads]
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(unknown)} (known: {', '.join(workloads)})")
    targets = [shipper_target(Path(args.shipper_config))]
    if args.uvloop:
        targets.append(shipper_target(Path(args.shipper_config), uvloop=True))
    if args.peer == BUILTIN_PEERS:
        try:
            targets += builtin_peer_targets()
        except PeersNotFound as e:
            sys.exit(f"--peer: {e}")
    elif args.peer:
        argv_template = shlex.split(args.peer)
        kinds = frozenset({"fifo", "file"}) if args.peer_sources == "all" else frozenset({args.peer_sources})
        targets.append(Target(
            name=args.peer_name or Path(argv_template[0]).name, argv=argv_template, sources=kinds,
            config_template=Path(args.peer_config).read_text() if args.peer_config else None,
            config_suffix=Path(args.peer_config).suffix if args.peer_config else ".conf"))

    settings = Settings(python=args.python, scrape_interval=args.scrape_interval)
    base = Path(tempfile.mkdtemp(prefix="shipper-bench-"))
    results: dict[str, Any] = {
        "machine": machine(args.python), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]),
        "batch_wait": BATCH_WAIT, "line_bytes": LINE_BYTES,
        "targets": [{"name": t.name, "command": shlex.join(t.argv), "sources": sorted(t.sources),
                     "peer": not t.shipper} for t in targets],
        "workloads": [],
    }
    for name in names:
        wl = workloads[name]
        entry: dict[str, Any] = {"name": name, "spec": asdict(wl), "runs": {}, "not_run": {}}
        for target in targets:
            reason = target.not_run_reason(wl)
            if reason is not None:
                entry["not_run"][target.name] = reason
                continue
            print(f"{name}: {target.name} ...", file=sys.stderr, flush=True)
            run = run_one(target, wl, settings, base)
            # A peer is held to delivery only: the CPU, memory and latency targets are the shipper's.
            run["checks"] = [asdict(c) for c in checks(wl, run) if target.shipper or c.what == "delivery"]
            entry["runs"][target.name] = run
            print(f"{name}: {target.name}: {one_line(run)}", file=sys.stderr, flush=True)
        results["workloads"].append(entry)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a crash
    add_relative_checks(results["workloads"], workloads, {t.name for t in targets if t.shipper})
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    markdown = render_markdown(results)
    Path(args.markdown).write_text(markdown)
    sys.stdout.write(markdown)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    shippers = {t.name for t in targets if t.shipper}
    shipper_checks = [c for w in results["workloads"] for t, r in w["runs"].items()
                      if t in shippers for c in r["checks"]]
    lost = any(not c["ok"] for c in shipper_checks if c["what"] == "delivery")
    missed = any(not c["ok"] for c in shipper_checks)
    return 1 if lost or (args.fail_on_targets and missed) else 0


def add_relative_checks(entries: list[dict[str, Any]], workloads: dict[str, Workload], shippers: set[str]) -> None:
    """Issue 15's targets across workloads (benchmarks.checks.relative_checks), added to each shipper run."""
    runs = {e["name"]: e["runs"] for e in entries}
    for entry in entries:
        for name, run in entry["runs"].items():
            if name not in shippers:
                continue
            raw = runs.get(RAW_WORKLOAD, {}).get(name)
            fluent_bit = next((r for peer, r in entry["runs"].items() if peer.startswith("fluent-bit")), None)
            extra = relative_checks(workloads[entry["name"]], run, raw, fluent_bit)
            run["checks"] += [asdict(c) for c in extra]


def one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    lat = r["latency_s"] or {}
    return (f"{r['lines_delivered']}/{r['entries_expected']} entries ({r['lines_written']} lines), "
            f"{r['window']['millicores']} millicores, "
            f"peak RSS {r['peak_rss_mib']} MiB, p99 {lat.get('p99')} s, exit {r['exit_code']}")


if __name__ == "__main__":
    sys.exit(main())
