"""The base classes: everything around a method's per-batch maths.

A subclass implements one method, ``_batch(inputs, targets, seeds) -> maps`` for one
fixed-size batch, in pure TensorFlow. The base class checks and encodes the user's data,
batches it (padding the last batch so a run traces once), compiles ``_batch`` with the
post-processing into one ``tf.function``, runs it batch after batch without host
round-trips and concatenates the results once, or writes them to disk as they come
(:meth:`BlackBoxExplainer.explain_to`). With a ``tf.distribute.Strategy`` each batch is
split across the replicas and the maps gathered back in order.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import batch_ops, data, postprocess, sink, validation
from ..commons import model as inspect_model
from ..commons import progress as progress_lib
from ..operators import get_operator


def _checked_operator(operator):
    """Wrap an operator so that a wrong output shape fails on the first batch's trace."""

    def checked(model, inputs, targets):
        score = tf.convert_to_tensor(operator(model, inputs, targets))
        batch = batch_ops.first(inputs).shape[0]
        known = batch is not None and score.shape.rank == 1 and score.shape[0] is not None
        if score.shape.rank != 1 or (known and score.shape[0] != batch):
            raise validation.value_error(
                "operator",
                f"a callable returning one score per input, shape ({batch},)",
                f"a tensor of shape {tuple(score.shape)}",
            )
        return tf.cast(score, tf.float32)

    return checked


def _check_strategy(strategy: Any, batch_size: int | None):
    if strategy is None:
        return None
    if not isinstance(strategy, tf.distribute.Strategy):
        raise validation.type_error(
            "strategy", "None or a tf.distribute.Strategy (e.g. tf.distribute.MirroredStrategy())",
            type(strategy).__name__)
    replicas = strategy.num_replicas_in_sync
    if batch_size is not None and batch_size % replicas:
        raise validation.value_error(
            "batch_size", f"a multiple of the {replicas} replicas of strategy "
            f"{type(strategy).__name__} (each replica explains batch_size / {replicas} inputs)",
            batch_size)
    return strategy


def _check_verbose(verbose: Any):
    if isinstance(verbose, bool) or verbose not in ("auto", 0, 1):
        raise validation.value_error("verbose", "'auto', 0 or 1", repr(verbose))
    return verbose


