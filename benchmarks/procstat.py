"""CPU and memory of one process, read from /proc/<pid> only.

* CPU: ``utime + stime`` of /proc/<pid>/stat (all threads, clock ticks:
  10 ms resolution), and the same time in nanoseconds from each thread's
  /proc/<pid>/task/<tid>/schedstat (first field: time on CPU). Ticks are too
  coarse for idle (30 s at 0.5 millicores is 1.5 ticks), so averages use the
  nanosecond sum; a thread keeps its last sampled value after it exits.
* Memory (/proc/<pid>/status): ``VmHWM`` (peak RSS, kept by the kernel, so
  exact), ``VmRSS`` and ``RssAnon`` now; the harness samples every ~0.1 s and
  keeps the largest ``RssAnon`` seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One reading of the process."""

    user_s: float  # utime from /proc/<pid>/stat, in seconds (10 ms ticks)
    sys_s: float  # stime, likewise
    cpu_ns: int  # sum over threads of schedstat time on CPU
    rss: int  # bytes
    hwm: int  # bytes, peak RSS so far
    anon: int  # bytes

    @property
    def cpu_s(self) -> float:
        return self.cpu_ns / 1e9

    @property
    def cpu_ticks_s(self) -> float:
        return self.user_s + self.sys_s


@dataclass
class ProcessMonitor:
    """Samples one pid; remembers what outlives a sample (dead threads, the RssAnon peak)."""

    pid: int
    thread_ns: dict[int, int] = field(default_factory=dict)
    max_anon: int = 0
    last: Sample | None = None

    def sample(self) -> Sample | None:
        """Read the process now; None once it is gone (the last good sample stays in `last`)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{self.pid}/status") as f:
                status = f.read()
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                        self.thread_ns[int(tid)] = int(f.read().split()[0])
                except (FileNotFoundError, ProcessLookupError):
                    pass  # the thread just exited; its last value is kept
        except (FileNotFoundError, ProcessLookupError):
            return None
        # Fields after the command name (which may hold spaces and parentheses).
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return None  # a zombie has no memory left to read
        utime, stime = int(fields[11]), int(fields[12])
        memory = _status_kib(status)
        if "VmHWM" not in memory:
            return None  # exiting: its memory is already released
        sample = Sample(
            user_s=utime / CLOCK_TICKS,
            sys_s=stime / CLOCK_TICKS,
            cpu_ns=sum(self.thread_ns.values()),
            rss=memory.get("VmRSS", 0) * KIB,
            hwm=memory.get("VmHWM", 0) * KIB,
            anon=memory.get("RssAnon", 0) * KIB,
        )
        self.max_anon = max(self.max_anon, sample.anon)
        self.last = sample
        return sample


def _status_kib(status: str) -> dict[str, int]:
    """The `Name:  123 kB` lines of /proc/<pid>/status."""
    out = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if len(value) == 2 and value[1] == "kB":
            out[name] = int(value[0])
    return out
