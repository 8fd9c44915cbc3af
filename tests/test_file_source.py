"""FileSource: formats, change detection by stat then hash, atomic rename, partial writes, watch."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest
from asgi_lifespan import LifespanManager

from asgi_refresh import FileSource, Refresher, RefreshError, RefreshMiddleware, SourceError
from asgi_refresh.testing import FakeClock

from .helpers import START, ScriptedApp, running, startup_failure

pytestmark = pytest.mark.anyio


def write(path: Path, text: str, *, seconds_ago: float = 10) -> None:
    """Write ``text`` dated ``seconds_ago``: settled, as a file edited a while back is."""
    path.write_text(text)
    bump(path, seconds_ago)


def bump(path: Path, seconds_ago: float = 10) -> None:
    """Set the modification time ``seconds_ago``, as ``touch -d`` would."""
    when = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(when, when))


def replace_atomically(path: Path, text: str) -> None:
    """How editors and ConfigMaps write: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Counting:
    """Counts the stat() calls on one file, and the times it is opened to be read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
        self.stats = 0
        self.reads = 0
        real_stat, real_open = os.stat, os.open

        def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            self.stats += isinstance(path, str | os.PathLike) and Path(path) == target
            return real_stat(path, *args, **kwargs)

        def open_(path: Any, *args: Any, **kwargs: Any) -> Any:
            self.reads += isinstance(path, str | os.PathLike) and Path(path) == target
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("asgi_refresh._sources.file.os.stat", stat)
        monkeypatch.setattr("asgi_refresh._sources.file.os.open", open_)


@pytest.mark.parametrize(
    ("name", "content", "format", "expected"),
    [
        ("flags.json", '{"beta": true}', None, {"beta": True}),
        ("flags.toml", "beta = true", None, {"beta": True}),
        ("motd.txt", "héllo", None, "héllo"),
        ("blob.bin", "\x01", "bytes", b"\x01"),
        ("data.csv", "a,b", lambda body: body.decode().split(","), ["a", "b"]),
        ("FLAGS.JSON", "[1]", None, [1]),
    ],
)
async def test_formats(tmp_path: Path, name: str, content: str, format: Any, expected: Any) -> None:
    """The format comes from the extension, or from ``format``."""
    path = tmp_path / name
    path.write_text(content)
    async with running(Refresher("data", FileSource(path, format=format), every="5s")) as handle:
        assert handle.value("data") == expected


async def test_unchanged_file_costs_one_stat_per_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the file is unchanged, each poll is one stat() and no read; status says not modified."""
    path = tmp_path / "flags.json"
    write(path, '{"beta": true}', seconds_ago=60)
    clock = FakeClock(START)
    counting = Counting(monkeypatch, path)
    async with running(Refresher("flags", FileSource(path), every="1s", jitter=0), clock=clock) as handle:
        first = handle.value("flags")
        await clock.advance("100s")
        assert counting.stats == 101
        assert counting.reads == 1
        assert handle.value("flags") is first
        status = handle.status()["flags"]
        assert status["last_outcome"] == "not_modified"
        assert status["refresh_count"] == 101


