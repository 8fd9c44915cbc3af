"""Every Python sample in the docs and the README runs, so that none of them can rot.

The samples of one page run in order in one namespace, like a reader pasting them
into one file. Top-level ``await`` / ``async with`` work (as in an async test).
A page may use these names without defining them, standing for "your app" and
"your function": ``app``, ``inner``, ``load_names``, ``load_rates``. A sample
preceded by ``<!-- docs-test: skip (reason) -->`` is not run.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

ROOT = Path(__file__).parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SAMPLE = re.compile(r"(?P<before>[^\n]*)\n(?P<indent> *)```python\n(?P<code>.*?)\n(?P=indent)```", re.DOTALL)
SKIP = "<!-- docs-test: skip"

pytestmark = pytest.mark.anyio


async def your_app(scope: Any, receive: Any, send: Any) -> None:
    """Stands for the reader's own ASGI app: answers every request with 200."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def load_names() -> list[str]:
    return ["ada", "grace"]


async def load_rates() -> dict[str, float]:
    return {"USD": 1.08}


def samples(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    found = []
    for match in SAMPLE.finditer(text):
        if not match["before"].startswith(SKIP):
            code = textwrap.dedent(match["code"]) if match["indent"] else match["code"]
            found.append((text.count("\n", 0, match.start("code")) + 1, code))
    return found


def test_the_docs_have_samples_to_run() -> None:
    """The collection below is not empty by accident."""
    assert sum(len(samples(page)) for page in PAGES) >= 12


@pytest.mark.parametrize("page", [p for p in PAGES if samples(p)], ids=lambda p: str(p.relative_to(ROOT)))
async def test_samples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample of the page compiles and runs (constructors check every argument)."""
    monkeypatch.chdir(tmp_path)
    # Samples register metrics in the default registry, as a reader's app would; each
    # run gets its own so that the same page can run again (asyncio, then trio).
    monkeypatch.setattr(prometheus_client, "REGISTRY", prometheus_client.CollectorRegistry())
    namespace: dict[str, Any] = {
        "__name__": "docs_sample",
        "app": your_app,
        "inner": your_app,
        "load_names": load_names,
        "load_rates": load_rates,
    }
    for line, code in samples(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(compiled, namespace)
        if inspect.iscoroutine(result):
            await result


def test_the_testing_guide_says_what_to_install() -> None:
    """The testing guide's pip line installs what its samples import (bar the app's own), all from our test extra."""
    page = ROOT / "docs" / "guides" / "testing.md"
    line = re.search(r"^pip install (.+)$", page.read_text(), re.MULTILINE)
    assert line, "docs/guides/testing.md does not say what to pip install"
    installed = set(line[1].split())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = {
        re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        for requirement in pyproject["project"]["optional-dependencies"]["test"]
    }
    assert installed <= test_extra
    assert "httpx2" in installed  # Starlette 1.x's TestClient warns without it
    imported = set()
    for _, code in samples(page):
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    needed = {
        name.lower().replace("_", "-")
        for module in imported - set(sys.stdlib_module_names)
        for name in distributions.get(module, [module])
    }
    the_apps_own = {
        "asgi-refresh",
        "anyio",
        "httpx",
        "starlette",
        "fastapi",
    }  # the package's deps, the framework
    assert needed - the_apps_own <= installed


def test_the_docs_home_page_gives_the_readmes_two_commands() -> None:
    """docs/index.md's quick start is the README's, word for word: one of them cannot drift."""

    def commands(page: Path) -> list[str]:
        block = re.search(r"```bash\n(.*?)\n```", page.read_text(), re.DOTALL)
        assert block, f"{page.name} has no bash block"
        return block[1].splitlines()

    readme = commands(ROOT / "README.md")
    assert len(readme) == 2
    assert commands(ROOT / "docs" / "index.md") == readme
