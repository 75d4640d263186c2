"""`shipper exec -- CMD [ARGS...]`: run the task as a child and be the only reader of its output.

The child's stdout and stderr are pipes that only the shipper reads (no
shared pipe, no stolen lines, FACTS §1). Every byte read is copied unchanged
to the shipper's own stdout/stderr (so `kubectl logs` shows what it would
have shown) and the lines are shipped. Signals are forwarded to the child;
when the child exits the shipper reads both pipes to their end, flushes, and
exits with the child's exit code (128+N when a signal N ended it).

Spawned with `os.posix_spawn` and watched with a pidfd: no `subprocess`
import, no child-watcher thread (memory budget).
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

# Signals a container runtime or a user sends that the task must see. SIGKILL
# and SIGSTOP cannot be caught; SIGCHLD is ours.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
# What shells answer for a command that cannot be run.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


class SpawnError(Exception):
    """The command could not be started; `code` is the shell-style exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Child:
    """A running task command and the read ends of its output pipes."""

    pid: int
    pidfd: int
    stdout: int  # read end of the child's stdout pipe
    stderr: int  # read end of the child's stderr pipe
    status: int | None = None  # exit code once reaped (128+N for a signal)

    def poll(self) -> int | None:
        """Reap the child if it exited; returns its exit code or None."""
        if self.status is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = exit_code(wait_status)
        return self.status

    def close(self) -> None:
        """Release the pidfd (after the event loop stopped watching it)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def send(self, sig: int) -> None:
        """Forward a signal; a child that already exited is not an error."""
        if self.status is None and self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass


def exit_code(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def which(name: str, path: str | None = None) -> str | None:
    """The first executable file `name` in PATH (`path`, else $PATH, else os.defpath), as a shell finds it.

    shutil.which without shutil: importing it loads zlib, bz2 and lzma (532 kB
    of RSS, measured) that exec mode never uses.
    """
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    if not search:
        return None  # PATH set but empty: nothing to search (as shutil.which)
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory, name)  # an empty entry is the current directory
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def spawn(argv: list[str]) -> Child:
    """Start `argv` with its stdout/stderr on fresh pipes; stdin is inherited."""
    path = argv[0] if "/" in argv[0] else which(argv[0])
    if path is None:
        raise SpawnError(f"exec: {argv[0]}: command not found", EXIT_NOT_FOUND)
    if not os.path.exists(path):
        raise SpawnError(f"exec: {path}: no such file", EXIT_NOT_FOUND)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise SpawnError(f"exec: {path}: not an executable file", EXIT_NOT_EXECUTABLE)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        # posix_spawn's dup2 clears O_CLOEXEC on fds 1 and 2 in the child only.
        # The child gets default signal dispositions (we install handlers later).
        pid = os.posix_spawn(path, argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ], setsigdef=FORWARDED)
    except OSError as e:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"exec: {path}: {e.strerror}", code) from None
    os.close(out_w)
    os.close(err_w)
    return Child(pid, os.pidfd_open(pid), out_r, err_r)


def copy_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (our stdout/stderr), blocking like the task would."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            os.set_blocking(fd, True)
        except BrokenPipeError:
            return  # nobody reads our output any more; shipping goes on
