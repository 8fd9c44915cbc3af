"""Incremental JSON (asgi-refresh[big-json]): json.loads' value or json.loads decides, in bounded steps."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import SourceError
from asgi_refresh._sources import incremental, parsing
from asgi_refresh._sources.context import SourceContext
from asgi_refresh._sources.incremental import Fallback, IncrementalJSON

pytestmark = pytest.mark.skipif(not incremental.available(), reason="ijson's C backend is in the test extra")

WHERE = "GET https://api.example.com/doc"


def incremental_value(body: bytes, step: int = incremental.SLICE) -> Any:
    parser = IncrementalJSON(body)
    for start in range(0, len(body), step):
        parser.feed(start, start + step)
    return parser.close()


def same(a: Any, b: Any) -> bool:
    """Equal with types (1 is not 1.0), key order and NaN taken into account."""
    return json.dumps(a, ensure_ascii=True) == json.dumps(b, ensure_ascii=True)


def agrees(body: bytes, step: int) -> None:
    """What the incremental parser says about ``body`` is what json.loads says, or it defers."""
    try:
        expected = json.loads(body)
    except Exception:
        expected = Fallback
    try:
        got = incremental_value(body, step)
    except Fallback:
        return
    assert expected is not Fallback, f"built a value json.loads refuses: {body!r}"
    assert same(got, expected), (body, got, expected)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans(), st.sampled_from([None, 0, 2]), st.integers(min_value=1, max_value=64))
def test_any_json_document_gives_the_value_json_loads_gives(
    value: Any, ascii_only: bool, indent: int | None, step: int
) -> None:
    """Any document json.dumps writes, cut in any slices, builds json.loads' value (or defers to it)."""
    agrees(json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode(), step)


@settings(max_examples=400, deadline=None)
@given(values, st.data(), st.integers(min_value=1, max_value=32))
def test_damaged_documents_never_build_what_json_loads_refuses(
    value: Any, data: st.DataObject, step: int
) -> None:
    """A document with bytes changed, cut or inserted is refused exactly when json.loads refuses it."""
    body = bytearray(json.dumps(value, ensure_ascii=data.draw(st.booleans())).encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(body)))
        junk = data.draw(
            st.binary(max_size=3)
            | st.sampled_from(
                [
                    b"\\ud800",
                    b"\\udc00",
                    b"\x0b",
                    b"\x0c",
                    b"\xef\xbb\xbf",
                    b"[",
                    b"}",
                    b'"',
                    b"NaN",
                    b"1e999",
                    b"\\",
                ]
            )
        )
        if data.draw(st.booleans()) and at < len(body):
            del body[at : at + len(junk) or at + 1]
        body[at:at] = junk
    agrees(bytes(body), step)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=16))
def test_any_bytes_are_refused_or_parsed_like_json_loads(body: bytes, step: int) -> None:
    """Arbitrary bytes: the incremental parser agrees with json.loads or lets it decide."""
    agrees(body, step)


@pytest.mark.parametrize(
    "body",
    [
        b'["\\ud800"]',  # yajl would make it "?"
        b'["\\ud800x", "\\ud83d\\ude00"]',
        b"[1,\x0b2]",  # yajl takes \v for white space
        b"\xef\xbb\xbf[1]",
        b"[NaN, Infinity]",
        b"[1e400]",
        b"[123456789012345678901234567890]",
        '["\u00e9"]'.encode("utf-16"),
        b"",
        b"   ",
        b"[1] [2]",
        b'[]"',  # yajl lets an unfinished token after the value go (found by hypothesis)
        b'{"a": 1} "x',
        b'-2.5634005030957068e+16"',  # yajl ends a bare number at any byte (found by hypothesis)
        b"12",
        b"true",
    ],
)
def test_what_yajl_would_get_wrong_goes_to_json_loads(body: bytes) -> None:
    """Lone surrogates, vertical tabs, a BOM, NaN, huge numbers, UTF-16, no value, two values, a bare scalar: json.loads decides."""
    with pytest.raises(Fallback):
        incremental_value(body, 4)


