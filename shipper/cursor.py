"""File cursors: file positions in, the position safe to checkpoint out. No IO.

A regular file's progress has one name, its *position* (`Position`: device,
inode, offset), and one holder per source, its `FileCursor`. The rules:

1. read: the cursor follows the reads (`advance`); the lines of a read end
   at the offset just after its last newline, or further when the splitter
   has already shipped pieces of a line longer than max_line_bytes (what the
   splitter still holds is never past the truth). That is `position`.
2. hold: a processed source's position waits (`hold`) until its processor
   holds nothing back (`release`): an open multiline entry or a CRI partial
   line would otherwise be skipped by a restart that resumes after it.
3. ride: the position goes with the last of its lines into the batch
   (batch.Batch.positions), the push (buffer.Sealed.positions) and the spool
   file (spool.SpoolEntry.positions), and is acknowledged with the push
   (buffer.Buffer): only then may the checkpoint record it.
4. resume: a file first opened under the identity of its resume position
   starts there, unless it is now shorter (then from its start); the resume
   positions are the checkpoint's, moved on by what the spool holds
   (`resume_positions`): spooled lines were read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """An offset in one file identity (st_dev, st_ino)."""

    dev: int
    ino: int
    offset: int


# Per source path: its position (what a batch carries, what a checkpoint records).
Positions = dict[str, Position]


class FileCursor:
    """Where one file source is: read offset, line end, the position its lines end at."""

    __slots__ = ("ident", "offset", "line_end", "position", "resume", "held")

    def __init__(self) -> None:
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file being read
        self.offset = 0  # where the reads have got to
        self.line_end = 0  # just after the last newline read
        # Where the lines of the latest read end (rule 1); None for a pipe.
        self.position: Position | None = None
        self.resume: Position | None = None  # where to start the file first opened (rule 4)
        self.held: Position | None = None  # a position waiting for the processor (rule 2)

    def open(self, dev: int, ino: int, size: int) -> tuple[Position | None, bool]:
        """A file of `size` bytes was opened at the path: the cursor is at its start.

        Returns the resume position if it is this file's (taken once: a later
        file at the path is new), and whether it fits (then `seek` to it).
        """
        self.ident = (dev, ino)
        self.offset = self.line_end = 0
        resume, self.resume = self.resume, None
        if resume is None or (resume.dev, resume.ino) != self.ident:
            return None, False
        return resume, resume.offset <= size

    def seek(self, offset: int) -> None:
        """Reading goes on from `offset`, a line end (resume)."""
        self.offset = self.line_end = offset

    def rewind(self) -> None:
        """The file was truncated: reading starts again at its beginning."""
        self.offset = self.line_end = 0

    def advance(self, data: bytes, held: int) -> Position | None:
        """`data` was read at the offset, and the splitter holds `held` bytes: the new `position`."""
        newline = data.rfind(b"\n")
        if newline >= 0:
            self.line_end = self.offset + newline + 1
        self.offset += len(data)
        self.position = self.at(max(self.line_end, self.offset - held))
        return self.position

    def end(self) -> Position | None:
        """The position of everything read so far (the content's end: EOF flush, rotation)."""
        return self.at(self.offset)

    def at(self, offset: int) -> Position | None:
        """`offset` in the open file's identity; None before any file was opened."""
        if self.ident is None:
            return None
        return Position(self.ident[0], self.ident[1], offset)

    def hold(self, position: Position | None) -> None:
        """Keep `position` until the processor has handed on every line before it (rule 2)."""
        self.held = position

    def release(self, processor_pending: int) -> Position | None:
        """The held position once the processor holds nothing back; None while it does."""
        if processor_pending:
            return None
        position, self.held = self.held, None
        return position


def resume_positions(acknowledged: Positions, spooled: Iterable[Positions]) -> Positions:
    """Where each file starts in a new run: acknowledged, then moved on by spooled batches in order."""
    resume = dict(acknowledged)
    for positions in spooled:
        resume.update(positions)
    return resume
