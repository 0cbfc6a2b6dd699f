"""Randomisation sanity checks: does the map depend on what it should?

Adebayo et al. (2018), *Sanity Checks for Saliency Maps*, https://arxiv.org/abs/1810.03292:
a map that stays the same when the model's weights are randomised (or when another class
is explained) cannot be explaining the model. The model is never changed: weights are
randomised in a copy (``keras.models.clone_model``), which a rebuilt explainer explains.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import model as inspect_model
from ..commons import random, validation
from .base import ExplainerMetric, check_explainer, flat_maps, keras_layers_with_weights, spearman


def _clone(model: Any):
    """A copy of ``model`` with its own weights (equal to the model's)."""
    try:
        if inspect_model._is_tf_keras(model):
            import tf_keras
            clone = tf_keras.models.clone_model(model)
        elif isinstance(model, keras.Model):
            clone = keras.models.clone_model(model)
        else:
            raise TypeError(type(model).__name__)
        clone.set_weights(model.get_weights())
    except (TypeError, ValueError, NotImplementedError) as error:
        raise validation.type_error(
            "model", "a Keras model keras.models.clone_model can copy (functional, "
            "Sequential, or subclassed with get_config), to randomise a copy of it",
            f"{inspect_model.model_name(model)!r} ({type(error).__name__}: {error})") from None
    return clone


def _reinitialised(layer, seed: int) -> list[np.ndarray]:
    """New values of ``layer``'s trainable weights: its own initialisers (a fresh layer),
    seeded; a weight without one is drawn from a truncated normal of its own spread."""
    values = []
    for index, variable in enumerate(layer.trainable_weights):
        short = variable.name.split("/")[-1].split(":")[0]
        initializer = getattr(layer, f"{short}_initializer", None)
        if short == "kernel" and initializer is None:
            initializer = getattr(layer, "depthwise_initializer", None)
        shape = tuple(variable.shape)
        key = seed * 1009 + index
        if initializer is not None:
            initializer = keras.initializers.get(initializer)
            config = initializer.get_config()
            with contextlib.suppress(TypeError, ValueError):
                initializer = type(initializer).from_config({**config, "seed": key})
            values.append(np.asarray(initializer(shape, dtype="float32")))
        else:
            spread = float(np.std(np.asarray(variable))) or 0.05
            values.append(np.asarray(keras.initializers.TruncatedNormal(
                stddev=spread, seed=key)(shape, dtype="float32")))
    return values


class ProgressiveLayerRandomization:
    """Cascading randomisation (Adebayo et al.): the layers with weights are randomised
    one after another from the output down (``reverse=True``: from the input up), up to
    ``stop_layer``: a layer name (included), a number of layers, or a share in [0, 1] of
    them (rounded up). xplique's signature; it counts every layer (weightless ones too)
    and rounds down, and draws uniform [0, 1) weights; here a randomised layer gets its own
    initialisers' draws (it is a freshly initialised layer)."""

    def __init__(self, stop_layer: str | int | float = 0.25, reverse: bool = False):
        if isinstance(stop_layer, bool) or not isinstance(stop_layer, (str, int, float)):
            raise validation.type_error("stop_layer", "a layer name, a number of layers or a "
                                        "share in [0, 1]", validation._describe(stop_layer))
        if isinstance(stop_layer, float) and not 0 <= stop_layer <= 1:
            raise validation.value_error("stop_layer", "a share in [0, 1]", stop_layer)
        self.stop_layer = stop_layer
        self.reverse = bool(reverse)

    def layers(self, layers: list) -> list:
        """The layers randomised, in order, among ``layers`` (those with weights)."""
        ordered = layers if self.reverse else layers[::-1]
        stop = self.stop_layer
        if isinstance(stop, str):
            names = [layer.name for layer in ordered]
            if stop not in names:
                raise validation.value_error("stop_layer", f"one of {names}", repr(stop))
            return ordered[:names.index(stop) + 1]
        count = stop if isinstance(stop, int) else math.ceil(stop * len(ordered))
        return ordered[:max(0, count)]

    def __repr__(self) -> str:
        return f"ProgressiveLayerRandomization(stop_layer={self.stop_layer!r}, " \
               f"reverse={self.reverse})"


class IndependentLayerRandomization(ProgressiveLayerRandomization):
    """Independent randomisation (Adebayo et al.): one layer only, the others kept; the
    layer by name or by its index among the layers with weights from the output down."""

    def __init__(self, layer: str | int):
        super().__init__(layer if isinstance(layer, str) else int(layer))

    def layers(self, layers: list) -> list:
        ordered = layers[::-1]
        if isinstance(self.stop_layer, str):
            return super().layers(layers)[-1:]
        if not -len(ordered) <= self.stop_layer < len(ordered):
            raise validation.value_error(
                "layer", f"an index among the {len(ordered)} layers with weights",
                self.stop_layer)
        return [ordered[self.stop_layer]]

    def __repr__(self) -> str:
        return f"IndependentLayerRandomization({self.stop_layer!r})"


def _settings(explainer) -> dict:
    """The constructor arguments of a saliencekit explainer, read back from it."""
    settings = {}
    for name, parameter in inspect.signature(type(explainer).__init__).parameters.items():
        if name in ("self", "model") or parameter.kind in (parameter.VAR_POSITIONAL,
                                                            parameter.VAR_KEYWORD):
            continue
        if name in vars(explainer):
            value = vars(explainer)[name]
        elif name == "strategy":
            value = explainer.strategy
        else:
            continue
        if isinstance(value, keras.layers.Layer):  # a layer of the user's model: by name
            value = value.name
        settings[name] = value
    return settings


def _is_factory(explainer: Any) -> bool:
    from ..attributions.base import BlackBoxExplainer
    return not isinstance(explainer, BlackBoxExplainer) and not hasattr(explainer, "model")


def _on_model(explainer: Any, model: Any):
    """``explainer`` rebuilt on ``model``: a saliencekit explainer with its own settings;
    an object with a ``model`` attribute (xplique's explainers) shallow-copied with it
    replaced (as xplique does); else ``explainer`` is a factory ``explainer(model)``."""
    from ..attributions.base import BlackBoxExplainer
    from ..attributions.meta import _MetaExplainer
    if isinstance(explainer, _MetaExplainer):  # the wrapped explainer on model, rewrapped
        settings = _settings(explainer)
        inner = _on_model(settings.pop("explainer"), model)
        return type(explainer)(inner, **settings)
    if isinstance(explainer, BlackBoxExplainer):
        return type(explainer)(model, **_settings(explainer))
    if hasattr(explainer, "model"):
        rebuilt = copy.copy(explainer)
        rebuilt.model = model
        return rebuilt
    made = explainer(model)
    return check_explainer(made)


def _maps(explainer, x, t) -> tf.Tensor:
    maps = explainer(x, t)
    maps = tf.nest.map_structure(lambda m: tf.convert_to_tensor(m, tf.float32), maps)
    leaves = tf.nest.flatten(maps)
    # channels averaged (as xplique), a multi-input model's maps concatenated
    leaves = [tf.reduce_mean(m, -1) if m.shape.rank == 4 else m for m in leaves]
    return flat_maps(leaves)


class _Randomization(ExplainerMetric):
    def _batches_of_inputs(self):
        batches = self._batches(self.inputs, self.targets)
        for x, t, _offset, valid in batches:
            count = batches.batch_size if valid is None else valid
            x = tf.nest.map_structure(lambda v, c=count: v[:c], x)
            t = None if t is None else t[:count]
            if t is None:
                t = self._resolve_targets(x, None)
            yield x, t, _offset


class ModelRandomizationMetric(_Randomization):
    """Model randomisation test (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*,
    https://arxiv.org/abs/1810.03292): the Spearman rank correlation between each input's
    map and its map under a copy of the model with randomised layers. A map that explains
    the model changes: lower is better (1: the map ignores the weights).

    Parameters
    ----------
    model, inputs, targets
        As for every metric; the model must be copyable by ``keras.models.clone_model``
        (it is never changed: a copy is randomised).
    randomization_strategy : ProgressiveLayerRandomization, default stop_layer=0.25
        Which layers are randomised: :class:`ProgressiveLayerRandomization` (cascading,
        from the output) or :class:`IndependentLayerRandomization` (one layer).
    batch_size, operator, activation
        As for every metric; the explainer keeps its own operator.
    seed : int, default 42
        Seeds the new weights (per layer: the same draws for every batch).

    ``evaluate(explainer)``: the explainer (a saliencekit explainer, rebuilt on the copy
    with its own settings; an xplique explainer, whose ``model`` is swapped in a shallow
    copy; or a factory ``explainer(model) -> callable``) explains the inputs batch by batch
    on the model and on the copy. :meth:`layer_correlations` gives the whole cascade
    (Adebayo et al.'s figure). Maps with channels are averaged over them, as in xplique.
    """

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        randomization_strategy: ProgressiveLayerRandomization | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        activation: str | None = None,
        seed: int = 42,
    ):
        if randomization_strategy is None:
            randomization_strategy = ProgressiveLayerRandomization(0.25)
        if not isinstance(randomization_strategy, ProgressiveLayerRandomization):
            raise validation.type_error(
                "randomization_strategy", "a ProgressiveLayerRandomization or an "
                "IndependentLayerRandomization", validation._describe(randomization_strategy))
        self.randomization_strategy = randomization_strategy
        self.seed = validation.optional_seed("seed", seed) or 0
        super().__init__(model, inputs, targets, batch_size, operator, activation)
        self._copy = _clone(model)
        self._original = self._copy.get_weights()
        self._layers = keras_layers_with_weights(self._copy)
        if not self._layers:
            raise validation.value_error("model", "a model with trainable weights",
                                         "a model without any")
        randomization_strategy.layers(self._layers)  # a wrong layer name fails now

    def _set(self, layers) -> None:
        self._copy.set_weights(self._original)
        for layer in layers:
            values = _reinitialised(
                layer, self.seed * 100003 + self._layers.index(layer))
            for variable, value in zip(layer.trainable_weights, values):
                variable.assign(value)

    def _correlations(self, explainer, stages: list[list]) -> list[np.ndarray]:
        check_explainer(explainer)
        on_copy = _on_model(explainer, self._copy)
        if _is_factory(explainer):
            explainer = _on_model(explainer, self.model)
        results: list[list] = [[] for _ in stages]
        try:
            for x, t, _ in self._batches_of_inputs():
                original = _maps(explainer, x, t)
                for i, layers in enumerate(stages):
                    self._set(layers)
                    results[i].append(spearman(original, _maps(on_copy, x, t)).numpy())
        finally:
            self._copy.set_weights(self._original)
        return [np.concatenate(r) for r in results]

    def detailed_evaluate(self, explainer: Any) -> np.ndarray:
        """Per-input correlations ``(N,)``."""
        layers = self.randomization_strategy.layers(self._layers)
        return self._correlations(explainer, [layers])[0]

    def layer_correlations(self, explainer: Any, cascading: bool = True) -> dict:
        """``{layer name: per-input correlations (N,)}`` as each layer with weights is
        randomised from the output down: cumulatively (``cascading``, Adebayo et al.'s
        cascade) or alone (independent randomisation)."""
        ordered = self._layers[::-1]
        stages = [ordered[:i + 1] if cascading else [layer]
                  for i, layer in enumerate(ordered)]
        values = self._correlations(explainer, stages)
        return {layer.name: v for layer, v in zip(ordered, values)}


