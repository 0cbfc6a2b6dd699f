"""Meta-explainers: Smoothed and TTA wrap any explainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import nested_cnn, small_cnn
from saliencekit.attributions import (
    TTA,
    FullGrad,
    GradCAM,
    GuidedBackprop,
    Occlusion,
    Saliency,
    ScoreCAM,
    Smoothed,
    SmoothGrad,
)


@pytest.mark.parametrize("method", [Saliency, GradCAM, FullGrad, Occlusion])
def test_smoothed_without_noise_is_the_wrapped_explainer(method, images, labels):
    model = nested_cnn()
    wrapped = method(model)
    np.testing.assert_allclose(Smoothed(wrapped, nb_samples=3, noise=0.0)(images, labels).numpy(),
                               wrapped(images, labels).numpy(), rtol=1e-5, atol=1e-7)


def test_smoothed_saliency_is_smoothgrad_of_absolute_gradients(images, labels):
    """Smoothed averages maps (here |grad|, max over channels), SmoothGrad averages
    gradients: with one sample and the same noise key they agree."""
    model = small_cnn()
    smoothed = Smoothed(Saliency(model), nb_samples=1, noise=0.3, seed=5)(images, labels)
    smoothgrad = SmoothGrad(model, nb_samples=1, noise=0.3, seed=5)(images, labels)
    np.testing.assert_allclose(smoothed.numpy(), smoothgrad.numpy(), rtol=1e-4, atol=1e-7)


def test_smoothed_seeds_and_composition(images, labels):
    model = small_cnn()
    cam = GradCAM(model)
    first = Smoothed(cam, nb_samples=4, noise=0.2, seed=1)(images, labels).numpy()
    np.testing.assert_array_equal(first, Smoothed(cam, nb_samples=4, noise=0.2, seed=1)(
        images, labels).numpy())
    assert not np.allclose(first, Smoothed(cam, nb_samples=4, noise=0.2, seed=2)(
        images, labels).numpy())
    assert not np.allclose(first, cam(images, labels).numpy())
    twice = Smoothed(Smoothed(cam, nb_samples=2, seed=1), nb_samples=2, seed=2)
    maps = twice(images, labels).numpy()
    assert maps.shape == (7, 12, 12, 1)
    assert np.isfinite(maps).all()
    assert twice._kernel.experimental_get_tracing_count() == 1


def test_smoothed_resolves_missing_targets_on_clean_inputs(images):
    model = small_cnn()
    predicted = np.argmax(model(images), -1)
    explainer = Smoothed(GradCAM(model), nb_samples=3, noise=2.0, seed=0)
    np.testing.assert_allclose(explainer(images).numpy(), explainer(images, predicted).numpy(),
                               rtol=1e-5)


def test_smoothed_refuses_bad_arguments():
    with pytest.raises(TypeError, match="explainer: expected a saliencekit explainer"):
        Smoothed(small_cnn())
    with pytest.raises(ValueError, match="nb_samples"):
        Smoothed(Saliency(small_cnn()), nb_samples=0)
    with pytest.raises(ValueError, match="noise"):
        Smoothed(Saliency(small_cnn()), noise=-1.0)


def resizable_cnn(seed=0, symmetric=False):
    """A CNN of any input size; with ``symmetric``, kernels are mirror-symmetric, so the
    model is invariant to horizontal flips and its gradient maps are flip-equivariant."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])
    if symmetric:
        for layer in model.layers[:2]:
            kernel, bias = layer.get_weights()
            layer.set_weights([(kernel + kernel[:, ::-1]) / 2, bias])
    return model


@pytest.mark.parametrize("method", [Saliency, GradCAM, FullGrad, Occlusion, ScoreCAM,
                                    GuidedBackprop])
