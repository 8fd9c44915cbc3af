"""A replaced big value is freed in bounded pieces, and never while anyone else can see it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import HTTPSource, Refresher
from asgi_refresh._sources import retire
from asgi_refresh.testing import FakeClock

from .helpers import START, running

URL = "https://api.example.com/doc"


def drain(value: Any) -> int:
    """Take ``value`` apart (the caller's reference is handed over); the number of steps."""
    holder = [value]
    del value
    return sum(1 for _ in retire.pieces(holder))


def records(count: int, salt: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"user-{i}-{salt}", "tags": ["a", i]} for i in range(count)]


def test_what_someone_else_holds_is_never_touched() -> None:
    """Containers held outside (a request's snapshot, a listener) stay whole; the rest is taken apart."""
    shared_list = records(1000)
    shared_dict = {"kept": records(10)}
    expected = copy.deepcopy((shared_list, shared_dict))
    value = {"a": [records(500), shared_list, {"deep": shared_dict}], "b": records(2000)}
    drain(value)
    assert (shared_list, shared_dict) == expected


def test_a_value_still_referenced_elsewhere_is_left_whole() -> None:
    """If anyone else holds the value itself, it is only let go of, not emptied."""
    value = {"items": records(1000)}
    alias = value
    expected = copy.deepcopy(value)
    drain(value)
    assert alias == expected


def test_a_wide_list_of_records_goes_in_steps_of_at_most_a_piece() -> None:
    """80,000 records are freed in about 80,000 / PIECE steps: no step frees more than a piece of them."""
    steps = drain({"items": records(80_000), "total": 80_000})
    assert steps >= 80_000 // retire.PIECE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=300) | st.dictionaries(st.text(max_size=3), children, max_size=300)
    ),
    max_leaves=2000,
)


@settings(max_examples=100, deadline=None)
@given(json_values, st.data())
def test_any_value_with_any_parts_held_elsewhere_keeps_those_parts(value: Any, data: st.DataObject) -> None:
    """Whatever the shape, the parts someone else holds are exactly as they were afterwards."""
    containers: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | dict):
            containers.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    held = [item for item in containers[1:] if data.draw(st.booleans())]
    expected = json.dumps(held)
    drain(value)
    assert json.dumps(held) == expected


def big_body(salt: int) -> bytes:
    return json.dumps({"items": records(5000, salt)}).encode()


@pytest.mark.anyio
async def test_the_replaced_value_is_taken_apart_once_the_new_one_is_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a big document changes, the old value is freed in pieces, not while it is still published."""
    taken_apart: list[bool] = []
    original = retire.pieces

    def spy(holder: list[Any]) -> Any:
        taken_apart.append(True)
        return original(holder)

    monkeypatch.setattr(retire, "pieces", spy)
    clock = FakeClock(START)
    with respx.mock(assert_all_called=False) as upstream:
        route = upstream.get(URL)
        route.respond(content=big_body(0), headers={"Content-Type": "application/json"})
        async with running(Refresher("doc", HTTPSource(URL), every="1h"), clock=clock) as handle:
            first = handle.value("doc")
            route.respond(content=big_body(1), headers={"Content-Type": "application/json"})
            await handle.refresh("doc")
            await clock.advance("1s")
            assert taken_apart == []  # the test still holds the first value: it must stay whole
            assert first["items"][-1]["name"] == "user-4999-0"
            del first
            route.respond(content=big_body(2), headers={"Content-Type": "application/json"})
            await handle.refresh("doc")
            await clock.advance("1s")
            assert taken_apart  # the first value, once let go of, and the second
            assert handle.value("doc")["items"][-1]["name"] == "user-4999-2"


@pytest.mark.anyio
async def test_a_small_document_is_simply_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values from bodies under the thread threshold are freed as usual, without a task."""
    started: list[bool] = []
    monkeypatch.setattr(retire, "free_in_pieces", lambda *args: started.append(True))
    with respx.mock(assert_all_called=False) as upstream:
        route = upstream.get(URL)
        route.respond(json=[1, 2])
        async with running(Refresher("doc", HTTPSource(URL), every="1h")) as handle:
            route.respond(json=[3])
            assert await handle.refresh("doc") == [3]
    assert started == []
