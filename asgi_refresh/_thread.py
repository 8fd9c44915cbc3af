"""Run a blocking call in a daemon thread that the event loop can stop waiting for."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel


async def run_in_daemon_thread(func: Callable[[], Any], *, name: str) -> Any:
    """Call ``func`` in a new daemon thread and return (or raise) what it does.

    If the caller is cancelled it stops waiting at once; the thread runs on and its
    outcome is dropped. The thread is a daemon, so a call that never returns cannot
    keep the process alive after the server has shut down (anyio's worker threads
    would). One thread per call is fine at refresh rates.
    """
    token = anyio.lowlevel.current_token()
    finished = anyio.Event()
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome.append((True, context.run(func)))
        except BaseException as exc:  # handed to the event loop, raised there
            outcome.append((False, exc))
        finally:
            # If the event loop is gone, nobody is waiting any more.
            with contextlib.suppress(Exception):
                anyio.from_thread.run_sync(finished.set, token=token)

    threading.Thread(target=work, name=name, daemon=True).start()
    await finished.wait()
    succeeded, result = outcome[0]
    if succeeded:
        return result
    raise result
