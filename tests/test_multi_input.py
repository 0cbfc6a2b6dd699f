"""Multi-input models (an image plus metadata): inputs as a tuple, list or dict, maps in
the same structure, with the guarantees of the single-input case (issue 11, item 8)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from saliencekit.attributions import (
    GradientInput,
    IntegratedGradients,
    Occlusion,
    Saliency,
    Smoothed,
    SmoothGrad,
    SquareGrad,
    VarGrad,
)
from saliencekit.commons.sink import MapStore

RNG = np.random.default_rng(0)
IMAGES = RNG.random((7, 8, 8, 3)).astype("float32")
META = RNG.random((7, 5)).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0])


def image_and_meta(named=False, seed=0):
    """A CNN branch for the image, a dense branch for the metadata, concatenated."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((5,), name="meta")
    x = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, activation="relu")(image))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, activation="tanh")(meta)])
    out = keras.layers.Dense(3)(x)
    # a dict declared in another order than the sorted names: order bugs cannot hide
    return keras.Model({"meta": meta, "image": image} if named else [image, meta], out)


def gradients(model, image, meta, classes, structure=list):
    inputs = [tf.constant(image), tf.constant(meta)]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        given_inputs = {"image": inputs[0], "meta": inputs[1]} if structure is dict else inputs
        score = tf.reduce_sum(model(given_inputs) * tf.one_hot(classes, 3), -1)
    return [g.numpy() for g in tape.gradient(score, inputs)]


