"""Declarative configuration: a TOML or JSON file, or a mapping, checked whole, built into the real objects.

There is no second description of the options here. The keys, their types and
defaults come from the signatures of `Refresher`, the sources (`HTTPSource`,
`FileSource`, `LongPollSource`, `SSESource`) and the middleware class (given by
`RefreshMiddleware.from_config`, not imported: the middleware depends on this
module, never the reverse), and their meaning from the
``Args:`` sections of their docstrings; the values are checked by those classes'
own constructors, whose errors say which option they blame (`OptionError`). An
option added to one of them is a config key (and a line of the reference page) at
once, provided its annotation is in `KINDS`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import inspect
import json
import math
import os
import re
import stat
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import quote, quote_plus

import httpx

from ._derived import Derived, graph_problems
from ._duration import parse_duration
from ._family import RefresherFamily
from ._guards import max_shrink, required_keys
from ._option_error import OptionError
from ._refresher import MIN_EVERY, Refresher
from ._sources.bearer import BearerToken
from ._sources.file import FileSource
from ._sources.http import HTTPSource
from ._sources.longpoll import LongPollSource
from ._sources.parsing import FORMATS
from ._sources.sse import SSESource

TABLES = ("defaults", "refreshers", "families", "derived", "middleware")
SOURCES: dict[str, type] = {
    "http": HTTPSource,
    "file": FileSource,
    "longpoll": LongPollSource,
    "sse": SSESource,
}
PYTHON_SOURCE = "python"
TARGET_KEY = "target"
MIDDLEWARE_OWNER = "RefreshMiddleware"  # how EXCLUDED and the reference page name the middleware's options
NONE_WORD = "none"  # TOML has no null: this string stands for None where an option accepts it

_LIVE_CLIENT = "a live `httpx.AsyncClient` cannot come from a file; build that refresher in Python"
EXCLUDED: dict[str, str] = {
    "Refresher.name": "the name of the `[refreshers.<name>]` table",
    "Refresher.fetch": 'chosen by `source` (`target` for `source = "python"`)',
    "HTTPSource.client": _LIVE_CLIENT,
    "LongPollSource.client": _LIVE_CLIENT,
    "SSESource.client": _LIVE_CLIENT,
    "RefreshMiddleware.app": "the app you pass to `from_config`",
    "RefreshMiddleware.refreshers": "the `[refreshers.<name>]` tables",
    "RefreshMiddleware.families": "the `[families.<name>]` tables",
    "RefresherFamily.name": "the name of the `[families.<name>]` table",
    "RefresherFamily.fetch": '`target = "module:function"`, the function taking the key',
    "RefreshMiddleware.derived": "the `[derived.<name>]` tables",
    "Derived.name": "the name of the `[derived.<name>]` table",
    "RefreshMiddleware.clock": "a live object; tests pass it to `from_config` as a keyword argument",
}
"""Parameters that cannot sensibly come from a file, and where they come from instead."""

_DURATION_EXAMPLE = '"5m"'
_IMPORT_STRING = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_MIN_SECRET_CHARS = 4
MAX_FILE_BYTES = 1024 * 1024
"""The largest configuration file read: a real one is a few kilobytes."""
MAX_DEPTH = 32
"""How deep tables and lists may nest, the top level being 1 (``refreshers.names.headers`` is 4)."""
_SHOWN_CHARS = 80  # a value quoted in a problem line is cut to this


class ConfigError(ValueError):
    """A configuration is invalid; every problem found is listed, each with its key path.

    Raised by `RefreshMiddleware.from_config` before anything runs, for a file that
    cannot be read or parsed, and for values that are missing, of the wrong type,
    out of range, unknown (with a did-you-mean) or that name an import that fails.

    Its message starts ``invalid configuration in 'refresh.toml' (2 problems):``
    and lists the problems, one per line; a file that is missing or cannot be read
    is that one line alone (``refresh.toml: file not found``).

    Attributes:
        problems: One line per problem, like
            ``refreshers.names.every: expected a duration like "5m", got "soon"``.
    """

    def __init__(self, origin: str, problems: list[str], *, unreadable: bool = False) -> None:
        self.problems = list(problems)
        if unreadable:
            super().__init__("\n".join(problems))
            return
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(
            f"invalid configuration {origin} ({count}):\n" + "\n".join(f"  {p}" for p in problems)
        )


ConfigError.__module__ = "asgi_refresh"  # tracebacks name it as it is imported: asgi_refresh.ConfigError


# -- the options, read from the real signatures ----------------------------------------


Kind: TypeAlias = Literal[
    "duration",
    "bool",
    "int",
    "number",
    "str",
    "url",
    "path",
    "table",
    "str_table",
    "callable",
    "callables",
    "objects",
    "inputs",
    "guards",
    "format",
    "choice",
    "names",
    "auth",
    "token",
    "coordinator",
    "codec",
    "webhooks",
    "keys",
    "any",
    "unknown",
]
"""How a config value is read (and checked) for an option: one converter each, in `_CONVERTERS`."""

KINDS: dict[str, Kind] = {
    "Duration": "duration",
    "bool": "bool",
    "int": "int",
    "float": "number",
    "int|float": "number",
    "str": "str",
    "str|httpx.URL": "url",
    # From a file, a URL; a mapping built in Python may give an HTTPSource of its own.
    "str|httpx.URL|HTTPSource": "url",
    "str|Collection[str]": "names",
    "str|os.PathLike[str]": "path",
    "Mapping[str,Any]": "table",
    "Mapping[str,str]": "str_table",
    "Fetch": "callable",
    "Compute": "callable",
    "Iterable[str]": "inputs",
    "Validate": "callable",
    "Callable[[Any,Any],object]": "callable",
    "Callable[[BaseException],object]": "callable",
    "Iterable[Listener]": "objects",
    "Guard|Iterable[Guard]": "guards",
    "Format": "format",
    "httpx.Auth|tuple[str,str]|Any": "auth",
    "str|TokenCheck": "token",
    "Coordinator": "coordinator",
    "Codec": "codec",
    "Mapping[str,Webhook]": "webhooks",
    "Iterable[Key]": "keys",
    "Any": "any",
}
"""The kind of each parameter annotation the config reads, as written without spaces or ``| None``.

