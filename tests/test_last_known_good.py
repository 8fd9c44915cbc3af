"""Last known good on one process: snapshots, change guards and quarantine, versions and pins."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_refresh import (
    Fresh,
    HTTPSource,
    Refresher,
    RefreshEvent,
    RefreshMiddleware,
    max_shrink,
    required_keys,
)
from asgi_refresh import _snapshots as snapshots
from asgi_refresh._keeper import read_cluster_meta
from asgi_refresh.testing import FakeClock
from tests.helpers import START, ScriptedApp, Upstream, lifespan, runtime_of, startup_failure, written

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests-only"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- snapshots -------------------------------------------------------------------------


async def test_a_cold_start_with_the_upstream_down_serves_the_snapshot(tmp_path: Path) -> None:
    """The first load fails: the snapshot is published at once, marked, and its age shown."""
    async with lifespan(Refresher("names", Upstream(["ada", "bob"]), every="1h"), snapshot_dir=tmp_path):
        pass
    clock = FakeClock(START)
    await clock.advance(0)
    down = Upstream(OSError("connection refused"))
    async with lifespan(
        Refresher("names", down, every="1h", max_stale="2h"), snapshot_dir=tmp_path, clock=clock
    ) as middleware:
        handle = middleware.handle
        assert handle.value("names") == ["ada", "bob"]
        entry = handle.status()["names"]
        assert entry["origin"] == "snapshot"
        assert entry["last_error"] == "OSError: connection refused"
        assert entry["consecutive_failures"] >= 1
        assert entry["stale"] is False
        assert runtime_of(handle).unhealthy() == []


async def test_with_the_upstream_and_the_coordinator_both_down_it_starts_from_the_snapshot(
    tmp_path: Path,
) -> None:
    """A coordinator that cannot be reached is no reason to fail startup when a snapshot exists."""
    import socket

    from asgi_refresh import RedisCoordinator

    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refresher = Refresher("names", Upstream(["ada"]), every="1h")
    async with lifespan(refresher, snapshot_dir=tmp_path):
        pass
    down = Refresher("names", Upstream(OSError("connection refused")), every="1h")
    coordinator = RedisCoordinator(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    async with lifespan(
        down, snapshot_dir=tmp_path, coordinator=coordinator, clock=FakeClock(START)
    ) as middleware:
        assert middleware.handle.value("names") == ["ada"]
        entry = middleware.handle.status()["names"]
        assert entry["origin"] == "snapshot"
        assert entry["coordination"]["role"] == "standalone"


async def test_a_snapshot_counts_as_stale_past_max_stale(tmp_path: Path) -> None:
    """Readiness follows max_stale for a snapshot value as for any value."""
    clock = FakeClock(START)
    async with lifespan(
        Refresher("names", Upstream(["ada"]), every="1h"), snapshot_dir=tmp_path, clock=clock
    ):
        pass
    later = FakeClock(START.replace(day=3))  # two days on
    async with lifespan(
        Refresher("names", Upstream(OSError("down")), every="1h", max_stale="3h"),
        snapshot_dir=tmp_path,
        clock=later,
    ) as middleware:
        assert middleware.handle.value("names") == ["ada"]
        assert middleware.handle.status()["names"]["stale"] is True
        assert [each["name"] for each in runtime_of(middleware.handle).unhealthy()] == ["names"]


async def test_the_first_good_fetch_replaces_the_snapshot_and_is_conditional(tmp_path: Path) -> None:
    """The snapshot's ETag goes with the first fetch: a 304 confirms the snapshot as fetched."""
    url = "http://upstream.test/names"
    with respx.mock(assert_all_called=False) as mock:
        mock.get(url).respond(200, json=["ada"], headers={"ETag": '"v1"'})
        async with lifespan(Refresher("names", HTTPSource(url), every="1h"), snapshot_dir=tmp_path):
            pass
    clock = FakeClock(START)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(url)
        route.side_effect = [httpx.ConnectError("refused"), httpx.Response(304, headers={"ETag": '"v1"'})]
        async with lifespan(
            Refresher("names", HTTPSource(url), every="1h", backoff_initial="1s"),
            snapshot_dir=tmp_path,
            clock=clock,
        ) as middleware:
            handle = middleware.handle
            assert handle.status()["names"]["origin"] == "snapshot"
            await clock.advance(2)  # the retry
            assert route.call_count == 2
            assert route.calls[1].request.headers["If-None-Match"] == '"v1"'
            entry = handle.status()["names"]
            assert entry["origin"] == "fetched"
            assert entry["last_outcome"] == "not_modified"
            assert entry["last_error"] is None
            assert handle.value("names") == ["ada"]


