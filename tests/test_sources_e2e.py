"""End to end against a real local upstream: uvicorn on 127.0.0.1, real sockets, real HTTP."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import BearerToken, Fresh, HTTPSource, Refresher, RefreshError, RefreshMiddleware
from asgi_refresh.demo.upstream import Upstream, serve

from .helpers import ScriptedApp, running

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream(token_lifetime=300)
    with serve(app) as base_url:
        yield app, base_url


def token(body: bytes) -> Fresh[str]:
    grant = json.loads(body)
    return Fresh(grant["access_token"], expires_in=grant["expires_in"])


async def test_conditional_polling_against_a_real_server(upstream: tuple[Upstream, str]) -> None:
    """First a 200, then 304s with no body, then the change: counted at the server."""
    server, base_url = upstream
    server.set("/names", ["ada", "grace"])
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("names", HTTPSource(f"{base_url}/names"), every="1h")]
    )
    before = server.requests["/names"], server.not_modified["/names"]
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("names") == ["ada", "grace"]
        assert await handle.refresh("names") == ["ada", "grace"]
        assert handle.status()["names"]["last_outcome"] == "not_modified"
        server.set("/names", ["ada", "grace", "linus"])
        assert await handle.refresh("names") == ["ada", "grace", "linus"]
        assert handle.status()["names"]["last_outcome"] == "changed"
    assert server.requests["/names"] - before[0] == 3
    assert server.not_modified["/names"] - before[1] == 1


async def test_a_token_refresher_feeds_a_second_refresher(upstream: tuple[Upstream, str]) -> None:
    """The token endpoint's grant is renewed before expiry and used by another refresher's requests."""
    server, base_url = upstream
    server.set("/protected", {"orders": 3})
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("token", HTTPSource(f"{base_url}/token", method="POST", parse=token), every="1h"),
            Refresher("orders", HTTPSource(f"{base_url}/protected", auth=BearerToken("token")), every="1h"),
        ],
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        assert handle.value("orders") == {"orders": 3}
        status: dict[str, Any] = handle.status()
        assert status["orders"]["consecutive_failures"] == 0
        assert status["token"]["next_refresh_at"] < status["orders"]["next_refresh_at"]
        assert handle.value("token") == server.tokens[-1]


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", deflate_raw)],
    ids=["gzip", "deflate", "raw deflate"],
)
async def test_compressed_bodies_are_inflated(
    upstream: tuple[Upstream, str], encoding: str, compress: Any
) -> None:
    """Gzip and deflate (with or without the zlib header) from a real server parse like plain bodies."""
    server, base_url = upstream
    document = [f"name-{i}" for i in range(5000)]
    server.set(
        f"/{encoding}-{compress.__name__}", compress(json.dumps(document).encode()), content_encoding=encoding
    )
    source = HTTPSource(f"{base_url}/{encoding}-{compress.__name__}")
    async with running(Refresher("names", source, every="1h")) as handle:
        assert handle.value("names") == document


# Leaving an httpx stream early makes trio warn about httpcore's async generators
# as they are collected (encode/httpx#3686): harmless, and not ours to fix.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_compression_bomb_is_stopped_at_the_cap(upstream: tuple[Upstream, str]) -> None:
    """50 MB of zeros in 50 kB of gzip: inflated no further than max_bytes, so memory stays small."""
    server, base_url = upstream
    server.set("/bomb", [1])
    source = HTTPSource(f"{base_url}/bomb", max_bytes=1_000_000)
    async with running(Refresher("names", source, every="1h")) as handle:
        server.set("/bomb", gzip.compress(b"0" * 50_000_000), content_encoding="gzip")
        tracemalloc.start()
        try:
            with pytest.raises(
                RefreshError, match=r"exceeds max_bytes \(1000000 bytes; over 1000000 bytes read\)"
            ):
                await handle.refresh("names")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert handle.value("names") == [1]
    assert peak < 8_000_000, f"peak {peak:,} bytes"


# Leaving an httpx stream early makes trio warn about httpcore's async generators
# as they are collected (encode/httpx#3686): harmless, and not ours to fix.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_body_that_does_not_decompress_is_an_error(upstream: tuple[Upstream, str]) -> None:
    """A body labelled gzip that is not: a clear error naming the URL, the last value kept."""
    server, base_url = upstream
    server.set("/broken", [1])
    async with running(Refresher("names", HTTPSource(f"{base_url}/broken"), every="1h")) as handle:
        server.set("/broken", b"not gzip at all", content_encoding="gzip")
        with pytest.raises(RefreshError, match=rf"GET {base_url}/broken: the body does not decompress"):
            await handle.refresh("names")
        assert handle.value("names") == [1]
