"""What the tests' real servers (Redis, NATS, PostgreSQL) share: a loopback port and a process.

Each server module says how to start its server and how to tell that it answers;
this one waits for that (with the server's log in the error when it does not) and
stops it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_START_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server process on a fixed loopback port, which a test may stop and start."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self._process is not None and self._process.poll() is None

    def _wait_until(self, answers: Callable[[], bool], log: Path, interval: float = 0.02) -> None:
        """After starting the process: wait until ``answers()``, else stop it and raise with its log."""
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while not answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{output}")
            time.sleep(interval)

    def stop(self) -> None:
        """Stop the server (with `stop_signal`; killed if it has not stopped within 10 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a server that does not stop
            process.kill()
            process.wait()
