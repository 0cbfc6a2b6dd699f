"""Guards of the mechanisms that make explainers fast and bounded in memory (no timings:
the benchmarks in benchmarks/ measure those)."""

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from helpers import EXPLAINERS, explainer_factories, small_cnn

FACTORIES = explainer_factories()


def graph_signature(explainer, x, t):
    """Op types (with the loops' bodies) and the static shapes of the kernel's graph."""
    zero = tf.constant(0, tf.int64)
    graph_def = explainer._kernel.get_concrete_function(x, t, zero, zero).graph.as_graph_def()
    ops = Counter(node.op for node in graph_def.node)
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    consts = sorted(
        tuple(tf.make_ndarray(node.attr["value"].tensor).ravel().tolist())
        for node in graph_def.node if node.op == "Const"
        and node.attr["value"].tensor.dtype in (tf.int32.as_datatype_enum,
                                                tf.int64.as_datatype_enum)
    )
    return ops, consts


@pytest.mark.parametrize("name", ["SmoothGrad", "SquareGrad", "VarGrad"])
def test_noisy_kernels_do_not_grow_with_nb_samples(name):
    """The samples are a loop with fixed-size state: the graph for 200 samples is the graph
    for 10 samples, so no tensor holds nb_samples x batch values."""
    model = small_cnn()
    x = tf.zeros((4, 12, 12, 3))
    t = tf.one_hot([0, 1, 2, 3], 4)
    few_ops, _ = graph_signature(FACTORIES[name](model, nb_samples=10, batch_size=4), x, t)
    many_ops, many_consts = graph_signature(FACTORIES[name](model, nb_samples=200, batch_size=4),
                                            x, t)
    assert few_ops == many_ops
    assert "While" in few_ops or "StatelessWhile" in few_ops
    assert not any(200 * 4 in c or 200 in c for c in many_consts if len(c) > 1)


@pytest.mark.parametrize(
    "name", ["SmoothGrad", "VarGrad", "Occlusion", "IntegratedGradients", "SmoothedGradCAM"]
)
def test_loops_run_one_iteration_at_a_time(name):
    """tf.while_loop runs 10 iterations in parallel by default: each would hold a forward
    and backward pass's activations, so memory would grow past the batch_size bound."""
    explainer = FACTORIES[name](small_cnn(), batch_size=4)
    zero = tf.constant(0, tf.int64)
    graph_def = explainer._kernel.get_concrete_function(
        tf.zeros((4, 12, 12, 3)), tf.one_hot([0, 1, 2, 3], 4), zero, zero).graph.as_graph_def()
    loops = [node for node in graph_def.node if node.op in ("While", "StatelessWhile")]
    assert loops
    assert all(node.attr["parallel_iterations"].i == 1 for node in loops)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_kernels_have_no_per_input_python_loop(name):
    """The graph of a batch of 8 has the ops of a batch of 2 (give or take a constant that
    folds differently): nothing is unrolled per input."""
    model = small_cnn()
    small = graph_signature(FACTORIES[name](model, batch_size=2), tf.zeros((2, 12, 12, 3)),
                            tf.one_hot([0, 1], 4))[0]
    large = graph_signature(FACTORIES[name](model, batch_size=8), tf.zeros((8, 12, 12, 3)),
                            tf.one_hot(np.arange(8) % 4, 4))[0]
    difference = (small - large) + (large - small)
    assert sum(difference.values()) <= 4, difference


def test_one_call_runs_one_kernel_call_per_batch(monkeypatch):
    """Batches, not inputs, cross the Python boundary: 37 inputs in batches of 8 are 5
    kernel calls and one concatenation."""
    explainer = FACTORIES["Saliency"](small_cnn(), batch_size=8)
    calls = []
    kernel = explainer._kernel

    def counting(*args):
        calls.append(args[0].shape[0])
        return kernel(*args)

    monkeypatch.setattr(explainer, "_kernel", counting)
    images = np.random.default_rng(0).random((37, 12, 12, 3)).astype("float32")
    maps = explainer.explain(images, np.arange(37) % 4)
    assert calls == [8, 8, 8, 8, 8]
    assert maps.shape == (37, 12, 12, 1)
