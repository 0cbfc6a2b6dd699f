"""Moved to :mod:`saliencekit.metrics` (kept as a re-export for existing imports)."""

from ..metrics.localization import pointing_game, relevance_mass

__all__ = ["pointing_game", "relevance_mass"]
