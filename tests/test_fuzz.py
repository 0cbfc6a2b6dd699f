"""Fuzzing (issue 5, part 4): every explainer on random small real Keras models.

Hypothesis draws an *architecture* (plain data, so a falsifying example reads as a model)
and builds it: functional, Sequential or subclassed (a functional model wrapped) graphs of
Conv2D, DepthwiseConv2D and SeparableConv2D (fused ReLU or not, bias or not, "same" or
"valid", strides 1-2), Dense layers on pixels, ReLU layers, max/average pooling, batch norm
(with or without beta and gamma, random moving statistics), residual blocks (add or concat,
identity or projection shortcut), an optional Rescaling in front, functional blocks nested
in the outer model, and a dense head behind global average/max pooling or a flatten. Every
layer is piecewise linear, so FullGrad's terms must add up to the explained score. Inputs
(8-16 pixels a side, 1-3 channels, 1-7 images, some of them flat) and targets (class ids,
class weights or None for the predicted class) are random too.

Each example builds one model and one or two explainers, and a trace costs 0.1-0.5 s: the
number of examples follows the hypothesis profile (``SALIENCEKIT_PROFILE=thorough``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import BLACK_BOX, EXPLAINERS, GRAPH_ONLY, explainer_factories
from saliencekit.attributions import FullGrad

FACTORIES = explainer_factories()
# the loaded profile's budget: 8 examples by default ("quick"), 100 when "thorough"
BUDGET = settings.default.max_examples


def examples(share: float) -> settings:
    return settings(max_examples=max(1, math.ceil(BUDGET * share)), deadline=None)


# ---------------------------------------------------------------- architectures (data)


@dataclass(frozen=True)
class Conv:
    kind: str  # "conv" (Conv2D), "depthwise" (DepthwiseConv2D) or "separable"
    filters: int  # the input's channels for "depthwise"
    kernel: int
    strides: int
    padding: str
    relu: bool  # fused activation="relu"
    bias: bool


@dataclass(frozen=True)
class PixelDense:
    """A Dense layer on the channel axis of an image (a 1x1 convolution)."""

    units: int
    relu: bool
    bias: bool


@dataclass(frozen=True)
class BatchNorm:
    center: bool
    scale: bool


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "average"
    strides: int
    padding: str


@dataclass(frozen=True)
class Residual:
    """``x + branch(x)`` (or their concatenation), the shortcut a 1x1 convolution when
    ``projection``."""

    branch: tuple  # of Conv/BatchNorm, the convolution "same"-padded
    projection: Conv | None
    join: str  # "add" or "concat"
    relu_after: bool


@dataclass(frozen=True)
class Nested:
    """A functional sub-model called inside the outer model."""

    blocks: tuple


@dataclass(frozen=True)
class Head:
    pool: str  # "gap", "gmp" or "flatten"
    hidden: int  # units of a hidden dense layer, 0 for none
    hidden_relu: bool
    classes: int
    bias: bool


@dataclass(frozen=True)
class Architecture:
    style: str  # "functional", "sequential" or "subclassed" (a functional model wrapped)
    input_shape: tuple
    rescaling: tuple | None  # (scale, offset)
    blocks: tuple
    head: Head
    seed: int

    def build(self) -> keras.Model:
        keras.utils.set_random_seed(self.seed)
        if self.style == "sequential":
            layers = [keras.Input(self.input_shape)]
            if self.rescaling:
                layers.append(keras.layers.Rescaling(*self.rescaling))
            shape = (None, *self.input_shape)
            for block in self.blocks:
                layers.append(nested_model(block, shape[1:]) if isinstance(block, Nested)
                              else make_layer(block))
                shape = layers[-1].compute_output_shape(shape)
            model = keras.Sequential(layers + head_layers(self.head))
        else:
            inputs = keras.Input(self.input_shape)
            x = keras.layers.Rescaling(*self.rescaling)(inputs) if self.rescaling else inputs
            for block in self.blocks:
                x = apply_block(block, x)
            for layer in head_layers(self.head):
                x = layer(x)
            model = keras.Model(inputs, x)
        randomise_batch_norms(model, np.random.default_rng(self.seed))
        return Wrapped(model) if self.style == "subclassed" else model


class Wrapped(keras.Model):
    """A subclassed model: no graph to inspect, whatever it calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)


