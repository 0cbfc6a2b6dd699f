"""Model inspection: layers, nested models, rerouting, pre-activations and biases.

Everything here works through Keras' public API. A model is never modified: the
graphs built here *call* the user's layers (sharing their weights, which stay live if the
model is trained further) and add new wrapper layers of their own; the one trace this
leaves on a layer is an extra inbound node, as with ``keras.models.clone_model(model,
clone_function=lambda layer: layer)``, Keras' documented way to share layers.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import validation


@dataclass
class Node:
    """One call of a layer in a flattened graph."""

    layer: keras.layers.Layer
    path: str  # "outer/inner/layer" for layers of nested models
    output: Any  # KerasTensor
    pre_activation: Any = None  # KerasTensor, when the layer's activation was split off
    #: the KerasTensors the call took (in this graph), positional then keyword
    inputs: list = field(default_factory=list)
    #: a MultiHeadAttention call's attention scores ``(N, heads, T_query, T_key)``, in a
    #: graph flattened with ``attention_scores=True``
    scores: Any = None


@dataclass
class Graph:
    """A model's graph with nested models inlined: every layer call, in call order."""

    inputs: list
    outputs: list
    nodes: list[Node] = field(default_factory=list)
    #: named inputs (a dict by name, as the model declares them), else None
    named_inputs: dict | None = None

    @property
    def model_inputs(self):
        """The inputs as a model built on this graph takes them: one tensor, a list, or a
        dict by name, like the original model."""
        if self.named_inputs is not None:
            return self.named_inputs
        return self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)

    def model(self, extra: list | None = None, name: str | None = None, outputs=None
              ) -> keras.Model:
        """A functional model returning the outputs (then ``extra`` tensors, if any)."""
        outputs = list(self.outputs if outputs is None else outputs) + list(extra or [])
        return keras.Model(self.model_inputs, outputs[0] if len(outputs) == 1 else outputs,
                           name=name)


class CallableModel:
    """Any model that is not a Keras 3 layer graph, seen as one: ``model(x) -> outputs``.

    Wraps a ``tf_keras`` (Keras 2) model, a ``tf.Module`` or a SavedModel loaded with
    ``tf.saved_model.load`` (its ``__call__``, else its ``serving_default`` signature), a
    ``tf.function`` or a plain function. Gradient and black-box methods need nothing
    more. A function that cannot run on symbolic tensors (a numpy-level predictor such as
    scikit-learn's ``predict_proba``) runs through ``tf.numpy_function``: black-box methods
    explain it, gradient methods refuse it (it has no gradient).
    """

    def __init__(self, function, name: str, variables=(), source: Any = None,
                 input_shape: tuple | None = None):
        self._function = function
        self.name = name
        self._variables = variables
        self.source = source  # the user's object
        self.input_shape = input_shape  # without the batch axis, when it declares one
        self.numpy_level = False

    @property
    def weights(self) -> list:
        return list(self._variables() if callable(self._variables) else self._variables)

    def __call__(self, inputs, training=False):
        del training  # inference is what is explained; a plain callable has no mode
        if tf.executing_eagerly():
            outputs = self._call(inputs)
            if not self.numpy_level and not all(
                    tf.is_tensor(o) for o in tf.nest.flatten(outputs)):
                self.numpy_level = True  # numpy out: it cannot run on symbolic tensors
            return outputs
        if self.numpy_level:
            return self._call(inputs)
        try:
            return self._call(inputs)
        except Exception:
            self.numpy_level = True
            return self._call(inputs)

    def _call(self, inputs):
        if not self.numpy_level:
            return _single_output(self._function(inputs), self.name)
        function = self._function
        sample = np.zeros((1, *inputs.shape[1:]), np.float32)
        width = np.asarray(function(sample)).shape[1:]  # the output's shape, once

        def run(batch):
            return np.asarray(function(batch), np.float32)

        outputs = tf.numpy_function(run, [inputs], tf.float32, stateful=False)
        return tf.ensure_shape(outputs, (inputs.shape[0], *width))


def _single_output(outputs, name):
    """A SavedModel signature returns a dict of outputs: its only one."""
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise validation.value_error(
                "model", "a callable returning one output tensor (or a dict of one)",
                f"{name!r} returning the outputs {sorted(outputs)}",
                "Wrap it: model=lambda x: loaded(x)[name].")
        (outputs,) = outputs.values()
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        (outputs,) = outputs
    return outputs


def _is_tf_keras(model: Any) -> bool:
    return any(cls.__module__.startswith("tf_keras") for cls in type(model).__mro__)


def _tolerant(layer_class: type, dropped: dict) -> type:
    """``layer_class`` whose ``from_config`` drops keyword arguments that Keras 2 wrote in
    ``.h5`` configs and Keras 3 refuses (only with the value Keras 2 always wrote)."""

    def from_config(cls, config):
        config = {k: v for k, v in config.items() if not (k in dropped and v == dropped[k])}
        return super(tolerant, cls).from_config(config)

    tolerant = type(layer_class.__name__, (layer_class,), {
        "from_config": classmethod(from_config), "__module__": __name__})
    return tolerant