async def test_a_touched_file_is_read_but_not_republished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new mtime with the same content is read once, hashed, and publishes nothing new."""
    path = tmp_path / "flags.json"
    write(path, "[1]", seconds_ago=60)
    clock = FakeClock(START)
    changes: list[Any] = []
    counting = Counting(monkeypatch, path)
    refresher = Refresher(
        "flags", FileSource(path), every="1s", jitter=0, on_change=lambda old, new: changes.append(new)
    )
    async with running(refresher, clock=clock) as handle:
        bump(path)
        await clock.advance("1s")
        assert counting.reads == 2
        assert handle.status()["flags"]["last_outcome"] == "not_modified"
        await clock.advance("1s")
        assert counting.reads == 2, "the new stat is remembered"
    assert changes == [[1]]


async def test_a_changed_file_is_published_and_calls_on_change(tmp_path: Path) -> None:
    """An edit is picked up at the next poll; on_change sees old and new."""
    path = tmp_path / "flags.json"
    path.write_text('{"beta": false}')
    clock = FakeClock(START)
    changes: list[tuple[Any, Any]] = []
    refresher = Refresher(
        "flags", FileSource(path), every="5s", jitter=0, on_change=lambda old, new: changes.append((old, new))
    )
    async with running(refresher, clock=clock) as handle:
        write(path, '{"beta": true}')
        await clock.advance("5s")
        assert handle.value("flags") == {"beta": True}
        assert handle.status()["flags"]["last_outcome"] == "changed"
    assert changes == [(None, {"beta": False}), ({"beta": False}, {"beta": True})]


async def test_atomic_rename_is_picked_up(tmp_path: Path) -> None:
    """A file replaced by rename (a new inode) is read at the next poll."""
    path = tmp_path / "flags.toml"
    path.write_text("beta = false")
    clock = FakeClock(START)
    async with running(Refresher("flags", FileSource(path), every="5s", jitter=0), clock=clock) as handle:
        replace_atomically(path, "beta = true")
        await clock.advance("5s")
        assert handle.value("flags") == {"beta": True}


async def test_a_half_written_file_keeps_the_last_value_until_it_is_complete(tmp_path: Path) -> None:
    """A partial write fails to parse: reported, last value kept, and the finished file is read."""
    path = tmp_path / "flags.json"
    path.write_text('{"beta": false}')
    clock = FakeClock(START)
    async with running(Refresher("flags", FileSource(path), every="5s", jitter=0), clock=clock) as handle:
        good = handle.value("flags")
        path.write_text('{"be')  # the writer is mid-way
        with pytest.raises(RefreshError, match=r"flags.json: invalid json: JSONDecodeError"):
            await handle.refresh("flags")
        assert handle.value("flags") is good
        status = handle.status()["flags"]
        assert status["consecutive_failures"] == 1
        assert str(path) in (status["last_error"] or "")
        # Finished within the same mtime tick and at the same size would still be read:
        # a signature that failed to parse is never remembered.
        with path.open("r+") as file:
            file.write('{"be')
        path.write_text('{"beta": true}')
        assert await handle.refresh("flags") == {"beta": True}


async def test_a_deleted_file_is_reported_and_its_value_kept(tmp_path: Path) -> None:
    """Deletion is an error with the path; the value stays; the file coming back is read."""
    path = tmp_path / "flags.json"
    path.write_text("[1]")
    async with running(Refresher("flags", FileSource(path), every="5s")) as handle:
        path.unlink()
        with pytest.raises(RefreshError, match=f"SourceError: {path}: file not found"):
            await handle.refresh("flags")
        assert handle.value("flags") == [1]
        path.write_text("[2]")
        assert await handle.refresh("flags") == [2]


async def test_an_unreadable_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened (permissions) is an error with the path and the reason, not a crash."""
    path = tmp_path / "flags.json"
    path.write_text("[1]")

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("asgi_refresh._sources.file.os.open", refuse)
    message = await startup_failure(Refresher("flags", FileSource(path), every="5s"))
    assert message.endswith(f"SourceError: {path}: cannot read: Permission denied")


async def test_a_missing_file_fails_startup_of_a_required_refresher(tmp_path: Path) -> None:
    """Startup fails naming the refresher and the absolute path."""
    message = await startup_failure(Refresher("flags", FileSource(tmp_path / "nope.toml"), every="5s"))
    assert message.startswith("Refresher 'flags' could not load within startup_timeout (10s): ")
    assert f"SourceError: {tmp_path / 'nope.toml'}: file not found" in message


async def test_a_missing_file_for_an_optional_refresher_serves_the_default(tmp_path: Path) -> None:
    """Not required: the default is served and the file is picked up once it appears."""
    path = tmp_path / "flags.json"
    clock = FakeClock(START)
    refresher = Refresher("flags", FileSource(path), every="5s", required=False, default={}, jitter=0)
    async with running(refresher, clock=clock) as handle:
        assert handle.value("flags") == {}
        path.write_text('{"beta": true}')
        await clock.advance("5s")
        assert handle.value("flags") == {"beta": True}


