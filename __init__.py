"""saliencekit: class-based attribution methods for TensorFlow 2.16+ / Keras 3.

>>> from saliencekit.attributions import Saliency, SmoothGrad, FullGrad, GradCAM, Occlusion
"""

from . import attributions, commons, operators
from .operators import Tasks

__version__ = "0.1.0"

__all__ = ["Tasks", "__version__", "attributions", "commons", "operators"]
