"""Snapshot files: the last good value of each refresher on disk, to start from when everything is down.

One file per refresher, ``{name}.snapshot``, replaced atomically (a temp file in
the same directory, fsynced, then renamed over it), so that a reader sees the old
file or the new one, never part of one. A file is a magic line, one line of JSON
metadata (`encode_meta`: what was fetched when, from which source, its version and
HTTP validators, its size and checksum), then the value as the codec encoded it.
With ``keep_versions``, each version is also kept as ``{name}@{number}.snapshot``
(a hard link to the same bytes, no copy), the oldest removed.

The file's modification time is when the value was last confirmed good: a refresh
that found it unchanged only touches the file, it does not write 1 MB again.

Reading treats the directory as hostile: a file that is not a regular file, too
big, torn, or whose checksum, name or metadata do not check out is a
`SnapshotProblem`, with a message that says which, never the content.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import anyio

from asgi_refresh._clock import Clock
from asgi_refresh._contain import describe_error

if TYPE_CHECKING:
    from asgi_refresh._cluster.base import MetaValue

logger = logging.getLogger("asgi_refresh")

MAGIC = b"asgi-refresh snapshot 1\n"
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # the largest value a snapshot holds, as the coordinators read
_SUFFIX = ".snapshot"
_REPEAT_WARNING_EVERY = 300.0


class SnapshotProblem(Exception):
    """A snapshot that cannot be used; the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot file, read and checked.

    Attributes:
        data: The value as the codec encoded it.
        meta: Its metadata (checked: scalars only, bounded).
        confirmed_at: When the value was last confirmed good, in seconds since the
            epoch (the file's modification time, or ``fetched_at`` if later).
    """

    data: bytes
    meta: Mapping[str, MetaValue]
    confirmed_at: float


def path_of(directory: Path, name: str) -> Path:
    """Where the snapshot of refresher ``name`` lives."""
    return directory / f"{name}{_SUFFIX}"


def version_path(directory: Path, name: str, number: int) -> Path:
    """Where version ``number`` of ``name`` is kept (with ``keep_versions``)."""
    return directory / f"{name}@{number}{_SUFFIX}"


def kept_versions(directory: Path, name: str) -> list[int]:
    """The version numbers of ``name`` kept in ``directory``, oldest first."""
    numbers = []
    prefix = f"{name}@"
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(_SUFFIX):
            number = entry[len(prefix) : -len(_SUFFIX)]
            if number.isascii() and number.isdigit() and len(number) <= 15:  # not "²": int() refuses it
                numbers.append(int(number))
    return sorted(numbers)


def checksum(data: bytes) -> str:
    """What a snapshot file records to tell a torn or altered value from the one written."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write(
    directory: Path,
    name: str,
    data: bytes,
    meta: Mapping[str, MetaValue],
    *,
    at: float,
    number: int | None = None,
    keep_versions: int = 0,
) -> None:
    """Write the snapshot of ``name`` atomically (blocking: run it in a worker thread).

    ``at`` (seconds since the epoch) becomes the file's modification time: when the
    value was confirmed good. With ``keep_versions`` and a version ``number``, the
    version is kept too and all but the newest ``keep_versions`` are removed.
    """
    from asgi_refresh._cluster.records import encode_meta

    if len(data) > DEFAULT_MAX_BYTES:
        raise ValueError(
            f"its value is {len(data)} bytes encoded, over the {DEFAULT_MAX_BYTES} a snapshot may hold "
            "(startup would refuse it); give this refresher snapshot=False"
        )
    header = encode_meta({**meta, "name": name, "size": len(data), "checksum": checksum(data)})
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path_of(directory, name)
    # mkstemp makes the file 0600: a snapshot holds a value, readable by this user only.
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(MAGIC)
            file.write(header.encode())
            file.write(b"\n")
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.utime(temporary, (at, at))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if keep_versions and number is not None:
        _keep_version(directory, name, target, number, keep_versions)


