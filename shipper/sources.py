"""Sources: each path is read according to what it is.

- pipe, FIFO, character device: read without blocking until end of input;
- regular file: tailed from the start, following appends, truncation and
  rotation (rename, then a new file at the path);
- a path that does not exist yet: waited for.

A source never blocks and never wakes the process on its own: the pipeline
asks it to `read()` on its tick, and for pipes registers a one-shot reader
callback only while idle (see shipper.pipeline).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shipper import events
from shipper.batch import Stream
from shipper.cursor import FileCursor, Position
from shipper.framing import LineSplitter

if TYPE_CHECKING:  # imported at run time only by sources that use it
    from shipper.process import Processor

# One os.read(): large enough to take a full 64 KiB pipe in one call, small
# enough that a 1 GB file is never held whole (FACTS §6: a copy per chunk).
CHUNK = 64 * 1024
# Pipe buffer we ask for (F_SETPIPE_SZ): the task can write this much while
# the shipper sleeps between ticks before its write() blocks. 1 MiB is Linux's
# default /proc/sys/fs/pipe-max-size, so an unprivileged process may ask it.
PIPE_BUFFER = 1024 * 1024
# At most this much is turned into line objects per read() call: the caller
# encodes them before asking for more, so a burst never holds a few MiB of
# small per-line objects at once (memory budget), whatever the buffer allows.
MAX_READ_PER_CALL = 256 * 1024
# What a line costs in memory beyond its bytes while it is read and encoded
# (a bytes object's header, its list slot, the encoder's per-entry part):
# counted against that limit and the caller's budget, so 1,000,000 one-byte
# lines stay as bounded as a few long ones (measured: 72 bytes of transient
# allocations per line in Accumulator.add; one-byte lines read 256 KiB at a
# time peaked at 34 MiB of VmHWM, tests/test_memory_bounds.py).
LINE_COST = 64

# A regular file read to its end and idle this long is closed ("parked"): a
# task-log directory of 1,000 finished attempts must not hold 1,000
# descriptors. A parked file costs one stat() per poll (less than an open one:
# fstat and stat); when it grows under the same identity (st_dev, st_ino) it is
# reopened and read on from where it was left. The price: a parked file that
# is renamed away is not followed (what was appended to it after it was
# parked and before the rename, within one poll, is not read).
IDLE_CLOSE_SECONDS = 10.0
# After running out of descriptors (EMFILE/ENFILE), files at their end are
# parked at once, for this long, so the rest of the sources (and the push
# connection) get descriptors.
SHORTAGE_SECONDS = 10.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class _Descriptors:
    """Process-wide: failed opens for want of descriptors, and whether that is recent."""

    shortages = 0  # opens that failed with EMFILE/ENFILE (each retried later)
    short_until = 0.0  # monotonic time until which idle files are parked at once

    @classmethod
    def ran_out(cls, path: str, error: OSError) -> None:
        now = time.monotonic()
        # One warning per episode, not one per retry; every failure counted.
        events.descriptor_shortage(path, error.strerror or str(error), now >= cls.short_until)
        cls.shortages += 1
        cls.short_until = now + SHORTAGE_SECONDS

    @classmethod
    def short(cls, now: float) -> bool:
        return now < cls.short_until


def descriptor_shortages() -> int:
    """How many opens failed for want of descriptors (EMFILE/ENFILE) in this process."""
    return _Descriptors.shortages


_PROC_FD = re.compile(r"/proc/(self|thread-self|\d+)(?:/task/\d+)?/fd/(\d+)\Z")


class SourceError(Exception):
    """A source path that can never work; the message says why."""


def check_path(path: str) -> None:
    """Refuse source paths that would read the shipper itself or nothing (FACTS §1).

    Follows symlinks hop by hop, so /dev/stdout (-> /proc/self/fd/1) is caught.
    """
    seen = 0
    current = path
    while seen < 16:
        m = _PROC_FD.match(current)
        if m:
            pid, fd = m.group(1), int(m.group(2))
            if (pid in ("self", "thread-self") or int(pid) == os.getpid()) and fd != 0:
                raise SourceError(
                    f"source {path} is the shipper's own fd {fd}: in Kubernetes each container has its "
                    "own PID namespace, so /proc/1 inside the sidecar is the sidecar itself, not the task. "
                    "Read the task's output from a file on a shared volume (docs/deployment.md) or run "
                    "the task under the shipper.")
            if pid not in ("self", "thread-self") and _comm(pid) == "pause":
                raise SourceError(
                    f"source {path} belongs to the pod's /pause process (shareProcessNamespace makes it "
                    "PID 1), not to the task. See docs/deployment.md for a capture path that works.")
        try:
            target = os.readlink(current)
        except OSError:
            break  # not a symlink (or does not exist yet): resolution ends here
        if target.startswith(("pipe:", "socket:", "anon_inode:")):
            break
        current = os.path.join(os.path.dirname(current), target)
        seen += 1
    if os.path.realpath(current) == "/dev/null":
        raise SourceError(
            f"source {path} resolves to /dev/null: nothing will ever be read from it. In Kubernetes "
            "/proc/1 inside a sidecar is not the task (FACTS §1, docs/deployment.md).")


def _link_target(path: str) -> str:
    """Follow symlinks by hand; /proc fd links end in pseudo-targets like `pipe:[123]`."""
    for _ in range(16):
        try:
            target = os.readlink(path)
        except OSError:
            return path
        if target.startswith(("pipe:", "socket:", "anon_inode:")):
            return target
        path = os.path.join(os.path.dirname(path), target)
    return path


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# A task-log directory is rescanned at most this often: one directory walk per
# interval however many files it holds, never one per file or per line.
GLOB_RESCAN_INTERVAL = 2.0


def is_glob(path: str) -> bool:
    """True for a [[sources]] path that names many files (`*`, `?`, `[...]`)."""
    return any(c in path for c in "*?[")


def expand_pattern(pattern: str, env: dict[str, str] | os._Environ[str]) -> str:
    """`{AIRFLOW_HOME}` in a pattern: the env var, else Airflow's default ~/airflow."""
    home = env.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return pattern.replace("{AIRFLOW_HOME}", home.rstrip("/"))


