"""Lifecycle: start, supervise, and shut down in sequence.

Shutdown (first SIGTERM/SIGINT, or every source at end of input):
  1. stop intake: read every source to its current end (files to their size
     now, pipes until empty), ship unterminated last lines;
  2. seal the open batch and push everything queued, retrying;
  3. all under one deadline, `shutdown_timeout` from the signal (or EOF);
  4. exit 0 if every line read was acknowledged (or refused by Loki, counted),
     1 if some were not. A second signal exits at once (1 if lines were pending).
A supervised task that dies marks the run failed and exits 3, loudly.

After the exit code is known the run's story is written three ways, because a
task pod often ends before the first scrape: the `exit` summary on stderr,
the same summary as one entry in Loki (stream `{job="shipper", <the task's
labels>}`), and, when configured, the final metrics to a Pushgateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipper import __version__, checkpoint, encoder, events
from shipper.batch import Stream
from shipper.config import CONTEXT_KEYS, Config, ConfigError, SourceConfig, parse_listen
from shipper.labels import (SUMMARY_SERVICE_NAME, clean_value, context_from_env, context_from_log_path,
                            label_string, read_annotations, with_service_name)
from shipper.pipeline import Pipeline, Sink
from shipper.server import MetricsServer, Status
from shipper.checkpoint import Position
from shipper.sources import GlobWatcher, Source, expand_pattern, is_glob
from shipper.spool import Spool, SpoolEntry

if TYPE_CHECKING:  # exec mode only; shipper.exec is imported by its users
    from shipper.exec import Child

# The exit summary and the Pushgateway push get at least this long even when
# the shutdown deadline is spent: one small request, and the run's only record.
SUMMARY_PUSH_TIMEOUT = 1.0

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_INTERNAL = 3
EXIT_SPOOLED = 4  # lines left undelivered are safe in the spool; the next run sends them


# Signals that arrived before run() installed its handlers (sources opening,
# the metrics endpoint starting): without this, the default action would kill
# the process with no flush and no summary. run() then acts on them in order.
_early_signals: list[int] = []
# Where a signal goes when the loop dispatches it: looked up at dispatch time,
# so a signal the loop read before run() took over, but whose callback runs
# after, still reaches run()'s handler (replacing the loop's handler would
# leave such a callback calling the old one, and the signal would be lost).
_signal_target: Callable[[int], None] = _early_signals.append


def _dispatch(signum: int) -> None:
    _signal_target(signum)


def catch_early_signals() -> None:
    """Until run() takes over, record SIGTERM/SIGINT instead of dying of them.

    Through the loop, as run()'s own handlers: a signal is dispatched once
    (a Python-level handler here would race the loop's wakeup fd and deliver
    one signal twice).
    """
    global _signal_target
    _signal_target = _early_signals.append
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _dispatch, sig)


@dataclass
class Durable:
    """What an earlier run left: spooled batches and acknowledged file positions."""

    spool: Spool | None = None
    replay: list[SpoolEntry] = field(default_factory=list)
    checkpoint_file: str = ""
    positions: dict[str, Position] = field(default_factory=dict)
    resume: dict[str, Position] = field(default_factory=dict)  # where each file path starts


def open_durable(config: Config, sources: list[Source]) -> Durable:
    """Load the spool and checkpoint and set each file source's resume position.

    Raises CheckpointError / SpoolError (the CLI exits 2). Must run before the
    sources are opened.
    """
    state = Durable(checkpoint_file=config.checkpoint_file)
    if config.spool_dir:
        state.spool = Spool(config.spool_dir, config.spool_max_bytes)
        state.replay = state.spool.load()
        for path in state.spool.corrupt:
            events.log("error", "unreadable spool file set aside", path=path + ".corrupt")
        if not state.checkpoint_file:
            state.checkpoint_file = os.path.join(config.spool_dir, "checkpoint.json")
    if state.checkpoint_file:
        state.positions = checkpoint.load(state.checkpoint_file)
        try:
            # Written now, so a checkpoint that cannot be kept is refused at start.
            os.makedirs(os.path.dirname(state.checkpoint_file) or ".", exist_ok=True)
            checkpoint.save(state.checkpoint_file, state.positions)
        except OSError as e:
            raise checkpoint.CheckpointError(
                f"checkpoint_file: cannot write {state.checkpoint_file}: {e.strerror or e}") from None
    resume = dict(state.positions)
    for entry in state.replay:
        resume.update(entry.marks)  # spooled lines were read: start after them
    for source in sources:
        source.resume = resume.get(source.path)
    state.resume = resume
    if state.replay:
        events.log("info", "replaying batches spooled by an earlier run", batches=len(state.replay),
                   lines=sum(e.lines for e in state.replay))
    return state


def airflow_context(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Context from AIRFLOW_CTX_* env vars, completed from the annotations file."""
    ctx = context_from_env(env)
    try:
        annotations = read_annotations(config.airflow.annotations_file)
    except ValueError as e:
        raise ConfigError(f"airflow.annotations_file: {e}") from None
    for key, value in annotations.items():
        ctx.setdefault(key, value)
    return ctx


