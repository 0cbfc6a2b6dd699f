"""Models as users have them (issue 11): one-element input/output lists (Keras-2 era
``.h5``), callable operators on multi-output models, detection targets of any K, tf_keras
models, SavedModels, tf.Modules, plain and numpy-level functions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import CAMS, EXPLAINERS, GRAPH_ONLY, REPRESENTATIVES, explainer_factories, thorough
from saliencekit.attributions import (
    FullGrad,
    GradCAM,
    Occlusion,
    Rise,
    Saliency,
    Smoothed,
    SmoothGrad,
)

tf_keras = pytest.importorskip("tf_keras")  # in the test extra: must be there in CI

FACTORIES = explainer_factories()
X = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
Y = [0, 1, 2]


def conv_head(inputs):
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return keras.layers.Dense(3, name="dense")(keras.layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize("name", thorough(EXPLAINERS, REPRESENTATIVES))
def test_one_element_input_and_output_lists_are_the_single_io_model(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = conv_head(inputs)
    listed = keras.Model([inputs], [outputs])
    plain = keras.Model(inputs, outputs)  # the same layers
    np.testing.assert_allclose(FACTORIES[name](listed)(X, Y).numpy(),
                               FACTORIES[name](plain)(X, Y).numpy(), rtol=1e-5, atol=1e-7)


def tf_keras_functional(seed=0):
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="dense")(x))


def tf_keras_sequential(seed=0):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(3)])


def reference_gradients(function, x, classes):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(function(x) * tf.one_hot(classes, 3), -1)
    return np.abs(tape.gradient(score, x).numpy()).max(-1, keepdims=True)


# every explainer on both kinds is the thorough variant; the suite runs the functional one
ALL_TF_KERAS = [tf_keras_functional, pytest.param(tf_keras_sequential, marks=pytest.mark.slow)]


@pytest.mark.parametrize("build", ALL_TF_KERAS)
def test_keras2_h5_files_load_and_every_explainer_explains_them(tmp_path, build):
    old = build()
    path = str(tmp_path / "old.h5")
    old.save(path)  # written by Keras 2, as the files people have
    loaded = keras.models.load_model(path, compile=False)
    expected = reference_gradients(lambda v: old(v, training=False), X, Y)
    np.testing.assert_allclose(Saliency(loaded)(X, Y).numpy(), expected, rtol=1e-5, atol=1e-6)
    for name in EXPLAINERS:
        maps = FACTORIES[name](loaded)(X, Y).numpy()
        assert maps.shape == (3, 8, 8, 1) and np.isfinite(maps).all(), name


@pytest.mark.parametrize("build", ALL_TF_KERAS)
def test_tf_keras_models_are_explained_by_every_explainer(build):
    model = build()
    expected = reference_gradients(lambda v: model(v, training=False), X, Y)
    np.testing.assert_allclose(Saliency(model)(X, Y).numpy(), expected, rtol=1e-5, atol=1e-6)
    before = [w.numpy().copy() for w in model.weights]
    for name in EXPLAINERS:
        maps = FACTORIES[name](model)(X, Y).numpy()
        assert maps.shape == (3, 8, 8, 1) and np.isfinite(maps).all(), name
    # graph methods work on a Keras 3 copy: same maps as on the model reloaded by hand
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_graph_methods_on_tf_keras_equal_those_on_its_keras3_copy(tmp_path):
    model = tf_keras_functional()
    path = str(tmp_path / "m.h5")
    model.save(path)
    copy = keras.models.load_model(path, compile=False)
    for name in sorted(GRAPH_ONLY):
        np.testing.assert_allclose(FACTORIES[name](model)(X, Y).numpy(),
                                   FACTORIES[name](copy)(X, Y).numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_a_subclassed_tf_keras_model_is_refused_by_graph_methods_with_the_way_out():
    class Net(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = tf_keras.layers.Conv2D(4, 3)
            self.pool = tf_keras.layers.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.conv(x))

    net = Net()
    net(X)
    assert Saliency(net)(X, [0, 1, 2]).shape == (3, 8, 8, 1)
    with pytest.raises(TypeError, match="tf_keras") as info:
        GradCAM(net)
    assert "Gradient and black-box" in str(info.value)


def test_saved_models_modules_and_functions():
    model = tf_keras_sequential()
    expected = reference_gradients(lambda v: model(v, training=False), X, Y)

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((64, 3), (1, 2)))

        @tf.function
        def __call__(self, x):
            return tf.reshape(x, (-1, 64)) @ self.w

    module = Module()
    np.testing.assert_allclose(  # a linear module: |w[:, c]|
        Saliency(module)(X, Y).numpy().reshape(3, 64),
        np.abs(module.w.numpy()[:, Y].T), rtol=1e-6)
    np.testing.assert_allclose(Saliency(lambda v: model(v))(X, Y).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Saliency(tf.function(model))(X, Y).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


def test_a_saved_model_by_call_and_by_serving_signature(tmp_path):
    model = tf_keras_sequential()
    expected = reference_gradients(lambda v: model(v, training=False), X, Y)
    tf.saved_model.save(model, str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(Saliency(loaded)(X, Y).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert Occlusion(loaded, patch_size=4)(X, Y).shape == (3, 8, 8, 1)

    class Exported(tf.Module):  # a SavedModel with only a serving signature (keyword input)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    exported = Exported(model)
    serve = tf.function(lambda images: {"scores": model(images)},
                        input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
    tf.saved_model.save(exported, str(tmp_path / "serving"), signatures={"serving_default": serve})
    served = tf.saved_model.load(str(tmp_path / "serving"))
    assert not callable(served)
    np.testing.assert_allclose(Saliency(served)(X, Y).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"inputs: expected inputs of shape \(N, 8, 8, 1\)"):
        Saliency(served)(X[:, :6], Y)  # the signature's shape is checked before a trace


def test_numpy_level_predictors_go_to_black_box_methods_only():
    weights = np.random.default_rng(1).normal(size=(64, 3)).astype("float32")

    def predict(batch):  # like scikit-learn's predict_proba: numpy in, numpy out
        return np.asarray(batch).reshape(len(batch), -1) @ weights

    # occlusion of a linear model: the drop is the patch's contribution, spread exactly
    maps = Occlusion(predict, patch_size=1)(X, Y).numpy()
    contributions = X.reshape(3, 64) * weights[:, Y].T
    np.testing.assert_allclose(maps.reshape(3, 64), contributions, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match=r"numpy-level callable 'predict'.*Black-box") as info:
        Saliency(predict)(X, Y)
    assert "in user code" not in str(info.value)  # raised before any trace


def test_models_that_are_not_models_are_refused():
    with pytest.raises(TypeError, match=r"model: expected a Keras model.*got builtins.int"):
        Saliency(42)
    with pytest.raises(TypeError, match="this method needs the model's layers"):
        GradCAM(lambda v: v)


def two_heads():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs))
    first = keras.layers.Dense(3, name="first")(pooled)
    second = keras.layers.Dense(2, name="second")(pooled)
    return keras.Model(inputs, [first, second])


@pytest.mark.parametrize("name", sorted(set(EXPLAINERS) - {"FullGrad"}))
def test_a_callable_operator_explains_a_multi_output_model(name):
    model = two_heads()
    second = keras.Model(model.inputs, model.outputs[1])

    def operator(m, x, t):
        return m(x)[1][:, 1]

    def single(m, x, t):
        return m(x)[:, 1]

    np.testing.assert_allclose(
        FACTORIES[name](model, operator=operator)(X).numpy(),
        FACTORIES[name](second, operator=single)(X).numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


def test_a_built_in_operator_on_a_multi_output_model_asks_for_a_choice():
    with pytest.raises(ValueError, match=r"one output for a built-in operator.*callable operator"):
        Saliency(two_heads())(X, Y)


def detector(boxes=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))

    def part(width, scale=1.0, offset=0.0):  # (N, boxes, width) in [offset, offset + scale]
        dense = keras.layers.Dense(boxes * width, activation="sigmoid")(x)
        return keras.layers.Reshape((boxes, width))(keras.layers.Rescaling(scale, offset)(dense))

    # boxes (x1, y1) <= 0.5 <= (x2, y2): never empty, so IoUs are not all zero
    return keras.Model(inputs, keras.layers.Concatenate()(
        [part(2, 0.5), part(2, 0.5, 0.5), part(5)]))


DETECTION_METHODS = {
    "Saliency": lambda m, **k: Saliency(m, **k),
    "Occlusion": lambda m, **k: Occlusion(m, patch_size=4, **k),
    "Rise": lambda m, **k: Rise(m, nb_samples=64, seed=0, **k),  # the sampling family's loop
}


@pytest.mark.parametrize("method", sorted(DETECTION_METHODS))
def test_detection_targets_of_any_count_and_rank_in_any_order(method):
    model = detector(boxes=3)
    explainer = DETECTION_METHODS[method](model, operator="object detection")
    predictions = model(X).numpy()
    one = predictions[:, 0]  # (N, 7)
    four = np.concatenate([predictions, predictions[:, :1]], 1)  # (N, K=4, 7): K != 3 boxes
    first = explainer(X, one).numpy()
    several = explainer(X, four).numpy()  # a second rank after the first: traced again
    again = explainer(X, one).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.isfinite(several).all() and np.abs(several).sum() > 0
    # K copies of one box score K times its score: maps scale by K (same for any K)
    np.testing.assert_allclose(explainer(X, np.repeat(one[:, None], 5, 1)).numpy(),
                               5 * first, rtol=1e-4, atol=1e-6)


def test_fullgrad_refuses_biases_it_cannot_find():
    class HiddenBias(keras.layers.Layer):
        """Declares a bias (use_bias=True) kept where FullGrad cannot read it."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.use_bias = True
            self.offset = 0.5

        def call(self, x):
            return x + self.offset

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = HiddenBias(name="hidden")(keras.layers.Conv2D(2, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="hidden"):
        FullGrad(model)


def test_fullgrad_counts_biases_that_are_not_keras_variables():
    """Keras < 3.7 kept layer biases in backend variables that are not ``keras.Variable``
    instances: FullGrad found none and silently dropped every bias term. A layer holding
    its bias in a ``tf.Variable`` is the same case on today's Keras."""

    class TFBias(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.use_bias = True
            self.kernel = self.add_weight(shape=(8, units), initializer="glorot_uniform")
            self.bias = tf.Variable(tf.fill((units,), 0.3), name="bias")

        def call(self, x):
            return tf.matmul(x, self.kernel) + self.bias

        def compute_output_shape(self, shape):
            return (*shape[:-1], self.kernel.shape[-1])

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.ReLU()(TFBias(8, name="tf_bias")(x))  # per-pixel dense, tf.Variable bias
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    explainer = FullGrad(model)
    assert any(path.endswith("tf_bias") for path in explainer.bias_layers)
    input_term, bias_terms = explainer.raw_terms(X, Y)
    score = tf.reduce_sum(model(X) * tf.one_hot(Y, 3), -1).numpy()
    total = np.sum(input_term.numpy().reshape(3, -1), 1) + sum(
        np.sum(t.numpy().reshape(3, -1), 1) for t in bias_terms)
    np.testing.assert_allclose(total, score, rtol=1e-4, atol=1e-5)  # completeness


def test_smoothgrad_on_a_callable_repeats_with_a_seed():
    model = tf_keras_sequential()
    a = SmoothGrad(model, nb_samples=4, seed=1, batch_size=2)(X, Y).numpy()
    b = SmoothGrad(lambda v: model(v), nb_samples=4, seed=1, batch_size=8)(X, Y).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


assert CAMS <= GRAPH_ONLY


# -- README's "Models" table: every cell, run -----------------------------------------------
def _keras3(kind):
    from helpers import MODEL_FACTORIES
    return MODEL_FACTORIES[kind]()


def _h5(tmp_path):
    path = str(tmp_path / "keras2.h5")
    tf_keras_functional().save(path)
    return keras.models.load_model(path, compile=False)


def _saved_model(tmp_path):
    tf.saved_model.save(tf_keras_sequential(), str(tmp_path / "sm"))
    return tf.saved_model.load(str(tmp_path / "sm"))


def _function():
    model = tf_keras_sequential()
    return lambda x: model(x)


def _multi_input():
    from test_multi_input import image_and_meta
    return image_and_meta()


TABLE_MODELS = {
    "keras3 functional": lambda tmp: _keras3("functional"),
    "keras3 sequential": lambda tmp: _keras3("sequential"),
    "keras3 subclassed": lambda tmp: _keras3("subclassed"),
    "keras3 nested": lambda tmp: _keras3("nested"),
    "keras2 h5": _h5,
    "tf_keras functional": lambda tmp: tf_keras_functional(),
    "tf_keras sequential": lambda tmp: tf_keras_sequential(),
    "saved model": _saved_model,
    "function": lambda tmp: _function(),
    "numpy predictor": lambda tmp: (lambda x: np.asarray(x).reshape(len(x), -1)[:, :3]),
    "multi-input": lambda tmp: _multi_input(),
    "multi-output": lambda tmp: two_heads(),
}
TABLE_KINDS = {  # one representative per explainer kind
    "gradient": lambda m, **k: SmoothGrad(m, nb_samples=2, seed=0, **k),
    "graph": lambda m, **k: GradCAM(m, **k),
    "black box": lambda m, **k: Occlusion(m, patch_size=4, **k),
    "meta": lambda m, **k: Smoothed(Saliency(m, **k), nb_samples=2, seed=0),
}
REFUSED = {  # (model, kind) -> the error that names the way out
    ("keras3 subclassed", "graph"): "functional or Sequential",
    ("saved model", "graph"): "this method needs the model's layers",
    ("function", "graph"): "this method needs the model's layers",
    ("numpy predictor", "graph"): "this method needs the model's layers",
    ("numpy predictor", "gradient"): "numpy-level callable",
    ("numpy predictor", "meta"): "numpy-level callable",
}


def _table_inputs(name):
    if name.startswith("keras3"):
        from helpers import IMAGE_SHAPE
        return np.random.default_rng(0).random((3, *IMAGE_SHAPE)).astype("float32")
    if name == "multi-input":
        from test_multi_input import IMAGES, META
        return IMAGES[:3], META[:3]
    return X


@pytest.mark.parametrize("kind", sorted(TABLE_KINDS))
@pytest.mark.parametrize("name", sorted(TABLE_MODELS))
def test_models_table(tmp_path, name, kind):
    model = TABLE_MODELS[name](tmp_path)
    inputs = _table_inputs(name)
    options = {}
    if name == "multi-output":  # a head by name; graph methods reroute to it
        options = {"operator": lambda m, x, t: m(x)[1][:, 1]}
    if (name, kind) in REFUSED:
        with pytest.raises(TypeError, match=REFUSED[name, kind]):
            TABLE_KINDS[kind](model, **options)(inputs, [0, 1, 2])
        return
    maps = TABLE_KINDS[kind](model, **options)(inputs, None if options else [0, 1, 2])
    for leaf in tf.nest.flatten(maps):
        assert leaf.shape[0] == 3 and np.isfinite(leaf.numpy()).all()
        assert np.abs(leaf.numpy()).sum() > 0


def keras2_depthwise_h5(tmp_path):
    """A Keras 2 model with the layers whose .h5 configs Keras 3 refuses ('groups': 1)."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(inputs)
    x = tf_keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    x = tf_keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(x))
    path = str(tmp_path / "depthwise.h5")
    model.save(path)
    return model, path


def test_keras2_h5_with_depthwise_and_transposed_convolutions(tmp_path):
    import saliencekit

    old, path = keras2_depthwise_h5(tmp_path)
    with pytest.raises(TypeError, match="groups"):  # what Keras 3 alone says
        keras.models.load_model(path, compile=False)
    loaded = saliencekit.load_model(path)
    np.testing.assert_allclose(loaded(X).numpy(), old(X).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Saliency(loaded)(X, Y).numpy(),
                               reference_gradients(lambda v: old(v, training=False), X, Y),
                               rtol=1e-5, atol=1e-6)
    cam = GradCAM(old)  # graph methods convert the tf_keras model the same way
    assert cam.conv_layer_name == GradCAM(loaded).conv_layer_name
    np.testing.assert_allclose(cam(X, Y).numpy(), GradCAM(loaded)(X, Y).numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.slow
def test_a_keras2_keras_applications_h5_file(tmp_path):
    """MobileNetV2 (depthwise convolutions) saved by Keras 2, as the files people have."""
    import saliencekit

    old = tf_keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35,
                                            classes=5)
    old.save(str(tmp_path / "mobilenet.h5"))
    loaded = saliencekit.load_model(str(tmp_path / "mobilenet.h5"))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32") * 2 - 1
    for name in ("Saliency", "GradCAM", "FullGrad", "GuidedBackprop", "Occlusion"):
        a = FACTORIES[name](loaded, output_layer="logits") if name != "Occlusion" else (
            FACTORIES[name](loaded))
        maps = a(x, [0, 1]).numpy()
        assert maps.shape == (2, 64, 64, 1) and np.isfinite(maps).all(), name
    assert GradCAM(loaded).conv_layer_name.endswith("out_relu")
