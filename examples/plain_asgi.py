"""A plain ASGI app (no framework) reading refreshed values from the scope.

    python examples/plain_asgi.py      # then open http://127.0.0.1:8000/

Any ASGI app works: the values are at ``scope["state"][name]``.
"""

from __future__ import annotations

import json
import random
from collections.abc import MutableMapping
from typing import Any

from asgi_refresh import Refresher, RefreshMiddleware


def load_quote() -> str:
    """A blocking fetch (a plain def): it runs in a worker thread, never on the event loop."""
    return random.choice(["Simple is better than complex.", "Flat is better than nested."])


async def quotes(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":  # this app has nothing of its own to start
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    state = scope["state"]
    status = state["asgi_refresh"].status()["quote"]
    body = json.dumps({"quote": state["quote"], "age": status["age"]}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = RefreshMiddleware(quotes, refreshers=[Refresher("quote", load_quote, every="3s")])


if __name__ == "__main__":
    import uvicorn

    print("Serving on http://127.0.0.1:8000/ - a new quote every 3 s (Ctrl+C stops)")
    uvicorn.run(app, host="127.0.0.1", port=8000)