def _keep_version(directory: Path, name: str, target: Path, number: int, keep: int) -> None:
    kept = version_path(directory, name, number)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(kept)
    try:
        os.link(target, kept)  # the same bytes, no copy
    except OSError:  # a filesystem without hard links
        temporary = kept.with_name(f".{kept.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a crash: made anew, never followed if someone planted a link
        with open(target, "rb") as source, open(os.open(temporary, _NEW_FILE, 0o600), "wb") as copy:
            copy.write(source.read())
        os.replace(temporary, kept)
    for old in kept_versions(directory, name)[:-keep]:
        with contextlib.suppress(OSError):
            os.unlink(version_path(directory, name, old))


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def touch(directory: Path, name: str, at: float) -> None:
    """Mark the snapshot of ``name`` confirmed good at ``at`` (a refresh found it unchanged)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path_of(directory, name), (at, at))


def read(path: Path, name: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Snapshot:
    """Read and check the snapshot file at ``path`` for refresher ``name`` (blocking).

    Raises:
        FileNotFoundError: there is no such file.
        SnapshotProblem: the file cannot be used; the message says why.
    """
    from asgi_refresh._cluster.base import BadRecord
    from asgi_refresh._cluster.records import decode_meta

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        handle = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symlink (ELOOP), no permission...
        raise SnapshotProblem(
            f"{path.name} cannot be opened ({exc.strerror or type(exc).__name__})"
        ) from None
    with os.fdopen(handle, "rb") as file:
        status = os.fstat(file.fileno())
        if not _is_regular(status.st_mode):
            raise SnapshotProblem(f"{path.name} is not a regular file")
        limit = len(MAGIC) + MAX_HEADER_BYTES + 1 + max_bytes
        if status.st_size > limit:
            raise SnapshotProblem(
                f"{path.name} is {status.st_size} bytes, over the {limit} a snapshot may have"
            )
        content = file.read(limit + 1)
    if not content.startswith(MAGIC):
        raise SnapshotProblem(f"{path.name} is not an asgi_refresh snapshot (or is torn)")
    end = content.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES + 1)
    if end < 0:
        raise SnapshotProblem(f"{path.name} has no complete header (torn)")
    try:
        meta = decode_meta(content[len(MAGIC) : end])
    except BadRecord as exc:
        raise SnapshotProblem(f"{path.name} has a malformed header: {exc}") from None
    data = content[end + 1 :]
    if meta.get("name") != name:
        raise SnapshotProblem(f"{path.name} is the snapshot of another refresher")
    if meta.get("size") != len(data) or meta.get("checksum") != checksum(data):
        raise SnapshotProblem(f"{path.name} is torn or altered (its size or checksum does not match)")
    fetched_at = meta.get("fetched_at")
    if not is_time(fetched_at):
        raise SnapshotProblem(f"{path.name} has no valid fetched_at")
    confirmed = max(float(fetched_at), status.st_mtime if is_time(status.st_mtime) else 0.0)
    return Snapshot(data=data, meta=meta, confirmed_at=confirmed)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def is_time(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a time as kept outside: finite seconds since the epoch, before year 5138."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1e11
    )


class _Job:
    __slots__ = ("at", "data", "keep_versions", "meta", "number")

    def __init__(
        self,
        data: bytes | None,
        meta: Mapping[str, MetaValue],
        at: float,
        number: int | None,
        keep_versions: int,
    ) -> None:
        self.data = data  # None: only touch the file
        self.meta = meta
        self.at = at
        self.number = number
        self.keep_versions = keep_versions


class SnapshotWriter:
    """Writes one runtime's snapshots off the event loop, in one worker thread at a time.

    A refresher's newer snapshot replaces its older one still waiting: under a
    burst of changes only the newest is written. What is waiting at shutdown is
    still written (bounded by the shutdown timeout).
    """

    def __init__(self, directory: Path, clock: Clock) -> None:
        self.directory = directory
        self._clock = clock
        self._pending: dict[str, _Job] = {}
        self._wake: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self.written_at: dict[str, float] = {}  # wall time of each refresher's last good write
        self.errors: dict[str, str] = {}  # the last write error of each refresher, until one succeeds
        self._warned_at: dict[str, float] = {}

    def save(
        self,
        name: str,
        data: bytes,
        meta: Mapping[str, MetaValue],
        *,
        number: int | None,
        keep_versions: int,
    ) -> None:
        """Write a new value of ``name`` soon."""
        self._pending[name] = _Job(data, meta, self._clock.wall(), number, keep_versions)
        self._poke()

    def touch(self, name: str) -> None:
        """Mark the snapshot of ``name`` confirmed good now, soon."""
        job = self._pending.get(name)
        if job is not None:
            job.at = self._clock.wall()  # the write waiting is confirmed now too
        else:
            self._pending[name] = _Job(None, {}, self._clock.wall(), None, 0)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Write what is pending until cancelled; then write what is left, shielded."""
        try:
            while True:
                if not self._pending:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    self._wake = None
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write everything pending now; return once it is written (also what another flush had taken)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # one batch at a time: files are replaced in the order values came
            while self._pending:
                jobs, self._pending = self._pending, {}
                try:
                    with self._clock.hold():
                        results = await anyio.to_thread.run_sync(self._write_all, jobs)
                except BaseException:
                    # Cancelled before a thread took them (shutdown): they go back for the
                    # shielded flush that follows, or they would be lost.
                    self._put_back(jobs)
                    raise
                for name, error in results.items():
                    self._record(name, jobs[name], error)

    def _put_back(self, jobs: dict[str, _Job]) -> None:
        """Jobs taken but not written: pending again, unless a newer value of the same refresher waits."""
        for name, job in jobs.items():
            newer = self._pending.get(name)
            if newer is None:
                self._pending[name] = job
            elif newer.data is None:  # only a touch since: the value taken is still to be written
                job.at = newer.at
                self._pending[name] = job

    def _write_all(self, jobs: dict[str, _Job]) -> dict[str, BaseException | None]:
        results: dict[str, BaseException | None] = {}
        for name, job in jobs.items():
            try:
                if job.data is None:
                    touch(self.directory, name, job.at)
                else:
                    write(
                        self.directory,
                        name,
                        job.data,
                        job.meta,
                        at=job.at,
                        number=job.number,
                        keep_versions=job.keep_versions,
                    )
            except Exception as exc:  # a full disk, a directory we may not write: logged, not fatal
                results[name] = exc
            else:
                results[name] = None
        return results

    def _record(self, name: str, job: _Job, error: BaseException | None) -> None:
        if error is None:
            if job.data is not None or name in self.written_at:
                self.written_at[name] = job.at
            if self.errors.pop(name, None) is not None:
                logger.info(
                    "Refresher %r: its snapshot is written again",
                    name,
                    extra={"refresher": name, "outcome": "snapshot_written"},
                )
            return
        message = f"writing its snapshot failed: {describe_error(error)}"
        self.errors[name] = message
        now = self._clock.monotonic()
        if now - self._warned_at.get(name, -math.inf) >= _REPEAT_WARNING_EVERY:
            self._warned_at[name] = now
            logger.warning(
                "Refresher %r: %s; the value is served as usual, only a restart with the upstream "
                "down cannot start from it",
                name,
                message,
                extra={"refresher": name, "outcome": "snapshot_failed"},
            )


def snapshot_meta(
    *,
    source: str,
    fetched_at: float,
    version: str | None,
    handover: Mapping[str, str] | None,
    expires_at: float | None,
) -> dict[str, MetaValue]:
    """The metadata a snapshot keeps with a value."""
    meta: dict[str, Any] = {"source": source, "fetched_at": fetched_at}
    if version is not None:
        meta["version"] = version
    if expires_at is not None:
        meta["expires_at"] = expires_at
    meta.update(handover or {})
    return meta
