"""Operators: the scalar ``g(model, inputs, targets) -> (N,)`` an explainer explains."""

from __future__ import annotations

from typing import Any

from ..commons import validation
from .tasks import (
    OPERATORS,
    TARGET_RULES,
    Operator,
    TargetRules,
    Tasks,
    classification,
    object_detection,
    regression,
    semantic_segmentation,
)

__all__ = [
    "OPERATORS",
    "Operator",
    "TargetRules",
    "Tasks",
    "classification",
    "get_operator",
    "object_detection",
    "regression",
    "semantic_segmentation",
]


def get_operator(operator: Any = None) -> tuple[Operator, TargetRules | None]:
    """Resolve ``operator`` (``None``, a name, a :class:`Tasks` member or a callable).

    Returns the operator function and its target rules (``None`` for a user's callable,
    whose targets are passed through unchanged). Raises ``ValueError`` for an unknown name
    and ``TypeError`` for a callable with the wrong signature.
    """
    if operator is None:
        operator = Tasks.CLASSIFICATION
    if isinstance(operator, Tasks):
        operator = operator.value
    if isinstance(operator, str):
        key = operator.strip().lower().replace("_", " ")
        if key not in OPERATORS:
            raise validation.value_error(
                "operator", f"one of {sorted(OPERATORS)} or a callable", repr(operator)
            )
        function = OPERATORS[key]
        return function, TARGET_RULES[function]
    validation.operator_signature(operator)
    return operator, TARGET_RULES.get(operator)
