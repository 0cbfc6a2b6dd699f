"""Complexity: how concentrated a map is, whatever the model (no forward pass)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..commons import validation


def _magnitudes(explanations: Any) -> np.ndarray:
    """``(N, F)`` absolute values; maps ``(N, H, W, C)`` averaged over channels first, as
    xplique does."""
    maps = np.asarray(explanations.numpy() if hasattr(explanations, "numpy") else explanations)
    if maps.dtype.kind not in "biuf" or maps.ndim < 2:
        raise validation.value_error("explanations", "numeric maps of shape (N, ...)",
                                     validation._describe(maps))
    maps = maps.astype(np.float64)
    if maps.ndim == 4:
        maps = maps.mean(axis=-1)
    if not np.isfinite(maps).all():
        validation.finite_array("explanations", maps)
    return np.abs(maps.reshape(len(maps), -1))


class _ComplexityMetric:
    """Base: ``metric(maps)`` -> the mean of ``detailed_evaluate(maps)`` ``(N,)``."""

    def __init__(self, batch_size: int | None = 64):
        self.batch_size = None if batch_size is None else validation.positive_int(
            "batch_size", batch_size)

    def __call__(self, explanations: Any) -> float:
        return self.evaluate(explanations)

    def evaluate(self, explanations: Any) -> float:
        return float(np.mean(self.detailed_evaluate(explanations)))

    def detailed_evaluate(self, explanations: Any) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sparseness(_ComplexityMetric):
    """Sparseness: the Gini index of the map's absolute values (Chalasani et al. 2020,
    *Concise Explanations of Neural Networks using Adversarial Training*,
    https://arxiv.org/abs/1810.06583):
    ``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))``, ``a_(1) <= ... <= a_(n)`` sorted.

    Higher is sparser: 0 for a constant map, ``1 - 1/n`` (its maximum over ``n`` features)
    for a map with a single non-zero value; 0 for an all-zero map (xplique's gives
    ``-(n+1)/n``). Maps ``(N, H, W, C)`` are averaged over channels first.

    Examples
    --------
    >>> import numpy as np
    >>> from saliencekit.metrics import Sparseness
    >>> round(Sparseness()(np.eye(4)[None, 0]), 6)  # one-hot over 4 features: 1 - 1/4
    0.75
    """

    def detailed_evaluate(self, explanations: Any) -> np.ndarray:
        a = np.sort(_magnitudes(explanations), axis=1)
        n = a.shape[1]
        weights = 2 * np.arange(1, n + 1) - n - 1
        total = a.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            gini = (a @ weights) / (n * total)
        return np.where(total > 0, gini, 0.0)


class Complexity(_ComplexityMetric):
    """Complexity: the entropy of the map's absolute values normalised to sum to one
    (Bhatt et al. 2020, *Evaluating and Aggregating Feature-based Model Explanations*,
    https://arxiv.org/abs/2005.00631), ``-sum_i p_i log p_i``, natural log.

    Lower is simpler: 0 for a single non-zero value, ``log(n)`` (its maximum) for a uniform
    map; exact, with ``0 log 0 = 0`` (xplique adds 1e-8 inside the log), and 0 for an
    all-zero map.

    Examples
    --------
    >>> import numpy as np
    >>> from saliencekit.metrics import Complexity
    >>> bool(np.isclose(Complexity()(np.ones((2, 8, 8))), np.log(64)))
    True
    """

    def detailed_evaluate(self, explanations: Any) -> np.ndarray:
        a = _magnitudes(explanations)
        total = a.sum(axis=1, keepdims=True)
        p = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(p > 0, np.log(np.where(p > 0, p, 1)), 0.0)
        return -(p * logs).sum(axis=1)
