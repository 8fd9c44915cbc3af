"""Run a blocking call in a daemon thread that the event loop can stop waiting for."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel


class ThreadCall:
    """One call of a blocking function in a daemon thread of its own.

    The caller may stop waiting (``result`` cancelled) at any time: the thread runs
    on and its outcome is dropped. Being a daemon, a call that never returns cannot
    keep the process alive after the server has shut down, as one of anyio's
    worker threads would. A thread per call is cheap at refresh rates.
    """

    def __init__(
        self, func: Callable[[], Any], *, name: str, on_return: Callable[[], None] | None = None
    ) -> None:
        self._func = func
        self._on_return = on_return  # called on the event loop once the function returned
        self._context = contextvars.copy_context()
        self._token = anyio.lowlevel.current_token()
        self._finished = anyio.Event()
        self._outcome: tuple[bool, Any] = (False, None)
        self._returned = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread; raises if the system cannot start one."""
        self._thread.start()

    def is_running(self) -> bool:
        """Whether the function has not returned yet (any thread may ask)."""
        return self._thread.is_alive() and not self._returned

    async def result(self) -> Any:
        """Wait for the call and return its value or raise its exception."""
        await self._finished.wait()
        succeeded, value = self._outcome
        if succeeded:
            return value
        # As raised, SystemExit and KeyboardInterrupt included: the caller contains
        # whatever user code raises (asgi_refresh._contain), in a thread or not.
        raise value

    def _work(self) -> None:
        try:
            self._outcome = (True, self._context.run(self._func))
        except BaseException as exc:  # handed to the event loop, raised there
            self._outcome = (False, exc)
        finally:
            self._returned = True
            # If the event loop is gone, nobody is waiting any more.
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(self._returned_on_loop, token=self._token)

    def _returned_on_loop(self) -> None:
        self._finished.set()
        if self._on_return is not None:
            self._on_return()