@functools.cache
def _keras2_compatible() -> dict:
    """Keras 3 refuses ``groups=1`` in the configs of these layers, which every Keras 2 (TF
    2.x) ``.h5`` file has (keras-team/keras#19151, #19441): MobileNet, EfficientNet, ..."""
    names = ("DepthwiseConv1D", "DepthwiseConv2D", "Conv1DTranspose", "Conv2DTranspose",
             "Conv3DTranspose")
    return {name: _tolerant(getattr(keras.layers, name), {"groups": 1})
            for name in names if hasattr(keras.layers, name)}


def load_model(path: str | os.PathLike, compile: bool = False, custom_objects=None):
    """``keras.models.load_model`` that also opens the ``.h5`` files Keras 2 (TF 2.x) wrote.

    Keras 3 refuses such a file when it has a depthwise or transposed convolution
    (``Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}``); this
    loads those layers as Keras 3's own, ignoring the argument. A model declared with
    one-element input/output lists (as such files load) is explained as the single-input,
    single-output model it is. ``compile=False`` by default: explaining needs no optimizer.
    """
    objects = {**_keras2_compatible(), **(custom_objects or {})}
    return keras.models.load_model(path, compile=compile, custom_objects=objects)


def _tf_keras_graph(model: Any, argument: str):
    """A Keras 3 copy of a ``tf_keras`` functional or Sequential model (through an HDF5
    file, the format both Keras read), for methods that need the layers."""
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            # the user saved nothing: tf_keras' advice about the HDF5 format is not for them
            warnings.filterwarnings("ignore", message=".*HDF5 file", category=UserWarning)
            path = os.path.join(folder, "model.h5")
            model.save(path, include_optimizer=False)
            return load_model(path)
    except Exception as error:
        raise validation.type_error(
            argument, "a Keras 3 functional or Sequential model (this method needs the "
            "model's layers)", f"the tf_keras model {model.name!r}, which could not be "
            f"converted ({type(error).__name__}: {str(error)[:200]})",
            "Gradient and black-box methods explain it as it is; or save it as .h5 and "
            "reload it with keras.models.load_model.") from None


def as_model(model: Any, *, needs_graph: bool = False, argument: str = "model") -> Any:
    """What the kernels call: a Keras 3 model (a functional model declared with one-element
    input/output lists rebuilt as the single-input, single-output model it is), or a
    :class:`CallableModel`. ``needs_graph``: the method needs a Keras 3 layer graph; a
    ``tf_keras`` functional/Sequential model is converted, anything else refused."""
    if isinstance(model, keras.layers.Layer):
        return _unlisted(model)
    if needs_graph:
        if _is_tf_keras(model) and isinstance(getattr(model, "layers", None), list) and (
                getattr(model, "_is_graph_network", False) or type(model).__name__ ==
                "Sequential"):
            return _unlisted(_tf_keras_graph(model, argument))
        raise validation.type_error(
            argument, "a functional or Sequential Keras model (this method needs the "
            "model's layers)", _kind(model),
            "Gradient and black-box methods (Saliency, SmoothGrad, Occlusion, ...) explain "
            "any differentiable callable.")
    if _is_tf_keras(model):
        def tf_keras_call(x):
            return model(x, training=False)
        shape = None
        try:
            if len(model.inputs) == 1:
                shape = tuple(model.inputs[0].shape[1:])
        except (AttributeError, ValueError, TypeError):
            pass
        return CallableModel(tf_keras_call, model.name, lambda: model.weights, model, shape)
    if isinstance(model, tf.Module) or hasattr(model, "signatures"):
        function = model if callable(model) else None
        signatures = getattr(model, "signatures", None) or {}
        shape = None
        if function is None and "serving_default" in signatures:
            signature = signatures["serving_default"]
            specs = tf.nest.flatten(signature.structured_input_signature)
            if len(specs) != 1:
                raise validation.value_error(
                    argument, "a SavedModel whose serving signature takes one tensor",
                    f"a signature taking {len(specs)}")
            shape = tuple(specs[0].shape[1:]) if specs[0].shape.rank else None
            key = signature.structured_input_signature[1]
            if key:  # keyword inputs
                (key,) = key
                function = lambda x, f=signature, k=key: f(**{k: x})  # noqa: E731
            else:
                function = signature
        if function is None:
            raise validation.type_error(
                argument, "a callable tf.Module or a SavedModel with __call__ or a "
                "'serving_default' signature", _kind(model))
        name = getattr(model, "name", None) or type(model).__name__
        return CallableModel(function, name, lambda: model.variables, model, shape)
    if callable(model):
        name = getattr(model, "__name__", None) or type(model).__name__
        return CallableModel(model, name, (), model)
    raise validation.type_error(
        argument, "a Keras model, a tf_keras model, a tf.Module, a SavedModel or a "
        "callable mapping a batch of inputs to outputs", _kind(model))


def _kind(model: Any) -> str:
    kind = type(model)
    if _is_tf_keras(model):
        return f"the tf_keras (Keras 2) model {kind.__name__} {getattr(model, 'name', '')!r}"
    return f"{kind.__module__}.{kind.__qualname__}"


