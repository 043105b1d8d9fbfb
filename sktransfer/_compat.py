"""The one place that imports scikit-learn's private helpers.

Keeping them here means a scikit-learn upgrade that moves one of them is a one-line fix.
"""

from sklearn.base import _fit_context
from sklearn.utils import _safe_indexing as safe_indexing
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import _check_feature_names as check_feature_names
from sklearn.utils.validation import _get_feature_names as get_feature_names
from sklearn.utils.validation import _num_samples as num_samples

__all__ = [
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "_fit_context",
    "check_feature_names",
    "get_feature_names",
    "num_samples",
    "safe_indexing",
]
