"""timm as a backbone source, offline: random init, a local checkpoint, and the error when
pretrained weights are not in the local cache (never a network attempt)."""

import socket

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is an optional backbone source")

from sktransfer import TransferClassifier, get_backbone  # noqa: E402


def test_timm_backbone_uses_timm_metadata_and_feature_stages():
    bb = get_backbone("timm:resnet18")
    assert bb.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert bb.num_features == 512
    assert bb.preprocessing.input_size == 224
    assert bb.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_timm_random_init_and_local_checkpoint_fit(tmp_path, tiny_images):
    X, y = tiny_images
    torch.manual_seed(5)
    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18_timm.pth"
    torch.save(model.state_dict(), path)
    bb = get_backbone("timm:resnet18", weights=str(path))
    torch.testing.assert_close(bb.stages["stem"][0].weight, model.conv1.weight)
    clf = TransferClassifier("timm:resnet18", weights=str(path), input_size=32, max_epochs=1,
                             batch_size=8, random_state=0).fit(X, y)
    assert clf.predict(X).shape == (len(X),)
    clf0 = TransferClassifier("timm:resnet18", weights=None, input_size=32, max_epochs=1,
                              batch_size=8, random_state=0).fit(X, y)
    assert not np.allclose(clf.predict_proba(X), clf0.predict_proba(X))


def test_timm_pretrained_offline_error_names_remedies(monkeypatch, tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE and HF_HOME once, at import (conftest.py sets the
    # first before that): the values it uses are patched, the environment only follows them
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    connections = []

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("the test tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match=r"not available offline.*weights=None"):
        get_backbone("timm:resnet18", weights="DEFAULT")
    assert connections == []


def test_unknown_timm_model():
    with pytest.raises(ValueError, match=r"Unknown timm model 'resnet181'.*resnet18"):
        get_backbone("timm:resnet181")
