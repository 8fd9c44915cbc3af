"""Last known good across real processes: quarantine, accept/reject, pin, rollback and unpin.

Each server runs `tests/cluster_app.py` (its ``GUARD`` and ``KEEP_VERSIONS``
options) on 127.0.0.1, polls one document of the demo's counting upstream and
coordinates through the session's Redis server or an SQLite file, as in
`tests/test_cluster.py`, whose machinery this reuses. The tests read what each
process publishes (``GET /value``) and its status (``GET /_refresh``), and send
the operator's actions (``POST /_refresh/data/accept`` ...) to a process that
does not hold the lease: the lease holder must carry them out for everyone. At
the end, in-process: the one-process form of what the clusters showed (a "not
modified" fetch while pinned and after unpin), and the admin routes' token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from asgi_refresh import Fetched, RedisCoordinator, Refresher, RefreshMiddleware, max_shrink
from asgi_refresh._cluster.coordination import _CONTROL as CONTROL
from asgi_refresh.demo.upstream import Upstream, serve

from .helpers import ScriptedApp
from .redis_server import RedisServer
from .test_cluster import START_TIMEOUT, Node, assert_clean, cluster, redis_env, until, values

EVERY = "0.3s"  # the lease holder fetches this often: a held value is fetched again and again
SETTLE = 10.0  # seconds a cluster gets to converge on what a test waits for


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    """The counting upstream on 127.0.0.1, and its base URL."""
    documents = Upstream()
    with serve(documents) as url:
        yield documents, url


def backend_env(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, url: str, **more: str
) -> dict[str, str]:
    """The environment of processes polling ``url``, coordinated through ``backend``."""
    timing = {"EVERY": EVERY, "LEASE_TTL": "3s", **more}
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return redis_env(server, url, **timing)
    return {"BACKEND": "sqlite", "DB_PATH": str(tmp_path / "refresh.db"), "UPSTREAM_URL": url, **timing}


def status(node: Node) -> dict[str, Any]:
    """The ``data`` refresher's status entry in the process ``node`` is."""
    page = httpx.get(f"{node.url}/_refresh", timeout=5).json()
    entry: dict[str, Any] = page["refreshers"]["data"]
    return entry


def statuses(nodes: list[Node]) -> list[dict[str, Any]]:
    return [status(node) for node in nodes]


def act(node: Node, action: str, **params: str) -> httpx.Response:
    """An operator's action on ``data``, sent to ``node``'s admin endpoint."""
    return httpx.post(f"{node.url}/_refresh/data/{action}", params=params, timeout=30)


def split(nodes: list[Node]) -> tuple[Node, list[Node]]:
    """The lease holder and the others (each process's role as its status reports it).

    Read until one process leads and the others follow: with several processes on one
    SQLite file, a call past the coordinator's timeout (1 s) on a loaded machine makes
    a process "standalone" until its next lease poll.
    """
    roles: list[str] = []

    def settled() -> bool:
        roles[:] = [status(node)["coordination"]["role"] for node in nodes]
        return sorted(roles) == ["follower"] * (len(nodes) - 1) + ["leader"]

    until(settled, SETTLE, lambda: roles)
    leader = nodes[roles.index("leader")]
    return leader, [node for node in nodes if node is not leader]


class Watch:
    """Polls what every process publishes; remembers each sighting of a value none may publish."""

    def __init__(self, nodes: list[Node], forbidden: Any) -> None:
        self.nodes, self.forbidden = nodes, forbidden
        self.published: list[tuple[int, Any]] = []

    def check(self) -> bool:
        """One poll of every process; True (to use it in `until`)."""
        for index, value in enumerate(values(self.nodes)):
            if value == self.forbidden:
                self.published.append((index, value))
        return True

    def during(self, seconds: float) -> None:
        """Poll for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(0.05)


def quarantined(nodes: list[Node], *, rejected: bool = False) -> bool:
    """Whether every process's status shows the value held back (and rejected, if asked)."""
    held = [entry["quarantined"] for entry in statuses(nodes)]
    return all(each is not None and each["rejected"] is rejected for each in held)


# -- quarantine: the lease holder guards, nobody publishes, an operator decides ----------


