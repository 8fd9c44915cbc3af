"""Content codings undone within a byte budget: a compression bomb costs no more than the cap.

A body is decoded here, never by httpx (which inflates each network chunk in full:
1.8 kB of ``gzip, gzip`` become 2 GB in one call). Every coding of the stack is
undone in slices of at most `SLICE` bytes of output, each slice handed to the next
coding before the following one is made, so memory stays within the cap plus a
constant, and the caller gets control back after every slice (to let the event
loop run). A coding is only supported when its library can bound the output of
one call:

- ``gzip``, ``x-gzip``, ``deflate`` (zlib-wrapped or raw): ``zlib``'s
  ``decompressobj().decompress(data, max_length)``.
- ``br``: ``brotli`` (or ``brotlicffi``) 1.2 or later,
  ``Decompressor.process(data, output_buffer_limit=...)`` with
  ``can_accept_more_data()``. Older versions inflate a whole chunk at once.
- ``zstd``: ``compression.zstd`` (Python 3.14) or its backport ``backports.zstd``,
  ``ZstdDecompressor.decompress(data, max_length)``, with the 8 MiB window limit
  of RFC 9659. The ``zstandard`` package has no bounded call and is not used.

Only what is supported here is advertised in ``Accept-Encoding`` (`accept_encoding`);
anything else a server sends anyway is refused with an error naming the coding.
"""

from __future__ import annotations

import functools
import importlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from asgi_refresh._sources.outcome import SourceError
from asgi_refresh._sources.parsing import too_big
from asgi_refresh._text import printable

SLICE = 64 * 1024
"""Most bytes one step decodes: about 0.1 ms of inflating, between two looks at the event loop."""

MAX_CODINGS = 4
"""Most codings undone for one body: each costs a decoder's state (zlib: 40 kB, brotli: up to 16 MiB)."""

_ZSTD_WINDOW_LOG_MAX = 23  # RFC 9659: the zstd content coding's window is at most 8 MiB
_GZIP_MAGIC = b"\x1f\x8b"


def codings(values: Iterable[str]) -> list[str]:
    """The content codings of ``Content-Encoding`` header lines, in the order they were applied.

    Several lines count as one comma-separated list, in order (RFC 9110 §5.3).
    Tokens are case-insensitive and returned lower-cased; empty items and
    ``identity`` (no coding) are dropped.
    """
    found = []
    for value in values:
        for item in value.split(","):
            token = item.strip(" \t").lower()
            if token and token != "identity":
                found.append(token)
    return found


class _Stage(Protocol):
    """One coding being undone: give it input when it wants some, take output in bounded slices."""

    started: bool  # it was given input
    done: bool  # its stream ended (a truncated stream never is)

    @property
    def wants_input(self) -> bool: ...

    def give(self, data: bytes) -> None: ...

    def take(self, limit: int) -> bytes:
        """At most about ``limit`` decoded bytes; empty when it wants input or is done."""
        ...


class _Zlib:
    """gzip (several members, as RFC 1952 allows) or deflate, zlib-wrapped or raw."""

    def __init__(self, coding: str) -> None:
        self._gzip = coding != "deflate"
        # "deflate" is often sent raw, without the zlib header (httpx allows it too):
        # which one is told from the first two bytes, however the network splits them.
        self._wbits: int | None = 16 + zlib.MAX_WBITS if self._gzip else None
        self._zlib = zlib.decompressobj(self._wbits or zlib.MAX_WBITS)
        self._input = b""
        self._calls = 0
        self.started = self.done = False

    @property
    def wants_input(self) -> bool:
        return not self._input or (self._wbits is None and len(self._input) < 2)

    def give(self, data: bytes) -> None:
        self._input += data
        self.started = self.started or bool(data)

    def take(self, limit: int) -> bytes:
        if self._wbits is None:
            if len(self._input) < 2:
                return b""
            self._wbits = zlib.MAX_WBITS if _zlib_header(self._input) else -zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(self._wbits)
        while self._input:
            if self.done and not self._next_member():
                return b""
            try:
                piece = self._zlib.decompress(self._input, limit)
            except zlib.error:
                if self._calls or self._wbits != zlib.MAX_WBITS:
                    raise
                # A raw stream whose first bytes happen to look like a zlib header.
                self._wbits = -zlib.MAX_WBITS
                self._zlib = zlib.decompressobj(self._wbits)
                continue
            self._calls += 1
            if self._zlib.eof:
                self.done, self._input = True, self._zlib.unused_data
            else:
                self._input = self._zlib.unconsumed_tail
            if piece:
                return piece
        return b""

    def _next_member(self) -> bool:
        """After the end of a stream: start the next gzip member, or drop what follows."""
        rest = self._input.lstrip(b"\x00")  # gzip pads with zeros; gunzip ignores them
        if not self._gzip or not rest:
            self._input = b""  # after a deflate stream, bytes mean nothing (httpx ignores them too)
            return False
        if len(rest) >= len(_GZIP_MAGIC) and not rest.startswith(_GZIP_MAGIC):
            raise zlib.error("data after the end of the gzip stream is not another gzip member")
        self._zlib, self._input, self.done = zlib.decompressobj(16 + zlib.MAX_WBITS), rest, False
        return True


