"""Webhooks in a cluster: a delivery to any one process refreshes every process, through the lease holder.

Three uvicorn servers on their own ports (the processes of a cluster, whichever
host they are on) run `tests/cluster_app.py` with a Redis coordinator and a
refresher that polls only once an hour, so that nothing but the webhook can bring
a new version. The upstream counts its requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from asgi_refresh.demo.upstream import Upstream

from .redis_server import RedisServer
from .test_cluster import assert_clean, cluster, redis_env, roles, until, upstream, values

__all__ = ["upstream"]  # the fixture, shared with test_cluster

SECRET = "cluster-webhook-secret-for-tests"


def deliver(http: httpx.Client, url: str, body: bytes = b'{"ref": "refs/heads/main"}') -> int:
    """POST a GitHub-signed delivery to ``url``'s deploy hook; its status code."""
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = http.post(
        f"{url}/_refresh/hooks/deploy",
        content=body,
        headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"},
        timeout=10,
    )
    return response.status_code


def test_a_webhook_to_a_follower_refreshes_all_three_processes(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """A delivery to a follower makes the lease holder fetch once, and all 3 serve the new version."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    env = redis_env(redis_server, f"{url}/data", EVERY="1h", LEASE_TTL="3s", WEBHOOK_SECRET=SECRET)
    with cluster(3, env) as nodes, httpx.Client() as http:
        until(lambda: values(nodes) == [{"version": 1}] * 3, 10, lambda: values(nodes))
        until(lambda: sorted(roles(nodes)) == ["follower", "follower", "leader"], 10, lambda: roles(nodes))
        follower = nodes[roles(nodes).index("follower")]
        documents.set("/data", {"version": 2})
        before = documents.requests["/data"]
        assert deliver(http, follower.url) == 202
        took = until(lambda: values(nodes) == [{"version": 2}] * 3, 10, lambda: values(nodes))
        assert documents.requests["/data"] - before == 1  # the holder fetched, once, for everyone
        assert took < 5
        bad = http.post(f"{follower.url}/_refresh/hooks/deploy", content=b"{}", headers={}, timeout=10)
        assert bad.status_code == 401
        assert_clean(nodes)


def test_a_burst_of_1000_deliveries_over_three_processes_costs_a_handful_of_fetches(
    redis_server: RedisServer, upstream: tuple[Upstream, str]
) -> None:
    """1,000 valid deliveries spread over the 3 processes fetch the upstream a handful of times."""
    documents, url = upstream
    documents.set("/data", {"version": 1})
    env = redis_env(redis_server, f"{url}/data", EVERY="1h", LEASE_TTL="3s", WEBHOOK_SECRET=SECRET)
    with cluster(3, env) as nodes, httpx.Client() as http:
        until(lambda: values(nodes) == [{"version": 1}] * 3, 10, lambda: values(nodes))
        documents.set("/data", {"version": 2})
        before = documents.requests["/data"]
        started = time.monotonic()
        statuses = [deliver(http, nodes[index % 3].url) for index in range(1000)]
        burst = time.monotonic() - started
        assert statuses == [202] * 1000
        until(lambda: values(nodes) == [{"version": 2}] * 3, 10, lambda: values(nodes))
        time.sleep(2.5)  # the window for the refreshes queued at the end of the burst
        fetched = documents.requests["/data"] - before
        # Each process starts at most one webhook refresh per second, and one at the end of
        # the second its last delivery came in: int(burst) + 2 each, however long a loaded
        # machine takes to send the burst. Each costs at most one fetch: the holder's, for
        # everyone, which answers every request counted when it starts.
        limit = 3 * (int(burst) + 2)
        print(f"\n1,000 deliveries in {burst:.2f} s over 3 processes: {fetched} upstream fetches")
        assert 1 <= fetched <= limit, (fetched, burst)
        assert_clean(nodes)
