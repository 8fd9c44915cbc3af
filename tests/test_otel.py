"""OpenTelemetry: a span per fetch, linked to the request that asked for it; metrics mirroring Prometheus.

Every test passes its own tracer and meter providers (with the SDK's in-memory
exporter and reader), so none touches the global ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import respx
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from prometheus_client import CollectorRegistry, generate_latest

from asgi_refresh import (
    Derived,
    HTTPSource,
    Refresher,
    RefresherFamily,
    RefreshError,
    RefreshEvent,
    RefreshMiddleware,
    Webhook,
    max_shrink,
)
from asgi_refresh._sources.outcome import Fetched
from asgi_refresh._types import ASGIApp, Receive, Scope, Send
from asgi_refresh.otel import OpenTelemetryListener
from asgi_refresh.prometheus import PrometheusMetrics
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, Upstream, hang, runtime_of
from .test_webhooks import signed

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-for-tests"
SECRET = "tok-7f3a9c-do-not-leak"
PASSWORD = "pw-b8e1-do-not-leak"
URL = "https://api.example.com/names"


class Telemetry:
    """A listener on its own providers, and what they recorded."""

    def __init__(self, clock: FakeClock, **options: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.listener = OpenTelemetryListener(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, clock=clock, **options
        )
        self.tracer: Tracer = self.tracer_provider.get_tracer("tests.server")

    def fetches(self, name: str = "asgi_refresh.fetch") -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
        """Every data point by metric name and attributes: a number, or (count, sum, bounds) for a histogram."""
        found: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset((point.attributes or {}).items()))
                        if isinstance(point, HistogramDataPoint):
                            found[key] = (point.count, point.sum, tuple(point.explicit_bounds))
                        else:
                            assert isinstance(point, NumberDataPoint)
                            found[key] = point.value
        return found


def named(name: str = "names", **more: str) -> frozenset[tuple[str, Any]]:
    return frozenset({"asgi_refresh.name": name, **{f"asgi_refresh.{k}": v for k, v in more.items()}}.items())


class Traced:
    """What an OpenTelemetry ASGI middleware does here: a server span current around each request."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.tracer.start_as_current_span(f"{scope['method']} {scope['path']}", kind=SpanKind.SERVER):
            await self.app(scope, receive, send)


