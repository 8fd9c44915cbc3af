"""Last known good, for one runtime: guards before publishing, versions and snapshots after.

The runtime publishes; this module decides what a fetched value may become and
keeps what was published: it runs a refresher's guards (user code, contained and
bounded), numbers each published value (``3-9f2c41ab``: a counter and a digest of
its encoding), keeps the last ``keep_versions`` of them, writes snapshots, and
reads one back when a refresher must start without its upstream.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from asgi_refresh import _snapshots as snapshots
from asgi_refresh._clock import Clock
from asgi_refresh._contain import describe_error, escapes, is_async_callable
from asgi_refresh._fingerprint import checked_handover, content_digest, fingerprint
from asgi_refresh._guards import Guard
from asgi_refresh._slot import Held, Kept, Slot, Version
from asgi_refresh._text import printable

if TYPE_CHECKING:
    from asgi_refresh._cluster.base import Codec, MetaValue

logger = logging.getLogger("asgi_refresh")

_GUARD_TIMEOUT = 30.0  # a guard of a refresher without a timeout


class NotKeepable(TypeError):
    """A value the codec cannot encode, so it cannot be versioned or snapshotted: a configuration error."""

    cannot_be_retried = True  # the runtime reads this: retrying the fetch would not help


class Restored:
    """A value read back from a snapshot, checked and ready to publish."""

    __slots__ = ("age", "expires_in", "handover", "value", "version")

    def __init__(
        self,
        value: Any,
        age: float,
        version: str | None,
        handover: dict[str, str] | None,
        expires_in: float | None,
    ) -> None:
        self.value = value
        self.age = age
        self.version = version
        self.handover = handover
        self.expires_in = expires_in


class Keeper:
    """Guards, versions and snapshots of one runtime's refreshers."""

    def __init__(
        self,
        *,
        clock: Clock,
        codec: Codec,
        snapshot_dir: Path | None,
        snapshot_max_age: float | None,
    ) -> None:
        self.clock = clock
        self.codec = codec
        self.max_age = snapshot_max_age
        self.writer = None if snapshot_dir is None else snapshots.SnapshotWriter(snapshot_dir, clock)
        self._fingerprints: dict[str, str] = {}
        self._disk_numbers: dict[str, int] = {}

    def fingerprint(self, slot: Slot) -> str:
        """What binds a snapshot of ``slot`` to its source and codec."""
        name = slot.spec.name
        found = self._fingerprints.get(name)
        if found is None:
            found = self._fingerprints[name] = fingerprint(slot.source, self.codec)
        return found

    def snapshots(self, slot: Slot, *, fresh: bool) -> bool:
        """Whether ``slot``'s value goes to the snapshot directory (``fresh``: it is a `Fresh` token)."""
        wanted = slot.spec.snapshot
        return self.writer is not None and (wanted is True or (wanted is None and not fresh))

    def encodes(self, slot: Slot, *, fresh: bool) -> bool:
        """Whether a changed value of ``slot`` must be encoded: to version it or to snapshot it."""
        return slot.spec.keep_versions > 0 or self.snapshots(slot, fresh=fresh)

    def encode(self, slot: Slot, value: Any) -> bytes:
        """``value`` as the codec encodes it; `NotKeepable` if it cannot."""
        try:
            return self.codec.encode(value)
        except Exception as exc:
            raise NotKeepable(
                f"its value cannot be kept by {self.codec!r} ({describe_error(exc)}); pass a codec= "
                "to the middleware, or turn keep_versions and snapshot off for this refresher"
            ) from exc

    # -- guards ------------------------------------------------------------------------

    async def screen(self, slot: Slot, old: Any, new: Any) -> str | None:
        """Ask ``slot``'s guards about replacing ``old`` with ``new``: the reason to hold it back, or None."""
        for guard in slot.spec.guard:
            verdict = await self._ask(slot, guard, old, new)
            if verdict is not None:
                return verdict
        return None

    async def _ask(self, slot: Slot, guard: Guard, old: Any, new: Any) -> str | None:
        name = slot.spec.name
        limit = slot.spec.timeout or _GUARD_TIMEOUT
        clock = self.clock
        verdict: object = None
        finished = False
        try:
            if getattr(guard, "inline", False) is True:  # a built-in guard: cheap and never blocks
                verdict, finished = guard(old, new), True
            else:
                with clock.move_on_at(clock.monotonic() + limit):
                    if is_async_callable(guard):
                        verdict = guard(old, new)
                    else:
                        with clock.hold():
                            verdict = await anyio.to_thread.run_sync(guard, old, new, abandon_on_cancel=True)
                    if inspect.isawaitable(verdict):
                        verdict = await verdict
                    finished = True
        except BaseException as exc:  # a guard is user code: whatever it raises holds the value back
            if escapes(exc):
                raise
            logger.warning(
                "Refresher %r: its guard %s raised; the new value is held back",
                name,
                _named(guard),
                exc_info=exc,
                extra={"refresher": name, "outcome": "guard_failed"},
            )
            return f"its guard {_named(guard)} raised {describe_error(exc)}"
        if not finished:
            return f"its guard {_named(guard)} did not answer within {limit:g}s"
        if verdict is None:
            return None
        if isinstance(verdict, str):
            return printable(verdict, 500) or f"its guard {_named(guard)} held it back"
        return f"its guard {_named(guard)} returned {type(verdict).__name__}, not None or a reason"

    # -- versions and snapshots ----------------------------------------------------------

    def keep(
        self,
        slot: Slot,
        value: Any,
        data: bytes | None,
        *,
        version: str | None,
        fetched_at: float,
        handover: dict[str, str] | None,
        expires_at: float | None,
        fresh: bool,
    ) -> Version | None:
        """Record a newly published value of ``slot``: a version, and a snapshot.

        ``version``: the id the lease holder gave it (a value from the coordinator),
        or None to number it here.
        """
        spec = slot.spec
        if data is None:
            return None
        number, digest = parse_version(version) if version is not None else (None, None)
        kept = slot.kept
        if number is None or digest is None:
            latest = kept.versions[-1].number if kept.versions else _number_of(kept.current)
            number, digest = max(latest, self._numbered_on_disk(slot)) + 1, content_digest(data)
        # A kept version published again (the lease holder pinned it) keeps its place
        # among the versions, and when it was first fetched.
        known = next(
            (each for each in kept.versions if each.number == number and each.digest == digest), None
        )
        if known is not None:
            fetched_at = known.fetched_at
        made = Version(number, digest, fetched_at, data if spec.keep_versions else None, value)
        made.fresh = fresh
        if spec.keep_versions:
            if known is not None:
                versions = [made if each is known else each for each in kept.versions]
            else:
                versions = [each for each in kept.versions if each.number != number]
                versions.append(made)
            kept.versions = versions[-spec.keep_versions :]
        if self.writer is not None and self.snapshots(slot, fresh=fresh):
            meta = snapshots.snapshot_meta(
                source=self.fingerprint(slot),
                fetched_at=fetched_at,
                version=made.id,
                handover=handover,
                expires_at=expires_at,
            )
            self.writer.save(spec.name, data, meta, number=number, keep_versions=spec.keep_versions)
        return made

    def _numbered_on_disk(self, slot: Slot) -> int:
        """The highest version number of ``slot`` kept in the snapshot directory by an earlier run.

        Read once per refresher and lifespan: a restarted process numbers on from there,
        so that its new versions are never older by number than the last run's.
        """
        name = slot.spec.name
        found = self._disk_numbers.get(name)
        if found is None:
            found = 0
            if self.writer is not None and slot.spec.keep_versions:
                numbers = snapshots.kept_versions(self.writer.directory, name)
                found = numbers[-1] if numbers else 0
            self._disk_numbers[name] = found
        return found

    def confirm(self, slot: Slot, *, fresh: bool) -> None:
        """A refresh found ``slot``'s value unchanged: its snapshot is confirmed good now."""
        if self.writer is not None and self.snapshots(slot, fresh=fresh):
            self.writer.touch(slot.spec.name)

    async def restore(self, slot: Slot) -> Restored | None:
        """Read ``slot``'s snapshot back, checked; None, with the reason on the slot, if it cannot be used."""
        writer = self.writer
        spec = slot.spec
        if writer is None or spec.snapshot is False:
            return None
        path = snapshots.path_of(writer.directory, spec.name)
        max_age = spec.snapshot_max_age if spec.snapshot_max_age is not None else self.max_age
        wall = self.clock.wall()
        check = slot.source.check
        codec = self.codec
        expected = self.fingerprint(slot)

        def load() -> tuple[Any, snapshots.Snapshot]:
            snapshot = snapshots.read(path, spec.name)
            if snapshot.meta.get("source") != expected:
                raise snapshots.SnapshotProblem(
                    f"{path.name} is a snapshot of another source or codec (the refresher's source changed)"
                )
            age = max(wall - snapshot.confirmed_at, 0.0)
            if max_age is not None and age > max_age:
                raise snapshots.SnapshotProblem(
                    f"{path.name} is {age:.0f}s old, older than snapshot_max_age ({max_age:g}s)"
                )
            try:
                value = codec.decode(snapshot.data)
            except BaseException as exc:  # user code (a codec): whatever it raises refuses the file
                raise snapshots.SnapshotProblem(
                    f"{path.name} cannot be decoded by {codec!r}: {describe_error(exc)[:200]}"
                ) from None
            try:
                return check(value), snapshot
            except BaseException as exc:  # user code (a source's check)
                raise snapshots.SnapshotProblem(
                    f"{path.name} does not pass the source's checks: {describe_error(exc)[:200]}"
                ) from None

        try:
            with self.clock.hold():
                value, snapshot = await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
        except FileNotFoundError:
            slot.kept.snapshot_problem = f"there is no snapshot ({path.name})"
            return None
        except snapshots.SnapshotProblem as exc:
            slot.kept.snapshot_problem = str(exc)
            logger.warning(
                "Refresher %r: snapshot not used: %s",
                spec.name,
                exc,
                extra={"refresher": spec.name, "outcome": "snapshot_refused"},
            )
            return None
        except OSError as exc:
            slot.kept.snapshot_problem = f"{path.name} cannot be read ({describe_error(exc)})"
            logger.warning(
                "Refresher %r: snapshot not used: %s",
                spec.name,
                slot.kept.snapshot_problem,
                extra={"refresher": spec.name, "outcome": "snapshot_refused"},
            )
            return None
        meta = snapshot.meta
        age = max(wall - snapshot.confirmed_at, 0.0)
        version = meta.get("version")
        expires_at = meta.get("expires_at")
        expires_in = (
            expires_at - wall
            if isinstance(expires_at, int | float)
            and not isinstance(expires_at, bool)
            and math.isfinite(expires_at)
            else None
        )
        return Restored(
            value,
            age,
            version if isinstance(version, str) and parse_version(version)[0] is not None else None,
            checked_handover(meta),
            expires_in,
        )

    async def load_version(self, slot: Slot, version: str) -> Version | None:
        """Version ``version`` of ``slot`` from the snapshot directory (kept there with ``keep_versions``)."""
        writer = self.writer
        number, _ = (
            parse_version(version)
            if "-" in version
            else (int(version) if version.isascii() and version.isdigit() else None, None)
        )
        if writer is None or number is None:
            return None
        path = snapshots.version_path(writer.directory, slot.spec.name, number)
        expected = self.fingerprint(slot)
        codec, check = self.codec, slot.source.check

        def load() -> Version | None:
            try:
                snapshot = snapshots.read(path, slot.spec.name)
            except (OSError, snapshots.SnapshotProblem):
                return None
            kept_id = snapshot.meta.get("version")
            if snapshot.meta.get("source") != expected or not isinstance(kept_id, str):
                return None
            if version not in (kept_id, str(number)):
                return None
            try:
                value = check(codec.decode(snapshot.data))
            except Exception:  # user code (a codec, a check): not a usable version
                return None
            fetched_at = snapshot.meta.get("fetched_at")
            when = float(fetched_at) if isinstance(fetched_at, int | float) else snapshot.confirmed_at
            return Version(number, parse_version(kept_id)[1] or "", when, snapshot.data, value)

        with self.clock.hold():
            return await anyio.to_thread.run_sync(load, abandon_on_cancel=True)

    def snapshot_pinned(self, slot: Slot, data: bytes) -> None:
        """Snapshot a pinned value: a restart with the upstream down starts from what was served."""
        pinned = slot.kept.pinned
        if self.writer is None or pinned is None or not self.snapshots(slot, fresh=pinned.fresh):
            return
        meta = snapshots.snapshot_meta(
            source=self.fingerprint(slot),
            fetched_at=pinned.fetched_at,
            version=pinned.id,
            handover=None,  # the upstream's validators are for what it has, not for this
            expires_at=None,
        )
        self.writer.save(slot.spec.name, data, meta, number=None, keep_versions=0)


