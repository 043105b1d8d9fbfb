"""The package's architecture (``docs/architecture.rst``), checked on the source with ast.

The rules:

* Layers: every module of ``sktransfer/`` has a layer (``LAYERS``: 1 the torch core, 2 training
  with skorch, 3 the scikit-learn surface) and imports only from its own layer or below, never
  upwards, not even inside a function; the torch core never reaches the scikit-learn layer,
  directly or through other modules.
* No import cycles, function-level imports included.
* Only ``persistence`` and the command line import the estimator classes.
* Only ``_compat`` imports scikit-learn's private helpers.
* Size: no module over 620 lines; no function over 62 lines (its docstring left out; an
  estimator's ``__init__``, which only stores its hyperparameters, aside).
* ``docs/architecture.rst`` names every module, and its diagram places each in the layer given
  here.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sktransfer"
ARCHITECTURE_DOC = PACKAGE.parent / "docs" / "architecture.rst"

# Every module, in its layer. A new module must be placed here and in docs/architecture.rst.
LAYERS = {
    # 1. torch core: backbones, the network builder, freezing, data, caching, kernels
    1: ["_spec", "_decode", "images", "_data", "augment", "caching", "_freezing",
        "_depthwise", "_efficientnet_lite", "_weights", "_stages", "_zoo", "backbones",
        "_network", "_runtime", "_folders", "_model_folder"],
    # 2. training: the skorch net, its callbacks, schedules, the range test
    2: ["_training", "_schedules", "_lr_finder", "_pretext", "_adaptation_training",
        "_resume"],
    # 3. the scikit-learn surface, then the user-facing helpers on top of it
    3: ["_compat", "_estimator", "_adaptive", "_base", "_recipe", "pretraining",
        "_semi_supervised", "_domain", "adaptation", "classifier", "regressor", "features",
        "_state_codec", "persistence", "_fashion_mnist",
        "datasets", "plotting", "_saliency", "_displays", "_embedding", "inspection",
        "_explain", "cli", "__main__", "model_selection"],
}
TORCH_CORE = LAYERS[1]
SKLEARN_LAYER = ["_base", "classifier", "regressor", "features", "persistence", "cli",
                 "datasets", "plotting"]
ESTIMATORS = ["classifier", "regressor", "features"]
# the modules that may import the estimator classes: persistence (it rebuilds them), the
# command line and the package root's re-exports
ESTIMATOR_USERS = {"persistence", "cli"}


def import_graph(package=PACKAGE):
    """``{module: the package's modules it imports}``, in dotted names.

    Every import counts, at module level or inside a function; ``from . import name`` is an
    edge to the module ``name`` where there is one. Edges into the package root (its
    re-exports: ``from sktransfer import X``) are left out.
    """
    root, modules = package.name, {}
    for path in package.rglob("*.py"):
        parts = (root, *path.relative_to(package).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = [node.module] if node.module else []
                if node.level:  # relative: from the module's own package, or above it
                    base = here[: len(here) - node.level + 1] + base
                targets += [".".join(base + [alias.name]) for alias in node.names]
        graph[module] = set()
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target not in (module, root):
                graph[module].add(target)
    return graph


def find_cycle(graph):
    """One import cycle as ``[a, b, ..., a]``, or None."""
    done, path = set(), []

    def visit(module):
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        done.add(path.pop())
        return None

    for module in sorted(graph):
        cycle = None if module in done else visit(module)
        if cycle:
            return cycle
    return None


def test_the_helpers_see_relative_and_function_level_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("import os\nfrom . import b\n\n\ndef f():\n    import pkg.c\n")
    (package / "b.py").write_text("from pkg import A\nfrom .sub.d import D\n")
    (package / "c.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "d.py").write_text("def g():\n    from .. import a\n")
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.sub.d"},
                     "pkg.c": set(), "pkg.sub": set(), "pkg.sub.d": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.d", "pkg.a"]
    graph["pkg.sub.d"] = set()
    assert find_cycle(graph) is None


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", TORCH_CORE)
def test_the_torch_core_imports_nothing_from_the_sklearn_layer(module):
    graph = import_graph()
    module = f"sktransfer.{module}"
    sklearn_layer = {f"sktransfer.{name}" for name in SKLEARN_LAYER}
    assert {module, *sklearn_layer} <= set(graph), "a module was renamed: update the lists"
    reached, todo = set(), [module]  # what it imports, directly or through other modules
    while todo:
        new = graph[todo.pop()] - reached
        reached |= new
        todo += new
    assert sorted(reached & sklearn_layer) == []


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    graph = import_graph()
    layer_of = {f"sktransfer.{m}": n for n, modules in LAYERS.items() for m in modules}
    unplaced = sorted(set(graph) - set(layer_of) - {"sktransfer"})
    assert unplaced == [], "place these modules in LAYERS and in docs/architecture.rst"
    upward = [(m, t) for m, targets in graph.items() if m in layer_of
              for t in targets if layer_of.get(t, 0) > layer_of[m]]
    assert upward == []


def test_only_persistence_and_the_command_line_import_the_estimators():
    graph = import_graph()
    estimators = {f"sktransfer.{m}" for m in ESTIMATORS}
    users = sorted(m.split(".", 1)[1] for m, targets in graph.items()
                   if targets & estimators and m != "sktransfer")
    assert set(users) <= ESTIMATOR_USERS, users


def private_sklearn_imports(package=PACKAGE):
    """``[(module, imported name)]`` of every import of a private scikit-learn helper outside
    ``_compat``: a name with a leading underscore imported from scikit-learn
    (``from sklearn.utils import _safe_indexing``), or any import through a private module
    (``sklearn.utils._param_validation``), at module level or inside a function."""

    def private(dotted):
        return any(part.startswith("_") and not part.startswith("__")
                   for part in dotted.split("."))

    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package).with_suffix("").parts)
        if module == "_compat":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [(module, name) for name in names
                      if name.split(".")[0] == "sklearn" and private(name)]
    return found


def test_the_private_import_helper_sees_names_and_module_paths(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "_compat.py").write_text("from sklearn.utils import _safe_indexing\n")
    (package / "a.py").write_text(
        "from sklearn.utils import _safe_indexing, check_array\n"
        "from sklearn import __version__\n"
        "import sklearn.utils._param_validation\n"
        "from . import _compat\n\n\n"
        "def f():\n    from sklearn.utils._param_validation import Interval\n")
    (package / "b.py").write_text("import sklearn.utils\nfrom sklearn.base import clone\n")
    assert sorted(private_sklearn_imports(package)) == [
        ("a", "sklearn.utils._param_validation"),
        ("a", "sklearn.utils._param_validation.Interval"),
        ("a", "sklearn.utils._safe_indexing"),
    ]


def test_only_compat_imports_private_sklearn_helpers():
    assert private_sklearn_imports() == []


def _function_lengths(path):
    """``(name, lines)`` of every function, its docstring left out."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            start = node.lineno
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None),
                                                           ast.Constant):
                start = first.end_lineno + 1
            yield node.name, node.end_lineno - start + 1


