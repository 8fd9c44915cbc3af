"""NATSCoordinator on a real nats-server with JetStream: the shared contract and what is NATS's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from asgi_refresh._cluster.base import Coordinator
from asgi_refresh._cluster.contract import CoordinatorContract
from asgi_refresh._cluster.nats import NATSCoordinator

pytestmark = pytest.mark.anyio


class TestNATSCoordinator(CoordinatorContract):
    """NATS passes the contract that every backend must pass."""

    @pytest.fixture
    def new_coordinator(self, nats_url: str) -> Callable[[str], Coordinator]:
        return lambda prefix: NATSCoordinator(nats_url, prefix=prefix)  # the default bucket, shared
