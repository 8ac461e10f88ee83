"""The package's public names and its import structure."""

import ast
import pathlib

import splatvlm

SRC = pathlib.Path(splatvlm.__file__).parent


def test_every_public_name_resolves():
    for name in splatvlm.__all__:
        assert getattr(splatvlm, name) is not None, name


def _imports(path: pathlib.Path) -> set[str]:
    """Modules of splatvlm that ``path`` imports, function-level imports included."""
    pkg = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - node.level + 1])
            mod = base + (node.module.split(".") if node.module else [])
            for alias in node.names if not node.module else [None]:
                out.add(".".join(mod + ([alias.name] if alias else [])))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("splatvlm"):
            out.add(node.module)
    return out


def test_no_import_cycles_and_the_flow_points_down():
    modules = {".".join(p.relative_to(SRC.parent).with_suffix("").parts): p for p in SRC.rglob("*.py")}
    modules = {k.removesuffix(".__init__"): v for k, v in modules.items()}
    graph = {
        m: {i for i in _imports(p) if i in modules and i != m and i != "splatvlm"} for m, p in modules.items()
    }
    for (
        m,
        deps,
    ) in (
        graph.items()
    ):  # gaussians/ knows nothing of guidance, the trainer or the CLI; guidance/ of the trainer
        if m.startswith("splatvlm.gaussians"):
            assert not {
                d
                for d in deps
                if not d.startswith(("splatvlm.gaussians", "splatvlm.errors", "splatvlm.files"))
            }, m
        if m.startswith("splatvlm.guidance"):
            assert not {d for d in deps if d.split(".")[1] in ("run", "cli", "viewer", "commands")}, m
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*stack, m, d])
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