BIAS = keras.initializers.RandomNormal(stddev=0.3)  # zero biases would hide FullGrad bugs


def make_layer(block):
    if isinstance(block, Conv):
        common = {"strides": block.strides, "padding": block.padding, "use_bias": block.bias,
                  "activation": "relu" if block.relu else None, "bias_initializer": BIAS}
        if block.kind == "depthwise":
            return keras.layers.DepthwiseConv2D(block.kernel, **common)
        kind = keras.layers.Conv2D if block.kind == "conv" else keras.layers.SeparableConv2D
        return kind(block.filters, block.kernel, **common)
    if isinstance(block, PixelDense):
        return keras.layers.Dense(block.units, activation="relu" if block.relu else None,
                                  use_bias=block.bias, bias_initializer=BIAS)
    if isinstance(block, BatchNorm):
        return keras.layers.BatchNormalization(center=block.center, scale=block.scale)
    if isinstance(block, ReLU):
        return keras.layers.ReLU()
    if isinstance(block, Pool):
        kind = keras.layers.MaxPooling2D if block.kind == "max" else keras.layers.AveragePooling2D
        return kind(2, strides=block.strides, padding=block.padding)
    raise TypeError(block)


def apply_block(block, x):
    if isinstance(block, Nested):
        return nested_model(block, x.shape[1:])(x)
    if isinstance(block, Residual):
        y = x
        for inner in block.branch:
            y = make_layer(inner)(y)
        shortcut = make_layer(block.projection)(x) if block.projection else x
        join = keras.layers.Add() if block.join == "add" else keras.layers.Concatenate()
        x = join([shortcut, y])
        return keras.layers.ReLU()(x) if block.relu_after else x
    return make_layer(block)(x)


def nested_model(block: Nested, shape: tuple) -> keras.Model:
    inputs = keras.Input(shape)
    x = inputs
    for inner in block.blocks:
        x = apply_block(inner, x)
    return keras.Model(inputs, x)


def head_layers(head: Head) -> list:
    pool = {"gap": keras.layers.GlobalAveragePooling2D, "gmp": keras.layers.GlobalMaxPooling2D,
            "flatten": keras.layers.Flatten}[head.pool]()
    layers = [pool]
    if head.hidden:
        layers.append(keras.layers.Dense(head.hidden, activation="relu" if head.hidden_relu
                                         else None, bias_initializer=BIAS))
        if not head.hidden_relu:
            layers.append(keras.layers.ReLU())
    layers.append(keras.layers.Dense(head.classes, use_bias=head.bias, bias_initializer=BIAS))
    return layers