def _unlisted(model):
    """A functional model declared ``keras.Model([inputs], [outputs])`` (as Keras-2 era
    ``.h5`` files load) as ``keras.Model(inputs, outputs)``, sharing its layers."""
    if not has_graph(model) or isinstance(model, keras.Sequential):
        return model
    try:
        inputs, outputs = model.input, model.output
    except (AttributeError, ValueError):
        return model
    listed_in = isinstance(inputs, (list, tuple)) and len(inputs) == 1
    listed_out = isinstance(outputs, (list, tuple)) and len(outputs) == 1
    if not (listed_in or listed_out):
        return model
    return keras.Model(inputs[0] if listed_in else inputs,
                       outputs[0] if listed_out else outputs, name=model.name)


def model_weights(model: Any) -> list:
    """The model's variables (none for a plain function)."""
    return list(getattr(model, "weights", None) or [])


def model_name(model: Any) -> str:
    return getattr(model, "name", None) or getattr(model, "__name__", None) or type(
        model).__name__


def has_graph(model: Any) -> bool:
    """Functional and Sequential models have a graph to inspect; subclassed ones do not."""
    return isinstance(model, (keras.Sequential, _functional_class()))


@functools.cache
def _functional_class() -> type:
    # Keras exports no name for the class of functional models; it is the class of one.
    inputs = keras.Input((1,))
    return type(keras.Model(inputs, keras.layers.Identity()(inputs)))


def sample_input_shape(model: Any) -> tuple | None:
    """The model's input shape without the batch axis, where the model declares one."""
    if isinstance(model, CallableModel):
        return model.input_shape
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def input_structure(model: Any) -> list | dict | None:
    """A multi-input model's inputs as the model takes them: a list, or a dict by name,
    of ``tf.TensorSpec`` (shape without the batch axis). ``None`` for a model with one
    input (or an unknown number)."""
    try:
        declared = model.input if has_graph(model) else None
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) < 2:
        return None

    def spec(tensor):
        return tf.TensorSpec(tuple(tensor.shape[1:]), keras.backend.standardize_dtype(
            tensor.dtype), name=getattr(tensor, "name", None))

    if isinstance(declared, dict):
        return {key: spec(tensor) for key, tensor in declared.items()}
    return [spec(tensor) for tensor in inputs]


class _WithoutActivation:
    """A read-only view of a layer whose activation is the identity."""

    activation = staticmethod(keras.activations.linear)

    def __init__(self, layer):
        object.__setattr__(self, "_layer", layer)

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def __setattr__(self, name, value):  # the view never writes to the user's layer
        raise AttributeError(f"read-only view of layer {self._layer.name!r}")