def task_labels(config: Config, ctx: Mapping[str, str]) -> dict[str, str]:
    """Static labels plus the context keys configured as labels (`dag_id`, `task_id`)."""
    air = config.airflow
    labels = {k: clean_value(v) for k, v in config.labels.items()}
    for key in air.labels:
        labels[key] = clean_value(ctx.get(key) or air.missing)
    return labels


def run_metadata(config: Config, ctx: Mapping[str, str]) -> bytes:
    """Per-run context (`run_id`, `try_number`, ...) as encoded structured metadata."""
    return encoder.encode_metadata(
        (key, clean_value(ctx[key])) for key in CONTEXT_KEYS
        if key not in config.airflow.labels and ctx.get(key))


def task_stream(config: Config, ctx: Mapping[str, str], name: str) -> Stream:
    """A source's stream: task labels + `stream` + `service_name`; per-run values as metadata."""
    labels = with_service_name(task_labels(config, ctx), config.airflow.service_name)
    labels["stream"] = clean_value(name)
    return Stream(label_string(labels), run_metadata(config, ctx), name, labels)


def build_streams(config: Config, ctx: Mapping[str, str],
                  names: Sequence[str] | None = None) -> list[Stream]:
    """One Stream per source (or per name given)."""
    return [task_stream(config, ctx, name)
            for name in (names if names is not None else [s.stream for s in config.sources])]


def new_source(config: Config, cfg: SourceConfig, path: str, stream: Stream) -> Source:
    """A Source for `path` read as `cfg` says (with its processing chain when it has one)."""
    return process_as(config, cfg, Source(path, stream, config.max_line_bytes))


def process_as(config: Config, cfg: SourceConfig | None, source: Source) -> Source:
    """`source`, given the processing chain `cfg` asks for (format, multiline, levels), if any."""
    if cfg is not None and cfg.processed:
        from shipper.process import Processor  # only its users pay the import

        source.processor = Processor(cfg, config.max_line_bytes)
    return source


def exec_source_config(config: Config, name: str) -> SourceConfig | None:
    """Exec mode: the [[sources]] entry whose `stream` is `name` ("stdout"/"stderr"), if any.

    Its path is not read; its processing keys (format, multiline, detect_level,
    json_*) apply to the command's stream of that name, so a config written for
    the sidecar ships the same entries in exec mode.
    """
    return next((cfg for cfg in config.sources if cfg.stream == name), None)


def make_watchers(config: Config, ctx: Mapping[str, str], durable: Durable,
                  env: Mapping[str, str]) -> list[GlobWatcher]:
    """One watcher per [[sources]] pattern; each file found is a file source whose
    dag_id/task_id (labels) and run_id/map_index/try_number (metadata) come from
    its path when it is in Airflow's task-log layout, else from the context."""
    watchers = []
    for cfg in config.sources:
        if not is_glob(cfg.path):
            continue

        def make_source(path: str, cfg: SourceConfig = cfg) -> Source:
            stream = task_stream(config, {**ctx, **context_from_log_path(path)}, cfg.stream)
            source = new_source(config, cfg, path, stream)
            source.resume = durable.resume.get(path)
            events.log("info", "source file found", pattern=cfg.path, path=path, labels=stream.labels)
            return source

        watchers.append(GlobWatcher(expand_pattern(cfg.path, dict(env)), make_source))
    return watchers