class Handlers(ScriptedApp):
    """An app whose requests refresh or read a family key through the handle."""

    middleware: RefreshMiddleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handle = self.middleware.handle
            if scope["path"] == "/refresh":
                await handle.refresh("names")
            elif scope["path"] == "/rates":
                await handle.get("rates", "EUR")
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def served(
    telemetry: Telemetry, clock: FakeClock, *refreshers: Refresher, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, RefreshMiddleware]]:
    """The middleware with the listener, behind a tracing ASGI middleware, and a client."""
    app = Handlers()
    options.setdefault("listeners", [telemetry.listener])
    middleware = app.middleware = RefreshMiddleware(app, refreshers=list(refreshers), clock=clock, **options)
    traced = Traced(middleware, telemetry.tracer)
    async with LifespanManager(traced):
        transport = httpx.ASGITransport(app=traced, client=("127.0.0.1", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            yield http, middleware


def request_span(telemetry: Telemetry, path: str) -> ReadableSpan:
    (span,) = [each for each in telemetry.spans.get_finished_spans() if each.name.endswith(f" {path}")]
    return span


def leaks(span: ReadableSpan, *secrets: str) -> list[str]:
    """Where in the span any of ``secrets`` shows up."""
    texts = [repr(dict(span.attributes or {})), span.status.description or "", span.name]
    texts += [event.name + repr(dict(event.attributes or {})) for event in span.events]
    return [text for text in texts for secret in secrets if secret in text]


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


# -- spans --------------------------------------------------------------------------------


async def test_each_fetch_is_a_root_span_with_its_outcome_and_duration() -> None:
    """One asgi_refresh.fetch per fetch: name, source, outcome, duration; failures are ERROR, timeouts say so."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    upstream = Upstream("v1", Fetched("v1", not_modified=True), OSError("boom"), hang)
    refresher = Refresher("names", upstream, every="1m", jitter=0, backoff_initial="1m", timeout="5s")
    async with served(telemetry, clock, refresher):
        for _ in range(3):
            await clock.advance(60)
        await clock.advance(5)
    spans = telemetry.fetches()
    assert [span.attributes["asgi_refresh.outcome"] for span in spans if span.attributes] == [
        "succeeded",
        "not_modified",
        "failed",
        "failed",
    ]
    for span in spans:
        assert span.parent is None, "the scheduler's work is no request's child"
        assert span.kind == SpanKind.INTERNAL
        assert span.links == ()
        assert span.attributes is not None
        assert span.attributes["asgi_refresh.name"] == "names"
        assert span.attributes["asgi_refresh.source"] == "python"
        assert "http.response.status_code" not in span.attributes
    ok, _, failed, timed_out = spans
    assert ok.status.status_code == StatusCode.UNSET
    assert ok.start_time == int(START.timestamp() * 1e9), "times are the middleware's clock"
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "OSError: boom"
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "OSError"
    assert timed_out.attributes is not None
    assert timed_out.attributes["error.type"] == "TimeoutError"
    assert timed_out.attributes["asgi_refresh.duration"] == 5.0
    assert timed_out.end_time is not None
    assert timed_out.start_time is not None
    assert timed_out.end_time - timed_out.start_time == 5_000_000_000


async def test_http_fetches_carry_the_status_and_size_and_no_secret_of_the_url(
    upstream: respx.MockRouter,
) -> None:
    """HTTP status and bytes on the span; a URL's password and query never reach it, failed or not."""
    secret_url = f"https://user:{PASSWORD}@api.example.com/names?token={SECRET}"
    route = upstream.get(URL, params={"token": SECRET})
    route.side_effect = [
        httpx.Response(200, json=["ada"], headers={"ETag": '"1"'}),
        httpx.Response(304),
        httpx.Response(500),
        httpx.ConnectError(f"cannot reach {secret_url}"),
    ]
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    refresher = Refresher("names", HTTPSource(secret_url), every="1m", jitter=0, backoff_initial="1m")
    async with served(telemetry, clock, refresher):
        for _ in range(3):
            await clock.advance(60)
    spans = telemetry.fetches()
    assert [(span.attributes or {}).get("http.response.status_code") for span in spans] == [
        200,
        304,
        500,
        None,
    ]
    assert (spans[0].attributes or {})["asgi_refresh.size"] == len(b'["ada"]')
    assert (spans[0].attributes or {})["asgi_refresh.source"] == "http"
    assert "asgi_refresh.size" not in (spans[1].attributes or {}), "a 304 has no body"
    assert spans[2].status.description is not None
    assert "HTTP 500" in spans[2].status.description
    assert spans[3].status.status_code == StatusCode.ERROR
    for span in spans:
        assert leaks(span, SECRET, PASSWORD) == []


async def test_an_error_of_your_own_fetch_loses_the_urls_credentials_and_query() -> None:
    """A user fetch raising an error that quotes a URL: the span keeps the message, not the secrets."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    error = RuntimeError(f"GET https://svc:{PASSWORD}@api.example.com/x?key={SECRET}&b=1 failed: 503")
    async with served(telemetry, clock, Refresher("names", Upstream("v1", error), every="1m", jitter=0)):
        await clock.advance(60)
    failed = telemetry.fetches()[-1]
    assert failed.status.description == "RuntimeError: GET https://***@api.example.com/x?*** failed: 503"
    assert leaks(failed, SECRET, PASSWORD) == []


# -- links to the request that asked --------------------------------------------------------


async def test_a_refresh_asked_by_a_request_is_linked_to_its_span() -> None:
    """handle.refresh() in a handler: the fetch span links to the request's span."""
    path = "/refresh"
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    async with served(telemetry, clock, Refresher("names", Upstream(), every="1h")) as (http, _):
        assert (await http.get(path)).status_code == 200
        await anyio.wait_all_tasks_blocked()
    first, asked = telemetry.fetches()
    assert first.links == (), "the startup load was asked by no request"
    request = request_span(telemetry, path)
    (link,) = asked.links
    assert request.context is not None
    assert link.context.span_id == request.context.span_id
    assert link.context.trace_id == request.context.trace_id
    assert asked.parent is None, "linked, not a child: the fetch serves every waiting request"


async def test_the_admin_endpoint_and_a_webhook_link_their_fetch_to_the_request() -> None:
    """POST /_refresh/names and a signed webhook delivery: each fetch links to its request's span."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    async with served(
        telemetry,
        clock,
        Refresher("names", Upstream(), every="1h"),
        admin_path="/_refresh",
        admin_token=TOKEN,
        admin_webhooks={"deploy": Webhook(["names"], github_secret="github-webhook-secret-for-tests")},
    ) as (http, _):
        admin = await http.post("/_refresh/names", headers={"Authorization": f"Bearer {TOKEN}"})
        assert admin.status_code == 202
        await anyio.wait_all_tasks_blocked()
        body = b"{}"
        delivery = await http.post("/_refresh/hooks/deploy", content=body, headers=signed("github", body))
        assert delivery.status_code == 202
        await anyio.wait_all_tasks_blocked()
    _, by_admin, by_hook = telemetry.fetches()
    for span, path in ((by_admin, "/_refresh/names"), (by_hook, "/_refresh/hooks/deploy")):
        request = request_span(telemetry, path)
        assert request.context is not None
        assert [link.context.span_id for link in span.links] == [request.context.span_id]
    assert (
        telemetry.metrics()[
            (
                "asgi_refresh.webhook.deliveries",
                frozenset({"asgi_refresh.hook": "deploy", "asgi_refresh.outcome": "accepted"}.items()),
            )
        ]
        == 1
    )


async def test_a_family_key_fetch_and_a_derived_compute_are_spanned() -> None:
    """A cold key read by a request: a fetch span with the key, linked; a derived value: a compute span."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)

    async def rate(key: str) -> float:
        return 1.1

    def count(names: list[str]) -> int:
        return len(names)

    async with served(
        telemetry,
        clock,
        Refresher("names", Upstream(["ada"]), every="1h"),
        families=[RefresherFamily("rates", rate, every="1h")],
        derived=[Derived("count", count, inputs=["names"])],
    ) as (http, _):
        assert (await http.get("/rates")).status_code == 200
    (key_fetch,) = [
        span for span in telemetry.fetches() if (span.attributes or {}).get("asgi_refresh.name") == "rates"
    ]
    assert key_fetch.attributes is not None
    assert key_fetch.attributes["asgi_refresh.key"] == "'EUR'"
    assert key_fetch.attributes["asgi_refresh.outcome"] == "succeeded"
    request = request_span(telemetry, "/rates")
    assert request.context is not None
    assert [link.context.span_id for link in key_fetch.links] == [request.context.span_id]
    (compute,) = telemetry.fetches("asgi_refresh.compute")
    assert compute.attributes is not None
    assert compute.attributes["asgi_refresh.name"] == "count"
    assert compute.attributes["asgi_refresh.source"] == "derived"
    assert compute.attributes["asgi_refresh.outcome"] == "succeeded"


async def test_without_a_tracing_listener_no_context_is_captured() -> None:
    """Plain listeners and PrometheusMetrics do not ask for the origin: refresh-now stays as cheap as before."""
    clock = FakeClock(START)
    events: list[RefreshEvent] = []
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream(), every="1h")],
        clock=clock,
        listeners=[events.append, PrometheusMetrics(CollectorRegistry(), clock=clock)],
    )
    async with LifespanManager(middleware):
        runtime = runtime_of(middleware.handle)
        assert runtime.events is not None
        assert runtime.events.wants_origin is False
        assert middleware._on_request is False
        assert runtime.events.request_hooks == ()
        await middleware.handle.refresh("names")
    assert [event.origin for event in events] == [None] * len(events)


