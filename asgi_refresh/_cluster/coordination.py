"""The runtime's side of coordination: one fetch per cluster, the others load what it stored.

For each refresher, every process polls the lease every third of ``lease_ttl``:
the holder renews it and is the only one that fetches; it stores each value
(encoded by the codec, never pickled) with when it was fetched, and the backend
tells the others, which load and publish it. A process that takes the lease over
(at startup, or when the holder died and its lease expired) keeps the cluster's
schedule: it fetches when the stored value is one ``every`` old, not at once.

What the backend holds is untrusted: a record is checked field by field (by the
backend), bound to the source that produced it (a fingerprint), and its value
passes the source's own ``validate`` before it is published. A record that fails
any of that is a failed load of that one refresher: this process then fetches for
itself until the record is good again.

Time crosses processes as ages and lifetimes measured on the backend's clock, not
as instants of the storer's clock, so hosts whose clocks disagree still agree on
how old a value is. A process never publishes a stored value that may be older
than one it fetched itself and published: which fetch came first is judged in
real time (this process's monotonic clock against the backend's, with the
uncertainty of that measurement), whatever clock the schedule runs on.

When the backend fails, every process fetches for itself (one WARNING per outage,
however often it flaps; one INFO once it has stayed back) and goes back to
coordinating when it answers again. Requests never touch the backend.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Mapping
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from asgi_refresh import _schedule as schedule
from asgi_refresh._clock import Clock
from asgi_refresh._cluster.base import (
    BadRecord,
    Codec,
    Coordinator,
    CoordinatorUnavailable,
    Head,
    MetaValue,
    Poll,
    Stored,
)
from asgi_refresh._cluster.records import MAX_TIMESTAMP
from asgi_refresh._contain import describe_error, escapes
from asgi_refresh._duration import format_duration
from asgi_refresh._fingerprint import checked_handover, fingerprint
from asgi_refresh._keeper import ClusterKept, cluster_meta, parse_version, read_cluster_meta
from asgi_refresh._refresher import RESERVED_PREFIX, Refresher
from asgi_refresh._slot import History, Kept, Version
from asgi_refresh._sources.base import Source
from asgi_refresh._text import printable

if TYPE_CHECKING:
    from asgi_refresh._status import CoordinationStatus

T = TypeVar("T")


class Entry(Protocol):
    """One refresher as coordination reads it: the runtime's record of it, read-only here."""

    @property
    def spec(self) -> Refresher:
        """Its description."""

    @property
    def source(self) -> Source:
        """Its source, opened by the runtime."""

    @property
    def loaded(self) -> bool:
        """Whether a fetched (or adopted) value is published."""

    @property
    def overridden(self) -> bool:
        """Whether a test pinned its value (coordination leaves it alone)."""

    @property
    def fetching(self) -> bool:
        """Whether a fetch is under way."""

    @property
    def history(self) -> History:
        """Its fetches so far: how many succeeded, how long the last took, when it was fetched."""

    @property
    def expires_at(self) -> float | None:
        """When the published value expires (a `Fresh`), on the runtime's clock."""

    @property
    def leeway(self) -> float:
        """How long before its expiry it is renewed."""

    @property
    def kept(self) -> Kept:
        """Its last known good: versions, a pin, a value held back."""


class Host(Protocol):
    """What coordination needs from the runtime: its clock and refreshers, and six things to do.

    The runtime is the only implementation; coordination never reaches past this.
    """

    @property
    def clock(self) -> Clock:
        """The schedule's clock."""

    @property
    def entries(self) -> Mapping[str, Entry]:
        """Every refresher, by name."""

    def published(self, name: str) -> Any:
        """The value published for ``name`` now."""

    def reschedule(self, name: str, due: float) -> None:
        """Fetch ``name`` at ``due`` (the runtime's clock), or never (``inf``) until woken."""

    def refresh_now(self, name: str) -> None:
        """Start a fetch of ``name`` now, unless one is under way."""

    def adopt(
        self,
        name: str,
        value: Any,
        *,
        age: float,
        expires_in: float | None,
        leeway: float,
        data: bytes | None = None,
        cluster: ClusterKept | None = None,
    ) -> None:
        """Publish a value another process fetched ``age`` seconds ago (its encoding: ``data``)."""

    async def act(self, name: str, action: str, argument: str | None) -> None:
        """Carry out an operator's action (accept, reject, pin, unpin, rollback) asked on another process."""

    def adopt_failed(self, name: str, error: str) -> None:
        """Count a stored value that cannot be used as a failed load of ``name``."""

    async def share_published(self, name: str) -> None:
        """Store the value published here for the others."""


logger = logging.getLogger("asgi_refresh")

_RESUBSCRIBE_AFTER = 1.0  # seconds between attempts to subscribe again after losing the backend
_CLOSE_TIMEOUT = 5.0
# An outage is over once the backend has answered for this long without failing
# again: a backend that flaps is one outage (one WARNING), not one per flap.
_SETTLE = 10.0
_WARN_EVERY = 60.0  # at most one WARNING per minute about the backend, however it flaps
# Refresh-now requests that reach the holder less than this after its last fetch
# and store (real seconds) wait for the end of it: together, they get one fetch.
_REFRESH_GAP = 0.05
_REPEAT_WARNING_EVERY = 300.0  # the same unusable record of one refresher: logged again this often
# How fast two clocks may drift apart (NTP slews a clock by at most 500 ppm): the
# uncertainty of a clock offset measured a while ago grows by this per second.
_DRIFT = 1e-3
_MAX_SECONDS = 1e9  # ages, lifetimes: about 31 years; more is not a record we wrote
_THREAD_THRESHOLD = 64 * 1024  # decode and validate a stored value this big in a worker thread
# An operator's action asked on a follower goes to the holder through a control record
# per refresher, written under a short lease of its own.
_CONTROL = RESERVED_PREFIX + "control__"
_CONTROL_LEASE = 5.0
_CONTROL_ATTEMPTS = 20
_CONTROL_RETRY = 0.05
_ACTIONS = frozenset({"accept", "reject", "pin", "unpin", "rollback"})


def _version_record(name: str, index: int) -> str:
    """The backend's name for slot ``index`` of ``name``'s kept versions."""
    return f"{RESERVED_PREFIX}version{index}__{name}"


class NotShareable(TypeError):
    """A fetched value that the codec cannot encode: a configuration error, not a bad fetch."""

    cannot_be_retried = True  # the runtime reads this: retrying the fetch would not help


