"""Regressions found while documenting last known good: what the guide promises, held to.

Several middlewares on one SQLite file stand in for the workers of a cluster, as in
tests/test_coordinated.py; the backend polls and notifies in real time, so a few
waits below poll for up to a few seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Fresh, Refresher, RefreshMiddleware, SQLiteCoordinator
from asgi_refresh import _snapshots as snapshots

from .helpers import ScriptedApp, runtime_of

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (in real time: the backend polls in real time) until ``condition()``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - other processes' effects: nothing to wait on here
            await anyio.sleep(0.01)


def snapshot_files(directory: Path) -> dict[str, bytes]:
    """The snapshot files in ``directory`` (none if it does not exist), by name."""
    if not directory.exists():
        return {}
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.name.endswith(".snapshot")}


def role(middleware: RefreshMiddleware, name: str) -> str:
    return middleware.handle.status()[name]["coordination"]["role"]


async def test_a_follower_keeps_a_fresh_token_off_its_disk(tmp_path: Path) -> None:
    """A follower adopting a Fresh token does not write it to its snapshot_dir (snapshot=None), as the holder does not."""

    async def token() -> Fresh[str]:
        return Fresh("s3cret-token", expires_in=3600)

    async def names() -> list[str]:
        return ["ada", "grace"]

    def worker(directory: str) -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("token", token, every="1h"), Refresher("names", names, every="1h")],
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02),
            snapshot_dir=tmp_path / directory,
        )

    leader, follower = worker("leader"), worker("follower")
    async with LifespanManager(leader, startup_timeout=10), LifespanManager(follower, startup_timeout=10):
        await until(lambda: role(follower, "token") == "follower" and role(follower, "names") == "follower")
        assert follower.handle.value("token") == "s3cret-token"
        assert follower.handle.status()["token"]["origin"] == "coordinator"
    # Written at shutdown at the latest: a follower keeps snapshots of what it publishes,
    # but a token stays in memory, on every process.
    assert sorted(snapshot_files(tmp_path / "leader")) == ["names.snapshot"]
    followers = snapshot_files(tmp_path / "follower")
    assert sorted(followers) == ["names.snapshot"]
    assert all(b"s3cret-token" not in data for data in followers.values())


async def test_snapshots_still_waiting_at_shutdown_are_all_written(tmp_path: Path) -> None:
    """Stopped right after the first loads, every refresher's snapshot is on disk (none lost with a cancelled batch)."""

    def fetch(number: int) -> Callable[[], Any]:
        async def load() -> dict[str, int]:
            return {"number": number}

        return load

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher(f"r{number}", fetch(number), every="1h") for number in range(50)],
        snapshot_dir=tmp_path,
    )
    async with LifespanManager(middleware):
        pass
    assert sorted(snapshot_files(tmp_path)) == sorted(f"r{n}.snapshot" for n in range(50))


async def test_a_failed_unpin_on_a_follower_is_logged_and_the_refreshers_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unpin on a follower that cannot reach the holder logs a WARNING; it never stops the process's refreshers."""

    async def names() -> list[str]:
        return ["ada", "grace"]

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", keep_versions=2)],
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02),
        )

    leader, follower = worker(), worker()
    # Another operator's action holds the refresher's control record meanwhile.
    other = SQLiteCoordinator(tmp_path / "refresh.db")
    await other.open()
    try:
        async with LifespanManager(leader, startup_timeout=10), LifespanManager(follower, startup_timeout=10):
            await until(lambda: role(follower, "names") == "follower")
            assert await other.acquire("asgi_refresh__control__names", 60)
            with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
                follower.handle.unpin("names")
                await until(lambda: "could not unpin" in caplog.text)
            assert runtime_of(follower.handle).running
            assert await follower.handle.refresh("names") == ["ada", "grace"]
    finally:
        await other.close()