def test_deep_nesting_gives_up_early_in_bounded_memory() -> None:
    """A million "[" (ijson's own builder would need terabytes) is handed over at MAX_DEPTH, in little memory."""
    body = b"[" * 1_000_000 + b"]" * 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(Fallback, match="nested too deep"):
            incremental_value(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_nesting_up_to_the_limit_is_built() -> None:
    """Nesting to MAX_DEPTH is built, the same as json.loads builds it."""
    depth = incremental.MAX_DEPTH
    body = b'{"a":' * (depth - 1) + b"[]" + b"}" * (depth - 1)
    assert incremental_value(body, 7) == json.loads(body)


def big_document(count: int = 20_000) -> bytes:
    records = [
        {"id": i, "name": f"user-{i}-\u00e9", "score": i / 7, "tags": ["a", None, True]} for i in range(count)
    ]
    return json.dumps({"items": records, "total": count}).encode()


@pytest.mark.anyio
async def test_a_big_document_is_parsed_with_the_loop_running_between_slices() -> None:
    """A 1.7 MB document parses to json.loads' value while another task keeps getting turns."""
    body = big_document()
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        value = await parsing.Parser("test", "parse", "json", None)(
            SourceContext.current("test"), body, WHERE
        )
        done = True
    assert value == json.loads(body)
    assert turns > 5


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [True, False])
async def test_a_parse_error_mid_document_says_where(monkeypatch: pytest.MonkeyPatch, extra: bool) -> None:
    """A big body broken in the middle fails with json.loads' line and column, with the extra or without."""
    monkeypatch.setattr(incremental, "available", lambda: extra)
    body = big_document()
    broken = body[: len(body) // 2] + b"\n  }oops" + body[len(body) // 2 :]
    with pytest.raises(SourceError) as caught:
        await parsing.Parser("test", "parse", "json", None)(SourceContext.current("test"), broken, WHERE)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(broken)
    assert f"line {expected.value.lineno} column {expected.value.colno}" in str(caught.value)
    assert str(caught.value).startswith(f"{WHERE}: invalid json: JSONDecodeError: ")


@pytest.mark.anyio
async def test_big_documents_are_validated_after_an_incremental_parse() -> None:
    """The validate callable sees the incrementally built value, and its failure is a SourceError."""

    def validate(value: Any) -> Any:
        if value["total"] != 20_000:
            raise ValueError("wrong total")
        return value["total"]

    parser = parsing.Parser("test", "parse", "json", validate)
    assert await parser(SourceContext.current("test"), big_document(), WHERE) == 20_000
    with pytest.raises(SourceError, match="validation failed: ValueError: wrong total"):
        await parser(SourceContext.current("test"), big_document(19_999), WHERE)


@pytest.mark.anyio
async def test_a_lone_surrogate_in_a_big_document_keeps_json_loads_value() -> None:
    """A big document with a lone surrogate escape is json.loads' value, not yajl's "?"."""
    body = big_document()[:-1] + b', "odd": "\\ud800"}'
    value = await parsing.Parser("test", "parse", "json", None)(SourceContext.current("test"), body, WHERE)
    assert value["odd"] == "\ud800"
    assert not math.isnan(value["items"][1]["score"])


@pytest.mark.anyio
async def test_a_big_json_file_is_parsed_incrementally_too(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FileSource's big JSON files go through the same incremental parse, to the same value."""
    from asgi_refresh import FileSource, Refresher

    from .helpers import running

    calls: list[int] = []
    original = incremental.IncrementalJSON.close

    def close(self: IncrementalJSON) -> Any:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(incremental.IncrementalJSON, "close", close)
    path = tmp_path / "doc.json"
    path.write_bytes(big_document())
    async with running(Refresher("doc", FileSource(path), every="1h")) as handle:
        assert handle.value("doc") == json.loads(path.read_bytes())
    assert calls == [1]
