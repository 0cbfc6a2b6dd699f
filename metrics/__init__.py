"""Metrics: is a map faithful, robust, sane, well placed, simple?

Built as in xplique: ``metric = Deletion(model, inputs, targets, ...)``, then
``metric(maps)`` (a float), ``metric.detailed_evaluate(maps)`` (per input) and
``metric.evaluate_explainer(explainer)``; the explainer metrics (stability, randomisation)
are called on an explainer. Perturbation metrics are compiled kernels on the shared runner
(memory bounded by ``batch_size``, seeded, one trace per shape).
"""

from .base import BaseAttributionMetric, ExplainerMetric, ExplanationMetric
from .complexity import Complexity, Sparseness
from .fidelity import (
    ROAD,
    AverageDropMetric,
    AverageGainMetric,
    AverageIncreaseMetric,
    CausalFidelity,
    Deletion,
    Insertion,
    MuFidelity,
    curve_area,
)
from .localization import (
    AUC,
    PointingGame,
    RelevanceMass,
    RelevanceRank,
    auc,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from .randomization import (
    IndependentLayerRandomization,
    ModelRandomizationMetric,
    ProgressiveLayerRandomization,
    RandomLogitMetric,
)
from .stability import AverageStability, MaxSensitivity

__all__ = [
    "AUC",
    "ROAD",
    "AverageDropMetric",
    "AverageGainMetric",
    "AverageIncreaseMetric",
    "AverageStability",
    "BaseAttributionMetric",
    "CausalFidelity",
    "Complexity",
    "Deletion",
    "ExplainerMetric",
    "ExplanationMetric",
    "IndependentLayerRandomization",
    "Insertion",
    "MaxSensitivity",
    "ModelRandomizationMetric",
    "MuFidelity",
    "PointingGame",
    "ProgressiveLayerRandomization",
    "RandomLogitMetric",
    "RelevanceMass",
    "RelevanceRank",
    "Sparseness",
    "auc",
    "curve_area",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
]
