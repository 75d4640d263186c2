"""Loki push encoding: streams in, compressed protobuf bytes out (snappy framing, gzip by default). No IO.

The five messages of Loki's push.proto (proto/push.proto) are written by hand:
the shipper never builds a message object per line, which keeps the protobuf
runtime (and its memory) off the hot path. The tests decode every byte this
module produces with the protobuf library compiled from proto/push.proto, and
pin the output against golden bytes.

Wire layout (field number << 3 | wire type 2 = length-delimited, 0 = varint):
  PushRequest   0x0a streams
  StreamAdapter 0x0a labels, 0x12 entries
  EntryAdapter  0x0a timestamp, 0x12 line, 0x1a structuredMetadata
  Timestamp     0x08 seconds, 0x10 nanos  (zero values omitted, as proto3 does)
  LabelPair     0x0a name, 0x12 value
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import add, mul

_SMALL = [bytes((i,)) for i in range(128)]
_CONT = [bytes((i | 0x80,)) for i in range(128)]  # varint byte with "more follows"
_NS = 1_000_000_000


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def encode_metadata(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Encoded `structuredMetadata` fields, appended as-is to each entry of a stream."""
    out = b""
    for name, value in pairs:
        pair = _field(b"\x0a", name.encode()) + _field(b"\x12", value.encode()) if value else _field(b"\x0a", name.encode())
        out += _field(b"\x1a", pair)
    return out


