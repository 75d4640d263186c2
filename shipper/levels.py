"""Log level detection: a line in, its level out. No IO, no state.

`detect(line)` returns one of `trace`, `debug`, `info`, `warning`, `error`,
`critical`, or None when the line shows no level it recognises. Text forms
are looked for in the head of the line only (its first line, at most `HEAD`
bytes), so a merged multi-line entry gets the level of its first line and a
long line costs no more than a short one; a JSON record's level key may be
anywhere in it.

Recognised, in this order (the first hit wins):
1. JSON records (the line starts with `{"`): the value of `"level"` or
   `"levelname"`, any case (Airflow 3 writes `"level":"error"`;
   python-json-logger writes `"levelname": "ERROR"`). Nothing else is looked
   at in a JSON record: words in its message do not count.
2. Airflow 2's `} LEVEL - `: `[ts] {file.py:12} ERROR - msg` (the fast path:
   one scan).
3. After a timestamp at the start of the line: structlog's console format
   `2026-01-05T10:00:00.123456Z [error    ] msg` (Airflow 3 local runs; the
   bracketed word, any case) and `%(asctime)s %(levelname)s ...`
   (`2024-01-01 12:00:00,123 ERROR root: msg`, upper case).
4. At the start of the line: `<LEVEL>:` any case (`logging.basicConfig`'s
   `ERROR:root:msg`, CLI style `error: ...`), or an upper-case `<LEVEL>`
   followed by a space (`%(levelname)s %(message)s`).
5. `<LEVEL> - ` after a space: Airflow 2 `simple_log_format`
   `2024-01-01 12:00:00,123 ERROR - msg`, the logging cookbook's
   `%(asctime)s - %(name)s - %(levelname)s - %(message)s`, `%(levelname)-8s`
   padding, and Airflow's `colored_console_log` ANSI colours.
6. `[<LEVEL>]` or `| <LEVEL> |`, padding allowed (`[%(levelname)s]`,
   `[%(levelname)-8s]`, loguru's `| ERROR    |`).
7. logfmt `level=<LEVEL>` (or `level="<LEVEL>"`), not `loglevel=`.
8. A bare Python traceback (`Traceback (most recent call last):` at the
   start) is `error`: an uncaught exception printed by the interpreter.

`detect_many(entries)` gives the same for a chunk's entries at once: for
the two forms pods print (Airflow 2's `} LEVEL - `, Airflow 3's JSON
`"level"`), one C-level regex pass over the chunk finds every entry's level
word, and only entries it cannot settle go through `detect` one by one.

Level words, any of UPPER, lower or Title case: TRACE; DEBUG; INFO;
WARNING, WARN -> warning; ERROR, EXCEPTION -> error; CRITICAL, FATAL ->
critical. A word in position but not in this list (`[Errno 2]`, `- name -`)
is not a level, and detection goes on to the next form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import repeat

# How much of a line is examined. Airflow's prefix `[ts] {file.py:1234} LEVEL - `
# ends well inside 100 bytes; the rest of the head allows long logger names.
HEAD = 256

_NAMES = {
    "trace": "trace",
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
    "fatal": "critical",
}
# The same words as bytes, in the three spellings logs use.
_WORDS: dict[bytes, str] = {}
for _name, _level in _NAMES.items():
    for _spelling in (_name, _name.upper(), _name.capitalize()):
        _WORDS[_spelling.encode()] = _level
# Upper case only: the "LEVEL <space>" form at the start of a line, where a
# Title-case word is more often prose ("Error handling is on") than a level.
_UPPER = {w: lv for w, lv in _WORDS.items() if w.isupper()}

_AIRFLOW = re.compile(rb"\} ([A-Za-z]{4,9}) - ")
_JSON_LEVEL = re.compile(rb'"level(?:name)?"\s*:\s*"([A-Za-z]{1,16})"')
_ANSI = re.compile(rb"\x1b\[[0-9;]*m")
_LEAD = re.compile(rb"([A-Za-z]{4,9})([: ])")
# After "[" or "|": the word and the closing bracket or bar, padding allowed.
_BRACKETED = re.compile(rb" *([A-Za-z]{4,9}) *[\]|]")
# After "level=" (logfmt); the value may be quoted.
_LOGFMT_VALUE = re.compile(rb'"?([A-Za-z]{4,9})')
# Bytes that, before "level=", make it part of a longer key ("loglevel=").
_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")
# The byte before " - " when the level is padded (space) or coloured (the "m" of an ANSI reset).
_PAD_OR_COLOUR = frozenset(b" m")
_TRACEBACK = b"Traceback (most recent call last):"
# A timestamp at the line start, then `[level]` (structlog console) or an upper-case LEVEL.
_STAMPED = re.compile(rb"(?:\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?[.,\d]*(?:Z|[+-]\d\d:?\d\d)?"
                      rb"(?:\x1b\[[0-9;]*m)? (?:\[(?:\x1b\[[0-9;]*m)*([a-z]{4,9})|([A-Z]{4,9})\b)")


# detect_many's chunk forms, over single-line entries joined by b"\n": each
# match ends at its line's end (`.*` stops at a newline), so a line holds at
# most one match, and a chunk with exactly one match a line is aligned: the
# i-th word is the i-th entry's. The same forms as detect's first two (the
# JSON one's `\s` without the newline a single line cannot hold).
_AIRFLOW_LINE = re.compile(rb"\} ([A-Za-z]{4,9}) - .*")
_JSON_LINE = re.compile(rb'"level(?:name)?"[ \t\r\f\v]*:[ \t\r\f\v]*"([A-Za-z]{1,16})".*')


def detect_many(entries: Sequence[bytes], single_lines: bool = False,
                firsts: Sequence[bytes] | None = None) -> list[str | None]:
    """`[detect(e) for e in entries]`, for a chunk at once.

    `single_lines`: the caller knows no entry holds a newline (lines as a
    LineSplitter gives them, entries a merger did not join), or gives each
    entry's first line in `firsts` (a merger's entries: a traceback joined
    to its record); only then does the chunk form apply, to those lines.
    Entries it leaves unsettled (no form, a word that is no level, a line
    longer than HEAD, whose form may lie past the head) go through
    `detect`, so the result is always detect's: for the Airflow 2 form, the
    first hit in an entry is its first line's (the form holds no newline),
    and a JSON chunk takes the chunk form only when no entry was merged.
    """
    if firsts is None:
        if not single_lines:
            return list(map(detect, entries))
        firsts = entries
    words = _chunk_words(entries, firsts) if len(entries) >= 2 else None
    if words is None:
        return list(map(detect, entries))
    json = firsts[0][:2] == b'{"'
    if len(words) != len(entries):
        return list(map(detect, entries))
    found: list[str | None] = list(map(_WORDS.get, words))
    if None in found or (not json and max(map(len, firsts)) > HEAD):
        # Unsettled entries, one by one (JSON: a level in another spelling;
        # text: the head limit, or a word that is no level).
        for i, first in enumerate(firsts):
            if found[i] is None or (not json and len(first) > HEAD):
                found[i] = detect(entries[i])
    return found


def _chunk_words(entries: Sequence[bytes], firsts: Sequence[bytes]) -> list[bytes] | None:
    """The level word of each entry by a chunk form (one regex pass), or None when the
    chunk mixes JSON records and text, or a JSON entry was merged (detect_many)."""
    if firsts[0][:2] == b'{"':
        if firsts is not entries or not all(map(bytes.startswith, entries, repeat(b'{"'))):
            return None
        return _JSON_LINE.findall(b"\n".join(entries))
    if any(map(bytes.startswith, firsts, repeat(b'{"'))):
        return None
    return _AIRFLOW_LINE.findall(b"\n".join(firsts))


def normalize(name: str) -> str | None:
    """A level name as found in structured data (`"WARN"`, `"error"`) -> normalised, or None."""
    return _NAMES.get(name) or _NAMES.get(name.lower())


def detect(line: bytes) -> str | None:
    """The level `line` shows, normalised to lower case; None if none is recognised."""
    if line[:2] == b'{"':
        i = line.find(b'"level')
        while i >= 0:
            m = _JSON_LEVEL.match(line, i)
            if m is not None:
                return _WORDS.get(m[1]) or _NAMES.get(m[1].decode().lower())
            i = line.find(b'"level', i + 6)
        return None
    # Fast path, Airflow 2's own format "} LEVEL - ": one C-level scan. (A
    # "} LEVEL - " past the first line of a merged entry cannot be the first
    # hit: such a line starts an entry of its own.)
    m = _AIRFLOW.search(line, 0, HEAD)
    if m is not None:
        level = _WORDS.get(m[1])
        if level is not None:
            return level
    return _other_forms(line)


def _other_forms(line: bytes) -> str | None:
    # Complexity above 15 on purpose: every line of a format other than Airflow 2's
    # text (structlog console, plain logging) comes here, and the forms are tried
    # in order inline, cheapest first, instead of a Python call per form.
    end = line.find(b"\n", 0, HEAD)
    if end < 0:
        end = HEAD
    if line and (0x30 <= line[0] <= 0x39 or line[0] == 0x1B):
        m = _STAMPED.match(line, 0, end)
        if m is not None:
            level = _WORDS.get(m[1]) if m[1] is not None else _UPPER.get(m[2])
            if level is not None:
                return level
    m = _LEAD.match(line, 0, end)
    if m is not None:
        level = (_WORDS if m[2] == b":" else _UPPER).get(m[1])
        if level is not None:
            return level
    # " LEVEL - " after anything else.
    i = line.find(b" - ", 0, end)
    while i > 0:
        level = _WORDS.get(line[line.rfind(b" ", 0, i) + 1:i])
        if level is not None:
            return level
        if line[i - 1] in _PAD_OR_COLOUR:
            level = _before_dash(line, i)
            if level is not None:
                return level
        i = line.find(b" - ", i + 3, end)
    # "[LEVEL]", "| LEVEL |", then logfmt "level=LEVEL". (bytes.find is a
    # memchr-speed scan; a regex search over the line costs several times more.)
    for opener in (b"[", b"|"):
        i = line.find(opener, 0, end)
        while i >= 0:
            m = _BRACKETED.match(line, i + 1, end)
            if m is not None:
                level = _WORDS.get(m[1])
                if level is not None:
                    return level
            i = line.find(opener, i + 1, end)
    i = line.find(b"level=", 0, end)
    while i >= 0:
        if i == 0 or line[i - 1] not in _WORD_BYTES:
            m = _LOGFMT_VALUE.match(line, i + 6, end)
            if m is not None:
                level = _WORDS.get(m[1])
                if level is not None:
                    return level
        i = line.find(b"level=", i + 6, end)
    if line.startswith(_TRACEBACK):
        return "error"
    return None


def _before_dash(line: bytes, i: int) -> str | None:
    """The slow forms of "LEVEL - ": padded (`INFO     - `) or coloured (`\\x1b[31mERROR\\x1b[0m - `)."""
    word = line[max(0, i - 40):i]
    if b"\x1b" in word:
        word = _ANSI.sub(b"", word)
    word = word.rstrip(b" ")
    return _WORDS.get(word[word.rfind(b" ") + 1:])