# -- versions read by a request -----------------------------------------------------------


async def test_record_versions_puts_the_published_versions_on_the_request_span() -> None:
    """record_versions=True: version ids (keep_versions) or change times on the request's span; off: none."""
    clock = FakeClock(START)
    for record in (True, False):
        telemetry = Telemetry(clock, record_versions=record)
        kept = Refresher("names", Upstream(["ada"]), every="1h", keep_versions=3)
        plain = Refresher("flags", Upstream({"beta": True}), every="1h")
        async with served(telemetry, clock, kept, plain) as (http, middleware):
            assert (await http.get("/")).status_code == 200
            version = middleware.handle.status()["names"]["version"]
        attributes = dict(request_span(telemetry, "/").attributes or {})
        versions = {
            key: value for key, value in attributes.items() if key.startswith("asgi_refresh.version.")
        }
        if record:
            assert versions == {
                "asgi_refresh.version.names": version,
                "asgi_refresh.version.flags": START.isoformat(),
            }
        else:
            assert versions == {}
            assert telemetry.listener.on_request is None


# -- metrics ------------------------------------------------------------------------------


async def test_metrics_mirror_the_prometheus_ones() -> None:
    """Counters, the duration histogram and the observable gauges, as PrometheusMetrics keeps them."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    refresher = Refresher(
        "names", Upstream("v1", OSError("boom"), "v2"), every="1m", jitter=0, backoff_initial="1m"
    )
    never = Refresher("flags", Upstream(OSError("down")), every="1h", required=False)
    async with served(telemetry, clock, refresher, never):
        found = telemetry.metrics()
        assert ("asgi_refresh.value.age", named("flags")) not in found, "no +Inf: OpenTelemetry drops it"
        assert found[("asgi_refresh.consecutive_failures", named("flags"))] == 1
        await clock.advance(60)
        found = telemetry.metrics()
        assert found[("asgi_refresh.consecutive_failures", named())] == 1
        assert found[("asgi_refresh.value.age", named())] == 60.0
        assert found[("asgi_refresh.last_success.timestamp", named())] == START.timestamp()
        await clock.advance(60)
        found = telemetry.metrics()
    assert found[("asgi_refresh.refreshes", named(outcome="succeeded"))] == 2
    assert found[("asgi_refresh.refreshes", named(outcome="failed"))] == 1
    seconds = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
    assert found[("asgi_refresh.refresh.duration", named())] == (3, 0.0, seconds), "Prometheus's buckets"
    assert found[("asgi_refresh.consecutive_failures", named())] == 0
    assert found[("asgi_refresh.value.age", named())] == 0.0
    assert ("asgi_refresh.last_success.timestamp", named("flags")) not in found
    for gauge in ("held_back", "pinned", "from_snapshot"):
        assert found[(f"asgi_refresh.value.{gauge}", named())] == 0
    assert found[("asgi_refresh.quarantines", named())] == 0
    assert found[("asgi_refresh.operator_actions", named(action="accept"))] == 0


async def test_a_quarantine_is_counted_gauged_and_noted_on_the_fetch_span() -> None:
    """A guard holds a value back: quarantines +1, held_back 1, a span event; accept: held_back 0, accept +1."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    upstream = Upstream(["ada", "grace", "katherine", "barbara"], ["ada"])
    refresher = Refresher("names", upstream, every="1h", jitter=0, guard=max_shrink(0.5), keep_versions=5)
    async with served(telemetry, clock, refresher) as (_, middleware):
        await middleware.handle.refresh("names")
        found = telemetry.metrics()
        assert found[("asgi_refresh.value.held_back", named())] == 1
        assert found[("asgi_refresh.quarantines", named())] == 1
        await middleware.handle.accept("names")
        found = telemetry.metrics()
    assert found[("asgi_refresh.value.held_back", named())] == 0
    assert found[("asgi_refresh.operator_actions", named(action="accept"))] == 1
    held = telemetry.fetches()[-1]
    assert [event.name for event in held.events] == ["quarantined"]


