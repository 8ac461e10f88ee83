"""The package's public names and its import structure: dependencies point down the data flow."""

import ast
import pathlib

import splatvlm

SRC = pathlib.Path(splatvlm.__file__).parent
MODULES = {
    ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in SRC.rglob("*.py")
}


def test_every_public_name_resolves():
    for name in splatvlm.__all__:
        assert getattr(splatvlm, name) is not None, name


def _package(module: str) -> tuple[str, ...]:
    """The package a module's relative imports start from."""
    parts = tuple(module.split("."))
    return parts if MODULES[module].name == "__init__.py" else parts[:-1]


def _import_nodes(module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in ``module``, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = _package(module)
                base = list(pkg[: len(pkg) - node.level + 1])
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _imports(module: str) -> set[str]:
    """Modules of splatvlm that ``module`` imports (``from . import x`` counts as module ``x``)."""
    out = set()
    for target, names in _import_nodes(module):
        for name in names:
            if f"{target}.{name}" in MODULES:
                out.add(f"{target}.{name}")
        if target in MODULES:
            out.add(target)
    return {m for m in out if m.startswith("splatvlm.") and m != module}


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, *places: str) -> bool:
    return any(module == f"splatvlm.{p}" or module.startswith(f"splatvlm.{p}.") for p in places)


def test_the_flow_points_down():
    for m, deps in GRAPH.items():
        if _under(m, "gaussians"):  # the scene, cameras and renderer know nothing above them
            assert {d for d in deps if not _under(d, "gaussians", "errors", "files")} == set(), m
        if _under(m, "guidance"):  # the terms receive loaded models; the loop, the CLI and loading are above
            above = ("run", "commands", "viewer", "outputs", "cli", "cli_args", "config", "models", "demo")
            assert {d for d in deps if _under(d, *above)} == set(), m
        if _under(m, "run"):  # the loop knows no command, viewer or CLI
            assert {d for d in deps if _under(d, "commands", "viewer", "cli", "cli_args")} == set(), m
        if _under(m, "errors", "files", "hub"):  # leaf utilities
            assert {d for d in deps if not _under(d, "errors")} == set(), m


def test_the_checks_see_the_imports_they_judge():
    """The rules above would pass vacuously if the import reader missed imports: spot-check it."""
    assert "splatvlm.guidance.sds" in GRAPH["splatvlm.models"]
    assert "splatvlm.demo" in GRAPH["splatvlm.models"]
    assert "splatvlm.guidance.adapters" in GRAPH["splatvlm.models"]  # `from .guidance import adapters`
    assert "splatvlm.gaussians.cameras" in GRAPH["splatvlm.guidance.sds"]
    assert "splatvlm.errors" in GRAPH["splatvlm.gaussians.scene"]


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in GRAPH[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*stack, m, d])
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_no_private_names_cross_modules():
    """A leading underscore means "this module's own": another module of the package does not import it
    or reach for it as an attribute."""
    crossings = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        own_modules = {}  # local name -> splatvlm module bound to it
        for target, names in _import_nodes(m):
            if not target.startswith("splatvlm") or target == m:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    crossings.append(f"{m}: from {target} import {name}")
                if f"{target}.{name}" in MODULES:
                    own_modules[name] = f"{target}.{name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("splatvlm"):
                        own_modules[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in own_modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                crossings.append(f"{m}: {own_modules[node.value.id]}.{node.attr}")
    assert crossings == []
