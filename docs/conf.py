"""Sphinx configuration of the sktransfer documentation.

The build needs no network: intersphinx reads the inventories stored in ``_intersphinx/``, the
example gallery runs on the offline EfficientNet-Lite0 weights and the bundled data sets, and
the table of backbone stages is computed from randomly initialised networks.
"""

import os
import posixpath
import re
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import sktransfer  # noqa: E402

# -- Project ---------------------------------------------------------------------------------

project = "sktransfer"
author = "The sktransfer developers"
copyright = f"2024-{time.strftime('%Y')}, {author}"
release = sktransfer.__version__
version = ".".join(release.split(".")[:2])

# -- General ---------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "backbone_table",
    "cli_help",
    "bench_results",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_ext",
    "_intersphinx",
    "_templates",
    "**.ipynb_checkpoints",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.pickle",
    "auto_examples/*.codeobj.json",
]
root_doc = "index"
default_role = "literal"
nitpicky = False

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": True}
autodoc_typehints = "none"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# Math through MathJax, as a local build shows it; no other asset is fetched at build time.
mathjax3_config = {"chtml": {"displayAlign": "left"}}

# -- intersphinx: offline inventories ----------------------------------------------------------
#
# Inventories are read from _intersphinx/<name>.inv and never downloaded during a build. A
# project without a local inventory is left out of the mapping: references to it render as
# plain code instead of links, and no fetch (and so no fetch warning) ever happens. To link to
# one of them, save its objects.inv as _intersphinx/<name>.inv (see _intersphinx/README.md).
# SKTRANSFER_DOCS_INTERSPHINX=online first fetches the current inventories, for hosts with a
# network; a failed fetch there is reported and falls back to the stored file, never an error.

INTERSPHINX_URLS = {
    "python": "https://docs.python.org/3/",
    "sklearn": "https://scikit-learn.org/stable/",
    "numpy": "https://numpy.org/doc/stable/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "torchvision": "https://docs.pytorch.org/vision/stable/",
    "skorch": "https://skorch.readthedocs.io/en/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
    "joblib": "https://joblib.readthedocs.io/en/stable/",
    "dask": "https://docs.dask.org/en/stable/",
    "distributed": "https://distributed.dask.org/en/stable/",
    "pillow": "https://pillow.readthedocs.io/en/stable/",
}
INVENTORY_DIR = HERE / "_intersphinx"


def _fetch_inventories(names, folder, timeout=10):
    """Download the missing inventories into ``folder``; report, never raise."""
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        url = INTERSPHINX_URLS[name] + "objects.inv"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except Exception as exc:  # noqa: BLE001 - any failure means "no link", not an error
            print(f"intersphinx: could not fetch {url} ({exc}); {name} is not linked")
            continue
        (folder / f"{name}.inv").write_bytes(data)


def _intersphinx_mapping():
    folders = [INVENTORY_DIR]
    if os.environ.get("SKTRANSFER_DOCS_INTERSPHINX") == "online":
        fetched = HERE / "_build" / "intersphinx"
        _fetch_inventories(list(INTERSPHINX_URLS), fetched)
        folders.insert(0, fetched)  # current inventories first, the stored ones as fallback
    mapping = {}
    for name, url in INTERSPHINX_URLS.items():
        for folder in folders:
            path = folder / f"{name}.inv"
            if path.is_file():
                mapping[name] = (url, str(path))
                break
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 10

# -- Methods inherited from scikit-learn -----------------------------------------------------
#
# The estimators' pages list the methods they inherit (get_params, score, set_output...), with
# scikit-learn's docstrings. Metadata-routing plumbing is left out, and a :ref: in those
# docstrings to a scikit-learn label that the stored inventory does not know (it is older than
# the installed scikit-learn) becomes plain text rather than a broken reference.

_SKIPPED_INHERITED = re.compile(r"^(get_metadata_routing|set_\w+_request)$")
_REF = re.compile(r":ref:`([^`<]*?)\s*(?:<([^>`]+)>)?`")


def _sklearn_labels():
    if "sklearn" not in intersphinx_mapping:
        return set()
    from sphinx.util.inventory import InventoryFile

    with open(intersphinx_mapping["sklearn"][1], "rb") as stream:
        inventory = InventoryFile.load(stream, "", posixpath.join)
    data = getattr(inventory, "data", inventory)
    return set(data.get("std:label", {}))


_SKLEARN_LABELS = _sklearn_labels()


def _skip_member(app, what, name, obj, skip, options):
    if _SKIPPED_INHERITED.match(name):
        return True
    return None


def _plain_unknown_refs(app, what, name, obj, options, lines):
    if not getattr(obj, "__module__", "") or not obj.__module__.startswith("sklearn."):
        return

    def replace(match):
        text, label = match.group(1), match.group(2)
        target = (label or text).strip().lower()
        if target in _SKLEARN_LABELS:
            return match.group(0)
        return text if label else text.replace("_", " ")

    lines[:] = [_REF.sub(replace, line) for line in lines]


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _plain_unknown_refs)

# -- HTML ------------------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sktransfer {release}"
html_static_path = ["_static"]
html_css_files = ["sktransfer.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc", "sg_download_links", "sg_launcher_links"],
}
html_sidebars = {"install": [], "index": []}
html_context = {"default_mode": "light"}

# -- Example gallery -------------------------------------------------------------------------

# Examples run at build time, on the CPU, with two threads: their timings in the gallery are
# those of a small machine. Examples whose file name does not start with "plot_" are shown
# without being run.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings(
    "ignore", message="Matplotlib is currently using agg", category=UserWarning
)

sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"[\\/]plot_",
    # examples/demo.py is the command-line demo (make demo), not a gallery page
    "ignore_pattern": r"(__init__|(^|[\\/])demo)\.py$",
    "within_subsection_order": "gallery_order.ExampleOrder",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("sktransfer",),
    "reference_url": {"sktransfer": None},
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "download_all_examples": True,
    "capture_repr": ("_repr_html_", "__repr__"),
    # a block ending in a plot call shows the plot, not the repr of what the call returned
    "ignore_repr_types": r"matplotlib|mpl_toolkits|sklearn\.metrics\._plot",
    "min_reported_time": 5,
}
