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
    wrapped = method(nested_cnn())
    np.testing.assert_allclose(TTA(wrapped, scales=(), hflip=False)(images, labels).numpy(),
                               wrapped(images, labels).numpy(), rtol=1e-6, atol=1e-7)
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


def test_tta_refuses_what_it_cannot_do():
    fixed = small_cnn()  # 12 x 12 inputs
    with pytest.raises(ValueError, match=r"scales: expected \(\) for a model with a fixed"):
        TTA(Saliency(fixed))
    TTA(Saliency(fixed), scales=())  # flips only: fine
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
