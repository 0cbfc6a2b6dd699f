"""User data -> checked, encoded, fixed-size batches.

Inputs may be a numpy array, anything ``np.asarray`` takes, a ``tf.Tensor`` or a batched
``tf.data.Dataset`` yielding ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``
(Keras' ``model.predict`` convention). Targets are checked and encoded once: class ids
become one-hot rows of the model's output width. Every batch handed to a kernel has the
same size (the last one is padded, and the padding cut off afterwards), so a run of any
length traces the kernel once.

A Dataset is streamed: it is read batch by batch through a pipeline that prefetches
:data:`PREFETCH` batches ahead of the kernel, so input work overlaps compute and the inputs
in memory are a bounded number of batches (the prefetched ones, those in flight in the
parallel maps, at most one per core, and the one being explained), whatever its length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from ..operators import TargetRules
from . import validation

#: Prefix of the messages of checks that run inside a tf.data pipeline; the explain loop
#: turns the resulting ``InvalidArgumentError`` into a ``ValueError`` with this message.
PIPELINE_CHECK = "saliencekit check failed: "

#: Fixed-size batches a Dataset pipeline holds ready ahead of the kernel. A fixed depth,
#: not AUTOTUNE (which may grow its buffer up to a share of the RAM): the kernel is the
#: slow stage, two batches keep it fed, and memory stays bounded by a known number.
PREFETCH = 2


@dataclass
class Batches:
    """Fixed-size batches ``(inputs, targets, offset, valid)`` of one explain call.

    ``offset`` (an int64 scalar tensor) is the index of the batch's first row in the user's
    data; ``valid`` how many rows of the batch are real, or ``None`` when all are. Batch
    ``i`` starts at row ``i * batch_size``. ``count`` (inputs) and ``batch_count`` (batches)
    are ``None`` when unknown before the end (a Dataset).
    """

    sample_shape: tuple
    batch_size: int
    has_targets: bool
    _source: Callable[[frozenset], Iterator]
    count: int | None = None
    batch_count: int | None = None

    def __iter__(self):
        return self._source(frozenset())

    def iterate(self, skip: Sequence[int] = ()) -> Iterator:
        """The batches, but those whose index is in ``skip``: a Dataset's are read and
        dropped in the pipeline, before padding and before any kernel sees them."""
        return self._source(frozenset(skip))


def _is_dataset(value: Any) -> bool:
    return isinstance(value, tf.data.Dataset)


def _check_dtype(argument: str, dtype: tf.DType) -> None:
    if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
        raise validation.type_error(argument, "a numeric or boolean array", f"dtype {dtype.name}")


def _to_tensor(argument: str, value: Any) -> tf.Tensor:
    """Convert without copying twice; refuse strings, objects and ragged lists clearly."""
    if isinstance(value, tf.Tensor):
        tensor = value
    else:
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise validation.type_error(argument, "a rectangular array", "ragged data") from error
        if array.dtype.kind in "USOV":
            raise validation.type_error(
                argument, "a numeric or boolean array", f"an array of dtype {array.dtype}"
            )
        tensor = tf.convert_to_tensor(array)
    _check_dtype(argument, tensor.dtype)
    return tensor


def _shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_sample_shape(sample_shape: tuple, model_shape: tuple | None, given: str) -> None:
    if model_shape is None:
        return
    expected = f"inputs of shape (N, {', '.join(str(d) for d in model_shape)})"
    if len(sample_shape) != len(model_shape) or any(
        m is not None and s is not None and m != s for s, m in zip(sample_shape, model_shape)
    ):
        raise validation.value_error(
            "inputs", expected + " for this model", f"shape {given}"
        )


def _resolve_rank(spec: str, output_rank: int) -> int:
    if spec == "output":
        return output_rank
    if spec == "output-1":
        return output_rank - 1
    return int(spec)


def _expected_targets(rules: TargetRules, output_shape: tuple) -> str:
    rank = len(output_shape)
    width = output_shape[-1]
    shapes = []
    for spec in rules.ids_ranks:
        r = _resolve_rank(spec, rank)
        shapes.append(f"class ids of shape (N{''.join(f', {d}' for d in output_shape[1:r])})")
    for spec in rules.float_ranks:
        r = _resolve_rank(spec, rank)
        if r == rank and rules.match_output_shape:
            shapes.append("a float mask of the output's shape (N, "
                          + ", ".join(map(str, output_shape[1:])) + ")")
        elif r == 2:
            shapes.append(f"one-hot or weights of shape (N, {width})")
        else:
            shapes.append(f"float targets of shape (N, K, {width})")
    return " or ".join(shapes)


def to_output_rank(targets: tf.Tensor, rules: TargetRules | None, output_shape: tuple):
    """``(N, C)`` -> ``(N, 1, ..., 1, C)`` where the task asks for the output's rank."""
    if rules is None or not rules.to_output_rank or targets.shape.rank >= len(output_shape):
        return targets
    ones = [1] * (len(output_shape) - targets.shape.rank)
    return tf.reshape(targets, [-1, *ones, targets.shape[-1]])


