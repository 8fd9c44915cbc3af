"""A middleware with refreshers, families and derived values together: one namespace, each read its own way."""

from __future__ import annotations

from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import ConfigError, Derived, Refresher, RefresherFamily, RefreshMiddleware

from .helpers import ScriptedApp, published

pytestmark = pytest.mark.anyio


async def rate(key: str) -> float:
    return {"EUR": 1.0, "USD": 1.08}[key]


def priced(products: list[str], prices: dict[str, float]) -> dict[str, float]:
    return {name: prices[name] for name in products}


def together() -> RefreshMiddleware:
    return RefreshMiddleware(
        ScriptedApp(),
        refreshers=[
            Refresher("products", lambda: ["tea"], every="1h"),
            Refresher("prices", lambda: {"tea": 2.5}, every="1h"),
        ],
        families=[RefresherFamily("rates", rate, every="5m", preload=["EUR"])],
        derived=[Derived("catalog", priced, inputs=("products", "prices"))],
    )


async def test_refreshers_families_and_derived_values_run_side_by_side() -> None:
    """Each kind works as it does alone; status() has one entry per name, a family's and a derived value's marked."""
    middleware = together()
    async with LifespanManager(middleware):
        snapshot = published(middleware)
        assert snapshot["catalog"] == {"tea": 2.5}
        assert "rates" not in snapshot, "a family publishes nothing per request"
        assert await middleware.handle.get("rates", "USD") == 1.08
        report = middleware.handle.status()
        assert set(report) == {"products", "prices", "rates", "catalog"}
        assert report["rates"]["family"]["keys"] == 2
        assert report["catalog"]["derived"] == {"inputs": ["products", "prices"], "inputs_moved_on": False}
        assert "family" not in report["catalog"]
        assert "derived" not in report["rates"]


def test_a_derived_value_may_not_take_a_familys_name_or_read_a_family() -> None:
    """Names are unique across all three lists; a family is not an input (it has no one value to compute from)."""
    family = RefresherFamily("rates", rate, every="5m")
    products = Refresher("products", lambda: ["tea"], every="1h")
    with pytest.raises(ValueError, match="Derived 'rates': the name is used twice, by a RefresherFamily"):
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[products],
            families=[family],
            derived=[Derived("rates", listed, inputs=("products",))],
        )
    with pytest.raises(ValueError, match="inputs name 'rates', which is a RefresherFamily"):
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[products],
            families=[family],
            derived=[Derived("catalog", lambda **inputs: inputs, inputs=("products", "rates"))],
        )


def test_a_config_file_may_not_give_a_family_and_a_derived_value_one_name(tmp_path: Path) -> None:
    path = tmp_path / "refresh.toml"
    path.write_text(
        """
[refreshers.products]
source = "python"
target = "tests.test_family_and_derived:products"
every = "1h"

[families.rates]
target = "tests.test_family_and_derived:rate"
every = "5m"

[derived.rates]
compute = "tests.test_family_and_derived:listed"
inputs = ["products"]
"""
    )
    with pytest.raises(ConfigError) as caught:
        RefreshMiddleware.from_config(ScriptedApp(), path)
    assert caught.value.problems == [
        "derived.rates: the name is used twice, by [families.rates] and by [derived.rates]; names must "
        "be unique across [refreshers], [families] and [derived]"
    ]


def products() -> list[str]:
    return ["tea"]


def listed(products: list[str]) -> int:
    return len(products)
