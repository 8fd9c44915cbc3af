"""NATSCoordinator on a real nats-server with JetStream: the shared contract and what is NATS's own."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_refresh import CoordinatorUnavailable
from asgi_refresh._cluster.base import BadRecord, Change, Coordinator
from asgi_refresh._cluster.contract import CoordinatorContract, counters, next_change
from asgi_refresh._cluster.nats import (
    NATSCoordinator,
    _counter,
    _entry_head,
    _Message,
    _parse_change,
    _parse_lease,
    _parse_time,
    _safe_url,
    _secrets_in,
)
from asgi_refresh._cluster.records import parse_head
from tests.nats_server import NATSServer
from tests.server_process import free_port

T = TypeVar("T")

pytestmark = pytest.mark.anyio


class TestNATSCoordinator(CoordinatorContract):
    """NATS passes the contract that every backend must pass."""

    # An acquire or a store is a few JetStream round trips through the client's own
    # thread: on a loaded CI machine they can take a good part of the default 0.3 s lease.
    lease_ttl = 1.0

    @pytest.fixture
    def new_coordinator(self, nats_url: str) -> Callable[[str], Coordinator]:
        return lambda prefix: NATSCoordinator(nats_url, prefix=prefix)  # the default bucket, shared


# -- helpers -------------------------------------------------------------------------


def _raw(url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action`` with a JetStream context of a plain nats-py client, on an asyncio loop of its own.

    What another program (or an attacker) with access to the server writes: called
    through a worker thread, it works the same under trio.
    """
    import nats

    async def main() -> T:
        async def quiet(exc: Exception) -> None:
            pass

        client = await nats.connect(url, error_cb=quiet, allow_reconnect=False)
        try:
            return await action(client.jetstream())
        finally:
            await client.close()

    return asyncio.run(main())


async def put_raw(url: str, key: str, value: bytes, bucket: str = "asgi_refresh") -> None:
    """Write ``value`` under ``key`` of ``bucket`` as any client could, bypassing the coordinator."""

    async def put(js: Any) -> None:
        kv = await js.key_value(bucket)
        await kv.put(key, value)

    await anyio.to_thread.run_sync(_raw, url, put)


def nats_threads() -> list[threading.Thread]:
    """The threads a NATSCoordinator starts that are still alive."""
    return [thread for thread in threading.enumerate() if thread.name.startswith("asgi_refresh:nats")]


def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# -- arguments, credentials, the missing extra ---------------------------------------------


def test_nats_arguments_are_checked_and_credentials_never_shown() -> None:
    """Bad servers, bucket or prefix are refused naming the option; repr and backend hide user, password and token."""
    with pytest.raises(ValueError, match="servers must be a NATS URL"):
        NATSCoordinator("")
    with pytest.raises(ValueError, match="servers must be a NATS URL"):
        NATSCoordinator([])
    with pytest.raises(ValueError, match="bucket must be 1 to 64 letters"):
        NATSCoordinator("nats://127.0.0.1:4222", bucket="a.b")
    with pytest.raises(ValueError, match="prefix must be dot-separated words"):
        NATSCoordinator("nats://127.0.0.1:4222", prefix="my:app")
    with pytest.raises(ValueError, match=r"NATSCoordinator: timeout must be > 0 \(got 0\)"):
        NATSCoordinator("nats://127.0.0.1:4222", timeout=0)
    coordinator = NATSCoordinator(
        ["nats://ada:s3cretpw@hub:4222", "nats://s3crettoken@spoke:4222", "tls://plain:4443"], prefix="shop"
    )
    shown = repr(coordinator) + coordinator.backend
    assert "s3cret" not in shown
    assert "ada" not in shown
    assert repr(coordinator) == (
        "NATSCoordinator('nats://***@hub:4222, nats://***@spoke:4222, tls://plain:4443', "
        "bucket='asgi_refresh', prefix='shop')"
    )


