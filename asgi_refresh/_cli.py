"""``asgi-refresh check|fetch CONFIG``: what an operator runs on a configuration before deploying it."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .__about__ import __version__
from ._clock import SystemClock
from ._config import Config, ConfigError, load_config, scrub
from ._contain import describe_error, escapes, is_async_callable
from ._derived import Derived
from ._duration import format_duration, parse_duration
from ._family import RefresherFamily, shown_key
from ._middleware import RefreshMiddleware
from ._refresher import Refresher
from ._runtime import Runtime
from ._sources.base import Fetched, Source, SourceContext, is_source
from ._sources.file import FileSource
from ._sources.function import source_for
from ._sources.http import HTTPSource
from ._sources.sse import SSESource
from ._status import Status
from ._text import printable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._cluster.base import Codec
    from ._families import FamilyRun

EXIT_OK = 0
EXIT_REQUIRED_FAILED = 1
EXIT_INVALID = 2

PREVIEW_CHARS = 60
_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "apikey", "api_key", "private")
_POLL = 0.02

EPILOG = """\
exit status:
  0  check: the configuration is valid; fetch: every required refresher loaded,
     every preload key of a required family loaded and every required derived
     value was computed (one with required = false may have failed: it is
     reported, not fatal)
  1  fetch: at least one required refresher failed (or a preload key of a
     required family, or a required derived value); with --write-snapshot, any
     refresher failed or a snapshot that should be written could not be
  2  the configuration is invalid or unreadable, a NAME is unknown, or the
     command line is wrong

Values are read from the environment for ${VAR} and ${VAR:-default}; values that
came from the environment, header values and credentials are never printed.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: The arguments after the program name; defaults to ``sys.argv[1:]``.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with _log_to_stderr(args.verbose) as formatter:
            return _run(args, formatter)
    except BrokenPipeError:
        # `asgi-refresh check CONFIG | head -2`: the reader left, which is not an error.
        # Point stdout at /dev/null so that Python's exit flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class _ScrubbingFormatter(logging.Formatter):
    """Formats a log record, then masks every value that came from the environment.

    The whole formatted text is scrubbed, so a secret is masked wherever it ends
    up: in the message, in its arguments, or in a traceback. Each line is then
    made safe for the terminal (its indentation kept, for tracebacks).
    """

    secrets: frozenset[str] = frozenset()

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, without any of ``secrets`` or a terminal control."""
        lines = scrub(super().format(record), self.secrets).splitlines()
        return "\n".join(line[: len(line) - len(line.lstrip(" "))] + printable(line) for line in lines)


@contextmanager
def _log_to_stderr(verbose: bool) -> Iterator[_ScrubbingFormatter]:
    """The package's log on stderr with --verbose; otherwise the output says it all."""
    logger = logging.getLogger("asgi_refresh")
    handler: logging.Handler = logging.StreamHandler(sys.stderr) if verbose else logging.NullHandler()
    formatter = _ScrubbingFormatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if verbose:
        logger.setLevel(logging.INFO)
    try:
        yield formatter
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved


def _run(args: argparse.Namespace, formatter: _ScrubbingFormatter) -> int:
    # As `python -m` and uvicorn do: `target = "myapp.rates:load"` imports from here.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        config = load_config(args.config, middleware=RefreshMiddleware)
    except ConfigError as exc:
        if args.json:
            _print_json({"config": str(args.config), "ok": False, "problems": exc.problems})
        else:
            _print_problems(exc)
        return EXIT_INVALID
    formatter.secrets = config.secrets
    if args.command == "check":
        return _check(args, config)
    return _fetch(args, config)


