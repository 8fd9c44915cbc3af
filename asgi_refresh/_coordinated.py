"""The runtime's side of coordination: one fetch per cluster, the others load what it stored.

For each refresher, every process polls the lease every third of ``lease_ttl``:
the holder renews it and is the only one that fetches; it stores each value
(encoded by the codec, never pickled) with its expiry, and the backend tells the
others, which load and publish it. A process that takes the lease over (at
startup, or when the holder died and its lease expired) keeps the cluster's
schedule: it fetches when the stored value is one ``every`` old, not at once.

When the backend fails, every process fetches for itself (logged once, shown in
``status()``) and goes back to coordinating when it answers again. Requests never
touch the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ._coordination import Codec, Coordinator, CoordinatorUnavailable, MetaValue, Stored
from ._duration import format_duration

if TYPE_CHECKING:
    from ._runtime import Runtime, _Slot

logger = logging.getLogger("asgi_refresh")

VALIDATOR_KEYS = ("digest", "etag", "last_modified")  # what HTTPSource hands over
_RESUBSCRIBE_AFTER = 1.0  # seconds between attempts to subscribe again after losing the backend
_CLOSE_TIMEOUT = 5.0


def _fetched_at(stored: Stored) -> float:
    fetched_at = stored.meta.get("fetched_at")
    return float(fetched_at) if isinstance(fetched_at, int | float) else stored.stored_at


class NotShareable(TypeError):
    """A fetched value that the codec cannot encode: a configuration error, not a bad fetch."""


class _Share:
    """What one refresher's slot knows about the cluster."""

    __slots__ = (
        "adopted",
        "answered",
        "leading",
        "local",
        "lock",
        "requested",
        "stored_at",
        "stored_by",
        "validators",
        "version",
    )

    def __init__(self) -> None:
        self.leading = False
        # The stored entry published here: its version and when it was stored. Both,
        # because a backend that lost its data (Redis restarted) numbers from 1 again.
        self.version: int | None = None
        self.stored_at: float | None = None
        self.stored_by: str | None = None  # the process (owner id) that fetched it
        self.requested = 0  # the highest refresh-now request number seen
        self.answered = 0  # the highest request number the value published here answers
        self.local = False  # a value fetched while the backend was down is published here
        self.lock: anyio.Lock | None = None  # one load of this entry at a time (made on first use)
        self.adopted: anyio.Event | None = None  # set when a stored value is published, or on takeover
        # The HTTP validators (ETag...) the lease holder stored with the value published
        # here: handed to our own source before it next fetches, so that is a 304.
        self.validators: dict[str, MetaValue] | None = None