def _named(guard: Guard) -> str:
    name = getattr(guard, "__qualname__", None) or repr(guard)
    return printable(str(name), 80)


def _number_of(version: Version | None) -> int:
    return 0 if version is None else version.number


def parse_version(version: str) -> tuple[int | None, str | None]:
    """``3-9f2c41ab`` as (3, "9f2c41ab"); (None, None) for anything else (it came from outside)."""
    number, _, digest = version.partition("-")
    # ASCII digits only: str.isdigit takes "²" (int() refuses it) and "٣" (int() reads 3).
    if not (
        number.isascii() and number.isdigit() and len(number) <= 15 and len(digest) == 8 and _is_hex(digest)
    ):
        return None, None
    return int(number), digest


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def version_meta(version: Version) -> dict[str, MetaValue]:
    """What ``status()`` lists for a kept version: never its value."""
    from asgi_refresh._report import iso

    return {
        "id": version.id,
        "fetched_at": iso(version.fetched_at),
        "size": version.size,
        "digest": version.digest,
    }


_MAX_HELD_CHARS = 16 * 1024  # a reason and a summary of sizes and keys


class ClusterKept(NamedTuple):
    """What the lease holder stores beside a value about it: its version, a pin, a value held back."""

    version: str | None
    pin: str | None
    held: Held | None  # without its value: followers never see a value held back
    upstream: Version | None  # while pinned: what the upstream has (digest, size, when)
    control: int  # the last operator action (accept, reject, pin...) the holder carried out


