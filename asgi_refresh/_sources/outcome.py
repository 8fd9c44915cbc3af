"""What a fetch can say besides its value: how long it stays good, when to retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from asgi_refresh._duration import Duration, parse_duration

T = TypeVar("T")

MAX_LEEWAY = 30.0
LEEWAY_FRACTION = 0.1


class Fresh(Generic[T]):
    """A fetched value that says how long it stays good, such as an OAuth token.

    Return it from any fetch. The value is published as usual, and the next refresh
    is scheduled ``leeway`` before it expires, never later than the refresher's
    ``every``::

        async def load_token() -> Fresh[str]:
            body = (await client.post(TOKEN_URL, data=CREDENTIALS)).json()
            return Fresh(body["access_token"], expires_in=body["expires_in"])

    Args:
        value: The value to publish.
        expires_in: How long from now the value is good for: seconds, a
            ``timedelta`` or a string like ``"1h"``.
        leeway: How long before expiry to refresh; by default 10% of
            ``expires_in``, at most 30 seconds.

    Raises:
        TypeError: ``expires_in`` or ``leeway`` is not a duration.
        ValueError: ``expires_in`` or ``leeway`` is negative.
    """

    __slots__ = ("expires_in", "leeway", "value")

    def __init__(self, value: T, *, expires_in: Duration, leeway: Duration | None = None) -> None:
        self.value = value
        self.expires_in = _non_negative("expires_in", expires_in)
        self.leeway = (
            min(self.expires_in * LEEWAY_FRACTION, MAX_LEEWAY)
            if leeway is None
            else _non_negative("leeway", leeway)
        )

    def __repr__(self) -> str:
        # Never the value: a Fresh usually holds a secret.
        return f"Fresh(<{type(self.value).__name__}>, expires_in={self.expires_in:g}, leeway={self.leeway:g})"


class SourceError(Exception):
    """A source could not produce a value: the upstream said no, or sent something unusable.

    Raise it from your own fetch too. The message goes to the log and
    ``status()``, so it must not contain secrets.

    Args:
        message: What went wrong and where, without credentials or query strings.
        retry_after: Seconds the upstream asked us to wait before trying again
            (``Retry-After``); the next attempt is then no sooner than that.

    Attributes:
        retry_after: Seconds to wait before the next attempt, or None.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a fetch hands the runtime: the value, and what the upstream said about it.

    Attributes:
        value: The value, or a `Fresh`.
        not_modified: The upstream confirmed the value we already have (a 304, an
            unchanged file): nothing is published, ``on_change`` is not called.
        refresh_in: Seconds until the next refresh, chosen by the upstream (HTTP
            caching headers, already clamped by the source); None to keep ``every``.
    """

    value: Any
    not_modified: bool = False
    refresh_in: float | None = None


def _non_negative(option: str, value: object) -> float:
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"Fresh: {option}: {exc}") from None
    if seconds < 0:
        raise ValueError(f"Fresh: {option} must be >= 0 (got {value!r})")
    return seconds
