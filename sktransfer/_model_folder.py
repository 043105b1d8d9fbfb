"""The model folder that :func:`sktransfer.save` writes, read and written with every check, and
its backbone stages as starting weights. Pure Python/PyTorch.

A model folder holds ``config.json`` (format name and version, the versions that wrote it, the
estimator's class name, hyperparameters and fitted attributes, the size and SHA-256 of the
weights file) and ``weights.safetensors`` (the network's state dict). This module knows the
format: it writes a folder atomically, and reads one back only after checking the config's
size, JSON, format and version and the weights file's size and SHA-256. What the config's
``params`` and ``fitted`` mean to an estimator is :mod:`sktransfer.persistence`'s business.

``weights=<model folder>`` (any estimator, any pretrainer) starts a network from the backbone
stages of a saved model: :func:`read_saved_stages` gives them as :class:`SavedStages`, which
:func:`sktransfer._network.build_network` loads strictly into a freshly built backbone of the
same name; the saved head (or projection head, or decoder) is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "ConfigError",
    "SavedStages",
    "check_backbone_name",
    "is_model_folder",
    "load_saved_stages",
    "read_model_config",
    "read_model_weights",
    "read_saved_stages",
    "saved_stages_of",
    "write_model_folder",
]

FORMAT_NAME = "sktransfer-estimator"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
MAX_CONFIG_BYTES = 64 * 2**20


class ConfigError(Exception):
    """A config.json that parses but does not hold what the format says it must."""


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_model_folder(path, body, state):
    """Write ``config.json`` (the format's header, then ``body``) and, for a fitted model,
    ``weights.safetensors`` holding ``state``; each file replaced atomically.

    Parameters
    ----------
    path : str or path-like
        The folder; created if needed. Files of an earlier save there are replaced.
    body : dict
        JSON-ready entries after the header: ``versions``, ``estimator``, ``params``,
        ``fitted``.
    state : dict of str to torch.Tensor or None
        The network's state dict (CPU, contiguous); ``None`` for an unfitted estimator.

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> import tempfile, torch
    >>> from sktransfer._model_folder import read_model_config, write_model_folder
    >>> folder = write_model_folder(tempfile.mkdtemp(), {"estimator": "X"},
    ...                             {"w": torch.zeros(2)})
    >>> config = read_model_config(folder)
    >>> config["format"], config["estimator"], config["weights"]["bytes"] > 0
    ('sktransfer-estimator', 'X', True)
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; save() writes a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **body, "weights": None}
    if state is not None:
        from safetensors.torch import save as save_tensors

        blob = save_tensors(state, metadata={"format": FORMAT_NAME})
        config["weights"] = {
            "file": WEIGHTS_NAME,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }
        _write_atomic(folder / WEIGHTS_NAME, blob)
    elif (folder / WEIGHTS_NAME).exists():
        (folder / WEIGHTS_NAME).unlink()
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    _write_atomic(folder / CONFIG_NAME, text.encode("utf-8"))
    return folder


def _write_atomic(target, data):
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Reading, with every check
# ---------------------------------------------------------------------------------------------


def is_model_folder(path):
    """Whether ``path`` names an existing folder (a candidate model folder).

    Examples
    --------
    >>> import tempfile
    >>> from sktransfer._model_folder import is_model_folder
    >>> is_model_folder(tempfile.mkdtemp()), is_model_folder("DEFAULT"), is_model_folder(None)
    (True, False, False)
    """
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


def _reject_constant(name):
    raise ValueError(f"{name} is not a valid JSON number")