class Coordination:
    """Coordinates one runtime's refreshers through a `Coordinator` backend."""

    def __init__(self, runtime: Runtime, coordinator: Coordinator, codec: Codec, lease_ttl: float) -> None:
        self.runtime = runtime
        self.coordinator = coordinator
        self.codec = codec
        self.lease_ttl = lease_ttl
        # The lease in the backend lasts two thirds of lease_ttl and everyone polls it
        # every third: the holder renews it twice per lease, and a holder that dies
        # right after renewing is replaced at most 2/3 + 1/3 = lease_ttl later.
        self.lease_seconds = lease_ttl * 2 / 3
        self.check_every = lease_ttl / 3
        self.available = True
        self.error: str | None = None  # why the backend is unavailable, while it is
        self.shares = {name: _Share() for name in runtime.slots}

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        await self.coordinator.open()

    async def close(self) -> None:
        """Give the leases back (so another process takes over at once), bounded."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            try:
                await self.coordinator.close()
            except Exception:
                logger.exception("asgi_refresh: closing the coordinator failed; ignored at shutdown")

    async def watch(self) -> None:
        """Follow the backend's changes: load what others stored, answer refresh-now requests."""
        while True:
            try:
                async with self.coordinator.subscribe() as changes:
                    self._back()
                    for each in self.runtime.slots.values():
                        await self._sync(each)  # what changed before we subscribed
                    async for change in changes:
                        slot = self.runtime.slots.get(change.name)
                        if slot is None or slot.overridden:
                            continue
                        share = self.shares[change.name]
                        if change.kind == "stored":
                            if change.number != share.version:
                                await self._sync(slot)
                        else:
                            share.requested = max(share.requested, change.number)
                            if share.leading:
                                self.runtime.start_refresh(slot)
            except CoordinatorUnavailable as exc:
                self._lost(exc)
            await anyio.sleep(_RESUBSCRIBE_AFTER)

    # -- the lease ---------------------------------------------------------------------

    def fetches(self, slot: _Slot) -> bool:
        """Whether this process fetches ``slot`` itself: it holds the lease, or the backend is down."""
        return not self.available or self.shares[slot.spec.name].leading

    async def keep_leases(self) -> None:
        """Poll every lease every third of ``lease_ttl``, apart from any fetch.

        Its own task: a fetch that takes longer than the lease must not lose it.
        """
        clock = self.runtime.clock
        while True:
            started = clock.monotonic()
            for slot in self.runtime.slots.values():
                if not slot.overridden:
                    await self.turn(slot)
            await clock.sleep_until(started + self.check_every)

    async def turn(self, slot: _Slot) -> None:
        """Renew or take the lease; catch up with the stored value."""
        share = self.shares[slot.spec.name]
        runtime = self.runtime
        name = slot.spec.name
        try:
            leading = await self.coordinator.acquire(name, self.lease_seconds)
            head = await self.coordinator.head(name)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return
        self._back()
        if head.requested < share.requested:  # the backend lost its data: its counters restarted
            share.requested = share.answered = 0
        share.requested = max(share.requested, head.requested)
        took_over = leading and not share.leading
        share.leading = leading
        if leading and slot.loaded and (share.local or head.version is None):
            # What we serve is not stored: fetched on our own while the backend was
            # down, or lost by a backend that came back empty. Store it for the others
            # (and for processes that start now, which would find nothing).
            share.local = False
            await runtime.share_published(slot)
        elif share.local:
            # We fetched on our own while the backend was down; the holder may not
            # have. Serve what it stored if that is newer (all agree again); if ours
            # is the newer one, have the holder fetch anew so that everyone gets it.
            share.local = False
            if not await self._sync(slot, force=True):
                try:
                    await self.coordinator.request_refresh(name)
                except CoordinatorUnavailable as exc:
                    self._lost(exc)
        elif head.version != share.version:
            await self._sync(slot)
        if took_over:
            logger.log(
                logging.INFO if share.version is not None else logging.DEBUG,
                "Refresher %r: this process holds the lease now and fetches for the others",
                name,
                extra={"refresher": name, "outcome": "lease_taken"},
            )
            runtime._reschedule(slot, self._due_after_takeover(slot))
            self._wake(share)  # a refresh-now waiting for the holder: that is us now
        # Our own last store may be newer than this read of `head`: count what it answered.
        if leading and head.requested > max(head.answered, share.answered) and slot.flight is None:
            runtime.start_refresh(slot)

    def _due_after_takeover(self, slot: _Slot) -> float:
        """When to fetch after taking the lease over: keep the cluster's schedule.

        That is when the value published here is ``every`` old (or due for renewal
        before it expires); at once if there is none.
        """
        now = self.runtime.clock.monotonic()
        if slot.last_success_mono is None:
            return now
        due = slot.last_success_mono + slot.spec.every
        if slot.expires_at is not None:
            due = min(due, slot.expires_at - slot.leeway)
        return max(now, due)

    # -- values ------------------------------------------------------------------------

    def roundtrip(self, name: str, value: Any) -> tuple[Any, bytes]:
        """The value as every process will see it (decoded from its encoding), and the encoding.

        The lease holder publishes the decoded form too, so that every worker serves
        the same thing (JSON turns a tuple into a list).
        """
        try:
            data = self.codec.encode(value)
        except Exception as exc:
            raise NotShareable(
                f"its value cannot be shared with the other processes by {self.codec!r}: {exc}"
            ) from exc
        return self.codec.decode(data), data

    async def share(self, slot: _Slot, data: bytes, meta: Mapping[str, MetaValue], answered: int) -> None:
        """Store what the lease holder fetched, for the others."""
        share = self.shares[slot.spec.name]
        if not self.available or not share.leading:
            # Not stored: the backend is down, or the lease went while we fetched. The
            # next lease poll stores it (if we hold the lease) or reconciles it.
            share.local = True
            return
        try:
            # Shielded (the backend's timeout bounds it): a value fetched just before
            # shutdown is still stored, so the next process need not fetch it again.
            with anyio.CancelScope(shield=True):
                version = await self.coordinator.store(slot.spec.name, data, meta, answered=answered)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            share.local = True
            return
        if version is None:  # the lease went to another process while we fetched
            share.leading = False
            await self._sync(slot)  # serve what the holder stored, not what we could not store
            return
        share.version, share.stored_at, share.stored_by = version, None, self.coordinator.owner
        self._answer(share, answered)

    async def _sync(self, slot: _Slot, *, force: bool = False) -> bool:
        """Load the stored entry if it is not the one published here, and publish it.

        ``force``: also when it is, unless ours was fetched later (a value fetched
        here while the backend was down must not go back to an older stored one).
        """
        share = self.shares[slot.spec.name]
        if share.lock is None:
            share.lock = anyio.Lock()
        async with share.lock:  # two loads at once could finish out of order
            return await self._load(slot, share, force)

    async def _load(self, slot: _Slot, share: _Share, force: bool) -> bool:
        """Returns whether the stored value is (now) the one published here."""
        try:
            stored = await self.coordinator.load(slot.spec.name)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return False
        if stored is None:
            share.version = share.stored_at = None  # nothing stored (a backend that lost its data)
            return False
        if not force and stored.version == share.version and share.stored_at in (None, stored.stored_at):
            share.stored_at = stored.stored_at
            return True
        if force and slot.last_success_at is not None and _fetched_at(stored) <= slot.last_success_at:
            return False  # ours is newer: keep it until the holder's fresh fetch arrives
        try:
            value = self.codec.decode(stored.data)
        except Exception as exc:
            logger.error(
                "Refresher %r: the stored value (version %d) cannot be decoded by %r: %s; ignored",
                slot.spec.name,
                stored.version,
                self.codec,
                exc,
                extra={"refresher": slot.spec.name, "outcome": "undecodable"},
            )
            share.version, share.stored_at = stored.version, stored.stored_at
            self.runtime.adopt_failed(slot, f"the stored value cannot be decoded: {exc}")
            return False
        share.version, share.stored_at, share.stored_by = stored.version, stored.stored_at, stored.stored_by
        if stored.answered < share.answered:  # the backend lost its data: its counters restarted
            share.requested = share.answered = 0
        share.requested = max(share.requested, stored.answered)
        now_wall = self.runtime.clock.wall()
        expires = stored.meta.get("expires_at")
        leeway = stored.meta.get("leeway")
        self.runtime.adopt(
            slot,
            value,
            age=max(0.0, now_wall - _fetched_at(stored)),
            expires_in=expires - now_wall if isinstance(expires, int | float) else None,
            leeway=float(leeway) if isinstance(leeway, int | float) else 0.0,
        )
        self._answer(share, stored.answered)
        validators = {key: stored.meta[key] for key in VALIDATOR_KEYS if key in stored.meta}
        share.validators = validators or None
        return True

    def before_fetch(self, slot: _Slot) -> None:
        """Hand the stored validators to our source: its first fetch as lease holder is conditional."""
        share = self.shares[slot.spec.name]
        validators, share.validators = share.validators, None
        take = getattr(slot.spec.fetch, "_import_validators", None)
        if validators and take is not None:
            take(validators, self.runtime.state[slot.spec.name])

    # -- refresh now -------------------------------------------------------------------

    async def ask_leader(self, slot: _Slot) -> bool:
        """Refresh-now on a process that does not hold the lease: the holder fetches.

        Returns:
            True once this process publishes the value that answers the request;
            False when this process should fetch itself instead: the backend is
            down, or this process took the lease over while waiting.

        Raises:
            TimeoutError: no answer within the refresher's timeout plus ``lease_ttl``.
        """
        name = slot.spec.name
        share = self.shares[name]
        try:
            number = await self.coordinator.request_refresh(name)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return False
        if number <= share.answered:  # the backend lost its data: its counters restarted
            share.requested = share.answered = 0
        limit = (slot.spec.timeout or 30.0) + self.lease_ttl
        with anyio.move_on_after(limit):
            while share.answered < number:
                if share.leading or not self.available:
                    return False
                share.adopted = share.adopted or anyio.Event()
                with anyio.move_on_after(self.check_every):
                    await share.adopted.wait()
                if share.answered < number:
                    await self._sync(slot)  # in case the notification was lost
            return True
        raise TimeoutError(
            f"the process holding the lease did not store a new value within {format_duration(limit)}"
        )

    def _answer(self, share: _Share, answered: int) -> None:
        share.answered = max(share.answered, answered)
        self._wake(share)

    def _wake(self, share: _Share) -> None:
        if share.adopted is not None:
            share.adopted.set()
            share.adopted = None

    # -- backend health ------------------------------------------------------------------

    def _lost(self, exc: CoordinatorUnavailable) -> None:
        if not self.available:
            return
        self.available = False
        self.error = str(exc)
        logger.warning(
            "asgi_refresh: the coordinator is unavailable (%s); "
            "each process fetches for itself until it is back",
            exc,
            extra={"outcome": "coordinator_unavailable"},
        )
        now = self.runtime.clock.monotonic()
        for slot in self.runtime.slots.values():
            share = self.shares[slot.spec.name]
            self._wake(share)  # a refresh-now waiting for the holder: fetch locally instead
            if not share.leading and not slot.overridden:
                # Followers had no schedule of their own: fetch when the value is due.
                base = slot.last_success_mono
                self.runtime._reschedule(slot, now if base is None else max(now, base + slot.spec.every))
            share.leading = False

    def _back(self) -> None:
        if self.available:
            return
        self.available = True
        self.error = None
        logger.info(
            "asgi_refresh: the coordinator is back; one process fetches for all again",
            extra={"outcome": "coordinator_back"},
        )

    def status(self, slot: _Slot) -> dict[str, Any]:
        share = self.shares[slot.spec.name]
        role = "standalone" if not self.available else "leader" if share.leading else "follower"
        return {
            "role": role,
            "process": self.coordinator.owner,
            "version": share.version,
            "stored_by": share.stored_by,
            "error": self.error,
        }