def all_layers(model):
    """The model's layers, those of nested models included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def randomise_batch_norms(model, rng):
    """Random gamma, beta, moving mean and variance: inference-time BN is not the identity."""
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            values = {"gamma": rng.uniform(0.5, 2, c) * rng.choice([-1, 1], c),
                      "beta": rng.normal(size=c), "moving_mean": rng.normal(size=c),
                      "moving_variance": rng.uniform(0.2, 2, c)}
            layer.set_weights([values[w.name] for w in layer.weights])


# ---------------------------------------------------------------- strategies


def conv_size(size, kernel, strides, padding):
    if padding == "same":
        return -(-size // strides)
    return (size - kernel) // strides + 1


@st.composite
def convs(draw, size, channels, same=False, filters=None, strides=None):
    """A convolution valid for a ``size``-pixel side, and its output side and channels."""
    kind = draw(st.sampled_from(["conv", "conv", "depthwise", "separable"]))
    # TensorFlow 2.21 with oneDNN (the default on x86) aborts on graphs with a 1x1
    # depthwise convolution of a single channel ("could not create a primitive descriptor
    # for the reorder primitive"): tf.function(keras.Sequential([keras.Input((6, 6, 1)),
    # keras.layers.SeparableConv2D(1, 1)])) fails whatever the weights, with no explainer
    # involved (TF_ENABLE_ONEDNN_OPTS=0 avoids it). Such a layer only scales pixels: skip it.
    if kind != "conv" and channels == 1 and not same and size < 2:
        kind = "conv"
    smallest = 2 if kind != "conv" and channels == 1 else 1
    kernel = draw(st.integers(smallest, 3 if same else min(3, size)))
    strides = strides or draw(st.integers(1, 2))
    padding = "same" if same else draw(st.sampled_from(["same", "valid"]))
    filters = channels if kind == "depthwise" else filters or draw(st.integers(1, 8))
    conv = Conv(kind, filters, kernel, strides, padding, relu=draw(st.booleans()),
                bias=draw(st.booleans()))
    return conv, conv_size(size, kernel, strides, padding), filters


batch_norms = st.builds(BatchNorm, st.booleans(), st.booleans())


@st.composite
def blocks(draw, size, channels, residual=True, nested=True):
    """One block, and the smaller side and the channels of its output."""
    kinds = ["conv", "dense", "bn", "relu", "pool"] if size >= 2 else ["conv", "dense", "bn"]
    kinds += (["residual"] if residual else []) + (["nested"] if nested else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        return draw(convs(size, channels))
    if kind == "dense":
        dense = PixelDense(draw(st.integers(1, 8)), draw(st.booleans()), draw(st.booleans()))
        return dense, size, dense.units
    if kind == "bn":
        return draw(batch_norms), size, channels
    if kind == "relu":
        return ReLU(), size, channels
    if kind == "pool":
        strides, padding = draw(st.integers(1, 2)), draw(st.sampled_from(["same", "valid"]))
        pool = Pool(draw(st.sampled_from(["max", "average"])), strides, padding)
        return pool, conv_size(size, 2, strides, padding), channels
    if kind == "residual":
        join, projection = draw(st.sampled_from(["add", "concat"])), draw(st.booleans())
        strides = draw(st.integers(1, 2)) if projection else 1
        width = channels if join == "add" and not projection else draw(st.integers(1, 4))
        conv, size, filters = draw(convs(size, channels, same=True, filters=width,
                                         strides=strides))
        if conv.kind == "depthwise" and join == "add" and projection:
            width = filters
        shortcut = None
        if projection:
            shortcut = Conv("conv", width, 1, strides, "same", False, draw(st.booleans()))
        branch = (conv, draw(batch_norms)) if draw(st.booleans()) else (conv,)
        block = Residual(branch, shortcut, join, draw(st.booleans()))
        outputs = filters if join == "add" else (width if projection else channels) + filters
        return block, size, outputs
    inner = []
    for _ in range(draw(st.integers(1, 2))):
        block, size, channels = draw(blocks(size, channels, residual=True, nested=False))
        inner.append(block)
    return Nested(tuple(inner)), size, channels


@st.composite
def architectures(draw, styles=("functional", "sequential", "subclassed")):
    style = draw(st.sampled_from(styles))
    height, width = draw(st.integers(8, 16)), draw(st.integers(8, 16))
    channels = draw(st.integers(1, 3))
    input_shape = (height, width, channels)
    rescaling = None
    if draw(st.booleans()):
        rescaling = (draw(st.sampled_from([0.5, 1.0, 2.0])), draw(st.sampled_from([0.0, -1.0])))
    # a convolution first: the CAMs need a spatial layer other than the input
    first, size, channels = draw(convs(min(height, width), channels))
    drawn = [first]
    for _ in range(draw(st.integers(1, 2))):
        block, size, channels = draw(blocks(size, channels, residual=style != "sequential"))
        drawn.append(block)
    head = Head(draw(st.sampled_from(["gap", "gmp", "flatten"])),
                draw(st.sampled_from([0, 0, 4, 8])), draw(st.booleans()),
                draw(st.integers(2, 5)), draw(st.booleans()))
    return Architecture(style, input_shape, rescaling, tuple(drawn), head,
                        draw(st.integers(0, 2**16)))


@dataclass(frozen=True)
class Batch:
    """Random inputs for an architecture, and targets: class ids, class weights or None."""

    count: int
    values: str  # "normal", "uniform" or "constant" (a flat image: zero range)
    targets: str  # "ids", "weights" or "none"
    seed: int

    def arrays(self, architecture: Architecture):
        rng = np.random.default_rng(self.seed)
        shape = (self.count, *architecture.input_shape)
        if self.values == "normal":
            x = rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 3), shape)
        elif self.values == "uniform":
            x = rng.uniform(0, 255, shape)
        else:
            x = np.full(shape, rng.normal())
        classes = architecture.head.classes
        targets = {"ids": lambda: rng.integers(0, classes, self.count),
                   "weights": lambda: rng.normal(size=(self.count, classes)).astype("float32"),
                   "none": lambda: None}[self.targets]()
        return x.astype("float32"), targets


batches = st.builds(Batch, st.integers(1, 7), st.sampled_from(["normal", "uniform", "constant"]),
                    st.sampled_from(["ids", "weights", "none"]), st.integers(0, 2**16))


def explained_scores(model, x, targets):
    outputs = model(x).numpy()
    if targets is None:
        return outputs.max(axis=-1)
    if targets.ndim == 1:
        return outputs[np.arange(len(x)), targets]
    return (outputs * targets).sum(axis=-1)


# ---------------------------------------------------------------- properties


#: Sampling methods only call the model, whatever its architecture (which is what the fuzzer
#: varies): in the suite, Occlusion stands for them; the rest is the slow variant.
FUZZED = [pytest.param(name, marks=pytest.mark.slow) if name in BLACK_BOX - {"Occlusion"}
          else name for name in EXPLAINERS]


@pytest.mark.filterwarnings("ignore:.*has no ReLU activation:UserWarning")
@pytest.mark.parametrize("name", FUZZED)
@examples(share=0.3)
@given(data=st.data())
def test_every_explainer_on_random_models(name, data):
    """Shape (N, H, W, 1), float32, finite, batch size 2 = batch size 64, model unchanged."""
    styles = ("functional", "sequential") + (() if name in GRAPH_ONLY else ("subclassed",))
    architecture = data.draw(architectures(styles), label="architecture")
    x, targets = data.draw(batches, label="batch").arrays(architecture)
    model = architecture.build()
    weights, outputs = model.get_weights(), model(x).numpy()

    maps = FACTORIES[name](model, batch_size=64).explain(x, targets, verbose=0)
    assert maps.dtype == tf.float32
    maps = maps.numpy()
    assert maps.shape == (*x.shape[:3], 1)
    assert np.isfinite(maps).all()
    batched = FACTORIES[name](model, batch_size=2).explain(x, targets, verbose=0).numpy()
    np.testing.assert_allclose(batched, maps, rtol=1e-4,
                               atol=1e-6 * max(1.0, float(np.abs(maps).max())))

    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(model(x).numpy(), outputs)


def biased_layers(model) -> int:
    """Layers adding a bias, counted from the architecture's own layers."""
    count = 0
    for layer in all_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                              keras.layers.SeparableConv2D, keras.layers.Dense)):
            count += layer.use_bias
        elif isinstance(layer, keras.layers.BatchNormalization):
            count += 1  # beta - gamma * mean / sqrt(var + eps), with or without beta
        elif isinstance(layer, keras.layers.Rescaling):
            count += layer.offset != 0
    return count


