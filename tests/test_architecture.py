"""The shape of the code, measured from its source: the import graph and the size limits.

Every module of ``defense/``, ``attacks/``, ``weights/`` and ``defense_example.py`` is parsed
with ``ast``; each import (function-local ones included) becomes an edge of a module graph.
Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so an import gets an edge
to each package above its target too, unless that package already encloses the importer.

The rules (``defense/__init__.py`` states them for readers):
- no import cycle, function-local imports included;
- the ground floor (``defense``, ``defense.core``, ``defense.devices``, ``defense.outputs``, ``defense.presets``)
  imports nothing else of
  the toolkit, and ``attacks/`` and ``weights/`` import only the ground floor of ``defense``;
- inside ``defense/`` imports go down the pipeline only (``LAYERS``): rank -> generate -> train
  -> attack -> evaluate, with the drivers (tables, reproduction, benchmarks, entry points) on top;
- at most 12 modules (``.py`` files) at the top of ``defense/``, and no module over 600 lines.

``python tests/test_architecture.py`` prints the measurements.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("defense", "attacks", "weights")
SCRIPTS = ("defense_example.py",)
GROUND_FLOOR = ("defense", "defense.core", "defense.devices", "defense.outputs", "defense.presets")
MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 600

# Lowest first; a module may import its own layer and the layers below it.
LAYERS = (
    ("ground floor", GROUND_FLOOR),
    ("attacks and weights", ("attacks", "weights")),
    ("networks, data, published protocols", ("defense.networks", "defense.data", "defense.paper")),
    ("rank -> generate", ("defense.generate",)),
    ("train", ("defense.train",)),
    ("attack -> evaluate", ("defense.evaluate",)),
    ("drivers and entry points", ("defense.tables", "defense.reproduce", "defense.bench", "defense.export",
                                  "defense.imagenet", "defense.train_baseline", "defense_example")),
)


# ---------------------------------------------------------------- the module graph
def module_files(root: Path = ROOT) -> Dict[str, Path]:
    """Dotted module name -> file, for the toolkit's packages and scripts."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in SCRIPTS:
        out[Path(script).stem] = root / script
    return out


def _ancestors(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The toolkit modules ``name`` imports anywhere in its file (top level or inside functions)."""
    targets: Set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, name, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    edges: Set[str] = set()
    enclosing = set(_ancestors(name))
    for target in targets:
        while target and target not in known:  # "import a.b.c.func"-like spellings: the module part
            target = target.rpartition(".")[0]
        if not target or target == name:
            continue
        edges.add(target)
        edges.update(a for a in _ancestors(target) if a in known and a not in enclosing and a != name)
    return edges


def import_graph(root: Path = ROOT) -> Dict[str, Set[str]]:
    files = module_files(root)
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str) -> int:
    """The layer of the longest ``LAYERS`` prefix that names ``name`` or a package above it."""
    matches = [(len(p), level) for level, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if name == p or name.startswith(p + ".")]
    if not matches:
        raise KeyError(f"module {name} is in no layer of LAYERS; add it")
    return max(matches)[1]


def rule_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """Imports that break the dependency rule or go up the pipeline."""
    bad = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if name.split(".")[0] in ("attacks", "weights") and target.startswith("defense") \
                    and target not in GROUND_FLOOR:
                bad.append(f"{name} imports {target}: attacks/ and weights/ import only {', '.join(GROUND_FLOOR)}")
            elif layer_of(target) > layer_of(name):
                bad.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]}), a layer above it")
    return bad


# ---------------------------------------------------------------- sizes
def top_level_modules(root: Path = ROOT) -> List[str]:
    return sorted(p.name for p in (root / "defense").glob("*.py"))


def line_counts(root: Path = ROOT) -> Dict[str, int]:
    """Lines of every Python file of the toolkit, its scripts and its tests."""
    paths = list(module_files(root).values()) + sorted((root / "tests").rglob("*.py"))
    return {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in paths}


# ---------------------------------------------------------------- tests
def test_every_module_is_in_a_layer():
    for name in import_graph():
        layer_of(name)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (function-local imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_attacks_and_weights_import_only_the_ground_floor_and_imports_go_down_the_pipeline():
    bad = rule_violations(import_graph())
    assert not bad, "\n".join(bad)


def test_ground_floor_imports_nothing_else_of_the_toolkit():
    graph = import_graph()
    for name in GROUND_FLOOR:
        assert graph[name] <= set(GROUND_FLOOR), (name, sorted(graph[name] - set(GROUND_FLOOR)))


def test_at_most_12_modules_at_the_top_of_defense():
    top = top_level_modules()
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_over_600_lines():
    long = {path: n for path, n in line_counts().items() if n > MAX_LINES}
    assert not long, long


def test_the_graph_sees_function_local_and_package_imports(tmp_path):
    """The measurement itself: a function-local import and an import through a package's
    ``__init__`` are edges, and a cycle made of them is found."""
    pkg = tmp_path / "defense"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import X\n")
    (pkg / "core.py").write_text("X = 1\n\ndef f():\n    from .presets import Y\n    return Y\n")
    (pkg / "presets.py").write_text("from .core import X\nY = X\n")
    for other in ("attacks", "weights"):
        (tmp_path / other).mkdir()
        (tmp_path / other / "__init__.py").write_text("from defense.core import X\n")
    (tmp_path / "defense_example.py").write_text("import defense.presets\n")
    graph = import_graph(tmp_path)
    assert graph["defense.core"] == {"defense.presets"}
    assert graph["attacks"] == {"defense.core", "defense"}
    assert cycles(graph) == [["defense.core", "defense.presets"]]


if __name__ == "__main__":
    graph = import_graph()
    counts = line_counts()
    longest = max(counts, key=counts.get)
    print(f"modules: {len(graph)}, import edges: {sum(len(t) for t in graph.values())}")
    print(f"import cycles: {len(cycles(graph))} {cycles(graph)}")
    print(f"rule violations: {len(rule_violations(graph))}")
    print(f"modules at the top of defense/: {len(top_level_modules())} {top_level_modules()}")
    print(f"longest module: {longest} ({counts[longest]} lines)")
