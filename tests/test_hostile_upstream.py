"""HTTPSource against a hostile upstream: bombs, encodings, redirects, lies and drips, on real sockets."""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import json
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_refresh import HTTPSource, Refresher, RefreshError, SourceError
from asgi_refresh._sources.decoding import available

from .faults.upstream import HostileUpstream, Reply, bomb, can_encode, encode, endless
from .helpers import running

# Leaving an httpx stream early (a capped or refused body) makes trio warn as httpcore's
# async generators are collected (encode/httpx#3686): harmless, and not ours to fix.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MiB = 1024 * 1024
BOMB_SIZE = 128 * MiB
CAP = 1 * MiB
# What decoding may hold besides the capped body: slices, decoder state, httpx's buffers.
MEMORY_SLACK = 6 * MiB


@pytest.fixture
def upstream() -> Iterator[HostileUpstream]:
    with HostileUpstream() as server:
        yield server


@pytest.fixture
def without_brotli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if neither brotli nor brotlicffi were installed (httpx, imported already, still has it)."""
    monkeypatch.setitem(sys.modules, "brotli", None)
    monkeypatch.setitem(sys.modules, "brotlicffi", None)
    available.cache_clear()
    yield
    available.cache_clear()


async def fetch(source: HTTPSource) -> Any:
    """One fetch, by hand: the value, or the exception the source raised."""
    async with source:
        try:
            return (await source()).value
        except Exception as exc:
            return exc


async def measured(work: Callable[[], Awaitable[Any]]) -> tuple[Any, int, float]:
    """Run ``work``; return its result, the peak of traced memory, and the event loop's worst stall.

    A stall is the event loop thread's CPU time between two ticks: what our code spent
    without yielding. Wall time would also count the OS running other processes (on a
    loaded 2-core CI machine, hundreds of ms) and blame it on the decoder. The cyclic
    garbage collector is paused meanwhile: a full collection of everything the test session
    has allocated, under tracemalloc, took 260 ms of this thread on CI and is no stall of ours.
    """
    worst = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.thread_time()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.thread_time()
            worst = max(worst, now - last)
            last = now

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            result = await work()
            done.set()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.enable()
    return result, peak, worst


@functools.cache
def cached_bomb(codings: tuple[str, ...]) -> bytes:
    return bomb(BOMB_SIZE, list(codings))


def need(*codings: str) -> None:
    missing = [c for c in codings if c not in available() or not can_encode(c)]
    if missing:  # the test extra installs them; a bare environment says so instead of passing
        pytest.fail(f"install the test extra: no bounded decoder or encoder for {missing}")


# -- compression bombs, whatever the stack -----------------------------------------------

BOMBS = [
    # (Content-Encoding header lines, codings applied in order)
    (["gzip, gzip"], ("gzip", "gzip")),
    (["gzip", "gzip"], ("gzip", "gzip")),
    (["GZIP ,  X-Gzip"], ("gzip", "gzip")),
    (["gzip, identity", "gzip"], ("gzip", "gzip")),
    (["deflate, gzip"], ("deflate", "gzip")),
    (["deflate"], ("deflate-raw",)),
    (["gzip, gzip, gzip"], ("gzip", "gzip", "gzip")),
    (["gzip"], ("gzip",)),
    (["br"], ("br",)),
    (["gzip, br"], ("gzip", "br")),
    (["zstd"], ("zstd",)),
    (["br, zstd"], ("br", "zstd")),
]


@pytest.mark.parametrize(("lines", "codings"), BOMBS, ids=[" | ".join(lines) for lines, _ in BOMBS])
async def test_a_bomb_in_any_encoding_stack_stops_at_the_cap(
    upstream: HostileUpstream, lines: list[str], codings: tuple[str, ...]
) -> None:
    """128 MiB of zeros in a few kB, any stack of codings: refused at max_bytes, memory and loop unharmed."""
    need(*{c.replace("deflate-raw", "deflate") for c in codings})
    body = cached_bomb(codings)
    upstream.route("/bomb", Reply(headers=[("Content-Encoding", line) for line in lines], body=body))
    result, peak, stall = await measured(lambda: fetch(HTTPSource(upstream.url("/bomb"), max_bytes=CAP)))
    assert isinstance(result, SourceError), result
    assert str(result) == (
        f"GET {upstream.url('/bomb')}: response body exceeds max_bytes ({CAP} bytes; over {CAP} bytes read); "
        "raise max_bytes if the document really is that big"
    )
    assert peak < CAP + MEMORY_SLACK, f"peak {peak:,} bytes for a {len(body):,}-byte bomb"
    assert stall < 0.25, f"the event loop stalled {stall * 1000:.0f} ms"


@pytest.mark.parametrize("codings", [("gzip", "gzip"), ("deflate", "br"), ("zstd", "gzip"), ("br",)])
async def test_a_big_stacked_body_under_the_cap_decodes_without_stalling(
    upstream: HostileUpstream, codings: tuple[str, ...]
) -> None:
    """32 MB decoded through a stack, under a 48 MiB cap: the right bytes, the loop never held long."""
    need(*codings)
    document = json.dumps([f"name-{i:08d}" for i in range(2_000_000)]).encode()
    upstream.route(
        "/big", Reply(headers=[("Content-Encoding", ", ".join(codings))], body=encode(document, codings))
    )
    source = HTTPSource(upstream.url("/big"), parse="bytes", max_bytes=48 * MiB)
    started = time.perf_counter()
    result, _peak, stall = await measured(lambda: fetch(source))
    assert result == document
    assert stall < 0.25, (
        f"the event loop stalled {stall * 1000:.0f} ms in {time.perf_counter() - started:.2f} s"
    )


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("compress", "Content-Encoding 'compress'"),
        ("gzip, foo", "Content-Encoding 'foo'"),
        ("x-bomb\x7f", r"Content-Encoding 'x-bomb\\x7f'"),
        ("aes128gcm", "Content-Encoding 'aes128gcm'"),
    ],
)
async def test_an_unknown_coding_is_refused_by_name(
    upstream: HostileUpstream, header: str, shown: str
) -> None:
    """A coding the source cannot undo is refused with its (escaped) name, not parsed as if plain."""
    upstream.route("/odd", Reply(headers=[("Content-Encoding", header)], body=b"[1]"))
    result = await fetch(HTTPSource(upstream.url("/odd")))
    assert isinstance(result, SourceError)
    assert str(result) == (
        f"GET {upstream.url('/odd')}: the response has {shown}, which this source cannot decode "
        f"(it decodes {', '.join(available())}); the response was refused"
    )


async def test_too_many_codings_are_refused(upstream: HostileUpstream) -> None:
    """Five codings stacked: refused before any decoder state is made."""
    upstream.route("/deep", Reply(headers=[("Content-Encoding", "gzip, " * 4 + "gzip")], body=b"x"))
    result = await fetch(HTTPSource(upstream.url("/deep")))
    assert isinstance(result, SourceError)
    assert "the response has 5 content codings (gzip, gzip, gzip, gzip, gzip); at most 4 are undone" in str(
        result
    )


async def test_identity_and_empty_items_mean_no_coding(upstream: HostileUpstream) -> None:
    """``identity``, empty list items and blank lines are no coding at all."""
    upstream.route(
        "/plain",
        Reply.json(["plain"], headers=[("Content-Encoding", "identity, ,"), ("Content-Encoding", "")]),
    )
    assert await fetch(HTTPSource(upstream.url("/plain"))) == ["plain"]


async def test_only_bounded_codings_are_advertised(upstream: HostileUpstream) -> None:
    """Accept-Encoding lists exactly the codings decoded under the cap, on the shared client and on yours."""
    upstream.route("/names", Reply.json([1]))
    await fetch(HTTPSource(upstream.url("/names")))
    async with httpx.AsyncClient() as client:
        await fetch(HTTPSource(upstream.url("/names"), client=client))
    await fetch(HTTPSource(upstream.url("/names"), headers={"accept-encoding": "identity"}))
    sent = [seen.header("accept-encoding") for seen in upstream.requests]
    expected = ", ".join(coding for coding in available() if coding != "x-gzip")
    assert sent == [[expected], [expected], ["identity"]]


async def test_without_a_bounded_brotli_br_is_neither_offered_nor_taken(
    upstream: HostileUpstream, without_brotli: None
) -> None:
    """No brotli 1.2+: br leaves Accept-Encoding, and a br body sent anyway is refused, saying what to install."""
    need("zstd")
    upstream.route("/br", Reply(headers=[("Content-Encoding", "br")], body=b"\x0b\x01\x80[1]\x03"))
    result = await fetch(HTTPSource(upstream.url("/br")))
    assert upstream.requests[0].header("accept-encoding") == ["gzip, deflate, zstd"]
    assert isinstance(result, SourceError)
    assert str(result) == (
        f"GET {upstream.url('/br')}: the response is br-encoded, which cannot be decoded within max_bytes "
        "here: install brotli 1.2 or later (pip install 'asgi-refresh[brotli]'), or have the server send "
        "one of: gzip, x-gzip, deflate, zstd"
    )


def test_a_brotli_without_bounded_output_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Brotli before 1.2 inflates a whole chunk per call: it does not count as available."""

    class OldDecompressor:
        def process(self, data: bytes) -> bytes:  # pragma: no cover - never called
            return data

    class OldBrotli:
        Decompressor = OldDecompressor

    monkeypatch.setitem(sys.modules, "brotli", OldBrotli)
    monkeypatch.setitem(sys.modules, "brotlicffi", None)
    available.cache_clear()
    try:
        assert "br" not in available()
    finally:
        available.cache_clear()


