"""`FileSource`: load a local file, only when it changed, safely mid-write."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from asgi_refresh._option_error import OptionImportError, OptionTypeError, OptionValueError
from asgi_refresh._sources.base import Source, Standalone
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.outcome import Fetched, SourceError
from asgi_refresh._sources.parsing import (
    DEFAULT_MAX_BYTES,
    THREAD_THRESHOLD,
    Format,
    Parser,
    Validate,
    blake2b,
    max_bytes_option,
    too_big,
)
from asgi_refresh._sources.retire import retire
from asgi_refresh._text import printable

logger = logging.getLogger("asgi_refresh")

_RACY_NS = 2_000_000_000  # newer than this, a file's stat signature is not trusted
_FORMAT_BY_SUFFIX: dict[str, Format] = {".json": "json", ".toml": "toml", ".txt": "text"}
# How quickly a watched change is picked up; editors write in bursts.
_WATCH_DEBOUNCE_MS = 50
_WATCH_STEP_MS = 20
_READ_SIZE = 1024 * 1024
# Opening never waits: a FIFO swapped in after the stat() would otherwise block the
# thread until a writer comes. No effect on the regular files we go on to read.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


class FileSource(Standalone, Source):
    """Load a local file (config, flags): use it as the ``fetch`` of a `Refresher`.

    ```python
    Refresher("flags", FileSource("flags.toml"), every="5s")
    ```

    Each poll costs one ``stat()`` while the file is unchanged: it is read only
    when its modification time, size or inode moved, and then parsed only if its
    content hash differs. A file replaced by rename (how editors and Kubernetes
    ConfigMaps write) is picked up; a half-written file that does not parse is
    reported and the last good value stays until a good version appears. A
    missing file fails the fetch: at startup that fails a required refresher,
    later it is reported and the last value stays.

    Symbolic links are followed (a Kubernetes ConfigMap is a link to a link), but
    what they lead to must be a regular file of at most ``max_bytes``: a named
    pipe, a device (``/dev/zero``), a socket or a directory is refused with an
    error, never read, so that no read can block or grow without end.

    Args:
        path: The file. A relative path is resolved against the current directory
            now, when the source is made.
        format: ``"json"``, ``"toml"``, ``"text"`` (UTF-8), ``"bytes"``, or a
            callable that takes the file's bytes (``yaml.safe_load`` works).
            Defaults from the extension: ``.json``, ``.toml``, ``.txt``.
        validate: Called with the parsed value; returns the value to publish
            (possibly converted) or raises. ``pydantic.TypeAdapter(T).validate_python``
            works as is.
        watch: Also reload as soon as the file changes, using ``watchfiles``
            (``pip install 'asgi-refresh[watch]'``); polling every ``every``
            continues as the fallback.
        max_bytes: Largest file accepted; a bigger one fails the fetch, read no
            further than the cap.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the format is unknown, or cannot be told from the extension, or
            ``max_bytes`` is not a positive number.
        ImportError: ``watch=True`` without ``watchfiles`` installed.
    """

    kind = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format | None = None,
        validate: Validate | None = None,
        watch: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise OptionTypeError(
                "FileSource", "path", f"path must be a str or a Path (got {type(path).__name__})"
            )
        self.path = Path(path).expanduser().absolute()
        owner = f"FileSource({str(self.path)!r})"
        if format is None:
            format = _FORMAT_BY_SUFFIX.get(self.path.suffix.lower())
            if format is None:
                raise OptionValueError(
                    owner,
                    "format",
                    f"cannot tell the format from the extension {self.path.suffix or '(none)'!r}; "
                    "pass format='json', 'toml', 'text', 'bytes' or a parse callable (e.g. yaml.safe_load)",
                )
        self._parser = Parser(owner, "format", format, validate)
        if not isinstance(watch, bool):
            raise OptionTypeError(owner, "watch", f"watch must be True or False (got {watch!r})")
        if watch:
            try:
                import watchfiles  # noqa: F401
            except ImportError:
                raise OptionImportError(
                    owner, "watch", "watch=True needs watchfiles: pip install 'asgi-refresh[watch]'"
                ) from None
        self.watch = watch
        self.max_bytes = max_bytes_option(owner, max_bytes)
        self._lock = threading.Lock()  # one read at a time, even past an abandoned one
        self._context: SourceContext | None = None
        self.last_size: int | None = None  # of the last fetch's content, for its event
        self._signature: tuple[int, ...] | None = None  # of the last good content, once settled
        self._digest: bytes | None = None
        self._value: Any = None

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r})"

    @property
    def origin(self) -> str:
        """The file's path, as given (``~`` expanded)."""
        return f"file {self.path}"

    async def open(self, context: SourceContext) -> None:
        """Start watching the file, if asked to and a middleware runs this source."""
        self._context = SourceContext.claim(self, self._context, context)
        self._signature = self._digest = self._value = None
        if self.watch and not context.start_soon(self._watch):
            logger.info("%r: watch needs a running middleware; polling only", self)

    async def close(self) -> None:
        """Stop serving this lifespan (the watch ends with the lifespan's task group)."""
        self._context = None

    async def fetch(self) -> Fetched:
        """Load the file if it changed since the last good load.

        Raises:
            SourceError: the file is missing, unreadable, or does not parse or validate.
            RuntimeError: the source is not open.
        """
        context = SourceContext.required(self, self._context)
        self.last_size = None  # the bytes read, for the fetch's event (tracing)
        read = await context.run_in_thread(self._read_if_changed)
        if isinstance(read, Fetched):
            return read
        signature, digest, data = read
        self.last_size = len(data)
        value = await self._parser(context, data, str(self.path))
        # Remembered only once it parses: a half-written file is read again next time.
        previous, self._signature, self._digest, self._value = self._value, signature, digest, value
        # Once the new value is published, the old one is freed in pieces, not in one stall.
        retire(context, previous, len(data), THREAD_THRESHOLD)
        del previous
        return Fetched(value)

    def check(self, value: Any) -> Any:
        """``value`` as ``validate`` returns it; `SourceError` if it is not one this source could produce.

        For a value that did not come from this source's own read: one that
        another process stored in the coordination backend, untrusted like a file.
        """
        return self._parser.check(value, str(self.path))

    def _read_if_changed(self) -> Fetched | tuple[tuple[int, ...] | None, bytes, bytes]:
        """In a thread: a not-modified result, or the new content with its signature and hash."""
        if not self._lock.acquire(blocking=False):
            raise SourceError(f"{self.path}: the previous read is still blocked (a hung file system?)")
        try:
            if _signature(self._stat()) == self._signature:
                return Fetched(self._value, not_modified=True)
            signature, data = self._read()
            digest = blake2b(data)
            if digest == self._digest:  # touched, or rewritten with the same content
                self._signature = signature
                return Fetched(self._value, not_modified=True)
            return signature, digest, data
        finally:
            self._lock.release()

    def _stat(self) -> os.stat_result:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            raise SourceError(f"{self.path}: file not found") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self._check(found)
        return found

    def _check(self, found: os.stat_result) -> None:
        """Refuse what is not a regular file, or is one past the cap, before reading a byte."""
        if not stat.S_ISREG(found.st_mode):
            real = os.path.realpath(self.path)
            # Where a link leads is not ours to choose: shown escaped, like any outside text.
            link = f" (a link to {printable(real, 300)})" if real != str(self.path) else ""
            raise SourceError(
                f"{self.path}{link}: is {_kind(found.st_mode)}, not a regular file; FileSource reads "
                "regular files only (symbolic links to one are followed): point it at the file itself"
            )
        if found.st_size > self.max_bytes:
            raise too_big(str(self.path), self.max_bytes, f"it is {found.st_size} bytes", what="file")

    def _read(self) -> tuple[tuple[int, ...] | None, bytes]:
        """The content, and the signature to remember for it (None if it may still change)."""
        try:
            descriptor = os.open(self.path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise SourceError(f"{self.path}: file not found") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            # What was opened, not what the path showed a moment ago: it may have
            # been swapped in between (for a FIFO, say).
            before = os.fstat(descriptor)
            self._check(before)
            data = self._read_capped(descriptor)
            after = os.fstat(descriptor)
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        finally:
            os.close(descriptor)
        # "Racy clean", as git calls it: a file written in the last moments may be
        # written again within the same timestamp tick (coarse on some file systems)
        # at the same size, and its signature would then hide that change. Such a
        # file is not trusted by signature; it is re-read and re-hashed next time.
        settled = _signature(before) == _signature(after) and time.time_ns() - after.st_mtime_ns > _RACY_NS
        return (_signature(after) if settled else None), data

    def _read_capped(self, descriptor: int) -> bytes:
        """Read to the end, or fail one byte past ``max_bytes`` (a file still growing)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(descriptor, min(_READ_SIZE, self.max_bytes + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                detail = f"over {self.max_bytes} bytes read"
                raise too_big(str(self.path), self.max_bytes, detail, what="file")

    async def _watch(self) -> None:
        import watchfiles

        context = self._context
        assert context is not None

        # watchfiles waits in a thread that only checks its stop event: set it the
        # moment shutdown cancels us, or shutdown would wait for the thread.
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(_set_when_cancelled, stop)
                async for _changes in watchfiles.awatch(
                    self.path.parent,
                    # Any change in the directory, not only events naming our file: a
                    # Kubernetes ConfigMap update swaps a symlink (`..data`), and a
                    # poll that finds nothing new costs one stat().
                    watch_filter=None,
                    debounce=_WATCH_DEBOUNCE_MS,
                    step=_WATCH_STEP_MS,
                    stop_event=stop,
                    recursive=False,
                ):
                    context.refresh_soon()
                task_group.cancel_scope.cancel()
        except Exception as exc:
            logger.warning(
                "Refresher %r: cannot watch %s (%s); polling only",
                context.name,
                self.path,
                exc,
                extra={"refresher": context.name, "outcome": "watch_failed"},
            )


async def _set_when_cancelled(event: anyio.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _signature(found: os.stat_result) -> tuple[int, ...]:
    return (found.st_mtime_ns, found.st_size, found.st_ino, found.st_ctime_ns)


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")
