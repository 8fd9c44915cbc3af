"""Keep an ASGI app's startup data fresh without restarts."""

from .__about__ import __version__ as __version__
from ._clock import Clock
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
from ._cluster.redis import RedisCoordinator
from ._cluster.sqlite import SQLiteCoordinator
from ._config import ConfigError
from ._duration import Duration
from ._events import RefreshEvent
from ._handle import RefreshError, RefreshHandle
from ._middleware import RefreshMiddleware
from ._option_error import OptionError
from ._refresher import Refresher
from ._sources.base import Source
from ._sources.bearer import BearerToken
from ._sources.context import SourceContext
from ._sources.file import FileSource
from ._sources.http import HTTPSource
from ._sources.outcome import Fetched, Fresh, SourceError
from ._status import Status as RefresherStatus

__all__ = [
    "BadRecord",
    "BearerToken",
    "Change",
    "Clock",
    "Codec",
    "ConfigError",
    "Coordinator",
    "CoordinatorUnavailable",
    "Duration",
    "Fetched",
    "FileSource",
    "Fresh",
    "HTTPSource",
    "Head",
    "JSONCodec",
    "OptionError",
    "Poll",
    "RedisCoordinator",
    "RefreshError",
    "RefreshEvent",
    "RefreshHandle",
    "RefreshMiddleware",
    "Refresher",
    "RefresherStatus",
    "SQLiteCoordinator",
    "Source",
    "SourceContext",
    "SourceError",
    "Stored",
]
