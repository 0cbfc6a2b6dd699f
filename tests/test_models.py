"""Every explainer on every kind of model people have."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    BLACK_BOX,
    CAMS,
    EXPLAINERS,
    GRAPH_ONLY,
    IMAGES_ONLY,
    REPRESENTATIVES,
    explainer_factories,
    thorough,
)
from saliencekit.attributions import FullGrad, GradCAM, Occlusion, Saliency, SmoothGrad

FACTORIES = explainer_factories()


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_on_every_model_kind(name, any_model, images, labels):
    kind, model = any_model
    if kind == "subclassed" and name in GRAPH_ONLY:
        with pytest.raises(TypeError, match="model: expected a functional or Sequential"):
            FACTORIES[name](model)
        return
    maps = FACTORIES[name](model, batch_size=4).explain(images, labels).numpy()
    assert maps.shape == (*images.shape[:3], 1)
    assert np.isfinite(maps).all()
    assert np.abs(maps).sum() > 0


def mobilenet_classifier():
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35
    )
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 127.5, offset=-1),
        backbone,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, name="head"),
    ])


def test_keras_applications_backbone_nested_in_a_sequential():
    model = mobilenet_classifier()
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    labels = [0, 2]
    cam = GradCAM(model)
    assert cam.conv_layer_name.endswith("/out_relu")
    maps = cam(images, labels).numpy()
    assert maps.shape == (2, 32, 32, 1) and np.isfinite(maps).all()
    inner = GradCAM(model, conv_layer="block_3_expand")  # a layer inside the backbone
    assert inner.conv_layer_name.endswith("/block_3_expand")
    assert not np.allclose(inner(images, labels).numpy(), maps, rtol=1e-3, atol=0)
    by_index = GradCAM(model, conv_layer=1)  # model.layers[1] is the backbone itself
    np.testing.assert_allclose(by_index(images, labels).numpy(), maps, rtol=1e-5, atol=1e-8)
    fullgrad = FullGrad(model)
    assert sum(path.endswith("_BN") for path in fullgrad.bias_layers) > 10
    assert np.isfinite(fullgrad(images, labels).numpy()).all()
    assert np.isfinite(SmoothGrad(model, nb_samples=2, seed=0)(images, labels).numpy()).all()


def test_keras_applications_resnet_functional():
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=5)
    images = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    with pytest.warns(UserWarning, match="softmax"):  # ResNet50's head is a fused softmax
        cam = GradCAM(model)
    assert cam.conv_layer_name == "conv5_block3_out"
    assert np.isfinite(cam(images, [3]).numpy()).all()
    with pytest.warns(UserWarning, match="softmax"):
        _, bias_terms = FullGrad(model).raw_terms(images, [3])
    assert len(bias_terms) == 53 + 53 + 1  # every conv (53), every batch norm (53), the head


def test_time_series_and_tabular_inputs():
    keras.utils.set_random_seed(0)
    series = keras.Sequential([
        keras.Input((20, 2)),
        keras.layers.Conv1D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3),
    ])
    x = np.random.default_rng(0).random((5, 20, 2)).astype("float32")
    for name in set(EXPLAINERS) - IMAGES_ONLY:
        # like images: channels reduced by the reducer, so every method gives (N, T, 1)
        maps = FACTORIES[name](series).explain(x, [0, 1, 2, 0, 1]).numpy()
        assert maps.shape == (5, 20, 1), name
        assert np.isfinite(maps).all()
    # reducer=None keeps them, and the default reduction is their max
    kept = Saliency(series, reducer=None).explain(x, [0, 1, 2, 0, 1]).numpy()
    assert kept.shape == (5, 20, 2)
    np.testing.assert_allclose(Saliency(series).explain(x, [0, 1, 2, 0, 1]).numpy(),
                               kept.max(-1, keepdims=True))
    table = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2)])
    rows = np.random.default_rng(1).random((4, 6)).astype("float32")
    for name in set(EXPLAINERS) - CAMS - IMAGES_ONLY:
        maps = FACTORIES[name](table).explain(rows, [0, 1, 1, 0]).numpy()
        assert maps.shape == (4, 6), name
    with pytest.raises(ValueError, match="spatial output"):
        GradCAM(table)


@pytest.fixture(scope="module")
def saved_and_loaded(tmp_path_factory):
    from helpers import functional_cnn

    model = functional_cnn()
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    model.save(path)
    return model, keras.models.load_model(path)


@pytest.mark.parametrize("name", thorough(EXPLAINERS, REPRESENTATIVES))
def test_a_model_loaded_from_a_keras_file(name, saved_and_loaded, images, labels):
    model, loaded = saved_and_loaded
    np.testing.assert_allclose(FACTORIES[name](loaded)(images, labels).numpy(),
                               FACTORIES[name](model)(images, labels).numpy(), rtol=1e-5,
                               atol=1e-7)


def test_a_lazily_built_sequential_with_a_fixed_batch_in_its_input():
    model = keras.Sequential([keras.layers.Conv2D(3, 3), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model(np.zeros((1, 8, 8, 1), "float32"))  # built on a batch of one
    images = np.random.default_rng(0).random((5, 8, 8, 1)).astype("float32")
    for method in (GradCAM, FullGrad, Saliency, Occlusion):
        assert method(model)(images, [0, 1, 0, 1, 0]).shape == (5, 8, 8, 1)


def test_a_model_with_frozen_weights():
    model = mobilenet_classifier()
    model.trainable = False
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for method in (GradCAM, Saliency, FullGrad):
        assert np.abs(method(model)(images, [0, 1]).numpy()).sum() > 0, method.__name__


def test_a_multi_output_model_needs_an_output_layer():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="a")(inputs)
    model = keras.Model(inputs, [hidden, keras.layers.Dense(2, name="b")(hidden)])
    x = np.ones((2, 4), "float32")
    with pytest.raises(ValueError, match="one output"):
        Saliency(model)(x, [0, 1])
    assert Saliency(model, output_layer="b")(x, [0, 1]).shape == (2, 4)


def test_dataset_with_unknown_spatial_shape_and_cardinality():
    from helpers import small_cnn

    model = small_cnn()
    images = np.random.default_rng(0).random((9, 12, 12, 3)).astype("float32")
    labels = np.arange(9) % 4
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([(images[i:i + 2], labels[i:i + 2]) for i in range(0, 9, 2)]),
        output_signature=(tf.TensorSpec((None, None, None, 3)), tf.TensorSpec((None,), tf.int64)),
    )
    explainer = Saliency(model, batch_size=4)
    np.testing.assert_allclose(explainer(dataset).numpy(), explainer(images, labels).numpy(),
                               rtol=1e-6)


def test_multi_output_heads_chosen_by_name_for_every_explainer(images, labels):
    """A dict-output model with two heads: output_layer picks one, whatever the method."""
    inputs = keras.Input(images.shape[1:])
    x = keras.layers.Conv2D(6, 3, activation="relu", name="trunk")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, {"cls": keras.layers.Dense(4, name="cls")(pooled),
                                 "aux": keras.layers.Dense(2, name="aux")(pooled)})
    single = keras.Model(inputs, model.get_layer("cls").output)
    for name in set(EXPLAINERS) - {"TTASaliency", "SmoothedGradCAM"}:
        kwargs = {"output_layer": "cls"}
        if name in BLACK_BOX:  # no output_layer: the single-head model is the reference
            continue
        np.testing.assert_allclose(FACTORIES[name](model, **kwargs)(images, labels).numpy(),
                                   FACTORIES[name](single)(images, labels).numpy(),
                                   rtol=1e-5, atol=1e-7, err_msg=name)


def mixed_precision_cnn():
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(4)
        return keras.Sequential([
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(6, 3, activation="relu", padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Conv2D(8, 3, activation="relu", name="last_conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, dtype="float32"),  # float32 logits, as Keras advises
        ])
    finally:
        keras.mixed_precision.set_global_policy(policy)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_mixed_float16_models_give_float32_finite_maps(name, images, labels):
    model = mixed_precision_cnn()
    assert model.layers[0].compute_dtype == "float16"
    maps = FACTORIES[name](model)(images, labels)
    assert maps.dtype == tf.float32 and maps.shape[:3] == (7, 12, 12)
    assert np.isfinite(maps.numpy()).all() and maps.numpy().max() > 0
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing left behind


def test_integer_image_inputs_are_explained_through_their_float_cast(images, labels):
    """A model taking uint8 pixels (Input dtype uint8, then Rescaling): gradients flow to the
    pixel values, as if the model took floats: d f(x / 255) / dx = f'(x / 255) / 255."""
    conv = keras.layers.Conv2D(6, 3, activation="relu", name="conv")
    head = keras.layers.Dense(4)
    pixels = keras.Input((12, 12, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1 / 255)(pixels)
    uint8_model = keras.Model(pixels, head(keras.layers.GlobalAveragePooling2D()(conv(scaled))))
    floats = keras.Input((12, 12, 3))
    float_model = keras.Model(floats, head(keras.layers.GlobalAveragePooling2D()(conv(floats))))
    x = np.round(images * 255).astype("uint8")
    np.testing.assert_allclose(Saliency(uint8_model)(x, labels).numpy(),
                               Saliency(float_model)(x / 255, labels).numpy() / 255,
                               rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(GradCAM(uint8_model)(x, labels).numpy(),
                               GradCAM(float_model)(x / 255, labels).numpy(), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("name", thorough(EXPLAINERS, REPRESENTATIVES))
def test_every_explainer_takes_integer_images(name, images, labels):
    pixels = keras.Input((12, 12, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1 / 255)(pixels)
    features = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(scaled)
    uint8_model = keras.Model(
        pixels, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(features)))
    maps = FACTORIES[name](uint8_model)(np.round(images * 255).astype("uint8"), labels).numpy()
    # signed methods (Lime, KernelShap) may be negative everywhere
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    assert uint8_model.inputs[0].dtype == "uint8"  # the user's model is untouched


def test_half_precision_inputs_and_large_images():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
        keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    for half in (x.astype("float16"), tf.cast(x, tf.bfloat16)):
        maps = Saliency(model)(half, [0, 1, 2])
        assert maps.dtype == tf.float32
        # the maths runs in float32 on the half-precision values
        rounded = tf.cast(half, tf.float32).numpy()
        np.testing.assert_allclose(maps.numpy(), Saliency(model)(rounded, [0, 1, 2]).numpy(),
                                   rtol=1e-6)
    big = np.random.default_rng(1).random((2, 1024, 1024, 3)).astype("float32")
    for method in (Saliency, GradCAM):
        maps = method(model, batch_size=1)(big, [0, 2], verbose=0).numpy()
        assert maps.shape == (2, 1024, 1024, 1) and np.isfinite(maps).all()


def channels_first_twins(seed=6):
    """The same CNN (shared weights) with channels_first and with channels_last layers."""
    def cnn(data_format, shape, axis):
        return keras.Sequential([
            keras.Input(shape),
            keras.layers.Conv2D(4, 3, activation="relu", padding="same", data_format=data_format),
            keras.layers.BatchNormalization(axis=axis),
            keras.layers.Conv2D(5, 3, activation="relu", data_format=data_format,
                                name="last_conv"),
            keras.layers.MaxPooling2D(data_format=data_format),
            keras.layers.GlobalAveragePooling2D(data_format=data_format),
            keras.layers.Dense(4),
        ])

    keras.utils.set_random_seed(seed)
    first = cnn("channels_first", (3, 12, 12), 1)
    last = cnn("channels_last", (12, 12, 3), -1)
    weights = first.get_weights()
    weights[2:6] = [np.random.default_rng(seed).uniform(0.5, 1.5, 4).astype("float32")
                    for _ in range(4)]  # BN statistics that are not the identity
    first.set_weights(weights)
    last.set_weights(weights)
    return first, last


#: The sampling family moves layouts as Occlusion does (the runner's channels-last view and
#: the base's user layout): Occlusion stands for it here; the rest is the slow variant.
LAYOUTS = [pytest.param(name, marks=pytest.mark.slow) if name in BLACK_BOX - {"Occlusion"}
           else name for name in EXPLAINERS]


@pytest.mark.parametrize("name", LAYOUTS)
def test_channels_first_models_give_the_channels_last_maps_in_their_layout(name, images,
                                                                          labels):
    first, last = channels_first_twins()
    moved = np.transpose(images, (0, 3, 1, 2))
    np.testing.assert_allclose(first(moved).numpy(), last(images).numpy(), rtol=1e-5, atol=1e-6)
    expected = FACTORIES[name](last)(images, labels).numpy()
    maps = FACTORIES[name](first)(moved, labels).numpy()
    np.testing.assert_allclose(maps, np.moveaxis(expected, -1, 1), rtol=1e-4, atol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices((moved, labels)).batch(3)
    np.testing.assert_allclose(FACTORIES[name](first)(dataset).numpy(), maps, rtol=1e-5,
                               atol=1e-7)
