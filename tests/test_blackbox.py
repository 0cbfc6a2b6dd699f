"""The black-box family (Rise, Lime, KernelShap, Sobol, HSIC) against closed forms, and the
mechanisms they share: keyed samples, one trace, bounded loops."""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from helpers import black_box_factories, small_cnn
from saliencekit.attributions import (
    TTA,
    HsicAttributionMethod,
    KernelShap,
    Lime,
    Rise,
    Smoothed,
    SobolAttributionMethod,
)
from saliencekit.attributions.gsa import hsic_binary, sobol_indices
from saliencekit.commons import linear, sampling

FACTORIES = black_box_factories()


def function_model(shape, function):
    """A Keras model computing ``function`` (TensorFlow ops) of its input: (N, 1) outputs."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Lambda(function)(inputs))


def linear_model(shape, weights):
    w = tf.constant(weights.reshape(-1), tf.float32)
    return function_model(shape, lambda x: tf.reduce_sum(
        tf.reshape(x, (tf.shape(x)[0], -1)) * w, -1, keepdims=True))


def per_cell(maps, cells):
    """One value per cell of maps ``(N, H, W, 1)``: the map is constant on each cell."""
    maps = maps[..., 0]
    return np.stack([[m[cells == g].mean() for g in range(cells.max() + 1)] for m in maps])


# -- closed forms ---------------------------------------------------------------------------
def test_kernel_shap_gives_the_exact_shapley_values_of_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 8, 2)).astype("float32")
    x = rng.random((3, 8, 8, 2)).astype("float32")
    model = linear_model((8, 8, 2), w)
    baseline = 0.3
    values = KernelShap(model, operator="regression", nb_samples=120, ref_value=baseline,
                        grid_size=4, seed=0)(x).numpy()
    cells = sampling.cell_map((8, 8), (4, 4))
    expected = per_cell(((x - baseline) * w).sum(-1, keepdims=True), cells) * 4  # 4 px/cell
    np.testing.assert_allclose(per_cell(values, cells), expected, rtol=1e-4, atol=1e-4)
    gap = model(x).numpy()[:, 0] - model(np.full_like(x, baseline)).numpy()[:, 0]
    np.testing.assert_allclose(per_cell(values, cells).sum(1), gap, rtol=1e-5)  # efficiency


def exact_shapley(f, x, baseline):
    """Shapley values of f at x against baseline by enumerating every coalition."""
    m = len(x)
    values = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for coalition in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                z = np.array(baseline, float)
                z[list(coalition)] = x[list(coalition)]
                with_i = z.copy()
                with_i[i] = x[i]
                values[i] += weight * (f(with_i) - f(z))
    return values


def test_kernel_shap_draws_coalition_sizes_from_the_shapley_kernel():
    """p(k) proportional to (M - 1) / (k (M - k)) for k in 1..M-1, each coalition followed by
    its complement; samples 0 and 1 are the full and the empty coalitions."""
    m, n = 6, 20000
    explainer = KernelShap(function_model((m,), lambda v: v[:, :1]), operator="regression")
    seeds = tf.constant([[0, 5]], tf.int64)
    present = tf.ones((1, m))
    z = explainer._interpretable(seeds, tf.range(n, dtype=tf.int64), {
        "present": present, **explainer._coalition_sizes(present)}).numpy()[:, 0]
    np.testing.assert_array_equal(z[0], np.ones(m))
    np.testing.assert_array_equal(z[1], np.zeros(m))
    np.testing.assert_array_equal(z[3::2], 1 - z[2::2][:len(z[3::2])])
    sizes = np.bincount(z[2::2].sum(1).astype(int), minlength=m + 1) / len(z[2::2])
    kernel = np.array([0] + [(m - 1) / (k * (m - k)) for k in range(1, m)] + [0])
    np.testing.assert_allclose(sizes, kernel / kernel.sum(), atol=0.01)


def test_kernel_shap_converges_to_the_shapley_values_of_a_model_with_interactions():
    """Enumerated Shapley values of a non-additive model (each product term is split among
    its players), within Monte-Carlo error, and exact efficiency."""
    x = np.array([[1.0, 2.0, -1.5, 0.5, 3.0]], "float32")

    def f(v):
        return v[0] * v[1] + v[2] * v[3] * v[4] + 0.5 * v[4]

    model = function_model((5,), lambda v: (v[:, 0] * v[:, 1] + v[:, 2] * v[:, 3] * v[:, 4]
                                            + 0.5 * v[:, 4])[:, None])
    values = KernelShap(model, operator="regression", nb_samples=3000, seed=1)(x).numpy()[0]
    expected = exact_shapley(f, x[0].astype(float), np.zeros(5))
    np.testing.assert_allclose(values, expected, atol=0.05)
    np.testing.assert_allclose(values.sum(), f(x[0]), rtol=1e-5)


def test_lime_recovers_the_contributions_of_binary_features_of_a_linear_model():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 6, 1)).astype("float32")
    x = rng.random((2, 6, 6, 1)).astype("float32")
    model = linear_model((6, 6, 1), w)
    segments = rng.integers(0, 5, (6, 6))  # a user's segmentation, 5 features
    expected = np.stack([[(xi[..., 0] * w[..., 0])[segments == g].sum() for g in range(5)]
                         for xi in x])
    explainer = Lime(model, operator="regression", interpretable_model=linear.LinearRegression(),
                     map_to_interpret_space=segments, nb_samples=64, ref_value=0.0, seed=2)
    maps = explainer(x).numpy()
    np.testing.assert_allclose(per_cell(maps, segments), expected, rtol=1e-4, atol=1e-4)

    class NumpyLeastSquares:  # a scikit-learn-like object, fitted on the host
        def fit(self, z, y, sample_weight):
            design = np.c_[z, np.ones(len(z))] * np.sqrt(sample_weight)[:, None]
            solution = np.linalg.lstsq(design, y * np.sqrt(sample_weight), rcond=None)[0]
            self.coef_ = solution[:-1]
            return self

        def predict(self, z):
            return z @ self.coef_

    host = Lime(model, operator="regression", interpretable_model=NumpyLeastSquares(),
                map_to_interpret_space=segments, nb_samples=64, ref_value=0.0, seed=2)
    np.testing.assert_allclose(host(x).numpy(), maps, rtol=1e-3, atol=1e-4)
    # the default Ridge(alpha=2) shrinks them: it is the closed form on the same samples
    ridge = Lime(model, operator="regression", map_to_interpret_space=segments, nb_samples=64,
                 ref_value=0.0, seed=2)(x).numpy()
    assert not np.allclose(ridge, maps, atol=1e-3)
    np.testing.assert_allclose(np.sign(per_cell(ridge, segments)), np.sign(expected))


def test_ridge_is_the_closed_form_of_the_weighted_objective():
    rng = np.random.default_rng(3)
    z, y, w = rng.random((40, 6)), rng.normal(size=40), rng.random(40)
    fitted = linear.Ridge(alpha=2.0).fit(z, y, sample_weight=w)
    mean_z, mean_y = (w[:, None] * z).sum(0) / w.sum(), (w * y).sum() / w.sum()
    zc, yc = z - mean_z, y - mean_y  # the unpenalised intercept: centre by weighted means
    coef = np.linalg.solve(zc.T @ (w[:, None] * zc) + 2.0 * np.eye(6), zc.T @ (w * yc))
    np.testing.assert_allclose(fitted.coef_, coef, rtol=1e-5)
    np.testing.assert_allclose(fitted.intercept_, mean_y - mean_z @ coef, rtol=1e-5)
    np.testing.assert_allclose(fitted.predict(z), z @ coef + fitted.intercept_, rtol=1e-5)


def test_sobol_total_indices_of_an_additive_model_are_its_shares_of_variance():
    """f = sum_g a_g * mask_g with independent uniform masks: Var f = sum a_g^2 / 12, so the
    total index of cell g is a_g^2 / sum a^2; an ignored cell has exactly 0 (f(A) = f(C_g))."""
    a = np.array([3.0, 0.0, 1.0, 2.0, 0.5, 1.5, 0.0, 1.0, 2.5, 1.0, 0.5, 2.0, 1.0, 1.0, 3.0,
                  0.25], "float32")
    model = function_model((4, 4, 1), lambda x: tf.reduce_sum(
        tf.reshape(x, (-1, 16)) * a, -1, keepdims=True))
    x = np.ones((2, 4, 4, 1), "float32")  # inpainting: x * M = M
    indices = SobolAttributionMethod(model, grid_size=4, nb_design=256, operator="regression",
                                     seed=0)(x).numpy().reshape(2, 16)
    np.testing.assert_allclose(indices, np.tile(a**2 / (a**2).sum(), (2, 1)), rtol=0.1,
                               atol=1e-3)
    assert np.all(indices[:, a == 0] == 0)


def test_sobol_estimators_follow_their_formulas():
    rng = np.random.default_rng(4)
    a, c = rng.normal(size=(2, 16)), rng.normal(size=(2, 3, 16))
    var = a.var(-1, ddof=1)[:, None]
    mu = a.mean(-1)[:, None]
    e_ac = (c * a[:, None]).mean(-1)
    expected = {
        "jansen": ((a[:, None] - c) ** 2).sum(-1) / (2 * 16 * var),
        "homma": (var - e_ac + mu**2) / var,
        "saltelli": 1 - (e_ac - mu**2) / var,
        "glen": 1 - np.stack([[np.corrcoef(a[b], c[b, i])[0, 1] for i in range(3)]
                              for b in range(2)]),
    }
    mu_ac = 0.5 * (mu + c.mean(-1))
    janon_var = ((a**2).sum(-1)[:, None] + (c**2).sum(-1)) / 30 - mu_ac**2
    expected["janon"] = 1 - (e_ac - mu_ac**2) / janon_var
    for name, value in expected.items():
        got = sobol_indices(name, tf.constant(a, tf.float32), tf.constant(c, tf.float32))
        np.testing.assert_allclose(got.numpy(), value, rtol=1e-4, atol=1e-5, err_msg=name)


def rise_expectation(size, grid, probability, region):
    """E[score * m(p)] / E[m(p)] for score = the mean of the mask over ``region``: with
    independent cells, E[m(p) m(q)] = P^2 + P (1 - P) E_offset[<w(p), w(q)>], w being the
    bilinear weights of the cells (computed here by tf.image.resize of one-hot grids)."""
    up = int(size * (1 + 1 / grid))
    one_hot = np.eye(grid * grid, dtype="float32").reshape(-1, grid, grid, 1)
    weights = tf.image.resize(one_hot, (up, up)).numpy()[..., 0]  # (cells, up, up)
    shifts = range(up - size + 1)
    overlap = np.zeros((size, size))
    for dy, dx in itertools.product(shifts, shifts):
        crop = weights[:, dy:dy + size, dx:dx + size]  # (cells, size, size)
        overlap += np.einsum("apq,a->pq", crop, crop[:, region[0], region[1]].mean(1))
    overlap /= len(shifts) ** 2
    return probability + (1 - probability) * overlap


def test_rise_on_the_mean_of_a_region_converges_to_its_closed_form():
    size, grid, probability = 12, 3, 0.5
    rows, cols = np.meshgrid(np.arange(2, 6), np.arange(5, 9), indexing="ij")
    region = (rows.ravel(), cols.ravel())
    mask = np.zeros((size, size), "float32")
    mask[region] = 1.0 / mask[region].size
    model = function_model((size, size, 1), lambda x: tf.reduce_sum(
        x[..., 0] * mask, [1, 2])[:, None])
    expected = rise_expectation(size, grid, probability, region)
    x = np.ones((1, size, size, 1), "float32")
    errors = []
    for samples in (250, 8000):
        maps = Rise(model, operator="regression", nb_samples=samples, grid_size=grid,
                    batch_size=500, seed=3)(x).numpy()[0, ..., 0]
        errors.append(np.abs(maps - expected).mean())
    assert errors[1] < 0.01, errors
    assert errors[1] < errors[0] / 2, errors  # Monte-Carlo error: ~ 1 / sqrt(nb_samples)
    assert expected[region].mean() > expected.mean() + 0.05  # the region stands out


def test_hsic_gives_the_only_informative_cell_the_largest_index():
    informative = 6
    weight = (np.arange(16) == informative).astype("float32").reshape(4, 4)
    model = function_model((4, 4, 1), lambda x: tf.reduce_sum(x[..., 0] * weight, [1, 2])[:, None])
    maps = HsicAttributionMethod(model, grid_size=4, nb_design=64, operator="regression",
                                 seed=1)(np.ones((2, 4, 4, 1), "float32")).numpy()
    centres = maps[..., 0].reshape(2, 16)  # one pixel per cell: no resizing
    assert np.all(np.argmax(centres, 1) == informative)
    assert np.all(centres[:, informative] > 5 * np.delete(centres, informative, 1).max(1))


def test_hsic_closed_form_is_xpliques_trace_formula():
    rng = np.random.default_rng(5)
    masks = (rng.random((30, 7)) > 0.5).astype("float32")
    scores = rng.normal(size=30).astype("float32") + 1.0
    n = 30
    width = np.median(scores)
    gram = np.exp(-((scores[:, None] - scores[None]) ** 2) / (2 * width**2))
    h = np.eye(n) - 1 / n
    expected = [np.sum((h @ (1.5 - (m[:, None] - m[None]) ** 2) @ h) * (h @ gram @ h).T) / n
                for m in masks.T]
    np.testing.assert_allclose(hsic_binary(masks, scores).numpy(), expected, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(hsic_binary(masks, scores, block=3).numpy(), expected, rtol=1e-4,
                               atol=1e-6)


# -- mechanisms ------------------------------------------------------------------------------
IMAGES = np.random.default_rng(0).random((9, 12, 12, 3)).astype("float32")
LABELS = np.arange(9) % 4


@given(name=st.sampled_from(sorted(FACTORIES)), batch_size=st.integers(1, 40))
def test_a_seed_repeats_a_run_for_any_batch_size(name, batch_size):
    model = _model()
    reference = FACTORIES[name](model, batch_size=64)(IMAGES, LABELS, verbose=0).numpy()
    maps = FACTORIES[name](model, batch_size=batch_size)(IMAGES, LABELS, verbose=0).numpy()
    np.testing.assert_allclose(maps, reference, rtol=1e-4, atol=1e-6)


_MODEL = []


def _model():
    if not _MODEL:
        _MODEL.append(small_cnn())
    return _MODEL[0]


def test_the_kernel_is_called_flat_and_answers_as_the_structured_call():
    """Eager calls skip the concrete function's argument binding (commons/runner.py); a
    TensorFlow whose internals no longer allow it falls back, which this test reports."""
    from saliencekit.commons import runner

    explainer = FACTORIES["Rise"](_model(), batch_size=9)
    maps = explainer(IMAGES, LABELS, verbose=0).numpy()
    (concrete, flat_call), = explainer._kernel._concrete.values()
    assert flat_call is not None
    x, t, offset, _ = next(iter(explainer._batches(IMAGES, LABELS)))
    structured = concrete(x, t, offset, runner._int64(explainer.seed)).numpy()
    np.testing.assert_array_equal(maps, structured)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_seeds_differ_and_no_seed_draws_fresh_samples(name):
    model = _model()
    first = FACTORIES[name](model, seed=1)(IMAGES[:3], LABELS[:3]).numpy()
    other = FACTORIES[name](model, seed=2)(IMAGES[:3], LABELS[:3]).numpy()
    assert not np.allclose(first, other)
    fresh = FACTORIES[name](model, seed=None)
    assert not np.allclose(fresh(IMAGES[:3], LABELS[:3]).numpy(),
                           fresh(IMAGES[:3], LABELS[:3]).numpy())


def kernel_graph(explainer, x, t):
    zero = tf.constant(0, tf.int64)
    return explainer._kernel.get_concrete_function(x, t, zero, zero).graph.as_graph_def()


def op_counts(graph_def):
    from collections import Counter

    ops = Counter(node.op for node in graph_def.node)
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_one_trace_and_a_graph_that_does_not_grow_with_the_samples(name):
    model = _model()
    explainer = FACTORIES[name](model, batch_size=4)
    explainer(IMAGES, LABELS, verbose=0)  # 3 batches, the last one padded
    explainer(IMAGES[::-1], LABELS, verbose=0)
    assert explainer._kernel.experimental_get_tracing_count() == 1
    x, t = tf.zeros((4, 12, 12, 3)), tf.one_hot([0, 1, 2, 3], 4)
    key = "nb_design" if name in ("Sobol", "Hsic") else "nb_samples"
    few = kernel_graph(FACTORIES[name](model, batch_size=4, **{key: 8}), x, t)
    many = kernel_graph(FACTORIES[name](model, batch_size=4, **{key: 4096}), x, t)
    assert op_counts(few) == op_counts(many)  # a loop of fixed-size chunks
    loops = [node for node in many.node if node.op in ("While", "StatelessWhile")]
    assert loops and all(node.attr["parallel_iterations"].i == 1 for node in loops)


def test_they_compose_with_smoothed_tta_and_explain_to(tmp_path):
    model = _model()
    rise = FACTORIES["Rise"](model)
    smoothed = Smoothed(rise, nb_samples=2, noise=0.1, seed=0)
    maps = smoothed(IMAGES[:3], LABELS[:3]).numpy()
    assert maps.shape == (3, 12, 12, 1) and np.isfinite(maps).all()
    np.testing.assert_array_equal(maps, Smoothed(rise, nb_samples=2, noise=0.1, seed=0)(
        IMAGES[:3], LABELS[:3]).numpy())
    flipped = TTA(FACTORIES["Sobol"](model), scales=(), hflip=True)(IMAGES[:3], LABELS[:3])
    assert flipped.shape == (3, 12, 12, 1)
    explainer = FACTORIES["KernelShap"](model, batch_size=4)
    store = explainer.explain_to(tmp_path / "maps", IMAGES, LABELS, verbose=0)
    np.testing.assert_allclose(store.load(), explainer(IMAGES, LABELS).numpy(), rtol=1e-5)


def test_xplique_positional_order():
    model = _model()
    rise = Rise(model, 16, None, 100, 5, 0.3, 0.5)
    assert (rise.batch_size, rise.nb_samples, rise.grid_size, rise.preservation_probability,
            rise.mask_value) == (16, 100, 5, 0.3, 0.5)
    sobol = SobolAttributionMethod(model, 4, 16, None, "homma", "blurring", 32, "regression")
    assert (sobol.grid_size, sobol.nb_design, sobol.estimator, sobol.perturbation_function,
            sobol.batch_size, sobol.operator.__name__) == (4, 16, "homma", "blurring", 32,
                                                           "regression")
    hsic = HsicAttributionMethod(model, 4, 100, "sobol", None, "amplitude", 50, 8)
    assert (hsic.sampler, hsic.batch_size, hsic.estimator_batch_size) == ("sobol", 50, 8)
    shap = KernelShap(model, 32, None, None, 50, 0.5)
    assert (shap.batch_size, shap.nb_samples, shap.ref_value) == (32, 50, 0.5)
    lime = Lime(model, None, None, linear.Ridge(1.0), None, None, None, 0.0, 40, "cosine", 3.0,
                0.7, seed=0)
    # batch_size=None (xplique's "all at once") stays None: the samples of one input per pass
    assert (lime.batch_size, lime.nb_samples, lime.distance_mode, lime.kernel_width,
            lime.prob) == (None, 40, "cosine", 3.0, 0.7)
    assert "batch_size=None" in repr(lime)
    for explainer in (sobol, hsic, lime):
        assert np.isfinite(explainer(IMAGES[:2], LABELS[:2]).numpy()).all()
    chunked = Lime(model, 3, None, linear.Ridge(1.0), None, None, None, 0.0, 40, "cosine", 3.0,
                   0.7, seed=0)
    np.testing.assert_allclose(lime(IMAGES[:2], LABELS[:2]).numpy(),
                               chunked(IMAGES[:2], LABELS[:2]).numpy(), rtol=1e-4, atol=1e-6)


def test_mistakes_are_named():
    model = _model()
    table = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"inputs: expected images \(N, H, W, C\) for "
                                         "SobolAttributionMethod"):
        SobolAttributionMethod(table)(np.ones((2, 6)), [0, 1])
    with pytest.raises(ValueError, match="nb_design: expected a power of two, got 24"):
        SobolAttributionMethod(model, nb_design=24)
    with pytest.raises(ValueError, match="perturbation_function: expected one of"):
        HsicAttributionMethod(model, perturbation_function="blur")
    with pytest.raises(ValueError, match="estimator: expected one of 'jansen'"):
        SobolAttributionMethod(model, estimator="sobol")
    with pytest.raises(TypeError, match="interpretable_model: expected an object with fit"):
        Lime(model, interpretable_model="ridge")
    with pytest.raises(ValueError, match="jit_compile: expected False with an "
                                         "interpretable_model fitted on the host"):
        Lime(model, interpretable_model=type("M", (), {"fit": print, "predict": print})(),
             jit_compile=True)
    with pytest.raises(ValueError, match="preservation_probability: expected a number in"):
        Rise(model, preservation_probability=1.5)
    with pytest.raises(ValueError, match="distance_mode: expected one of"):
        Lime(model, distance_mode="manhattan")
    with pytest.raises(ValueError, match=r"kernel_width: expected a width at the scale .* got "
                                         r"45.0. Scale kernel_width"):  # never zeros silently
        Lime(model, nb_samples=8)(IMAGES[:2] * 255, LABELS[:2])


def test_batch_size_none_holds_one_inputs_samples_per_pass():
    """xplique's "all at once" for this family: every sample of one input in a pass, never
    every input at once (Lime's default: N x nb_samples copies would not fit for a real N),
    also when a meta-explainer wraps it."""
    largest = keras.Variable(0, dtype="int32", trainable=False)

    class Largest(keras.layers.Layer):
        def call(self, x):
            largest.assign(keras.ops.maximum(largest, keras.ops.shape(x)[0]))
            return x

    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(Largest()(inputs))))
    images = np.random.default_rng(1).random((50, 12, 12, 3)).astype("float32")
    for explainer in (Lime(model, nb_samples=20, grid_size=3, seed=0),
                      Smoothed(KernelShap(model, None, nb_samples=20, grid_size=3, seed=0),
                               nb_samples=2, seed=0)):
        largest.assign(0)
        assert np.isfinite(explainer(images, np.arange(50) % 4, verbose=0).numpy()).all()
        assert int(largest.numpy()) == 20, type(explainer).__name__
