"""A flapping TCP proxy: put it between a client and a server to break the network on a schedule.

`FlappingProxy` listens on a free loopback port and forwards every connection to
its target, in threads (so it serves asyncio, trio and subprocesses alike). It can
go down (every open connection is cut, mid-command or not, and new ones are cut
as soon as they are accepted) and up again, flap between the two on a schedule,
and delay every chunk it forwards.

Usage::

    with FlappingProxy(("127.0.0.1", redis_port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxy.flap(every=0.1, seconds=60)  # down 100 ms, up 100 ms, ... for a minute
        proxy.down(); proxy.up()  # or by hand
        proxy.delay = 0.05  # 50 ms per chunk, each way
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

_CHUNK = 65536
_ACCEPT_WAIT = 0.05  # how long accept() blocks before checking for close


class FlappingProxy:
    """Forwards loopback connections to ``target``, and cuts them when told to.

    Attributes:
        port: Where it listens, on 127.0.0.1.
        delay: Seconds to wait before forwarding each chunk (0: none).
        flips: How many times it went down so far.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_ACCEPT_WAIT)
        self.port: int = self._listener.getsockname()[1]
        self.delay = 0.0
        self.flips = 0
        self._up = True
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._start(self._accept, "accept")

    @property
    def is_up(self) -> bool:
        """Whether connections go through now."""
        return self._up

    def up(self) -> None:
        """Let connections through again."""
        self._up = True

    def down(self) -> None:
        """Cut every open connection, and every new one, until `up`."""
        with self._lock:
            self._up = False
            self.flips += 1
            cut, self._sockets = self._sockets, set()
        for sock in cut:
            _close(sock)

    def flap(self, every: float, seconds: float, *, start_down: bool = True) -> threading.Thread:
        """Go down and up every ``every`` seconds for ``seconds``, in a thread; up at the end."""

        def run() -> None:
            deadline = time.monotonic() + seconds
            tick = time.monotonic()
            down = start_down
            while not self._closed.is_set() and time.monotonic() < deadline:
                self.down() if down else self.up()
                down = not down
                tick += every
                self._closed.wait(max(0.0, tick - time.monotonic()))
            self.up()

        return self._start(run, "flap")

    def close(self) -> None:
        """Stop listening and cut everything."""
        self._closed.set()
        self.down()
        _close(self._listener)
        for thread in self._threads:
            thread.join(2)

    def __enter__(self) -> FlappingProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self, target: object, name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"proxy:{name}", daemon=True)  # type: ignore[arg-type]
        thread.start()
        if name in ("accept", "flap"):
            self._threads.append(thread)
        return thread

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if not self._up:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if not self._up:
                    _close(client)
                    _close(server)
                    continue
                self._sockets.update((client, server))
            self._start(self._pump, "pump", client, server)
            self._start(self._pump, "pump", server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
