"""The ``Derived`` spec: a value computed from other values, and the check of their graph."""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._contain import is_async_callable
from ._duration import Duration, positive_duration
from ._option_error import OptionTypeError, OptionValueError
from ._refresher import RESERVED_NAME, RESERVED_PREFIX

Compute = Callable[..., Awaitable[Any]] | Callable[..., Any]
"""Called with the inputs as keyword arguments: ``async def``, ``def`` or ``async __call__``."""


@dataclass(frozen=True, init=False)
class Derived:
    """A value computed from other refreshers' (or derived) values, published together with them.

    ``compute(**inputs)`` runs once its inputs have loaded at startup, and again
    whenever one of them changes. Its result is published *in the same snapshot* as
    the input change that caused it: the new input value waits (at most
    ``timeout``) for the values derived from it, then all of them are published in
    one step, so a request never sees the new ``products`` with the old ``catalog``.

    A compute that fails (raises, times out) keeps the last good derived value and
    holds nothing else back: the input is published anyway, and ``status()`` shows
    the derived value as failing and stale. Derived values may derive from derived
    values; they are computed in dependency order in the same snapshot.

    Args:
        name: Key under ``scope["state"]`` (so ``request.state.<name>``). A Python
            identifier, unique among refreshers and derived values.
        compute: Called as ``compute(**inputs)`` with each input's value under its
            name. ``async def`` and objects with ``async __call__`` run on the
            event loop; a plain ``def`` runs in a worker thread, so that a heavy
            computation never stalls requests. Compute a new value: never mutate
            the inputs, which requests are reading.
        inputs: The names of the refreshers and derived values it is computed from
            (at least one, no repeats).
        required: If true (the default), startup fails unless the first compute
            succeeds. If false, ``default`` is published until one does.
        default: Value published before the first successful compute of a derived
            value that is not required.
        timeout: Longest one compute may take. It also bounds how long a changed
            input waits to be published, which is why there is always one.
        on_change: Called as ``on_change(old, new)`` after a computed value that
            differs from the published one is published. Sync or async; if it
            raises, the error is logged and nothing else happens.
        on_error: Called as ``on_error(exc)`` after a failed compute.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
    """

    name: str
    compute: Compute
    inputs: tuple[str, ...]
    required: bool
    default: Any
    timeout: float
    on_change: Callable[[Any, Any], object] | None
    on_error: Callable[[BaseException], object] | None

    def __init__(
        self,
        name: str,
        compute: Compute,
        *,
        inputs: Iterable[str],
        required: bool = True,
        default: Any = None,
        timeout: Duration = "10s",
        on_change: Callable[[Any, Any], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise OptionValueError(
                "",
                "name",
                f"Derived name must be a Python identifier so that request.state.<name> "
                f"works, like 'catalog' (got {name!r})",
            )
        if name == RESERVED_NAME or name.startswith(RESERVED_PREFIX):
            raise OptionValueError(
                "", "name", f"Derived name {name!r} is reserved for asgi_refresh itself; choose another name"
            )
        owner = f"Derived {name!r}"
        if not callable(compute):
            raise OptionTypeError(owner, "compute", f"compute must be callable (got {compute!r:.80})")
        if isinstance(inputs, str) or not isinstance(inputs, Iterable):
            raise OptionTypeError(
                owner,
                "inputs",
                f"inputs must be a list of names, like inputs=['products', 'prices'] (got {inputs!r:.80})",
            )
        names = tuple(inputs)
        if not names:
            raise OptionValueError(
                owner,
                "inputs",
                "inputs must name at least one refresher or derived value it is computed from",
            )
        for each in names:
            if not isinstance(each, str) or not each.isidentifier():
                raise OptionValueError(
                    owner, "inputs", f"inputs must be refresher or derived names (got {each!r:.80})"
                )
        repeated = sorted({each for each in names if names.count(each) > 1})
        if repeated:
            raise OptionValueError(
                owner, "inputs", f"inputs lists {', '.join(map(repr, repeated))} twice; list each input once"
            )
        # Naming itself is refused by `order()`, which knows every name: a refresher of the
        # same name makes it a name clash, which is the problem to report then.
        _check_accepts(owner, compute, names)
        if not isinstance(required, bool):
            raise OptionTypeError(owner, "required", f"required must be True or False (got {required!r})")
        for hook_name, hook in (("on_change", on_change), ("on_error", on_error)):
            if hook is not None and not callable(hook):
                raise OptionTypeError(
                    owner, hook_name, f"{hook_name} must be callable or None (got {hook!r})"
                )
        set_field = object.__setattr__
        set_field(self, "name", name)
        set_field(self, "compute", compute)
        set_field(self, "inputs", names)
        set_field(self, "required", required)
        set_field(self, "default", default)
        if timeout is None:
            raise OptionTypeError(
                owner,
                "timeout",
                "timeout must be a duration like '10s', not None: a compute without a limit could "
                "hold its inputs back forever",
            )
        set_field(self, "timeout", positive_duration(owner, "timeout", timeout))
        set_field(self, "on_change", on_change)
        set_field(self, "on_error", on_error)

    @property
    def is_async(self) -> bool:
        """Whether ``compute`` runs on the event loop (true) or in a worker thread."""
        return is_async_callable(self.compute)


def _check_accepts(owner: str, compute: Callable[..., Any], names: tuple[str, ...]) -> None:
    try:
        signature = inspect.signature(compute)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return
    try:
        signature.bind(**dict.fromkeys(names))
    except TypeError:
        raise OptionTypeError(
            owner,
            "compute",
            f"compute is called as compute({', '.join(f'{each}=...' for each in names)}), but it takes "
            f"({', '.join(signature.parameters)}); name its parameters after the inputs, or take **inputs",
        ) from None


def order(derived: Sequence[Derived], known: Iterable[str], families: Iterable[str] = ()) -> list[Derived]:
    """The derived values in dependency order (inputs first); an `OptionError` for the first graph problem.

    Args:
        derived: The derived values, in the order given.
        known: The names of the refreshers they may derive from.
        families: The names of the families (which are not inputs, and whose names are taken).

    Raises:
        OptionValueError: the first of `graph_problems` (a name clash, an unknown
            input, a cycle).
    """
    for spec in derived:
        if not isinstance(spec, Derived):
            raise OptionTypeError(
                "RefreshMiddleware", "derived", f"derived takes Derived values (got {spec!r:.80})"
            )
    problems = graph_problems([(spec.name, spec.inputs) for spec in derived], known, families)
    if problems:
        raise problems[0]
    by_name = {spec.name: spec for spec in derived}
    ordered: list[Derived] = []
    done: set[str] = set()

    def visit(spec: Derived) -> None:  # no cycle: graph_problems found none
        if spec.name in done:
            return
        done.add(spec.name)
        for each in spec.inputs:
            if each in by_name:
                visit(by_name[each])
        ordered.append(spec)

    for spec in derived:
        visit(spec)
    return ordered


def graph_problems(
    derived: Sequence[tuple[str, Sequence[str]]],
    known: Iterable[str],
    families: Iterable[str] = (),
    *,
    in_file: bool = False,
) -> list[OptionValueError]:
    """Every problem of the graph of derived values, none hiding another; empty when there is none.

    In this order: each name clash (option ``name``), then each derived value's
    inputs that name a family or nothing known, or the value itself, then each
    cycle, reported once, at the inputs of the value it was found from (option
    ``inputs``).

    Args:
        derived: Each derived value's name and inputs (no inputs for one whose
            inputs are unusable: its name is still known).
        known: The names of the refreshers.
        families: The names of the families.
        in_file: Word the advice for a configuration file (tables) rather than
            for ``RefreshMiddleware(...)`` arguments.
    """
    refreshers = set(known)
    family_names = set(families) - refreshers  # one named like a refresher is that clash, reported apart
    problems: list[OptionValueError] = []
    by_name: dict[str, Sequence[str]] = {}
    clashing: set[str] = set()
    for name, inputs in derived:
        other = _taken_by(name, refreshers, family_names, by_name, in_file)
        if other is not None:
            clashing.add(name)
            this, where = (
                (f"[derived.{name}]", "names must be unique across [refreshers], [families] and [derived]")
                if in_file
                else (
                    "this derived value",
                    "names must be unique among refreshers, families and derived values",
                )
            )
            problems.append(
                OptionValueError(
                    f"Derived {name!r}",
                    "name",
                    f"the name is used twice, by {other} and by {this}; {where}",
                )
            )
            continue
        by_name[name] = inputs
    for name, inputs in derived:
        if name in clashing:  # its inputs may mean either of the two: the clash is to fix first
            continue
        for each in inputs:
            if each in refreshers or (each in by_name and each != name) or each in clashing:
                continue  # a clashing name: its clash is reported, and it is the one to fix
            if each == name:
                text = f"inputs must not name the derived value itself ({name!r})"
            elif each in family_names:
                text = _family_input(each, in_file)
            else:
                everything = sorted({*refreshers, *by_name} - {name})
                add = (
                    "a [refreshers.<name>] or [derived.<name>] table"
                    if in_file
                    else "refreshers=[...] or derived=[...]"
                )
                text = (
                    f"inputs name {each!r}, but no refresher or derived value has that name (known: "
                    f"{', '.join(everything) or 'none'}); add it to {add}, or fix the name"
                )
            problems.append(OptionValueError(f"Derived {name!r}", "inputs", text))
    problems.extend(_cycles(by_name, refreshers))
    return problems


def _taken_by(
    name: str, refreshers: set[str], families: set[str], derived: Mapping[str, object], in_file: bool
) -> str | None:
    """What else has ``name`` (as a message says it), or None."""
    if name in refreshers:
        return f"[refreshers.{name}]" if in_file else "a refresher"
    if name in families:
        return f"[families.{name}]" if in_file else "a RefresherFamily"
    if name in derived:
        return f"another [derived.{name}] table" if in_file else "another derived value"
    return None


def _family_input(name: str, in_file: bool) -> str:
    what = f"the family [families.{name}]" if in_file else "a RefresherFamily"
    instead = "a [refreshers.<name>] table" if in_file else "a Refresher"
    return (
        f"inputs name {name!r}, which is {what}; a family cannot be an input, since it has a value "
        f"per key, not one value. Read it inside an async compute with "
        f"`await handle.get({name!r}, key)` for the keys it needs, or load what it needs with {instead}"
    )


def _cycles(graph: Mapping[str, Sequence[str]], refreshers: set[str]) -> list[OptionValueError]:
    """Each cycle found by a depth-first walk, once, at the inputs of the value it returns to."""
    problems: list[OptionValueError] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        visiting.append(name)
        for each in graph[name]:
            if each == name or each in refreshers or each not in graph or each in done:
                continue  # naming itself, a refresher, an unknown name: reported apart
            if each in visiting:
                cycle = [*visiting[visiting.index(each) :], each]
                problems.append(
                    OptionValueError(
                        f"Derived {each!r}",
                        "inputs",
                        f"inputs form a cycle of derived values: {' -> '.join(cycle)} (each is computed "
                        "from the next, so none can be computed first); compute one of them from "
                        "refreshers only",
                    )
                )
                continue
            visit(each)
        visiting.pop()
        done.add(name)

    for name in graph:
        if name not in done:
            visit(name)
    return problems


def dependents(ordered: Sequence[Derived]) -> Mapping[str, tuple[Derived, ...]]:
    """For each input name, the derived values computed from it directly."""
    found: dict[str, list[Derived]] = {}
    for spec in ordered:
        for each in spec.inputs:
            found.setdefault(each, []).append(spec)
    return {name: tuple(specs) for name, specs in found.items()}
