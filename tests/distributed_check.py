"""Explainers under tf.distribute, run in a fresh process (devices are configured before
TensorFlow initialises them, which a pytest session has already done). Prints one JSON line.

    python tests/distributed_check.py mirrored DIR    # MirroredStrategy, 2 logical CPUs
    python tests/distributed_check.py worker DIR      # one worker of a MultiWorkerMirrored
                                                      # cluster described by TF_CONFIG

Every case compares maps computed with the strategy to the same explainer's maps without
one. Models are built before the strategy exists, outside its scope.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

MODE, DIRECTORY = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:  # a multi-worker strategy is created first, before any other TensorFlow op
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import small_cnn  # noqa: E402
from saliencekit.attributions import (  # noqa: E402
    FullGrad,
    GradCAM,
    Occlusion,
    Saliency,
    SmoothGrad,
    VarGrad,
)


def main():
    model = small_cnn()
    rng = np.random.default_rng(0)
    images = rng.random((13, 12, 12, 3)).astype("float32")  # 3 batches of 4 and one of 1
    labels = np.arange(13) % 4
    builders = {
        "Saliency": lambda **kw: Saliency(model, batch_size=4, **kw),
        "SmoothGrad": lambda **kw: SmoothGrad(model, nb_samples=5, seed=3, batch_size=4, **kw),
        "VarGrad": lambda **kw: VarGrad(model, nb_samples=4, seed=1, batch_size=4, **kw),
        "GradCAM": lambda **kw: GradCAM(model, batch_size=4, **kw),
        "FullGrad": lambda **kw: FullGrad(model, batch_size=4, **kw),
        "Occlusion": lambda **kw: Occlusion(model, patch_size=4, patch_stride=3, batch_size=4,
                                            **kw),
    }
    if MODE == "worker":  # slower to start: the cases that matter most
        builders = {k: builders[k] for k in ("Saliency", "SmoothGrad", "GradCAM")}
    report = {"replicas": STRATEGY.num_replicas_in_sync, "differences": {}}
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    for name, build in builders.items():
        single = build().explain(images, labels).numpy()
        explainer = build(strategy=STRATEGY)
        on_arrays = explainer.explain(images, labels, verbose=0).numpy()
        on_dataset = explainer.explain(dataset, verbose=0).numpy()
        few = explainer.explain(images[:3], labels[:3], verbose=0).numpy()  # < batch_size
        report["differences"][name] = {
            "arrays": float(np.abs(on_arrays - single).max()),
            "dataset": float(np.abs(on_dataset - single).max()),
            "few": float(np.abs(few - single[:3]).max()),
            "scale": float(np.abs(single).max()),
        }
    saliency = builders["Saliency"](strategy=STRATEGY)
    saliency.explain(images, labels, verbose=0)
    saliency.explain(dataset, verbose=0)
    wrapper = saliency._distributed[saliency._kernel]
    report["traces"] = wrapper.experimental_get_tracing_count()
    graph = wrapper.get_concrete_function(
        tf.zeros((4, 12, 12, 3)), tf.zeros((4, 4)), tf.constant(0, tf.int64),
        tf.constant(0, tf.int64)).graph.as_graph_def()
    report["kernel_devices"] = sorted(  # where each replica's kernel call is placed
        node.device for node in graph.node if node.op.endswith("PartitionedCall"))
    smooth = builders["SmoothGrad"](strategy=STRATEGY)
    store = smooth.explain_to(os.path.join(DIRECTORY, "maps"), dataset, verbose=0,
                              shard_size=8)
    reference = builders["SmoothGrad"]().explain(images, labels).numpy()
    report["chief"] = store is not None
    if store is not None:
        report["explain_to"] = float(np.abs(store.load() - reference).max())
        report["index"] = store.index().tolist()
    # seed=None: each worker draws its own seed; all must use one (the chief's)
    unseeded = SmoothGrad(model, nb_samples=5, seed=None, batch_size=4, strategy=STRATEGY)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    unseeded._draw_seed = lambda: 100 + task
    maps = unseeded.explain(images, labels, verbose=0).numpy()
    seeded = SmoothGrad(model, nb_samples=5, seed=100, batch_size=4)(images, labels).numpy()
    report["unseeded"] = float(np.abs(maps - seeded).max())
    if MODE == "mirrored":
        try:
            Saliency(model, batch_size=3, strategy=STRATEGY)
        except ValueError as error:
            report["odd_batch_size"] = str(error)
        devices = STRATEGY.experimental_local_results(
            STRATEGY.run(lambda: tf.identity(tf.constant(0.0))))
        report["devices"] = [d.device for d in devices]
    print(json.dumps(report))


main()
