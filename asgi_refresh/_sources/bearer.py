"""`BearerToken`: authenticate an HTTPSource with the value another refresher keeps fresh."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

from asgi_refresh._option_error import OptionValueError

if TYPE_CHECKING:
    from asgi_refresh._sources.context import Values


class BearerToken:
    """Send ``Authorization: Bearer <token>``, the token being another refresher's value.

    For an API that needs a token which a second refresher renews (an OAuth
    client-credentials grant returning `Fresh`)::

        Refresher("token", HTTPSource(TOKEN_URL, method="POST", parse=token_grant), every="1h"),
        Refresher("orders", HTTPSource(ORDERS_URL, auth=BearerToken("token")), every="5m"),

    Each request carries the token published at that moment. At startup, when all
    refreshers load at once, the request waits for the token's first load.

    Args:
        refresher: The name of the refresher whose value is the token.

    Raises:
        ValueError: ``refresher`` is not a refresher name.
    """

    def __init__(self, refresher: str) -> None:
        if not isinstance(refresher, str) or not refresher.isidentifier():
            raise OptionValueError(
                "BearerToken",
                "refresher",
                f"refresher must be a refresher name, like 'token' (got {refresher!r})",
            )
        self.refresher = refresher

    def __repr__(self) -> str:
        return f"BearerToken({self.refresher!r})"

    def _bind(self, handle: Values | None) -> _BoundBearer:
        if handle is None:
            raise RuntimeError(
                f"{self!r} reads another refresher's value: it needs a running RefreshMiddleware"
            )
        return _BoundBearer(self, handle)


class _BoundBearer(httpx.Auth):
    """A `BearerToken` tied to the running middleware's handle, for one open source."""

    def __init__(self, token: BearerToken, handle: Values) -> None:
        self.token, self.handle = token, handle

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError(f"{self.token!r} works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        value = await self.handle.wait_for(self.token.refresher)
        request.headers["Authorization"] = f"Bearer {value}"
        yield request
