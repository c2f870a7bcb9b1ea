"""The package's imports run down its layers only (docs/ARCHITECTURE.md): read from the source (every import
statement, those inside functions included), no module imports one of a higher layer, and no files import each other
in a circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_flexattn"

# bottom first; a module may import modules of its own layer or of the layers below. A package (masks, variants,
# families...) is one entry: its files are its layer.
LAYERS = (
    ("compat", "checks", "warnings"),
    ("masks", "mods"),
    ("kernels",),
    ("ops",),
    ("variants",),
    ("families",),
    ("factory", "sentence_transformers"),
    ("patching", "long_context", "hf_integration", "plotting", "chunking", "longformer_export"),
    ("__init__",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules an import statement names (``from . import x``: x where it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "hf_flexattn"]
    if node.level == 0:
        if not (node.module or "").startswith("hf_flexattn"):
            return []
        target = node.module
    else:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    return [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (at any depth of its code)."""
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, path, node):
                    while target not in MODULES and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in MODULES and target != module:
                        edges.add(target)
        graph[module] = edges
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for rank, layer in enumerate(LAYERS):
        if top in layer:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs")


def test_every_import_runs_down_the_layers():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert _cycles(import_graph()) == []


def test_the_checks_see_what_they_must_catch():
    """The graph reads imports inside functions and relative imports of every depth: a lazy upward import (as
    families/dinat.py's of patching once was) and a circle are found."""
    graph = import_graph()
    assert "hf_flexattn.families.tokens" in graph["hf_flexattn.long_context"]  # a module-level relative import
    assert "hf_flexattn.families" in graph["hf_flexattn.sentence_transformers"]  # one inside a function
    graph["hf_flexattn.families.dinat"] = graph["hf_flexattn.families.dinat"] | {"hf_flexattn.patching"}
    assert _layer("hf_flexattn.patching") > _layer("hf_flexattn.families.dinat")
    (circle,) = _cycles(graph)
    assert {"hf_flexattn.families.dinat", "hf_flexattn.patching"} <= set(circle)
