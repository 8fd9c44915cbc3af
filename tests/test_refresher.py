"""The Refresher spec and durations: every bad argument gets a clear error."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from asgi_refresh import Refresher, RefreshMiddleware
from asgi_refresh._duration import format_duration, parse_duration


async def fetch() -> int:
    return 1


def sync_fetch() -> int:
    return 1


class AsyncCallable:
    async def __call__(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        (timedelta(minutes=2), 120.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 1h 30m ", 5400.0),
        ("2H", 7200.0),
        ("1d2h3m4s5ms", 93784.005),
        ("-5s", -5.0),
    ],
)
def test_durations_parse_to_seconds(value: Any, seconds: float) -> None:
    """Seconds, timedeltas and unit strings all become float seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "90", "5 minutes", "", "1h30", "m5", "1s1s", "30m1h", "-"])
def test_malformed_duration_strings_are_rejected(value: str) -> None:
    """A string is <number><unit> parts, each unit at most once, largest first."""
    with pytest.raises(ValueError, match='expected a duration like "90s", "5m" or "1h30m"'):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, None, [5], object()])
def test_durations_of_the_wrong_type_are_rejected(value: Any) -> None:
    """bool, None and other objects are not durations."""
    with pytest.raises(TypeError, match="expected seconds, a timedelta or a string"):
        parse_duration(value)


def test_infinite_durations_are_rejected() -> None:
    """Inf and nan would break the schedule."""
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("inf"))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (2.5, "2.5s"), (30, "30s"), (90.5, "90.5s"), (5400, "1h30m"), (86400, "1d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Messages show durations the way users write them."""
    assert format_duration(seconds) == text


def test_refresher_normalises_and_is_immutable() -> None:
    """Durations become seconds and the spec cannot be changed after construction."""
    refresher = Refresher("names", fetch, every="1h30m", timeout=timedelta(seconds=5))
    assert refresher.every == 5400.0
    assert refresher.timeout == 5.0
    assert refresher.backoff_max is None
    assert refresher.required is True
    assert refresher.jitter > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        refresher.every = 1  # type: ignore[misc]


def test_refresher_equality_and_replace() -> None:
    """Two specs with the same arguments are equal; dataclasses.replace works in both directions."""
    assert Refresher("a", fetch, every=5) == Refresher("a", fetch, every="5s")
    hourly = Refresher("a", fetch, every="1h")
    assert dataclasses.replace(hourly, every=60).every == 60
    assert dataclasses.replace(dataclasses.replace(hourly, every=60), every=7200).backoff_max is None


@pytest.mark.parametrize(
    ("target", "is_async"),
    [(fetch, True), (sync_fetch, False), (AsyncCallable(), True), (lambda: 1, False)],
)
def test_refresher_knows_where_fetch_runs(target: Any, is_async: bool) -> None:
    """Async def and async __call__ run on the loop; plain functions in a thread."""
    assert Refresher("a", target, every=1).is_async is is_async


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"every": -5}, ValueError, "Refresher 'names': every must be > 0 (got -5)"),
        ({"every": 0}, ValueError, "Refresher 'names': every must be > 0 (got 0)"),
        ({"every": "soon"}, ValueError, "Refresher 'names': every: expected a duration like"),
        ({"every": None}, TypeError, "Refresher 'names': every: expected seconds"),
        ({"timeout": "0s"}, ValueError, "Refresher 'names': timeout must be > 0 (got '0s')"),
        ({"every": "-5s"}, ValueError, "Refresher 'names': every must be > 0 (got '-5s')"),
        (
            {"jitter": 0.6},
            ValueError,
            "Refresher 'names': jitter must be a fraction of every, 0 <= jitter <= 0.5",
        ),
        ({"jitter": -0.1}, ValueError, "jitter must be a fraction"),
        ({"jitter": True}, ValueError, "jitter must be a fraction"),
        ({"required": "yes"}, TypeError, "Refresher 'names': required must be True or False"),
        ({"backoff_initial": -1}, ValueError, "Refresher 'names': backoff_initial must be > 0"),
        ({"backoff_max": "2h"}, ValueError, "backoff_max must not exceed every (1h)"),
        ({"backoff_multiplier": 0.5}, ValueError, "backoff_multiplier must be between 1 and 100 (got 0.5)"),
        (
            {"backoff_multiplier": float("nan")},
            ValueError,
            "backoff_multiplier must be between 1 and 100 (got nan)",
        ),
        ({"backoff_multiplier": 10**400}, ValueError, "backoff_multiplier must be between 1 and 100"),
        ({"on_change": "print"}, TypeError, "Refresher 'names': on_change must be callable or None"),
        ({"on_error": 3}, TypeError, "Refresher 'names': on_error must be callable or None"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    """Each mistake names the refresher, the option, what is expected and what was given."""
    options: dict[str, Any] = {"every": "1h", **kwargs}
    with pytest.raises(error) as caught:
        Refresher("names", fetch, **options)
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["1st", "has-dash", "", "class", 5])
def test_names_must_be_identifiers(name: Any) -> None:
    """request.state.<name> must work, so names are identifiers and not keywords."""
    with pytest.raises(ValueError, match="must be a Python identifier"):
        Refresher(name, fetch, every=1)


