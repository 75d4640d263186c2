"""The diagnostics' stable names: every record the code can write names a documented event.

docs/diagnostics.md is the interface (alerts and tests match on `event`, not
on `msg`); these tests read the code's call sites with `ast` and hold them to
that table, both ways.
"""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import pytest

from shipper import events

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "diagnostics.md"


def documented() -> list[str]:
    """The names in the first column of docs/diagnostics.md's "Events" table."""
    text = DOC.read_text().split("\n## Events\n", 1)[1]
    return re.findall(r"^\| `([a-z][a-z0-9_]*)` \| (?:debug|info|warn|error) \|", text, re.M)


def _is_writer(call: ast.Call, in_events: bool) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr in ("log", "announce") and isinstance(f.value, ast.Name) and f.value.id == "events"
    return in_events and isinstance(f, ast.Name) and f.id in ("log", "announce")


def call_sites() -> list[tuple[str, ast.expr | None]]:
    """(where, the `event` argument) of every events.log/announce call in shipper/,
    and of every JSON record written by hand (a dict literal with "event" and "msg")."""
    sites: list[tuple[str, ast.expr | None]] = []
    for path in sorted((ROOT / "shipper").rglob("*.py")):
        in_events = path.name == "events.py" and path.parent.name == "shipper"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and _is_writer(node, in_events):
                sites.append((where, next((k.value for k in node.keywords if k.arg == "event"), None)))
            elif isinstance(node, ast.Dict) and not in_events:  # events._record builds the envelope
                keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
                if "event" in keys and "msg" in keys:
                    sites.append((where, keys["event"]))
            elif isinstance(node, ast.ImportFrom) and node.module == "shipper.events":
                # A bare `log(...)` imported from events would escape the scan above.
                assert not {a.name for a in node.names} & {"log", "announce"}, where
    return sites


def test_every_diagnostic_names_a_documented_event_as_a_literal() -> None:
    names = documented()
    assert len(names) == len(set(names)), "a name is listed twice in docs/diagnostics.md"
    sites = call_sites()
    assert len(sites) > 40  # the scan sees the call sites (it would pass vacuously otherwise)
    bad = [where for where, event in sites
           if not (isinstance(event, ast.Constant) and isinstance(event.value, str) and event.value in names)]
    assert bad == []


def test_every_documented_event_is_written_somewhere() -> None:
    used = {event.value for _, event in call_sites() if isinstance(event, ast.Constant)}
    assert set(documented()) - used == set()


def test_a_record_is_the_envelope_then_the_fields() -> None:
    out = io.StringIO()
    saved = events._dest, events._min_level
    try:
        events.to_file(out)
        events.log("warn", "source is shorter than its checkpoint: reading it from the start",
                   event="source_shorter_than_checkpoint", path="/x", offset=10, size=3)
        events.log("debug", "not written: below the level", event="source_eof", path="/x")
    finally:
        events._dest, events._min_level = saved
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert list(record) == ["ts", "level", "event", "msg", "path", "offset", "size"]
    assert {k: v for k, v in record.items() if k != "ts"} == {
        "level": "warn", "event": "source_shorter_than_checkpoint",
        "msg": "source is shorter than its checkpoint: reading it from the start",
        "path": "/x", "offset": 10, "size": 3}


def test_a_record_without_an_event_name_cannot_be_written() -> None:
    with pytest.raises(TypeError):
        events.log("info", "anonymous")  # type: ignore[call-arg]
