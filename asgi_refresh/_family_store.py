"""A family's keys shared through a coordinator: one fetch per key per interval across the cluster.

A key is request input: it never becomes a record name as it is, and a flood of
distinct keys must not fill the backend. So a key's value is kept in one of a
bounded set of records per family (``BUCKETS_PER_KEY`` times ``max_keys``), chosen
by a hash of the key, with the hash stored beside it: two keys that share a record
take turns in it (each sees the other's value as a miss and fetches for itself),
and the backend never holds more records per family than that. A process that needs a
key's value (its first load, or its refresh falling due) uses the stored one if
another process stored a newer one within ``every``; otherwise it takes the key's
lease, looks once more (another may have stored it meanwhile), fetches, stores and
lets the lease go. A process that finds the lease taken waits for the value the
holder stores. Whatever goes wrong with the backend, the process fetches for
itself: a family never fails because the coordinator does.

Nothing here runs per request: only when a key is loaded or refreshed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import anyio

from ._contain import describe_error
from ._family import Key, RefresherFamily
from ._refresher import RESERVED_PREFIX
from ._sources.function import FunctionSource

if TYPE_CHECKING:
    from ._cluster.base import Codec, Coordinator, Stored

logger = logging.getLogger("asgi_refresh")

BUCKETS_PER_KEY = 64
"""Records per family and key of ``max_keys``: ``max_keys`` hot keys share a record about 1.5% of the time."""
_POLL = 0.05  # real seconds between looks at a key whose lease another process holds
_REPEAT_WARNING_EVERY = 300.0


class Shared(NamedTuple):
    """A key's value, as fetched here or loaded from the coordinator."""

    value: Any
    version: int | None  # the stored version it is (None: fetched here and not stored)
    age: float  # seconds since it was fetched (0 for a fetch of ours)
    adopted: bool  # loaded from the coordinator, not fetched here