def summary_push(config: Config, ctx: Mapping[str, str], summary: Mapping[str, Any],
                 wall_ns: int) -> bytes:
    """The exit summary as one compressed push: stream {job="shipper", <task labels>},
    service_name="shipper" (unless airflow.service_name is "": then Loki's discovery)."""
    labels = task_labels(config, ctx)
    if config.airflow.service_name:
        labels = with_service_name(labels, SUMMARY_SERVICE_NAME)
    labels["job"] = "shipper"
    line = json.dumps(summary, separators=(",", ":")).encode()
    entries = encoder.encode_entries([line], wall_ns, run_metadata(config, ctx))
    return encoder.compress(encoder.encode_push([(label_string(labels), entries)]))


def pushgateway_url(base: str, config: Config, ctx: Mapping[str, str]) -> str:
    """`<base>/metrics/job/shipper/<key>@base64/<value>...`, grouped by the task labels.

    Grouped by `dag_id`/`task_id` (the context labels), not by run: a group per
    run would grow the Pushgateway without bound. Values are base64url-encoded
    so any character (a `/` in a task id) is safe in the path.
    """
    path = base.rstrip("/") + "/metrics/job/shipper"
    for key in config.airflow.labels:
        value = clean_value(ctx.get(key) or config.airflow.missing).encode()
        path += f"/{key}@base64/{base64.urlsafe_b64encode(value).decode()}"
    return path


