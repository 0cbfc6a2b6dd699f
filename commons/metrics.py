"""Scores of maps against ground-truth masks: the pointing game and the relevance mass.

Both take maps ``(N, H, W)`` or ``(N, H, W, 1)`` and boolean masks ``(N, H, W)`` of where
the evidence is, and return one value per map, so that callers can average or break down.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import validation


def _maps_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, np.float32)
    masks = np.asarray(masks)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3:
        raise validation.value_error(
            "maps", "maps of shape (N, H, W) or (N, H, W, 1)", f"shape {maps.shape}")
    if masks.shape != maps.shape:
        raise validation.value_error(
            "masks", f"boolean masks of the maps' shape {maps.shape}", f"shape {masks.shape}")
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