class FamilyStore:
    """One family's keys in a coordinator.

    Args:
        family: The family.
        coordinator: The middleware's coordinator, opened and closed by the runtime.
        codec: How values are encoded for it.
        lease_ttl: The middleware's ``lease_ttl``: a key's lease outlives its
            fetch by this much, and a process waits this long for another's fetch.
    """

    def __init__(
        self, family: RefresherFamily, coordinator: Coordinator, codec: Codec, lease_ttl: float
    ) -> None:
        self.family = family
        self.coordinator = coordinator
        self.codec = codec
        self.lease_ttl = lease_ttl
        # Its qualified name, no secret (a plain function's origin: the source ignores the arity).
        origin = FunctionSource(cast("Callable[[], Any]", family.fetch), name=family.name).origin
        kind = type(codec)
        description = f"family {family.name}\n{origin}\ncodec {kind.__module__}.{kind.__qualname__}"
        # Bound to the fetch and codec: another app's family of the same name on the same backend
        # is never adopted (as a refresher's source fingerprint does).
        self.fingerprint = hashlib.blake2b(description.encode(), digest_size=8).hexdigest()
        self.adopted = 0
        self.last_error: str | None = None  # the backend's last failure, for status()
        self._warned_at = -math.inf

    @staticmethod
    def digest(key: Key) -> str:
        """A hash of ``key``, the same in every process.

        ``repr`` of a checked key (exact str, int, tuple of them) is canonical:
        ``'1'``, ``1`` and ``('1',)`` are three keys.
        """
        return hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def record(self, key: Key) -> str:
        """The backend record that holds ``key``'s value: under the reserved prefix, one of a bounded set."""
        bucket = int(self.digest(key), 16) % (BUCKETS_PER_KEY * self.family.max_keys)
        return f"{RESERVED_PREFIX}family__{self.family.name}__{bucket}"

    async def get(self, key: Key, seen: int | None, fetch: Callable[[], Awaitable[Any]]) -> Shared:
        """A value for ``key`` newer than stored version ``seen``: another process's, or fetched here."""
        name, digest = self.record(key), self.digest(key)
        try:
            found = await self._fresh(name, digest, seen)
            if found is not None:
                return found
            give_up = time.monotonic() + (self.family.timeout or self.lease_ttl) + self.lease_ttl
            ttl = (self.family.timeout or self.lease_ttl) + self.lease_ttl
            while True:
                if await self._call(self.coordinator.acquire(name, ttl), "taking a key's lease"):
                    return await self._fetch_and_store(name, digest, seen, fetch)
                # Another process is fetching it (or a key that shares its record): wait.
                found = await self._fresh(name, digest, seen)
                if found is not None:
                    return found
                if time.monotonic() > give_up:
                    break  # a holder that died with the lease: fetch for ourselves
                await anyio.sleep(_POLL)
        except _Down:
            pass
        return Shared(await fetch(), None, 0.0, False)

    async def _fetch_and_store(
        self, name: str, digest: str, seen: int | None, fetch: Callable[[], Awaitable[Any]]
    ) -> Shared:
        try:
            found = await self._fresh(name, digest, seen)  # stored while we waited for the lease
            if found is not None:
                return found
            value = await fetch()
            try:
                data = self.codec.encode(value)
            except Exception as exc:  # a codec is user code; the value is still good here
                self._failed(f"its value cannot be encoded for the coordinator ({describe_error(exc)})")
                return Shared(value, None, 0.0, False)
            try:
                value = self.codec.decode(data)  # what the other processes will serve
            except Exception as exc:
                self._failed(f"its value does not decode as encoded ({describe_error(exc)})")
                return Shared(value, None, 0.0, False)
            try:
                version = await self._call(
                    self.coordinator.store(name, data, {"family": self.fingerprint, "key": digest}),
                    "storing a key's value",
                )
            except _Down:  # fetched all the same: served here, stored by the next fetch
                version = None
            # Not an int: the lease was lost while fetching (fenced); another process stores its own.
            return Shared(value, version if isinstance(version, int) else None, 0.0, False)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(_Down):  # else it expires on its own
                await self._call(self.coordinator.release(name), "releasing a key's lease")

    async def _fresh(self, name: str, digest: str, seen: int | None) -> Shared | None:
        """The stored value if it is not version ``seen``, is ours to use, and is younger than ``every``."""
        from ._cluster.base import BadRecord

        try:
            stored: Stored | None = await self._call(self.coordinator.load(name), "loading a key's value")
        except BadRecord:
            return None  # the next store replaces it
        if (
            stored is None
            or stored.version == seen
            or stored.meta.get("family") != self.fingerprint
            or stored.meta.get("key") != digest  # another key's value, sharing the record
        ):
            return None
        now = stored.time if stored.time is not None else time.time()
        age = max(now - stored.stored_at, 0.0)
        if not age < self.family.every:  # NaN too
            return None
        try:
            value = self.codec.decode(stored.data)  # untrusted bytes: a decoder that fails is a miss
        except Exception:
            return None
        self.adopted += 1
        self.last_error = None
        return Shared(value, stored.version, age, True)

    async def _call(self, call: Awaitable[Any], what: str) -> Any:
        from ._cluster.base import BadRecord, CoordinatorUnavailable

        try:
            return await call
        except BadRecord:
            raise
        except CoordinatorUnavailable as exc:
            self._failed(f"{what} failed: {describe_error(exc)}")
            raise _Down from exc
        except Exception as exc:  # a backend of one's own making: the same as one that is down
            self._failed(f"{what} raised {describe_error(exc)}")
            raise _Down from exc

    def _failed(self, error: str) -> None:
        self.last_error = error
        now = time.monotonic()
        if now - self._warned_at >= _REPEAT_WARNING_EVERY:
            self._warned_at = now
            logger.warning(
                "Family %r: sharing its keys through the coordinator failed (%s); this process "
                "fetches and serves them itself meanwhile",
                self.family.name,
                error,
                extra={"refresher": self.family.name, "outcome": "coordinator_failed"},
            )


class _Down(Exception):
    """The backend failed: fetch for ourselves."""
