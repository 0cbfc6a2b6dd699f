"""xplique users change their imports and nothing else (issue 13): every class takes
xplique 2.0's parameters in xplique's positional order with xplique's names, saliencekit's
extras (seed, jit_compile, strategy) keyword-only after them."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import small_cnn
from saliencekit import attributions as sk

X = np.random.default_rng(0).random((5, 12, 12, 3)).astype("float32")
Y = np.array([0, 1, 2, 3, 0])

#: xplique 2.0's positional parameters, in order (PEERS.md; xplique's documentation)
XPLIQUE = {
    "Saliency": ["model", "output_layer", "batch_size", "operator", "reducer"],
    "GradientInput": ["model", "output_layer", "batch_size", "operator", "reducer"],
    "GuidedBackprop": ["model", "output_layer", "batch_size", "operator", "reducer"],
    "DeconvNet": ["model", "output_layer", "batch_size", "operator", "reducer"],
    "SmoothGrad": ["model", "output_layer", "batch_size", "operator", "reducer", "nb_samples",
                   "noise"],
    "SquareGrad": ["model", "output_layer", "batch_size", "operator", "reducer", "nb_samples",
                   "noise"],
    "VarGrad": ["model", "output_layer", "batch_size", "operator", "reducer", "nb_samples",
                "noise"],
    "IntegratedGradients": ["model", "output_layer", "batch_size", "operator", "reducer",
                            "steps", "baseline_value"],
    "GradCAM": ["model", "output_layer", "batch_size", "operator", "conv_layer"],
    "GradCAMPP": ["model", "output_layer", "batch_size", "operator", "conv_layer"],
    "Occlusion": ["model", "batch_size", "operator", "patch_size", "patch_stride",
                  "occlusion_value"],
    "Rise": ["model", "batch_size", "operator", "nb_samples", "grid_size",
             "preservation_probability", "mask_value"],
    "KernelShap": ["model", "batch_size", "operator", "map_to_interpret_space", "nb_samples",
                   "ref_value"],
    "Lime": ["model", "batch_size", "operator", "interpretable_model", "similarity_kernel",
             "pertub_func", "map_to_interpret_space", "ref_value", "nb_samples",
             "distance_mode", "kernel_width", "prob"],
    "SobolAttributionMethod": ["model", "grid_size", "nb_design", "sampler", "estimator",
                               "perturbation_function", "batch_size", "operator"],
    "HsicAttributionMethod": ["model", "grid_size", "nb_design", "sampler", "estimator",
                              "perturbation_function", "batch_size", "estimator_batch_size",
                              "operator"],
}
#: saliencekit's own classes follow their family's order
FAMILY = {"LayerCAM": "GradCAM", "ScoreCAM": "GradCAM", "FullGrad": "GradientInput"}


@pytest.mark.parametrize("name", sorted({*XPLIQUE, *FAMILY}))
def test_positional_order_and_names_are_xpliques_extras_keyword_only(name):
    parameters = inspect.signature(getattr(sk, name)).parameters
    positional = [p for p, v in parameters.items() if v.kind == v.POSITIONAL_OR_KEYWORD]
    expected = XPLIQUE[FAMILY.get(name, name)]
    assert positional == expected
    for extra in ("seed", "jit_compile", "strategy"):
        if extra in parameters:
            assert parameters[extra].kind == inspect.Parameter.KEYWORD_ONLY, extra


def same(a, b):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def model():
    return small_cnn()


def test_calls_as_xplique_writes_them_mean_what_they_mean_there(model):
    same(sk.Saliency(model, None, 16, None, "mean")(X, Y),
         sk.Saliency(model, batch_size=16, reducer="mean")(X, Y))
    same(sk.SmoothGrad(model, None, 2, None, "mean", 6, 0.1, seed=0)(X, Y),
         sk.SmoothGrad(model, batch_size=2, reducer="mean", nb_samples=6, noise=0.1,
                       seed=0)(X, Y))
    same(sk.IntegratedGradients(model, None, 16, None, "sum", 8, 0.5)(X, Y),
         sk.IntegratedGradients(model, batch_size=16, steps=8, baseline_value=0.5)(X, Y))
    cam = sk.GradCAM(model, None, 16, None, "last_conv")
    assert isinstance(cam.conv_layer, keras.layers.Conv2D) and cam.conv_layer.name == "last_conv"
    # GradCAM(model, -2) is an output_layer in xplique: here too (the layer before the head)
    rerouted = sk.GradCAM(model, -2)
    assert rerouted.output_layer == -2 and rerouted.batch_size == 64
    # the silent case: Occlusion(model, 16) is batch_size=16 in xplique, and here
    occlusion = sk.Occlusion(model, 16)
    assert occlusion.batch_size == 16 and occlusion.patch_size == (8, 8)
    assert sk.Occlusion(model, 16, None, 3, 3, 0.0).patch_size == (3, 3)
    same(sk.Occlusion(model, 16, None, 4, 2, 0.5)(X, Y),
         sk.Occlusion(model, batch_size=16, patch_size=4, patch_stride=2,
                      occlusion_value=0.5)(X, Y))


def test_gradient_input_with_xpliques_output_layer_index(model):
    """``GradientInput(model, -2)``: the output of the layer before the last one."""
    inner = keras.Model(model.inputs, model.layers[-2].output)
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(inner(x) * tf.one_hot(Y, inner.output.shape[-1]), -1)
    expected = (tape.gradient(score, x) * x).numpy().sum(-1, keepdims=True)
    np.testing.assert_allclose(sk.GradientInput(model, -2)(X, Y).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["Saliency", "SmoothGrad", "GradCAM", "Occlusion"])
def test_batch_size_none_is_all_at_once_and_unbatched_datasets_are_read(model, name):
    settings = {"SmoothGrad": {"nb_samples": 4, "seed": 1}}.get(name, {})
    cls = getattr(sk, name)
    reference = cls(model, batch_size=2, **settings)(X, Y)
    explainer = cls(model, batch_size=None, **settings)
    assert explainer.batch_size is None
    same(explainer(X, Y), reference)
    assert explainer._kernel.experimental_get_tracing_count() == 1  # one batch of 5
    unbatched = tf.data.Dataset.from_tensor_slices((X, Y))  # xplique accepts these
    same(cls(model, batch_size=2, **settings)(unbatched), reference)
    same(explainer(unbatched), reference)
    same(explainer(unbatched.batch(2)), reference)  # a Dataset's own batches
