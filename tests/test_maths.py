"""Known answers and properties of the maths."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from helpers import small_cnn
from saliencekit.attributions import (
    FullGrad,
    GradCAM,
    Occlusion,
    Saliency,
    SmoothGrad,
    SquareGrad,
    VarGrad,
)
from saliencekit.attributions.cam import gradcam_weights, weighted_activations
from saliencekit.attributions.fullgrad import fullgrad_postprocess
from saliencekit.attributions.occlusion import patch_starts


def linear_model(weights, bias=None):
    d, c = weights.shape
    layer = keras.layers.Dense(c, use_bias=bias is not None)
    model = keras.Sequential([keras.Input((d,)), layer])
    layer.set_weights([weights] if bias is None else [weights, bias])
    return model


arrays = st.integers(0, 2**31 - 1).map(np.random.default_rng)


@given(rng=arrays, d=st.integers(1, 8), c=st.integers(1, 5), n=st.integers(1, 6))
def test_linear_classifier_saliency_is_abs_weight_column(rng, d, c, n):
    w = rng.normal(size=(d, c)).astype("float32")
    x = rng.normal(size=(n, d)).astype("float32")
    labels = rng.integers(0, c, size=n)
    maps = Saliency(linear_model(w, rng.normal(size=c).astype("float32"))).explain(x, labels)
    np.testing.assert_allclose(maps.numpy(), np.abs(w[:, labels].T), rtol=1e-6)


@given(rng=arrays, d=st.integers(1, 8))
def test_linear_regressor_saliency_is_abs_weight_without_targets(rng, d):
    w = rng.normal(size=(d, 1)).astype("float32")
    x = rng.normal(size=(3, d)).astype("float32")
    model = linear_model(w, np.array([0.5], "float32"))
    maps = Saliency(model, operator="regression").explain(x)
    np.testing.assert_allclose(maps.numpy(), np.abs(np.broadcast_to(w[:, 0], (3, d))), rtol=1e-6)


def test_regression_selects_or_weights_outputs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype("float32")
    x = rng.normal(size=(2, 5)).astype("float32")
    explainer = Saliency(linear_model(w), operator="regression")
    np.testing.assert_allclose(explainer(x, [2, 0]).numpy(), np.abs(w[:, [2, 0]].T), rtol=1e-6)
    weights = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]], "float32")
    np.testing.assert_allclose(explainer(x, weights).numpy(), np.abs(weights @ w.T), rtol=1e-5,
                               atol=1e-6)


@given(rng=arrays, noise=st.floats(0.0, 2.0))
def test_noisy_family_on_a_linear_model(rng, noise):
    """Gradients of a linear model do not depend on x: SmoothGrad = |w|, SquareGrad = w^2,
    VarGrad = 0, whatever the noise."""
    w = rng.normal(size=(6, 2)).astype("float32")
    x = rng.normal(size=(3, 6)).astype("float32")
    model = linear_model(w)
    kw = {"nb_samples": 6, "noise": noise, "seed": 1}
    np.testing.assert_allclose(SmoothGrad(model, **kw)(x, [1, 1, 1]).numpy()[0], np.abs(w[:, 1]),
                               rtol=1e-5)
    np.testing.assert_allclose(SquareGrad(model, **kw)(x, [1, 1, 1]).numpy()[0], w[:, 1] ** 2,
                               rtol=1e-5)
    np.testing.assert_allclose(VarGrad(model, **kw)(x, [1, 1, 1]).numpy(), 0.0, atol=1e-6)


def test_noise_free_family_equals_saliency(images, labels):
    model = small_cnn()
    saliency = Saliency(model).explain(images, labels).numpy()
    kw = {"nb_samples": 3, "noise": 0.0, "seed": 0}
    np.testing.assert_allclose(SmoothGrad(model, **kw)(images, labels).numpy(), saliency,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(SquareGrad(model, **kw)(images, labels).numpy(), saliency**2,
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(VarGrad(model, **kw)(images, labels).numpy(), 0.0, atol=1e-9)


def test_vargrad_is_the_variance_of_the_gradients():
    """A quadratic score sum(x^2 * a): the gradient 2 a x is linear in x, so its variance
    over x + N(0, s^2) is (2 a s)^2, and SmoothGrad's mean is |2 a x|."""
    a = np.array([0.5, -1.0, 2.0], "float32")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.ops.sum(inputs * inputs * a, axis=-1, keepdims=True))
    x = np.array([[0.0, 1.0, 2.0]], "float32")  # range 2: noise 0.25 -> sigma 0.5
    kw = {"nb_samples": 4000, "noise": 0.25, "seed": 3, "operator": "regression"}
    np.testing.assert_allclose(VarGrad(model, **kw)(x).numpy()[0], (2 * a * 0.5) ** 2, rtol=0.1)
    np.testing.assert_allclose(SmoothGrad(model, **kw)(x).numpy()[0], np.abs(2 * a * x[0]),
                               atol=0.06)