async def test_a_stacked_body_dripped_byte_by_byte_decodes(upstream: HostileUpstream) -> None:
    """Gzip inside gzip, one byte per packet: the decoders carry state across every split."""
    document = json.dumps({"names": ["ada", "grace"] * 20}).encode()
    body = encode(document, ["gzip", "gzip"])
    upstream.route(
        "/drip", Reply(headers=[("Content-Encoding", "gzip, gzip")], body=body, drip=0.001, piece=1)
    )
    assert await fetch(HTTPSource(upstream.url("/drip"))) == json.loads(document)


async def test_a_compressed_body_cut_short_is_an_error(upstream: HostileUpstream) -> None:
    """A gzip stream that stops before its end (connection closed) is refused, not published half."""
    body = gzip.compress(json.dumps(list(range(5000))).encode())
    upstream.route(
        "/cut", Reply(headers=[("Content-Encoding", "gzip")], body=body[: len(body) // 2], framing="close")
    )
    result = await fetch(HTTPSource(upstream.url("/cut"), parse="bytes"))
    assert isinstance(result, SourceError)
    assert str(result) == (
        f"GET {upstream.url('/cut')}: the gzip-encoded body ends before its compressed stream does "
        "(the response was cut short)"
    )


# -- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http:/capture",  # no host: httpx keeps ours, but the port becomes 80
        "//localhost:{port}/capture",
        "http://127.0.0.1:{port}@evil.invalid/capture",
        "http://evil.invalid/capture",
        "http://127.0.0.1:{other}/capture",
        "https://127.0.0.1:{port}/capture",
        "HTTP://EVIL.INVALID:{port}/capture",
        "http://127.0.0.1:{port}%2f@evil.invalid/capture",
        "http://127.0.0.1.:{port}/capture",
    ],
)
async def test_a_redirect_off_the_origin_is_refused_before_anything_is_sent(
    upstream: HostileUpstream, location: str
) -> None:
    """Whatever the Location trick, the URL httpx would request is judged: another origin is refused."""
    target = location.format(port=upstream.port, other=upstream.port + 1)
    upstream.route("/start", Reply.redirect(target))
    upstream.route("/capture", Reply.json(["captured"]))
    source = HTTPSource(upstream.url("/start"), headers={"X-Api-Key": "KEYSECRET"})
    result = await fetch(source)
    assert isinstance(result, SourceError), result
    assert str(result).startswith(f"GET {upstream.url('/start')}: redirected to another origin (")
    assert str(result).endswith(
        "); not followed, so that request headers do not leak. Use the new URL, or pass your own client= that follows such redirects"
    )
    assert "KEYSECRET" not in str(result)
    assert [seen.target for seen in upstream.requests] == ["/start"]


