"""``python -m asgi_refresh.demo``: see `asgi_refresh.demo.app`."""

from asgi_refresh.demo.app import main  # pragma: no cover - run as a subprocess by tests/test_demo.py

main()  # pragma: no cover
