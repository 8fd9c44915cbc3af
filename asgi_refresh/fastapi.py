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

A `RefresherFamily` (data per key) is read the same way, with the key taken from
the request by a dependency of your own (a path or query parameter, a header, the
user):

```python
def currency(code: str) -> str:  # the path parameter {code}
    return code.upper()


@app.get("/rates/{code}")
async def rates(rate: Annotated[float, RefreshedKey("rates", key_from=currency)]) -> float:
    return rate
```

Needs FastAPI (this module is the only one that imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from ._handle import RefreshHandle
from ._refresher import RESERVED_NAME

__all__ = ["RefreshControl", "Refreshed", "RefreshedKey"]


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


def RefreshedKey(name: str, *, key_from: Callable[..., Any]) -> Any:
    """A FastAPI dependency on the value of `RefresherFamily` ``name`` for the request's key.

    Use it in ``Annotated[T, RefreshedKey("rates", key_from=currency)]``.
    ``key_from`` is a FastAPI dependency itself (a function whose parameters
    FastAPI fills from the path, the query, headers or other dependencies) that
    returns the key; its result is passed to ``await handle.get(name, key)``. A
    warm key answers at once; a cold one waits for its first load, shared with
    every other request for it.

    A key that the family refuses (not a str, int or tuple of them, or over 256
    characters) answers 400 with a short message that does not repeat the key. A
    key whose load fails raises `RefreshError` (the app's error handling decides
    what the client sees: add an exception handler to answer 503, say).

    Raises:
        ValueError: ``name`` is not a Python identifier.
        TypeError: ``key_from`` is not callable.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"RefreshedKey: name must be a family name, like 'rates' (got {name!r})")
    if not callable(key_from):
        raise TypeError(
            "RefreshedKey: key_from must be a dependency returning the key, like a function "
            f"taking the path parameter (got {key_from!r:.80})"
        )

    # A default, not an annotation: annotations are strings here (postponed), and
    # FastAPI would look `key_from` up in this module's globals.
    async def keyed_value(connection: HTTPConnection, key: Any = Depends(key_from)) -> Any:  # noqa: B008
        handle = _control_of(connection, f"RefreshedKey({name!r})")
        try:
            return await handle.get(name, key)
        except (TypeError, ValueError) as exc:  # the key, from the request: the client's mistake
            raise HTTPException(400, f"invalid key for {name!r}: {_reason(exc)}") from exc

    keyed_value.__name__ = f"refreshed_key_{name}"
    return Depends(keyed_value)


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("Family ") and ": " in text else text


def _control_of(connection: HTTPConnection, who: str) -> RefreshHandle:
    handle = (connection.scope.get("state") or {}).get(RESERVED_NAME)
    if not isinstance(handle, RefreshHandle):
        raise RuntimeError(
            f"{who}: no asgi_refresh handle for this request. Is the app wrapped in "
            "RefreshMiddleware, and does the server run the lifespan?"
        )
    return handle


def _control(connection: HTTPConnection) -> RefreshHandle:
    return _control_of(connection, "RefreshControl")


RefreshControl = Annotated[RefreshHandle, Depends(_control)]
"""The control handle (refresh now, status) as a typed FastAPI parameter."""
