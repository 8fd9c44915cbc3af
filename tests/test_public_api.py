"""The public surface: what the package exports, sorted and complete."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import asgi_refresh
import asgi_refresh.testing


def test_package_all_is_sorted_and_complete() -> None:
    """__init__ only re-exports, and __all__ lists every public name it has, sorted."""
    public = {
        name
        for name, value in vars(asgi_refresh).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert asgi_refresh.__all__ == sorted(asgi_refresh.__all__)
    assert set(asgi_refresh.__all__) == public | set(asgi_refresh._LAZY)
    for name in asgi_refresh.__all__:
        assert getattr(asgi_refresh, name) is not None
    assert set(asgi_refresh.__all__) <= set(dir(asgi_refresh))


def test_importing_the_package_loads_no_source_backend_or_config_machinery() -> None:
    """`import asgi_refresh` loads no source, backend, config or thread machinery: they come with first use."""
    optional = (
        "httpx",
        "sqlite3",
        "tomllib",
        "asgi_refresh._config",
        "asgi_refresh._cluster.base",
        "anyio.from_thread",
        "datetime",
        "random",
    )
    # What anyio itself imports does not count (anyio 4.11 imports its thread bridge and random).
    code = (
        "import sys, anyio; before = set(sys.modules); import asgi_refresh; "
        f"print(sorted(m for m in {optional!r} if m in sys.modules and m not in before))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    code = "import sys; from asgi_refresh import HTTPSource, ConfigError; print('httpx' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "True"
    )


def test_testing_all_is_sorted_and_complete() -> None:
    """asgi_refresh.testing exports everything it defines, sorted."""
    module = asgi_refresh.testing
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    assert module.__all__ == sorted(module.__all__)
    assert set(module.__all__) == defined | {"CoordinatorContract"}  # imported on first use
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_pinned_names_are_exported() -> None:
    """The names DESIGN.md pins are importable from the package."""
    assert {"RefreshMiddleware", "Refresher"} <= set(asgi_refresh.__all__)


def test_package_is_typed_and_versioned() -> None:
    """py.typed ships with the package and __version__ is set."""
    assert (Path(inspect.getfile(asgi_refresh)).parent / "py.typed").is_file()
    assert asgi_refresh.__version__


def test_coordination_names_are_exported() -> None:
    """The coordination backends, their error and the codec are public."""
    assert {
        "Codec",
        "CoordinatorUnavailable",
        "JSONCodec",
        "NATSCoordinator",
        "RedisCoordinator",
        "SQLiteCoordinator",
    } <= set(asgi_refresh.__all__)


def test_the_two_families_contracts_are_exported() -> None:
    """Sources and coordinators of one's own are written against public protocols and types."""
    assert {"Source", "SourceContext", "Fetched", "SourceError", "Fresh"} <= set(asgi_refresh.__all__)
    assert {"Coordinator", "BadRecord", "Stored", "Head", "Poll", "Change"} <= set(asgi_refresh.__all__)
    assert isinstance(asgi_refresh.HTTPSource("http://127.0.0.1/x"), asgi_refresh.Source)
    assert asgi_refresh.Coordinator in asgi_refresh.SQLiteCoordinator.__mro__