async def test_validate_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate converts the value; a relative path is resolved when the source is made."""
    (tmp_path / "limits.json").write_text('{"rps": "10"}')
    monkeypatch.chdir(tmp_path)
    source = FileSource("limits.json", validate=pydantic.TypeAdapter(dict[str, int]).validate_python)
    assert source.path == tmp_path / "limits.json"
    monkeypatch.chdir("/")
    async with running(Refresher("limits", source, every="5s")) as handle:
        assert handle.value("limits") == {"rps": 10}


async def test_a_big_file_is_parsed(tmp_path: Path) -> None:
    """A file past the thread threshold parses like a small one."""
    document = {f"key-{i}": i for i in range(20_000)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(document))
    async with running(Refresher("big", FileSource(path), every="5s")) as handle:
        assert handle.value("big") == document


async def test_a_source_can_be_used_by_hand(tmp_path: Path) -> None:
    """``async with FileSource(...)`` works outside a middleware; calling it unopened is an error."""
    path = tmp_path / "a.json"
    path.write_text("[1]")
    source = FileSource(path)
    with pytest.raises(RuntimeError, match="is not open"):
        await source()
    async with source:
        assert (await source()).value == [1]
        assert (await source()).not_modified


def test_bad_arguments_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown extensions and formats, wrong types, and watch without watchfiles."""
    with pytest.raises(ValueError, match=r"cannot tell the format from the extension '\.yaml'; pass format="):
        FileSource("config.yaml")
    with pytest.raises(ValueError, match=r"extension '\(none\)'"):
        FileSource("config")
    with pytest.raises(ValueError, match="format must be one of 'json', 'toml', 'text', 'bytes'"):
        FileSource("config.json", format="yaml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path must be a str or a Path"):
        FileSource(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="watch must be True or False"):
        FileSource("a.json", watch="yes")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-refresh\[watch\]'"):
        FileSource("a.json", watch=True)


# -- watch: real files, real time ------------------------------------------------------


async def wait_until(condition: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling what a background watcher changes
            await anyio.sleep(0.02)


async def test_watch_reloads_at_once_and_stops_promptly(tmp_path: Path) -> None:
    """With watch=True an edit is live in well under a second, though ``every`` is an hour."""
    path = tmp_path / "flags.json"
    path.write_text('{"beta": false}')
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("flags", FileSource(path, watch=True), every="1h")]
    )
    async with LifespanManager(middleware):
        handle = middleware.handle
        # The watcher's thread sets its watch when it first runs, later on a busy machine:
        # edit until an edit shows (``every`` is an hour: only the watch can show it).
        with anyio.fail_after(5):
            for probe in range(1_000_000):  # ends by the break (or fail_after)
                replace_atomically(path, json.dumps({"probe": probe}))
                await anyio.sleep(0.1)
                if handle.value("flags") != {"beta": False}:
                    break
        started = time.monotonic()
        replace_atomically(path, '{"beta": true}')
        await wait_until(lambda: handle.value("flags") == {"beta": True})
        assert time.monotonic() - started < 4
        path.write_text('{"beta": "again"}')
        await wait_until(lambda: handle.value("flags") == {"beta": "again"})
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.5, "the watcher does not hold up shutdown"


async def test_watch_of_a_missing_directory_falls_back_to_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch that cannot start is logged once; polling still serves the refresher."""
    path = tmp_path / "gone" / "flags.json"
    refresher = Refresher("flags", FileSource(path, watch=True), every="1h", required=False, default={})
    middleware = RefreshMiddleware(ScriptedApp(), refreshers=[refresher])
    async with LifespanManager(middleware):
        await wait_until(lambda: "polling only" in caplog.text)
        assert middleware.handle.value("flags") == {}
    assert f"Refresher 'flags': cannot watch {path}" in caplog.text


async def test_watch_by_hand_is_polling_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Outside a middleware there is no task group to watch in: it says so and works."""
    path = tmp_path / "a.json"
    path.write_text("[1]")
    with caplog.at_level("INFO", logger="asgi_refresh"):
        async with FileSource(path, watch=True) as source:
            assert (await source()).value == [1]
    assert "watch needs a running middleware; polling only" in caplog.text