class PreActivation(keras.layers.Layer):
    """The wrapped layer's output before its fused activation, with its weights shared.

    ``Dense(activation="relu")`` computes ``relu(x @ W + b)``; this layer computes
    ``x @ W + b`` by running the layer's own ``call`` on a view whose activation is the
    identity, so any layer whose ``call`` ends in ``self.activation(...)`` is covered.
    """

    def __init__(self, layer: keras.layers.Layer):
        super().__init__(name=f"{layer.name}_pre_activation", dtype=layer.dtype_policy)
        self._wrapped = [layer]  # a list: not tracked as this layer's child

    def call(self, *args, **kwargs):
        layer = self._wrapped[0]
        return type(layer).call(_WithoutActivation(layer), *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        # the layer's own (an activation keeps shape and dtype). Inferring it by running
        # ``call`` would miss the casts Keras applies around ``__call__`` (mixed precision):
        # a functional model's compute_output_spec calls its layers' directly.
        return self._wrapped[0].compute_output_spec(*args, **kwargs)


def fused_activation(layer: keras.layers.Layer):
    """The layer's fused activation, or None when it has none (or the identity)."""
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return None
    if activation is keras.activations.linear or getattr(activation, "__name__", "") == "linear":
        return None
    if isinstance(layer, (keras.layers.Activation, keras.Model)):
        return None
    return activation


def flatten(
    model: Any, split_activations=None, argument: str = "model", substitute=None,
    attention_scores: bool = False,
) -> Graph:
    """Rebuild ``model`` as one functional graph with nested models inlined.

    ``split_activations(layer) -> bool`` selects layers whose fused activation is split
    off, so that their pre-activation is a tensor of the graph (``Node.pre_activation``).
    ``substitute(layer) -> layer or None`` replaces layers in the rebuilt graph (the
    activation layers split off included); the user's model keeps its own.
    ``attention_scores``: every ``MultiHeadAttention`` call goes through a fresh wrapper
    layer that also returns its attention scores (``Node.scores``); calling the layer
    itself again with ``return_attention_scores=True`` inside ``clone_model`` gives an
    unconnected score tensor.
    Raises ``TypeError`` for a model without a graph (subclassed models).
    """
    if not has_graph(model):
        raise validation.type_error(
            argument,
            "a functional or Sequential Keras model (this method needs the model's layers)",
            f"{type(model).__name__} (a subclassed model, whose graph is its Python code)",
            "Gradient and black-box methods (Saliency, SmoothGrad, Occlusion, ...) work on "
            "any model.",
        )
    return _flatten(model, split_activations, substitute, prefix="",
                    attention_scores=attention_scores)


def _keras_tensors(args, kwargs) -> list:
    return [t for t in tf.nest.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]


class AttentionWithScores(keras.layers.Layer):
    """A ``MultiHeadAttention`` layer's call returning ``(output, scores)``, its weights
    shared (a new layer per call, so the scores are a tensor of the rebuilt graph)."""

    def __init__(self, layer: keras.layers.Layer):
        super().__init__(name=f"{layer.name}_with_scores", dtype=layer.dtype_policy)
        self._wrapped = [layer]  # a list: not tracked as this layer's child
        # a padding mask goes on as the layer's own output would carry it (the query's);
        # without this, the rest of the rebuilt graph (a masked mean) saw no mask
        self.supports_masking = True

    def call(self, *args, **kwargs):
        kwargs["return_attention_scores"] = True
        return self._wrapped[0](*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return None if previous_mask is None else (previous_mask, None)


def _new_inputs(model) -> list:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise validation.value_error(
            "model",
            "a built model with a known input shape",
            f"the unbuilt model {model.name!r}",
            "Give it an Input layer or call it once on data.",
        )
    return [keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype) for t in inputs]


def _flatten(model, split_activations, substitute, prefix: str,
             attention_scores: bool = False) -> Graph:
    graph = Graph(inputs=_new_inputs(model), outputs=[])

    def replaced(layer):
        return (substitute(layer) if substitute is not None else None) or layer

    def call_layer(layer, *args, **kwargs):
        path = prefix + layer.name
        given = _keras_tensors(args, kwargs)
        if has_graph(layer):
            inner = _flatten(layer, split_activations, substitute, prefix=path + "/",
                             attention_scores=attention_scores)
            extras = [n.pre_activation for n in inner.nodes if n.pre_activation is not None]
            extras += [n.scores for n in inner.nodes if n.scores is not None]
            inner_model = inner.model([n.output for n in inner.nodes] + extras,
                                      name=layer.name)
            results = inner_model(*args, **kwargs)
            results = results if isinstance(results, (list, tuple)) else [results]
            n_out, n_nodes = len(inner.outputs), len(inner.nodes)
            outputs, node_outputs = results[:n_out], results[n_out:n_out + n_nodes]
            rest = iter(results[n_out + n_nodes:])
            pre = [next(rest) if n.pre_activation is not None else None for n in inner.nodes]
            scores = [next(rest) if n.scores is not None else None for n in inner.nodes]
            # the inner graph's tensors, as this graph's
            outer = {id(t): o for t, o in zip(inner.inputs, given)}
            outer.update((id(n.output), o) for n, o in zip(inner.nodes, node_outputs))
            for node, output, p, a in zip(inner.nodes, node_outputs, pre, scores):
                graph.nodes.append(Node(
                    node.layer, node.path, output, p,
                    [outer[id(t)] for t in node.inputs if id(t) in outer], a))
            # the nested model itself, as one node whose output is its output
            graph.nodes.append(Node(layer, path, outputs[0], inputs=given))
            return outputs[0] if len(outputs) == 1 else list(outputs)
        activation = fused_activation(layer)
        if split_activations is not None and activation is not None and split_activations(layer):
            pre_activation = PreActivation(layer)(*args, **kwargs)
            output = replaced(
                keras.layers.Activation(activation, name=f"{layer.name}_activation")
            )(pre_activation)
            graph.nodes.append(Node(layer, path, output, pre_activation, given))
            return output
        if attention_scores and isinstance(layer, keras.layers.MultiHeadAttention):
            returns_scores = kwargs.pop("return_attention_scores", False)
            output, scores = AttentionWithScores(layer)(*args, **kwargs)
            graph.nodes.append(Node(layer, path, output, inputs=given, scores=scores))
            return (output, scores) if returns_scores else output
        output = replaced(layer)(*args, **kwargs)
        graph.nodes.append(Node(layer, path, output, inputs=given))
        return output

    if isinstance(model, keras.Sequential):
        tensor = graph.inputs[0]
        for layer in model.layers:
            tensor = call_layer(layer, tensor)
        graph.outputs = [tensor]
    else:
        declared = model.input
        if isinstance(declared, dict):  # named inputs: the same names (model.inputs is in
            # tf.nest order, sorted by name, not the declared order)
            tensors = {name: keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype,
                                         name=name) for name, t in declared.items()}
            graph.named_inputs = tensors
        else:
            tensors = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
        clone = keras.models.clone_model(
            model,
            input_tensors=tensors,
            clone_function=lambda layer: layer,
            call_function=call_layer,
        )
        graph.inputs = list(clone.inputs)
        graph.outputs = list(clone.outputs)
    return graph


