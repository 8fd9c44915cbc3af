"""The messages about derived values' graph, families as inputs, preload keys and a failed first compute.

Each test asserts the exact message: what a user reads is the point of these fixes.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest

from asgi_refresh import ConfigError, Derived, OptionError, Refresher, RefresherFamily, RefreshMiddleware
from asgi_refresh._cli import main
from asgi_refresh._config import load_config
from asgi_refresh._derived import graph_problems, order
from asgi_refresh.testing import FakeClock

from .helpers import START, FakeServer, ScriptedApp


def load_products() -> list[str]:
    return ["tea"]


def load_prices() -> dict[str, float]:
    return {"tea": 1.5}


def rate(key: str) -> float:
    return 1.0


def anything(**inputs: Any) -> int:
    return len(inputs)


def total_of(products: list[str], prices: dict[str, float]) -> float:
    return sum(prices.get(each, 0.0) for each in products)


HERE = "tests.test_derived_messages"

REFRESHERS = f"""
[refreshers.products]
source = "python"
target = "{HERE}:load_products"
every = "1h"

[refreshers.prices]
source = "python"
target = "{HERE}:load_prices"
every = "1h"
"""

FAMILY = f"""
[families.rates]
target = "{HERE}:rate"
every = "5m"
"""

CYCLE = f"""
[derived.d]
compute = "{HERE}:anything"
inputs = ["e"]

[derived.e]
compute = "{HERE}:anything"
inputs = ["d", "prices"]
"""

UNKNOWN_ZZ = (
    "derived.x.inputs: name 'zz', but no refresher or derived value has that name (known: d, e, prices, "
    "products); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name"
)
CYCLE_D_E = (
    "derived.d.inputs: form a cycle of derived values: d -> e -> d (each is computed from the next, so "
    "none can be computed first); compute one of them from refreshers only"
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(tomllib.loads(text), middleware=RefreshMiddleware)
    return caught.value.problems


# -- 1. a config file: every graph problem at once ------------------------------------------


def test_a_cycle_and_an_unknown_input_are_both_reported() -> None:
    """The unknown input no longer hides the cycle d <-> e."""
    problems = problems_of(
        REFRESHERS + CYCLE + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["zz"]\n'
    )
    assert problems == [UNKNOWN_ZZ, CYCLE_D_E]


def test_every_unknown_input_is_reported_at_its_tables_inputs() -> None:
    """Two unknown inputs of one table, and one of another: three lines, each at its table's inputs."""
    problems = problems_of(
        REFRESHERS
        + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["zz", "products", "yy"]\n'
        + f'[derived.w]\ncompute = "{HERE}:anything"\ninputs = ["x", "vv"]\n'
    )
    assert problems == [
        "derived.x.inputs: name 'zz', but no refresher or derived value has that name (known: prices, "
        "products, w); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name",
        "derived.x.inputs: name 'yy', but no refresher or derived value has that name (known: prices, "
        "products, w); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name",
        "derived.w.inputs: name 'vv', but no refresher or derived value has that name (known: prices, "
        "products, x); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name",
    ]


def test_a_name_clash_does_not_hide_an_unknown_input() -> None:
    problems = problems_of(
        REFRESHERS
        + f'[derived.prices]\ncompute = "{HERE}:anything"\ninputs = ["products"]\n'
        + f'[derived.total]\ncompute = "{HERE}:anything"\ninputs = ["prizes"]\n'
    )
    assert problems == [
        "derived.prices: the name is used twice, by [refreshers.prices] and by [derived.prices]; names "
        "must be unique across [refreshers], [families] and [derived]",
        "derived.total.inputs: name 'prizes', but no refresher or derived value has that name (known: "
        "prices, products); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name",
    ]


def test_a_compute_not_taking_its_inputs_hides_neither_unknown_inputs_nor_cycles() -> None:
    """The table that failed to build still has its inputs checked, and the other tables' cycle too."""
    problems = problems_of(
        REFRESHERS + CYCLE + f'[derived.x]\ncompute = "{HERE}:total_of"\ninputs = ["products", "zz"]\n'
    )
    assert problems == [
        "derived.x.compute: is called as compute(products=..., zz=...), but it takes (products, prices); "
        "name its parameters after the inputs, or take **inputs",
        UNKNOWN_ZZ,
        CYCLE_D_E,
    ]


