"""Memory bounds of the real shipper under hostile input shapes (README "Footprint").

Each test holds the process to MEMORY_BOUND_KIB of VmHWM, read from /proc
while the shipper is still running, after it has read the whole input.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import launch, make_config
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess
from tests.test_spool_faults import MEMORY_BOUND_KIB, feed_fifo, vm_hwm_kib


@pytest.mark.parametrize("loki", ["up", "down"])
async def test_a_million_one_byte_lines_stay_as_bounded_as_long_ones(
        tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess], loki: str) -> None:
    if loki == "down":
        receiver.add_actions(*[Action.status(503, "down\n")] * 1_000_000)
    fifo = tmp_path / "task.fifo"
    os.mkfifo(fifo)
    proc = await launch(procs, make_config(receiver.url, [(fifo, "stdout")], shutdown_timeout=1.0))
    await proc.wait_for_event("source_opened", path=str(fifo))
    await feed_fifo(fifo, b"x\n" * 10_000, 100)  # 1,000,000 lines of one byte
    await proc.wait_for_event("source_eof", path=str(fifo))
    peak = vm_hwm_kib(proc.proc.pid)
    proc.signal()
    await proc.wait()
    summary = proc.summary()
    assert summary["lines_read"] == 1_000_000
    assert summary["lines_sent"] + sum(summary["dropped"].values()) == 1_000_000
    print(f"VmHWM {peak} KiB")
    assert peak < MEMORY_BOUND_KIB, f"VmHWM {peak} KiB"
