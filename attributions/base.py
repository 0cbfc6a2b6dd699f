"""The base classes: everything around a method's per-batch maths.

A subclass implements one method, ``_batch(inputs, targets, seeds) -> maps`` for one
fixed-size batch, in pure TensorFlow. The base class checks and encodes the user's data,
batches it (padding the last batch so a run traces once), compiles ``_batch`` with the
post-processing into one ``tf.function``, runs it batch after batch without host
round-trips and concatenates the results once.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import data, postprocess, validation
from ..commons import model as inspect_model
from ..operators import get_operator


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.layers.Layer):
        raise validation.type_error(
            "model", "a Keras 3 model (keras.Model or keras.layers.Layer)",
            type(model).__name__,
        )


def _checked_operator(operator):
    """Wrap an operator so that a wrong output shape fails on the first batch's trace."""

    def checked(model, inputs, targets):
        score = tf.convert_to_tensor(operator(model, inputs, targets))
        batch = inputs.shape[0]
        known = batch is not None and score.shape.rank == 1 and score.shape[0] is not None
        if score.shape.rank != 1 or (known and score.shape[0] != batch):
            raise validation.value_error(
                "operator",
                f"a callable returning one score per input, shape ({batch},)",
                f"a tensor of shape {tuple(score.shape)}",
            )
        return tf.cast(score, tf.float32)

    return checked


