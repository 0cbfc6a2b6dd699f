"""Explainers under tf.distribute: the maps are the single-device maps.

Several devices must be configured before TensorFlow initialises them, which this pytest
session has already done: the checks with two replicas run in fresh processes
(``distributed_check.py``), with ``MirroredStrategy`` over two logical CPUs and with
``MultiWorkerMirroredStrategy`` over two local worker processes (``TF_CONFIG``).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import EXPLAINERS, explainer_factories, small_cnn
from saliencekit.attributions import Saliency, SmoothGrad

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_check.py")
IMAGES = np.random.default_rng(0).random((13, 12, 12, 3)).astype("float32")
LABELS = np.arange(13) % 4


def run_check(mode, directory, env=None):
    return subprocess.Popen([sys.executable, CHECK, mode, str(directory)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def report_of(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def assert_single_device_maps(report, names):
    assert sorted(report["differences"]) == sorted(names)
    for name, case in report["differences"].items():
        for where in ("arrays", "dataset", "few"):
            assert case[where] <= 1e-6 * case["scale"], (name, where, case)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    return report_of(run_check("mirrored", tmp_path_factory.mktemp("mirrored")))


def test_mirrored_strategy_over_two_cpus_gives_the_single_device_maps(mirrored):
    assert mirrored["replicas"] == 2
    assert_single_device_maps(
        mirrored, ["Saliency", "SmoothGrad", "VarGrad", "GradCAM", "FullGrad", "Occlusion"])


def test_each_replica_runs_its_half_of_the_batch_on_its_device(mirrored):
    assert mirrored["kernel_devices"] == [
        "/job:localhost/replica:0/task:0/device:CPU:0",
        "/job:localhost/replica:0/task:0/device:CPU:1"]
    assert mirrored["traces"] == 1  # arrays and a Dataset, padded batches: one trace


def test_explain_to_under_a_strategy_writes_the_single_device_maps(mirrored):
    assert mirrored["chief"] is True
    assert mirrored["explain_to"] <= 1e-8
    assert mirrored["unseeded"] <= 1e-8
    assert mirrored["index"] == list(range(13))


def test_a_batch_size_the_replicas_do_not_divide_is_refused(mirrored):
    assert mirrored["odd_batch_size"] == (
        "batch_size: expected a multiple of the 2 replicas of strategy MirroredStrategy (each "
        "replica explains batch_size / 2 inputs), got 3.")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multi_worker_strategy_over_two_local_workers(tmp_path):
    """Two processes on this machine, one CPU each, talking over gRPC as machines would."""
    workers = [f"localhost:{free_port()}" for _ in range(2)]
    processes = [
        run_check("worker", tmp_path, {"TF_CONFIG": json.dumps({
            "cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    chief, other = (report_of(p) for p in processes)
    for report in (chief, other):
        assert report["replicas"] == 2
        assert_single_device_maps(report, ["Saliency", "SmoothGrad", "GradCAM"])
    assert chief["kernel_devices"] == ["/job:worker/replica:0/task:0/device:CPU:0"]
    assert other["kernel_devices"] == ["/job:worker/replica:0/task:1/device:CPU:0"]
    assert chief["chief"] is True and other["chief"] is False  # only the chief writes
    assert chief["explain_to"] <= 1e-8 and chief["index"] == list(range(13))
    # seed=None: the workers drew seeds 100 and 101 and used the chief's, 100
    assert chief["unseeded"] <= 1e-8 and other["unseeded"] <= 1e-8


# -- in this process: one replica, and the checks -------------------------------------------
def test_one_device_strategy_gives_the_same_maps():
    model = small_cnn()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    explainer = SmoothGrad(model, nb_samples=3, seed=1, batch_size=4, strategy=strategy)
    reference = SmoothGrad(model, nb_samples=3, seed=1, batch_size=4)(IMAGES, LABELS).numpy()
    np.testing.assert_allclose(explainer(IMAGES, LABELS).numpy(), reference, rtol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(5)
    np.testing.assert_allclose(explainer(dataset).numpy(), reference, rtol=1e-6)
    assert explainer.strategy is strategy
    assert explainer._kernel in explainer._distributed  # the strategy.run path ran


def test_the_strategy_is_checked_and_not_part_of_the_settings():
    model = small_cnn()
    with pytest.raises(TypeError, match=r"strategy: expected None or a tf.distribute.Strategy"
                                        r".*, got str."):
        Saliency(model, strategy="mirrored")
    plain = Saliency(model)
    distributed = Saliency(model, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert repr(distributed) == repr(plain)  # a directory resumes under another strategy
    assert plain.strategy is None


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_takes_a_strategy(name):
    model = small_cnn()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    build = explainer_factories()[name]
    explainer = build(model, batch_size=4, strategy=strategy)
    assert explainer.strategy is strategy
    np.testing.assert_allclose(explainer(IMAGES[:5], LABELS[:5]).numpy(),
                               build(model, batch_size=4)(IMAGES[:5], LABELS[:5]).numpy(),
                               rtol=1e-5, atol=1e-7)