def test_tta_without_views_is_the_wrapped_explainer(method, images, labels):
    wrapped = method(nested_cnn())  # a fixed input size
    np.testing.assert_allclose(TTA(wrapped, scales=(), hflip=False)(images, labels).numpy(),
                               wrapped(images, labels).numpy(), rtol=1e-6, atol=1e-7)
    variable = method(resizable_cnn())
    np.testing.assert_allclose(TTA(variable, scales=(1.0,), hflip=False)(images, labels).numpy(),
                               variable(images, labels).numpy(), rtol=1e-6, atol=1e-7)
    noisy = Smoothed(wrapped, nb_samples=2, seed=3)
    np.testing.assert_array_equal(TTA(noisy, scales=(1.0,), hflip=False)(images, labels).numpy(),
                                  noisy(images, labels).numpy())


@pytest.mark.parametrize("method", [Saliency, GradCAM])
def test_tta_maps_are_flip_equivariant(method):
    """With hflip, the map of a mirrored image is the mirrored map, for any model; for a
    flip-invariant model, TTA changes nothing at scale 1 and a symmetric image gets a
    symmetric map."""
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    mirrored = images[:, :, ::-1]
    tta = TTA(method(resizable_cnn()), scales=(0.5, 1.5), hflip=True)
    np.testing.assert_allclose(tta(mirrored, [0, 1, 2]).numpy(),
                               tta(images, [0, 1, 2]).numpy()[:, :, ::-1], rtol=1e-4, atol=1e-6)
    wrapped = method(resizable_cnn(symmetric=True))
    np.testing.assert_allclose(TTA(wrapped, scales=(), hflip=True)(images, [0, 1, 2]).numpy(),
                               wrapped(images, [0, 1, 2]).numpy(), rtol=1e-4, atol=1e-6)
    symmetric = (images + mirrored) / 2
    maps = TTA(wrapped, scales=(0.5, 2.0))(symmetric, [0, 1, 2]).numpy()
    np.testing.assert_allclose(maps, maps[:, :, ::-1], rtol=1e-4, atol=1e-6)


