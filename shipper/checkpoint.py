"""Checkpoints: acknowledged file positions in, a durable file out (and back at start).

Only the format and the atomic write live here: what a position is and when
it may be recorded are shipper.cursor's rules.

A file is identified by (device, inode), not by its path or a fingerprint of
its first line: a file without a newline yet must still be read, and a rotated
file keeps its identity under its new name. The checkpoint advances only
after a 2xx, so a restart after SIGKILL re-reads at most what was in flight.

Written as JSON, atomically: temporary file, fsync, rename, fsync of the
directory. A missing file is an empty checkpoint; a corrupt one is refused
loudly (ConfigError at start) rather than silently re-shipping everything.
"""

from __future__ import annotations

import json
import os

from shipper.cursor import Position, Positions

__all__ = ["VERSION", "CheckpointError", "Position", "load", "save", "write_atomically", "fsync_dir"]

VERSION = 1


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used."""


def load(path: str) -> Positions:
    """Read the checkpoint: source path -> acknowledged position. Missing file: empty."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot read it: {e}") from None
    try:
        if raw["version"] != VERSION:
            raise CheckpointError(f"checkpoint {path}: version {raw['version']!r}, expected {VERSION}")
        return {entry["path"]: Position(int(entry["dev"]), int(entry["ino"]), int(entry["offset"]))
                for entry in raw["files"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: malformed ({type(e).__name__}: {e})") from None


def save(path: str, positions: Positions) -> None:
    """Replace the checkpoint atomically (tmp + fsync + rename + directory fsync)."""
    data = json.dumps({"version": VERSION, "files": [
        {"path": p, "dev": pos.dev, "ino": pos.ino, "offset": pos.offset}
        for p, pos in sorted(positions.items())]}, separators=(",", ":")).encode()
    write_atomically(path, data)


def write_atomically(path: str, data: bytes) -> None:
    """Write `data` at `path` so that a crash leaves the old or the new content, never a mix."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
