"""The CAM family's default layer: the last one still spatially aligned with the input,
never the explained output itself (issue 11, item 3)."""

import warnings

import keras
import numpy as np
import pytest

from saliencekit.attributions import GradCAM, GradCAMPP, LayerCAM, ScoreCAM

CAMS = [GradCAM, GradCAMPP, LayerCAM, ScoreCAM]


def permuted_face_detector(seed=0):
    """A conv layer, then ``Permute((2, 1, 3))`` before ``Flatten`` (as some face detectors
    do): on square inputs the permute's output has the input's shape, transposed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def segmenter(seed=0, separate_softmax=False):
    """A fully convolutional net ending in a 1x1 convolution with a softmax (fused, or a
    separate layer after an upsampling)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    if separate_softmax:
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(x)
    if separate_softmax:
        x = keras.layers.Conv2D(3, 1, name="logits")(x)
        x = keras.layers.UpSampling2D()(x)
        outputs = keras.layers.Softmax()(x)
    else:
        outputs = keras.layers.Conv2D(3, 1, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # softmax outputs warn; not what is tested here
        return make()


@pytest.mark.parametrize("method", CAMS)
def test_the_default_layer_is_not_a_permute_that_transposes_the_map(method):
    model = permuted_face_detector()
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype("float32")
    cam = method(model)
    assert cam.conv_layer_name == "conv"  # the permute's output has the input's shape too
    maps = cam(images, [0, 1, 2]).numpy()
    np.testing.assert_allclose(maps, method(model, conv_layer="conv")(images, [0, 1, 2]).numpy(),
                               rtol=1e-6, atol=1e-7)
    # the permute's map differs; for the gradient CAMs it is the transposed map: the default
    # would be wrong, not just different (ScoreCAM masks the input with transposed channels)
    transposed = method(model, conv_layer="permute")(images, [0, 1, 2]).numpy()
    assert not np.allclose(transposed, maps, rtol=1e-3, atol=1e-5)
    if method is not ScoreCAM:
        np.testing.assert_allclose(transposed, maps.transpose(0, 2, 1, 3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("separate_softmax", [False, True])
@pytest.mark.parametrize("method", CAMS)
def test_the_default_layer_of_a_segmentation_model_is_not_its_head(method, separate_softmax):
    model = segmenter(separate_softmax=separate_softmax)
    cam = quiet(lambda: method(model, operator="semantic segmentation"))
    # the output, and the 1x1 convolution whose (upsampled, softmaxed) output it is, would
    # give the prediction itself
    assert cam.conv_layer_name == "features"
    images = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
    maps = cam(images, [1, 2]).numpy()
    explicit = quiet(lambda: method(model, conv_layer="features",
                                    operator="semantic segmentation"))
    np.testing.assert_allclose(maps, explicit(images, [1, 2]).numpy(), rtol=1e-6, atol=1e-7)
    assert np.abs(maps).sum() > 0
    # output_layer="logits" explains the 1x1 convolution: still not its own CAM
    logits = quiet(lambda: method(model, output_layer="logits", operator="semantic segmentation"))
    assert logits.conv_layer_name == "features"


def test_positions_are_followed_through_merges_and_lost_through_tokens():
    """A squeeze-and-excitation branch (global pooling, 1x1 convolutions, a multiply) keeps
    positions; attention over a reshaped token sequence loses them, even when reshaped back
    to an image and convolved."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(4, 1, activation="sigmoid")(gate)
    x = keras.layers.Multiply(name="excite")([x, gate])
    x = keras.layers.Add(name="residual")([x, keras.layers.Conv2D(4, 1)(inputs)])
    x = keras.layers.BatchNormalization(name="bn")(x)
    aligned = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalMaxPooling2D()(x)))
    assert GradCAM(aligned).conv_layer_name == "bn"

    tokens = keras.layers.Reshape((64, 4))(x)
    tokens = keras.layers.MultiHeadAttention(2, 4)(tokens, tokens)
    y = keras.layers.Reshape((8, 8, 4))(tokens)
    y = keras.layers.Conv2D(4, 3, padding="same", name="after_attention")(y)
    mixed = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalMaxPooling2D()(y)))
    assert GradCAM(mixed).conv_layer_name == "bn"


def test_a_layer_of_unknown_effect_stops_the_search_and_says_so():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=1), name="flip_rows")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="later")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.warns(UserWarning, match=r"default layer is 'conv'.*\['flip_rows'\].*conv_layer="):
        cam = GradCAM(model)
    assert cam.conv_layer_name == "conv"
    assert GradCAM(model, conv_layer="later").conv_layer_name == "later"  # the user may


def test_a_model_without_an_aligned_layer_besides_its_output_is_refused():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1, name="head")])
    with pytest.raises(ValueError, match=r"model: expected a model with a layer with a spatial "
                                          r"output .* other than the explained output"):
        GradCAM(model, operator="semantic segmentation")
    assert GradCAM(model, conv_layer="head",
                   operator="semantic segmentation").conv_layer_name == "head"