def test_modules_and_functions_stay_small():
    """No module over 620 lines, no function over 62 (an estimator's __init__, which only
    stores its hyperparameters, aside)."""
    big = [p.name for p in PACKAGE.rglob("*.py") if p.read_text().count("\n") > 620]
    long = [f"{p.name}:{name} ({n} lines)" for p in PACKAGE.rglob("*.py")
            for name, n in _function_lengths(p) if n > 62 and name != "__init__"]
    assert big == [] and long == []


def diagram_layers(text, modules):
    """``{layer: the modules its block of the diagram names}``, from the ``code-block`` of
    ``docs/architecture.rst`` whose lines ``   N. title   modules`` start each layer."""
    block = text.split(".. code-block:: text", 1)[1]
    block = block[: re.search(r"\n\S", block).start()]  # up to the first unindented line
    layers, current = {}, None
    for line in block.splitlines():
        start = re.match(r"\s*(\d)\. ", line)
        if start:
            current = layers.setdefault(int(start.group(1)), set())
        if current is not None:
            current.update(w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", line)
                           if w in modules)
    return layers


def test_the_diagram_helper_reads_each_layer_block():
    text = ("Intro names c.\n\n.. code-block:: text\n\n   2. top   a ─ b,\n"
            "            c\n       │ imports\n   1. core (d)   d\n\nAfter: e.\n")
    assert diagram_layers(text, {"a", "b", "c", "d", "e"}) == {2: {"a", "b", "c"}, 1: {"d"}}


def test_the_architecture_doc_names_every_module_in_its_layer():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    text = ARCHITECTURE_DOC.read_text()
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    assert [m for m in modules if m not in named] == []
    layers = diagram_layers(text, set(modules))
    assert {n: sorted(ms) for n, ms in layers.items()} == {
        n: sorted(ms) for n, ms in LAYERS.items()}
