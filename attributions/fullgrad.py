"""FullGrad: input-gradient plus bias-gradient terms."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import model as inspect_model
from ..commons import postprocess, validation
from .base import WhiteBoxExplainer


def fullgrad_postprocess(term: tf.Tensor, eps: float = 1e-6) -> tf.Tensor:
    """FullGrad's psi: ``|term|`` rescaled per input to [0, 1] (min-max over every position
    and channel), as in the authors' implementation."""
    term = tf.abs(term)
    axes = list(range(1, term.shape.rank))
    term = term - tf.reduce_min(term, axis=axes, keepdims=True)
    return term / (tf.reduce_max(term, axis=axes, keepdims=True) + eps)


def reduced_postprocess(term: tf.Tensor, reducer: str | None, eps: float = 1e-6) -> tf.Tensor:
    """``reduce_channels(fullgrad_postprocess(term), reducer)`` in one pass over ``|term|``.

    psi is affine per input (``(|t| - low) / (high - low + eps)``), so reducing over
    channels commutes with it: max/min/mean reduce ``|t|`` and subtract ``low``; a sum
    subtracts ``channels * low``. The full-size normalised term is never materialised.
    """
    magnitude = tf.abs(term)
    axes = list(range(1, term.shape.rank))
    low = tf.reduce_min(magnitude, axis=axes, keepdims=True)
    scale = 1.0 / (tf.reduce_max(magnitude, axis=axes, keepdims=True) - low + eps)
    if reducer is None or term.shape[-1] == 1:
        return (magnitude - low) * scale
    reduced = postprocess.REDUCERS[reducer](magnitude, axis=-1, keepdims=True)
    shift = low * term.shape[-1] if reducer == "sum" else low
    return (reduced - shift) * scale


class FullGrad(WhiteBoxExplainer):
    """FullGrad: the input-gradient term plus one bias-gradient term per biased layer.

    Srinivas & Fleuret (2019), *Full-Gradient Representation for Neural Network
    Visualization*, https://arxiv.org/abs/1905.00780

    Parameters
    ----------
    model, output_layer, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.WhiteBoxExplainer`.
    reducer : {"sum", "max", "mean", "min"}, default "sum"
        How each term is reduced over channels (the paper sums).

    The raw terms (:meth:`raw_terms`) are ``grad_x f * x`` and, for every layer that adds
    a bias, ``grad_z f * b`` at that layer's *pre-activation* ``z`` (a fused activation,
    as in ``Conv2D(..., activation="relu")``, is split off), where BatchNormalization's
    inference-time bias ``beta - gamma * mean / sqrt(var + eps)``, Rescaling's offset and
    Normalization's ``-mean / std`` count as biases. For a piecewise-linear network they
    add up to the explained score (completeness). The map is ``psi(input term)`` plus
    ``psi`` of every bias term that has the input's rank (spatial terms), reduced over
    channels and resized to the input, with ``psi`` = abs then min-max per input. Maps are
    ``(N, H, W, 1)`` for images, ``(N, T, 1)`` for series and ``(N, D)`` for tables (the
    input term alone: dense layers' terms have no input positions).

    Needs a functional or Sequential model (nested models are fine).

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import FullGrad
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3,
    ...     activation="relu"), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> x = np.random.default_rng(0).random((1, 8, 8, 3))
    >>> input_term, bias_terms = FullGrad(model).raw_terms(x, [1])
    >>> score = model(x)[0, 1]
    >>> total = np.sum(input_term) + sum(np.sum(t) for t in bias_terms)
    >>> bool(np.isclose(total, score, rtol=1e-4, atol=1e-5))
    True
    """

    _needs_graph = True
    _single_input = "sums terms of every layer into one map of the input"

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str = "sum",
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=reducer,
            jit_compile=jit_compile,
            strategy=strategy,
        )
        graph = inspect_model.flatten(
            self._explained, split_activations=inspect_model.has_implicit_bias
        )
        hidden = sorted({n.path for n in graph.nodes if inspect_model.hidden_bias(n.layer)})
        if hidden:  # its bias terms would be missing, and the map silently wrong
            raise validation.value_error(
                "model", "layers whose biases FullGrad can read (a 'bias' weight, batch "
                "normalisation, Rescaling, Normalization)", f"layers declaring use_bias=True "
                f"with no 'bias' weight: {hidden}",
                "Their bias terms cannot be computed; gradient methods (Saliency, "
                "IntegratedGradients, ...) explain this model.")
        nodes = [n for n in graph.nodes if inspect_model.has_implicit_bias(n.layer)]
        #: the biased layers, in the order of :meth:`raw_terms`' bias terms
        self.bias_layers = [n.path for n in nodes]
        self._bias_sources = [n.layer for n in nodes]
        self._tapped = graph.model(
            [n.pre_activation if n.pre_activation is not None else n.output for n in nodes]
        )
        self._raw_kernel = self._compile(self._raw_step)

    def raw_terms(self, inputs: Any, targets: Any = None) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """``(input_term, bias_terms)``: ``grad_x f * x`` with the inputs' shape, and one
        ``grad_z f * b`` per biased layer (in :attr:`bias_layers` order) with that layer's
        output shape. Inputs and targets as in :meth:`explain`."""
        input_term, bias_terms = self._run(self._raw_kernel, inputs, targets)
        return input_term, list(bias_terms)

    def _raw(self, inputs, targets):
        gradient, taps, tap_gradients = self._tapped_gradients(self._tapped, inputs, targets)
        input_term = gradient * inputs
        bias_terms = []
        for layer, tap, tap_gradient in zip(self._bias_sources, taps, tap_gradients):
            bias = inspect_model.implicit_bias(layer, tap.shape.rank)
            term = tf.cast(tap_gradient, tf.float32) * tf.cast(bias, tf.float32)
            bias_terms.append(tf.broadcast_to(term, tf.shape(tap)))
        return input_term, bias_terms

    def _raw_step(self, inputs, targets, offset, seed):
        input_term, bias_terms = self._raw(inputs, self._resolve_targets(inputs, targets))
        return self._user_layout(input_term), bias_terms

    def _batch(self, inputs, targets, seeds):
        input_term, bias_terms = self._raw(inputs, targets)
        rank = inputs.shape.rank

        def term_map(term):
            if rank < 3:
                return fullgrad_postprocess(term)
            # terms have different channel counts: reduce before summing
            term = reduced_postprocess(term, self._reducer)
            return postprocess.resize_spatial(term, tuple(inputs.shape[1:-1]))

        total = term_map(input_term)
        for term in bias_terms:
            if rank >= 3 and term.shape.rank == rank:  # spatial terms only, as the paper
                if self._channels_first:  # the model's tensors are (B, C, *s)
                    term = tf.transpose(term, [0, *range(2, rank), 1])
                total = total + term_map(term)
        return total