def _parser() -> argparse.ArgumentParser:
    program = "python -m asgi_refresh" if _run_as_module() else "asgi-refresh"
    parser = argparse.ArgumentParser(
        prog=program,
        description=_wrapped(
            "Check an asgi_refresh configuration file (TOML or JSON) and try its refreshers, "
            "before deploying it."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asgi_refresh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("config", metavar="CONFIG", help="the configuration file: *.toml or *.json")
    common.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    common.add_argument("-v", "--verbose", action="store_true", help="also show the package's log on stderr")
    commands.add_parser(
        "check",
        parents=[common],
        help="validate CONFIG and list its refreshers",
        description=_wrapped(
            "Validate CONFIG (every problem at once) and list its refreshers: name, "
            "source, schedule and whether it is required; and its families and derived values. "
            "Nothing is fetched."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch = commands.add_parser(
        "fetch",
        parents=[common],
        help="fetch each refresher once and show what came back",
        description=_wrapped(
            "Fetch each refresher of CONFIG once, as the middleware does at startup "
            "(sources opened and closed, one shared HTTP client), and show the outcome, the time "
            "it took, the size and a short preview of each value. A refresher that authenticates "
            "with another one's token (auth = { bearer = ... }) fetches that one too. Derived "
            "values are computed from the values fetched, with the refreshers they need. Each "
            "family's preload keys are loaded as at startup, one row per key."
        ),
        epilog=EPILOG
        + "\nThe preview shows the data itself (except for refreshers whose name or value looks\n"
        "like a secret); use --no-preview when the data is confidential.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="only these refreshers, families or derived values (default: all)",
    )
    fetch.add_argument(
        "--timeout",
        default="1m",
        type=_duration,
        metavar="DURATION",
        help="give up on fetches still running after this long (default: 1m)",
    )
    fetch.add_argument("--no-preview", action="store_true", help="do not show any part of the values")
    fetch.add_argument(
        "--write-snapshot",
        metavar="DIR",
        type=Path,
        help="also write each value fetched as a snapshot in DIR (created 0700, files 0600), the "
        "files a middleware with snapshot_dir = DIR starts from when its upstream is down: for a "
        "build step to bake into an image. Refreshers with snapshot = false, and Fresh tokens "
        "(unless snapshot = true), are skipped, and families are never written; any failed fetch "
        "makes the exit status 1",
    )
    return parser


def _wrapped(text: str) -> str:
    return textwrap.fill(text, width=80)


def _run_as_module() -> bool:
    return os.path.basename(sys.argv[0]) == "__main__.py"


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text!r})")
    return seconds


def _print_problems(error: ConfigError) -> None:
    """The library's own wording, each line made safe for a terminal (it quotes outside text)."""
    text = str(error)
    if text != "\n".join(error.problems):
        print(printable(text.split("\n", 1)[0]), file=sys.stderr)  # "invalid configuration in ...:"
        for problem in error.problems:
            print(f"  {printable(problem)}", file=sys.stderr)
        return
    for problem in error.problems:  # a file that cannot be read: its one line
        print(printable(problem), file=sys.stderr)


def _print_json(document: Any) -> None:
    # ASCII only (\u escapes): a terminal showing it gets no control or bidi character raw.
    print(json.dumps(document, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> str:
    """Aligned columns; every cell is made safe to print (paths, errors and previews come from outside)."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


# -- check --------------------------------------------------------------------------------


def _describe(config: Config, refresher: Refresher) -> dict[str, Any]:
    """What ``check`` says about one refresher: never a header, a credential or a query."""
    source = config.sources[refresher.name]
    fetch = refresher.fetch
    if isinstance(fetch, SSESource):
        where = fetch.safe_url + (f" + fetch_url {fetch.fetch_url}" if fetch.fetch_url is not None else "")
    elif isinstance(fetch, HTTPSource):
        where = f"{fetch.method} {fetch.safe_url}"
    elif isinstance(fetch, FileSource):
        where = str(fetch.path)
    else:
        where = config.targets[refresher.name]
    schedule = f"every {format_duration(refresher.every)}"
    if isinstance(fetch, HTTPSource) and fetch.min_every is not None and fetch.max_every is not None:
        schedule += (
            f" (cache headers, {format_duration(fetch.min_every)}..{format_duration(fetch.max_every)})"
        )
    if isinstance(fetch, FileSource) and fetch.watch:
        schedule += " + watch"
    if isinstance(fetch, SSESource):
        # While the stream is up, `every` costs nothing; it is the safety net when it is down.
        schedule = (
            f"stream ({fetch.on_event}); {schedule} while it is down"
            if fetch.fetch_url is not None
            else f"stream ({fetch.on_event}) only: no fetch_url to poll"
        )
    return {
        "name": refresher.name,
        "source": source,
        "from": config.scrub(where),
        "every": refresher.every,
        "schedule": schedule,
        "timeout": refresher.timeout,
        "required": refresher.required,
        "needs": list(config.needs.get(refresher.name, ())),
    }


def _check(args: argparse.Namespace, config: Config) -> int:
    described = [_describe(config, refresher) for refresher in config.refreshers]
    families = [
        {
            "name": family.name,
            "schedule": f"every {format_duration(family.every)}",
            "idle_ttl": format_duration(family.idle_ttl),
            "max_keys": family.max_keys,
            "preload": len(family.preload),
            "required": family.required,
        }
        for family in config.families
    ]
    derived = [
        {
            "name": item.name,
            "inputs": list(item.inputs),
            "compute": config.scrub(config.computes.get(item.name, "?")),
            "timeout": item.timeout,
            "required": item.required,
        }
        for item in config.derived
    ]
    if args.json:
        report: dict[str, Any] = {"config": str(args.config), "ok": True, "refreshers": described}
        if families:
            report["families"] = families
        if derived:
            report["derived"] = derived
        _print_json(report)
        return EXIT_OK
    count = len(described)
    also = f", {len(families)} famil{'ies' if len(families) != 1 else 'y'}" if families else ""
    also += f", {len(derived)} derived value{'s' if len(derived) != 1 else ''}" if derived else ""
    print(f"{printable(str(args.config))}: valid, {count} refresher{'s' if count != 1 else ''}{also}")
    print()
    if families:
        family_rows = [
            [
                family.name,
                f"every {format_duration(family.every)}",
                format_duration(family.idle_ttl),
                str(family.max_keys),
                str(len(family.preload)),
                "yes" if family.required and family.preload else "no",
            ]
            for family in config.families
        ]
        print(_table(family_rows, ["FAMILY", "SCHEDULE", "IDLE_TTL", "MAX_KEYS", "PRELOAD", "REQUIRED"]))
        if not described:
            return EXIT_OK
        print()
    rows = [
        [
            item["name"],
            f"{item['source']} {item['from']}",
            item["schedule"],
            "yes" if item["required"] else "no",
        ]
        for item in described
    ]
    print(_table(rows, ["NAME", "SOURCE", "SCHEDULE", "REQUIRED"]))
    if derived:
        derived_rows = [
            [
                spec.name,
                ", ".join(spec.inputs),
                config.scrub(config.computes.get(spec.name, "?")),
                "yes" if spec.required else "no",
            ]
            for spec in config.derived
        ]
        print()
        print(_table(derived_rows, ["DERIVED", "INPUTS", "COMPUTE", "REQUIRED"]))
    return EXIT_OK


# -- fetch --------------------------------------------------------------------------------


@dataclass
class _Result:
    name: str
    required: bool
    outcome: str  # ok, failed
    duration: float | None
    size: int | None
    size_of: str | None
    preview: str | None
    error: str | None
    needed_by: list[str]
    snapshot: _Snapshot | None = None  # with --write-snapshot

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "required": self.required,
            "outcome": self.outcome,
            "duration": None if self.duration is None else round(self.duration, 6),
            "size": self.size,
            "size_of": self.size_of,
            "preview": self.preview,
            "error": self.error,
            "needed_by": self.needed_by,
            "snapshot": None if self.snapshot is None else dataclasses.asdict(self.snapshot),
        }


@dataclass
class _Snapshot:
    """What ``--write-snapshot`` did for one refresher."""

    outcome: str  # written, skipped, not written
    file: str | None  # the file written, as the command line named its directory
    version: str | None
    detail: str | None  # why it was skipped or not written


@dataclass(frozen=True)
class _Captured:
    """What the runtime published for one refresher, taken while its source is still open."""

    value: Any
    fetched_at: float  # seconds since the epoch
    expires_at: float | None  # a Fresh value's expiry, seconds since the epoch
    handover: Mapping[str, str] | None  # the source's HTTP validators for the value


@dataclass
class _KeyResult:
    """What ``fetch`` says about one preload key of a family (or a family without any)."""

    family: str
    key: str | None  # as the package shows keys (`shown_key`); None: a family without preload keys
    required: bool
    outcome: str  # ok, failed, nothing to fetch
    duration: float | None = None
    size: int | None = None
    size_of: str | None = None
    preview: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.family if self.key is None else f"{self.family}[{self.key}]"

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.family,
            "key": self.key,
            "required": self.required,
            "outcome": self.outcome,
            "duration": None if self.duration is None else round(self.duration, 6),
            "size": self.size,
            "size_of": self.size_of,
            "preview": self.preview,
            "error": self.error,
        }
        if self.key is None:
            document["note"] = _NOT_PRELOADED
        return document


_NOT_PRELOADED = "no preload keys: its keys load when requests ask for them (nothing to fetch)"


def _unknown_names(args: argparse.Namespace, config: Config, known: list[str]) -> list[str]:
    """A line for each NAME that is none of ``known``, with the closest known name if one is close."""
    kinds = ["refresher"]
    if config.families:
        kinds.append("family")
    if config.derived:
        kinds.append("derived value")
    what = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    lines = []
    for name in args.names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"{args.config}: no {what} named {name!r} (known: {', '.join(known)}){suggestion}")
    return lines


def _fetch(args: argparse.Namespace, config: Config) -> int:
    by_name = {refresher.name: refresher for refresher in config.refreshers}
    known = [*by_name, *(family.name for family in config.families), *(item.name for item in config.derived)]
    unknown = _unknown_names(args, config, known)
    if unknown:
        for line in unknown:
            print(printable(line), file=sys.stderr)
        return EXIT_INVALID
    directory: Path | None = args.write_snapshot
    if directory is not None and directory.exists() and not directory.is_dir():
        print(printable(f"--write-snapshot {directory}: exists and is not a directory"), file=sys.stderr)
        return EXIT_INVALID
    # A derived value is computed, not fetched: from the values of its inputs, fetched here too.
    computed = _derived_for(config, args.names)
    wanted = [name for name in args.names if name in by_name] if args.names else list(by_name)
    wanted += [name for item in computed for name in item.inputs if name in by_name]
    selected = _with_needs(config, wanted)
    families = [family for family in config.families if not args.names or family.name in args.names]
    needed_by: dict[str, list[str]] = {name: [] for name in selected}
    for name in selected:
        for needed in config.needs.get(name, ()):
            needed_by[needed].append(name)
    results, computed_results, key_results, captured = anyio.run(
        _fetch_once,
        config,
        [by_name[name] for name in selected],
        computed,
        families,
        args.timeout,
        directory is not None,
    )
    for key_result in key_results:
        if args.no_preview:
            key_result.preview = None
        if key_result.error is not None:
            key_result.error = config.scrub(key_result.error)
    for result in computed_results:
        if args.no_preview:
            result.preview = None
        if result.error is not None:
            result.error = config.scrub(result.error)
    for result in results:
        result.needed_by = needed_by[result.name]
        if args.no_preview:
            result.preview = None
        if result.error is not None:
            result.error = config.scrub(result.error)
        if directory is not None:
            result.snapshot = _write_snapshot(config, by_name[result.name], result, captured, directory)
            if result.snapshot.detail is not None:
                result.snapshot.detail = config.scrub(result.snapshot.detail)
    failed_required = any(result.required and result.outcome != "ok" for result in results)
    failed_derived = any(result.required and result.outcome != "ok" for result in computed_results)
    failed_family = any(result.required and result.outcome == "failed" for result in key_results)
    unwritten = directory is not None and any(
        result.snapshot is not None and result.snapshot.outcome == "not written" for result in results
    )
    if args.json:
        document: dict[str, Any] = {
            "config": str(args.config),
            "ok": not (failed_required or failed_derived or failed_family or unwritten),
            "snapshot_dir": None if directory is None else str(directory),
            "refreshers": [result.as_json() for result in results],
        }
        if computed_results:
            document["derived"] = [
                {**result.as_json(), "computed_from": list(spec.inputs)}
                for result, spec in zip(computed_results, computed, strict=True)
            ]
        if key_results:
            document["families"] = [result.as_json() for result in key_results]
        _print_json(document)
    else:
        rows = [
            [
                result.name,
                ("ok (computed)" if kind == "derived" else "ok")
                if result.outcome == "ok"
                else f"FAILED{'' if result.required else ' (not required)'}",
                "-" if result.duration is None else _milliseconds(result.duration),
                "-" if result.size is None else f"{result.size} B {result.size_of}",
                (result.error or "") if result.outcome != "ok" else (result.preview or "(not shown)"),
            ]
            for kind, group in (("refresher", results), ("derived", computed_results))
            for result in group
        ]
        rows += [_key_row(result) for result in key_results]
        print(_table(rows, ["NAME", "OUTCOME", "TIME", "SIZE", "PREVIEW / ERROR"]))
        tried: list[_Result | _KeyResult] = [
            *results,
            *computed_results,
            *(item for item in key_results if item.key is not None),
        ]
        failures = sum(result.outcome != "ok" for result in tried)
        print()
        print(
            f"{len(tried) - failures} ok, {failures} failed"
            + ("; a required refresher failed" if failed_required else "")
            + ("; a required family could not preload a key" if failed_family else "")
            + ("; a required derived value could not be computed" if failed_derived else "")
        )
        if directory is not None and results:
            _print_snapshots(results, directory)  # nothing derived is stored: computed at startup
        if directory is not None and key_results:
            print()
            print("families are not written to snapshots: their preload keys load at startup")
    failed = failed_required or failed_derived or failed_family or unwritten
    return EXIT_REQUIRED_FAILED if failed else EXIT_OK


def _key_row(result: _KeyResult) -> list[str]:
    """The table's row for one preload key, or for a family without any."""
    if result.key is None:
        return [result.name, "-", "-", "-", _NOT_PRELOADED]
    if result.outcome == "ok":
        outcome, detail = "ok", result.preview or "(not shown)"
    else:
        outcome = f"FAILED{'' if result.required else ' (not required)'}"
        detail = result.error or ""
    return [
        result.name,
        outcome,
        "-" if result.duration is None else _milliseconds(result.duration),
        "-" if result.size is None else f"{result.size} B {result.size_of}",
        detail,
    ]


def _derived_for(config: Config, names: list[str]) -> list[Derived]:
    """The derived values named (all if none is) and those they derive from, in the config's order."""
    by_name = {item.name: item for item in config.derived}
    wanted: set[str] = set()
    pending = [name for name in names if name in by_name] if names else list(by_name)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(each for each in by_name[name].inputs if each in by_name)
    return [item for item in config.derived if item.name in wanted]


def _print_snapshots(results: list[_Result], directory: Path) -> None:
    print()
    rows = []
    for result in results:
        snapshot = result.snapshot
        assert snapshot is not None
        if snapshot.outcome == "written":
            detail = f"{snapshot.file}, version {snapshot.version}"
        else:
            detail = snapshot.detail or ""
        rows.append([result.name, snapshot.outcome, detail])
    print(_table(rows, ["NAME", "SNAPSHOT", "FILE / REASON"]))
    print()
    counts = {
        outcome: sum(result.snapshot is not None and result.snapshot.outcome == outcome for result in results)
        for outcome in ("written", "skipped", "not written")
    }
    print(
        printable(
            f"snapshots in {directory}: {counts['written']} written, {counts['skipped']} skipped, "
            f"{counts['not written']} not written"
        )
    )


def _with_needs(config: Config, names: list[str]) -> list[str]:
    """``names`` and every refresher they take a token from, in the config's order."""
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(config.needs.get(name, ()))
    return [refresher.name for refresher in config.refreshers if refresher.name in wanted]


async def _fetch_once(
    config: Config,
    refreshers: list[Refresher],
    derived: list[Derived],
    families: list[RefresherFamily],
    limit: float,
    capture: bool,
) -> tuple[list[_Result], list[_Result], list[_KeyResult], dict[str, _Captured | str]]:
    """Run the refreshers' first fetches the way the middleware does, then stop them.

    ``derived`` values are computed from what was fetched, as at startup, and the
    ``families``' preload keys are loaded as at startup (each tried once). With
    ``capture``, also take what a snapshot of each value needs while its source
    is open (its HTTP validators), or why that failed.
    """
    stopwatch = _Stopwatch(config)
    clock = SystemClock()
    key_durations: dict[tuple[str, object], float] = {}
    # The config's codec, as the middleware gets it: a refresher that keeps versions
    # encodes each value with it, and the default (JSON) may refuse what it accepts.
    runtime = Runtime(
        [stopwatch.wrap(refresher) for refresher in refreshers],
        state={},
        clock=clock,
        codec=config.middleware.get("codec"),
        derived=derived,
        families=[_timed_family(family, key_durations) for family in families],
    )
    stopwatch.handle = runtime.handle
    results: dict[str, _Result] = {}
    computed: dict[str, _Result] = {}
    keys: dict[tuple[str, object], _KeyResult] = {}
    preload_count = sum(len(family.preload) for family in families)
    captured: dict[str, _Captured | str] = {}
    deadline = time.monotonic() + limit
    runtime.prepare()
    preloading = anyio.CancelScope()
    async with anyio.create_task_group() as task_group:
        await task_group.start(runtime.run)
        if runtime.families is not None:
            # As startup does, but one try per key: a fetch reports each first outcome.
            task_group.start_soon(_preload, runtime.families.preload, preloading)
        while len(results) < len(refreshers) or len(computed) < len(derived) or len(keys) < preload_count:
            if runtime.families is not None:
                _note_keys(runtime.families.runs, keys, key_durations, limit, deadline)
            status = runtime.status()
            # A round of computes publishes its values together, at its end: read them then.
            settled = runtime.derivation is None or runtime.derivation.settled()
            _note_computes(
                derived, status, results, computed, runtime.state if settled else None, limit, deadline
            )
            for refresher in refreshers:
                name = refresher.name
                if name in results:
                    continue
                entry = status[name]
                if entry["last_outcome"] is not None:
                    slot = runtime.slots[name]
                    ok = entry["last_outcome"] != "failed"
                    if capture and ok and slot.fetching and time.monotonic() < deadline:
                        continue  # a second fetch is changing the validators: take both after it
                    took = stopwatch.durations.get(name, entry["last_duration"])
                    results[name] = _result(refresher, entry, took, runtime.state.get(name))
                    if capture and ok:
                        captured[name] = _capture(refresher, runtime.state.get(name), slot.expires_at, clock)
                    continue
                # Waiting for a token that failed would only wait for our own timeout.
                failed = [
                    needed
                    for needed in config.needs.get(name, ())
                    if needed in results and results[needed].outcome != "ok"
                ]
                if failed:
                    results[name] = _failed(refresher, f"not fetched: it needs {failed[0]!r}, which failed")
                elif time.monotonic() >= deadline:
                    results[name] = _failed(
                        refresher, f"no result within {format_duration(limit)} (--timeout)"
                    )
                    _explain_stream(refresher, results[name])
            await anyio.sleep(_POLL)
        preloading.cancel()
        await runtime.stop(parse_duration(config.middleware.get("shutdown_timeout", "10s")))
    key_results = [
        keys[family.name, key] if family.preload else _KeyResult(family.name, None, False, "nothing to fetch")
        for family in families
        for key in (family.preload or [None])
    ]
    return (
        [results[refresher.name] for refresher in refreshers],
        [computed[item.name] for item in derived],
        key_results,
        captured,
    )


async def _preload(preload: Callable[..., Awaitable[None]], scope: anyio.CancelScope) -> None:
    with scope:
        await preload(retry=False)


def _timed_family(family: RefresherFamily, durations: dict[tuple[str, object], float]) -> RefresherFamily:
    """``family`` with each key's fetch timed from inside it (a plain fetch in its worker thread)."""
    fetch, name = family.fetch, family.name

    async def timed_on_loop(key: Any, work: Awaitable[Any], took: float = 0.0) -> Any:
        started = time.perf_counter()
        try:
            return await work
        finally:
            durations[name, key] = took + time.perf_counter() - started

    if family.is_async:

        async def timed_async(key: Any) -> Any:
            return await timed_on_loop(key, fetch(key))

        return dataclasses.replace(family, fetch=timed_async)

    def timed(key: Any) -> Any:
        started = time.perf_counter()
        try:
            value = fetch(key)
        finally:
            durations[name, key] = took = time.perf_counter() - started
        if inspect.iscoroutine(value):  # `lambda key: load(key)`: the rest runs on the event loop
            return timed_on_loop(key, value, took)
        return value

    return dataclasses.replace(family, fetch=timed)


def _note_keys(
    runs: Mapping[str, FamilyRun],
    keys: dict[tuple[str, object], _KeyResult],
    durations: Mapping[tuple[str, object], float],
    limit: float,
    deadline: float,
) -> None:
    """Record each preload key whose first load is done, or is not done by ``deadline``."""
    for name, run in runs.items():
        spec = run.spec
        secret = any(word in name.lower() for word in _SECRET_WORDS)
        for key in spec.preload:
            if (name, key) in keys:
                continue
            entry = run.entries.get(key)
            result = _KeyResult(name, shown_key(key), spec.required, "failed")
            if entry is not None and entry.loaded:
                result.outcome = "ok"
                result.duration = durations.get((name, key))
                result.size, result.size_of, text = _measure(entry.value)
                result.preview = "(hidden: looks like a secret)" if secret else _preview(text)
            elif entry is not None and entry.failures:
                result.duration = durations.get((name, key))
                result.error = entry.error
            elif time.monotonic() >= deadline:
                result.error = f"no result within {format_duration(limit)} (--timeout)"
            else:
                continue
            keys[name, key] = result


def _note_computes(
    derived: list[Derived],
    status: Mapping[str, Status],
    results: Mapping[str, _Result],
    computed: dict[str, _Result],
    state: Mapping[str, Any] | None,
    limit: float,
    deadline: float,
) -> None:
    """Record each derived value whose first compute is done, or that cannot be computed.

    ``state``: the published values, or None while a round of computes is under way.
    """
    done = {**results, **computed}
    for item in derived:
        if item.name in computed:
            continue
        entry = status[item.name]
        if entry["last_outcome"] is not None and state is not None:
            computed[item.name] = _result(item, entry, entry["last_duration"], state.get(item.name))
            continue
        # A required input that failed is never retried here: its derived value waits for nothing.
        failed = [
            name
            for name in item.inputs
            if name in done and done[name].required and done[name].outcome != "ok"
        ]
        if failed:
            computed[item.name] = _failed(item, f"not computed: it needs {failed[0]!r}, which failed")
        elif time.monotonic() >= deadline:
            computed[item.name] = _failed(item, f"not computed within {format_duration(limit)} (--timeout)")


def _explain_stream(refresher: Refresher, result: _Result) -> None:
    """Say why an SSE refresher without ``fetch_url`` gave no result within ``--timeout``.

    Without a document to fetch, ``fetch`` can only wait for an event; a stream that
    is up but quiet (nothing changed) reads like a hung server. The stream's own
    state tells the two apart. Within the refresher's own timeout the source says
    so itself; a stream that failed has said why in the error already.
    """
    source = refresher.fetch
    if result.outcome == "ok" or not isinstance(source, SSESource) or source.fetch_url is not None:
        return
    state = source.state()
    if state["connected"]:
        hint = "the stream is connected but sent no event yet"
    elif state["last_error"] is None:
        hint = "the stream has not connected yet"
    else:
        return
    result.error = (
        f"{result.error}; {hint}: without fetch_url the first value is the stream's first event "
        "(set fetch_url to the same value as a document, for startup and for polling while the "
        "stream is down)"
    )


def _capture(
    refresher: Refresher, value: Any, expires_at: float | None, clock: SystemClock
) -> _Captured | str:
    """What the runtime would keep with ``value`` in a snapshot; or why it cannot be had."""
    wall = clock.wall()
    handover: Mapping[str, str] | None = None
    if is_source(refresher.fetch):  # the live source, whose last fetch this was
        try:
            handover = refresher.fetch.handover()
        except BaseException as exc:  # user code (a source of one's own)
            if escapes(exc):
                raise
            return f"its source's handover() raised {describe_error(exc)}"
        if handover is not None:
            handover = dict(handover)
    return _Captured(
        value=value,
        fetched_at=wall,
        expires_at=None if expires_at is None else wall + (expires_at - clock.monotonic()),
        handover=handover,
    )


def _write_snapshot(
    config: Config,
    refresher: Refresher,
    result: _Result,
    captured: Mapping[str, _Captured | str],
    directory: Path,
) -> _Snapshot:
    """Write ``refresher``'s snapshot into ``directory`` as a middleware's runtime would, or say why not.

    The same file in every byte that matters: the fingerprint of the refresher's
    source and of the codec (`fingerprint`), the codec's encoding, version 1 (the
    first value a process publishes), the source's HTTP validators, and for a
    refresher that keeps versions, version 1 kept beside it.
    """
    from . import _snapshots as snapshots
    from ._fingerprint import content_digest, fingerprint

    if result.outcome != "ok":
        return _Snapshot("not written", None, None, "its fetch failed")
    if refresher.snapshot is False:
        return _Snapshot("skipped", None, None, "snapshot = false")
    taken = captured[refresher.name]  # every value fetched is taken
    if isinstance(taken, str):
        return _Snapshot("not written", None, None, taken)
    if taken.expires_at is not None and refresher.snapshot is None:
        return _Snapshot(
            "skipped",
            None,
            None,
            "its value is a Fresh token, kept only in memory (set snapshot = true to write it)",
        )
    codec = _codec(config)
    try:
        data = codec.encode(taken.value)
        if not isinstance(data, bytes):
            raise TypeError(f"encode() returned {type(data).__name__}, not bytes")
    except BaseException as exc:  # user code (a codec), or JSON refusing a set; no event loop here
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _Snapshot("not written", None, None, f"{codec!r} cannot encode it: {describe_error(exc)}")
    if len(data) > snapshots.DEFAULT_MAX_BYTES:
        return _Snapshot(
            "not written",
            None,
            None,
            f"{len(data)} bytes encoded, over the {snapshots.DEFAULT_MAX_BYTES} a snapshot may hold",
        )
    version = f"1-{content_digest(data)}"
    meta = snapshots.snapshot_meta(
        source=fingerprint(source_for(refresher.fetch, refresher.name), codec),
        fetched_at=taken.fetched_at,
        version=version,
        handover=taken.handover,
        expires_at=taken.expires_at,
    )
    try:
        snapshots.write(
            directory,
            refresher.name,
            data,
            meta,
            at=taken.fetched_at,
            number=1,
            keep_versions=refresher.keep_versions,
        )
    except (OSError, ValueError) as exc:  # a directory we may not write, a full disk
        return _Snapshot("not written", None, None, describe_error(exc))
    return _Snapshot("written", str(snapshots.path_of(directory, refresher.name)), version, None)


def _codec(config: Config) -> Codec:
    """The codec the middleware would use: the config's, or JSON."""
    codec: Codec | None = config.middleware.get("codec")
    if codec is None:
        from ._cluster.base import JSONCodec

        codec = JSONCodec()
    return codec


class _Stopwatch:
    """Times each refresher's own fetch, from inside it.

    The runtime's ``last_duration`` runs from the moment a fetch is due, so for a
    first fetch it also counts opening the source (creating the shared HTTP client:
    imports and TLS setup, up to a few hundred ms that block the event loop and so
    land in the time of every fetch running meanwhile too) and, for a refresher that
    authenticates with another one's token, the wait for that token. A row of
    ``fetch`` must say how long that refresher's own fetch took: a plain function is
    timed in its worker thread, an async one once its source is open and the
    refreshers it needs have loaded. A fetch this cannot wrap (a source with a
    plain ``__call__``), one that failed to open or was abandoned in its thread
    keeps the runtime's figure.
    """

    def __init__(self, config: Config) -> None:
        self.needs = config.needs
        self.durations: dict[str, float] = {}
        self.handle: Any = None  # the runtime's, set once it exists

    def wrap(self, refresher: Refresher) -> Refresher:
        """``refresher`` with its fetch timed (the same kind of fetch: source, async or plain)."""
        fetch, name = refresher.fetch, refresher.name
        timed: Source | Callable[[], Any]
        if isinstance(fetch, Source):
            timed = _TimedSource(self, name, fetch)
        elif hasattr(type(fetch), "__aenter__"):
            return refresher  # a context manager of its own: timed by the runtime
        elif is_async_callable(fetch):
            timed = _TimedCall(self, name, fetch)
        else:
            timed = self._timed_in_thread(name, fetch)
        return dataclasses.replace(refresher, fetch=timed)

    def _timed_in_thread(self, name: str, fetch: Callable[[], Any]) -> Callable[[], Any]:
        def timed() -> Any:
            started = time.perf_counter()
            try:
                value = fetch()
            finally:
                self.durations[name] = took = time.perf_counter() - started
            if inspect.iscoroutine(value):  # `lambda: load(url)`: the rest runs on the event loop
                return self._timed_on_loop(name, value, took)
            return value

        return timed

    async def _timed_on_loop(self, name: str, work: Awaitable[Any], took: float = 0.0) -> Any:
        started = time.perf_counter()
        try:
            return await work
        finally:
            self.durations[name] = took + time.perf_counter() - started

    async def loaded(self, name: str) -> None:
        """Once what ``name`` authenticates with has loaded (its fetch would wait for it)."""
        for needed in self.needs.get(name, ()):
            await self.handle.wait_for(needed)


class _TimedCall:
    """An async fetch, timed by ``stopwatch`` once what it needs has loaded."""

    def __init__(self, stopwatch: _Stopwatch, name: str, fetch: Callable[[], Any]) -> None:
        self._stopwatch, self._name, self._fetch = stopwatch, name, fetch

    async def __call__(self) -> Any:
        await self._stopwatch.loaded(self._name)
        work: Coroutine[Any, Any, Any] = self._fetch()
        return await self._stopwatch._timed_on_loop(self._name, work)


class _TimedSource(Source):
    """A source whose fetches are timed by ``stopwatch``; everything else is the source's own."""

    def __init__(self, stopwatch: _Stopwatch, name: str, source: Source) -> None:
        self._stopwatch, self._name, self._source = stopwatch, name, source
        self.kind = source.kind

    @property
    def origin(self) -> str:
        """The wrapped source's."""
        return self._source.origin

    async def open(self, context: SourceContext) -> None:
        """The wrapped source's."""
        await self._source.open(context)

    async def close(self) -> None:
        """The wrapped source's."""
        await self._source.close()

    async def fetch(self) -> Fetched:
        """The wrapped source's fetch, timed once what it needs has loaded."""
        await self._stopwatch.loaded(self._name)
        fetched: Fetched = await self._stopwatch._timed_on_loop(self._name, self._source.fetch())
        return fetched


def _failed(refresher: Refresher | Derived, error: str) -> _Result:
    return _Result(refresher.name, refresher.required, "failed", None, None, None, None, error, [])


def _result(refresher: Refresher | Derived, entry: Status, took: float | None, value: Any) -> _Result:
    if entry["last_outcome"] == "failed":
        return _Result(
            refresher.name,
            refresher.required,
            "failed",
            took,
            None,
            None,
            None,
            entry["last_error"],
            [],
        )
    size, size_of, text = _measure(value)
    secret = entry.get("expires_at") is not None or any(
        word in refresher.name.lower() for word in _SECRET_WORDS
    )
    preview = "(hidden: looks like a secret)" if secret else _preview(text)
    return _Result(refresher.name, refresher.required, "ok", took, size, size_of, preview, None, [])


def _measure(value: Any) -> tuple[int, str, str]:
    """The value's size and what it counts, and its text for the preview."""
    if isinstance(value, bytes):
        return len(value), "bytes", repr(value)
    if isinstance(value, str):
        return len(value.encode()), "UTF-8 text", json.dumps(value, ensure_ascii=False)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
        return len(text.encode()), "repr", text
    return len(text.encode()), "JSON", text


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _preview(text: str) -> str:
    return printable(text, PREVIEW_CHARS)
