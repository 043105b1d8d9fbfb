"""Every benchmark script runs (``--quick``), so that none of them rots. The runs are marked
slow: they check the scripts, not the package."""

import importlib
import os
import sys

import numpy as np
import pytest
import torch

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks")
SCRIPTS = ["bench_head_only", "bench_grid_search", "bench_full_finetune", "bench_predict",
           "bench_memory", "bench_throughput", "bench_recipe", "bench_saliency",
           "bench_pretraining", "bench_data_size", "bench_adaptation", "bench_search"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    threads = torch.get_num_threads()

    def load(name):
        return importlib.import_module(name)

    yield load
    torch.set_num_threads(threads)
    for name in [*SCRIPTS, "_common", "diagnose_depthwise"]:
        sys.modules.pop(name, None)


@pytest.mark.slow  # each script's quick run trains models: 1-2.5 s apiece on 2 busy cores
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_run_prints_its_table(bench, name, capsys):
    # one thread: a smoke run measures nothing, and stays fast on a busy machine
    result = bench(name).main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.startswith("### ")
    assert "| " in out and "load average" in out
    assert "target" in out
    assert result and all(isinstance(v, (bool, float)) for v in result.values())
    if name == "bench_grid_search":
        # skorch training as sktransfer does (same head init, same batch order) scores the
        # same: caching and the estimator's machinery change no result
        assert result["candidate_gap_same_training"] <= 0.1
    if name == "bench_search":
        # a resumed fit is the fit from the start (constant rate): both halving searches
        # score every candidate alike
        assert result["scores_gap"] <= 1e-12


def test_run_all_lists_every_script():
    with open(os.path.join(BENCH_DIR, "run_all.py")) as fh:
        source = fh.read()
    on_disk = sorted(f[:-3] for f in os.listdir(BENCH_DIR) if f.startswith("bench_"))
    assert on_disk == sorted(SCRIPTS)
    assert all(f'"{name}"' in source for name in SCRIPTS)


@pytest.mark.slow
def test_depthwise_diagnosis_quick_run_prints_both_tables(bench, capsys):
    torch.set_num_threads(1)
    bench("diagnose_depthwise").main(["--quick"])
    out = capsys.readouterr().out
    layers, steps = out.split("One training step")
    # every depthwise shape of Lite0 at 64 px: 2 groups run on maps no larger than their kernel
    assert layers.count("sktransfer's |") >= 4 and layers.count("PyTorch's |") >= 4
    assert "| 32 px |" in steps


@pytest.mark.slow
def test_data_size_caches_cells_and_draws_its_figure(bench, capsys, tmp_path):
    module = bench("bench_data_size")
    figure, results = tmp_path / "fig.png", tmp_path / "results"
    argv = ["--quick", "--threads", "1", "--sizes", "5", "--arms", "defaults", "pixels",
            "--arms-extra", '{"probe inside": {"freeze_depth": "all", '
            '"head_init": "linear_probe"}}', "--results-dir", str(results),
            "--figure", str(figure)]
    first = module.main(argv)
    out = capsys.readouterr().out
    assert "| probe inside" in out and "3 measured in this run, 0 read from" in out
    assert figure.exists() and figure.stat().st_size > 0
    assert len(list(results.glob("*.json"))) == 3
    second = module.main(argv)
    out = capsys.readouterr().out
    assert "0 measured in this run, 3 read from" in out
    assert second == first


def test_data_size_caps_sizes_at_the_pool_and_says_so(bench):
    module = bench("bench_data_size")
    X = np.broadcast_to(np.arange(30, dtype=np.uint8)[:, None, None], (30, 4, 4))
    y = np.repeat([0, 1, 2], 10)
    data = module.DataSet("toy", "toy", X, y, X[:3], y[:3], "toy")
    sizes, note = module._sizes_for(data, [5, 10, 20, 50])
    assert sizes == [5, 10] and "20, 50 per class not available" in note
    X_train, y_train = data.train(5, seed=0)
    assert np.bincount(y_train).tolist() == [5, 5, 5]
    # nested per seed: the 5 per class of seed 0 are among its 10 per class
    small, large = data.train(5, seed=3)[0][:, 0, 0], data.train(10, seed=3)[0][:, 0, 0]
    assert set(small) < set(large) and len(set(large)) == 30
    assert module._sizes_for(data, [5])[1] is None


def test_adaptation_peer_net_freezes_the_first_half_and_exposes_pooled_features(bench):
    module = bench("bench_adaptation")
    net = module.PeerNet("test_cnn", None, n_classes=4)  # 3 stages: the first one frozen
    stem, block1 = list(net.stages)[:2]
    assert not any(p.requires_grad for p in stem.parameters())
    assert all(p.requires_grad for p in block1.parameters())
    net.train()
    assert not stem.training and block1.training
    seen = {}
    net.features.register_forward_hook(lambda m, i, o: seen.setdefault("features", o))
    out = net(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 4) and seen["features"].shape == (2, 16)


def test_adaptation_report_without_skada_says_the_peer_is_unmeasured(bench, capsys):
    module = bench("bench_adaptation")
    arms = module.arm_names(peer=False)
    assert "source-only" in arms and not any(a.startswith("skada") for a in arms)
    run = {a: {"accuracy": 0.5, "seconds": 1.0, "dev": 0.0, "entropy": 0.0} for a in arms}
    run["mcc 2.0"].update(accuracy=0.7, dev=1.0)  # DEV prefers it
    run["coral 0.5"].update(entropy=1.0)  # entropy prefers this one, no better than source
    rows, res = module.summarize("pair", [run])
    assert res["best"] == pytest.approx(0.7) and res["skada_best"] is None
    assert any("entropy 0.500" in r[3] for r in rows if r[1].startswith("coral"))
    store = bench("bench_data_size").ResultStore(None)
    out = module._report({"pair": res}, rows, (1, 1, 1), [0], store, None)
    text = capsys.readouterr().out
    assert out["mean_gain_10"] and not out["skada_best"]
    assert "not measured, skada is not installed" in text
    assert "+20.0 points" in text
