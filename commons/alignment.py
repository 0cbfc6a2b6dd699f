"""Which layers keep the input's positions (the CAM family's default layer).

A CAM resizes the layer's map to the input's size, which is right only if the layer's
positions are the input's positions (up to scale). The walk below follows the model's graph
from its inputs (the same calls, in the same order, as ``commons.model.flatten``) and tracks,
for every tensor, whether it is *aligned* with an input (and on which axes its spatial axes
are), *global* (it carries no position: global pooling, non-image inputs and whatever is
computed only from such tensors, as a squeeze-and-excitation branch) or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from . import model as inspect_model

_GLOBAL = "global"


@dataclass(frozen=True)
class _Aligned:
    input: int  # which model input
    axes: tuple  # the tensor axes holding that input's spatial axes, in order


def _layer_types(*names: str) -> tuple:
    """The ``keras.layers`` classes of these names that this Keras has."""
    found = (getattr(keras.layers, name, None) for name in names)
    return tuple(t for t in found if isinstance(t, type))


#: Each output position is computed from the same input position.
_POSITIONWISE = _layer_types(
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Normalization", "Rescaling", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Identity", "Masking",
    # random augmentation layers: the identity in inference
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
    "RandomBrightness",
)
#: Local windows and resampling: aligned when the tensor has the layout they expect.
_LOCAL = _layer_types(
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing",
    "CenterCrop", "RandomCrop",
)
_MERGES = _layer_types("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
                       "Concatenate")
_GLOBAL_POOLING = _layer_types(
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D")
_RECURRENT = _layer_types("RNN", "SimpleRNN", "LSTM", "GRU", "Bidirectional")
#: Element-wise ``keras.ops`` written on a functional model's tensors (``x + y``, ``ops.relu``).
_ELEMENTWISE_OPS = frozenset({
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Negative",
    "Absolute", "Abs", "Exp", "Log", "Sqrt", "Square", "Power", "Relu", "Relu6", "Sigmoid",
    "Tanh", "Gelu", "Silu", "Swish", "Softplus", "Elu", "Selu", "LeakyRelu", "HardSigmoid",
    "HardSilu", "Cast", "Clip",
})

#: Position-wise layers that ``keras.applications`` models define (ConvNeXt's).
_APPLICATION_LAYERS = frozenset({"LayerScale", "StochasticDepth"})


def _spatial_axes(rank: int, data_format: str = "channels_last") -> tuple:
    return tuple(range(2, rank)) if data_format == "channels_first" else tuple(range(1, rank - 1))


def _is_keras_op(layer) -> bool:
    """A ``keras.ops`` operation recorded in a functional model (not a layer)."""
    return not isinstance(layer, keras.layers.Layer) and type(layer).__module__.startswith(
        "keras.")


def _propagate(layer, states: list, inputs: list, outputs: list):
    """The state of ``layer``'s outputs from its inputs' states: an ``_Aligned``,
    ``_GLOBAL``, or None (positions lost, or an effect this walk does not know)."""
    if any(state is None for state in states):
        return None
    aligned = {state for state in states if state is not _GLOBAL}
    if not aligned:
        return _GLOBAL  # computed from no position at all
    if len(aligned) > 1:
        return None  # two inputs, or two layouts, mixed
    (state,) = aligned
    rank = len(inputs[states.index(state)].shape)
    ranks = {len(t.shape) for t in outputs}
    if isinstance(layer, _GLOBAL_POOLING):
        return _GLOBAL
    if isinstance(layer, (keras.layers.Reshape, keras.layers.Flatten)):
        spatial = [inputs[states.index(state)].shape[a] for a in state.axes]
        return _GLOBAL if all(size == 1 for size in spatial) else None
    if ranks != {rank}:
        return None
    if isinstance(layer, keras.layers.Permute):
        moved = tuple(1 + tuple(layer.dims).index(axis) for axis in state.axes)
        return _Aligned(state.input, moved) if list(moved) == sorted(moved) else None
    if isinstance(layer, _POSITIONWISE):
        return state
    if isinstance(layer, _LOCAL):
        layout = getattr(layer, "data_format", None) or "channels_last"
        return state if state.axes == _spatial_axes(rank, layout) else None
    if isinstance(layer, _MERGES):
        if isinstance(layer, keras.layers.Concatenate) and layer.axis % rank in state.axes:
            return None
        return state
    if isinstance(layer, keras.layers.Dense):  # acts on the last axis
        return state if rank - 1 not in state.axes else None
    if isinstance(layer, _RECURRENT):  # (N, T, C) sequences, step t at position t
        keeps = getattr(layer, "return_sequences", False) and not getattr(
            layer, "go_backwards", False)
        return state if keeps and state.axes == (1,) else None
    if _is_keras_op(layer) and type(layer).__name__ in _ELEMENTWISE_OPS:
        return state
    if type(layer).__name__ in _APPLICATION_LAYERS and type(layer).__module__.startswith("keras."):
        return state
    return None


@dataclass
class _Call:
    layer: Any  # None for a model input
    inputs: list  # indices of the calls whose outputs it takes (None: not traced)
    state: Any


class Alignment:
    """Which calls of a model's layers give outputs spatially aligned with an input.

    Calls are those of :func:`saliencekit.commons.model.flatten`, in its order: a node
    of its graph is the ``k``-th call of its layer. ``heads`` are the calls that compute
    the model's output itself (its last layer, and the layer before each parameter-free
    step such as an activation or an upsampling that ends the model); ``unknown`` names
    layers of unknown spatial effect (``Lambda``, custom layers) that took an aligned input.
    """

    def __init__(self, model):
        self.calls: list[_Call] = []
        self.unknown: list[tuple[int, str]] = []  # (call index, layer name)
        self._keys: dict[tuple[int, int], int] = {}  # (id(layer), k-th call) -> call
        self._counts: dict[int, int] = {}
        refs = []
        for index, tensor in enumerate(model.inputs):
            rank = len(tensor.shape)
            state = _Aligned(index, _spatial_axes(rank)) if rank >= 3 else _GLOBAL
            self.calls.append(_Call(None, [], state))
            refs.append(len(self.calls) - 1)
        outputs = self._trace(model, refs)
        self.heads = self._heads(outputs)

    def call_of(self, layer, occurrence: int) -> int | None:
        return self._keys.get((id(layer), occurrence))

    def input_of(self, graph, node) -> int | None:
        """The input (its index in ``model.inputs``) that ``node``'s output is aligned
        with, or None."""
        occurrence = sum(1 for n in graph.nodes[:graph.nodes.index(node)]
                         if n.layer is node.layer)
        call = self.call_of(node.layer, occurrence)
        state = None if call is None else self.calls[call].state
        return state.input if isinstance(state, _Aligned) else None

    def _record(self, layer, inputs, state) -> int:
        occurrence = self._counts.get(id(layer), 0)
        self._counts[id(layer)] = occurrence + 1
        self.calls.append(_Call(layer, inputs, state))
        self._keys[(id(layer), occurrence)] = len(self.calls) - 1
        return len(self.calls) - 1

    def _state(self, ref):
        return None if ref is None else self.calls[ref].state

    def _trace(self, model, refs: list) -> list:
        """Record the calls of ``model``'s layers, its inputs being the calls ``refs``;
        returns the calls giving its outputs."""
        tensors = [keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype)
                   for t in model.inputs]
        known = {id(t): ref for t, ref in zip(tensors, refs)}

        def call_layer(layer, *args, **kwargs):
            inputs = [t for t in tf.nest.flatten((args, kwargs))
                      if isinstance(t, keras.KerasTensor)]
            sources = [known.get(id(t)) for t in inputs]
            if inspect_model.has_graph(layer):
                inner = self._trace(layer, sources)
                outputs = layer(*args, **kwargs)
                flat = tf.nest.flatten(outputs)
                for tensor, ref in zip(flat, inner):
                    known[id(tensor)] = ref
                self._record(layer, inner, self._state(inner[0]) if inner else None)
                return outputs
            outputs = layer(*args, **kwargs)
            flat = tf.nest.flatten(outputs)
            states = [self._state(ref) for ref in sources]
            state = _propagate(layer, states, inputs, flat)
            ref = self._record(layer, sources, state)
            if state is None and any(isinstance(s, _Aligned) for s in states) and not any(
                    s is None for s in states) and not isinstance(
                    layer, _KNOWN_TO_BREAK) and any(len(t.shape) >= 3 for t in flat):
                self.unknown.append((ref, layer.name))
            for tensor in flat:
                known[id(tensor)] = ref
            return outputs

        if isinstance(model, keras.Sequential):
            tensor = tensors[0]
            for layer in model.layers:
                tensor = call_layer(layer, tensor)
            return [known.get(id(tensor))]
        declared = model.input
        if isinstance(declared, dict):  # model.inputs is in tf.nest (sorted-name) order
            structure = dict(zip(sorted(declared), tensors))
            structure = {name: structure[name] for name in declared}
        else:
            structure = tensors[0] if len(tensors) == 1 else tensors
        clone = keras.models.clone_model(
            model, input_tensors=structure,
            clone_function=lambda layer: layer, call_function=call_layer)
        return [known.get(id(t)) for t in clone.outputs]

    def _heads(self, outputs: list) -> set:
        """The calls computing the output itself: walking back from each output through
        nested models and parameter-free single-input steps, up to the first layer with
        weights (a segmentation model's 1x1 convolution head, say)."""
        heads, stack = set(), [ref for ref in outputs if ref is not None]
        while stack:
            ref = stack.pop()
            if ref in heads or self.calls[ref].layer is None:
                continue
            heads.add(ref)
            call = self.calls[ref]
            nested = inspect_model.has_graph(call.layer)
            steps = len(call.inputs) == 1 and not getattr(call.layer, "weights", None) and (
                isinstance(call.layer, (*_POSITIONWISE, *_LOCAL)) or _is_keras_op(call.layer))
            if nested or steps:
                stack.extend(ref for ref in call.inputs if ref is not None)
        return heads


#: Layers known to lose positions (not of unknown effect).
_KNOWN_TO_BREAK = (keras.layers.Permute, keras.layers.Reshape, keras.layers.Flatten,
                   *_layer_types("MultiHeadAttention", "Attention", "AdditiveAttention",
                                 "Dot", "EinsumDense"), *_RECURRENT, *_LOCAL,
                   keras.layers.Dense)


def last_aligned(graph, alignment: Alignment, channels_first: bool):
    """The last node aligned with an input, in the layout the CAM reads, that is not a
    head; and the names of layers of unknown effect called after it."""
    counts: dict[int, int] = {}
    chosen, chosen_call = None, -1
    for node in graph.nodes:
        occurrence = counts.get(id(node.layer), 0)
        counts[id(node.layer)] = occurrence + 1
        call = alignment.call_of(node.layer, occurrence)
        if call is None or call in alignment.heads or isinstance(node.layer, keras.Model):
            continue
        state = alignment.calls[call].state
        if not isinstance(state, _Aligned):
            continue
        rank = len(graph.inputs[state.input].shape)
        layout = "channels_first" if channels_first else "channels_last"
        if len(node.output.shape) == rank and state.axes == _spatial_axes(rank, layout):
            chosen, chosen_call = node, call
    after = [name for call, name in alignment.unknown if call > chosen_call]
    return chosen, after




def last_token_layer(graph):
    """A transformer's default CAM layer: the input of its last self-attention (the last
    block's normalised tokens ``(N, T, D)``, where every token still has a gradient even
    when the head reads the class token only; pytorch-grad-cam's advice for ViTs). ``None``
    for a model without a ``MultiHeadAttention`` over token sequences (every CNN), or whose
    tokens go back to an image map after it (a CNN with attention inside): their default
    stays :func:`last_aligned`'s."""
    producers = {id(node.output): node for node in graph.nodes}
    for index in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[index]
        if not isinstance(node.layer, keras.layers.MultiHeadAttention) or not node.inputs:
            continue
        if any(len(getattr(later.output, "shape", ())) >= 4 for later in graph.nodes[index:]):
            return None  # tokens back to an image map (a CNN with attention inside)
        query = node.inputs[0]
        if len(query.shape) == 3 and id(query) in producers:
            return producers[id(query)]
        return None
    return None


def token_grid(graph, node, image_shape: tuple, given=None) -> tuple[int, int, int]:
    """``(h, w, extra)``: the patch grid of ``node``'s tokens ``(N, extra + h * w, D)`` on an
    image ``(H, W, C)``; the ``extra`` leading tokens (class, register) carry no patch.

    ``given``: ``(h, w)``. Otherwise the grid of the last 4-D tensor computed before
    ``node`` with at most as many positions as there are tokens (the patch layer's output,
    a strided ``Conv2D`` as ViTs write it), else the grid of the image's aspect ratio with
    the fewest extra tokens (at most 8)."""
    count = node.output.shape[1]
    if given is not None:
        h, w = given
        if count is None or h * w > count:
            raise ValueError(f"token_grid={given!r} has {h * w} patches; layer "
                             f"{node.path!r} has {count} tokens")
        return h, w, count - h * w
    if count is None:
        raise ValueError(f"layer {node.path!r} has an unknown number of tokens: pass "
                         "token_grid=(h, w)")
    before = graph.nodes[:graph.nodes.index(node)]
    for other in reversed(before):
        shape = getattr(other.output, "shape", None)
        if shape is not None and len(shape) == 4 and None not in shape[1:3]:
            h, w = shape[1], shape[2]
            if h * w <= count and count - h * w <= 8:
                return h, w, count - h * w
    return grid_of(count, image_shape, None, f"layer {node.path!r}")


def grid_of(count: int, image_shape: tuple, given=None, what: str = "the layer"
            ) -> tuple[int, int, int]:
    """``(h, w, extra)`` for ``count`` tokens on an image ``(H, W, C)``: ``given`` grid,
    else the grid of the image's aspect ratio with the fewest extra tokens (at most 8)."""
    if given is not None:
        h, w = given
        if h * w > count:
            raise ValueError(f"token_grid={given!r} has {h * w} patches; {what} has {count} "
                             "tokens")
        return h, w, count - h * w
    height, width = image_shape[0], image_shape[1]
    for extra in range(min(count, 9)):
        patches = count - extra
        for h in range(1, patches + 1):
            if patches % h == 0 and h * width == (patches // h) * height:
                return h, patches // h, extra
    raise ValueError(f"no patch grid of the image's aspect ratio {height}x{width} for the "
                     f"{count} tokens of {what}: pass token_grid=(h, w)")
