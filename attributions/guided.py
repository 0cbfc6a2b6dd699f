"""Modified ReLU backward passes: GuidedBackprop and DeconvNet.

Both explain through a rebuilt graph of the model (nested models inlined) in which every
ReLU-family activation (``activation="relu"``/``"relu6"`` fused in a layer, ``ReLU``,
``LeakyReLU`` and ``Activation("relu")`` layers) is replaced by a layer computing the same
forward values with a modified gradient. The rebuilt graph calls the user's layers, so it
shares their weights; the user's model is not changed and no global gradient override is
registered.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import tensorflow as tf

from ..commons import model as inspect_model
from .gradients import Saliency

_RELU_NAMES = frozenset({"relu", "relu6", "leaky_relu"})


def _is_relu(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
        return True
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in _RELU_NAMES
    return False


def _relu_mask(layer: keras.layers.Layer):
    """For ReLUs with a zero negative slope (capped or not), the derivative as a function
    of the output, ``y -> 1[0 < y < cap]``; None for the others."""
    cap = None
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            return None
        cap = layer.max_value
    elif isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        if name not in ("relu", "relu6"):
            return None
        cap = 6.0 if name == "relu6" else None
    else:
        return None
    if cap is None:
        return lambda y: y > 0
    return lambda y: (y > 0) & (y < cap)


def _has_fused_relu(layer: keras.layers.Layer) -> bool:
    activation = inspect_model.fused_activation(layer)
    return getattr(activation, "__name__", "") in _RELU_NAMES


class _ModifiedBackward(keras.layers.Layer):
    """The wrapped ReLU layer's forward pass; ``rule(upstream, local_backward)`` gives
    the gradient, where ``local_backward(g)`` is the layer's own backward pass of ``g``."""

    def __init__(self, layer: keras.layers.Layer, rule):
        super().__init__(name=f"{layer.name}_{rule.__name__}", dtype=layer.dtype_policy)
        self._wrapped = [layer]  # a list: not tracked as this layer's child
        self._rule = rule

    def call(self, inputs):
        layer, rule = self._wrapped[0], self._rule
        # a ReLU's backward pass is a mask, and DeconvNet needs none: no inner tape
        mask = _relu_mask(layer)
        direct = rule is deconvnet or mask is not None

        @tf.custom_gradient
        def modified(x):
            if direct:
                y = layer(x)

                def local_backward(g):
                    return g * tf.cast(mask(y), g.dtype)
            else:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x)

                def local_backward(g):
                    return tape.gradient(y, x, output_gradients=g)

            def backward(upstream):
                return rule(upstream, local_backward)

            return y, backward

        return modified(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def guided(upstream, local_backward):
    """Springenberg et al.: the ReLU's backward pass of the positive upstream gradient,
    ``1[x > 0] * relu(g)``."""
    return local_backward(tf.nn.relu(upstream))


def deconvnet(upstream, local_backward):
    """Zeiler & Fergus: the ReLU applied to the upstream gradient, ``relu(g)``,
    whatever the forward input."""
    return tf.nn.relu(upstream)


class _ModifiedReLUGradients(Saliency):
    """``|d score / d x|`` through ReLUs whose backward pass follows ``_rule``."""

    _rule = staticmethod(guided)
    _needs_graph = True

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str | None = "max",
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
        replaced = []  # the user's layers whose ReLU is modified

        def split(layer):  # a fused ReLU becomes a separate activation layer, substituted
            if _has_fused_relu(layer):
                replaced.append(layer.name)
                return True
            return False

        def substitute(layer):
            if not _is_relu(layer):
                return None
            if layer.name.removesuffix("_activation") not in replaced:
                replaced.append(layer.name)
            return _ModifiedBackward(layer, self._rule)

        graph = inspect_model.flatten(self._explained, split, substitute=substitute)
        if not replaced:
            warnings.warn(
                f"{type(self).__name__}: the explained model has no ReLU activation, so its "
                "maps are plain gradient maps (Saliency).",
                UserWarning,
                stacklevel=2,
            )
        self.relu_layers = tuple(replaced)
        name = inspect_model.model_name(self.model)
        self._explained = graph.model(name=f"{name}_{self._rule.__name__}")


class GuidedBackprop(_ModifiedReLUGradients):
    """Guided Backpropagation: gradients through ReLUs that pass only positive gradients
    of positive inputs, ``|.|`` and max over channels by default.

    Springenberg et al. (2014), *Striving for Simplicity: The All Convolutional Net*,
    https://arxiv.org/abs/1412.6806

    Parameters are those of :class:`~saliencekit.attributions.WhiteBoxExplainer`. The
    model needs a graph (functional or Sequential, nested models included); its
    ReLU-family activations (``relu``, ``relu6``, ``ReLU``, ``LeakyReLU`` layers) get the
    backward pass ``local_backward(relu(g))``; ``relu_layers`` lists them. A model
    without any gets plain gradients, with a warning.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import GuidedBackprop
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
    ...                           keras.layers.Dense(2)])
    >>> tuple(GuidedBackprop(model).explain(np.ones((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    _rule = staticmethod(guided)


class DeconvNet(_ModifiedReLUGradients):
    """DeconvNet: gradients through ReLUs replaced by a ReLU of the gradient itself,
    ``|.|`` and max over channels by default.

    Zeiler & Fergus (2014), *Visualizing and Understanding Convolutional Networks*,
    https://arxiv.org/abs/1311.2901

    Parameters and ReLU discovery as in :class:`GuidedBackprop`; the backward pass of
    every ReLU is ``relu(g)``, whatever the forward input.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import DeconvNet
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
    ...                           keras.layers.Dense(2)])
    >>> tuple(DeconvNet(model).explain(np.ones((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    _rule = staticmethod(deconvnet)
