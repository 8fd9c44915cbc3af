"""The demo: in process (every endpoint, the world changing) and as ``python -m asgi_refresh.demo``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh.demo.app import build
from asgi_refresh.demo.upstream import Upstream, serve

from .test_real_servers import BAD_SIGNS, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def local_upstream() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream(token_lifetime=15)
    with serve(upstream) as url:
        yield upstream, url


async def test_the_demo_shows_values_that_change(
    local_upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """The page, /data and /status answer; the upstream moves on and the data follows."""
    upstream, url = local_upstream
    app = build(upstream, url, tmp_path / "settings.toml", change_every=0.3)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert "<h1>asgi_refresh demo</h1>" in page.text
            data: dict[str, Any] = (await client.get("/data")).json()
            assert data["names"]["value"] == ["ada", "grace"]
            assert data["settings"]["value"] == {"greeting": "hello", "banner": False}
            assert data["token"]["value"] == "(secret)"
            assert data["orders"]["value"] == {"open orders": 3}
            await anyio.sleep(0.4)  # the world changes once
            for name in ("names", "settings", "orders"):
                assert (await client.post(f"/refresh/{name}")).status_code == 200
            assert (await client.post("/refresh/nope")).status_code == 404
            renewed = await client.post("/refresh/token")
            assert renewed.json()["value"] == "(secret)"
            assert upstream.tokens[-1] not in renewed.text + (await client.get("/status")).text
            data = (await client.get("/data")).json()
            assert data["names"]["value"] == ["ada", "grace", "katherine"]
            assert data["settings"]["value"] == {"greeting": "bonjour", "banner": True}
            assert data["orders"]["value"]["open orders"] >= 4
            status = (await client.get("/status")).json()
            assert status["token"]["expires_at"] is not None
            assert all(entry["last_error"] is None for entry in status.values())


def test_python_m_asgi_refresh_demo_serves_and_stops_cleanly() -> None:
    """The README's first command: it prints its URL, serves, and exits on Ctrl+C without a traceback."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asgi_refresh.demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                data = httpx.get(f"http://127.0.0.1:{port}/data", timeout=1).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert data["names"]["value"] == ["ada", "grace"]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert f"open http://127.0.0.1:{port}/" in output
    assert not [sign for sign in BAD_SIGNS if sign in output], output
