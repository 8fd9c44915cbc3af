"""Keep an ASGI app's startup data fresh without restarts."""

from .__about__ import __version__ as __version__
from ._clock import Clock
from ._duration import Duration
from ._middleware import RefreshMiddleware
from ._refresher import Refresher
from ._runtime import RefreshError, RefreshHandle

__all__ = ["Clock", "Duration", "RefreshError", "RefreshHandle", "RefreshMiddleware", "Refresher"]
