"""Lifecycle: start, supervise, and shut down in sequence.

Shutdown (first SIGTERM/SIGINT, or every source at end of input):
  1. stop intake: read every source to its current end (files to their size
     now, pipes until empty), ship unterminated last lines;
  2. seal the open batch and push everything queued, retrying;
  3. all under one deadline, `shutdown_timeout` from the signal (or EOF);
  4. exit 0 if every line read was acknowledged (or refused by Loki, counted),
     1 if some were not. A second signal exits at once (1 if lines were pending).
A supervised task that dies marks the run failed and exits 3, loudly.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Mapping

from shipper import events
from shipper.batch import Stream
from shipper.config import CONTEXT_KEYS, Config
from shipper.encoder import encode_metadata
from shipper.labels import clean_value, context_from_env, label_string, read_annotations
from shipper.pipeline import Pipeline, Sink
from shipper.sources import Source

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_INTERNAL = 3


def airflow_context(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """Context from AIRFLOW_CTX_* env vars, completed from the annotations file."""
    ctx = context_from_env(env)
    for key, value in read_annotations(config.airflow.annotations_file).items():
        ctx.setdefault(key, value)
    return ctx


def build_streams(config: Config, ctx: Mapping[str, str]) -> list[Stream]:
    """One Stream per source: static labels + `stream` + context labels; per-run values as metadata."""
    air = config.airflow
    metadata = encode_metadata(
        (key, clean_value(ctx[key])) for key in CONTEXT_KEYS if key not in air.labels and ctx.get(key))
    streams = []
    for source in config.sources:
        labels = {k: clean_value(v) for k, v in config.labels.items()}
        labels["stream"] = clean_value(source.stream)
        for key in air.labels:
            labels[key] = clean_value(ctx.get(key) or air.missing)
        streams.append(Stream(label_string(labels), metadata, source.stream))
    return streams


async def run(config: Config, sources: list[Source], sink: Sink) -> int:
    """Run the pipeline until shutdown; returns the exit code."""
    loop = asyncio.get_running_loop()
    pipeline = Pipeline(config, sources, sink)
    changed = asyncio.Event()
    state = _State()

    def on_signal(signum: int) -> None:
        state.signals += 1
        name = signal.Signals(signum).name
        if state.signals == 1:
            events.log("info", "signal received: reading to the end, flushing",
                       signal=name, shutdown_timeout=config.shutdown_timeout)
            state.reason = name
            state.deadline = time.monotonic() + config.shutdown_timeout
            pipeline.stop()
        else:
            events.log("warn", "second signal: exiting now", signal=name)
        changed.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    started = time.monotonic()
    intake = asyncio.create_task(pipeline.intake(), name="intake")
    sender = asyncio.create_task(pipeline.sender(), name="sender")
    code = EXIT_OK
    try:
        while True:
            if intake.done() and not state.deadline:
                # Every source ended without a signal: the same deadline applies.
                state.deadline = time.monotonic() + config.shutdown_timeout
            deadline = state.deadline
            timeout = max(0.0, deadline - time.monotonic()) if deadline else None
            changed.clear()
            watch = asyncio.create_task(changed.wait())
            waiting = {t for t in (intake, sender) if not t.done()} | {watch}
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            failed = [t for t in (intake, sender) if t.done() and not t.cancelled() and t.exception()]
            if failed:
                for t in failed:
                    exc = t.exception()
                    events.log("error", "internal error: a pipeline task died", task=t.get_name(),
                               error=f"{type(exc).__name__}: {exc}")
                code = EXIT_INTERNAL
                _give_up(pipeline, "internal_error")
                break
            if sender.done():
                break  # intake finished and everything queued was answered
            if state.signals > 1:
                code = EXIT_UNDELIVERED if _give_up(pipeline, "forced_exit") else EXIT_OK
                break
            if deadline and time.monotonic() >= deadline:
                lost = _give_up(pipeline, "shutdown_deadline")
                if lost:
                    events.log("error", "shutdown deadline reached with lines undelivered",
                               lines=lost, shutdown_timeout=config.shutdown_timeout)
                    code = EXIT_UNDELIVERED
                break
    finally:
        for t in (intake, sender):
            t.cancel()
        await asyncio.gather(intake, sender, return_exceptions=True)
        for source in sources:
            source.close()
        await sink.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    c = events.COUNTERS
    events.log("info", "exit", code=code, reason=state.reason,
               seconds=round(time.monotonic() - started, 3),
               lines_read=sum(c.lines_read.values()), lines_sent=c.lines_sent,
               batches_sent=c.batches_sent, retries=c.retries, dropped=c.dropped,
               lines_split=c.lines_split, lines_invalid_utf8=c.lines_invalid_utf8)
    return code


class _State:
    """What the signal handler tells the supervisor."""

    signals = 0
    deadline = 0.0  # monotonic; 0 until shutdown begins
    reason = "end of input"


def _give_up(pipeline: Pipeline, reason: str) -> int:
    """Count every line still undelivered as dropped for `reason`; returns how many."""
    lost = pipeline.undelivered_lines
    if lost:
        events.lines_dropped(reason, lost)
    pipeline.pending.clear()
    return lost
