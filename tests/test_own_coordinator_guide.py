"""The coordinator of the guide "Write your own coordinator" passes the backend contract.

The guide's samples define `Memory`, `MemoryCoordinator` and `TestMemoryCoordinator`
(a `CoordinatorContract` subclass); run here in a module namespace, the contract's
tests run on the guide's own code, as they would in a reader's test suite.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from tests.test_docs import ROOT, samples

GUIDE = ROOT / "docs" / "guides" / "own-coordinator.md"


def _definitions(page: Path) -> dict[str, Any]:
    """What the page's samples define, run in order (the samples that need a running loop left out)."""
    namespace: dict[str, Any] = {"__name__": __name__}
    for line, code in samples(page):
        compiled = compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if compiled.co_flags & 0x80:  # CO_COROUTINE: top-level await, the "use it" sample
            continue
        exec(compiled, namespace)
    return namespace


_guide = _definitions(GUIDE)
TestMemoryCoordinator = _guide["TestMemoryCoordinator"]


def test_the_guide_defines_a_contract_suite() -> None:
    """The page still holds a CoordinatorContract subclass: this module is not testing nothing."""
    from asgi_refresh.testing import CoordinatorContract

    assert issubclass(TestMemoryCoordinator, CoordinatorContract)
    assert len([name for name in dir(CoordinatorContract) if name.startswith("test_")]) >= 15