async def test_an_unpin_the_backend_cannot_take_is_done_on_this_process(tmp_path: Path) -> None:
    """Unpin on a follower whose backend fails as the action is written unpins here, as with the backend down."""
    fetched = 0

    async def names() -> dict[str, int]:
        nonlocal fetched
        fetched += 1
        return {"fetch": fetched}

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", keep_versions=2)],
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02, timeout=0.5),
        )

    leader, follower = worker(), worker()
    async with LifespanManager(leader, startup_timeout=10), LifespanManager(follower, startup_timeout=10):
        await until(lambda: role(follower, "names") == "follower")
        await follower.handle.refresh("names")
        first = await leader.handle.rollback("names")
        await until(lambda: follower.handle.status()["names"]["pin"] == first)
        blocker = lock_database(tmp_path / "refresh.db")  # the backend stops taking writes
        try:
            follower.handle.unpin("names")
            await until(lambda: follower.handle.status()["names"]["pin"] is None)
        finally:
            blocker.rollback()
            blocker.close()
        assert role(follower, "names") == "standalone"
        assert leader.handle.status()["names"]["pin"] == first  # it did not hear of it


def lock_database(path: Path) -> sqlite3.Connection:
    """A connection holding an exclusive lock on the SQLite file: other writers time out."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    return connection


def age_snapshot(directory: Path, name: str, seconds: float) -> None:
    """Make ``name``'s snapshot one that was last confirmed good ``seconds`` ago."""
    written = snapshots.read(snapshots.path_of(directory, name), name)
    then = time.time() - seconds
    snapshots.write(directory, name, written.data, {**written.meta, "fetched_at": then}, at=then)


async def test_followers_see_the_age_of_the_snapshot_the_holder_started_from(tmp_path: Path) -> None:
    """A holder started from a 3-hour-old snapshot stores it as 3 hours old: followers count it stale too."""
    upstream_down = False

    async def names() -> list[str]:
        if upstream_down:
            raise ConnectionError("the upstream is down")
        return ["ada", "grace"]

    def worker(database: str, directory: str) -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", max_stale="2h")],
            coordinator=SQLiteCoordinator(tmp_path / database, poll_interval=0.02),
            # The holder stores the snapshot it started from at its first lease poll (every
            # third of lease_ttl), which the follower's startup waits for: 2 s here. Long
            # enough that a renewal late on a busy machine (by more than 2 s) is needed to
            # hand the follower the lease, and the fetch, instead: no expiry is waited for.
            lease_ttl="6s",
            snapshot_dir=tmp_path / directory,
        )

    async with LifespanManager(worker("first.db", "leader")):
        pass
    age_snapshot(tmp_path / "leader", "names", 3 * 3600)

    upstream_down = True
    leader, follower = worker("second.db", "leader"), worker("second.db", "follower")
    async with LifespanManager(leader, startup_timeout=10), LifespanManager(follower, startup_timeout=10):
        held = leader.handle.status()["names"]
        assert (held["origin"], held["stale"]) == ("snapshot", True)
        await until(lambda: follower.handle.status()["names"]["origin"] == "coordinator")
        seen = follower.handle.status()["names"]
        assert seen["age"] is not None
        assert seen["age"] > 3 * 3600 - 60
        assert seen["stale"] is True


async def test_a_process_taking_the_lease_over_can_roll_back_to_versions_it_never_saw(tmp_path: Path) -> None:
    """Kept versions live in the backend too: a holder started after them rolls back to them."""
    values = iter([["a"], ["b"], ["c"], ["c"], ["c"]])

    async def names() -> list[str]:
        return next(values)

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", keep_versions=3)],
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02),
            # The takeover below is the first process stopping, which gives the lease back:
            # no expiry is waited for. A long lease, so that a renewal late on a busy machine
            # never lapses it meanwhile (a lapse would cost a fetch of the five values).
            lease_ttl="30s",
        )

    first = worker()
    async with LifespanManager(first, startup_timeout=10):
        await until(lambda: role(first, "names") == "leader")
        await first.handle.refresh("names")
        await first.handle.refresh("names")
        assert [each["id"][0] for each in first.handle.status()["names"]["versions"]] == ["3", "2", "1"]
    # The holder is gone; a process that never saw versions 1 and 2 takes the lease over.
    second = worker()
    async with LifespanManager(second, startup_timeout=10):
        await until(lambda: role(second, "names") == "leader")
        await until(lambda: len(second.handle.status()["names"]["versions"]) == 3)
        assert second.handle.value("names") == ["c"]
        assert (await second.handle.rollback("names")).startswith("2-")
        assert second.handle.value("names") == ["b"]
        assert runtime_of(second.handle).slots["names"].kept.pinned is not None