async def test_the_global_providers_are_the_default() -> None:
    """Without providers the listener uses the global ones (no-op until the app sets them): nothing breaks."""
    clock = FakeClock(START)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream("v1", OSError("boom")), every="1m", jitter=0)],
        clock=clock,
        listeners=[OpenTelemetryListener(clock=clock, record_versions=True)],
    )
    async with LifespanManager(middleware):
        with pytest.raises(RefreshError):
            await middleware.handle.refresh("names")
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            assert (await http.get("/")).status_code == 200


async def test_a_fetch_a_key_fetch_and_a_compute_stopped_by_shutdown_end_their_spans_as_cancelled() -> None:
    """Shutdown stops fetches under way: each span ends then, outcome cancelled, no error, nothing counted."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    registry = CollectorRegistry()
    prometheus = PrometheusMetrics(registry, clock=clock)
    events: list[RefreshEvent] = []
    computes = 0

    async def count(names: list[str]) -> int:
        nonlocal computes
        computes += 1
        if computes > 1:
            await hang()
        return len(names)

    async def rate(key: str) -> float:
        return await hang()  # type: ignore[no-any-return]

    async def read_rate(middleware: RefreshMiddleware) -> None:
        with pytest.raises(RuntimeError, match="stopped while fetching"):
            await middleware.handle.get("rates", "EUR")

    async with (
        anyio.create_task_group() as readers,
        served(
            telemetry,
            clock,
            Refresher("names", Upstream(["ada"], ["ada", "bob"]), every="1m", jitter=0),
            Refresher("slow", Upstream("v1", hang), every="1m", jitter=0),
            families=[RefresherFamily("rates", rate, every="1h", timeout="5m")],
            derived=[Derived("count", count, inputs=["names"])],
            listeners=[telemetry.listener, prometheus, events.append],
        ) as (_, middleware),
    ):
        readers.start_soon(read_rate, middleware)  # a cold key: its fetch hangs
        await clock.advance(60)  # names changes (its second compute hangs), slow hangs
        assert computes == 2
        assert [event.kind for event in events if event.name == "rates"] == ["started"]
    cancelled = [
        span
        for span in telemetry.spans.get_finished_spans()
        if (span.attributes or {}).get("asgi_refresh.outcome") == "cancelled"
    ]
    assert sorted(((span.attributes or {})["asgi_refresh.name"], span.name) for span in cancelled) == [
        ("count", "asgi_refresh.compute"),
        ("rates", "asgi_refresh.fetch"),
        ("slow", "asgi_refresh.fetch"),
    ]
    for span in cancelled:
        assert span.status.status_code == StatusCode.UNSET, "shutdown is no error of the fetch"
        assert span.end_time is not None
    assert [event.kind for event in events if event.name == "slow"] == [
        "started",
        "succeeded",
        "changed",
        "started",
        "cancelled",
    ]
    (stopped,) = [event for event in events if event.kind == "cancelled" and event.name == "rates"]
    assert (stopped.key, stopped.source) == ("'EUR'", "python")
    found = telemetry.metrics()
    assert found[("asgi_refresh.refreshes", named("slow", outcome="succeeded"))] == 1
    assert not [key for key in found if ("asgi_refresh.outcome", "cancelled") in key[1]], (
        "not an outcome counted"
    )
    assert 'outcome="cancelled"' not in generate_latest(registry).decode()


def test_a_span_whose_end_never_came_is_ended_by_the_next_start_of_that_fetch() -> None:
    """Events out of order (a second start, an end without a start) never leak a span nor raise."""
    clock = FakeClock(START)
    telemetry = Telemetry(clock)
    at = START.timestamp()
    listener = telemetry.listener
    listener(RefreshEvent("failed", "names", at, 1.0, "OSError: no start seen"))  # no span: nothing to end
    listener(RefreshEvent("started", "names", at))
    listener(RefreshEvent("started", "names", at + 10))
    listener(RefreshEvent("succeeded", "names", at + 11, 1.0))
    cut, ended = telemetry.fetches()
    assert "asgi_refresh.outcome" not in (cut.attributes or {})
    assert (ended.attributes or {})["asgi_refresh.outcome"] == "succeeded"
    assert ended.start_time == int((at + 10) * 1e9)


async def test_a_request_hook_that_raises_is_logged_once_and_the_request_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener's on_request is user code: a raise is logged as a listener's (once in 5 minutes), requests are served."""

    class Broken:
        def __call__(self, event: RefreshEvent) -> None:
            return None

        def on_request(self, versions: Any) -> None:
            raise RuntimeError("broken hook")

    clock = FakeClock(START)
    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("names", Upstream(), every="1h")],
        clock=clock,
        listeners=[Broken()],
    )
    async with LifespanManager(middleware):
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for _ in range(2):
                assert (await http.get("/")).status_code == 200
    logged = [
        record for record in caplog.records if "raised on a request (on_request)" in record.getMessage()
    ]
    assert len(logged) == 1
    assert logged[0].levelname == "ERROR"
