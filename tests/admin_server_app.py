"""The app the admin real-server tests start: one refresher, admin endpoints for loopback only.

Started as ``python -m uvicorn tests.admin_server_app:app`` (or hypercorn, daphne) on
127.0.0.1, so that raw requests with repeated headers reach it the way a server
parses them off the wire.
"""

from __future__ import annotations

from asgi_refresh import Refresher, RefreshMiddleware
from tests.helpers import ScriptedApp


async def names() -> list[str]:
    return ["ada", "grace"]


app = RefreshMiddleware(
    ScriptedApp(),
    refreshers=[Refresher("names", names, every="1h")],
    admin_path="/_refresh",
    admin_loopback_only=True,
)
