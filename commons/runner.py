"""The batched runner that explainers and metrics share.

A :class:`Runner` turns a user's model into what compiled kernels call (any Keras model,
``tf_keras`` model, SavedModel or callable; multi-input structures), resolves the operator,
and runs a per-batch kernel over the user's data: checked, encoded, fixed-size batches (the
last one padded, so a run traces once), seeds keyed by each input's index, a bounded
prefetch, a ``tf.distribute.Strategy`` splitting each batch across replicas, and progress.
An explainer (:mod:`saliencekit.attributions.base`) and a metric
(:mod:`saliencekit.metrics`) are the same runner with different kernels.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import tensorflow as tf

from ..operators import get_operator
from . import batch_ops, data, validation
from . import model as inspect_model
from . import progress as progress_lib


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


def check_verbose(verbose: Any):
    if isinstance(verbose, bool) or verbose not in ("auto", 0, 1):
        raise validation.value_error("verbose", "'auto', 0 or 1", repr(verbose))
    return verbose


def _cluster(strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.cluster_spec().as_dict() if resolver is not None else {}


def _is_multi_worker(strategy) -> bool:
    return sum(len(tasks) for tasks in _cluster(strategy).values()) > 1


def is_chief(strategy) -> bool:
    """Whether this process writes files: always, but in a multi-worker cluster, where the
    chief (or worker 0 when there is no chief) does, as Keras' checkpoints do."""
    cluster = _cluster(strategy)
    resolver = strategy.cluster_resolver if cluster else None
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def seeds(inputs: tf.Tensor, offset: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``(B, 2)`` per-row ``(index in the user's data, seed)``, built inside the kernel."""
    rows = offset + tf.range(batch_ops.batch_size(inputs))
    return tf.stack([rows, tf.fill(tf.shape(rows), seed)], axis=1)


def _int64(value: int) -> tf.Tensor:
    """An int64 scalar tensor; eager ones (immutable) made once for the seeds that recur."""
    return _eager_int64(value) if tf.executing_eagerly() else tf.constant(value, tf.int64)


@functools.lru_cache(maxsize=16)
def _eager_int64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int64)


def _signature(value, flat: list):
    """What a concrete function is specialised on: the structure, shapes and dtypes of
    nested tensors (``None`` allowed); ``None`` for anything else. The tensors are appended
    to ``flat`` in ``tf.nest`` order (dicts by sorted key), as a concrete function takes
    them flat."""
    if isinstance(value, tf.Tensor):
        flat.append(value)
        return tuple(value.shape), value.dtype
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        parts = tuple(_signature(v, flat) for v in value)
        return None if None in parts else (type(value), parts)
    if isinstance(value, dict):
        parts = tuple((k, _signature(v, flat)) for k, v in sorted(value.items()))
        return None if any(p is None for _, p in parts) else (dict, parts)
    return None


def _flat_call(concrete, args: tuple, flat: list):
    """``call(flat, captures)`` running ``concrete`` on flat tensors, or ``None``.

    A concrete function called with its arguments' structure binds and canonicalises them
    on every call (~0.07 ms, a third of the fixed cost of ``explain()`` on a small model).
    Its flat entry point (``_call_flat``, which records gradients as the structured call
    does) skips that; it is private, so it is used only where it has the signature known
    from TensorFlow 2.16-2.21 and where the concrete function's own unpacking of ``args``
    gives exactly ``flat`` (the same tensors, in the same order). Elsewhere, ``None``: the
    structured call, as before.
    """
    call = getattr(concrete, "_call_flat", None)
    try:
        parameters = list(inspect.signature(call).parameters) if call is not None else []
        function_type = concrete.function_type
        unpacked = function_type.unpack_inputs(function_type.bind(*args))
    except Exception:  # any change of the internals: the structured call
        return None
    if parameters != ["tensor_inputs", "captured_inputs"] or len(unpacked) != len(flat) or \
            any(a is not b for a, b in zip(unpacked, flat)):
        return None
    return call


class _Kernel:
    """A method's per-batch function compiled once per rank of its inputs and targets.

    Each is a ``tf.function`` with ``reduce_retracing``, so the batch axis and sizes may
    relax, but a rank never does: targets of shape ``(N, 7)`` then ``(N, 4, 7)`` get a
    trace each, not one of unknown rank, which rank-based code (operators, messages)
    cannot read. ``functools.partial``: TensorFlow keys its "frequent retracing" warning
    by a function's ``__code__``, which every explainer's bound method shares; a partial
    has none, so each explainer is counted on its own.
    """

    #: Concrete functions kept per exact call signature (shapes and dtypes), at most.
    CONCRETE = 32

    def __init__(self, function, jit_compile: bool):
        self._function = function
        self._jit_compile = jit_compile
        self._compiled: dict = {}
        # exact signature -> concrete function: an eager call skips the tf.function's
        # argument canonicalisation and trace-cache lookup (~0.1-0.2 ms a call, which is
        # the fixed cost of explain() on a small model); traces are the tf.function's own
        self._concrete: dict = {}

    def _for(self, inputs, targets):
        key = (tuple(leaf.shape.rank for leaf in tf.nest.flatten(inputs)),
               None if targets is None else targets.shape.rank)
        if key not in self._compiled:
            self._compiled[key] = tf.function(
                functools.partial(self._function), jit_compile=self._jit_compile,
                reduce_retracing=True)
        return self._compiled[key]

    def __call__(self, inputs, targets, *rest):
        flat: list = []
        key = _signature((inputs, targets, rest), flat) if tf.executing_eagerly() else None
        if key is None:  # traced inside another function, or not only tensors
            return self._for(inputs, targets)(inputs, targets, *rest)
        entry = self._concrete.get(key)
        if entry is None:
            if len(self._concrete) >= self.CONCRETE:
                self._concrete.clear()
            concrete = self.get_concrete_function(inputs, targets, *rest)
            entry = self._concrete[key] = (
                concrete, _flat_call(concrete, (inputs, targets, *rest), flat))
        concrete, call = entry
        if call is None:
            return concrete(inputs, targets, *rest)
        return call(flat, concrete.captured_inputs)

    def get_concrete_function(self, inputs, targets, *rest):
        return self._for(inputs, targets).get_concrete_function(inputs, targets, *rest)

    def experimental_get_tracing_count(self) -> int:
        return sum(f.experimental_get_tracing_count() for f in self._compiled.values())


class Runner:
    """Model, operator and batched execution of a per-batch kernel (see the module).

    Subclasses call :meth:`_setup_runner` in their constructor, compile their kernel with
    :meth:`_compile` and run it with :meth:`_run` (results concatenated) or
    :meth:`_stream` (batch by batch). A kernel is called as ``kernel(inputs, targets,
    offset, seed)`` on one fixed-size batch.
    """

    #: Kernels that draw random numbers set this; their runs repeat with the same ``seed``.
    _stochastic = False
    #: Kernels that need the model's layers (a Keras 3 functional or Sequential graph).
    _needs_graph = False

    def _setup_runner(self, model, batch_size, operator, jit_compile, strategy) -> None:
        """Check and keep the shared settings (the user's ``model`` is never changed)."""
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
        # what the operator evaluates: the model in a channels-last view (explainers may
        # reroute it to another layer)
        self._explained = inspect_model.channels_last(self._model)
        self._output_shapes: dict[tuple, tuple] = {}

    @property
    def _rows_per_batch(self) -> int | None:
        """Inputs per batch handed to the kernel: ``batch_size`` (``None``: all at once: an
        array in one batch, a Dataset in its own batches)."""
        return self.batch_size

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

    def _output_shape(self, sample_shape: tuple) -> tuple:
        if sample_shape not in self._output_shapes:
            self._output_shapes[sample_shape] = inspect_model.output_shape(
                self._explained, sample_shape, single=self._target_rules is not None)
        return self._output_shapes[sample_shape]

    def _sample_input_shape(self):
        """The explained model's input shape, read once per explained model (an explainer
        may reroute ``_explained`` after construction)."""
        cached = getattr(self, "_input_shape_of", None)
        if cached is None or cached[0] is not self._explained:
            cached = self._input_shape_of = (
                self._explained, inspect_model.sample_input_shape(self._explained))
        return cached[1]

    def _check_batches(self, batches: data.Batches) -> None:
        """Checks of a method's own against the inputs' shape, before any trace."""

    def _batches(self, inputs, targets, extra=None) -> data.Batches:
        """``extra``: a per-row structure batched and padded with the inputs and handed to
        the kernel as its fifth argument (a metric's maps)."""
        if self._channels_first:
            inputs = data.channels_last(inputs)
        more = {} if extra is None else {"extra": extra}
        batches = data.batches(
            inputs,
            targets,
            batch_size=self._rows_per_batch,
            model_input_shape=self._sample_input_shape(),
            input_structure=self._input_structure,
            output_shape=self._output_shape,
            rules=self._target_rules,
            multiple_of=self._strategy.num_replicas_in_sync if self._strategy else 1,
            **more,
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

            def distributed(inputs, targets, offset, seed, *extra):
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
                        scalar, scalar, *[part_spec(e) for e in extra])
                parts = strategy.run(step, args=(
                    split(inputs), None if targets is None else split(targets), offsets, seed,
                    *[split(e) for e in extra]))
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
        seed = _int64(seed)
        total = None if batches.batch_count is None else batches.batch_count - len(skip)
        progress = progress_lib.Progress(verbose, total)
        try:
            for x, t, offset, valid, *extra in batches.iterate(skip):
                out = kernel(x, t, offset, seed, *extra)
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

    def _run(self, kernel, inputs, targets, verbose="auto", maps=False, extra=None):
        """Feed every batch to ``kernel`` and concatenate its (nested) outputs once.
        ``maps``: the outputs are maps, one per input, put in the structure the user gave
        the inputs in (a multi-input model's). ``extra``: see :meth:`_batches`."""
        verbose = check_verbose(verbose)
        batches = self._batches(inputs, targets, extra)
        seed = self._agreed_seed(self._draw_seed())
        parts = [out for _, out in self._stream(kernel, batches, seed, verbose)]
        if not parts:
            raise validation.value_error("inputs", "at least one input", "an empty Dataset")
        result = parts[0] if len(parts) == 1 else tf.nest.map_structure(
            lambda *p: tf.concat(p, axis=0), *parts)
        return batches.given(result) if maps else result
