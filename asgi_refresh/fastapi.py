"""FastAPI dependencies: declare a refreshed value as a typed handler parameter.

```python
from typing import Annotated

from fastapi import HTTPException

from asgi_refresh import RefreshError
from asgi_refresh.fastapi import Refreshed, RefreshControl


@app.get("/names")
async def names(names: Annotated[list[str], Refreshed("names")]) -> list[str]:
    return names


@app.post("/names/refresh")
async def refresh(control: RefreshControl) -> list[str]:
    try:
        return await control.refresh("names")
    except RefreshError as exc:  # the upstream failed; the last good names stay published
        raise HTTPException(502, {"name": exc.name, "error": str(exc)}) from exc
```

Needs FastAPI (this module is the only one that imports it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from ._handle import RefreshHandle
from ._refresher import RESERVED_NAME

__all__ = ["RefreshControl", "Refreshed"]


def Refreshed(name: str) -> Any:
    """A FastAPI dependency on the current value of refresher ``name``.

    Use it in ``Annotated[T, Refreshed("name")]``: the handler gets the value
    published for this request (the same one ``request.state.<name>`` holds),
    typed as ``T`` for your editor and type checker. Works for HTTP and WebSocket
    handlers and in other dependencies.

    Raises:
        ValueError: ``name`` is not a Python identifier.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Refreshed: name must be a refresher name, like 'names' (got {name!r})")

    def current_value(connection: HTTPConnection) -> Any:
        state = connection.scope.get("state") or {}
        if name not in state:
            known = RESERVED_NAME in state
            raise RuntimeError(
                f"Refreshed({name!r}): no value for this request. "
                + (
                    f"No refresher is named {name!r}."
                    if known
                    else "Is the app wrapped in RefreshMiddleware, and does the server run the "
                    "lifespan (uvicorn --lifespan on; in tests `with TestClient(app)`)?"
                )
            )
        return state[name]

    current_value.__name__ = f"refreshed_{name}"
    return Depends(current_value)


def _control(connection: HTTPConnection) -> RefreshHandle:
    handle = (connection.scope.get("state") or {}).get(RESERVED_NAME)
    if not isinstance(handle, RefreshHandle):
        raise RuntimeError(
            "RefreshControl: no asgi_refresh handle for this request. Is the app wrapped in "
            "RefreshMiddleware, and does the server run the lifespan?"
        )
    return handle


RefreshControl = Annotated[RefreshHandle, Depends(_control)]
"""The control handle (refresh now, status) as a typed FastAPI parameter."""
