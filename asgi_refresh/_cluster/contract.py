"""The behaviour every coordinator must have, as a pytest test class to subclass.

The built-in Redis and SQLite backends pass it; a backend of your own runs it by
subclassing `CoordinatorContract` and saying how to make coordinators that share one
backend. Leases expire in real time, so a few tests wait about ``lease_ttl``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import pytest

from asgi_refresh._cluster.base import Change, Coordinator, Head, MetaValue, Poll

if TYPE_CHECKING:
    NewCoordinator = Callable[[str], Coordinator]

__all__ = ["CoordinatorContract"]


class CoordinatorContract:
    """Tests of the `Coordinator` protocol: subclass it and define the ``new_coordinator`` fixture.

    ```python
    import pytest
    from asgi_refresh.testing import CoordinatorContract


    class TestMyCoordinator(CoordinatorContract):
        @pytest.fixture
        def new_coordinator(self, tmp_path):
            # Coordinators made by this function share one backend (a server, a file):
            # they stand in for the processes of a cluster. Each is given a prefix.
            return lambda prefix: MyCoordinator(tmp_path / "state", prefix=prefix)
    ```

    The tests are async (the ``anyio`` pytest plugin, installed with anyio, runs
    them); define an ``anyio_backend`` fixture to run them on trio as well as asyncio.

    Attributes:
        lease_ttl: The lease lifetime the tests use, in seconds. Leases expire in real
            time on the backend's clock: a backend with a coarse clock, or whose calls
            take a good part of 0.3 s on a loaded machine, needs a longer one.
    """

    pytestmark = pytest.mark.anyio
    lease_ttl = 0.3

    @pytest.fixture
    def new_coordinator(self) -> NewCoordinator:
        """Override: a function from a prefix to a new (unopened) coordinator on the shared backend."""
        raise NotImplementedError(
            f"{type(self).__name__}: define a new_coordinator fixture (see CoordinatorContract)"
        )

    @pytest.fixture
    def prefix(self) -> str:
        """A prefix of this test's own, so that tests sharing a backend never meet."""
        return f"contract{time.monotonic_ns()}"

    @pytest.fixture
    async def pair(
        self, new_coordinator: NewCoordinator, prefix: str
    ) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
        """Two open coordinators on one backend: two processes of a cluster.

        Each has read from the backend once already, as a running process has: its
        first call may connect (a server's handshake, a schema check), which must not
        eat into the short lease windows the tests time.
        """
        async with new_coordinator(prefix) as first, new_coordinator(prefix) as second:
            for coordinator in (first, second):
                await coordinator.head("warm_up")  # a name no test uses: nothing is written
            yield first, second

    # -- leases ----------------------------------------------------------------------

    async def test_one_owner_holds_a_lease(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Of two coordinators, only the first to ask gets the lease; names have separate leases."""
        first, second = pair
        assert first.owner != second.owner
        assert await first.acquire("names", self.lease_ttl * 10)
        assert not await second.acquire("names", self.lease_ttl * 10)
        assert await second.acquire("rates", self.lease_ttl * 10)

    async def test_the_holder_renews_its_lease(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Acquiring again renews: the lease outlives its first ttl and others still cannot take it."""
        first, second = pair
        assert await first.acquire("names", self.lease_ttl)
        await anyio.sleep(self.lease_ttl * 0.6)
        # Renewed for longer than the first ttl, so that a slow machine (the check comes
        # past the first expiry either way) cannot let the renewed lease run out too.
        assert await first.acquire("names", self.lease_ttl * 10)
        await anyio.sleep(self.lease_ttl * 0.6)
        assert not await second.acquire("names", self.lease_ttl)

    async def test_an_expired_lease_is_taken_over(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """A holder that stops renewing loses the lease after its ttl, and the other takes it."""
        first, second = pair
        assert await first.acquire("names", self.lease_ttl)
        assert not await second.acquire("names", self.lease_ttl)
        await anyio.sleep(self.lease_ttl * 1.3)
        assert await second.acquire("names", self.lease_ttl * 10)
        assert not await first.acquire("names", self.lease_ttl)

    async def test_release_frees_the_lease_at_once(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """A released lease can be taken right away; a non-holder's release changes nothing."""
        first, second = pair
        assert await first.acquire("names", self.lease_ttl * 10)
        await second.release("names")
        assert not await second.acquire("names", self.lease_ttl * 10)
        await first.release("names")
        assert await second.acquire("names", self.lease_ttl * 10)

    async def test_close_releases_the_leases_still_held(
        self, new_coordinator: NewCoordinator, prefix: str
    ) -> None:
        """Shutting down gives the leases back: another process takes over without waiting for the ttl."""
        async with new_coordinator(prefix) as other:
            async with new_coordinator(prefix) as leaving:
                assert await leaving.acquire("names", 60)
                assert await leaving.acquire("rates", 60)
                await leaving.release("rates")
            assert await other.acquire("names", 60)
            assert await other.acquire("rates", 60)

    async def test_poll_renews_or_takes_every_lease_and_reads_every_head(
        self, pair: tuple[Coordinator, Coordinator]
    ) -> None:
        """One poll: a Poll per name in order, held where we hold or take the lease, and its head."""
        first, second = pair
        assert await first.acquire("names", self.lease_ttl * 10)
        assert await first.store("names", b"1", {}) == 1
        assert await second.request_refresh("names") == 1
        polled = await second.poll(["rates", "names"], self.lease_ttl * 10)
        assert list(polled) == ["rates", "names"]
        assert all(isinstance(entry, Poll) for entry in polled.values())
        assert polled["rates"].held
        assert counters(polled["rates"].head) == (None, 0, 0)
        assert not polled["names"].held
        assert counters(polled["names"].head) == (1, 1, 0)
        assert not await first.acquire("rates", self.lease_ttl * 10), "the poll took the lease"
        again = await first.poll(["names"], self.lease_ttl * 10)
        assert again["names"].held, "the poll renews the lease we hold"

    # -- storing and loading ---------------------------------------------------------

    async def test_load_returns_what_was_stored(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Another process loads the data, meta, version and storer of what the holder stored."""
        first, second = pair
        assert await second.load("names") is None
        assert counters(await second.head("names")) == (None, 0, 0)
        assert await first.acquire("names", self.lease_ttl * 10)
        meta: dict[str, MetaValue] = {
            "etag": '"abc"',
            "expires_at": 1_900_000_000.5,
            "size": 3,
            "gzip": False,
            "last_modified": None,
        }
        before = time.time()
        assert await first.store("names", b'["ada","bob"]', meta) == 1
        stored = await second.load("names")
        assert stored is not None
        assert (stored.version, stored.data, dict(stored.meta)) == (1, b'["ada","bob"]', meta)
        assert stored.stored_by == first.owner
        assert before - 1 <= stored.stored_at <= time.time() + 1
        assert stored.answered == 0
        assert stored.time is None or abs(stored.time - time.time()) < 60, (
            "time is the backend's clock, or None"
        )
        assert counters(await second.head("names")) == (1, 0, 0)

    async def test_versions_strictly_increase(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Every store bumps the name's version, whoever holds the lease; names count separately."""
        first, second = pair
        assert await first.acquire("names", self.lease_ttl * 10)
        assert [await first.store("names", str(i).encode(), {}) for i in range(3)] == [1, 2, 3]
        await first.release("names")
        assert await second.acquire("names", self.lease_ttl * 10)
        assert await second.store("names", b"4", {}) == 4
        assert await second.acquire("rates", self.lease_ttl * 10)
        assert await second.store("rates", b"1", {}) == 1
        loaded = await first.load("names")
        assert loaded is not None
        assert (loaded.version, loaded.data) == (4, b"4")

    async def test_a_store_without_the_lease_is_refused(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Fencing: a store by a non-holder, or a holder whose lease expired, is None and changes nothing."""
        first, second = pair
        assert await second.store("names", b"never", {}) is None
        assert await first.acquire("names", self.lease_ttl)
        assert await first.store("names", b"first", {}) == 1
        assert await second.store("names", b"intruder", {}) is None
        await anyio.sleep(self.lease_ttl * 1.3)
        assert await first.store("names", b"stale", {}) is None  # expired, though nobody took over
        assert await second.acquire("names", self.lease_ttl * 10)
        assert await first.store("names", b"stale", {}) is None
        loaded = await second.load("names")
        assert loaded is not None
        assert (loaded.version, loaded.data) == (1, b"first")

    async def test_meta_must_be_json(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """Metadata that JSON cannot hold is a TypeError, raised before anything is stored."""
        first, _ = pair
        assert await first.acquire("names", self.lease_ttl * 10)
        with pytest.raises(TypeError):
            await first.store("names", b"1", {"expires": datetime.now()})  # type: ignore[dict-item]
        assert counters(await first.head("names")) == (None, 0, 0)

    # -- refresh now and changes -----------------------------------------------------

    async def test_refresh_requests_are_counted_until_answered(
        self, pair: tuple[Coordinator, Coordinator]
    ) -> None:
        """A refresh request stays pending until a store answers it; answered never goes back."""
        holder, asker = pair
        assert await asker.request_refresh("names") == 1
        assert await asker.request_refresh("names") == 2
        head = await holder.head("names")
        assert counters(head) == (None, 2, 0)
        assert head.pending
        assert await holder.load("names") is None  # a request stores no value
        assert await holder.acquire("names", self.lease_ttl * 10)
        assert await holder.store("names", b"new", {}, answered=head.requested) == 1
        assert not (await asker.head("names")).pending
        assert await asker.request_refresh("names") == 3
        assert await holder.store("names", b"newer", {}, answered=1) == 2
        assert counters(await asker.head("names")) == (2, 3, 2)
        stored = await asker.load("names")
        assert stored is not None
        assert stored.answered == 2

    async def test_a_store_answers_no_request_the_entry_has_not_counted(
        self, pair: tuple[Coordinator, Coordinator]
    ) -> None:
        """A fetch that began before the backend lost its data carries an old request number.

        Stored on the backend that came back empty, it must not answer the requests
        counted from then on: ``answered`` never goes past ``requested``.
        """
        holder, asker = pair
        assert await holder.acquire("names", self.lease_ttl * 10)
        assert await holder.store("names", b"old", {}, answered=5) == 1  # counted before the loss
        assert counters(await asker.head("names")) == (1, 0, 0)
        assert await asker.request_refresh("names") == 1
        assert (await asker.head("names")).pending  # still waits for a fetch
        assert await holder.store("names", b"new", {}, answered=7) == 2
        assert counters(await asker.head("names")) == (2, 1, 1)

    async def test_changes_reach_other_processes(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """A subscriber hears of a store and of a refresh request made by another coordinator."""
        holder, follower = pair
        assert await holder.acquire("names", self.lease_ttl * 10)
        async with follower.subscribe() as changes:
            assert await holder.store("names", b"1", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)
            assert await holder.request_refresh("names") == 1
            assert await next_change(changes) == Change("refresh_requested", "names", 1)
        async with holder.subscribe() as changes:
            assert await follower.request_refresh("names") == 2
            assert await next_change(changes) == Change("refresh_requested", "names", 2)

    async def test_a_quiet_subscription_waits(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """While nothing changes a subscriber gets nothing; the next change still arrives."""
        holder, follower = pair
        assert await holder.acquire("names", self.lease_ttl * 10)
        async with follower.subscribe() as changes:
            with anyio.move_on_after(0.3) as quiet:
                await anext(changes)
            assert quiet.cancelled_caught
            assert await holder.store("names", b"1", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)

    async def test_prefixes_isolate(self, new_coordinator: NewCoordinator, prefix: str) -> None:
        """Coordinators with other prefixes on one backend share no lease, value or change."""
        async with new_coordinator(f"{prefix}-one") as one, new_coordinator(f"{prefix}-two") as two:
            assert await one.acquire("names", self.lease_ttl * 10)
            assert await two.acquire("names", self.lease_ttl * 10)
            async with two.subscribe() as changes:
                assert await one.store("names", b"one", {}) == 1
                assert await one.request_refresh("names") == 1
                assert counters(await two.head("names")) == (None, 0, 0)
                assert await two.load("names") is None
                assert await two.store("names", b"two", {}) == 1
                assert await next_change(changes) == Change("stored", "names", 1)
            loaded = await two.load("names")
            assert loaded is not None
            assert loaded.data == b"two"

    # -- lifecycle and arguments -----------------------------------------------------

    async def test_a_coordinator_serves_one_lifespan_at_a_time(
        self, new_coordinator: NewCoordinator, prefix: str
    ) -> None:
        """Use before open or after close is a RuntimeError; open twice is refused; reopened, a new owner."""
        coordinator = new_coordinator(prefix)
        assert isinstance(coordinator, Coordinator)
        with pytest.raises(RuntimeError):
            await coordinator.acquire("names", self.lease_ttl)
        async with coordinator:
            owner = coordinator.owner
            with pytest.raises(RuntimeError):
                await coordinator.open()
        await coordinator.close()  # closing twice is harmless
        with pytest.raises(RuntimeError):
            await coordinator.head("names")
        async with coordinator:
            assert coordinator.owner != owner

    async def test_a_bad_ttl_or_name_is_refused(self, pair: tuple[Coordinator, Coordinator]) -> None:
        """A ttl that is not positive, or a name that is not a Python identifier, is a ValueError."""
        coordinator, _ = pair
        with pytest.raises(ValueError, match="ttl"):
            await coordinator.acquire("names", -1)
        with pytest.raises(ValueError, match="identifier"):
            await coordinator.load("a:b")


def counters(head: Head | object) -> tuple[int | None, int, int]:
    """A head's version and refresh-now counters, without the backend's clock (which moves)."""
    assert isinstance(head, Head), f"expected a Head, got {head!r}"
    assert head.time is None or isinstance(head.time, float)
    return head.version, head.requested, head.answered


async def next_change(changes: AsyncIterator[Change]) -> Change:
    """The next change, within 5 s."""
    with anyio.fail_after(5):
        return await anext(changes)
