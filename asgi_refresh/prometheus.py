"""Prometheus metrics for refreshers, fed by refresh events.

Needs the ``prometheus`` extra: ``pip install 'asgi-refresh[prometheus]'``.

```python
from asgi_refresh.prometheus import PrometheusMetrics

app = RefreshMiddleware(app, refreshers=[...], listeners=[PrometheusMetrics()])
```

Expose them as usual for ``prometheus_client``: ``make_asgi_app()`` mounted at
``/metrics``, or ``start_http_server(port)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

from ._clock import Clock, SystemClock
from ._events import RefreshEvent

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "asgi_refresh.prometheus needs prometheus_client: pip install 'asgi-refresh[prometheus]'"
    ) from exc

__all__ = ["PrometheusMetrics"]

_FINISHED = ("succeeded", "not_modified", "failed")
_ACTIONS = {"accepted": "accept", "rejected": "reject", "pinned": "pin", "unpinned": "unpin"}


class PrometheusMetrics:
    """A listener that keeps Prometheus metrics of every refresher.

    Pass it to ``RefreshMiddleware(listeners=[...])``. It registers, in
    ``registry``:

    - ``asgi_refresh_refreshes_total{name, outcome}``: fetches by outcome,
      ``succeeded``, ``not_modified`` or ``failed``.
    - ``asgi_refresh_refresh_duration_seconds{name}``: a histogram of fetch durations.
    - ``asgi_refresh_last_success_timestamp_seconds{name}``: when the last fetch
      succeeded (a 304 counts), in seconds since the epoch.
    - ``asgi_refresh_consecutive_failures{name}``: failed fetches since the last success.
    - ``asgi_refresh_value_age_seconds{name}``: seconds since the last successful
      fetch, computed when scraped; ``+Inf`` until the first success. Alert on
      it: it grows while a refresher fails.

    And for last known good (guards, versions, snapshots):

    - ``asgi_refresh_quarantines_total{name}``: fetched values a guard held back.
    - ``asgi_refresh_operator_actions_total{name, action}``: ``accept``,
      ``reject``, ``pin`` (a rollback too) and ``unpin``.
    - ``asgi_refresh_snapshot_restores_total{name}``: starts from a snapshot
      because the first load failed.
    - ``asgi_refresh_value_held_back{name}``: 1 while a guard holds a fetched
      value back (accepted, dropped, or the upstream moved on: 0), else 0.
    - ``asgi_refresh_value_pinned{name}``: 1 while pinned to a kept version.
    - ``asgi_refresh_value_from_snapshot{name}``: 1 while the published value is
      the snapshot the refresher started from.

    And for webhooks (``admin_webhooks``):

    - ``asgi_refresh_webhook_deliveries_total{hook, outcome}``: deliveries to
      each configured hook by outcome: ``accepted``, ``duplicate`` (a replayed
      ``webhook-id``), ``unauthorized``, ``too_large`` or ``timeout``. A rise in
      ``unauthorized`` is a sender with the wrong secret, or someone probing.

    The three gauges say what this process did: with a coordinator, the lease
    holder's series show the cluster's quarantine and pin.

    Make one per process and share it between middlewares: registering the same
    metric names twice in one registry is an error in ``prometheus_client``.

    Args:
        registry: Where to register; the process-wide default registry unless given.
        clock: Where "now" comes from for the value age; pass the middleware's
            clock (a `asgi_refresh.testing.FakeClock` in tests).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, clock: Clock | None = None) -> None:
        if registry is None:
            registry = prometheus_client.REGISTRY
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._refreshes = Counter(
            "asgi_refresh_refreshes",
            "Fetches by refresher and outcome (succeeded, not_modified, failed).",
            ["name", "outcome"],
            registry=registry,
        )
        self._duration = Histogram(
            "asgi_refresh_refresh_duration_seconds",
            "How long each fetch took, by refresher.",
            ["name"],
            registry=registry,
        )
        self._last_success = Gauge(
            "asgi_refresh_last_success_timestamp_seconds",
            "When the refresher's last fetch succeeded, in seconds since the epoch.",
            ["name"],
            registry=registry,
        )
        self._failures = Gauge(
            "asgi_refresh_consecutive_failures",
            "Failed fetches in a row since the refresher's last success.",
            ["name"],
            registry=registry,
        )
        self._quarantines = Counter(
            "asgi_refresh_quarantines",
            "Fetched values a guard held back, by refresher.",
            ["name"],
            registry=registry,
        )
        self._actions = Counter(
            "asgi_refresh_operator_actions",
            "Operators' actions on a refresher: accept, reject, pin (a rollback too), unpin.",
            ["name", "action"],
            registry=registry,
        )
        self._restores = Counter(
            "asgi_refresh_snapshot_restores",
            "Starts from a snapshot because the refresher's first load failed.",
            ["name"],
            registry=registry,
        )
        self._held_back = Gauge(
            "asgi_refresh_value_held_back",
            "1 while a guard holds a fetched value of the refresher back, else 0.",
            ["name"],
            registry=registry,
        )
        self._pinned = Gauge(
            "asgi_refresh_value_pinned",
            "1 while the refresher is pinned to a kept version, else 0.",
            ["name"],
            registry=registry,
        )
        self._from_snapshot = Gauge(
            "asgi_refresh_value_from_snapshot",
            "1 while the refresher's published value is the snapshot it started from, else 0.",
            ["name"],
            registry=registry,
        )
        self._webhooks = Counter(
            "asgi_refresh_webhook_deliveries",
            "Webhook deliveries by hook and outcome (accepted, duplicate, unauthorized, too_large, timeout).",
            ["hook", "outcome"],
            registry=registry,
        )
        self._successes: dict[str, float | None] = {}  # name -> wall time of the last success
        self._kept: dict[str, _Kept] = {}  # name -> what the last-known-good gauges say
        self._lock = threading.Lock()  # scrapes may run in another thread
        registry.register(_AgeCollector(self))

    def __call__(self, event: RefreshEvent) -> None:
        """Update the metrics for one event (a listener: plain, and quick)."""
        name, kind = event.name, event.kind
        if kind == "started":
            if name not in self._successes:
                self._first_seen(name)
            return
        if kind == "webhook":  # its name is the hook's, and it is no refresher's fetch
            self._webhooks.labels(name, event.error or "accepted").inc()
        elif kind in _FINISHED:
            self._finished(event)
        elif kind != "cancelled":  # a fetch shutdown stopped is no outcome to count
            self._last_known_good(name, kind)

    def _first_seen(self, name: str) -> None:
        # Series exist from the first attempt on, so a refresher that never succeeds
        # shows an infinite age (an alert fires) rather than no series, and counters
        # start at 0 (a rate() sees their first increment).
        with self._lock:
            self._successes.setdefault(name, None)
            self._kept.setdefault(name, _Kept())
        self._failures.labels(name)
        self._quarantines.labels(name)
        self._restores.labels(name)
        for action in _ACTIONS.values():
            self._actions.labels(name, action)
        for gauge in (self._held_back, self._pinned, self._from_snapshot):
            gauge.labels(name).set(0)

    def _finished(self, event: RefreshEvent) -> None:
        name = event.name
        self._refreshes.labels(name, event.kind).inc()
        if event.duration is not None:
            self._duration.labels(name).observe(event.duration)
        if event.kind == "failed":
            self._failures.labels(name).inc()
            return
        self._failures.labels(name).set(0)
        self._last_success.labels(name).set(event.at)
        with self._lock:
            self._successes[name] = event.at
            kept = self._kept.setdefault(name, _Kept())
            # A good fetch that was not held back (quarantined comes before it, or the
            # value it brought is held already) nor withheld by a pin is published: the
            # snapshot is no longer what is served.
            if kept.held_back or kept.pinned:
                return
            kept.from_snapshot = False
        self._from_snapshot.labels(name).set(0)

    def _last_known_good(self, name: str, kind: str) -> None:
        if kind == "quarantined":
            self._quarantines.labels(name).inc()
        elif kind == "restored":
            self._restores.labels(name).inc()
        elif kind in _ACTIONS:
            self._actions.labels(name, _ACTIONS[kind]).inc()
        with self._lock:
            kept = self._kept.setdefault(name, _Kept())
            if kind == "quarantined":
                kept.held_back = True
            elif kind in ("accepted", "quarantine_ended"):
                kept.held_back = False
            elif kind in ("pinned", "unpinned"):
                kept.pinned = kind == "pinned"
            if kind == "restored":
                kept.from_snapshot = True
            elif kind in ("changed", "accepted", "pinned"):  # another value is published
                kept.from_snapshot = False
            held_back, pinned, from_snapshot = kept.held_back, kept.pinned, kept.from_snapshot
        self._held_back.labels(name).set(int(held_back))
        self._pinned.labels(name).set(int(pinned))
        self._from_snapshot.labels(name).set(int(from_snapshot))

    def _ages(self) -> list[tuple[str, float]]:
        now = self._clock.wall()
        with self._lock:
            successes = list(self._successes.items())
        return [(name, math.inf if at is None else max(now - at, 0.0)) for name, at in successes]


class _Kept:
    """What the last-known-good gauges say of one refresher, as its events told."""

    __slots__ = ("from_snapshot", "held_back", "pinned")

    def __init__(self) -> None:
        self.held_back = False
        self.pinned = False
        self.from_snapshot = False


class _AgeCollector(Collector):
    """Computes the value ages at scrape time, so they grow between events."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "asgi_refresh_value_age_seconds",
            "Seconds since the refresher's last successful fetch.",
            labels=["name"],
        )
        for name, age in self._metrics._ages():
            family.add_metric([name], age)
        yield family
