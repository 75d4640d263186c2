"""Command line: `shipper [run]`, `shipper check-config`, `shipper --version`.

Exit codes (also in the README):
  0  every line read was delivered (or refused by Loki as invalid, and counted)
  1  lines were left undelivered at exit (shutdown deadline, second signal)
  2  bad configuration, bad source path or bad usage: nothing was started
  3  internal error: a pipeline task died (a bug; the log says which)
"""

from __future__ import annotations

import os
import sys

from typing import TYPE_CHECKING

from shipper import __version__
from shipper.config import Config, ConfigError, dump, load

if TYPE_CHECKING:  # imported where used: check-config and --help load none of them
    from shipper.batch import Stream
    from shipper.exec import Child
    from shipper.pipeline import Sink
    from shipper.sources import Source

USAGE = """usage: shipper [--config PATH] [run | check-config]
       shipper [--config PATH] exec -- CMD [ARGS...]
       shipper [--config PATH] migrate-vector [--capture-dir DIR]
       shipper --version

Reads the configured sources, labels every line with the Airflow context and
pushes batches to Loki. Config: TOML from --config PATH, else from the
SHIPPER_CONFIG environment variable, else VECTOR_CONFIG (a Vector config,
translated), else the defaults (see README).

  run            ship logs (the default)
  check-config   print the effective configuration and exit
  exec           run CMD as a child, pass its output through unchanged, ship
                 it, forward signals, exit with its exit code
  migrate-vector print the shipper config equivalent to a Vector config (from
                 --config PATH, else VECTOR_CONFIG); --capture-dir DIR reads
                 the capture wrapper's files instead of /proc/1/fd/1 and 2
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shipper` console script; returns the exit code."""
    parsed = _parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    command, config_path, argv_child, rest = parsed
    if command == "migrate-vector":
        return _migrate_vector(config_path, rest)
    try:
        if config_path is None and not os.environ.get("SHIPPER_CONFIG") and os.environ.get("VECTOR_CONFIG"):
            config, origin = _from_vector_config(log=command != "check-config")
        else:
            config, origin = load(path=config_path, env=os.environ)
    except ConfigError as e:
        return _config_error(str(e))
    if command == "check-config":
        sys.stdout.write(f"# effective configuration (from {origin})\n{dump(config)}")
        return 0
    return _run(config, origin, argv_child)


# What the options that print and exit print.
_INFO = {"-h": USAGE, "--help": USAGE, "--version": f"shipper {__version__}\n"}

# (command, --config PATH, exec's CMD ARGS..., migrate-vector's own arguments)
_Args = tuple[str, str | None, list[str], list[str]]


def _parse_args(args: list[str]) -> _Args | int:
    """The command line read in order, or the exit code when it is done with (help,
    version, a usage error). Hand-rolled: argparse costs memory in every pod for
    three options."""
    config_path: str | None = None
    command = "run"
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in _INFO:
            sys.stdout.write(_INFO[arg])
            return 0
        if arg == "--config" or arg.startswith("--config="):
            if "=" not in arg and not rest:
                return _usage_error("--config needs a PATH")
            config_path = arg.split("=", 1)[1] if "=" in arg else rest.pop(0)
        elif arg in ("run", "check-config"):
            command = arg
        elif arg == "exec":
            argv_child = rest[1:] if rest[:1] == ["--"] else rest
            if not argv_child:
                return _usage_error("exec needs a command: shipper exec -- CMD [ARGS...]")
            return arg, config_path, argv_child, []
        elif arg == "migrate-vector":
            return arg, config_path, [], rest
        else:
            return _usage_error(f"unknown argument {arg!r}")
    return command, config_path, [], []


def _run(config: Config, origin: str, argv_child: list[str] | None = None) -> int:
    """`run`, or `exec` when `argv_child` is given."""
    _hide_ssl_unless_needed(config)
    from shipper.imports import defer_unused

    defer_unused()  # subprocess, logging, concurrent.futures: loaded only if used (about 1 MiB)
    import asyncio

    from shipper import lifecycle
    from shipper.sources import SourceError

    if argv_child:
        # stderr is the command's (what `kubectl logs` shows): the shipper's own
        # diagnostics go where exec_diagnostics says, by default nowhere.
        failed = _route_exec_diagnostics(config.exec_diagnostics)
        if failed is not None:
            return _config_error(failed)
    try:
        ctx = lifecycle.airflow_context(config, os.environ)
    except ConfigError as e:  # the annotations file: a directory, a FIFO, a device, too large
        return _config_error(str(e))
    sources: list[Source] = []
    if argv_child:
        # exec: the command's own stdout/stderr are the sources; [[sources]] paths are not
        # read, but the entry with stream "stdout" ("stderr") says how to process that stream.
        streams = lifecycle.build_streams(config, ctx, names=("stdout", "stderr"))
    else:
        streams = lifecycle.build_streams(config, ctx)
        try:
            sources = _file_sources(config, streams)
        except SourceError as e:
            return _config_error(str(e))
    try:
        sink = _sink(config, exec_mode=bool(argv_child))
    except ConfigError as e:
        return _config_error(str(e))
    return asyncio.run(_serve(config, origin, argv_child or [], ctx, streams, sources, sink))