@examples(share=2.0)
@given(architecture=architectures(("functional", "sequential")), batch=batches,
       batch_size=st.integers(1, 8))
def test_fullgrad_terms_add_up_to_the_score_on_random_models(architecture, batch, batch_size):
    """Every layer is piecewise linear: input term + bias terms = the explained score, for
    nested blocks, residual adds, strides, pooling, batch norm without beta or gamma,
    Sequential models, class weights and predicted classes, over several batches."""
    x, targets = batch.arrays(architecture)
    model = architecture.build()
    explainer = FullGrad(model, batch_size=batch_size)
    input_term, bias_terms = explainer.raw_terms(x, targets)
    assert input_term.shape == x.shape
    assert len(bias_terms) == len(explainer.bias_layers) == biased_layers(model)
    total = tf.reduce_sum(input_term, axis=[1, 2, 3]).numpy().astype("float64")
    magnitude = tf.reduce_sum(tf.abs(input_term), axis=[1, 2, 3]).numpy().astype("float64")
    for term in bias_terms:
        assert term.shape[0] == len(x)
        axes = list(range(1, term.shape.rank))
        total += tf.reduce_sum(term, axis=axes).numpy()
        magnitude += tf.reduce_sum(tf.abs(term), axis=axes).numpy()
    np.testing.assert_allclose(total, explained_scores(model, x, targets),
                               atol=1e-5 + 1e-5 * float(magnitude.max()))
