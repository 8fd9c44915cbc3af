"""The status report, built from the refreshers' running state: entries and readiness."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from asgi_refresh import _schedule as schedule
from asgi_refresh._slot import Slot
from asgi_refresh._sources.base import source_state

if TYPE_CHECKING:
    from asgi_refresh._snapshots import SnapshotWriter
    from asgi_refresh._status import Status, Unhealthy


def entry(
    slot: Slot, *, now: float, wall: float, scheduled: bool, snapshots: SnapshotWriter | None
) -> Status:
    """The status entry of ``slot``; ``scheduled``: whether this process fetches it on a schedule."""
    report = _entry(slot, now=now, wall=wall, scheduled=scheduled, snapshots=snapshots)
    state = source_state(slot.source)
    if state is not None:
        report["stream"] = state  # type: ignore[typeddict-item]  # a StreamStatus, from user code
    return report


def _entry(
    slot: Slot, *, now: float, wall: float, scheduled: bool, snapshots: SnapshotWriter | None
) -> Status:
    kept = slot.kept
    current = kept.current
    return {
        "source": slot.source.kind,
        "required": slot.spec.required,
        "stale": is_stale(slot, now),
        "last_success_at": iso(slot.history.last_success_at),
        "last_changed_at": iso(slot.history.last_changed_at),
        "last_outcome": slot.history.last_outcome,
        "expires_at": None if slot.expires_at is None else iso(wall + slot.expires_at - now),
        "last_error": slot.history.last_error,
        "consecutive_failures": slot.history.consecutive_failures,
        "refresh_count": slot.history.refresh_count,
        "next_refresh_at": iso(wall + max(slot.timing.next_due - now, 0)) if scheduled else None,
        "last_duration": _seconds(slot.history.last_duration),
        "age": _seconds(age(slot, now)),
        "lag": _seconds(slot.timing.lag),
        "origin": kept.origin,  # type: ignore[typeddict-item]
        "version": None if current is None else current.id,
        "versions": [
            {"id": each.id, "fetched_at": iso(each.fetched_at), "size": each.size, "digest": each.digest}
            for each in reversed(kept.versions)
        ],
        "pin": None if kept.pinned is None else kept.pinned.id,
        "upstream": None
        if kept.upstream is None
        else {
            "fetched_at": iso(kept.upstream.fetched_at),
            "size": kept.upstream.size,
            "digest": kept.upstream.digest or None,
        },
        "quarantined": None
        if kept.held is None
        else {
            "reason": kept.held.reason,
            "since": iso(kept.held.since),
            "rejected": kept.held.rejected,
            "summary": dict(kept.held.summary),
        },
        "snapshot": None
        if snapshots is None or slot.spec.snapshot is False
        else {
            "written_at": iso(snapshots.written_at.get(slot.spec.name)),
            "error": snapshots.errors.get(slot.spec.name),
            "not_used": kept.snapshot_problem,
        },
    }


def age(slot: Slot, now: float) -> float | None:
    """Seconds since the slot's last successful fetch, or None if it has none."""
    return None if slot.history.last_success_mono is None else now - slot.history.last_success_mono


def is_stale(slot: Slot, now: float) -> bool:
    """Whether the value expired (a `Fresh`), or is older than ``max_stale``.

    With a ``max_stale``, no fetched value at all counts as stale too.
    """
    if slot.overridden or slot.kept.pinned is not None:  # an operator's choice: never stale
        return False
    if schedule.expired(now, slot.expires_at):
        return True
    if slot.spec.max_stale is None:
        return False
    seconds = age(slot, now)
    return seconds is None or seconds > slot.spec.max_stale


def unhealthy(slots: list[Slot], now: float) -> list[Unhealthy]:
    """The required refreshers without a value younger than their ``max_stale``."""
    return [
        {
            "name": slot.spec.name,
            "reason": _reason(slot, now),
            "age": _seconds(age(slot, now)),
            "max_stale": slot.spec.max_stale,
        }
        for slot in slots
        if slot.spec.required and (not slot.loaded or is_stale(slot, now))
    ]


def _reason(slot: Slot, now: float) -> Literal["not loaded", "expired", "stale"]:
    if not slot.loaded:
        return "not loaded"
    if schedule.expired(now, slot.expires_at):
        return "expired"
    return "stale"


def iso(wall: float | None) -> str | None:
    from datetime import UTC, datetime  # on first status(): importing asgi_refresh stays cheap

    try:
        return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat()
    except (ValueError, OverflowError, OSError):  # NaN, or out of range: status() must never raise
        return None


def _seconds(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):  # JSON has no NaN or Infinity
        return None
    return round(value, 6)
