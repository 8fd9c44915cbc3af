"""How a refresher's failures reach the log: one WARNING every few minutes, whatever the error says."""

from __future__ import annotations

import logging
import math

from asgi_refresh._duration import format_duration

logger = logging.getLogger("asgi_refresh")

REPEAT_WARNING_EVERY = 300.0
"""A refresher that keeps failing logs one WARNING this often; the failures in between go to DEBUG."""


class FailureLog:
    """One refresher's budget of log lines for its failures.

    Rate-limited by refresher, not by message: a message that changes on every
    attempt (a request id, a port) or an upstream that flaps must not write a line
    per failure. The failures in between go to DEBUG and are counted in the next
    WARNING; a recovery is logged at INFO only after a WARNING, so a flapping
    upstream writes two lines per few minutes, not two per flap.
    """

    __slots__ = ("_logged_at", "_quiet", "_warned")

    def __init__(self) -> None:
        self._logged_at = -math.inf  # when a failure was last logged at WARNING
        self._quiet = 0  # failures logged at DEBUG since then
        self._warned = False  # the current run of failures was logged at WARNING

    def failed(
        self,
        name: str,
        *,
        now: float,
        failures: int,
        error: str,
        loaded: bool,
        delay: float,
        duration: float | None,
        exc: BaseException,
        traceback: bool,
    ) -> None:
        """Log failure number ``failures`` in a row of refresher ``name``, retried in ``delay``."""
        loud = now - self._logged_at >= REPEAT_WARNING_EVERY
        quiet = self._quiet
        if loud:
            self._logged_at, self._quiet, self._warned = now, 0, True
        else:
            self._quiet += 1
            if not logger.isEnabledFor(logging.DEBUG):  # nothing formatted for a level that is off
                return
        logger.log(
            logging.WARNING if loud else logging.DEBUG,
            "Refresher %r failed (%d in a row): %s; %s, retrying in %s%s",
            name,
            failures,
            error,
            "keeping the last good value" if loaded else "no value loaded yet",
            format_duration(delay),
            f" ({quiet} more failures since the last warning, logged at DEBUG)" if loud and quiet else "",
            # The traceback once per run of failures is what debugging needs; on
            # every retry it would only bury the log.
            exc_info=exc if loud and traceback and failures == 1 else None,
            extra={
                "refresher": name,
                "outcome": "failed",
                "duration": duration,
                "error": error,
                "consecutive_failures": failures,
            },
        )

    def recovered(self, name: str, *, failures: int, duration: float) -> bool:
        """Log the recovery after ``failures`` failures, if they were warned about; whether it did."""
        if not self._warned:
            return False
        self._warned = False
        logger.info(
            "Refresher %r recovered after %d failed attempts",
            name,
            failures,
            extra={"refresher": name, "outcome": "recovered", "duration": duration},
        )
        return True
