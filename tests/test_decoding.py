"""BodyDecoder: every supported coding and stack, in any split, within bounded steps and caps."""

from __future__ import annotations

import gzip
import itertools
import sys
import zlib
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_refresh import SourceError
from asgi_refresh._sources.decoding import SLICE, BodyDecoder, accept_encoding, available

from .faults.upstream import bomb, encode

WHERE = "GET https://api.example.com/names"
CODINGS = ["gzip", "x-gzip", "deflate", "deflate-raw", "br", "zstd"]
STACKS = [
    *[(coding,) for coding in CODINGS],
    ("gzip", "gzip"),
    ("deflate", "br"),
    ("br", "zstd", "gzip"),
    ("zstd", "deflate-raw", "x-gzip", "br"),
]


def header(codings: Iterable[str]) -> list[str]:
    return [", ".join(coding.replace("deflate-raw", "deflate") for coding in codings)]


def decode(content_encoding: list[str], pieces: Iterable[bytes], max_bytes: int = 10 * 1024 * 1024) -> bytes:
    decoder = BodyDecoder(content_encoding, where=WHERE, max_bytes=max_bytes)
    out = b"".join(piece for data in pieces for piece in decoder.feed(data))
    decoder.finish()
    return out


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(points):
        yield data[start:end]


@pytest.fixture(autouse=True)
def every_coding_is_here() -> None:
    """The test extra installs brotli and backports.zstd: every coding is tested, none skipped."""
    assert set(available()) == {"gzip", "x-gzip", "deflate", "br", "zstd"}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(STACKS),
    st.binary(max_size=5000) | st.binary(min_size=1, max_size=3).map(lambda seed: seed * 70_000),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_any_stack_in_any_split_decodes_to_the_original(
    codings: tuple[str, ...], data: bytes, cuts: list[int]
) -> None:
    """Whatever the stack and wherever the network splits it, the decoded bytes are the original."""
    encoded = encode(data, codings)
    assert decode(header(codings), split(encoded, cuts)) == data


@pytest.mark.parametrize("codings", STACKS, ids=", ".join)
def test_each_step_is_bounded(codings: tuple[str, ...]) -> None:
    """No piece is bigger than a slice (brotli's buffer may pass its limit by half), fed in one go."""
    decoder = BodyDecoder(header(codings), where=WHERE, max_bytes=64 * 1024 * 1024)
    pieces = list(decoder.feed(bomb(32 * 1024 * 1024, list(codings))))
    decoder.finish()
    assert sum(map(len, pieces)) == 32 * 1024 * 1024
    assert max(map(len, pieces)) <= SLICE * (2 if codings[0] == "br" else 1)


@pytest.mark.parametrize("codings", STACKS, ids=", ".join)
def test_one_byte_at_a_time(codings: tuple[str, ...]) -> None:
    """A byte per feed (a drip-fed body): state carries over every split, raw deflate's sniffing too."""
    data = b"hello " * 1000
    assert decode(header(codings), (bytes([b]) for b in encode(data, codings))) == data


def test_gzip_members_and_zero_padding() -> None:
    """Several gzip members are one body (RFC 1952); zeros after the last are padding."""
    body = gzip.compress(b"first,") + gzip.compress(b"second") + b"\x00" * 10
    assert decode(["gzip"], [body]) == b"first,second"


def test_zstd_frames_follow_one_another() -> None:
    """Several zstd frames are one body, as for gzip members."""
    assert decode(["zstd"], [encode(b"first,", ["zstd"]) + encode(b"second", ["zstd"])]) == b"first,second"


def test_raw_deflate_that_looks_like_a_zlib_header_still_decodes() -> None:
    """A raw stored block whose first two bytes pass zlib's header check: the first error switches to raw."""
    payload = b"a raw block, zlib-like!!12345"
    raw = b"\x08\x1d\x00\xe2\xff" + payload + b"\x01\x00\x00\xff\xff"  # 0x081d is a valid zlib header
    assert decode(["deflate"], [raw]) == payload


