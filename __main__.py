"""``python -m saliencekit``: a one-minute tour on a model whose evidence is known.

Builds a small CNN with hand-set weights (class 1 fires on red squares, class 0 on blue
ones), draws random scenes with one red and one blue square, explains both classes with
every explainer and prints how often each map's maximum falls on the right square
(pointing game), with the time each took. No download, no training.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from saliencekit import attributions


def evidence_model(size: int) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="detector")
    pooled = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    head = keras.layers.Dense(2, name="logits")
    model = keras.Model(inputs, head(pooled))
    kernel = np.zeros((3, 3, 3, 2), "float32")
    kernel[:, :, 2, 0] = 1 / 9  # unit 0: blue
    kernel[:, :, 0, 1] = 1 / 9  # unit 1: red
    kernel[:, :, 1, :] = -1 / 9  # green clutter counts against both
    conv.set_weights([kernel, np.array([-0.3, -0.3], "float32")])
    head.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    return model


def scenes(count: int, size: int, rng: np.random.Generator):
    """Cluttered images with one red and one blue square; masks of each square."""
    images = rng.uniform(0, 0.3, (count, size, size, 3)).astype("float32")
    masks = np.zeros((count, 2, size, size), bool)  # [blue (class 0), red (class 1)]
    side = size // 5
    for i in range(count):
        while True:
            corners = rng.integers(0, size - side, (2, 2))
            if np.abs(corners[0] - corners[1]).max() > side:
                break
        for cls, (r, c) in enumerate(corners):
            images[i, r:r + side, c:c + side] = 0.1
            images[i, r:r + side, c:c + side, 2 if cls == 0 else 0] = 1.0
            masks[i, cls, r:r + side, c:c + side] = True
    return images, masks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saliencekit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=32, help="number of scenes (default 32)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    model = evidence_model(args.size)
    images, masks = scenes(args.images, args.size, rng)
    labels = rng.integers(0, 2, args.images)
    evidence = masks[np.arange(args.images), labels]
    print(f"{args.images} scenes of {args.size}x{args.size}: explain the class of one square")
    print(f"{'method':<20} {'pointing game':>14} {'mass in box':>12} {'seconds':>8}")
    explainers = {
        "Saliency": attributions.Saliency(model),
        "SmoothGrad": attributions.SmoothGrad(model, nb_samples=20, noise=0.1, seed=args.seed),
        "SquareGrad": attributions.SquareGrad(model, nb_samples=20, noise=0.1, seed=args.seed),
        "VarGrad": attributions.VarGrad(model, nb_samples=20, noise=0.1, seed=args.seed),
        "GradCAM": attributions.GradCAM(model),
        "GradCAMPP": attributions.GradCAMPP(model),
        "LayerCAM": attributions.LayerCAM(model),
        "FullGrad": attributions.FullGrad(model),
        "Occlusion": attributions.Occlusion(model, patch_size=args.size // 8),
        "GradientInput": attributions.GradientInput(model),
        "IntegratedGradients": attributions.IntegratedGradients(model, steps=32),
    }
    for name, explainer in explainers.items():
        start = time.perf_counter()
        maps = explainer.explain(images, labels).numpy()[..., 0]
        seconds = time.perf_counter() - start
        flat = maps.reshape(len(maps), -1)
        hits = evidence.reshape(len(maps), -1)[np.arange(len(maps)), flat.argmax(1)]
        positive = np.clip(maps, 0, None)
        mass = (positive * evidence).sum((1, 2)) / np.maximum(positive.sum((1, 2)), 1e-12)
        print(f"{name:<20} {hits.mean():>14.0%} {mass.mean():>12.2f} {seconds:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
