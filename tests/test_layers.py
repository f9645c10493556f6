"""The layers of the code, checked over its source (AST), without importing it.

- Where data lives is one :class:`tasks.store.Store`: outside tasks/store*.py no function takes
  fsspec options or an S3 endpoint beside a URL (issue #29).
- ``aml_model`` is the pure ML library: no fsspec, s3fs or Prefect.
- The project's own import graph has no cycle, and no layer imports one above it
  (``aml_model`` < ``tasks`` < ``flows`` < the entry points: ``deployments``, the CLI ``app``...).

The product packages are every top-level folder of Python code except the tests and benchmarks,
so a new one (an ``app/``, a ``cli/``) is checked from the day it appears.
"""

from __future__ import annotations

import ast
import functools
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top-level folders of Python code that are not the product, and why they are not checked.
NOT_PRODUCT = {
    "tests": "the tests themselves (fixtures build stores from options on purpose)",
    "benchmarks": "measurement scripts, not shipped (pyproject's packages.find leaves them out)",
    "build": "setuptools' copy of the packages",
    "dist": "built wheels",
}
KNOWN_PACKAGES = {"aml_model", "tasks", "flows", "deployments"}

#: Parameters that carry a location's options: a Store carries them instead.
FORBIDDEN_PARAMETERS = ("storage_options", "store_options", "s3_endpoint_url")
#: The Store itself, which turns a URL and its options into one object.
STORE_MODULES = "tasks/store*.py"
#: Functions whose parameters are a public interface that users type, exempt from the rule.
EXEMPTIONS = {
    "prefect flow": "a Prefect @flow's parameters are its deployments' public API "
    "(`prefect deployment run -p s3_endpoint_url=...`)",
    "cli command": "a click/typer command's parameters are the options the user types (--s3-endpoint-url)",
}
PREFECT_FLOW_DECORATORS = {"prefect.flow", "prefect.flows.flow"}
#: ``@<group>.command(...)`` (click, typer) and ``@<group>.group(...)`` (a click group is a command too).
CLI_DECORATOR_ATTRIBUTES = {"command", "group"}

#: What the pure ML library must not import.
NOT_IN_AML_MODEL = ("fsspec", "s3fs", "prefect", "prefect_dask")
#: Layers, lowest first: each may import only the layers below it. Above them all are the entry points
#: (deployments, the CLI app, any new top-level package), which no layer imports.
LAYERS = ("aml_model", "tasks", "flows")


# The source.