def test_without_a_zstd_library_zstd_is_refused_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backports.zstd (nor Python 3.14): zstd is not offered, and a zstd body says what to install."""
    monkeypatch.setitem(sys.modules, "backports.zstd", None)
    monkeypatch.setitem(sys.modules, "compression.zstd", None)
    available.cache_clear()
    try:
        assert accept_encoding() == "gzip, deflate, br"
        with pytest.raises(SourceError) as raised:
            BodyDecoder(["zstd"], where=WHERE, max_bytes=100)
    finally:
        available.cache_clear()
    assert str(raised.value) == (
        f"{WHERE}: the response is zstd-encoded, which cannot be decoded within max_bytes here: install "
        "backports.zstd on Python < 3.14 (pip install 'asgi-refresh[zstd]'), or have the server send one of: "
        "gzip, x-gzip, deflate, br"
    )


def test_bytes_after_a_deflate_stream_are_ignored() -> None:
    """After a deflate stream, trailing bytes mean nothing (as httpx treats them)."""
    assert decode(["deflate"], [zlib.compress(b"data") + b"junk"]) == b"data"


@pytest.mark.parametrize(
    ("codings", "body", "message"),
    [
        (
            ["gzip"],
            gzip.compress(b"data", mtime=0) + b"junk",
            "data after the end of the gzip stream is not another gzip member",
        ),
        (["gzip"], b"not gzip at all", "incorrect header check"),
        (["deflate"], b"\xff\xff\xff", "invalid"),
        (["br"], b"\xff\xff\xff\xff", "br"),
        (["zstd"], b"\xff" * 16, "Unknown frame descriptor"),
    ],
)
def test_a_body_that_does_not_decompress_says_which_coding(
    codings: list[str], body: bytes, message: str
) -> None:
    """Corrupt data is a SourceError naming where and the coding, with the library's reason."""
    with pytest.raises(SourceError, match=rf"^{WHERE}: the body does not decompress as \w+ \(.*{message}"):
        decode(codings, [body])


@pytest.mark.parametrize("codings", STACKS, ids=", ".join)
def test_a_stream_cut_short_is_an_error(codings: tuple[str, ...]) -> None:
    """Every coding tells a truncated stream from a finished one."""
    encoded = encode(b"x" * 100_000 + bytes(range(256)) * 100, codings)
    with pytest.raises(SourceError, match=r"-encoded body ends before its compressed stream does"):
        decode(header(codings), [encoded[: len(encoded) - 3]])


def test_an_empty_body_is_empty_whatever_its_codings() -> None:
    """A HEAD or 204 labelled gzip has no body: nothing to decode, no truncation."""
    assert decode(["gzip, br, zstd"], []) == b""
    assert decode(["gzip"], [b""]) == b""


def test_the_cap_counts_decoded_bytes() -> None:
    """Exactly max_bytes passes; one byte more fails, after at most one more slice of work."""
    body = gzip.compress(b"x" * 1000)
    assert len(decode(["gzip"], [body], max_bytes=1000)) == 1000
    with pytest.raises(SourceError, match=r"exceeds max_bytes \(999 bytes; over 999 bytes read\)"):
        decode(["gzip"], [body], max_bytes=999)


def test_an_encoded_stage_that_decodes_to_nothing_is_capped_too() -> None:
    """Gigabytes of empty deflate blocks inside gzip decode to nothing, but are refused by size, not chewed on."""
    empty_blocks = (
        b"\x00\x00\x00\xff\xff" * 2_000_000 + b"\x01\x00\x00\xff\xff"
    )  # 10 MB that inflate to 0 bytes
    body = encode(empty_blocks, ["gzip"])
    with pytest.raises(
        SourceError, match=r"exceeds max_bytes \(1000000 bytes; over 1128036 bytes of gzip-decoded data\)"
    ):
        decode(["deflate, gzip"], [body], max_bytes=1_000_000)
    assert decode(["deflate, gzip"], [body]) == b"", "under a big enough cap it is simply empty"


def test_the_wire_is_capped_for_an_encoded_body() -> None:
    """More raw bytes than max_bytes plus a little is refused even before they decode to anything."""
    decoder = BodyDecoder(["gzip"], where=WHERE, max_bytes=100)
    assert decoder.wire_limit == 100 + 100 // 16 + SLICE
    with pytest.raises(SourceError, match=r"exceeds max_bytes \(100 bytes; over 65642 bytes on the wire\)"):
        list(decoder.feed(b"\x1f\x8b" + b"\x00" * 70_000))
    assert BodyDecoder([], where=WHERE, max_bytes=100).wire_limit == 100


def test_a_decoder_that_makes_no_progress_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that neither wants input nor gives output would spin: it is stopped with an error."""

    class Stuck:
        started = done = False
        wants_input = False

        def give(self, data: bytes) -> None:
            self.started = True

        def take(self, limit: int) -> bytes:
            return b""

    monkeypatch.setattr("asgi_refresh._sources.decoding.available", lambda: {"stuck": Stuck})
    decoder = BodyDecoder(["stuck"], where=WHERE, max_bytes=100)
    with pytest.raises(SourceError, match=f"^{WHERE}: the stuck decoder stopped making progress$"):
        list(decoder.feed(b"x"))


def test_accept_encoding_lists_what_is_available() -> None:
    """What is offered is what is decoded under the cap (x-gzip is gzip)."""
    assert accept_encoding() == "gzip, deflate, br, zstd"


def test_unknown_tokens_are_shown_escaped_and_bounded() -> None:
    """A hostile token is printed without its controls and cut short."""
    with pytest.raises(SourceError) as raised:
        BodyDecoder(["\x1b[2J" + "a" * 500], where=WHERE, max_bytes=100)
    message = str(raised.value)
    assert "\x1b" not in message
    assert "\\x1b[2j" in message, "shown lower-cased, as it is compared"
    assert len(message) < 300
