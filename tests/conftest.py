"""Shared fixtures: a strict Loki receiver and a config builder for the real shipper."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import settings

# No timing thresholds in tests: hypothesis's per-example deadline (200 ms)
# fails property tests on a loaded CI machine (a real Loki runs beside them).
settings.register_profile("shipper", deadline=None)
settings.load_profile("shipper")

from tests.loki_receiver import LokiReceiver
from tests.shipper_process import ShipperProcess


@pytest.fixture
async def receiver() -> AsyncIterator[LokiReceiver]:
    rx = LokiReceiver()
    await rx.start()
    try:
        yield rx
    finally:
        await rx.stop()


@pytest.fixture
async def procs() -> AsyncIterator[list[ShipperProcess]]:
    """Shipper processes a test started; any still running at the end are killed."""
    started: list[ShipperProcess] = []
    yield started
    for proc in started:
        with contextlib.suppress(Exception):
            await proc.kill()


async def launch(procs: list[ShipperProcess], config: str, *args: str,
                 env: dict[str, str] | None = None) -> ShipperProcess:
    """Start the shipper and register it with the `procs` fixture (killed at the end)."""
    proc = await ShipperProcess.start(config, *args, env=env)
    procs.append(proc)
    return proc


def make_config(url: str, sources: Sequence[tuple[str | Path, str]], *,
                loki: dict[str, object] | None = None, labels: dict[str, str] | None = None,
                metrics: dict[str, object] | None = None, **top: object) -> str:
    """TOML for the shipper: test-friendly timings unless overridden.

    The metrics endpoint listens on a free loopback port (logged as
    "metrics endpoint listening") so tests can run side by side.
    """
    settings: dict[str, object] = {"shutdown_timeout": 20.0, "file_poll_interval": 0.05, **top}
    loki_settings: dict[str, object] = {"url": url, "batch_wait": 0.1, "min_backoff": 0.05,
                                        "max_backoff": 0.2, "timeout": 5.0, **(loki or {})}
    out = [f"{k} = {_toml(v)}" for k, v in settings.items()]
    out.append("[loki]")
    out += [f"{k} = {_toml(v)}" for k, v in loki_settings.items()]
    out.append("[airflow]\nannotations_file = \"/nonexistent/annotations\"")
    out.append("[metrics]")
    out += [f"{k} = {_toml(v)}" for k, v in {"listen": "127.0.0.1:0", **(metrics or {})}.items()]
    if labels:
        out.append("[labels]")
        out += [f"{k} = {_toml(v)}" for k, v in labels.items()]
    for path, stream in sources:
        out.append(f"[[sources]]\npath = {_toml(str(path))}\nstream = {_toml(stream)}")
    return "\n".join(out) + "\n"


def _toml(v: object) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) else repr(v)  # json: true/false, as TOML


def open_fifo_writer(path: Path) -> int:
    """Open a FIFO for writing once the shipper has opened it for reading (blocking writes)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.set_blocking(fd, True)
    return fd
