"""The loop shared by black-box methods that score perturbed copies of their inputs
(Rise, Lime, KernelShap, Sobol, HSIC).

A method says how many perturbed copies each input gets, how to make a chunk of them, and
what to accumulate from their scores; the loop runs the chunks one at a time
(``parallel_iterations=1``), each a single forward pass of ``batch_size`` perturbed inputs
(several copies of one input when there are fewer inputs than ``batch_size``), so memory
is bounded by ``batch_size`` whatever the number of samples, and the model appears once in
the graph. Sample ``s`` of input ``i`` is drawn from ``(seed, i, s)`` alone
(:mod:`saliencekit.commons.sampling`), so neither the batch size nor the chunking changes
a seeded run.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from ..commons import batch_ops, validation
from .base import BlackBoxExplainer


class SampledExplainer(BlackBoxExplainer):
    """Base of the perturbation methods: the chunked, seeded loop over samples.

    A subclass implements:

    - :meth:`_evaluations` ``(inputs) -> int``: perturbed copies per input (static);
    - :meth:`_setup` ``(inputs, targets, seeds) -> context``: what a batch needs once
      (anything: a dict of tensors);
    - :meth:`_initial` ``(inputs, context) -> state``: the accumulators (a nest of
      tensors and TensorArrays of fixed shapes);
    - :meth:`_perturb` ``(inputs, seeds, sample, context) -> (perturbed, aux)``: the copies
      ``(copies, B, ...)`` for sample indices ``sample`` ``(copies,)``, and whatever
      :meth:`_update` needs of them;
    - :meth:`_update` ``(state, index, sample, valid, aux, scores, context) -> state``,
      with the chunk's ``index``, ``scores`` ``(copies, B)`` and ``valid`` ``(copies,)``
      (False for the padding samples of the last chunk);
    - :meth:`_finish` ``(inputs, seeds, state, context) -> maps``.
    """

    _stochastic = True
    _single_input = "perturbs the cells or features of one input"
    seed: int | None

    def _set_seed(self, seed) -> None:
        self.seed = validation.optional_seed("seed", seed)

    # -- what a method implements -----------------------------------------------------------
    def _evaluations(self, inputs: tf.Tensor) -> int:
        raise NotImplementedError

    def _setup(self, inputs, targets, seeds) -> Any:
        return {}

    def _initial(self, inputs, context) -> Any:
        raise NotImplementedError

    def _perturb(self, inputs, seeds, sample, context):
        raise NotImplementedError

    def _update(self, state, index, sample, valid, aux, scores, context):
        raise NotImplementedError

    def _finish(self, inputs, seeds, state, context):
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------
    @property
    def _rows_per_batch(self) -> int | None:
        """``batch_size=None`` (xplique's "all at once", kept as ``None``): a pass holds
        about one input's samples, as xplique runs it, never every input's: batches of
        ``nb_samples`` (``nb_design``) inputs, each with its share of the copies per pass
        (memory bounded by the number of samples, not by the number of inputs times it)."""
        if self.batch_size is not None:
            return self.batch_size
        replicas = self._strategy.num_replicas_in_sync if self._strategy else 1
        samples = getattr(self, "nb_samples", None) or self.nb_design
        return max(replicas, samples // replicas * replicas)

    def _copies(self, inputs) -> tf.Tensor:
        """Perturbed copies of each input per forward pass (an int64 scalar, at least one):
        as many as the runner's per-pass budget (``batch_size``) holds; with
        ``batch_size=None``, one input's samples shared by the batch's inputs."""
        batch = tf.shape(inputs, out_type=tf.int64)[0]
        total = self._evaluations(inputs)
        per_pass = total if self.batch_size is None else self._per_pass
        return tf.clip_by_value(per_pass // batch, 1, total)

    def _batch(self, inputs, targets, seeds):
        total = self._evaluations(inputs)
        batch = tf.shape(inputs, out_type=tf.int64)[0]
        copies = self._copies(inputs)
        chunks = (total + copies - 1) // copies
        tiled = batch_ops.tile(targets, copies)  # (copies * B, ...), sample-major
        context = self._setup(inputs, targets, seeds)
        sample_shape = inputs.shape[1:]

        def body(index, state):
            sample = index * copies + tf.range(copies, dtype=tf.int64)
            valid = sample < total
            perturbed, aux = self._perturb(inputs, seeds, tf.minimum(sample, total - 1), context)
            flat = tf.reshape(perturbed, (-1, *sample_shape))
            scores = tf.reshape(self._score(flat, tiled), tf.stack([copies, batch]))
            updated = self._update(state, index, sample, valid, aux, scores, context)
            # the state keeps the shapes it entered with (a static batch size stays static)
            return index + 1, tf.nest.map_structure(
                lambda new, old: tf.ensure_shape(new, old.shape)
                if isinstance(new, tf.Tensor) else new, updated, state)

        state = self._initial(inputs, context)
        _, state = tf.while_loop(
            lambda index, _: index < chunks, body, (tf.constant(0, tf.int64), state),
            # one chunk in flight: while_loop's default of 10 parallel iterations would hold
            # up to 10 chunks of perturbed inputs (and their activations) at once
            parallel_iterations=1)
        return self._finish(inputs, seeds, state, context)


def store_scores(scores: tf.Tensor, sample: tf.Tensor, valid: tf.Tensor, chunk: tf.Tensor
                 ) -> tf.Tensor:
    """Write a chunk's ``(copies, B)`` scores at rows ``sample`` of the ``(total, B)``
    ``scores`` (4 bytes per forward pass; padding samples add nothing). A scatter into a
    fixed-size tensor: XLA compiles it, where a growing TensorArray it does not."""
    total = tf.shape(scores, out_type=tf.int64)[0]
    index = tf.minimum(sample, total - 1)[:, None]
    return tf.tensor_scatter_nd_add(scores, index, chunk * tf.cast(valid, chunk.dtype)[:, None])


def check_images(name: str, inputs: tf.Tensor) -> None:
    if inputs.shape.rank != 4:
        raise validation.value_error(
            "inputs", f"images (N, H, W, C) for {name}", f"shape {tuple(inputs.shape)}",
            "Sobol and HSIC attribution work on a grid of image cells; use Rise, Lime or "
            "KernelShap for series and tables.")