def _seeds(inputs: tf.Tensor, offset: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``(B, 2)`` per-row ``(index in the user's data, seed)``, built inside the kernel."""
    rows = offset + tf.range(tf.shape(inputs, out_type=tf.int64)[0])
    return tf.stack([rows, tf.fill(tf.shape(rows), seed)], axis=1)


class BlackBoxExplainer:
    """Base of every explainer; black-box methods only evaluate the model.

    Parameters
    ----------
    model : keras.Model
        The model to explain (functional, Sequential, subclassed or nested). It is never
        modified.
    batch_size : int, default 64
        How many inputs (or perturbed copies of inputs) go through the model at once.
        Memory is bounded by it, whatever the number of inputs or samples.
    operator : str, Tasks, callable or None, default None (classification)
        What is explained: ``"classification"``, ``"regression"``, ``"semantic
        segmentation"``, ``"object detection"``, or a callable
        ``g(model, inputs, targets) -> (N,)``.
    jit_compile : bool, default False
        Compile the per-batch kernel with XLA. Worth it on GPUs; measured slower on CPUs.

    Calling ``explain(inputs, targets)`` (or the explainer itself) returns a float32
    ``tf.Tensor`` of maps: ``(N, H, W, 1)`` for images, the input's shape otherwise.
    """

    #: Methods that draw noise set this; their runs repeat with the same ``seed``.
    _stochastic = False

    def __init__(
        self,
        model: keras.Model,
        batch_size: int = 64,
        operator: Any = None,
        jit_compile: bool = False,
    ):
        _check_model(model)
        self.model = model
        self.batch_size = validation.positive_int("batch_size", batch_size)
        self.operator, self._target_rules = get_operator(operator)
        self.jit_compile = bool(jit_compile)
        self._operator = _checked_operator(self.operator)
        self._explained = model  # what the operator evaluates (rerouted by white-box methods)
        self._reducer: str | None = None
        self._output_shapes: dict[tuple, tuple] = {}
        self._kernel = self._compile(self._explain_step)

    # -- the public API -------------------------------------------------------------------
    def explain(self, inputs: Any, targets: Any = None) -> tf.Tensor:
        """Explain ``inputs`` for ``targets``.

        Parameters
        ----------
        inputs : array, tf.Tensor or tf.data.Dataset
            A batch ``(N, ...)``, or a batched Dataset yielding ``x`` or ``(x, y)``.
        targets : array, tf.Tensor or None
            Class ids ``(N,)`` or one-hot/weights ``(N, C)`` (see the operator for other
            tasks). ``None`` explains the predicted class (classification, segmentation)
            or a single-output regressor's prediction.
        """
        return self._run(self._kernel, inputs, targets)

    def __call__(self, inputs: Any, targets: Any = None) -> tf.Tensor:
        """Same as :meth:`explain`."""
        return self.explain(inputs, targets)

    def __repr__(self) -> str:
        """``SmoothGrad(model='cnn', batch_size=64, operator='classification', ...)``."""
        shown = [f"model={self.model.name!r}"]
        for name, value in vars(self).items():
            if name.startswith("_") or name == "model" or isinstance(value, (list, dict)):
                continue
            value = getattr(value, "__name__", value)
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- what a subclass implements ------------------------------------------------------
    def _batch(self, inputs: tf.Tensor, targets: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """Maps for one batch. ``seeds`` is ``(B, 2)``: per row, its index and the seed."""
        raise NotImplementedError

    # -- machinery shared by every method ------------------------------------------------
    def _compile(self, function):
        # functools.partial: TensorFlow keys its "frequent retracing" warning by a
        # function's __code__, which every explainer's bound method shares; a partial has
        # none, so each explainer is counted on its own (each traces once per shape).
        return tf.function(
            functools.partial(function), jit_compile=self.jit_compile, reduce_retracing=True
        )

    def _forward(self, inputs: tf.Tensor) -> tf.Tensor:
        """The explained model in inference mode, with float32 outputs."""
        return tf.cast(self._explained(inputs, training=False), tf.float32)

    def _score(self, inputs: tf.Tensor, targets: tf.Tensor | None) -> tf.Tensor:
        """The operator's ``(B,)`` scores: the compiled batched score function."""
        return self._operator(self._forward, inputs, targets)

    def _resolve_targets(self, inputs, targets):
        """``None`` means the predicted class where the task says so (clean inputs)."""
        rules = self._target_rules
        if targets is not None or rules is None or rules.if_none != "predicted":
            return targets
        outputs = self._forward(inputs)
        return tf.stop_gradient(tf.one_hot(tf.argmax(outputs, axis=-1), outputs.shape[-1]))

    def _explain_step(self, inputs, targets, offset, seed):
        targets = self._resolve_targets(inputs, targets)
        return self._postprocess(self._batch(inputs, targets, _seeds(inputs, offset, seed)), inputs)

    def _postprocess(self, maps: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        """Images ``(N, H, W, C)`` get ``(N, H, W, 1)`` maps at their size; 1-D inputs
        ``(N, T, C)`` keep their shape (low-resolution maps are resized along T)."""
        maps = tf.cast(maps, tf.float32)
        rank = inputs.shape.rank
        if rank >= 3 and maps.shape.rank == rank - 1:
            maps = maps[..., None]
        if rank >= 4:
            maps = postprocess.reduce_channels(maps, self._reducer)
        if rank >= 3:
            maps = postprocess.resize_spatial(maps, tuple(inputs.shape[1:-1]))
        return maps

    def _output_shape(self, sample_shape: tuple) -> tuple:
        if sample_shape not in self._output_shapes:
            self._output_shapes[sample_shape] = inspect_model.output_shape(
                self._explained, sample_shape
            )
        return self._output_shapes[sample_shape]

    def _batches(self, inputs, targets) -> data.Batches:
        return data.batches(
            inputs,
            targets,
            batch_size=self.batch_size,
            model_input_shape=inspect_model.sample_input_shape(self._explained),
            output_shape=self._output_shape,
            rules=self._target_rules,
        )

    def _draw_seed(self) -> int:
        if not self._stochastic:
            return 0
        seed = getattr(self, "seed", None)
        if seed is None:  # fresh entropy, no global random state touched
            return int(np.random.default_rng().integers(2**31))
        return seed

    def _run(self, kernel, inputs, targets):
        """Feed every batch to ``kernel`` and concatenate its (nested) outputs once."""
        batches = self._batches(inputs, targets)
        seed = tf.constant(self._draw_seed(), tf.int64)
        parts = []
        try:
            for x, t, offset, valid in batches:
                out = kernel(x, t, offset, seed)
                if valid is not None:  # cut the padding off
                    out = tf.nest.map_structure(lambda o, v=valid: o[:v], out)
                parts.append(out)
        except tf.errors.InvalidArgumentError as error:
            if data.PIPELINE_CHECK in error.message:
                text = error.message.split(data.PIPELINE_CHECK, 1)[1].split("\n")[0]
                raise ValueError(text) from None
            raise
        if not parts:
            raise validation.value_error("inputs", "at least one input", "an empty Dataset")
        if len(parts) == 1:
            return parts[0]
        return tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *parts)


class WhiteBoxExplainer(BlackBoxExplainer):
    """Base of gradient methods: adds rerouting to a chosen layer and gradients.

    Parameters
    ----------
    model, batch_size, operator, jit_compile
        As in :class:`BlackBoxExplainer`.
    output_layer : str, int or None, default None
        Explain this layer's output instead of the model's (a name, searched in nested
        models too, or an index into ``model.layers``). Use it to explain the logits of a
        model that ends in a softmax: softmax gradients mix every class.
    reducer : {"max", "mean", "min", "sum"} or None, default "max"
        How image maps are reduced over channels; ``None`` keeps the channels.
    """

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int = 64,
        operator: Any = None,
        reducer: str | None = "max",
        jit_compile: bool = False,
    ):
        super().__init__(model, batch_size=batch_size, operator=operator, jit_compile=jit_compile)
        self.reducer = reducer
        self._reducer = postprocess.check_reducer(reducer)
        self.output_layer = output_layer
        self._explained = inspect_model.reroute(model, output_layer)
        softmax = inspect_model.ends_in_softmax(self._explained)
        if softmax is not None:
            name, fused = softmax
            advice = (
                f"Layer {name!r} computes its softmax inside itself (activation='softmax'), so "
                "no layer outputs the logits: build the model with a linear last layer and a "
                "separate keras.layers.Softmax() (keras.applications models: "
                "classifier_activation=None), then explain that model or pass output_layer= "
                "the linear layer."
                if fused
                else f"Pass output_layer= the layer before {name!r} to explain the logits."
            )
            warnings.warn(
                f"The explained output comes from a softmax (layer {name!r}): its gradients mix "
                f"every class's logit, so maps show more than the class's evidence. {advice}",
                UserWarning,
                stacklevel=3,
            )

    def _gradients(self, inputs: tf.Tensor, targets: tf.Tensor | None) -> tf.Tensor:
        """``d score / d inputs`` for one batch."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            score = self._score(inputs, targets)
        return tape.gradient(score, inputs)

    def _tapped_gradients(self, tapped: keras.Model, inputs, targets, wrt_inputs=True):
        """Gradients of the score with respect to the extra outputs of ``tapped`` (a model
        returning ``[output, *taps]``) and, if ``wrt_inputs``, to the inputs. Returns
        ``(input_gradient or None, taps, tap_gradients)``. In the compiled kernel, backward
        ops that only lead to the inputs are pruned when ``wrt_inputs`` is False, so the
        backward pass stops at the taps."""
        taps: list = []

        def forward(x):
            results = tapped(x, training=False)
            results = list(results) if isinstance(results, (list, tuple)) else [results]
            taps[:] = results[1:]
            return tf.cast(results[0], tf.float32)

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            score = self._operator(forward, inputs, targets)
        if wrt_inputs:
            gradients = tape.gradient(score, [inputs, *taps])
            return gradients[0], taps, gradients[1:]
        return None, taps, tape.gradient(score, taps)
