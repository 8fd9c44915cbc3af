"""Review of the last-known-good core: regressions for defects found reading it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from asgi_refresh import Fresh, Refresher, max_shrink, required_keys
from asgi_refresh import _snapshots as snapshots
from asgi_refresh._cluster.base import BadRecord
from asgi_refresh._keeper import parse_version, read_cluster_meta
from asgi_refresh.testing import FakeClock
from tests.helpers import START, Upstream, lifespan, runtime_of, written

pytestmark = pytest.mark.anyio


# -- version numbers from outside: only ASCII digits ------------------------------------


@pytest.mark.parametrize("version", ["²-0123abcd", "٣-0123abcd", "1²-0123abcd"])
def test_a_version_id_with_non_ascii_digits_is_not_a_version(version: str) -> None:
    """parse_version refuses '²' and '٣' (str.isdigit accepts them, int() fails or reads them as 3)."""
    assert parse_version(version) == (None, None)


def test_a_backend_record_whose_version_has_non_ascii_digits_is_a_bad_record() -> None:
    """A hostile record's meta is a BadRecord (logged, skipped), not a ValueError out of the watch loop."""
    with pytest.raises(BadRecord):
        read_cluster_meta({"version": "²-0123abcd"})
    with pytest.raises(BadRecord):
        read_cluster_meta({"pin": "²-0123abcd"})


async def test_a_snapshot_whose_version_has_non_ascii_digits_is_still_started_from(tmp_path: Path) -> None:
    """A snapshot header naming version '²-…' does not crash the restore: the value is served, unnumbered."""
    async with lifespan(
        Refresher("names", Upstream(["ada"]), every="1h", keep_versions=3), snapshot_dir=tmp_path
    ):
        pass
    good = snapshots.read(snapshots.path_of(tmp_path, "names"), "names")
    snapshots.write(tmp_path, "names", good.data, {**good.meta, "version": "²-0123abcd"}, at=time.time())
    down = Upstream(OSError("connection refused"))
    async with lifespan(
        Refresher("names", down, every="1h", keep_versions=3), snapshot_dir=tmp_path
    ) as middleware:
        assert middleware.handle.value("names") == ["ada"]
        entry = middleware.handle.status()["names"]
        assert entry["origin"] == "snapshot"
        assert entry["version"] is None


async def test_a_stray_version_file_with_non_ascii_digits_does_not_stop_the_refresher(tmp_path: Path) -> None:
    """names@².snapshot in the snapshot directory is ignored: new values are still published and numbered."""
    (tmp_path / "names@².snapshot").write_bytes(b"hostile")
    async with lifespan(
        Refresher("names", Upstream(["a"], ["b"]), every="1h", keep_versions=3), snapshot_dir=tmp_path
    ) as middleware:
        handle = middleware.handle
        assert await handle.refresh("names") == ["b"]
        assert [each["id"].split("-")[0] for each in handle.status()["names"]["versions"]] == ["2", "1"]
        await written(middleware)
        assert handle.status()["names"]["snapshot"]["error"] is None  # type: ignore[index]
    assert "names@2.snapshot" in os.listdir(tmp_path)


async def test_pin_with_a_non_ascii_digit_is_a_lookup_error(tmp_path: Path) -> None:
    """pin('names', '²') says no such version, as for any unknown one (not int()'s ValueError)."""
    async with lifespan(
        Refresher("names", Upstream(["a"]), every="1h", keep_versions=3), snapshot_dir=tmp_path
    ) as middleware:
        with pytest.raises(LookupError, match="keeps no version"):
            await middleware.handle.pin("names", "²")


# -- quarantine ----------------------------------------------------------------------------


async def test_a_value_accepted_after_a_long_quarantine_is_as_old_as_its_last_fetch() -> None:
    """Accepting a value that was fetched again all along does not make it stale (nor the app unready)."""
    clock = FakeClock(START)
    upstream = Upstream([1, 2, 3, 4], [1])
    async with lifespan(
        Refresher("names", upstream, every="1h", jitter=0, max_stale="2h", guard=max_shrink(0.5)),
        clock=clock,
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("names")
        assert handle.status()["names"]["quarantined"] is not None
        await clock.advance("10h")  # fetched every hour meanwhile, held back quietly each time
        assert upstream.calls >= 10
        assert await handle.accept("names") == [1]
        entry = handle.status()["names"]
        assert entry["stale"] is False
        assert entry["age"] is not None
        assert entry["age"] <= 3600
        assert runtime_of(handle).unhealthy() == []


async def test_a_held_back_none_can_be_rejected_and_accepted() -> None:
    """A fetch that returns None and is held back is in quarantine like any value: reject and accept work."""
    upstream = Upstream({"prices": 1}, None)
    async with lifespan(
        Refresher("config", upstream, every="1h", guard=required_keys("prices"))
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("config")
        held = handle.status()["config"]["quarantined"]
        assert held is not None
        assert held["reason"] == "it is None, not a mapping with the required keys"
        await handle.reject("config")
        assert handle.status()["config"]["quarantined"]["rejected"] is True  # type: ignore[index]
        assert await handle.accept("config") is None
        assert handle.value("config") is None
        assert handle.status()["config"]["quarantined"] is None


async def test_an_accepted_fresh_token_is_not_written_to_the_snapshot_directory(tmp_path: Path) -> None:
    """A Fresh value held back and accepted stays off the disk, as every Fresh value does (snapshot=None)."""
    tokens = iter(["a" * 40, "short"])

    async def token() -> Fresh[str]:
        return Fresh(next(tokens), expires_in="1h")

    def same_length(old: Any, new: Any) -> str | None:
        return None if len(old) == len(new) else "the token changed shape"

    async with lifespan(
        Refresher("token", token, every="1h", guard=same_length), snapshot_dir=tmp_path
    ) as middleware:
        handle = middleware.handle
        await handle.refresh("token")
        assert handle.status()["token"]["quarantined"] is not None
        assert await handle.accept("token") == "short"
        await written(middleware)
    assert os.listdir(tmp_path) == []


async def test_an_accepted_fresh_token_keeps_its_own_expiry() -> None:
    """The accepted token expires when it does, not when the token it replaced did (status, readiness)."""
    tokens = iter([Fresh("a" * 40, expires_in="10m"), Fresh("short", expires_in="2h")])

    async def token() -> Fresh[str]:
        return next(tokens)

    def same_length(old: Any, new: Any) -> str | None:
        return None if len(old) == len(new) else "the token changed shape"

    clock = FakeClock(START)
    async with lifespan(Refresher("token", token, every="1d", guard=same_length), clock=clock) as middleware:
        handle = middleware.handle
        await handle.refresh("token")
        assert await handle.accept("token") == "short"
        expires_at = runtime_of(handle).slots["token"].expires_at
        assert expires_at is not None
        assert expires_at - clock.monotonic() == pytest.approx(7200, abs=1)
