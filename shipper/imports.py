"""What the interpreter loads: modules asyncio imports but the shipper does not use, deferred until first use. No IO.

asyncio imports `subprocess` (for its subprocess transports), `logging` (for
its own error messages) and `concurrent.futures` (for executors) at import
time. The shipper starts no subprocess through asyncio (exec mode forks
itself: shipper.exec), logs through shipper.events, and uses an executor
only to resolve a host name (the loop's getaddrinfo). Together they are
about 1 MiB of the 20 MiB budget (README "Footprint": measured per module).

`defer_unused()` puts a stand-in for each in `sys.modules` before asyncio is
imported. A stand-in holds the few values asyncio reads while it is being
imported (`subprocess.PIPE`, `logging.DEBUG`, a logger); touching anything
else imports the real module, which then replaces the stand-in everywhere
(`sys.modules`, and the stand-in's own namespace for modules that bound it).
So nothing behaves differently: a module is only loaded later, or never.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

# What asyncio reads from each module while it is imported (Python 3.11):
# asyncio.subprocess copies PIPE/STDOUT/DEVNULL; asyncio.futures computes
# STACK_DEBUG from logging.DEBUG; asyncio.log calls logging.getLogger;
# asyncio.tasks copies the three wait() constants. (A version that reads
# something else only loads the real module then: memory, not behaviour.)
_WARNING = 30  # logging.WARNING: the root logger's default level
_EAGER: dict[str, dict[str, Any]] = {
    "subprocess": {"PIPE": -1, "STDOUT": -2, "DEVNULL": -3},
    "logging": {"DEBUG": 10, "INFO": 20, "WARNING": _WARNING, "ERROR": 40, "CRITICAL": 50},
    "concurrent.futures": {"FIRST_COMPLETED": "FIRST_COMPLETED", "FIRST_EXCEPTION": "FIRST_EXCEPTION",
                           "ALL_COMPLETED": "ALL_COMPLETED"},
}


class _Deferred(ModuleType):
    """A module's stand-in: imports the real one on the first attribute it does not hold."""

    def __getattr__(self, attr: str) -> Any:  # only for attributes not set on the stand-in
        real = load(self.__name__)
        return getattr(real, attr)


class _DeferredLogger:
    """`logging.getLogger(name)` before logging is loaded: the real logger on first use.

    Until something loads logging, nothing can have configured it, so it
    would emit only WARNING and above (the root logger's default level, to
    its last-resort handler on stderr): `debug` and `info` are dropped here
    as logging would drop them (asyncio's loop logs "Using selector" at
    debug level when it starts), without loading it.
    """

    def __init__(self, name: str | None) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        real = load("logging")
        return getattr(real.getLogger(self._name), attr)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802  (logging's name)
        if deferred("logging"):
            return level >= _WARNING
        return bool(self.__getattr__("isEnabledFor")(level))

    def debug(self, *args: Any, **kwargs: Any) -> None:
        if not deferred("logging"):
            self.__getattr__("debug")(*args, **kwargs)

    def info(self, *args: Any, **kwargs: Any) -> None:
        if not deferred("logging"):
            self.__getattr__("info")(*args, **kwargs)


def _get_logger(name: str | None = None) -> Any:
    return _DeferredLogger(name)


def defer_unused() -> None:
    """Put the stand-ins in place; call before the first `import asyncio` (no effect after)."""
    if "asyncio" in sys.modules:
        return
    for name, values in _EAGER.items():
        if name in sys.modules:
            continue
        stand_in = _Deferred(name)
        stand_in.__dict__.update(values)
        if name == "logging":
            stand_in.__dict__["getLogger"] = _get_logger
        parent, _, child = name.rpartition(".")
        if parent:
            __import__(parent)  # `import concurrent.futures` binds `concurrent`: it must hold the stand-in
            setattr(sys.modules[parent], child, stand_in)
        # The real module's spec (found, not loaded), so importlib.util.find_spec and
        # submodule imports (`import concurrent.futures.thread`) work on the stand-in.
        spec = importlib.util.find_spec(name)
        stand_in.__spec__ = spec
        if spec is not None and spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stand_in


def deferred(name: str) -> bool:
    """Whether `name` is still a stand-in (not loaded)."""
    return isinstance(sys.modules.get(name), _Deferred)


def load(name: str) -> ModuleType:
    """The real module `name`, imported now if only its stand-in was there."""
    stand_in = sys.modules.get(name)
    if not isinstance(stand_in, _Deferred):
        return __import__(name, fromlist=["_"])
    del sys.modules[name]
    if "." in name:
        parent, _, child = name.rpartition(".")
        delattr(sys.modules[parent], child)
    real = __import__(name, fromlist=["_"])
    # Modules that did `import <name>` hold the stand-in: give it the real namespace.
    stand_in.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__class__"})
    return real