def test_nats_coordinator_without_nats_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nats-py, making a NATSCoordinator says which extra to install."""
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-refresh\[nats\]'"):
        NATSCoordinator("nats://127.0.0.1:4222")


def test_importing_the_package_does_not_import_nats() -> None:
    """nats-py is loaded only when a NATSCoordinator is made."""
    code = "import asgi_refresh, sys; asgi_refresh.NATSCoordinator; assert 'nats' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_file_makes_a_nats_coordinator(tmp_path: Path) -> None:
    """``backend = "nats"`` with ``servers`` (one URL or a list), ``bucket`` and ``prefix``; mistakes name their key."""
    from asgi_refresh import RefreshMiddleware
    from asgi_refresh._config import ConfigError, load_config

    base = '[refreshers.names]\nsource = "python"\ntarget = "tests.test_config:load_names"\nevery = "1h"\n'
    config_file = tmp_path / "refresh.toml"
    config_file.write_text(
        base
        + '[middleware.coordinator]\nbackend = "nats"\nservers = ["nats://${NATS_AUTH}@127.0.0.1:4222"]\n'
        'bucket = "shop_refresh"\nprefix = "shop"\ntimeout = "1s"\n'
    )
    config = load_config(config_file, {"NATS_AUTH": "s3crettoken"}, middleware=RefreshMiddleware)
    coordinator = config.middleware["coordinator"]
    assert isinstance(coordinator, NATSCoordinator)
    assert (coordinator.bucket, coordinator.prefix, coordinator.timeout) == ("shop_refresh", "shop", 1.0)
    assert coordinator.servers == ["nats://s3crettoken@127.0.0.1:4222"]
    assert "s3cret" not in repr(coordinator)
    config_file.write_text(
        base + '[middleware.coordinator]\nbackend = "nats"\nservers = "nats://h"\nbucket = "a b"\n'
    )
    with pytest.raises(ConfigError, match=r"middleware\.coordinator\.bucket: must be 1 to 64 letters"):
        load_config(config_file, {}, middleware=RefreshMiddleware)


# -- a real server -------------------------------------------------------------------


async def test_nats_credentials_never_appear_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A server that cannot be reached is reported by host and port only, with nothing logged that holds a secret."""
    port = free_port()  # nothing listens there
    caplog.set_level(logging.DEBUG)
    for url in (f"nats://ada:s3cretpw@127.0.0.1:{port}", f"nats://s3crettoken@127.0.0.1:{port}"):
        async with NATSCoordinator(url, prefix=unique(), timeout=0.5) as coordinator:
            with pytest.raises(CoordinatorUnavailable) as caught:
                await coordinator.acquire("names", 10)
            message = str(caught.value)
            assert message.startswith(f"NATS at nats://***@127.0.0.1:{port}: cannot connect")
            assert "s3cret" not in message
            assert "ada" not in message
    assert "s3cret" not in caplog.text


async def test_nats_garbage_is_a_bad_record_of_that_name_only(nats_url: str) -> None:
    """Whatever another client writes into our keys is a BadRecord for that name, or taken over; foreign keys are ignored."""
    prefix = unique()
    bad_entries = [
        b"not ours at all",
        b"asgi-refresh/1\n{not json\nvalue",
        b"asgi-refresh/1\n[1,2]\nvalue",
        b'asgi-refresh/1\n{"version":"x","meta":"{}","stored_by":"me","answered":0}\nvalue',
        b'asgi-refresh/1\n{"version":1,"meta":"[]","stored_by":"me","answered":0}\nvalue',
        b'asgi-refresh/1\n{"version":1,"meta":"{}","stored_by":"me","answered":0}\n'
        + b"x" * 2000,  # > max_bytes
        b"asgi-refresh/1\n" + b" " * 70_000,  # no end to the first line within its bound
    ]
    async with (
        NATSCoordinator(nats_url, prefix=prefix, max_bytes=1000) as first,
        NATSCoordinator(nats_url, prefix=prefix, max_bytes=1000) as second,
    ):
        assert await first.acquire("rates", 10)
        assert await first.store("rates", b"fine", {}) == 1
        async with second.subscribe() as changes:
            for foreign in ("other.names", "entry.not-an-identifier", "entry.a.b", "lease"):
                await put_raw(nats_url, f"{prefix}.{foreign}", b"x")
            await put_raw(nats_url, f"{prefix}x.entry.names", b"x")  # another prefix
            for garbage in bad_entries:
                await put_raw(nats_url, f"{prefix}.entry.names", garbage)
                with pytest.raises(BadRecord):
                    await second.load("names")
                loaded = await second.load("rates")
                assert loaded is not None
                assert loaded.data == b"fine"
            # Our entry key with a foreign message (no number header) is no change either.
            with anyio.move_on_after(0.3) as quiet:
                await anext(changes)
            assert quiet.cancelled_caught
            polled = await second.poll(["names", "rates"], 10)
            assert isinstance(polled["names"].head, BadRecord) or counters(polled["names"].head)[0] == 1
            assert counters(polled["rates"].head) == (1, 0, 0)
            await put_raw(nats_url, f"{prefix}.entry.names", bad_entries[0])
            assert isinstance((await second.poll(["names"], 10))["names"].head, BadRecord)
            await put_raw(nats_url, f"{prefix}.request.prices", b"-1")
            with pytest.raises(BadRecord, match="requested"):
                await second.head("prices")
            assert await second.request_refresh("prices") == 1  # a damaged counter starts again
            assert await next_change(changes) == Change("refresh_requested", "prices", 1)
            # A damaged lease is taken over; a damaged entry and counter are replaced by a store and a request.
            await put_raw(nats_url, f"{prefix}.lease.names", b'{"owner": 5}')
            assert await first.acquire("names", 10)
            assert await first.store("names", b"repaired", {}) == 1
            assert await next_change(changes) == Change("stored", "names", 1)
            assert await second.request_refresh("names") == 1
            assert await next_change(changes) == Change("refresh_requested", "names", 1)
            stored = await second.load("names")
            assert stored is not None
            assert stored.data == b"repaired"


