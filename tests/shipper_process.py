"""Run the real `shipper` process in tests and follow its JSON diagnostics.

Tests await diagnostic events by their stable name (e.g. `source_opened`,
docs/diagnostics.md) instead of sleeping, and never by their English text:
the process's stderr is parsed line by line and every record is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

Record = dict[str, Any]


class ShipperProcess:
    """A running `python -m shipper` with its stderr records and stdout lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[Record] = []
        self.stdout_lines: list[str] = []
        self.stderr_text: list[str] = []
        self._changed = asyncio.Condition()
        self._closed = 0  # output pipes at EOF (2 means the process is gone)
        assert proc.stderr is not None and proc.stdout is not None
        self._tasks = [
            asyncio.create_task(self._follow(proc.stderr, self._on_stderr)),
            asyncio.create_task(self._follow(proc.stdout, self.stdout_lines.append)),
        ]

    @classmethod
    async def start(cls, config: str, *args: str, env: Mapping[str, str] | None = None,
                    stdin: int | None = asyncio.subprocess.DEVNULL) -> ShipperProcess:
        """Start the shipper with `config` as SHIPPER_CONFIG (plus `env`)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
        full_env["SHIPPER_CONFIG"] = config
        full_env.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipper", *args, env=full_env, stdin=stdin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _follow(self, stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                break
            sink(raw.decode("utf-8", "replace").rstrip("\n"))
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._closed += 1
            self._changed.notify_all()

    def _on_stderr(self, text: str) -> None:
        self.stderr_text.append(text)
        try:
            record = json.loads(text)
        except ValueError:
            raise AssertionError(f"shipper wrote a non-JSON diagnostic line: {text!r}") from None
        self.records.append(record)

    def events(self, name: str, **fields: Any) -> list[Record]:
        """All records of the event `name` whose fields have these values, in order."""
        return [r for r in self.records
                if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())]

    async def wait_for_event(self, name: str, count: int = 1, **fields: Any) -> Record:
        """Await the `count`-th record of the event `name` with these field values;
        fail if the process ends first."""
        async with self._changed:
            while len(self.events(name, **fields)) < count:
                if self._closed == 2:
                    raise AssertionError(f"shipper exited ({self.proc.returncode}) before event {name!r} "
                                         f"(x{count}, {fields}); stderr:\n" + "\n".join(self.stderr_text))
                await self._changed.wait()
        return self.events(name, **fields)[count - 1]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send a real signal to the process."""
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        """Wait for exit and for its output to be read; returns the exit code."""
        code = await self.proc.wait()
        await asyncio.gather(*self._tasks)
        return code

    def summary(self) -> Record:
        """The final "exit" record."""
        (record,) = self.events("exit")
        return record

    async def kill(self) -> None:
        """Clean up a process a failing test left running."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait()