def test_saliency_and_gradient_input_are_each_inputs_gradient():
    model = image_and_meta()
    g_image, g_meta = gradients(model, IMAGES, META, Y)
    maps = Saliency(model)((IMAGES, META), Y)
    assert isinstance(maps, tuple) and len(maps) == 2
    np.testing.assert_allclose(maps[0].numpy(), np.abs(g_image).max(-1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps[1].numpy(), np.abs(g_meta), rtol=1e-5, atol=1e-7)
    as_list = GradientInput(model)([IMAGES, META], Y)
    assert isinstance(as_list, list)
    np.testing.assert_allclose(as_list[1].numpy(), g_meta * META, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(as_list[0].numpy(), (g_image * IMAGES).sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_named_inputs_by_dict_or_in_declared_order():
    model = image_and_meta(named=True)
    g_image, g_meta = gradients(model, IMAGES, META, Y, structure=dict)
    maps = Saliency(model)({"image": IMAGES, "meta": META}, Y)
    assert set(maps) == {"image", "meta"}
    np.testing.assert_allclose(maps["meta"].numpy(), np.abs(g_meta), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps["image"].numpy(), np.abs(g_image).max(-1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    declared = Saliency(model)((META, IMAGES), Y)  # the dict's declared order: meta, image
    np.testing.assert_array_equal(declared[0].numpy(), maps["meta"].numpy())


FACTORIES = {
    "Saliency": lambda m, **k: Saliency(m, **k),
    "GradientInput": lambda m, **k: GradientInput(m, **k),
    "IntegratedGradients": lambda m, **k: IntegratedGradients(m, steps=4, **k),
    "SmoothGrad": lambda m, **k: SmoothGrad(m, nb_samples=5, seed=3, **k),
    "SquareGrad": lambda m, **k: SquareGrad(m, nb_samples=3, seed=3, **k),
    "VarGrad": lambda m, **k: VarGrad(m, nb_samples=3, seed=3, **k),
    "Occlusion": lambda m, **k: Occlusion(m, patch_size=[4, 1], patch_stride=[2, 1], **k),
    "Smoothed(Saliency)": lambda m, **k: Smoothed(Saliency(m, **k), nb_samples=3, seed=1),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_batching_datasets_and_one_trace(name):
    model = image_and_meta()
    reference = FACTORIES[name](model, batch_size=64)((IMAGES, META), Y)
    explainer = FACTORIES[name](model, batch_size=2)
    small = explainer((IMAGES, META), Y)
    for a, b in zip(reference, small):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    dataset = tf.data.Dataset.from_tensor_slices(((IMAGES, META), Y)).batch(3)
    streamed = explainer(dataset)
    for a, b in zip(reference, streamed):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    kernel = getattr(explainer, "_kernel", None)
    if kernel is not None and hasattr(kernel, "experimental_get_tracing_count"):
        assert kernel.experimental_get_tracing_count() == 1, name  # 4 batches, then a Dataset


@given(seed=st.integers(0, 2**20), batch_size=st.integers(1, 8))
def test_noise_repeats_with_a_seed_for_any_batch_size(seed, batch_size):
    model = image_and_meta()
    a = SmoothGrad(model, nb_samples=3, seed=seed, batch_size=batch_size)((IMAGES, META), Y)
    b = SmoothGrad(model, nb_samples=3, seed=seed, batch_size=7)((IMAGES, META), Y)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


def test_each_input_draws_noise_of_its_own():
    """Two inputs of the same shape, the same data and a model symmetric in them: with the
    same noise their maps would be equal."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,)), keras.Input((6,))
    dense = keras.layers.Dense(3, activation="tanh")
    model = keras.Model([a, b], keras.layers.Add()([dense(a), dense(b)]))
    x = RNG.random((4, 6)).astype("float32")
    first, second = SmoothGrad(model, nb_samples=4, noise=0.5, seed=0)((x, x), [0, 1, 2, 0])
    plain = Saliency(model)((x, x), [0, 1, 2, 0])
    np.testing.assert_allclose(plain[0].numpy(), plain[1].numpy())  # symmetric indeed
    assert np.abs(first.numpy() - second.numpy()).max() > 1e-3


def test_occlusion_of_a_linear_two_input_model_is_exact():
    """Occluding one feature (patch 1) of a linear model drops exactly its contribution."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4, 4, 2)), keras.Input((3,))
    dense = keras.layers.Dense(3)
    model = keras.Model([a, b], dense(keras.layers.Concatenate()([keras.layers.Flatten()(a), b])))
    w = dense.kernel.numpy()  # (32 + 3, 3)
    x_a, x_b = RNG.random((5, 4, 4, 2)).astype("float32"), RNG.random((5, 3)).astype("float32")
    y = np.array([0, 1, 2, 1, 0])
    maps_a, maps_b = Occlusion(model, patch_size=[(1, 1), 1], batch_size=4)((x_a, x_b), y)
    contributions = x_a.reshape(5, 32) * w[:32, y].T  # per pixel and channel
    np.testing.assert_allclose(maps_a.numpy().reshape(5, 16),
                               contributions.reshape(5, 16, 2).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps_b.numpy(), x_b * w[32:, y].T, rtol=1e-4, atol=1e-6)


def test_explain_to_writes_and_resumes_structured_maps(tmp_path):
    model = image_and_meta(named=True)
    explainer = SmoothGrad(model, nb_samples=3, seed=2, batch_size=2)
    inputs = {"image": IMAGES, "meta": META}
    expected = explainer(inputs, Y)
    store = explainer.explain_to(tmp_path / "maps", inputs, Y, shard_size=4, verbose=0)
    loaded = store.load()
    assert set(loaded) == {"image", "meta"}
    for key in loaded:
        np.testing.assert_allclose(loaded[key], expected[key].numpy(), rtol=1e-6)
    (tmp_path / "maps" / "maps-00001.npy").unlink()  # lost: recomputed alone on resume
    again = explainer.explain_to(tmp_path / "maps", inputs, Y, shard_size=4, verbose=0).load()
    np.testing.assert_allclose(again["meta"], loaded["meta"], rtol=1e-6)
    with pytest.raises(ValueError, match="multi-input"):
        MapStore(tmp_path / "maps").to_npy(tmp_path / "all.npy")


def test_a_strategy_gives_the_single_device_maps():
    model = image_and_meta()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    a = SmoothGrad(model, nb_samples=3, seed=1, batch_size=4, strategy=strategy)(
        (IMAGES, META), Y)
    b = SmoothGrad(model, nb_samples=3, seed=1, batch_size=4)((IMAGES, META), Y)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("inputs, error, words", [
    (IMAGES, TypeError, ["inputs", "one array per model input", "list or tuple of 2"]),
    ((IMAGES,), TypeError, ["inputs", "a tuple of 1"]),
    ((IMAGES, META[:5]), ValueError, ["inputs[1]", "as many rows as inputs[0] (7)", "(5, 5)"]),
    ((IMAGES, META[:, :4]), ValueError, ["inputs[1]", "(N, 5)", "(7, 4)"]),
    ({"image": IMAGES, "meta": META}, ValueError, ["inputs", "not named"]),
])
def test_bad_structures_are_named_before_any_trace(inputs, error, words):
    explainer = Saliency(image_and_meta())
    with pytest.raises(error) as info:
        explainer(inputs, Y)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert explainer._kernel.experimental_get_tracing_count() == 0


def test_a_named_model_names_missing_keys():
    with pytest.raises(ValueError, match=r"a dict with the keys \['image', 'meta'\]"):
        Saliency(image_and_meta(named=True))({"image": IMAGES}, Y)


def additive_model():
    """logits = head(GAP(conv(image))) + meta_head(meta): the meta branch changes neither the
    conv activations nor their gradients, so CAMs equal those of the image-only model."""
    keras.utils.set_random_seed(4)
    image, meta = keras.Input((8, 8, 3)), keras.Input((5,))
    conv = keras.layers.Conv2D(6, 3, activation="relu", name="conv")
    head = keras.layers.Dense(3, name="head")
    image_logits = head(keras.layers.GlobalAveragePooling2D()(conv(image)))
    both = keras.layers.Add()([image_logits, keras.layers.Dense(3)(meta)])
    return keras.Model([image, meta], both), keras.Model(image, image_logits)


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPP", "LayerCAM", "ScoreCAM"])
def test_cams_give_the_map_of_the_image_input(method):
    from saliencekit import attributions

    both, image_only = additive_model()
    explainer = getattr(attributions, method)(both)
    assert explainer.conv_layer_name == "conv"
    maps = explainer((IMAGES, META), Y)  # one map, in the image's frame
    np.testing.assert_allclose(
        maps.numpy(), getattr(attributions, method)(image_only)(IMAGES, Y).numpy(),
        rtol=1e-4, atol=1e-6)
    smoothed = Smoothed(getattr(attributions, method)(both), nb_samples=2, seed=0)
    assert smoothed((IMAGES, META), Y).shape == (7, 8, 8, 1)


def test_a_cam_takes_the_size_of_the_image_its_layer_sees():
    from saliencekit.attributions import GradCAM

    keras.utils.set_random_seed(0)
    small, large = keras.Input((8, 8, 3)), keras.Input((16, 16, 1))
    a = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv_a")(small))
    b = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv_b")(large))
    model = keras.Model([small, large], keras.layers.Dense(3)(
        keras.layers.Concatenate()([a, b])))
    x = (IMAGES, RNG.random((7, 16, 16, 1)).astype("float32"))
    assert GradCAM(model, conv_layer="conv_b")(x, Y).shape == (7, 16, 16, 1)
    assert GradCAM(model, conv_layer="conv_a")(x, Y).shape == (7, 8, 8, 1)


def test_tta_and_fullgrad_refuse_multi_input_models_by_name():
    from saliencekit.attributions import TTA, FullGrad

    model = image_and_meta()
    with pytest.raises(TypeError, match="explainer: expected an explainer of a model with one"):
        TTA(Saliency(model))
    with pytest.raises(TypeError, match="model: expected a model with one input"):
        FullGrad(model)
    with pytest.raises(TypeError, match=r"model: expected a model with one input \(FullGrad "
                                        r"sums terms"):
        FullGrad(model)


@pytest.mark.parametrize("name", ["Rise", "Lime", "KernelShap", "Sobol", "Hsic"])
def test_the_sampling_family_refuses_multi_input_models_by_name(name):
    """Named at construction, not a TypeError from inside the traced kernel."""
    from helpers import black_box_factories

    with pytest.raises(TypeError, match=r"model: expected a model with one input \(\w+ "
                                        r"perturbs the cells or features of one input\), got a "
                                        r"model with 2 inputs"):
        black_box_factories()[name](image_and_meta())