@pytest.mark.parametrize(
    "location",
    ["/capture", "capture", "HTTP://127.0.0.1:{port}/capture", "http://127.0.0.1:{port}/./capture"],
)
async def test_a_redirect_within_the_origin_is_followed_with_its_headers(
    upstream: HostileUpstream, location: str
) -> None:
    """Same scheme, host and port, however spelled: followed, our headers kept."""
    upstream.route("/start", Reply.redirect(location.format(port=upstream.port), status=301))
    upstream.route("/capture", Reply.json(["moved"]))
    source = HTTPSource(upstream.url("/start"), headers={"X-Api-Key": "K"})
    assert await fetch(source) == ["moved"]
    assert [seen.header("x-api-key") for seen in upstream.requests] == [["K"], ["K"]]


async def test_a_redirect_loop_ends(upstream: HostileUpstream) -> None:
    """A redirect to itself, forever: given up after httpx's max_redirects (20), with an error."""
    upstream.route("/loop", Reply.redirect("/loop"))
    result = await fetch(HTTPSource(upstream.url("/loop")))
    assert isinstance(result, SourceError)
    assert str(result) == f"GET {upstream.url('/loop')}: more than 20 redirects; not followed"
    assert len(upstream.requests) == 21


# -- lies, drips and odd headers -----------------------------------------------------------

