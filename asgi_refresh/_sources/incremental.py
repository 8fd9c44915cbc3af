"""JSON parsed a slice at a time, so that a big document never holds the event loop for long.

``json.loads`` holds the GIL for the whole parse (35 ms for 5 MB), in a thread
or not, and so does every parser that builds Python objects (orjson, msgspec).
What keeps requests flowing is handing the loop back between slices: ijson's C
tokenizer (yajl2_c, ``pip install 'asgi-refresh[big-json]'``) takes the body
``SLICE`` bytes at a time and hands us its events, and the values are built
here. Not ijson's own builder: it keeps the path of every open container, so
its memory grows with the square of the nesting depth (20,000 ``[`` cost it
1 GB); ours keeps one stack entry per level and gives up past `MAX_DEPTH`.

Only a document `json.loads` would return the very same value for is built
here. Whenever yajl and the standard library could disagree (yajl refuses,
NaN, an integer too big for C, a byte order mark, a lone surrogate escape that
yajl turns into ``?``, a vertical tab it counts as white space, nesting too
deep), `Fallback` is raised and the caller parses with ``json.loads``: the same
value, or the same error with its line and column, as without the extra.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Iterable
from typing import Any

SLICE = 16 * 1024
"""Bytes tokenized and built per step: about half a millisecond, between two looks at the event loop."""

MAX_DEPTH = 512
"""Deepest nesting built here; deeper documents go to ``json.loads`` (which refuses past about 1,000)."""

# yajl takes \v and \f for white space; JSON does not, and outside strings or in
# them these bytes are never valid: such a document is the standard library's to refuse.
_NOT_JSON = (b"\x0b", b"\x0c")
# yajl decodes a high surrogate escape with no low one after it as "?": where there
# is any high escape not followed by a low one, the standard library decides.
_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_LONGEST_PAIR = 12


class Fallback(Exception):
    """This document is for ``json.loads`` to parse (or refuse, with the position)."""


@functools.cache
def tokenizer() -> tuple[Any, Any] | None:
    """The C tokenizer of ijson and its event list, or None without them.

    Imported once, on first use: ``import asgi_refresh`` does not load it.
    """
    try:
        backend = importlib.import_module("ijson.backends.yajl2_c")
        utils = importlib.import_module("ijson.utils")
    except ImportError:  # not installed, or built without its C extension: too slow to help
        return None
    return backend.basic_parse_coro, utils.sendable_list


def available() -> bool:
    """Whether big JSON documents are parsed incrementally here (``asgi-refresh[big-json]``)."""
    return tokenizer() is not None


class IncrementalJSON:
    """One JSON document, fed slice by slice: `feed` each slice in order, then `close`.

    Raises `Fallback` (from any call) when ``json.loads`` must decide instead.
    """

    def __init__(self, body: bytes) -> None:
        found = tokenizer()
        if found is None:
            raise Fallback("ijson's C backend is not installed")
        if json.detect_encoding(body[:4]) != "utf-8":  # UTF-16/32, or a BOM: json.loads knows them
            raise Fallback("not plain UTF-8")
        self._body = body
        # The value must end with the last byte that is not white space: yajl lets an
        # unfinished token after the value go (`[]"`), json.loads does not.
        self._last = len(body.rstrip(b" \t\n\r")) - 1
        basic_parse_coro, sendable_list = found
        self._events: list[tuple[str, Any]] = sendable_list()
        self._coro = basic_parse_coro(self._events, use_float=True)
        self._stack: list[Any] = []  # the open containers, outermost first
        self._keys: list[Any] = []  # per open container: the key of the next value (dicts)
        self._done = False
        self._root: Any = None

    def feed(self, start: int, end: int) -> None:
        """Tokenize ``body[start:end]`` and build what it completes (slices in order, none skipped)."""
        end = min(end, len(self._body))
        if start <= self._last < end:
            self._send(start, self._last)
            self._send(self._last, end)
        else:
            self._send(start, end)

    def _send(self, start: int, end: int) -> None:
        if self._done and start <= self._last:
            raise Fallback("something after the value")
        piece = self._body[start:end]
        if any(byte in piece for byte in _NOT_JSON) or self._lone_high(start, end):
            raise Fallback("not for yajl")
        try:
            self._coro.send(piece)
        except Exception as exc:  # yajl's errors quote the document: json.loads says where instead
            raise Fallback(type(exc).__name__) from None
        self._build(self._events)
        self._events.clear()

    def close(self) -> Any:
        """The document's value, once every slice was fed."""
        try:
            self._coro.close()
        except Exception as exc:
            raise Fallback(type(exc).__name__) from None
        self._build(self._events)
        self._events.clear()
        if not self._done:  # an empty body: yajl may say nothing
            raise Fallback("no value")
        return self._root

    def _lone_high(self, start: int, end: int) -> bool:
        r"""Whether a high surrogate escape starting in ``[start, end)`` has no low one after it.

        Counted on the whole body so that an escape cut by a slice's end is seen
        whole. Text that only looks like an escape (``\\ud800``, an escaped
        backslash) may be counted: then ``json.loads`` parses, which is only slower.
        """
        if b"\\u" not in self._body[start : end + 1]:
            return False
        stop = min(end + _LONGEST_PAIR, len(self._body))
        highs = sum(1 for found in _HIGH.finditer(self._body, start, stop) if found.start() < end)
        pairs = sum(1 for found in _PAIR.finditer(self._body, start, stop) if found.start() < end)
        return highs != pairs

    def _build(self, events: Iterable[tuple[str, Any]]) -> None:
        # One loop over yajl's events, with the dispatch inlined: this is where the
        # CPU goes (about four times json.loads), so no call per event.
        stack, keys = self._stack, self._keys
        for event, value in events:
            if event == "map_key":
                keys[-1] = value
                continue
            if event == "end_map" or event == "end_array":
                done = stack.pop()
                keys.pop()
                if not stack:
                    self._finish(done)
                continue
            if event == "start_map" or event == "start_array":
                item: Any = {} if event == "start_map" else []
                opened = True
            else:
                item, opened = value, False
            if stack:
                top = stack[-1]
                if type(top) is list:
                    top.append(item)
                else:
                    top[keys[-1]] = item
            elif not opened:
                if type(item) is not str:
                    # yajl ends a bare number at whatever byte follows it (`1"`), which
                    # json.loads refuses: a document that is one scalar is small, its call.
                    raise Fallback("a bare number or literal")
                self._finish(item)
            if opened:
                if len(stack) >= MAX_DEPTH:
                    raise Fallback("nested too deep")
                stack.append(item)
                keys.append(None)

    def _finish(self, value: Any) -> None:
        if self._done:  # yajl refuses a second value; never build past one
            raise Fallback("more than one value")
        self._root, self._done = value, True
