"""Run other projects' own test suites with every ASGI app wrapped by RefreshMiddleware.

For each peer suite: download its published sdist (pinned version and sha256),
check that it ships its tests, install them with its test dependencies (pinned,
``<name>-<version>.txt`` beside this file) and asgi-refresh (editable) into a venv
of its own, then run the suite three times at once: ``baseline`` (unwrapped), ``zero``
(wrapped, no refreshers) and ``two`` (wrapped, two refreshers every 50 ms); see
``peer_plugin.py`` for how apps are wrapped from outside the suite.

Each wrapped run is compared with the baseline test by test. A test whose outcome
differs must be listed in ``expected-differences.toml`` with one of the documented
reasons there; any other difference fails the run, and so does a listed difference
that no longer occurs (a stale entry would hide the next change to that test).

Usage: ``python .ci/peers/run.py [--work DIR] [--suite NAME]...``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPECTED = HERE / "expected-differences.toml"
MODES = ("baseline", "zero", "two")
WRAPPED = MODES[1:]
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
# A test that hangs fails after this long instead of stalling the run (pytest-timeout).
TEST_TIMEOUT = "15"
TIMED_OUT = "Timeout (>"  # how pytest-timeout's failure message starts
# And a whole run of a suite is stopped after this long.
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class Suite:
    """A peer project whose own test suite runs against the middleware."""

    name: str
    version: str
    sha256: str  # of the sdist, as published
    pytest_args: tuple[str, ...]

    @property
    def label(self) -> str:
        """``name version``."""
        return f"{self.name} {self.version}"

    @property
    def requirements(self) -> Path:
        """The pinned test dependencies."""
        return HERE / f"{self.name}-{self.version}.txt"


SUITES = (
    Suite(
        "starlette",
        "1.10.0",
        "b8399098d4c1e3522734f7235dc79b1fc967f96cf139c81e0fa30479e0685f9b",
        ("tests",),
    ),
    Suite(
        "asgi-lifespan",
        "2.1.0",
        "5e2effaf0bfe39829cf2d64e7ecc47c7d86d676a6599f7afba378c31f5e3a308",
        # Its addopts ask for coverage with a fail-under: not what is measured here.
        # Its trio tests run with the exception groups of the trio it pins (see its .txt),
        # and one that hangs is cancelled after 5 s (they take milliseconds).
        ("-o", "addopts=-rxXs", "--peer-trio-loose-groups", "--peer-trio-deadline=5", "tests"),
    ),
)


class PeerError(Exception):
    """The peer stage cannot go on (download, install or a run that did not complete)."""


def main(argv: list[str] | None = None) -> int:
    """Run the peer suites; 0 when every difference is an expected one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where to put sdists, venvs and logs (default: a temp dir)")
    parser.add_argument("--suite", action="append", choices=[s.name for s in SUITES], help="only this suite")
    args = parser.parse_args(argv)
    suites = [s for s in SUITES if not args.suite or s.name in args.suite]
    expected = load_expected(EXPECTED)

    work = args.work or Path(tempfile.mkdtemp(prefix="asgi-refresh-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    problems: list[str] = []
    tables: list[str] = []
    try:
        for suite in suites:
            results = run_suite(suite, work / suite.name)
            tables.append(counts_table(suite, results))
            problems += compare(suite, results, expected)
    except PeerError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print("\n== peer suites: outcomes per run (wrapped = every app in RefreshMiddleware;")
    print("   wrapped-in = tests that ran at least one app through it)")
    print("\n".join(tables))
    print(f"peer stage took {time.monotonic() - started:.0f} s")
    if problems:
        print(f"\npeers: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"peers: every difference from the baseline is a documented one (listed in {EXPECTED.name})")
    return 0


def run_suite(suite: Suite, work: Path) -> dict[str, dict[str, Any]]:
    """Fetch, install and run ``suite`` three times; its outcomes per mode."""
    work.mkdir(parents=True, exist_ok=True)
    source = fetch(suite, work)
    python = install(suite, source, work / "venv")
    # The three runs at once: each is one pytest process of small, quick tests, and CI
    # runs this stage beside the benchmark smoke run, which mostly sleeps; one after
    # another they left a core idle for over a minute of CI's 15.
    print(f"== peers: {suite.label}, {', '.join(MODES)} at once", flush=True)
    with ThreadPoolExecutor(len(MODES)) as pool:
        runs = {mode: pool.submit(run_tests, suite, source, python, mode, work) for mode in MODES}
    return {mode: run.result() for mode, run in runs.items()}


def fetch(suite: Suite, work: Path) -> Path:
    """Download the pinned sdist, check its hash and that it ships tests; unpack it."""
    download = work / "sdist"
    shutil.rmtree(download, ignore_errors=True)
    spec = f"{suite.name}=={suite.version}"
    quietly(sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--quiet",
            "--no-binary", ":all:", "--no-deps", "-d", str(download), spec)  # fmt: skip
    found = list(download.glob("*.tar.gz"))
    if len(found) != 1:
        raise PeerError(f"{spec}: expected one sdist, pip downloaded {[p.name for p in found]}")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != suite.sha256:
        raise PeerError(f"{found[0].name}: sha256 {digest}, pinned {suite.sha256}; it changed on the index")
    with tarfile.open(found[0]) as archive:
        archive.extractall(download, filter="data")  # an sdist is outside input
    roots = [p for p in download.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / "tests").is_dir():
        raise PeerError(f"{found[0].name} has no tests/ folder: its sdist does not ship its tests")
    return roots[0]


def install(suite: Suite, source: Path, venv: Path) -> Path:
    """A venv of the suite's own, so that its pins never touch the project's test venv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # One resolution for everything, so that a pin that conflicts with asgi-refresh's
    # own requirements fails here rather than being silently replaced. uv (which .ci/run
    # installs) resolves and installs what pip would, in a fraction of the time.
    quietly(sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", str(python),
            "-e", str(REPO), str(source), "-r", str(suite.requirements))  # fmt: skip
    return python


def quietly(*command: str) -> None:
    """Run ``command`` with its output captured; on failure, show what it said."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise PeerError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def run_tests(suite: Suite, source: Path, python: Path, mode: str, work: Path) -> dict[str, Any]:
    """One run of the suite; the outcomes that the plugin recorded."""
    outcomes = work / f"outcomes-{mode}.json"
    log = work / f"pytest-{mode}.log"
    outcomes.unlink(missing_ok=True)
    command = [
        str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "peer_plugin",
        f"--timeout={TEST_TIMEOUT}", f"--peer-wrap={mode}", f"--peer-outcomes={outcomes}",
        *suite.pytest_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                command, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise PeerError(f"{suite.label} ({mode}) ran past {RUN_TIMEOUT} s; log: {log}") from None
    # pytest's own exit code is no verdict here (a baseline may fail as root, say), but
    # interrupted (2), internal error (3), usage error (4) and no tests (5) are.
    if done.returncode not in (0, 1) or not outcomes.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise PeerError(f"{suite.label} ({mode}): pytest exited {done.returncode}; end of {log}:\n{tail}")
    result: dict[str, Any] = json.loads(outcomes.read_text())
    result["seconds"] = time.monotonic() - started
    if not result["tests"]:
        raise PeerError(f"{suite.label} ({mode}) ran no test")
    return result


def load_expected(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The expected differences by (suite, mode, test id), each with a known reason."""
    data = tomllib.loads(path.read_text())
    reasons: dict[str, str] = data.get("reasons", {})
    expected: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in data.get("expected", []):
        where = f"{path.name}: entry {entry.get('test')!r}"
        if entry.get("reason") not in reasons:
            raise SystemExit(f"{where}: reason must be one of {sorted(reasons)}, not {entry.get('reason')!r}")
        if entry.get("outcome") not in OUTCOMES:
            raise SystemExit(f"{where}: outcome must be one of {OUTCOMES}, not {entry.get('outcome')!r}")
        for mode in entry.get("modes", WRAPPED):
            if mode not in WRAPPED:
                raise SystemExit(f"{where}: modes must be among {WRAPPED} (got {mode!r})")
            key = (entry["suite"], mode, entry["test"])
            if key in expected:
                raise SystemExit(f"{where}: listed twice for {mode}")
            expected[key] = entry
    return expected


def compare(
    suite: Suite, results: dict[str, dict[str, Any]], expected: dict[tuple[str, str, str], dict[str, Any]]
) -> list[str]:
    """Every difference from the baseline that is not expected, and every stale entry."""
    problems = []
    baseline = results["baseline"]["tests"]
    for mode in WRAPPED:
        tests = results[mode]["tests"]
        seen = set()
        for test in sorted(baseline.keys() | tests.keys()):
            before = baseline.get(test, {}).get("outcome", "absent")
            after = tests.get(test, {}).get("outcome", "absent")
            if before == after:
                continue
            entry = expected.get((suite.name, mode, test))
            if entry is not None and entry["outcome"] == after:
                seen.add(test)
                continue
            why = tests.get(test, {}).get("message") or baseline.get(test, {}).get("message", "")
            wanted = f" (listed as {entry['outcome']})" if entry else ""
            problems.append(f"{suite.label} [{mode}] {test}: {before} -> {after}{wanted}: {why}")
        if not any(t.get("wrapped") for t in tests.values()):
            problems.append(
                f"{suite.label} [{mode}] wrapped no app: the plugin reached none of its entry points"
            )
        fetches = results[mode]["fetches"]
        if mode == "two" and not (fetches["async"] and fetches["sync"]):
            problems.append(f"{suite.label} [{mode}] the two refreshers never refreshed ({fetches})")
        hung = [t for t, o in tests.items() if o["outcome"] != "passed" and TIMED_OUT in o.get("message", "")]
        if hung:
            problems.append(
                f"{suite.label} [{mode}] {len(hung)} test(s) hung until pytest-timeout stopped them "
                f"({', '.join(hung)}); the tests after them in that run may fail as a consequence "
                "(the event loop was interrupted by a signal)"
            )
        for key in sorted(expected):
            if key[:2] == (suite.name, mode) and key[2] not in seen:
                now = tests.get(key[2], {}).get("outcome", "absent")
                problems.append(
                    f"{suite.label} [{mode}] {key[2]}: listed in {EXPECTED.name} but no longer "
                    f"differs (now {now} wrapped and unwrapped): remove the entry"
                )
    return problems


def counts_table(suite: Suite, results: dict[str, dict[str, Any]]) -> str:
    """Counts of each outcome per run of one suite."""
    columns = "".join(f"{name:>9}" for name in (*OUTCOMES, "total"))
    lines = [f"{suite.label:<22}{columns}  wrapped-in  time"]
    for mode in MODES:
        tests = results[mode]["tests"]
        counts = Counter(t["outcome"] for t in tests.values())
        reached = sum(1 for t in tests.values() if t.get("wrapped"))
        cells = "".join(f"{counts[name]:>9}" for name in OUTCOMES)
        label = {"baseline": "baseline", "zero": "wrapped, zero", "two": "wrapped, two"}[mode]
        lines.append(
            f"  {label:<20}{cells}{len(tests):>9}  {reached:>10}  {results[mode]['seconds']:>3.0f} s"
        )
    fetches = results["two"]["fetches"]
    lines.append(f"  (wrapped, two: {fetches['async']} async and {fetches['sync']} sync fetches in all)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
