"""Parsers of response headers (outside input): they never raise, and their results stay in bounds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from asgi_refresh._sources.decoding import codings
from asgi_refresh._sources.headers import (
    MAX_DELTA,
    cache_directives,
    content_length,
    delta_seconds,
    freshness_lifetime,
    http_date,
    retry_after,
)

# Header values as they reach us: any text (httpx decodes bytes as latin-1 or UTF-8),
# weighted towards the characters that matter here.
header_text = st.one_of(
    st.text(),
    st.text(alphabet='0123456789 ,="\\-+.:;eE²٣\t'),
    st.from_regex(r"\A[ ]?[0-9]{1,12}[ ]?\Z"),
    st.integers(-(10**20), 10**20).map(str),
)
dates = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC)
)
now = st.floats(min_value=-1e10, max_value=1e11, allow_nan=False)
YEAR_1 = datetime(1, 1, 1, tzinfo=UTC).timestamp()
YEAR_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


@given(header_text)
@example("²")
@example("٣")
@example("1" + "0" * 5000)
@example("0" * 5000 + "7")
def test_delta_seconds_is_ascii_digits_within_bounds(value: str) -> None:
    """delta-seconds: ASCII digits only; the result is in [0, 2^31]; long strings are not converted."""
    result = delta_seconds(value)
    stripped = value.strip(" \t")
    if stripped and set(stripped) <= set("0123456789"):
        significant = stripped.lstrip("0")
        assert result == (MAX_DELTA if len(significant) > 12 else min(int(significant or "0"), MAX_DELTA))
    else:
        assert result is None


def test_a_huge_delta_seconds_costs_nothing() -> None:
    """A million digits are read as 2^31 at once (int() would refuse past 4,300 digits anyway)."""
    started = time.perf_counter()
    assert delta_seconds("9" * 1_000_000) == MAX_DELTA
    assert time.perf_counter() - started < 0.5  # ~1 ms; 0.5 s leaves room for a loaded machine


@given(st.text(max_size=80))
@example("Sun, 06 Nov 1994 08:49:37 GMT extra")
@example("Fri, 31 Dec 99999 23:59:59 GMT")
@example("Sat, 31 Feb 2030 00:00:00 GMT")
@example("Sun, 06 Nov 1994 24:00:00 GMT")
@example("Sun, 06 Nov 1994 08:49:60 GMT")
@example("Sun Nov  6 08:49:37 ١٩٩٤")
def test_http_date_never_raises_and_is_finite(value: str) -> None:
    """Any text: None or a finite timestamp between the years 1 and 9999."""
    result = http_date(value)
    assert result is None or YEAR_1 <= result <= YEAR_9999


@given(dates)
def test_http_date_reads_all_three_forms(when: datetime) -> None:
    """IMF-fixdate, RFC 850 (years 1970-2069) and asctime round-trip to the second."""
    when = when.replace(microsecond=0)
    expected = when.timestamp()
    # Built by hand: strftime does not pad years below 1000, and a day equal to the
    # year (31 Jan 31) must not be mistaken for it.
    imf_fixdate = when.strftime("%a, %d %b ") + f"{when.year:04d}" + when.strftime(" %H:%M:%S GMT")
    assert http_date(imf_fixdate) == expected
    assert (
        http_date(
            when.strftime("%a %b ") + f"{when.day:2d}" + when.strftime(" %H:%M:%S ") + f"{when.year:04d}"
        )
        == expected
    )
    if 1970 <= when.year <= 2069:
        assert http_date(when.strftime("%A, %d-%b-%y %H:%M:%S GMT")) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),
        ("Sun Nov  6 08:49:37 1994", 784111777.0),
        ("sun, 6 nov 1994 08:49:37 utc", 784111777.0),
        ("  Sun, 06 Nov 1994 08:49:37 GMT\t", 784111777.0),
        ("Sun, 06 Nov 1994 08:49:37 +0000", None),
        ("0", None),
        ("-1", None),
        ("", None),
    ],
)
def test_http_date_examples(value: str, expected: float | None) -> None:
    """The RFC 9110 examples, with the leniency servers need (case, one-digit day, UTC), and no more."""
    assert http_date(value) == expected


@given(
    st.one_of(st.none(), header_text, st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=40)),
    now,
    st.floats(0, 1e6),
)
@example("²", None, 0.0, 3600.0)
@example("-5", None, 0.0, 3600.0)
@example("NaN", None, 0.0, 3600.0)
@example("Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT", 0.0, 3600.0)
def test_retry_after_is_none_or_within_zero_and_the_limit(
    value: str | None, date: str | None, clock: float, limit: float
) -> None:
    """Any Retry-After and Date: None, or seconds in [0, limit]."""
    result = retry_after(value, date, clock, limit=limit)
    assert result is None or 0.0 <= result <= limit


@given(
    st.lists(
        st.one_of(header_text, st.text(alphabet='max-age=no-cache,"\\ ; 0123456789', max_size=60)), max_size=4
    )
)
@example(['private="a, max-age=5", max-age=300'])
@example(['no-cache="Set-Cookie, X', "max-age=1"])
@example(["max-age=1, max-age=2"])
@example([',,,=,="\\'])
def test_cache_directives_never_raise(values: list[str]) -> None:
    """Any Cache-Control lines: None (a conflict) or lower-case stripped names mapped to arguments."""
    directives = cache_directives(values)
    if directives is not None:
        assert len(directives) <= 64
        for name in directives:
            assert name == name.strip(" \t").lower()
            assert name


def test_cache_directives_stop_at_64() -> None:
    """A header of thousands of directives is read up to 64 of them."""
    directives = cache_directives([", ".join(f"x-{i}={i}" for i in range(5000)) + ", max-age=5"])
    assert directives is not None
    assert len(directives) == 64
    assert "max-age" not in directives


def test_cache_directives_read_quoted_strings() -> None:
    """A quoted argument may hold commas and escapes; a repeated directive with another value is a conflict."""
    assert cache_directives(['private="a, max-age=5", max-age=300']) == {
        "private": "a, max-age=5",
        "max-age": "300",
    }
    assert cache_directives(['no-cache="x\\"y"', "Max-Age = 5"]) == {"no-cache": 'x"y', "max-age": "5"}
    assert cache_directives(["max-age=5", "max-age=5"]) == {"max-age": "5"}
    assert cache_directives(["max-age=5, max-age=6"]) is None


@given(
    st.lists(header_text, max_size=3),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), header_text),
    now,
)
@example(["max-age=²"], None, None, None, 0.0)
@example(["max-age=300"], None, None, "9" * 5000, 0.0)
@example([], "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT", None, 0.0)
def test_freshness_lifetime_is_none_or_within_bounds(
    cache_control: list[str], expires: str | None, date: str | None, age: str | None, clock: float
) -> None:
    """Any caching headers: None (the server did not say) or seconds in [0, 2^31]."""
    result = freshness_lifetime(cache_control, expires, date, age, clock)
    assert result is None or 0.0 <= result <= MAX_DELTA


@given(st.one_of(st.none(), header_text))
@example("42, 42")
@example("42, 43")
@example("9" * 5000)
def test_content_length_is_none_or_a_bounded_int(value: str | None) -> None:
    """Any Content-Length: None, or an int in [0, 2^63]; equal duplicates count once."""
    result = content_length(value)
    assert result is None or 0 <= result <= 2**63


@given(st.lists(st.text(alphabet="gzipdeflatbrzstdIDENTITY ,\t-x\x00é", max_size=40), max_size=5))
@example(["gzip, gzip", "GZIP", " identity ,, br"])
def test_content_codings_never_raise_and_keep_the_order(values: list[str]) -> None:
    """Any Content-Encoding lines: lower-case tokens in order, without identity or empty items."""
    found = codings(values)
    expected = [
        token.strip(" \t").lower()
        for value in values
        for token in value.split(",")
        if token.strip(" \t") and token.strip(" \t").lower() != "identity"
    ]
    assert found == expected
    assert all(token and token == token.strip(" \t") and token != "identity" for token in found)