def cluster_meta(kept: Kept, control: int) -> dict[str, MetaValue]:
    """The metadata that carries ``kept`` to the other processes (scalars: a backend stores JSON)."""
    meta: dict[str, MetaValue] = {"control": control}
    current = kept.current
    if current is not None:
        meta["version"] = current.id
    if kept.pinned is not None:
        meta["pin"] = kept.pinned.id
    if kept.held is not None:
        meta["held"] = _held_text(kept.held)
    if kept.upstream is not None:
        upstream = kept.upstream
        meta["upstream"] = json.dumps(
            {"digest": upstream.digest, "size": upstream.size, "fetched_at": upstream.fetched_at},
            separators=(",", ":"),
        )
    return meta


def _held_text(held: Held) -> str:
    """``held`` as JSON within `_MAX_HELD_CHARS`, never cut: cut JSON is no record at all."""
    fields = {
        "reason": printable(held.reason, 500),
        "summary": held.summary,
        "since": held.since,
        "rejected": held.rejected,
        "digest": held.digest,
    }
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_HELD_CHARS:  # long key names or type names: the sizes and counts go on
        fields["summary"] = {key: value for key, value in held.summary.items() if isinstance(value, int)}
        text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return text


def read_cluster_meta(meta: Mapping[str, object]) -> ClusterKept:
    """`cluster_meta`'s fields from a stored record, each checked; `BadRecord` for a malformed one."""
    from asgi_refresh._cluster.base import BadRecord

    version, pin, control = meta.get("version"), meta.get("pin"), meta.get("control", 0)
    if version is not None and not (isinstance(version, str) and parse_version(version)[0] is not None):
        raise BadRecord("meta's version is not a version id")
    if pin is not None and not (isinstance(pin, str) and parse_version(pin)[0] is not None):
        raise BadRecord("meta's pin is not a version id")
    if isinstance(control, bool) or not isinstance(control, int) or not 0 <= control < 10**15:
        raise BadRecord("meta's control is not a count")
    held = _read_json(meta, "held")
    upstream = _read_json(meta, "upstream")
    return ClusterKept(
        version=version,
        pin=pin,
        held=None if held is None else _held(held),
        upstream=None if upstream is None else _upstream(upstream),
        control=control,
    )