def test_reserved_name_is_rejected() -> None:
    """asgi_refresh is where the handle lives."""
    with pytest.raises(ValueError, match="'asgi_refresh' is reserved"):
        Refresher("asgi_refresh", fetch, every=1)


def test_fetch_must_be_callable() -> None:
    """A value instead of a function is caught at construction."""
    with pytest.raises(
        TypeError, match="Refresher 'names': fetch must be a Source or a zero-argument callable"
    ):
        Refresher("names", ["ada"], every=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("every", [0.001, "5ms", 1e-6])
def test_every_has_a_floor(every: Any) -> None:
    """Sub-10 ms schedules are busy loops, not refreshers."""
    with pytest.raises(ValueError, match="every must be at least 10ms"):
        Refresher("a", fetch, every=every)


def test_fetch_taking_arguments_is_caught_at_construction() -> None:
    """A fetch that needs arguments fails at import time, with the fix in the message."""

    async def load(url: str) -> str:
        return url

    with pytest.raises(
        TypeError,
        match=r"Refresher 'a': fetch is called with no arguments, but it takes \(url\); bind them first",
    ):
        Refresher("a", load, every=1)  # type: ignore[arg-type]
    assert Refresher("a", lambda *args: 1, every=1).name == "a"
    assert Refresher("a", print, every=1).name == "a", "builtins without a usable signature are trusted"


async def app(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_middleware_rejects_duplicate_names() -> None:
    """Two refreshers publishing to one key would overwrite each other."""
    with pytest.raises(ValueError, match="two refreshers are named 'names'; names must be unique"):
        RefreshMiddleware(
            app, refreshers=[Refresher("names", fetch, every=1), Refresher("names", fetch, every=2)]
        )


@pytest.mark.parametrize(
    ("refreshers", "message"),
    [
        (
            Refresher("names", fetch, every=1),
            "wrap a single one in a list: refreshers=[Refresher('names', ...)]",
        ),
        ("names", "refreshers must be a list of Refresher (got str)"),
        ({"names": fetch}, "refreshers must be a list of Refresher (got dict)"),
        (None, "refreshers must be a list of Refresher (got NoneType)"),
    ],
)
def test_middleware_wants_a_list_of_refreshers(refreshers: Any, message: str) -> None:
    """A single Refresher, a string or a dict instead of a list is a clear TypeError."""
    with pytest.raises(TypeError) as caught:
        RefreshMiddleware(app, refreshers=refreshers)
    assert message in str(caught.value)


def test_middleware_rejects_non_refresher_items() -> None:
    """A bare function in the list is named in the error."""
    with pytest.raises(TypeError, match="refreshers must be Refresher objects"):
        RefreshMiddleware(app, refreshers=[fetch])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"startup_timeout": 0}, ValueError, "RefreshMiddleware: startup_timeout must be > 0 (got 0)"),
        ({"shutdown_timeout": "later"}, ValueError, "RefreshMiddleware: shutdown_timeout: expected"),
        ({"startup_timeout": None}, TypeError, "RefreshMiddleware: startup_timeout: expected seconds"),
    ],
)
def test_middleware_options_are_checked(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    """Middleware options get the same clear errors as refreshers."""
    with pytest.raises(error) as caught:
        RefreshMiddleware(app, refreshers=[], **kwargs)
    assert message in str(caught.value)


def test_handle_outside_a_lifespan_is_a_clear_error() -> None:
    """RefreshMiddleware.handle says why there is none."""
    with pytest.raises(RuntimeError, match="asgi_refresh is not running"):
        _ = RefreshMiddleware(app, refreshers=[]).handle
