"""Speed of saliencekit's metrics, as ratios to their limits measured in the same run.

    python benchmarks/metrics.py [--models cnn mobilenetv2] [--repeats 3] [--peer xplique]

A metric's limit is its number of forward passes on the same batch (compiled model, one
batch of ``n`` inputs per pass): ``steps + 1`` for Deletion and Insertion, ``nb_samples + 1``
for MuFidelity, 2 for the average drop, one per percentage for ROAD (whose linear
imputation is extra work the limit leaves out), ``nb_samples + 1`` forward+backward passes
for AverageStability of Saliency. Each time is the median over ``--repeats`` rounds that
time every reference, metric and peer in turn, after a warm-up; metrics are built once.
``--peer xplique`` (run with the peer venv, see PEERS.md) times xplique 2.0's metrics on
the same model, inputs and maps, and prints the largest difference of their scores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import tensorflow as tf
from run import MODELS, limits

from saliencekit.attributions import Saliency
from saliencekit.metrics import (
    ROAD,
    AverageDropMetric,
    AverageStability,
    Deletion,
    Insertion,
    MuFidelity,
)

STEPS = 10
SAMPLES = 20
STABILITY_SAMPLES = 5
PERCENTAGES = (0.2, 0.5, 0.8)


def cases(model, x, y, n):
    """name -> (metric call, limit in passes, reference, peer call or None)."""
    shape = x.shape
    maps = np.abs(np.random.default_rng(1).normal(size=shape[:-1])).astype("float32")
    kw = {"batch_size": n}
    out = {
        "deletion": (Deletion(model, x, y, n, steps=STEPS), STEPS + 1, "fwd"),
        "insertion": (Insertion(model, x, y, n, steps=STEPS), STEPS + 1, "fwd"),
        "mufidelity": (MuFidelity(model, x, y, n, nb_samples=SAMPLES, seed=0), SAMPLES + 1,
                       "fwd"),
        "average drop": (AverageDropMetric(model, x, y, n, activation="softmax"), 2, "fwd"),
        "road": (ROAD(model, x, y, n, percentages=PERCENTAGES, seed=0), len(PERCENTAGES),
                 "fwd"),
    }
    calls = {name: (lambda m=metric: m.detailed_evaluate(maps, verbose=0), passes, ref)
             for name, (metric, passes, ref) in out.items()}
    saliency = Saliency(model, **kw)
    stability = AverageStability(model, x, y, n, 0.05, nb_samples=STABILITY_SAMPLES, seed=0)
    calls["stability (saliency)"] = (
        lambda: stability.detailed_evaluate(saliency, verbose=0), STABILITY_SAMPLES + 1,
        "fwd+bwd")
    return calls, maps


def peer_cases(model, x, y, n, maps):
    from xplique.attributions import Saliency as XSaliency
    from xplique.metrics import AverageDropMetric as XDrop
    from xplique.metrics import AverageStability as XStability
    from xplique.metrics import Deletion as XDeletion
    from xplique.metrics import Insertion as XInsertion
    from xplique.metrics import MuFidelity as XMu

    one_hot = tf.one_hot(y, model.output_shape[-1]).numpy()
    xd = XDeletion(model, x, one_hot, n, steps=STEPS)
    xi = XInsertion(model, x, one_hot, n, steps=STEPS)
    xm = XMu(model, x, one_hot, n, nb_samples=SAMPLES)
    xa = XDrop(model, x, one_hot, n, activation="softmax")
    xs = XStability(model, x, one_hot, n, nb_samples=STABILITY_SAMPLES)
    xsal = XSaliency(model, batch_size=n)
    return {
        "deletion": lambda: xd.evaluate(maps),
        "insertion": lambda: xi.evaluate(maps),
        "mufidelity": lambda: xm.evaluate(maps),
        "average drop": lambda: xa.evaluate(maps),
        "stability (saliency)": lambda: xs.evaluate(xsal),
    }


def timed(call) -> float:
    start = time.perf_counter()
    result = call()
    for leaf in tf.nest.flatten(result):
        np.asarray(leaf)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mobilenetv2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer", choices=["xplique"], default=None)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} cores; steps={STEPS}, "
          f"nb_samples={SAMPLES} (stability {STABILITY_SAMPLES}), ROAD {PERCENTAGES}")
    header = f"{'model':<12} {'metric':<22} {'passes':>6} {'time s':>8} {'ratio':>6}"
    if args.peer:
        header += f" {'xplique s':>10} {'speed-up':>9} {'|diff|':>8}"
    print(header)
    for name in args.models:
        model, shape, conv_layer = MODELS[name]()
        n = shape[0]
        rng = np.random.default_rng(0)
        x = rng.random(shape).astype("float32")
        y = rng.integers(0, 10, n)
        refs = limits(model, x, y, conv_layer)
        calls, maps = cases(model, x, y, n)
        peers = peer_cases(model, x, y, n, maps) if args.peer else {}
        tensor = tf.constant(x)
        everything = {f"ref {k}": (lambda r=r, v=tensor: r(v)) for k, r in refs.items()}
        everything.update({k: c[0] for k, c in calls.items()})
        everything.update({f"peer {k}": c for k, c in peers.items()})
        for call in everything.values():  # warm-up: traces and first calls
            call()
        times = {k: [] for k in everything}
        for _ in range(args.repeats):  # interleaved rounds
            for key, call in everything.items():
                times[key].append(timed(call))
        median = {k: statistics.median(v) for k, v in times.items()}
        for metric, (call, passes, ref) in calls.items():
            limit = passes * median[f"ref {ref}"]
            row = (f"{name:<12} {metric:<22} {passes:>6} {median[metric]:>8.3f} "
                   f"{median[metric] / limit:>6.2f}")
            if args.peer and metric in peers:
                ours = call()
                ours = float(np.mean((ours[:, 1:] + ours[:, :-1]) / 2)) if metric in (
                    "deletion", "insertion") else float(np.mean(ours))
                theirs = float(peers[metric]())
                row += (f" {median['peer ' + metric]:>10.3f} "
                        f"{median['peer ' + metric] / median[metric]:>8.1f}x "
                        f"{abs(ours - theirs):>8.2g}")
            print(row, flush=True)


if __name__ == "__main__":
    main()
