"""Speed and memory of saliencekit's explainers, as ratios to limits measured in the same run.

    python benchmarks/run.py [--models mlp cnn mobilenetv2 resnet50]
                             [--methods saliency smoothgrad gradcam fullgrad occlusion]
                             [--peer xplique] [--repeats 3]
                             [--sections speed memory startup pipeline overhead]

The limit of a gradient method is the model's own compiled forward+backward pass on the same
batch (times nb_samples for SmoothGrad); Grad-CAM's is a forward pass plus the backward pass
down to the conv layer (the forward pass alone is shown beside it); Occlusion's is the number
of patches times a forward pass on the patched batch; the black-box family's (Rise, Lime,
KernelShap, Sobol, HSIC) is its number of forward passes on a batch of perturbed copies of
the same size. Every time is the median over ``--repeats`` rounds that time each reference,
explainer and peer in turn, after a warm-up call (the reference passes before each explainer
and peer); explainers are built once. Peak memory is the largest growth of the process's
resident memory during one more call, sampled every 2 ms (the memory section measures each
case in a fresh process, which is more telling).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from saliencekit.attributions import (
    TTA,
    DeconvNet,
    FullGrad,
    GradCAM,
    GradCAMPP,
    GradientInput,
    GuidedBackprop,
    HsicAttributionMethod,
    IntegratedGradients,
    KernelShap,
    LayerCAM,
    Lime,
    Occlusion,
    Rise,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SobolAttributionMethod,
)

SMOOTHGRAD_SAMPLES = 20
GRID = 4  # occlusion: a GRID x GRID grid of patches (features in GRID groups for tables)


# -- models ----------------------------------------------------------------------------------
def mlp():
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x)), (256, 64), None


def cnn():
    inputs = keras.Input((64, 64, 3))
    x = inputs
    for filters in (32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x)), (64, 64, 64, 3), None


def mobilenetv2():
    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), weights=None, classes=10, classifier_activation=None
    )
    return model, (32, 96, 96, 3), "out_relu"


def resnet50():
    model = keras.applications.ResNet50(
        input_shape=(224, 224, 3), weights=None, classes=10, classifier_activation=None
    )
    return model, (16, 224, 224, 3), "conv5_block3_out"


MODELS = {"mlp": mlp, "cnn": cnn, "mobilenetv2": mobilenetv2, "resnet50": resnet50}
METHODS = ["saliency", "smoothgrad", "gradcam", "fullgrad", "occlusion", "gradientinput",
           "integratedgradients", "gradcampp", "layercam", "guidedbackprop", "deconvnet",
           "scorecam", "tta"]
IG_STEPS = 20
# the black-box family: few samples (their limit scales with them); Sobol: nb_design * (16 + 1)
BLACK_BOX_SAMPLES = 32
BLACK_BOX_GRID = 4
BLACK_BOX = ["rise", "lime", "kernelshap", "sobol", "hsic"]
METHODS += BLACK_BOX


# -- measuring -------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(call, repeats: int):
    """(median seconds, first-call seconds, peak RSS growth in bytes over the timed calls)."""
    start = time.perf_counter()
    _block(call())
    first = time.perf_counter() - start
    times, peak = [], 0
    for _ in range(repeats):
        base = rss_bytes()
        top = [base]
        done = threading.Event()

        def sample(top=top, done=done):
            while not done.is_set():
                top[0] = max(top[0], rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        _block(call())
        times.append(time.perf_counter() - start)
        done.set()
        sampler.join()
        peak = max(peak, top[0] - base)
    return statistics.median(times), first, peak


def _block(result):
    for leaf in tf.nest.flatten(result):
        np.asarray(leaf)  # wait for the device: the result is on the host
    return result


def limits(model, x, y, conv_layer):
    """Compiled reference passes of the model itself, built and warmed up here."""
    one_hot = tf.one_hot(y, model.output_shape[-1])

    # The tightest references: the tapes watch only what is differentiated (watching the
    # trainable variables, GradientTape's default, is measurably slower on some models).
    @tf.function
    def forward_backward(x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            score = tf.reduce_sum(model(x, training=False) * one_hot, -1)
        return tape.gradient(score, x)

    @tf.function
    def forward(x):
        return model(x, training=False)

    refs = {"fwd+bwd": forward_backward, "fwd": forward}
    if conv_layer is not None:
        tapped = keras.Model(model.inputs, [model.get_layer(conv_layer).output, model.output])

        @tf.function
        def to_conv(x):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)  # records the head; only the path to the activations is kept
                activations, out = tapped(x, training=False)
                score = tf.reduce_sum(out * one_hot, -1)
            # the activations are returned too (Grad-CAM weighs them): without them the
            # forward pass could be pruned when the head is linear
            return activations, tape.gradient(score, activations)

        refs["fwd+bwd to conv"] = to_conv
    return refs


def explainers(name, model, n, conv_layer, shape):
    spatial = shape[1:3] if len(shape) == 4 else (shape[1],)
    patch = tuple(s // GRID for s in spatial)
    patches = GRID ** len(spatial)
    return {
        "saliency": (lambda: Saliency(model, batch_size=n), "fwd+bwd", 1),
        # the same memory budget as xplique's: every noisy copy in one forward pass
        "smoothgrad": (lambda: SmoothGrad(model, batch_size=n * SMOOTHGRAD_SAMPLES,
                                          nb_samples=SMOOTHGRAD_SAMPLES, noise=0.2, seed=0),
                       "fwd+bwd", SMOOTHGRAD_SAMPLES),
        "gradcam": (lambda: GradCAM(model, conv_layer=conv_layer, batch_size=n),
                    "fwd+bwd to conv", 1),
        "fullgrad": (lambda: FullGrad(model, batch_size=n), "fwd+bwd", 1),
        "occlusion": (lambda: Occlusion(model, patch_size=patch, batch_size=n), "fwd", patches),
        "gradientinput": (lambda: GradientInput(model, batch_size=n), "fwd+bwd", 1),
        "integratedgradients": (lambda: IntegratedGradients(model, steps=IG_STEPS,
                                                            batch_size=n * IG_STEPS),
                                "fwd+bwd", IG_STEPS),
        "gradcampp": (lambda: GradCAMPP(model, conv_layer=conv_layer, batch_size=n),
                      "fwd+bwd to conv", 1),
        "layercam": (lambda: LayerCAM(model, conv_layer=conv_layer, batch_size=n),
                     "fwd+bwd to conv", 1),
        "guidedbackprop": (lambda: GuidedBackprop(model, batch_size=n), "fwd+bwd", 1),
        "deconvnet": (lambda: DeconvNet(model, batch_size=n), "fwd+bwd", 1),
        # one forward pass of n masked inputs per channel of the layer
        "scorecam": (lambda: ScoreCAM(model, conv_layer=conv_layer, batch_size=n), "fwd",
                     _channels(model, conv_layer)),
        # the benchmark's models have a fixed input size: the image and its mirror
        "tta": (lambda: TTA(Saliency(model, batch_size=n), scales=(), hflip=True), "fwd+bwd", 2),
        # black-box methods: batch_size = n, so each forward pass holds one perturbed copy of
        # every input, the reference's batch; the limit is their number of forward passes
        "rise": (lambda: Rise(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES, seed=0), "fwd",
                 BLACK_BOX_SAMPLES),
        "lime": (lambda: Lime(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES,
                              grid_size=BLACK_BOX_GRID, seed=0), "fwd", BLACK_BOX_SAMPLES),
        "kernelshap": (lambda: KernelShap(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES,
                                          grid_size=BLACK_BOX_GRID, seed=0), "fwd",
                       BLACK_BOX_SAMPLES),
        "sobol": (lambda: SobolAttributionMethod(model, grid_size=BLACK_BOX_GRID, nb_design=4,
                                                 batch_size=n, seed=0), "fwd",
                  4 * (BLACK_BOX_GRID**2 + 1)),
        "hsic": (lambda: HsicAttributionMethod(model, grid_size=BLACK_BOX_GRID,
                                               nb_design=BLACK_BOX_SAMPLES, batch_size=n,
                                               seed=0), "fwd", BLACK_BOX_SAMPLES),
    }


def _channels(model, conv_layer):
    if conv_layer is None:
        return 0
    from saliencekit.commons.model import find_node, flatten

    return find_node(flatten(model), model, conv_layer, "conv_layer").output.shape[-1]


def xplique_explainer(method, model, n, conv_layer, shape):
    import xplique.attributions as xa

    spatial = shape[1:3] if len(shape) == 4 else (shape[1],)
    patch = tuple(s // GRID for s in spatial)
    if method == "saliency":
        return xa.Saliency(model, batch_size=n)
    if method == "smoothgrad":
        return xa.SmoothGrad(model, batch_size=n * SMOOTHGRAD_SAMPLES,
                             nb_samples=SMOOTHGRAD_SAMPLES, noise=0.2)
    if method == "gradcam" and conv_layer is not None:
        return xa.GradCAM(model, conv_layer=conv_layer, batch_size=n)
    if method == "occlusion" and len(shape) == 4:
        return xa.Occlusion(model, patch_size=patch, patch_stride=patch, batch_size=n)
    if method == "gradientinput":
        return xa.GradientInput(model, batch_size=n)
    if method == "integratedgradients":
        return xa.IntegratedGradients(model, steps=IG_STEPS, batch_size=n * IG_STEPS)
    if method == "gradcampp" and conv_layer is not None:
        return xa.GradCAMPP(model, conv_layer=conv_layer, batch_size=n)
    if method == "guidedbackprop":
        return xa.GuidedBackprop(model, batch_size=n)
    if method == "deconvnet":
        return xa.DeconvNet(model, batch_size=n)
    if method == "rise":
        return xa.Rise(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES)
    if method in ("lime", "kernelshap"):  # the same interpretable space: a grid of cells
        from saliencekit.commons.sampling import cell_map

        size = shape[1:3] if len(shape) == 4 else shape[1:]
        ids = cell_map(size, (BLACK_BOX_GRID,) * len(size)) if len(shape) == 4 else np.arange(
            shape[1])
        mapping = lambda x: tf.constant(ids, tf.int32)  # noqa: E731
        if method == "lime":
            return xa.Lime(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES,
                           map_to_interpret_space=mapping)
        return xa.KernelShap(model, batch_size=n, nb_samples=BLACK_BOX_SAMPLES,
                             map_to_interpret_space=mapping)
    if method == "sobol" and len(shape) == 4:
        return xa.SobolAttributionMethod(model, grid_size=BLACK_BOX_GRID, nb_design=4,
                                         batch_size=n)
    if method == "hsic" and len(shape) == 4:
        return xa.HsicAttributionMethod(model, grid_size=BLACK_BOX_GRID,
                                        nb_design=BLACK_BOX_SAMPLES, batch_size=n)
    return None


def speed(args):
    """Per model: every reference, explainer and peer is warmed up, then timed in rounds
    that interleave them (medians over rounds), so that drift of a shared machine's speed
    affects all alike."""
    rows = []
    for model_name in args.models:
        keras.utils.set_random_seed(0)
        model, shape, conv_layer = MODELS[model_name]()
        n = shape[0]
        x = tf.constant(np.random.default_rng(0).random(shape, np.float32))
        y = np.arange(n) % model.output_shape[-1]
        onehot = tf.one_hot(y, model.output_shape[-1])
        if conv_layer is None and len(shape) == 4:
            conv_layer = [layer.name for layer in model.layers if len(layer.output.shape) == 4][-1]
        calls, first, rows_here = {}, {}, []
        limits_here = limits(model, x, y, conv_layer)
        for key, function in limits_here.items():
            calls[key] = lambda f=function, x=x: f(x)
        for method in args.methods:
            build, ref, multiple = explainers(model_name, model, n, conv_layer, shape)[method]
            if method in ("gradcam", "gradcampp", "layercam", "scorecam") and conv_layer is None:
                continue
            if method in ("tta", "sobol", "hsic") and len(shape) != 4:  # images only
                continue
            start = time.perf_counter()
            explainer = build()
            calls[method] = lambda e=explainer, x=x, y=y: e.explain(x, y)
            first[method] = time.perf_counter() - start  # + the first call, below
            rows_here.append((method, ref, multiple))
            if args.peer == "xplique":
                try:
                    peer = xplique_explainer(method, model, n, conv_layer, shape)
                except ImportError:
                    peer = None
                if peer is not None:
                    calls["xplique " + method] = lambda p=peer, x=x, t=onehot: p.explain(x, t)
        times = {key: [] for key in calls}
        for key, call in calls.items():  # warm-up (tracing), timed for the first-call column
            start = time.perf_counter()
            _block(call())
            first[key] = first.get(key, 0.0) + time.perf_counter() - start
        others = [key for key in calls if key not in limits_here]
        for _ in range(args.repeats):
            # the references are timed before every explainer (and peer), in the same state
            # of the machine: a short pass sampled once a round let one slow (or fast)
            # sample on a shared machine set the limit of every method
            for other in others:
                for key in [*limits_here, other]:
                    start = time.perf_counter()
                    _block(calls[key]())
                    times[key].append(time.perf_counter() - start)
        median = {key: statistics.median(values) for key, values in times.items()}
        for method, ref, multiple in rows_here:
            peak = measure(calls[method], 1)[2]
            row = {
                "model": model_name, "method": method, "time s": median[method],
                "limit s": median[ref] * multiple,
                "ratio": median[method] / (median[ref] * multiple),
                "fwd s": median["fwd"], "first call s": first[method],
                "first-call extra passes": (first[method] - median[method]) / median["fwd+bwd"],
                "peak MB": peak / 2**20,
            }
            if "xplique " + method in median:
                row["xplique s"] = median["xplique " + method]
                row["speed-up"] = row["xplique s"] / median[method]
            rows.append(row)
            print_row(row)
        del model, calls
        keras.backend.clear_session()
    return rows


HEADER = ["model", "method", "time s", "limit s", "ratio", "fwd s", "first call s",
          "first-call extra passes", "peak MB", "xplique s", "speed-up"]


def print_row(row):
    if not getattr(print_row, "started", False):
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        print_row.started = True
    cells = []
    for key in HEADER:
        value = row.get(key, "")
        cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
    print("| " + " | ".join(cells) + " |", flush=True)


def _memory_case(case, queue):
    """In a fresh process: peak RSS growth (bytes) of one explain from after set-up."""
    import resource

    keras.utils.set_random_seed(0)
    model, _, _ = cnn()
    kind, size = case
    if kind == "smoothgrad":
        x = tf.constant(np.random.default_rng(0).random((16, 64, 64, 3), np.float32))
        explainer = SmoothGrad(model, batch_size=16, nb_samples=size, seed=0)
        args = (x, np.arange(16) % 10)
    else:
        dataset = tf.data.Dataset.range(size).map(
            lambda i: (tf.random.stateless_uniform((64, 64, 3), tf.stack([i, i])), i % 10)
        ).batch(64)
        explainer, args = Saliency(model, batch_size=64), (dataset,)
    base = rss_bytes()
    _block(explainer.explain(*args))
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def memory(args):
    """Peak memory, each case in a fresh process: SmoothGrad at nb_samples 10 vs 200 (batch
    16); Saliency streaming a 1,000 vs 10,000-image Dataset (batch 64), less its maps."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    print("\n| memory case (fresh process, peak RSS growth) | MB |\n|---|---|")
    for case in [("smoothgrad", 10), ("smoothgrad", 200), ("dataset", 1_000), ("dataset", 10_000)]:
        queue = context.Queue()
        process = context.Process(target=_memory_case, args=(case, queue))
        process.start()
        peak = queue.get() / 2**20
        process.join()
        if case[0] == "smoothgrad":
            label = f"SmoothGrad nb_samples={case[1]}, batch_size=16"
        else:
            maps = case[1] * 64 * 64 * 4 / 2**20
            label = (f"Saliency, {case[1]:,}-image Dataset, batch 64, less 2 x {maps:.0f} MB "
                     "of maps (the batches' and their concatenation)")
            peak -= 2 * maps
        print(f"| {label} | {peak:.0f} |", flush=True)


