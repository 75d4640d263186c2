"""Line framing: bytes in, complete lines out. No IO (sans-IO, like h11's readers).

Lines end at `\\n`; a `\\r` before it is dropped (`\\r\\n` normalised). A line
longer than `max_line_bytes` is cut into pieces of at most that size, on a
UTF-8 character boundary where one exists, and each cut is counted. Invalid
UTF-8 is replaced with U+FFFD and counted. Output lines are `bytes` that are
valid UTF-8 and carry no terminator.
"""

from __future__ import annotations


class LineSplitter:
    """Feed chunks in any split; get back the same lines.

    `feed()` returns the lines completed by a chunk; `flush()` returns the last
    line when the input ended without a newline (EOF or shutdown).
    """

    __slots__ = ("max_line_bytes", "_partial", "split_lines", "invalid_utf8_lines")

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial = b""
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
        if len(partial) > self.max_line_bytes:
            # A line longer than the limit is shipped in pieces as it arrives,
            # so an endless line never holds memory beyond one piece.
            pieces = self._cut(partial)
            partial = pieces.pop()
            self.split_lines += len(pieces)
            lines.extend(pieces)
        self._partial = partial
        return self._clean(lines, buf, len(buf) - len(partial))

    def flush(self) -> list[bytes]:
        """Return the unterminated last line, if any (input has ended)."""
        if not self._partial:
            return []
        partial, self._partial = self._partial, b""
        return self._clean([partial], partial, len(partial))

    def _clean(self, lines: list[bytes], buf: bytes, end: int) -> list[bytes]:
        """Normalise `lines`, which are exactly `buf[:end]` split at newlines."""
        # Fast paths first: per-line Python work only when the chunk needs it.
        if buf.find(b"\r", 0, end) != -1:
            lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        if end > self.max_line_bytes:
            out: list[bytes] = []
            for ln in lines:
                if len(ln) > self.max_line_bytes:
                    pieces = self._cut(ln)
                    # The last piece of a cut line is a line end, not a cut.
                    self.split_lines += len(pieces) - 1
                    out.extend(pieces)
                else:
                    out.append(ln)
            lines = out
        try:
            # One C-speed validation of the whole chunk; the str is discarded.
            str(memoryview(buf)[:end], "utf-8")
        except UnicodeDecodeError:
            lines = [self._fix(ln) for ln in lines]
        return lines

    def _fix(self, line: bytes) -> bytes:
        try:
            line.decode("utf-8")
            return line
        except UnicodeDecodeError:
            self.invalid_utf8_lines += 1
            return line.decode("utf-8", "replace").encode("utf-8")

    def _cut(self, line: bytes) -> list[bytes]:
        """Cut `line` into pieces of at most max_line_bytes; the last may be short."""
        limit = self.max_line_bytes
        pieces = []
        start = 0
        while len(line) - start > limit:
            end = start + limit
            # Back up over UTF-8 continuation bytes (10xxxxxx), at most 3, so a
            # character is not cut in two; if none is found, cut at the limit.
            back = end
            while back > end - 3 and (line[back] & 0xC0) == 0x80:
                back -= 1
            if (line[back] & 0xC0) != 0x80 and back > start:
                end = back
            pieces.append(line[start:end])
            start = end
        pieces.append(line[start:])
        return pieces
