"""Speed of saliencekit's metrics, as ratios to their limits measured in the same run.

    python benchmarks/metrics.py [--models cnn mobilenetv2] [--repeats 5] [--peer xplique]

A metric's limit is its number of forward passes on the same batch (compiled model, one
batch of ``n`` inputs per pass): ``steps + 1`` for Deletion and Insertion, ``nb_samples + 1``
for MuFidelity, 2 for the average drop, one per percentage for ROAD (whose linear
imputation is extra work the limit leaves out). AverageStability explains the inputs and
``nb_samples`` neighbours of each: ``nb_samples + 1`` maps per input, each one pass of the
explainer, which for Saliency is one forward+backward pass (the limit); the ratio to the
explainer's own ``explain`` of the batch is printed beside it (``expl.``).

Rounds are interleaved: each round times every reference, metric and peer in turn, after a
warm-up; metrics are built once. A ratio is taken within each round (the metric's time over
its passes times the reference's time in the same round), and the median and the range over
``--repeats`` rounds are printed: on a shared machine the range is the honest figure.
``--peer xplique`` (run with the peer venv, see PEERS.md) times xplique 2.0's metrics on
the same model, inputs and maps, and prints the difference of the scores, with, for the
random metrics, each library's spread over three runs beside it. The maps are Saliency's
(scores that move with them); an untrained model's BatchNormalization statistics are set
from the batch first, so that its scores are not all ~0.
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
    curve_area,
)

STEPS = 10
SAMPLES = 20
STABILITY_SAMPLES = 5
RADIUS = 0.1  # xplique's default
PERCENTAGES = (0.2, 0.5, 0.8)


def input_as_map(x, t):
    """An explainer whose map is its input: the distance between two neighbours' maps is
    the distance between the neighbours, whatever the neighbourhood's centre."""
    return np.asarray(x, np.float32)