def random_relu_network(draw, rng):
    """A random small piecewise-linear network: convs (fused or separate ReLU), batch norm
    with non-trivial statistics, pooling, a residual add, Rescaling with an offset."""
    size = draw(st.integers(5, 9))
    channels = draw(st.integers(1, 3))
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Rescaling(draw(st.floats(0.5, 2.0)), offset=draw(st.floats(-1, 1)))(inputs)
    for _ in range(draw(st.integers(1, 3))):
        filters = draw(st.integers(2, 5))
        fused = draw(st.booleans())
        x = keras.layers.Conv2D(filters, 3, padding="same",
                                activation="relu" if fused else None,
                                bias_initializer="random_normal")(x)
        if draw(st.booleans()):
            x = keras.layers.BatchNormalization()(x)
        if not fused:
            x = keras.layers.ReLU()(x)
        if draw(st.booleans()):
            y = keras.layers.Conv2D(filters, 1, bias_initializer="random_normal")(x)
            x = keras.layers.Add()([x, y])
        if draw(st.booleans()) and x.shape[1] >= 4:
            x = keras.layers.MaxPooling2D()(x)
    pool = keras.layers.Flatten() if draw(st.booleans()) else keras.layers.GlobalAveragePooling2D()
    x = pool(x)
    x = keras.layers.Dense(draw(st.integers(2, 6)), activation="relu",
                           bias_initializer="random_normal")(x)
    outputs = keras.layers.Dense(3, bias_initializer="random_normal")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c),
                               rng.uniform(0.5, 2, c)])
    return model, (size, size, channels)


@given(data=st.data(), rng=arrays)
def test_fullgrad_raw_terms_add_up_to_the_score(data, rng):
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    model, shape = random_relu_network(data.draw, rng)
    x = rng.normal(size=(3, *shape)).astype("float32")
    labels = rng.integers(0, 3, size=3)
    explainer = FullGrad(model, batch_size=2)
    input_term, bias_terms = explainer.raw_terms(x, labels)
    assert input_term.shape == x.shape
    assert len(bias_terms) == len(explainer.bias_layers) > 0
    total = tf.reduce_sum(input_term, axis=[1, 2, 3]).numpy()
    magnitude = tf.reduce_sum(tf.abs(input_term), axis=[1, 2, 3]).numpy()
    for term in bias_terms:
        axes = list(range(1, term.shape.rank))
        total += tf.reduce_sum(term, axis=axes).numpy()
        magnitude += tf.reduce_sum(tf.abs(term), axis=axes).numpy()
    score = model(x).numpy()[np.arange(3), labels]
    np.testing.assert_allclose(total, score, atol=1e-5 + 1e-5 * float(magnitude.max()))


def test_fullgrad_takes_bias_gradients_at_the_pre_activation():
    """One unit, relu(w x + b) with w x + b < 0 for the input: the gradient at the
    post-activation would be 1 but at the pre-activation it is 0, so the bias term is 0."""
    inputs = keras.Input((1,))
    hidden = keras.layers.Dense(1, activation="relu")
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden(inputs)))
    hidden.set_weights([np.array([[1.0]], "float32"), np.array([-5.0], "float32")])
    model.layers[-1].set_weights([np.array([[2.0]], "float32"), np.array([0.5], "float32")])
    _, bias_terms = FullGrad(model, operator="regression").raw_terms(np.array([[1.0]], "float32"))
    np.testing.assert_allclose([t.numpy().item() for t in bias_terms], [0.0, 0.5])
    _, bias_terms = FullGrad(model, operator="regression").raw_terms(np.array([[7.0]], "float32"))
    np.testing.assert_allclose([t.numpy().item() for t in bias_terms], [2.0 * -5.0, 0.5])


