"""The built-in operators: the scalar per input that an explainer explains.

An operator is any callable ``g(model, inputs, targets) -> Tensor of shape (N,)``. ``model``
is a callable returning the model's float32 outputs in inference mode; ``targets`` is a
float tensor whose meaning depends on the task (below) or ``None`` when the task allows it.
Built-ins are plain functions in the :data:`OPERATORS` registry, chosen by name or by
:class:`Tasks` member.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

Operator = Callable[[Callable[[tf.Tensor], tf.Tensor], tf.Tensor, "tf.Tensor | None"], tf.Tensor]


def _flat(outputs: tf.Tensor) -> tf.Tensor:
    return tf.reshape(outputs, (tf.shape(outputs)[0], -1))


def classification(model, inputs, targets):
    """``sum(model(x) * targets, -1)``: the (weighted) class scores.

    ``targets`` is one-hot or a weighting of the classes, shape ``(N, C)``.
    """
    return tf.reduce_sum(model(inputs) * targets, axis=-1)


def regression(model, inputs, targets):
    """One output, a weighted combination of outputs, or the only output.

    ``targets`` weights the outputs, shape ``(N, D)`` (a one-hot row selects one output);
    ``None`` explains a single-output regressor's prediction itself. Unlike a loss such as
    ``|f(x) - y|``, whose gradient vanishes where the model is right, this explains the
    prediction: a linear regressor ``y = w . x`` gets the gradient ``w``.
    """
    outputs = _flat(model(inputs))
    if targets is None:
        return outputs[:, 0]
    return tf.reduce_sum(outputs * _flat(targets), axis=-1)


def semantic_segmentation(model, inputs, targets):
    """The summed scores of the selected pixels and classes.

    ``model(x)`` has shape ``(N, H, W, C)``; ``targets`` is a mask of that shape (which
    pixels and classes to explain) or ``(N, C)`` (a class, over every pixel).
    """
    outputs = model(inputs)
    if targets.shape.rank == 2 and outputs.shape.rank > 2:
        targets = tf.reshape(
            targets, [-1] + [1] * (outputs.shape.rank - 2) + [targets.shape[-1]]
        )
    return tf.reduce_sum(_flat(outputs * targets), axis=-1)


def _box_iou(boxes_a, boxes_b):
    """IoU of ``(..., 4)`` boxes given as ``(x1, y1, x2, y2)``, broadcasting."""
    x1 = tf.maximum(boxes_a[..., 0], boxes_b[..., 0])
    y1 = tf.maximum(boxes_a[..., 1], boxes_b[..., 1])
    x2 = tf.minimum(boxes_a[..., 2], boxes_b[..., 2])
    y2 = tf.minimum(boxes_a[..., 3], boxes_b[..., 3])
    intersection = tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0)

    def area(b):
        return tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)

    union = area(boxes_a) + area(boxes_b) - intersection
    return tf.math.divide_no_nan(intersection, union)


def object_detection(model, inputs, targets):
    """D-RISE's similarity between the predicted boxes and target boxes.

    ``model(x)`` has shape ``(N, B, 4 + 1 + C)``: per predicted box ``(x1, y1, x2, y2)``,
    an objectness score and ``C`` class scores. ``targets`` has shape ``(N, 4 + 1 + C)``
    (one box) or ``(N, K, 4 + 1 + C)`` (several, summed). For each target box the score is
    the best match over predicted boxes of ``IoU * objectness * cosine(class scores)``
    (Petsiuk et al., 2021, https://arxiv.org/abs/2006.03204).
    """
    predictions = model(inputs)  # (N, B, 5 + C)
    if targets.shape.rank == 2:
        targets = targets[:, None, :]
    predictions = predictions[:, None, :, :]  # (N, 1, B, 5 + C)
    targets = targets[:, :, None, :]  # (N, K, 1, 5 + C)
    iou = _box_iou(predictions[..., :4], targets[..., :4])
    objectness = predictions[..., 4]
    classes_p = tf.math.l2_normalize(predictions[..., 5:], axis=-1)
    classes_t = tf.math.l2_normalize(targets[..., 5:], axis=-1)
    similarity = iou * objectness * tf.reduce_sum(classes_p * classes_t, axis=-1)  # (N, K, B)
    return tf.reduce_sum(tf.reduce_max(similarity, axis=-1), axis=-1)


class Tasks(str, enum.Enum):
    """Names of the built-in operators (``Tasks.CLASSIFICATION == "classification"``)."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    SEMANTIC_SEGMENTATION = "semantic segmentation"
    OBJECT_DETECTION = "object detection"


#: name -> operator function.
OPERATORS: dict[str, Operator] = {
    Tasks.CLASSIFICATION.value: classification,
    Tasks.REGRESSION.value: regression,
    Tasks.SEMANTIC_SEGMENTATION.value: semantic_segmentation,
    Tasks.OBJECT_DETECTION.value: object_detection,
}


@dataclass(frozen=True)
class TargetRules:
    """How the base class turns user targets into what an operator receives.

    ``ids_rank``: integer targets of this rank (relative to a rank-``full`` float target)
    are class ids and get one-hot encoded to the model's last output dimension.
    ``float_ranks``: ranks accepted for float targets; ``"output"`` means the output's rank.
    ``if_none``: what ``targets=None`` means: ``"predicted"`` (the class the model predicts,
    per input or per pixel), ``"single output"`` (allowed when the model has one output per
    input) or ``"required"``.
    """

    ids_ranks: tuple[str, ...]
    float_ranks: tuple[str, ...]
    if_none: str
    nonzero_rows: bool = True
    #: reshape ``(N, C)`` targets to ``(N, 1, ..., 1, C)``, the output's rank, so that the
    #: kernel always sees targets of one rank
    to_output_rank: bool = False
    #: float targets of the output's rank have the output's shape (a segmentation mask);
    #: False where their other axes are free (detection: any number K of target boxes)
    match_output_shape: bool = True


#: Built-in operators' target rules; a user's callable gets ``None`` (targets are passed
#: through as float tensors after checking their length only).
TARGET_RULES: dict[Operator, TargetRules] = {
    classification: TargetRules(ids_ranks=("1",), float_ranks=("2",), if_none="predicted"),
    regression: TargetRules(ids_ranks=("1",), float_ranks=("2",), if_none="single output"),
    semantic_segmentation: TargetRules(
        ids_ranks=("1", "output-1"), float_ranks=("2", "output"), if_none="predicted",
        to_output_rank=True,
    ),
    object_detection: TargetRules(ids_ranks=(), float_ranks=("2", "3"), if_none="required",
                                  match_output_shape=False),
}