def calibrated(model, x):
    """``model`` with its BatchNormalization statistics set to those of ``x`` (one call
    in training mode with momentum 0): an untrained MobileNetV2's logits are ~1e-13
    otherwise, which makes every score 0 and a comparison of scores empty. The graph,
    hence the timing, is unchanged."""
    import keras

    def walk(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
        for child in getattr(layer, "layers", []):
            walk(child)

    walk(model)
    model(x, training=True)
    return model


def cases(model, x, y, n):
    """name -> (metric call, limit in passes, reference); the maps; the seeded metrics."""
    # Saliency's maps: scores that move with the map, so that the peer's agree or not
    maps = Saliency(model, batch_size=n)(x, y).numpy()[..., 0]
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
    saliency = Saliency(model, batch_size=n)
    stability = AverageStability(model, x, y, n, RADIUS, nb_samples=STABILITY_SAMPLES,
                                 seed=0)
    explainer_passes = 1  # Saliency: one forward+backward pass per map
    calls["stability (saliency)"] = (
        lambda: stability.detailed_evaluate(saliency, verbose=0),
        (STABILITY_SAMPLES + 1) * explainer_passes, "fwd+bwd")
    seeded = {
        "mufidelity": lambda seed: MuFidelity(model, x, y, n, nb_samples=SAMPLES, seed=seed)(
            maps),
        "stability (saliency)": lambda seed: AverageStability(
            model, x, y, n, RADIUS, nb_samples=STABILITY_SAMPLES, seed=seed)(saliency),
        "stability (input as map)": lambda seed: AverageStability(
            model, x, y, n, RADIUS, nb_samples=STABILITY_SAMPLES, seed=seed)(input_as_map),
    }
    return calls, maps, saliency, seeded


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
    xs = XStability(model, x, one_hot, n, RADIUS, nb_samples=STABILITY_SAMPLES)
    xsal = XSaliency(model, batch_size=n)
    return {
        "deletion": lambda: xd.evaluate(maps),
        "insertion": lambda: xi.evaluate(maps),
        "mufidelity": lambda: xm.evaluate(maps),
        "average drop": lambda: xa.evaluate(maps),
        "stability (saliency)": lambda: xs.evaluate(xsal),
    }, {"stability (input as map)": lambda: xs.evaluate(input_as_map)}


def timed(call) -> float:
    start = time.perf_counter()
    result = call()
    for leaf in tf.nest.flatten(result):
        np.asarray(leaf)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mobilenetv2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer", choices=["xplique"], default=None)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} cores; steps={STEPS}, "
          f"nb_samples={SAMPLES} (stability {STABILITY_SAMPLES}, radius {RADIUS}), "
          f"ROAD {PERCENTAGES}; {args.repeats} interleaved rounds")
    header = (f"{'model':<12} {'metric':<24} {'passes':>6} {'time s':>7} {'ratio':>5} "
              f"{'(range)':<11} {'best':>4}")
    if args.peer:
        header += (f" {'xplique s':>9} {'speed-up':>8} {'rel. diff':>9} {'own spread':>10} "
                   f"{'xplique spread':>14}")
    print(header)
    for name in args.models:
        model, shape, conv_layer = MODELS[name]()
        n = shape[0]
        rng = np.random.default_rng(0)
        x = rng.random(shape).astype("float32")
        y = rng.integers(0, 10, n)
        model = calibrated(model, x)
        refs = limits(model, x, y, conv_layer)
        calls, maps, saliency, seeded = cases(model, x, y, n)
        peers, agreements = peer_cases(model, x, y, n, maps) if args.peer else ({}, {})
        tensor = tf.constant(x)
        everything = {f"ref {k}": (lambda r=r, v=tensor: r(v)) for k, r in refs.items()}
        everything["ref explainer"] = lambda s=saliency, v=x, t=y: s(v, t)
        everything.update({k: c[0] for k, c in calls.items()})
        everything.update({f"peer {k}": c for k, c in peers.items()})
        for call in everything.values():  # warm-up: traces and first calls
            call()
        times = {k: [] for k in everything}
        for _ in range(args.repeats):  # interleaved rounds
            for key, call in everything.items():
                times[key].append(timed(call))
        for metric, (call, passes, ref) in calls.items():
            ratios = [t / (passes * r) for t, r in zip(times[metric], times[f"ref {ref}"])]
            row = (f"{name:<12} {metric:<24} {passes:>6} "
                   f"{statistics.median(times[metric]):>7.3f} "
                   f"{statistics.median(ratios):>5.2f} "
                   f"{f'({min(ratios):.2f}-{max(ratios):.2f})':<11} "
                   f"{min(times[metric]) / (passes * min(times[f'ref {ref}'])):>4.2f}")
            if ref == "fwd+bwd":
                explained = [t / (passes * r) for t, r in
                             zip(times[metric], times["ref explainer"])]
                row += f" expl. {statistics.median(explained):.2f}"
            if args.peer and metric in peers:
                row += " " + compare(metric, call, peers[metric], seeded.get(metric),
                                     statistics.median(times[metric]),
                                     statistics.median(times["peer " + metric]))
            print(row, flush=True)
        for metric, peer in agreements.items():  # definitions, timed elsewhere
            expected = RADIUS * np.sqrt(np.prod(shape[1:]) / 3)  # E|u| ~ r sqrt(d / 3)
            print(f"{name:<12} {metric:<24} {'':>6} {'':>7} {'':>5} {'':<11} {'':>4} "
                  + compare(metric, None, peer, seeded[metric], None, None)
                  + f" expected {expected:.4g}", flush=True)


def compare(metric, call, peer, seeded, ours_s, theirs_s) -> str:
    """xplique's time and speed-up, the scores' difference relative to the larger and, for
    a random metric, each library's spread over three runs (max - min; saliencekit: seeds
    0, 1, 2; xplique: its global generator's next draws), relative too."""
    theirs_all = [float(peer()) for _ in range(3 if seeded is not None else 1)]
    theirs = theirs_all[0]
    if seeded is not None:
        own = [float(seeded(seed)) for seed in (0, 1, 2)]
        ours = own[0]
    else:
        out = call()
        ours = float(np.mean(curve_area(out))) if metric in ("deletion", "insertion") \
            else float(np.mean(out))
        own = [ours]
    scale = max(abs(ours), abs(theirs), 1e-30)

    def spread(values):
        return f"{(max(values) - min(values)) / scale:.2g}" if len(values) > 1 else "-"

    timing = (f"{theirs_s:>9.3f} {theirs_s / ours_s:>7.1f}x" if ours_s else
              f"{'':>9} {'':>8}")
    return (f"{timing} {abs(ours - theirs) / scale:>9.2g} {spread(own):>10} "
            f"{spread(theirs_all):>14}  ({ours:.4g} vs {theirs:.4g})")


if __name__ == "__main__":
    main()
