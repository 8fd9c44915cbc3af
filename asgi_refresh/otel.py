"""OpenTelemetry traces and metrics for refreshers, fed by refresh events.

Needs the ``otel`` extra: ``pip install 'asgi-refresh[otel]'`` (the API only; the
SDK and an exporter are the app's choice, as usual for OpenTelemetry).

```python
from asgi_refresh.otel import OpenTelemetryListener

app = RefreshMiddleware(app, refreshers=[...], listeners=[OpenTelemetryListener()])
```

It plugs in like `asgi_refresh.prometheus.PrometheusMetrics`, and the two can run
side by side. See the observability guide (docs/guides/observability.md).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping

from .__about__ import __version__
from ._clock import Clock, SystemClock
from ._events import RefreshEvent

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("asgi_refresh.otel needs opentelemetry-api: pip install 'asgi-refresh[otel]'") from exc

__all__ = ["OpenTelemetryListener"]

SPAN_NAME = "asgi_refresh.fetch"
COMPUTE_SPAN_NAME = "asgi_refresh.compute"

_FINISHED = ("succeeded", "not_modified", "failed")
_ACTIONS = {"accepted": "accept", "rejected": "reject", "pinned": "pin", "unpinned": "unpin"}
# Prometheus's default buckets: fetches take milliseconds to seconds (OpenTelemetry's
# default boundaries are for milliseconds, and would put every fetch in the first bucket).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# A URL's credentials and query, should an error text quote one (a fetch of your own
# raising an HTTP client's error). The package's own sources never put them in.
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#'\")]*")


class OpenTelemetryListener:
    """A listener that traces every fetch and keeps OpenTelemetry metrics of every refresher.

    Pass it to ``RefreshMiddleware(listeners=[...])`` (or name an instance in a
    configuration file's ``listeners``).

    **Traces.** One span per fetch, ``asgi_refresh.fetch`` (a family key's fetch
    too), and one per compute of a derived value, ``asgi_refresh.compute``, from
    the ``started`` event to the one that ends it. They are root spans (the fetch
    is the scheduler's work, not a request's), with these attributes:

    - ``asgi_refresh.name``: the refresher's (or family's, or derived value's) name.
    - ``asgi_refresh.source``: the source's kind (``http``, ``file``, ``python``,
      ``derived``...).
    - ``asgi_refresh.key``: a family key's fetch: the key as logs show it.
    - ``asgi_refresh.outcome``: ``succeeded``, ``not_modified`` or ``failed``;
      ``cancelled`` for a fetch that shutdown stopped (its span ends then).
    - ``asgi_refresh.duration``: seconds, on the middleware's clock.
    - ``http.response.status_code``: the last HTTP response's status, when there was one.
    - ``asgi_refresh.size``: bytes of the body fetched, when the source tells.
    - ``error.type``: a failed fetch's error type (``TimeoutError`` for a timeout).

    A failed fetch's span has status ERROR, described by the one-line error that
    the logs and ``status()`` show, which never holds the value nor the secrets
    of a source's URL; URLs quoted in it (by an error of your own fetch) lose
    their credentials and query too. The exception itself is not recorded: its
    arguments may hold what the line leaves out. A guard that holds the fetched
    value back adds a ``quarantined`` span event with its reason.

    A fetch that a caller asked for (``handle.refresh()``, ``refresh_soon()``,
    the admin endpoint, a webhook, a request for a cold family key) is **linked**
    to the span that was current where it was asked: the request's, when an
    OpenTelemetry ASGI middleware wraps the app (and `RefreshMiddleware`). A
    caller that joins a fetch already under way gets no link.

    **Versions read** (``record_versions=True``; off by default): each request's
    current span gets one attribute per published value,
    ``asgi_refresh.version.<name>``: the version's id (``3-9f2c41ab``) for a
    refresher with ``keep_versions``, else when its value last changed (ISO 8601).
    It is what the request's ``request.state`` holds, since every value it reads
    comes from that one snapshot; not family keys. This costs a dict per request,
    built only when the current span is recording; the span must be open when
    `RefreshMiddleware` sees the request, so put the OpenTelemetry ASGI middleware
    outside it.

    **Metrics**, mirroring `asgi_refresh.prometheus.PrometheusMetrics` (same
    meaning; OpenTelemetry names, with the unit apart and no ``_total``):

    - ``asgi_refresh.refreshes`` (counter; ``asgi_refresh.name``, ``asgi_refresh.outcome``)
    - ``asgi_refresh.refresh.duration`` (histogram, s; ``asgi_refresh.name``)
    - ``asgi_refresh.last_success.timestamp`` (gauge, s since the epoch)
    - ``asgi_refresh.consecutive_failures`` (gauge)
    - ``asgi_refresh.value.age`` (gauge, s): no series until the first success,
      where Prometheus has ``+Inf`` (OpenTelemetry drops non-finite values);
      ``asgi_refresh.consecutive_failures`` tells of a refresher that never loaded
    - ``asgi_refresh.quarantines``, ``asgi_refresh.snapshot_restores`` (counters)
    - ``asgi_refresh.operator_actions`` (counter; ``asgi_refresh.action``:
      ``accept``, ``reject``, ``pin``, ``unpin``)
    - ``asgi_refresh.value.held_back``, ``asgi_refresh.value.pinned``,
      ``asgi_refresh.value.from_snapshot`` (gauges, 1 or 0)
    - ``asgi_refresh.webhook.deliveries`` (counter; ``asgi_refresh.hook``,
      ``asgi_refresh.outcome``: ``accepted``, ``duplicate``, ``unauthorized``,
      ``too_large``, ``timeout``)

    The gauges are observable: computed when the metrics are collected.

    Args:
        tracer_provider: Where spans go; the global one (``trace.set_tracer_provider``)
            unless given.
        meter_provider: Where metrics go; the global one unless given.
        clock: Where "now" comes from for the value age; pass the middleware's
            clock (a `asgi_refresh.testing.FakeClock` in tests).
        record_versions: Put the versions of the published values on each
            request's span (see above).
    """

    wants_origin = True
    """Asks the middleware for the caller's context of each fetch it asks for (the link)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        clock: Clock | None = None,
        record_versions: bool = False,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._tracer = trace.get_tracer("asgi_refresh", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("asgi_refresh", __version__, meter_provider=meter_provider)
        self._spans: dict[tuple[str, str | None], Span] = {}  # fetches under way
        self.on_request: Callable[[Callable[[], Mapping[str, str]]], None] | None = (
            self._record_versions if record_versions else None
        )
        """Called by the middleware at each request when ``record_versions`` is on; else None."""
        self._refreshes = meter.create_counter(
            "asgi_refresh.refreshes",
            "{fetch}",
            "Fetches by refresher and outcome (succeeded, not_modified, failed).",
        )
        self._duration = meter.create_histogram(
            "asgi_refresh.refresh.duration",
            "s",
            "How long each fetch took, by refresher.",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self._quarantines = meter.create_counter(
            "asgi_refresh.quarantines", "{value}", "Fetched values a guard held back, by refresher."
        )
        self._actions = meter.create_counter(
            "asgi_refresh.operator_actions",
            "{action}",
            "Operators' actions on a refresher: accept, reject, pin (a rollback too), unpin.",
        )
        self._restores = meter.create_counter(
            "asgi_refresh.snapshot_restores",
            "{start}",
            "Starts from a snapshot because the refresher's first load failed.",
        )
        self._webhooks = meter.create_counter(
            "asgi_refresh.webhook.deliveries",
            "{delivery}",
            "Webhook deliveries by hook and outcome (accepted, duplicate, unauthorized, too_large, timeout).",
        )
        self._lock = threading.Lock()  # collection may run in another thread (a periodic reader)
        self._state: dict[str, _Refresher] = {}
        gauges: list[tuple[str, str, str, Callable[[_Refresher], float | None]]] = [
            (
                "asgi_refresh.last_success.timestamp",
                "s",
                "When the refresher's last fetch succeeded, in seconds since the epoch.",
                lambda each: each.last_success,
            ),
            (
                "asgi_refresh.consecutive_failures",
                "{fetch}",
                "Failed fetches in a row since the refresher's last success.",
                lambda each: each.failures,
            ),
            (
                "asgi_refresh.value.held_back",
                "1",
                "1 while a guard holds a fetched value of the refresher back, else 0.",
                lambda each: int(each.held_back),
            ),
            (
                "asgi_refresh.value.pinned",
                "1",
                "1 while the refresher is pinned to a kept version, else 0.",
                lambda each: int(each.pinned),
            ),
            (
                "asgi_refresh.value.from_snapshot",
                "1",
                "1 while the refresher's published value is the snapshot it started from, else 0.",
                lambda each: int(each.from_snapshot),
            ),
        ]
        for name, unit, description, read in gauges:
            meter.create_observable_gauge(name, [self._observer(read)], unit, description)
        meter.create_observable_gauge(
            "asgi_refresh.value.age",
            [self._ages],
            "s",
            "Seconds since the refresher's last successful fetch.",
        )

    # -- events ----------------------------------------------------------------------

    def __call__(self, event: RefreshEvent) -> None:
        """Trace and count one event (a listener: plain, and quick)."""
        kind, name = event.kind, event.name
        if kind == "webhook":  # its name is the hook's, and it is no refresher's fetch
            self._webhooks.add(
                1, {"asgi_refresh.hook": name, "asgi_refresh.outcome": event.error or "accepted"}
            )
            return
        if kind == "started":
            self._seen(name)
            self._start_span(event)
        elif kind in _FINISHED:
            self._end_span(event)
            self._finished(event)
        elif kind == "cancelled":  # shutdown stopped the fetch: its span ends, nothing is counted
            self._end_span(event)
        else:
            if kind == "quarantined":
                span = self._spans.get((name, event.key))
                if span is not None:
                    span.add_event("quarantined", {"asgi_refresh.reason": _scrubbed(event.error or "")})
            self._last_known_good(name, kind)

    def _start_span(self, event: RefreshEvent) -> None:
        links = None
        if event.origin is not None:
            caller = trace.get_current_span(event.origin.run(otel_context.get_current)).get_span_context()
            if caller.is_valid:
                links = [Link(caller, {"asgi_refresh.link": "requested by"})]
        attributes: dict[str, str] = {"asgi_refresh.name": event.name}
        if event.source is not None:
            attributes["asgi_refresh.source"] = event.source
        if event.key is not None:
            attributes["asgi_refresh.key"] = event.key
        span = self._tracer.start_span(
            COMPUTE_SPAN_NAME if event.source == "derived" else SPAN_NAME,
            # A root: the scheduler's work, whichever task's context it runs in.
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=_nanoseconds(event.at),
        )
        previous = self._spans.pop((event.name, event.key), None)
        if previous is not None:  # its end never came (no event path leaves one now): never leak it
            previous.end()
        self._spans[(event.name, event.key)] = span

    def _end_span(self, event: RefreshEvent) -> None:
        span = self._spans.pop((event.name, event.key), None)
        if span is None:
            return
        span.set_attribute("asgi_refresh.outcome", event.kind)
        if event.duration is not None:
            span.set_attribute("asgi_refresh.duration", event.duration)
        if event.http_status is not None:
            span.set_attribute("http.response.status_code", event.http_status)
        if event.size is not None:
            span.set_attribute("asgi_refresh.size", event.size)
        if event.kind == "failed":
            # The line the logs show (redacted), never the exception: its args may hold a URL's secrets.
            error = _scrubbed(event.error or "")
            span.set_attribute("error.type", _error_type(event))
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=_nanoseconds(event.at))

    def _record_versions(self, versions: Callable[[], Mapping[str, str]]) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({f"asgi_refresh.version.{name}": shown for name, shown in versions().items()})

    # -- metrics ---------------------------------------------------------------------

    def _seen(self, name: str) -> None:
        with self._lock:
            if name in self._state:
                return
            self._state[name] = _Refresher()
        # Series exist from the first attempt on, as PrometheusMetrics has them: counters at 0.
        self._quarantines.add(0, {"asgi_refresh.name": name})
        self._restores.add(0, {"asgi_refresh.name": name})
        for action in _ACTIONS.values():
            self._actions.add(0, {"asgi_refresh.name": name, "asgi_refresh.action": action})

    def _finished(self, event: RefreshEvent) -> None:
        name = event.name
        self._refreshes.add(1, {"asgi_refresh.name": name, "asgi_refresh.outcome": event.kind})
        if event.duration is not None:
            self._duration.record(event.duration, {"asgi_refresh.name": name})
        with self._lock:
            state = self._state.setdefault(name, _Refresher())
            if event.kind == "failed":
                state.failures += 1
                return
            state.failures = 0
            state.last_success = event.at
            # A good fetch neither held back nor withheld by a pin is published: the
            # snapshot is no longer what is served.
            if not (state.held_back or state.pinned):
                state.from_snapshot = False

    def _last_known_good(self, name: str, kind: str) -> None:
        if kind == "quarantined":
            self._quarantines.add(1, {"asgi_refresh.name": name})
        elif kind == "restored":
            self._restores.add(1, {"asgi_refresh.name": name})
        elif kind in _ACTIONS:
            self._actions.add(1, {"asgi_refresh.name": name, "asgi_refresh.action": _ACTIONS[kind]})
        with self._lock:
            state = self._state.setdefault(name, _Refresher())
            if kind == "quarantined":
                state.held_back = True
            elif kind in ("accepted", "quarantine_ended"):
                state.held_back = False
            elif kind in ("pinned", "unpinned"):
                state.pinned = kind == "pinned"
            if kind == "restored":
                state.from_snapshot = True
            elif kind in ("changed", "accepted", "pinned"):  # another value is published
                state.from_snapshot = False

    def _observer(
        self, read: Callable[[_Refresher], float | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                found = [(name, read(state)) for name, state in self._state.items()]
            return [
                Observation(value, {"asgi_refresh.name": name}) for name, value in found if value is not None
            ]

        return observe

    def _ages(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self._clock.wall()
        with self._lock:
            found = [(name, state.last_success) for name, state in self._state.items()]
        # No +Inf before the first success as in Prometheus: the SDK drops non-finite values.
        return [
            Observation(max(now - at, 0.0), {"asgi_refresh.name": name})
            for name, at in found
            if at is not None
        ]


class _Refresher:
    """What the gauges say of one refresher, as its events told."""

    __slots__ = ("failures", "from_snapshot", "held_back", "last_success", "pinned")

    def __init__(self) -> None:
        self.last_success: float | None = None  # wall clock
        self.failures = 0
        self.held_back = False
        self.pinned = False
        self.from_snapshot = False


def _nanoseconds(wall: float) -> int:
    return int(wall * 1e9)


def _error_type(event: RefreshEvent) -> str:
    exc = event.exception
    if exc is not None:
        return getattr(type(exc), "shown_as", None) or type(exc).__name__
    return (event.error or "Exception").partition(":")[0]


def _scrubbed(text: str) -> str:
    """``text`` with any URL's credentials and query masked."""
    text = _CREDENTIALS.sub(r"\1***@", text)
    return _QUERY.sub(r"\1?***", text)