HOSTILE_REPLIES = {
    "Content-Length shorter than the body": Reply(body=b"[1, 2]", content_length=3, close=True),
    "Content-Length longer than the body": Reply(
        body=b"[1]", content_length=10, framing="length", close=True
    ),
    "Content-Length not a number": Reply(headers=[("Content-Length", "²")], body=b"[1]"),
    "two different Content-Lengths": Reply(
        headers=[("Content-Length", "3"), ("Content-Length", "4")], body=b"[1]"
    ),
    "a huge header": Reply(headers=[("X-Huge", "a" * 200_000)], body=b"[1]"),
    "a NUL in a header value": Reply(headers=[("X-Odd", b"a\x00b")], body=b"[1]"),
    "a header name with a space": Reply(headers=[(b"Bad Name", b"x")], body=b"[1]"),
    "a bad chunk size": Reply(headers=[("Transfer-Encoding", "chunked")], body=b"zz\r\n[1]\r\n0\r\n\r\n"),
    "an endless chunked body": Reply(body=endless(), framing="chunked"),
    "an endless close-delimited body": Reply(body=endless(), framing="close"),
    "a status line that is not HTTP": Reply(status=200, reason="OK\r\nHTTP/1.1 500 Lies"),
    "nothing at all, then close": Reply(raw=b""),
    "garbage instead of HTTP": Reply(raw=b"\x16\x03\x01 not http at all\r\n\r\n"),
    "half a status line": Reply(raw=b"HTTP/1.1 20"),
}


# Bytes past a short Content-Length stay on the connection (h11 buffers them) until the
# server's close is noticed: a fetch that reuses the connection first reads them as its
# response (test_a_short_content_length_confuses_only_its_own_origin). That one fails too,
# and the connection is dropped: the fetch after it is fine.
LEAVES_BYTES_ON_THE_CONNECTION = {"Content-Length shorter than the body"}