def test_tta_views_average_the_maps_of_rescaled_inputs():
    images = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    model = resizable_cnn()
    cam = GradCAM(model)
    tta = TTA(cam, scales=(0.5,), hflip=False)
    assert tta.views == ((1.0, False), (0.5, False))
    small = tf.image.resize(images, (8, 8)).numpy()
    expected = (cam(images, [1, 2]).numpy()
                + tf.image.resize(cam(small, [1, 2]), (16, 16)).numpy()) / 2
    np.testing.assert_allclose(tta(images, [1, 2]).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_tta_and_smoothed_compose_in_either_order(images, labels):
    model = resizable_cnn()
    big = np.random.default_rng(2).random((5, 16, 16, 3)).astype("float32")
    for explainer in (TTA(Smoothed(GradCAM(model), nb_samples=2, seed=1), scales=(2.0,)),
                      Smoothed(TTA(GradCAM(model), scales=(2.0,)), nb_samples=2, seed=1)):
        maps = explainer(big, [0, 1, 2, 3, 0]).numpy()
        assert maps.shape == (5, 16, 16, 1)
        assert np.isfinite(maps).all() and maps.max() > 0
        np.testing.assert_array_equal(maps, explainer(big, [0, 1, 2, 3, 0]).numpy())
        assert explainer._kernel.experimental_get_tracing_count() == 1


def fixed_cnn(shape=(13, 11, 3), seed=0):
    """A CNN of one input size (odd sizes: centred regions are not symmetric)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])


def linear_model(size=12, seed=0):
    """``f(x)_c = sum(w_c * x)``: its gradient is the pattern ``w_c`` wherever, and whatever,
    the input is, so every view's Saliency map is ``|w_c|`` in the view's frame."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((size, size, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, use_bias=False)])
    patterns = np.random.default_rng(seed).normal(size=(size * size, 2)).astype("float32")
    model.layers[-1].set_weights([patterns])
    return model, np.abs(patterns.T.reshape(2, size, size))


@pytest.mark.parametrize("method", [GradCAM, Saliency, Occlusion])
def test_tta_explains_fixed_size_models_with_its_defaults(method, images, labels):
    model = small_cnn()  # 12 x 12 inputs only, as keras.applications models are 224 x 224
    tta = TTA(method(model))
    assert tta.views == ((1.0, False), (1.0, True), (0.5, False), (0.5, True), (1.5, False),
                         (1.5, True), (2.0, False), (2.0, True))
    maps = tta(images, labels).numpy()
    assert maps.shape == (7, 12, 12, 1) and np.isfinite(maps).all() and maps.max() > 0
    assert tta._kernel.experimental_get_tracing_count() == 1
    # every view sees the centre, the 1.5 and 2.0 zooms only an 8 x 8 and a 6 x 6 square
    count = tta.coverage((12, 12))
    assert count[6, 6] == 8 and count[0, 0] == 4 and count[2, 2] == 6


def test_tta_of_a_fixed_size_model_is_the_known_average_of_its_views():
    """Linear model, nearest resizing: each view's map mapped back is known in closed form,
    and the result divides by the number of views seeing each pixel (6 in the central 6 x 6
    square, 4 elsewhere)."""
    model, patterns = linear_model()
    images = np.random.default_rng(0).random((2, 12, 12, 1)).astype("float32")
    tta = TTA(Saliency(model), scales=(0.5, 2.0), hflip=True, resize_method="nearest")

    def down(a):  # 12 -> 6, nearest (half-pixel centres)
        return a[1::2, 1::2]

    def up(a):  # 6 -> 12, nearest
        return a.repeat(2, 0).repeat(2, 1)

    expected = []
    for a in patterns:
        identity = a
        zoom_in = np.zeros_like(a)  # sees the central 6 x 6 square, resized up
        zoom_in[3:9, 3:9] = down(a)
        zoom_out = up(a[3:9, 3:9])  # the image in the centre, the padding's map dropped
        maps = [identity, zoom_in, zoom_out]
        total = sum(maps) + sum(m[:, ::-1] for m in maps)  # flipped views, unflipped
        count = np.full_like(a, 4.0)
        count[3:9, 3:9] = 6.0
        expected.append(total / count)
    maps = tta(images, [0, 1]).numpy()[..., 0]
    np.testing.assert_allclose(maps, np.stack(expected), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tta.coverage((12, 12)), count)


def test_tta_pixels_outside_a_zoomed_in_view_get_nothing_from_it():
    model, patterns = linear_model()
    images = np.random.default_rng(1).random((2, 12, 12, 1)).astype("float32")
    tta = TTA(Saliency(model), scales=(2.0,), hflip=False, resize_method="nearest")
    maps = tta(images, [0, 1]).numpy()[..., 0]
    outside = np.ones((12, 12), bool)
    outside[3:9, 3:9] = False
    # outside the zoomed view: the original view's map alone, not halved
    np.testing.assert_allclose(maps[:, outside], patterns[:, outside], rtol=1e-6)
    # inside: with the zoomed view's map (the whole pattern, resized down to the square)
    inside = (patterns[:, 3:9, 3:9] + patterns[:, 1::2, 1::2]) / 2
    np.testing.assert_allclose(maps[:, 3:9, 3:9], inside, rtol=1e-6)


def test_tta_of_a_fixed_size_model_equals_a_hand_computation_of_its_views():
    """Any explainer, odd sizes (regions not centred symmetrically, so flips must be undone
    after mapping back), bilinear resizing, padding with each image's mean."""
    model = fixed_cnn()
    images = np.random.default_rng(2).random((3, 13, 11, 3)).astype("float32")
    targets = [0, 1, 3]
    cam = GradCAM(model)
    tta = TTA(cam, scales=(0.6, 2.0), hflip=True)

    def resize(x, size):
        return tf.image.resize(x, size).numpy()

    total = np.zeros((3, 13, 11, 1), np.float32)
    count = np.zeros((13, 11), np.float32)
    for scale, flip in tta.views:
        x = images[:, :, ::-1] if flip else images
        seen = np.ones((13, 11), np.float32)
        if scale == 1.0:
            back = cam(x, targets).numpy()
        elif scale == 2.0:  # the central round(13/2) x round(11/2) = 6 x 6 region
            top, left = (13 - 6) // 2, (11 - 6) // 2
            view = resize(x[:, top:top + 6, left:left + 6], (13, 11))
            back = np.zeros((3, 13, 11, 1), np.float32)
            back[:, top:top + 6, left:left + 6] = resize(cam(view, targets), (6, 6))
            seen[:] = 0
            seen[top:top + 6, left:left + 6] = 1
        else:  # 0.6: round(7.8) x round(6.6) = 8 x 7, padded with the mean, centred
            top, left = (13 - 8) // 2, (11 - 7) // 2
            view = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).copy()
            view[:, top:top + 8, left:left + 7] = resize(x, (8, 7))
            back = resize(cam(view, targets).numpy()[:, top:top + 8, left:left + 7], (13, 11))
        total += back[:, :, ::-1] if flip else back
        count += seen[:, ::-1] if flip else seen
    np.testing.assert_allclose(tta(images, targets).numpy(), total / count[None, :, :, None],
                               rtol=1e-4, atol=1e-6)
    assert count.min() == 4 and count.max() == 6
    np.testing.assert_array_equal(tta.coverage((13, 11)), count)