class _Brotli:
    """br, through a brotli whose ``process`` takes ``output_buffer_limit`` (1.2 or later)."""

    def __init__(self, brotli: Any) -> None:
        self._brotli = brotli.Decompressor()
        self._input = b""
        # Output may still be pending though can_accept_more_data() says True: only
        # a call that returns nothing proves the decoder has given all it has.
        self._drained = True
        self.started = self.done = False

    @property
    def wants_input(self) -> bool:
        return not self._input and self._drained

    def give(self, data: bytes) -> None:
        self._input += data
        self.started = self.started or bool(data)

    def take(self, limit: int) -> bytes:
        if self._input and self._brotli.can_accept_more_data():
            data, self._input = self._input, b""  # copied into the decoder, bounded by one slice
        else:
            data = b""  # drain what is pending before it may take more
        piece: bytes = self._brotli.process(data, output_buffer_limit=limit)
        self._drained = not piece and bool(self._brotli.can_accept_more_data())
        self.done = bool(self._brotli.is_finished())
        return piece


class _Zstd:
    """zstd, one frame after another, through ``compression.zstd`` or ``backports.zstd``."""

    def __init__(self, zstd: Any) -> None:
        self._module = zstd
        self._zstd = self._decompressor()
        self._input = b""
        self.started = self.done = False

    def _decompressor(self) -> Any:
        window = {self._module.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX}
        return self._module.ZstdDecompressor(options=window)

    @property
    def wants_input(self) -> bool:
        return not self._input and (self._zstd.eof or bool(self._zstd.needs_input))

    def give(self, data: bytes) -> None:
        self._input += data
        self.started = self.started or bool(data)

    def take(self, limit: int) -> bytes:
        if self._zstd.eof:
            rest, self._input = self._zstd.unused_data + self._input, b""
            if not rest:
                return b""
            self._zstd, self._input, self.done = self._decompressor(), rest, False  # the next frame
        if self._zstd.needs_input:
            if not self._input:
                return b""
            data, self._input = self._input, b""
        else:
            data = b""
        piece: bytes = self._zstd.decompress(data, limit)
        self.done = bool(self._zstd.eof)
        return piece