class _Outcome(Enum):
    """What loading the stored entry came to, as far as the caller cares."""

    ADOPTED = "adopted"  # the stored value is published here now (or already was)
    OURS_NEWER = "ours_newer"  # the value published here is newer: kept
    UNSURE = "unsure"  # the two fetches overlap (within what we can measure): ours kept
    NONE = "none"  # nothing is stored
    BAD = "bad"  # the entry cannot be used (malformed, another app's, invalid)
    UNAVAILABLE = "unavailable"  # the backend did not answer


class _Share:
    """What one refresher's slot knows about the cluster."""

    __slots__ = (
        "adopted",
        "answered",
        "asked",
        "bad",
        "bad_logged_at",
        "began",
        "checked",
        "continued",
        "control",
        "control_error",
        "done",
        "ended",
        "epoch",
        "leading",
        "local",
        "lock",
        "mark",
        "outcome",
        "queued",
        "requested",
        "seen",
        "started",
        "stored_by",
        "storing",
        "validators",
        "version",
        "versions_stored",
        "waiting",
        "was_leading",
    )

    def __init__(self) -> None:
        self.leading = False
        self.was_leading = False  # held the lease when the backend went away
        self.version: int | None = None  # the stored version published here
        self.stored_by: str | None = None  # the process (owner id) that fetched it
        # The entry last examined, as (version, stored_at): both, because a backend
        # that lost its data (Redis restarted) numbers from 1 again.
        self.seen: tuple[int, float] | None = None
        self.checked: int | None = None  # the version of that entry
        self.outcome = _Outcome.NONE  # and what came of it
        self.requested = 0  # the highest refresh-now request number seen
        self.answered = 0  # the highest request number the value published here answers
        # The value published here was fetched by this process and is not stored: a
        # stored value replaces it only if it was provably fetched after it.
        self.local = False
        # The refresh-now request we made after the local value was fetched (0: none):
        # a stored value that answers it was fetched after ours, whatever the clocks say.
        self.asked = 0
        # When the fetch behind the published value started (at the earliest) and
        # ended (at the latest), in real time (`time.monotonic`), and when our own
        # last fetch began.
        self.started: float | None = None
        self.ended: float | None = None
        self.began: float | None = None
        # The slot's refresh_count when we last knew where its value came from: when
        # it changes, a fetch of this process succeeded.
        self.mark = 0
        self.bad: str | None = None  # why the stored entry cannot be used here; we fetch meanwhile
        self.bad_logged_at = -math.inf
        self.lock: anyio.Lock | None = None  # one load or store of this entry at a time (made on first use)
        self.storing = False  # a store of ours is under way
        self.queued = False  # a refresh-now came while a fetch ran: fetch again after it
        self.done = -math.inf  # when our last store ended (real time)
        # What our fetch under way may answer: the backend's epoch it began in (-1: it
        # began while we did not coordinate, and answers nothing).
        self.epoch = -1
        self.waiting = False  # a refresh-now fetch starts once _REFRESH_GAP is over
        self.adopted: anyio.Event | None = None  # set when a stored value is published, or on takeover
        # The HTTP validators (ETag...) the lease holder stored with the value published
        # here: handed to our own source before it next fetches, so that is a 304.
        self.validators: dict[str, str] | None = None
        # Whether our source has been told (`Source.take_over`) of the value last adopted
        # from the store: it continues from that value, not from what it last fetched.
        self.continued = True
        # The last operator action (accept, pin...) the lease holder carried out, by
        # number, and why it could not (nothing held back, no such version).
        self.control = 0
        self.versions_stored = 0  # the highest kept version number stored in the backend
        self.control_error: str | None = None


class _BackendClock:
    """Where the backend's clock stands against this process's real monotonic clock.

    Real time (`time.monotonic`), not the runtime's injectable clock: it orders
    real fetches against what the backend saw. Measured at every read that
    reports the backend's time: the offset is taken
    at the middle of the call, give or take half its duration; the sample with
    the smallest uncertainty (grown by the drift since it was taken) is kept.
    """

    def __init__(self) -> None:
        self.offset: float | None = None
        self.error = math.inf
        self.at = 0.0

    def sample(self, backend: object, before: float, after: float) -> None:
        if not _finite(backend):
            return
        assert isinstance(backend, int | float)
        error = max(after - before, 0.0) / 2
        if error <= self.uncertainty(after):
            self.offset, self.error, self.at = backend - (before + after) / 2, error, after

    def uncertainty(self, now: float) -> float:
        return self.error + _DRIFT * max(now - self.at, 0.0) if self.offset is not None else math.inf


