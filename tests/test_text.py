from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asgi_refresh._contain import describe_error
from asgi_refresh._text import printable


def test_terminal_controls_are_shown_escaped() -> None:
    """ANSI escapes, a one-character CSI and a bidi override are shown, not obeyed."""
    assert printable("a\x1b[31mred\u009b1m\u202eevil") == "a\\x1b[31mred\\x9b1m\\u202eevil"


def test_lone_surrogates_are_shown_escaped() -> None:
    """Undecodable bytes from argv or the environment cannot break a strict stdout."""
    assert printable("a\udcff b") == "a\\udcff b"
    printable("x\ud800").encode("utf-8")


def test_whitespace_runs_become_one_space_and_long_text_is_cut() -> None:
    """Line breaks cannot forge a second log line; a limit bounds the length."""
    assert printable(" one\r\n\ttwo\u2028three ") == "one two three"
    assert printable("x" * 10, 5) == "xxxx…"


@given(st.text())
def test_printable_output_has_no_control_or_bidi_characters(text: str) -> None:
    """Whatever comes in, what goes out is one line a terminal shows as is."""
    line = printable(text, 200)
    assert len(line) <= 200
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in line)
    assert not any(ch in line for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    line.encode("utf-8")  # no lone surrogate left


def test_describe_error_survives_an_exception_whose_str_raises() -> None:
    """User code's exception may break its own __str__; describing it still works."""

    class Nasty(Exception):
        def __str__(self) -> str:
            raise SystemExit(3)

    assert describe_error(Nasty()) == "Nasty: (its message could not be read: its __str__ raised)"


def test_describe_error_escapes_upstream_text() -> None:
    """An upstream's text quoted in an error reaches status and logs escaped."""
    assert describe_error(ValueError("bad \x1b[2J body")) == "ValueError: bad \\x1b[2J body"