def ssim(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Per-row SSIM of maps ``(B, H, W)``: data range from both maps, an 11-pixel window
    cut to the maps' size (odd), 1 for two constant maps (xplique's convention)."""
    a, b = a[..., None], b[..., None]
    size = min(11, a.shape[1], a.shape[2])
    size -= 1 - size % 2
    axes = [1, 2, 3]
    high = tf.maximum(tf.reduce_max(a, axes), tf.reduce_max(b, axes))
    low = tf.minimum(tf.reduce_min(a, axes), tf.reduce_min(b, axes))
    span = high - low
    values = tf.map_fn(
        lambda ab: tf.image.ssim(ab[0], ab[1], max_val=tf.where(ab[2] > 0, ab[2], 1.0),
                                 filter_size=size),
        (a, b, span), fn_output_signature=tf.float32)
    return tf.where(span > 0, values, 1.0)


class RandomLogitMetric(_Randomization):
    """Random logit test (Sixt et al. 2020, *When Explanations Lie: Why Many Modified BP
    Attributions Fail*, https://arxiv.org/abs/1912.09818; Adebayo et al. 2018): the
    similarity between each input's map for its class and for a random other class. A
    class-sensitive method changes its map: lower is better.

    Parameters: ``model, inputs, targets, batch_size, operator, activation, seed=42``, as
    xplique's. The other class is drawn per input, keyed by ``(seed, input index)`` (the
    same whatever ``batch_size``). Similarity: SSIM for image maps (as xplique), the
    Spearman correlation for other maps. ``targets``: class ids or one-hot (``None``: the
    predicted class).
    """

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        operator: Any = None,
        activation: str | None = None,
        seed: int = 42,
    ):
        self.seed = validation.optional_seed("seed", seed) or 0
        super().__init__(model, inputs, targets, batch_size, operator, activation)

    def detailed_evaluate(self, explainer: Any) -> np.ndarray:
        check_explainer(explainer)
        values = []
        for x, t, offset in self._batches_of_inputs():
            classes = t.shape[-1]
            if classes is None or classes < 2:
                raise validation.value_error(
                    "targets", "one-hot targets over at least 2 classes", f"shape {t.shape}")
            true = tf.argmax(tf.reshape(t, (tf.shape(t)[0], -1)), axis=-1)
            z = random.gaussian((1,), tf.constant(self.seed, tf.int64), offset,
                                tf.shape(t)[0], tf.constant(0, tf.int64))[:, 0]
            uniform = 0.5 * (1.0 + tf.math.erf(z / np.sqrt(2.0)))
            draw = tf.minimum(tf.cast(uniform * (classes - 1), tf.int64), classes - 2)
            other = tf.where(draw >= true, draw + 1, draw)
            off = tf.one_hot(other, classes, dtype=tf.float32)
            a = explainer(x, t)
            b = explainer(x, off)
            a, b = (tf.convert_to_tensor(m, tf.float32) for m in (a, b))
            if a.shape.rank == 4:
                a, b = tf.reduce_mean(a, -1), tf.reduce_mean(b, -1)
            if a.shape.rank == 3:
                values.append(ssim(a, b).numpy())
            else:
                values.append(spearman(flat_maps(a), flat_maps(b)).numpy())
        return np.concatenate(values)
