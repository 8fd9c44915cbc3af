"""Keep an ASGI app's startup data fresh without restarts.

The sources, the coordination backends and the configuration loader are imported
on first use (``asgi_refresh.HTTPSource`` or ``from asgi_refresh import
HTTPSource``): an app that uses none of them never loads httpx, sqlite3 or tomllib.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .__about__ import __version__ as __version__
from ._clock import Clock
from ._derived import Derived
from ._duration import Duration
from ._events import RefreshEvent
from ._family import RefresherFamily
from ._guards import max_shrink, required_keys
from ._handle import RefreshError, RefreshHandle
from ._middleware import RefreshMiddleware
from ._option_error import OptionError
from ._refresher import Refresher
from ._sources.base import Source
from ._sources.context import SourceContext
from ._sources.outcome import Fetched, Fresh, SourceError

if _TYPE_CHECKING:
    from ._cluster.base import (
        BadRecord,
        Change,
        Codec,
        Coordinator,
        CoordinatorUnavailable,
        Head,
        JSONCodec,
        Poll,
        Stored,
    )
    from ._cluster.nats import NATSCoordinator
    from ._cluster.postgres import PostgresCoordinator
    from ._cluster.redis import RedisCoordinator
    from ._cluster.sqlite import SQLiteCoordinator
    from ._config import ConfigError
    from ._sources.bearer import BearerToken
    from ._sources.file import FileSource
    from ._sources.http import HTTPSource
    from ._sources.longpoll import LongPollSource, consul_kv
    from ._sources.sse import SSESource
    from ._status import Status as RefresherStatus
    from ._webhooks import Webhook

# Imported on first use: name -> module (and the name there, where it differs).
_RENAMED = {"RefresherStatus": "Status"}
_LAZY = {
    **dict.fromkeys(
        (
            "BadRecord",
            "Change",
            "Codec",
            "Coordinator",
            "CoordinatorUnavailable",
            "Head",
            "JSONCodec",
            "Poll",
            "Stored",
        ),
        "._cluster.base",
    ),
    "BearerToken": "._sources.bearer",
    "ConfigError": "._config",
    "FileSource": "._sources.file",
    "HTTPSource": "._sources.http",
    "LongPollSource": "._sources.longpoll",
    "consul_kv": "._sources.longpoll",
    "NATSCoordinator": "._cluster.nats",
    "PostgresCoordinator": "._cluster.postgres",
    "RedisCoordinator": "._cluster.redis",
    "RefresherStatus": "._status",
    "SQLiteCoordinator": "._cluster.sqlite",
    "SSESource": "._sources.sse",
    "Webhook": "._webhooks",
}

__all__ = [
    "BadRecord",
    "BearerToken",
    "Change",
    "Clock",
    "Codec",
    "ConfigError",
    "Coordinator",
    "CoordinatorUnavailable",
    "Derived",
    "Duration",
    "Fetched",
    "FileSource",
    "Fresh",
    "HTTPSource",
    "Head",
    "JSONCodec",
    "LongPollSource",
    "NATSCoordinator",
    "OptionError",
    "Poll",
    "PostgresCoordinator",
    "RedisCoordinator",
    "RefreshError",
    "RefreshEvent",
    "RefreshHandle",
    "RefreshMiddleware",
    "Refresher",
    "RefresherFamily",
    "RefresherStatus",
    "SQLiteCoordinator",
    "SSESource",
    "Source",
    "SourceContext",
    "SourceError",
    "Stored",
    "Webhook",
    "consul_kv",
    "max_shrink",
    "required_keys",
]


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), _RENAMED.get(name, name))
    globals()[name] = value  # once: the next access is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
