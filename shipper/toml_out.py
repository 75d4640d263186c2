"""Values in, TOML text out. No IO.

The package's one TOML writer: `shipper check-config` prints the effective
configuration with it (`shipper.config.dump`), `shipper migrate-vector` its
translation (`shipper.vector`). Whatever it is given, `tomllib.loads` reads
what it writes back to the same values: strings (every control character
escaped, DEL included), integers, floats (inf and nan included), booleans,
lists, and tables, nested ones under `[a.b]` headers and lists of tables as
`[[a]]`. Comments are made safe the same way: a control character in one is
written as its `\\uXXXX` text, never raw.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# TOML basic strings (toml.io, v1.0.0) must escape `"`, `\` and every control
# character but tab, DEL (U+007F) included; JSON's escaping leaves DEL raw,
# which is why json.dumps is not a TOML string writer.
_STRING_ESCAPES = str.maketrans({
    **{chr(c): f"\\u{c:04x}" for c in [*range(0x20), 0x7F]},
    "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\",
})
# Comments may hold tab but no other control character (an LF would end the
# comment and make the rest of it TOML).
_COMMENT_ESCAPES = str.maketrans({chr(c): f"\\u{c:04x}" for c in [*range(0x09), *range(0x0A, 0x20), 0x7F]})
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def string(s: str) -> str:
    """`s` as a TOML basic string."""
    return '"' + s.translate(_STRING_ESCAPES) + '"'


def key(k: str) -> str:
    """`k` as a TOML key: bare when it can be, else quoted."""
    return k if _BARE_KEY.match(k) else string(k)


def value(v: object) -> str:
    """`v` as an inline TOML value (tables inline as `{k = v}`); TypeError for what TOML cannot hold."""
    if isinstance(v, bool):  # before int: a bool is an int
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # repr of a float is TOML too: 1e-05, 1e+16, inf, -inf, nan
    if isinstance(v, str):
        return string(v)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"no TOML value for {type(v).__name__}")


def dumps(table: Mapping[str, object], *, comments: Mapping[str, Sequence[str]] | None = None) -> str:
    """`table` as a TOML document: its plain values first, then its tables and lists of tables.

    `comments` maps where a comment goes to its lines (without "# "): "" is the
    top of the document, "loki" above [loki], "loki.url" above that key,
    "sources[0]" above the first [[sources]].
    """
    notes = comments or {}
    out = _comments(notes, "")
    if out and any(_is_plain(v) for v in table.values()):
        out.append("")
    _write(out, table, (), "", notes)
    while out and not out[0]:  # nothing above the first table: no blank line either
        out.pop(0)
    return "\n".join(out) + "\n"


def _write(out: list[str], table: Mapping[str, object], path: tuple[str, ...], where: str,
           notes: Mapping[str, Sequence[str]]) -> None:
    # Plain values first: after a header every key belongs to that header's table.
    for k, v in table.items():
        if _is_plain(v):
            out += _comments(notes, f"{where}{k}")
            out.append(f"{key(k)} = {value(v)}")
    for k, v in table.items():
        header = ".".join(key(p) for p in (*path, k))
        if isinstance(v, Mapping):
            out += ["", *_comments(notes, f"{where}{k}"), f"[{header}]"]
            _write(out, v, (*path, k), f"{where}{k}.", notes)
        for i, item in enumerate(_tables(v)):
            out += ["", *_comments(notes, f"{where}{k}[{i}]"), f"[[{header}]]"]
            _write(out, item, (*path, k), f"{where}{k}[{i}].", notes)


def _tables(v: object) -> list[Mapping[str, object]]:
    """The tables of a non-empty list of tables, written as [[key]]; [] for anything else."""
    if isinstance(v, (list, tuple)) and all(isinstance(x, Mapping) for x in v):
        return list(v)
    return []


def _is_plain(v: object) -> bool:
    """Written as `key = value`: neither a table nor a non-empty list of tables (an empty list is `[]`)."""
    return not isinstance(v, Mapping) and not _tables(v)


def _comments(notes: Mapping[str, Sequence[str]], where: str) -> list[str]:
    return [f"# {line.translate(_COMMENT_ESCAPES)}" for line in notes.get(where, ())]
