"""Meta-explainers: Smoothed wraps any explainer."""

import numpy as np
import pytest

from helpers import nested_cnn, small_cnn
from saliencekit.attributions import (
    FullGrad,
    GradCAM,
    Occlusion,
    Saliency,
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
