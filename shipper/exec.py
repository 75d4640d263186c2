"""`shipper exec -- CMD [ARGS...]`: run the task as a child and be the only reader of its output.

The child's stdout and stderr are pipes that only the shipper reads (no
shared pipe, no stolen lines, FACTS §1). Every byte read is copied unchanged
to the shipper's own stdout/stderr (so `kubectl logs` shows what it would
have shown) and the lines are shipped. Signals are forwarded to the child;
when the child exits the shipper reads both pipes to their end, flushes, and
exits with the child's exit code (128+N when a signal N ended it).

Started with fork + exec (see `spawn`) and watched with a pidfd: no
`subprocess` import, no child-watcher thread (memory budget).
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from typing import NoReturn

# Signals a container runtime or a user sends that the task must see. SIGKILL
# and SIGSTOP cannot be caught; SIGCHLD is ours.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
# What shells answer for a command that cannot be run.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
# After the command exited, its descendants' output is still read for at most
# this long (as base's capture wrapper waits, k8s/pod-template-configmap.yaml).
DRAIN_SECONDS = 5.0
# prctl(2) option: the signal the child gets when its parent thread dies.
PR_SET_PDEATHSIG = 1


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
    """Start `argv` with its stdout/stderr on fresh pipes; stdin is inherited.

    The command starts as a shell would start it: every signal at its default
    disposition (Python ignores SIGPIPE and SIGXFSZ, and ignored signals stay
    ignored across exec: `yes | head -1` would never end) and an empty signal
    mask. It gets PR_SET_PDEATHSIG (SIGKILL): a shipper killed with SIGKILL
    does not leave the task running with nobody reading its output.

    fork + exec, because posix_spawn cannot call prctl. Between the two the
    child runs only the few calls of `_child`; signals are blocked across the
    fork so no Python handler (asyncio's wakeup fd) runs in the child.
    """
    path = argv[0] if "/" in argv[0] else which(argv[0])
    if path is None:
        raise SpawnError(f"exec: {argv[0]}: command not found", EXIT_NOT_FOUND)
    if not os.path.exists(path):
        raise SpawnError(f"exec: {path}: no such file", EXIT_NOT_FOUND)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise SpawnError(f"exec: {path}: not an executable file", EXIT_NOT_EXECUTABLE)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)  # the child writes errno here if exec fails
    parent = os.getpid()
    env = dict(os.environ)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, until exec
            _child(path, argv, env, out_w, err_w, report_w, parent)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for fd in (out_w, err_w, report_w):
            os.close(fd)
    report = _read_report(report_r)
    os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        code = EXIT_NOT_FOUND if report == errno.ENOENT else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"exec: {path}: {os.strerror(report)}", code)
    return Child(pid, os.pidfd_open(pid), out_r, err_r)


def _child(path: str, argv: list[str], env: dict[str, str], out_w: int, err_w: int,
           report_w: int, parent: int) -> NoReturn:  # pragma: no cover - runs in the child
    """Between fork and exec: reset signals, ask to die with the parent, exec."""
    err = errno.EINVAL
    try:
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass  # signals glibc reserves (32, 33)
        import ctypes  # here, not in the shipper: its ~0.4 MiB is gone at exec

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if os.getppid() != parent:
            os._exit(128 + signal.SIGKILL)  # the shipper died before prctl took effect
        os.dup2(out_w, 1)  # dup2 clears O_CLOEXEC on the copy
        os.dup2(err_w, 2)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(path, argv, env)
    except OSError as e:
        err = e.errno or err
    except BaseException:
        pass
    try:
        os.write(report_w, err.to_bytes(4, "little"))
    finally:
        os._exit(EXIT_NOT_EXECUTABLE)


def _read_report(fd: int) -> int:
    """The child's errno if its exec failed; 0 when the pipe closed at exec (success)."""
    data = b""
    while len(data) < 4:
        chunk = os.read(fd, 4 - len(data))
        if not chunk:
            break
        data += chunk
    return int.from_bytes(data, "little") if len(data) == 4 else 0


def hung_up(fd: int) -> bool:
    """True when every writer of the pipe `fd` has closed it (POLLHUP), read to its end or not."""
    import select  # asyncio has loaded it already

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


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
