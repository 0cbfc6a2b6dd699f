"""``python -m saliencekit``: the demo and the command-line explainer.

``python -m saliencekit demo``
    Trains a small CNN on synthetic shapes whose evidence is known pixel by pixel
    (:mod:`saliencekit.commons.synthetic`), explains held-out images with every explainer,
    writes a PNG grid and prints, per method, how often the map's maximum falls inside the
    evidence (pointing game), the share of relevance inside it, and the time taken.

``python -m saliencekit explain --model M.keras --images DIR_OR_FILES --method NAME``
    Explains your images with your saved model: one overlay PNG per image and the raw maps
    in ``maps.npy`` (with ``files.txt`` naming the image of each row).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

#: bump when the demo's data or model recipe changes, so cached models are not reused
DEMO_RECIPE = 1
DEMO_SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class UsageError(Exception):
    """A problem with the command line: reported as ``error: ...`` with exit status 2."""


# -- methods ----------------------------------------------------------------------------------
def method_factories(conv_layer: str | None = None, fast: bool = False) -> dict:
    """name -> ``callable(model, **kwargs)``: every explainer the package has."""
    from saliencekit import attributions as a

    samples = 10 if fast else 25
    cam = {"conv_layer": conv_layer}
    return {
        "Saliency": lambda m, **k: a.Saliency(m, **k),
        "SmoothGrad": lambda m, **k: a.SmoothGrad(m, nb_samples=samples, seed=0, **k),
        "SquareGrad": lambda m, **k: a.SquareGrad(m, nb_samples=samples, seed=0, **k),
        "VarGrad": lambda m, **k: a.VarGrad(m, nb_samples=samples, seed=0, **k),
        "GradientInput": lambda m, **k: a.GradientInput(m, **k),
        "IntegratedGradients": lambda m, **k: a.IntegratedGradients(m, steps=samples, **k),
        "GuidedBackprop": lambda m, **k: a.GuidedBackprop(m, **k),
        "DeconvNet": lambda m, **k: a.DeconvNet(m, **k),
        "GradCAM": lambda m, **k: a.GradCAM(m, **cam, **k),
        "GradCAMPP": lambda m, **k: a.GradCAMPP(m, **cam, **k),
        "LayerCAM": lambda m, **k: a.LayerCAM(m, **cam, **k),
        "ScoreCAM": lambda m, **k: a.ScoreCAM(m, **cam, **k),
        "FullGrad": lambda m, **k: a.FullGrad(m, **k),
        "Occlusion": lambda m, **k: a.Occlusion(m, patch_size=8, patch_stride=4, **k),
        "Smoothed(GradCAM)": lambda m, **k: a.Smoothed(
            a.GradCAM(m, **cam, **k), nb_samples=samples // 2, seed=0),
        "TTA(GradCAM)": lambda m, **k: a.TTA(a.GradCAM(m, **cam, **k), scales=(0.75, 1.5)),
    }


def method_by_name(name: str):
    """Case- and punctuation-insensitive lookup: ``gradcam``, ``GradCAM``, ``grad-cam``."""
    factories = method_factories()
    key = "".join(c for c in name.lower() if c.isalnum())
    for known, factory in factories.items():
        if "".join(c for c in known.lower() if c.isalnum()) == key:
            return known, factory
    raise UsageError(
        f"--method: expected one of {', '.join(factories)}, got {name!r}."
    )


# -- the demo ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$SALIENCEKIT_CACHE``, else ``$XDG_CACHE_HOME/saliencekit``, else ``~/.cache/...``."""
    if os.environ.get("SALIENCEKIT_CACHE"):
        return Path(os.environ["SALIENCEKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "saliencekit"


def demo_model(seed: int):
    """The demo's CNN: any input size (so TTA can rescale), logits out."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((None, None, 3)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="last_conv"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(4, name="logits"),
    ], name="shapes_cnn")


def train_demo_model(seed: int, train: int, epochs: int, verbose: int):
    import keras

    from saliencekit.commons import synthetic

    data = synthetic.shapes(train, size=DEMO_SIZE, seed=seed + 1)
    model = demo_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data.images, data.labels, batch_size=32, epochs=epochs, verbose=verbose,
              shuffle=True)
    return model


def run_demo(args) -> int:
    from saliencekit.commons import plot

    plot.require_matplotlib()  # before any heavy work
    import keras

    from saliencekit.commons import metrics, synthetic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = cache_dir() / f"demo-r{DEMO_RECIPE}-s{args.seed}-n{args.train}-e{args.epochs}.keras"
    start = time.perf_counter()
    if path.exists() and not args.retrain:
        model = keras.models.load_model(path)
        print(f"Loaded the trained demo model from {path} (--retrain to train it again).")
    else:
        print(f"Training a small CNN on {args.train} synthetic {DEMO_SIZE}x{DEMO_SIZE} images "
              f"of 4 shapes on cluttered backgrounds ({args.epochs} epochs)...")
        # a bar on a terminal, one line per epoch in a log
        fit_verbose = 0 if args.verbose == 0 else args.verbose if sys.stdout.isatty() else 2
        model = train_demo_model(args.seed, args.train, args.epochs, verbose=fit_verbose)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        print(f"Trained in {time.perf_counter() - start:.0f} s; cached at {path}.")
    held_out = synthetic.shapes(max(args.samples, 500), size=DEMO_SIZE, seed=args.seed + 10_000)
    logits = model.predict(held_out.images, batch_size=250, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == held_out.labels))
    print(f"Held-out accuracy: {accuracy:.1%} on {len(held_out.labels)} images "
          f"(chance: 25%).")

    images = held_out.images[:args.samples]
    labels = held_out.labels[:args.samples]
    masks = held_out.masks[:args.samples]
    factories = method_factories("last_conv", fast=args.fast)
    print(f"Explaining {len(images)} held-out images (their true class) with "
          f"{len(factories)} explainers:")
    progress = keras.utils.Progbar(len(factories), verbose=args.verbose,
                                   stateful_metrics=["method"])
    results, rows = {}, []
    for step, (name, factory) in enumerate(factories.items(), 1):
        begin = time.perf_counter()
        maps = factory(model).explain(images, labels, verbose=0).numpy()
        seconds = time.perf_counter() - begin
        results[name] = maps
        rows.append((name, metrics.pointing_game(maps, masks).mean(),
                     np.nanmean(metrics.relevance_mass(maps, masks)), seconds))
        progress.update(step)

    shown = min(len(images), args.rows)
    figure_path = out / "demo.png"
    plot.plot_attributions(
        images[:shown], {name: maps[:shown] for name, maps in results.items()},
        row_titles=[synthetic.CLASS_NAMES[label] for label in labels[:shown]],
        path=figure_path,
    )
    area = masks.mean()
    print()
    print(f"{'method':<22}{'pointing game':>14}{'mass in mask':>14}{'seconds':>9}")
    for name, hit, mass, seconds in rows:
        print(f"{name:<22}{hit:>14.0%}{mass:>14.2f}{seconds:>9.2f}")
    print(f"{'(a random map)':<22}{area:>14.0%}{area:>14.2f}")
    print()
    print("pointing game: the map's maximum is inside the shape; mass in mask: the share of")
    print("positive relevance on the shape's pixels. Seconds include compiling each kernel.")
    print(f"Wrote {figure_path} ({shown} rows: the image, then each method's map).")
    return 0


# -- explain your own model -------------------------------------------------------------------
def image_files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"--images: expected png or jpg files in {path}, got none.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"--images: expected an image file or a directory, got {source!r}"
                             " (no such file).")
    for path in files:  # cheap checks first: the magic bytes of PNG and JPEG
        with open(path, "rb") as stream:
            head = stream.read(8)
        if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
            raise UsageError(f"--images: expected png or jpg images, got {str(path)!r}, which "
                             "is neither.")
    return files


PIXEL_RANGES = {"0,1": (0.0, 1.0), "0,255": (0.0, 255.0), "-1,1": (-1.0, 1.0)}


def read_images(files: list[Path], size: tuple, channels: int, pixel_range: tuple):
    """Decode, resize to ``size`` and scale to ``pixel_range``: ``(N, H, W, C)`` float32."""
    import tensorflow as tf

    low, high = pixel_range
    images = np.empty((len(files), *size, channels), np.float32)
    for i, path in enumerate(files):
        try:
            image = tf.io.decode_image(tf.io.read_file(str(path)), channels=channels,
                                       expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise UsageError(f"--images: expected a readable png or jpg image, got "
                             f"{str(path)!r}, which cannot be decoded.") from None
        image = tf.image.resize(tf.cast(image, tf.float32), size)
        images[i] = low + (high - low) * image.numpy() / 255.0
    return images


def run_explain(args) -> int:
    import keras
    import tensorflow as tf

    from saliencekit.commons import plot, postprocess
    from saliencekit.commons.model import sample_input_shape

    name, factory = method_by_name(args.method)  # cheap checks before loading anything
    files = image_files(args.images)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise UsageError(f"--model: expected a saved Keras model (.keras), got "
                         f"{args.model!r} (no such file).")
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as error:  # Keras raises many kinds for unreadable files
        raise UsageError(f"--model: expected a saved Keras model (.keras), got "
                         f"{args.model!r}, which Keras cannot load ({error}).") from None
    shape = sample_input_shape(model)
    if shape is None or len(shape) != 3:
        raise UsageError(f"--model: expected a model of images, inputs (N, H, W, C), got "
                         f"a model with inputs {None if shape is None else (None, *shape)}.")
    channels = shape[2] or 3
    size = tuple(shape[:2])
    if None in size:  # any size: use the first image's
        first = tf.io.decode_image(tf.io.read_file(str(files[0])), expand_animations=False)
        size = tuple(first.shape[:2])
    images = read_images(files, size, channels, PIXEL_RANGES[args.pixel_range])
    kwargs = {"operator": args.operator, "batch_size": args.batch_size}
    explainer = factory(model, **kwargs)
    targets = None
    if args.labels != "predicted":
        try:
            label = int(args.labels)
        except ValueError:
            raise UsageError(f"--labels: expected 'predicted' or a class id, got "
                             f"{args.labels!r}.") from None
        targets = np.full(len(files), label)
    try:
        maps = explainer.explain(images, targets, verbose=args.verbose).numpy()
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "maps.npy", maps)
    (out / "files.txt").write_text("".join(f"{path}\n" for path in files))
    display = (images - images.min()) / max(float(np.ptp(images)), 1e-12)
    shown = postprocess.normalize(maps).numpy()
    for path, image, heat in zip(files, display, shown):
        overlay = plot.overlay(image, heat)
        tf.io.write_file(str(out / f"{path.stem}_{name}.png"), tf.io.encode_png(overlay))
    print(f"{name}: explained {len(files)} images; wrote {out / 'maps.npy'} "
          f"{maps.shape} and {len(files)} overlays to {out}.")
    return 0


# -- the command line -------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    from saliencekit.operators import OPERATORS

    main = argparse.ArgumentParser(prog="python -m saliencekit", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True, metavar="{demo,explain}")

    demo = commands.add_parser("demo", help="train a small CNN on synthetic shapes and "
                               "explain it with every method")
    demo.add_argument("--out", default="saliencekit-demo", help="output directory")
    demo.add_argument("--seed", type=int, default=0, help="data and training seed")
    demo.add_argument("--samples", type=_positive, default=64,
                      help="held-out images explained and scored (default 64)")
    demo.add_argument("--rows", type=_positive, default=6, help="images shown in the PNG")
    demo.add_argument("--train", type=_positive, default=3000, help="training images")
    demo.add_argument("--epochs", type=_positive, default=5)
    demo.add_argument("--retrain", action="store_true", help="ignore the cached model")
    demo.add_argument("--fast", action="store_true", help="fewer samples per noisy method")
    demo.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    demo.set_defaults(run=run_demo)

    explain = commands.add_parser("explain", help="explain your images with your saved model")
    explain.add_argument("--model", required=True, help="a saved Keras model (.keras)")
    explain.add_argument("--images", required=True, nargs="+",
                         help="png/jpg files or directories of them")
    explain.add_argument("--method", required=True, help=", ".join(method_factories()))
    explain.add_argument("--operator", default="classification", choices=sorted(OPERATORS))
    explain.add_argument("--labels", default="predicted",
                         help="'predicted' (default) or one class id for every image")
    explain.add_argument("--pixel-range", default="0,1", choices=sorted(PIXEL_RANGES),
                         help="the range the model expects pixels in (default 0,1)")
    explain.add_argument("--batch-size", type=_positive, default=32)
    explain.add_argument("--out", default="saliencekit-maps", help="output directory")
    explain.add_argument("--verbose", type=int, choices=(0, 1), default=1)
    explain.set_defaults(run=run_explain)
    return main


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ImportError) as error:
        print(f"{cli.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
