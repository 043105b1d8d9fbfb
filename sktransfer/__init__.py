"""sktransfer: deep transfer learning as scikit-learn estimators."""

from .backbones import get_backbone, list_backbones, register_backbone
from .classifier import TransferClassifier
from .features import TransferFeatures
from .persistence import load, save
from .regressor import TransferRegressor

__version__ = "0.1.0"

__all__ = [
    "TransferClassifier",
    "TransferFeatures",
    "TransferRegressor",
    "get_backbone",
    "list_backbones",
    "load",
    "register_backbone",
    "save",
    "__version__",
]