class Coordination:
    """Coordinates one runtime's refreshers through a `Coordinator` backend."""

    def __init__(self, runtime: Host, coordinator: Coordinator, codec: Codec, lease_ttl: float) -> None:
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
        self.shares = {name: _Share() for name in runtime.entries}
        self.fingerprints = {name: fingerprint(slot.source, codec) for name, slot in runtime.entries.items()}
        self.max_bytes: int | None = getattr(coordinator, "max_bytes", None)
        self._clock = _BackendClock()
        # The current outage (None: none), when it began, how often it flapped, when
        # the backend answered again, and when we last warned about one.
        self._outage: float | None = None
        self._interruptions = 0
        self._up_since = 0.0
        self._warned_at = -math.inf
        self._tasks: TaskGroup | None = None
        # Bumped whenever the backend is found to have lost its data: refresh-now
        # numbers from before mean nothing after.
        self.epoch = 0

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend for this lifespan (it does not contact it)."""
        await self.coordinator.open()

    async def close(self) -> None:
        """Give the leases back (so another process takes over at once), bounded."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            try:
                await self.coordinator.close()
            except Exception:
                logger.exception("asgi_refresh: closing the coordinator failed; ignored at shutdown")

    async def watch(self) -> None:
        """Follow the backend's changes: load what others stored, answer refresh-now requests.

        Nothing a backend (or whoever writes to it) does ends this loop: a lost
        subscription is an outage, anything else is logged and the loop goes on.
        """
        async with anyio.create_task_group() as self._tasks:  # refresh-now fetches put off a little
            while True:
                try:
                    async with self.coordinator.subscribe() as changes:
                        self._back()
                        for each in self.runtime.entries.values():
                            if not each.overridden:
                                await self._sync(each)  # what changed before we subscribed
                        async for change in changes:
                            await self._on_change(change)
                except CoordinatorUnavailable as exc:
                    self._lost(exc)
                except BaseException as exc:  # a backend of our own making: not worth a stopped runtime
                    if escapes(exc):
                        raise
                    self._lost(_unavailable("its subscription", exc))
                # Real time, as the backend's timeouts: it paces reconnecting to a real
                # server, and is no part of the refresh schedule a test clock drives.
                await anyio.sleep(_RESUBSCRIBE_AFTER)

    async def _on_change(self, change: object) -> None:
        name = getattr(change, "name", None)
        if isinstance(name, str) and name.startswith(_CONTROL):
            slot = self.runtime.entries.get(name[len(_CONTROL) :])
            if slot is not None and self.shares[slot.spec.name].leading:
                await self._carry_out(slot)
            return
        slot = self.runtime.entries.get(name) if isinstance(name, str) else None
        number = getattr(change, "number", None)
        if slot is None or slot.overridden or not isinstance(number, int):
            return  # not one of our names, or not a change at all
        share = self.shares[slot.spec.name]
        kind = getattr(change, "kind", None)
        if kind == "stored":
            if not (share.leading and number == share.version):  # not our own store
                await self._sync(slot)
        elif kind == "refresh_requested":
            share.requested = max(share.requested, number)
            if share.leading:
                self._fetch_for_others(slot)

    # -- the lease ---------------------------------------------------------------------

    def requested(self, name: str) -> int:
        """The highest refresh-now request number seen for ``name``: what a fetch starting now answers."""
        return self.shares[name].requested

    def fetches(self, slot: Entry) -> bool:
        """Whether this process fetches ``slot`` itself.

        It holds the lease; or the backend is down; or the stored entry is one it
        cannot use (another app's, malformed, invalid).
        """
        share = self.shares[slot.spec.name]
        return not self.available or share.leading or share.bad is not None

    async def keep_leases(self) -> None:
        """Poll every lease every third of ``lease_ttl``, apart from any fetch.

        Its own task: a fetch that takes longer than the lease must not lose it.
        """
        clock = self.runtime.clock
        while True:
            started = clock.monotonic()
            slots = [slot for slot in self.runtime.entries.values() if not slot.overridden]
            # What we counted before the read: requests announced meanwhile are not a restart.
            known = {slot.spec.name: self.shares[slot.spec.name].requested for slot in slots}
            polled = await self._poll([slot.spec.name for slot in slots]) if slots else {}
            for slot in slots:
                if polled is None:  # the backend failed: every process fetches for itself
                    break
                try:
                    await self.turn(slot, polled[slot.spec.name], known[slot.spec.name])
                except BaseException as exc:  # a backend of our own making: the other leases go on
                    if escapes(exc):
                        raise
                    self._lost(_unavailable(f"polling the lease of {slot.spec.name!r}", exc))
            self._settle()
            await clock.sleep_until(started + self.check_every)

    async def _poll(self, names: list[str]) -> dict[str, Poll] | None:
        """Every name's lease and head, in one `Coordinator.poll`; None if the backend failed."""
        before = time.monotonic()
        # A backend of one's own that does not subclass the protocol gets its default.
        poll = getattr(self.coordinator, "poll", None) or partial(Coordinator.poll, self.coordinator)
        try:
            answer: object = await poll(names, self.lease_seconds)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return None
        except BaseException as exc:  # a backend of our own making
            if escapes(exc):
                raise
            self._lost(_unavailable("polling the leases", exc))
            return None
        after = time.monotonic()
        polled = {name: _checked_poll(answer, name) for name in names}
        times = [poll.head.time for poll in polled.values() if isinstance(poll.head, Head)]
        if times:
            self._clock.sample(times[0], before, after)
        return polled

    async def turn(self, slot: Entry, polled: Poll, known: int) -> None:
        """Act on one name's polled lease and head: fetch, store, or catch up with the stored entry."""
        share = self.shares[slot.spec.name]
        runtime = self.runtime
        name = slot.spec.name
        leading = polled.held
        head: Head | None = None
        problem = ""
        if isinstance(polled.head, BadRecord):
            problem = f"its stored entry is malformed: {polled.head}"
        else:
            head = polled.head
        self._back()
        took_over = leading and not share.leading
        share.leading = leading
        if not leading:
            share.was_leading = False  # another holds it now: taking it back is a takeover
        if head is not None:
            if head.requested < known or (head.version is None and share.version is not None):
                # The backend lost its data (Redis restarted empty): its counters
                # restarted, and what we counted before means nothing now.
                share.requested, share.answered, share.version = 0, head.answered, None
                self.epoch += 1
            share.requested = max(share.requested, head.requested)
        if leading:
            if slot.loaded and (head is None or head.version is None or share.local or share.bad):
                # What we serve is not stored: fetched on our own while the backend was
                # down, lost by a backend that came back empty, or the entry is damaged
                # or another app's. Store it for the others (and for processes that
                # start now), unless what is stored is newer than ours.
                outcome = await self._sync(slot) if head is not None and head.version is not None else None
                if outcome is _Outcome.UNSURE:
                    # Neither is provably newer: a fetch now is newer than both.
                    if not slot.fetching:
                        runtime.refresh_now(slot.spec.name)
                elif outcome is not _Outcome.ADOPTED:
                    await runtime.share_published(slot.spec.name)
            elif head is not None and head.version != share.version:
                await self._sync(slot)
        elif head is None:
            self._bad(slot, share, problem)
        elif head.version != share.checked or (share.local and not share.asked):
            # A new entry (a lost notification), or a value we fetched on our own to
            # weigh against what is stored.
            await self._sync(slot)
        if took_over:
            logger.log(
                logging.INFO if share.version is not None and not share.was_leading else logging.DEBUG,
                "Refresher %r: this process holds the lease now and fetches for the others",
                name,
                extra={"refresher": name, "outcome": "lease_taken"},
            )
            share.was_leading = False
            runtime.reschedule(slot.spec.name, self._due_after_takeover(slot))
            self._wake(share)  # a refresh-now waiting for the holder: that is us now
            # An operator's action the last holder did not get to. Only refreshers with
            # guards or versions have actions: the others cost no backend call here
            # (a thousand refreshers taken over at startup would cost a thousand reads).
            if self._tasks is not None and slot.spec.keep_versions:
                # First what the last holder kept: a rollback needs it.
                self._tasks.start_soon(self._take_over, slot, name=f"asgi_refresh:{name}:control")
            elif self._tasks is not None and slot.spec.guard:
                self._tasks.start_soon(self._carry_out, slot, name=f"asgi_refresh:{name}:control")
        # Our own last store may be newer than this read of `head`: count what it answered.
        if leading and head is not None and head.requested > max(head.answered, share.answered):
            self._fetch_for_others(slot)

    def _due_after_takeover(self, slot: Entry) -> float:
        """When to fetch after taking the lease over: keep the cluster's schedule."""
        return self._on_our_own(
            slot,
            schedule.due_after_takeover(
                now=self.runtime.clock.monotonic(),
                every=slot.spec.every,
                last_success=slot.history.last_success_mono,
                expires_at=slot.expires_at,
                leeway=slot.leeway,
            ),
        )

    def _due_when_standalone(self, slot: Entry, now: float) -> float:
        """When a follower fetches once it must fetch for itself: when its value is due."""
        base = slot.history.last_success_mono
        return self._on_our_own(
            slot, schedule.due_when_standalone(now=now, every=slot.spec.every, last_success=base)
        )

    def _on_our_own(self, slot: Entry, due: float) -> float:
        """``due``; at once for a source that holds a stream (it has ``state()``, as `SSESource`).

        A source opens at its first fetch, so a process that starts fetching for
        itself would hear none of the stream's pushes until ``due``, up to ``every``
        later. Its first fetch costs at most a catch-up request.
        """
        return self.runtime.clock.monotonic() if callable(getattr(slot.source, "state", None)) else due

    def _fetch_for_others(self, slot: Entry) -> None:
        """A refresh-now at the holder: at most one fetch under way and one queued after it.

        Requests that arrive while a fetch (and its store) runs, or within
        `_REFRESH_GAP` after it, are answered by one next fetch, however many they
        are: a flood of requests costs the upstream a few fetches per second.
        """
        share = self.shares[slot.spec.name]
        if slot.fetching or share.storing:
            # Started once the store is done (`share`); if the fetch fails, the next
            # lease poll sees the requests still pending.
            share.queued = True
            return
        if share.waiting:
            return  # a fetch starts in a moment: it answers this request too
        wait = share.done + _REFRESH_GAP - time.monotonic()
        if wait <= 0 or self._tasks is None:
            self.runtime.refresh_now(slot.spec.name)
        else:
            share.waiting = True
            name = f"asgi_refresh:{slot.spec.name}:queued"
            self._tasks.start_soon(self._fetch_after, slot, wait, name=name)

    async def _fetch_after(self, slot: Entry, wait: float) -> None:
        share = self.shares[slot.spec.name]
        try:
            await anyio.sleep(wait)  # real time: it paces fetches from a real upstream
        finally:
            share.waiting = False
        if share.leading and share.requested > share.answered:
            self._fetch_for_others(slot)

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
        if self.max_bytes is not None and len(data) > self.max_bytes:
            raise NotShareable(
                f"its value is {len(data)} bytes once encoded, over the coordinator's max_bytes "
                f"({self.max_bytes}); raise max_bytes on the coordinator if that is right"
            )
        return self.codec.decode(data), data

    async def share(self, slot: Entry, data: bytes, answered: int) -> None:
        """Store the value published here for the others, if this process holds the lease.

        Called after every fetch of this process that succeeded (with the requests
        it answers), and to store again what is published (``answered`` 0).
        """
        share = self.shares[slot.spec.name]
        if slot.history.refresh_count != share.mark:
            # A fetch of ours succeeded (just now: we are called right after it): the
            # value published here is ours until it is stored.
            share.mark, share.ended = slot.history.refresh_count, time.monotonic()
            took = slot.history.last_duration or 0.0
            began = share.began if share.began is not None else share.ended - took
            share.started = min(began, share.ended)
            share.local, share.asked = True, 0
            share.seen = None  # the stored entry is to be weighed against this value anew
        if answered and share.epoch != self.epoch:
            # The fetch began while we did not coordinate, or before the backend lost
            # its data: the requests it knew of are not the ones counted now.
            answered = 0
        if not self.available or not share.leading:
            # Not stored: the backend is down, or another process holds the lease. The
            # next lease poll stores it (if we hold the lease) or reconciles it.
            return
        if share.lock is None:
            share.lock = anyio.Lock()
        share.storing = True
        version = None
        try:
            # One store at a time, in the order the fetches finished: versions follow
            # fetch order. Shielded (the backend's timeout bounds it): a value fetched
            # just before shutdown is still stored, so the next process need not fetch it.
            with anyio.CancelScope(shield=True):
                async with share.lock:
                    if self.available and share.leading:  # still, after waiting for the lock
                        version = await self._store(slot, share, data, answered)
                    if version is not None and slot.spec.keep_versions:
                        await self._store_versions(slot, share)
        finally:
            share.storing = False
            share.done = time.monotonic()
        if version is not None:
            share.version, share.stored_by, share.local = version, self.coordinator.owner, False
            share.seen = None  # its stored_at is the backend's: read it when we next load
            share.checked = version
            self._clear_bad(slot, share)
            self._answer(share, answered)
        if share.queued:  # refresh-now requests came while we fetched and stored
            share.queued = False
            if share.leading and share.requested > share.answered:
                self._fetch_for_others(slot)

    async def _store(self, slot: Entry, share: _Share, data: bytes, answered: int) -> int | None:
        name = slot.spec.name
        try:
            version = await self.coordinator.store(name, data, self._meta(slot, share), answered=answered)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return None
        except Exception as exc:  # a value over the backend's limit, a backend of our own making
            self._lost(_unavailable(f"storing the value of {name!r}", exc))
            return None
        if not isinstance(version, int) or isinstance(version, bool):
            share.leading = False  # the lease went to another process while we fetched
            await self._load(slot, share)  # serve what the holder stored if it is newer than ours
            return None
        return version

    def _meta(self, slot: Entry, share: _Share) -> dict[str, MetaValue]:
        """What is stored with the value: its fingerprint, and its times on the backend's clock.

        The holder converts its monotonic instants to the backend's clock with the
        offset it measured, and stores how uncertain that is; ``started`` is the
        earliest the fetch can have started. Durations (the lifetime of a token)
        need no clock at all.
        """
        now = time.monotonic()
        offset, error = self._clock.offset, self._clock.uncertainty(now)
        if offset is None:  # a backend that does not tell its time: this host's clock stands in
            offset, error = time.time() - now, 0.0
        ended = share.ended if share.ended is not None else now - self._published_age(slot)
        started = share.started if share.started is not None else ended
        meta: dict[str, MetaValue] = {
            "source": self.fingerprints[slot.spec.name],
            "fetched_at": ended + offset,
            "started": started + offset - error,
            "error": error,
        }
        if slot.expires_at is not None and slot.history.last_success_mono is not None:
            # A duration, on the schedule's clock: no clock needs to agree with another.
            meta["lifetime"] = slot.expires_at - slot.history.last_success_mono
            meta["leeway"] = slot.leeway
        meta.update(cluster_meta(slot.kept, share.control))
        if share.control_error is not None:
            meta["control_error"] = share.control_error
        pinned = slot.kept.pinned is not None
        if pinned or slot.kept.withheld:
            pass  # the upstream's validators are for what it has, not for the published value
        elif share.validators is None:
            meta.update(
                slot.source.handover() or {}
            )  # an HTTPSource's ETag: the next holder asks "changed since?"
        elif share.validators:
            meta.update(share.validators)  # a value we adopted: pass on what came with it
        return meta

    def _published_age(self, slot: Entry) -> float:
        """How old the value published here is, when no fetch of ours made it (it came from a snapshot).

        Stored as fetched now, a snapshot's value would look new to every follower
        (never stale) and to the snapshots they write of it.
        """
        success = slot.history.last_success_mono
        return 0.0 if success is None else max(self.runtime.clock.monotonic() - success, 0.0)

    async def _sync(self, slot: Entry) -> _Outcome:
        """Load the stored entry and publish it, unless it is unusable or maybe older than ours.

        If ours may be the newer one (we fetched it on our own: the backend was
        down, or its entry unusable), have the holder fetch anew, once, so that
        everyone gets a value newer than both.
        """
        share = self.shares[slot.spec.name]
        if share.lock is None:
            share.lock = anyio.Lock()
        async with share.lock:  # two loads at once could finish out of order
            outcome = await self._load(slot, share)
        kept = outcome in (_Outcome.OURS_NEWER, _Outcome.UNSURE)
        if kept and share.local and not share.asked and not share.leading and self.available:
            try:
                number = await self.coordinator.request_refresh(slot.spec.name)
                if not isinstance(number, int) or number <= share.answered:
                    share.requested = share.answered = 0  # the backend's counters restarted
                    self.epoch += 1
                share.asked = number if isinstance(number, int) and number > 0 else 1
            except CoordinatorUnavailable as exc:
                self._lost(exc)
            except BaseException as exc:  # a backend of our own making
                if escapes(exc):
                    raise
                self._lost(_unavailable("asking for a refresh", exc))
        return outcome

    async def _load(self, slot: Entry, share: _Share) -> _Outcome:
        name = slot.spec.name
        before = time.monotonic()
        try:
            stored = _checked_stored(await _reading(self.coordinator.load(name)))
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return _Outcome.UNAVAILABLE
        except BadRecord as exc:
            return self._bad(slot, share, f"its stored entry is malformed: {exc}")
        after = time.monotonic()
        if stored is None:
            # Nothing stored (a backend that lost its data).
            share.version = share.seen = share.checked = None
            return _Outcome.NONE
        self._clock.sample(stored.time, before, after)
        if (stored.version, stored.stored_at) == share.seen:  # examined already
            if share.bad is not None:
                return _Outcome.BAD
            if share.outcome is _Outcome.ADOPTED:
                share.version = stored.version  # (forgotten if the backend seemed to lose its data)
            return share.outcome
        share.seen, share.checked = (stored.version, stored.stored_at), stored.version
        if stored.version == share.version and stored.stored_by == self.coordinator.owner:
            share.outcome = _Outcome.ADOPTED  # our own last store: what we publish already
            return share.outcome
        share.outcome = await self._examine(slot, share, stored, before, after)
        return share.outcome

    async def _examine(
        self, slot: Entry, share: _Share, stored: Stored, before: float, after: float
    ) -> _Outcome:
        """Publish ``stored`` unless it is another app's, unusable, or not newer than ours."""
        name = slot.spec.name
        if stored.meta.get("source") != self.fingerprints[name]:
            return self._bad(
                slot,
                share,
                "its stored entry was written by a refresher with another source or codec "
                "(another app using the same backend and prefix, or another version of this one); "
                "not used: give each app its own prefix= on the coordinator",
                foreign=True,
            )
        try:
            times = self._times(stored, before, after)
            cluster = read_cluster_meta(stored.meta)
        except BadRecord as exc:
            return self._bad(slot, share, f"its stored entry is malformed: {exc}")
        started, ended, age, lifetime, leeway = times
        try:
            value = await self._decoded(slot, stored.data)
        except BadRecord as exc:
            return self._bad(slot, share, str(exc))
        self._clear_bad(slot, share)  # a good entry, whether or not it is newer than ours
        if share.ended is not None and share.started is not None:
            # A value we fetched ourselves and never stored is replaced only by one
            # provably fetched after it; a stored one we published, by any value not
            # provably fetched before it (one holder stores in the order it fetched).
            newer = ended < share.started
            # A value that answers the refresh we asked for after fetching ours was
            # fetched after the holder heard of it: newer, whatever the clocks say.
            answers = share.local and 0 < share.asked <= stored.answered
            if newer or (share.local and started < share.ended and not answers):
                self._answer(share, stored.answered)  # the holder did answer those requests
                return _Outcome.OURS_NEWER if newer else _Outcome.UNSURE
        if stored.answered < share.answered:  # the backend lost its data: its counters restarted
            share.requested = share.answered = 0
            self.epoch += 1
        share.requested = max(share.requested, stored.answered)
        age += time.monotonic() - after  # decoding took a while
        error = stored.meta.get("control_error")
        share.control = max(share.control, cluster.control)
        share.control_error = printable(error, 300) if isinstance(error, str) else None
        self.runtime.adopt(
            slot.spec.name,
            value,
            age=age,
            expires_in=None if lifetime is None else lifetime - age,
            leeway=leeway,
            data=stored.data,
            cluster=cluster,
        )
        share.version, share.stored_by = stored.version, stored.stored_by
        share.started, share.ended, share.mark = started, ended, slot.history.refresh_count
        share.local, share.asked = False, 0
        self._answer(share, stored.answered)
        share.validators, share.continued = checked_handover(stored.meta), False
        return _Outcome.ADOPTED

    def _times(
        self, stored: Stored, before: float, after: float
    ) -> tuple[float, float, float, float | None, float]:
        """The stored value's times: fetch start and end, age, lifetime, leeway.

        The start is the earliest and the end the latest the fetch can have
        started and ended, in real time (`time.monotonic`); the age is from its end to now,
        the lifetime from its end to its expiry (a token). Measured on the
        backend's clock (``stored.time``, when it answered this load, somewhere
        between ``before`` and ``after`` on ours), so the storer's clock and ours
        need not agree. A backend that cannot tell its time: our wall clock stands
        in (then hosts' clock skew shows).
        """
        meta = stored.meta
        fetched_at, started_at = _number(meta, "fetched_at"), _number(meta, "started")
        error = _number(meta, "error")
        now = stored.time if stored.time is not None else time.time()
        if stored.time is None:
            before = after
        if fetched_at is None or started_at is None or error is None:
            raise BadRecord("meta lacks the times of the fetch (fetched_at, started, error)")
        if not started_at <= fetched_at or error > _MAX_SECONDS or now - started_at > _MAX_SECONDS:
            raise BadRecord("meta's times are out of range or out of order")
        started = started_at - now + before
        ended = fetched_at + error - now + after
        age = max(now - fetched_at, 0.0)
        lifetime = _number(meta, "lifetime", low=-_MAX_SECONDS, high=_MAX_SECONDS)
        if "lifetime" in meta and lifetime is None:
            raise BadRecord("meta's lifetime is not a number of seconds")
        leeway = _number(meta, "leeway", high=_MAX_SECONDS) if "leeway" in meta else 0.0
        if leeway is None:
            raise BadRecord("meta's leeway is not a number of seconds")
        return started, ended, age, lifetime, leeway

    async def _decoded(self, slot: Entry, data: bytes) -> Any:
        """The stored value decoded, and checked as the source checks what it fetches.

        Big values are decoded and validated in a worker thread, bounded by the
        refresher's timeout: the event loop goes on meanwhile.
        """
        check = slot.source.check

        def decode() -> Any:
            try:
                value = self.codec.decode(data)
            except BaseException as exc:  # user code (a codec): whatever it raises refuses the value
                raise BadRecord(
                    f"its stored value cannot be decoded by {self.codec!r}: {_describe(exc)}"
                ) from None
            try:
                return check(value)
            except BaseException as exc:  # user code (a validate): whatever it raises refuses the value
                raise BadRecord(
                    f"its stored value does not pass the source's checks ({_describe(exc)}); "
                    "not used (another app, another version of this one, or a validate that "
                    "does not accept what it returns)"
                ) from None

        if len(data) < _THREAD_THRESHOLD:
            return decode()
        limit = slot.spec.timeout or 30.0
        clock = self.runtime.clock
        with clock.move_on_at(clock.monotonic() + limit), clock.hold():
            return await anyio.to_thread.run_sync(decode, abandon_on_cancel=True)
        raise BadRecord(f"decoding and checking its stored value took over {format_duration(limit)}")

    def before_fetch(self, slot: Entry) -> None:
        """A fetch of ours begins: note when, and hand the value we adopted to our source.

        With the stored validators, its first fetch as lease holder is conditional (a 304).
        """
        share = self.shares[slot.spec.name]
        share.began = time.monotonic()
        share.epoch = self.epoch if self.available and share.leading else -1
        validators, share.validators = share.validators, None
        if not share.continued:
            # The first fetch since we published a stored value: our source goes on from
            # it (a stream's quiet connection confirms it), with the validators if any.
            share.continued = True
            handover = {key: value for key, value in (validators or {}).items() if isinstance(value, str)}
            slot.source.take_over(self.runtime.published(slot.spec.name), handover)

    # -- unusable entries ---------------------------------------------------------------

    def _bad(self, slot: Entry, share: _Share, problem: str, *, foreign: bool = False) -> _Outcome:
        """The stored entry cannot be used here: a failed load of this refresher.

        A follower fetches for itself until the entry is good again; the lease
        holder replaces it at its next lease poll.
        """
        name = slot.spec.name
        now = self.runtime.clock.monotonic()
        new = share.bad != problem
        if new or now - share.bad_logged_at >= _REPEAT_WARNING_EVERY:
            share.bad_logged_at = now
            logger.warning(
                "Refresher %r: %s; %s",
                name,
                problem,
                "this process holds the lease and stores a good one"
                if share.leading
                else "this process fetches for itself until the entry is good again",
                extra={"refresher": name, "outcome": "foreign_entry" if foreign else "bad_entry"},
            )
        if share.bad is None and not share.leading and self.available:
            # Followers have no schedule of their own: fetch when the value is due.
            self.runtime.reschedule(slot.spec.name, self._due_when_standalone(slot, now))
        share.bad = problem
        if new and not share.leading:  # a failed load, once (startup moves on); our own fetches go on
            self.runtime.adopt_failed(slot.spec.name, f"coordination: {problem}")
        self._wake(share)  # a refresh-now waiting for the holder: fetch locally instead
        return _Outcome.BAD

    def _clear_bad(self, slot: Entry, share: _Share) -> None:
        if share.bad is None:
            return
        share.bad = None
        logger.info(
            "Refresher %r: its stored entry is good again",
            slot.spec.name,
            extra={"refresher": slot.spec.name, "outcome": "entry_good"},
        )

    # -- refresh now -------------------------------------------------------------------

    async def ask_leader(self, slot: Entry) -> bool:
        """Refresh-now on a process that does not hold the lease: the holder fetches.

        Returns:
            True once this process publishes the value that answers the request;
            False when this process should fetch itself instead: the backend is
            down, the stored entry is unusable, or this process took the lease
            over while waiting.

        Raises:
            TimeoutError: no answer within the refresher's timeout plus ``lease_ttl``.
        """
        name = slot.spec.name
        share = self.shares[name]
        if share.bad is not None:
            return False
        try:
            number = await self.coordinator.request_refresh(name)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return False
        except BaseException as exc:  # a backend of our own making: fetch here rather than fail
            if escapes(exc):
                raise
            self._lost(_unavailable("asking for a refresh", exc))
            return False
        if not isinstance(number, int) or number <= share.answered:
            share.requested = share.answered = 0  # the backend lost its data: its counters restarted
            self.epoch += 1
            number = number if isinstance(number, int) and number > 0 else 1
        if share.local and not share.asked:
            share.asked = number  # its answer is newer than the value we fetched on our own
        limit = (slot.spec.timeout or 30.0) + self.lease_ttl
        clock = self.runtime.clock
        with clock.move_on_at(clock.monotonic() + limit):
            while share.answered < number:
                if share.leading or not self.available or share.bad is not None:
                    return False
                share.adopted = share.adopted or anyio.Event()
                with clock.move_on_at(clock.monotonic() + self.check_every):
                    await share.adopted.wait()
                if share.answered < number:
                    await self._sync(slot)  # in case the notification was lost
            return True
        raise TimeoutError(
            f"the process holding the lease did not store a new value within {format_duration(limit)}"
        )

    # -- operators' actions (accept, reject, pin, unpin, rollback) -----------------------

    async def control(self, slot: Entry, action: str, argument: str | None) -> bool:
        """Have the lease holder carry out an operator's action, for the whole cluster.

        The action is written to the refresher's control record; the holder is told
        (a change), carries it out and stores the outcome with the value.

        Returns:
            True once the holder has carried it out; False when this process must
            act itself (the backend is down, or it took the lease over meanwhile).

        Raises:
            LookupError: the holder could not (nothing held back, no such version).
            TimeoutError: no holder carried it out in time.
        """
        name = slot.spec.name
        share = self.shares[name]
        limit = (slot.spec.timeout or 30.0) + self.lease_ttl
        try:
            number = await self._write_control(name, share, action, argument, limit)
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return False
        except BadRecord:
            number = None
        if number is None:
            raise TimeoutError(f"Refresher {name!r}: another process is changing it; try again")
        clock = self.runtime.clock
        with clock.move_on_at(clock.monotonic() + limit):
            while share.control < number:
                if share.leading or not self.available:
                    return False
                share.adopted = share.adopted or anyio.Event()
                with clock.move_on_at(clock.monotonic() + self.check_every):
                    await share.adopted.wait()
                if share.control < number:
                    await self._sync(slot)  # in case the notification was lost
            if share.control == number and share.control_error is not None:
                raise LookupError(share.control_error)
            return True
        raise TimeoutError(
            f"Refresher {name!r}: the process holding the lease did not carry out {action!r} "
            f"within {format_duration(limit)}"
        )

    async def _write_control(
        self, name: str, share: _Share, action: str, argument: str | None, limit: float
    ) -> int | None:
        """Write an action to ``name``'s control record under its own short lease; its number, or None.

        ``limit``: how long an asker waits for its action; one pending longer than
        that was abandoned (the holder never heard of it: a lost notification).
        """
        record = _CONTROL + name
        coordinator = self.coordinator
        for _ in range(_CONTROL_ATTEMPTS):
            if await coordinator.acquire(record, _CONTROL_LEASE):
                try:
                    try:
                        current = _checked_stored(await _reading(coordinator.load(record)))
                    except BadRecord:
                        current = None  # a damaged record: this action replaces it
                    last = _control_number(current.meta.get("number")) if current is not None else 0
                    # One record per refresher: an action the holder has not carried out
                    # yet (as far as we know) is not overwritten, or it would be lost
                    # while its asker hears it was done.
                    if last <= share.control or _abandoned(current, limit):
                        number = max(last, share.control) + 1
                        meta: dict[str, MetaValue] = {
                            "number": number,
                            "action": action,
                            "argument": argument,
                        }
                        if await coordinator.store(record, b"{}", meta) is not None:
                            return number
                finally:
                    await coordinator.release(record)
            await anyio.sleep(_CONTROL_RETRY)  # real time: another process writes the record now
        return None

    async def _carry_out(self, slot: Entry) -> None:
        """As the lease holder: carry out an action written to ``slot``'s control record, if it is new."""
        name = slot.spec.name
        share = self.shares[name]
        try:
            stored = _checked_stored(await _reading(self.coordinator.load(_CONTROL + name)))
        except CoordinatorUnavailable as exc:
            self._lost(exc)
            return
        except BadRecord:
            return  # a damaged control record: nothing to carry out; the next action replaces it
        if stored is None or not share.leading:
            return
        number, action, argument = (stored.meta.get(key) for key in ("number", "action", "argument"))
        number = _control_number(number)
        if number <= share.control:
            return
        share.control, share.control_error = number, None
        if action not in _ACTIONS or not (
            argument is None or (isinstance(argument, str) and len(argument) <= 100)
        ):
            # Answered all the same: whoever asked learns it, and the next action is not held up.
            share.control_error = (
                "not an action this process carries out (accept, reject, pin, unpin, rollback)"
            )
        else:
            assert isinstance(action, str)
            try:
                await self.runtime.act(name, action, argument if isinstance(argument, str) else None)
            except (LookupError, ValueError) as exc:
                share.control_error = printable(str(exc), 300)
        await self.runtime.share_published(name)  # the outcome, for whoever asked

    # -- kept versions in the backend (keep_versions) ------------------------------------------

    async def _store_versions(self, slot: Entry, share: _Share) -> None:
        """Store the kept versions not stored yet, each in one of ``keep_versions`` records.

        Version ``n`` goes to record ``n % keep_versions``: the backend holds the last
        ``keep_versions`` versions, so that a process taking the lease over can pin or
        roll back to one it never saw. Each record is written under a short lease of
        its own, as the control record is.
        """
        keep = slot.spec.keep_versions
        for version in slot.kept.versions:
            if version.number <= share.versions_stored or version.data is None:
                continue
            record = _version_record(slot.spec.name, version.number % keep)
            meta: dict[str, MetaValue] = {
                "source": self.fingerprints[slot.spec.name],
                "version": version.id,
                "fetched_at": version.fetched_at,
            }
            try:
                if not await self.coordinator.acquire(record, _CONTROL_LEASE):
                    return  # another holder writes it now: it stores its own versions
                try:
                    if await self.coordinator.store(record, version.data, meta) is None:
                        return
                finally:
                    await self.coordinator.release(record)
            except CoordinatorUnavailable as exc:
                self._lost(exc)
                return
            except Exception as exc:  # a backend of our own making
                self._lost(_unavailable(f"storing a version of {slot.spec.name!r}", exc))
                return
            share.versions_stored = version.number

    async def _take_over(self, slot: Entry) -> None:
        """As the new lease holder: load the versions the last holder kept, then any pending action."""
        await self._load_versions(slot)
        await self._carry_out(slot)

    async def _load_versions(self, slot: Entry) -> None:
        """The versions kept in the backend that this process does not keep yet (it started later)."""
        name = slot.spec.name
        found: list[Version] = []
        for index in range(slot.spec.keep_versions):
            try:
                stored = _checked_stored(await _reading(self.coordinator.load(_version_record(name, index))))
            except CoordinatorUnavailable as exc:
                self._lost(exc)
                return
            except BadRecord:
                continue  # a damaged record: that version is not kept, the next store replaces it
            if stored is None or stored.meta.get("source") != self.fingerprints[name]:
                continue
            version_id, fetched_at = stored.meta.get("version"), stored.meta.get("fetched_at")
            number, digest = parse_version(version_id) if isinstance(version_id, str) else (None, None)
            if number is None or digest is None or not _finite(fetched_at) or slot.kept.find(str(number)):
                continue
            try:
                value = await self._decoded(slot, stored.data)
            except BadRecord:
                continue
            assert isinstance(fetched_at, int | float)
            found.append(Version(number, digest, float(fetched_at), stored.data, value))
        if found:
            # This process may have come to keep one of them while the others were read
            # (a fetch, an adoption): its own is kept, not listed twice.
            new = [each for each in found if not slot.kept.find(str(each.number))]
            kept = sorted([*slot.kept.versions, *new], key=lambda each: each.number)
            slot.kept.versions = kept[-slot.spec.keep_versions :]
        share = self.shares[name]
        share.versions_stored = max([share.versions_stored, *(each.number for each in found)])

    def _answer(self, share: _Share, answered: int) -> None:
        share.answered = max(share.answered, answered)
        self._wake(share)

    def _wake(self, share: _Share) -> None:
        if share.adopted is not None:
            share.adopted.set()
            share.adopted = None

    # -- backend health ------------------------------------------------------------------

    def _lost(self, exc: CoordinatorUnavailable) -> None:
        """The backend failed: everyone fetches for themselves; logged once per outage."""
        now = self.runtime.clock.monotonic()
        message = printable(str(exc), 500)
        if self._outage is None:
            self._outage, self._interruptions = now, 0
            warn = now - self._warned_at >= _WARN_EVERY
            if warn:
                self._warned_at = now
            logger.log(
                logging.WARNING if warn else logging.INFO,
                "asgi_refresh: the coordinator is unavailable (%s); "
                "each process fetches for itself until it is back",
                message,
                extra={"outcome": "coordinator_unavailable"},
            )
        elif self.available:
            logger.debug(
                "asgi_refresh: the coordinator is unavailable again (%s)",
                message,
                extra={"outcome": "coordinator_unavailable"},
            )
        if not self.available:
            return
        self.available = False
        self._interruptions += 1
        self.error = message
        for slot in self.runtime.entries.values():
            share = self.shares[slot.spec.name]
            self._wake(share)  # a refresh-now waiting for the holder: fetch locally instead
            if not share.leading and share.bad is None and not slot.overridden:
                # Followers had no schedule of their own: fetch when the value is due.
                self.runtime.reschedule(slot.spec.name, self._due_when_standalone(slot, now))
            share.was_leading = share.was_leading or share.leading
            share.leading = False

    def _back(self) -> None:
        if self.available:
            return
        self.available = True
        self.error = None
        self._up_since = self.runtime.clock.monotonic()
        logger.debug("asgi_refresh: the coordinator answers again", extra={"outcome": "coordinator_answers"})

    def _settle(self) -> None:
        """Log the end of an outage once the backend has stayed back for a while."""
        if self._outage is None or not self.available:
            return
        now = self.runtime.clock.monotonic()
        if now - self._up_since < _SETTLE:
            return
        outage = self._up_since - self._outage
        flaps = self._interruptions
        self._outage = None
        logger.info(
            "asgi_refresh: the coordinator is back; one process fetches for all again (after %s%s)",
            format_duration(max(outage, 0.001)),
            f" and {flaps} interruptions" if flaps > 1 else "",
            extra={"outcome": "coordinator_back", "duration": outage, "interruptions": flaps},
        )

    def status(self, slot: Entry) -> CoordinationStatus:
        """The ``coordination`` part of this refresher's ``status()`` entry."""
        share = self.shares[slot.spec.name]
        role: Literal["leader", "follower", "standalone"]
        if not self.available or (share.bad is not None and not share.leading):
            role = "standalone"
        else:
            role = "leader" if share.leading else "follower"
        return {
            "role": role,
            "process": self.coordinator.owner,
            "version": share.version,
            "stored_by": share.stored_by,
            "error": self.error or share.bad,
        }