def read_model_config(path):
    """The checked ``config.json`` of a model folder, as a dict.

    Raises
    ------
    ValueError
        If the folder has no ``config.json``, or it is too large, not JSON, of another format,
        or of a newer format version; the message says what was found and what was expected.

    Examples
    --------
    >>> import tempfile
    >>> from sktransfer._model_folder import read_model_config
    >>> read_model_config(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    ValueError: '...' is not a model folder written by sktransfer.save(): it has no config.json.
    """
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a model folder written by sktransfer.save(): it has no "
            f"{CONFIG_NAME}."
        )
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{str(config_path)!r} is too large to be an sktransfer config.")
    try:
        config = json.loads(
            config_path.read_bytes().decode("utf-8"), parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{str(config_path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{str(config_path)!r} is not an sktransfer model config (format "
            f"{FORMAT_NAME!r} expected, found {found!r})."
        )
    version = config.get("format_version")
    if not _is_int(version, 1) or version > FORMAT_VERSION:
        raise ValueError(
            f"{str(config_path)!r} has format_version {version!r}; this sktransfer reads "
            f"versions 1..{FORMAT_VERSION}. Upgrade sktransfer to load it."
        )
    return config


def _is_int(v, lo):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def read_model_weights(path, info):
    """The state dict of a model folder, after checking the file's size and SHA-256 against
    ``info`` (the config's ``weights`` entry).

    Raises
    ------
    ConfigError
        If ``info`` does not record the file's bytes and SHA-256.
    ValueError
        If the file is missing, truncated, replaced (size or hash mismatch) or unreadable.
    """
    if not (isinstance(info, dict) and _is_int(info.get("bytes"), 0)
            and isinstance(info.get("sha256"), str)):
        raise ConfigError("'weights' must record the weights file's bytes and sha256")
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ValueError(f"The weights file {str(weights_path)!r} is missing.")
    size = weights_path.stat().st_size
    if size != info["bytes"]:
        raise ValueError(
            f"The weights file {str(weights_path)!r} has {size} bytes, but {CONFIG_NAME} "
            f"records {info['bytes']}: it is truncated, corrupt or was replaced."
        )
    blob = weights_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info["sha256"].lower():
        raise ValueError(
            f"The weights file {str(weights_path)!r} does not match the SHA-256 recorded in "
            f"{CONFIG_NAME} (expected {info['sha256']}, got {digest}): it is corrupt or was "
            "replaced."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    try:
        return load_tensors(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(
            f"The weights file {str(weights_path)!r} is not a readable safetensors file "
            f"({exc}): it is truncated or corrupt."
        ) from None


# ---------------------------------------------------------------------------------------------
# Backbone stages as starting weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedStages:
    """Backbone stages of a fitted network, to start another one from.

    Parameters
    ----------
    backbone_name : str
        The resolved backbone they belong to (``backbone_name_`` of the fitted estimator).
    stage_names : list of str or None
        Its stages, input first (``None``: not recorded).
    state : dict of str to torch.Tensor
        The stages' entries of the network's state dict, ``stages.`` prefix removed.
    sha256 : str
        Digest that names these weights (the weights file's, for a folder).
    source : str
        Where they come from (a folder), for messages and ``weights_``.
    origin : str
        What made them (``"saved TransferClassifier"``...), for ``weights_``.
    grayscale : str or None
        The ``grayscale`` setting they were fitted with (``"adapt"``: a 1-channel stem).

    Examples
    --------
    >>> import torch
    >>> from sktransfer._model_folder import saved_stages_of
    >>> state = {"stages.stem.weight": torch.ones(2), "head.weight": torch.ones(1)}
    >>> saved = saved_stages_of(state, backbone_name="test_cnn", source="model.skt",
    ...                         origin="saved TransferClassifier")
    >>> sorted(saved.state)
    ['stem.weight']
    >>> saved.description
    "model.skt (saved TransferClassifier, backbone 'test_cnn', weights sha256 ...)"
    """

    backbone_name: str
    stage_names: list | None
    state: dict
    sha256: str
    source: str
    origin: str
    grayscale: str | None = None

    @property
    def description(self):
        """What ``weights_`` says: the source, what made it, the backbone and the weights'
        digest (so that the activation cache tells different weights apart)."""
        return (f"{self.source} ({self.origin}, backbone {self.backbone_name!r}, weights "
                f"sha256 {self.sha256})")


def saved_stages_of(module_state, *, backbone_name, stage_names=None, source, origin,
                    sha256=None, grayscale=None):
    """:class:`SavedStages` from a network's state dict (its ``stages.*`` entries; the head,
    preprocessing and any other part dropped). ``sha256`` defaults to a digest of the stages'
    names, dtypes, shapes and values."""
    state = {
        k[len("stages."):]: v for k, v in module_state.items() if k.startswith("stages.")
    }
    if sha256 is None:
        h = hashlib.sha256()
        for key in sorted(state):
            t = state[key].detach().to("cpu").contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        sha256 = h.hexdigest()
    return SavedStages(backbone_name, None if stage_names is None else list(stage_names),
                       state, sha256, source, origin, grayscale)


def read_saved_stages(path):
    """The backbone stages of the fitted model saved in folder ``path``, checked.

    Parameters
    ----------
    path : str or path-like
        A folder written by :func:`sktransfer.save` (or a pretrainer's ``save_weights``).

    Returns
    -------
    saved : SavedStages

    Raises
    ------
    ValueError
        If the folder is not a saved sktransfer model, holds an unfitted one, or its weights
        file fails the size and SHA-256 checks; the message says what was found and what was
        expected.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import sktransfer
    >>> from sktransfer._model_folder import read_saved_stages
    >>> X = np.random.RandomState(0).rand(8, 8, 8, 3).astype(np.float32)
    >>> clf = sktransfer.TransferClassifier("test_cnn", weights=None, max_epochs=1,
    ...                                     random_state=0).fit(X, [0, 1] * 4)
    >>> saved = read_saved_stages(sktransfer.save(clf, tempfile.mkdtemp()))
    >>> saved.backbone_name, saved.stage_names
    ('test_cnn', ['stem', 'block1', 'block2'])
    """
    folder = Path(path)
    expected = (
        "weights= takes a folder written by sktransfer.save() or a pretrainer's save_weights() "
        "(config.json and weights.safetensors), a weights file, a weights name or None"
    )
    try:
        config = read_model_config(folder)
    except ValueError as exc:
        raise ValueError(f"weights={str(folder)!r}: {exc} {expected}.") from None
    fitted, params = config.get("fitted"), config.get("params")
    estimator = config.get("estimator")
    if fitted is None or config.get("weights") is None:
        raise ValueError(
            f"weights={str(folder)!r} holds an unfitted {estimator}: there are no trained "
            "weights to start from. Save a fitted estimator."
        )
    name = fitted.get("backbone_name_") if isinstance(fitted, dict) else None
    stage_names = fitted.get("stage_names_") if isinstance(fitted, dict) else None
    if not isinstance(name, str) or not (
        isinstance(stage_names, list) and all(isinstance(s, str) for s in stage_names)
    ):
        raise ValueError(
            f"weights={str(folder)!r}: {CONFIG_NAME} does not record the backbone's name and "
            "stages (fitted backbone_name_ and stage_names_): it is malformed or was tampered "
            "with."
        )
    try:
        state = read_model_weights(folder, config["weights"])
    except ConfigError as exc:
        raise ValueError(f"weights={str(folder)!r}: {CONFIG_NAME} is malformed: {exc}.") from None
    grayscale = params.get("grayscale") if isinstance(params, dict) else None
    return saved_stages_of(
        state, backbone_name=name, stage_names=stage_names,
        source=str(folder), origin=f"saved {estimator}",
        sha256=config["weights"]["sha256"].lower(),
        grayscale=grayscale if isinstance(grayscale, str) else None,
    )


def check_backbone_name(saved, backbone_name, requested):
    """Refuse stages saved from another backbone than ``backbone_name`` (what ``requested``,
    the ``backbone`` value, resolves to), naming both."""
    if saved.backbone_name != backbone_name:
        what = repr(requested) if requested == backbone_name else (
            f"{requested!r} ({backbone_name!r})")
        raise ValueError(
            f"weights={saved.source!r} holds a {saved.origin} with backbone "
            f"{saved.backbone_name!r}, but backbone={what} was asked for. Use "
            f"backbone={saved.backbone_name!r} with these weights, or weights saved from "
            f"{backbone_name!r}."
        )


def load_saved_stages(stages, saved, *, backbone_name, requested):
    """Load ``saved`` strictly into ``stages`` (an ordered dict of a freshly built backbone's
    stages, named ``backbone_name``); ``requested`` is the ``backbone`` value, for messages.

    Raises
    ------
    ValueError
        Naming both backbones when they differ, and the keys and shapes that do not match.
    """
    check_backbone_name(saved, backbone_name, requested)
    names = list(stages)
    if saved.stage_names is not None and list(saved.stage_names) != names:
        raise ValueError(
            f"weights={saved.source!r} holds the stages {list(saved.stage_names)} of "
            f"{saved.backbone_name!r}, but the backbone built here has {names}: the backbone "
            "definition changed since they were saved."
        )
    problems = []
    per_stage = {}
    for name in names:
        module = stages[name]
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in saved.state.items() if k.startswith(prefix)}
        own = module.state_dict()
        if set(sub) != set(own) and all(k.startswith("0.") for k in sub) and (
                {k[2:] for k in sub} == set(own)):
            # saved from a network whose last stage was wrapped to flatten its output
            sub = {k[2:]: v for k, v in sub.items()}
        if saved.grayscale == "adapt":
            sub = _expand_gray_stem(sub, own)
        missing = sorted(set(own) - set(sub))
        extra = sorted(set(sub) - set(own))
        wrong = [
            f"{prefix}{k}: saved {tuple(sub[k].shape)} vs built {tuple(own[k].shape)}"
            for k in sub
            if k in own and not _is_uninitialized(own[k])
            and tuple(sub[k].shape) != tuple(own[k].shape)
        ]
        problems += [f"missing {prefix}{k}" for k in missing]
        problems += [f"unexpected {prefix}{k}" for k in extra]
        problems += wrong
        per_stage[name] = sub
    unknown = sorted({k.split(".", 1)[0] for k in saved.state} - set(names))
    problems += [f"unexpected stage {s!r}" for s in unknown]
    if problems:
        raise ValueError(
            f"weights={saved.source!r} do not match the backbone {backbone_name!r} built here: "
            f"{'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}. Start from a "
            "model saved with the same backbone and the same grayscale setting."
        )
    for name in names:
        try:
            stages[name].load_state_dict(per_stage[name], strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"weights={saved.source!r} do not match the backbone {backbone_name!r} built "
                f"here ({exc})."
            ) from None


def _is_uninitialized(tensor):
    return isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin)


def _expand_gray_stem(sub, own):
    """A stem adapted to 1-channel input (its RGB weights summed) back to 3 channels: each
    channel gets a third, so that gray images repeated to RGB, or the stem adapted again,
    compute exactly what the saved stem computed."""
    out = dict(sub)
    for k, v in sub.items():
        target = own.get(k)
        if (target is not None and not _is_uninitialized(target) and v.dim() == 4
                and target.dim() == 4 and v.shape[1] == 1 and target.shape[1] == 3
                and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]):
            out[k] = v.repeat(1, 3, 1, 1) / 3
    return out
