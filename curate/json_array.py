"""Stream the elements of a JSON array file without holding the file (or a parsed array) in memory.

A LLaVA or ShareGPT manifest is one JSON array of samples, often gigabytes. The scanner finds
the top-level structure only: where the array opens, the commas between its elements and
where it closes. It reads blocks of bytes and classifies them with numpy (a quote, a bracket
or a comma outside a string is structural; a quote after an odd run of backslashes is part of
a string), so a block costs a few vectorised passes and no Python work per byte. Each element
comes out as its own bytes, which the ingest stage parses (json.loads) as it parses a JSONL
line: a broken element is one reject at its real position, the others are kept.

UTF-8 is safe to scan byte by byte: every byte of a multi-byte character is >= 0x80, so none
of them is a quote, a bracket, a comma or a backslash.

Structural damage (a bracket that closes the array early, text after the array, a file that
ends inside it) makes every later element boundary uncertain; it raises JSONArrayError with
the byte offset instead of guessing.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

import numpy as np

#: bytes read per step: the scanner's arrays are a few times this size
BLOCK_BYTES = 4 << 20

_QUOTE, _OPEN, _CLOSE, _COMMA = 1, 2, 3, 4
_CLASS = np.zeros(256, dtype=np.uint8)
_CLASS[ord('"')] = _QUOTE
_CLASS[[ord("["), ord("{")]] = _OPEN
_CLASS[[ord("]"), ord("}")]] = _CLOSE
_CLASS[ord(",")] = _COMMA
_DELTA = np.array([0, 0, 1, -1, 0], dtype=np.int64)
_WHITESPACE = b" \t\r\n"


class JSONArrayError(ValueError):
    """The file is not one well-formed JSON array; the message names the byte offset."""


class ArrayScanner:
    """Top-level events of a JSON array, block by block.

    `feed(data, offset)` returns the events in `data` (whose first byte is at absolute byte
    `offset`) as (kind, offset) pairs: "open" (the array's `[`), "sep" (a comma between two
    elements) and "close" (the array's `]`). Start a scanner at the file's start, or, with
    `inside=True`, right after a top-level comma (a piece of manifest_chunks).
    """

    def __init__(self, inside: bool = False) -> None:
        self.depth = 1 if inside else 0  # nesting depth before the next byte
        self.in_string = False
        self.backslashes = 0  # backslashes that end the bytes fed so far
        self.opened = inside
        self.closed = False

    def feed(self, data: bytes, offset: int) -> list[tuple[str, int]]:
        if not data:
            return []
        cls = _CLASS[np.frombuffer(data, dtype=np.uint8)]
        quotes = np.flatnonzero(cls == _QUOTE)
        if len(quotes):
            quotes = quotes[~self._escaped(data, quotes)]
        marks = np.flatnonzero(cls > _QUOTE)
        events: list[tuple[str, int]] = []
        if len(marks):
            before = np.searchsorted(quotes, marks) + (1 if self.in_string else 0)  # quotes before each mark
            marks = marks[before % 2 == 0]  # outside every string
        if len(marks):
            kinds = cls[marks]
            delta = _DELTA[kinds]
            depth = self.depth + np.cumsum(delta) - delta  # depth before each mark
            top = (depth <= 0) | ((depth == 1) & (kinds != _OPEN))  # '[' or '{' at depth 1 opens an element
            if top.any():
                events = self._top_events(data, offset, marks[top], kinds[top], depth[top])
            self.depth = int(depth[-1] + delta[-1])
        if len(quotes) % 2:
            self.in_string = not self.in_string
        self._count_trailing_backslashes(data)
        return events

    def _escaped(self, data: bytes, quotes: np.ndarray) -> np.ndarray:
        """Which quotes follow an odd run of backslashes (escaped, part of a string).

        The runs are walked back one byte per step for all quotes at once: a step per
        backslash of the longest run, which is one or two in real text."""
        raw = np.frombuffer(data, dtype=np.uint8)
        run = np.zeros(len(quotes), dtype=np.int64)
        pos = quotes - 1
        active = pos >= 0
        active[active] = raw[pos[active]] == 0x5C
        active_idx = np.flatnonzero(active)
        while len(active_idx):
            run[active_idx] += 1
            pos[active_idx] -= 1
            inside = pos[active_idx] >= 0
            at_start = active_idx[~inside]  # the run reaches the block's start: add the carried run
            run[at_start] += self.backslashes
            active_idx = active_idx[inside]
            active_idx = active_idx[raw[pos[active_idx]] == 0x5C]
        if len(quotes) and quotes[0] == 0:
            run[0] += self.backslashes
        return run % 2 == 1

    def _count_trailing_backslashes(self, data: bytes) -> None:
        stripped = len(data) - len(data.rstrip(b"\\"))
        self.backslashes = self.backslashes + stripped if stripped == len(data) else stripped

    def _top_events(self, data: bytes, offset: int, marks: np.ndarray, kinds: np.ndarray,
                    depth: np.ndarray) -> list[tuple[str, int]]:
        events = []
        for pos, kind, d in zip(marks.tolist(), kinds.tolist(), depth.tolist()):
            where = offset + pos
            if d == 0:
                if kind != _OPEN or data[pos] != ord("[") or self.opened:
                    if self.opened:
                        raise JSONArrayError(f"byte {where}: {chr(data[pos])!r} after the array's "
                                             f"closing ']'")
                    raise JSONArrayError(f"byte {where}: {chr(data[pos])!r} where a JSON array should start "
                                         f"with '['")
                self.opened = True
                events.append(("open", where))
            elif d < 0:
                raise JSONArrayError(f"byte {where}: {chr(data[pos])!r} after the array's closing ']'")
            elif kind == _COMMA:
                events.append(("sep", where))
            elif kind == _CLOSE:
                if data[pos] != ord("]"):
                    raise JSONArrayError(f"byte {where}: '}}' closes the array (a '{{' is missing before it)")
                self.closed = True
                events.append(("close", where))
        return events


def _check_outside(data: bytes, start: int, end: int, offset: int, what: str) -> None:
    """Only whitespace (and a byte-order mark at the file's start) may stand outside the array."""
    text = data[start:end]
    stray = text.strip(_WHITESPACE + (b"\xef\xbb\xbf" if offset + start < 3 else b""))
    if stray:
        at = offset + start + text.index(stray[:1])
        raise JSONArrayError(f"byte {at}: {stray[:20]!r} {what}")


def iter_elements(f: BinaryIO, start: int = 0, end: int | None = None,
                  block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The raw bytes of each element (whitespace stripped) in bytes [start, end) of an array file.

    `f` is positioned at `start`: the file's start, or a piece start right after a top-level
    comma (curate.manifest.manifest_chunks). An element cut by `end` does not occur: pieces end
    right after a top-level comma or at the file's end. A piece that ends at the file's end
    must close the array. An empty slot (`[1,,2]`, `[1,]`) is an element of no bytes, which
    ingest rejects as invalid JSON.
    """
    scanner = ArrayScanner(inside=start > 0)
    parts: list[bytes] = []  # the element being read, when it spans blocks
    offset, open_ = start, start > 0
    seen_sep = start > 0  # after a comma, the slot before ']' is an element even when empty
    while end is None or offset < end:
        data = f.read(block_bytes if end is None else min(block_bytes, end - offset))
        if not data:
            break
        cut = 0  # where the current element begins in `data`
        for kind, where in scanner.feed(data, offset):
            pos = where - offset
            if kind == "open":
                _check_outside(data, 0, pos, offset, "before the array's '['")
                cut, open_ = pos + 1, True
                continue
            parts.append(data[cut:pos])
            element = b"".join(parts).strip(_WHITESPACE)
            parts = []
            if kind == "sep" or element or seen_sep:
                yield element
            seen_sep = seen_sep or kind == "sep"
            cut = pos + 1
            if kind == "close":
                open_ = False
        if scanner.closed:
            _check_outside(data, cut, len(data), offset, "after the array's closing ']'")
        elif open_:
            parts.append(data[cut:])
        else:
            _check_outside(data, cut, len(data), offset, "before the array's '['")
        offset += len(data)
    if end is None or not open_:
        if not scanner.opened:
            raise JSONArrayError("the file holds no JSON array")
        if not scanner.closed:
            raise JSONArrayError(f"byte {offset}: the file ends inside the array (is it complete?)")


def count_elements(f: BinaryIO, chunk_bytes: int,
                   block_bytes: int = BLOCK_BYTES) -> list[tuple[int, int, int]]:
    """One pass over an array file: pieces (start, end, elements) of about chunk_bytes each.

    Each piece but the last ends right after a top-level comma, so iter_elements can read it
    alone. Raises JSONArrayError where the file is not one well-formed array.
    """
    scanner = ArrayScanner()
    pieces: list[tuple[int, int, int]] = []
    start, n, offset = 0, 0, 0
    nonempty = False  # a byte other than whitespace stands between '[' and the first ',' or ']'
    while True:
        data = f.read(block_bytes)
        if not data:
            break
        was_open, was_closed = scanner.opened, scanner.closed
        events = scanner.feed(data, offset)
        first = events[0][1] - offset if events else len(data)  # the block's first event
        if not was_open:
            _check_outside(data, 0, first, offset, "before the array's '['")
        elif was_closed:
            _check_outside(data, 0, len(data), offset, "after the array's closing ']'")
        elif not nonempty:
            nonempty = bool(data[:first].strip(_WHITESPACE))
        for i, (kind, where) in enumerate(events):
            pos = where - offset
            nxt = events[i + 1][1] - offset if i + 1 < len(events) else len(data)
            if kind == "open":
                nonempty = bool(data[pos + 1:nxt].strip(_WHITESPACE))
            elif kind == "sep":
                n, nonempty = n + 1, True
                if where + 1 - start >= chunk_bytes:
                    pieces.append((start, where + 1, n))
                    start, n = where + 1, 0
            else:
                _check_outside(data, pos + 1, len(data), offset, "after the array's closing ']'")
        offset += len(data)
    if not scanner.opened:
        raise JSONArrayError("the file holds no JSON array")
    if not scanner.closed:
        raise JSONArrayError(f"byte {offset}: the file ends inside the array (is it complete?)")
    pieces.append((start, offset, n + (1 if nonempty else 0)))
    return pieces
