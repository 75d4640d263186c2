"""The disk spool: sealed batches written ahead of their first push.

With `spool_dir` set, every sealed batch is written here (atomically, fsynced)
before it is queued, and removed once Loki acknowledged it (or it was given
up). So a batch survives a Loki outage longer than the memory buffer holds,
and a shipper restart (even after SIGKILL): the files are replayed in order
with the timestamps their lines got when first read, which Loki deduplicates
if it had already stored them. Each file also records the file positions its
lines end at (shipper.cursor), so file sources resume after what is spooled.

File format, one batch per file `<seq>.batch`: one JSON header line
(`{"lines": N, "line_bytes": N, "marks": [[path, dev, ino, offset], ...]}`:
the positions, under the key every version has written, so any version's
files replay), then the compressed push body exactly as sent.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from shipper.checkpoint import write_atomically
from shipper.cursor import Position, Positions

SUFFIX = ".batch"
# After a write fails (disk full, I/O error, read-only filesystem) the spool
# counts as full, so the memory cap (buffer_max_bytes) applies again, until a
# batch is removed from it (room came back) or this many seconds passed: one
# failed try per interval, never one per batch.
RETRY_AFTER = 10.0


@dataclass
class SpoolEntry:
    """One spooled batch."""

    seq: int
    path: str
    lines: int
    line_bytes: int
    positions: Positions  # file positions its lines end at (shipper.cursor)
    file_bytes: int


class SpoolError(Exception):
    """The spool directory cannot be used."""


class Spool:
    """Batches on disk, oldest first; `used` bytes are counted against `max_bytes`."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.used = 0
        self.failed_at: float | None = None  # monotonic time of the last failed write
        self.corrupt: list[str] = []  # files set aside at load (named in the log)
        try:
            os.makedirs(directory, exist_ok=True)
            names = os.listdir(directory)
        except OSError as e:
            raise SpoolError(f"spool_dir {directory}: {e.strerror or e}") from None
        self._next_seq = 1
        self._names = names

    def load(self) -> list[SpoolEntry]:
        """Batches left by an earlier run, oldest first; unreadable ones are set aside."""
        entries = []
        for name in sorted(self._names):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                os.unlink(path)  # a write that never completed: its batch was not queued
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                entry = _read_header(path)
            except (OSError, ValueError, KeyError, TypeError):
                os.rename(path, path + ".corrupt")
                self.corrupt.append(path)
                continue
            entries.append(entry)
            self.used += entry.file_bytes
            self._next_seq = max(self._next_seq, entry.seq + 1)
        self._names = []
        return entries

    def has_room(self, now: float | None = None) -> bool:
        """True when the next batch may be written here (under max_bytes, no write error
        in the RETRY_AFTER seconds before monotonic `now`, the clock's if not given)."""
        if self.used >= self.max_bytes:
            return False
        if self.failed_at is not None:
            if (time.monotonic() if now is None else now) - self.failed_at < RETRY_AFTER:
                return False
            self.failed_at = None
        return True

    def _write(self, path: str, data: bytes) -> None:
        """write_atomically; on failure no partial file is left and the spool counts as full."""
        try:
            write_atomically(path, data)
        except OSError:
            self.failed_at = time.monotonic()
            try:
                os.unlink(f"{path}.tmp")
            except OSError:
                pass  # never created, or the filesystem refuses even that
            raise

    def write(self, lines: int, line_bytes: int, positions: Positions, body: bytes) -> SpoolEntry:
        """Write one batch durably; returns its entry."""
        seq = self._next_seq
        self._next_seq += 1
        header = _header(lines, line_bytes, positions)
        path = os.path.join(self.directory, f"{seq:012d}{SUFFIX}")
        self._write(path, header + body)
        size = len(header) + len(body)
        self.used += size
        return SpoolEntry(seq, path, lines, line_bytes, dict(positions), size)

    def replace(self, entry: SpoolEntry, lines: int, line_bytes: int, body: bytes) -> SpoolEntry:
        """Rewrite a batch in place (same file, same turn) with fewer lines: Loki stored the rest.

        A restart then replays only what Loki has not stored. Atomic: a crash
        leaves the old file or the new one, never half of either.
        """
        header = _header(lines, line_bytes, entry.positions)
        self._write(entry.path, header + body)
        size = len(header) + len(body)
        self.used += size - entry.file_bytes
        return SpoolEntry(entry.seq, entry.path, lines, line_bytes, dict(entry.positions), size)

    def read_body(self, entry: SpoolEntry) -> bytes:
        """The compressed push body of a spooled batch."""
        with open(entry.path, "rb") as f:
            data = f.read()
        return data[data.index(b"\n") + 1:]

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a batch (acknowledged or given up)."""
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        self.used -= entry.file_bytes
        self.failed_at = None  # room came back: the next batch may try again


def _header(lines: int, line_bytes: int, positions: Positions) -> bytes:
    """A batch file's first line (read back by _read_header)."""
    return json.dumps({
        "lines": lines, "line_bytes": line_bytes,
        "marks": [[p, m.dev, m.ino, m.offset] for p, m in positions.items()],
    }, separators=(",", ":")).encode() + b"\n"


def _read_header(path: str) -> SpoolEntry:
    name = os.path.basename(path)
    seq = int(name[: -len(SUFFIX)])
    with open(path, "rb") as f:
        header = json.loads(f.readline())
        size = os.fstat(f.fileno()).st_size
    positions = {str(p): Position(int(d), int(i), int(o)) for p, d, i, o in header["marks"]}
    return SpoolEntry(seq, path, int(header["lines"]), int(header["line_bytes"]), positions, size)