def test_fullgrad_counts_batchnorm_implicit_bias():
    inputs = keras.Input((2,))
    bn = keras.layers.BatchNormalization(epsilon=0.01)
    model = keras.Model(inputs, bn(inputs))
    gamma, beta = np.array([2.0, 3.0]), np.array([0.5, -1.0])
    mean, var = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    bn.set_weights([gamma, beta, mean, var])
    explainer = FullGrad(model)
    _, (term,) = explainer.raw_terms(np.array([[1.0, 1.0]], "float32"), [1])
    expected = beta[1] - gamma[1] * mean[1] / np.sqrt(var[1] + 0.01)
    np.testing.assert_allclose(term.numpy(), [[0.0, expected]], rtol=1e-6)


def test_fullgrad_map_is_the_sum_of_postprocessed_terms(images, labels):
    model = small_cnn()
    explainer = FullGrad(model)
    input_term, bias_terms = explainer.raw_terms(images, labels)
    expected = tf.reduce_sum(fullgrad_postprocess(input_term), -1, keepdims=True)
    for term in bias_terms:
        if term.shape.rank == 4:
            post = tf.reduce_sum(fullgrad_postprocess(term), -1, keepdims=True)
            expected += tf.image.resize(post, images.shape[1:3])
    np.testing.assert_allclose(explainer(images, labels).numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_gradcam_weights_and_combination_on_hand_arrays():
    gradients = np.zeros((1, 2, 2, 2), "float32")
    gradients[0, :, :, 0] = [[1, 3], [0, 0]]  # mean 1
    gradients[0, :, :, 1] = [[-2, -2], [-2, -2]]  # mean -2
    weights = gradcam_weights(tf.constant(gradients)).numpy()
    np.testing.assert_allclose(weights, [[1.0, -2.0]])
    activations = np.zeros((1, 2, 2, 2), "float32")
    activations[0, :, :, 0] = [[1, 2], [3, 4]]
    activations[0, :, :, 1] = [[1, 0], [2, 0]]
    cam = weighted_activations(tf.constant(activations), tf.constant(weights)).numpy()
    np.testing.assert_allclose(cam, [[[0.0, 2.0], [0.0, 4.0]]])  # relu(1*a0 - 2*a1)


def evidence_model():
    """Class 1 counts bright red pixels, class 0 bright blue ones: the evidence for a class
    sits where its colour is."""
    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="detector")
    x = conv(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(2)
    model = keras.Model(inputs, head(x))
    kernel = np.zeros((3, 3, 3, 2), "float32")
    kernel[1, 1, 2, 0] = 1.0  # channel 0 <- blue
    kernel[1, 1, 0, 1] = 1.0  # channel 1 <- red
    conv.set_weights([kernel, np.array([-0.5, -0.5], "float32")])
    head.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    return model


def scene(red_at, blue_at):
    image = np.zeros((16, 16, 3), "float32")
    image[red_at[0]:red_at[0] + 4, red_at[1]:red_at[1] + 4, 0] = 1.0
    image[blue_at[0]:blue_at[0] + 4, blue_at[1]:blue_at[1] + 4, 2] = 1.0
    return image


@pytest.mark.parametrize("method", [GradCAM, Saliency, Occlusion, FullGrad, "GradCAMPP",
                                    "LayerCAM", "GradientInput", "IntegratedGradients",
                                    "ScoreCAM", "GuidedBackprop"])
def test_maps_peak_on_the_evidence(method):
    if isinstance(method, str):
        import saliencekit.attributions

        method = getattr(saliencekit.attributions, method)
    model = evidence_model()
    images = np.stack([scene((1, 1), (10, 10)), scene((10, 2), (2, 10))])
    kwargs = {"patch_size": 2} if method is Occlusion else {}
    explainer = method(model, **kwargs)
    for label, colour in [(1, 0), (0, 2)]:
        maps = explainer(images, [label, label]).numpy()[..., 0]
        for image, heat in zip(images, maps):
            row, col = np.unravel_index(np.argmax(heat), heat.shape)
            assert image[row, col, colour] == 1.0, (method.__name__, label)


def test_occlusion_of_a_linear_model_is_exact():
    """With patches that do not overlap, a position's value is its patch's share of the
    score: sum over the patch of w * (x - occlusion_value), summed over channels."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 6, 2))
    dense = keras.layers.Dense(1)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    w = rng.normal(size=(48, 1)).astype("float32")
    dense.set_weights([w, np.array([3.0], "float32")])
    x = rng.normal(size=(2, 4, 6, 2)).astype("float32")
    maps = Occlusion(model, patch_size=(2, 3), occlusion_value=0.5, operator="regression",
                     batch_size=3)(x).numpy()[..., 0]
    contribution = (w[:, 0].reshape(4, 6, 2) * (x - 0.5)).sum(-1)  # (2, 4, 6)
    expected = contribution.reshape(2, 2, 2, 2, 3).sum(axis=(2, 4))  # per patch
    expected = np.repeat(np.repeat(expected, 2, axis=1), 3, axis=2)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)


def test_occlusion_averages_overlapping_patches():
    inputs = keras.Input((5,))
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.ones((5, 1), "float32")])
    maps = Occlusion(model, patch_size=2, patch_stride=1, operator="regression")(
        np.ones((1, 5), "float32")).numpy()
    # every patch removes 2; each position is covered by 1 or 2 patches, each dropping 2
    np.testing.assert_allclose(maps, [[2.0, 2.0, 2.0, 2.0, 2.0]])


@given(size=st.integers(1, 40), patch=st.integers(1, 12), stride=st.integers(1, 12))
def test_patches_cover_every_position_when_they_touch(size, patch, stride):
    starts = patch_starts(size, patch, stride)
    covered = np.zeros(size, bool)
    for start in starts:
        assert start >= 0 and (start + patch <= size or start == 0)
        covered[start:start + patch] = True
    assert covered[0] and covered[-1]
    assert covered.all() or stride > patch


def test_occlusion_gaps_between_patches_are_zero_not_nan():
    inputs = keras.Input((7,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    maps = Occlusion(model, patch_size=1, patch_stride=3, operator="regression")(
        np.ones((1, 7), "float32")).numpy()
    assert np.isfinite(maps).all()
    np.testing.assert_array_equal(maps[0, [1, 2, 4, 5]], 0.0)


def test_noise_is_standard_normal_and_a_function_of_seed_row_and_sample():
    from saliencekit.commons import random

    seed = tf.constant(1234, tf.int64)
    block = random.gaussian((7, 3), seed, tf.constant(0, tf.int64), 2000, 5).numpy()
    flat = block.ravel()  # (2000, 7, 3): the mean's standard error is 0.005
    assert abs(flat.mean()) < 0.02
    assert abs(flat.std() - 1) < 0.02
    assert abs(np.mean(flat**4) - 3) < 0.1  # Gaussian kurtosis
    rows = block.reshape(2000, -1)
    correlation = np.corrcoef(rows[:100])
    assert np.abs(correlation[np.triu_indices(100, 1)]).max() < 0.8  # 21 values per row
    assert abs(np.corrcoef(rows[:-1].ravel(), rows[1:].ravel())[0, 1]) < 0.03
    # rows 150..159 drawn alone equal the same rows drawn within the block
    alone = random.gaussian((7, 3), seed, tf.constant(150, tf.int64), 10, 5).numpy()
    np.testing.assert_array_equal(alone, block[150:160])
    for other in (random.gaussian((7, 3), seed, tf.constant(0, tf.int64), 2000, 6),
                  random.gaussian((7, 3), seed + 1, tf.constant(0, tf.int64), 2000, 5)):
        assert abs(np.corrcoef(other.numpy().ravel(), flat)[0, 1]) < 0.02


@pytest.mark.parametrize("reducer", ["sum", "max", "min", "mean", None])
def test_fused_fullgrad_postprocess_equals_the_reference(reducer):
    from saliencekit.attributions.fullgrad import reduced_postprocess
    from saliencekit.commons.postprocess import reduce_channels

    term = tf.constant(np.random.default_rng(0).normal(size=(3, 5, 6, 4)), tf.float32)
    expected = reduce_channels(fullgrad_postprocess(term), reducer)
    np.testing.assert_allclose(reduced_postprocess(term, reducer).numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_normalisation_filters():
    from saliencekit.commons import absolute_normalize, normalize, positive_normalize

    maps = tf.constant([[[-2.0, 0.0, 6.0]], [[3.0, 3.0, 3.0]]])  # the second is constant
    np.testing.assert_allclose(normalize(maps).numpy(), [[[0.0, 0.25, 1.0]], [[0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(absolute_normalize(maps).numpy(),
                               [[[1 / 3, 0.0, 1.0]], [[1.0, 1.0, 1.0]]])
    np.testing.assert_allclose(positive_normalize(maps).numpy(),
                               [[[0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0]]])
    zeros = tf.zeros((1, 2, 2, 1))
    for fn in (normalize, absolute_normalize, positive_normalize):
        assert np.isfinite(fn(zeros).numpy()).all()


@given(rng=arrays, d=st.integers(1, 8), c=st.integers(1, 4))
def test_gradient_input_of_a_linear_model_is_w_times_x(rng, d, c):
    from saliencekit.attributions import GradientInput

    w = rng.normal(size=(d, c)).astype("float32")
    x = rng.normal(size=(4, d)).astype("float32")
    labels = rng.integers(0, c, size=4)
    maps = GradientInput(linear_model(w, rng.normal(size=c).astype("float32")))(x, labels)
    np.testing.assert_allclose(maps.numpy(), w[:, labels].T * x, rtol=1e-5, atol=1e-6)


@given(rng=arrays, steps=st.integers(1, 9))
def test_integrated_gradients_of_a_linear_model_is_exact_for_any_steps(rng, steps):
    from saliencekit.attributions import IntegratedGradients

    w = rng.normal(size=(5, 3)).astype("float32")
    x = rng.normal(size=(3, 5)).astype("float32")
    baseline = rng.normal(size=5).astype("float32")
    maps = IntegratedGradients(linear_model(w), steps=steps, baseline_value=baseline)(
        x, [0, 1, 2])
    np.testing.assert_allclose(maps.numpy(), w[:, [0, 1, 2]].T * (x - baseline), rtol=1e-4,
                               atol=1e-5)


def test_integrated_gradients_completeness_error_shrinks_with_steps(images, labels):
    """Attributions add up to score(x) - score(baseline); the Riemann error shrinks."""
    from saliencekit.attributions import IntegratedGradients

    model = small_cnn(activation="softplus")  # smooth, so the midpoint rule converges
    gap = (model(images).numpy() - model(np.zeros_like(images)).numpy())[np.arange(7), labels]
    errors = []
    for steps in (2, 8, 32):
        maps = IntegratedGradients(model, steps=steps, batch_size=16)(images, labels).numpy()
        errors.append(np.abs(maps.sum(axis=(1, 2, 3)) - gap).max())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 1e-3 * max(1.0, np.abs(gap).max())


def test_integrated_gradients_baselines():
    from saliencekit.attributions import IntegratedGradients

    w = np.array([[1.0], [2.0], [-1.0]], "float32")
    model = linear_model(w)
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    explain = lambda baseline: IntegratedGradients(
        model, steps=3, baseline_value=baseline, operator="regression")(x).numpy()
    np.testing.assert_allclose(explain(0.5), w[:, 0] * (x - 0.5), rtol=1e-6)
    np.testing.assert_allclose(explain([1.0, 0.0, 1.0]), w[:, 0] * (x - [1, 0, 1]), rtol=1e-6)
    np.testing.assert_allclose(explain(lambda inputs: inputs / 2), w[:, 0] * x / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="baseline_value: expected an array broadcasting"):
        explain([1.0, 2.0])
    with pytest.raises(ValueError, match="baseline_value: expected a callable returning baselines"):
        explain(lambda inputs: inputs[:, :2])
    with pytest.raises(TypeError, match="baseline_value: expected a number"):
        explain("black")
    with pytest.raises(ValueError, match="steps: expected an integer >= 1, got 0"):
        IntegratedGradients(model, steps=0)


def test_gradcampp_and_layercam_on_hand_arrays():
    from saliencekit.attributions.cam import gradcampp_weights

    gradients = np.zeros((1, 1, 2, 2), "float32")
    gradients[0, 0, :, 0] = [1.0, 2.0]
    gradients[0, 0, :, 1] = [-1.0, 0.0]
    activations = np.ones((1, 1, 2, 2), "float32")
    activations[0, 0, :, 0] = [1.0, 3.0]  # channel sums: 4 and 2
    weights = gradcampp_weights(tf.constant(activations), tf.constant(gradients)).numpy()
    # channel 0: alpha = g^2 / (2 g^2 + 4 g^3): 1/6 at g=1, 4/40 at g=2 -> 1/6*1 + 0.1*2
    # channel 1: negative or zero gradients count for nothing
    np.testing.assert_allclose(weights, [[1 / 6 + 0.2, 0.0]], rtol=1e-6)


@given(rng=arrays, d=st.integers(1, 6), h=st.integers(1, 8), c=st.integers(1, 4),
       n=st.integers(1, 5), kind=st.sampled_from(["relu", "capped", "leaky"]))
def test_guided_backprop_and_deconvnet_on_known_relu_masks(rng, d, h, c, n, kind):
    """x -> relu(x W1) -> W2: saliency is W1 (mask * w), guided backprop W1 (mask * relu(w)),
    DeconvNet W1 relu(w) (no mask), with w = W2[:, class] and mask = 1[x W1 > 0] (and
    x W1 < cap for a capped ReLU such as ReLU6; the slope below 0 for a leaky one)."""
    from saliencekit.attributions import DeconvNet, GuidedBackprop

    w1 = rng.normal(size=(d, h)).astype("float32")
    w2 = rng.normal(size=(h, c)).astype("float32")
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(h, use_bias=False),
                              keras.layers.LeakyReLU(0.2) if kind == "leaky" else
                              keras.layers.ReLU(max_value=1.0 if kind == "capped" else None),
                              keras.layers.Dense(c, use_bias=False)])
    model.layers[0].set_weights([w1])
    model.layers[2].set_weights([w2])
    x = rng.normal(size=(n, d)).astype("float32")
    labels = rng.integers(0, c, size=n)
    hidden = x @ w1
    mask = ((hidden > 0) & (hidden < (1.0 if kind == "capped" else np.inf))).astype("float32")
    if kind == "leaky":
        mask = np.where(hidden > 0, 1.0, 0.2).astype("float32")
    w = w2[:, labels].T  # (n, h)
    expected = {
        Saliency: (mask * w) @ w1.T,
        GuidedBackprop: (mask * np.maximum(w, 0)) @ w1.T,
        DeconvNet: np.maximum(w, 0) @ w1.T,
    }
    for method, gradient in expected.items():
        np.testing.assert_allclose(method(model)(x, labels).numpy(), np.abs(gradient),
                                   rtol=1e-4, atol=1e-5, err_msg=method.__name__)


def test_guided_backprop_finds_every_relu_and_leaves_other_activations():
    from saliencekit.attributions import GuidedBackprop

    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(5, activation="relu6", name="in_relu6")(
        inner_in), name="inner")
    model = keras.Sequential([
        keras.Input((6,)), inner, keras.layers.Dense(5, activation="tanh", name="tanh"),
        keras.layers.LeakyReLU(0.1, name="leaky"), keras.layers.Dense(4, name="fused_relu",
                                                                       activation="relu"),
        keras.layers.Activation("relu", name="act"), keras.layers.Dense(2),
    ])
    explainer = GuidedBackprop(model)
    assert set(explainer.relu_layers) == {"in_relu6", "leaky", "fused_relu", "act"}
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    np.testing.assert_allclose(explainer._explained(x).numpy(), model(x).numpy(), rtol=1e-6)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh"),
                              keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="no ReLU"):
        explained = GuidedBackprop(plain)
    np.testing.assert_allclose(explained(x[:, :3], [0, 1, 0]).numpy(),
                               Saliency(plain)(x[:, :3], [0, 1, 0]).numpy(), rtol=1e-6)


def test_scorecam_weights_are_the_softmax_of_masked_scores():
    """One input, a conv layer with two channels: the map is relu(sum_k w_k A_k) with w the
    softmax of the scores of the input times each min-max normalised channel."""
    from saliencekit.attributions import ScoreCAM

    model = evidence_model()
    image = scene((1, 1), (10, 10))[None]
    tapped = keras.Model(model.inputs[0], model.get_layer("detector").output)
    activations = tapped(image).numpy()  # (1, 16, 16, 2)
    low = activations.min(axis=(1, 2), keepdims=True)
    masks = (activations - low) / (activations.max(axis=(1, 2), keepdims=True) - low)
    scores = np.stack([model(image * masks[..., k:k + 1]).numpy()[0, 1] for k in range(2)])
    weights = np.exp(scores) / np.exp(scores).sum()
    expected = np.maximum((activations[0] * weights).sum(-1), 0)
    for batch_size in (1, 64):  # one channel per pass, or both
        maps = ScoreCAM(model, batch_size=batch_size)(image, [1]).numpy()[0, ..., 0]
        np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