async def test_a_snapshot_of_another_source_is_not_used_and_startup_says_why(tmp_path: Path) -> None:
    """A refresher whose source changed does not start from the old source's value."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get("http://one.test/names").respond(200, json=["ada"])
        async with lifespan(
            Refresher("names", HTTPSource("http://one.test/names"), every="1h"), snapshot_dir=tmp_path
        ):
            pass
    with respx.mock(assert_all_called=False) as mock:
        mock.get("http://two.test/names").mock(side_effect=httpx.ConnectError("refused"))
        message = await startup_failure(
            Refresher("names", HTTPSource("http://two.test/names"), every="1h"), snapshot_dir=tmp_path
        )
    assert "could not load" in message
    assert "snapshot not used: names.snapshot is a snapshot of another source" in message


async def test_a_snapshot_older_than_snapshot_max_age_is_not_used(tmp_path: Path) -> None:
    """snapshot_max_age (the middleware's, or the refresher's own) bounds what startup may use."""
    async with lifespan(Refresher("names", Upstream(["ada"]), every="1h"), snapshot_dir=tmp_path):
        pass
    two_days_on = START.replace(day=3)
    message = await startup_failure(
        Refresher("names", Upstream(OSError("down")), every="1h"),
        snapshot_dir=tmp_path,
        snapshot_max_age="1d",
        start=two_days_on,
    )
    assert "older than snapshot_max_age (86400s)" in message
    # The refresher's own limit wins over the middleware's.
    async with lifespan(
        Refresher("names", Upstream(OSError("down")), every="1h", snapshot_max_age="3d"),
        snapshot_dir=tmp_path,
        snapshot_max_age="1d",
        clock=FakeClock(two_days_on),
    ) as middleware:
        assert middleware.handle.value("names") == ["ada"]


async def test_without_a_snapshot_startup_fails_as_before_and_says_there_is_none(tmp_path: Path) -> None:
    """No file: the usual startup failure, with the reason the snapshot was not used."""
    message = await startup_failure(
        Refresher("names", Upstream(OSError("down")), every="1h"), snapshot_dir=tmp_path
    )
    assert "snapshot not used: there is no snapshot (names.snapshot)" in message


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="torn"),
        pytest.param(lambda data: data.replace(b'"bob"', b'"bot"'), id="altered"),
        pytest.param(lambda data: b"garbage", id="not a snapshot"),
        pytest.param(lambda data: data.replace(b'"name":"names"', b'"name":"other"'), id="another name"),
    ],
)
async def test_a_damaged_snapshot_is_ignored_with_a_warning(
    tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn or altered file is never published: a WARNING, and startup fails as without one."""
    async with lifespan(Refresher("names", Upstream(["ada", "bob"]), every="1h"), snapshot_dir=tmp_path):
        pass
    path = tmp_path / "names.snapshot"
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        message = await startup_failure(
            Refresher("names", Upstream(OSError("down")), every="1h"), snapshot_dir=tmp_path
        )
    assert "snapshot not used: names.snapshot" in message
    assert any("snapshot not used" in record.getMessage() for record in caplog.records)


async def test_a_symlinked_snapshot_is_refused(tmp_path: Path) -> None:
    """A snapshot path that is a symlink is not followed (someone else's file)."""
    async with lifespan(Refresher("names", Upstream(["ada"]), every="1h"), snapshot_dir=tmp_path):
        pass
    real = tmp_path / "elsewhere"
    (tmp_path / "names.snapshot").rename(real)
    (tmp_path / "names.snapshot").symlink_to(real)
    message = await startup_failure(
        Refresher("names", Upstream(OSError("down")), every="1h"), snapshot_dir=tmp_path
    )
    assert "names.snapshot cannot be opened" in message


async def test_snapshot_files_are_private_and_the_directory_is_made_private(tmp_path: Path) -> None:
    """Snapshots hold values: the files are 0600 and a directory made for them 0700."""
    directory = tmp_path / "made" / "here"
    async with lifespan(Refresher("names", Upstream(["ada"]), every="1h"), snapshot_dir=directory):
        pass
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "names.snapshot").stat().st_mode) == 0o600
    assert [entry.name for entry in directory.iterdir()] == ["names.snapshot"]  # no temp file left


