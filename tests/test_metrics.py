"""saliencekit.metrics: known answers, the shared engine's guarantees, named errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from saliencekit.attributions import (
    BlackBoxExplainer,
    GradCAM,
    GradientInput,
    GuidedBackprop,
    Saliency,
)
from saliencekit.commons import data, synthetic
from saliencekit.metrics import (
    AUC,
    ROAD,
    AverageDropMetric,
    AverageGainMetric,
    AverageIncreaseMetric,
    AverageStability,
    Complexity,
    Deletion,
    IndependentLayerRandomization,
    Insertion,
    MaxSensitivity,
    ModelRandomizationMetric,
    MuFidelity,
    PointingGame,
    ProgressiveLayerRandomization,
    RandomLogitMetric,
    RelevanceMass,
    RelevanceRank,
    Sparseness,
    curve_area,
)
from saliencekit.metrics.fidelity import linear_imputation

RNG = np.random.default_rng(0)
D = 6
W = RNG.integers(-3, 4, D).astype("float32")
X = RNG.integers(-3, 4, (7, D)).astype("float32")
MAPS = RNG.random((7, D)).astype("float32")


def linear(weights=W):
    """f(x) = w . x, one output."""
    model = keras.Sequential([keras.Input((len(weights),)),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[0].set_weights([weights[:, None]])
    return model


def image_linear(shape=(4, 4, 2), seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-3, 4, int(np.prod(shape))).astype("float32")
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([w[:, None]])
    return model, w.reshape(shape)


def by_hand(x, w, maps, flipped, insertion=False):
    """Deletion (or insertion) curves of f(x) = sum(w * x), baseline 0, from w * x: a
    feature is a position (channels summed)."""
    curves = []
    for xi, mi in zip(x, maps):
        contrib = (w * xi).reshape(len(mi.reshape(-1)), -1).sum(axis=1)
        order = np.argsort(-mi.reshape(-1), kind="stable")
        total = contrib.sum()
        removed = np.array([contrib[order[:k]].sum() for k in flipped])
        curves.append(removed if insertion else total - removed)
    return np.array(curves)


# -- faithfulness: known answers ------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3, 64, None])
def test_deletion_and_insertion_curves_of_a_linear_model_are_exact(batch_size):
    model = linear()
    deletion = Deletion(model, X, None, batch_size, 0.0, -1, operator="regression")
    assert list(deletion.features_perturbed) == list(range(D + 1))
    curves = deletion.detailed_evaluate(MAPS, verbose=0)
    np.testing.assert_allclose(curves, by_hand(X, W, MAPS, range(D + 1)), atol=1e-5)
    insertion = Insertion(model, X, None, batch_size, 0.0, -1, operator="regression")
    inserted = insertion.detailed_evaluate(MAPS, verbose=0)
    np.testing.assert_allclose(inserted, by_hand(X, W, MAPS, range(D + 1), True), atol=1e-5)
    # the score is the trapezoidal area on a [0, 1] axis, averaged over inputs
    areas = np.mean((curves[:, 1:] + curves[:, :-1]) / 2, axis=1)
    np.testing.assert_allclose(curve_area(curves), areas, rtol=1e-6)
    assert deletion(MAPS) == pytest.approx(areas.mean(), rel=1e-6)


def test_deletion_steps_share_and_channels_follow_xplique():
    model, w = image_linear()
    x = RNG.integers(-2, 3, (5, 4, 4, 2)).astype("float32")
    maps = RNG.random((5, 4, 4, 1)).astype("float32")
    metric = Deletion(model, x, None, 2, 0.0, 3, 0.5, operator="regression")
    flipped = np.linspace(0, 8, 4).astype(int)  # 16 positions, half of them
    np.testing.assert_array_equal(metric.features_perturbed, flipped)
    np.testing.assert_allclose(metric.detailed_evaluate(maps, verbose=0),
                               by_hand(x, w, maps, flipped), atol=1e-4)
    # maps with channels are averaged over them; (N, H, W) maps are taken as they are
    both = np.concatenate([maps, 3 * maps], -1)
    np.testing.assert_allclose(metric.detailed_evaluate(both, verbose=0),
                               metric.detailed_evaluate(maps[..., 0], verbose=0))
    # a callable baseline: the path ends at it
    shifted = Deletion(model, x, None, 2, lambda v: v * 0 + 1.0, 1, operator="regression")
    end = shifted.detailed_evaluate(maps, verbose=0)[:, -1]
    np.testing.assert_allclose(end, np.full(5, w.sum()), rtol=1e-5)


def test_mufidelity_of_gradient_input_on_a_linear_model_is_one():
    model = linear()
    maps = GradientInput(model, operator="regression")(X)
    metric = MuFidelity(model, X, None, 4, nb_samples=40, operator="regression", seed=3)
    np.testing.assert_allclose(metric.detailed_evaluate(maps, verbose=0), 1.0, atol=1e-6)
    # a map of the opposite order is anti-correlated, an all-zero map scores 0
    assert metric(-np.asarray(maps)) == pytest.approx(-1.0, abs=1e-6)
    assert metric(np.zeros_like(X)) == 0.0


def test_mufidelity_on_images_uses_grid_cells():
    model, w = image_linear((6, 6, 1))
    x = RNG.integers(1, 3, (3, 6, 6, 1)).astype("float32")
    maps = w * x  # gradient x input, exact
    for grid in (None, 3):
        metric = MuFidelity(model, x, None, 8, grid, 0.3, nb_samples=30, seed=0,
                            operator="regression")
        np.testing.assert_allclose(metric.detailed_evaluate(maps, verbose=0), 1.0, atol=1e-6)


def test_average_drop_increase_gain_by_hand():
    w = np.array([1.0, -1.0, 2.0, 0.5], "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False,
                                                                    activation="sigmoid")])
    model.layers[0].set_weights([w[:, None]])
    x = RNG.random((5, 4)).astype("float32")
    maps = RNG.normal(size=(5, 4)).astype("float32")
    mask = np.abs(maps)
    mask = (mask - mask.min(1, keepdims=True)) / (
        mask.max(1, keepdims=True) - mask.min(1, keepdims=True) + 1e-8)
    base = 1 / (1 + np.exp(-(x @ w)))
    after = 1 / (1 + np.exp(-((x * mask) @ w)))
    args = (model, x, None, 2, "regression")
    np.testing.assert_allclose(AverageDropMetric(*args).detailed_evaluate(maps, verbose=0),
                               np.maximum(base - after, 0) / (base + 1e-8), rtol=1e-4)
    np.testing.assert_allclose(AverageIncreaseMetric(*args).detailed_evaluate(maps, verbose=0),
                               (after > base).astype(float))
    np.testing.assert_allclose(AverageGainMetric(*args).detailed_evaluate(maps, verbose=0),
                               np.maximum(after - base, 0) / (1 - base + 1e-8), rtol=1e-4)


def test_activation_scores_probabilities():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(3)])
    x = RNG.random((4, D)).astype("float32")
    probabilities = tf.nn.softmax(model(x)).numpy()
    curves = Deletion(model, x, [0, 1, 2, 0], steps=2, activation="softmax").detailed_evaluate(
        RNG.random((4, D)), verbose=0)
    np.testing.assert_allclose(curves[:, 0], probabilities[np.arange(4), [0, 1, 2, 0]],
                               rtol=1e-5)


def test_road_imputation_is_exact_on_linear_images_and_orders_differ():
    i, j = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    image = np.stack([0.3 * i - 0.2 * j + 1, 0.1 * i + 0.5 * j], -1)[None].astype("float32")
    removed = np.zeros((1, 10, 12, 1), "float32")
    removed[0, 1:-1, 1:-1] = RNG.random((8, 10, 1)) < 0.7  # interior pixels only
    imputed = linear_imputation(tf.constant(image), tf.constant(removed), 200, 1e-6).numpy()
    np.testing.assert_allclose(imputed, image, atol=1e-5)
    # the default tolerance stops early, within a tenth of ROAD's default noise (0.01)
    early = linear_imputation(tf.constant(image), tf.constant(removed), 200).numpy()
    assert 1e-5 < np.abs(early - image).max() < 1e-3
    # MoRF removes the most relevant pixels first, LeRF the least: on a linear model with
    # positive contributions and the exact map, MoRF's curve falls below LeRF's
    model, w = image_linear((8, 8, 1), seed=1)
    w = np.abs(w)
    model.layers[-1].set_weights([w.reshape(-1, 1)])
    x = RNG.random((3, 8, 8, 1)).astype("float32")
    maps = w * x
    morf = ROAD(model, x, None, 3, "regression", percentages=(0.2, 0.5), seed=0, noise=0.0)
    lerf = ROAD(model, x, None, 3, "regression", percentages=(0.2, 0.5), order="lerf",
                seed=0, noise=0.0)
    assert morf(maps) < lerf(maps)
    assert morf.detailed_evaluate(maps, verbose=0).shape == (3, 2)


# -- robustness -----------------------------------------------------------------------------
def test_stability_of_a_linear_models_saliency_is_zero_and_max_sensitivity_by_hand():
    model = linear()
    saliency = Saliency(model, operator="regression")
    assert AverageStability(model, X, None, nb_samples=5, seed=0, operator="regression")(
        saliency) == 0.0
    # GradientInput = w * x: neighbours x + r u, |u| <= 1, change by w * r * u
    metric = MaxSensitivity(model, X, None, 4, 0.1, nb_samples=16, seed=0,
                            operator="regression")
    values = metric.detailed_evaluate(GradientInput(model, operator="regression"), verbose=0)
    bound = np.linalg.norm(W * 0.1) / np.linalg.norm(W * X, axis=1)
    assert np.all(values <= bound + 1e-6) and np.all(values > 0.3 * bound)
    # base explanations given: same values
    given_base = GradientInput(model, operator="regression")(X)
    np.testing.assert_allclose(metric.detailed_evaluate(
        GradientInput(model, operator="regression"), given_base, verbose=0), values, rtol=1e-5)


def test_stability_takes_any_callable_explainer_eagerly():
    model = linear()
    grad_input = GradientInput(model, operator="regression")
    metric = AverageStability(model, X, None, 3, 0.05, "l1", 6, seed=4, operator="regression")

    def plain(x, t):  # not a saliencekit explainer: called eagerly, chunk by chunk
        return np.asarray(x) * W

    np.testing.assert_allclose(metric.detailed_evaluate(plain, verbose=0),
                               metric.detailed_evaluate(grad_input, verbose=0), rtol=1e-5)
    # xplique's distances: "l1" sums absolute differences, "l2" is the Euclidean norm
    for name, by_hand in [("l1", lambda a, b: tf.reduce_sum(tf.abs(a - b), 1)),
                          ("l2", lambda a, b: tf.sqrt(tf.reduce_sum((a - b) ** 2, 1)))]:
        named, own = (AverageStability(model, X, None, 3, 0.05, d, 6, seed=4,
                                       operator="regression") for d in (name, by_hand))
        np.testing.assert_allclose(named.detailed_evaluate(plain, verbose=0),
                                   own.detailed_evaluate(plain, verbose=0), rtol=1e-5)


# -- randomisation --------------------------------------------------------------------------
class InputAsMap(BlackBoxExplainer):
    """A method that ignores the model: the input is its map."""

    def _batch(self, inputs, targets, seeds):
        return inputs


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", padding="same", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(6, 3, activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="head"),
    ])


def test_model_randomization_of_a_method_that_ignores_the_model_is_one_and_weights_unchanged():
    model = small_cnn()
    x = RNG.random((5, 12, 12, 3)).astype("float32")
    before = [w.numpy().copy() for w in model.weights]
    metric = ModelRandomizationMetric(model, x, [0, 1, 2, 3, 0],
                                      ProgressiveLayerRandomization(1.0), batch_size=2)
    assert metric(InputAsMap(model)) == pytest.approx(1.0, abs=1e-6)
    assert metric(lambda m: (lambda a, b: a)) == pytest.approx(1.0, abs=1e-6)  # a factory
    # a method that reads the model changes, layer by layer, and the model is untouched
    cascade = metric.layer_correlations(Saliency(model))
    assert list(cascade) == ["head", "last_conv", "bn", "conv"]
    assert cascade["conv"].mean() < 0.9
    independent = metric.layer_correlations(Saliency(model), cascading=False)
    assert independent["head"].shape == (5,)
    for old, new in zip(before, model.weights):
        assert np.array_equal(old, new.numpy())  # bitwise
    one = ModelRandomizationMetric(model, x, None, IndependentLayerRandomization("head"))
    assert one.randomization_strategy.layers(one._layers)[0].name == "head"


def test_random_logit_of_a_class_blind_method_is_one():
    model = small_cnn()
    x = RNG.random((5, 12, 12, 3)).astype("float32")
    metric = RandomLogitMetric(model, x, [0, 1, 2, 3, 0], batch_size=2, seed=1)
    assert metric(InputAsMap(model)) == pytest.approx(1.0, abs=1e-5)
    assert metric(Saliency(model)) < 0.99


@pytest.fixture(scope="module")
def trained_cnn():
    """A small CNN trained for a few seconds on synthetic shapes (about 80% accuracy)."""
    shapes = synthetic.shapes(768, size=24, seed=0, distractors=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((24, 24, 3)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="head"),
    ])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(shapes.images, shapes.labels, epochs=8, batch_size=32, verbose=0)
    return model, shapes.images[:16], shapes.labels[:16]


def test_sanity_checks_of_adebayo_et_al_on_a_trained_cnn(trained_cnn):
    """Adebayo et al. 2018, cascading randomisation from the head down. GuidedBackprop is
    blind to the top of the network: with the head and the two last convolutions
    randomised (3 of 5 layers), its maps keep a correlation of 0.62 where Saliency's fall
    to 0.48 and GradCAM's to 0.28 (0.54-0.65 / 0.41-0.49 / 0.14-0.39 over four
    randomisation seeds); with every layer randomised, Saliency's and GradCAM's fall to
    about 0.2. On this 4-convolution network GuidedBackprop's invariance stops at the
    first layers: fully randomised, its maps fall to about 0.2 too (the paper's Inception
    keeps them similar: that part of the finding needs depth and natural images)."""
    model, x, y = trained_cnn
    methods = {"saliency": Saliency, "gradcam": GradCAM, "guided": GuidedBackprop}
    top = ModelRandomizationMetric(model, x, y, ProgressiveLayerRandomization("conv3"),
                                   batch_size=16)
    half = {name: top(method(model)) for name, method in methods.items()}
    assert half["guided"] > 0.5
    assert half["guided"] > half["saliency"] + 0.08
    assert half["guided"] > half["gradcam"] + 0.2
    full = ModelRandomizationMetric(model, x, y, ProgressiveLayerRandomization(1.0),
                                    batch_size=16)
    assert full(Saliency(model)) < 0.3 and full(GradCAM(model)) < 0.35


# -- complexity and localisation ------------------------------------------------------------
def test_sparseness_and_complexity_known_values():
    n = 25
    one_hot = np.zeros((2, 5, 5))
    one_hot[0, 1, 2] = 3.0
    one_hot[1, 4, 4] = -1.0
    constant = np.full((2, 5, 5), 0.7)
    # Gini: its maximum 1 - 1/n for a single non-zero value, 0 for a constant map
    np.testing.assert_allclose(Sparseness().detailed_evaluate(one_hot), 1 - 1 / n)
    np.testing.assert_allclose(Sparseness().detailed_evaluate(constant), 0.0, atol=1e-12)
    # entropy: log(n) for a uniform map, 0 for a single value
    np.testing.assert_allclose(Complexity().detailed_evaluate(constant), np.log(n))
    np.testing.assert_allclose(Complexity().detailed_evaluate(one_hot), 0.0, atol=1e-12)
    # a hand-computed Gini: sorted [1, 2, 3, 4] -> sum (2i - n - 1) a_i / (n sum a)
    assert Sparseness()(np.array([[4.0, 1.0, 3.0, 2.0]])) == pytest.approx(
        (-3 * 1 - 1 * 2 + 1 * 3 + 3 * 4) / (4 * 10))


def test_localization_metrics_on_hand_arrays():
    maps = np.array([[[3.0, 1.0], [2.0, 0.0]], [[0.0, 1.0], [2.0, 3.0]]])
    masks = np.array([[[True, False], [False, False]], [[True, True], [False, False]]])
    np.testing.assert_array_equal(PointingGame(masks).detailed_evaluate(maps), [1, 0])
    np.testing.assert_allclose(RelevanceMass(masks).detailed_evaluate(maps),
                               [3 / 6, 1 / 6])
    np.testing.assert_allclose(RelevanceRank(masks).detailed_evaluate(maps), [1.0, 0.0])
    # AUC: all pairs (inside, outside), ties one half
    for m, k in zip(maps, masks):
        inside, outside = m[k], m[~k]
        pairs = [(a > b) + 0.5 * (a == b) for a in inside for b in outside]
        assert AUC(k[None])(m[None]) == pytest.approx(np.mean(pairs))
    assert np.isnan(AUC(np.zeros((1, 2, 2), bool)).detailed_evaluate(maps[:1])[0])
    from saliencekit.commons.metrics import pointing_game  # the old import still works
    np.testing.assert_array_equal(pointing_game(maps, masks), [True, False])


# -- the engine: seeds, batching, traces, memory, data kinds -----------------------------
SEEDED_MODEL = small_cnn()


def seeded_repeat(first, second):
    model = SEEDED_MODEL
    x = RNG.random((5, 12, 12, 3)).astype("float32")
    y = [0, 1, 2, 3, 0]
    maps = RNG.random((5, 12, 12)).astype("float32")
    values = [MuFidelity(model, x, y, b, 4, nb_samples=9, seed=7).detailed_evaluate(
        maps, verbose=0) for b in (first, second)]
    np.testing.assert_allclose(values[0], values[1], atol=1e-5)
    stable = [AverageStability(model, x, y, b, nb_samples=3, seed=2).detailed_evaluate(
        Saliency(model), verbose=0) for b in (first, second)]
    np.testing.assert_allclose(stable[0], stable[1], rtol=1e-4, atol=1e-6)


@settings(max_examples=2)
@given(st.sampled_from([1, 3, 8]), st.sampled_from([2, 7]))
def test_seeded_metrics_repeat_for_any_batch_size(first, second):
    seeded_repeat(first, second)


@pytest.mark.slow
@given(st.integers(1, 9), st.integers(1, 9))
def test_seeded_metrics_repeat_for_any_batch_size_thorough(first, second):
    seeded_repeat(first, second)


def test_seeds_change_draws():
    model = small_cnn()
    x = RNG.random((3, 12, 12, 3)).astype("float32")
    maps = RNG.random((3, 12, 12)).astype("float32")
    a, b = (MuFidelity(model, x, [0, 1, 2], nb_samples=9, seed=s).detailed_evaluate(
        maps, verbose=0) for s in (1, 2))
    assert not np.allclose(a, b)


def kernel_graph(metric, x, t, maps):
    zero = tf.constant(0, tf.int64)
    flags = tf.ones(x.shape[0])
    graph = metric._kernel.get_concrete_function(x, t, zero, zero, (maps, flags)).graph
    return sorted(node.op for node in graph.as_graph_def().node)


def test_one_trace_and_a_graph_independent_of_steps_and_samples():
    model = small_cnn()
    x = RNG.random((10, 12, 12, 3)).astype("float32")
    y = RNG.integers(0, 4, 10)
    metric = Deletion(model, x, y, batch_size=4, steps=5)
    metric(RNG.random((10, 12, 12)))
    metric(RNG.random((10, 12, 12, 1)))  # 3 batches each, the last padded; maps of 2 ranks
    assert metric._kernel.experimental_get_tracing_count() == 1
    tx, tt, tm = tf.zeros((4, 12, 12, 3)), tf.one_hot([0, 1, 2, 3], 4), tf.zeros((4, 12, 12))
    assert kernel_graph(Deletion(model, x, y, 4, steps=3), tx, tt, tm) == kernel_graph(
        Deletion(model, x, y, 4, steps=60), tx, tt, tm)
    assert kernel_graph(MuFidelity(model, x, y, 4, nb_samples=3), tx, tt, tm) == kernel_graph(
        MuFidelity(model, x, y, 4, nb_samples=300), tx, tt, tm)


def test_forward_passes_are_exactly_the_limit():
    """steps + 1 per input: padding rows are not scored."""
    model = linear()
    counted = tf.Variable(0, dtype=tf.int64)

    def counting(m, v, t):
        counted.assign_add(tf.shape(v, out_type=tf.int64)[0])
        return tf.reshape(m(v), (-1,))

    metric = Deletion(model, X, None, 4, steps=3, operator=counting)
    metric(MAPS)
    assert int(counted.numpy()) == len(X) * 4


def test_arrays_tensors_and_datasets_agree():
    model = small_cnn()
    x = RNG.random((7, 12, 12, 3)).astype("float32")
    y = RNG.integers(0, 4, 7)
    maps = RNG.random((7, 12, 12)).astype("float32")
    expected = Insertion(model, x, y, 3, steps=4).detailed_evaluate(maps, verbose=0)
    tensor = Insertion(model, tf.constant(x), tf.constant(y), 3, steps=4)
    np.testing.assert_allclose(tensor.detailed_evaluate(tf.constant(maps), verbose=0),
                               expected, rtol=1e-5)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    streamed = Insertion(model, dataset, None, 3, steps=4)
    np.testing.assert_allclose(streamed.detailed_evaluate(maps, verbose=0), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="extra"):
        streamed.detailed_evaluate(maps[:5], verbose=0)
    with pytest.raises(ValueError, match="extra"):
        streamed.detailed_evaluate(np.concatenate([maps, maps[:2]]), verbose=0)
    # evaluate_explainer explains batch by batch: the same as explaining first
    saliency = Saliency(model)
    assert tensor.evaluate_explainer(saliency, verbose=0) == pytest.approx(
        tensor.evaluate(saliency(x, y), verbose=0), rel=1e-5)


def test_the_runner_batches_extra_rows_with_the_inputs():
    x = np.arange(10, dtype="float32").reshape(5, 2)
    extra = {"a": np.arange(5, dtype="float32"), "b": np.ones((5, 3), "float32")}
    kwargs = dict(batch_size=2, model_input_shape=(2,), output_shape=lambda s: (None, 1),
                  rules=None)
    batches = list(data.from_arrays(x, None, extra=extra, **kwargs))
    assert [len(b) for b in batches] == [5, 5, 5]
    np.testing.assert_array_equal(batches[2][4]["a"], [4, 0])  # padded with the inputs
    assert batches[2][3] == 1
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(3)
    streamed = list(data.from_dataset(dataset, None, extra=extra, **kwargs))
    np.testing.assert_array_equal(np.concatenate([b[4]["a"] for b in streamed])[:5],
                                  np.arange(5))
    assert len(next(iter(data.from_arrays(x, None, **kwargs)))) == 4  # without extra: as before
    with pytest.raises(ValueError, match="extra"):
        data.from_arrays(x, None, extra=np.ones(4), **kwargs)


def two_input_linear():
    """f(a, b) = sum(wa * a) + wb . b: an image input (2, 2, 2) and a table input (3,)."""
    a, b = keras.Input((2, 2, 2), name="a"), keras.Input((3,), name="b")
    flat = keras.layers.Concatenate()([keras.layers.Flatten()(a), b])
    model = keras.Model([a, b], keras.layers.Dense(1, use_bias=False)(flat))
    w = RNG.integers(-3, 4, 11).astype("float32")
    model.layers[-1].set_weights([w[:, None]])
    return model, w[:8].reshape(2, 2, 2), w[8:]


def test_perturbation_metrics_on_a_two_input_model_by_hand():
    """Each input is perturbed by its own map; the features of both (4 positions of a,
    3 columns of b) are ranked together: the deletion curve is the model's output minus
    the contributions removed in the order of the concatenated maps."""
    model, wa, wb = two_input_linear()
    xa = RNG.integers(-2, 3, (5, 2, 2, 2)).astype("float32")
    xb = RNG.integers(-2, 3, (5, 3)).astype("float32")
    ma, mb = RNG.random((5, 2, 2)).astype("float32"), RNG.random((5, 3)).astype("float32")
    contrib = np.concatenate([(wa * xa).sum(-1).reshape(5, -1), wb * xb], 1)  # (5, 7)
    maps = np.concatenate([ma.reshape(5, -1), mb], 1)
    curves = []
    for c, m in zip(contrib, maps):
        order = np.argsort(-m, kind="stable")
        curves.append([c.sum() - c[order[:k]].sum() for k in range(8)])
    deletion = Deletion(model, [xa, xb], None, 3, 0.0, -1, operator="regression")
    np.testing.assert_allclose(deletion.detailed_evaluate([ma, mb], verbose=0), curves,
                               atol=1e-5)
    inserted = Insertion(model, [xa, xb], None, 3, 0.0, -1, operator="regression")
    np.testing.assert_allclose(inserted.detailed_evaluate([ma[..., None], mb], verbose=0),
                               contrib.sum(1, keepdims=True) - np.array(curves), atol=1e-5)
    # MuFidelity of GradientInput's maps (one per input) is 1 on a linear model
    gradient_input = GradientInput(model, operator="regression")([xa, xb])
    mu = MuFidelity(model, [xa, xb], None, 4, nb_samples=20, operator="regression", seed=0)
    np.testing.assert_allclose(mu.detailed_evaluate(gradient_input, verbose=0), 1.0,
                               atol=1e-6)
    # average drop: x * M per input, M the maps' absolute values min-max normalised together
    drop = AverageDropMetric(model, [xa, xb], None, 2, operator="regression")
    low, high = maps.min(1, keepdims=True), maps.max(1, keepdims=True)
    after = (contrib * (maps - low) / (high - low + 1e-8)).sum(1)
    before = contrib.sum(1)
    np.testing.assert_allclose(drop.detailed_evaluate([ma, mb], verbose=0),
                               np.maximum(before - after, 0) / (before + 1e-8), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="one map per model input"):
        deletion([ma])
    with pytest.raises(TypeError, match="one input"):
        ROAD(model, [xa, xb], None)


def test_multi_input_model_in_stability():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    xa, xb = RNG.random((4, 3)).astype("float32"), RNG.random((4, 2)).astype("float32")
    metric = AverageStability(model, (xa, xb), [0, 1, 0, 1], 2, nb_samples=4, seed=0)
    assert metric(Saliency(model)) == pytest.approx(0.0, abs=1e-10)  # linear: constant maps
    assert metric(GradientInput(model)) > 0


@pytest.mark.parametrize("build, error, match", [
    (lambda: Deletion(linear(), X, None, steps=0, operator="regression"), ValueError, "steps"),
    (lambda: Deletion(linear(), X, None, baseline_mode="zero", operator="regression"),
     TypeError, "baseline_mode"),
    (lambda: Deletion(linear(), X, None, max_percentage_perturbed=1.5,
                      operator="regression"), ValueError, "max_percentage_perturbed"),
    (lambda: Deletion(linear(), X, None, activation="relu"), ValueError, "activation"),
    (lambda: Deletion(linear(), X[:, :3], None, operator="regression"), ValueError, "inputs"),
    (lambda: MuFidelity(linear(), X, None, nb_samples=0, operator="regression"),
     ValueError, "nb_samples"),
    (lambda: ROAD(linear(), X, None, operator="regression"), ValueError, "images"),
    (lambda: ROAD(small_cnn(), np.zeros((2, 12, 12, 3)), [0, 1], order="up"),
     ValueError, "order"),
    (lambda: AverageStability(linear(), X, None, distance="cos"), ValueError, "distance"),
    (lambda: ModelRandomizationMetric(linear(), X, None, ProgressiveLayerRandomization("x")),
     ValueError, "stop_layer"),
    (lambda: ModelRandomizationMetric(lambda v: v, X, None), TypeError, "clone_model"),
])
def test_errors_are_named_before_any_work(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_map_errors_are_named():
    metric = Deletion(linear(), X, None, operator="regression")
    with pytest.raises(ValueError, match=r"explanations.*shape"):
        metric(np.ones((7, D + 1)))
    with pytest.raises(ValueError, match="one map per input"):
        metric(np.ones((6, D)))
    with pytest.raises(ValueError, match="explanations"):
        metric(np.full((7, D), np.nan))


def test_meta_explainers_are_rebuilt_on_the_randomised_copy():
    """Smoothed/TTA wrap an explainer: the wrapped one is rebuilt on the copy, then
    rewrapped with the same settings (found by the demo)."""
    from helpers import small_cnn
    from saliencekit.attributions import TTA, GradCAM, Saliency, Smoothed
    from saliencekit.metrics.randomization import _on_model

    model = small_cnn(seed=0)
    copy = keras.models.clone_model(model)  # as the metric copies: same layer names
    copy.set_weights([w * 0.5 for w in model.get_weights()])
    x = np.random.default_rng(0).random((3, 12, 12, 3)).astype("float32")
    for explainer, fresh in [
        (Smoothed(GradCAM(model), nb_samples=3, seed=2), Smoothed(GradCAM(copy), nb_samples=3,
                                                                  seed=2)),
        (TTA(Saliency(model), scales=(), hflip=True), TTA(Saliency(copy), scales=(),
                                                          hflip=True)),
    ]:
        rebuilt = _on_model(explainer, copy)
        assert rebuilt.model is copy and rebuilt.explainer.model is copy
        np.testing.assert_allclose(rebuilt(x, [0, 1, 2]).numpy(), fresh(x, [0, 1, 2]).numpy(),
                                   rtol=1e-6)