def find_node(graph: Graph, model: Any, layer: str | int, argument: str) -> Node:
    """The node of ``layer``: a name (searched in nested models too, or a path
    ``"outer/inner"``) or an index into ``model.layers``. A layer called several times
    resolves to its last call."""
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise validation.type_error(argument, "a layer name or an index", repr(layer))
    if isinstance(layer, int):
        layers = model.layers
        if not -len(layers) <= layer < len(layers):
            raise validation.value_error(
                argument, f"an index in [{-len(layers)}, {len(layers)})", layer
            )
        target = layers[layer]
        matches = [n for n in graph.nodes if n.layer is target]
    else:
        matches = [n for n in graph.nodes if n.path == layer or n.layer.name == layer]
        layers = {id(n.layer) for n in matches}
        if len(layers) > 1:
            paths = sorted({n.path for n in matches})
            raise validation.value_error(
                argument, "a layer name that names one layer", repr(layer),
                f"It names {len(layers)} layers; use one of the paths {paths}.",
            )
    if not matches:
        raise validation.layer_not_found(
            argument, str(layer), sorted({n.path for n in graph.nodes})
        )
    return matches[-1]


def differentiable(model: Any) -> Any:
    """``model`` itself, or, when it declares integer (or boolean) inputs such as
    ``keras.Input(..., dtype="uint8")``, the same graph fed float32 inputs: the cast to an
    integer type inside the model has no gradient, and the first layers (``Rescaling``,
    normalisation, convolutions) compute on floats anyway."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return model
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in inputs or []]
    if not any(d.startswith(("int", "uint", "bool")) for d in dtypes):
        return model
    if not has_graph(model):
        return model  # a subclassed model casts in its own code; gradients tell
    declared = model.input
    if isinstance(declared, dict):
        floats = {name: keras.Input(batch_shape=(None, *t.shape[1:]), dtype="float32",
                                    name=name) for name, t in declared.items()}
    else:
        floats = [keras.Input(batch_shape=(None, *t.shape[1:]), dtype="float32")
                  for t in inputs]
        floats = floats[0] if len(floats) == 1 else floats
    try:
        outputs = keras.models.clone_model(
            model, input_tensors=floats, clone_function=lambda layer: layer,
        ).outputs
    except Exception as error:  # Keras raises many kinds for a layer refusing floats
        raise validation.type_error(
            "model", "a model whose inputs can be differentiated (floats, or integers that "
            "its first layers turn into floats)", f"inputs of dtype {dtypes} that its layers "
            f"cannot take as floats ({type(error).__name__}: {error})",
            "Black-box methods (Occlusion) explain any model.") from None
    return keras.Model(floats, outputs[0] if len(outputs) == 1 else outputs, name=model.name)


def _all_layers(model):
    for layer in getattr(model, "layers", None) or []:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def is_channels_first(model: Any) -> bool:
    """Whether the model's layers (nested ones included) use ``data_format="channels_first"``
    on inputs of a known rank of 3 or more."""
    shape = sample_input_shape(model)
    if shape is None or len(shape) < 2:
        return False
    return any(getattr(layer, "data_format", None) == "channels_first"
               for layer in _all_layers(model))


def channels_last(model: Any) -> Any:
    """A view of a ``channels_first`` model taking channels-last inputs ``(N, *S, C)``
    (a ``Permute`` in front of the model, which it shares); other models as they are."""
    if not is_channels_first(model):
        return model
    shape = sample_input_shape(model)  # (C, *S)
    rank = len(shape)
    inputs = keras.Input((*shape[1:], shape[0]), dtype=model.inputs[0].dtype)
    first = keras.layers.Permute((rank, *range(1, rank)), name=f"{model.name}_to_channels_first")
    return keras.Model(inputs, model(first(inputs)), name=model.name)


#: ``output_layer=LOGITS`` explains the model's output before its final softmax or sigmoid.
LOGITS = "logits"
_SQUASHING = ("softmax", "sigmoid")


def reroute(model: Any, output_layer: str | int | None) -> Any:
    """``model`` itself, or a model from its input to ``output_layer``'s output.
    ``output_layer="logits"`` names a layer called ``"logits"`` if there is one, else the
    output before the model's final softmax or sigmoid (a separate layer's input, or a fused
    activation's pre-activation)."""
    if output_layer is None:
        return model
    graph = flatten(model, argument="model (with output_layer)")
    if output_layer == LOGITS and not any(n.layer.name == LOGITS for n in graph.nodes):
        return _before_final_activation(model)
    node = find_node(graph, model, output_layer, "output_layer")
    return graph.model(outputs=[node.output])


def _last_layer(model):
    layer = model.layers[-1] if model.layers else None
    while isinstance(layer, keras.Model) and has_graph(layer) and layer.layers:
        layer = layer.layers[-1]
    return layer


def _before_final_activation(model) -> keras.Model:
    final = final_activation(model)
    if final is None:
        raise validation.value_error(
            "output_layer", "'logits' for a model ending in a softmax or sigmoid (or a layer "
            "named 'logits')", f"'logits' for model {model.name!r}, whose last layer "
            f"{getattr(_last_layer(model), 'name', None)!r} applies neither")
    last = _last_layer(model)
    if final[2]:  # fused, as in Dense(..., activation="softmax"): its pre-activation
        graph = flatten(model, split_activations=lambda layer: layer is last)
        node = [n for n in graph.nodes if n.layer is last][-1]
        return graph.model(outputs=[node.pre_activation])
    # a separate Softmax/Activation layer: the same graph with it replaced by an identity
    graph = flatten(model, substitute=lambda layer: keras.layers.Identity(
        name=f"{layer.name}_skipped") if layer is last else None)
    return graph.model(outputs=graph.outputs[:1])


