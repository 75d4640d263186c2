"""The spool's filesystem failing under the real shipper: full (ENOSPC) or read-only (EROFS).

The spool is a safety net: when it cannot be written the batch stays in
memory, the spool counts as full (so `buffer_max_bytes` bounds memory again)
and no partial `*.tmp` file is left on the failing disk. A small tmpfs is
mounted for the spool (root only; skipped, saying so, elsewhere).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import launch, make_config
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess

# README "Footprint": the shipper's peak RSS with the default 4 MiB buffer
# stays under this whatever the input and whatever the spool's disk does.
MEMORY_BOUND_KIB = 32 * 1024
LINE = b"x" * 99 + b"\n"
LINES = 400_000  # 40 MB: before the fix all of it stayed in memory (the spool "had room")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted at the end."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def feed_fifo(fifo: Path, chunk: bytes, repeat: int) -> None:
    """Write `chunk` `repeat` times into the FIFO (blocking writes, as a task would) and close it."""
    def write() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        try:
            for _ in range(repeat):
                os.write(fd, chunk)
        finally:
            os.close(fd)
    await asyncio.get_running_loop().run_in_executor(None, write)


@pytest.mark.parametrize("failure", ["full", "read-only"])
async def test_a_failing_spool_counts_as_full_leaves_no_partial_files_and_memory_stays_bounded(
        small_fs: Path, tmp_path: Path, receiver: LokiReceiver, procs: list[ShipperProcess],
        failure: str) -> None:
    spool_dir = small_fs / "spool"
    spool_dir.mkdir()
    fifo = tmp_path / "task.fifo"
    os.mkfifo(fifo)
    receiver.add_actions(*[Action.status(503, "down\n")] * 1_000_000)  # Loki down all along
    config = make_config(receiver.url, [(fifo, "stdout")], spool_dir=str(spool_dir),
                         spool_max_bytes=64 * 1024 * 1024, shutdown_timeout=1.0)
    proc = await launch(procs, config)
    await proc.wait_for_event("source_opened", path=str(fifo))
    if failure == "read-only":  # as ext4 remounts itself on an error (errors=remount-ro)
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    await feed_fifo(fifo, LINE * 1000, LINES // 1000)
    await proc.wait_for_event("source_eof", path=str(fifo))
    peak = vm_hwm_kib(proc.proc.pid)
    proc.signal()
    code = await proc.wait()
    summary = proc.summary()
    # Every line read is accounted for: dropped for room (the spool was full), or spooled.
    assert summary["lines_read"] == LINES
    assert summary["lines_sent"] == 0
    assert summary["dropped"]["buffer_full"] > 0
    assert summary["dropped"]["buffer_full"] + summary["dropped"]["shutdown_deadline"] \
        + summary["lines_spooled"] == LINES
    assert code in (1, 4)
    errors = proc.events("spool_write_failed")
    assert errors, "the spool never failed: the test did not test anything"
    assert not [n for n in os.listdir(spool_dir) if n.endswith(".tmp")]
    print(f"VmHWM {peak} KiB")
    assert peak < MEMORY_BOUND_KIB, f"VmHWM {peak} KiB"
