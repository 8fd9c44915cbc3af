"""Outside text made safe to print: one line, no terminal control, bounded."""

from __future__ import annotations

# Characters that a terminal or a log viewer acts on instead of showing: C0 and C1
# controls (ESC starts ANSI sequences, U+009B is a one-character CSI) and the
# bidirectional overrides and isolates that reorder what is shown (U+202E).
_CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _CONTROL + _BIDI}
_WHITESPACE = {ord(c): " " for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029"}
# Lone surrogates (from undecodable bytes in argv or the environment) cannot be
# encoded for a strict stdout or a UTF-8 log file: shown escaped too.
_SURROGATES = {code: f"\\u{code:04x}" for code in range(0xD800, 0xE000)}
_TABLE = {**_ESCAPES, **_SURROGATES, **_WHITESPACE}


def printable(text: str, limit: int | None = None) -> str:
    r"""``text`` as one line that is safe for a terminal, a log file or an HTML-free UI.

    Whitespace runs (line breaks included) become one space; every other control
    character and every bidirectional override is shown escaped (``\x1b``,
    ``\u202e``), so text that came from outside (an upstream's error body, a
    header, a file) can neither colour nor rewrite what an operator reads.
    Longer than ``limit`` characters, it is cut with an ellipsis.
    """
    line = " ".join(text.translate(_TABLE).split())
    if limit is not None and len(line) > limit:
        return line[: limit - 1] + "…"
    return line