def final_activation(model: Any) -> tuple[str, str, bool] | None:
    """``(layer name, "softmax" or "sigmoid", fused)`` if the output comes from a softmax or
    a sigmoid, else None. ``fused``: it is the activation of a layer such as
    ``Dense(..., activation="softmax")``."""
    if not has_graph(model):
        return None
    layer = _last_layer(model)
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return layer.name, "softmax", False
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    if name in _SQUASHING:
        return layer.name, name, not isinstance(layer, keras.layers.Activation)
    return None


def output_shape(model: Any, sample_shape: tuple, single: bool = True) -> tuple | None:
    """The model's output shape (batch axis first, as ``None``) for inputs of this shape.
    A model with several outputs is refused when ``single``, else gives ``None`` (a user's
    operator decides what it explains)."""
    if isinstance(model, CallableModel):  # no symbolic shapes: one input, eagerly
        spec = model(tf.zeros((1, *sample_shape), tf.float32))
        spec = tf.nest.map_structure(
            lambda t: keras.KerasTensor((None, *t.shape[1:])), spec)
    else:
        structure = input_structure(model)
        if structure is None:
            inputs = keras.KerasTensor((None, *sample_shape), dtype="float32")
        else:  # a multi-input model: one shape per input, in its structure's order
            inputs = tf.nest.pack_sequence_as(structure, [
                keras.KerasTensor((None, *shape), dtype="float32") for shape in sample_shape])
        spec = model.compute_output_spec(inputs)
    if isinstance(spec, (list, tuple, dict)):
        if len(spec) == 1:
            (spec,) = spec.values() if isinstance(spec, dict) else spec
            return tuple(spec.shape)
        if not single:
            return None
        raise validation.value_error(
            "model",
            "a model with one output for a built-in operator (choose one with "
            "output_layer=..., or pass a callable operator)",
            f"a model with {len(spec)} outputs",
        )
    return tuple(spec.shape)


def implicit_bias(layer: keras.layers.Layer, rank: int) -> tf.Tensor | None:
    """The bias a layer adds to its (pre-activation) output, shaped to broadcast to it.

    Dense/convolution layers: their ``bias``. BatchNormalization in inference:
    ``beta - gamma * moving_mean / sqrt(moving_variance + epsilon)``. Rescaling: its
    ``offset``. Normalization: ``-mean / max(sqrt(variance), epsilon)``. Others: None.
    """
    if isinstance(layer, keras.layers.BatchNormalization):
        scale = layer.gamma if layer.scale else 1.0
        beta = layer.beta if layer.center else 0.0
        std = tf.sqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
        bias = beta - scale * tf.convert_to_tensor(layer.moving_mean) / std
        return _along_axis(bias, layer.axis, rank)
    if isinstance(layer, keras.layers.Rescaling):
        offset = np.asarray(layer.offset, np.float32)  # a static value, not a variable
        return tf.constant(offset) if np.any(offset != 0) else None
    if isinstance(layer, keras.layers.Normalization):
        mean = tf.convert_to_tensor(layer.mean)
        std = tf.maximum(tf.sqrt(tf.convert_to_tensor(layer.variance)), keras.backend.epsilon())
        return mean if layer.invert else -mean / std
    if not has_implicit_bias(layer):
        return None
    bias = layer.bias
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return _along_axis(tf.convert_to_tensor(bias), 1, rank)
    return tf.convert_to_tensor(bias)


def _along_axis(vector, axis, rank):
    axis = axis[0] if isinstance(axis, (list, tuple)) else axis
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(vector, shape)


def has_implicit_bias(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Normalization)):
        return True
    if isinstance(layer, keras.layers.Rescaling):
        return implicit_bias(layer, 1) is not None
    if isinstance(layer, keras.Model):
        return False
    return getattr(layer, "use_bias", True) and _is_variable(getattr(layer, "bias", None))


def _is_variable(value: Any) -> bool:
    """A weight, whatever class holds it: Keras < 3.7 kept biases in backend variables that
    are not ``keras.Variable`` instances."""
    return isinstance(value, (keras.Variable, tf.Variable)) or (
        value is not None and hasattr(value, "shape") and hasattr(value, "assign"))


def hidden_bias(layer: keras.layers.Layer) -> bool:
    """The layer says it adds a bias (``use_bias=True``) but keeps none where
    :func:`implicit_bias` reads it (``layer.bias``): a term FullGrad would miss."""
    if isinstance(layer, keras.Model) or getattr(layer, "use_bias", False) is not True:
        return False
    return not _is_variable(getattr(layer, "bias", None))


# -- token inputs: gradients at an embedding's output ---------------------------------------
#: per context (thread, trace): ``{id(FedLayer): tensor}``, the outputs fed in place of
#: layers' own while a kernel is traced (:func:`feeding`)
_FED: contextvars.ContextVar = contextvars.ContextVar("saliencekit_fed", default=None)