@pytest.mark.parametrize(("case", "reply"), HOSTILE_REPLIES.items(), ids=HOSTILE_REPLIES.keys())
async def test_a_hostile_reply_is_a_source_error_and_the_next_fetch_works(
    upstream: HostileUpstream, case: str, reply: Reply
) -> None:
    """Each lie or malformation ends in a SourceError (never another exception, never a hang); the next fetch is fine."""
    upstream.route("/names", reply, Reply.json(["good"]))
    source = HTTPSource(upstream.url("/names"), max_bytes=64 * 1024, timeout=5)
    async with source:
        with anyio.fail_after(10):
            with pytest.raises(SourceError) as raised:
                await source()
            if case in LEAVES_BYTES_ON_THE_CONNECTION:
                with contextlib.suppress(SourceError):  # only a SourceError, if anything
                    assert (await source()).value == ["good"]
                    return
            assert (await source()).value == ["good"]
    message = str(raised.value)
    assert message.isprintable()
    assert "aaaa" * 10 not in message


async def test_a_short_content_length_confuses_only_its_own_origin(upstream: HostileUpstream) -> None:
    """Bytes past a short Content-Length are read by httpx as the next response on that connection.

    Not ours to fix (h11 keeps them; httpcore reuses the connection): an upstream can
    only lie about its own next answer, which it could do anyway. What we promise: the
    lie ends in a value or a SourceError, and another origin on the same shared client
    is untouched.
    """
    smuggled = b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n["smuggled"]'
    upstream.route("/names", Reply(body=b"[1]" + smuggled, content_length=3), Reply.json(["second"]))
    with HostileUpstream() as other:
        other.route("/other", Reply.json(["other"]))
        refreshers = [
            Refresher("names", HTTPSource(upstream.url("/names")), every="1h"),
            Refresher("other", HTTPSource(other.url("/other")), every="1h"),
        ]
        async with running(*refreshers) as handle:
            assert handle.value("names") == [1]
            await anyio.sleep(0.05)  # the extra bytes have arrived
            outcome: Any
            try:
                outcome = await handle.refresh("names")
            except RefreshError as exc:
                outcome = str(exc)
            assert outcome in (["smuggled"], ["second"]) or "SourceError: " in outcome
            assert await handle.refresh("other") == ["other"]


async def test_a_drip_fed_body_is_read_to_the_end(upstream: HostileUpstream) -> None:
    """One byte every 5 ms, status line and headers included: slow, but a complete good body."""
    upstream.route("/slow", Reply.json(["slow", "but", "fine"], drip=0.005, piece=1, drip_head=True))
    assert await fetch(HTTPSource(upstream.url("/slow"))) == ["slow", "but", "fine"]


async def test_a_body_dripping_slower_than_the_timeout_times_out(upstream: HostileUpstream) -> None:
    """A byte less often than the read timeout: a timeout error, not a hang."""
    # The timeout bounds the connect too: 1 s, so that a loaded machine's pause is no
    # ConnectTimeout; the body's second byte comes 5 s after its first.
    upstream.route("/slower", Reply.json(list(range(100)), drip=5.0, piece=1))
    started = time.perf_counter()
    result = await fetch(HTTPSource(upstream.url("/slower"), timeout=1.0))
    assert isinstance(result, SourceError)
    assert str(result) == f"GET {upstream.url('/slower')}: timed out (ReadTimeout)"
    assert time.perf_counter() - started < 5


async def test_a_hostile_reason_phrase_is_shown_escaped(upstream: HostileUpstream) -> None:
    """ANSI escapes and bidi overrides in the reason phrase reach the error as visible escapes."""
    upstream.route("/down", Reply(503, "Down \x1b[31mRED\u202eevil".encode("latin-1", "replace"), body=b""))
    upstream.route("/down2", Reply(503, b"Down \x9b31m", body=b""))
    first = await fetch(HTTPSource(upstream.url("/down")))
    second = await fetch(HTTPSource(upstream.url("/down2")))
    assert str(first) == f"HTTP 503 Down \\x1b[31mRED?evil from GET {upstream.url('/down')}"
    assert str(second) == f"HTTP 503 Down 31m from GET {upstream.url('/down2')}", "httpx drops non-ASCII"