def _hide_ssl_unless_needed(config: Config) -> None:
    loki_tls = config.sink.type == "loki" and config.loki.url.startswith("https:")
    if not loki_tls and not config.metrics.pushgateway_url.startswith("https:"):
        # asyncio imports ssl (OpenSSL, ~4.4 MiB) even when TLS is never used;
        # hiding it makes asyncio fall back to its no-TLS code (FACTS §6).
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


def _file_sources(config: Config, streams: list[Stream]) -> list[Source]:
    """`run`: a Source for each configured path that is not a glob (checked, not opened yet)."""
    from shipper import lifecycle
    from shipper.sources import check_path, is_glob

    sources = []
    for source_cfg, stream in zip(config.sources, streams):
        if is_glob(source_cfg.path):
            continue  # a pattern: lifecycle.make_watchers turns its files into sources
        check_path(source_cfg.path)
        sources.append(lifecycle.new_source(config, source_cfg, source_cfg.path, stream))
    return sources


def _sink(config: Config, exec_mode: bool) -> Sink:
    """Where batches go; raises ConfigError for a TLS or credential file that cannot be used."""
    from shipper import events
    from shipper.loki import ConsoleSink, LokiClient

    if config.sink.type == "console":
        # In exec mode stdout carries the command's output: pushes go to stderr.
        return ConsoleSink(sys.stderr if exec_mode else sys.stdout)
    # Reads the CA/client-cert/credential files now: a bad one exits 2 naming its key.
    sink = LokiClient.from_config(config.loki)
    loki = config.loki
    if loki.insecure_skip_verify:
        events.log("warn", "TLS CERTIFICATE VERIFICATION IS OFF (loki.insecure_skip_verify = true): "
                   "anyone on the path can read and alter the logs and the credentials",
                   event="tls_verify_off", url=loki.url)
    if (loki.bearer_token_file or loki.basic_auth_password_file) and not loki.url.startswith("https://"):
        events.log("warn", "credentials are sent over plain http (loki.url is not https://)",
                   event="credentials_over_http", url=loki.url)
    return sink


async def _serve(config: Config, origin: str, argv_child: list[str], ctx: dict[str, str],
                 streams: list[Stream], sources: list[Source], sink: Sink) -> int:
    """Inside the loop: open the state and the sources, start the command (exec), run."""
    from shipper import events, lifecycle
    from shipper.checkpoint import CheckpointError
    from shipper.spool import SpoolError
    from shipper.sources import SourceError

    # A SIGTERM from here on is a shutdown request, even before the pipeline runs.
    lifecycle.catch_early_signals()

    # Sources are opened inside the loop so open errors exit 2 before any push.
    try:
        durable = lifecycle.open_durable(config, sources)
    except (SourceError, CheckpointError, SpoolError) as e:
        return _refuse(sources, str(e))
    # Once nothing in the config or its state files refuses to start.
    events.log("info", "starting", event="starting", version=__version__, config=origin, sink=config.sink.type,
               url=config.loki.url if config.sink.type == "loki" else None,
               sources=[s.path for s in config.sources] if not argv_child else ["exec"],
               labels=sorted({s.labels for s in streams}),
               context_keys=sorted(ctx))
    try:
        for source in sources:
            if source.kind == "waiting":
                source.try_open()
    except (SourceError, CheckpointError, SpoolError) as e:
        return _refuse(sources, str(e))
    if not argv_child:
        watchers = lifecycle.make_watchers(config, ctx, durable, os.environ)
        return await lifecycle.run(config, sources, sink, ctx, None, durable, watchers)
    child = _start_command(config, argv_child, streams, sources)
    if isinstance(child, int):
        return child
    return await lifecycle.run(config, sources, sink, ctx, child, durable, [])