def test_tta_pads_zoomed_out_views_with_the_pad_value():
    model = fixed_cnn((8, 8, 3))
    images = np.random.default_rng(3).random((2, 8, 8, 3)).astype("float32")
    mean = TTA(Saliency(model), scales=(0.5,), hflip=False)
    zero = TTA(Saliency(model), scales=(0.5,), hflip=False, pad_value=0.0)
    assert zero.pad_value == 0.0 and mean.pad_value == "mean"
    assert not np.allclose(mean(images, [0, 1]).numpy(), zero(images, [0, 1]).numpy())
    view = np.zeros_like(images)
    view[:, 2:6, 2:6] = tf.image.resize(images, (4, 4)).numpy()
    small = Saliency(model)(view, [0, 1]).numpy()[:, 2:6, 2:6]
    expected = (Saliency(model)(images, [0, 1]).numpy()
                + tf.image.resize(small, (8, 8)).numpy()) / 2
    np.testing.assert_allclose(zero(images, [0, 1]).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_tta_refuses_what_it_cannot_do():
    fixed = small_cnn()  # 12 x 12 inputs
    with pytest.raises(ValueError, match="pad_value: expected one of 'mean'"):
        TTA(Saliency(fixed), pad_value="edge")
    with pytest.raises(TypeError, match="pad_value: expected \"mean\" or a finite number"):
        TTA(Saliency(fixed), pad_value=float("nan"))
    with pytest.raises(ValueError, match="explainer: expected an explainer of an image model"):
        TTA(Saliency(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])))
    with pytest.raises(ValueError, match="explainer: expected an explainer whose targets"):
        TTA(Saliency(resizable_cnn(), operator="semantic segmentation"))
    with pytest.raises(TypeError, match="explainer: expected a saliencekit explainer"):
        TTA(fixed)
    with pytest.raises(ValueError, match="scales: expected a sequence of finite numbers > 0"):
        TTA(Saliency(resizable_cnn()), scales=(0.5, -1.0))
    with pytest.raises(TypeError, match="scales: expected a sequence"):
        TTA(Saliency(resizable_cnn()), scales=2.0)
    with pytest.raises(TypeError, match="hflip: expected True or False"):
        TTA(Saliency(resizable_cnn()), hflip="yes")
    with pytest.raises(ValueError, match="resize_method: expected one of"):
        TTA(Saliency(resizable_cnn()), resize_method="cubic")
