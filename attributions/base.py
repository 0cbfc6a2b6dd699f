"""The base classes: everything around a method's per-batch maths.

A subclass implements one method, ``_batch(inputs, targets, seeds) -> maps`` for one
fixed-size batch, in pure TensorFlow. The base class is the template around it: it compiles
``_batch`` with the post-processing into one kernel and hands it to the shared runner
(:class:`saliencekit.commons.runner.Runner`: checked, encoded, padded batches, seeds,
prefetch, ``tf.distribute``), which runs it batch after batch without host round-trips;
the maps are concatenated once, or written to disk as they come
(:meth:`BlackBoxExplainer.explain_to`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import batch_ops, data, postprocess, runner, sink, validation
from ..commons import model as inspect_model


def _nonfinite_rows(maps: tf.Tensor) -> tf.Tensor:
    """``(N,)``: which maps hold a NaN or an Inf."""
    flat = tf.reshape(maps, (tf.shape(maps)[0], -1))
    return tf.reduce_any(tf.logical_not(tf.math.is_finite(flat)), axis=1)


class BlackBoxExplainer(runner.Runner):
    """Base of every explainer; black-box methods only evaluate the model.

    Parameters
    ----------
    model : keras.Model
        The model to explain (functional, Sequential, subclassed or nested). It is never
        modified.
    batch_size : int or None, default 64
        How many inputs (or perturbed copies of inputs) go through the model at once.
        Memory is bounded by it, whatever the number of inputs or samples. ``None``: all
        at once, as in xplique (every input of an array in one batch, a Dataset in its
        own batches, every perturbed copy of a batch in one pass).
    operator : str, Tasks, callable or None, default None (classification)
        What is explained: ``"classification"``, ``"regression"``, ``"semantic
        segmentation"``, ``"object detection"``, or a callable
        ``g(model, inputs, targets) -> (N,)``.
    jit_compile : bool, default False
        Compile the per-batch kernel with XLA. Worth it on GPUs; measured slower on CPUs.
    strategy : tf.distribute.Strategy or None, default None
        Run each batch's kernel under ``strategy.run``: the batch is split evenly across
        the replicas (``batch_size`` must be a multiple of their number) and the maps are
        gathered back in input order. The maps are the single-device maps (noise is keyed
        by each input's index, not by the replica). The model needs no
        ``strategy.scope()``: its weights are read, never written.

    Calling ``explain(inputs, targets)`` (or the explainer itself) returns a float32
    ``tf.Tensor`` of maps: ``(N, H, W, 1)`` for images, the input's shape otherwise.
    ``explain_to(path, inputs, targets)`` writes them to disk as they are computed.
    """

    #: Methods whose maps are defined for a model with one input only: why (the error says
    #: it); ``None`` for the others.
    _single_input: str | None = None
    #: The input whose frame a method's single map is in, for a multi-input model whose
    #: maps are not one per input (the CAM family's).
    _map_input = 0
    #: The argument giving the value a perturbation method puts in the inputs, named when
    #: its maps hold NaN or Inf (None: the method does not perturb its inputs).
    _perturbed_by: str | None = None

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 64,
        operator: Any = None,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self._setup_runner(model, batch_size, operator, jit_compile, strategy)
        if self._single_input is not None and self._input_structure is not None:
            raise validation.type_error(
                "model", f"a model with one input ({type(self).__name__} "
                f"{self._single_input})", f"a model with {len(self._input_structure)} inputs",
                "Gradient methods (Saliency, IntegratedGradients, ...), Occlusion and the CAM "
                "family explain multi-input models.")
        self._reducer: str | None = None
        self._kernel = self._compile(self._explain_step)

    # -- the public API -------------------------------------------------------------------
    def explain(self, inputs: Any, targets: Any = None, verbose: str | int = "auto") -> tf.Tensor:
        """Explain ``inputs`` for ``targets``.

        Parameters
        ----------
        inputs : array, tf.Tensor or tf.data.Dataset
            A batch ``(N, ...)``, or a batched Dataset yielding ``x`` or ``(x, y)``, of any
            length (unknown cardinality included): it is streamed, a bounded number of
            batches ahead of the computation.
        targets : array, tf.Tensor or None
            Class ids ``(N,)`` or one-hot/weights ``(N, C)`` (see the operator for other
            tasks). ``None`` explains the predicted class (classification, segmentation)
            or a single-output regressor's prediction.
        verbose : "auto", 0 or 1, default "auto"
            A progress bar (``keras.utils.Progbar``) with the throughput in images/s: 1
            always, 0 never, "auto" when the run has more than one batch (a Dataset's bar
            appears once its second batch is explained).
        """
        return self._explain(inputs, targets, verbose)

    def _explain(self, inputs, targets, verbose) -> tf.Tensor:
        """:meth:`explain` (and ``__call__``), which warn of non-finite maps in the caller's
        name."""
        maps = self._run(self._kernel, inputs, targets, verbose=verbose, maps=True)
        parts = tf.nest.flatten(maps)
        if not all(data.read_finite(part) for part in parts):  # a sum: may overflow
            bad = tf.reduce_any(tf.stack([_nonfinite_rows(part) for part in parts]), axis=0)
            rows = int(tf.reduce_sum(tf.cast(bad, tf.int32)))
            if rows:
                self._warn_nonfinite(rows, int(bad.shape[0]), stacklevel=4)
        return maps

    def _warn_nonfinite(self, rows: int, count: int | None, stacklevel: int) -> None:
        """Maps are never silently NaN: say how many and why (they are returned as they are:
        nothing computed is thrown away). ``stacklevel``: that of the user's call."""
        of = "" if count is None else f" of {count}"
        cause = "the model's scores or their gradients were NaN or Inf on these inputs" \
            if self._perturbed_by is None else (
                "the model's scores were NaN or Inf on perturbed copies of the inputs (a value "
                "it cannot take, such as every token replaced by the padding id of a masked "
                f"mean): perturb with another {self._perturbed_by}")
        warnings.warn(f"{type(self).__name__}: {rows}{of} maps hold NaN or Inf values: "
                      f"{cause}.", RuntimeWarning, stacklevel=stacklevel)

    def __call__(self, inputs: Any, targets: Any = None, verbose: str | int = "auto") -> tf.Tensor:
        """Same as :meth:`explain`."""
        return self._explain(inputs, targets, verbose)

    def explain_to(
        self,
        path: str | os.PathLike,
        inputs: Any,
        targets: Any = None,
        verbose: str | int = "auto",
        shard_size: int | None = None,
    ) -> sink.MapStore | None:
        """Explain ``inputs`` like :meth:`explain`, writing the maps to the directory
        ``path`` as they are computed; memory does not grow with the number of inputs.

        The maps go to ``path/maps-00000.npy, ...`` (float32, ``shard_size`` maps each but
        the last, in input order) beside ``index-00000.npy, ...`` (each map's input index,
        int64) and a ``manifest.json``; numpy reads them as they are (``np.load``, memory
        maps included). Each file is written under a temporary name and renamed once
        complete, so a file with its final name is whole.

        Running it again with the same path resumes: shards already complete are not
        recomputed (a Dataset's inputs before them are read and skipped, not explained) and
        a finished directory is returned at once. The explainer's settings (its repr), the
        model's weights, the inputs' shape (and count, when known) and ``shard_size`` must
        be those of the run that wrote the directory; otherwise a ``ValueError`` names the
        difference. The inputs must be the same, in the same order: that is not checked. A
        stochastic explainer resumes with the seed the directory was started with (kept in
        the manifest), so a resumed run's maps are those of an uninterrupted one, even with
        ``seed=None``.

        Parameters
        ----------
        path : str or os.PathLike
            A new or empty directory, or one written by ``explain_to``. One run writes to
            a directory at a time.
        inputs, targets, verbose
            As in :meth:`explain`.
        shard_size : int or None, default None
            Maps per file, a multiple of ``batch_size`` (so a shard is whole batches and a
            resumed run starts on a batch boundary). ``None``: about 64 MB of maps of the
            inputs' size per shard (the directory's own when resuming). A shard is gathered
            in memory before it is written.

        Returns
        -------
        MapStore
            The directory: ``store.load()`` gives the maps in input order (equal to
            :meth:`explain`'s), ``store.index()`` their input indices, ``len(store)``.
            ``None`` on the workers of a multi-worker strategy that are not the chief:
            every worker reads the inputs and explains its share, the chief writes
            (``path`` must be on a filesystem every worker sees, for resuming).
        """
        verbose = runner.check_verbose(verbose)
        if not isinstance(path, (str, os.PathLike)):
            raise validation.type_error("path", "a directory path (str or os.PathLike)",
                                        type(path).__name__)
        if shard_size is not None:
            shard_size = validation.positive_int("shard_size", shard_size)
        batches = self._batches(inputs, targets)
        step = self.batch_size or batches.batch_size  # None: the batches it reads
        if shard_size is not None and shard_size % step:
            raise validation.value_error(
                "shard_size", f"a multiple of batch_size={step} (shards of whole batches)",
                shard_size)
        per_input = 4 * sum(math.prod(shape) for shape in batches.sample_shapes)
        settings = {
            "explainer": repr(self),
            "model_weights": sink.fingerprint(
                w.numpy() for w in inspect_model.model_weights(self._model)),
            "input_shape": [list(shape) for shape in batches.sample_shapes] if
            batches.structured else list(batches.sample_shape),
            "count": batches.count,
        }
        chief = self._strategy is None or runner.is_chief(self._strategy)
        writer = sink.ShardWriter(
            path, settings, shard_size,
            default_shard_size=step * max(1, 2**26 // (per_input * step)),
            write=chief)
        if not writer.complete:
            seed = writer.seed if writer.seed is not None else self._draw_seed()
            writer.start(self._agreed_seed(seed))
            skip = writer.batches_done(batches.batch_size, batches.batch_count)
            if skip is not None:  # None: every shard is there, only the manifest is not
                pending = None  # one batch in flight: fetch its maps once the next is sent
                nonfinite = 0

                def add(offset, maps):
                    flat, layout = sink.rows(batches.given(maps))
                    writer.add(offset, (flat, layout))
                    return int((~np.isfinite(flat.reshape(len(flat), -1))).any(1).sum())

                for offset, maps in self._stream(self._kernel, batches, writer.seed, verbose,
                                                 skip):
                    if pending is not None:
                        nonfinite += add(int(pending[0]), pending[1])
                    pending = offset, maps
                if pending is not None:
                    nonfinite += add(int(pending[0]), pending[1])
                if nonfinite:
                    self._warn_nonfinite(nonfinite, None, stacklevel=3)
            writer.finish()
        return sink.MapStore(path) if chief else None

    def __repr__(self) -> str:
        """``SmoothGrad(model='cnn', batch_size=64, operator='classification', ...)``."""
        shown = [f"model={inspect_model.model_name(self.model)!r}"]
        for name, value in vars(self).items():
            if name.startswith("_") or name == "model" or isinstance(value, (list, dict)):
                continue
            value = getattr(value, "__name__", value)
            if isinstance(value, keras.layers.Layer):  # a chosen layer, by name
                value = value.name
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- what a subclass implements ------------------------------------------------------
    def _batch(self, inputs: tf.Tensor, targets: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        """Maps for one batch. ``seeds`` is ``(B, 2)``: per row, its index and the seed."""
        raise NotImplementedError

    def _explain_step(self, inputs, targets, offset, seed):
        targets = self._resolve_targets(inputs, targets)
        maps = self._postprocessed(self._batch(inputs, targets, runner.seeds(inputs, offset, seed)),
                                   inputs)
        return tf.nest.map_structure(self._user_layout, maps)

    def _postprocessed(self, maps, inputs):
        """:meth:`_postprocess` of each input's map; a method giving one map for a
        multi-input model (a CAM) has it in the frame of the input it is for."""
        if tf.is_tensor(maps) and not tf.is_tensor(inputs):
            inputs = tf.nest.flatten(inputs)[self._map_input]
        return tf.nest.map_structure(self._postprocess, maps, inputs)

    def _user_layout(self, maps: tf.Tensor) -> tf.Tensor:
        """Channels-last maps ``(N, *S, C)`` in the user's layout (``(N, C, *S)`` for a
        channels_first model)."""
        if not self._channels_first or maps.shape.rank < 3:
            return maps
        return tf.transpose(maps, [0, maps.shape.rank - 1, *range(1, maps.shape.rank - 1)])

    def _postprocess(self, maps: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        """Images ``(N, H, W, C)`` get ``(N, H, W, 1)`` maps at their size and series
        ``(N, T, C)`` get ``(N, T, 1)`` (channels reduced by the reducer; ``reducer=None``
        keeps them; low-resolution maps are resized); tables ``(N, D)`` keep their shape."""
        maps = tf.cast(maps, tf.float32)
        rank = inputs.shape.rank
        if rank >= 3 and maps.shape.rank == rank - 1:
            maps = maps[..., None]
        if rank >= 3:
            maps = postprocess.reduce_channels(maps, self._reducer)
        if rank >= 3:
            maps = postprocess.resize_spatial(maps, tuple(inputs.shape[1:-1]))
        return maps

#: ``reducer="dot"``: token maps as the gradient's dot product with each token's embedding
DOT = "dot"
#: per context (thread, trace): ``{id(explainer): token ids}`` of the batch being explained
_TOKEN_IDS: contextvars.ContextVar = contextvars.ContextVar("saliencekit_token_ids",
                                                           default=None)


class WhiteBoxExplainer(BlackBoxExplainer):
    """Base of gradient methods: adds rerouting to a chosen layer and gradients.

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`BlackBoxExplainer`.
    output_layer : str, int or None, default None
        Explain this layer's output instead of the model's (a name, searched in nested
        models too, or an index into ``model.layers``). ``"logits"`` explains the output
        before the model's final softmax or sigmoid, fused in a layer
        (``Dense(..., activation="softmax")``) or not (a layer named ``"logits"``, if the
        model has one, is taken instead). Softmax gradients mix every class.
    reducer : {"max", "mean", "min", "sum"} or None, default "max"
        How image maps are reduced over channels (token maps over the embedding
        dimension); ``None`` keeps the channels. Token maps also take ``"dot"``: the
        gradient's dot product with the token's embedding (gradient x input, signed; for
        methods whose maps already multiply by the input, their sum).
    input_layer : str, int or None, default None (found)
        Token inputs (methods that take them: Saliency, GradientInput, IntegratedGradients
        and the noisy family): gradients cannot be taken with respect to integer ids, so
        they are taken at this layer's output ``(N, T, D)`` (a name or an index into
        ``model.layers``; the model is not changed: the layer's output is fed on a rebuilt
        graph) and reduced over ``D`` by ``reducer``, giving per-token maps ``(N, T)``.
        ``None``: the first ``Embedding`` fed directly by the model's input, if there is
        one (otherwise inputs are explained as they are). Noise and integration paths are
        in that embedding space.
    pad_id : int or None, default None
        Tokens with this id get 0 (an ``Embedding(mask_zero=True)``'s id 0 always does).
    """

    #: whether the method explains token inputs at an embedding (``input_layer``)
    _token_inputs = False

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str | None = "max",
        *,
        input_layer: str | int | None = None,
        pad_id: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(model, batch_size=batch_size, operator=operator, jit_compile=jit_compile,
                         strategy=strategy)
        self.reducer = reducer
        self._reducer = postprocess.check_reducer(
            None if reducer == DOT else reducer)  # "dot": token maps only, checked below
        self.output_layer = output_layer
        if (output_layer is not None or input_layer is not None) and not \
                inspect_model.has_graph(self._model):
            with_what = "output_layer" if output_layer is not None else "input_layer"
            self._model = inspect_model.as_model(
                model, needs_graph=True, argument=f"model (with {with_what})")
        rerouted = inspect_model.reroute(self._model, output_layer)
        self.input_layer = input_layer
        self._tokens = None
        if input_layer is not None and not self._token_inputs:
            raise validation.value_error(
                "input_layer", f"None for {type(self).__name__} (token inputs are explained "
                "by Saliency, GradientInput, IntegratedGradients and the noisy family)",
                repr(input_layer))
        if self._token_inputs:  # a multi-input model's other inputs are passed through
            self._tokens = inspect_model.tokens(rerouted, input_layer)
        if pad_id is not None and (self._tokens is None or isinstance(pad_id, bool) or
                                   not isinstance(pad_id, int)):
            raise validation.value_error(
                "pad_id", "None, or an int for a model explained at an embedding "
                "(input_layer)" if self._tokens is None else "an int token id", repr(pad_id))
        self.pad_id = pad_id
        if reducer == DOT and self._tokens is None:
            raise validation.value_error(
                "reducer", f"None or one of {sorted(postprocess.REDUCERS)} ('dot' is for "
                "token inputs explained at an embedding)", repr(reducer))
        if self._tokens is not None:
            self.input_layer = self._tokens.path
            self._explained = self._tokens.model
        else:
            self._explained = inspect_model.channels_last(inspect_model.differentiable(rerouted))
        # an output_layer is the user's choice: only the model's own output is questioned
        final = inspect_model.final_activation(self._model) if output_layer is None else None
        if final is not None:
            name, kind, _ = final
            mixes = ("its gradients mix every class's logit, so maps show more than the "
                     "class's evidence" if kind == "softmax" else
                     "its gradients vanish where the model is confident")
            warnings.warn(
                f"The explained output comes from a {kind} (layer {name!r}): {mixes}. Pass "
                f"output_layer='logits' to explain the output before the {kind}.",
                UserWarning,
                stacklevel=3,
            )

    # -- token inputs ---------------------------------------------------------------------
    #: the map is already multiplied by the input (``"dot"`` is then its sum)
    _times_input = False

    def _magnitude(self, values: tf.Tensor) -> tf.Tensor:
        """``|values|``, but signed values for ``reducer="dot"`` (gradient x input)."""
        return values if self.reducer == DOT else tf.abs(values)

    @contextlib.contextmanager
    def _explaining_tokens(self, ids: tf.Tensor):
        """Within the block, :meth:`_forward` takes embeddings of the tokens ``ids``."""
        token = _TOKEN_IDS.set({**(_TOKEN_IDS.get() or {}), id(self): ids})
        try:
            yield
        finally:
            _TOKEN_IDS.reset(token)

    def _token_ids(self) -> tf.Tensor | None:
        return (_TOKEN_IDS.get() or {}).get(id(self))

    def _forward(self, inputs):
        ids = self._token_ids()
        if ids is None:
            return super()._forward(inputs)
        # embeddings of copies of the batch (noisy samples, path points), sample-major:
        # the ids (which give the padding mask) and any other inputs are tiled alike
        copies = tf.shape(inputs)[0] // tf.shape(self._tokens.ids(ids))[0]
        with inspect_model.feeding(self._tokens.fed, inputs):
            tiled = tf.nest.map_structure(lambda x: tf.ensure_shape(
                batch_ops.tile(x, copies), (None, *x.shape[1:])), ids)
            outputs = self._explained(tiled, training=False)
        return tf.nest.map_structure(lambda output: tf.cast(output, tf.float32), outputs)

    def _embed(self, ids: tf.Tensor) -> tf.Tensor:
        """The embedding layer's output for ``ids``, float32 ``(B, T, D)``."""
        return tf.cast(self._tokens.embed(ids, training=False), tf.float32)

    def _explain_step(self, inputs, targets, offset, seed):
        if self._tokens is None:
            return super()._explain_step(inputs, targets, offset, seed)
        targets = self._resolve_targets(inputs, targets)
        embedded = self._embed(inputs)
        with self._explaining_tokens(inputs):
            maps = tf.cast(self._batch(embedded, targets, runner.seeds(inputs, offset, seed)),
                           tf.float32)
        if self.reducer == DOT:
            maps = tf.reduce_sum(maps if self._times_input else maps * embedded, axis=-1)
        elif self._reducer is not None:
            maps = postprocess.REDUCERS[self._reducer](maps, axis=-1)
        ids = tf.cast(self._tokens.ids(inputs), tf.int64)
        padding = self._tokens.padding(inputs)  # a padding_mask input's zeros
        for pad in (self.pad_id, 0 if self._tokens.mask_zero else None):
            if pad is not None:
                padding = tf.equal(ids, pad) if padding is None else padding | tf.equal(ids, pad)
        if padding is not None:
            keep = 1.0 - tf.cast(padding, tf.float32)
            maps = maps * (keep if maps.shape.rank == 2 else keep[..., None])
        return maps

    def _check_batches(self, batches: data.Batches) -> None:
        super()._check_batches(batches)
        # the output's shape was just read by calling the model eagerly: a callable that
        # answered with numpy has no gradient, say so before any trace
        if getattr(self._explained, "numpy_level", False):
            raise self._not_differentiable()

    def _not_differentiable(self) -> TypeError:
        return validation.type_error(
            "model", "a model differentiable with respect to its inputs (TensorFlow "
            "operations from the inputs to the outputs)", f"{self._model_kind()}, whose "
            "outputs have no gradient with respect to the inputs",
            "Black-box methods (Occlusion, ...) explain any callable, numpy-level "
            "predictors included.")

    def _gradients(self, inputs: tf.Tensor, targets: tf.Tensor | None) -> tf.Tensor:
        """``d score / d inputs`` for one batch."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            score = self._score(inputs, targets)
        gradients = tape.gradient(score, inputs)
        leaves = tf.nest.flatten(gradients)
        if all(g is None for g in leaves):
            raise self._not_differentiable()
        # an input of a multi-input model that the score does not depend on: zeros
        return tf.nest.pack_sequence_as(inputs, [
            tf.zeros_like(x) if g is None else g
            for x, g in zip(tf.nest.flatten(inputs), leaves)])

    def _model_kind(self) -> str:
        numpy_level = getattr(self._explained, "numpy_level", False)
        return (f"{'a numpy-level callable' if numpy_level else 'the model'} "
                f"{inspect_model.model_name(self.model)!r}")

    def _tapped_gradients(self, tapped: keras.Model, inputs, targets, wrt_inputs=True):
        """Gradients of the score with respect to the extra outputs of ``tapped`` (a model
        returning ``[output, *taps]``) and, if ``wrt_inputs``, to the inputs. Returns
        ``(input_gradient or None, taps, tap_gradients)``. In the compiled kernel, backward
        ops that only lead to the inputs are pruned when ``wrt_inputs`` is False, so the
        backward pass stops at the taps. A model with several outputs (explained by a
        user's operator) gets them all: ``tapped`` returns ``[*outputs, *taps]``."""
        taps: list = []
        outputs = len(tf.nest.flatten(self._explained.outputs))

        def forward(x):
            results = tapped(x, training=False)
            results = list(results) if isinstance(results, (list, tuple)) else [results]
            taps[:] = results[outputs:]
            return tf.nest.map_structure(lambda o: tf.cast(o, tf.float32), (
                results[0] if outputs == 1 else results[:outputs]))

        # Without input gradients, the tape also records the ops that read the weights: the
        # taps of a token model depend on its (float-cast) ids through an integer lookup
        # only, which the tape does not follow (nothing would be recorded). The kernel's
        # backward pass is pruned to the taps either way.
        with tf.GradientTape(watch_accessed_variables=not wrt_inputs) as tape:
            tape.watch(inputs)
            score = self._operator(forward, inputs, targets)
        if wrt_inputs:
            gradients = tape.gradient(score, [inputs, *taps])
            return gradients[0], taps, gradients[1:]
        return None, taps, tape.gradient(score, taps)