def _refuse(sources: list[Source], error: str) -> int:
    for source in sources:
        source.close()
    return _config_error(error)


def _start_command(config: Config, argv_child: list[str], streams: list[Stream],
                   sources: list[Source]) -> Child | int:
    """exec: the command started, its stdout and stderr added to `sources`; or its exit code
    (126, 127) when it cannot be run."""
    import functools

    from shipper import events, lifecycle
    from shipper.exec import SpawnError, copy_all, spawn
    from shipper.sources import Source

    try:
        child = spawn(argv_child)
    except SpawnError as e:
        # The task did not run: its log must say why, whatever the routing.
        events.announce("error", "cannot run the command", event="command_not_run", error=str(e))
        return e.code
    events.log("info", "command started", event="command_started", pid=child.pid, argv=argv_child)
    for fd, name, stream, out in ((child.stdout, "stdout", streams[0], 1),
                                  (child.stderr, "stderr", streams[1], 2)):
        source = Source.from_pipe(fd, f"exec:{name}", stream, config.max_line_bytes,
                                  passthrough=functools.partial(copy_all, out))
        sources.append(lifecycle.process_as(config, lifecycle.exec_source_config(config, name), source))
    return child


def _route_exec_diagnostics(where: str) -> str | None:
    """exec mode: send the shipper's diagnostics where `exec_diagnostics` says; an error message or None."""
    from shipper import events

    if where == "none":
        events.silence()
    elif where == "stderr":
        events.quiet()  # warnings, errors and the summary after the command's bytes
    else:
        try:
            # Line-buffered, append (several runs may share it); not inherited by the command.
            f = open(where, "a", encoding="utf-8", errors="replace", buffering=1)
        except OSError as e:
            return f"exec_diagnostics: cannot open {where} for appending: {e.strerror or e}"
        events.to_file(f)
    return None


def _vector_text(config_path: str | None) -> tuple[str, str] | None:
    """Vector config text and its origin: the --config file, else VECTOR_CONFIG (text or a file)."""
    from shipper.vector import config_file_path

    if config_path is None:
        value = os.environ.get("VECTOR_CONFIG", "")
        if not value:
            return None
        config_path = config_file_path(value)
        if config_path is None:
            return value, "VECTOR_CONFIG"
    try:
        with open(config_path, "rb") as f:
            return f.read().decode("utf-8"), config_path
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read Vector config {config_path}: {e}") from None


def _from_vector_config(log: bool) -> tuple[Config, str]:
    """`run` with only VECTOR_CONFIG set: translate it (shipper/vector.py) and say so."""
    from shipper.config import parse
    from shipper.vector import translate

    found = _vector_text(None)
    assert found is not None
    text, origin = found
    translation = translate(text, origin=origin)
    config = parse(translation.to_toml(), origin=f"{origin} (translated)")
    if log:
        from shipper import events

        events.log("info", "no SHIPPER_CONFIG: translated the Vector config in VECTOR_CONFIG",
                   event="vector_config_translated", vector_config=origin, notes=translation.notes,
                   hint="`shipper migrate-vector` prints the translation")
    return config, f"{origin}, translated from a Vector config"


def _migrate_vector(config_path: str | None, rest: list[str]) -> int:
    """`migrate-vector`: print the shipper's TOML equivalent to a Vector config."""
    from shipper.vector import translate

    capture_dir: str | None = None
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in ("--config", "--capture-dir"):
            return _usage_error(f"migrate-vector: unknown argument {arg!r}")
        if not eq:
            if not rest:
                return _usage_error(f"{name} needs a value")
            value = rest.pop(0)
        if name == "--config":
            config_path = value
        else:
            capture_dir = value
    try:
        found = _vector_text(config_path)
        if found is None:
            return _usage_error("migrate-vector needs --config PATH or the VECTOR_CONFIG environment variable")
        text, origin = found
        sys.stdout.write(translate(text, origin=origin, capture_dir=capture_dir).to_toml())
    except ConfigError as e:
        return _config_error(str(e))
    return 0


def _usage_error(msg: str) -> int:
    sys.stderr.write(f"shipper: {msg}\n{USAGE}")
    return 2


def _config_error(msg: str) -> int:
    # Same one-line JSON shape as every other diagnostic, and a plain-text
    # hint on a second line is not needed: the message names the key.
    import json

    sys.stderr.write(json.dumps({"level": "error", "event": "refusing_to_start", "msg": "refusing to start",
                                 "error": msg}) + "\n")
    return 2