async def test_nats_stopped_is_unavailable_at_once_and_recovers(stoppable_nats: NATSServer) -> None:
    """With the server stopped, every operation fails quickly and a subscription ends; restarted, all works again."""
    # A timeout far above "at once": an operation that waited for it, or for the
    # client's reconnecting, would show.
    async with NATSCoordinator(stoppable_nats.url, prefix=unique(), timeout=5) as coordinator:
        assert await coordinator.acquire("names", 30)
        assert await coordinator.store("names", b"kept", {}) == 1
        async with coordinator.subscribe() as changes:
            stoppable_nats.stop()
            with pytest.raises(CoordinatorUnavailable, match="connection lost"):
                await next_change(changes)
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: coordinator.acquire("names", 30),
            lambda: coordinator.head("names"),
            lambda: coordinator.load("names"),
            lambda: coordinator.store("names", b"1", {}),
            lambda: coordinator.request_refresh("names"),
            lambda: coordinator.poll(["names"], 30),
        ]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(CoordinatorUnavailable, match=r"NATS at nats://127\.0\.0\.1:\d+: "):
                await operation()
            took = time.monotonic() - started
            assert took < coordinator.timeout / 2, (
                f"{took:.2f} s: not the timeout, nor the client's reconnect wait"
            )
        with pytest.raises(CoordinatorUnavailable):
            async with coordinator.subscribe():
                pass  # pragma: no cover
        stoppable_nats.start()
        with anyio.fail_after(15):
            while True:  # the client reconnects on its own, within its reconnect wait
                try:
                    held = await coordinator.acquire("names", 30)
                    break
                except CoordinatorUnavailable:
                    await anyio.sleep(0.1)
        assert held, "JetStream keeps its data on disk: the lease is still ours"
        stored = await coordinator.load("names")
        assert stored is not None
        assert stored.data == b"kept"
        async with coordinator.subscribe() as changes:
            assert await coordinator.store("names", b"new", {}) == 2
            assert await next_change(changes) == Change("stored", "names", 2)


async def test_nats_that_never_answers_times_out_and_close_leaves_nothing_behind() -> None:
    """A server that accepts but never greets is CoordinatorUnavailable within the timeout; close ends the thread and loop."""
    before = set(nats_threads())
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listener.serve, _ignore)
            coordinator = NATSCoordinator(f"nats://127.0.0.1:{port}", timeout=0.3)
            async with coordinator:
                thread = coordinator._thread
                assert thread is not None
                started = time.monotonic()
                with pytest.raises(CoordinatorUnavailable, match=r"cannot connect|no answer"):
                    await coordinator.head("names")
                assert time.monotonic() - started < 1.0
            task_group.cancel_scope.cancel()
    assert thread is not None
    assert not thread.alive
    assert thread.loop.is_closed()
    assert set(nats_threads()) <= before
    gc.collect()  # an unclosed socket or transport would warn now (warnings are errors)


async def test_nats_close_leaves_no_thread_loop_or_socket(nats_url: str) -> None:
    """After a lifespan with a subscription, close stops the client's loop and thread and closes its socket."""
    before = set(nats_threads())
    coordinator = NATSCoordinator(nats_url, prefix=unique())
    for _ in range(2):  # reopened: a new lifespan, a new loop
        async with coordinator:
            thread = coordinator._thread
            assert thread is not None
            assert await coordinator.acquire("names", 10)
            async with coordinator.subscribe() as changes:
                assert await coordinator.store("names", b"1", {}) is not None
                await next_change(changes)
        assert not thread.alive
        assert thread.loop.is_closed()
        assert set(nats_threads()) <= before
    gc.collect()


