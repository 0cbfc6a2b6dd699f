"""Operators: each task's score, and what targets mean for it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from saliencekit import Tasks
from saliencekit.attributions import GradCAM, Occlusion, Saliency, SmoothGrad
from saliencekit.operators import OPERATORS, get_operator, object_detection


def pixelwise_model(w):
    """A 1x1 convolution: out[h, w, c] = sum_k x[h, w, k] W[k, c] (a linear segmenter)."""
    conv = keras.layers.Conv2D(w.shape[1], 1, use_bias=False)
    model = keras.Sequential([keras.Input((5, 6, w.shape[0])), conv])
    conv.set_weights([w[None, None]])
    return model


def test_registry_is_a_plain_dict_of_functions_with_enum_names():
    assert set(OPERATORS) == {t.value for t in Tasks}
    for task in Tasks:
        assert get_operator(task)[0] is OPERATORS[task.value] is get_operator(task.value)[0]
    assert get_operator("Semantic_Segmentation")[0] is OPERATORS["semantic segmentation"]


def test_segmentation_targets_select_pixels_and_classes():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 3)).astype("float32")
    model = pixelwise_model(w)
    x = rng.normal(size=(2, 5, 6, 2)).astype("float32")
    explainer = Saliency(model, operator="semantic segmentation", reducer=None)

    mask = np.zeros((2, 5, 6, 3), "float32")
    mask[:, 2, 3, 1] = 1.0  # one pixel, class 1
    maps = explainer(x, mask).numpy()
    expected = np.zeros_like(x)
    expected[:, 2, 3] = np.abs(w[:, 1])
    np.testing.assert_allclose(maps, expected, rtol=1e-6)

    per_class = explainer(x, [2, 0]).numpy()  # a class over every pixel
    np.testing.assert_allclose(per_class[0], np.broadcast_to(np.abs(w[:, 2]), (5, 6, 2)), rtol=1e-6)
    np.testing.assert_allclose(per_class[1], np.broadcast_to(np.abs(w[:, 0]), (5, 6, 2)), rtol=1e-6)

    label_map = rng.integers(0, 3, size=(2, 5, 6))  # a class per pixel
    maps = explainer(x, label_map).numpy()
    np.testing.assert_allclose(maps, np.abs(w.T[label_map]), rtol=1e-6)

    predicted = np.argmax(model(x).numpy(), -1)
    np.testing.assert_allclose(explainer(x).numpy(), np.abs(w.T[predicted]), rtol=1e-6)


def test_segmentation_refuses_a_mask_of_the_wrong_size():
    model = pixelwise_model(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"targets: expected .*\(N, 5, 6, 3\)"):
        Saliency(model, operator="semantic segmentation")(np.ones((1, 5, 6, 2)),
                                                          np.ones((1, 4, 6, 3)))


def test_object_detection_score_is_iou_times_objectness_times_class_similarity():
    predictions = tf.constant([[
        [0.0, 0.0, 2.0, 2.0, 0.9, 1.0, 0.0],  # box A: class 0
        [1.0, 1.0, 3.0, 3.0, 0.5, 0.0, 1.0],  # box B: class 1
    ]])

    def model(inputs):
        return predictions

    target_a = tf.constant([[0.0, 0.0, 2.0, 2.0, 1.0, 1.0, 0.0]])
    np.testing.assert_allclose(object_detection(model, None, target_a).numpy(), [0.9], rtol=1e-6)
    # half-overlapping class-1 target: best match is B, IoU with B = 2/6 (A's class is wrong)
    target_b = tf.constant([[1.0, 0.0, 3.0, 2.0, 1.0, 0.0, 1.0]])
    np.testing.assert_allclose(object_detection(model, None, target_b).numpy(), [0.5 / 3],
                               rtol=1e-5)
    both = tf.stack([target_a[0], target_b[0]])[None]  # (1, K=2, 7): summed
    np.testing.assert_allclose(object_detection(model, None, both).numpy(), [0.9 + 0.5 / 3],
                               rtol=1e-5)


def detector():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    boxes = keras.layers.Dense(8, activation="sigmoid")(x)
    scores = keras.layers.Dense(2 * 3, activation="sigmoid")(x)
    out = keras.layers.Concatenate()([
        keras.layers.Reshape((2, 4))(boxes), keras.layers.Reshape((2, 3))(scores)])
    return keras.Model(inputs, out)


@pytest.mark.parametrize("method", [Saliency, GradCAM, Occlusion])
def test_object_detection_runs_through_explainers(method):
    model = detector()
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    predicted = model(x).numpy()[:, 0]  # explain each image's first predicted box
    maps = method(model, operator="object detection")(x, predicted).numpy()
    assert maps.shape == (2, 16, 16, 1) and np.isfinite(maps).all() and np.abs(maps).sum() > 0
    several = model(x).numpy()  # (N, K=2, 7)
    assert np.isfinite(method(model, operator=Tasks.OBJECT_DETECTION)(x, several).numpy()).all()


def test_a_user_operator_is_used_and_gets_none_targets():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2)).astype("float32")
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Sequential([keras.Input((4,)), dense])
    dense.set_weights([w])
    seen = []

    def twice_the_difference(m, inputs, targets):
        seen.append(targets)
        out = m(inputs)
        return 2.0 * (out[:, 0] - out[:, 1])

    x = rng.normal(size=(3, 4)).astype("float32")
    maps = Saliency(model, operator=twice_the_difference)(x).numpy()
    np.testing.assert_allclose(maps, np.broadcast_to(np.abs(2 * (w[:, 0] - w[:, 1])), (3, 4)),
                               rtol=1e-6)
    assert seen and seen[-1] is None
    smooth = SmoothGrad(model, operator=twice_the_difference, noise=0.5, seed=0)(x).numpy()
    np.testing.assert_allclose(smooth, maps, rtol=1e-5)


def test_user_operator_targets_are_passed_through_as_floats():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

    def weighted(m, inputs, targets):
        return tf.reduce_sum(m(inputs) * targets[:, :2], -1) * targets[:, 2]

    x = np.ones((2, 3), "float32")
    targets = np.array([[1, 0, 3], [0, 1, -1]])  # extra column: a user-defined meaning
    w = model.layers[0].kernel.numpy()
    np.testing.assert_allclose(Saliency(model, operator=weighted)(x, targets).numpy(),
                               np.abs([3 * w[:, 0], -w[:, 1]]), rtol=1e-6)