async def run(config: Config, sources: list[Source], sink: Sink,
              ctx: Mapping[str, str] | None = None, child: Child | None = None,
              durable: Durable | None = None, watchers: list[GlobWatcher] | None = None) -> int:
    """Run the pipeline until shutdown; returns the exit code.

    With a `child` (exec mode) signals are forwarded to it instead of starting
    the shutdown, the shutdown starts when it exits, and its exit code is
    returned.
    """
    ctx = ctx or {}
    loop = asyncio.get_running_loop()
    durable = durable or Durable()
    pipeline = Pipeline(config, sources, sink, spool=durable.spool, replay=durable.replay,
                        checkpoint_file=durable.checkpoint_file, positions=durable.positions,
                        watchers=watchers)
    changed = asyncio.Event()
    state = _State()

    def begin_shutdown(why: str) -> None:
        state.reason = why
        state.deadline = time.monotonic() + config.shutdown_timeout
        pipeline.stop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if child is not None and child.status is None:
            events.log("info", "signal forwarded to the command", signal=name, pid=child.pid)
            child.send(signum)
            return
        state.signals += 1
        if state.signals == 1:
            events.log("info", "signal received: reading to the end, flushing",
                       signal=name, shutdown_timeout=config.shutdown_timeout)
            begin_shutdown(name)
        else:
            events.log("warn", "second signal: exiting now", signal=name)
        changed.set()

    async def watch_stop_file() -> None:
        # One stat per file_poll_interval, only when stop_file is configured.
        while not os.path.exists(config.stop_file):
            await asyncio.sleep(config.file_poll_interval)
        if not state.deadline:
            events.log("info", "stop file appeared: reading to the end, flushing",
                       path=config.stop_file, shutdown_timeout=config.shutdown_timeout)
            begin_shutdown("stop_file")
        changed.set()

    tasks: list[asyncio.Task[None]] = []

    def status() -> Status:
        dead = [t.get_name() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        waiting = [s.path for s in sources if s.kind == "waiting"]
        reason = ""
        if dead:
            reason = f"pipeline task died: {', '.join(dead)}"
        elif waiting:
            reason = f"waiting for source {', '.join(waiting)}"
        elif events.COUNTERS.last_push_failed:
            reason = "the last push failed; retrying"
        return Status(healthy=not dead, ready=not reason, reason=reason,
                      pending_lines=pipeline.undelivered_lines,
                      pending_bytes=pipeline.undelivered_line_bytes,
                      sources_open=sum(1 for s in sources if s.fd is not None))

    server: MetricsServer | None = None
    if config.metrics.listen:
        host, port = parse_listen(config.metrics.listen)
        server = MetricsServer(status)
        try:
            bound = await server.start(host, port)
        except OSError as e:
            events.log("error", "refusing to start",
                       error=f"metrics.listen: cannot listen on {config.metrics.listen}: {e.strerror or e}")
            return EXIT_CONFIG
        events.log("info", "metrics endpoint listening", host=host or "*", port=bound)

    def on_child_exit() -> None:
        assert child is not None
        if child.poll() is None:
            return
        loop.remove_reader(child.pidfd)
        child.close()
        events.log("info", "command exited: reading its output to the end, flushing",
                   code=child.status, shutdown_timeout=config.shutdown_timeout)
        if state.deadline:
            changed.set()
            return
        state.reason = f"command exited with {child.status}"
        held = still_written()
        if held:
            # A process the command started (a daemon, a `cmd &`) still holds
            # its stdout/stderr: read on, passing through and shipping, until
            # the pipes close (intake then ends by itself) or the drain limit.
            events.log("warn", "the command exited but a process it started still holds its output open: "
                       "reading on until it closes", pipes=held, drain_seconds=DRAIN_SECONDS)
            loop.call_later(DRAIN_SECONDS, drain_expired)
        else:
            begin_shutdown(state.reason)
        changed.set()

    def still_written() -> list[str]:
        # A pipe with a writer left: no POLLHUP (which every writer's close sets).
        return [s.path for s in sources if s.fd is not None and not s.finished and not hung_up(s.fd)]

    def drain_expired() -> None:
        if state.deadline or intake.done():
            return
        held = still_written()
        events.COUNTERS.exec_pipes_cut += len(held)
        events.log("warn", "drain limit passed: no longer reading the output the command's descendants "
                   "still write (what they write from now on is neither passed through nor shipped)",
                   pipes=held, drain_seconds=DRAIN_SECONDS)
        begin_shutdown(state.reason)
        changed.set()

    handled: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
    if child is not None:
        from shipper.exec import DRAIN_SECONDS, FORWARDED, hung_up

        handled = FORWARDED
    global _signal_target
    for sig in handled:
        loop.add_signal_handler(sig, _dispatch, sig)
    _signal_target = on_signal
    early, _early_signals[:] = list(_early_signals), []
    for sig in early:
        on_signal(sig)
    if child is not None:
        loop.add_reader(child.pidfd, on_child_exit)
        on_child_exit()  # it may have exited already
    started = time.monotonic()
    intake = asyncio.create_task(pipeline.intake(), name="intake")
    sender = asyncio.create_task(pipeline.sender(), name="sender")
    tasks += [intake, sender]
    if config.stop_file:
        tasks.append(asyncio.create_task(watch_stop_file(), name="stop_file"))
    ending, lost = "delivered", 0  # how the wait below ended, and what that gave up
    try:
        while True:
            if intake.done() and not state.deadline and (child is None or child.status is not None):
                # Every source ended without a signal: the same deadline applies.
                state.deadline = time.monotonic() + config.shutdown_timeout
            deadline = state.deadline
            timeout = max(0.0, deadline - time.monotonic()) if deadline else None
            changed.clear()
            watch = asyncio.create_task(changed.wait())
            waiting = {t for t in tasks if not t.done()} | {watch}
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                for t in failed:
                    exc = t.exception()
                    events.log("error", "internal error: a pipeline task died", task=t.get_name(),
                               error=f"{type(exc).__name__}: {exc}")
                ending = "internal_error"
                _give_up(pipeline, "internal_error")
                break
            if sender.done() and (child is None or child.status is not None):
                break  # intake finished and everything queued was answered
            if state.signals > 1:
                ending, lost = "forced_exit", _give_up(pipeline, "forced_exit")
                break
            if deadline and time.monotonic() >= deadline:
                ending, lost = "shutdown_deadline", _give_up(pipeline, "shutdown_deadline")
                if lost:
                    events.log("error", "shutdown deadline reached with lines undelivered",
                               lines=lost, shutdown_timeout=config.shutdown_timeout)
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for source in sources:
            source.close()
    code = exit_code(ending, lost, events.COUNTERS.dropped, events.COUNTERS.lines_spooled_at_exit)
    try:
        summary = _summary(code, state.reason, time.monotonic() - started)
        events.log("info", "exit", **summary)
        # The record of a run must not wait on a dead Loki longer than its own
        # deadline, and gets one short try even when the deadline is spent.
        left = max(SUMMARY_PUSH_TIMEOUT, state.deadline - time.monotonic()) if state.deadline \
            else config.shutdown_timeout
        if config.sink.type == "loki" and state.signals < 2:
            await _push_once("summary", sink, summary_push(config, ctx, summary, time.time_ns()), left)
        if config.metrics.pushgateway_url and state.signals < 2:
            await _push_metrics(config, ctx, pipeline, left)
    finally:
        await sink.close()
        if server is not None:
            await server.close()
        # Only now: a SIGTERM during the exit records (a native sidecar gets
        # one when its task ends) must not kill the process mid-push.
        for sig in handled:
            loop.remove_signal_handler(sig)
    if child is not None and child.status is not None:
        return child.status  # the task's outcome; the summary records the shipper's
    return code


def _summary(code: int, reason: str, seconds: float) -> dict[str, Any]:
    """The run's final record; the same dict goes to stderr and to Loki."""
    c = events.COUNTERS
    return {
        "code": code, "reason": reason, "seconds": round(seconds, 3),
        "lines_read": sum(c.lines_read.values()), "bytes_read": sum(c.bytes_read.values()),
        "lines_sent": c.lines_sent, "bytes_sent": c.bytes_sent, "batches_sent": c.batches_sent,
        "retries": c.retries, "lines_resent_uncertain": c.lines_resent_uncertain,
        "descriptor_shortages": c.descriptor_shortages, "dropped": dict(c.dropped), "lines_spooled": c.lines_spooled_at_exit,
        "exec_pipes_cut": c.exec_pipes_cut,
        "lines_split": c.lines_split, "lines_invalid_utf8": c.lines_invalid_utf8,
        "lines_merged": c.lines_merged,
        "timestamps_replaced": dict(c.timestamps_replaced),
        "version": __version__,
    }


async def _push_once(what: str, sink: Sink, body: bytes, timeout: float) -> bool:
    """One try, no retry: used for the exit records only."""
    try:
        answer = await sink.push(body, timeout=timeout)
    except Exception as e:
        events.log("warn", f"{what} push failed", error=f"{type(e).__name__}: {e}")
        return False
    if not 200 <= answer.status < 300:
        events.log("warn", f"{what} push refused", status=answer.status, error=answer.message[:512])
        return False
    events.log("info", f"{what} pushed")
    return True


async def _push_metrics(config: Config, ctx: Mapping[str, str], pipeline: Pipeline,
                        timeout: float) -> None:
    from shipper import metrics
    from shipper.loki import LokiClient

    gauges = {"pending_lines": pipeline.undelivered_lines,
              "pending_bytes": pipeline.undelivered_line_bytes, "sources_open": 0}
    body = metrics.render(events.COUNTERS, gauges, metrics.sample_process())
    client = LokiClient(pushgateway_url(config.metrics.pushgateway_url, config, ctx),
                        method=b"PUT", content_type=metrics.CONTENT_TYPE.encode())
    try:
        await _push_once("pushgateway", client, body, timeout)
    finally:
        await client.close()


class _State:
    """What the signal handler tells the supervisor."""

    signals = 0
    deadline = 0.0  # monotonic; 0 until shutdown begins
    reason = "end of input"


def exit_code(ending: str, lost: int, dropped: Mapping[str, int], spooled: int) -> int:
    """The run's exit code from how it ended and what it lost. No IO.

    `ending`: "delivered" (everything queued was answered), "shutdown_deadline",
    "forced_exit" (a second signal) or "internal_error" (a task died: 3);
    `lost`: lines that ending gave up; `dropped`: every line given up by reason
    (a refusal by Loki, "rejected", is an answer: it does not fail the run);
    `spooled`: lines left safe in the spool for the next run (4).
    """
    if ending == "internal_error":
        return EXIT_INTERNAL
    if lost or any(n for reason, n in dropped.items() if reason != "rejected"):
        return EXIT_UNDELIVERED
    return EXIT_SPOOLED if spooled else EXIT_OK


def _give_up(pipeline: Pipeline, reason: str) -> int:
    """Count every line still undelivered and not spooled as dropped for `reason`; returns how many."""
    kept = pipeline.spooled_lines
    lost = pipeline.undelivered_lines - kept
    if lost:
        events.lines_dropped(reason, lost)
    if kept:
        events.COUNTERS.lines_spooled_at_exit = kept
        events.log("warn", "lines left in the spool for the next run", lines=kept,
                   spool_dir=pipeline.spool.directory if pipeline.spool else None)
    pipeline.pending.clear()
    return lost