def encode_targets(
    targets: Any, count: int, rules: TargetRules | None, output_shape: tuple
) -> tf.Tensor:
    """Check in-memory targets against the inputs and the model's output; one-hot ids."""
    return to_output_rank(_encode_targets(targets, count, rules, output_shape), rules,
                          output_shape)


def _encode_targets(targets, count, rules, output_shape):
    tensor = _to_tensor("targets", targets)
    if tensor.shape.rank == 0 or tensor.shape[0] != count:
        raise validation.value_error(
            "targets", f"one target per input ({count} along the first axis)",
            f"shape {tuple(tensor.shape)}",
        )
    if rules is None:  # a user's operator: passed through as floats
        return tf.cast(tensor, tf.float32)
    rank, out_rank, width = tensor.shape.rank, len(output_shape), output_shape[-1]
    expected = _expected_targets(rules, output_shape)
    id_ranks = {_resolve_rank(s, out_rank) for s in rules.ids_ranks}
    float_ranks = {_resolve_rank(s, out_rank) for s in rules.float_ranks}
    if rank in id_ranks:
        values = tensor.numpy()
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise validation.value_error("targets", expected, "non-integer values of shape "
                                         f"{tuple(tensor.shape)}")
        if width is not None and (values.min() < 0 or values.max() >= width):
            raise validation.value_error(
                "targets", f"class ids in [0, {width}) for a model with {width} outputs",
                f"ids from {values.min():g} to {values.max():g}",
            )
        _check_spatial(tensor.shape[1:], output_shape[1:rank], expected)
        return tf.one_hot(tf.cast(tensor, tf.int32), width, dtype=tf.float32)
    if rank in float_ranks:
        if tensor.shape[-1] != width:
            raise validation.value_error(
                "targets", expected + f" (the model has {width} outputs per position)",
                f"shape {tuple(tensor.shape)}",
            )
        if rank == out_rank and rules.match_output_shape:
            _check_spatial(tensor.shape[1:], output_shape[1:], expected)
        tensor = tf.cast(tensor, tf.float32)
        validation.finite_array("targets", tensor.numpy())
        if rules.nonzero_rows:
            flat = tf.reshape(tensor, (count, -1))
            empty = np.flatnonzero(~tf.reduce_any(flat != 0, axis=1).numpy())
            if empty.size:
                raise validation.value_error(
                    "targets", "rows that select at least one output (a non-zero entry)",
                    f"{empty.size} all-zero rows (first: row {empty[0]})",
                    "An all-zero target explains nothing and would give an all-zero map.",
                )
        return tensor
    raise validation.value_error("targets", expected, f"shape {tuple(tensor.shape)}")


def _check_spatial(given, expected_shape, expected: str) -> None:
    for g, e in zip(given, expected_shape):
        if e is not None and g is not None and g != e:
            raise validation.value_error("targets", expected, "shape (N, "
                                         + ", ".join(map(str, given)) + ")")


def check_none_targets(rules: TargetRules | None, output_shape: tuple) -> None:
    """``targets=None`` is allowed only where the task gives it a meaning."""
    if rules is None or rules.if_none == "predicted":
        return
    if rules.if_none == "single output":
        size = int(np.prod([d for d in output_shape[1:] if d is not None]))
        if size == 1:
            return
        raise validation.value_error(
            "targets",
            "output indices (N,) or output weights (N, D) for a model with several outputs",
            f"None for a model with output shape {output_shape}",
        )
    raise validation.value_error("targets", "targets for this operator", "None")


def _pad(tensor: tf.Tensor, size: int) -> tf.Tensor:
    missing = size - tf.shape(tensor)[0]
    paddings = tf.concat([[[0, missing]], tf.zeros((tensor.shape.rank - 1, 2), tf.int32)], 0)
    return tf.ensure_shape(tf.pad(tensor, paddings), (size, *tensor.shape[1:]))


