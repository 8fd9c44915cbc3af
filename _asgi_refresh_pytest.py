"""The pytest plugin of asgi-refresh: ``refresh_clock`` and ``refresh_overrides`` fixtures.

Registered through the ``pytest11`` entry point, so pytest imports this module in
every run of every project that has asgi-refresh installed. It is a top-level
module, and imports asgi_refresh only inside the fixtures, so that such a run does
not pay for importing the package (and its optional parts) unless a test asks
for a fixture, and so that coverage, which starts after plugins are imported,
still sees the package's own module-level code.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from asgi_refresh.testing import FakeClock


@pytest.fixture
def refresh_clock() -> Iterator[FakeClock]:
    """A `FakeClock` that every RefreshMiddleware starting in the test runs on.

    ``asgi_refresh.testing.fake_time()`` for the test's duration: sync tests move it
    with ``refresh_clock.advance_sync("1h")``, async ones with ``await
    refresh_clock.advance("1h")``.
    """
    from asgi_refresh.testing import fake_time

    with fake_time() as clock:
        yield clock


@pytest.fixture
def refresh_overrides(refresh_clock: FakeClock) -> MutableMapping[str, Any]:
    """Values to pin, by refresher name: set before the lifespan starts (never fetched) or during it.

    Comes with ``refresh_clock``: pinned values are part of the same switch.
    """
    from asgi_refresh.testing import pinned_values

    return pinned_values()
