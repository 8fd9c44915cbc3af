"""``python -m asgi_refresh``: the command line (``check`` and ``fetch`` a configuration)."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
