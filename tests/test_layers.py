"""The layout is the architecture: every import in ``app/`` points down the layers that
``app/__init__.py`` describes, no module imports itself back through a cycle, and the engine
reaches nothing that does I/O."""

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# What each package may import of the app besides itself. A package not listed may import nothing.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "demo": frozenset(),
    "catalog": frozenset({"core"}),
    "engine": frozenset({"catalog"}),
    "fhir_io": frozenset({"engine", "catalog", "core"}),
    "store": frozenset({"core"}),
    "ehr": frozenset({"fhir_io", "engine", "catalog", "core"}),
    "screening": frozenset({"ehr", "store", "fhir_io", "engine", "catalog", "core"}),
    "access": frozenset({"store", "core"}),
    "population": frozenset(
        {"screening", "ehr", "store", "fhir_io", "engine", "catalog", "core", "demo"}
    ),
    "api": frozenset(
        {
            "access",
            "population",
            "screening",
            "ehr",
            "store",
            "fhir_io",
            "engine",
            "catalog",
            "core",
            "demo",
        }
    ),
    "cds": frozenset(
        {
            "access",
            "population",
            "screening",
            "ehr",
            "store",
            "fhir_io",
            "engine",
            "catalog",
            "core",
            "demo",
        }
    ),
    # The web pages: an HTTP edge beside api.
    "ui": frozenset(
        {
            "access",
            "screening",
            "ehr",
            "store",
            "fhir_io",
            "engine",
            "catalog",
            "core",
            "demo",
            "population",
        }
    ),
}
TOP = {"app.main", "app.openapi_document", "app"}  # may import any package
# Third-party modules that do I/O or serve HTTP: nothing the engine imports may use them.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "alembic",
        "fastapi",
        "httpx",
        "httpx_aiohttp",
        "jwt",
        "prometheus_client",
        "psycopg",
        "sqlalchemy",
        "sqlmodel",
        "starlette",
        "uvicorn",
        "yaml",
    }
)
ENGINE_MUST_NOT_REACH = ("app.store", "app.ehr", "app.api", "app.cds", "app.access")


def load_tree(root: Path = APP) -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return modules


def imports(module: str, tree: ast.Module, known: set[str]) -> Iterator[str]:
    """Every module named by an import anywhere in the module (functions included)."""
    package = module if f"{module}.__init__" in known else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known else base


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in TOP else None


def graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    known = set(modules) | {f"{m}.__init__" for m in modules if _is_package(m, modules)}
    return {m: set(imports(m, tree, known)) for m, tree in modules.items()}


def _is_package(module: str, modules: dict[str, ast.Module]) -> bool:
    return any(other.startswith(module + ".") for other in modules)


def violations(modules: dict[str, ast.Module]) -> list[str]:
    edges = graph(modules)
    found = []
    for module, targets in sorted(edges.items()):
        here = layer(module)
        for target in sorted(targets):
            there = layer(target) if target.startswith("app.") else None
            if here is None or there is None or there == here:
                continue
            if there not in ALLOWED.get(here, frozenset()):
                found.append(f"{module} imports {target}: {here} may not import {there}")
    internal = {m: {t for t in ts if t in edges and t != m} for m, ts in edges.items()}
    try:
        tuple(graphlib.TopologicalSorter(internal).static_order())
    except graphlib.CycleError as exc:
        found.append(f"import cycle: {' -> '.join(exc.args[1])}")
    reached, todo = set(), [m for m in edges if layer(m) == "engine"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(t for t in edges[module] if t in edges)
    for module in sorted(reached):
        for target in sorted(edges[module]):
            if target.startswith(ENGINE_MUST_NOT_REACH) or target.split(".")[0] in IO_LIBRARIES:
                found.append(f"the engine reaches {module}, which imports {target}")
    return found


def _tree(**sources: str) -> dict[str, ast.Module]:
    return {name.replace("__", "."): ast.parse(text) for name, text in sources.items()}


def test_every_import_points_down_and_the_engine_does_no_io() -> None:
    assert violations(load_tree()) == []


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(APP.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying what it owns"
        if init.parent.name in ALLOWED:
            continue
        raise AssertionError(f"{init.parent.name} is not placed in the layers (ALLOWED)")


def test_an_upward_import_is_found() -> None:
    tree = _tree(
        app__ehr__client="from app.api.common import FhirResponse",
        app__api__common="x = 1",
    )
    assert violations(tree) == [
        "app.ehr.client imports app.api.common: ehr may not import api",
    ]


def test_a_cycle_is_found_even_through_a_lazy_import() -> None:
    tree = _tree(
        app__main="from app.openapi_document import render",
        app__openapi_document="def main():\n    from app.main import app\n",
    )
    assert [v for v in violations(tree) if v.startswith("import cycle")] != []


def test_io_reached_by_the_engine_is_found() -> None:
    tree = _tree(
        app__engine__evaluate="from app.catalog.files import read",
        app__catalog__files="import yaml\n",
        app__engine__fetch="import httpx",
        app__engine__store="from app.store import database",
    )
    assert violations(tree) == [
        "app.engine.store imports app.store: engine may not import store",
        "the engine reaches app.catalog.files, which imports yaml",
        "the engine reaches app.engine.fetch, which imports httpx",
        "the engine reaches app.engine.store, which imports app.store",
    ]
