"""The ASGI middleware: the lifespan conversation with the server, and state per request."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio

from ._app_lifespan import AppLifespan
from ._clock import Clock, SystemClock
from ._derived import Derived, order
from ._duration import Duration, format_duration, positive_duration
from ._events import Listener
from ._family import RefresherFamily
from ._handle import RefreshError, RefreshHandle
from ._option_error import OptionTypeError, OptionValueError
from ._publisher import SNAPSHOT_KEY
from ._refresher import RESERVED_NAME, Refresher
from ._runtime import Runtime
from ._switch import active as active_switch
from ._types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from pathlib import Path

    from ._admin import Admin, TokenCheck
    from ._cluster.base import Codec, Coordinator
    from ._webhooks import Webhook

logger = logging.getLogger("asgi_refresh")


class RefreshMiddleware:
    """Run refreshers around an ASGI app's lifespan and publish their values per request.

    At ``lifespan.startup`` the refreshers load (concurrently) and publish into the
    lifespan state *before* the wrapped app's own startup runs; at
    ``lifespan.shutdown`` the app shuts down first, then the refreshers stop. Every
    request then reads ``scope["state"][name]`` (``request.state.<name>`` in
    Starlette and FastAPI), always the freshest good value, and the control handle
    at ``scope["state"]["asgi_refresh"]``.

    Works as ``RefreshMiddleware(app, refreshers=[...])``, as
    ``app.add_middleware(RefreshMiddleware, refreshers=[...])`` and as
    ``Middleware(RefreshMiddleware, refreshers=[...])``.

    Args:
        app: The ASGI app to wrap.
        refreshers: What to load and keep fresh; names must be unique.
        families: Data per key (`RefresherFamily`), read with ``await
            handle.get(name, key)``; names unique among refreshers and families.
        derived: Values computed from the refreshers' (and each other's) values
            (`Derived`), published in the same snapshot as the input change that
            caused them. Names must be unique among refreshers and derived values;
            an unknown input or a cycle is an error here.
        startup_timeout: Budget for the first loads of required refreshers; past
            it, startup fails with a message naming the refresher and the cause.
        shutdown_timeout: How long to wait for refreshers to stop after the app has
            shut down, even if a fetch ignores cancellation.
        clock: Where the schedule reads time; tests pass
            `asgi_refresh.testing.FakeClock` to run hours of schedule in milliseconds.
        listeners: Callables given a `RefreshEvent` for every fetch started,
            succeeded, not modified or failed, every value changed, and what
            last known good does (held back, accepted, pinned, restored...) for
            metrics and alerts. Plain ones run inline and must be quick; ``async`` ones run
            in order on a task of their own. One that raises is logged and ignored.
        admin_path: Serve the admin endpoints under this prefix, like
            ``"/_refresh"``: ``GET`` it for the JSON status (or the status page
            in a browser), ``POST {admin_path}/{name}`` to refresh now, ``GET
            {admin_path}/{name}`` for one entry, ``GET {admin_path}/health`` for
            readiness. Off (None) by default. Requires
            ``admin_token`` or ``admin_loopback_only``.
        admin_token: The bearer token the admin endpoints require (at least 16
            characters; compared in constant time), or a callable given the
            presented token that returns (or awaits to) True to let it in. The
            health endpoint needs no token.
        admin_loopback_only: Serve the admin endpoints only to requests from
            127.0.0.1 / ::1 with a loopback ``Host``; without ``admin_token``, this
            is what allows them unauthenticated.
        admin_webhooks: Signed webhooks, by hook name: ``{"deploy":
            Webhook(["names"], github_secret=...)}`` serves ``POST
            {admin_path}/hooks/deploy``, which refreshes the hook's refreshers now
            (cluster-wide with a coordinator) and answers 202. A delivery is let in
            by its signature (GitHub, GitLab or Standard Webhooks; see `Webhook`),
            not by ``admin_token`` nor ``admin_loopback_only``. Requires ``admin_path``.
        coordinator: Share fetches between processes (workers, hosts): a
            `RedisCoordinator`, `SQLiteCoordinator`, `PostgresCoordinator` or
            `NATSCoordinator`. For each refresher, one process holds a lease and
            fetches; the others publish what it stored.
            None (the default): every process fetches for itself.
        codec: How values are encoded for the coordinator, snapshots and kept
            versions: `JSONCodec` by default; any object with
            ``encode(value) -> bytes`` and ``decode(bytes) -> value``. Never pickle.
        lease_ttl: The longest a refresher goes without a lease holder when the
            process holding it dies or hangs: another takes over within this. Every
            process polls the lease every third of it (cheap backend calls).
        snapshot_dir: Keep the last good value of every refresher in this
            directory (created 0700; files 0600, replaced atomically), and start a
            refresher whose first load fails from its snapshot instead of failing
            startup. Off (None) by default. Snapshots hold values: see the guide
            "When the upstream is down or wrong" about secrets.
        snapshot_max_age: The oldest snapshot a refresher may start from (each
            refresher can say otherwise); None (the default) for no limit.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or two refreshers share a name.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        refreshers: Iterable[Refresher] = (),
        families: Iterable[RefresherFamily] = (),
        derived: Iterable[Derived] = (),
        startup_timeout: Duration = "30s",
        shutdown_timeout: Duration = "10s",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        admin_path: str | None = None,
        admin_token: str | TokenCheck | None = None,
        admin_loopback_only: bool = False,
        admin_webhooks: Mapping[str, Webhook] | None = None,
        coordinator: Coordinator | None = None,
        codec: Codec | None = None,
        lease_ttl: Duration = "15s",
        snapshot_dir: str | os.PathLike[str] | None = None,
        snapshot_max_age: Duration | None = None,
    ) -> None:
        self.app = app
        self.refreshers = _checked_refreshers(refreshers)
        self.families = _checked_families(families, self.refreshers)
        self.derived = _checked_derived(derived, self.refreshers, self.families)
        self.startup_timeout = positive_duration("RefreshMiddleware", "startup_timeout", startup_timeout)
        self.shutdown_timeout = positive_duration("RefreshMiddleware", "shutdown_timeout", shutdown_timeout)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.listeners = _checked_listeners(listeners)
        # Listeners that look at each request (tracing's versions read, when asked
        # for): none in most apps, and then a request costs one test of a bool.
        self._on_request = any(callable(getattr(each, "on_request", None)) for each in self.listeners)
        self.coordinator = _checked_coordinator(coordinator)
        self.codec: Codec | None = _checked_codec(codec)  # None: JSON (loaded with a coordinator)
        self.lease_ttl = positive_duration("RefreshMiddleware", "lease_ttl", lease_ttl)
        self.snapshot_dir = _checked_directory(snapshot_dir)
        self.snapshot_max_age = (
            None
            if snapshot_max_age is None
            else positive_duration("RefreshMiddleware", "snapshot_max_age", snapshot_max_age)
        )
        self._admin: Admin | None = None
        if admin_path is not None:
            from ._admin import Admin, checked_admin_path  # on first use: only apps that serve it load it
            from ._webhooks import Webhooks, checked_webhooks

            hooks = None
            if admin_webhooks is not None:
                hooks = Webhooks(checked_webhooks(admin_webhooks, [spec.name for spec in self.refreshers]))
            self._admin = Admin(
                checked_admin_path(admin_path),
                token=admin_token,
                loopback_only=admin_loopback_only,
                webhooks=hooks,
            )
        elif admin_webhooks is not None:
            raise OptionValueError(
                "RefreshMiddleware",
                "admin_webhooks",
                "admin_webhooks needs admin_path, the prefix to serve them under: "
                'admin_path="/_refresh" serves POST /_refresh/hooks/<hook>',
            )
        self._admin_prefix = None if self._admin is None else self._admin.path
        if self._admin is None and (admin_token is not None or admin_loopback_only):
            raise OptionValueError(
                "RefreshMiddleware",
                # The one given: that is the key a config file has.
                "admin_token" if admin_token is not None else "admin_loopback_only",
                "admin_token and admin_loopback_only need admin_path, the prefix to serve the "
                'admin endpoints under (e.g. admin_path="/_refresh")',
            )
        # The state dict of the lifespan that is running now, if any. The runtime
        # itself lives in `_lifespan`'s locals so that lifespans never share it.
        self._live: MutableMapping[str, Any] | None = None
        self._running: Runtime | None = None  # its runtime, for the admin endpoints
        self._warned_no_lifespan = False

    @classmethod
    def from_config(
        cls, app: ASGIApp, config: str | os.PathLike[str] | Mapping[str, Any], **options: Any
    ) -> RefreshMiddleware:
        """Wrap ``app`` with the refreshers and options of a configuration file or mapping.

        ```python
        app = RefreshMiddleware.from_config(app, "refresh.toml")
        ```

        The whole configuration is checked before anything runs, and every problem
        is reported at once. See the configuration page for the format.

        Args:
            app: The ASGI app to wrap.
            config: A ``.toml`` or ``.json`` file, or a mapping of the same shape.
                Relative paths in a file are resolved against the file's directory;
                in a mapping, against the current directory.
            **options: Middleware options that override the ``[middleware]`` table,
                such as ``clock=FakeClock()`` in tests.

        Raises:
            ConfigError: the configuration cannot be read or is invalid; its
                ``problems`` list each one with its key path.
        """
        # `cls`, a subclass maybe, is what the [middleware] table's keys are the parameters of.
        from ._config import load_config  # on first use: it loads the sources and tomllib

        loaded = load_config(config, middleware=cls)
        return cls(
            app,
            refreshers=loaded.refreshers,
            families=loaded.families,
            derived=loaded.derived,
            **{**loaded.middleware, **options},
        )

    @property
    def handle(self) -> RefreshHandle:
        """The control handle of the running lifespan.

        Raises:
            RuntimeError: no lifespan is running.
        """
        live = self._live
        if live is None:
            raise RuntimeError("asgi_refresh is not running: no lifespan has started, or it has shut down")
        handle: RefreshHandle = live[RESERVED_NAME]
        return handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        live = self._live
        # Runs for every request when the admin endpoints are on, so one C-level
        # substring test (cheaper than a startswith() call, and true under a root_path
        # too) sorts out nearly every request; the exact check is for the few left.
        prefix = self._admin_prefix
        if (
            prefix is not None
            and prefix in scope["path"]
            and await self._served_by_admin(scope, receive, send)
        ):
            return
        if live is not None:
            # O(1) on servers that copy the lifespan state into each request
            # (uvicorn, hypercorn/asyncio): the copy carries the current snapshot
            # marker. Otherwise (no state, a copy taken once at startup, or the live
            # dict itself, which we mutate) hand the request its own fresh copy.
            state = scope.get("state")
            if state is None or state is live or state.get(SNAPSHOT_KEY) is not live[SNAPSHOT_KEY]:
                scope["state"] = {**state, **live} if state and state is not live else dict(live)
            if self._on_request:
                self._observe_request()
        elif not self._warned_no_lifespan and (self.refreshers or self.families):
            self._warned_no_lifespan = True
            logger.warning(
                "A request arrived but no ASGI lifespan is running, so refreshers are not "
                "running and request.state has none of their values. Run the server with "
                "lifespan enabled (uvicorn: --lifespan on), and in tests enter the app with "
                "`asgi_lifespan.LifespanManager(app)` or `with TestClient(app)`."
            )
        await self.app(scope, receive, send)

    def _observe_request(self) -> None:
        """Hand the request-watching listeners the versions this request reads (lazily)."""
        runtime = self._running
        if runtime is not None and runtime.events is not None:
            runtime.events.observe_request(runtime.versions)

    async def _served_by_admin(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve an admin request; False for a path that only contains the prefix."""
        admin = self._admin
        assert admin is not None  # the prefix is set only with it
        path = _route_path(scope)
        if scope["type"] != "http" or not admin.owns(path):
            return False
        await admin(scope, send, self._running, path, receive)
        return True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup: the only thing a server sends first
        state = scope.get("state")
        if state is None:  # a server without lifespan state: we keep our own
            state = {}
        other = state.get(RESERVED_NAME)
        if isinstance(other, RefreshHandle) and other.running:
            await send(
                {
                    "type": "lifespan.startup.failed",
                    "message": "Two RefreshMiddleware instances wrap the same app; they would "
                    "overwrite each other's handle. Put all refreshers in one RefreshMiddleware.",
                }
            )
            return
        # Under `asgi_refresh.testing.fake_time()`: its clock and pinned values, read
        # once, here, so that a lifespan keeps what it started with.
        switch = active_switch()
        clock = self.clock if switch is None else switch.clock_for(self.clock)
        runtime = Runtime(
            self.refreshers,
            state=state,
            clock=clock,
            listeners=self.listeners,
            coordinator=self.coordinator,
            codec=self.codec,
            lease_ttl=self.lease_ttl,
            snapshot_dir=self.snapshot_dir,
            snapshot_max_age=self.snapshot_max_age,
            families=self.families,
            derived=self.derived,
        )
        if scope.get("state") is not state:
            scope["state"] = state  # the one documented change to the app's lifespan scope
        # The server's own scope dict, not a copy: the app sees what it would without us.
        app = AppLifespan(self.app, scope, clock)
        server = _ServerSend(send)
        outcome: Message | None = None  # for the server, once everything has stopped
        reported: Message | None = None
        ours: RefreshError | None = None  # a failure of the refreshers, raised after reporting it
        replaced_cancellation: BaseException | None = None
        try:
            async with anyio.create_task_group() as task_group:
                # Live from now on, complete: a fetch may read another refresher's
                # value through `handle` while the first loads run.
                runtime.prepare()
                if switch is not None:
                    switch.started(runtime.handle)
                self._live, self._running = state, runtime
                await task_group.start(runtime.run)
                # The switch's clock moves only when the test moves it: retries at
                # startup would hang the test instead of failing its startup.
                ours = await runtime.load(self.startup_timeout, simulated=clock is not self.clock)
                failure = None if ours is None else str(ours)
                if failure is None:
                    failure = await app.startup(task_group)
                if failure is None and await server.send({"type": "lifespan.startup.complete"}):
                    await receive()  # lifespan.shutdown
                    failure = await app.shutdown(self.shutdown_timeout)
                    stuck = await self._stop(runtime)
                    ours = ours or stuck
                    failure = _join(failure, None if stuck is None else str(stuck))
                    outcome = _reply("shutdown", failure)
                else:
                    await app.end(self.shutdown_timeout)
                    stuck = await self._stop(runtime)
                    ours = ours or stuck
                    failure = _join(failure, None if stuck is None else str(stuck))
                    outcome = None if server.error else _reply("startup", failure)
                reported = outcome
                if not runtime.stopped and outcome is not None and await server.send(outcome):
                    # A fetch ignoring cancellation keeps this task group open: the
                    # server hears the outcome now, not whenever that fetch ends.
                    outcome = None
        except anyio.get_cancelled_exc_class():
            # The server cancelled the lifespan task. If the app raised while its own
            # lifespan was being cancelled (a `finally:` that fails), that exception
            # replaced the cancellation without us, so it does here too (raised below,
            # outside this handler, so that its own context stays as the app left it).
            if app.error is None:
                raise
            replaced_cancellation = app.error
        finally:
            app.close()
            if switch is not None:
                switch.stopped(runtime.handle)
            if self._live is state:
                self._live = self._running = None
        if replaced_cancellation is not None:
            raise replaced_cancellation
        if server.error is not None:
            raise server.error
        if outcome is not None:
            # Sent once everything has stopped, and nothing is awaited after it. The
            # server may raise here (hypercorn does on startup.failed): it propagates.
            await send(outcome)
        if reported is not None and reported["type"].endswith(".failed"):
            # Raise after reporting, as Starlette's router does, so that test clients
            # (TestClient, asgi-lifespan) surface the failure instead of carrying on
            # without values; servers have the message already and ignore this. The
            # app's own exception comes out unchanged, exactly as without us.
            if app.error is not None:
                raise app.error
            if ours is not None:
                raise ours

    async def _stop(self, runtime: Runtime) -> RefreshError | None:
        stuck = await runtime.stop(self.shutdown_timeout)
        if not stuck:
            return None
        return RefreshError(
            stuck[0],
            f"refreshers {', '.join(map(repr, stuck))} did not stop within "
            f"shutdown_timeout ({format_duration(self.shutdown_timeout)})",
        )


class _ServerSend:
    """The server's ``send``, with its exception kept to re-raise outside the task group.

    Raised inside the task group it would come out wrapped in an ExceptionGroup;
    the server must see its own exception unchanged.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.error: Exception | None = None

    async def send(self, message: Message) -> bool:
        try:
            await self._send(message)
        except Exception as exc:
            self.error = exc
            return False
        return True


def _route_path(scope: Scope) -> str:
    """The path as Starlette's routing sees it: without the server's ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _join(first: str | None, second: str | None) -> str | None:
    return f"{first}; {second}" if first and second else first or second


def _reply(phase: str, failure: str | None) -> Message:
    if failure is None:
        return {"type": f"lifespan.{phase}.complete"}
    return {"type": f"lifespan.{phase}.failed", "message": failure}


def _checked_coordinator(coordinator: object) -> Coordinator | None:
    if coordinator is None:
        return None
    from ._cluster.base import Coordinator  # on first use: apps without one never load it

    if isinstance(coordinator, Coordinator):
        return coordinator
    raise OptionTypeError(
        "RefreshMiddleware",
        "coordinator",
        "coordinator must be a coordination backend such as "
        'RedisCoordinator("redis://host:6379/0") or SQLiteCoordinator("/var/run/app/refresh.db") '
        f"(got {type(coordinator).__name__})",
    )


def _checked_directory(directory: object) -> Path | None:
    if directory is None:
        return None
    if not isinstance(directory, str | os.PathLike) or not os.fspath(directory):
        raise OptionTypeError(
            "RefreshMiddleware",
            "snapshot_dir",
            f"snapshot_dir must be a directory path, like '/var/lib/myapp/snapshots' (got {directory!r})",
        )
    from pathlib import Path

    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise OptionValueError(
            "RefreshMiddleware", "snapshot_dir", f"snapshot_dir {str(path)!r} exists and is not a directory"
        )
    return path


def _checked_codec(codec: object) -> Codec | None:
    if codec is None:
        return None
    if callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None)):
        return codec  # type: ignore[return-value]
    raise OptionTypeError(
        "RefreshMiddleware",
        "codec",
        "codec must have encode(value) -> bytes and decode(bytes) -> value "
        f"methods, like JSONCodec() (got {type(codec).__name__})",
    )


def _checked_listeners(listeners: Iterable[Listener]) -> tuple[Listener, ...]:
    if callable(listeners) or not isinstance(listeners, Iterable):
        raise OptionTypeError(
            "RefreshMiddleware",
            "listeners",
            "listeners must be a list of callables; wrap a single one "
            f"in a list: listeners=[{getattr(listeners, '__name__', 'listener')}]",
        )
    checked = tuple(listeners)
    for listener in checked:
        if isinstance(listener, type):
            raise OptionTypeError(
                "RefreshMiddleware",
                "listeners",
                f"listener {listener.__name__} is a class; pass an instance, "
                f"e.g. listeners=[{listener.__name__}()]",
            )
        if not callable(listener):
            raise OptionTypeError(
                "RefreshMiddleware",
                "listeners",
                f"each listener must be a callable taking a RefreshEvent (got {listener!r:.80})",
            )
    return checked


def _checked_refreshers(refreshers: Iterable[Refresher]) -> tuple[Refresher, ...]:
    if isinstance(refreshers, Refresher):
        raise OptionTypeError(
            "RefreshMiddleware",
            "refreshers",
            "refreshers must be a list of Refresher; wrap a single one in "
            f"a list: refreshers=[Refresher({refreshers.name!r}, ...)]",
        )
    if isinstance(refreshers, str | bytes | Mapping) or not isinstance(refreshers, Iterable):
        raise OptionTypeError(
            "RefreshMiddleware",
            "refreshers",
            f"refreshers must be a list of Refresher (got {type(refreshers).__name__})",
        )
    checked = tuple(refreshers)
    seen: set[str] = set()
    for refresher in checked:
        if isinstance(refresher, RefresherFamily):
            raise OptionTypeError(
                "RefreshMiddleware",
                "refreshers",
                f"RefresherFamily {refresher.name!r} goes in families=[...], not in refreshers: "
                "a family publishes no value per request, handle.get(name, key) reads it",
            )
        if isinstance(refresher, Derived):
            raise OptionTypeError(
                "RefreshMiddleware",
                "refreshers",
                f"Derived {refresher.name!r} goes in derived=[...], not in refreshers=[...]",
            )
        if not isinstance(refresher, Refresher):
            raise OptionTypeError(
                "RefreshMiddleware",
                "refreshers",
                f"refreshers must be Refresher objects (got {type(refresher).__name__}: {refresher!r:.80})",
            )
        if refresher.name in seen:
            raise OptionValueError(
                "RefreshMiddleware",
                "refreshers",
                f"two refreshers are named {refresher.name!r}; names must be unique",
            )
        seen.add(refresher.name)
    return checked


def _checked_families(
    families: Iterable[RefresherFamily], refreshers: tuple[Refresher, ...]
) -> tuple[RefresherFamily, ...]:
    if isinstance(families, RefresherFamily):
        raise OptionTypeError(
            "RefreshMiddleware",
            "families",
            "families must be a list of RefresherFamily; wrap a single one in "
            f"a list: families=[RefresherFamily({families.name!r}, ...)]",
        )
    if isinstance(families, str | bytes | Mapping) or not isinstance(families, Iterable):
        raise OptionTypeError(
            "RefreshMiddleware",
            "families",
            f"families must be a list of RefresherFamily (got {type(families).__name__})",
        )
    checked = tuple(families)
    seen = {refresher.name for refresher in refreshers}
    for family in checked:
        if not isinstance(family, RefresherFamily):
            raise OptionTypeError(
                "RefreshMiddleware",
                "families",
                f"families must be RefresherFamily objects (got {type(family).__name__}: {family!r:.80})",
            )
        if family.name in seen:
            raise OptionValueError(
                "RefreshMiddleware",
                "families",
                f"{family.name!r} names two refreshers or families; names must be unique "
                "(status() is keyed by them)",
            )
        seen.add(family.name)
    return checked


def _checked_derived(
    derived: Iterable[Derived], refreshers: tuple[Refresher, ...], families: tuple[RefresherFamily, ...]
) -> tuple[Derived, ...]:
    if isinstance(derived, Derived):
        raise OptionTypeError(
            "RefreshMiddleware",
            "derived",
            "derived must be a list of Derived; wrap a single one in a list: "
            f"derived=[Derived({derived.name!r}, ...)]",
        )
    if isinstance(derived, str | bytes | Mapping) or not isinstance(derived, Iterable):
        raise OptionTypeError(
            "RefreshMiddleware",
            "derived",
            f"derived must be a list of Derived (got {type(derived).__name__})",
        )
    checked = tuple(derived)
    # A name clash, an unknown input, a family as an input or a cycle fails here, at import.
    order(checked, [spec.name for spec in refreshers], [family.name for family in families])
    return checked
