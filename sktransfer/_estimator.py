"""What every estimator built on a backbone shares: input checks, building, pickling.

:class:`BackboneEstimatorMixin` is the base of the fine-tuning estimators
(:mod:`sktransfer._base`), :class:`~sktransfer.TransferFeatures` and the pretrainers. It builds
networks only through :func:`sktransfer._network.build_network`, and declares in ``_persisted``
the fitted attributes that :mod:`sktransfer.persistence` stores.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
import sklearn
import torch
from sklearn.exceptions import InconsistentVersionWarning

from . import caching
from ._compat import HasMethods, Interval, StrOptions, check_feature_names, get_feature_names
from ._data import check_input, check_same_input
from ._network import build_network, input_kind_of, load_fitted_state, native_input_size
from ._runtime import preserved_global_state
from ._training import precision_key
from .images import is_image_list

__all__ = ["BackboneEstimatorMixin"]

# ---------------------------------------------------------------------------------------------
# What every estimator built on a backbone shares
# ---------------------------------------------------------------------------------------------

_BACKBONE_CONSTRAINTS = {
    "backbone": [str, callable],
    "weights": [str, os.PathLike, None],
    "input_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "image_shape": [tuple, list, None],
    "grayscale": [StrOptions({"repeat", "adapt"})],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "cache": ["boolean", str, os.PathLike, HasMethods(["cache"])],
    "device": [str],
    "precision": [StrOptions({"float32", "bfloat16", "float16"})],
}


class BackboneEstimatorMixin:
    """Input checks, network building and pickling for every estimator built on a backbone.

    Subclasses say how their network is frozen (:meth:`_network_options`), how many outputs a
    fitted network has (:meth:`_n_outputs_fitted`) and, in ``_persisted``, which fitted
    attributes make up the fitted state (name -> kind, read by :mod:`sktransfer.persistence`).
    """

    _persisted = {
        "input_spec_": "input_spec",
        "n_frozen_stages_": "count",
        "stage_names_": "names",
        "n_features_out_": "positive",
        "n_features_in_": "positive",
        "device_": "str",
        "backbone_name_": "str",
        "weights_": "optional_str",
        "feature_names_in_": "feature_names",
    }

    def _network_options(self, **overrides):
        """Keyword arguments of :func:`build_network` that the hyperparameters set
        (``overrides``: values resolved in ``fit`` in place of the hyperparameters)."""
        raise NotImplementedError

    def _n_outputs_fitted(self):
        raise NotImplementedError

    @classmethod
    def _check_persisted(cls, attrs):
        """Check that fitted attributes read from a file agree with each other."""
        if attrs["n_frozen_stages_"] > len(attrs["stage_names_"]):
            raise ValueError("n_frozen_stages_ exceeds the number of stages")

    # -- input ------------------------------------------------------------------------------

    def _validate_fit_input(self, X, *, on_bad_image="raise"):
        """``(X, spec, feature_names)``: X checked and described; nothing is set yet."""
        kind = input_kind_of(self.backbone)
        image_list = kind == "image" and is_image_list(X)
        image_size = native_input_size(self.backbone, self.input_size) if image_list else None
        names = None if image_list else get_feature_names(X)
        X, spec = check_input(X, input_kind=kind, image_shape=self.image_shape, estimator=self,
                              image_size=image_size, on_bad_image=on_bad_image)
        return X, spec, names

    def _set_input_attrs(self, X, spec, feature_names):
        self.input_spec_ = spec
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        if feature_names is not None:
            self.feature_names_in_ = feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _validate_predict_input(self, X):
        if not is_image_list(X):
            check_feature_names(self, X, reset=False)
        return check_same_input(X, self.input_spec_, image_shape=self.image_shape,
                                estimator=self, resize=self.input_size is not None)

    def _prefix_key(self, backbone_name, weights, spec, k, seed, flip=False):
        """Activation-cache key of the first ``k`` stages' outputs for this estimator's
        settings (``seed``: of a randomly initialised backbone, else ``None``)."""
        return precision_key(caching.prefix_key(
            backbone=self.backbone, backbone_name=backbone_name, weights=weights, spec=spec,
            k=k, seed=seed, input_size=self.input_size, grayscale=self.grayscale, flip=flip,
        ), self.precision)

    def _memory(self):
        """The folder (or ``joblib.Memory``) that ``cache`` names, else ``None``."""
        return None if isinstance(self.cache, (bool, np.bool_)) else self.cache

    # -- the network ------------------------------------------------------------------------

    def _build_network(self, spec, n_outputs, sample, *, weights, n_frozen=None, **options):
        """The one builder (:func:`build_network`) with this estimator's settings
        (``options``: of :meth:`_network_options`, e.g. a resolved ``freeze_depth``)."""
        return build_network(
            self.backbone, weights=weights, spec=spec, n_outputs=n_outputs, sample=sample,
            n_frozen=n_frozen, grayscale=self.grayscale, input_size=self.input_size,
            **self._network_options(**options),
        )

    def _restore_module(self, module_state, device=None):
        """Rebuild the fitted architecture (nothing downloaded) and load ``module_state``
        strictly; sets ``module_`` (and ``device_``, CPU where CUDA is unavailable)."""
        spec = self.input_spec_
        sample = torch.zeros((2, *spec.sample_shape), dtype=_torch_dtype(spec.dtype))
        with preserved_global_state():
            built = self._build_network(spec, self._n_outputs_fitted(), sample, weights=None,
                                        n_frozen=self.n_frozen_stages_)
        net = built.net
        load_fitted_state(net, module_state, stage_names=getattr(self, "stage_names_", None))
        device = _available_device(getattr(self, "device_", "cpu") if device is None else device)
        self.device_ = device
        self.module_ = net.to(device).eval()
        return self.module_

    # -- pickling ---------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        if "module_" in state:
            module = state.pop("module_")
            state.pop("net_", None)
            state["_module_state"] = {
                k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
            }
        # scikit-learn stamps only its own estimators; unpickling compares this stamp.
        state["_sklearn_version"] = sklearn.__version__
        return state

    def __setstate__(self, state):
        _check_pickled_version(self, state)
        module_state = state.pop("_module_state", None)
        self.__dict__.update(state)
        if module_state is not None:
            self._restore_module(module_state)


def _check_pickled_version(est, state):
    """Pop the scikit-learn version stamp from a pickled ``state``; warn as scikit-learn does
    (``InconsistentVersionWarning``) when it differs from the running version."""
    pickled = state.pop("_sklearn_version", None)
    if pickled is not None and pickled != sklearn.__version__:
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name=type(est).__name__,
                current_sklearn_version=sklearn.__version__,
                original_sklearn_version=pickled,
            ),
            stacklevel=3,
        )


def _available_device(device):
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(
            f"This model was fitted on {device!r} but CUDA is not available here; it is loaded "
            "on the CPU instead (device_ is now 'cpu').",
            UserWarning,
            stacklevel=4,
        )
        return "cpu"
    return str(device)


def _torch_dtype(name):
    return torch.from_numpy(np.zeros(1, dtype=np.dtype(name))).dtype
