"""A Starlette app whose data refreshes every few seconds, without a restart.

    python examples/starlette_app.py   # then open http://127.0.0.1:8000/

The "upstream" here is a local function so the example runs offline; in a real app
`load_names` would call an API or read a file.
"""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_refresh import Refresher, RefreshError, RefreshHandle, RefreshMiddleware

_rota = itertools.cycle([["ada", "grace"], ["ada", "grace", "katherine"], ["barbara", "margaret"]])


async def load_names() -> dict[str, object]:
    """Pretend to call an upstream API: a different answer on each call."""
    return {"names": next(_rota), "loaded_at": datetime.now(UTC).isoformat(timespec="seconds")}


async def index(request: Request) -> JSONResponse:
    handle: RefreshHandle = request.state.asgi_refresh
    return JSONResponse({"data": request.state.names, "status": handle.status()["names"]})


async def refresh_now(request: Request) -> JSONResponse:
    handle: RefreshHandle = request.state.asgi_refresh
    try:
        return JSONResponse({"data": await handle.refresh("names")})
    except RefreshError as exc:  # the upstream failed: a 502 with the reason; the last good value stays
        return JSONResponse({"name": exc.name, "error": str(exc)}, status_code=502)


app = Starlette(
    routes=[Route("/", index), Route("/refresh", refresh_now, methods=["POST"])],
    middleware=[Middleware(RefreshMiddleware, refreshers=[Refresher("names", load_names, every="5s")])],
)


if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print("Serving on http://127.0.0.1:8000/ - reload it: 'data' changes every 5 s (Ctrl+C stops)")
    print("Refresh now: curl -X POST http://127.0.0.1:8000/refresh")
    uvicorn.run(app, host="127.0.0.1", port=8000, lifespan="on")
