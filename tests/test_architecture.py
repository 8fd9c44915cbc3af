"""The package's module graph: no import cycle, and no module importing from a layer above it.

Read from the source with `ast`, so every import counts: at module level, inside
functions (deferred imports) and under ``if TYPE_CHECKING:``. The layers below are
the house's map; a new module is placed in one, and this test says where an import
goes the wrong way.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import asgi_refresh

PACKAGE = Path(asgi_refresh.__file__).parent  # the installed package: .ci/lowest tests a wheel

# Lowest first. A module may import from its own layer or any layer below it.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "leaves: no imports from the package",
        {
            "__about__",
            "_option_error",
            "_status",
            "_clock",
            "_duration",
            "_text",
            "_thread",
            "_types",
            "_schedule",
            "_admin_page",
            "_sources",
            "_sources.headers",
            "_sources.incremental",
            "_cluster",
            "_cluster.base",
        },
    ),
    (
        "small shared parts",
        {
            "_contain",
            "_failure_log",
            "_hooks",
            "_events",
            "_sources.outcome",
            "_sources.context",
            "_cluster.records",
            "_guards",
            "_snapshots",
        },
    ),
    ("the families' contracts", {"_sources.base", "_cluster.blocking", "_cluster.contract", "_fingerprint"}),
    (
        "the families' implementations",
        {
            "_sources.parsing",
            "_sources.retire",
            "_sources.decoding",
            "_sources.bearer",
            "_sources.file",
            "_sources.http",
            "_sources.sse",
            "_sources.longpoll",
            "_sources.function",
            "_cluster.nats",
            "_cluster.postgres",
            "_cluster.redis",
            "_cluster.sqlite",
        },
    ),
    ("what a refresher is", {"_refresher", "_family", "_derived"}),
    (
        "the runtime's parts",
        {
            "_slot",
            "_families",
            "_family_store",
            "_report",
            "_handle",
            "_publisher",
            "_scheduler",
            "_app_lifespan",
            "_switch",
            "_keeper",
            "_cluster.coordination",
            "_webhooks",
            "_derivation",
        },
    ),
    ("the runtime", {"_runtime"}),
    ("configuration files, checked and built", {"_config"}),
    ("the middleware and its endpoints", {"_admin", "_middleware"}),
    (
        "entry points and integrations",
        {
            "",
            "__main__",
            "_cli",
            "fastapi",
            "prometheus",
            "otel",
            "testing",
            "demo",
            "demo.__main__",
            "demo.app",
            "demo.upstream",
        },
    ),
]


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name under ``asgi_refresh`` ("" for the package)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, wherever the import statement is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "asgi_refresh" or node.module.startswith("asgi_refresh.")):
                target = node.module.removeprefix("asgi_refresh").removeprefix(".")
            else:
                continue
            candidates = [f"{target}.{alias.name}".strip(".") for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [
                alias.name.removeprefix("asgi_refresh").removeprefix(".")
                for alias in node.names
                if alias.name.split(".")[0] == "asgi_refresh"
            ]
        else:
            continue
        target_module = next((candidate for candidate in candidates if candidate in known), None)
        if target_module is not None and target_module != name:
            found.add(target_module)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    """A new module is placed on the map, and the map names no module that is gone."""
    placed = [name for _, names in LAYERS for name in names]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(modules()) == set(placed)


def test_the_module_graph_has_no_cycle() -> None:
    """No import cycle, counting deferred and TYPE_CHECKING imports: every module can be read bottom-up."""
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert len(order) == len(modules())


def test_no_module_imports_from_a_layer_above_it() -> None:
    """Imports go down the layers (or stay in one): a family never reaches into the runtime."""
    layer_of = {name: index for index, (_, names) in enumerate(LAYERS) for name in names}
    upward = [
        f"{name or 'asgi_refresh'} ({LAYERS[layer_of[name]][0]}) imports {target} ({LAYERS[layer_of[target]][0]})"
        for name, targets in graph().items()
        for target in targets
        if layer_of[target] > layer_of[name]
    ]
    assert not upward, "\n".join(upward)


def test_the_graph_sees_deferred_and_type_checking_imports() -> None:
    """The reader is not blind: a function-level import and a TYPE_CHECKING import both count."""
    found = graph()
    assert "_cluster.contract" in found["testing"]  # under TYPE_CHECKING and in __getattr__
    assert "_runtime" in found["_middleware"]