class GlobWatcher:
    """A source pattern (e.g. Airflow's task-log files): each matching file becomes a file source."""

    def __init__(self, pattern: str, make_source: Callable[[str], Source]) -> None:
        self.pattern = pattern
        self._make_source = make_source
        self._known: set[str] = set()
        self._next_scan = 0.0

    def scan(self, now: float) -> list[Source]:
        """Sources for files that appeared since the last scan (at most one scan per interval)."""
        if now < self._next_scan:
            return []
        self._next_scan = now + GLOB_RESCAN_INTERVAL
        import glob  # only configs with a pattern pay for it

        new = []
        for path in sorted(glob.glob(self.pattern, recursive=True)):
            if path not in self._known and os.path.isfile(path):
                self._known.add(path)
                new.append(self._make_source(path))
        return new


class Source:
    """One configured path and its read state."""

    def __init__(self, path: str, stream: Stream, max_line_bytes: int) -> None:
        self.path = path
        self.stream = stream
        self.splitter = LineSplitter(max_line_bytes)
        self.kind = "waiting"  # waiting -> pipe | file; pipe -> eof
        self.fd: int | None = None
        self.anonymous = False  # an anonymous pipe (/proc/<pid>/fd/N -> pipe:[...])
        self.had_writer = False  # a FIFO's empty read is EOF only once a writer was seen
        self.pipe_size = 0
        self.parked = False  # a regular file at its end, closed while idle (fd None)
        self._active_at = 0.0  # monotonic time of the last read that got data (or the open)
        self.read_rate = 0.0  # bytes/s over the last read interval (paces pipe reads)
        self._last_read_at = 0.0
        # exec mode: every chunk read is first copied here (our own stdout/stderr).
        self.passthrough: Callable[[bytes], None] | None = None
        # Regular files: where the reads are, and the position the lines of the
        # latest read() end at (shipper.cursor), which a checkpoint may record
        # once those lines are acknowledged.
        self.cursor = FileCursor()
        # format/multiline/level processing (shipper.process); None = lines as read.
        self.processor: Processor | None = None

    @classmethod
    def from_pipe(cls, fd: int, name: str, stream: Stream, max_line_bytes: int,
                  passthrough: Callable[[bytes], None] | None = None) -> Source:
        """A pipe the shipper already holds (exec mode: the command's output)."""
        source = cls(name, stream, max_line_bytes)
        os.set_blocking(fd, False)
        source.fd = fd
        source.kind = "pipe"
        source.anonymous = True  # an empty read means every writer is gone
        source.pipe_size = _grow_pipe(fd)
        source.passthrough = passthrough
        events.source_opened(name, "command pipe")
        return source

    @property
    def finished(self) -> bool:
        """True once a pipe reached end of input (files never finish: they are followed)."""
        return self.kind == "eof"

    def try_open(self) -> bool:
        """Open the path if it exists; False if it does not exist yet."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise SourceError(f"source {self.path}: cannot stat: {e.strerror}") from None
        mode = st.st_mode
        try:
            return self._open_as(st, mode)
        except OSError as e:
            if e.errno not in _OUT_OF_DESCRIPTORS:
                raise
            _Descriptors.ran_out(self.path, e)
            return False  # still waiting: the next read tries again

    def _open_as(self, st: os.stat_result, mode: int) -> bool:
        if stat.S_ISREG(mode):
            self.fd = self._open(os.O_RDONLY)
            self._active_at = time.monotonic()
            fst = os.fstat(self.fd)
            self.kind = "file"
            resume, fits = self.cursor.open(fst.st_dev, fst.st_ino, fst.st_size)
            if resume is not None:
                if fits:
                    self.cursor.seek(os.lseek(self.fd, resume.offset, os.SEEK_SET))
                    events.log("info", "source resumed after what was already shipped", event="source_resumed",
                               path=self.path, offset=resume.offset)
                else:
                    events.log("warn", "source is shorter than its checkpoint: reading it from the start",
                               event="source_shorter_than_checkpoint", path=self.path, offset=resume.offset, size=fst.st_size)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            self.fd = self._open(os.O_RDONLY | os.O_NONBLOCK)
            self.anonymous = _link_target(self.path).startswith("pipe:")
            self.kind = "pipe"
            if stat.S_ISFIFO(mode):
                self.pipe_size = _grow_pipe(self.fd)
        elif stat.S_ISDIR(mode):
            raise SourceError(f"source {self.path} is a directory; give a file, FIFO or pipe path")
        else:
            raise SourceError(f"source {self.path} is a socket or other special file the shipper cannot read")
        events.source_opened(self.path, self.kind if not self.anonymous else "anonymous pipe")
        return True

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in _OUT_OF_DESCRIPTORS:
                raise  # not the source's fault: try_open retries it
            if e.errno == errno.ENXIO:
                raise SourceError(f"source {self.path} is a socket; the shipper cannot read sockets") from None
            raise SourceError(f"source {self.path}: cannot open: {e.strerror}") from None

    def read(self, budget: int, readiness: bool = False) -> tuple[list[bytes], int, bool]:
        """Read what is available now, at most about `budget` bytes.

        Returns (complete lines, bytes read, more): `more` is True when the
        budget stopped the read before the end of what is available. Each
        line counts LINE_COST bytes against the budget besides its own.
        `readiness` says the event loop reported the pipe readable (so an empty
        read means a writer came and went: end of input).
        """
        lines: list[bytes] = []
        if self.fd is None:
            if not self.parked:
                return [], 0, False
            reopened = self._unpark_at_end(lines)
            if not reopened or lines or self.fd is None:
                return lines, 0, reopened
        fd = self.fd
        total = 0
        budget = min(budget, MAX_READ_PER_CALL)
        while total + LINE_COST * len(lines) < budget:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return lines, total, False
            if not data:
                return self._at_end(lines, total, readiness)
            if self.passthrough is not None:
                self.passthrough(data)
            self.had_writer = True
            total += len(data)
            lines += self.splitter.feed(data)
            if self.kind == "file":
                # What the splitter still holds is raw bytes, or cleaned ones at
                # least as long (U+FFFD is 3 bytes): never past the truth.
                self.cursor.advance(data, self.splitter.pending_bytes)
                # One chunk per call: the pipeline keeps a chunk's lines in
                # one batch, so the position is exact for that batch.
                return lines, total, True
        return lines, total, True

    def _at_end(self, lines: list[bytes], total: int, readiness: bool) -> tuple[list[bytes], int, bool]:
        """An empty read: the end of what is there now (read's result)."""
        if self.kind == "file":
            old_end = self.cursor.end()
            if self._after_file_end(lines):
                # Truncated or rotated: these lines end the old content.
                self.cursor.position = old_end
                return lines, total, True
            return lines, total, False
        if self.had_writer or self.anonymous or readiness:
            lines += self.splitter.flush()
            self._close()
            self.kind = "eof"
            events.source_eof(self.path)
        return lines, total, False

    def _unpark_at_end(self, lines: list[bytes]) -> bool:
        """`_unpark`; lines it appends end the old content (truncated or replaced while parked)."""
        old_end = self.cursor.end()
        reopened = self._unpark(lines)
        if lines:
            self.cursor.position = old_end
        return reopened

    def _after_file_end(self, out: list[bytes]) -> bool:
        """At the end of a regular file: notice truncation and rotation.

        Appends the last partial line to `out` when the old content ends, and
        returns True when there is new content to read from the start.
        """
        assert self.fd is not None
        if os.fstat(self.fd).st_size < self.cursor.offset:  # where our reads have got to
            # Truncated (copytruncate): what was not newline-terminated is shipped,
            # and reading starts again at the new beginning.
            out += self.splitter.flush()
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.cursor.rewind()
            events.source_rotated(self.path, "truncated")
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed away, no new file yet: keep following the old one
        if (st.st_dev, st.st_ino) != self.cursor.ident:
            # Rotated: the old file was read to its end above; ship its last
            # partial line and switch to the new file from its start.
            out += self.splitter.flush()
            self._close()
            self.kind = "waiting"
            events.source_rotated(self.path, "replaced")
            return self.try_open()
        return False

    def _unpark(self, out: list[bytes]) -> bool:
        """A parked file: reopen it if it grew (same identity), was truncated or
        replaced; True once there is an fd to read from. Appends to `out` the
        last partial line of content that ended meanwhile."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # renamed away or deleted, no new file yet: nothing to read
        if (st.st_dev, st.st_ino) != self.cursor.ident:
            out += self.splitter.flush()
            self.parked = False
            self.kind = "waiting"
            events.source_rotated(self.path, "replaced")
            return self.try_open()
        if st.st_size == self.cursor.offset:
            return False  # still idle: stays closed
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in _OUT_OF_DESCRIPTORS:
                _Descriptors.ran_out(self.path, e)
                return False
            if e.errno == errno.ENOENT:
                return False
            raise SourceError(f"source {self.path}: cannot reopen: {e.strerror}") from None
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != self.cursor.ident:
            os.close(fd)  # replaced between the stat and the open: seen as such next time
            return False
        self.fd, self.parked = fd, False
        self._active_at = time.monotonic()
        if fst.st_size < self.cursor.offset:
            out += self.splitter.flush()
            self.cursor.rewind()
            events.source_rotated(self.path, "truncated")
        else:
            os.lseek(fd, self.cursor.offset, os.SEEK_SET)
        return True

    def note_read(self, nbytes: int, now: float) -> None:
        """Record a read of `nbytes` at monotonic `now`, for the read rate.

        A regular file whose read found nothing new, idle IDLE_CLOSE_SECONDS
        (at once while descriptors are short), is parked: closed until it grows.
        """
        elapsed = now - self._last_read_at
        self._last_read_at = now
        self.read_rate = nbytes / elapsed if elapsed > 0 else 0.0
        if nbytes:
            self._active_at = now
        elif (self.kind == "file" and self.fd is not None
              and (now - self._active_at >= IDLE_CLOSE_SECONDS or _Descriptors.short(now))):
            self._close()
            self.parked = True

    def flush(self) -> list[bytes]:
        """The last unterminated line (shutdown)."""
        if self.kind == "file":
            self.cursor.position = self.cursor.end()
        return self.splitter.flush()

    def close(self) -> None:
        """Release the file descriptor."""
        self._close()

    def _close(self) -> None:
        self.parked = False
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _grow_pipe(fd: int) -> int:
    """Ask for a larger pipe buffer; returns the size in effect."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
    except OSError:
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 65536