async def test_nats_processes_racing_to_make_the_bucket_all_succeed(nats_url: str) -> None:
    """Several processes' first calls on a missing bucket make it once, and all go on; one holds the lease."""
    bucket, prefix = unique(), unique()
    coordinators = [NATSCoordinator(nats_url, bucket=bucket, prefix=prefix) for _ in range(4)]
    held: list[bool] = []
    async with contextlib.AsyncExitStack() as stack:
        for coordinator in coordinators:
            await stack.enter_async_context(coordinator)

        async def take(coordinator: NATSCoordinator) -> None:
            held.append(await coordinator.acquire("names", 10))

        async with anyio.create_task_group() as task_group:
            for coordinator in coordinators:
                task_group.start_soon(take, coordinator)
    assert sorted(held) == [False, False, False, True]

    async def drop(js: Any) -> None:
        await js.delete_key_value(bucket)

    await anyio.to_thread.run_sync(_raw, nats_url, drop)


async def _ignore(stream: anyio.abc.SocketStream) -> None:
    """Accept a connection and say nothing."""
    async with stream:
        await anyio.sleep_forever()


async def test_nats_the_server_refuses_a_store_whose_lease_changed_after_it_was_read(nats_url: str) -> None:
    """The fence is the server's: a holder that read its lease just before losing it cannot store over the new holder."""
    prefix = unique()
    async with (
        NATSCoordinator(nats_url, prefix=prefix) as stale,
        NATSCoordinator(nats_url, prefix=prefix) as taker,
    ):
        assert await stale.acquire("names", 0.3)
        subject = stale._subject("lease", "names")
        seen = await stale._call(lambda: stale._get(subject))  # what the stale holder read
        await anyio.sleep(0.4)
        assert await taker.acquire("names", 10)
        assert await taker.store("names", b"new", {}) == 1
        real_get = stale._get
        reads: list[str] = []

        async def first_read_is_stale(wanted: str) -> Any:
            if wanted == subject and not reads:
                reads.append(wanted)
                return seen  # as if read just before the takeover: ours, and not expired
            return await real_get(wanted)

        stale._get = first_read_is_stale  # type: ignore[method-assign,assignment]
        stale_now = stale._server_now

        async def before_expiry() -> float | None:
            return seen.time if seen is not None else None

        stale._server_now = before_expiry  # type: ignore[method-assign]
        try:
            assert await stale.store("names", b"stale", {}) is None
        finally:
            stale._server_now = stale_now  # type: ignore[method-assign]
        assert reads, "the stale read was used"
        loaded = await taker.load("names")
        assert loaded is not None
        assert (loaded.version, loaded.data) == (1, b"new")


async def test_nats_a_value_over_the_server_s_max_payload_is_a_value_error(nats_url: str) -> None:
    """A value the server cannot take (over its max_payload, 1 MiB by default) is a ValueError, not an outage."""
    async with NATSCoordinator(nats_url, prefix=unique()) as coordinator:
        assert await coordinator.acquire("names", 10)
        with pytest.raises(ValueError, match="max_payload"):
            await coordinator.store("names", b"x" * (2 * 1024 * 1024), {})
        assert await coordinator.store("names", b"small", {}) == 1


async def test_nats_without_jetstream_says_so(nats_server: NATSServer, tmp_path: Path) -> None:
    """A server started without -js is CoordinatorUnavailable with what is missing, at once."""
    plain = NATSServer(nats_server.binary, tmp_path, jetstream=False)
    plain.start()
    try:
        async with NATSCoordinator(plain.url, prefix=unique(), timeout=1) as coordinator:
            with pytest.raises(CoordinatorUnavailable, match=r"JetStream is not enabled on the server"):
                await coordinator.acquire("names", 10)
    finally:
        plain.stop()


async def test_nats_a_server_that_stops_answering_is_unavailable_within_the_timeout() -> None:
    """Connected, then no answer to any request: the call is abandoned (cancelled on the loop) at the timeout."""
    info = b'INFO {"server_id":"mute","version":"2.11.0","proto":1,"headers":true,"max_payload":1048576}\r\n'

    async def mute(stream: anyio.abc.SocketStream) -> None:
        """Greets and answers PING (the client's handshake), then ignores every request."""
        async with stream:
            await stream.send(info)
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    if b"PING\r\n" in await stream.receive():
                        await stream.send(b"PONG\r\n")

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(listener.serve, mute)
            # 1 s: the handshake (0.9 of it at most) succeeds even on a loaded machine.
            async with NATSCoordinator(f"nats://127.0.0.1:{port}", timeout=1) as coordinator:
                started = time.monotonic()
                with pytest.raises(CoordinatorUnavailable, match=r"no answer within 1s"):
                    await coordinator.head("names")
                assert time.monotonic() - started < 2.0
            task_group.cancel_scope.cancel()
    gc.collect()


