"""Explainers: ``method = SmoothGrad(model, ...)``, ``maps = method.explain(x, y)``."""

from .base import BlackBoxExplainer, WhiteBoxExplainer
from .cam import GradCAM, GradCAMPP, LayerCAM
from .fullgrad import FullGrad
from .gradients import (
    GradientInput,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    SquareGrad,
    VarGrad,
)
from .meta import Smoothed
from .occlusion import Occlusion

__all__ = [
    "BlackBoxExplainer",
    "FullGrad",
    "GradCAM",
    "GradCAMPP",
    "GradientInput",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "Saliency",
    "SmoothGrad",
    "Smoothed",
    "SquareGrad",
    "VarGrad",
    "WhiteBoxExplainer",
]
