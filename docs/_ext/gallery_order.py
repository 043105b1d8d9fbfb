"""Order of the examples in the gallery: a learning path, not the alphabet."""

from sphinx_gallery.sorting import FileNameSortKey

ORDER = [
    "plot_quickstart.py",
    "plot_linear_probe_vs_finetuning.py",
    "plot_training_recipe.py",
    "plot_pretraining.py",
    "plot_domain_adaptation.py",
    "plot_grid_search.py",
    "plot_regression.py",
    "plot_image_folder.py",
    "plot_persistence.py",
    "plot_inspection.py",
]


class ExampleOrder(FileNameSortKey):
    """Examples listed in ``ORDER`` first, in that order; any other one after, by name."""

    def __call__(self, filename):
        name = str(filename).rsplit("/", 1)[-1]
        rank = ORDER.index(name) if name in ORDER else len(ORDER)
        return f"{rank:03d}{name}"
