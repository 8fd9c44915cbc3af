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
        self._successes: dict[str, float | None] = {}  # name -> wall time of the last success
        self._lock = threading.Lock()  # scrapes may run in another thread
        registry.register(_AgeCollector(self))

    def __call__(self, event: RefreshEvent) -> None:
        """Update the metrics for one event (a listener: plain, and quick)."""
        name = event.name
        if event.kind == "started":
            if name not in self._successes:
                # Series exist from the first attempt on, so a refresher that never
                # succeeds shows an infinite age (an alert fires) rather than no series.
                with self._lock:
                    self._successes.setdefault(name, None)
                self._failures.labels(name)
            return
        if event.kind not in _FINISHED:
            return
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

    def _ages(self) -> list[tuple[str, float]]:
        now = self._clock.wall()
        with self._lock:
            successes = list(self._successes.items())
        return [(name, math.inf if at is None else max(now - at, 0.0)) for name, at in successes]


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
