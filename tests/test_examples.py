"""The examples run and do what their docstrings say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_quickstart_serves_and_refreshes_on_demand() -> None:
    """GET / shows the data and its status; POST /refresh loads the next value."""
    app = load("quickstart").app
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            first = (await client.get("/")).json()
            assert first["data"]["names"]
            assert first["status"]["refresh_count"] == 1
            refreshed = (await client.post("/refresh")).json()
            assert refreshed["data"]["names"] != first["data"]["names"]
            assert (await client.get("/")).json()["status"]["refresh_count"] == 2
