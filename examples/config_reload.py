"""Hot-reload a TOML config file: edit it and the next request sees the change.

    python examples/config_reload.py [CONFIG]    # then edit CONFIG, reload http://127.0.0.1:8000/

Without CONFIG, it writes a sample config in the system's temporary directory and
prints where.

The file is polled every 5 s at the cost of one ``stat()``, and with the
``watch`` extra (``pip install 'asgi-refresh[watch]'``) reloaded the moment it
changes. A file that does not parse (saved half-way) is reported and the last
good config stays in use.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_refresh import FileSource, Refresher, RefreshMiddleware

CONFIG = Path(tempfile.gettempdir()) / "asgi-refresh-example-config.toml"
WATCH = importlib.util.find_spec("watchfiles") is not None


async def index(request: Request) -> JSONResponse:
    status = request.state.asgi_refresh.status()["config"]
    return JSONResponse(
        {
            "config": request.state.config,
            "changed at": status["last_changed_at"],
            "error": status["last_error"],
        }
    )


def make_app(config: Path) -> RefreshMiddleware:
    """The app, wrapped: ``config`` reloaded when it changes."""
    source = FileSource(config, watch=WATCH)
    return RefreshMiddleware(
        Starlette(routes=[Route("/", index)]), refreshers=[Refresher("config", source, every="5s")]
    )


if __name__ == "__main__":
    import uvicorn

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG
    if not path.exists():
        path.write_text('greeting = "hello"\nfeature_x = false\n')
    print(f"Serving on http://127.0.0.1:8000/ - edit {path.absolute()} and reload (Ctrl+C stops)")
    uvicorn.run(make_app(path), host="127.0.0.1", port=8000)
