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
        if name in names:
            raise OptionValueError(
                owner, "inputs", f"inputs must not name the derived value itself ({name!r})"
            )
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


def order(derived: Sequence[Derived], known: Iterable[str]) -> list[Derived]:
    """The derived values in dependency order (inputs first); `ValueError` for a cycle or an unknown input.

    Args:
        derived: The derived values, in the order given.
        known: The names of the refreshers they may derive from.
    """
    by_name: dict[str, Derived] = {}
    refreshers = set(known)
    for spec in derived:
        if not isinstance(spec, Derived):
            raise OptionTypeError(
                "RefreshMiddleware", "derived", f"derived takes Derived values (got {spec!r:.80})"
            )
        if spec.name in by_name or spec.name in refreshers:
            raise OptionValueError(
                f"Derived {spec.name!r}",
                "name",
                "the name is used twice (by a refresher or another derived value); names must be unique",
            )
        by_name[spec.name] = spec
    for spec in derived:
        unknown = [each for each in spec.inputs if each not in by_name and each not in refreshers]
        if unknown:
            everything = sorted({*refreshers, *by_name} - {spec.name})
            raise OptionValueError(
                f"Derived {spec.name!r}",
                "inputs",
                f"inputs name {unknown[0]!r}, but no refresher or derived value has that name (known: "
                f"{', '.join(everything) or 'none'}); add it to refreshers=[...] or derived=[...], "
                "or fix the name",
            )
    ordered: list[Derived] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(spec: Derived) -> None:
        if spec.name in done:
            return
        if spec.name in visiting:
            cycle = [*visiting[visiting.index(spec.name) :], spec.name]
            raise OptionValueError(
                f"Derived {spec.name!r}",
                "inputs",
                f"inputs form a cycle of derived values: {' -> '.join(cycle)} (each is computed from "
                "the next, so none can be computed first); compute one of them from refreshers only",
            )
        visiting.append(spec.name)
        for each in spec.inputs:
            if each in by_name:
                visit(by_name[each])
        visiting.pop()
        done.add(spec.name)
        ordered.append(spec)

    for spec in derived:
        visit(spec)
    return ordered


def dependents(ordered: Sequence[Derived]) -> Mapping[str, tuple[Derived, ...]]:
    """For each input name, the derived values computed from it directly."""
    found: dict[str, list[Derived]] = {}
    for spec in ordered:
        for each in spec.inputs:
            found.setdefault(each, []).append(spec)
    return {name: tuple(specs) for name, specs in found.items()}
