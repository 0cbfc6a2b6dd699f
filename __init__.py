"""saliencekit: class-based attribution methods for TensorFlow 2.16+ / Keras 3.

>>> from saliencekit.attributions import Saliency, SmoothGrad, FullGrad, GradCAM, Occlusion

``import saliencekit`` is cheap: it does not import TensorFlow. The subpackages
(``saliencekit.attributions``, ``.commons``, ``.operators``) and ``Tasks`` load on first use,
so ``python -m saliencekit --help`` answers at once and the command line can quiet
TensorFlow's C++ logs before TensorFlow starts. Importing saliencekit changes no global
state (environment variables, loggers) of the program that imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Tasks", "__version__", "attributions", "commons", "load_model", "metrics",
           "operators"]

_SUBPACKAGES = ("attributions", "commons", "metrics", "operators")

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import attributions, commons, metrics, operators
    from .commons.model import load_model
    from .operators import Tasks


def __getattr__(name: str) -> Any:
    """Load a subpackage (and ``Tasks``) on first access (PEP 562)."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "Tasks":
        return importlib.import_module(f"{__name__}.operators").Tasks
    if name == "load_model":  # keras.models.load_model that opens Keras 2 .h5 files too
        return importlib.import_module(f"{__name__}.commons.model").load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