async def test_snapshot_false_and_fresh_tokens_are_not_written(tmp_path: Path) -> None:
    """A refresher can opt out; a Fresh token is kept only in memory unless snapshot=True."""
    down = False

    async def token() -> Fresh[str]:
        if down:
            raise OSError("down")
        return Fresh("t0k3n", expires_in="1h")

    async with lifespan(
        Refresher("names", Upstream(["ada"]), every="1h", snapshot=False),
        Refresher("token", token, every="1h"),
        Refresher("kept_token", token, every="1h", snapshot=True),
        snapshot_dir=tmp_path,
    ) as middleware:
        assert middleware.handle.status()["names"]["snapshot"] is None
    assert sorted(os.listdir(tmp_path)) == ["kept_token.snapshot"]
    down = True
    async with lifespan(Refresher("kept_token", token, every="1h"), snapshot_dir=tmp_path) as middleware:
        assert middleware.handle.value("kept_token") == "t0k3n"
        assert middleware.handle.status()["kept_token"]["expires_at"] is not None


async def test_an_unchanged_refresh_only_touches_the_snapshot(tmp_path: Path) -> None:
    """The value is written once; a refresh that finds it unchanged moves its mtime only."""
    clock = FakeClock(START)
    async with lifespan(
        Refresher("names", Upstream(["ada"]), every="1h", jitter=0), snapshot_dir=tmp_path, clock=clock
    ) as middleware:
        await written(middleware)
        path = tmp_path / "names.snapshot"
        inode, first = path.stat().st_ino, path.stat().st_mtime
        await clock.advance(3600)
        await written(middleware)
        assert path.stat().st_ino == inode  # not replaced
        assert path.stat().st_mtime == pytest.approx(first + 3600)


async def test_a_snapshot_that_cannot_be_written_is_logged_and_the_value_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk or an unwritable directory loses no data: a WARNING and an error in status."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        async with lifespan(
            Refresher("names", Upstream(["ada"]), every="1h"), snapshot_dir=blocked / "sub"
        ) as middleware:
            await written(middleware)
            assert middleware.handle.value("names") == ["ada"]
            error = middleware.handle.status()["names"]["snapshot"]["error"]  # type: ignore[index]
            assert error is not None
            assert error.startswith("writing its snapshot failed")
    assert [record.getMessage() for record in caplog.records if "snapshot" in record.getMessage()]


def test_a_reader_never_sees_a_partial_snapshot_while_a_writer_replaces_it(tmp_path: Path) -> None:
    """Atomic replacement: every read, racing the writer, is one whole value or the other."""
    values = [b"a" * 1_000_000, b"b" * 1_500_000]
    snapshots.write(tmp_path, "names", values[0], {"source": "s", "fetched_at": 1.0}, at=1.0)
    stop = threading.Event()

    def writer() -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            snapshots.write(tmp_path, "names", values[turn % 2], {"source": "s", "fetched_at": 1.0}, at=1.0)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            snapshot = snapshots.read(tmp_path / "names.snapshot", "names")
            assert snapshot.data in values
    finally:
        stop.set()
        thread.join()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(content=st.binary(max_size=512), cut=st.integers(min_value=0, max_value=600))
def test_reading_any_bytes_is_a_snapshot_or_a_snapshot_problem(
    tmp_path: Path, content: bytes, cut: int
) -> None:
    """Whatever a snapshot file holds, reading it never raises anything but SnapshotProblem."""
    good = tmp_path / "good.snapshot"
    snapshots.write(tmp_path, "good", b'["ada"]', {"source": "s", "fetched_at": 1.0}, at=1.0)
    for data in (content, good.read_bytes()[:cut] + content, snapshots.MAGIC + content):
        path = tmp_path / "names.snapshot"
        path.write_bytes(data)
        try:
            snapshot = snapshots.read(path, "names")
        except snapshots.SnapshotProblem:
            continue
        assert snapshot.meta["name"] == "names"


# -- change guards and quarantine -----------------------------------------------------


