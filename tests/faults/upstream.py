r"""A hostile HTTP upstream: a real server on 127.0.0.1 that sends exactly the bytes a test scripts.

Well-behaved frameworks (uvicorn, Starlette) normalise what they send: they fix
``Content-Length``, fold or refuse duplicate headers, refuse a reason phrase with
control characters, and never drip. An attacker's server, a broken proxy or a bad
day in production does none of that. `HostileUpstream` is a raw-socket HTTP/1.1
server in a background thread; each route answers with `Reply` objects whose status
line, header lines and body go on the wire as given, byte for byte::

    from tests.faults.upstream import HostileUpstream, Reply, bomb

    with HostileUpstream() as upstream:
        upstream.route("/names", Reply.json(["ada"]))
        upstream.route(
            "/bomb",
            Reply(headers=[("Content-Encoding", "gzip, gzip")], body=bomb(2**31, ["gzip", "gzip"])),
        )
        upstream.route("/slow", Reply.json([1], drip=0.05, piece=1))  # one byte per 50 ms
        source = HTTPSource(upstream.url("/names"))
        ...
        upstream.requests  # what arrived: method, target and header lines, in order

What a `Reply` (and the helpers of this module) can send:

- **Encoding stacks and bombs.** `encode(data, codings)` applies ``gzip``,
  ``x-gzip``, ``deflate`` (zlib-wrapped), ``deflate-raw`` (sent as ``deflate``
  without the zlib header), ``br`` and ``zstd`` (when ``brotli`` and
  ``backports.zstd``/``compression.zstd`` are installed; see `can_encode`) in the
  order listed, which is the order a ``Content-Encoding`` header lists them.
  `bomb(size, codings)` encodes ``size`` zeros the same way without ever holding
  them in memory: ``bomb(2**31, ["gzip", "gzip"])`` is 2 GiB in about 3.5 kB.
- **Drip-feed.** ``drip`` seconds between pieces of ``piece`` bytes of the body
  (and of the status line and headers too with ``drip_head=True``); ``delay``
  before anything; ``hang=True`` never answers at all.
- **Lying framing.** ``content_length`` is sent instead of the true length
  (shorter or longer than the body, or not a number at all); ``framing="chunked"``
  or ``"close"`` (the body ends when the connection does); a ``Content-Length``
  or ``Transfer-Encoding`` among ``headers`` is sent as is and nothing is added.
- **Endless bodies.** ``body`` may be a zero-argument callable returning an
  iterable of chunks, made anew for each request: `endless` never stops.
- **Not HTTP at all.** ``raw`` bytes are sent instead of a response, then the
  connection is closed: garbage, half a status line, or nothing.
- **Odd headers.** ``headers`` are raw ``(name, value)`` lines, str or bytes:
  duplicates, invalid names, non-ASCII or control characters, huge values, any
  order. ``reason`` is any reason phrase (ANSI escapes included).
- **Redirect tricks.** `Reply.redirect` sends any ``Location`` text: ``http:/x``,
  ``//evil``, ``\\evil``, ``http://good@evil``, upper-case or IDNA hosts.

Each route answers its replies in turn, the last one again and again; an unknown
path gets a 404. The server runs in a thread, so tests on asyncio and trio (and
benchmarks in another process) use it alike; `HostileUpstream.stop` ends every
connection, endless bodies included.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import json
import socket
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Literal

Text = str | bytes
Header = tuple[Text, Text]
Body = bytes | Callable[[], Iterable[bytes]]

_MAX_REQUEST_HEAD = 1 << 20
_STEP = 1 << 20  # zeros encoded per step of a bomb


def _bytes(text: Text) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


@dataclass(frozen=True)
class Reply:
    """One scripted response; every field goes on the wire as given.

    Attributes:
        status: The status code.
        reason: The reason phrase, any bytes.
        headers: Raw header lines, in order; nothing is folded, fixed or checked.
        body: Bytes, or a zero-argument callable returning an iterable of chunks
            (made anew for each request, so an endless body can repeat).
        framing: ``"length"`` (a ``Content-Length`` is added unless ``headers``
            have one), ``"chunked"`` (chunked coding is applied, and the header
            added unless ``headers`` have a ``Transfer-Encoding``) or ``"close"``
            (no framing: the body ends when the connection closes).
        content_length: Sent as the ``Content-Length`` instead of the true length.
        drip: Seconds to wait between pieces of the body.
        piece: Bytes per piece when dripping.
        drip_head: Drip the status line and headers too.
        delay: Seconds to wait before sending anything.
        hang: Never answer (until the server stops).
        close: Close the connection after this reply.
        raw: Send these bytes instead of a response (dripped as the body would
            be), then close: garbage, half a status line, or nothing at all.
    """

    status: int = 200
    reason: Text = "OK"
    headers: Sequence[Header] = ()
    body: Body = b""
    framing: Literal["length", "chunked", "close"] = "length"
    content_length: int | str | None = None
    drip: float = 0.0
    piece: int = 1
    drip_head: bool = False
    delay: float = 0.0
    hang: bool = False
    close: bool = False
    raw: bytes | None = None

    @classmethod
    def json(cls, value: Any, *, headers: Sequence[Header] = (), **options: Any) -> Reply:
        """A JSON body with its ``Content-Type``."""
        return cls(
            headers=[("Content-Type", "application/json"), *headers],
            body=json.dumps(value).encode(),
            **options,
        )

    @classmethod
    def redirect(cls, location: Text, *, status: int = 302, **options: Any) -> Reply:
        """A redirect to ``location``, sent as given (relative, malformed, anything)."""
        return cls(status=status, reason="Found", headers=[("Location", location)], **options)

    def wire_head(self, body_length: int | None) -> bytes:
        """The status line and header block as sent."""
        lines = [b"HTTP/1.1 %d %s" % (self.status, _bytes(self.reason))]
        names = {_bytes(name).strip().lower() for name, _ in self.headers}
        lines += [_bytes(name) + b": " + _bytes(value) for name, value in self.headers]
        if self.framing == "length" and b"content-length" not in names:
            length = self.content_length if self.content_length is not None else body_length
            if length is not None:
                lines.append(b"Content-Length: " + _bytes(str(length)))
        if self.framing == "chunked" and b"transfer-encoding" not in names:
            lines.append(b"Transfer-Encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(frozen=True)
class Seen:
    """A request as it arrived.

    Attributes:
        method: The request method.
        target: The request target (path and query).
        headers: Header lines in order, names lower-cased, values as sent (latin-1).
        body: The request body.
    """

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        return [value for key, value in self.headers if key == name.lower()]


@dataclass
class _Route:
    replies: list[Reply]
    served: int = 0

    def next(self) -> Reply:
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        return reply


@dataclass
class HostileUpstream:
    """A raw HTTP/1.1 server on 127.0.0.1 that answers with scripted `Reply` objects.

    Use it as a context manager (or call `start` and `stop`). Keep-alive works as
    in HTTP/1.1, so a lie in one response can reach the next one on the same
    connection, as it would in production.

    Attributes:
        requests: Every request received, in order.
        connections: How many connections were accepted.
    """

    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    _routes: dict[str, _Route] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _open: set[socket.socket] = field(default_factory=set)
    _listener: socket.socket | None = None

    def __enter__(self) -> HostileUpstream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._listener is not None, "not started"
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return self.origin + path

    def route(self, path: str, *replies: Reply) -> None:
        """Answer requests for ``path`` (query ignored) with ``replies`` in turn, the last one repeating."""
        assert replies, "a route needs at least one reply"
        with self._lock:
            self._routes[path] = _Route(list(replies))

    def requests_to(self, path: str) -> list[Seen]:
        """The requests received for ``path``."""
        return [seen for seen in self.requests if seen.target.split("?")[0] == path]

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and serve in the background."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Stop serving: every connection is closed, endless bodies and hangs included."""
        self._stop.set()
        with self._lock:
            sockets = list(self._open)
        for connection in sockets:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="hostile-upstream")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            with self._lock:
                self.connections += 1
                self._open.add(connection)
            self._spawn(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        try:
            while not self._stop.is_set():
                request, buffer = self._read_request(connection, buffer)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                    route = self._routes.get(request.target.split("?")[0])
                    reply = route.next() if route else Reply(404, "Not Found", body=b"not found")
                if not self._send(connection, reply, head_only=request.method == "HEAD"):
                    return
                if reply.close or reply.framing == "close":
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(connection)
            connection.close()

    def _read_request(self, connection: socket.socket, buffer: bytes) -> tuple[Seen | None, bytes]:
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > _MAX_REQUEST_HEAD:
                return None, b""
            data = connection.recv(65536)
            if not data:
                return None, b""
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in lines)
        ]
        length = int(next((value for name, value in headers if name == "content-length"), "0"))
        while len(buffer) < length:
            data = connection.recv(65536)
            if not data:
                return None, b""
            buffer += data
        return Seen(method, target, headers, buffer[:length]), buffer[length:]

    def _send(self, connection: socket.socket, reply: Reply, *, head_only: bool) -> bool:
        """Send ``reply``; False once the connection or the server is gone."""
        if reply.hang:
            self._stop.wait()
            return False
        if reply.delay and self._stop.wait(reply.delay):
            return False
        if reply.raw is not None:
            self._write(connection, reply.raw, reply.drip, reply.piece)
            return False
        finite = reply.body if isinstance(reply.body, bytes) else None
        head = reply.wire_head(None if finite is None else len(finite))
        if not self._write(connection, head, reply.drip if reply.drip_head else 0.0, reply.piece):
            return False
        if head_only:
            return True
        chunks: Iterable[bytes] = [finite] if finite is not None else reply.body()  # type: ignore[operator]
        for chunk in chunks:
            if reply.framing == "chunked":
                if not chunk:
                    continue
                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            if not self._write(connection, chunk, reply.drip, reply.piece):
                return False
        if reply.framing == "chunked":
            return self._write(connection, b"0\r\n\r\n", 0.0, 1)
        return True

    def _write(self, connection: socket.socket, data: bytes, drip: float, piece: int) -> bool:
        if self._stop.is_set():
            return False
        try:
            if not drip:
                connection.sendall(data)
                return True
            for start in range(0, len(data), max(piece, 1)):
                connection.sendall(data[start : start + piece])
                if self._stop.wait(drip):
                    return False
        except OSError:
            return False
        return True