async def test_a_follower_never_publishes_a_held_value_and_accept_on_it_acts_for_all(tmp_path: Path) -> None:
    """The holder guards before it stores: followers show the quarantine, and accept on one publishes everywhere."""
    from asgi_refresh import max_shrink

    values = iter([[1, 2, 3, 4], [1], [1], [1]])

    async def names() -> list[int]:
        return next(values)

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", guard=max_shrink(0.5))],
            coordinator=SQLiteCoordinator(tmp_path / "refresh.db", poll_interval=0.02),
        )

    holder, follower = worker(), worker()
    async with LifespanManager(holder, startup_timeout=10), LifespanManager(follower, startup_timeout=10):
        await until(lambda: role(holder, "names") == "leader" and role(follower, "names") == "follower")
        await holder.handle.refresh("names")
        await until(lambda: follower.handle.status()["names"]["quarantined"] is not None)
        assert follower.handle.value("names") == [1, 2, 3, 4]
        assert holder.handle.value("names") == [1, 2, 3, 4]
        await follower.handle.accept("names")
        await until(lambda: follower.handle.value("names") == [1])
        assert holder.handle.value("names") == [1]
        assert follower.handle.status()["names"]["quarantined"] is None


async def test_a_version_kept_while_the_last_holders_are_read_is_listed_once(tmp_path: Path) -> None:
    """Taking the lease over reads the kept versions one by one: one this process keeps meanwhile is not doubled."""
    from asgi_refresh._slot import Version

    values = iter([["a"], ["b"], ["c"], ["c"]])

    async def names() -> list[str]:
        return next(values)

    injected: list[str] = []

    class Meanwhile(SQLiteCoordinator):
        """On reading version 3's record (1 and 2 read already), this process comes to keep version 1 (as a fetch would)."""

        async def load(self, name: str) -> Any:
            loaded = await super().load(name)
            if name == "asgi_refresh__version3__names" and second is not None and not injected:
                kept = runtime_of(second.handle).slots["names"].kept
                kept.versions = [*kept.versions, Version(1, digests[1], time.time(), b'["a"]', ["a"])]
                injected.append(name)
            return loaded

    def worker() -> RefreshMiddleware:
        return RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("names", names, every="1h", keep_versions=5)],
            coordinator=Meanwhile(tmp_path / "refresh.db", poll_interval=0.02),
            lease_ttl="30s",  # given back at the first's shutdown: no expiry waited for
        )

    second: RefreshMiddleware | None = None
    first = worker()
    async with LifespanManager(first, startup_timeout=10):
        await until(lambda: role(first, "names") == "leader")
        await first.handle.refresh("names")
        await first.handle.refresh("names")
        digests = {
            int(number): digest
            for number, _, digest in (
                each["id"].partition("-") for each in first.handle.status()["names"]["versions"]
            )
        }
    second = worker()
    async with LifespanManager(second, startup_timeout=10):
        await until(lambda: role(second, "names") == "leader")
        await until(lambda: len(second.handle.status()["names"]["versions"]) >= 3)
        assert injected, "the takeover read the kept versions"
        listed = [each["id"] for each in second.handle.status()["names"]["versions"]]
        assert listed == [f"{n}-{digests[n]}" for n in (3, 2, 1)], listed


async def test_taking_a_lease_over_reads_no_control_record_for_a_refresher_without_actions(
    tmp_path: Path,
) -> None:
    """Only refreshers with guards or versions have operator actions: the others cost no extra backend read."""
    from asgi_refresh import max_shrink

    loaded: list[str] = []

    class Counting(SQLiteCoordinator):
        async def load(self, name: str) -> Any:
            loaded.append(name)
            return await super().load(name)

    async def names() -> list[str]:
        return ["ada"]

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("plain", names, every="1h"),
            Refresher("guarded", names, every="1h", guard=max_shrink(0.5)),
        ],
        coordinator=Counting(tmp_path / "refresh.db", poll_interval=0.02),
    )
    async with LifespanManager(middleware, startup_timeout=10):
        await until(lambda: role(middleware, "plain") == "leader" and role(middleware, "guarded") == "leader")
        await until(lambda: "asgi_refresh__control__guarded" in loaded)
    assert "asgi_refresh__control__plain" not in loaded