async def test_a_parse_functions_message_is_not_shown(tmp_path: Path) -> None:
    """A third-party parser may quote the document in its error: type and position only."""

    class Mark:
        line, column = 2, 4

    class ScannerError(Exception):
        problem_mark = Mark()

    def parse(body: bytes) -> Any:
        raise ScannerError(f"cannot parse {body!r}")

    path = tmp_path / "secrets.yaml"
    path.write_text("password: SECRET")
    message = await startup_failure(Refresher("config", FileSource(path, format=parse), every="5s"))
    assert message.endswith(
        f"SourceError: {path}: the parse function raised ScannerError at line 3, column 5 "
        "(its message is not shown: it may quote the document)"
    )
    assert "SECRET" not in message


async def test_watch_follows_a_configmap_style_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes swaps a ..data symlink: no event names our file, the reload happens anyway."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "flags.json").write_text(json.dumps({"version": version}))
    (tmp_path / "..data").symlink_to("v1")
    path = tmp_path / "flags.json"
    path.symlink_to("..data/flags.json")
    middleware = RefreshMiddleware(
        ScriptedApp(), refreshers=[Refresher("flags", FileSource(path, watch=True), every="1h")]
    )
    async with LifespanManager(middleware):
        await anyio.sleep(0.2)  # the watcher starts
        swap = tmp_path / "..data_tmp"
        swap.symlink_to("v2")
        os.replace(swap, tmp_path / "..data")
        await wait_until(lambda: middleware.handle.value("flags") == {"version": "v2"})


def test_a_home_relative_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``~/flags.toml`` means the home directory, as in a shell."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert FileSource("~/flags.toml").path == tmp_path / "flags.toml"


# -- hostile files: size, special files, races ------------------------------------------


async def test_a_file_over_max_bytes_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file bigger than max_bytes fails by its size, without a byte read; the last value stays."""
    path = tmp_path / "flags.json"
    write(path, "[1]", seconds_ago=60)
    counting = Counting(monkeypatch, path)
    async with running(Refresher("flags", FileSource(path, max_bytes=100), every="5s")) as handle:
        write(path, json.dumps(list(range(100))), seconds_ago=30)
        with pytest.raises(RefreshError) as raised:
            await handle.refresh("flags")
        assert handle.value("flags") == [1]
    assert str(raised.value).endswith(
        f"SourceError: {path}: file exceeds max_bytes (100 bytes; it is 390 bytes); "
        "raise max_bytes if the document really is that big"
    )
    assert counting.reads == 1, "only the first, small version was opened"


async def test_max_bytes_defaults_to_10_mib_like_http(tmp_path: Path) -> None:
    """The default cap is HTTPSource's: 10 MiB loads, one byte more does not."""
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * (10 * 1024 * 1024))
    source = FileSource(path, format="bytes")
    assert source.max_bytes == 10 * 1024 * 1024
    async with source:
        assert len((await source()).value) == 10 * 1024 * 1024
        with path.open("ab") as file:
            file.write(b"x")
        with pytest.raises(
            SourceError, match=r"file exceeds max_bytes \(10485760 bytes; it is 10485761 bytes\)"
        ):
            await source()


