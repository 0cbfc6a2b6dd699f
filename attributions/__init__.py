"""Explainers: ``method = SmoothGrad(model, ...)``, ``maps = method.explain(x, y)``."""

from .base import BlackBoxExplainer, WhiteBoxExplainer
from .cam import GradCAM, GradCAMPP, LayerCAM, ScoreCAM
from .fullgrad import FullGrad
from .gradients import (
    GradientInput,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    SquareGrad,
    VarGrad,
)
from .guided import DeconvNet, GuidedBackprop
from .meta import TTA, Smoothed
from .occlusion import Occlusion

__all__ = [
    "TTA",
    "BlackBoxExplainer",
    "DeconvNet",
    "FullGrad",
    "GradCAM",
    "GradCAMPP",
    "GradientInput",
    "GuidedBackprop",
    "IntegratedGradients",
    "LayerCAM",
    "Occlusion",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Smoothed",
    "SquareGrad",
    "VarGrad",
    "WhiteBoxExplainer",
]

# the black-box family (issue 13)
from .gsa import HsicAttributionMethod, SobolAttributionMethod
from .lime import KernelShap, Lime
from .rise import Rise

__all__ += ["HsicAttributionMethod", "KernelShap", "Lime", "Rise", "SobolAttributionMethod"]

# transformers (issue 15)
from .attention import AttentionRollout, TransformerAttribution  # noqa: E402

__all__ += ["AttentionRollout", "TransformerAttribution"]