def _len_prefix(n: int) -> bytes:
    """varint(n) with the common one- and two-byte cases inlined (hot path)."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    return varint(n)


def encode_entries(lines: Sequence[bytes], first_ts: int, metadata: bytes | Sequence[bytes] = b"") -> bytes:
    """Encoded `entries` fields for `lines`, stamped first_ts, first_ts+1, ... (ns).

    Lines must be valid UTF-8 without terminator (shipper.framing guarantees it).
    Consecutive nanoseconds keep every timestamp of a stream distinct, so Loki
    never collapses two identical lines read at the same instant (FACTS §4).
    `metadata` is the encoded structured metadata of every entry, or a list
    with each entry's own (levels).
    """
    if len(lines) > 1:
        return _entries_by_slots(lines, first_ts, metadata)
    return _entries_by_loop(lines, first_ts, metadata)


# An entry as _entries_by_slots lays it out: five slots of the join.
_SLOTS = 5


def _entries_by_slots(lines: Sequence[bytes], first_ts: int, metadata: bytes | Sequence[bytes]) -> bytes:
    """encode_entries, the whole chunk by C-level slice assignments (the shipper's hottest code).

    An entry is `head(len) | nanos varint | line field tag and length(len) |
    line | metadata`, where only the nanos varint's first byte changes from
    one entry to the next: its other bytes (nanos >> 7) change every 128
    entries, and so do the seconds (10**9 is a multiple of 128), so a group
    of up to 128 entries shares them. The heads and length fields are built
    once per distinct line length (and metadata length), and each slot of
    the final join is filled for all entries at once: 433 -> 227 ns per
    line with a task's metadata (benchmarks, timeit), half the loop's cost.
    The first 128 ns of a second (a one-byte or omitted nanos field) take
    the loop.
    """
    n = len(lines)
    lens = list(map(len, lines))
    distinct = set(lens)
    # A head's key: the line length (one metadata for all: `fixed` bytes); or, with
    # metadata per entry, the line and metadata lengths summed when every line's
    # length prefix has the same size (`prefix` bytes: the usual chunk), else both
    # lengths in one int.
    fixed = prefix = -1
    if isinstance(metadata, bytes):
        each: Iterable[bytes] = repeat(metadata, n)
        keys = lens
        fixed = len(metadata)
    else:
        each = metadata
        longest = max(distinct)
        if longest < 0x80 or 0x80 <= min(distinct) and longest < 0x4000:
            prefix = 1 if longest < 0x80 else 2
            keys = list(map(add, lens, map(len, metadata)))
        else:
            keys = list(map(add, map(mul, lens, repeat(1 << 32)), map(len, metadata)))
    parts: list[bytes] = [b""] * (_SLOTS * n)
    parts[3::_SLOTS] = lines
    parts[4::_SLOTS] = each
    tails = {length: b"\x12" + varint(length) for length in distinct}
    parts[2::_SLOTS] = map(tails.__getitem__, lens)
    sec, nanos = divmod(first_ts, _NS)
    i = 0
    heads_for = -1
    heads: dict[int, bytes] = {}
    while i < n:
        if nanos >= _NS:
            sec += 1
            nanos -= _NS
        hi = nanos >> 7
        lo = nanos & 0x7F
        k = min(n - i, 128 - lo)  # entries sharing nanos >> 7 (and the second)
        end = i + k
        start = _SLOTS * i
        if not hi:  # the first 128 ns of a second (a one-byte or omitted nanos field): the loop's
            parts[start:_SLOTS * end] = [_entries_by_loop(lines[i:end], sec * _NS + nanos, metadata if
                                                          isinstance(metadata, bytes) else metadata[i:end])]
            parts[start + 1:start + 1] = [b""] * (_SLOTS * k - 1)
            i = end
            nanos += k
            continue
        rest = varint(hi)
        ts_len = (1 + len(varint(sec)) if sec else 0) + 2 + len(rest)
        group_key = sec * 16 + ts_len
        if group_key != heads_for:  # a new second or varint length: every few hundred ms at most
            heads_for = group_key
            sec_field = (b"\x08" + varint(sec) if sec else b"") + b"\x10"
            heads = {}
            for key in set(keys):
                if prefix > 0:  # key: line + metadata length
                    size = 2 + ts_len + 1 + prefix + key
                else:
                    length, md_len = (key, fixed) if fixed >= 0 else divmod(key, 1 << 32)
                    size = 2 + ts_len + 1 + len(varint(length)) + length + md_len
                heads[key] = b"\x12" + varint(size) + b"\x0a" + _SMALL[ts_len] + sec_field
        parts[start:_SLOTS * end:_SLOTS] = map(heads.__getitem__, keys[i:end])
        parts[start + 1:_SLOTS * end:_SLOTS] = map(bytes.__add__, _CONT[lo:lo + k], repeat(rest, k))
        i = end
        nanos += k
    return b"".join(parts)


def _entries_by_loop(lines: Sequence[bytes], first_ts: int, metadata: bytes | Sequence[bytes] = b"") -> bytes:
    """encode_entries one entry at a time (a first stamp with nanos < 128, or one line)."""
    # This loop is the shipper's hottest code. The timestamp's varint is built
    # from a cached high part (nanos >> 7, which changes every 128 lines) plus
    # a low byte from a table; each entry is then one bytes %-format, its two
    # length prefixes given as table bytes (one or two each), so the line and
    # its metadata are copied once here and once by the final join (building
    # the entry body first, then prefixing it, copied them twice: 665 -> 421
    # ns per line with an Airflow task's metadata, measured).
    parts: list[bytes] = []
    append = parts.append
    small, cont = _SMALL, _CONT
    sec, nanos = divmod(first_ts, _NS)
    hi_n = -1
    head = hi = b""
    ts_len = 0
    each = repeat(metadata) if isinstance(metadata, bytes) else metadata
    for line, md in zip(lines, each):
        if nanos >= _NS:
            sec += 1
            nanos -= _NS
        if nanos >> 7 != hi_n:
            hi_n = nanos >> 7
            prefix = (b"\x08" + varint(sec) if sec else b"") + b"\x10"
            hi = varint(hi_n)
            head = b"\x0a" + small[len(prefix) + 1 + len(hi)] + prefix
            ts_len = len(head) + 1 + len(hi)
        if not hi_n:  # nanos < 128: a one-byte or omitted field; rare, keep it simple
            ts_body = (b"\x08" + varint(sec) if sec else b"") + (b"\x10" + small[nanos] if nanos else b"")
            body = b"\x0a%b%b\x12%b%b%b" % (small[len(ts_body)], ts_body, _len_prefix(len(line)), line, md)
            append(b"\x12" + _len_prefix(len(body)) + body)
            nanos += 1
            continue
        n = len(line)
        if n < 0x80:
            l1, l2 = small[n], b""
        elif n < 0x4000:
            l1, l2 = cont[n & 0x7F], small[n >> 7]
        else:
            l1, l2 = varint(n), b""
        size = ts_len + 1 + len(l1) + len(l2) + n + len(md)
        if size < 0x80:
            s1, s2 = small[size], b""
        elif size < 0x4000:
            s1, s2 = cont[size & 0x7F], small[size >> 7]
        else:
            s1, s2 = varint(size), b""
        append(b"\x12%b%b%b%b%b\x12%b%b%b%b" % (s1, s2, head, cont[nanos & 0x7F], hi, l1, l2, line, md))
        nanos += 1
    return b"".join(parts)


def encode_entries_each(lines: Sequence[bytes], timestamps: Sequence[int] | None, first_ts: int,
                        metadata: Sequence[bytes]) -> bytes:
    """Encoded `entries` where each line has its own structured metadata (`metadata[i]`)
    and, when `timestamps` is given, its own time (else first_ts, first_ts+1, ...).

    The general form of `encode_entries` for processed sources (levels, CRI and
    JSON times): one call per run of lines instead of one per line.
    """
    if timestamps is None:
        return encode_entries(lines, first_ts, metadata)
    parts: list[bytes] = []
    append = parts.append
    small, cont = _SMALL, _CONT
    last_sec = -1
    sec_field = b""
    for line, t, md in zip(lines, timestamps, metadata):
        sec, nanos = divmod(t, _NS)
        if sec != last_sec:  # seconds change rarely: encode them once
            last_sec = sec
            sec_field = b"\x08" + varint(sec) if sec else b""
        if nanos >= 1 << 28:  # the usual case: a 5-byte varint, built in one call
            nanos_field = bytes((0x10, (nanos & 0x7F) | 0x80, (nanos >> 7 & 0x7F) | 0x80,
                                 (nanos >> 14 & 0x7F) | 0x80, (nanos >> 21 & 0x7F) | 0x80, nanos >> 28))
        else:
            nanos_field = b"\x10" + varint(nanos) if nanos else b""
        ts_len = len(sec_field) + len(nanos_field)  # at most 17: a one-byte length
        # As in encode_entries: the whole entry in one %-format (inlined, not a
        # helper: a call per line would cost what this saves).
        n = len(line)
        if n < 0x80:
            l1, l2 = small[n], b""
        elif n < 0x4000:
            l1, l2 = cont[n & 0x7F], small[n >> 7]
        else:
            l1, l2 = varint(n), b""
        size = 2 + ts_len + 1 + len(l1) + len(l2) + n + len(md)
        if size < 0x80:
            s1, s2 = small[size], b""
        elif size < 0x4000:
            s1, s2 = cont[size & 0x7F], small[size >> 7]
        else:
            s1, s2 = varint(size), b""
        append(b"\x12%b%b\x0a%b%b%b\x12%b%b%b%b" % (s1, s2, small[ts_len], sec_field, nanos_field, l1, l2, line, md))
    return b"".join(parts)


def encode_push(streams: Iterable[tuple[str, bytes | Sequence[bytes]]]) -> bytes:
    """Uncompressed PushRequest from (label string, encoded entries) pairs.

    Entries may be given as a list of encoded chunks: the body is then built
    with a single copy of them (a 1 MiB batch is not copied three times).
    """
    return b"".join(_push_pieces(streams))


def _push_pieces(streams: Iterable[tuple[str, bytes | Sequence[bytes]]]) -> list[bytes]:
    """The PushRequest's bytes in order, as pieces: each stream's head, then its entry chunks."""
    pieces: list[bytes] = []
    for labels, entries in streams:
        chunks = (entries,) if isinstance(entries, bytes) else entries
        label_field = _field(b"\x0a", labels.encode())
        pieces.append(b"\x0a" + varint(len(label_field) + sum(map(len, chunks))) + label_field)
        pieces += chunks
    return pieces


# How a push body is compressed ([loki] compression, shipper.config.COMPRESSIONS). Loki reads a protobuf
# push as snappy's block format, after undoing a Content-Encoding: gzip
# (verified on 3.4.6 and 2.7.7). Measured on a 500-line batch of Airflow 2
# lines (101,557 bytes of protobuf; README "Footprint"):
#   "gzip"   snappy framing, then gzip level 1: 4,485 bytes, 139 us, no extra memory
#            (zlib is in the standard library): the default;
#   "snappy" real snappy (python-snappy, the `snappy` extra): 8,350 bytes, 19 us,
#            but cramjam's native library adds about 1.8 MiB RSS at the first push,
#            a tenth of the pod's budget;
#   "none"   snappy framing only: 101,557 bytes, one copy.
GZIP_MAGIC = b"\x1f\x8b"  # a gzip member's first bytes; no snappy block starts so (see compress)


def compress(body: bytes, method: str = "gzip") -> bytes:
    """The push body of an uncompressed PushRequest, as `method` ("gzip", "snappy", "none") sends it.

    Every result is self-describing, so bodies kept in the spool replay
    whatever the setting is now: a gzip member starts with GZIP_MAGIC and is
    sent with `Content-Encoding: gzip` (`content_encoding`); a snappy block
    never does (its first element after the length can only be a literal,
    tag byte 0bxxxxxx00, and 0x8b is not one).
    """
    if method == "gzip":
        return _gzip_frame((body,))
    if method == "snappy":
        import snappy  # the optional extra (config refuses "snappy" without it)

        result: bytes = snappy.compress(body)
        return result
    if method == "none":
        return snappy_frame(body)
    raise ValueError(f"unknown compression {method!r}: use gzip, snappy or none")


def compress_push(streams: Iterable[tuple[str, bytes | Sequence[bytes]]], method: str = "gzip") -> bytes:
    """`compress(encode_push(streams), method)`, and for gzip without the uncompressed body.

    gzip is fed the snappy frame's head, each stream's head and its entry
    chunks one by one, so the PushRequest is never assembled: a 1 MiB batch
    no longer holds the body and its snappy frame (two more copies of it)
    beside the chunks while it is compressed.
    """
    if method != "gzip":
        return compress(encode_push(streams), method)
    return _gzip_frame(_push_pieces(streams))


def _gzip_frame(pieces: Sequence[bytes]) -> bytes:
    """snappy_frame of the pieces joined, gzipped, without joining them: zlib is fed each in turn."""
    import zlib  # the standard library's; imported on first push

    gz = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1; wbits 31: a gzip member, as Content-Encoding means
    out = [gz.compress(_frame_head(sum(map(len, pieces))))]
    out += map(gz.compress, pieces)
    out.append(gz.flush())
    return b"".join(out)


def content_encoding(body: bytes) -> bytes | None:
    """The Content-Encoding header a body from `compress` is sent with (None: none)."""
    return b"gzip" if body[:2] == GZIP_MAGIC else None


def snappy_frame(body: bytes) -> bytes:
    """`body` in snappy's block format, uncompressed: its length, then one literal holding it all.

    Valid snappy that every decoder reads (Loki's golang/snappy, python-snappy),
    at the cost of one copy: gzip does the compressing (or nothing does).
    """
    return _frame_head(len(body)) + body


def _frame_head(n: int) -> bytes:
    """The bytes before an `n`-byte body in snappy_frame: its length, and the literal's tag."""
    if n == 0:
        return b"\x00"
    m = n - 1
    if m < 60:
        return varint(n) + bytes((m << 2,))
    size = (m.bit_length() + 7) // 8  # 1-4 bytes of length - 1, little-endian, tag 60-63
    return varint(n) + bytes(((59 + size) << 2,)) + m.to_bytes(size, "little")


def uncompress(body: bytes) -> bytes:
    """Inverse of `compress`, whichever method made the body (413 splitting, partial resends, console sink).

    ValueError when the body is corrupt, whichever layer is.
    """
    if body[:2] == GZIP_MAGIC:
        import zlib

        try:
            body = zlib.decompress(body, 31)
        except zlib.error as e:
            raise ValueError(f"gzip: {e}") from None
    return unsnappy(body)


def unsnappy(block: bytes) -> bytes:
    """Decode snappy's block format (any snappy encoder's; not the framed format). ValueError if corrupt.

    Pure Python, for the paths that reopen a push (not the hot path): a
    literal costs a slice, a copy a slice or a repeat.
    """
    try:
        return _unsnappy(block)
    except IndexError:
        raise ValueError("snappy: the block ends inside an element") from None


def _unsnappy(block: bytes) -> bytes:
    n, i = _read_varint(block, 0)
    end = len(block)
    if i < end and (block[i] & 3) == 0:  # fast path: one literal holding everything (snappy_frame)
        length, j = _literal_length(block, i)
        if j + length == end == j + n:
            return block[j:]
    out = bytearray()
    while i < end:
        tag = block[i]
        kind = tag & 3
        if kind == 0:
            length, i = _literal_length(block, i)
            if i + length > end:
                raise ValueError("snappy: a literal runs past the end")
            out += block[i:i + length]
            i += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | block[i + 1]
            i += 2
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(block[i + 1:i + 3], "little")
            i += 3
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(block[i + 1:i + 5], "little")
            i += 5
        if i > end:
            raise ValueError("snappy: the block ends inside a copy")
        if not 0 < offset <= len(out):
            raise ValueError("snappy: a copy reaches before the start")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # the copy overlaps what it writes: its first `offset` bytes repeat
            out += (bytes(out[start:]) * (length // offset + 1))[:length]
    if len(out) != n:
        raise ValueError(f"snappy: {len(out)} bytes decoded, the block says {n}")
    return bytes(out)


def _literal_length(block: bytes, i: int) -> tuple[int, int]:
    """(length, index of its first byte) of the literal whose tag is at `i`."""
    code = block[i] >> 2
    if code < 60:
        return code + 1, i + 1
    size = code - 59
    if i + 1 + size > len(block):
        raise ValueError("snappy: the block ends inside a literal's length")
    return int.from_bytes(block[i + 1:i + 1 + size], "little") + 1, i + 1 + size


def split_push(body: bytes) -> tuple[tuple[bytes, int, int], tuple[bytes, int, int]] | None:
    """Split an uncompressed PushRequest into two halves by entry count (Loki said 413).

    Entries keep their exact bytes (timestamps included) and their order within
    each stream. Returns ((body, lines, line_bytes), ...) for each half, or None
    when there is a single entry, which cannot be split.
    """
    entries = [(labels, entry) for labels, raw in push_streams(body) for entry in raw]
    if len(entries) < 2:
        return None
    half = len(entries) // 2
    return _encode_part(entries[:half]), _encode_part(entries[half:])


def _encode_part(entries: list[tuple[bytes, bytes]]) -> tuple[bytes, int, int]:
    by_stream: dict[bytes, list[bytes]] = {}
    for labels, entry in entries:
        by_stream.setdefault(labels, []).append(entry)
    body = b"".join(encode_stream(labels, raw) for labels, raw in by_stream.items())
    return body, len(entries), sum(entry_facts(entry)[1] for _, entry in entries)


def push_streams(body: bytes) -> list[tuple[bytes, list[bytes]]]:
    """(labels, raw EntryAdapter bytes) of each stream of an uncompressed PushRequest.

    For answers that name entries (shipper.delivery): not on the hot path.
    """
    out = []
    for _, _, stream in _fields(body):
        labels = b""
        raw: list[bytes] = []
        for num, _, value in _fields(stream):
            if num == 1:
                labels = value
            elif num == 2:
                raw.append(value)
        out.append((labels, raw))
    return out


def encode_stream(labels: bytes, raw_entries: Sequence[bytes]) -> bytes:
    """A PushRequest's `streams` field from a label string and raw EntryAdapter bytes."""
    return _field(b"\x0a", _field(b"\x0a", labels) + b"".join(_field(b"\x12", e) for e in raw_entries))


def entry_facts(raw: bytes) -> tuple[int, int, int]:
    """(timestamp ns, line bytes, bytes as Loki's rate limits count them) of a raw EntryAdapter.

    Loki counts a line and its structured metadata names and values
    (util.EntryTotalSize): with a task's run_id and try_number that is often
    twice the line.
    """
    ts = size = meta = 0
    for num, _, value in _fields(raw):
        if num == 1:
            for tnum, tval, _ in _fields(value):
                ts += tval * _NS if tnum == 1 else tval
        elif num == 2:
            size = len(value)
        elif num == 3:
            meta += sum(len(v) for _, _, v in _fields(value))
    return ts, size, size + meta


# --- decoding, for the console sink only (tests use the protobuf library) ---

def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, index after it) of the varint at `i`; ValueError if the buffer ends inside it."""
    n = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("the message ends inside a varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, varint value, bytes value) for each field of a message."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        if key & 7 == 0:
            value, i = _read_varint(buf, i)
            yield key >> 3, value, b""
        elif key & 7 == 2:
            n, i = _read_varint(buf, i)
            if i + n > len(buf):
                raise ValueError("the message ends inside a field")
            yield key >> 3, 0, buf[i:i + n]
            i += n
        else:
            raise ValueError(f"unexpected wire type {key & 7}")


def decode_push(body: bytes) -> list[dict[str, object]]:
    """Decode an uncompressed PushRequest into plain data (console sink)."""
    streams: list[dict[str, object]] = []
    for _, _, stream in _fields(body):
        labels = ""
        entries = []
        for num, _, value in _fields(stream):
            if num == 1:
                labels = value.decode()
            elif num == 2:
                entries.append(_decode_entry(value))
        streams.append({"labels": labels, "entries": entries})
    return streams


def _decode_entry(buf: bytes) -> dict[str, object]:
    ts = 0
    line = ""
    meta = {}
    for num, _, value in _fields(buf):
        if num == 1:
            for tnum, tval, _ in _fields(value):
                ts += tval * _NS if tnum == 1 else tval
        elif num == 2:
            line = value.decode()
        elif num == 3:
            pair = {n: v for n, _, v in _fields(value)}
            meta[pair.get(1, b"").decode()] = pair.get(2, b"").decode()
    return {"ts": ts, "line": line, "metadata": meta}
