"""shipper.imports: modules asyncio imports but the shipper does not use stay unloaded, and load on first use."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import imports
from tests.conftest import make_config
from tests.loki_receiver import LokiReceiver

DEFERRED = ("subprocess", "logging", "concurrent.futures")


def fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in an interpreter of its own (sys.modules starts empty), from the repository root."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parent.parent)


@pytest.mark.parametrize("name", DEFERRED)
def test_each_eager_value_is_the_real_modules(name: str) -> None:
    real = importlib.import_module(name)
    for attr, value in imports._EAGER[name].items():
        assert getattr(real, attr) == value, f"{name}.{attr}"


def test_asyncio_runs_without_them_and_each_loads_on_first_use() -> None:
    done = fresh_python("""
import sys
from shipper import imports
imports.defer_unused()
import asyncio
from shipper.loki import resolve

async def main():
    # What the shipper does: timers, events, a TCP server and client, a name lookup.
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await event.wait()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    server.close()
    assert ("127.0.0.1" in [a for _, a in await resolve("localhost", port)]), "localhost resolves"
    assert await resolve("10.1.2.3", 80) == [(2, "10.1.2.3")]
asyncio.run(main())
print("after a run:", sorted(n for n in %r if imports.deferred(n)))
# First use loads the real module, for code that bound the stand-in too.
import subprocess, logging, concurrent.futures
print("PIPE", subprocess.PIPE, subprocess.run(["true"]).returncode)
from asyncio.log import logger
logger.debug("not shown: logging's default level is WARNING")
print("enabled", logger.isEnabledFor(10), logger.isEnabledFor(30), imports.deferred("logging"))
logger.warning("through the stand-in logger")
with concurrent.futures.ThreadPoolExecutor(1) as pool:
    print("pool", pool.submit(lambda: 6 * 7).result())
print("after use:", sorted(n for n in %r if imports.deferred(n)))
print("real:", type(sys.modules["logging"]).__name__, sys.modules["subprocess"].Popen.__name__)
""" % (DEFERRED, DEFERRED))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "after a run: ['concurrent.futures', 'logging', 'subprocess']",
        "PIPE -1 0",
        "enabled False True True",
        "pool 42",
        "after use: []",
        "real: module Popen",
    ]
    assert done.stderr == "through the stand-in logger\n"


def test_a_failed_lookup_is_an_oserror() -> None:
    done = fresh_python("""
import asyncio, socket
from shipper.loki import resolve
async def main():
    try:
        await resolve("no-such-host.invalid", 80)
    except OSError as e:
        print(type(e).__name__)
asyncio.run(main())
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "gaierror\n"


async def test_the_real_shipper_never_loads_them(tmp_path: Path, receiver: LokiReceiver) -> None:
    """A run through a host name (the resolver's thread, not asyncio's executor), pushes, /metrics
    and SIGTERM: the interpreter's import log names none of the deferred modules, nor ssl."""
    log = tmp_path / "task.log"
    lines = [f"line {i}" for i in range(200)]
    log.write_text("".join(f"{line}\n" for line in lines))
    url = receiver.url.replace("127.0.0.1", "localhost")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CTX_", "SHIPPER_"))}
    env["SHIPPER_CONFIG"] = make_config(url, [(log, "stdout")])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-X", "importtime", "-m", "shipper", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await receiver.wait_for_entries(len(lines))
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert receiver.lines(stream="stdout") == lines
    imported = {line.split("|")[-1].strip() for line in err.decode().splitlines() if line.startswith("import time:")}
    assert "shipper.pipeline" in imported  # the import log is the shipper's
    assert imported & {"subprocess", "logging", "concurrent.futures", "concurrent.futures.thread"} == set()


def test_stand_ins_have_the_real_spec_and_submodules_import() -> None:
    done = fresh_python("""
from shipper import imports
imports.defer_unused()
import importlib.util
import asyncio
print(importlib.util.find_spec("logging").name, importlib.util.find_spec("concurrent.futures").name)
import concurrent.futures.thread
print(concurrent.futures.thread.ThreadPoolExecutor.__name__, imports.deferred("concurrent.futures"))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["logging concurrent.futures", "ThreadPoolExecutor False"]