async def test_a_file_growing_past_the_cap_while_read_stops_one_byte_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that stat() showed small but keeps growing (a log, /proc) is read no further than the cap."""
    path = tmp_path / "growing.txt"
    path.write_text("small")
    reads: list[int] = []
    real_read = os.read

    def endless_read(descriptor: int, size: int) -> bytes:
        real_read(descriptor, size)
        reads.append(size)
        return b"x" * size  # the file never ends

    monkeypatch.setattr("asgi_refresh._sources.file.os.read", endless_read)
    source = FileSource(path, max_bytes=3 * 1024 * 1024)
    async with source:
        with pytest.raises(
            SourceError, match=r"file exceeds max_bytes \(3145728 bytes; over 3145728 bytes read\)"
        ):
            await source()
    assert sum(reads) == 3 * 1024 * 1024 + 1


async def test_a_symlink_to_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    """/dev/zero behind a symlink never ends: refused by its kind, naming the link and its target."""
    path = tmp_path / "flags.json"
    path.symlink_to("/dev/zero")
    with anyio.fail_after(5):
        message = await startup_failure(Refresher("flags", FileSource(path), every="5s"))
    assert message.endswith(
        f"SourceError: {path} (a link to /dev/zero): is a character device, not a regular file; "
        "FileSource reads regular files only (symbolic links to one are followed): point it at the file itself"
    )


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "char device"])
async def test_special_files_are_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO (no writer), a directory, a socket or a device: a clear error at once, never a read."""
    path = tmp_path / "flags.json"
    described = {
        "fifo": "a named pipe (FIFO)",
        "directory": "a directory",
        "socket": "a socket",
        "char device": "a character device",
    }
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    else:
        path = Path("/dev/null")
    try:
        source = FileSource(path, format="json")
        with anyio.fail_after(5):
            async with source:
                with pytest.raises(SourceError) as raised:
                    await source()
    finally:
        if kind == "socket":
            server.close()
    assert str(raised.value) == (
        f"{path}: is {described[kind]}, not a regular file; FileSource reads regular files only "
        "(symbolic links to one are followed): point it at the file itself"
    )


async def test_a_fifo_swapped_in_after_the_stat_is_caught_on_the_open_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race stat-then-open: the FIFO is opened without blocking, and fstat refuses it."""
    regular = tmp_path / "regular.json"
    regular.write_text("[1]")
    path = tmp_path / "flags.json"
    os.mkfifo(path)
    real_stat = os.stat

    def stale_stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # What stat() saw a moment before the swap: a regular file.
        return real_stat(regular if Path(target) == path else target, *args, **kwargs)

    monkeypatch.setattr("asgi_refresh._sources.file.os.stat", stale_stat)
    source = FileSource(path)
    with anyio.fail_after(5):
        async with source:
            with pytest.raises(SourceError, match=r"is a named pipe \(FIFO\), not a regular file"):
                await source()


async def test_symlinks_are_followed_to_a_regular_file(tmp_path: Path) -> None:
    """A chain of links (a ConfigMap's file -> ..data -> version dir) is read, as documented."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "flags.json").write_text('{"v": 1}')
    (tmp_path / "..data").symlink_to("v1")
    path = tmp_path / "flags.json"
    path.symlink_to("..data/flags.json")
    async with running(Refresher("flags", FileSource(path), every="5s")) as handle:
        assert handle.value("flags") == {"v": 1}


def test_max_bytes_must_be_a_positive_int() -> None:
    """max_bytes=0, negative, a bool or a float is refused when the source is made."""
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(
            ValueError, match=r"FileSource\('.*a\.json'\): max_bytes must be a positive number of bytes"
        ):
            FileSource("a.json", max_bytes=bad)  # type: ignore[arg-type]


async def test_a_symlink_loop_is_an_error_naming_the_path(tmp_path: Path) -> None:
    """A link to itself: the OS's reason, with the path, not a crash."""
    path = tmp_path / "flags.json"
    path.symlink_to(path)
    source = FileSource(path)
    async with source:
        with pytest.raises(SourceError, match=rf"^{path}: cannot read: Too many levels of symbolic links$"):
            await source()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ("open", FileNotFoundError(2, "No such file or directory"), "file not found"),
        ("read", OSError(5, "Input/output error"), "cannot read: Input/output error"),
    ],
)
async def test_a_file_that_vanishes_or_fails_mid_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, error: OSError, message: str
) -> None:
    """Deleted between stat() and open(), or an I/O error while reading: an error with the path."""
    path = tmp_path / "flags.json"
    path.write_text("[1]")

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(f"asgi_refresh._sources.file.os.{call}", fail)
    source = FileSource(path)
    async with source:
        with pytest.raises(SourceError, match=f"^{path}: {message}$"):
            await source()