def pipeline(args):
    """A dataset with a decode step: explain(dataset) vs max(pipeline alone, compute alone)."""
    keras.utils.set_random_seed(0)
    model, _, _ = cnn()
    count, batch = 2048, 64
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (count, 64, 64, 3), np.uint8))
    encoded = tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)

    def decode(png, label):
        image = tf.image.decode_png(png, channels=3)
        image = tf.image.resize(image, (64, 64))  # a typical resize in the pipeline
        return tf.cast(image, tf.float32) / 255.0, label

    dataset = tf.data.Dataset.from_tensor_slices((encoded, tf.range(count) % 10)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    explainer = Saliency(model, batch_size=batch)
    decoded = [b for b in dataset]
    x = tf.concat([b[0] for b in decoded], 0)
    y = tf.concat([b[1] for b in decoded], 0)
    calls = {
        "alone": lambda: [b for b in dataset],
        "compute": lambda: explainer.explain(x, y),
        "both": lambda: explainer.explain(dataset),
    }
    times = {key: [] for key in calls}
    for call in calls.values():
        _block(call())
    for _ in range(args.repeats):  # interleaved rounds
        for key, call in calls.items():
            start = time.perf_counter()
            _block(call())
            times[key].append(time.perf_counter() - start)
    alone, compute, both = (statistics.median(times[k]) for k in ("alone", "compute", "both"))
    print("\n| pipeline (2,048 PNGs, batch 64) | seconds |\n|---|---|")
    print(f"| pipeline alone | {alone:.2f} |\n| compute alone (in-memory tensor) | {compute:.2f} |")
    print(f"| explain(dataset) | {both:.2f} |\n| ratio to max(pipeline, compute) |"
          f" {both / max(alone, compute):.2f} |\n| ratio to pipeline + compute (CPU: shared "
          f"cores) | {both / (alone + compute):.2f} |")


def overhead(args):
    """The fixed cost of one explain() call: Saliency on the MLP (256 and 512 rows) against
    the compiled forward+backward, medians over 50 x --repeats calls timed in interleaved
    rounds (the ms-scale calls need more rounds than the speed section's)."""
    keras.utils.set_random_seed(0)
    model, shape, _ = mlp()
    print("\n| MLP, Saliency per call | fwd+bwd ms | explain ms | ratio | overhead ms |"
          "\n|---|---|---|---|---|")
    for rows in (shape[0], 2 * shape[0]):
        x = tf.constant(np.random.default_rng(0).random((rows, shape[1]), np.float32))
        y = np.arange(rows) % 10
        reference = limits(model, x, y, None)["fwd+bwd"]
        explainer = Saliency(model, batch_size=rows)
        calls = {"ref": lambda r=reference, x=x: r(x),
                 "explain": lambda e=explainer, x=x, y=y: e.explain(x, y)}
        times = {key: [] for key in calls}
        for call in calls.values():
            _block(call())
        for _ in range(50 * args.repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                _block(call())
                times[key].append(time.perf_counter() - start)
        ref, run = (statistics.median(times[k]) for k in ("ref", "explain"))
        print(f"| {rows} rows | {1e3 * ref:.3f} | {1e3 * run:.3f} | {run / ref:.2f} | "
              f"{1e3 * (run - ref):.3f} |", flush=True)


def startup(args):
    """First explain on ResNet50 in forward+backward passes; later calls never retrace."""
    keras.utils.set_random_seed(0)
    model, shape, _ = resnet50()
    x = tf.constant(np.random.default_rng(0).random(shape, np.float32))
    y = np.arange(shape[0]) % 10
    reference = limits(model, x, y, None)["fwd+bwd"]
    start = time.perf_counter()
    _block(reference(x))
    reference_first = time.perf_counter() - start
    passes = measure(lambda: reference(x), args.repeats)[0]
    explainer = Saliency(model, batch_size=shape[0])
    start = time.perf_counter()
    _block(explainer.explain(x, y))
    first = time.perf_counter() - start
    steady = measure(lambda: explainer.explain(x, y), args.repeats)[0]
    traces = explainer._kernel.experimental_get_tracing_count()
    print("\n| start-up (ResNet50, 16 images) | value |\n|---|---|")
    print(f"| fwd+bwd pass s | {passes:.2f} |")
    print(f"| plain tf.function fwd+bwd first call: extra passes | "
          f"{(reference_first - passes) / passes:.2f} |")
    print(f"| Saliency first explain: extra passes | {(first - steady) / passes:.2f} |")
    print(f"| traces after {args.repeats + 2} calls | {traces} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--peer", choices=["xplique"], default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", nargs="+", default=["speed"],
                        choices=["speed", "memory", "startup", "pipeline", "overhead"])
    args = parser.parse_args()
    print(f"# saliencekit benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()} "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow "
          f"{tf.__version__}, Keras {keras.__version__}\n")
    for section in args.sections:
        {"speed": speed, "memory": memory, "startup": startup, "pipeline": pipeline,
         "overhead": overhead}[section](args)


if __name__ == "__main__":
    main()