def _zlib_header(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (RFC 1950): deflate, a window of at most 32 kB, a check."""
    return data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0


def _optional(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@functools.cache
def available() -> dict[str, Callable[[], _Stage]]:
    """The codings this process can undo within a bound, by token (cached: imports are tried once)."""
    factories: dict[str, Callable[[], _Stage]] = {
        "gzip": lambda: _Zlib("gzip"),
        "x-gzip": lambda: _Zlib("gzip"),
        "deflate": lambda: _Zlib("deflate"),
    }
    brotli = _optional("brotli", "brotlicffi")
    if brotli is not None and hasattr(brotli.Decompressor, "can_accept_more_data"):
        factories["br"] = lambda: _Brotli(brotli)
    zstd = _optional("compression.zstd", "backports.zstd")
    if zstd is not None:
        factories["zstd"] = lambda: _Zstd(zstd)
    return factories


def accept_encoding() -> str:
    """The ``Accept-Encoding`` to send: exactly the codings `available` can undo within a bound."""
    return ", ".join(coding for coding in available() if coding != "x-gzip")


_HOW_TO_GET = {
    "br": "brotli 1.2 or later (pip install 'asgi-refresh[brotli]')",
    "zstd": "backports.zstd on Python < 3.14 (pip install 'asgi-refresh[zstd]')",
}


class BodyDecoder:
    """Undoes a body's content codings slice by slice, counting every stage against the cap.

    The decoded body may be at most ``max_bytes``. What comes over the wire, and
    what each coding but the last produces, may be a little more (compressed data
    is a little bigger than its content when that content does not compress):
    ``max_bytes`` plus a sixteenth plus 64 kB. So a body that decodes to
    nothing (empty deflate blocks by the gigabyte) cannot keep us busy either.

    Raises:
        SourceError: a coding cannot be undone here, there are too many, or the
            body passes a cap, does not decode, or ends before its codings do.
    """

    def __init__(self, content_encoding: Iterable[str], *, where: str, max_bytes: int) -> None:
        applied = codings(content_encoding)
        self.where, self.max_bytes = where, max_bytes
        if len(applied) > MAX_CODINGS:
            listed = printable(", ".join(applied[: MAX_CODINGS + 1]), 80)
            raise SourceError(
                f"{where}: the response has {len(applied)} content codings ({listed}); at most "
                f"{MAX_CODINGS} are undone. The server is misconfigured, or hostile"
            )
        factories = available()
        for coding in applied:
            if coding not in factories:
                raise self._unsupported(coding, factories)
        # Undone in the reverse of the order applied: the last coding listed is the outermost.
        self._names = list(reversed(applied))
        self._stages = [factories[coding]() for coding in self._names]
        self._encoded_limit = max_bytes + max_bytes // 16 + SLICE
        self._sizes = [0] * (len(self._stages) + 1)  # the wire, then after each coding

    @property
    def wire_limit(self) -> int:
        """The most bytes accepted off the wire: ``max_bytes`` for an unencoded body."""
        return self._encoded_limit if self._stages else self.max_bytes

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode ``data``, the next bytes off the wire.

        Yields decoded pieces, and an empty piece after each bounded step that
        produced nothing at the end: a point where the caller may let others run.
        """
        yield from self._push(0, data)

    def finish(self) -> None:
        """Check that every coding's stream came to its end (a cut body does not).

        Raises:
            SourceError: the body ended before the end of one of its codings.
        """
        for name, stage in zip(self._names, self._stages, strict=True):
            if stage.started and not stage.done:
                raise SourceError(
                    f"{self.where}: the {name}-encoded body ends before its compressed stream does "
                    "(the response was cut short)"
                )

    def _push(self, level: int, data: bytes) -> Iterator[bytes]:
        self._count(level, len(data))
        if level == len(self._stages):
            yield data
            return
        self._stages[level].give(data)
        yield from self._drain(level)

    def _drain(self, level: int) -> Iterator[bytes]:
        stage, name, idle = self._stages[level], self._names[level], 0
        last = level == len(self._stages) - 1
        while True:
            # The last coding makes no more than one byte past the cap: enough to tell.
            limit = min(SLICE, self.max_bytes - self._sizes[-1] + 1) if last else SLICE
            try:
                piece = stage.take(max(limit, 1))
            except Exception as exc:  # zlib.error, brotli.error, ZstdError: the body is bad
                detail = printable(str(exc), 200) or type(exc).__name__
                message = f"{self.where}: the body does not decompress as {name} ({detail})"
                raise SourceError(message) from None
            if piece:
                idle = 0
                yield from self._push(level + 1, piece)
                if not last:
                    yield b""
                continue
            if stage.wants_input or stage.done:
                return
            idle += 1
            if idle > 3:  # a decoder that neither wants input nor makes output would spin
                raise SourceError(f"{self.where}: the {name} decoder stopped making progress")

    def _count(self, level: int, size: int) -> None:
        self._sizes[level] += size
        if level == len(self._stages):
            if self._sizes[level] > self.max_bytes:
                raise too_big(self.where, self.max_bytes, f"over {self.max_bytes} bytes read")
        elif self._sizes[level] > self._encoded_limit:
            what = "on the wire" if level == 0 else f"of {self._names[level - 1]}-decoded data"
            raise too_big(self.where, self.max_bytes, f"over {self._encoded_limit} bytes {what}")

    def _unsupported(self, coding: str, factories: dict[str, Callable[[], _Stage]]) -> SourceError:
        shown = printable(coding, 40)
        if coding in _HOW_TO_GET:
            return SourceError(
                f"{self.where}: the response is {shown}-encoded, which cannot be decoded within max_bytes "
                f"here: install {_HOW_TO_GET[coding]}, or have the server send one of: "
                f"{', '.join(factories)}"
            )
        return SourceError(
            f"{self.where}: the response has Content-Encoding {shown!r}, which this source cannot decode "
            f"(it decodes {', '.join(factories)}); the response was refused"
        )