An annotation that is not here is of kind ``"unknown"``: the value is passed to the
constructor as it is, and a test fails until the annotation is added here (or the
parameter to `EXCLUDED`), so that a new option's type is a decision, not a guess.
One rule stands for a family of annotations: a ``Literal`` of strings (``on_event:
Literal["value", "refetch"]``) is of kind ``"choice"``, its strings the choices.
"""

_STRING_LITERAL = r"""(?:"[\w-]*"|'[\w-]*')"""
_LITERAL = re.compile(rf"Literal\[({_STRING_LITERAL}(?:,{_STRING_LITERAL})*)\]")


@dataclass(frozen=True)
class Option:
    """One config key: a parameter of one of the classes the config builds."""

    owner: str
    parameter: str
    key: str
    kind: Kind
    nullable: bool
    default: Any
    meaning: str
    choices: tuple[str, ...] = ()  # the strings a "choice" option takes

    @property
    def required(self) -> bool:
        """Whether the parameter has no default."""
        return self.default is inspect.Parameter.empty

    @property
    def none_word_applies(self) -> bool:
        """Whether ``"none"`` is worth mentioning: a nullable option that is not a table or free text."""
        return self.nullable and self.kind not in (
            "table",
            "str_table",
            "any",
            "str",
            "url",
            "path",
            "names",
            "callables",
            "objects",
        )


def kind_of(annotation: str) -> tuple[Kind, bool]:
    """The config kind of an annotation (a string: annotations are postponed), and whether None is allowed."""
    parts = _split_union(annotation.replace(" ", ""))
    given = [part for part in parts if part != "None"]
    written = "|".join(given)
    kind: Kind = "choice" if _LITERAL.fullmatch(written) else KINDS.get(written, "unknown")
    return kind, len(given) != len(parts)


def choices_of(annotation: str) -> tuple[str, ...]:
    """The strings of a ``Literal["a", "b"]`` annotation (``| None`` aside); () for any other."""
    given = [part for part in _split_union(annotation.replace(" ", "")) if part != "None"]
    match = _LITERAL.fullmatch("|".join(given))
    return () if match is None else tuple(ast.literal_eval(f"({match[1]},)"))


def _split_union(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


@functools.cache
def _meanings(cls: type) -> dict[str, str]:
    """The ``Args:`` section of a Google-style class docstring, one line per argument."""
    meanings: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside, current, indent = False, "", 0
    for line in lines:
        if not inside:
            inside = line.strip() == "Args:"
            continue
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:
            break  # the next section (Raises:)
        match = re.match(r"(\w+): ?(.*)", line.strip())
        if match and (not current or width <= indent):
            current, indent = match[1], width
            meanings[current] = match[2]
        elif current:
            meanings[current] += " " + line.strip()
    return meanings


def options_of(cls: type, owner: str | None = None) -> list[Option]:
    """Every config key that ``cls``'s constructor takes, in signature order.

    Args:
        cls: The class the config builds.
        owner: The name that `EXCLUDED` and the reference page know it by:
            ``"RefreshMiddleware"`` for a subclass of it. Defaults to the class's name.
    """
    return list(_options_of(cls, owner or cls.__name__))


@functools.cache
def _options_of(cls: type, owner: str) -> tuple[Option, ...]:
    # Once per class: signatures do not change, and a file with thousands of unknown
    # keys asks for them once per key (it took 2.5 ms a key, 12 s for 5,000).
    found = []
    for parameter, declared_by in _parameters(cls):
        if f"{owner}.{parameter.name}" in EXCLUDED:
            continue
        annotation = parameter.annotation if isinstance(parameter.annotation, str) else "Any"
        kind, nullable = kind_of(annotation)
        key = parameter.name
        if cls in SOURCES.values() and key in _refresher_parameters():
            # One table holds both: the source's option takes its source's prefix.
            key = f"{_source_name(cls)}_{key}"
        found.append(
            Option(
                owner=owner,
                parameter=parameter.name,
                key=key,
                kind=kind,
                nullable=nullable,
                default=parameter.default,
                meaning=_meanings(declared_by).get(parameter.name, ""),
                choices=choices_of(annotation),
            )
        )
    return tuple(found)


def _parameters(cls: type) -> list[tuple[inspect.Parameter, type]]:
    """The named parameters of ``cls``'s constructor, each with the class that declares it.

    A subclass's ``__init__(self, app, *, extra, **options)`` passes ``**options`` on
    to its base: the base's parameters are the subclass's too.
    """
    found: dict[str, tuple[inspect.Parameter, type]] = {}
    for klass in cls.__mro__[:-1]:  # object's own takes nothing
        init = vars(klass).get("__init__")
        if init is None:
            continue
        passes_on = False
        for parameter in list(inspect.signature(init).parameters.values())[1:]:  # not self
            if parameter.kind is parameter.VAR_KEYWORD:
                passes_on = True
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                found.setdefault(parameter.name, (parameter, klass))
        if not passes_on:
            break
    return list(found.values())


@functools.cache
def _refresher_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(Refresher).parameters)


def _source_name(cls: type) -> str:
    return next(name for name, source in SOURCES.items() if source is cls)


def refresher_options() -> list[Option]:
    """The keys of ``[defaults]`` and of every ``[refreshers.<name>]``."""
    return options_of(Refresher)


def source_options(source: str) -> list[Option]:
    """The keys a ``[refreshers.<name>]`` table with ``source = <source>`` adds."""
    if source == PYTHON_SOURCE:
        return [
            Option(
                owner="python",
                parameter="fetch",
                key=TARGET_KEY,
                kind="callable",
                nullable=False,
                default=inspect.Parameter.empty,
                meaning=(
                    'Import string ``"module:attribute"`` of the fetch: a zero-argument callable, '
                    "as for `Refresher`'s ``fetch``."
                ),
            )
        ]
    return options_of(SOURCES[source])


def family_options() -> list[Option]:
    """The keys of a ``[families.<name>]`` table: ``target`` (the fetch), then `RefresherFamily`'s options."""
    target = Option(
        owner="RefresherFamily",
        parameter="fetch",
        key=TARGET_KEY,
        kind="callable",
        nullable=False,
        default=inspect.Parameter.empty,
        meaning=(
            'Import string ``"module:function"`` of the fetch: a callable taking the key, as for '
            "`RefresherFamily`'s ``fetch``."
        ),
    )
    return [target, *(o for o in options_of(RefresherFamily) if o.parameter not in ("name", "fetch"))]


def derived_options() -> list[Option]:
    """The keys of every ``[derived.<name>]`` table."""
    return options_of(Derived)


def middleware_options(middleware: type) -> list[Option]:
    """The keys of ``[middleware]``: the parameters of ``middleware``, `RefreshMiddleware` or a subclass."""
    return options_of(middleware, MIDDLEWARE_OWNER)


# -- loading and interpolation ----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """A checked configuration, built into the objects of the Python API."""

    origin: str
    refreshers: tuple[Refresher, ...]
    middleware: dict[str, Any]
    sources: dict[str, str]
    targets: dict[str, str]
    needs: dict[str, tuple[str, ...]]
    secrets: frozenset[str] = field(default_factory=frozenset)
    families: tuple[RefresherFamily, ...] = ()
    derived: tuple[Derived, ...] = ()
    computes: dict[str, str] = field(default_factory=dict)
    """Each derived value's ``compute``, as the file names it (``"myapp.catalog:build"``)."""

    def scrub(self, text: str) -> str:
        """``text`` with every value read from the environment replaced by ``***``."""
        return scrub(text, self.secrets)


def scrub(text: str, secrets: frozenset[str]) -> str:
    """``text`` without any of ``secrets`` (values read from the environment).

    Each secret is masked as written and as a URL shows it once httpx has encoded
    it: percent-encoded in a path, a query or credentials, ``+`` for a space in
    ``params``. A secret in a URL path is cut by a ``?`` or ``#`` in it, so the
    part before one is masked too.
    """
    forms = {form for secret in secrets for form in _forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


@functools.lru_cache(maxsize=1024)
def _forms(secret: str) -> frozenset[str]:
    """``secret`` and the forms it takes in a URL, each at least `_MIN_SECRET_CHARS` long."""
    head = re.split(r"[?#]", secret, maxsplit=1)[0]
    encoders: list[Callable[[], str]] = [
        lambda: secret,
        lambda: head,
        lambda: httpx.URL("https://h/" + head).raw_path.decode("ascii")[1:],
        lambda: httpx.URL("https://h/?" + secret.split("#", 1)[0]).query.decode("ascii"),
        lambda: str(httpx.URL("https://h/", params={"q": secret})).split("?q=", 1)[1],
        lambda: httpx.URL(scheme="https", host="h", username=secret).userinfo.decode("ascii"),
        lambda: quote(secret, safe=""),
        lambda: quote(secret, safe="/"),
        lambda: quote_plus(secret),
        lambda: quote_plus(secret, safe="/"),
    ]
    forms = set()
    for encode in encoders:
        try:
            form = encode()
        except Exception:  # a form httpx refuses to build is a form no URL shows
            continue
        if len(form) >= _MIN_SECRET_CHARS:
            forms.add(form)
    return frozenset(forms)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    middleware: type,
) -> Config:
    """Read, interpolate and check a configuration, and build its objects.

    Args:
        source: A ``.toml`` or ``.json`` file, or a mapping of the same shape.
        environ: Where ``${VAR}`` is looked up; defaults to ``os.environ``.
        middleware: The middleware class whose constructor the ``[middleware]``
            table is for (`RefreshMiddleware` or a subclass); it checks the
            table's values as it checks its own arguments.

    Raises:
        ConfigError: the file cannot be read or parsed, or anything in it is invalid.
    """
    if isinstance(source, Mapping):
        origin, base, document = "(a mapping)", Path.cwd(), source
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        origin, base = f"in {str(path)!r}", path.absolute().parent
        document = _read(path, origin)
    else:
        raise ConfigError(
            "(argument)",
            [
                "(argument): expected a path to a .toml or .json file, or a mapping "
                f"(got {type(source).__name__})"
            ],
        )
    too_deep = _too_deep(document)
    if too_deep is not None:
        raise ConfigError(
            origin,
            [
                f"{too_deep}: tables and lists nest more than {MAX_DEPTH} deep; a configuration "
                "needs a few levels (is this the right file?)"
            ],
        )
    builder = _Builder(base, os.environ if environ is None else environ, middleware)
    config = builder.build(document, origin)
    if builder.problems:
        secrets = frozenset(builder.secrets)
        raise ConfigError(origin, [scrub(problem, secrets) for problem in builder.problems])
    assert config is not None
    return config