def test_a_table_that_failed_keeps_its_name_known() -> None:
    """An input naming a table with a problem of its own is not also called unknown."""
    problems = problems_of(
        REFRESHERS
        + f'[derived.broken]\ncompute = "{HERE}:nothing"\ninputs = ["products"]\n'
        + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["broken"]\n'
    )
    assert problems == [
        f"derived.broken.compute: '{HERE}' has no attribute 'nothing' (in '{HERE}:nothing'); "
        "did you mean 'anything'?",
    ]


def test_two_cycles_are_each_reported_once() -> None:
    problems = problems_of(
        REFRESHERS
        + CYCLE
        + f'[derived.a]\ncompute = "{HERE}:anything"\ninputs = ["b"]\n'
        + f'[derived.b]\ncompute = "{HERE}:anything"\ninputs = ["c"]\n'
        + f'[derived.c]\ncompute = "{HERE}:anything"\ninputs = ["a", "products"]\n'
    )
    assert problems == [
        CYCLE_D_E,
        "derived.a.inputs: form a cycle of derived values: a -> b -> c -> a (each is computed from the "
        "next, so none can be computed first); compute one of them from refreshers only",
    ]


def test_check_on_the_command_line_lists_every_graph_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asgi-refresh check` on a cycle d <-> e and an unknown input reports both."""
    (tmp_path / "refresh.toml").write_text(
        REFRESHERS + CYCLE + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["zz"]\n'
    )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    try:
        code = main(["check", "refresh.toml"])
    finally:
        sys.path[:] = path
    captured = capsys.readouterr()
    assert code == 2
    lines = (captured.out + captured.err).splitlines()
    assert lines[0] == "invalid configuration in 'refresh.toml' (2 problems):"
    assert lines[1:3] == [f"  {UNKNOWN_ZZ}", f"  {CYCLE_D_E}"]


def test_the_python_api_raises_the_first_problem() -> None:
    """RefreshMiddleware(derived=...) raises one clear error: the first of them (the name clash here)."""
    refreshers = [Refresher("products", load_products, every="1h")]
    with pytest.raises(ValueError, match="used twice") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=refreshers,
            derived=[
                Derived("x", anything, inputs=["zz"]),
                Derived("products", anything, inputs=["x"]),
            ],
        )
    assert str(caught.value) == (
        "Derived 'products': the name is used twice, by a refresher and by this derived value; names must "
        "be unique among refreshers, families and derived values"
    )
    assert isinstance(caught.value, OptionError)
    assert (caught.value.option, caught.value.owner) == ("name", "Derived 'products'")


def test_graph_problems_lists_them_all_and_order_raises_the_first() -> None:
    derived = [
        Derived("d", anything, inputs=["e"]),
        Derived("e", anything, inputs=["d"]),
        Derived("x", anything, inputs=["zz"]),
    ]
    found = [str(each) for each in graph_problems([(s.name, s.inputs) for s in derived], ["a"])]
    assert found == [
        "Derived 'x': inputs name 'zz', but no refresher or derived value has that name (known: a, d, e); "
        "add it to refreshers=[...] or derived=[...], or fix the name",
        "Derived 'd': inputs form a cycle of derived values: d -> e -> d (each is computed from the next, "
        "so none can be computed first); compute one of them from refreshers only",
    ]
    with pytest.raises(ValueError, match="'zz'") as caught:
        order(derived, ["a"])
    assert str(caught.value) == found[0]
    assert [spec.name for spec in order([*derived[:1], Derived("e", anything, inputs=["a"])], ["a"])] == [
        "e",
        "d",
    ]


# -- 2. a family as an input ----------------------------------------------------------------


def test_an_input_naming_a_family_says_a_family_cannot_be_an_input() -> None:
    with pytest.raises(ValueError, match="RefresherFamily") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("a", load_products, every="1h")],
            families=[RefresherFamily("f", rate, every="5m")],
            derived=[Derived("d", anything, inputs=["a", "f"])],
        )
    assert str(caught.value) == (
        "Derived 'd': inputs name 'f', which is a RefresherFamily; a family cannot be an input, since it "
        "has a value per key, not one value. Read it inside an async compute with "
        "`await handle.get('f', key)` for the keys it needs, or load what it needs with a Refresher"
    )


def test_a_config_input_naming_a_family_says_so() -> None:
    problems = problems_of(
        REFRESHERS + FAMILY + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["products", "rates"]\n'
    )
    assert problems == [
        "derived.x.inputs: name 'rates', which is the family [families.rates]; a family cannot be an "
        "input, since it has a value per key, not one value. Read it inside an async compute with "
        "`await handle.get('rates', key)` for the keys it needs, or load what it needs with a "
        "[refreshers.<name>] table"
    ]


def test_a_config_derived_value_named_like_a_family_is_reported_with_its_other_problems() -> None:
    problems = problems_of(
        REFRESHERS
        + FAMILY
        + f'[derived.rates]\ncompute = "{HERE}:anything"\ninputs = ["products"]\n'
        + f'[derived.x]\ncompute = "{HERE}:anything"\ninputs = ["zz"]\n'
    )
    assert problems == [
        "derived.rates: the name is used twice, by [families.rates] and by [derived.rates]; names must "
        "be unique across [refreshers], [families] and [derived]",
        "derived.x.inputs: name 'zz', but no refresher or derived value has that name (known: prices, "
        "products); add it to a [refreshers.<name>] or [derived.<name>] table, or fix the name",
    ]


# -- 3. a name clash comes before naming itself ------------------------------------------------


def test_a_derived_value_named_like_a_refresher_and_reading_it_is_a_name_clash() -> None:
    """Refresher("a") and Derived("a", inputs=["a"]): the duplicate name is the problem."""
    with pytest.raises(ValueError, match="used twice") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("a", load_products, every="1h")],
            derived=[Derived("a", anything, inputs=["a"])],
        )
    assert str(caught.value) == (
        "Derived 'a': the name is used twice, by a refresher and by this derived value; names must be "
        "unique among refreshers, families and derived values"
    )
    problems = problems_of(
        REFRESHERS + f'[derived.prices]\ncompute = "{HERE}:anything"\ninputs = ["prices"]\n'
    )
    assert problems == [
        "derived.prices: the name is used twice, by [refreshers.prices] and by [derived.prices]; names "
        "must be unique across [refreshers], [families] and [derived]"
    ]


def test_a_derived_value_reading_itself_is_still_refused() -> None:
    with pytest.raises(ValueError, match="itself") as caught:
        RefreshMiddleware(
            ScriptedApp(),
            refreshers=[Refresher("a", load_products, every="1h")],
            derived=[Derived("d", anything, inputs=["a", "d"])],
        )
    assert str(caught.value) == "Derived 'd': inputs must not name the derived value itself ('d')"
    problems = problems_of(REFRESHERS + f'[derived.d]\ncompute = "{HERE}:anything"\ninputs = ["d"]\n')
    assert problems == ["derived.d.inputs: must not name the derived value itself ('d')"]


# -- 4. a preload key's error has one prefix ------------------------------------------------


def test_a_bad_preload_key_names_the_family_once() -> None:
    with pytest.raises(ValueError, match="preload") as caught:
        RefresherFamily("f", rate, every="5m", preload=[1.5])  # type: ignore[list-item]
    assert str(caught.value) == (
        "RefresherFamily 'f': preload: a key must be a str, an int or a tuple of them (got a float); "
        "convert it first, e.g. str(key)"
    )


# -- 5. a required derived value failing at startup ------------------------------------------


@pytest.mark.anyio
async def test_a_required_derived_value_failing_at_startup_warns_that_startup_fails(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not "its inputs are published without it ... computed again": startup fails because of it."""

    def broken(x: list[str]) -> int:
        raise ValueError("bad data")

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("x", load_products, every="1h")],
        derived=[Derived("y", broken, inputs=["x"])],
        clock=FakeClock(START),
    )
    server = FakeServer(middleware)
    with caplog.at_level(logging.WARNING, logger="asgi_refresh"):
        async with anyio.create_task_group() as group:
            group.start_soon(server.startup, group)
            await server.finished.wait()
    assert server.sent[-1]["type"] == "lifespan.startup.failed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == (
        "Derived 'y': compute failed (1 in a row): ValueError: bad data; it is required and has no value "
        "yet, so startup fails because of it"
    )
