"""The built-in peers of ``python -m benchmarks.run --peer``: Promtail 2.7.7 and Fluent Bit 4.2.8.

Their binaries come from the servers folder (``../shared/servers``, see its
README): env ``SHIPPER_SERVERS_DIR`` first, then ``<repo>/../shared/servers``,
then ``/work/shared/servers`` (the lookup of ``tests/real_loki.py`` and
``.ci/run``); ``<dir>/unpack NAME`` prints the executable's path.

Each peer's config template lives next to this file (``promtail.yaml``,
``fluent-bit.yaml``). The shipper's processing of each workload content
(``benchmarks.workloads.SOURCE_KEYS``) is given to a peer as the equivalent
its config language does simply (`PROCESSING`: placeholder values rendered
into the template, and a note for the report); a content without one runs
the peer on the raw file, marked ``raw tail (no processing)``. A workload
whose source a peer cannot read is not run, with the reason (`NOT_RUN`).
benchmarks/README.md ("Peers") says what each peer does per workload.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVERS_ENV = "SHIPPER_SERVERS_DIR"
RAW_TAIL = "raw tail (no processing)"
DEFAULT_SERVERS_DIRS = (str(REPO.parent / "shared" / "servers"), "/work/shared/servers")


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace the known {placeholders} only, so configs may keep their own braces."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


class PeersNotFound(RuntimeError):
    """A peer's binary cannot be found or unpacked; the message says where it looked."""


def servers_dir(env: Mapping[str, str] = os.environ,
                defaults: Sequence[str] = DEFAULT_SERVERS_DIRS) -> Path | None:
    """The folder with `unpack` and the `.xz` binaries, or None."""
    for c in [env.get(SERVERS_ENV) or "", *defaults]:
        if c and (Path(c) / "unpack").is_file():
            return Path(c)
    return None


def find_binary(name: str, env: Mapping[str, str] = os.environ,
                defaults: Sequence[str] = DEFAULT_SERVERS_DIRS) -> str:
    """The executable of `name` (``promtail-2.7.7``), unpacked by ``<servers>/unpack``; PeersNotFound if not."""
    folder = servers_dir(env, defaults)
    if folder is None:
        looked = ", ".join([f"${SERVERS_ENV}={env.get(SERVERS_ENV) or '(unset)'}", *defaults])
        raise PeersNotFound(f"--peer needs the servers folder with unpack and {name}.xz: none found "
                            f"(looked in {looked}); set {SERVERS_ENV} to it")
    if not (folder / f"{name}.xz").is_file():
        raise PeersNotFound(f"--peer needs {name}.xz in the servers folder {folder} (from {SERVERS_ENV} or "
                            f"the default places); it is not there")
    done = subprocess.run([str(folder / "unpack"), name], capture_output=True, text=True, check=False)
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not os.access(path, os.X_OK):
        raise PeersNotFound(f"{folder}/unpack {name} failed (exit {done.returncode}): {done.stderr.strip()} "
                            f"(servers folder from {SERVERS_ENV} or the default places)")
    return path


@dataclass(frozen=True)
class Processing:
    """What a peer does with one content: placeholder values for its config, and a note for the report."""

    note: str
    values: dict[str, str] = field(default_factory=dict)
    raw: bool = False  # no equivalent processing: the peer ships each line as read


@dataclass(frozen=True)
class Peer:
    """One built-in peer: its binary, command line, config template and what it does per content."""

    name: str  # results key and table heading, e.g. "promtail-2.7.7"
    binary: str  # the servers folder's NAME for unpack
    argv: tuple[str, ...]  # after the binary, with {placeholders}
    config: str  # template file next to this module
    processing: dict[str, Processing]  # by content (benchmarks.lines.CONTENTS)
    not_run: dict[str, str]  # by workload source: why the peer cannot run it
    defaults: dict[str, str]  # placeholder values of the raw tail

    @property
    def config_path(self) -> Path:
        return HERE / self.config

    def processing_for(self, content: str) -> Processing:
        """The content's processing, or a raw tail (with the defaults) if the peer has none for it."""
        found = self.processing.get(content)
        return found if found is not None else Processing(RAW_TAIL, raw=True)

    def values_for(self, content: str) -> dict[str, str]:
        """Every placeholder of the config's processing, filled for `content`."""
        return {**self.defaults, **self.processing_for(content).values}

    def not_run_reason(self, source: str) -> str | None:
        return self.not_run.get(source)

    def render_config(self, content: str, values: Mapping[str, str]) -> str:
        """The config for a workload of `content`, with the run's `values` (push URL, paths, ...)."""
        return render(self.config_path.read_text(), {**self.values_for(content), **values})


EXEC_REASON = ("exec mode is the shipper's own: it starts the task as its child and reads its stdout "
               "pipe; a peer has no such mode")

