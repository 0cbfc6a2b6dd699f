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

import collections
import functools
import weakref
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

#: The batch an unbatched Dataset (one input per element) is read in with ``batch_size=None``.
UNBATCHED_BATCH = 64


@dataclass
class Batches:
    """Fixed-size batches ``(inputs, targets, offset, valid)`` of one explain call.

    ``offset`` (an int64 scalar tensor) is the index of the batch's first row in the user's
    data; ``valid`` how many rows of the batch are real, or ``None`` when all are. Batch
    ``i`` starts at row ``i * batch_size``. ``count`` (inputs) and ``batch_count`` (batches)
    are ``None`` when unknown before the end (a Dataset). Built with ``extra`` (a per-row
    structure, e.g. the maps a metric scores), each batch has a fifth element: its rows of
    ``extra``, sliced and padded with the inputs.
    """

    sample_shape: tuple
    batch_size: int
    has_targets: bool
    _source: Callable[[frozenset], Iterator]
    count: int | None = None
    batch_count: int | None = None
    #: a multi-input model's inputs: ``sample_shape`` holds one shape per input (in
    #: ``tf.nest`` order) and ``as_given`` puts maps in the structure the user gave
    structured: bool = False
    as_given: Callable[[Any], Any] = lambda maps: maps

    def given(self, maps: Any) -> Any:
        """Maps in the structure the inputs were given in (one map stays one map)."""
        return maps if tf.is_tensor(maps) else self.as_given(maps)

    @property
    def sample_shapes(self) -> list[tuple]:
        """One sample shape per input."""
        return list(self.sample_shape) if self.structured else [self.sample_shape]

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
    tensor = value if isinstance(value, tf.Tensor) else tf.convert_to_tensor(
        _to_array(argument, value))
    _check_dtype(argument, tensor.dtype)
    return tensor


def _to_array(argument: str, value: Any) -> np.ndarray:
    """A host numpy array of ``value`` (a tf.Tensor is read); strings, objects, ragged lists
    and types TensorFlow has no numeric dtype for are refused by name."""
    if isinstance(value, tf.Tensor):
        _check_dtype(argument, value.dtype)
        return value.numpy()
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise validation.type_error(argument, "a rectangular array", "ragged data") from error
    if array.dtype.kind in "USOV":
        raise validation.type_error(
            argument, "a numeric or boolean array", f"an array of dtype {array.dtype}"
        )
    if array.dtype.kind not in "biuf":
        try:
            dtype = tf.as_dtype(array.dtype)
        except TypeError:
            raise validation.type_error(argument, "a numeric or boolean array",
                                        f"an array of dtype {array.dtype}") from None
        _check_dtype(argument, dtype)
    return array


#: Up to this many elements, inputs are checked for NaN and Inf on the host; above, by a
#: TensorFlow sum (multithreaded, and no copy to the host of a large or on-device tensor).
HOST_CHECK_SIZE = 2**16


#: The user's tf.Tensors last found finite, by weak reference. A tensor's values never
#: change, so explaining the same one again skips reading it back (a copy to the host and a
#: pass over it, or a reduction); a tensor freed is forgotten (its reference answers None).
_FINITE: collections.deque = collections.deque(maxlen=8)


def all_finite(tensor: tf.Tensor) -> bool:
    """Whether a float tensor holds no NaN and no Inf. A NaN or an Inf anywhere makes the
    sum NaN or Inf, so a finite sum proves every value finite (a sum that overflows on
    finite values answers False, and the caller's exact check then finds nothing)."""
    if any(known() is tensor for known in _FINITE):
        return True
    finite = read_finite(tensor)
    if finite:
        _FINITE.append(weakref.ref(tensor))
    return finite


def read_finite(tensor: tf.Tensor) -> bool:
    """:func:`all_finite` without remembering the tensor (for results, not the user's
    inputs, which they would push out of the memory of checked tensors)."""
    if tensor.shape.num_elements() <= HOST_CHECK_SIZE:
        return bool(np.isfinite(tensor.numpy()).all())
    return bool(np.isfinite(tf.reduce_sum(tensor).numpy()))