def product_packages() -> list[str]:
    """Top-level folders holding Python code (a package, or loose modules), the tests and benchmarks left out."""
    found = []
    for folder in sorted(ROOT.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")) or folder.name in NOT_PRODUCT:
            continue
        if (folder / "__init__.py").is_file() or any(folder.glob("*.py")):
            found.append(folder.name)
    return found


def python_files(packages) -> list[Path]:
    return sorted(
        path
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if not any(part.startswith(".") or part == "__pycache__" for part in path.parts)
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_product_packages_are_found():
    assert KNOWN_PACKAGES <= set(product_packages()), product_packages()


# (a) No location options beside a URL outside the Store.


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it was imported as, for every import in the module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    """``a.b.c`` of a decorator, its first name resolved through the module's imports."""
    if isinstance(node, ast.Name):
        return names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, names)
        return None if base is None else f"{base}.{node.attr}"
    return None


def exemption(
    function: ast.FunctionDef | ast.AsyncFunctionDef, names: dict[str, str]
) -> str | None:
    """Which of :data:`EXEMPTIONS` a function is, by its decorators; None for an ordinary function."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if dotted(target, names) in PREFECT_FLOW_DECORATORS:
            return "prefect flow"
        if isinstance(target, ast.Attribute) and target.attr in CLI_DECORATOR_ATTRIBUTES:
            return "cli command"
    return None


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    args = function.args
    named = [
        *args.posonlyargs,
        *args.args,
        *args.kwonlyargs,
        *filter(None, (args.vararg, args.kwarg)),
    ]
    return [arg.arg for arg in named]


def option_parameters(tree: ast.Module, label: str) -> tuple[list[str], list[str]]:
    """The functions of ``tree`` that take a forbidden parameter: (offenders, exempted), each as
    ``label:function(parameter)``, a method as ``Class.method``."""
    names = imported_names(tree)
    offenders, exempted = [], []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{scope}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                name = (
                    f"{scope}{child.name}"
                    if not isinstance(child, ast.Lambda)
                    else f"{scope}<lambda:{child.lineno}>"
                )
                why = None if isinstance(child, ast.Lambda) else exemption(child, names)
                for parameter in parameters(child):
                    if parameter in FORBIDDEN_PARAMETERS:
                        (exempted if why else offenders).append(
                            f"{label}:{name}({parameter})" + (f"  [{why}]" if why else "")
                        )
                visit(child, f"{name}.")
            else:
                visit(child, scope)

    visit(tree, "")
    return offenders, exempted


def test_the_option_detector_finds_parameters_and_exempts_only_flows_and_commands():
    source = """
import click
import prefect
from prefect import flow, task as prefect_task
from prefect import flow as run_flow

def plain(url, storage_options=None): ...
async def asynchronous(*, s3_endpoint_url): ...
def keyword_only(url, *, store_options): ...
class Reader:
    def read(self, url, storage_options): ...
def outer():
    def inner(storage_options): ...
    return lambda s3_endpoint_url: None
@prefect_task
def a_task(store, storage_options): ...
@flow
def a_flow(store: str, s3_endpoint_url: str | None = None): ...
@run_flow(name="x")
def an_aliased_flow(s3_endpoint_url=None): ...
@prefect.flow
def a_dotted_flow(s3_endpoint_url=None): ...
@cli.command("score")
@click.option("--s3-endpoint-url")
def score(s3_endpoint_url): ...
@click.group()
def group(s3_endpoint_url): ...
@app.command()
def typer_command(s3_endpoint_url: str = None): ...
@click.option("--s3-endpoint-url")
def options_only(s3_endpoint_url): ...
"""
    offenders, exempted = option_parameters(ast.parse(source), "m.py")
    assert offenders == [
        "m.py:plain(storage_options)",
        "m.py:asynchronous(s3_endpoint_url)",
        "m.py:keyword_only(store_options)",
        "m.py:Reader.read(storage_options)",
        "m.py:outer.inner(storage_options)",
        "m.py:outer.<lambda:14>(s3_endpoint_url)",
        "m.py:a_task(storage_options)",
        "m.py:options_only(s3_endpoint_url)",
    ]
    assert [entry.split("  ")[0] for entry in exempted] == [
        "m.py:a_flow(s3_endpoint_url)",
        "m.py:an_aliased_flow(s3_endpoint_url)",
        "m.py:a_dotted_flow(s3_endpoint_url)",
        "m.py:score(s3_endpoint_url)",
        "m.py:group(s3_endpoint_url)",
        "m.py:typer_command(s3_endpoint_url)",
    ]
    local_flow = option_parameters(
        ast.parse("def flow(f): return f\n@flow\ndef f(storage_options): ...\n"), "n.py"
    )
    assert local_flow[0] == ["n.py:f(storage_options)"], (
        "a decorator named flow that is not Prefect's exempts nothing"
    )


def test_no_function_outside_the_store_takes_location_options():
    """A location and its options are one Store: ``(url, storage_options)`` -> ``(store: Store, url)``.

    Exempt (:data:`EXEMPTIONS`): Prefect flows and CLI commands, whose parameters are what users
    type; they build the Store (``Store.at(url, s3_endpoint_url)``) and pass it on.
    """
    store_modules = set(ROOT.glob(STORE_MODULES))
    offenders, exempted = [], []
    for path in python_files(product_packages()):
        if path in store_modules:
            continue
        found, allowed = option_parameters(parse(path), relative(path))
        offenders += found
        exempted += allowed
    print("Exempt:", *(f"[{kind}] {why}" for kind, why in EXEMPTIONS.items()), sep="\n  ")
    print(f"{len(exempted)} exempt function(s) taking location options:", *exempted, sep="\n  ")
    print(f"{len(offenders)} offender(s) taking location options:", *offenders, sep="\n  ")
    assert not offenders, (
        f"{len(offenders)} function(s) take location options beside a URL; take a Store "
        f"(tasks/store.py) instead:\n" + "\n".join(offenders)
    )


# (b) The ML library stays pure.


def imports_of(tree: ast.Module) -> list[tuple[ast.stmt | ast.Call, str, int]]:
    """Every import in the module, at any depth: (node, the absolute dotted name or '.'-prefixed relative
    one, line); ``importlib.import_module("x")`` and ``__import__("x")`` with a literal name count too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node, "." * node.level + (node.module or ""), node.lineno))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                getattr(node.func, "attr", None) == "import_module"
                or getattr(node.func, "id", None) == "__import__"
            )
        ):
            found.append((node, node.args[0].value, node.lineno))
    return found


