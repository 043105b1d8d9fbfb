"""Cheap checks of the documentation sources; ``make docs`` builds and runs the examples."""

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import sktransfer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = (DOCS / "api.rst").read_text()

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="documentation sources not present")


def _documented_names():
    """Names listed in autosummary blocks and autodata directives of api.rst."""
    names = set()
    for block in re.findall(r"\.\. autosummary::\n((?:   .*\n|\n)+)", API):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                names.add(line)
    names.update(re.findall(r"\.\. autodata:: sktransfer\.(\S+)", API))
    return names


# Modules whose ``__all__`` is public API; the others (``sktransfer._*``) are internal.
PUBLIC_MODULES = [
    "sktransfer",
    "sktransfer.adaptation",
    "sktransfer.augment",
    "sktransfer.backbones",
    "sktransfer.caching",
    "sktransfer.classifier",
    "sktransfer.cli",
    "sktransfer.datasets",
    "sktransfer.features",
    "sktransfer.images",
    "sktransfer.inspection",
    "sktransfer.model_selection",
    "sktransfer.persistence",
    "sktransfer.plotting",
    "sktransfer.pretraining",
    "sktransfer.regressor",
]


def _public_objects():
    """``(qualified name, object)`` for every public function, class, method and property."""
    seen = {}
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            seen.setdefault(id(obj), (f"{obj.__module__}.{obj.__qualname__}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, property):
                        member = member.fget
                    if inspect.isfunction(member):
                        seen.setdefault(
                            id(member), (f"{obj.__module__}.{obj.__qualname__}.{attr}", member)
                        )
    return sorted(seen.values(), key=lambda item: item[0])


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_api_reference_lists_every_public_name(module):
    mod = importlib.import_module(module)
    prefix = module.removeprefix("sktransfer").lstrip(".")
    documented = _documented_names()
    public = [n for n in mod.__all__ if not n.startswith("__")]
    missing = [
        n
        for n in public
        if (f"{prefix}.{n}" if prefix else n) not in documented
        # re-exported at the top level and documented there
        and not (n in documented and getattr(sktransfer, n, None) is getattr(mod, n))
    ]
    assert not missing, f"add {missing} of {module}.__all__ to docs/api.rst"


def test_public_modules_are_all_the_non_private_ones():
    package = ROOT / "sktransfer"
    modules = {f"sktransfer.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    missing = modules - set(PUBLIC_MODULES)
    assert not missing, f"new public modules {missing}: add to PUBLIC_MODULES and docs/api.rst"


def test_every_public_docstring_has_a_runnable_example():
    """Each public function, class, method and property shows an Examples section with
    doctest lines (``--doctest-modules`` runs them in ``make test``)."""
    lacking = []
    for name, obj in _public_objects():
        doc = inspect.getdoc(obj) or ""
        if not re.search(r"^Examples\n-{8}\n", doc, flags=re.M) or ">>> " not in doc:
            lacking.append(name)
    assert not lacking, f"these public docstrings have no Examples section: {lacking}"


def test_api_reference_names_exist():
    for name in _documented_names():
        obj = sktransfer
        for part in name.split("."):
            if not hasattr(obj, part):
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            else:
                obj = getattr(obj, part)


def test_gallery_skips_the_demo_script_only():
    conf = (DOCS / "conf.py").read_text()
    ignore = re.search(r'"ignore_pattern": r"([^"]+)"', conf).group(1)
    run = re.search(r'"filename_pattern": r"([^"]+)"', conf).group(1)
    # sphinx-gallery matches ignore_pattern against the bare file name or the full path,
    # depending on its version
    assert re.search(ignore, "demo.py")
    assert re.search(ignore, str(ROOT / "examples" / "demo.py"))
    for example in (ROOT / "examples").glob("plot_*.py"):
        assert not re.search(ignore, example.name), example.name
        assert not re.search(ignore, str(example)), example.name
        assert re.search(run, str(example)), example.name


def test_gallery_order_names_existing_examples():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        gallery_order = importlib.import_module("gallery_order")
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    examples = {p.name for p in (ROOT / "examples").glob("plot_*.py")}
    assert set(gallery_order.ORDER) == examples


def test_backbone_table_shows_stage_names():
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        backbone_table = importlib.import_module("backbone_table")
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    text = backbone_table.render(backbone_table.backbone_rows(["test_cnn"]))
    assert "   * - ``test_cnn``\n     - ``stem``, ``block1``, ``block2`` (3)\n     - 16\n" in text


def test_benchmark_results_become_restructured_text(tmp_path):
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        bench_results = importlib.import_module("bench_results")
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- results:start -->\n<!-- bench_x -->\n### 1. A title\n\nRun `x.py`.\n\n"
        "| | accuracy |\n|---|---|\n| `a` | 0.5 |\n\n- target: **missed**\n"
        "<!-- /bench_x -->\n<!-- results:end -->\n"
    )
    text = bench_results.render("bench_x", readme)
    assert ".. rubric:: 1. A title\n\nRun ``x.py``." in text
    assert "   * -  \n     - accuracy\n   * - ``a``\n     - 0.5\n" in text
    assert "- target: **missed**" in text
    assert "python benchmarks/run_all.py --only bench_y" in bench_results.render("bench_y", readme)
