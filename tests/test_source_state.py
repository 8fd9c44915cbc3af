"""A source's optional state() hook: shown under status()["stream"], contained like any user code."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from typing import Any

import pytest

import asgi_refresh
from asgi_refresh import Fetched, Refresher, Source

from .helpers import running

pytestmark = pytest.mark.anyio


class Reporting(Source):
    kind = "streaming"

    def __init__(self, state: Any) -> None:
        self._state = state

    async def fetch(self) -> Fetched:
        return Fetched({"v": 1})

    def state(self) -> Any:
        if isinstance(self._state, BaseException):
            raise self._state
        return self._state


class NotSubclassed:
    """A source written against the protocol without subclassing it, and without state()."""

    kind = "plain"
    origin = "plain here"

    async def open(self, context: Any) -> None:
        return

    async def fetch(self) -> Fetched:
        return Fetched(1)

    async def close(self) -> None:
        return

    def check(self, value: Any) -> Any:
        return value

    def handover(self) -> None:
        return None

    def take_over(self, value: Any, handover: Any) -> None:
        return


async def test_a_sources_state_is_shown_under_stream() -> None:
    """What state() returns is the entry's "stream": JSON scalars kept, anything else left out."""
    reported = {
        "connected": True,
        "reconnects": 2,
        "last_error": None,
        "nested": {"no": 1},
        3: "key made str",
    }
    async with running(Refresher("feed", Reporting(reported), every="1h")) as handle:
        status = handle.status()["feed"]
    assert status["stream"] == {"connected": True, "reconnects": 2, "last_error": None, "3": "key made str"}
    json.dumps(status)


@pytest.mark.parametrize("state", [None, RuntimeError("boom"), ["not", "a", "mapping"], "text"])
async def test_no_state_or_a_broken_one_leaves_stream_out(state: Any) -> None:
    """None, a raising state() or a non-mapping: no "stream" key, and status() still works."""
    async with running(Refresher("feed", Reporting(state), every="1h")) as handle:
        assert "stream" not in handle.status()["feed"]


async def test_a_source_without_state_is_still_a_source() -> None:
    """The hook is looked up, not part of the protocol: a source that does not define it still runs."""
    assert isinstance(NotSubclassed(), Source)
    async with running(Refresher("feed", NotSubclassed(), every="1h")) as handle:
        assert handle.value("feed") == 1
        assert "stream" not in handle.status()["feed"]


def test_sse_source_is_lazy_and_a_source() -> None:
    """Importing asgi_refresh, or naming SSESource, loads no httpx_sse; SSESource is a Source."""
    code = "import sys, asgi_refresh; asgi_refresh.SSESource; print('httpx_sse' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
    assert isinstance(asgi_refresh.SSESource("http://127.0.0.1/s"), Source)


class Shouting(str):
    """A str whose own methods lie: status() must not call them again when it is serialised."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        return {"not": "a string"}

    def __str__(self) -> str:
        return "<b>shouted</b>"


class Counted(int):
    def __repr__(self) -> str:
        return "not a number"


class Infinite(dict[str, Any]):
    """A mapping that claims endless items: only the first 32 are read."""

    def items(self) -> Any:
        return ((f"k{n}", n) for n in itertools.count())


async def test_a_sources_odd_state_is_bounded_and_stays_json() -> None:
    """NaN, infinities and huge integers are left out (not JSON); strings and keys are cut; subclasses made plain."""
    reported = {
        "nan": math.nan,
        "inf": -math.inf,
        "huge": 10**5000,
        "big": 2**63,
        "fits": 2**63 - 1,
        "ratio": 0.5,
        "long": "x" * 10_000,
        "k" * 1_000: "long key",
        "odd": Shouting("plain"),
        "count": Counted(7),
        "surrogate": "\ud800",
    }
    async with running(Refresher("feed", Reporting(reported), every="1h")) as handle:
        stream: dict[str, Any] = dict(handle.status()["feed"]["stream"])
    assert stream == {
        "fits": 2**63 - 1,
        "ratio": 0.5,
        "long": "x" * 500,
        "k" * 100: "long key",
        "odd": "plain",
        "count": 7,
        "surrogate": "\ud800",
    }
    assert type(stream["odd"]) is str
    assert type(stream["count"]) is int
    # Strict JSON: what a browser's JSON.parse accepts (no NaN, no Infinity).
    json.loads(json.dumps(stream, allow_nan=False))


async def test_a_state_with_endless_items_is_read_32_at_most() -> None:
    """A mapping whose items never end: the first 32 are shown, status() returns."""
    async with running(Refresher("feed", Reporting(Infinite()), every="1h")) as handle:
        stream: dict[str, Any] = dict(handle.status()["feed"]["stream"])
    assert stream == {f"k{n}": n for n in range(32)}
