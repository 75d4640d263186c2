"""Line framing: bytes in, complete lines out. No IO (sans-IO, like h11's readers).

Lines end at `\\n`; a `\\r` right before it is dropped (`\\r\\n` normalised),
and so is a `\\r` that ends the input (the CR of a CRLF whose LF never came).
Invalid UTF-8 is replaced with U+FFFD (one per maximal invalid subsequence, as
Python and Go decode) and each line holding some is counted once. Then a line
longer than `max_line_bytes` is cut into pieces of at most that size, on
character boundaries, and each cut is counted. Replacing before cutting is what
keeps every piece within the limit: a U+FFFD takes 3 bytes where the invalid
byte took 1. (Below 4 bytes, a limit no config allows, a character wider than
the limit is a piece of its own rather than cut in two.)

Output lines are `bytes` that are valid UTF-8 and carry no terminator, and
they are the same however the input is split into chunks.
"""

from __future__ import annotations

import codecs

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class LineSplitter:
    """Feed chunks in any split; get back the same lines.

    `feed()` returns the lines completed by a chunk; `flush()` returns the last
    line when the input ended without a newline (EOF or shutdown).
    """

    __slots__ = ("max_line_bytes", "_partial", "_counted", "split_lines", "invalid_utf8_lines")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        # The unterminated line so far: raw bytes, or, once pieces of it have
        # been shipped, the cleaned rest plus any bytes not decodable yet.
        self._partial = b""
        # True when the unterminated line was already counted as invalid UTF-8
        # (its shipped pieces held some), so its end must not count it again.
        self._counted = False
        # Counters read by the caller (telemetry); never reset here.
        self.split_lines = 0
        self.invalid_utf8_lines = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held back until its newline arrives."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines that `data` completes, in order."""
        if not data:
            return []
        buf = self._partial + data if self._partial else data
        lines = buf.split(b"\n")
        partial = lines.pop()
        if lines:
            lines = self._clean(lines, buf, len(buf) - len(partial))
        if len(partial) > self.max_line_bytes:
            # A line longer than the limit is shipped in pieces as it arrives,
            # so an endless line never holds memory beyond about one piece.
            pieces, partial = self._ship_pieces(partial)
            lines += pieces
        self._partial = partial
        return lines

    def flush(self) -> list[bytes]:
        """Return the unterminated last line, if any (input has ended)."""
        if not self._partial:
            return []
        partial, self._partial = self._partial, b""
        return self._clean([partial], partial, len(partial))

    def _clean(self, lines: list[bytes], buf: bytes, end: int) -> list[bytes]:
        """Normalise complete `lines`, which are exactly `buf[:end]` split at newlines."""
        counted = self._counted
        if counted:
            self._counted = False  # the line it was about ends here
        # Fast paths first: per-line Python work only when the chunk needs it.
        if buf.find(b"\r", 0, end) != -1:
            lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        try:
            # One C-speed validation of the whole chunk; the str is discarded.
            # Valid as a whole means every line is valid: b"\n" is never part
            # of a multi-byte character.
            str(memoryview(buf)[:end], "utf-8")
        except UnicodeDecodeError:
            # Replacement may lengthen a line (U+FFFD is 3 bytes): check all.
            lines = self._replace_invalid(lines, counted)
        else:
            if end <= self.max_line_bytes:
                return lines
        if max(map(len, lines)) > self.max_line_bytes:
            lines = self._cut_lines(lines)
        return lines

    def _cut_lines(self, lines: list[bytes]) -> list[bytes]:
        """`lines` with each one longer than the limit cut into pieces (cuts counted)."""
        out: list[bytes] = []
        for ln in lines:
            if len(ln) > self.max_line_bytes:
                pieces = self._cut(ln)
                # The last piece of a cut line is a line end, not a cut.
                self.split_lines += len(pieces) - 1
                out += pieces
            else:
                out.append(ln)
        return out

    def _replace_invalid(self, lines: list[bytes], first_counted: bool) -> list[bytes]:
        """`lines` with invalid UTF-8 replaced by U+FFFD; counts each line that had some."""
        out = []
        for i, ln in enumerate(lines):
            try:
                ln.decode("utf-8")
            except UnicodeDecodeError:
                ln = ln.decode("utf-8", "replace").encode("utf-8")
                if i or not first_counted:
                    self.invalid_utf8_lines += 1
            out.append(ln)
        return out

    def _ship_pieces(self, partial: bytes) -> tuple[list[bytes], bytes]:
        """Pieces of the unterminated line `partial` that later bytes cannot change.

        Returns them (cuts counted) and what must stay pending. A trailing `\\r`
        stays pending: a `\\n` next would make it a CRLF, dropped. So does an
        incomplete character at the end, which the next chunk may complete.
        """
        body, held = (partial[:-1], b"\r") if partial.endswith(b"\r") else (partial, b"")
        # A \r next ends any character in progress, so decode to the end then.
        final = bool(held)
        decoder = _Utf8Decoder("strict")
        try:
            decoder.decode(body, final)
            tail = decoder.getstate()[0]
            clean = body[:len(body) - len(tail)]
        except UnicodeDecodeError:
            decoder = _Utf8Decoder("replace")
            clean = decoder.decode(body, final).encode("utf-8")
            tail = decoder.getstate()[0]
            if not self._counted:
                self._counted = True
                self.invalid_utf8_lines += 1
        if len(clean) <= self.max_line_bytes:
            return [], clean + tail + held
        pieces = self._cut(clean)
        # The last piece may still grow with the next chunk: it stays pending.
        rest = pieces.pop()
        self.split_lines += len(pieces)
        return pieces, rest + tail + held

    def _cut(self, line: bytes) -> list[bytes]:
        """Cut valid UTF-8 `line` into the longest runs of whole characters that fit.

        Every piece is at most max_line_bytes, except a single character wider
        than that (only with a limit below 4 bytes).
        """
        limit = self.max_line_bytes
        size = len(line)
        pieces = []
        start = 0
        while size - start > limit:
            end = start + limit
            # Back up over continuation bytes (10xxxxxx) to the first byte of
            # the character that does not fit; at most 3 in valid UTF-8.
            while end > start and (line[end] & 0xC0) == 0x80:
                end -= 1
            if end == start:
                # One character wider than the limit: keep it whole, not cut in two.
                end += 1
                while end < size and (line[end] & 0xC0) == 0x80:
                    end += 1
            pieces.append(line[start:end])
            start = end
        if start < size:
            pieces.append(line[start:])
        return pieces