@given(st.binary(max_size=300) | st.from_regex(rb'\{"owner": ?"[a-z:0-9]{0,20}", ?"ttl": ?-?[0-9e.]{1,8}\}'))
def test_a_lease_key_holds_a_lease_or_is_taken_over(data: bytes) -> None:
    """Whatever a lease key holds is a lease (an owner and a positive finite ttl) or nothing: never an error."""
    lease = _parse_lease(_Message(1, data, 0.0))
    assert lease is None or (isinstance(lease.owner, str) and 0 < lease.ttl < float("inf"))


@given(st.binary(max_size=400).map(lambda tail: b"asgi-refresh/1\n" + tail) | st.binary(max_size=100))
def test_an_entry_parses_or_is_a_bad_record(data: bytes) -> None:
    """An entry's first line is JSON fields of ours, or a BadRecord; never another exception."""
    message = _Message(1, data, 1.0)
    try:
        fields = _entry_head(message)
        parse_head(fields.get("version"), None, fields.get("answered"))
    except BadRecord:
        pass
    assert _entry_head(None) == {}
    assert _entry_head(_Message(1, None, 1.0)) == {}


@given(
    st.text(max_size=60),
    st.dictionaries(st.sampled_from(["Asgi-Refresh-Number", "KV-Operation", "Other"]), st.text(max_size=20)),
)
def test_a_watched_message_is_a_change_of_ours_or_ignored(subject: str, headers: dict[str, str]) -> None:
    """Any subject and headers: a Change of an identifier name with a valid number, or None."""
    change = _parse_change(f"$KV.b.p.{subject}", headers, "$KV.b.p.")
    assert change is None or (change.name.isidentifier() and change.number >= 0)
    assert _parse_change(None, headers, "$KV.b.p.") is None
    assert _parse_change("$KV.b.p.entry.names", "not headers", "$KV.b.p.") is None


def test_the_server_s_clock_and_urls_parse_or_are_refused() -> None:
    """Go's RFC 3339 times with nanoseconds; anything else is None. A URL that cannot be parsed shows nothing of it."""
    assert _parse_time("2026-12-03T02:59:35.607468904Z") == pytest.approx(1796266775.607468904)
    assert _parse_time("2026-12-03T03:59:35+01:00") == pytest.approx(1796266775.0)
    assert _parse_time("yesterday") is None
    assert _parse_time(5) is None
    assert _safe_url("nats://ada:pw@[::1") == "(a NATS URL that cannot be parsed)"
    assert _safe_url("127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert _secrets_in("nats://ada:s3cret@[::1") == []
    with pytest.raises(BadRecord, match="requested is 40 bytes"):
        _counter(_Message(1, b"1" * 40, 0.0))


async def test_nats_a_bucket_deleted_under_a_running_app_is_made_again(nats_url: str) -> None:
    """An operator deletes the bucket: the next call makes it again and goes on (the data is gone)."""
    bucket = unique()
    async with NATSCoordinator(nats_url, bucket=bucket, prefix=unique()) as coordinator:
        assert await coordinator.acquire("names", 10)
        assert await coordinator.store("names", b"1", {}) == 1

        async def drop(js: Any) -> None:
            await js.delete_key_value(bucket)

        await anyio.to_thread.run_sync(_raw, nats_url, drop)
        assert await coordinator.acquire("names", 10)
        assert await coordinator.load("names") is None
        assert await coordinator.store("names", b"2", {}) == 1
        await anyio.to_thread.run_sync(_raw, nats_url, drop)


async def test_nats_credentials_never_appear_in_status(caplog: pytest.LogCaptureFixture) -> None:
    """A running app whose NATS is unreachable shows the error in status() and logs it, without the password."""
    from asgi_lifespan import LifespanManager

    from asgi_refresh import Refresher, RefreshMiddleware

    port = free_port()

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        pass  # pragma: no cover - no request is made

    def load_names() -> list[str]:
        return ["ada"]

    caplog.set_level(logging.DEBUG)
    coordinator = NATSCoordinator(f"nats://ada:s3cretpw@127.0.0.1:{port}", prefix=unique(), timeout=0.3)
    middleware = RefreshMiddleware(
        inner, refreshers=[Refresher("names", load_names, every="1h")], coordinator=coordinator
    )
    async with LifespanManager(middleware):
        status = json.dumps(middleware.handle.status())
        assert middleware.handle.value("names") == ["ada"]
    assert "NATS at nats://***@127.0.0.1" in status
    assert "s3cret" not in status
    assert "NATS at nats://***@127.0.0.1" in caplog.text
    assert "s3cret" not in caplog.text