async def test_a_shrunken_value_is_held_back_once_logged_and_the_last_good_one_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """max_shrink: the value is not published; status says why and how it differs; one WARNING."""
    events: list[RefreshEvent] = []
    upstream = Upstream(list(range(10)), [1, 2], [1, 2])
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        async with lifespan(
            Refresher("names", upstream, every="1h", guard=max_shrink(0.5)), listeners=[events.append]
        ) as middleware:
            handle = middleware.handle
            assert await handle.refresh("names") == list(range(10))
            await handle.refresh("names")
            assert handle.value("names") == list(range(10))
            held = handle.status()["names"]["quarantined"]
            assert held is not None
            assert held["reason"] == "it shrank from 10 to 2 items (80%), more than max_shrink allows (50%)"
            assert held["summary"] == {"old_type": "list", "new_type": "list", "old_size": 10, "new_size": 2}
            assert handle.status()["names"]["last_outcome"] == "quarantined"
    warnings = [record for record in caplog.records if "held back" in record.getMessage()]
    assert len(warnings) == 1
    assert [event.kind for event in events].count("quarantined") == 1
    assert next(event for event in events if event.kind == "quarantined").error == held["reason"]


async def test_required_keys_holds_back_a_mapping_that_lost_keys_and_shows_which() -> None:
    """The summary names the keys added and removed, never their values."""
    upstream = Upstream(
        {"prices": 1, "tax": 2, "secret": "SECRET-X"}, {"tax": 2, "secret": "SECRET-Y", "new": 3}
    )
    async with lifespan(
        Refresher("config", upstream, every="1h", guard=required_keys("prices", "tax"))
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("config")
        held = handle.status()["config"]["quarantined"]
        assert held is not None
        assert held["reason"] == "it lacks required keys: 'prices'"
        assert held["summary"]["keys_removed"] == ["prices"]
        assert held["summary"]["keys_added"] == ["new"]
        assert "SECRET-Y" not in repr(held)
        assert "SECRET-X" not in repr(held)


async def test_the_first_value_is_not_guarded() -> None:
    """Nothing to compare with: the first value is published whatever the guards say."""
    async with lifespan(
        Refresher("config", Upstream({}), every="1h", guard=required_keys("prices"))
    ) as middleware:
        assert middleware.handle.value("config") == {}


async def test_a_custom_guard_sync_or_async_and_several_guards_in_order() -> None:
    """Any callable guard(old, new): sync ones run in a worker thread, async ones on the loop."""
    seen_threads: list[bool] = []

    def no_negative(old: Any, new: Any) -> str | None:
        seen_threads.append(threading.current_thread() is not threading.main_thread())
        return "a negative price" if min(new) < 0 else None

    async def no_zero(old: Any, new: Any) -> str | None:
        return "a zero price" if 0 in new else None

    upstream = Upstream([1, 2], [3, -1], [3, 0], [3, 4])
    async with lifespan(
        Refresher("prices", upstream, every="1h", guard=[no_negative, no_zero])
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("prices")
        assert handle.status()["prices"]["quarantined"]["reason"] == "a negative price"  # type: ignore[index]
        await handle.refresh("prices")
        assert handle.status()["prices"]["quarantined"]["reason"] == "a zero price"  # type: ignore[index]
        await handle.refresh("prices")
        assert handle.value("prices") == [3, 4]
        assert handle.status()["prices"]["quarantined"] is None
    assert seen_threads
    assert all(seen_threads)


async def test_a_guard_that_raises_holds_the_value_back_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail closed: a guard that raises is a reason to hold back, logged with its traceback."""

    def broken(old: Any, new: Any) -> str | None:
        raise KeyError("boom")

    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        async with lifespan(Refresher("names", Upstream([1], [2]), every="1h", guard=broken)) as middleware:
            await middleware.handle.refresh("names")
            assert middleware.handle.value("names") == [1]
            reason = middleware.handle.status()["names"]["quarantined"]["reason"]  # type: ignore[index]
            assert reason.startswith("its guard")
            assert "raised KeyError: 'boom'" in reason
    assert any(record.exc_info for record in caplog.records if "guard" in record.getMessage())


async def test_a_guard_that_blocks_does_not_stall_the_loop_and_times_out() -> None:
    """A sync guard stuck in I/O runs in a thread: the loop goes on; past the timeout it holds back."""
    release = threading.Event()

    def stuck(old: Any, new: Any) -> str | None:
        release.wait(10)
        return None

    clock = FakeClock(START)
    async with lifespan(
        Refresher("names", Upstream([1], [2]), every="1h", guard=stuck, timeout="5s"), clock=clock
    ) as middleware:
        handle = middleware.handle
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "names")
            await anyio.sleep(0.05)  # the loop runs while the guard blocks its thread
            assert handle.value("names") == [1]
            release.set()
    assert handle.value("names") == [2]


async def test_a_guard_that_never_answers_holds_back_after_the_timeout() -> None:
    """An async guard that hangs is bounded by the refresher's timeout."""

    async def hangs(old: Any, new: Any) -> str | None:
        await anyio.sleep_forever()
        return None

    clock = FakeClock(START)
    async with lifespan(
        Refresher("names", Upstream([1], [2]), every="1h", guard=hangs, timeout="5s"), clock=clock
    ) as middleware:
        handle = middleware.handle
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.refresh, "names")
            await clock.advance(6)
        reason = handle.status()["names"]["quarantined"]["reason"]  # type: ignore[index]
        assert "did not answer within 5s" in reason


async def test_accept_publishes_the_held_value() -> None:
    """accept(): the held value is published as a change, with its event."""
    events: list[str] = []
    async with lifespan(
        Refresher("names", Upstream([1, 2, 3, 4], [1]), every="1h", guard=max_shrink(0.5)),
        listeners=[lambda event: events.append(event.kind)],
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("names")
        assert await handle.accept("names") == [1]
        assert handle.value("names") == [1]
        assert handle.status()["names"]["quarantined"] is None
        with pytest.raises(LookupError, match="holds no value back"):
            await handle.accept("names")
    assert events[-2:] == ["changed", "accepted"] or events[-2:] == ["accepted", "changed"]


async def test_reject_keeps_the_published_value_and_the_same_value_stays_held_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """reject(): nothing published; the same bad value fetched again is not logged again."""
    async with lifespan(
        Refresher("names", Upstream([1, 2, 3, 4], [1], [1], [1, 2, 3, 4]), every="1h", guard=max_shrink(0.5))
    ) as middleware:
        handle = middleware.handle
        with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
            await handle.refresh("names")
            await handle.reject("names")
            await handle.refresh("names")
        assert handle.value("names") == [1, 2, 3, 4]
        held = handle.status()["names"]["quarantined"]
        assert held is not None
        assert held["rejected"] is True
        assert len([record for record in caplog.records if "held back" in record.getMessage()]) == 1
        await handle.refresh("names")  # the upstream is back to normal
        assert handle.status()["names"]["quarantined"] is None


# -- versions, pin and roll back -------------------------------------------------------


async def test_versions_are_listed_newest_first_and_only_keep_versions_are_kept() -> None:
    """Each published value gets an id number-digest; only the last keep_versions are kept."""
    async with lifespan(
        Refresher("names", Upstream(["a"], ["b"], ["c"], ["c"]), every="1h", keep_versions=2)
    ) as middleware:
        handle = middleware.handle
        for _ in range(3):
            await handle.refresh("names")
        entry = handle.status()["names"]
        ids = [each["id"] for each in entry["versions"]]
        assert [each.split("-")[0] for each in ids] == ["3", "2"]
        assert entry["version"] == ids[0]
        assert all(len(each.split("-")[1]) == 8 for each in ids)
        assert entry["versions"][0]["size"] == len(b'["c"]')


async def test_pin_publishes_a_kept_version_while_fetching_goes_on_and_unpin_follows_upstream_again() -> None:
    """While pinned the refresher fetches (status shows the upstream) but publishes the pin."""
    events: list[str] = []
    clock = FakeClock(START)
    upstream = Upstream(["a"], ["b"], ["c"], ["d"])
    async with lifespan(
        Refresher("names", upstream, every="1h", keep_versions=5),
        clock=clock,
        listeners=[lambda event: events.append(event.kind)],
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("names")
        first = handle.status()["names"]["versions"][-1]["id"]
        assert await handle.pin("names", first.split("-")[0]) == ["a"]
        assert handle.status()["names"]["pin"] == first
        assert handle.status()["names"]["origin"] == "pinned"
        await handle.refresh("names")
        assert handle.value("names") == ["a"]
        entry = handle.status()["names"]
        assert entry["last_outcome"] == "pinned"
        assert entry["upstream"] is not None
        assert entry["upstream"]["size"] == len(b'["c"]')
        assert entry["stale"] is False
        handle.unpin("names")
        await clock.advance(0)
        await anyio.sleep(0.01)
        assert handle.value("names") == ["d"]
        assert handle.status()["names"]["pin"] is None
    assert "pinned" in events
    assert "unpinned" in events


async def test_rollback_pins_the_version_before_the_current_one() -> None:
    """rollback(): back one version; again: back another; none left: LookupError."""
    async with lifespan(
        Refresher("names", Upstream(["a"], ["b"], ["c"]), every="1h", keep_versions=5)
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("names")
        await handle.refresh("names")
        second = await handle.rollback("names")
        assert second.startswith("2-")
        assert handle.value("names") == ["b"]
        assert (await handle.rollback("names")).startswith("1-")
        assert handle.value("names") == ["a"]
        with pytest.raises(LookupError, match="no version before"):
            await handle.rollback("names")


async def test_pin_names_the_problem() -> None:
    """An unknown version, or a refresher without versions, is a LookupError saying what to do."""
    async with lifespan(
        Refresher("names", Upstream(["a"]), every="1h", keep_versions=3),
        Refresher("plain", Upstream(["a"]), every="1h"),
    ) as middleware:
        handle = middleware.handle
        with pytest.raises(LookupError, match=r"keeps no version '9' \(kept: 1-"):
            await handle.pin("names", "9")
        with pytest.raises(LookupError, match="keep_versions=5"):
            await handle.pin("plain", "1")
        with pytest.raises(LookupError, match="keep_versions=5"):
            handle.unpin("plain")


async def test_a_version_kept_in_the_snapshot_directory_can_be_pinned_after_a_restart(tmp_path: Path) -> None:
    """Versions outlive the process in the snapshot directory."""
    async with lifespan(
        Refresher("names", Upstream(["a"], ["b"]), every="1h", keep_versions=5), snapshot_dir=tmp_path
    ) as middleware:
        await middleware.handle.refresh("names")
        first = middleware.handle.status()["names"]["versions"][-1]["id"]
    async with lifespan(
        Refresher("names", Upstream(["c"]), every="1h", keep_versions=5), snapshot_dir=tmp_path
    ) as middleware:
        assert await middleware.handle.pin("names", first) == ["a"]


# -- the admin endpoints ----------------------------------------------------------------


@asynccontextmanager
async def admin(*refreshers: Refresher) -> AsyncIterator[tuple[httpx.AsyncClient, RefreshMiddleware]]:
    async with lifespan(*refreshers, admin_path="/_refresh", admin_token=TOKEN) as middleware:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            yield http, middleware


async def test_the_admin_routes_accept_reject_pin_unpin_and_roll_back() -> None:
    """POST {prefix}/{name}/accept|reject|pin?version=V|unpin|rollback, each with the status in reply."""
    upstream = Upstream([1, 2, 3, 4], [1], [1, 2, 3, 4, 5], [9])
    async with admin(Refresher("names", upstream, every="1h", guard=max_shrink(0.5), keep_versions=5)) as (
        http,
        middleware,
    ):
        handle = middleware.handle
        await handle.refresh("names")
        reply = await http.post("/_refresh/names/reject", headers=AUTH)
        assert reply.status_code == 200
        assert reply.json()["status"]["quarantined"]["rejected"] is True
        assert (await http.post("/_refresh/names/accept", headers=AUTH)).status_code == 200
        assert handle.value("names") == [1]
        reply = await http.post("/_refresh/names/accept", headers=AUTH)
        assert reply.status_code == 409
        assert "holds no value back" in reply.json()["error"]
        reply = await http.post("/_refresh/names/rollback", headers=AUTH)
        assert reply.status_code == 200
        assert handle.value("names") == [1, 2, 3, 4]
        assert (await http.post("/_refresh/names/pin", headers=AUTH)).status_code == 400
        reply = await http.post("/_refresh/names/pin?version=77", headers=AUTH)
        assert reply.status_code == 409
        reply = await http.post("/_refresh/names/unpin", headers=AUTH)
        assert reply.status_code == 200
        assert (await http.get("/_refresh/names/pin", headers=AUTH)).status_code == 405
        assert (await http.post("/_refresh/names/explode", headers=AUTH)).status_code == 404


@pytest.mark.parametrize("action", ["accept", "reject", "pin?version=1", "unpin", "rollback"])
async def test_every_new_admin_route_needs_the_token(action: str) -> None:
    """No token or a wrong one: 401, and nothing happens."""
    async with admin(Refresher("names", Upstream([1, 2]), every="1h", keep_versions=2)) as (http, _):
        assert (await http.post(f"/_refresh/names/{action}")).status_code == 401
        wrong = {"Authorization": "Bearer wrong-token-wrong-token"}
        assert (await http.post(f"/_refresh/names/{action}", headers=wrong)).status_code == 401


# -- what other processes store: hostile metadata ---------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["version", "pin", "control", "held", "upstream", "other"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)),
    )
)
def test_cluster_metadata_is_checked_field_by_field(meta: dict[str, Any]) -> None:
    """Whatever a backend holds beside a value, reading it is a ClusterKept or a BadRecord."""
    from asgi_refresh import BadRecord

    with suppress(BadRecord):
        read_cluster_meta(meta)


def test_a_guard_class_instead_of_a_guard_is_refused() -> None:
    """guard=max_shrink (the class) would hold back every change: refused, saying to call it."""
    from asgi_refresh import OptionError

    with pytest.raises(
        TypeError, match=r"not the class max_shrink: call it, like max_shrink\(...\)"
    ) as caught:
        Refresher("names", Upstream([1]), every="1h", guard=max_shrink)  # type: ignore[arg-type]
    assert isinstance(caught.value, OptionError)
    assert caught.value.option == "guard"


def test_a_value_too_big_for_a_snapshot_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What startup would refuse to read is not written: a clear error instead."""
    monkeypatch.setattr(snapshots, "DEFAULT_MAX_BYTES", 10)
    with pytest.raises(ValueError, match="over the 10 a snapshot may hold"):
        snapshots.write(tmp_path, "names", b"x" * 11, {"source": "s", "fetched_at": 1.0}, at=1.0)
    assert list(tmp_path.iterdir()) == []


async def test_a_version_argument_that_is_not_a_version_is_refused_at_once() -> None:
    """pin() checks its argument before anything else (a follower would forward it to the holder)."""
    async with lifespan(Refresher("names", Upstream(["a"]), every="1h", keep_versions=2)) as middleware:
        with pytest.raises(ValueError, match="a version is a string like"):
            await middleware.handle.pin("names", "9" * 500)
        with pytest.raises(ValueError, match="a version is a string like"):
            await middleware.handle.pin("names", "")


async def test_a_pinned_token_stays_off_the_disk(tmp_path: Path) -> None:
    """Pinning a version of a Fresh token does not write the token to snapshot_dir."""
    tokens = iter(["t0k3n-one", "t0k3n-two"])

    async def token() -> Fresh[str]:
        return Fresh(next(tokens), expires_in="1h")

    async with lifespan(
        Refresher("token", token, every="1h", keep_versions=3), snapshot_dir=tmp_path
    ) as middleware:
        await middleware.handle.refresh("token")
        await middleware.handle.rollback("token")
        assert middleware.handle.value("token") == "t0k3n-one"
        await written(middleware)
    assert os.listdir(tmp_path) == []


async def test_unpin_after_shutdown_says_not_running(tmp_path: Path) -> None:
    """unpin() on a follower once the lifespan is over is the usual RuntimeError, not an assertion."""
    from asgi_refresh import SQLiteCoordinator

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream(["a"]), every="1h", keep_versions=2)],
        coordinator=SQLiteCoordinator(tmp_path / "refresh.db"),
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        runtime = runtime_of(handle)
    assert runtime.coordination is not None
    runtime.coordination.shares["names"].leading = False  # as a follower would be
    with pytest.raises(RuntimeError, match="not running"):
        handle.unpin("names")


def test_a_version_kept_by_copy_never_follows_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links, a version is copied to a new file: a symlink in its place is not written through."""

    def no_links(*args: object) -> None:
        raise OSError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / ".names@1.snapshot.tmp").symlink_to(victim)
    snapshots.write(
        tmp_path, "names", b'["a"]', {"source": "s", "fetched_at": 1.0}, at=1.0, number=1, keep_versions=2
    )
    assert victim.read_text() == "untouched"
    assert snapshots.read(snapshots.version_path(tmp_path, "names", 1), "names").data == b'["a"]'
