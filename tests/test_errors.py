"""Bad input gets a clear error naming the argument, what was expected and what was given,
raised before any heavy work."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import small_cnn, subclassed_cnn
from saliencekit.attributions import (
    FullGrad,
    GradCAM,
    Occlusion,
    Saliency,
    SmoothGrad,
    VarGrad,
)

X = np.random.default_rng(0).random((4, 12, 12, 3)).astype("float32")
Y = np.array([0, 1, 2, 3])


@pytest.fixture(scope="module")
def model():
    return small_cnn()


def nan_inputs():
    x = X.copy()
    x[2, 3, 4, 1] = np.nan
    return x


def bad_operator(model, inputs):  # two arguments
    return model(inputs)[:, 0]


# (construct, call, exception, words the message must contain)
CONSTRUCTION = [
    (lambda m: Saliency(m, batch_size=0), ValueError,
     ["batch_size", "integer >= 1", "0"]),
    (lambda m: Saliency(m, batch_size=2.5), TypeError, ["batch_size", "integer"]),
    (lambda m: Saliency(m, batch_size=True), TypeError, ["batch_size"]),
    (lambda m: SmoothGrad(m, nb_samples=0), ValueError, ["nb_samples", ">= 1", "0"]),
    (lambda m: SmoothGrad(m, noise=-0.1), ValueError, ["noise", ">= 0", "-0.1"]),
    (lambda m: SmoothGrad(m, noise="a lot"), TypeError, ["noise", "number"]),
    (lambda m: VarGrad(m, seed=-1), ValueError, ["seed", "-1"]),
    (lambda m: Saliency(m, operator="clasification"), ValueError,
     ["operator", "classification", "'clasification'"]),
    (lambda m: Saliency(m, operator=bad_operator), TypeError,
     ["operator", "three positional arguments", "(model, inputs)"]),
    (lambda m: Saliency(m, operator=42), TypeError, ["operator", "callable"]),
    (lambda m: Saliency(m, reducer="median"), ValueError, ["reducer", "'median'", "max"]),
    (lambda m: GradCAM(m, conv_layer="last_cnv"), ValueError,
     ["conv_layer", "'last_cnv'", "Close matches", "last_conv"]),
    (lambda m: GradCAM(m, conv_layer=-1), ValueError,
     ["conv_layer", "spatial output", "(None, 4)"]),
    (lambda m: GradCAM(m, conv_layer=99), ValueError, ["conv_layer", "index in [-6, 6)", "99"]),
    (lambda m: Saliency(m, output_layer="nope"), ValueError, ["output_layer", "'nope'"]),
    (lambda m: Occlusion(m, patch_size=0), ValueError, ["patch_size", ">= 1"]),
    (lambda m: GradCAM(m, conv_layer="last_conv", output_layer=1), ValueError,
     ["conv_layer", "between the input and output_layer=1", "'last_conv'"]),
    (lambda m: Saliency(m, output_layer="logits"), ValueError,
     ["output_layer", "ending in a softmax or sigmoid", "'logits'"]),
    (lambda m: Saliency(m, strategy="mirrored"), TypeError, ["strategy", "tf.distribute"]),
    (lambda m: Occlusion(m, occlusion_value="grey"), TypeError, ["occlusion_value", "number"]),
    (lambda m: Saliency("model.keras"), TypeError,
     ["model", "a Keras model, a tf_keras model", "str"]),
    (lambda m: GradCAM(subclassed_cnn()), TypeError,
     ["model", "functional or Sequential", "SubclassedCNN"]),
]


@pytest.mark.parametrize("construct, error, words", CONSTRUCTION)
def test_bad_construction(model, construct, error, words):
    with pytest.raises(error) as info:
        construct(model)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


CALLS = [
    (X, Y[:3], ValueError, ["targets", "one target per input (4", "(3,)"]),
    (X, np.eye(5)[Y], ValueError, ["targets", "(N, 4)", "(4, 5)"]),
    (X, np.eye(3)[[0, 1, 2, 0]], ValueError, ["targets", "(N, 4)", "(4, 3)"]),
    (X, [0, 1, 2, 4], ValueError, ["targets", "class ids in [0, 4)", "4"]),
    (X, [0, -1, 2, 3], ValueError, ["targets", "class ids in [0, 4)", "-1"]),
    (X, [0, 1.5, 2, 3], ValueError, ["targets", "non-integer"]),
    (X, np.array(["a", "b", "c", "d"]), TypeError, ["targets", "numeric", "<U1"]),
    (X, np.zeros((4, 4)), ValueError, ["targets", "all-zero rows", "row 0"]),
    (X, np.zeros((4, 2, 4)), ValueError, ["targets", "(4, 2, 4)"]),
    (nan_inputs(), Y, ValueError, ["inputs", "finite", "1 NaN or Inf", "(2, 3, 4, 1)"]),
    (X[0], Y[:1], ValueError, ["inputs", "(N, 12, 12, 3)", "(12, 12, 3)"]),
    (X[:, :10], Y, ValueError, ["inputs", "(N, 12, 12, 3)", "(4, 10, 12, 3)"]),
    (X[..., :1], Y, ValueError, ["inputs", "(N, 12, 12, 3)", "(4, 12, 12, 1)"]),
    (X[:0], Y[:0], ValueError, ["inputs", "at least one input", "empty"]),
    (X.astype(str), Y, TypeError, ["inputs", "numeric", "<U"]),
    (np.array([X[0], X[1, :5]], dtype=object), Y[:2], TypeError, ["inputs"]),
    (None, Y, TypeError, ["inputs", "None"]),
    (X.astype(np.complex64), Y, TypeError, ["inputs", "complex64"]),
]


@pytest.mark.parametrize("inputs, targets, error, words", CALLS)
@pytest.mark.parametrize("method", [Saliency, SmoothGrad, GradCAM, FullGrad, Occlusion])
def test_bad_call(model, method, inputs, targets, error, words):
    explainer = method(model)
    with pytest.raises(error) as info:
        explainer(inputs, targets)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert explainer._kernel.experimental_get_tracing_count() == 0  # before heavy work


@pytest.mark.parametrize("patch_size", [64, (4, 13)])
def test_a_patch_larger_than_the_input_is_refused_not_a_constant_map(model, patch_size):
    explainer = Occlusion(model, patch_size=patch_size)
    stored = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    with pytest.raises(ValueError, match=r"patch_size: expected at most the inputs' size "
                                         r"\(12, 12\).*got " + re.escape(str(stored))):
        explainer(X, Y)
    assert explainer._kernel.experimental_get_tracing_count() == 0
    assert np.ptp(Occlusion(model, patch_size=(12, 4))(X, Y).numpy()) > 0  # a whole axis: ok


DATASETS = [
    (tf.data.Dataset.from_tensor_slices(np.zeros((4, 5))), ValueError,
     ["inputs", "batched", ".batch(", "(5)"]),
    (tf.data.Dataset.from_tensor_slices((X[:, :8], Y)).batch(2), ValueError,
     ["inputs", "(N, 12, 12, 3)", "(batch, 8, 12, 3)"]),
    (tf.data.Dataset.from_tensor_slices({"x": X}).batch(2), TypeError,
     ["inputs", "(x, y)", "element_spec"]),
    (tf.data.Dataset.from_tensor_slices((X, np.array(["a"] * 4))).batch(2), TypeError,
     ["targets", "numeric"]),
    (tf.data.Dataset.from_tensor_slices((X, np.eye(5)[Y])).batch(2), ValueError,
     ["targets", "(N, 4)", "(None, 5)"]),
]


@pytest.mark.parametrize("dataset, error, words", DATASETS)
def test_bad_dataset(model, dataset, error, words):
    with pytest.raises(error) as info:
        Saliency(model)(dataset)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("targets, words", [
    ([0, 1, 7, 2], ["targets", "class ids in [0, 4)", "id >= 4"]),
    ([0, -1, 1, 2], ["targets", "negative id"]),
])
def test_bad_targets_inside_a_dataset_are_value_errors(model, targets, words):
    dataset = tf.data.Dataset.from_tensor_slices((X, targets)).batch(2)
    with pytest.raises(ValueError) as info:
        Saliency(model)(dataset)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_nan_inside_a_dataset_is_a_value_error(model):
    dataset = tf.data.Dataset.from_tensor_slices((nan_inputs(), Y)).batch(2)
    with pytest.raises(ValueError, match="inputs: expected finite values"):
        Saliency(model)(dataset)


def test_dataset_and_targets_together(model):
    dataset = tf.data.Dataset.from_tensor_slices(X).batch(2)
    with pytest.raises(ValueError, match="targets: expected None when inputs is a Dataset"):
        Saliency(model)(dataset, Y)


def test_operator_returning_the_wrong_shape_fails_on_the_first_batch(model):
    def per_class(m, inputs, targets):
        return m(inputs)  # (N, C), not (N,)

    explainer = Saliency(model, operator=per_class)
    with pytest.raises(ValueError, match=r"operator: expected a callable returning one score per "
                                         r"input, shape \(4,\), got a tensor of shape \(4, 4\)"):
        explainer(X, Y)


def test_regression_without_targets_needs_a_single_output(model):
    with pytest.raises(ValueError, match=r"targets: expected output indices .* got None for a "
                                         r"model with output shape \(None, 4\)"):
        Saliency(model, operator="regression")(X)


def test_object_detection_needs_targets():
    inputs = keras.Input((4,))
    boxes = keras.layers.Reshape((2, 7))(keras.layers.Dense(14)(inputs))
    detector = keras.Model(inputs, boxes)
    with pytest.raises(ValueError, match="targets: expected targets for this operator, got None"):
        Saliency(detector, operator="object detection")(np.ones((1, 4), "float32"))


def test_errors_leave_the_model_usable(model):
    before = model(X).numpy()
    for construct, error, _ in CONSTRUCTION:
        with pytest.raises(error):
            construct(model)
    np.testing.assert_array_equal(model(X).numpy(), before)
    np.testing.assert_allclose(Saliency(model)(X, Y).numpy(),
                               Saliency(small_cnn())(X, Y).numpy(), rtol=1e-6)


def test_nan_maps_are_returned_with_a_warning():
    """d sqrt(x) / dx is Inf at 0: the rows whose input holds a 0 get non-finite maps, the
    others are kept as they are, and the warning counts them."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.ops.sqrt(inputs)))
    x = np.array([[1.0, 4.0, 0.0], [1.0, 2.0, 3.0]], "float32")
    explainer = Saliency(model)
    for call in (explainer, explainer.explain):  # in the caller's name, not the library's
        with pytest.warns(RuntimeWarning, match=r"Saliency: 1 of 2 maps hold NaN or Inf "
                                                r"values: the model's scores or their "
                                                r"gradients") as record:
            maps = call(x, [0, 1]).numpy()
        assert record[0].filename == __file__
    assert not np.isfinite(maps[0]).all() and np.isfinite(maps[1]).all()


def test_large_finite_maps_whose_sum_overflows_draw_no_warning():
    model = keras.Sequential([keras.Input((300, 300, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1, kernel_initializer=keras.initializers
                                                 .Constant(1e36))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = Saliency(model, operator="regression")(np.ones((2, 300, 300, 1), "float32"))
    assert np.isfinite(maps.numpy()).all() and np.isinf(np.sum(maps.numpy(), dtype="float32"))