class _Duplicates(dict[str, Any]):
    """A JSON object that had a key twice (JSON keeps the last one silently)."""

    twice: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    counted = _Duplicates(result)
    # One pass (a hash per key): a list.count() per key took 20 s for 20,000 keys.
    counted.twice = sorted(key for key, times in Counter(key for key, _ in pairs).items() if times > 1)
    return counted


def _too_deep(document: Any) -> str | None:
    """The key path where tables and lists nest deeper than `MAX_DEPTH`, or None.

    Walked with a stack, not recursion: a cycle in a mapping built in Python, or
    10,000 nested lists, must give a problem line, not a RecursionError.
    """
    pending: list[tuple[Any, tuple[str, ...]]] = [(document, ())]
    while pending:
        value, path = pending.pop()
        if isinstance(value, Mapping):
            children: Iterable[tuple[Any, Any]] = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        if len(path) >= MAX_DEPTH:
            return _key(*path[:8]) + (".…" if len(path) > 8 else "")
        pending.extend((item, (*path, str(key))) for key, item in children)
    return None


def _read(path: Path, origin: str) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(
            origin,
            [f"{path}: cannot tell the format: name the file *.toml or *.json (got {suffix or 'none'!r})"],
        )
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            # A FIFO would block the read, /dev/zero would never end it.
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, a device...)"
            raise ConfigError(origin, [f"{path}: cannot read: {what}"], unreadable=True)
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(origin, [f"{path}: file not found"], unreadable=True) from None
    except OSError as exc:
        raise ConfigError(origin, [f"{path}: cannot read: {exc.strerror or exc}"], unreadable=True) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            origin,
            [
                f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a configuration is a few KiB "
                "(is this the right file?)"
            ],
            unreadable=True,
        )
    try:
        if suffix == ".toml":
            return tomllib.loads(data.decode("utf-8"))
        return json.loads(data, object_pairs_hook=_json_object)
    except UnicodeDecodeError:
        raise ConfigError(origin, [f"{path}: not UTF-8 text"]) from None
    except RecursionError:
        # The parsers recurse per level: thousands of nested [ or { exhaust the stack first.
        raise ConfigError(
            origin, [f"{path}: tables and lists nest more than {MAX_DEPTH} deep (is this the right file?)"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(origin, [f"{path}: invalid TOML: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            origin, [f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from None
    except ValueError as exc:  # an integer of more than 4300 digits, in either format
        raise ConfigError(origin, [f"{path}: invalid {suffix[1:].upper()}: {exc}"]) from None


def _key(*parts: str) -> str:
    """A key path as TOML writes it: ``refreshers.names.headers."X-Token"``."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part) for part in parts)


class _Builder:
    """Collects every problem of one configuration while building it."""

    def __init__(self, base: Path, environ: Mapping[str, str], middleware: type) -> None:
        self.base = base
        self.environ = environ
        self.middleware_class = middleware
        self.problems: list[str] = []
        self.secrets: set[str] = set()
        self.from_env: dict[str, str] = {}  # key path -> the variable its value came from
        self.broken: set[str] = set()  # key paths whose interpolation failed (reported already)
        self.bad_defaults: set[str] = set()  # [defaults] keys reported invalid already
        self.computes: dict[str, str] = {}  # derived name -> its compute's import string
        self._imports: dict[str, Any] = {}

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def got(self, path: str, value: Any) -> str:
        """``value`` for a message, unless it came from the environment (a secret, maybe)."""
        if path in self.from_env:
            return f"the value of ${{{self.from_env[path]}}} (not shown)"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            text = json.dumps(value)  # ASCII: outside text cannot reach a terminal raw
            return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
        if isinstance(value, dict):
            return "a table"
        if isinstance(value, list):
            return "a list"
        try:
            text = repr(value)
        except Exception:  # an int of more than 4300 digits, an object of the user's
            text = f"a {type(value).__name__}"
        return text if len(text) <= 60 else text[:59] + "…"

    # -- interpolation

    def interpolate(self, value: Any, path: tuple[str, ...]) -> Any:
        """``value`` with ``${VAR}`` in every string replaced; tables and lists walked."""
        if isinstance(value, Mapping):
            for key in getattr(value, "twice", ()):
                self.problem(_key(*path, key), "defined twice (JSON keeps only the last); remove one")
            return {key: self.interpolate(item, (*path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [self.interpolate(item, (*path, str(index))) for index, item in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return self._substitute(value, _key(*path))
        return value

    def _substitute(self, text: str, path: str) -> str:
        variables: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match[0] == "$${":
                return "${"
            reference = match[1]
            if reference is None:
                self.problem(path, "unterminated ${ (write $${ for a literal ${)")
                return ""
            parsed = _VARIABLE.fullmatch(reference)
            if parsed is None:
                self.problem(
                    path, f"bad reference ${{{reference}}}: expected ${{NAME}} or ${{NAME:-default}}"
                )
                return ""
            name, default = parsed["name"], parsed["default"]
            found = self.environ.get(name)
            if found:
                variables.append(name)
                if len(found) >= _MIN_SECRET_CHARS:
                    self.secrets.add(found)
                return found
            if default is not None:
                return default
            self.problem(
                path,
                f"environment variable {name} is not set"
                + (" (it is empty)" if found == "" else "")
                + f"; set it, or give a default: ${{{name}:-default}}",
            )
            return ""

        count = len(self.problems)
        result = _REFERENCE.sub(replace, text)
        if len(self.problems) > count:
            self.broken.add(path)
        if variables:
            self.from_env[path] = variables[0]
        return result

    # -- the document

    def build(self, raw: Any, origin: str) -> Config | None:
        if not isinstance(raw, Mapping):
            self.problem("(top level)", f"expected a table with {', '.join(TABLES)}, got {self.got('', raw)}")
            return None
        document = self.interpolate(raw, ())
        for key in document:
            if key not in TABLES:
                self.unknown(_key(key), key, TABLES)
        defaults = self.table(document, "defaults")
        refresher_keys = {option.key: option for option in refresher_options() if option.parameter != "fetch"}
        converted_defaults = {}
        for key, value in defaults.items():
            option = refresher_keys.get(key)
            if option is None:
                hint = ""
                if any(key in {o.key for o in source_options(s)} for s in (*SOURCES, PYTHON_SOURCE)):
                    hint = "; source options go in each [refreshers.<name>] table"
                self.unknown(_key("defaults", key), key, refresher_keys, hint)
                continue
            ok, converted = self.convert(option, value, ("defaults", key))
            if ok:
                converted_defaults[key] = converted
            else:
                self.bad_defaults.add(key)

        tables = self.table(document, "refreshers")
        family_tables = self.table(document, "families")
        if "refreshers" not in document and not family_tables:
            self.problem("refreshers", "missing: add one [refreshers.<name>] table per refresher")
        elif not tables and not family_tables and isinstance(document.get("refreshers"), Mapping):
            self.problem("refreshers", "no refreshers: add one [refreshers.<name>] table per refresher")
        names = [str(name) for name in tables]
        built: list[Refresher] = []
        sources: dict[str, str] = {}
        targets: dict[str, str] = {}
        needs: dict[str, tuple[str, ...]] = {}
        for name, table in tables.items():
            result = self.refresher(str(name), table, converted_defaults, names)
            if result is not None:
                refresher, source, target, needed = result
                built.append(refresher)
                sources[refresher.name] = source
                targets[refresher.name] = target
                needs[refresher.name] = needed

        families: list[RefresherFamily] = []
        for name, table in family_tables.items():
            if str(name) in tables:
                self.problem(
                    _key("families", str(name)),
                    f"a refresher is named {str(name)!r} too; names must be unique across "
                    "[refreshers] and [families]",
                )
                continue
            family = self.family(str(name), table)
            if family is not None:
                families.append(family)

        # Every table's name counts, built or not: one that failed is reported already, and
        # an input naming it is not unknown.
        derived = self.derived_values(
            self.table(document, "derived"), names, [str(name) for name in family_tables]
        )
        middleware = self.middleware(self.table(document, "middleware"), built, derived)
        if self.problems:
            return None
        return Config(
            derived=tuple(derived),
            origin=origin,
            refreshers=tuple(built),
            middleware=middleware,
            sources=sources,
            targets=targets,
            needs=needs,
            secrets=frozenset(self.secrets),
            families=tuple(families),
            computes=dict(self.computes),
        )

    def table(self, document: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = document.get(key, {})
        if not isinstance(value, Mapping):
            self.problem(_key(key), f"expected a table, got {self.got(_key(key), value)}")
            return {}
        return dict(value)

    def unknown(
        self, path: str, key: str, known: Iterable[str], hint: str = "", meant: str | None = None
    ) -> None:
        candidates = sorted(known)
        close = [meant] if meant is not None else difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        if close:
            suggestion = f"; did you mean {close[0]!r}?"
        else:
            suggestion = "" if hint.startswith(";") else f"; known keys: {', '.join(candidates)}"
        self.problem(path, f"unknown key{hint}{suggestion}")

    def refresher(
        self, name: str, raw: Any, defaults: dict[str, Any], names: list[str]
    ) -> tuple[Refresher, str, str, tuple[str, ...]] | None:
        here = ("refreshers", name)
        if not isinstance(raw, Mapping):
            self.problem(_key(*here), f"expected a table, got {self.got(_key(*here), raw)}")
            return None
        count = len(self.problems)
        # The name is checked first and on its own: the constructor would stop at a bad
        # name before looking at anything else. The rest is checked under a stand-in name.
        built_name = name
        name_problem = _name_problem(name)
        if name_problem is not None:
            self.problem(_key(*here), name_problem)
            built_name = _STAND_IN_NAME
        table = dict(raw)
        source = table.pop("source", None)
        choices = (*SOURCES, PYTHON_SOURCE)
        if source is None:
            self.problem(
                _key(*here, "source"), f"missing: say where the data comes from, one of {_quoted(choices)}"
            )
            source_keys: dict[str, Option] = {}
        elif not isinstance(source, str) or source not in choices:
            close = difflib.get_close_matches(source, choices, n=1) if isinstance(source, str) else []
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            self.problem(
                _key(*here, "source"),
                f"expected one of {_quoted(choices)}, "
                f"got {self.got(_key(*here, 'source'), source)}{suggestion}",
            )
            source, source_keys = None, {}  # reported: from here on, as if it were missing
        else:
            source_keys = {option.key: option for option in source_options(source)}
        refresher_keys = {o.key: o for o in refresher_options() if o.parameter not in ("name", "fetch")}
        known = {**refresher_keys, **source_keys}

        refresher_kwargs: dict[str, Any] = {}
        source_kwargs: dict[str, Any] = {}
        for key, value in table.items():
            path = (*here, key)
            option = known.get(key)
            excluded = EXCLUDED.get(f"{SOURCES[source].__name__}.{key}") if source in SOURCES else None
            if option is None and excluded is not None:
                self.problem(_key(*path), f"not configurable in a file: {excluded}")
                continue
            if option is None:
                if source in choices:
                    self.unknown(
                        _key(*path),
                        key,
                        [*known, "source"],
                        self._other_source_hint(key, source),
                        self._same_option(key, source),
                    )
                continue
            ok, converted = self.convert(option, value, path)
            if not ok:
                if option.parameter not in _STAND_INS:
                    continue  # left to its default; `every` gets a stand-in below
                converted = _STAND_INS[option.parameter]  # so that the constructor checks the rest
            if option.owner == "Refresher":
                refresher_kwargs[option.parameter] = converted
            else:
                source_kwargs[option.parameter] = converted
        for key, value in defaults.items():
            refresher_kwargs.setdefault(refresher_keys[key].parameter, value)
        for option in (*source_keys.values(), *refresher_keys.values()):
            given = source_kwargs if option.owner != "Refresher" else refresher_kwargs
            if option.required and option.parameter not in given and option.key not in table:
                if option.owner == "Refresher" and option.key in self.bad_defaults:
                    continue  # its [defaults] value is reported already
                where = " (here or in [defaults])" if option.owner == "Refresher" else ""
                self.problem(_key(*here, option.key), f"missing{where}; expected {_expected(option)}")
        # Without a good `every` (invalid, missing, or refused by the constructor) the
        # refresher's other options are still checked, against a stand-in `every`.
        if "every" not in refresher_kwargs:
            _stand_in_every(refresher_kwargs)

        needed: tuple[str, ...] = ()
        auth = source_kwargs.get("auth")
        if isinstance(auth, BearerToken):
            needed = (auth.refresher,)
            if auth.refresher not in names:
                close = difflib.get_close_matches(auth.refresher, names, n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    _key(*here, "auth", "bearer"),
                    f"no refresher named {auth.refresher!r} to take the token from{suggestion}",
                )
            elif auth.refresher == name:
                self.problem(
                    _key(*here, "auth", "bearer"), "a refresher cannot authenticate with its own value"
                )

        # Each constructor runs whenever its required values are there, so that its
        # complaints are reported along with everything else.
        fetch: Any = None
        if source == PYTHON_SOURCE:
            fetch = source_kwargs.get("fetch")
        elif source in SOURCES and all(
            option.parameter in source_kwargs for option in source_keys.values() if option.required
        ):
            fetch = self.construct(SOURCES[source], source_kwargs, here, source_keys)
        refresher = None
        if all(option.parameter in refresher_kwargs for option in refresher_keys.values() if option.required):
            refresher = self.construct(
                Refresher,
                {"name": built_name, "fetch": _placeholder if fetch is None else fetch, **refresher_kwargs},
                here,
                {**refresher_keys, **source_keys},
                stand_ins={"every": _stand_in_every},
            )
        if len(self.problems) > count or refresher is None or fetch is None:
            return None
        target = _import_string(table[TARGET_KEY]) if source == PYTHON_SOURCE else ""
        return refresher, str(source), target, needed

    def _same_option(self, key: str, source: str) -> str | None:
        """This source's key for what another source calls ``key`` (``http_timeout``: ``sse_timeout``)."""
        if source not in SOURCES:
            return None
        mine = {option.parameter: option.key for option in source_options(source)}
        for other in SOURCES:
            for option in source_options(other):
                if other != source and option.key == key and option.key != option.parameter:
                    return mine.get(option.parameter)
        return None

    def family(self, name: str, raw: Any) -> RefresherFamily | None:
        """A ``[families.<name>]`` table built into a `RefresherFamily`; None after recording its problems."""
        here = ("families", name)
        if not isinstance(raw, Mapping):
            self.problem(_key(*here), f"expected a table, got {self.got(_key(*here), raw)}")
            return None
        count = len(self.problems)
        built_name = name
        try:
            RefresherFamily(name, _family_placeholder, every=3600)
        except (TypeError, ValueError) as exc:
            self.problem(_key(*here), str(exc))
            built_name = _STAND_IN_NAME
        options = {option.key: option for option in family_options()}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            option = options.get(key)
            if option is None:
                hint = '; give target = "module:function"' if key in ("fetch", "source") else ""
                self.unknown(_key(*here, key), key, options, hint)
                continue
            ok, converted = self.convert(option, value, (*here, key))
            if ok:
                kwargs[option.parameter] = converted
        for option in options.values():
            if option.required and option.key not in raw:
                self.problem(_key(*here, option.key), f"missing; expected {_expected(option)}")
        fetch = kwargs.pop("fetch", None)
        if "every" not in kwargs:
            kwargs["every"] = 3600.0  # a stand-in: the other options are still checked
        family = self.construct(
            RefresherFamily,
            {"name": built_name, "fetch": _family_placeholder if fetch is None else fetch, **kwargs},
            here,
            options,
        )
        if len(self.problems) > count or fetch is None:
            return None
        built: RefresherFamily | None = family
        return built

    def _other_source_hint(self, key: str, source: str) -> str:
        for other in (*SOURCES, PYTHON_SOURCE):
            if other != source and key in {option.key for option in source_options(other)}:
                return f" for source {source!r} ({key!r} is an option of source {other!r})"
        if key == "fetch":
            return '; give source = "python" and target = "module:function"'
        return ""

    def construct(
        self,
        cls: Callable[..., Any],
        kwargs: dict[str, Any],
        here: tuple[str, ...],
        options: Mapping[str, Option],
        stand_ins: Mapping[str, Callable[[dict[str, Any]], None]] | None = None,
    ) -> Any:
        """Call the real constructor; each of its complaints becomes a problem at the key it blames.

        A constructor stops at its first complaint. To report the others in the same
        run, the parameter it blamed (`OptionError.option`) is replaced by a stand-in
        (`_STAND_INS`, or put in ``kwargs`` by ``stand_ins[parameter]`` for this
        call), or left to its default, and the constructor is called again. Returns
        None after any complaint.
        """
        replace = stand_ins or {}
        by_parameter = {option.parameter: option for option in options.values()}
        kwargs = dict(kwargs)
        complained = False
        blamed: dict[str, int] = {}
        while True:
            try:
                built = cls(**kwargs)
            except (TypeError, ValueError, ImportError, OverflowError) as exc:
                complained = True
                parameter = self._complaint(exc, here, by_parameter)
                if parameter is None:
                    return None
                blamed[parameter] = blamed.get(parameter, 0) + 1
                option = by_parameter[parameter]
                if blamed[parameter] == 1 and parameter in replace:
                    replace[parameter](kwargs)
                elif (
                    blamed[parameter] == 1
                    and parameter in _STAND_INS
                    and kwargs.get(parameter) != _STAND_INS[parameter]
                ):
                    kwargs[parameter] = _STAND_INS[parameter]
                elif not option.required and parameter in kwargs and blamed[parameter] <= 2:
                    del kwargs[parameter]
                else:
                    return None
                continue
            return None if complained else built

    def _complaint(
        self, exc: Exception, here: tuple[str, ...], by_parameter: Mapping[str, Option]
    ) -> str | None:
        """Record a constructor's complaint under the key of the option it blames; that option's parameter.

        A complaint that blames no option of this table (an error that is not an
        `OptionError`, say from a subclass of the middleware) is recorded at the
        table itself, as it is.
        """
        if isinstance(exc, OptionError) and exc.option in by_parameter:
            option = by_parameter[exc.option]
            # Under its own name, the line need not say the name again.
            text = exc.detail if option.key == option.parameter else exc.text
            line = f"{_key(*here, option.key)}: {_in_toml_terms(text, by_parameter)}"
            blamed: str | None = exc.option
        else:
            text = exc.text if isinstance(exc, OptionError) else str(exc)
            line = f"{_key(*here)}: {_in_toml_terms(text, by_parameter)}"
            blamed = None
        if line not in self.problems:  # the same complaint again, about a stand-in
            self.problems.append(line)
        return blamed

    def derived_values(
        self, tables: dict[str, Any], refreshers: list[str], families: list[str]
    ) -> list[Derived]:
        """One `Derived` per ``[derived.<name>]`` table; then every problem of their graph.

        The graph (name clashes, unknown inputs, families as inputs, cycles) is
        checked over every table with a valid name, built or not, so that a table's
        own problem (a compute that does not take its inputs) hides none of them.
        """
        options = {option.key: option for option in derived_options()}
        built: list[Derived] = []
        graph: list[tuple[str, tuple[str, ...]]] = []
        complete = True
        for name, raw in tables.items():
            here = ("derived", str(name))
            name_problem = _name_problem(str(name))
            if not isinstance(raw, Mapping):
                self.problem(_key(*here), f"expected a table, got {self.got(_key(*here), raw)}")
                if name_problem is None:
                    graph.append((str(name), ()))  # its name is still taken
                complete = False
                continue
            if name_problem is not None:
                self.problem(_key(*here), name_problem.replace("Refresher name", "Derived name", 1))
                complete = False
                continue
            kwargs: dict[str, Any] = {"name": str(name)}
            ok = True
            for key, value in raw.items():
                option = options.get(key)
                if option is None:
                    self.unknown(_key(*here, key), key, options)
                    ok = False
                    continue
                converted_ok, converted = self.convert(option, value, (*here, key))
                if converted_ok:
                    kwargs[option.parameter] = converted
                else:
                    ok = False
            graph.append((str(name), _usable_inputs(kwargs.get("inputs"))))
            for option in options.values():
                if option.required and option.key not in raw:  # present but bad: reported as that
                    example = '"myapp.catalog:build"' if option.key == "compute" else '["products", "prices"]'
                    self.problem(_key(*here, option.key), f"missing: add {option.key} = {example}")
                    ok = False
            if not ok:
                complete = False
                continue
            derived = self.construct(Derived, kwargs, here, options)
            if derived is None:
                complete = False
            else:
                built.append(derived)
                self.computes[derived.name] = _import_string(raw["compute"])
        for problem in graph_problems(graph, refreshers, families, in_file=True):
            complete = False
            blamed = problem.owner.removeprefix("Derived ").strip("'")
            if problem.option == "name":  # the table's own name: taken by another
                self.problem(_key("derived", blamed), problem.text)
            else:
                self.problem(_key("derived", blamed, problem.option), problem.detail)
        return built if complete else []

    def middleware(
        self, table: dict[str, Any], refreshers: list[Refresher], derived: list[Derived] | None = None
    ) -> dict[str, Any]:
        options = {option.key: option for option in middleware_options(self.middleware_class)}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            option = options.get(key)
            if option is None:
                self.unknown(_key("middleware", key), key, options)
                continue
            ok, converted = self.convert(option, value, ("middleware", key))
            if ok:
                kwargs[option.parameter] = converted
            elif option.parameter in _STAND_INS:
                kwargs[option.parameter] = _STAND_INS[option.parameter]  # so that the rest is checked
        self.construct(
            self.middleware_class,
            {"app": _no_app, "refreshers": refreshers, "derived": derived or [], **kwargs},
            ("middleware",),
            options,
        )
        return kwargs

    # -- values

    def convert(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """The value to pass for ``option``; (False, None) after recording a problem."""
        path = _key(*parts)
        if any(broken == path or broken.startswith(path + ".") for broken in self.broken):
            return False, None
        kind = option.kind
        if value is None or (
            isinstance(value, str)
            and value.lower() == NONE_WORD
            and kind not in ("str", "any", "url", "path", "names")
        ):
            if option.nullable or kind == "any" or option.default is None:
                return True, None
            self.problem(path, f"expected {_expected(option)}, got {self.got(path, value)}")
            return False, None
        return _CONVERTERS[kind](self, option, value, parts)

    def _wrong(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        path = _key(*parts)
        self.problem(path, f"expected {_expected(option)}, got {self.got(path, value)}")
        return False, None

    def _to_duration(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if isinstance(value, bool) or not isinstance(value, int | float | str | timedelta):
            return self._wrong(option, value, parts)
        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError):
            return self._wrong(option, value, parts)
        if seconds < 0:
            path = _key(*parts)
            self.problem(
                path, f"expected a positive duration like {_DURATION_EXAMPLE}, got {self.got(path, value)}"
            )
            return False, None
        return True, value

    def _from_env_text(self, parts: tuple[str, ...], value: Any) -> Any:
        """A number or boolean written as ``"${VAR}"`` arrives as text: read it as written."""
        if not (isinstance(value, str) and _key(*parts) in self.from_env):
            return value
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        for number in (int, float):
            try:
                return number(lowered)
            except ValueError:
                pass
        return value

    def _to_bool(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        value = self._from_env_text(parts, value)
        if not isinstance(value, bool):
            return self._wrong(option, value, parts)
        return True, value

    def _to_int(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        value = self._from_env_text(parts, value)
        if isinstance(value, bool) or not isinstance(value, int):
            return self._wrong(option, value, parts)
        return True, value

    def _to_number(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        value = self._from_env_text(parts, value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self._wrong(option, value, parts)
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int no float holds (10**400)
            finite = False
        if not finite:
            # TOML's nan and inf, JSON's NaN and Infinity: no option means them.
            path = _key(*parts)
            self.problem(path, f"expected a finite number, got {self.got(path, value)}")
            return False, None
        return True, value

    def _to_str(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if not isinstance(value, str):
            return self._wrong(option, value, parts)
        return True, value

    def _to_path(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if not isinstance(value, str | os.PathLike):
            return self._wrong(option, value, parts)
        where = _key(*parts)
        if not _is_file_name(value):
            self.problem(where, f"expected {_expected(option)}, got {self.got(where, value)}")
            return False, None
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~nobody/x": no such user, no home directory to put in
            self.problem(where, f"{self.got(where, value)}: no home directory for that ~user")
            return False, None
        return True, path if path.is_absolute() else self.base / path

    def _to_any(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """Any value, as it is: the constructor checks it (``default``, ``json``; an unknown kind)."""
        return True, value

    def _to_table(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if not isinstance(value, Mapping):
            return self._wrong(option, value, parts)
        return True, dict(value)

    def _to_str_table(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if not isinstance(value, Mapping):
            return self._wrong(option, value, parts)
        ok = True
        for key, item in value.items():
            if not isinstance(item, str):
                path = _key(*parts, str(key))
                self.problem(path, f"expected a string, got {self.got(path, item)}")
                ok = False
        return ok, dict(value) if ok else None

    def _to_callable(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if callable(value) and not isinstance(value, str):  # a mapping built in Python may hold the function
            return True, value
        found = self.imported(value, parts)
        if found is _FAILED:
            return False, None
        if not callable(found):
            path = _key(*parts)
            self.problem(
                path, f"{value!r} is not callable (it is {type(found).__name__}); name a function or class"
            )
            return False, None
        return True, found

    def _to_keys(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """A list of keys: strings, integers, or lists of them (a tuple key)."""
        if not isinstance(value, list):
            return self._wrong(option, value, parts)
        keys: list[Any] = []
        for index, item in enumerate(value):
            if isinstance(item, list):
                item = tuple(item)  # TOML and JSON have no tuples: a list is a tuple key
            if isinstance(item, bool) or not isinstance(item, str | int | tuple):
                path = _key(*parts, str(index))
                self.problem(
                    path,
                    f"expected a key (a string, an integer or a list of them), got {self.got(path, item)}",
                )
                return False, None
            keys.append(item)
        return True, keys

    def _to_callables(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if not isinstance(value, list):
            return self._wrong(option, value, parts)
        results = [self._to_callable(option, item, (*parts, str(index))) for index, item in enumerate(value)]
        return all(ok for ok, _ in results), [found for _, found in results]

    def _to_inputs(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """A list of names (of refreshers, of derived values): strings, checked by the constructor."""
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            return self._wrong(option, value, parts)
        return True, list(value)

    def _to_objects(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """Objects to call (listeners): instances or functions; a class is refused."""
        if not isinstance(value, list):
            return self._wrong(option, value, parts)
        found = []
        for index, item in enumerate(value):
            path = (*parts, str(index))
            imported = item if not isinstance(item, str) else self.imported(item, path)
            if inspect.isclass(imported):
                # Called with each event, a class would make a new object every time
                # (or raise): what is meant is one instance of it.
                self.problem(_key(*path), _a_class(item, imported))
                imported = _FAILED
            found.append(imported)
        return all(item is not _FAILED for item in found), found

    def _to_guards(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """One guard or a list of them, each as `_guard` reads it; the list keeps its order.

        The order is the Python API's: guards are asked in turn and the first reason
        to hold a value back is the one shown.
        """
        if not isinstance(value, list):
            return self._guard(option, value, parts)
        results = [
            self._guard(option, item, (*parts, str(index)), in_list=True) for index, item in enumerate(value)
        ]
        return all(ok for ok, _ in results), [guard for _, guard in results]

    def _guard(
        self, option: Option, value: Any, parts: tuple[str, ...], *, in_list: bool = False
    ) -> tuple[bool, Any]:
        """A guard of yours (an import string) or a built-in one, ``{ max_shrink = 0.5 }``.

        A one-key table names a built-in guard and its argument, as ``auth = { bearer
        = "token" }`` names a `BearerToken`: it builds ``max_shrink(0.5)`` or
        ``required_keys("a", "b")``.
        """
        if isinstance(value, Mapping):
            return self._built_in_guard(value, parts)
        if isinstance(value, str):
            found = self.imported(value, parts)
            if found is _FAILED:
                return False, None
        elif callable(value):  # a mapping built in Python may hold the guard itself
            found = value
        elif in_list:
            where = _key(*parts)
            self.problem(where, f"expected {_GUARD}, got {self.got(where, value)}")
            return False, None
        else:
            return self._wrong(option, value, parts)
        path = _key(*parts)
        if inspect.isclass(found):
            # Called as guard(old, new), a class would build an object (or raise) on
            # every change, and hold every value back: what is meant is an instance.
            name = found.__name__
            if name in _BUILT_IN_GUARDS:
                example = "0.5" if name == "max_shrink" else '["id"]'
                self.problem(path, f"{name} is a class; write the built-in guard as {{ {name} = {example} }}")
            else:
                self.problem(path, _a_class(value, found, "myapp.guards"))
            return False, None
        if not callable(found):
            self.problem(
                path,
                f"{value!r} is not callable (it is {type(found).__name__}); name a function "
                "guard(old, new) -> None | str",
            )
            return False, None
        return True, found

    def _built_in_guard(self, table: Mapping[str, Any], parts: tuple[str, ...]) -> tuple[bool, Any]:
        path = _key(*parts)
        if len(table) != 1:
            if not table:
                self.problem(path, f"name a built-in guard: {_GUARD_EXAMPLES}")
            else:
                self.problem(
                    path,
                    f"one built-in guard per table (got {', '.join(_key(str(key)) for key in table)}); "
                    'list them instead: guard = [{ max_shrink = 0.5 }, { required_keys = ["id"] }]',
                )
            return False, None
        ((name, argument),) = table.items()
        here = (*parts, str(name))
        if name not in _BUILT_IN_GUARDS:
            close = difflib.get_close_matches(str(name), _BUILT_IN_GUARDS, n=1)
            self.problem(
                _key(*here),
                f"unknown built-in guard; did you mean {close[0]!r}?"
                if close
                else "unknown built-in guard: they are max_shrink and required_keys (a guard of "
                'your own is an import string, like "myapp.guards:check")',
            )
            return False, None
        argument = self._from_env_text(here, argument)
        if name == "max_shrink":
            try:
                return True, max_shrink(argument)
            except ValueError as exc:  # out of range, or not a number: its own words
                self.problem(_key(*here), str(exc).removeprefix("max_shrink: "))
                return False, None
        if not isinstance(argument, list):
            self.problem(
                _key(*here),
                f'expected a list of keys like ["prices", "currency"], got {self.got(_key(*here), argument)}',
            )
            return False, None
        ok = True
        for index, key in enumerate(argument):
            if not isinstance(key, str):
                where = _key(*here, str(index))
                self.problem(where, f"expected a key (a string), got {self.got(where, key)}")
                ok = False
        if ok and not argument:
            self.problem(_key(*here), 'name at least one key, like ["prices"]')
            ok = False
        return (True, required_keys(*argument)) if ok else (False, None)

    def _to_format(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        if isinstance(value, str) and value in FORMATS:
            return True, value
        if isinstance(value, str) and ":" not in value:
            path = _key(*parts)
            close = difflib.get_close_matches(value, FORMATS, n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            self.problem(
                path,
                f'expected one of {_quoted(FORMATS)} or an import string like "yaml:safe_load", '
                f"got {self.got(path, value)}{suggestion}",
            )
            return False, None
        return self._to_callable(option, value, parts)

    def _to_choice(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """One of the option's strings (a ``Literal``); a typo gets a did-you-mean."""
        if isinstance(value, str) and value in option.choices:
            return True, value
        path = _key(*parts)
        close = difflib.get_close_matches(value, option.choices, n=1) if isinstance(value, str) else []
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        self.problem(path, f"expected {_expected(option)}, got {self.got(path, value)}{suggestion}")
        return False, None

    def _to_names(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """A string or a non-empty list of strings (``events = ["flags", "message"]``)."""
        if isinstance(value, str):
            return True, value
        if not isinstance(value, list | tuple | set | frozenset):
            return self._wrong(option, value, parts)
        ok = True
        for index, item in enumerate(value):
            if not isinstance(item, str):
                path = _key(*parts, str(index))
                self.problem(path, f"expected a string, got {self.got(path, item)}")
                ok = False
        if ok and not value:
            # An empty list would let nothing through, silently: leaving it out is what lets all.
            self.problem(
                _key(*parts),
                f"an empty list matches nothing; name at least one, or leave {option.key} out for all",
            )
            ok = False
        return (True, list(value)) if ok else (False, None)

    def _to_coordinator(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """``{ backend = "redis" | "sqlite" | "postgres" | "nats", ... }``: a backend and its options."""
        from ._cluster.nats import NATSCoordinator
        from ._cluster.postgres import PostgresCoordinator
        from ._cluster.redis import RedisCoordinator
        from ._cluster.sqlite import SQLiteCoordinator

        if not isinstance(value, Mapping):
            if hasattr(value, "acquire") and hasattr(value, "subscribe"):  # built in Python
                return True, value
            return self._wrong(option, value, parts)
        backends: dict[str, type] = {
            "redis": RedisCoordinator,
            "sqlite": SQLiteCoordinator,
            "postgres": PostgresCoordinator,
            "nats": NATSCoordinator,
        }
        kind = value.get("backend")
        if not isinstance(kind, str) or kind not in backends:
            path = _key(*parts, "backend")
            close = difflib.get_close_matches(kind, list(backends), n=1) if isinstance(kind, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.problem(
                path, f'expected "redis", "sqlite", "postgres" or "nats", got {self.got(path, kind)}{hint}'
            )
            return False, None
        cls = backends[kind]
        accepted = [name for name in inspect.signature(cls).parameters if name != "self"]
        kwargs: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            if key == "backend":
                continue
            if key not in accepted:
                self.unknown(_key(*parts, key), key, dict.fromkeys(accepted))
                ok = False
            elif key == "path" and isinstance(item, str):
                resolved = Path(item).expanduser()
                kwargs[key] = resolved if resolved.is_absolute() else self.base / resolved
            else:
                kwargs[key] = item
        if not ok:
            return False, None
        try:
            return True, cls(**kwargs)
        except OptionError as exc:  # a bad option of the backend: under its own key
            where = (*parts, exc.option) if exc.option in kwargs else parts
            self.problem(_key(*where), exc.detail if exc.option in kwargs else exc.text)
            return False, None
        except (
            TypeError,
            ValueError,
            ImportError,
            OverflowError,
        ) as exc:  # redis-py, psycopg or nats-py missing
            self.problem(_key(*parts), str(exc))
            return False, None

    def _to_codec(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """An import string naming a codec object (an instance, not its class)."""
        found = value if not isinstance(value, str) else self.imported(value, parts)
        if found is _FAILED:
            return False, None
        if isinstance(found, type):
            self.problem(
                _key(*parts),
                f"{value!r} is a class; name an instance, e.g. `codec = {found.__name__}()` in your "
                'module, written "myapp.module:codec"',
            )
            return False, None
        if not (callable(getattr(found, "encode", None)) and callable(getattr(found, "decode", None))):
            self.problem(_key(*parts), f"{value!r} has no encode() and decode() methods")
            return False, None
        return True, found

    def _to_webhooks(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """``{ deploy = { refreshers = ["names"], github_secret = "${SECRET}" } }``: a Webhook per hook."""
        from ._webhooks import Webhook

        if not isinstance(value, Mapping):
            return self._wrong(option, value, parts)
        options = {hook_option.key: hook_option for hook_option in options_of(Webhook)}
        built: dict[str, Any] = {}
        ok = True
        for hook, table in value.items():
            here = (*parts, str(hook))
            if isinstance(table, Webhook):  # a mapping built in Python
                built[hook] = table
                continue
            if not isinstance(table, Mapping):
                path = _key(*here)
                self.problem(
                    path,
                    'expected a table like { refreshers = ["names"], github_secret = "${HOOK_SECRET}" }, '
                    f"got {self.got(path, table)}",
                )
                ok = False
                continue
            unknown = [key for key in table if key not in options]
            for key in unknown:
                self.unknown(_key(*here, str(key)), str(key), options)
            known = {key: item for key, item in table.items() if key in options}
            # A bad secret is replaced by a valid one to check the rest: dropping it would
            # make up "no scheme given".
            stand_ins = {secret: _stand_in_secret(secret) for secret in _WEBHOOK_SECRETS if secret in known}
            webhook = self.construct(Webhook, known, here, options, stand_ins)  # its own complaints too
            if webhook is None or unknown:
                ok = False
            else:
                built[hook] = webhook
        return (True, built) if ok else (False, None)

    def _to_token(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        """A secret string (from ``${VAR}``, not written in the file), or ``{ check = "mod:func" }``."""
        if isinstance(value, str) or (callable(value) and not isinstance(value, Mapping)):
            return True, value
        if isinstance(value, Mapping) and set(value) == {"check"}:
            return self._to_callable(option, value["check"], (*parts, "check"))
        return self._wrong(option, value, parts)

    def _to_auth(self, option: Option, value: Any, parts: tuple[str, ...]) -> tuple[bool, Any]:
        path = _key(*parts)
        if isinstance(value, list):
            if len(value) == 2 and all(isinstance(item, str) for item in value):
                return True, (value[0], value[1])
        elif isinstance(value, Mapping):
            if set(value) == {"bearer"} and isinstance(value["bearer"], str):
                try:
                    return True, BearerToken(value["bearer"])
                except OptionError as exc:
                    self.problem(_key(*parts, "bearer"), exc.text)
                    return False, None
        elif isinstance(value, str):
            found = self.imported(value, parts)
            if found is _FAILED:
                return False, None
            if isinstance(found, httpx.Auth) or callable(found):
                return True, found
            self.problem(path, f"{value!r} is {type(found).__name__}: expected an httpx.Auth or a callable")
            return False, None
        elif isinstance(value, httpx.Auth | BearerToken | tuple) or callable(value):
            return True, value
        return self._wrong(option, value, parts)

    def imported(self, value: Any, parts: tuple[str, ...]) -> Any:
        """The object an import string names, or `_FAILED` after recording why not."""
        path = _key(*parts)
        if not isinstance(value, str) or not _IMPORT_STRING.fullmatch(value):
            self.problem(
                path, f'expected an import string like "myapp.rates:load", got {self.got(path, value)}'
            )
            return _FAILED
        if value in self._imports:
            return self._imports[value]
        module_name, _, attribute = value.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                self.problem(
                    path,
                    f"module {module_name!r} not found (in {value!r}); is it installed, and is the "
                    "directory that holds it on sys.path (the current directory, for the CLI)?",
                )
            else:
                self.problem(path, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}")
            return _FAILED
        except Exception as exc:
            self.problem(path, f"importing {module_name!r} raised {type(exc).__name__}: {exc}")
            return _FAILED
        found: Any = module
        walked: list[str] = []
        for part in attribute.split("."):
            if not hasattr(found, part):
                owner = ".".join([module_name, *walked]) if walked else module_name
                names = [name for name in dir(found) if not name.startswith("_")]
                close = difflib.get_close_matches(part, names, n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(path, f"{owner!r} has no attribute {part!r} (in {value!r}){suggestion}")
                return _FAILED
            found = getattr(found, part)
            walked.append(part)
        self._imports[value] = found
        return found


_FAILED = object()
_BUILT_IN_GUARDS = ("max_shrink", "required_keys")
_GUARD_EXAMPLES = '{ max_shrink = 0.5 } or { required_keys = ["id"] }'
_GUARD = f'a guard: an import string like "myapp.guards:check", {_GUARD_EXAMPLES}'

_Converter: TypeAlias = Callable[[_Builder, Option, Any, tuple[str, ...]], tuple[bool, Any]]
_CONVERTERS: dict[Kind, _Converter] = {
    "duration": _Builder._to_duration,
    "bool": _Builder._to_bool,
    "int": _Builder._to_int,
    "number": _Builder._to_number,
    "str": _Builder._to_str,
    "url": _Builder._to_str,  # HTTPSource checks it is an absolute http(s) URL
    "path": _Builder._to_path,
    "table": _Builder._to_table,
    "str_table": _Builder._to_str_table,
    "callable": _Builder._to_callable,
    "callables": _Builder._to_callables,
    "inputs": _Builder._to_inputs,
    "objects": _Builder._to_objects,
    "guards": _Builder._to_guards,
    "format": _Builder._to_format,
    "choice": _Builder._to_choice,
    "names": _Builder._to_names,
    "auth": _Builder._to_auth,
    "token": _Builder._to_token,
    "coordinator": _Builder._to_coordinator,
    "codec": _Builder._to_codec,
    "webhooks": _Builder._to_webhooks,
    "keys": _Builder._to_keys,
    "any": _Builder._to_any,
    "unknown": _Builder._to_any,
}
"""How a value of each kind is read: (True, the value to pass) or (False, None) after a problem."""


def _a_class(written: Any, cls: type, module: str = "myapp.listeners") -> str:
    """Why a class is not a listener (or a guard), and what to write instead."""
    variable = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__).lower()
    name = repr(written) if isinstance(written, str) else f"{cls.__module__}.{cls.__qualname__}"
    return (
        f"{name} is a class; name an instance or a function: e.g. define "
        f"`{variable} = {cls.__name__}()` in a module of yours and write "
        f'"{module}:{variable}"'
    )


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """Stands for the app while the [middleware] table is checked."""


def _is_file_name(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` can name a file: "" would be the config's own directory, a NUL ends a C string."""
    try:
        encoded = os.fsencode(value)
    except UnicodeError:  # a lone surrogate ("\ud800"), which no file system name holds
        return False
    return bool(encoded) and b"\0" not in encoded


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f'"{value}"' for value in values)


def _import_string(value: Any) -> str:
    """How to name a target: as written, or the function's own module and name (from a mapping)."""
    if isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', type(value).__name__)}"


def _placeholder() -> None:
    """Stands for a fetch that could not be made, so that the refresher's own options are checked."""


def _usable_inputs(inputs: Any) -> tuple[str, ...]:
    """A table's inputs for the graph check, if they are names the constructor takes; else none."""
    if not isinstance(inputs, list) or not all(
        isinstance(each, str) and each.isidentifier() for each in inputs
    ):
        return ()
    return tuple(dict.fromkeys(inputs))  # repeated: reported by the constructor; the graph once


def _family_placeholder(key: Any) -> None:
    """Stands for a family's fetch that could not be imported, so that its own options are checked."""


_STAND_IN_NAME = "refresher"
_STAND_INS: dict[str, Any] = {
    "url": "https://example.com/",
    "fetch_url": "https://example.com/",  # SSESource: on_event = "refetch" needs one
    "admin_path": "/_refresh",
    "admin_token": "a-stand-in-admin-token",
}
"""Valid values that stand for an invalid one, so that a constructor checks everything else.

Only for parameters whose absence would hide other checks or cause a false one (a
source needs its URL, an SSE source with ``on_event = "refetch"`` its ``fetch_url``;
``admin_token`` is checked only with an ``admin_path``, which complains when there is
no token). Other invalid optional values are left out
instead, falling back to their defaults.
"""


_WEBHOOK_SECRETS = ("github_secret", "gitlab_token", "standard_secret")


def _stand_in_secret(parameter: str) -> Callable[[dict[str, Any]], None]:
    """Put a valid secret for ``parameter`` in a webhook's ``kwargs``, for one that is invalid."""

    def put(kwargs: dict[str, Any]) -> None:
        kwargs[parameter] = "a-stand-in-webhook-secret"

    return put


def _stand_in_every(kwargs: dict[str, Any]) -> None:
    """Put a valid ``every`` in a refresher's ``kwargs``, for one whose own is invalid or missing.

    It agrees with the refresher's ``backoff_max`` (<= every) and ``max_stale``
    (>= every), so that no complaint is made up about them. When no value can
    agree with both, ``max_stale`` is taken out too: the range checks that need
    ``every`` are skipped, every other check is made.
    """
    cap, stale = _seconds(kwargs.get("backoff_max")), _seconds(kwargs.get("max_stale"))
    every = max(3600.0, cap or 0.0)
    if stale is not None and stale < every:
        every = max(stale, MIN_EVERY, cap or 0.0)
        if every > stale:
            del kwargs["max_stale"]
    kwargs["every"] = every


def _seconds(value: Any) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except (TypeError, ValueError):
        return None


def _name_problem(name: str) -> str | None:
    """What `Refresher` says about ``name`` alone, or None if it is a valid name."""
    try:
        Refresher(name, _placeholder, every=3600)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


_PYTHON_ASSIGNMENT = re.compile(
    r"(?P<pass>\b[Pp]ass )?(?<![\w.])(?P<parameter>[a-z_]\w*)="
    r"(?P<value>True|False|None|\"[^\"]*\"|'[^']*'|(?=[\s),]|$))"
)
_TOML_VALUES = {"True": "true", "False": "false", "None": f'"{NONE_WORD}"'}
_TOML_EXAMPLES = {"token": '"${ADMIN_TOKEN}"'}


def _in_toml_terms(message: str, by_parameter: Mapping[str, Option]) -> str:
    """A constructor's ``admin_token=`` / ``admin_loopback_only=True`` as a file writes them.

    Only parameters of this constructor are rewritten, to their config keys:
    ``Pass admin_loopback_only=True`` becomes ``Set admin_loopback_only = true``.
    """

    def rewrite(match: re.Match[str]) -> str:
        option = by_parameter.get(match["parameter"])
        if option is None:
            return match[0]
        value = match["value"]
        if value in _TOML_VALUES:
            value = _TOML_VALUES[value]
        elif value.startswith("'"):
            value = json.dumps(value[1:-1])
        elif not value:
            value = _TOML_EXAMPLES.get(option.kind, "...")
        verb = {"Pass ": "Set ", "pass ": "set "}.get(match["pass"] or "", "")
        return f"{verb}{option.key} = {value}"

    return _PYTHON_ASSIGNMENT.sub(rewrite, message)


_EXPECTED: dict[Kind, str] = {
    "duration": f"a duration like {_DURATION_EXAMPLE}",
    "bool": "true or false",
    "int": "an integer",
    "number": "a number",
    "str": "a string",
    "url": 'a URL like "https://api.example.com/names"',
    "path": "a file path",
    "table": "a table",
    "str_table": "a table of strings",
    "callable": 'an import string like "myapp.rates:load"',
    "callables": 'a list of import strings like ["myapp.hooks:notify"]',
    "objects": 'a list of import strings like ["myapp.hooks:listener"]',
    "inputs": 'a list of names like ["products", "prices"]',
    "guards": 'a guard (an import string like "myapp.guards:check", { max_shrink = 0.5 } or '
    '{ required_keys = ["id"] }) or a list of them',
    "format": f'one of {_quoted(FORMATS)} or an import string like "yaml:safe_load"',
    "choice": "one of the option's choices",  # _expected names them
    "names": 'a string or a list of strings like ["message", "flags"]',
    "auth": '["user", "password"], { bearer = "<refresher>" } or an import string',
    "token": 'a string like "${ADMIN_TOKEN}" or { check = "myapp.auth:check_token" }',
    "coordinator": '{ backend = "redis", url = "redis://host:6379/0" }, '
    '{ backend = "sqlite", path = "refresh.db" }, '
    '{ backend = "postgres", dsn = "postgresql://user@host:5432/db" } or '
    '{ backend = "nats", servers = "nats://host:4222" }',
    "codec": 'an import string like "myapp.codecs:codec" (an object with encode and decode)',
    "webhooks": "a table of hooks like "
    '{ deploy = { refreshers = ["names"], github_secret = "${HOOK_SECRET}" } }',
    "keys": 'a list of keys like ["EUR", ["EUR", "USD"]]',
    "any": "any value",
    "unknown": "a value",
}


def _expected(option: Option) -> str:
    expected = f"one of {_quoted(option.choices)}" if option.kind == "choice" else _EXPECTED[option.kind]
    return f'{expected} or "{NONE_WORD}"' if option.none_word_applies else expected