def from_arrays(
    inputs: Any,
    targets: Any,
    *,
    batch_size: int,
    model_input_shape: tuple | None,
    output_shape: Callable[[tuple], tuple],
    rules: TargetRules | None,
    multiple_of: int = 1,
) -> Batches:
    tensor = _to_tensor("inputs", inputs)
    if tensor.shape.rank < 2:
        raise validation.value_error(
            "inputs", "a batch of shape (N, ...) with N inputs", f"shape {tuple(tensor.shape)}",
            "Add a batch axis, e.g. inputs[None].",
        )
    count = int(tensor.shape[0])
    if count == 0:
        raise validation.value_error("inputs", "at least one input", "an empty batch")
    sample_shape = tuple(tensor.shape[1:])
    _check_sample_shape(sample_shape, model_input_shape, _shape_text(tensor.shape))
    tensor = tf.cast(tensor, tf.float32)
    if not bool(tf.reduce_all(tf.math.is_finite(tensor))):
        validation.finite_array("inputs", tensor.numpy())
    out_shape = output_shape(sample_shape)
    if targets is None:
        check_none_targets(rules, out_shape)
        encoded = None
    else:
        encoded = encode_targets(targets, count, rules, out_shape)
    # one short batch when the inputs are fewer than batch_size (rounded up to a multiple
    # of the replicas of a distribution strategy)
    size = min(batch_size, -(-count // multiple_of) * multiple_of)

    def source(skip):
        if count == size and not skip:  # one batch: no slicing, no padding
            yield tensor, encoded, tf.constant(0, tf.int64), None
            return
        for number, start in enumerate(range(0, count, size)):
            if number in skip:
                continue
            stop = min(start + size, count)
            x = tensor[start:stop]
            t = None if encoded is None else encoded[start:stop]
            valid = None
            if stop - start < size:
                x = _pad(x, size)
                t = None if t is None else _pad(t, size)
                valid = stop - start
            yield x, t, tf.constant(start, tf.int64), valid

    return Batches(sample_shape, size, encoded is not None, source, count, -(-count // size))


def _split_element(spec):
    """(x_spec, y_spec or None) of a dataset element spec, or raise."""
    if isinstance(spec, tf.TensorSpec):
        return spec, None
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3 and all(
        isinstance(s, tf.TensorSpec) for s in spec
    ):
        return spec[0], (spec[1] if len(spec) > 1 else None)
    raise validation.type_error(
        "inputs", "a Dataset yielding x, (x,), (x, y) or (x, y, sample_weight) tensors",
        f"a Dataset with element_spec {spec}",
    )


def from_dataset(
    dataset: tf.data.Dataset,
    targets: Any,
    *,
    batch_size: int,
    model_input_shape: tuple | None,
    output_shape: Callable[[tuple], tuple],
    rules: TargetRules | None,
) -> Batches:
    x_spec, y_spec = _split_element(dataset.element_spec)
    if targets is not None:
        raise validation.value_error(
            "targets",
            "None when inputs is a Dataset (put the targets in it: yield (x, y))",
            validation._describe(targets),
        )
    _check_dtype("inputs", x_spec.dtype)
    unbatched = model_input_shape is not None and x_spec.shape.rank == len(model_input_shape)
    if x_spec.shape.rank is None or x_spec.shape.rank < 2 or unbatched:
        raise validation.value_error(
            "inputs", "a batched Dataset (elements of shape (batch, ...), as model.predict takes)",
            "elements of shape "
            + (_shape_text(x_spec.shape) if x_spec.shape.rank is not None else "(unknown rank)"),
            "Call .batch(n) on it.",
        )
    sample_shape = tuple(x_spec.shape[1:])
    if model_input_shape is not None and len(model_input_shape) == len(sample_shape):
        sample_shape = tuple(
            s if s is not None else m for s, m in zip(sample_shape, model_input_shape)
        )
    _check_sample_shape(
        sample_shape, model_input_shape, "(batch, " + _shape_text(x_spec.shape[1:])[1:]
    )
    if any(d is None for d in sample_shape):
        first = next(iter(dataset.take(1)))
        first = first if isinstance(first, tf.Tensor) else first[0]
        sample_shape = tuple(first.shape[1:])
    out_shape = output_shape(sample_shape)
    if y_spec is None:
        check_none_targets(rules, out_shape)
    else:
        _check_dtype("targets", y_spec.dtype)
    encode = None
    if y_spec is not None:
        encoder = _dataset_target_encoder(y_spec, rules, out_shape)

        def encode(y):
            return to_output_rank(encoder(y), rules, out_shape)

    def select(*element):
        if len(element) == 1 and isinstance(element[0], tuple):
            element = element[0]
        x = element[0]
        x = tf.ensure_shape(tf.cast(x, tf.float32), (None, *sample_shape))
        x = tf.debugging.assert_all_finite(x, PIPELINE_CHECK + validation.message(
            "inputs", "finite values", "NaN or Inf values in the Dataset"))
        if encode is None:
            return (x,)
        return x, encode(element[1])

    def pad(index, batch):
        valid = tf.shape(batch[0])[0]
        padded = tuple(_pad(b, batch_size) for b in batch)
        return padded, index * batch_size, valid

    batched = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE).rebatch(batch_size)

    def source(skip):
        pipeline = batched.enumerate()
        if skip:  # dropped before padding and before the kernel: only the input is read
            skipped = np.zeros(max(skip) + 2, bool)  # the last entry stands for "beyond"
            skipped[list(skip)] = True
            skipped = tf.constant(skipped)
            beyond = len(skipped) - 1
            pipeline = pipeline.filter(
                lambda index, _: ~tf.gather(skipped, tf.minimum(index, beyond)))
        pipeline = pipeline.map(pad, num_parallel_calls=tf.data.AUTOTUNE).prefetch(PREFETCH)
        for padded, offset, valid in pipeline:
            t = padded[1] if len(padded) > 1 else None
            valid = int(valid)  # a host-side scalar of the pipeline: no device sync
            yield padded[0], t, offset, (None if valid == batch_size else valid)

    return Batches(sample_shape, batch_size, y_spec is not None, source)


def _dataset_target_encoder(y_spec, rules: TargetRules | None, output_shape: tuple):
    """A tf function encoding one batch of dataset targets, with checks as assertions."""
    if rules is None:
        return lambda y: tf.cast(y, tf.float32)
    out_rank, width = len(output_shape), output_shape[-1]
    rank = y_spec.shape.rank
    expected = _expected_targets(rules, output_shape)
    id_ranks = {_resolve_rank(s, out_rank) for s in rules.ids_ranks}
    float_ranks = {_resolve_rank(s, out_rank) for s in rules.float_ranks}
    if rank in id_ranks:
        def encode(y):
            ids = tf.cast(y, tf.int64)
            checks = [
                tf.debugging.assert_equal(
                    tf.cast(ids, y.dtype), y,
                    message=PIPELINE_CHECK
                    + validation.message("targets", expected, "non-integer ids")),
                tf.debugging.assert_greater_equal(
                    ids, tf.constant(0, tf.int64),
                    message=PIPELINE_CHECK + validation.message(
                        "targets", f"class ids in [0, {width})", "a negative id")),
                tf.debugging.assert_less(
                    ids, tf.constant(width, tf.int64),
                    message=PIPELINE_CHECK + validation.message(
                        "targets", f"class ids in [0, {width})", f"an id >= {width}")),
            ]
            with tf.control_dependencies(checks):
                return tf.one_hot(ids, width, dtype=tf.float32)
        return encode
    if rank in float_ranks and y_spec.shape[-1] == width:
        def encode(y):
            y = tf.cast(y, tf.float32)
            if not rules.nonzero_rows:
                return y
            flat = tf.reshape(y, (tf.shape(y)[0], -1))
            check = tf.debugging.assert_equal(
                tf.reduce_all(tf.reduce_any(flat != 0, axis=1)), True,
                message=PIPELINE_CHECK + validation.message(
                    "targets", "rows that select at least one output", "an all-zero row"))
            with tf.control_dependencies([check]):
                return tf.identity(y)
        return encode
    raise validation.value_error(
        "targets", expected, f"Dataset targets of shape {_shape_text(y_spec.shape)}"
    )


def channels_last(inputs: Any) -> Any:
    """``(N, C, *S)`` inputs (arrays, tensors or a Dataset's ``x``) as ``(N, *S, C)``."""

    def move(x):
        x = tf.convert_to_tensor(x)
        if x.shape.rank is None or x.shape.rank < 3:
            return x  # the shape checks that follow say what is wrong
        return tf.transpose(x, [0, *range(2, x.shape.rank), 1])

    if _is_dataset(inputs):
        def element(*parts):
            moved = (move(parts[0]), *parts[1:])
            return moved if len(moved) > 1 else moved[0]

        return inputs.map(element)
    if inputs is None or isinstance(inputs, tf.Tensor):
        return inputs if inputs is None else move(inputs)
    return move(_to_tensor("inputs", inputs))


def batches(inputs: Any, targets: Any, *, multiple_of: int = 1, **kwargs) -> Batches:
    """Dispatch to :func:`from_dataset` or :func:`from_arrays`. Every batch's size is a
    multiple of ``multiple_of`` (Dataset batches are padded to ``batch_size``, which the
    caller makes a multiple of it; a short array is padded up to the next multiple)."""
    if _is_dataset(inputs):
        return from_dataset(inputs, targets, **kwargs)
    if inputs is None:
        raise validation.type_error("inputs", "an array, a tf.Tensor or a tf.data.Dataset", "None")
    return from_arrays(inputs, targets, multiple_of=multiple_of, **kwargs)
