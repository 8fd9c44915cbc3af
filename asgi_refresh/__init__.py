"""Keep an ASGI app's startup data fresh without restarts."""

from .__about__ import __version__ as __version__
from ._bearer import BearerToken
from ._clock import Clock
from ._config import ConfigError
from ._coordination import Codec, CoordinatorUnavailable, JSONCodec
from ._duration import Duration
from ._events import RefreshEvent
from ._file import FileSource
from ._http import HTTPSource
from ._middleware import RefreshMiddleware
from ._outcome import Fresh, SourceError
from ._redis import RedisCoordinator
from ._refresher import Refresher
from ._runtime import RefreshError, RefreshHandle
from ._sqlite import SQLiteCoordinator

__all__ = [
    "BearerToken",
    "Clock",
    "Codec",
    "ConfigError",
    "CoordinatorUnavailable",
    "Duration",
    "FileSource",
    "Fresh",
    "HTTPSource",
    "JSONCodec",
    "RedisCoordinator",
    "RefreshError",
    "RefreshEvent",
    "RefreshHandle",
    "RefreshMiddleware",
    "Refresher",
    "SQLiteCoordinator",
    "SourceError",
]
