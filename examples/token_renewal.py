"""Renew an OAuth-style token before it expires, and use it in a second refresher.

    python examples/token_renewal.py      # then open http://127.0.0.1:8000/

A local token endpoint (from `asgi_refresh.demo.upstream`) issues tokens that live
20 seconds; the "token" refresher renews each one at least 2 seconds before it
expires (jitter makes it 16 to 18 s), and the "orders" refresher authenticates
with whichever token is current.
"""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_refresh import BearerToken, Fresh, HTTPSource, Refresher, RefreshMiddleware


def token_grant(body: bytes) -> Fresh[str]:
    """Read an OAuth token response: the token, valid for ``expires_in`` seconds."""
    grant = json.loads(body)
    return Fresh(grant["access_token"], expires_in=grant["expires_in"])


async def index(request: Request) -> JSONResponse:
    status = request.state.asgi_refresh.status()
    return JSONResponse(
        {
            "orders": request.state.orders,
            "token renewed at": status["token"]["last_changed_at"],
            "next renewal at": status["token"]["next_refresh_at"],
        }
    )


def make_app(upstream_url: str) -> RefreshMiddleware:
    """The app, wrapped: a token renewed before expiry, and orders fetched with it."""
    token = HTTPSource(
        f"{upstream_url}/token",
        method="POST",
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
        parse=token_grant,
    )
    orders = HTTPSource(f"{upstream_url}/protected", auth=BearerToken("token"))
    return RefreshMiddleware(
        Starlette(routes=[Route("/", index)]),
        refreshers=[Refresher("token", token, every="1h"), Refresher("orders", orders, every="5s")],
    )


if __name__ == "__main__":
    import uvicorn

    from asgi_refresh.demo.upstream import Upstream, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    upstream = Upstream(token_lifetime=20)
    upstream.set("/protected", {"orders": ["#1001", "#1002"]})
    with serve(upstream) as upstream_url:
        print("Serving on http://127.0.0.1:8000/ - the token is renewed every 16-18 s (Ctrl+C stops)")
        uvicorn.run(make_app(upstream_url), host="127.0.0.1", port=8000, lifespan="on")
