"""Routing: a source's processed runs in, each run with its stream and encoded metadata out. No IO.

The step between processing (shipper.process) and the accumulator: a run of
entries goes to the source's own stream, or to a variant of it with other
labels: the stream a CRI line names (`stream="stderr"`), a level routed to a
label of its own (`level_labels`). Each entry's structured metadata (JSON
keys, its level) is encoded here, once per distinct value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING

from shipper import encoder
from shipper.batch import Stream
from shipper.config import LEVEL_NAMES
from shipper.labels import clean_value

if TYPE_CHECKING:
    from shipper.formats import Metadata
    from shipper.process import Run

# The metadata cache is dropped when it grows past this many distinct values
# (JSON values could vary without bound; levels and loggers are a handful).
METADATA_CACHE_MAX = 256


class Router:
    """The streams and encoded metadata of processed runs, built once and cached."""

    def __init__(self, level_labels: Iterable[str]) -> None:
        self.level_labels = frozenset(level_labels)
        # Streams other than a source's own: a CRI line's stream, a routed level
        # (level_labels). Built once per (source stream, stream name, level).
        self._variants: dict[tuple[Stream, str | None, str | None], Stream] = {}
        # Encoded structured metadata per distinct tuple (levels, JSON keys).
        self._metadata_cache: dict[tuple[Metadata, str | None], bytes] = {}
        # The encoded `level` metadata of each level an entry can have (levels.detect's, or none).
        self._level_metadata: dict[str | None, bytes] = {
            level: encoder.encode_metadata([("level", level)]) for level in LEVEL_NAMES}
        self._level_metadata[None] = b""

    def route(self, base: Stream, runs: list[Run]) -> list[tuple[Stream, Run, list[bytes] | None]]:
        """Each run (cut where a routed level changes) with its stream and each entry's encoded metadata."""
        if self.level_labels:
            runs = [part for run in runs for part in self._routed(run)]
        out = []
        for run in runs:
            entry_levels = run.levels
            routed = entry_levels[0] if entry_levels and entry_levels[0] in self.level_labels else None
            out.append((self.stream_for(base, run.stream, routed), run,
                        self.encoded_metadata(run.metadata, entry_levels)))
        return out

    def _routed(self, run: Run) -> list[Run]:
        """`run` cut where the level routed to a label of its own (level_labels) changes."""
        entry_levels = run.levels
        if not entry_levels:
            return [run]
        from shipper.process import spans  # loaded: a processed source made this run

        labels = self.level_labels
        routed = [level if level in labels else None for level in entry_levels]
        if routed.count(routed[0]) == len(routed):
            return [run]
        return [run._replace(lines=run.lines[i:j], times=run.times[i:j] if run.times is not None else None,
                             metadata=run.metadata[i:j] if run.metadata is not None else None,
                             levels=entry_levels[i:j])
                for i, j in spans(routed)]

    def encoded_metadata(self, metadata: Sequence[Metadata] | None,
                         entry_levels: Sequence[str | None] | None) -> list[bytes] | None:
        """Each entry's structured metadata, encoded, with its level last; None when no entry has any.

        Values repeat (a few levels, a few loggers): each distinct one is
        encoded once (and cached across calls), and the per-entry list is
        built by C-level lookups, not a Python loop.
        """
        if metadata is None:
            if entry_levels is None:
                return None
            # Levels only (the pod template's sources): one lookup an entry.
            return list(map(self._level_metadata.__getitem__, entry_levels))
        cache = self._metadata_cache
        if len(cache) > METADATA_CACHE_MAX:
            cache.clear()
        keys = list(zip(metadata, entry_levels if entry_levels is not None else repeat(None)))
        encoded = {}
        for key in set(keys):
            md = cache.get(key)
            if md is None:
                pairs, level = key
                md = cache[key] = encoder.encode_metadata((*pairs, ("level", level)) if level else pairs)
            encoded[key] = md
        return list(map(encoded.__getitem__, keys))

    def stream_for(self, base: Stream, name: str | None, level: str | None) -> Stream:
        """The source's stream, or its variant for a CRI stream name or a routed level."""
        routed = level if level in self.level_labels else None
        if (name is None or name == base.name) and routed is None:
            return base
        key = (base, name, routed)
        stream = self._variants.get(key)
        if stream is None:
            changes = {"stream": clean_value(name or base.name)}
            if routed:
                changes["level"] = routed
            stream = self._variants[key] = base.variant(**changes)
        return stream
