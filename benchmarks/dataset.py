"""Explaining a whole dataset, streamed to disk: throughput and peak memory, 1 and 2 devices.

    python benchmarks/dataset.py [--count 20000] [--compare 5000] [--batch-size 64]
                                 [--methods saliency gradcam] [--devices 1 2]

A synthetic dataset of ``--count`` 64x64 RGB images, generated inside tf.data from a range
with stateless random ops (never held in memory), is explained by a small CNN's Saliency
and GradCAM with ``explain_to`` into a temporary directory. Each configuration (method,
devices, count) runs in a fresh process, so that its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own and 2 logical CPU devices can be
configured before TensorFlow starts; 2 devices run under ``tf.distribute.MirroredStrategy``.
``--compare`` repeats every configuration with fewer images: streamed, peak memory does not
depend on the count. images/s is end to end: the count over the wall time of
``explain_to``, first-batch tracing and writing included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE = (64, 64, 3)
CLASSES = 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def case(method: str, devices: int, count: int, batch_size: int) -> dict:
    """One configuration, in this (fresh) process."""
    import tensorflow as tf

    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import keras

    from saliencekit.attributions import GradCAM, Saliency

    keras.utils.set_random_seed(0)
    inputs = keras.Input(SIZE)
    x = inputs
    for filters in (32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))

    def image(i):
        return (tf.random.stateless_uniform(SIZE, tf.stack([i, tf.constant(7, tf.int64)])),
                i % CLASSES)

    dataset = tf.data.Dataset.range(count).map(image, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size)
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{d}" for d in range(devices)])
                if devices > 1 else None)
    cls = {"saliency": Saliency, "gradcam": GradCAM}[method]
    explainer = cls(model, batch_size=batch_size, strategy=strategy)
    base = rss_bytes()
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        store = explainer.explain_to(directory, dataset, verbose=0)
        seconds = time.perf_counter() - start
        written = len(store)
        shards = len(store.shards)
        shard_mb = os.path.getsize(store.shards[0][0]) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "devices": devices, "count": count, "written": written,
            "seconds": seconds, "images/s": count / seconds, "peak MB": peak / 2**20,
            "growth MB": (peak - base) / 2**20, "shards": shards, "shard MB": shard_mb}


HEADER = ["method", "devices", "inputs", "seconds", "images/s", "peak RSS MB",
          "peak - RSS before explain_to MB", "shards (MB each)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--compare", type=int, default=5_000,
                        help="also run with this many images (0: no comparison)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["saliency", "gradcam"],
                        choices=["saliency", "gradcam"])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "DEVICES", "COUNT"),
                        help=argparse.SUPPRESS)  # one configuration, in a child process
    args = parser.parse_args()
    if args.case:
        method, devices, count = args.case
        print(json.dumps(case(method, int(devices), int(count), args.batch_size)))
        return
    import keras
    import tensorflow as tf

    print(f"# saliencekit dataset benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow "
          f"{tf.__version__}, Keras {keras.__version__}; batch_size {args.batch_size}, "
          f"64x64x3 images, small CNN (3 conv layers)\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER), flush=True)
    counts = [c for c in (args.compare, args.count) if c]
    for method in args.methods:
        for devices in args.devices:
            for count in counts:
                child = subprocess.run(
                    [sys.executable, __file__, "--batch-size", str(args.batch_size),
                     "--case", method, str(devices), str(count)],
                    capture_output=True, text=True, check=False)
                if child.returncode:
                    print(child.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{method} on {devices} devices failed")
                row = json.loads(child.stdout.strip().splitlines()[-1])
                if row["written"] != count:
                    raise SystemExit(f"{row['written']} maps written for {count} inputs")
                print(f"| {method} | {devices} | {count} | {row['seconds']:.1f} | "
                      f"{row['images/s']:.0f} | {row['peak MB']:.0f} | {row['growth MB']:.0f} | "
                      f"{row['shards']} ({row['shard MB']:.0f}) |", flush=True)


if __name__ == "__main__":
    main()
