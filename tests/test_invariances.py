"""What must not change the answer, and what explaining must not change."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    BLACK_BOX,
    EXPLAINERS,
    GRAPH_ONLY,
    explainer_factories,
    nested_cnn,
    small_cnn,
    thorough,
)
from saliencekit.attributions import GradCAM, Saliency, SmoothGrad

FACTORIES = explainer_factories()


#: the sampling family's batch-size invariance is a property test over any batch size in
#: test_blackbox.py (test_a_seed_repeats_a_run_for_any_batch_size); here it is the slow variant
SAMPLED = BLACK_BOX - {"Occlusion"}


@pytest.mark.parametrize("name", thorough(EXPLAINERS, set(EXPLAINERS) - SAMPLED))
def test_batch_size_never_changes_the_answer(name, images, labels):
    """Deterministic methods, and seeded stochastic ones: noise is keyed by input index."""
    model = nested_cnn()
    reference = FACTORIES[name](model, batch_size=len(images)).explain(images, labels).numpy()
    for batch_size in (1, 3, 16):
        maps = FACTORIES[name](model, batch_size=batch_size).explain(images, labels).numpy()
        np.testing.assert_allclose(maps, reference, rtol=1e-4, atol=1e-6, err_msg=str(batch_size))


@pytest.mark.parametrize("name", ["SmoothGrad", "VarGrad", "SquareGrad"])
def test_a_seed_repeats_a_run_and_other_seeds_differ(name, images, labels):
    model = small_cnn()
    first = FACTORIES[name](model, seed=11).explain(images, labels).numpy()
    again = FACTORIES[name](model, seed=11).explain(images, labels).numpy()
    other = FACTORIES[name](model, seed=12).explain(images, labels).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    unseeded = FACTORIES[name](model, seed=None)
    assert not np.allclose(unseeded(images, labels).numpy(), unseeded(images, labels).numpy())


def test_noise_is_keyed_by_the_input_index_not_the_batch(images, labels):
    """Calls of different lengths share rows 0..k: those rows get the same noise."""
    model = small_cnn()
    explainer = SmoothGrad(model, nb_samples=4, seed=5, batch_size=4)
    whole = explainer(images, labels).numpy()
    head = explainer(images[:3], labels[:3]).numpy()  # another batch shape: a retrace
    np.testing.assert_allclose(head, whole[:3], rtol=1e-4, atol=1e-7)


#: Inputs and targets reach every kernel through the shared runner: Rise stands for the rest
#: of its family (one sample loop, attributions/sampled.py) in these two; the others are slow
CONVERSIONS = thorough(EXPLAINERS, set(EXPLAINERS) - (SAMPLED - {"Rise"}))


@pytest.mark.parametrize("name", CONVERSIONS)
def test_class_ids_and_one_hot_give_the_same_maps(name, images, labels):
    explainer = FACTORIES[name](small_cnn())
    by_id = explainer(images, labels).numpy()
    one_hot = np.eye(4, dtype="float32")[labels]
    np.testing.assert_allclose(explainer(images, one_hot).numpy(), by_id, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(explainer(images, labels.astype("float32")).numpy(), by_id,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(explainer(images, tf.constant(labels)).numpy(), by_id, rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("name", CONVERSIONS)
def test_numpy_tensor_and_dataset_give_the_same_maps(name, images, labels):
    explainer = FACTORIES[name](small_cnn(), batch_size=3)
    reference = explainer(images, labels).numpy()
    np.testing.assert_allclose(explainer(tf.constant(images), labels).numpy(), reference,
                               rtol=1e-5, atol=1e-7)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    np.testing.assert_allclose(explainer(dataset).numpy(), reference, rtol=1e-5, atol=1e-7)
    listed = [list(map(list, map(list, image))) for image in images.astype(float)]
    np.testing.assert_allclose(explainer(listed, list(labels)).numpy(), reference, rtol=1e-5,
                               atol=1e-7)


def test_a_dataset_of_inputs_only_explains_the_predicted_class(images):
    model = small_cnn()
    explainer = Saliency(model)
    predicted = np.argmax(model(images), axis=-1)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(3)
    np.testing.assert_allclose(explainer(dataset).numpy(), explainer(images, predicted).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(explainer(images).numpy(), explainer(images, predicted).numpy(),
                               rtol=1e-6)


def test_smoothgrad_explains_the_class_predicted_for_the_clean_input():
    """targets=None resolves the class on the clean input, not per noisy copy: with huge
    noise the predicted class of noisy copies changes, the explained class must not."""
    model = small_cnn()
    images = np.random.default_rng(1).random((4, 12, 12, 3)).astype("float32")
    predicted = np.argmax(model(images), axis=-1)
    explainer = SmoothGrad(model, nb_samples=6, noise=3.0, seed=0)
    np.testing.assert_allclose(explainer(images).numpy(), explainer(images, predicted).numpy(),
                               rtol=1e-5)


#: test_blackbox.py counts the sampling family's traces (graph independent of the samples)
@pytest.mark.parametrize("name", CONVERSIONS)
def test_37_inputs_in_batches_of_8_trace_once(name):
    images = np.random.default_rng(0).random((37, 12, 12, 3)).astype("float32")
    labels = np.arange(37) % 4
    explainer = FACTORIES[name](small_cnn(), batch_size=8)
    explainer(images, labels)
    assert explainer._kernel.experimental_get_tracing_count() == 1
    explainer(images[::-1], labels)  # same shapes: no retrace
    explainer(tf.data.Dataset.from_tensor_slices((images, labels)).batch(5))
    assert explainer._kernel.experimental_get_tracing_count() == 1


def model_state(model):
    return {
        "weights": [w.copy() for w in model.get_weights()],
        "trainable": [layer.trainable for layer in model.layers],
        "config": model.get_config(),
        "activations": [getattr(layer, "activation", None) for layer in model.layers],
        "layers": len(model.layers),
    }


#: the sampling family only calls the model (the runner's path): Rise stands for it
@pytest.mark.parametrize("name", CONVERSIONS)
def test_explaining_never_changes_the_model(name, images, labels):
    import random

    model = nested_cnn()
    before = model_state(model)
    outputs = model(images).numpy()
    states = (np.random.get_state()[1].copy(), random.getstate(),  # noqa: NPY002 (global)
              tf.random.get_global_generator().state.numpy().copy())
    explainer = FACTORIES[name](model)
    explainer(images, labels)
    if name == "FullGrad":
        explainer.raw_terms(images, labels)
    if name == "SmoothGrad":  # fresh noise: drawn without the global generators
        FACTORIES[name](model, seed=None)(images, labels)
    after = model_state(model)
    # no global state left behind: random generators, eager mode
    np.testing.assert_array_equal(np.random.get_state()[1], states[0])  # noqa: NPY002
    assert random.getstate() == states[1]
    np.testing.assert_array_equal(tf.random.get_global_generator().state.numpy(), states[2])
    assert tf.executing_eagerly() and not tf.config.functions_run_eagerly()
    for a, b in zip(before["weights"], after["weights"]):
        np.testing.assert_array_equal(a, b)
    assert before["trainable"] == after["trainable"]
    assert before["config"] == after["config"]
    assert before["activations"] == after["activations"]
    assert before["layers"] == after["layers"]
    np.testing.assert_array_equal(model(images).numpy(), outputs)
    assert keras.config.dtype_policy().name == "float32"


def test_explainers_follow_later_training_of_the_model(images, labels):
    """Weights are shared, not copied: an explainer built before training sees it."""
    model = small_cnn()
    explainer = GradCAM(model)
    before = explainer(images, labels).numpy()
    for w in model.trainable_weights:
        w.assign(w * 1.5)
    after = explainer(images, labels).numpy()
    fresh = GradCAM(model)(images, labels).numpy()
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, fresh, rtol=1e-5)


def softmax_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    logits = keras.layers.Dense(3, name="logits")(inputs)
    return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))


def test_output_layer_takes_effect_and_softmax_warns():
    model = softmax_model()
    w = model.get_layer("logits").kernel.numpy()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 1, 2, 1])
    with pytest.warns(UserWarning, match="softmax"):
        on_probabilities = Saliency(model).explain(x, labels).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_logits = Saliency(model, output_layer="logits").explain(x, labels).numpy()
    np.testing.assert_allclose(on_logits, np.abs(w[:, labels].T), rtol=1e-6)
    assert not np.allclose(on_probabilities, on_logits)
    by_index = Saliency(model, output_layer=1).explain(x, labels).numpy()
    np.testing.assert_allclose(by_index, on_logits)


@pytest.mark.parametrize("head", ["fused softmax", "softmax layer", "fused sigmoid",
                                  "sigmoid layer"])
def test_softmax_and_sigmoid_heads_warn_and_output_layer_logits_explains_before_them(head):
    """The warning's advice works: output_layer="logits" explains the linear output before
    the squashing, fused in the Dense layer or a separate layer, even inside a nested model
    and with no layer named "logits"."""
    kind = head.split()[-1] if "fused" in head else head.split()[0]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype("float32")
    dense = keras.layers.Dense(3, activation=kind if "fused" in head else None, name="head")
    layers = [dense] if "fused" in head else [
        dense, keras.layers.Softmax() if kind == "softmax" else keras.layers.Activation(kind)]
    inner = keras.Sequential([keras.Input((5,)), *layers], name="classifier")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Identity(), inner])
    dense.set_weights([w, np.zeros(3, "float32")])
    x = rng.normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 1, 2, 1])
    with pytest.warns(UserWarning, match=f"comes from a {kind}.*output_layer='logits'"):
        squashed = Saliency(model)(x, labels).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer = Saliency(model, output_layer="logits")
    np.testing.assert_allclose(explainer(x, labels).numpy(), np.abs(w[:, labels].T), rtol=1e-6)
    assert not np.allclose(squashed, np.abs(w[:, labels].T))
    assert model.layers[-1].layers[0].activation.__name__ == (kind if "fused" in head
                                                               else "linear")  # untouched


def test_output_layer_logits_prefers_a_layer_named_logits_and_refuses_linear_models():
    model = softmax_model()  # has a layer named "logits" before its softmax
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Saliency(model, output_layer="logits")
    linear = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    with pytest.raises(ValueError, match="output_layer: expected 'logits' for a model ending"):
        Saliency(linear, output_layer="logits")


@pytest.mark.parametrize("reducer", ["max", "mean", "min", "sum", None])
def test_reducer_takes_effect(reducer, images, labels):
    model = small_cnn()
    gradients = Saliency(model, reducer=None)(images, labels).numpy()
    assert gradients.shape == images.shape
    maps = Saliency(model, reducer=reducer)(images, labels).numpy()
    expected = gradients if reducer is None else getattr(np, reducer)(gradients, -1, keepdims=True)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-8)


#: KernelShap stands for the closed-form linear fit Lime shares (commons/linear.py), Sobol for
#: the sensitivity-analysis kernels HSIC shares (attributions/gsa.py)
@pytest.mark.parametrize("name", thorough(EXPLAINERS, set(EXPLAINERS) - {"Lime", "Hsic"}))
def test_jit_compile_gives_the_same_maps(name, images, labels):
    """XLA draws other noise from a seed: noisy methods are compared without noise."""
    model = small_cnn()
    noisy = ("SmoothGrad", "SquareGrad", "VarGrad", "SmoothedGradCAM")
    kwargs = {"noise": 0.0} if name in noisy else {}
    plain = FACTORIES[name](model, **kwargs)(images, labels).numpy()
    xla = FACTORIES[name](model, jit_compile=True, **kwargs)(images, labels).numpy()
    np.testing.assert_allclose(xla, plain, rtol=1e-3, atol=1e-5)


def test_jit_compiled_noise_repeats_with_a_seed(images, labels):
    model = small_cnn()
    first = SmoothGrad(model, nb_samples=3, seed=4, jit_compile=True)(images, labels).numpy()
    again = SmoothGrad(model, nb_samples=3, seed=4, jit_compile=True)(images, labels).numpy()
    np.testing.assert_array_equal(first, again)


def test_explainers_are_reentrant_across_threads(images, labels):
    from concurrent.futures import ThreadPoolExecutor

    model = nested_cnn()
    explainers = {name: FACTORIES[name](model) for name in EXPLAINERS}
    serial = {name: e(images, labels).numpy() for name, e in explainers.items()}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(e, images, labels) for name, e in explainers.items()}
        for name, future in futures.items():
            np.testing.assert_allclose(future.result().numpy(), serial[name], rtol=1e-5,
                                       atol=1e-7, err_msg=name)


assert set(EXPLAINERS) >= GRAPH_ONLY


def test_explainers_show_their_settings():
    text = repr(SmoothGrad(small_cnn(), nb_samples=7, noise=0.3, seed=2, reducer="mean"))
    assert text.startswith("SmoothGrad(model='sequential")
    for part in ("nb_samples=7", "noise=0.3", "seed=2", "reducer='mean'",
                 "operator='classification'", "batch_size=64"):
        assert part in text, (part, text)