def _cluster(strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.cluster_spec().as_dict() if resolver is not None else {}


def _is_multi_worker(strategy) -> bool:
    return sum(len(tasks) for tasks in _cluster(strategy).values()) > 1


def _is_chief(strategy) -> bool:
    """Whether this process writes files: always, but in a multi-worker cluster, where the
    chief (or worker 0 when there is no chief) does, as Keras' checkpoints do."""
    cluster = _cluster(strategy)
    resolver = strategy.cluster_resolver if cluster else None
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def _seeds(inputs: tf.Tensor, offset: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``(B, 2)`` per-row ``(index in the user's data, seed)``, built inside the kernel."""
    rows = offset + tf.range(batch_ops.batch_size(inputs))
    return tf.stack([rows, tf.fill(tf.shape(rows), seed)], axis=1)


class _Kernel:
    """A method's per-batch function compiled once per rank of its inputs and targets.

    Each is a ``tf.function`` with ``reduce_retracing``, so the batch axis and sizes may
    relax, but a rank never does: targets of shape ``(N, 7)`` then ``(N, 4, 7)`` get a
    trace each, not one of unknown rank, which rank-based code (operators, messages)
    cannot read. ``functools.partial``: TensorFlow keys its "frequent retracing" warning
    by a function's ``__code__``, which every explainer's bound method shares; a partial
    has none, so each explainer is counted on its own.
    """

    def __init__(self, function, jit_compile: bool):
        self._function = function
        self._jit_compile = jit_compile
        self._compiled: dict = {}

    def _for(self, inputs, targets):
        key = (tuple(leaf.shape.rank for leaf in tf.nest.flatten(inputs)),
               None if targets is None else targets.shape.rank)
        if key not in self._compiled:
            self._compiled[key] = tf.function(
                functools.partial(self._function), jit_compile=self._jit_compile,
                reduce_retracing=True)
        return self._compiled[key]

    def __call__(self, inputs, targets, *rest):
        return self._for(inputs, targets)(inputs, targets, *rest)

    def get_concrete_function(self, inputs, targets, *rest):
        return self._for(inputs, targets).get_concrete_function(inputs, targets, *rest)

    def experimental_get_tracing_count(self) -> int:
        return sum(f.experimental_get_tracing_count() for f in self._compiled.values())


class BlackBoxExplainer:
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

    #: Methods that draw noise set this; their runs repeat with the same ``seed``.
    _stochastic = False
    #: Methods that need the model's layers (a Keras 3 functional or Sequential graph).
    _needs_graph = False
    #: Methods whose maps are defined for a model with one input only.
    _single_input = False
    #: The input whose frame a method's single map is in, for a multi-input model whose
    #: maps are not one per input (the CAM family's).
    _map_input = 0

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 64,
        operator: Any = None,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.model = model  # the user's object, never changed
        # what the kernels call: a Keras 3 model (one-element input/output lists unlisted;
        # a tf_keras graph converted for methods that need layers) or a CallableModel
        self._model = inspect_model.as_model(model, needs_graph=self._needs_graph)
        # None: all at once, as in xplique (every input, or a Dataset's own batches)
        self.batch_size = None if batch_size is None else validation.positive_int(
            "batch_size", batch_size)
        self.operator, self._target_rules = get_operator(operator)
        self.jit_compile = bool(jit_compile)
        self._set_strategy(strategy)
        self._operator = _checked_operator(self.operator)
        # channels_first models are explained through a channels-last view: the kernels see
        # (N, *S, C) inputs and maps; the user's layout is restored at the kernel's end
        self._channels_first = inspect_model.is_channels_first(self._model)
        # a multi-input model's inputs (None for one input): batches, seeds and maps follow it
        self._input_structure = inspect_model.input_structure(self._model)
        if self._single_input and self._input_structure is not None:
            raise validation.type_error(
                "model", f"a model with one input ({type(self).__name__} sums terms of "
                "every layer into one map of the input)", f"a model with "
                f"{len(self._input_structure)} inputs", "Gradient methods (Saliency, "
                "IntegratedGradients, ...), Occlusion and the CAM family explain "
                "multi-input models.")
        # what the operator evaluates (rerouted by white-box methods)
        self._explained = inspect_model.channels_last(self._model)
        self._reducer: str | None = None
        self._output_shapes: dict[tuple, tuple] = {}
        self._kernel = self._compile(self._explain_step)

    @property
    def _per_pass(self) -> int:
        """How many inputs (or perturbed copies) one forward pass may hold: ``batch_size``,
        or with ``batch_size=None`` as many as there are (all at once)."""
        return self.batch_size or 2**30

    @property
    def strategy(self) -> tf.distribute.Strategy | None:
        """The ``tf.distribute.Strategy`` batches run under, or ``None``."""
        return self._strategy

    def _set_strategy(self, strategy) -> None:
        # private, with a read-only property: the repr (and explain_to's manifest) lists
        # what determines the maps, which the strategy does not
        self._strategy = _check_strategy(strategy, self.batch_size)
        self._distributed: dict = {}  # compiled kernel -> its strategy.run wrapper

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
        return self._run(self._kernel, inputs, targets, verbose=verbose, maps=True)

    def __call__(self, inputs: Any, targets: Any = None, verbose: str | int = "auto") -> tf.Tensor:
        """Same as :meth:`explain`."""
        return self.explain(inputs, targets, verbose=verbose)

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
        verbose = _check_verbose(verbose)
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
        chief = self._strategy is None or _is_chief(self._strategy)
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
                for offset, maps in self._stream(self._kernel, batches, writer.seed, verbose,
                                                 skip):
                    if pending is not None:
                        writer.add(int(pending[0]), sink.rows(batches.given(pending[1])))
                    pending = offset, maps
                if pending is not None:
                    writer.add(int(pending[0]), sink.rows(batches.given(pending[1])))
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

    # -- machinery shared by every method ------------------------------------------------
    def _compile(self, function):
        return _Kernel(function, self.jit_compile)

    def _forward(self, inputs: tf.Tensor) -> tf.Tensor:
        """The explained model in inference mode, with float32 outputs."""
        outputs = self._explained(inputs, training=False)
        return tf.nest.map_structure(lambda output: tf.cast(output, tf.float32), outputs)

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
        maps = self._postprocessed(self._batch(inputs, targets, _seeds(inputs, offset, seed)),
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

    def _output_shape(self, sample_shape: tuple) -> tuple:
        if sample_shape not in self._output_shapes:
            self._output_shapes[sample_shape] = inspect_model.output_shape(
                self._explained, sample_shape, single=self._target_rules is not None)
        return self._output_shapes[sample_shape]

    def _check_batches(self, batches: data.Batches) -> None:
        """Checks of a method's own against the inputs' shape, before any trace."""

    def _batches(self, inputs, targets) -> data.Batches:
        if self._channels_first:
            inputs = data.channels_last(inputs)
        batches = data.batches(
            inputs,
            targets,
            batch_size=self.batch_size,
            model_input_shape=inspect_model.sample_input_shape(self._explained),
            input_structure=self._input_structure,
            output_shape=self._output_shape,
            rules=self._target_rules,
            multiple_of=self._strategy.num_replicas_in_sync if self._strategy else 1,
        )
        self._check_batches(batches)
        return batches

    def _draw_seed(self) -> int:
        if not self._stochastic:
            return 0
        seed = getattr(self, "seed", None)
        if seed is None:  # fresh entropy, no global random state touched
            return int(np.random.default_rng().integers(2**31))
        return seed

    def _on_devices(self, kernel):
        """``kernel``, or with a strategy its wrapper that splits each batch across the
        replicas, runs ``kernel`` on each part under ``strategy.run`` and gathers the parts
        in order (built once per kernel)."""
        strategy = self._strategy
        if strategy is None:
            return kernel
        if kernel not in self._distributed:
            replicas = strategy.num_replicas_in_sync

            def split(tensors):  # on the host, before each replica copies its part
                pieces = [tf.split(t, replicas) for t in tf.nest.flatten(tensors)]
                parts = [tf.nest.pack_sequence_as(tensors, [p[i] for p in pieces])
                         for i in range(replicas)]
                return strategy.experimental_distribute_values_from_function(
                    lambda context: tf.nest.map_structure(
                        tf.identity, parts[context.replica_id_in_sync_group]))

            def part_spec(tensors):
                def one(tensor):
                    batch = tensor.shape[0]
                    return tf.TensorSpec((None if batch is None else batch // replicas,
                                          *tensor.shape[1:]), tensor.dtype)
                return tf.nest.map_structure(one, tensors)

            def distributed(inputs, targets, offset, seed):
                per_replica = batch_ops.batch_size(inputs) // replicas
                # each replica's rows keep their index in the user's data, which keys noise
                offsets = strategy.experimental_distribute_values_from_function(
                    lambda context: offset + context.replica_id_in_sync_group * per_replica)
                step = kernel
                if hasattr(kernel, "get_concrete_function"):
                    # traced here, once: replicas trace in threads, and AutoGraph's
                    # conversion of the same methods in concurrent threads was seen to fail
                    scalar = tf.TensorSpec((), tf.int64)
                    step = kernel.get_concrete_function(
                        part_spec(inputs), None if targets is None else part_spec(targets),
                        scalar, scalar)
                parts = strategy.run(step, args=(
                    split(inputs), None if targets is None else split(targets), offsets, seed))
                return tf.nest.map_structure(lambda part: strategy.gather(part, axis=0), parts)

            self._distributed[kernel] = tf.function(
                functools.partial(distributed), reduce_retracing=True)
        return self._distributed[kernel]

    def _agreed_seed(self, seed: int) -> int:
        """The seed every worker of a multi-worker run uses: replica 0's (the chief's).
        Each worker draws its own for ``seed=None``; the rows its replicas explain must
        get the same noise as on one device."""
        strategy = self._strategy
        if strategy is None or not self._stochastic or not _is_multi_worker(strategy):
            return seed

        @tf.function
        def gather():
            local = strategy.run(lambda: tf.constant([seed], tf.int64))
            return strategy.gather(local, axis=0)[0]

        return int(gather())

    def _stream(self, kernel, batches: data.Batches, seed: int, verbose, skip=()):
        """Yield ``(offset, outputs)`` of every batch, the padding cut off."""
        kernel = self._on_devices(kernel)
        seed = tf.constant(seed, tf.int64)
        total = None if batches.batch_count is None else batches.batch_count - len(skip)
        progress = progress_lib.Progress(verbose, total)
        try:
            for x, t, offset, valid in batches.iterate(skip):
                out = kernel(x, t, offset, seed)
                if valid is not None:  # cut the padding off
                    out = tf.nest.map_structure(lambda o, v=valid: o[:v], out)
                progress.update(batches.batch_size if valid is None else valid)
                yield offset, out
        except tf.errors.InvalidArgumentError as error:
            if data.PIPELINE_CHECK in error.message:
                text = error.message.split(data.PIPELINE_CHECK, 1)[1].split("\n")[0]
                raise ValueError(text) from None
            raise
        progress.close()

    def _run(self, kernel, inputs, targets, verbose="auto", maps=False):
        """Feed every batch to ``kernel`` and concatenate its (nested) outputs once.
        ``maps``: the outputs are maps, one per input, put in the structure the user gave
        the inputs in (a multi-input model's)."""
        verbose = _check_verbose(verbose)
        batches = self._batches(inputs, targets)
        seed = self._agreed_seed(self._draw_seed())
        parts = [out for _, out in self._stream(kernel, batches, seed, verbose)]
        if not parts:
            raise validation.value_error("inputs", "at least one input", "an empty Dataset")
        result = parts[0] if len(parts) == 1 else tf.nest.map_structure(
            lambda *p: tf.concat(p, axis=0), *parts)
        return batches.given(result) if maps else result


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
        How image maps are reduced over channels; ``None`` keeps the channels.
    """

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
        super().__init__(model, batch_size=batch_size, operator=operator, jit_compile=jit_compile,
                         strategy=strategy)
        self.reducer = reducer
        self._reducer = postprocess.check_reducer(reducer)
        self.output_layer = output_layer
        if output_layer is not None and not inspect_model.has_graph(self._model):
            self._model = inspect_model.as_model(
                model, needs_graph=True, argument="model (with output_layer)")
        self._explained = inspect_model.channels_last(
            inspect_model.differentiable(inspect_model.reroute(self._model, output_layer)))
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

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            score = self._operator(forward, inputs, targets)
        if wrt_inputs:
            gradients = tape.gradient(score, [inputs, *taps])
            return gradients[0], taps, gradients[1:]
        return None, taps, tape.gradient(score, taps)
