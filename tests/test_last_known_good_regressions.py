"""Regressions found while documenting last known good: what the guide promises, held to.

Several middlewares on one SQLite file stand in for the workers of a cluster, as in
tests/test_coordinated.py; the backend polls and notifies in real time, so a few
waits below poll for up to a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import Fresh, Refresher, RefreshMiddleware, SQLiteCoordinator

from .helpers import ScriptedApp

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
