"""A FastAPI app with refreshed values as typed handler parameters.

    python examples/fastapi_app.py      # then open http://127.0.0.1:8000/docs

``Annotated[T, Refreshed("name")]`` hands a handler the value of this request;
``RefreshControl`` hands it the control handle.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException

from asgi_refresh import Refresher, RefreshError, RefreshMiddleware
from asgi_refresh.fastapi import RefreshControl, Refreshed

_rates = itertools.cycle([{"EUR": 1.0, "USD": 1.08}, {"EUR": 1.0, "USD": 1.09}, {"EUR": 1.0, "USD": 1.07}])


async def load_rates() -> dict[str, float]:
    """Pretend to call a rates API: a different answer on each call."""
    return next(_rates)


app = FastAPI(title="asgi_refresh FastAPI example")
app.add_middleware(RefreshMiddleware, refreshers=[Refresher("rates", load_rates, every="10s")])


@app.get("/convert")
async def convert(
    amount: float, currency: str, rates: Annotated[dict[str, float], Refreshed("rates")]
) -> Any:
    """Convert an amount in EUR with the current rates."""
    if currency not in rates:
        raise HTTPException(404, f"no rate for {currency!r}; known: {', '.join(sorted(rates))}")
    return {"amount": round(amount * rates[currency], 2), "currency": currency, "rate": rates[currency]}


@app.post("/rates/refresh")
async def refresh_rates(control: RefreshControl) -> dict[str, float]:
    """Fetch the rates now (concurrent calls share one fetch); 502 with the reason if that fails."""
    try:
        rates: dict[str, float] = await control.refresh("rates")
    except RefreshError as exc:
        # The upstream failed, not this app; the last good rates are still served.
        raise HTTPException(502, {"name": exc.name, "error": str(exc)}) from exc
    return rates


@app.get("/status")
async def status(control: RefreshControl) -> dict[str, Any]:
    """What each refresher is doing."""
    return control.status()


if __name__ == "__main__":
    import uvicorn

    print("Serving on http://127.0.0.1:8000/docs (Ctrl+C stops)")
    uvicorn.run(app, host="127.0.0.1", port=8000)
