"""The shape of the code, checked: the import graph of ``tracker/`` (read with ``ast``, nothing imported) has no
circles and climbs back up the package layering at most a few times; the only module ``__getattr__`` hook is
``tracker/__init__``'s lazy API; the top level holds few modules; no module is long; another module's
``_private`` names are imported only where listed below, each with its reason.

What counts as an import: ``import tracker.x`` and ``from tracker.x import y`` (``y`` a module or a name in
``x``), at module level or inside a function; imports under ``if TYPE_CHECKING:`` are annotations only and
do not count.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tracker"

# The package layering, lowest first: a module may import modules of its own layer or of lower ones. A module
# belongs to the layer of the longest prefix naming it ("tracker" names only the package's __init__, so a new
# package must be placed here).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf helpers", ("tracker.version", "tracker.errors", "tracker.limits", "tracker.fsutil", "tracker.textfmt",
                      "tracker.resources", "tracker.workspace")),
    ("demo data", ("tracker.demo",)),
    ("the experiment's data model and YAML reading", ("tracker.experiment.model", "tracker.experiment.yamlfile")),
    ("the prompt language", ("tracker.prompts",)),
    ("the experiment: settings, parser, plan", ("tracker.experiment",)),
    ("image files", ("tracker.images",)),
    ("the engine", ("tracker.engine",)),
    ("the run store", ("tracker.store",)),
    ("metrics", ("tracker.metrics",)),
    ("MLflow", ("tracker.mlflow",)),
    ("reproducing", ("tracker.reproduce",)),
    ("the sweep", ("tracker.sweep",)),
    ("the report", ("tracker.report",)),
    ("the review studio", ("tracker.studio",)),
    ("the Python API", ("tracker.results", "tracker.api")),
    ("the CLI", ("tracker.cli",)),
    ("the commands and the package", ("tracker.commands", "tracker.__main__", "tracker")),
]
MAX_UPWARD = 3

# imports of another module's _private names; (importer, imported module, name) -> why
PRIVATE_ALLOWED: dict[tuple[str, str, str], str] = {
    ("tracker.metrics.clip", "tracker.engine.machine", "_folder_hash"):
        "the CLIP metric fingerprints its model folder as the engine does; public once the engine is recomposed",
}
PRIVATE_ALLOWED_UNDER = ("tracker.engine.",)  # the engine's parts are being recomposed (issue 22); not counted yet

MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 500
LONG_MODULES: dict[str, str] = {}  # module -> why it may be longer than MAX_LINES (none now)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of tracker
    name: str | None  # the name imported from it (from X import name), None for a module
    line: int


@functools.cache
def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                    (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                for stmt in node.body:
                    skip.update(id(n) for n in ast.walk(stmt))
    return skip


@functools.cache
def imports() -> tuple[Import, ...]:
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_only(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = owner(alias.name) if alias.name.split(".")[0] == "tracker" else None
                    if target and target != mod:
                        found.append(Import(mod, target, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_package else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "tracker":
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in mods:
                        target, name = sub, None
                    else:
                        target, name = owner(source), alias.name
                    if target and target != mod:
                        found.append(Import(mod, target, name, node.lineno))
    return tuple(found)


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in imports():
        edges[imp.importer].add(imp.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def layer(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or (module.startswith(prefix + ".") and prefix != "tracker")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best


def upward_imports() -> list[tuple[str, str]]:
    return sorted({(i.importer, i.target) for i in imports() if layer(i.target) > layer(i.importer)})


# ---------------------------------------------------------------------------------------------- the tests


def test_the_graph_is_read():
    """The reader finds what is surely there (a test of the test): a module-level import, a function-level one,
    a relative-free ``from package import module`` and a TYPE_CHECKING one left out."""
    edges = graph()
    assert "tracker.experiment.model" in edges["tracker.experiment.plan"]  # module level, a name from a module
    assert "tracker.store.runstore" in edges["tracker.sweep.runner"]  # inside a function
    assert "tracker.engine.batches" in edges["tracker.reproduce.regenerate"]  # from tracker.engine import batches
    assert "tracker.experiment.parse" not in edges["tracker.experiment.product"]  # TYPE_CHECKING only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert cycles(graph()) == []


def test_at_most_three_upward_imports():
    up = upward_imports()
    assert len(up) <= MAX_UPWARD, "imports that climb the layering (LAYERS, lowest first):\n" + "\n".join(
        f"  {a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})" for a, b in up)


def test_every_module_has_a_layer():
    for module in modules():
        layer(module)


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_long_modules():
    long = {m: n for m, p in modules().items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES and m not in LONG_MODULES}
    assert long == {}


def test_one_module_getattr_hook():
    """Only ``tracker/__init__``'s lazy public API: no compatibility shims left behind by moves."""
    hooks = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hooks += [module for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]
    assert hooks == ["tracker"]


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def private_uses() -> set[tuple[str, str, str]]:
    """(module, other module, _name) for ``from other import _name`` and for ``other._name`` where ``other`` is
    a name the module bound to another module of tracker (``from tracker.sweep import runner``)."""
    mods = modules()
    found = {(i.importer, i.target, i.name) for i in imports() if _private(i.name)}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module and node.module.startswith("tracker"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in mods:
                        bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr) \
                    and bound.get(node.value.id, module) != module:
                found.add((module, bound[node.value.id], node.attr))
    return found


def test_private_names_stay_in_their_module():
    """Another module's ``_name`` (imported, or read as ``module._name``) only where PRIVATE_ALLOWED says why."""
    found = {f for f in private_uses() if not f[0].startswith(PRIVATE_ALLOWED_UNDER)}
    assert sorted(found - set(PRIVATE_ALLOWED)) == []
    assert sorted(set(PRIVATE_ALLOWED) - found) == []  # an entry no longer needed goes


# ``from tracker.x import name`` where x only imported ``name`` from elsewhere: (file, module, name) -> why
REEXPORT_ALLOWED: dict[tuple[str, str, str], str] = {
}


@functools.cache
def _imported_only(module: str) -> frozenset[str]:
    """Names ``module`` binds by importing them (not defining them) at module level."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    imported = {(a.asname or a.name).split(".")[0] for node in tree.body
                if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    return frozenset(imported - defined)


def test_names_are_imported_from_the_module_that_defines_them():
    """No re-exports: the package, the tests and the benchmarks import a name where it is defined, so a move
    changes imports, never leaves a second path behind."""
    mods = modules()
    found = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in mods:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" not in mods and alias.name in _imported_only(node.module):
                        found.add((path.relative_to(ROOT).as_posix(), node.module, alias.name))
    assert sorted(found - set(REEXPORT_ALLOWED)) == []


def test_one_class_per_name():
    """Two classes of one name (two ``Workspace``s, two ``Experiment``s) make readers and imports guess which:
    every class defined at a module's top level in tracker/ has a name no other module's class has."""
    import collections

    seen: dict[str, list[str]] = collections.defaultdict(list)
    for module, path in modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                seen[node.name].append(module)
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}
