"""Lifecycle: a config, sources and a sink in; one supervised run out, ending in an exit code and the run's records.

The supervisor (`Supervisor`, behind `run`) starts the pipeline's tasks and
waits in one loop for what can end the run: a signal, the exec command's
exit, the stop file, every source at end of input, the shutdown deadline, a
supervised task dying. Shutdown, in sequence:
  1. stop intake: read every source to its current end (files to their size
     now, pipes until empty), ship unterminated last lines;
  2. seal the open batch and push everything queued, retrying (acknowledged
     file positions are checkpointed as their pushes are answered);
  3. all under one deadline, `shutdown_timeout` from the signal (or EOF);
  4. exit with `exit_code(outcome)`: 0 if every line read was acknowledged (or
     refused by Loki, counted), 1 if some were not, 4 if those are safe in the
     spool. A second signal exits at once (1 if lines were pending).
A supervised task that dies marks the run unhealthy and exits 3, loudly.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shipper import __version__, checkpoint, encoder, events
from shipper.batch import Stream
from shipper.config import Config, ConfigError, SourceConfig, parse_listen
from shipper.labels import build_streams as build_streams  # cli.py's and the tests' name for it
from shipper.labels import (clean_value, context_from_env, context_from_log_path, label_string,
                            read_annotations, run_metadata, summary_labels, task_stream)
from shipper.pipeline import Pipeline, Sink
from shipper.server import MetricsServer, Status
from shipper.cursor import Position, resume_positions
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
            events.log("error", "unreadable spool file set aside", event="spool_file_set_aside", path=path + ".corrupt")
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
    # Spooled lines were read: start after them (shipper.cursor: rule 4).
    resume = resume_positions(state.positions, (entry.positions for entry in state.replay))
    for source in sources:
        source.cursor.resume = resume.get(source.path)
    state.resume = resume
    if state.replay:
        events.log("info", "replaying batches spooled by an earlier run", event="spool_replay",
                   batches=len(state.replay),
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
            source.cursor.resume = durable.resume.get(path)
            events.log("info", "source file found", event="source_found",
                       pattern=cfg.path, path=path, labels=stream.labels)
            return source

        watchers.append(GlobWatcher(expand_pattern(cfg.path, dict(env)), make_source))
    return watchers


def summary_push(config: Config, ctx: Mapping[str, str], summary: Mapping[str, Any],
                 wall_ns: int) -> bytes:
    """The exit summary as one compressed push to its stream (`labels.summary_labels`)."""
    labels = summary_labels(config, ctx)
    line = json.dumps(summary, separators=(",", ":")).encode()
    entries = encoder.encode_entries([line], wall_ns, run_metadata(config, ctx))
    return encoder.compress(encoder.encode_push([(label_string(labels), entries)]), config.loki.compression)


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


@dataclass(frozen=True)
class Outcome:
    """How a run ended and what it gave up: everything `exit_code` needs.

    `ending`: "delivered" (everything queued was answered), "shutdown_deadline",
    "forced_exit" (a second signal) or "internal_error" (a supervised task died);
    `lost`: lines that ending gave up; `dropped`: every line the run gave up, by
    reason (events.DROP_REASONS); `spooled`: lines left safe in the spool.
    """

    ending: str = "delivered"
    lost: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    spooled: int = 0


def exit_code(outcome: Outcome) -> int:
    """The run's exit code from its outcome. No IO.

    A task that died is 3 whatever else happened; any line given up is 1,
    except a refusal by Loki ("rejected"), which is an answer and counted; lines
    left safe in the spool for the next run are 4; else 0.
    """
    if outcome.ending == "internal_error":
        return EXIT_INTERNAL
    if outcome.lost or any(n for reason, n in outcome.dropped.items() if reason != "rejected"):
        return EXIT_UNDELIVERED
    return EXIT_SPOOLED if outcome.spooled else EXIT_OK


async def run(config: Config, sources: list[Source], sink: Sink,
              ctx: Mapping[str, str] | None = None, child: Child | None = None,
              durable: Durable | None = None, watchers: list[GlobWatcher] | None = None) -> int:
    """Run the pipeline until shutdown; returns the exit code.

    With a `child` (exec mode) signals are forwarded to it instead of starting
    the shutdown, the shutdown starts when it exits, and its exit code is
    returned.
    """
    return await Supervisor(config, sources, sink, ctx or {}, child, durable or Durable(), watchers).run()


class Supervisor:
    """One run: the pipeline's tasks, the one loop that waits for what ends them, the shutdown.

    The callbacks (`on_signal`, `on_child_exit`, the stop file's watcher, the
    drain limit) only record what happened and wake the loop; the loop alone
    decides how the run ends (`_ending`).
    """

    def __init__(self, config: Config, sources: list[Source], sink: Sink, ctx: Mapping[str, str],
                 child: Child | None, durable: Durable, watchers: list[GlobWatcher] | None) -> None:
        self.config = config
        self.sources = sources
        self.sink = sink
        self.ctx = ctx
        self.child = child
        self.loop = asyncio.get_running_loop()
        self.pipeline = Pipeline(config, sources, sink, spool=durable.spool, replay=durable.replay,
                                 checkpoint_file=durable.checkpoint_file, positions=durable.positions,
                                 watchers=watchers)
        self.changed = asyncio.Event()  # something a callback recorded: the loop looks again
        self.tasks: list[asyncio.Task[None]] = []
        self.intake: asyncio.Task[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.server: MetricsServer | None = None
        self.signals = 0
        self.deadline = 0.0  # monotonic; 0 until shutdown begins
        self.reason = "end of input"
        self.started = 0.0  # monotonic, when the tasks start (the summary's `seconds`)
        self.handled: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
        if child is not None:
            from shipper.exec import FORWARDED

            self.handled = FORWARDED

    async def run(self) -> int:
        """Start, wait for the end, shut down, write the records; the exit code."""
        if not await self._start_server():
            return EXIT_CONFIG
        self._take_signals()
        self._watch_child()
        self._start_tasks()
        try:
            outcome = await self._wait()
        finally:
            await self._stop_tasks()
        code = exit_code(outcome)
        try:
            await self._write_records(code)
        finally:
            await self._close()
        if self.child is not None and self.child.status is not None:
            return self.child.status  # the task's outcome; the summary records the shipper's
        return code

    # --- start ---------------------------------------------------------------

    async def _start_server(self) -> bool:
        """The metrics endpoint, when configured; False (exit 2) when it cannot listen."""
        listen = self.config.metrics.listen
        if not listen:
            return True
        host, port = parse_listen(listen)
        self.server = MetricsServer(self.status)
        try:
            bound = await self.server.start(host, port)
        except OSError as e:
            events.log("error", "refusing to start", event="refusing_to_start",
                       error=f"metrics.listen: cannot listen on {listen}: {e.strerror or e}")
            return False
        events.log("info", "metrics endpoint listening", event="metrics_listening", host=host or "*", port=bound)
        return True

    def _take_signals(self) -> None:
        """From now on signals come here; those that came early are acted on, in order."""
        global _signal_target
        for sig in self.handled:
            # The same callback catch_early_signals() installed: the loop's own
            # handler is re-registered, never swapped for another (see _dispatch).
            self.loop.add_signal_handler(sig, _dispatch, sig)
        _signal_target = self.on_signal
        early, _early_signals[:] = list(_early_signals), []
        for sig in early:
            self.on_signal(sig)

    def _watch_child(self) -> None:
        if self.child is not None:
            self.loop.add_reader(self.child.pidfd, self.on_child_exit)
            self.on_child_exit()  # it may have exited already

    def _start_tasks(self) -> None:
        self.started = time.monotonic()
        self.intake = asyncio.create_task(self.pipeline.intake(), name="intake")
        self.sender = asyncio.create_task(self.pipeline.sender(), name="sender")
        self.tasks += [self.intake, self.sender]
        if self.config.stop_file:
            self.tasks.append(asyncio.create_task(self._watch_stop_file(), name="stop_file"))

    # --- what can end the run: each records it and wakes the loop ------------

    def begin_shutdown(self, why: str) -> None:
        """Stop intake (it reads every source to its current end) and start the deadline."""
        self.reason = why
        self.deadline = time.monotonic() + self.config.shutdown_timeout
        self.pipeline.stop()

    def on_signal(self, signum: int) -> None:
        """A signal: the command's in exec mode while it runs; else the first is a
        shutdown, the second an exit now."""
        name = signal.Signals(signum).name
        child = self.child
        if child is not None and child.status is None:
            events.log("info", "signal forwarded to the command", event="signal_forwarded", signal=name, pid=child.pid)
            child.send(signum)
            return
        self.signals += 1
        if self.signals == 1:
            events.log("info", "signal received: reading to the end, flushing", event="signal_received",
                       signal=name, shutdown_timeout=self.config.shutdown_timeout)
            self.begin_shutdown(name)
        else:
            events.log("warn", "second signal: exiting now", event="second_signal", signal=name)
        self.changed.set()

    async def _watch_stop_file(self) -> None:
        # One stat per file_poll_interval, only when stop_file is configured.
        while not os.path.exists(self.config.stop_file):
            await asyncio.sleep(self.config.file_poll_interval)
        if not self.deadline:
            events.log("info", "stop file appeared: reading to the end, flushing", event="stop_file_seen",
                       path=self.config.stop_file, shutdown_timeout=self.config.shutdown_timeout)
            self.begin_shutdown("stop_file")
        self.changed.set()

    def on_child_exit(self) -> None:
        """exec: the command's pidfd is readable (or may be): once it has exited, shut down,
        or, while its descendants still hold its output open, read on up to DRAIN_SECONDS."""
        from shipper.exec import DRAIN_SECONDS

        child = self.child
        assert child is not None
        if child.poll() is None:
            return
        self.loop.remove_reader(child.pidfd)
        child.close()
        events.log("info", "command exited: reading its output to the end, flushing", event="command_exited",
                   code=child.status, shutdown_timeout=self.config.shutdown_timeout)
        if not self.deadline:
            self.reason = f"command exited with {child.status}"
            held = self._still_written()
            if held:
                # A process the command started (a daemon, a `cmd &`) still holds
                # its stdout/stderr: read on, passing through and shipping, until
                # the pipes close (intake then ends by itself) or the drain limit.
                events.log("warn", "the command exited but a process it started still holds its output open: "
                           "reading on until it closes", event="output_held_open",
                           pipes=held, drain_seconds=DRAIN_SECONDS)
                self.loop.call_later(DRAIN_SECONDS, self._drain_expired)
            else:
                self.begin_shutdown(self.reason)
        self.changed.set()

    def _still_written(self) -> list[str]:
        from shipper.exec import hung_up

        # A pipe with a writer left: no POLLHUP (which every writer's close sets).
        return [s.path for s in self.sources if s.fd is not None and not s.finished and not hung_up(s.fd)]

    def _drain_expired(self) -> None:
        from shipper.exec import DRAIN_SECONDS

        if self.deadline or (self.intake is not None and self.intake.done()):
            return
        held = self._still_written()
        events.COUNTERS.exec_pipes_cut += len(held)
        events.log("warn", "drain limit passed: no longer reading the output the command's descendants "
                   "still write (what they write from now on is neither passed through nor shipped)",
                   event="drain_limit_passed", pipes=held, drain_seconds=DRAIN_SECONDS)
        self.begin_shutdown(self.reason)
        self.changed.set()

    # --- the wait loop -------------------------------------------------------

    async def _wait(self) -> Outcome:
        """The one wait loop: until `_ending` names how the run ends; what that gave up."""
        while True:
            if self._input_ended() and not self.deadline:
                # Every source ended without a signal: the same deadline applies.
                self.deadline = time.monotonic() + self.config.shutdown_timeout
            # Wait, then judge, also the first time: with two early signals
            # intake still makes its final read, and the second signal's exit
            # counts what it read as dropped instead of leaving it unread.
            await self._next_change()
            ending = self._ending()
            if ending is not None:
                return self._give_up(ending)

    def _ending(self) -> str | None:
        """How the run ends, judged now: None while it goes on."""
        dead = self._dead()
        if dead:
            for t in dead:
                exc = t.exception()
                events.log("error", "internal error: a pipeline task died", event="internal_error", task=t.get_name(),
                           error=f"{type(exc).__name__}: {exc}")
            return "internal_error"
        assert self.sender is not None
        if self.sender.done() and self._command_done():
            return "delivered"  # intake finished and everything queued was answered
        if self.signals > 1:
            return "forced_exit"
        if self.deadline and time.monotonic() >= self.deadline:
            return "shutdown_deadline"
        return None

    async def _next_change(self) -> None:
        """Until a callback records something, a task ends, or the deadline passes."""
        timeout = max(0.0, self.deadline - time.monotonic()) if self.deadline else None
        # Cleared just before waiting: callbacks run only inside the wait, and
        # what they recorded before it is in the state `_ending` reads after it.
        self.changed.clear()
        watch = asyncio.create_task(self.changed.wait())
        waiting = {t for t in self.tasks if not t.done()} | {watch}
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()

    def _input_ended(self) -> bool:
        return self.intake is not None and self.intake.done() and self._command_done()

    def _command_done(self) -> bool:
        return self.child is None or self.child.status is not None

    def _dead(self) -> list[asyncio.Task[None]]:
        """Supervised tasks that ended with an exception (a bug)."""
        return [t for t in self.tasks if t.done() and not t.cancelled() and t.exception() is not None]

    def _give_up(self, ending: str) -> Outcome:
        """The outcome of `ending`: lines still undelivered are dropped for it,
        except those safe in the spool, kept for the next run."""
        lost = kept = 0
        if ending != "delivered":
            lost, kept = _give_up(self.pipeline, ending)
        if lost and ending == "shutdown_deadline":
            events.log("error", "shutdown deadline reached with lines undelivered", event="shutdown_deadline_reached",
                       lines=lost, shutdown_timeout=self.config.shutdown_timeout)
        return Outcome(ending, lost, dict(self.pipeline.dropped), kept)

    # --- shut down -----------------------------------------------------------

    async def _stop_tasks(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for source in self.sources:
            source.close()

    async def _write_records(self, code: int) -> None:
        """The exit summary on stderr, then (not after a second signal) in Loki and
        the final metrics to the Pushgateway."""
        summary = _summary(code, self.reason, time.monotonic() - self.started)
        events.log("info", "exit", event="exit", **summary)
        if self.signals > 1:
            return
        # The record of a run must not wait on a dead Loki longer than its own
        # deadline, and gets one short try even when the deadline is spent.
        left = max(SUMMARY_PUSH_TIMEOUT, self.deadline - time.monotonic()) if self.deadline \
            else self.config.shutdown_timeout
        if self.config.sink.type == "loki":
            await _push_once("summary", self.sink, summary_push(self.config, self.ctx, summary, time.time_ns()),
                             left)
        if self.config.metrics.pushgateway_url:
            await _push_metrics(self.config, self.ctx, self.pipeline, left)

    async def _close(self) -> None:
        await self.sink.close()
        if self.server is not None:
            await self.server.close()
        # Only now: a SIGTERM during the exit records (a native sidecar gets
        # one when its task ends) must not kill the process mid-push.
        for sig in self.handled:
            self.loop.remove_signal_handler(sig)

    # --- what the endpoint reports ------------------------------------------

    def status(self) -> Status:
        """/healthz and /ready: unhealthy once a task died; not ready while a source
        waits to appear or the last push failed."""
        dead = [t.get_name() for t in self._dead()]
        waiting = [s.path for s in self.sources if s.kind == "waiting"]
        reason = ""
        if dead:
            reason = f"pipeline task died: {', '.join(dead)}"
        elif waiting:
            reason = f"waiting for source {', '.join(waiting)}"
        elif self.pipeline.last_push_failed:
            reason = "the last push failed; retrying"
        return Status(healthy=not dead, ready=not reason, reason=reason,
                      pending_lines=self.pipeline.undelivered_lines,
                      pending_bytes=self.pipeline.undelivered_line_bytes,
                      sources_open=sum(1 for s in self.sources if s.fd is not None))


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
        "records_malformed": dict(c.records_malformed), "multiline_splits": dict(c.multiline_splits),
        "timestamps_replaced": dict(c.timestamps_replaced),
        "version": __version__,
    }


async def _push_once(what: str, sink: Sink, body: bytes, timeout: float) -> bool:
    """One try, no retry: used for the exit records only."""
    try:
        answer = await sink.push(body, timeout=timeout)
    except Exception as e:
        events.log("warn", f"{what} push failed", event="exit_push_failed", target=what,
                   error=f"{type(e).__name__}: {e}")
        return False
    if not 200 <= answer.status < 300:
        events.log("warn", f"{what} push refused", event="exit_push_refused", target=what,
                   status=answer.status, error=answer.message[:512])
        return False
    events.log("info", f"{what} pushed", event="exit_pushed", target=what)
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


def _give_up(pipeline: Pipeline, reason: str) -> tuple[int, int]:
    """Count every line still undelivered and not spooled as dropped for `reason`.

    Returns (lines dropped, lines left safe in the spool).
    """
    kept = pipeline.spooled_lines
    lost = pipeline.undelivered_lines - kept
    if lost:
        pipeline.drop(reason, lost)
    if kept:
        events.COUNTERS.lines_spooled_at_exit = kept
        events.log("warn", "lines left in the spool for the next run", event="lines_left_in_spool", lines=kept,
                   spool_dir=pipeline.spool.directory if pipeline.spool else None)
    pipeline.buffer.clear()
    return lost, kept