def _shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _check_sample_shape(sample_shape: tuple, model_shape: tuple | None, given,
                        argument: str = "inputs") -> None:
    """``given``: the shape as the message shows it, or a callable making that text (only
    called on a mismatch)."""
    if model_shape is None or sample_shape == model_shape:
        return
    if len(sample_shape) != len(model_shape) or any(
        m is not None and s is not None and m != s for s, m in zip(sample_shape, model_shape)
    ):
        expected = f"inputs of shape (N, {', '.join(str(d) for d in model_shape)})"
        raise validation.value_error(
            argument, expected + " for this model", f"shape {given() if callable(given) else given}"
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
    # checked on the host (targets are small next to inputs; a tf.Tensor is read once),
    # then one tensor made: no round trip through TensorFlow ops for the checks
    given = targets if isinstance(targets, tf.Tensor) else None
    values = _to_array("targets", targets)
    shape = values.shape
    if values.ndim == 0 or shape[0] != count:
        raise validation.value_error(
            "targets", f"one target per input ({count} along the first axis)",
            f"shape {tuple(shape)}",
        )
    if rules is None:  # a user's operator: passed through as floats
        return tf.cast(given if given is not None else values, tf.float32)
    rank, out_rank, width = values.ndim, len(output_shape), output_shape[-1]
    id_ranks = {_resolve_rank(s, out_rank) for s in rules.ids_ranks}
    float_ranks = {_resolve_rank(s, out_rank) for s in rules.float_ranks}
    if rank in id_ranks:
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise validation.value_error(
                "targets", _expected_targets(rules, output_shape),
                f"non-integer values of shape {tuple(shape)}")
        if width is not None and (values.min() < 0 or values.max() >= width):
            raise validation.value_error(
                "targets", f"class ids in [0, {width}) for a model with {width} outputs",
                f"ids from {values.min():g} to {values.max():g}",
            )
        _check_spatial(shape[1:], output_shape[1:rank], rules, output_shape)
        return tf.constant(_identity(width)[values.astype(np.intp, copy=False)])
    if rank in float_ranks:
        if shape[-1] != width:
            raise validation.value_error(
                "targets", _expected_targets(rules, output_shape)
                + f" (the model has {width} outputs per position)", f"shape {tuple(shape)}",
            )
        if rank == out_rank and rules.match_output_shape:
            _check_spatial(shape[1:], output_shape[1:], rules, output_shape)
        values = values.astype(np.float32, copy=False)
        validation.finite_array("targets", values)
        if rules.nonzero_rows:
            empty = np.flatnonzero(~np.any(values.reshape(count, -1) != 0, axis=1))
            if empty.size:
                raise validation.value_error(
                    "targets", "rows that select at least one output (a non-zero entry)",
                    f"{empty.size} all-zero rows (first: row {empty[0]})",
                    "An all-zero target explains nothing and would give an all-zero map.",
                )
        return tf.cast(given, tf.float32) if given is not None else tf.constant(values)
    raise validation.value_error("targets", _expected_targets(rules, output_shape),
                                 f"shape {tuple(shape)}")


@functools.lru_cache(maxsize=8)
def _identity(width: int) -> np.ndarray:
    """The ``(width, width)`` float32 identity: its rows are the one-hot encodings of ids."""
    identity = np.eye(width, dtype=np.float32)
    identity.flags.writeable = False
    return identity


def _check_spatial(given, expected_shape, rules: TargetRules, output_shape: tuple) -> None:
    for g, e in zip(given, expected_shape):
        if e is not None and g is not None and g != e:
            raise validation.value_error("targets", _expected_targets(rules, output_shape),
                                         "shape (N, " + ", ".join(map(str, given)) + ")")


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


def _offset(start: int) -> tf.Tensor:
    """A batch's first row as an int64 scalar tensor; eager ones (immutable) made once:
    batches of repeated calls start at the same rows."""
    return _eager_offset(start) if tf.executing_eagerly() else tf.constant(start, tf.int64)


@functools.lru_cache(maxsize=64)
def _eager_offset(start: int) -> tf.Tensor:
    return tf.constant(start, tf.int64)


def _pad(tensor: tf.Tensor, size: int) -> tf.Tensor:
    missing = size - tf.shape(tensor)[0]
    paddings = tf.concat([[[0, missing]], tf.zeros((tensor.shape.rank - 1, 2), tf.int32)], 0)
    return tf.ensure_shape(tf.pad(tensor, paddings), (size, *tensor.shape[1:]))


def _structured(argument: str, given: Any, structure) -> tuple[list, Callable]:
    """A multi-input model's inputs: ``(leaves in tf.nest order, put maps back in the
    user's structure)``. ``given`` is a list/tuple in the model's input order or, for a
    model with named inputs, a dict by those names."""
    names = sorted(structure) if isinstance(structure, dict) else None
    count = len(structure)
    if isinstance(given, dict):
        if names is None or set(given) != set(names):
            expected = (f"a dict with the keys {names}" if names is not None else
                        f"a list or tuple of {count} inputs (the model's inputs are not named)")
            raise validation.value_error(argument, expected, f"a dict with keys {sorted(given)}")
        return [given[name] for name in names], lambda maps: dict(maps)
    if isinstance(given, (list, tuple)) and len(given) == count:
        kind = type(given)
        if names is None:
            return list(given), lambda maps: kind(maps)
        # a named model's inputs given in its declared order: tf.nest order is sorted
        declared = list(structure)
        by_name = dict(zip(declared, given))
        return [by_name[name] for name in names], lambda maps: kind(
            maps[name] for name in declared)
    described = (f"a {type(given).__name__} of {len(given)}" if isinstance(given, (
        list, tuple)) else validation._describe(given))
    expected = f"one array per model input: a list or tuple of {count}"
    if names is not None:
        expected += f", or a dict with the keys {names}"
    raise validation.type_error(argument, expected, described)


def from_arrays(
    inputs: Any,
    targets: Any,
    *,
    batch_size: int | None,
    model_input_shape: tuple | None,
    output_shape: Callable[[tuple], tuple],
    rules: TargetRules | None,
    multiple_of: int = 1,
    input_structure: Any = None,
    extra: Any = None,
) -> Batches:
    if input_structure is None:
        names, values, model_shapes = ["inputs"], [inputs], [model_input_shape]
        as_given = None
    else:
        values, as_given = _structured("inputs", inputs, input_structure)
        specs = tf.nest.flatten(input_structure)
        keys = sorted(input_structure) if isinstance(input_structure, dict) else range(
            len(specs))
        names = [f"inputs[{key!r}]" for key in keys]
        model_shapes = [tuple(spec.shape) for spec in specs]
    tensors = []
    for name, value, model_shape in zip(names, values, model_shapes):
        tensor = _to_tensor(name, value)
        if tensor.shape.rank < 2:
            raise validation.value_error(
                name, "a batch of shape (N, ...) with N inputs", f"shape {tuple(tensor.shape)}",
                "Add a batch axis, e.g. inputs[None].",
            )
        if tensor.shape[0] == 0:
            raise validation.value_error(name, "at least one input", "an empty batch")
        if tensors and tensor.shape[0] != tensors[0].shape[0]:
            raise validation.value_error(
                name, f"as many rows as {names[0]} ({tensors[0].shape[0]})",
                f"shape {tuple(tensor.shape)}")
        _check_sample_shape(tuple(tensor.shape[1:]), model_shape,
                            lambda t=tensor: _shape_text(t.shape), name)
        floating = tensor.dtype.is_floating
        if tensor.dtype != tf.float32:
            tensor = tf.cast(tensor, tf.float32)
        # integers and booleans are finite (as float32 too); a float64 beyond float32's
        # range became Inf and is refused here
        if floating and not all_finite(tensor):
            validation.finite_array(name, tensor.numpy())
        tensors.append(tensor)
    count = int(tensors[0].shape[0])
    shapes = [tuple(t.shape[1:]) for t in tensors]
    sample_shape = shapes[0] if as_given is None else tuple(shapes)

    def pack(flat):
        return flat[0] if as_given is None else tf.nest.pack_sequence_as(input_structure, flat)

    out_shape = output_shape(sample_shape)
    if targets is None:
        check_none_targets(rules, out_shape)
        encoded = None
    else:
        encoded = encode_targets(targets, count, rules, out_shape)
    extras = _extra_leaves(extra, count)
    # one short batch when the inputs are fewer than batch_size (rounded up to a multiple
    # of the replicas of a distribution strategy)
    whole = -(-count // multiple_of) * multiple_of
    size = whole if batch_size is None else min(batch_size, whole)  # None: all at once

    def source(skip):
        if count == size and not skip:  # one batch: no slicing, no padding
            yield (pack(tensors), encoded, _offset(0), None,
                   *_extra_rows(extra, extras, 0, count, size))
            return
        for number, start in enumerate(range(0, count, size)):
            if number in skip:
                continue
            stop = min(start + size, count)
            x = [tensor[start:stop] for tensor in tensors]
            t = None if encoded is None else encoded[start:stop]
            valid = None
            if stop - start < size:
                x = [_pad(leaf, size) for leaf in x]
                t = None if t is None else _pad(t, size)
                valid = stop - start
            yield (pack(x), t, _offset(start), valid,
                   *_extra_rows(extra, extras, start, stop, size))

    return Batches(sample_shape, size, encoded is not None, source, count, -(-count // size),
                   structured=as_given is not None, as_given=as_given or (lambda maps: maps))


def _extra_leaves(extra: Any, count: int | None) -> list:
    """The leaves of ``extra`` (a per-row structure of arrays batched and padded with the
    inputs, such as the maps a metric scores) as tensors of ``count`` rows."""
    if extra is None:
        return []
    leaves = [tf.convert_to_tensor(leaf) for leaf in tf.nest.flatten(extra)]
    for leaf in leaves:
        if leaf.shape.rank == 0 or (count is not None and leaf.shape[0] != count):
            raise validation.value_error(
                "extra", f"one row per input ({count} along the first axis)",
                f"shape {tuple(leaf.shape)}")
    return leaves


def _extra_rows(extra: Any, leaves: list, start: int, stop: int, size: int) -> tuple:
    """``()`` without ``extra``, else ``(rows start:stop of it, padded to size,)``."""
    if extra is None:
        return ()
    rows = [leaf[start:stop] if (start, stop) != (0, leaf.shape[0]) else leaf
            for leaf in leaves]
    if stop - start < size:
        rows = [_pad(leaf, size) for leaf in rows]
    return (tf.nest.pack_sequence_as(extra, rows),)


def _split_element(spec, structured: bool = False):
    """(x, y or None) of a dataset element (its spec, or its tensors), or raise. With a
    multi-input model, ``x`` is a structure: elements are ``(x, y)``, ``(x,)`` or a dict
    ``x`` (Keras' convention: a tuple is ``(x, y, sample_weight)``)."""

    def leaf(part):
        return isinstance(part, (tf.TensorSpec, tf.Tensor))

    def inputs(part):
        return leaf(part) if not structured else (isinstance(part, (list, tuple, dict)) and all(
            leaf(p) for p in tf.nest.flatten(part)))

    if not structured and leaf(spec):
        return spec, None
    if structured and isinstance(spec, dict) and inputs(spec):
        return spec, None
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3 and inputs(spec[0]) and all(
            leaf(s) for s in spec[1:]):
        return spec[0], (spec[1] if len(spec) > 1 else None)
    expected = ("a Dataset yielding (x, y) or (x,) with x one tensor per model input (a "
                "tuple, or a dict by input name)" if structured else
                "a Dataset yielding x, (x,), (x, y) or (x, y, sample_weight) tensors")
    raise validation.type_error("inputs", expected, f"a Dataset with element_spec {spec}")


def from_dataset(
    dataset: tf.data.Dataset,
    targets: Any,
    *,
    batch_size: int | None,
    model_input_shape: tuple | None,
    output_shape: Callable[[tuple], tuple],
    rules: TargetRules | None,
    input_structure: Any = None,
    extra: Any = None,
) -> Batches:
    structured = input_structure is not None
    x_spec, y_spec = _split_element(dataset.element_spec, structured)
    if targets is not None:
        raise validation.value_error(
            "targets",
            "None when inputs is a Dataset (put the targets in it: yield (x, y))",
            validation._describe(targets),
        )
    if structured:
        x_specs, as_given = _structured("inputs", x_spec, input_structure)
        model_shapes = [tuple(spec.shape) for spec in tf.nest.flatten(input_structure)]
    else:
        x_specs, as_given, model_shapes = [x_spec], None, [model_input_shape]
    if all(model_shape is not None and spec.shape.rank == len(model_shape)
           for spec, model_shape in zip(x_specs, model_shapes)):
        # elements of one input each (xplique takes such Datasets): batched here
        return from_dataset(
            dataset.batch(batch_size or UNBATCHED_BATCH), targets, batch_size=batch_size,
            model_input_shape=model_input_shape, output_shape=output_shape, rules=rules,
            input_structure=input_structure, extra=extra)
    if batch_size is None:  # all at once: the Dataset's own batches, padded to its first's
        batch_size = x_specs[0].shape[0]
        if batch_size is None:
            first = next(iter(dataset.take(1)))
            batch_size = int(tf.nest.flatten(_split_element(first, structured)[0])[0].shape[0])
    sample_shapes = []
    for spec, model_shape in zip(x_specs, model_shapes):
        _check_dtype("inputs", spec.dtype)
        unbatched = model_shape is not None and spec.shape.rank == len(model_shape)
        if spec.shape.rank is None or spec.shape.rank < 2 or unbatched:
            raise validation.value_error(
                "inputs", "a batched Dataset (elements of shape (batch, ...), as model.predict "
                "takes)", "elements of shape " + (
                    _shape_text(spec.shape) if spec.shape.rank is not None else "(unknown rank)"),
                "Call .batch(n) on it.",
            )
        sample_shape = tuple(spec.shape[1:])
        if model_shape is not None and len(model_shape) == len(sample_shape):
            sample_shape = tuple(
                s if s is not None else m for s, m in zip(sample_shape, model_shape))
        _check_sample_shape(
            sample_shape, model_shape, "(batch, " + _shape_text(spec.shape[1:])[1:])
        sample_shapes.append(sample_shape)

    def leaves(x):
        return _structured("inputs", x, input_structure)[0] if structured else [x]

    if any(d is None for shape in sample_shapes for d in shape):
        first = next(iter(dataset.take(1)))
        first_x = _split_element(first, structured)[0]
        sample_shapes = [tuple(leaf.shape[1:]) for leaf in leaves(first_x)]
    sample_shape = tuple(sample_shapes) if structured else sample_shapes[0]
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

    def pack(flat):
        return tuple(flat) if structured else flat[0]

    def select(*element):  # tf.data passes a tuple's parts as arguments
        x, y = element[0], (element[1] if len(element) > 1 else None)
        if len(element) == 1 and not structured and isinstance(x, tuple):
            x = x[0]
        checked = []
        for leaf, shape in zip(leaves(x), sample_shapes):
            leaf = tf.ensure_shape(tf.cast(leaf, tf.float32), (None, *shape))
            checked.append(tf.debugging.assert_all_finite(
                leaf, PIPELINE_CHECK + validation.message(
                    "inputs", "finite values", "NaN or Inf values in the Dataset")))
        if encode is None:
            return (pack(checked),)
        return pack(checked), encode(y)

    def pad(index, batch):
        rows = ()
        if extra is not None:
            batch, rows = batch
        valid = tf.shape(tf.nest.flatten(batch[0])[0])[0]
        padded = tf.nest.map_structure(lambda b: _pad(b, batch_size), batch)
        if extra is not None:
            given = tf.shape(tf.nest.flatten(rows)[0])[0]
            check = tf.debugging.assert_equal(given, valid, message=PIPELINE_CHECK + (
                validation.message("extra", "one row per input of the Dataset",
                                   "fewer rows than the Dataset has inputs")))
            with tf.control_dependencies([check]):
                rows = (tf.nest.map_structure(lambda e: _pad(e, batch_size), rows),)
        return (padded, index * batch_size, valid, *rows)

    batched = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE).rebatch(batch_size)
    extras = _extra_leaves(extra, None)
    if extra is not None:  # zipped batch by batch; an empty filler outlasts the inputs
        leaves = tf.nest.pack_sequence_as(extra, extras)
        filler = tf.nest.map_structure(lambda e: tf.zeros((0, *e.shape[1:]), e.dtype), leaves)
        batched = tf.data.Dataset.zip((batched, tf.data.Dataset.from_tensor_slices(
            leaves).batch(batch_size).concatenate(
                tf.data.Dataset.from_tensors(filler).repeat())))


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
        seen = 0
        for padded, offset, valid, *rows in pipeline:
            t = padded[1] if len(padded) > 1 else None
            x = padded[0]
            if structured:
                x = tf.nest.pack_sequence_as(input_structure, list(x))
            valid = int(valid)  # a host-side scalar of the pipeline: no device sync
            seen += valid
            yield (x, t, offset, (None if valid == batch_size else valid), *rows)
        if extra is not None and not skip and seen != int(extras[0].shape[0]):
            raise validation.value_error(
                "extra", f"one row per input of the Dataset ({seen})",
                f"{int(extras[0].shape[0])} rows")

    return Batches(sample_shape, batch_size, y_spec is not None, source,
                   structured=structured, as_given=as_given or (lambda maps: maps))


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
