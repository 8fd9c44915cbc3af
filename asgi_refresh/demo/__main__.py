"""``python -m asgi_refresh.demo``: see `asgi_refresh.demo.app`."""

from asgi_refresh.demo.app import main

main()
