"""The testing guide's examples are complete test files: each passes under pytest, fast, with the plugin.

tests/test_docs.py runs every sample of the page in one namespace (which only defines
these tests); here each ``# test_*.py`` sample is written to a file of its own and
run by pytest in a subprocess, as a reader would run it, async tests on asyncio and trio.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.test_docs import samples

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "guides" / "testing.md"
FILE_NAME = re.compile(r"\A# (test_\w+\.py)\n")
BOTH_BACKENDS = """
import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""
# Each test, setup and teardown included; the guide promises milliseconds. Generous
# against a loaded CI machine; the figures measured are in the failure message.
BUDGET = 0.5


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "filterwarnings=error", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def guide_files() -> dict[str, str]:
    files = {}
    for _, code in samples(GUIDE):
        if match := FILE_NAME.match(code):
            files[match[1]] = code
    return files


def test_the_guide_starts_with_a_fastapi_app_and_a_short_sync_test() -> None:
    """The first example builds a FastAPI app with add_middleware and tests it with TestClient in under 15 lines."""
    first = next(iter(guide_files().values()))
    assert "app.add_middleware(RefreshMiddleware" in first
    assert 'every="1h"' in first
    test = first[first.index("\ndef test_") :].strip().splitlines()
    assert len(test) < 15
    assert "with TestClient(app) as client:" in test[2]


def test_the_guide_examples_pass_fast(tmp_path: Path) -> None:
    """Every example file of the guide passes under pytest, each test well within its budget."""
    files = guide_files()
    assert set(files) == {
        "test_fastapi_app.py",
        "test_fastapi_app_async.py",
        "test_starlette_app.py",
        "test_asgi_app.py",
    }
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    (tmp_path / "conftest.py").write_text(BOTH_BACKENDS)
    result = run_pytest(tmp_path, "--junitxml=report.xml")
    assert result.returncode == 0, result.stdout + result.stderr
    cases = ET.parse(tmp_path / "report.xml").getroot().iter("testcase")
    times = {f"{case.get('classname')}::{case.get('name')}": float(case.get("time") or 0) for case in cases}
    assert len(times) == 6  # the two async tests run twice
    slow = {test: seconds for test, seconds in times.items() if seconds > BUDGET}
    assert not slow, f"over {BUDGET} s: {slow} (all: {times})"


def test_the_plugin_stays_out_of_runs_that_do_not_use_it(tmp_path: Path) -> None:
    """A pytest run whose tests ask for no fixture of ours never imports asgi_refresh."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n\n\ndef test_other():\n    assert 'asgi_refresh' not in sys.modules\n"
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unused_pin_fails_the_test_at_teardown(tmp_path: Path) -> None:
    """refresh_overrides with a name no app has: the test errors at teardown, naming it."""
    (tmp_path / "test_typo.py").write_text(
        "def test_typo(refresh_overrides):\n    refresh_overrides['nmaes'] = ['x']\n"
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 1
    assert "refresher named 'nmaes'" in result.stdout


@pytest.mark.parametrize("fixture", ["refresh_clock", "refresh_overrides"])
def test_the_plugin_fixtures_are_listed(tmp_path: Path, fixture: str) -> None:
    """The output of `pytest --fixtures` lists the plugin's fixtures."""
    result = run_pytest(tmp_path, "--fixtures")
    assert re.search(rf"^{fixture} -- .*_asgi_refresh_pytest\.py", result.stdout, re.MULTILINE), result.stdout
