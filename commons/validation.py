"""Every check of user input, in one place and one message style.

Each message names the argument, what was expected and what was given:
``"batch_size: expected an integer >= 1, got 0"``. Checks run before any heavy work
(tracing, forward passes) so a mistake costs nothing. ``assert`` is never used for user
input: it is stripped under ``python -O``.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from typing import Any

import numpy as np


def _describe(value: Any) -> str:
    """A short description of a value for an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype = getattr(value, "dtype", None)
        dtype = getattr(dtype, "name", dtype)
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def message(argument: str, expected: str, given: Any, hint: str = "") -> str:
    """The one message format: ``'<argument>: expected <expected>, got <given>.'``."""
    text = f"{argument}: expected {expected}, got {given}"
    return f"{text}. {hint}" if hint else f"{text}."


def value_error(argument: str, expected: str, given: Any, hint: str = "") -> ValueError:
    return ValueError(message(argument, expected, given, hint))


def type_error(argument: str, expected: str, given: Any, hint: str = "") -> TypeError:
    return TypeError(message(argument, expected, given, hint))


def positive_int(argument: str, value: Any) -> int:
    """An integer >= 1 (bools are refused: ``True`` is not a batch size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(argument, "an integer >= 1", _describe(value))
    if value < 1:
        raise value_error(argument, "an integer >= 1", value)
    return int(value)


def non_negative_float(argument: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(argument, "a number >= 0", _describe(value))
    if not np.isfinite(value) or value < 0:
        raise value_error(argument, "a finite number >= 0", value)
    return float(value)


def optional_seed(argument: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise type_error(argument, "None or an integer in [0, 2**31)", _describe(value))
    if not 0 <= value < 2**31:
        raise value_error(argument, "None or an integer in [0, 2**31)", value)
    return int(value)


def int_tuple(argument: str, value: Any, length: int) -> tuple[int, ...]:
    """An int (repeated ``length`` times) or a tuple of ``length`` positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,) * length
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise type_error(
            argument, f"an integer >= 1 or a tuple of {length} such integers", _describe(value)
        )
    return tuple(positive_int(argument, v) for v in value)


def positive_floats(argument: str, value: Any) -> tuple[float, ...]:
    """A sequence (possibly empty) of finite numbers > 0."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)):
        raise type_error(argument, "a sequence of numbers > 0", _describe(value))
    values = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise type_error(argument, "a sequence of numbers > 0", f"{_describe(v)} in it")
        if not np.isfinite(v) or v <= 0:
            raise value_error(argument, "a sequence of finite numbers > 0", f"{v} in it")
        values.append(float(v))
    return tuple(values)


def one_of(argument: str, value: Any, options) -> Any:
    try:
        known = value in options
    except TypeError:  # unhashable values are in no dict or set of options
        known = False
    if not known:
        raise value_error(argument, f"one of {', '.join(map(repr, options))}", repr(value))
    return value


def operator_signature(operator: Any) -> None:
    """A user operator must be callable as ``operator(model, inputs, targets)``."""
    if not callable(operator):
        raise type_error(
            "operator",
            "a task name or a callable operator(model, inputs, targets) -> (N,) tensor",
            _describe(operator),
        )
    try:
        signature = inspect.signature(operator)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise type_error(
            "operator",
            "a callable taking three positional arguments (model, inputs, targets)",
            f"a callable with signature {signature}",
        ) from None


def layer_not_found(argument: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"Close matches: {close}." if close else f"The model has {len(known)} layers."
    return value_error(argument, "the name of a layer of the model", repr(name), hint)


def finite_array(argument: str, array: np.ndarray) -> None:
    """Refuse NaN and Inf, naming where the first one is."""
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        finite = np.isfinite(array)
        if not finite.all():
            first = np.argwhere(~finite)[0]
            raise value_error(
                argument,
                "finite values",
                f"{array.size - int(finite.sum())} NaN or Inf values (first at index "
                f"{tuple(int(i) for i in first)})",
            )
