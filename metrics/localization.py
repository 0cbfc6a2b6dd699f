"""Localisation: does the map point at where the evidence is (a ground-truth mask)?

The metrics take maps ``(N, H, W)`` or ``(N, H, W, 1)`` (or any ``(N, ...)`` matching the
masks) and boolean masks of the maps' shape; they need no model. Each is a function giving
one value per map and a class built on the masks, called on maps as the other metrics are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..commons import validation


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps.numpy() if hasattr(maps, "numpy") else maps, np.float32)
    masks = np.asarray(masks.numpy() if hasattr(masks, "numpy") else masks)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if maps.ndim != 3:
        raise validation.value_error(
            "maps", "maps of shape (N, H, W) or (N, H, W, 1)", f"shape {maps.shape}")
    if masks.shape != maps.shape:
        raise validation.value_error(
            "masks", f"boolean masks of the maps' shape {maps.shape}", f"shape {masks.shape}")
    if not np.isfinite(maps).all():
        validation.finite_array("maps", maps)
    return maps, masks.astype(bool)


def pointing_game(maps: Any, masks: Any) -> np.ndarray:
    """``(N,)`` booleans: whether each map's maximum falls inside its mask (Zhang et al.
    2016, *Top-down Neural Attention by Excitation Backprop*,
    https://arxiv.org/abs/1608.00507). A map whose maximum is shared by several pixels
    scores a hit only if all of them are inside (a constant map never hits unless the mask
    covers everything)."""
    maps, masks = _maps_and_masks(maps, masks)
    peaks = maps == maps.max(axis=(1, 2), keepdims=True)
    return ~np.any(peaks & ~masks, axis=(1, 2))


def relevance_mass(maps: Any, masks: Any) -> np.ndarray:
    """``(N,)``: the share of each map's positive relevance that lies inside its mask
    (Arras et al. 2022, *CLEVR-XAI*, https://arxiv.org/abs/2003.07258); NaN for a map
    with no positive value."""
    maps, masks = _maps_and_masks(maps, masks)
    positive = np.maximum(maps, 0)
    total = positive.sum(axis=(1, 2))
    inside = (positive * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def relevance_rank(maps: Any, masks: Any) -> np.ndarray:
    """``(N,)``: relevance rank accuracy (Arras et al. 2022, *CLEVR-XAI*,
    https://arxiv.org/abs/2003.07258): with ``K`` the mask's size, the share of the map's
    ``K`` highest pixels that lie inside the mask (ties broken by position, first in
    row-major order first). NaN for an empty mask."""
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(len(maps), -1)
    inside = masks.reshape(len(masks), -1)
    sizes = inside.sum(axis=1)
    order = np.argsort(-flat, axis=1, kind="stable")
    hits = np.take_along_axis(inside, order, axis=1)
    within = np.cumsum(hits, axis=1)
    top = within[np.arange(len(flat)), np.maximum(sizes - 1, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, top / np.maximum(sizes, 1), np.nan)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their mean rank (scipy's rankdata)."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    ranks = np.empty_like(values, dtype=np.float64)
    for i, row in enumerate(ordered):
        new = np.r_[True, row[1:] != row[:-1]]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], len(row)]
        mean = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
        ranks[i, order[i]] = np.repeat(mean, ends - starts)
    return ranks


def auc(maps: Any, masks: Any) -> np.ndarray:
    """``(N,)``: the area under the ROC curve of each map's values as a detector of its
    mask's pixels: the probability that a pixel inside the mask has a higher value than
    one outside (ties count one half; Mann-Whitney). 0.5 is chance, 1 a perfect
    separation. NaN when the mask is empty or full."""
    maps, masks = _maps_and_masks(maps, masks)
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    inside = masks.reshape(len(masks), -1)
    positives = inside.sum(axis=1).astype(np.float64)
    negatives = inside.shape[1] - positives
    rank_sum = (_average_ranks(flat) * inside).sum(axis=1)
    u = rank_sum - positives * (positives + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)


class _LocalizationMetric:
    """Built on the ground-truth ``masks`` ``(N, H, W)``; ``metric(maps)`` -> the mean
    over maps (NaN values, where the score is undefined, left out)."""

    _function = staticmethod(pointing_game)

    def __init__(self, masks: Any):
        masks = np.asarray(masks.numpy() if hasattr(masks, "numpy") else masks)
        if masks.ndim not in (3, 4) or masks.dtype.kind not in "biuf":
            raise validation.value_error("masks", "boolean masks of shape (N, H, W)",
                                         validation._describe(masks))
        self.masks = masks.astype(bool)

    def __call__(self, explanations: Any) -> float:
        return self.evaluate(explanations)

    def evaluate(self, explanations: Any) -> float:
        values = self.detailed_evaluate(explanations).astype(np.float64)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def detailed_evaluate(self, explanations: Any) -> np.ndarray:
        return type(self)._function(explanations, self.masks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(masks of shape {self.masks.shape})"


class PointingGame(_LocalizationMetric):
    """The pointing game (:func:`pointing_game`): the share of maps whose maximum is
    inside the mask. Higher is better."""

    _function = staticmethod(pointing_game)


class RelevanceMass(_LocalizationMetric):
    """Relevance mass accuracy (:func:`relevance_mass`): the share of positive relevance
    inside the mask. Higher is better."""

    _function = staticmethod(relevance_mass)


class RelevanceRank(_LocalizationMetric):
    """Relevance rank accuracy (:func:`relevance_rank`): the share of the mask-sized top of
    the map inside the mask. Higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> from saliencekit.metrics import RelevanceRank
    >>> masks = np.zeros((1, 2, 2), bool); masks[0, 0] = True
    >>> RelevanceRank(masks)(np.array([[[3.0, 1.0], [2.0, 0.0]]]))
    0.5
    """

    _function = staticmethod(relevance_rank)


class AUC(_LocalizationMetric):
    """ROC AUC of the map against the mask (:func:`auc`). 0.5 is chance, higher is
    better."""

    _function = staticmethod(auc)