class FedLayer(keras.layers.Layer):
    """A layer's stand-in in a rebuilt graph: the layer's own output (its weights shared),
    or, inside :func:`feeding`, a given tensor in its place. Its mask is the layer's, computed
    from the layer's inputs (an ``Embedding(mask_zero=True)``'s padding stays masked
    whatever is fed), so the rest of the graph runs as in the user's model."""

    def __init__(self, layer: keras.layers.Layer):
        super().__init__(name=f"{layer.name}_fed", dtype=layer.dtype_policy)
        self._wrapped = [layer]  # a list: not tracked as this layer's child
        self.supports_masking = True

    def call(self, inputs, *args, **kwargs):
        fed = (_FED.get() or {}).get(id(self))
        if fed is not None:
            return tf.cast(fed, self.compute_dtype)
        return self._wrapped[0](inputs, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self._wrapped[0].compute_mask(inputs, mask)

    def compute_output_spec(self, *args, **kwargs):
        return self._wrapped[0].compute_output_spec(*args, **kwargs)


@contextlib.contextmanager
def feeding(layer: FedLayer, tensor):
    """Within the block, ``layer`` outputs ``tensor`` (in this thread and context only)."""
    token = _FED.set({**(_FED.get() or {}), id(layer): tensor})
    try:
        yield
    finally:
        _FED.reset(token)


#: inputs of a multi-input token model whose zeros mark padding (keras_hub's BERT-like
#: backbones, Hugging Face's models)
PADDING_INPUTS = ("padding_mask", "attention_mask")


@dataclass
class Tokens:
    """A model explained at the output of its token-embedding layer.

    ``model`` takes the model's inputs (the user's model rebuilt, with the layer replaced by
    ``fed``: feed embeddings with :func:`feeding`); ``embed`` maps them to the layer's
    output ``(N, T, D)``; ``mask_zero``: the layer masks id 0 (padding). For a model with
    several inputs, ``ids_key`` is the key (a dict's name or a list's index) of the input
    whose tokens are explained, ``padding_key`` that of an input named as in
    :data:`PADDING_INPUTS` (0 marks padding) or None; the other inputs are passed through.
    """

    model: keras.Model
    embed: keras.Model
    fed: FedLayer
    layer: keras.layers.Layer
    path: str
    mask_zero: bool
    ids_key: str | int | None = None
    padding_key: str | int | None = None

    def ids(self, inputs):
        """The token ids among ``inputs`` (the inputs themselves for a one-input model)."""
        return inputs if self.ids_key is None else inputs[self.ids_key]

    def with_ids(self, inputs, ids):
        """``inputs`` with the token ids replaced by ``ids``."""
        if self.ids_key is None:
            return ids
        if isinstance(inputs, dict):
            return {**inputs, self.ids_key: ids}
        return [ids if i == self.ids_key else x for i, x in enumerate(inputs)]

    def padding(self, inputs):
        """Where the padding input says padding (its zeros), or None."""
        if self.padding_key is None:
            return None
        return tf.equal(tf.cast(inputs[self.padding_key], tf.int64), 0)


def input_keys(graph: Graph) -> list:
    """Each graph input's key in the structure the model takes: a name or an index."""
    if graph.named_inputs is not None:
        names = {id(t): name for name, t in graph.named_inputs.items()}
        return [names[id(t)] for t in graph.inputs]
    return list(range(len(graph.inputs)))


def tokens(model: Any, input_layer: str | int | None, argument: str = "input_layer"
           ) -> Tokens | None:
    """The split of ``model`` at ``input_layer`` (a name or an index into
    ``model.layers``), or with ``None`` at the first ``Embedding`` fed by a model input
    directly (``None`` when there is none: not a token model). A model with several inputs
    (ids, segments, a padding mask) is split at the embedding of one of them: the others
    are passed through."""
    if input_layer is None:
        if not has_graph(model):
            return None
        try:
            graph = flatten(model)
        except (TypeError, ValueError):
            return None
        firsts = {id(t) for t in graph.inputs}
        found = [n for n in graph.nodes if isinstance(n.layer, keras.layers.Embedding)
                 and any(id(t) in firsts for t in n.inputs)]
        if not found:
            return None
        node = found[0]
    else:
        graph = flatten(model, argument=f"model (with {argument})")
        node = find_node(graph, model, input_layer, argument)
    if has_graph(node.layer) or not node.inputs or len(node.output.shape) < 3:
        raise validation.value_error(
            argument, "a layer computed from the inputs giving a tensor (N, T, D) (an "
            "Embedding, or a layer after it)", f"layer {node.path!r} with output shape "
            f"{tuple(getattr(node.output, 'shape', ()))}")
    ids_key = padding_key = None
    if len(graph.inputs) > 1:
        keys = input_keys(graph)
        fed_by = _inputs_feeding(graph, node)
        if len(fed_by) > 1:  # token + segment embeddings: the ids are the first embedded
            firsts = {id(t): i for i, t in enumerate(graph.inputs)}
            embedded = [firsts[id(n.inputs[0])] for n in graph.nodes
                        if isinstance(n.layer, keras.layers.Embedding) and n.inputs
                        and firsts.get(id(n.inputs[0])) in fed_by]
            fed_by = set(embedded[:1])
        if len(fed_by) != 1:
            raise validation.value_error(
                argument, "a layer computed from the model's token ids (an input feeding an "
                "Embedding)", f"layer {node.path!r}, computed from the inputs "
                f"{[keys[i] for i in sorted(_inputs_feeding(graph, node))]}")
        (index,) = fed_by
        ids_key = keys[index]
        # a list's inputs by the names of the model's own Input layers
        names = [k if isinstance(k, str) else str(getattr(t, "name", ""))
                 for k, t in zip(keys, model.inputs)]
        for key, name, tensor in zip(keys, names, graph.inputs):
            if key != ids_key and any(name == p or name.endswith("/" + p)
                                      for p in PADDING_INPUTS) and \
                    tuple(tensor.shape[1:]) == tuple(graph.inputs[index].shape[1:]):
                padding_key = key
    fed = FedLayer(node.layer)
    rebuilt = flatten(model, substitute=lambda layer: fed if layer is node.layer else None)
    (embedding,) = [n for n in rebuilt.nodes if n.layer is node.layer][-1:]
    return Tokens(
        model=rebuilt.model(name=model.name),
        embed=rebuilt.model(outputs=[embedding.output], name=f"{model.name}_embedding"),
        fed=fed, layer=node.layer, path=node.path,
        mask_zero=bool(getattr(node.layer, "mask_zero", False)),
        ids_key=ids_key, padding_key=padding_key)


def _inputs_feeding(graph: Graph, node: Node) -> set:
    """The indices of the graph inputs that ``node``'s inputs are computed from."""
    producers = {id(n.output): n for n in graph.nodes}
    firsts = {id(t): i for i, t in enumerate(graph.inputs)}
    found, stack, seen = set(), list(node.inputs), set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in firsts:
            found.add(firsts[id(tensor)])
        elif id(tensor) in producers:
            stack.extend(producers[id(tensor)].inputs)
    return found


# -- attention inside custom layers ---------------------------------------------------------
#: per context (thread, trace): the list the attention scores of recorded layers go to
_RECORDS: contextvars.ContextVar = contextvars.ContextVar("saliencekit_attention", default=None)
_HOOKS: dict = {}  # id(layer) -> [layer, users, the instance's own attribute or _MISSING]
_HOOKS_LOCK = threading.Lock()
_MISSING = object()


def inner_attention(model: Any) -> list:
    """The ``MultiHeadAttention`` layers (subclasses included) held inside the model's
    layers that are not graphs themselves (keras_hub's ``TransformerEncoder``,
    ``ViTEncoder``, ...), in the order their holders are called (each holder's attributes
    in definition order): the attention a flattened graph cannot see."""
    graph = flatten(model)
    found: list = []
    seen: set = set()

    def walk(value, depth=0):
        if depth > 8 or id(value) in seen:
            return
        if isinstance(value, keras.layers.Layer):
            seen.add(id(value))
            if isinstance(value, keras.layers.MultiHeadAttention):
                found.append(value)
                return
            for attribute in vars(value).values():
                walk(attribute, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, depth + 1)

    for node in graph.nodes:
        if not has_graph(node.layer) and not isinstance(node.layer,
                                                        keras.layers.MultiHeadAttention):
            for attribute in vars(node.layer).values():
                walk(attribute, 1)
    return found


@contextlib.contextmanager
def recording_attention(layers: list):
    """Within the block, the attention scores ``(N, heads, T_q, T_k)`` of every call of
    these ``MultiHeadAttention`` layers in this thread and context are appended to the
    list it yields, in call order.

    Keras documents ``MultiHeadAttention._compute_attention`` as the method to override for
    a custom attention; for the duration of the block each layer's instance gets one that
    asks the layer's own for the scores (the explicit softmax path: equal outputs) when a
    recording is on in the caller's context, and is the layer's own otherwise (so other
    threads calling the model meanwhile are not affected). It is removed on exit, however
    the block ends; nothing else of the layer changes."""
    records: list = []
    with _HOOKS_LOCK:
        for layer in layers:
            hook = _HOOKS.get(id(layer))
            if hook is None:
                own = layer.__dict__.get("_compute_attention", _MISSING)
                hook = _HOOKS[id(layer)] = [layer, 0, own]
                object.__setattr__(layer, "_compute_attention", _recorder(layer, own))
            hook[1] += 1
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)
        with _HOOKS_LOCK:
            for layer in layers:
                hook = _HOOKS[id(layer)]
                hook[1] -= 1
                if hook[1] == 0:
                    del _HOOKS[id(layer)]
                    if hook[2] is _MISSING:
                        object.__delattr__(layer, "_compute_attention")
                    else:
                        object.__setattr__(layer, "_compute_attention", hook[2])


def _recorder(layer, own):
    compute = type(layer)._compute_attention.__get__(layer) if own is _MISSING else own

    def recorded(query, key, value, attention_mask=None, training=None,
                 return_attention_scores=False, **kwargs):
        records = _RECORDS.get()
        if records is None:
            return compute(query, key, value, attention_mask, training,
                           return_attention_scores, **kwargs)
        output, scores = compute(query, key, value, attention_mask, training, True, **kwargs)
        records.append(scores)
        return output, scores

    return recorded