def test_aml_model_imports_no_storage_or_orchestration():
    offenders = [
        f"{relative(path)}:{line}: imports {name}"
        for path in python_files(["aml_model"])
        for _, name, line in imports_of(parse(path))
        if name.split(".")[0] in NOT_IN_AML_MODEL
    ]
    print(*offenders, sep="\n")
    assert not offenders, (
        "aml_model is the pure ML library (no fsspec, s3fs, Prefect):\n" + "\n".join(offenders)
    )


# (c) The import graph.


def type_checking_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``, which never run."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            getattr(node.test, "id", None) == "TYPE_CHECKING"
            or getattr(node.test, "attr", None) == "TYPE_CHECKING"
        ):
            for statement in node.body:
                guarded |= {id(inner) for inner in ast.walk(statement)}
    return guarded


def resolve(name: str, module: str, package: bool, modules: set[str]) -> str | None:
    """The project module an import names (its longest known prefix), None for another library's."""
    if name.startswith("."):
        level = len(name) - len(name.lstrip("."))
        base = module.split(".") if package else module.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        name = ".".join(filter(None, [*base, name.lstrip(".")]))
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def module_imports(
    tree: ast.Module,
    module: str,
    package: bool,
    modules: set[str],
    label: str,
    include_type_checking: bool,
) -> dict[str, str]:
    """{project module imported by ``module``: where ("label:line")}, from module- and function-level imports.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``. The implicit
    import of a module's parent packages is not an edge: a parent is already being imported when its
    child runs, so it closes no cycle. Imports under ``if TYPE_CHECKING:`` never run: they are left out
    unless ``include_type_checking``.
    """
    guarded = set() if include_type_checking else type_checking_imports(tree)
    edges: dict[str, str] = {}
    for node, name, line in imports_of(tree):
        if id(node) in guarded:
            continue
        targets = [name]
        if isinstance(node, ast.ImportFrom):
            # "from a import b" may import the module a.b; "from . import b" is ".b".
            separator = "." if name.strip(".") else ""
            targets = [f"{name}{separator}{alias.name}" for alias in node.names]
        for target in targets:
            resolved = resolve(target, module, package, modules)
            if resolved and resolved != module:
                edges.setdefault(resolved, f"{label}:{line}")
    return edges


@functools.cache
def import_graph(include_type_checking: bool) -> dict[str, dict[str, str]]:
    """module -> {imported project module: where}, over every product package (:func:`module_imports`)."""
    paths = {module_name(path): path for path in python_files(product_packages())}
    return {
        module: module_imports(
            parse(path), module, is_package(path), set(paths), relative(path), include_type_checking
        )
        for module, path in paths.items()
    }


def strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, {})):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def a_cycle(graph: dict[str, dict[str, str]], component: list[str]) -> str:
    """One cycle through the component's first module, each edge with the import that makes it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor in sorted(graph[node]):
            if successor == start:
                cycle = [*paths[node], start]
                return (
                    " -> ".join(f"{a} ({graph[a][b]})" for a, b in itertools.pairwise(cycle))
                    + f" -> {start}"
                )
            if successor in members and successor not in paths:
                paths[successor] = [*paths[node], successor]
                queue.append(successor)
    raise AssertionError(f"no cycle through {start}")


def test_the_cycle_finder_names_a_cycle():
    graph = {
        "a": {"b": "a.py:1"},
        "b": {"c": "b.py:2"},
        "c": {"a": "c.py:3", "d": "c.py:4"},
        "d": {},
    }
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    assert a_cycle(graph, components[0]) == "a (a.py:1) -> b (b.py:2) -> c (c.py:3) -> a"
    assert strongly_connected({"a": {"b": "x"}, "b": {}}) == []


def test_imports_are_resolved_to_project_modules():
    source = """
import os
import tasks
import tasks.store
from tasks.store_layout import RunPaths
from tasks import store_cache, missing_name
from . import sibling
from .. import errors
from .sibling import thing
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from flows.parameters import ScoreOptions
def later():
    from aml_model.io import save_model
    importlib.import_module("flows.score")
"""
    modules = {
        "tasks",
        "tasks.store",
        "tasks.store_layout",
        "tasks.store_cache",
        "aml_model",
        "aml_model.io",
        "aml_model.errors",
        "aml_model.sub",
        "aml_model.sub.sibling",
        "aml_model.sub.here",
        "flows",
        "flows.parameters",
        "flows.score",
    }
    tree = ast.parse(source)
    edges = module_imports(
        tree, "aml_model.sub.here", False, modules, "here.py", include_type_checking=True
    )
    assert edges == {
        "tasks": "here.py:3",
        "tasks.store": "here.py:4",
        "tasks.store_layout": "here.py:5",
        "tasks.store_cache": "here.py:6",
        "aml_model.sub.sibling": "here.py:7",
        "aml_model.errors": "here.py:8",
        "flows.parameters": "here.py:12",
        "aml_model.io": "here.py:14",
        "flows.score": "here.py:15",
    }
    running = module_imports(
        tree, "aml_model.sub.here", False, modules, "here.py", include_type_checking=False
    )
    assert running == {key: value for key, value in edges.items() if key != "flows.parameters"}
    package = module_imports(
        ast.parse("from . import store\nfrom .store import x\n"),
        "tasks",
        True,
        modules,
        "i.py",
        include_type_checking=True,
    )
    assert package == {"tasks.store": "i.py:1"}


def test_the_import_graph_holds_the_projects_own_imports():
    graph = import_graph(include_type_checking=True)
    assert {"tasks.store_conditional", "tasks.store_cache"} <= set(graph["tasks.store"])
    assert any(target.startswith("tasks.") for target in graph["flows.score"])
    assert not any(
        target.split(".")[0] not in product_packages()
        for targets in graph.values()
        for target in targets
    )


def test_the_project_imports_have_no_cycle():
    graph = import_graph(include_type_checking=False)
    cycles = [a_cycle(graph, component) for component in strongly_connected(graph)]
    print(*cycles, sep="\n")
    assert not cycles, f"{len(cycles)} import cycle(s) among the project's modules:\n" + "\n".join(
        cycles
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_layer_above_it(layer):
    entry_points = [package for package in product_packages() if package not in LAYERS]
    above = [*LAYERS[LAYERS.index(layer) + 1 :], *entry_points]
    graph = import_graph(include_type_checking=True)
    offenders = [
        f"{where}: {module} imports {target}"
        for module, targets in sorted(graph.items())
        if module.split(".")[0] == layer
        for target, where in sorted(targets.items())
        if target.split(".")[0] in above
    ]
    print(*offenders, sep="\n")
    assert not offenders, f"{layer} may not import {', '.join(above)}:\n" + "\n".join(offenders)