async def _reading(call: Awaitable[T]) -> T:
    """A backend read; whatever it raises besides an outage is a bad record of that name.

    The built-in backends raise `BadRecord` themselves; a backend of your own that
    lets ``int()`` or ``json.loads`` fail on a damaged record is treated the same.
    """
    try:
        return await call
    except (CoordinatorUnavailable, BadRecord):
        raise
    except Exception as exc:
        raise BadRecord(_describe(exc)) from exc


def _checked_poll(answer: object, name: str) -> Poll:
    """One name's `Poll` from what ``poll()`` returned; a missing or malformed entry is a bad record."""
    entry = answer.get(name) if isinstance(answer, Mapping) else None
    if not isinstance(entry, tuple) or len(entry) != 2:
        return Poll(False, BadRecord(f"poll() returned no Poll for {name!r}"))
    held, head = entry
    if not isinstance(head, BadRecord):
        try:
            head = _checked_head(head)
        except BadRecord as exc:
            head = exc
    return Poll(held is True, head)


def _checked_head(head: object) -> Head:
    """``head`` if it is a `Head` whose fields make sense: a backend's answer is checked too."""
    if not isinstance(head, tuple) or len(head) < 3:
        raise BadRecord(f"head() returned {type(head).__name__}, not a Head")
    version, requested, answered = head[:3]
    for value in (requested, answered) if version is None else (version, requested, answered):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRecord("head() returned counters that are not whole numbers")
    return Head(version, requested, answered, getattr(head, "time", None))


