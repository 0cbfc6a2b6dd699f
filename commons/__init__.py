"""Data handling, model inspection, validation and post-processing shared by explainers."""

from . import data, model, postprocess, validation
from .postprocess import absolute_normalize, normalize, positive_normalize

__all__ = [
    "absolute_normalize",
    "data",
    "model",
    "normalize",
    "positive_normalize",
    "postprocess",
    "validation",
]
