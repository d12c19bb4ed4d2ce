"""The house rules that a grep can prove, checked on the source with `ast` (nothing is imported).

- Every choice table is defined once, by the module that owns it: a module-level assignment of a
  public CAPITALISED name to a dict literal, ``dict(...)`` or dict comprehension is a table; no name
  is defined in two modules, and the config modules define none (they look names up in the owners' tables).
- Import arrows point one way: the graph of apprentice's modules (imports at module level and
  inside functions alike) has no cycle, and the layers are packages: `LAYERS` ranks
  ``apprentice.cli`` above ``apprentice.run`` above ``apprentice.config`` above everything else
  (the components and the shared bottom), and no module imports a module of a higher layer.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "apprentice"
TABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
#: the packages that see the config tree, by rank; every other module is rank 0 (a component)
LAYERS = {"apprentice.config": 1, "apprentice.run": 2, "apprentice.cli": 3, "apprentice.__main__": 3}


def layer(module: str) -> int:
    return next((rank for pkg, rank in LAYERS.items() if module == pkg or module.startswith(pkg + ".")), 0)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def tables(tree: ast.Module) -> list[str]:
    """Public capitalised names that the module binds to a dict at its top level."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        is_dict = isinstance(value, (ast.Dict, ast.DictComp)) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict")
        found += [t.id for t in targets if is_dict and isinstance(t, ast.Name) and TABLE_NAME.fullmatch(t.id)]
    return found


def imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The apprentice modules ``name`` imports anywhere in its file, at module level or in functions."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            named = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            out |= named
            # `from apprentice.train import step` runs apprentice/train/__init__ too: an edge to it.
            # The top package's __init__ is the public facade that every module is loaded through,
            # so `from apprentice import data` is an edge to apprentice.data alone; a name that is
            # not a module (`from apprentice import __version__`) is an edge to the facade.
            if base != "apprentice" or len(named) < len(node.names):
                out.add(base)
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    trees = sources()
    return {name: imports(name, tree, set(trees)) for name, tree in trees.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> ... -> a, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_choice_table_is_defined_once_and_not_by_config():
    owners: dict[str, list[str]] = defaultdict(list)
    for name, tree in sources().items():
        for table in tables(tree):
            owners[table].append(name)
    assert {"SCHEMES", "MODELS", "DATASETS", "AMP_MODES", "SHORTCUTS", "NONFINITE_POLICIES"} <= set(owners)
    twice = {table: mods for table, mods in owners.items() if len(mods) > 1}
    assert not twice, f"choice tables defined in more than one module: {twice}"
    in_config = [table for table, mods in owners.items() if any(layer(m) == 1 for m in mods)]
    assert not in_config, f"the config modules define choice tables {in_config}; look them up in their owners"


def test_the_table_finder_sees_every_form_of_dict():
    tree = ast.parse("A = {}\nB: dict[str, int] = dict(x=1)\nC = {k: 1 for k in 'ab'}\n_D = {}\nE = (1, 2)\nf = {}")
    assert tables(tree) == ["A", "B", "C"]


def test_the_package_has_no_import_cycle():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_a_higher_layer():
    edges = graph()
    assert {layer(m) for m in edges} == {0, 1, 2, 3}, "each layer package holds modules"
    upward = {name: sorted(t for t in targets if layer(t) > layer(name))
              for name, targets in edges.items() if name != "apprentice"}  # the facade re-exports all
    upward = {name: targets for name, targets in upward.items() if targets}
    assert not upward, f"imports of a higher layer (components take plain arguments): {upward}"


def test_the_top_level_holds_the_face_and_the_domain_only():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "atomic", "distill", "ensemble", "errors", "losses", "models", "stock_models", "version",
                   "weights"], top


def test_the_layer_rule_sees_a_violation():
    assert layer("apprentice.run.loop") == 2 and layer("apprentice.config") == 1 and layer("apprentice.configs") == 0
    assert layer("apprentice.data.spec") < layer("apprentice.config.schema")


def test_the_import_reader_resolves_packages_and_function_level_imports():
    tree = ast.parse("def f():\n    from apprentice.train import step\n    import apprentice.config\n"
                     "from . import modules\nfrom apprentice import data\n")
    modules = {"apprentice", "apprentice.train", "apprentice.train.step", "apprentice.config", "apprentice.data",
               "apprentice.quant", "apprentice.quant.modules", "apprentice.quant.prepare"}
    assert imports("apprentice.quant.prepare", tree, modules) == {
        "apprentice.train", "apprentice.train.step", "apprentice.config", "apprentice.quant", "apprentice.quant.modules",
        "apprentice.data"}
    facade = ast.parse("from apprentice import __version__, data\n")
    assert imports("apprentice.run.loop", facade, modules) == {"apprentice", "apprentice.data"}


def test_the_tests_mirror_the_packages():
    tests = PACKAGE.parent / "tests"
    folders = sorted(p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py")))
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert folders == packages, "tests/<package>/ for each apprentice/<package>/"
