"""Durations from outside (config files, env vars, token endpoints): only the documented errors, bounded results."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given
from hypothesis import strategies as st

from asgi_refresh import Refresher, RefreshMiddleware
from asgi_refresh._duration import MAX_SECONDS, format_duration, parse_duration, positive_duration

from .helpers import ScriptedApp

HUNDRED_YEARS = 100 * 365.25 * 86400

anything = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**1000),
    st.floats(),
    st.booleans(),
    st.none(),
    st.timedeltas(),
    st.text(),
    st.text(alphabet="0123456789.-dhms ", max_size=40),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=2),
)


@given(anything)
def test_any_value_is_seconds_or_a_type_or_value_error(value: Any) -> None:
    """Whatever comes in: finite seconds of at most 100 years, or TypeError/ValueError; nothing else."""
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        message = str(exc)
    else:
        assert isinstance(seconds, float)
        assert abs(seconds) <= HUNDRED_YEARS
        return
    assert len(message) < 200, "the message quotes the value cut short"


parts = st.tuples(*[st.one_of(st.none(), st.integers(min_value=0, max_value=999)) for _ in range(5)])


@given(parts, st.booleans())
def test_unit_strings_add_up(values: tuple[int | None, ...], spaced: bool) -> None:
    """A string like "1d2h3m4s5ms" is the sum of its parts, in any case and with spaces; no part at all is refused."""
    units = ["d", "h", "m", "s", "ms"]
    sizes = [86400, 3600, 60, 1, 0.001]
    text = (" " if spaced else "").join(
        f"{v}{u.upper() if spaced else u}" for v, u in zip(values, units, strict=True) if v is not None
    )
    if not text:
        with pytest.raises(ValueError, match="expected a duration like"):
            parse_duration(text)
        return
    expected = sum(v * size for v, size in zip(values, sizes, strict=True) if v is not None)
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration("-" + text) == pytest.approx(-expected)


@given(st.integers(min_value=1, max_value=int(MAX_SECONDS)))
def test_format_duration_reads_back(seconds: int) -> None:
    """What messages show (format_duration) parses back to the same duration."""
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "value",
    [
        10**400,  # an int that no float holds: it raised OverflowError
        -(10**400),
        10**5000,  # its repr alone raises (more than 4300 digits)
        1e12,
        -1e12,
        timedelta.max,
        "9" * 60 + "d",
        "36525d1s",
        MAX_SECONDS + 1,
    ],
    ids=lambda value: type(value).__name__,
)
def test_durations_past_100_years_are_refused(value: Any) -> None:
    """Too long to mean anything (and an overflow later, in a date): a ValueError naming the limit."""
    with pytest.raises(ValueError, match=r"at most 100 years|finite"):
        parse_duration(value)


def test_the_longest_accepted_duration_is_100_years() -> None:
    """36525 days is accepted, as 100 years of seconds."""
    assert parse_duration("36525d") == MAX_SECONDS
    assert parse_duration(-MAX_SECONDS) == -MAX_SECONDS


@pytest.mark.parametrize("value", ["１s", "٣m", "1\u00b2s", "1_000s", "1e3s", "0x10s", "1.s", ".5s"])
def test_only_ascii_digits_in_plain_notation(value: str) -> None:
    """Fullwidth, Arabic-Indic or superscript digits, underscores and exponents are not durations."""
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(value)


@pytest.mark.parametrize("size", [10**3, 10**6, 10**7])
def test_huge_strings_are_refused_at_once(size: int) -> None:
    """Ten million digits are refused in well under a second, with a short message."""
    for text in ("1" * size + "s", "1" * size, " " * size + "5m", "1." * size + "s"):
        started = time.perf_counter()
        with pytest.raises(ValueError, match="expected a duration like") as raised:
            parse_duration(text)
        assert time.perf_counter() - started < 0.5
        assert len(str(raised.value)) < 200


def test_positive_duration_names_its_owner_and_cuts_the_value_short() -> None:
    """The error names the owner and the option, and quotes a huge value cut short."""
    with pytest.raises(ValueError, match=r"^Thing: every: expected a duration like .*…\)$") as raised:
        positive_duration("Thing", "every", "x" * 10_000)
    assert len(str(raised.value)) < 200


def test_a_repr_that_raises_is_still_refused_cleanly() -> None:
    """An object whose repr raises is a TypeError that names its type."""

    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(TypeError, match="a Odd"):
        parse_duration(Odd())


def test_a_refresher_every_1e12_seconds_is_refused_at_construction() -> None:
    """every=1e12 (31,700 years) is refused up front; it used to make status() raise (year out of range)."""
    with pytest.raises(
        ValueError, match="Refresher 'names': every: expected a duration of at most 100 years"
    ):
        Refresher("names", lambda: 1, every=1e12)


@pytest.mark.anyio
async def test_status_works_with_the_longest_durations() -> None:
    """At the limit (100 years), status() still answers: next refresh, staleness and all."""

    async def load() -> int:
        return 1

    refresher = Refresher(
        "names", load, every="36525d", max_stale="36525d", backoff_max="36525d", timeout="36525d"
    )
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher])
    async with LifespanManager(middleware):
        status = middleware.handle.status()["names"]
    assert status["refresh_count"] == 1
    assert status["stale"] is False
