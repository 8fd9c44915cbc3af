"""The control handle at ``scope["state"]["asgi_refresh"]``, and the error its refresh raises."""

from __future__ import annotations

from typing import Any, Protocol

from asgi_refresh._status import Status, Unhealthy


class RefreshError(RuntimeError):
    """A refresher could not do what was asked of it; the cause is the ``__cause__``.

    Raised by ``handle.refresh(name)`` when the fetch fails (the previous value
    stays published), and by the middleware after it has reported
    ``lifespan.startup.failed`` because a required refresher could not load (or
    ``lifespan.shutdown.failed`` because one would not stop), so that test clients
    such as ``TestClient`` and ``asgi_lifespan.LifespanManager`` raise it. A
    ``RuntimeError``, as that failure always was.

    Attributes:
        name: The refresher that failed (the first one, when several did).
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class Controls(Protocol):
    """What the handle controls: one lifespan's running refreshers (the runtime)."""

    @property
    def names(self) -> list[str]:
        """The refresher names, in the order they were given."""

    async def refresh(self, name: str) -> Any:
        """Fetch ``name`` now; its value, or `RefreshError`."""

    def status(self) -> dict[str, Status]:
        """The status report."""

    def value(self, name: str) -> Any:
        """The value published for ``name`` now."""

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once it has one."""

    def override(self, name: str, value: Any) -> None:
        """Publish ``value`` for ``name`` and stop refreshing it (tests)."""

    @property
    def running(self) -> bool:
        """Whether the refreshers run (between startup and shutdown)."""

    def refresh_soon(self, name: str) -> None:
        """Start a fetch of ``name`` without waiting for it (`LookupError` for an unknown name)."""

    def unhealthy(self) -> list[Unhealthy]:
        """The required refreshers without a fresh enough value: names, reasons and ages."""


class RefreshHandle:
    """Control of the running refreshers, at ``scope["state"]["asgi_refresh"]``.

    Handlers reach it as ``request.state.asgi_refresh``; tests get it from
    ``RefreshMiddleware.handle`` or the lifespan state.
    """

    def __init__(self, runtime: Controls) -> None:
        self._runtime = runtime

    @property
    def names(self) -> list[str]:
        """The refresher names, in the order they were given."""
        return self._runtime.names

    @property
    def running(self) -> bool:
        """Whether the refreshers are running: from startup until they stop at shutdown."""
        return self._runtime.running

    async def refresh(self, name: str) -> Any:
        """Fetch ``name`` now, publish the value and return it.

        Concurrent calls for one name share one fetch. A successful refresh also
        restarts the refresher's schedule from now.

        Raises:
            LookupError: there is no refresher called ``name``.
            RefreshError: the fetch failed; the previous value stays published.
            RuntimeError: the refreshers are not running.
        """
        return await self._runtime.refresh(name)

    def status(self) -> dict[str, Status]:
        """Return a JSON-serialisable report keyed by refresher name.

        Each entry has ``source`` (``"http"``, ``"file"`` or ``"python"`` for
        any other fetch), ``required``, ``stale`` (true when the value is older
        than the refresher's ``max_stale``, or it has no fetched value yet and
        a ``max_stale`` is set, or it is a `Fresh` value past its expiry),
        ``last_success_at``, ``last_changed_at`` and
        ``next_refresh_at`` (ISO 8601 UTC or None), ``last_outcome`` (``"changed"``,
        ``"unchanged"``, ``"not_modified"``, ``"failed"`` or None before the first
        fetch), ``last_error`` (None or a one-line description, never the value),
        ``consecutive_failures``, ``refresh_count`` (successful fetches, including
        unchanged and not-modified ones), ``last_duration`` and ``age`` (seconds
        since the last successful fetch, or None), and ``lag`` (seconds by which
        the last scheduled fetch started late: near 0 unless the process cannot
        keep up).
        """
        return self._runtime.status()

    def value(self, name: str) -> Any:
        """The value published for ``name`` right now.

        For code outside a request that needs a refreshed value, such as the
        fetch of another refresher (an API call that needs the current token).

        Raises:
            LookupError: there is no refresher called ``name``, or it is required
                and has not loaded yet.
        """
        return self._runtime.value(name)

    async def wait_for(self, name: str) -> Any:
        """The value published for ``name``, once it has one.

        Waits for the first load of a required refresher, so the fetch of another
        refresher can depend on it (an API call that needs the current token)
        without failing while both load at startup.

        Raises:
            LookupError: there is no refresher called ``name``.
        """
        return await self._runtime.wait_for(name)
