"""Cheap checks of the documentation sources; ``make docs`` builds and runs the examples."""

import importlib
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


@pytest.mark.parametrize(
    "module", ["sktransfer", "sktransfer.datasets", "sktransfer.caching", "sktransfer.plotting"]
)
def test_api_reference_lists_every_public_name(module):
    mod = importlib.import_module(module)
    prefix = module.removeprefix("sktransfer").lstrip(".")
    documented = _documented_names()
    public = [n for n in mod.__all__ if not n.startswith("__")]
    missing = [n for n in public if (f"{prefix}.{n}" if prefix else n) not in documented]
    assert not missing, f"add {missing} of {module}.__all__ to docs/api.rst"


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
