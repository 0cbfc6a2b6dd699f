"""The command line on folders of photos: peak memory against the folder's size, and its
throughput against ``explain_to`` on the same images already in memory.

    python benchmarks/cli.py [--small 1000] [--large 10000] [--method gradcam]
                             [--batch-size 32] [--model-size 128] [--alpha 1.0] [--keep DIR]

Writes ``--large`` JPEG photos of varied sizes and aspect ratios (smooth synthetic scenes,
from 96x128 to 160x120 pixels) and a keras.applications MobileNetV2 (random weights, 10
classes, ``--model-size`` pixels square, ``--alpha`` wide) saved as ``.keras``, then runs,
each in a fresh process:

- ``python -m saliencekit explain``, with and without ``--no-overlays``, on the first
  ``--small`` photos and on all ``--large`` of them (``--preprocess tf --output-layer
  logits``): peak resident memory of the process (``wait4``'s ``ru_maxrss``) and images/s
  as the command prints it (the run's time: predicting the classes, explaining, writing
  maps and overlays, tracing included; TensorFlow's start and the model's loading
  excluded);
- right after each, ``explain_to`` of the same explainer on the same photos, decoded and
  resized by the command line's own function into one array beforehand: images/s over the
  ``explain_to`` call (tracing included; targets ``None``, the predicted class, as the
  command line's).

The command line does more than ``explain_to`` here: it reads and decodes every photo
three times (to predict its class, to explain it, to draw its overlay), and draws and
encodes one PNG overlay per photo at the photo's size. ``--no-overlays`` runs show the cost
of streaming alone; the others, with the overlays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZES = [(96, 128), (120, 160), (128, 128), (160, 120), (100, 150)]


def write_photos(folder: Path, count: int) -> None:
    """``count`` JPEGs: smooth colour gradients with a few discs, of varied sizes."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = SIZES[i % len(SIZES)]
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        image = np.stack([x, y, 1 - x], -1) * rng.uniform(80, 200, 3)
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1, 3) * [height, width, 0.3 * min(height, width)]
            image[(np.mgrid[0:height, 0:width][0] - cy) ** 2
                  + (np.mgrid[0:height, 0:width][1] - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        data = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90)
        tf.io.write_file(str(folder / f"photo{i:05d}.jpg"), data)


def write_model(path: Path, size: int, alpha: float) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                           weights=None, classes=10)
    model.save(path)


def run_cli(model: Path, folder: Path, out: Path, method: str, batch_size: int,
            overlays: bool = True) -> dict:
    """The command line in a fresh process: its peak RSS and the rate it prints."""
    argv = [sys.executable, "-m", "saliencekit", "explain", "--model", str(model),
            "--images", str(folder), "--method", method, "--preprocess", "tf",
            "--output-layer", "logits", "--batch-size", str(batch_size), "--out", str(out),
            "--quiet", *([] if overlays else ["--no-overlays"])]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if process.returncode != 0:
        raise SystemExit(f"the command line failed:\n{text}")
    match = re.search(r"explained (\d+) images in ([\d.]+) s \(([\d.]+) images/s\)", text)
    return {"images": int(match.group(1)), "seconds": float(match.group(2)),
            "images_per_s": float(match.group(3)), "wall_s": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def in_memory(model_path: str, folder: str, count: int, method: str, batch_size: int,
              size: int) -> dict:
    """``explain_to`` on the photos already in memory (in this fresh process)."""
    import keras
    import numpy as np

    from saliencekit.__main__ import (
        assign_options,
        build_explainer,
        image_files,
        load_image,
        pixel_transform,
        resolve_method,
    )

    files = [path for path, _ in image_files([folder])][:count]
    transform = pixel_transform(None, "tf")
    images = np.stack([load_image(str(f), (size, size), 3, transform).numpy() for f in files])
    model = keras.models.load_model(model_path, compile=False)
    chain = resolve_method(method)
    explainer = build_explainer(chain, assign_options(chain, {"output_layer": "logits"}),
                                model, batch_size=batch_size, operator="classification")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        explainer.explain_to(Path(out) / "maps", images, verbose=0)
        seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2's width")
    parser.add_argument("--keep", help="a directory for the photos and outputs (kept)")
    parser.add_argument("--in-memory", nargs=5, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.in_memory:
        model, folder, count, method, size = args.in_memory
        print(json.dumps(in_memory(model, folder, int(count), method, args.batch_size,
                                   int(size))))
        return

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        photos, small = root / "photos", root / "photos-small"
        model = root / "mobilenetv2.keras"
        begin = time.perf_counter()
        if len(list(photos.glob("*.jpg"))) != args.large:
            write_photos(photos, args.large)
        small.mkdir(parents=True, exist_ok=True)
        for path in sorted(photos.glob("*.jpg"))[:args.small]:
            if not (small / path.name).exists():
                os.symlink(path, small / path.name)
        write_model(model, args.model_size, args.alpha)
        print(f"{args.large} photos and the model written in "
              f"{time.perf_counter() - begin:.0f} s.", flush=True)

        for out in root.glob("out-*"):
            import shutil

            shutil.rmtree(out)
        def in_memory_run(folder: Path, count: int) -> dict:
            child = subprocess.run(
                [sys.executable, __file__, "--batch-size", str(args.batch_size),
                 "--in-memory", str(model), str(folder), str(count), args.method,
                 str(args.model_size)], capture_output=True, text=True, check=True)
            return json.loads(child.stdout.strip().splitlines()[-1])

        # each command-line run right beside its in-memory twin: the machine's load drifts
        few = run_cli(model, small, root / "out-small", args.method, args.batch_size)
        few_bare = run_cli(model, small, root / "out-small-bare", args.method,
                           args.batch_size, overlays=False)
        few_memory = in_memory_run(small, args.small)
        many = run_cli(model, photos, root / "out-large", args.method, args.batch_size)
        many_bare = run_cli(model, photos, root / "out-large-bare", args.method,
                            args.batch_size, overlays=False)
        many_memory = in_memory_run(photos, args.large)

    import tensorflow as tf

    print()
    print(f"{args.method}, MobileNetV2 (alpha {args.alpha:g}) at "
          f"{args.model_size}x{args.model_size}, "
          f"batch size {args.batch_size}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}")
    print()
    print(f"{'':<40}{'images':>8}{'seconds':>9}{'images/s':>10}{'peak RSS':>10}")
    for label, row in [("python -m saliencekit explain", few),
                       ("  the same, --no-overlays", few_bare),
                       ("explain_to, the same photos in memory", few_memory),
                       ("python -m saliencekit explain", many),
                       ("  the same, --no-overlays", many_bare),
                       ("explain_to, the same photos in memory", many_memory)]:
        rss = f"{row['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in row else ""
        print(f"{label:<40}{row['images']:>8}{row['seconds']:>9.1f}"
              f"{row['images_per_s']:>10.1f}{rss:>10}")
    print()
    print(f"peak RSS, {args.large} vs {args.small} photos: "
          f"{many['peak_rss_mb']:.0f} MB vs {few['peak_rss_mb']:.0f} MB "
          f"(ratio {many['peak_rss_mb'] / few['peak_rss_mb']:.2f})")
    for label, (small_run, large_run) in [("", (few, many)),
                                          (" --no-overlays", (few_bare, many_bare))]:
        print(f"throughput, command line{label} / explain_to in memory: "
              f"{small_run['images_per_s'] / few_memory['images_per_s']:.2f} ({args.small} "
              f"photos), {large_run['images_per_s'] / many_memory['images_per_s']:.2f} "
              f"({args.large} photos)")


if __name__ == "__main__":
    main()
