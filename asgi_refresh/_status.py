"""The status report's types: one typed, JSON-serialisable entry per refresher, and readiness.

Types only, for annotations and for pydantic (``RefresherStatus`` can be a FastAPI
response model); the report is built by `asgi_refresh._report`. Loaded on first use:
the runtime names these types only for type checkers.
"""

from __future__ import annotations

import sys
from typing import Literal, NotRequired

if sys.version_info >= (3, 12):
    from typing import TypedDict
else:  # pydantic (FastAPI) refuses typing.TypedDict before 3.12: RefresherStatus can be a response model
    from typing_extensions import TypedDict


class CoordinationStatus(TypedDict):
    """How one refresher takes part in a cluster (with a coordinator only)."""

    role: Literal["leader", "follower", "standalone"]
    process: str
    version: int | None
    stored_by: str | None
    error: str | None


class VersionStatus(TypedDict):
    """One kept version of a refresher's value (``keep_versions``): never the value itself."""

    id: str
    fetched_at: str | None
    size: int | None
    digest: str


class UpstreamStatus(TypedDict):
    """While pinned: what the upstream has now (the last value fetched, not published)."""

    fetched_at: str | None
    size: int | None
    digest: str | None


class QuarantineStatus(TypedDict):
    """A fetched value that a guard held back: why, since when, and what differs (never values)."""

    reason: str
    since: str | None
    rejected: bool
    summary: dict[str, object]


class SnapshotStatus(TypedDict):
    """The refresher's snapshot file (with ``snapshot_dir``)."""

    written_at: str | None
    error: str | None
    not_used: str | None


class StreamStatus(TypedDict):
    """A streaming source's connection (`SSESource`): what its ``state()`` reports."""

    connected: bool
    connected_since: str | None
    last_event_at: str | None
    reconnects: int
    events: int
    refused_events: int
    last_error: str | None


class FailingKey(TypedDict):
    """A key of a family whose last fetch failed: the key as shown (escaped, bounded), never its value."""

    key: str
    consecutive_failures: int
    last_error: str | None


class FamilyStatus(TypedDict):
    """A `RefresherFamily`'s summary: counts, and its failing keys (at most 10 listed), never values."""

    keys: int
    max_keys: int
    loading: int
    loads: int
    refreshes: int
    failures: int
    hits: int
    misses: int
    evictions: int
    evicted_idle: int
    evicted_lru: int
    refused: int
    blocked_threads: int
    blocked_refusals: int
    failing_count: int
    failing_keys: list[FailingKey]
    adopted: int
    coordinator_error: str | None


class DerivedInfo(TypedDict):
    """What a derived value's entry adds: what it is computed from, and whether they moved on without it."""

    inputs: list[str]
    inputs_moved_on: bool


class Status(TypedDict):
    """One refresher's entry in ``handle.status()``: what it is doing, never its value.

    Exported as ``asgi_refresh.RefresherStatus``, for annotations.
    """

    source: str
    required: bool
    stale: bool
    last_success_at: str | None
    last_changed_at: str | None
    last_outcome: str | None
    expires_at: str | None
    last_error: str | None
    consecutive_failures: int
    refresh_count: int
    next_refresh_at: str | None
    last_duration: float | None
    age: float | None
    lag: float | None
    origin: Literal["default", "fetched", "coordinator", "snapshot", "pinned", "override", "computed"] | None
    version: str | None
    versions: list[VersionStatus]
    pin: str | None
    upstream: UpstreamStatus | None
    quarantined: QuarantineStatus | None
    snapshot: SnapshotStatus | None
    coordination: NotRequired[CoordinationStatus]
    stream: NotRequired[StreamStatus]
    family: NotRequired[FamilyStatus]
    derived: NotRequired[DerivedInfo]


class Unhealthy(TypedDict):
    """A required refresher that makes the app not ready (the health endpoint's 503)."""

    name: str
    reason: Literal["not loaded", "expired", "stale"]
    age: float | None
    max_stale: float | None
