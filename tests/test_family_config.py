"""[families.<name>] in a configuration file: built into RefresherFamily, every problem named by its key."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import ConfigError, RefresherFamily, RefreshMiddleware
from asgi_refresh._config import load_config
from asgi_refresh.testing import FakeClock

from .helpers import ScriptedApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def rates_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module ``family_rates`` with ``load(key)`` and ``load_all()``."""
    module = ModuleType("family_rates")

    async def load(key: Any) -> str:
        return f"rate of {key}"

    async def load_all() -> list[str]:
        return ["EUR"]

    module.load = load  # type: ignore[attr-defined]
    module.load_all = load_all  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "family_rates", module)
    return module


def problems_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(document, middleware=RefreshMiddleware)
    return caught.value.problems


async def test_a_family_table_builds_a_working_family(rates_module: ModuleType, tmp_path: Path) -> None:
    """A TOML file with a family and no refreshers starts; preload keys (lists are tuple keys) load."""
    path = tmp_path / "refresh.toml"
    path.write_text(
        "[families.rates]\n"
        'target = "family_rates:load"\n'
        'every = "5m"\n'
        'idle_ttl = "30m"\n'
        "max_keys = 10\n"
        'preload = ["EUR", ["EUR", "USD"], 7]\n'
    )
    middleware = RefreshMiddleware.from_config(ScriptedApp(), path, clock=FakeClock())
    (family,) = middleware.families
    assert isinstance(family, RefresherFamily)
    assert (family.every, family.idle_ttl, family.max_keys) == (300.0, 1800.0, 10)
    assert family.preload == ("EUR", ("EUR", "USD"), 7)
    async with LifespanManager(middleware):
        assert await middleware.handle.get("rates", ("EUR", "USD")) == "rate of ('EUR', 'USD')"
        assert middleware.handle.status()["rates"]["family"]["loads"] == 3


def test_every_problem_is_named_by_its_key(rates_module: ModuleType) -> None:
    """Bad values, unknown keys, a missing target and bad names are all reported at once, each at its key."""
    problems = problems_of(
        {
            "families": {
                "rates": {
                    "target": "family_rates:nope",
                    "every": "soon",
                    "max_keys": 0,
                    "preload": [1.5],
                    "fetch": "family_rates:load",
                },
                "bad name": {"target": "family_rates:load", "every": "1m"},
                "other": {"every": "1m"},
                "long": {"target": "family_rates:load", "every": "1m", "preload": ["x" * 300]},
            }
        }
    )
    assert (
        "families.rates.target: 'family_rates' has no attribute 'nope' (in 'family_rates:nope')" in problems
    )
    assert 'families.rates.every: expected a duration like "5m", got "soon"' in problems
    assert any(p.startswith("families.rates.max_keys: must be a whole number") for p in problems)
    assert any(p.startswith("families.rates.preload.0: expected a key") for p in problems)
    assert 'families.rates.fetch: unknown key; give target = "module:function"' in problems
    assert any(
        p.startswith('families."bad name": RefresherFamily name must be a Python identifier')
        for p in problems
    )
    assert 'families.other.target: missing; expected an import string like "myapp.rates:load"' in problems
    assert any(p.startswith("families.long.preload:") and "256 characters" in p for p in problems)


def test_names_are_unique_across_refreshers_and_families(rates_module: ModuleType) -> None:
    """A family named like a refresher is a problem at the family's table."""
    problems = problems_of(
        {
            "refreshers": {"rates": {"source": "python", "target": "family_rates:load_all", "every": "1h"}},
            "families": {"rates": {"target": "family_rates:load", "every": "1m"}},
        }
    )
    assert problems == [
        "families.rates: a refresher is named 'rates' too; names must be unique across [refreshers] and [families]"
    ]


def test_a_config_with_neither_refreshers_nor_families_is_still_refused() -> None:
    """An empty configuration still says to add refreshers."""
    assert problems_of({}) == ["refreshers: missing: add one [refreshers.<name>] table per refresher"]


def test_check_lists_the_families(
    rates_module: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asgi-refresh check` counts and lists a config's families, in its table and its JSON."""
    import json

    from asgi_refresh._cli import main

    path = tmp_path / "refresh.toml"
    path.write_text('[families.rates]\ntarget = "family_rates:load"\nevery = "5m"\npreload = ["EUR"]\n')
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid, 0 refreshers, 1 family" in out
    assert "rates   every 5m  1h        1000      1        yes" in out
    assert main(["check", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["families"] == [
        {
            "name": "rates",
            "schedule": "every 5m",
            "idle_ttl": "1h",
            "max_keys": 1000,
            "preload": 1,
            "required": True,
        }
    ]