# Promtail 2.7.7: pipeline stages (docs: clients/promtail/stages). It has no structured
# metadata (added in 2.9/3.0), so no logger or level metadata is attached.
_AIRFLOW2_START = r"^\[\d{4}-\d\d-\d\d[T ]\d\d:\d\d"
PROMTAIL = Peer(
    name="promtail-2.7.7", binary="promtail-2.7.7", argv=("-config.file={config}",), config="promtail.yaml",
    defaults={"pipeline_stages": "[]"},
    processing={
        "airflow2": Processing("raw lines, as the shipper (no stages)"),
        "cri": Processing("`cri: {}` stage (P/F joined, the CRI time as timestamp)",
                          {"pipeline_stages": "[{cri: {}}]"}),
        "json": Processing("`json` (event, timestamp) + `timestamp` (RFC3339Nano) + `output: event` stages; "
                           "no logger metadata (2.7 has no structured metadata)",
                           {"pipeline_stages": "[{json: {expressions: {event: event, timestamp: timestamp}}}, "
                                               "{timestamp: {source: timestamp, format: RFC3339Nano}}, "
                                               "{output: {source: event}}]"}),
        "multiline": Processing("`multiline` stage, firstline the Airflow 2 time, max_wait_time 1s; "
                                "no level (2.7 has no structured metadata)",
                                {"pipeline_stages": f"[{{multiline: {{firstline: '{_AIRFLOW2_START}', "
                                                    "max_wait_time: 1s}}]"}),
        "airflow3": Processing("`multiline` stage, firstline `^\\{`, max_wait_time 1s (each record whole); "
                               "no level (2.7 has no structured metadata)",
                               {"pipeline_stages": "[{multiline: {firstline: '^\\{', max_wait_time: 1s}}]"}),
    },
    not_run={"fifo": "Promtail tails regular files only: it reads no FIFO", "exec": EXEC_REASON})

# Fluent Bit 4.2.8 (YAML config: parsers and multiline parsers in the main file). The tail
# input's record keys are dropped in the loki output but the line's, which drop_single_key
# raw sends as is; levels and the logger go out as structured metadata, as the shipper's.
_FB_LEVEL_FILTER = ("  filters:\n"
                    "    - name: parser\n"
                    "      match: '*'\n"
                    "      key_name: log\n"
                    "      parser: {level_parser}\n"
                    "      reserve_data: on\n"
                    "      preserve_key: on\n")
_FB_LEVEL_OUTPUT = ("      structured_metadata: level=$level\n"
                    "      remove_keys: level\n")


def _fb_multiline(name: str, start: str) -> str:
    return ("multiline_parsers:\n"
            f"  - name: {name}\n"
            "    type: regex\n"
            "    flush_timeout: 1000\n"
            "    rules:\n"
            "      - state: start_state\n"
            f"        regex: '/{start}/'\n"
            "        next_state: cont\n"
            "      - state: cont\n"
            f"        regex: '/^(?!{start[1:]})/'\n"
            "        next_state: cont\n")


def _fb_parser(name: str, regex: str) -> str:
    return f"  - name: {name}\n    format: regex\n    regex: '{regex}'\n"


FLUENT_BIT = Peer(
    name="fluent-bit-4.2.8", binary="fluent-bit-4.2.8", argv=("-c", "{config}"), config="fluent-bit.yaml",
    defaults={"parsers": "", "tail_options": "", "filters": "", "loki_options": ""},
    processing={
        "airflow2": Processing("raw lines, as the shipper"),
        "cri": Processing("tail `multiline.parser: cri` (P/F joined, the CRI time as timestamp)",
                          {"tail_options": "      multiline.parser: cri\n",
                           "loki_options": "      remove_keys: time, stream, _p\n"}),
        "json": Processing("tail `parser` json (time_key timestamp); line: `event`, `logger` as structured "
                           "metadata",
                           {"parsers": ("parsers:\n  - name: airflow3_json\n    format: json\n"
                                        "    time_key: timestamp\n    time_format: '%Y-%m-%dT%H:%M:%S.%LZ'\n"),
                            "tail_options": "      parser: airflow3_json\n",
                            "loki_options": ("      structured_metadata: logger=$logger\n"
                                             "      remove_keys: timestamp, level, logger, filename, lineno\n")}),
        "multiline": Processing("tail `multiline.parser` (regex: the Airflow 2 time starts an entry, "
                                "flush 1 s) + a `parser` filter for the level, as structured metadata",
                                {"parsers": "parsers:\n" + _fb_parser(
                                    "airflow2_level", r"^\[[^\]]*\] \{[^}]*\} (?<level>[A-Z]+) - "
                                    ) + _fb_multiline("airflow2", _AIRFLOW2_START),
                                 "tail_options": "      multiline.parser: airflow2\n",
                                 "filters": _FB_LEVEL_FILTER.replace("{level_parser}", "airflow2_level"),
                                 "loki_options": _FB_LEVEL_OUTPUT}),
        "airflow3": Processing("tail `multiline.parser` (regex: `{` starts an entry, flush 1 s; each record "
                               "whole) + a `parser` filter for the level, as structured metadata",
                               {"parsers": "parsers:\n" + _fb_parser(
                                   "airflow3_level", r'"level":"(?<level>[a-z]+)"'
                                   ) + _fb_multiline("airflow3", r"^\{"),
                                "tail_options": "      multiline.parser: airflow3\n",
                                "filters": _FB_LEVEL_FILTER.replace("{level_parser}", "airflow3_level"),
                                "loki_options": _FB_LEVEL_OUTPUT}),
    },
    not_run={"fifo": "Fluent Bit's tail input reads regular files only: no FIFO", "exec": EXEC_REASON})

PEERS = (PROMTAIL, FLUENT_BIT)
# Placeholders of the peers' templates, filled as a raw tail when a template runs through
# --peer TEMPLATE --peer-config FILE (which knows nothing of contents).
TEMPLATE_DEFAULTS = {k: v for peer in PEERS for k, v in peer.defaults.items()}