def _checked_stored(stored: object) -> Stored | None:
    """``stored`` if it is None or a `Stored` whose fields have the right types."""
    if stored is None:
        return None
    if not isinstance(stored, Stored):
        raise BadRecord(f"load() returned {type(stored).__name__}, not a Stored")
    checks = [
        isinstance(stored.version, int) and not isinstance(stored.version, bool) and stored.version >= 0,
        isinstance(stored.data, bytes),
        isinstance(stored.meta, Mapping),
        _finite(stored.stored_at),
        isinstance(stored.stored_by, str),
        isinstance(stored.answered, int) and not isinstance(stored.answered, bool) and stored.answered >= 0,
        stored.time is None or _finite(stored.time),
    ]
    if not all(checks):
        raise BadRecord("load() returned a Stored with fields of the wrong types")
    return stored


def _abandoned(record: Stored | None, limit: float) -> bool:
    """Whether a control record was stored more than ``limit`` seconds ago (on the backend's clock)."""
    if record is None:
        return True
    now = record.time if record.time is not None else time.time()
    return now - record.stored_at > limit


def _control_number(value: object) -> int:
    """An action's number from a control record; 0 for anything that is not one (a damaged record)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**15:
        return value
    return 0


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(
    meta: Mapping[str, MetaValue], key: str, *, low: float = 0.0, high: float = MAX_TIMESTAMP
) -> float | None:
    """``meta[key]`` if it is a finite number from ``low`` to ``high``; else None."""
    value = meta.get(key)
    if not _finite(value):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if low <= number <= high else None


def _unavailable(what: str, exc: BaseException) -> CoordinatorUnavailable:
    error = CoordinatorUnavailable(f"the coordinator failed in {what}: {_describe(exc)}")
    error.__cause__ = exc
    return error


def _describe(exc: BaseException) -> str:
    return describe_error(exc)[:300]