@pytest.mark.cluster
@pytest.mark.servers
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_a_value_the_lease_holder_holds_back_is_published_nowhere_until_accepted_on_a_follower(
    backend: str, upstream: tuple[Upstream, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """3 processes, max_shrink(0.5): a shrunk list is published by none, each shows it held; accept on a follower publishes it on all; a rejected one stays unpublished."""
    documents, url = upstream
    full, shrunk, empty = list(range(10)), [0, 1], list[int]()
    documents.set("/data", full)
    env = backend_env(backend, request, tmp_path, f"{url}/data", GUARD="max_shrink:0.5")
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [full] * 3, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        watch = Watch(nodes, shrunk)
        until(lambda: watch.check() and quarantined(nodes), SETTLE, lambda: statuses(nodes))
        fetches = documents.requests["/data"]
        watch.during(1.0)  # the holder fetches it again every 0.3 s: still held, everywhere
        assert documents.requests["/data"] - fetches >= 2, "the lease holder kept fetching"
        assert not watch.published, f"a process published the held value: {watch.published[:5]}"
        assert values(nodes) == [full] * 3
        for entry in statuses(nodes):
            held = entry["quarantined"]
            assert "max_shrink" in held["reason"], held
            assert (held["summary"]["old_size"], held["summary"]["new_size"]) == (10, 2), held
            assert entry["last_error"] is None
        leader, followers = split(nodes)

        response = act(followers[0], "accept")
        assert response.status_code == 200, response.text
        assert response.json()["status"]["quarantined"] is None
        assert followers[0].value() == shrunk, "the answer comes once the follower serves it"
        until(lambda: values(nodes) == [shrunk] * 3, SETTLE, lambda: values(nodes))
        until(
            lambda: [entry["quarantined"] for entry in statuses(nodes)] == [None] * 3,
            SETTLE,
            lambda: statuses(nodes),
        )

        documents.set("/data", empty)
        watch = Watch(nodes, empty)
        until(lambda: watch.check() and quarantined(nodes), SETTLE, lambda: statuses(nodes))
        response = act(followers[1], "reject")
        assert response.status_code == 200, response.text
        until(lambda: watch.check() and quarantined(nodes, rejected=True), SETTLE, lambda: statuses(nodes))
        watch.during(1.0)
        assert not watch.published, f"a process published the rejected value: {watch.published[:5]}"
        assert values(nodes) == [shrunk] * 3

        # The upstream is back to the published value: the quarantine ends; nothing left to accept.
        documents.set("/data", shrunk)
        until(
            lambda: [entry["quarantined"] for entry in statuses(nodes)] == [None] * 3,
            SETTLE,
            lambda: statuses(nodes),
        )
        response = act(followers[0], "accept")
        assert response.status_code == 409, response.text
        assert "holds no value back" in response.json()["error"]
        assert split(nodes)[0] is leader, "the same process held the lease throughout"
        assert_clean(nodes)


@pytest.mark.cluster
@pytest.mark.servers
def test_a_value_held_back_when_the_lease_holder_dies_can_still_be_accepted_through_the_next_one(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """SIGKILL the holder of a held-back value: the next holder still holds it, and accept on a follower publishes it on both survivors."""
    documents, url = upstream
    full, shrunk = list(range(10)), [0, 1]
    documents.set("/data", full)
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="1.5s", GUARD="max_shrink:0.5")
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [full] * 3, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        watch = Watch(nodes, shrunk)
        until(lambda: watch.check() and quarantined(nodes), SETTLE, lambda: statuses(nodes))
        leader, survivors = split(nodes)
        os.kill(leader.pid, signal.SIGKILL)
        leader.process.wait(5)
        watch = Watch(survivors, shrunk)

        def led() -> bool:
            watch.check()
            return "leader" in [entry["coordination"]["role"] for entry in statuses(survivors)]

        until(led, SETTLE, lambda: statuses(survivors))
        fetches = documents.requests["/data"]
        until(
            lambda: watch.check() and documents.requests["/data"] > fetches + 1,
            SETTLE,
            "the new holder fetches",
        )
        watch.during(0.5)
        assert not watch.published, f"a survivor published the held value: {watch.published[:5]}"
        assert quarantined(survivors), statuses(survivors)
        _, (follower,) = split(survivors)

        response = act(follower, "accept")
        assert response.status_code == 200, response.text
        until(lambda: values(survivors) == [shrunk] * 2, SETTLE, lambda: values(survivors))
        assert [entry["quarantined"] for entry in statuses(survivors)] == [None, None]
        assert_clean(survivors)


@pytest.mark.cluster
@pytest.mark.servers
def test_a_held_back_value_whose_summary_is_long_keeps_every_process_coordinated(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """A held-back mapping that lost 45 keys of 60 emoji each (a summary far over 16 KiB as escaped JSON): followers still read the holder's record, and accept on one publishes everywhere."""
    documents, url = upstream
    full = {f"{i:02d}" + "\N{GRINNING FACE}" * 58: i for i in range(45)}
    shrunk = {f"n{i:02d}" + "\N{GRINNING FACE}" * 57: i for i in range(20)}
    documents.set("/data", full)
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="3s", GUARD="max_shrink:0.5")
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [full] * 3, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        watch = Watch(nodes, shrunk)
        until(lambda: watch.check() and quarantined(nodes), SETTLE, lambda: statuses(nodes))
        fetches, began = documents.requests["/data"], time.monotonic()
        watch.during(1.0)
        fetched, window = documents.requests["/data"] - fetches, time.monotonic() - began
        assert not watch.published, watch.published[:1]
        for entry in statuses(nodes):
            assert entry["coordination"]["error"] is None, entry["coordination"]
            assert entry["last_error"] is None, entry["last_error"]
            assert entry["quarantined"]["summary"]["keys_removed_count"] == 45
            assert len(entry["quarantined"]["summary"]["keys_removed"]) == 20
        # One fetch every 0.3 s (6 in the 1 s window on an idle machine; three processes
        # fetching would be three times that), however long a loaded machine's window is.
        every = float(EVERY.removesuffix("s"))
        assert fetched <= int(window / every) + 3, (
            f"only the lease holder fetches: {fetched} in {window:.2f} s"
        )
        _, followers = split(nodes)
        response = act(followers[0], "accept")
        assert response.status_code == 200, response.text
        until(lambda: values(nodes) == [shrunk] * 3, SETTLE, lambda: values(nodes))
        assert_clean(nodes)


@pytest.mark.cluster
@pytest.mark.servers
def test_two_actions_asked_on_two_followers_at_once_are_both_carried_out_or_refused(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """Accept on one follower and reject on another while the holder is frozen: accept is done for all (not reported done and lost); reject then finds nothing held."""
    documents, url = upstream
    full, shrunk = list(range(10)), [0, 1]
    documents.set("/data", full)
    # lease_ttl 12 s: the lease lasts 8 s and is renewed every 4 s, so that at least 4 s
    # of it are left whenever the holder is frozen, while the actions are written.
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="12s", GUARD="max_shrink:0.5")
    with cluster(3, env) as nodes:
        until(lambda: values(nodes) == [full] * 3, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        until(lambda: quarantined(nodes), SETTLE, lambda: statuses(nodes))
        leader, (first, second) = split(nodes)
        answers: dict[str, httpx.Response] = {}

        def ask(node: Node, action: str) -> threading.Thread:
            thread = threading.Thread(target=lambda: answers.__setitem__(action, act(node, action)))
            thread.start()
            return thread

        client = redis.Redis.from_url(redis_server.url)
        record = f"{env['PREFIX']}:entry:{CONTROL}data"

        def written(count: int) -> bool:
            """Whether the control record has been stored ``count`` times."""
            return int(client.hget(record, "version") or 0) >= count

        # Frozen for well under what is left of its lease (4 s or more): the holder reads
        # neither action before both are asked, and keeps the lease.
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            threads = [ask(first, "accept")]
            until(lambda: written(1), SETTLE, "the accept is written")
            threads.append(ask(second, "reject"))
            with contextlib.suppress(pytest.fail.Exception):  # it waits for the accept, if it can
                until(lambda: written(2), 0.3)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
            client.close()
        for thread in threads:
            thread.join(30)
        assert answers["accept"].status_code == 200, answers["accept"].text
        until(lambda: values(nodes) == [shrunk] * 3, SETTLE, lambda: (values(nodes), statuses(nodes)))
        assert answers["reject"].status_code in (409, 504), answers["reject"].text
        assert [entry["quarantined"] for entry in statuses(nodes)] == [None] * 3
        assert split(nodes)[0] is leader
        assert_clean(nodes)


@pytest.mark.cluster
@pytest.mark.servers
def test_a_damaged_control_record_is_replaced_by_the_next_action(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """Garbage where a refresher's control record lives: accept on a follower still reaches the holder."""
    documents, url = upstream
    full, shrunk = list(range(10)), [0, 1]
    documents.set("/data", full)
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="3s", GUARD="max_shrink:0.5")
    with cluster(2, env) as nodes:
        until(lambda: values(nodes) == [full] * 2, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        until(lambda: quarantined(nodes), SETTLE, lambda: statuses(nodes))
        _, (follower,) = split(nodes)
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.set(f"{env['PREFIX']}:entry:{CONTROL}data", "not a record")
        finally:
            client.close()
        response = act(follower, "accept")
        assert response.status_code == 200, response.text
        until(lambda: values(nodes) == [shrunk] * 2, SETTLE, lambda: values(nodes))
        assert_clean(nodes)


@pytest.mark.cluster
@pytest.mark.servers
def test_an_action_whose_notification_was_lost_long_ago_does_not_block_the_next_one(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """A control record the holder never heard of, a minute old (its asker gave up): accept on a follower replaces it and is carried out."""
    documents, url = upstream
    full, shrunk = list(range(10)), [0, 1]
    documents.set("/data", full)
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="3s", GUARD="max_shrink:0.5")
    with cluster(2, env) as nodes:
        until(lambda: values(nodes) == [full] * 2, SETTLE, lambda: values(nodes))
        documents.set("/data", shrunk)
        until(lambda: quarantined(nodes), SETTLE, lambda: statuses(nodes))
        _, (follower,) = split(nodes)
        # Written as a store writes it, without the message on the channel (lost in a reconnect).
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.hset(
                f"{env['PREFIX']}:entry:{CONTROL}data",
                mapping={
                    "version": 1,
                    "data": b"{}",
                    "meta": '{"number":1,"action":"reject","argument":null}',
                    "stored_at": f"{time.time() - 60:.6f}",
                    "stored_by": "gone:1:000000000000",
                    "requested": 0,
                    "answered": 0,
                },
            )
        finally:
            client.close()
        response = act(follower, "accept")
        assert response.status_code == 200, response.text
        until(lambda: values(nodes) == [shrunk] * 2, SETTLE, lambda: values(nodes))
        assert_clean(nodes)


# -- versions: a pin chosen on a follower holds for every process, even a new one --------


@pytest.mark.cluster
@pytest.mark.servers
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_a_version_pinned_on_a_follower_is_served_by_every_process_until_unpinned(
    backend: str, upstream: tuple[Upstream, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """keep_versions=5 on 3 processes: pin on a follower holds everywhere while the upstream moves on, a 4th process starts pinned, rollback goes one back, unpin follows the upstream."""
    documents, url = upstream
    documents.set("/data", {"n": 1})
    env = backend_env(backend, request, tmp_path, f"{url}/data", KEEP_VERSIONS="5")
    with cluster(3, env) as nodes:
        for n in range(1, 5):
            documents.set("/data", {"n": n})
            until(lambda: values(nodes) == [{"n": n}] * 3, SETTLE, lambda: values(nodes))  # noqa: B023
        leader, followers = split(nodes)
        until(lambda: len({entry["version"] for entry in statuses(nodes)}) == 1, 5, lambda: statuses(nodes))
        kept = status(leader)["versions"]
        assert [int(each["id"].split("-")[0]) for each in kept] == [4, 3, 2, 1], kept
        ids = {n: each["id"] for n, each in zip(range(4, 0, -1), kept, strict=True)}

        response = act(followers[0], "pin", version=ids[2])
        assert response.status_code == 200, response.text
        assert response.json()["status"]["pin"] == ids[2]
        assert followers[0].value() == {"n": 2}
        until(lambda: values(nodes) == [{"n": 2}] * 3, SETTLE, lambda: values(nodes))
        until(
            lambda: [entry["pin"] for entry in statuses(nodes)] == [ids[2]] * 3,
            SETTLE,
            lambda: statuses(nodes),
        )
        listed = [[each["id"] for each in entry["versions"]] for entry in statuses(nodes)]
        assert listed == [[ids[n] for n in range(4, 0, -1)]] * 3, "every process lists the same versions"
        response = act(followers[1], "pin", version="99")  # the holder keeps no such version: it says so
        assert response.status_code == 409, response.text
        assert "keeps no version '99'" in response.json()["error"]

        documents.set("/data", {"n": 5})
        watch = Watch(nodes, {"n": 5})
        pinned_digest = ids[2].split("-")[1]

        def upstream_moved() -> bool:
            seen = status(leader)["upstream"]
            return seen is not None and seen["digest"] not in (None, pinned_digest)

        until(lambda: watch.check() and upstream_moved(), SETTLE, lambda: status(leader))
        watch.during(1.0)
        assert not watch.published, f"a pinned process published the upstream's value: {watch.published}"
        for entry in statuses(nodes):
            assert (entry["pin"], entry["origin"]) == (ids[2], "pinned"), entry

        late = Node(env)
        try:
            until(late.ready, START_TIMEOUT, lambda: late.output)
            everyone = [*nodes, late]
            until(lambda: late.value() == {"n": 2}, SETTLE, lambda: (late.value(), status(late)))
            assert status(late)["pin"] == ids[2]
            assert status(late)["coordination"]["role"] == "follower"

            response = act(late, "rollback")
            assert response.status_code == 200, response.text
            assert response.json()["status"]["pin"] == ids[1]
            until(lambda: values(everyone) == [{"n": 1}] * 4, SETTLE, lambda: values(everyone))
            until(
                lambda: [entry["pin"] for entry in statuses(everyone)] == [ids[1]] * 4,
                SETTLE,
                lambda: statuses(everyone),
            )

            response = act(followers[1], "unpin")
            assert response.status_code == 200, response.text
            until(lambda: values(everyone) == [{"n": 5}] * 4, SETTLE, lambda: values(everyone))
            until(
                lambda: [entry["pin"] for entry in statuses(everyone)] == [None] * 4,
                SETTLE,
                lambda: statuses(everyone),
            )
            documents.set("/data", {"n": 6})
            until(lambda: values(everyone) == [{"n": 6}] * 4, SETTLE, lambda: values(everyone))
            assert split(everyone)[0] is leader
        finally:
            late.stop()
        assert_clean([*nodes, late])


@pytest.mark.cluster
@pytest.mark.servers
def test_an_unpin_that_cannot_reach_the_lease_holder_leaves_the_follower_running(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """Unpin on a follower while another holds its control record: the follower logs it and keeps running; a later unpin works."""
    documents, url = upstream
    documents.set("/data", {"n": 1})
    env = redis_env(redis_server, f"{url}/data", EVERY=EVERY, LEASE_TTL="3s", KEEP_VERSIONS="5")
    with cluster(2, env) as nodes:
        until(lambda: values(nodes) == [{"n": 1}] * 2, SETTLE, lambda: values(nodes))
        documents.set("/data", {"n": 2})
        until(lambda: values(nodes) == [{"n": 2}] * 2, SETTLE, lambda: values(nodes))
        _, (follower,) = split(nodes)
        assert act(follower, "pin", version="1").status_code == 200
        until(lambda: values(nodes) == [{"n": 1}] * 2, SETTLE, lambda: values(nodes))
        documents.set("/data", {"n": 3})
        # Another process writes the control record (and died doing it): its lease is taken.
        other = RedisCoordinator(redis_server.url, prefix=env["PREFIX"])
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(other.open)
            try:
                assert portal.call(other.acquire, CONTROL + "data", 30.0)
                response = act(follower, "unpin")
                assert response.status_code == 200, response.text  # unpin starts; it does not wait
                until(lambda: "could not unpin" in follower.output, SETTLE, lambda: follower.output)
            finally:
                portal.call(other.close)
        assert values(nodes) == [{"n": 1}] * 2, "still pinned: the unpin did not get through"
        assert [entry["coordination"]["role"] for entry in statuses(nodes)].count("leader") == 1
        response = act(follower, "unpin")
        assert response.status_code == 200, response.text
        until(lambda: values(nodes) == [{"n": 3}] * 2, SETTLE, lambda: values(nodes))
        documents.set("/data", {"n": 4})
        until(lambda: values(nodes) == [{"n": 4}] * 2, SETTLE, lambda: values(nodes))
        assert_clean(nodes)


# -- what the clusters above showed, on one process: "not modified" is about the source ----


def _answers(*answers: Any) -> Any:
    """A fetch that returns ``answers`` one after the other."""
    remaining = iter(answers)

    async def fetch() -> Any:
        return next(remaining)

    return fetch


@pytest.mark.anyio
async def test_not_modified_while_pinned_stays_pinned_and_after_unpin_publishes_what_the_source_has() -> None:
    """Pinned, the source fetches {"n": 3}, then says "not modified" (a 304): still pinned; unpinned, {"n": 3} is published."""
    fetch = _answers(
        {"n": 1},
        {"n": 2},
        {"n": 3},
        Fetched({"n": 3}, not_modified=True),
        Fetched({"n": 3}, not_modified=True),
    )
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("data", fetch, every="1h", keep_versions=3)]
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        await handle.refresh("data")
        assert await handle.pin("data", "1") == {"n": 1}
        await handle.refresh("data")  # {"n": 3}: kept as what the upstream has
        await handle.refresh("data")  # not modified: still {"n": 3} upstream, {"n": 1} published
        entry = handle.status()["data"]
        assert (entry["origin"], entry["last_outcome"], entry["pin"]) == (
            "pinned",
            "pinned",
            entry["versions"][-1]["id"],
        )
        assert handle.value("data") == {"n": 1}
        handle.unpin("data")
        assert await handle.refresh("data") == {"n": 3}  # joins the fetch unpin started: not modified
        entry = handle.status()["data"]
        assert (entry["origin"], entry["pin"], handle.value("data")) == ("fetched", None, {"n": 3})


@pytest.mark.anyio
async def test_unpin_right_after_pin_publishes_the_value_the_source_says_is_not_modified() -> None:
    """Pin version 1 while {"n": 2} is published, unpin: the next fetch says "not modified" and {"n": 2} is published again."""
    fetch = _answers({"n": 1}, {"n": 2}, Fetched({"n": 2}, not_modified=True))
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("data", fetch, every="1h", keep_versions=3)]
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        await handle.refresh("data")
        await handle.pin("data", "1")
        handle.unpin("data")
        assert await handle.refresh("data") == {"n": 2}
        entry = handle.status()["data"]
        assert (entry["origin"], entry["pin"]) == ("fetched", None)


# -- the admin routes of last known good are behind the admin token ---------------------

TOKEN = "s3cret-admin-token-for-lkg-tests"
ROUTES = ["accept", "reject", "pin?version=1", "unpin", "rollback"]


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-enough-length", f"Basic {TOKEN}", "Bearer ", TOKEN],
    ids=["none", "wrong", "basic", "empty", "no-scheme"],
)
async def test_every_last_known_good_route_refuses_a_request_without_the_admin_token(
    route: str, authorization: str | None
) -> None:
    """POST accept/reject/pin/unpin/rollback without the right bearer token: 401, and nothing changes."""
    documents = iter([[1, 2, 3, 4], [1, 2, 3, 5], [1]])

    async def fetch() -> list[int]:
        return next(documents)

    middleware = RefreshMiddleware(
        ScriptedApp(),
        refreshers=[Refresher("data", fetch, every="1h", keep_versions=3, guard=max_shrink(0.5))],
        admin_path="/_refresh",
        admin_token=TOKEN,
    )
    headers = {} if authorization is None else {"Authorization": authorization}
    async with LifespanManager(middleware):
        handle = middleware.handle
        await handle.refresh("data")  # version 2
        await handle.refresh("data")  # [1] is held back
        before = handle.status()["data"]
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.example") as client:
            refused = await client.post(f"/_refresh/data/{route}", headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "data" not in refused.json()  # no status, no value, for a stranger
            after = handle.status()["data"]
            assert (after["version"], after["pin"], after["quarantined"]) == (
                before["version"],
                before["pin"],
                before["quarantined"],
            )
            assert handle.value("data") == [1, 2, 3, 5]
            allowed = await client.post(
                f"/_refresh/data/{route}", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert allowed.status_code == 200, allowed.text