def _read_json(meta: Mapping[str, object], key: str) -> dict[str, Any] | None:
    from asgi_refresh._cluster.base import BadRecord

    raw = meta.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > _MAX_HELD_CHARS:
        raise BadRecord(f"meta's {key} is not a short JSON text")
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRecord(f"meta's {key} is not JSON") from None
    if not isinstance(decoded, dict):
        raise BadRecord(f"meta's {key} is not a JSON object")
    return decoded


def _held(fields: dict[str, Any]) -> Held:
    from asgi_refresh._cluster.base import BadRecord

    reason, summary, since = fields.get("reason"), fields.get("summary"), fields.get("since")
    rejected, digest = fields.get("rejected"), fields.get("digest")
    if not isinstance(reason, str) or not isinstance(summary, dict) or not snapshots.is_time(since):
        raise BadRecord("meta's held lacks a reason, a summary or a time")
    if not isinstance(rejected, bool) or not (
        digest is None or (isinstance(digest, str) and _is_digest(digest))
    ):
        raise BadRecord("meta's held has a malformed flag or digest")
    clean = {key: value for key, value in summary.items() if key in _SUMMARY_KEYS and _summary_value(value)}
    held = Held(None, None, digest, printable(reason, 500), clean, float(since))
    held.rejected = rejected
    held.here = False
    return held


def _upstream(fields: dict[str, Any]) -> Version:
    from asgi_refresh._cluster.base import BadRecord

    digest, size, fetched_at = fields.get("digest"), fields.get("size"), fields.get("fetched_at")
    if not (isinstance(digest, str) and (digest == "" or _is_digest(digest))) or not snapshots.is_time(
        fetched_at
    ):
        raise BadRecord("meta's upstream is malformed")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BadRecord("meta's upstream size is not a size")
    return Version(0, digest, float(fetched_at), None, None, size)


_SUMMARY_KEYS = frozenset(
    {
        "old_type",
        "new_type",
        "old_size",
        "new_size",
        "keys_added",
        "keys_removed",
        "keys_added_count",
        "keys_removed_count",
    }
)


def _summary_value(value: object) -> bool:
    if value is None or isinstance(value, str):
        return value is None or len(value) <= 80
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return (
        isinstance(value, list)
        and len(value) <= 20
        and all(isinstance(each, str) and len(each) <= 80 for each in value)
    )


def _is_digest(text: str) -> bool:
    return len(text) == 8 and _is_hex(text)