def endless(chunk: bytes = b"x" * 1024) -> Callable[[], Iterator[bytes]]:
    """A body that never ends: ``chunk`` again and again, until the client or the server gives up."""

    def chunks() -> Iterator[bytes]:
        while True:
            yield chunk

    return chunks


# -- encodings ---------------------------------------------------------------------------


def _optional(*names: str) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _zstd() -> ModuleType | None:
    return _optional("compression.zstd", "backports.zstd")


def can_encode(coding: str) -> bool:
    """Whether this kit can produce ``coding`` here (br and zstd need optional libraries)."""
    if coding == "br":
        return _optional("brotli") is not None
    if coding == "zstd":
        return _zstd() is not None
    return coding in _WBITS


_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15, "deflate-raw": -15}


class _Encoder:
    """A streaming encoder for one coding: ``compress`` pieces, then ``flush``."""

    def __init__(self, coding: str) -> None:
        self.compress: Callable[[bytes], bytes]
        self.flush: Callable[[], bytes]
        if coding in _WBITS:
            compressor = zlib.compressobj(9, zlib.DEFLATED, _WBITS[coding])
            self.compress, self.flush = compressor.compress, compressor.flush
        elif coding == "br":
            brotli: Any = _optional("brotli")
            assert brotli is not None, "brotli is not installed"
            compressor = brotli.Compressor(quality=5)
            self.compress, self.flush = compressor.process, compressor.finish
        elif coding == "zstd":
            zstd: Any = _zstd()
            assert zstd is not None, "backports.zstd is not installed"
            compressor = zstd.ZstdCompressor()
            self.compress, self.flush = compressor.compress, compressor.flush
        else:
            raise ValueError(f"unknown coding {coding!r}")


def encode(data: bytes, codings: Sequence[str]) -> bytes:
    """``data`` with ``codings`` applied in order (as a ``Content-Encoding`` header lists them)."""
    for coding in codings:
        if coding in ("gzip", "x-gzip"):
            data = gzip.compress(data, mtime=0)
            continue
        encoder = _Encoder(coding)
        data = encoder.compress(data) + encoder.flush()
    return data


def bomb(size: int, codings: Sequence[str], *, byte: bytes = b"0") -> bytes:
    """``size`` copies of ``byte`` with ``codings`` applied, never holding the decoded data."""
    assert codings, "a bomb needs at least one coding"
    encoder = _Encoder(codings[0])
    step = byte * _STEP
    pieces, left = [], size
    while left > 0:
        pieces.append(encoder.compress(step[:left]))
        left -= _STEP
    pieces.append(encoder.flush())
    return encode(b"".join(pieces), codings[1:])
