"""python -m saliencekit: the demo and the command-line explainer.

python -m saliencekit demo
    Trains a small CNN on synthetic shapes whose evidence is known pixel by pixel, explains
    held-out images with every explainer, writes a PNG grid and prints, per method, how often
    the map's maximum falls inside the evidence (pointing game), the share of relevance
    inside it, and the time taken. --model vit does the same with a tiny vision
    transformer (CAMs on its tokens, attention rollout, transformer attribution); --model
    text trains a small transformer on token sequences whose class is one keyword among
    distractors and scores each method's per-token map against the keyword's position.

python -m saliencekit explain --model M.keras --images DIR_OR_FILES --method NAME
    Explains your photos with your saved Keras model, streaming them from disk (memory is
    bounded by --batch-size, whatever the number of photos). The output directory holds the
    maps (an explain_to store: maps-*.npy, read with saliencekit.commons.sink.MapStore),
    files.txt (the photo of each row), classes.txt (the class explained), one overlay per
    photo at the photo's size in overlays/, and index.html to browse them. Running the same
    command again resumes an interrupted run.

Errors are one line, "error: ...", with exit status 2. TensorFlow's own log lines are hidden
unless --verbose.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import functools
import html
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Nothing heavy at import: numpy, TensorFlow and Keras are imported where they are needed,
# so that --help answers at once and TensorFlow's logs can be quieted before it starts.

PROG = "python -m saliencekit"
#: bump when the demo's data or model recipe changes, so cached models are not reused
DEMO_RECIPE = 1
DEMO_SIZE = 64
#: the demo's models (--model) -> (recipe version, training examples, epochs) by default
DEMO_MODELS: dict[str, tuple[int, int, int]] = {"cnn": (DEMO_RECIPE, 3000, 5),
                                                "vit": (1, 3000, 10), "text": (1, 2000, 8)}
#: the ViT's patches and width, the text task's sequences
VIT_PATCH, VIT_DIM, TEXT_LENGTH, TEXT_CLASSES, TEXT_DIM = 8, 32, 16, 4, 32
#: the text task's vocabulary: synthetic.keywords' (pad, keywords, 40 distractors), then a
#: [MASK] token, never seen in training, that the black-box methods put in place of tokens
TEXT_WORDS = 40
TEXT_MASK_ID = 1 + TEXT_CLASSES + TEXT_WORDS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: ``demo --out`` ending with one of these is the figure's path, not a directory
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

# the output directory of ``explain``, beside the explain_to store's own files
FILES = "files.txt"
CLASSES = "classes.txt"
RUN = "run.json"
OVERLAYS = "overlays"
INDEX = "index.html"
MANIFEST = "manifest.json"  # the store's (saliencekit.commons.sink.MANIFEST)
#: bump when the output directory's layout changes
RUN_VERSION = 1
#: about this many bytes of maps per shard at most (the store's default), and this many
#: shards per run at most, so overlays appear and progress moves every ~1% of a long run
SHARD_BYTES = 2**26
SHARDS_PER_RUN = 100


class UsageError(Exception):
    """A problem with the command line: reported as ``error: ...`` with exit status 2."""


# -- methods ----------------------------------------------------------------------------------
#: Every explainer the command line runs -> the options it takes (beyond --batch-size and
#: --operator). A test checks them against the explainers' signatures.
METHODS: dict[str, tuple[str, ...]] = {
    "Saliency": ("output_layer",),
    "SmoothGrad": ("output_layer", "nb_samples", "noise", "seed"),
    "SquareGrad": ("output_layer", "nb_samples", "noise", "seed"),
    "VarGrad": ("output_layer", "nb_samples", "noise", "seed"),
    "GradientInput": ("output_layer",),
    "IntegratedGradients": ("output_layer", "steps"),
    "GuidedBackprop": ("output_layer",),
    "DeconvNet": ("output_layer",),
    "GradCAM": ("output_layer", "conv_layer"),
    "GradCAMPP": ("output_layer", "conv_layer"),
    "LayerCAM": ("output_layer", "conv_layer"),
    "ScoreCAM": ("output_layer", "conv_layer"),
    "FullGrad": ("output_layer",),
    "Occlusion": ("patch_size", "patch_stride"),
    "Rise": ("nb_samples", "grid_size", "seed"),
    "Lime": ("nb_samples", "grid_size", "seed"),
    "KernelShap": ("nb_samples", "grid_size", "seed"),
    "SobolAttributionMethod": ("grid_size", "seed"),
    "HsicAttributionMethod": ("grid_size", "seed"),
    "AttentionRollout": (),  # vision transformers: maps on the patch grid
    "TransformerAttribution": ("output_layer",),
}
#: Meta-explainers, written ``Wrapper(METHOD)`` (nested too) -> the options they take.
WRAPPERS: dict[str, tuple[str, ...]] = {"Smoothed": ("nb_samples", "noise", "seed"), "TTA": ()}
#: Other names users type, as matched (case-folded, ``-`` and ``_`` removed) -> the method.
ALIASES: dict[str, str] = {
    "gradcam++": "GradCAMPP",
    "gradcamplusplus": "GradCAMPP",
    "ig": "IntegratedGradients",
    "gradientxinput": "GradientInput",
    "gradienttimesinput": "GradientInput",
    "inputxgradient": "GradientInput",
    "guidedbackpropagation": "GuidedBackprop",
    "vanillagradient": "Saliency",
    "vanillagradients": "Saliency",
    "sobol": "SobolAttributionMethod",
    "hsic": "HsicAttributionMethod",
}
#: explainer argument -> the option that sets it
OPTIONS: dict[str, str] = {
    "output_layer": "--output-layer",
    "conv_layer": "--conv-layer",
    "nb_samples": "--nb-samples",
    "noise": "--noise",
    "seed": "--seed",
    "steps": "--steps",
    "patch_size": "--patch-size",
    "patch_stride": "--patch-stride",
    "grid_size": "--grid-size",
}
#: library argument named in an error message -> the option the user wrote
ARGUMENTS: dict[str, str] = {
    **OPTIONS,
    "targets": "--labels",
    "inputs": "--images",
    "model": "--model",
    "path": "--out",
    "batch_size": "--batch-size",
    "operator": "--operator",
}
#: --operator choices -> the library's operator names (object detection needs boxes as
#: targets, which --labels cannot give)
OPERATORS: dict[str, str] = {
    "classification": "classification",
    "regression": "regression",
    "segmentation": "semantic segmentation",
}
#: --preprocess modes: those of keras.applications.imagenet_utils.preprocess_input
PREPROCESS = ("none", "tf", "torch", "caffe")
CAFFE_MEAN = (103.939, 116.779, 123.68)  # BGR
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def _key(name: str) -> str:
    """How method names are matched: case-folded, ``-`` and ``_`` removed, nothing else."""
    return name.casefold().replace("-", "").replace("_", "")


_KNOWN = {_key(name): name for name in METHODS} | ALIASES
_WRAPPER_KEYS = {_key(name): name for name in WRAPPERS}


def resolve_method(text: str) -> list[str]:
    """``"tta(grad-cam++)"`` -> ``["TTA", "GradCAMPP"]``: meta-explainers outside in, the
    explainer last. Raises :class:`UsageError` for any other name."""
    chain, rest = [], text.strip()
    while (match := re.fullmatch(r"([\w-]+)\s*\((.*)\)", rest)) and _key(
            match.group(1)) in _WRAPPER_KEYS:
        chain.append(_WRAPPER_KEYS[_key(match.group(1))])
        rest = match.group(2).strip()
    if _key(rest) not in _KNOWN:
        close = difflib.get_close_matches(_key(rest), list(_KNOWN), n=1, cutoff=0.75)
        hint = f" Did you mean {_KNOWN[close[0]]}?" if close else ""
        raise UsageError(
            f"--method: expected one of {', '.join(METHODS)}, or one of them in "
            f"{' or '.join(f'{w}(...)' for w in WRAPPERS)} (case and - or _ do not matter), "
            f"got {text!r}.{hint}")
    return [*chain, _KNOWN[_key(rest)]]


def method_name(chain: list[str]) -> str:
    name = chain[-1]
    for wrapper in reversed(chain[:-1]):
        name = f"{wrapper}({name})"
    return name


def assign_options(chain: list[str], given: dict[str, Any]) -> list[dict[str, Any]]:
    """Each given option (not None) goes to the outermost explainer of ``chain`` that takes
    it; an option none of them takes is refused, so no option is silently ignored."""
    takes = [WRAPPERS[name] if i < len(chain) - 1 else METHODS[name]
             for i, name in enumerate(chain)]
    assigned: list[dict[str, Any]] = [{} for _ in chain]
    for argument, value in given.items():
        if value is None:
            continue
        for options, kwargs in zip(takes, assigned):
            if argument in options:
                kwargs[argument] = value
                break
        else:
            users = [m for m, options in {**METHODS, **WRAPPERS}.items() if argument in options]
            shown = ", ".join(f"{m}(...)" if m in WRAPPERS else m for m in users)
            raise UsageError(f"{OPTIONS[argument]}: expected no value with --method "
                             f"{method_name(chain)}, which does not take it (these do: "
                             f"{shown}), got {value}.")
    return assigned


def build_explainer(chain: list[str], assigned: list[dict], model, **common):
    """The explainer of ``chain`` with its options: the method, then its wrappers."""
    from saliencekit import attributions

    explainer = getattr(attributions, chain[-1])(model, **assigned[-1], **common)
    for name, kwargs in zip(reversed(chain[:-1]), reversed(assigned[:-1])):
        explainer = getattr(attributions, name)(explainer, **kwargs)
    return explainer


class _LazyAttributions:
    """``saliencekit.attributions``, imported on first use: the demo's method names are
    checked before TensorFlow starts."""

    def __getattr__(self, name):
        from saliencekit import attributions

        return getattr(attributions, name)


def method_factories(conv_layer: str | None = None, fast: bool = False) -> dict:
    """name -> ``callable(model, **kwargs)``: every explainer the package has (the demo's)."""
    a = _LazyAttributions()  # imported (with TensorFlow) when a factory is called

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
        # the sampling family, with the cells of a 64-pixel image as features
        "Rise": lambda m, **k: a.Rise(m, nb_samples=20 * samples, seed=0, **k),
        "Lime": lambda m, **k: a.Lime(m, nb_samples=6 * samples, seed=0, **k),
        "KernelShap": lambda m, **k: a.KernelShap(m, nb_samples=8 * samples, seed=0, **k),
        "SobolAttributionMethod": lambda m, **k: a.SobolAttributionMethod(
            m, grid_size=6, nb_design=16, seed=0, **k),
        "HsicAttributionMethod": lambda m, **k: a.HsicAttributionMethod(
            m, grid_size=6, nb_design=16 * samples, seed=0, **k),
    }


def _gradient_factories(a, samples: int) -> dict:
    """The gradient methods of the transformer demos (token inputs: at the embedding)."""
    return {
        "Saliency": lambda m: a.Saliency(m),
        "SmoothGrad": lambda m: a.SmoothGrad(m, nb_samples=samples, seed=0),
        "GradientInput": lambda m: a.GradientInput(m),
        "IntegratedGradients": lambda m: a.IntegratedGradients(m, steps=samples),
    }


def _attention_factories(a) -> dict:
    """The attention methods of the transformer demos, on the mean of tokens (the heads'
    pooling)."""
    return {
        "AttentionRollout": lambda m: a.AttentionRollout(m, token="mean"),
        "TransformerAttribution": lambda m: a.TransformerAttribution(m, token="mean"),
    }


def vit_method_factories(fast: bool = False) -> dict:
    """name -> ``callable(model)``: the methods the ViT demo runs (the CAMs on the last
    block's tokens, the attention methods on the mean of tokens, the head's pooling)."""
    a = _LazyAttributions()  # imported (with TensorFlow) when a factory is called

    samples = 10 if fast else 25
    return {
        **_gradient_factories(a, samples),
        "GradCAM": lambda m: a.GradCAM(m),
        "GradCAMPP": lambda m: a.GradCAMPP(m),
        "LayerCAM": lambda m: a.LayerCAM(m),
        "ScoreCAM": lambda m: a.ScoreCAM(m),
        **_attention_factories(a),
        "Occlusion": lambda m: a.Occlusion(m, patch_size=VIT_PATCH, patch_stride=VIT_PATCH // 2),
        "Rise": lambda m: a.Rise(m, nb_samples=20 * samples, seed=0),
    }


def text_method_factories(fast: bool = False, mask_id: int = 0) -> dict:
    """name -> ``callable(model)``: the methods the text demo runs, each giving per-token
    maps ``(N, T)`` (gradients at the token embedding, CAMs on the last block's tokens,
    attention on the mean of tokens, black-box methods hiding tokens behind ``mask_id``:
    a ``[MASK]`` token; the pad id would leave a sequence with every token hidden empty,
    and a masked mean of no token is NaN)."""
    a = _LazyAttributions()  # imported (with TensorFlow) when a factory is called

    samples = 10 if fast else 25
    return {
        **_gradient_factories(a, samples),
        "GradCAM": lambda m: a.GradCAM(m),
        "LayerCAM": lambda m: a.LayerCAM(m),
        **_attention_factories(a),
        "Occlusion": lambda m: a.Occlusion(m, patch_size=1, occlusion_value=mask_id),
        "KernelShap": lambda m: a.KernelShap(m, nb_samples=8 * samples, ref_value=mask_id,
                                             seed=0),
        "Lime": lambda m: a.Lime(m, nb_samples=8 * samples, ref_value=mask_id, seed=0),
    }


def select_methods(factories: dict, names: str | None) -> dict:
    """``--methods A,B``: those of ``factories`` (matched as --method matches names)."""
    if names is None:
        return factories
    known = {_key(name): name for name in factories}
    chosen = []
    for name in (n.strip() for n in names.split(",")):
        match = known.get(_key(name)) or known.get(_key(ALIASES.get(_key(name), "")))
        if match is None:
            raise UsageError(f"--methods: expected names among {', '.join(factories)}, got "
                             f"{name!r}.")
        chosen.append(match)
    return {name: factories[name] for name in dict.fromkeys(chosen)}


# -- messages and logs ------------------------------------------------------------------------
def cli_text(message: str, method: str | None = None) -> str:
    """A library message in the command line's words, on one line: ``targets: expected
    ...`` -> ``--labels: expected ...``; an argument the command line does not set is
    prefixed with the method (``--method TTA(GradCAM): scales: expected ...``); the advice
    ``Pass output_layer='logits'`` -> ``Pass --output-layer logits``."""
    text = " ".join(str(message).split())
    match = re.match(r"(\w+): expected ", text)
    if match and match.group(1) in ARGUMENTS:
        text = ARGUMENTS[match.group(1)] + text[len(match.group(1)):]
    elif match and method:
        text = f"--method {method}: {text}"
    text = text.replace("Pass another path,", "Pass another --out,")
    # a check run in a tf.data pipeline: TensorFlow appends its assertion's data
    text = re.sub(r"\] \[Condition .*$", "", text)
    return re.sub(r"\bPass (\w+)=(?:'([^']*)'|(-?\d+))",
                  lambda m: (f"Pass {OPTIONS[m.group(1)]} {m.group(2) or m.group(3)}"
                             if m.group(1) in OPTIONS else m.group(0)), text)


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Send what C++ libraries write to file descriptor 2 (TensorFlow's start-up log lines,
    written before its logging is configured, whatever ``TF_CPP_MIN_LOG_LEVEL`` says)
    nowhere for the duration; it is replayed if the block raises."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def start_tensorflow(verbose: bool) -> None:
    """Import TensorFlow and Keras, quietly unless ``verbose``: no C++ log lines (start-up
    notices, a CUDA ``cuInit`` error on CPU machines), Python loggers at ERROR. A process
    that already imported TensorFlow is left as it is."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import keras
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_hidden():
        import keras  # noqa: F401
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def one_line_warnings(command: str, verbose: bool) -> Iterator[None]:
    """Warnings as ``python -m saliencekit explain: warning: ...`` in the CLI's words."""
    if verbose:
        yield
        return

    def show(message, category, filename, lineno, file=None, line=None):
        stream = sys.stderr if file is None else file
        stream.write(f"{PROG} {command}: warning: {cli_text(str(message))}\n")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


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


@functools.cache
def demo_layers() -> dict:
    """The demo transformers' own layer (registered, so their cached files load)."""
    import keras

    @keras.saving.register_keras_serializable(package="saliencekit_demo")
    class AddPositions(keras.layers.Layer):
        """Learnt position embeddings added to the tokens (padding masks pass through)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def build(self, input_shape):
            self.positions = self.add_weight(
                shape=(1, *input_shape[1:]), name="positions",
                initializer=keras.initializers.RandomNormal(stddev=0.02))

        def call(self, tokens):
            return tokens + keras.ops.cast(self.positions, tokens.dtype)

    return {"AddPositions": AddPositions}


def _encoder(x, dim: int, heads: int, blocks: int):
    """Pre-norm transformer blocks (MultiHeadAttention + MLP), a final norm and the mean of
    the tokens (padding excluded)."""
    import keras

    layers = keras.layers
    for b in range(blocks):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_norm1")(x)
        h = layers.MultiHeadAttention(heads, dim // heads, name=f"block{b}_attention")(h, h)
        x = layers.Add(name=f"block{b}_add")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_norm2")(x)
        h = layers.Dense(2 * dim, activation="gelu", name=f"block{b}_mlp1")(h)
        h = layers.Dense(dim, name=f"block{b}_mlp2")(h)
        x = layers.Add(name=f"block{b}_out")([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    return layers.GlobalAveragePooling1D(name="mean_of_tokens")(x)


def vit_model(seed: int):
    """The demo's tiny ViT: a 3x3 convolution (16 channels), 8x8 patches by a strided
    Conv2D (dim 32), learnt positions, 2 blocks of 4 heads, a head on the mean of tokens.
    Without the 3x3 convolution, a minute of training left it at ~40% (chance 25%)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    grid = DEMO_SIZE // VIT_PATCH
    inputs = keras.Input((DEMO_SIZE, DEMO_SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(VIT_DIM, VIT_PATCH, strides=VIT_PATCH, name="patches")(x)
    x = layers.Reshape((grid * grid, VIT_DIM), name="tokens")(x)
    x = demo_layers()["AddPositions"](name="positions")(x)
    x = _encoder(x, VIT_DIM, heads=4, blocks=2)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name="shapes_vit")


def text_model(seed: int, vocabulary: int):
    """The demo's text transformer: token embeddings (id 0 is masked padding), learnt
    positions, 2 blocks of 4 heads, a head on the mean of the tokens."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TEXT_LENGTH,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, TEXT_DIM, mask_zero=True, name="embedding")(inputs)
    x = demo_layers()["AddPositions"](name="positions")(x)
    x = _encoder(x, TEXT_DIM, heads=4, blocks=2)
    return keras.Model(inputs, keras.layers.Dense(TEXT_CLASSES, name="logits")(x),
                       name="keywords_transformer")


def fit_demo(model, x, y, epochs: int, verbose: int, learning_rate: float = 2e-3):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=verbose, shuffle=True)
    return model


def demo_settings(args) -> tuple[int, int, Path]:
    """``(training examples, epochs, cached model path)`` of --model; the CNN's file name
    is the one it always had."""
    recipe, train, epochs = DEMO_MODELS[args.model]
    train, epochs = args.train or train, args.epochs or epochs
    kind = "" if args.model == "cnn" else f"{args.model}-"
    name = f"demo-{kind}r{recipe}-s{args.seed}-n{train}-e{epochs}.keras"
    return train, epochs, cache_dir() / name


def held_out_set(model, inputs, held_out, samples, unit, classes, methods):
    """Print the model's held-out accuracy and what is explained; the first ``samples``
    inputs, labels and ground-truth masks."""
    import numpy as np

    logits = model.predict(inputs, batch_size=250, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == held_out.labels))
    print(f"Held-out accuracy: {accuracy:.1%} on {len(held_out.labels)} {unit} "
          f"(chance: {1 / classes:.0%}).")
    print(f"Explaining {min(samples, len(inputs))} held-out {unit} (their true class) with "
          f"{methods} explainers:", flush=True)
    return inputs[:samples], held_out.labels[:samples], held_out.masks[:samples]


def cached_model(args, path: Path, train: Callable, what: str):
    """The demo's model from the cache, else trained (``train(verbose)``) and cached."""
    import keras

    from saliencekit.commons.progress import is_interactive

    start = time.perf_counter()
    if path.exists() and not args.retrain:
        model = keras.models.load_model(path, custom_objects=demo_layers())
        print(f"Loaded the trained demo model from {path} (--retrain to train it again).")
        return model
    print(f"Training {what}...", flush=True)
    # a bar on a terminal, one line per epoch in a log
    model = train(0 if args.quiet else 1 if is_interactive(sys.stdout) else 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"Trained in {time.perf_counter() - start:.0f} s; cached at {path}.")
    return model


def figure_path(out: str, name: str = "demo") -> Path:
    """``demo --out``: a directory (the figure is ``name.png`` in it) or the figure's path,
    when it ends with an image suffix and is not an existing directory."""
    path = Path(out)
    if path.suffix.lower() in FIGURE_SUFFIXES and not path.is_dir():
        if path.parent.exists() and not path.parent.is_dir():
            raise UsageError(f"--out: expected a directory or an image path in a directory, "
                             f"got {out!r}, whose parent is a file.")
        return path
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out: expected a directory or a path ending with "
                         f"{', '.join(FIGURE_SUFFIXES)}, got {out!r}, an existing file.")
    return path / f"{name}.png"


def run_demo(args) -> int:
    figure = figure_path(args.out, "demo" if args.model == "cnn" else f"demo-{args.model}")
    if args.model == "cnn":
        factories = method_factories("last_conv", fast=args.fast)
    else:
        factories = vit_method_factories(args.fast) if args.model == "vit" else \
            text_method_factories(args.fast, mask_id=TEXT_MASK_ID)
    factories = select_methods(factories, args.methods)
    start_tensorflow(args.verbose)  # before saliencekit.commons, which imports TensorFlow
    from saliencekit.commons import plot

    plot.require_matplotlib()  # before any heavy work
    if args.model == "text":
        return run_text_demo(args, figure, factories)
    return run_image_demo(args, figure, factories)


def run_image_demo(args, figure: Path, factories: dict) -> int:
    import numpy as np

    from saliencekit import metrics
    from saliencekit.commons import plot, synthetic
    from saliencekit.commons.progress import Progress

    train, epochs, path = demo_settings(args)
    if args.model == "cnn":
        what = "a small CNN"
        train_model = functools.partial(train_demo_model, args.seed, train, epochs)
    else:
        what = f"a tiny ViT ({VIT_PATCH}x{VIT_PATCH} patches, 2 blocks)"

        def train_model(verbose):
            data = synthetic.shapes(train, size=DEMO_SIZE, seed=args.seed + 1)
            return fit_demo(vit_model(args.seed), data.images, data.labels, epochs, verbose)

    model = cached_model(args, path, lambda verbose: train_model(verbose=verbose),
                         f"{what} on {train} synthetic {DEMO_SIZE}x{DEMO_SIZE} images of 4 "
                         f"shapes on cluttered backgrounds ({epochs} epochs)")
    held_out = synthetic.shapes(max(args.samples, 500), size=DEMO_SIZE, seed=args.seed + 10_000)
    images, labels, masks = held_out_set(model, held_out.images, held_out, args.samples,
                                         "images", 4, len(factories))
    progress = Progress(0 if args.quiet else 1, len(factories), unit="method")
    scored = not args.no_metrics
    if scored:
        # faithfulness on the model itself (deleting / inserting the map's top pixels, 10
        # steps to a black image) and a sanity check (Adebayo et al.: how much the map still
        # looks like itself once the top quarter of the layers is randomised, on 16 images)
        deletion = metrics.Deletion(model, images, labels, batch_size=256, steps=10)
        insertion = metrics.Insertion(model, images, labels, batch_size=256, steps=10)
        randomisation = metrics.ModelRandomizationMetric(model, images[:16], labels[:16])
    results, rows, curves = {}, [], {}
    for name, factory in factories.items():
        begin = time.perf_counter()
        explainer = factory(model)
        maps = explainer.explain(images, labels, verbose=0).numpy()
        seconds = time.perf_counter() - begin
        results[name] = maps
        mass = metrics.relevance_mass(maps, masks)  # NaN for a map with no positive part
        row = [name, metrics.pointing_game(maps, masks).mean(),
               np.nanmean(mass) if np.isfinite(mass).any() else np.nan]
        if scored:
            curves[name] = (deletion.detailed_evaluate(maps, verbose=0),
                            insertion.detailed_evaluate(maps, verbose=0))
            row += [_area(curves[name][0]), _area(curves[name][1]),
                    randomisation.evaluate(explainer)]
        rows.append((*row, seconds))
        progress.update(len(images))
    progress.close()

    shown = min(len(images), args.rows)
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot.plot_attributions(
        images[:shown], {name: maps[:shown] for name, maps in results.items()},
        row_titles=[synthetic.CLASS_NAMES[label] for label in labels[:shown]],
        path=figure,
    )
    curves_figure = figure.with_name(figure.stem + "-curves.png")
    if scored:
        plot_curves(curves, curves_figure)
    random_maps = np.random.default_rng(args.seed).random(next(iter(results.values())).shape)
    area = masks.mean()
    print()
    if scored:
        print(f"{'method':<24}{'pointing':>9}{'mass':>7}{'deletion':>10}{'insertion':>10}"
              f"{'random.':>9}{'seconds':>9}")
        for name, hit, mass, low, high, sanity, seconds in rows:
            print(f"{name:<24}{hit:>9.0%}{mass:>7.2f}{low:>10.2f}{high:>10.2f}"
                  f"{sanity:>9.2f}{seconds:>9.2f}")
        print(f"{'(a random map)':<24}{area:>9.0%}{area:>7.2f}"
              f"{_area(deletion.detailed_evaluate(random_maps, verbose=0)):>10.2f}"
              f"{_area(insertion.detailed_evaluate(random_maps, verbose=0)):>10.2f}")
    else:
        print(f"{'method':<24}{'pointing':>9}{'mass':>7}{'seconds':>9}")
        for name, hit, mass, seconds in rows:
            print(f"{name:<24}{hit:>9.0%}{mass:>7.2f}{seconds:>9.2f}")
        print(f"{'(a random map)':<24}{area:>9.0%}{area:>7.2f}")
    print()
    print("pointing: the map's maximum is inside the shape; mass: the share of positive")
    if scored:
        print("relevance on the shape's pixels; deletion / insertion: the area under the class")
        print("score (logit) as the map's top pixels are blacked out / put back on black, 10 "
              "steps")
        print("(lower / higher is more faithful); random.: rank correlation of the map with "
              "the")
        print("map of a copy of the model whose top layers are randomised (lower passes the")
        print("sanity check). Seconds include compiling each kernel.")
        print(f"Wrote {figure} ({shown} rows: the image, then each method's map) and")
        print(f"{curves_figure} (mean deletion and insertion curves).")
    else:
        print("relevance on the shape's pixels. Seconds include compiling each kernel.")
        print(f"Wrote {figure} ({shown} rows: the image, then each method's map).")
    return 0


def run_text_demo(args, figure: Path, factories: dict) -> int:
    import numpy as np

    from saliencekit import metrics
    from saliencekit.commons import plot, synthetic
    from saliencekit.commons.progress import Progress

    train, epochs, path = demo_settings(args)
    data = synthetic.keywords(train, length=TEXT_LENGTH, classes=TEXT_CLASSES,
                              seed=args.seed + 1, distractor_words=TEXT_WORDS)
    vocabulary = (*data.vocabulary, "[MASK]")  # TEXT_MASK_ID
    model = cached_model(
        args, path, lambda verbose: fit_demo(text_model(args.seed, len(vocabulary)),
                                             data.ids, data.labels, epochs, verbose),
        f"a small transformer (2 blocks) on {train} synthetic sequences of up to "
        f"{TEXT_LENGTH} tokens, whose class is one of {TEXT_CLASSES} keywords among "
        f"{TEXT_WORDS} distractor words ({epochs} epochs)")
    held_out = synthetic.keywords(max(args.samples, 500), length=TEXT_LENGTH,
                                  classes=TEXT_CLASSES, seed=args.seed + 10_000,
                                  distractor_words=TEXT_WORDS)
    ids, labels, masks = held_out_set(model, held_out.ids, held_out, args.samples,
                                      "sequences", TEXT_CLASSES, len(factories))
    progress = Progress(0 if args.quiet else 1, len(factories), unit="method")
    results, rows = {}, []
    for name, factory in factories.items():
        begin = time.perf_counter()
        maps = factory(model).explain(ids, labels, verbose=0).numpy()
        seconds = time.perf_counter() - begin
        results[name] = maps
        hits = metrics.pointing_game(maps[:, None], masks[:, None]).mean()
        mass = metrics.relevance_mass(maps[:, None], masks[:, None])
        rows.append((name, hits, np.nanmean(mass) if np.isfinite(mass).any() else np.nan,
                     seconds))
        progress.update(len(ids))
    progress.close()

    shown = min(len(ids), args.rows)
    words = [[vocabulary[i] for i in row if i != 0] for row in ids[:shown]]
    figure.parent.mkdir(parents=True, exist_ok=True)
    page = figure.with_suffix(".html")
    atomic_text(page, text_page(words, labels[:shown], {
        name: [m[:len(w)] for m, w in zip(maps, words)] for name, maps in results.items()}))
    plot.plot_text(words[0], {name: maps[0, :len(words[0])]
                              for name, maps in results.items()}).savefig(figure)
    lengths = (ids != 0).sum(axis=1)
    chance = float(np.mean(1.0 / lengths))
    print()
    print(f"{'method':<24}{'pointing':>9}{'mass':>7}{'seconds':>9}")
    for name, hit, mass, seconds in rows:
        print(f"{name:<24}{hit:>9.0%}{mass:>7.2f}{seconds:>9.2f}")
    print(f"{'(a random token)':<24}{chance:>9.0%}{chance:>7.2f}")
    print()
    print("pointing: the map's maximum is on the keyword; mass: the share of positive")
    print("relevance on the keyword. Seconds include compiling each kernel.")
    print(f"Wrote {page} ({shown} sequences, each method's map as coloured tokens) and")
    print(f"{figure} (the first sequence).")
    return 0


def text_page(words: list, labels, maps: dict) -> str:
    """An HTML page: each sequence's tokens coloured by each method's map
    (:func:`saliencekit.commons.plot.text_html`)."""
    from saliencekit.commons.plot import text_html

    parts = []
    for i, (tokens, label) in enumerate(zip(words, labels)):
        parts.append(f"<h2>sequence {i}: class {int(label)} (keyword key{int(label)})</h2>"
                     "\n<table>")
        for name, rows in maps.items():
            parts.append(f"<tr><th>{html.escape(name)}</th>"
                         f"<td>{text_html(tokens, rows[i])}</td></tr>")
        parts.append("</table>")
    body = "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>saliencekit demo: keywords</title>
<style>
body {{ font-family: sans-serif; }}
th {{ text-align: right; padding-right: 8px; font-weight: normal; }}
td {{ font-family: monospace; }}
</style>
</head>
<body>
<h1>Per-token maps on the keyword task (red: positive, blue: negative)</h1>
{body}
</body>
</html>
"""


def _area(curves) -> float:
    """The mean area under per-input curves (:func:`saliencekit.metrics.curve_area`)."""
    from saliencekit import metrics

    return float(metrics.curve_area(curves).mean())


def plot_curves(curves: dict, path: Path) -> None:
    """Mean deletion and insertion curves of a few methods (matplotlib, no pyplot)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    shown = [n for n in ("Saliency", "IntegratedGradients", "GradCAM", "Occlusion", "Rise",
                         "KernelShap") if n in curves] or list(curves)[:6]
    for column, (title, index) in enumerate((("deletion", 0), ("insertion", 1))):
        axes = figure.add_subplot(1, 2, column + 1)
        for name in shown:
            mean = np.asarray(curves[name][index]).mean(axis=0)
            axes.plot(np.linspace(0, 1, len(mean)), mean, label=name)
        axes.set_title(title)
        axes.set_xlabel("share of pixels " + ("removed" if index == 0 else "restored"))
        axes.set_ylabel("class score (logit)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


# -- explain: the photos ----------------------------------------------------------------------
def image_files(sources: list[str], exclude: Path | None = None) -> list[tuple[Path, str]]:
    """``(path, name)`` of every png/jpg image: the files given, and those under the
    directories given (recursively, hidden ones and ``exclude`` skipped, sorted); ``name``
    is the path relative to its directory (the file's name for a file given)."""
    files: list[tuple[Path, str]] = []
    skip = exclude.resolve() if exclude is not None else None
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and (skip is None or Path(root, d).resolve() != skip))
                found += [Path(root, n) for n in names if not n.startswith(".")
                          and Path(n).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise UsageError(f"--images: expected png or jpg files in {str(path)!r}, "
                                 "got none.")
            files += [(f, f.relative_to(path).as_posix()) for f in sorted(found)]
        elif path.is_file():
            files.append((path, path.name))
        else:
            raise UsageError(f"--images: expected an image file or a directory, got {source!r}"
                             " (no such file).")
    for path, _ in files:  # cheap checks first: the magic bytes of PNG and JPEG
        with open(path, "rb") as stream:
            head = stream.read(8)
        if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
            raise UsageError(f"--images: expected png or jpg images, got {str(path)!r}, which "
                             "is neither.")
    return files


def parse_pixel_range(text: str) -> tuple[float, float]:
    """``"-1,1"`` -> ``(-1.0, 1.0)``."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH (e.g. 0,1, 0,255 or -1,1), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH, got {text!r}")
    return low, high


def parse_size(text: str) -> tuple[int, int]:
    """``"224,224"`` or ``"224x224"`` -> ``(224, 224)`` (height, width)."""
    parts = re.split(r"[,x]", text)
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH >= 1, got {text!r}")
    return height, width


def preprocess_input(images, mode: str):
    """``keras.applications.imagenet_utils.preprocess_input(images, mode=mode)`` for
    channels-last float RGB images in [0, 255], in TensorFlow (it runs in the tf.data
    pipeline): ``tf`` scales to [-1, 1], ``torch`` to ImageNet's mean and std, ``caffe``
    flips RGB to BGR and subtracts ImageNet's BGR mean; ``none`` returns them as they are."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "torch":
        return (images / 255.0 - tf.constant(TORCH_MEAN)) / tf.constant(TORCH_STD)
    if mode == "caffe":
        return images[..., ::-1] - tf.constant(CAFFE_MEAN)
    return images


def pixel_transform(pixel_range: tuple[float, float] | None, preprocess: str) -> Callable:
    """The function from decoded pixels in [0, 255] to what the model takes."""
    if preprocess != "none":
        return lambda images: preprocess_input(images, preprocess)
    low, high = pixel_range or (0.0, 1.0)
    return lambda images: low + (high - low) / 255.0 * images


def decode_image(path, channels: int):
    """A png/jpg file's pixels, uint8 ``(H, W, channels)``."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                               expand_animations=False)
    image.set_shape((None, None, channels))
    return image


def load_image(path, size: tuple[int, int], channels: int, transform: Callable):
    """A photo as the model takes it: decoded, resized to ``size`` (bilinear, as Keras'
    ``image_dataset_from_directory``: the aspect ratio is not kept) and transformed."""
    import tensorflow as tf

    image = tf.image.resize(tf.cast(decode_image(path, channels), tf.float32), size)
    return transform(image)


def image_dataset(files: list[Path], size, channels: int, transform: Callable,
                  batch_size: int, targets=None):
    """A ``tf.data`` pipeline of the photos: the file list, read, decoded and resized in
    parallel, batched (``(x, y)`` with ``targets``). ``explain_to`` prefetches it; memory is
    a bounded number of batches whatever the number of files."""
    import tensorflow as tf

    paths = tf.data.Dataset.from_tensor_slices([str(path) for path in files])
    images = paths.map(lambda path: load_image(path, size, channels, transform),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if targets is not None:
        images = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(targets)))
    return images.batch(batch_size).with_options(pipeline_options())


def pipeline_options():
    """tf.data threads of their own: in TensorFlow's shared pool the decoding threads and
    the model's ops took turns badly, measured 2-3x slower on 2 cores than either alone."""
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = os.cpu_count() or 1
    options.threading.max_intra_op_parallelism = 1
    return options


def first_undecodable(files: list[Path], start: int = 0) -> Path | None:
    """The first file from ``start`` that TensorFlow cannot decode (an error's culprit)."""
    import tensorflow as tf

    for path in files[start:]:
        try:
            decode_image(str(path), 3)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            return path
    return None


# -- explain: the labels ----------------------------------------------------------------------
def parse_labels(text: str) -> tuple[str, Any]:
    """``--labels``: ``("predicted", None)``, ``("id", 3)`` or ``("file", path)``."""
    if text.strip().casefold() == "predicted":
        return "predicted", None
    if re.fullmatch(r"\s*-?\d+\s*", text):
        value = int(text)
        if value < 0:
            raise UsageError(f"--labels: expected a class id >= 0, got {value}.")
        return "id", value
    path = Path(text)
    if path.is_file():
        return "file", path
    raise UsageError(f"--labels: expected 'predicted', a class id or a CSV file of rows "
                     f"'file name, class id', got {text!r} (no such file).")


def read_label_file(path: Path) -> dict[str, int]:
    """A CSV of rows ``file name, class id`` (a header row, blank lines and lines starting
    with ``#`` are skipped) -> ``{file name: class id}``."""
    table: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.reader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"--labels: expected a readable CSV file, got {str(path)!r} "
                         f"({error}).") from None
    first = True
    for number, row in enumerate(rows, 1):
        row = [cell.strip() for cell in row]
        if not any(row) or row[0].startswith("#"):
            continue
        if first and len(row) >= 2 and not re.fullmatch(r"-?\d+", row[1]):
            first = False
            continue  # a header
        first = False
        if len(row) < 2 or not re.fullmatch(r"\d+", row[1]) or not row[0]:
            raise UsageError(f"--labels: expected rows 'file name, class id >= 0' in "
                             f"{str(path)!r}, got line {number}: {','.join(row)!r}.")
        name = row[0].replace("\\", "/")
        if table.get(name, int(row[1])) != int(row[1]):
            raise UsageError(f"--labels: expected one class id per file in {str(path)!r}, "
                             f"got {table[name]} and {row[1]} for {name!r}.")
        table[name] = int(row[1])
    if not table:
        raise UsageError(f"--labels: expected rows 'file name, class id' in {str(path)!r}, "
                         "got none.")
    return table


def match_labels(table: dict[str, int], files: list[tuple[Path, str]], source: Path) -> list[int]:
    """Each image's class id: its row in ``table`` by the path as given, its path relative
    to its --images directory, or its bare file name when no other image has that name."""
    names = Counter(path.name for path, _ in files)
    ids, missing = [], []
    for path, relative in files:
        for key in (path.as_posix(), relative):
            if key in table:
                ids.append(table[key])
                break
        else:
            if path.name not in table:
                missing.append(relative)
                continue
            if names[path.name] > 1:
                same = [str(p) for p, _ in files if p.name == path.name]
                raise UsageError(
                    f"--labels: expected a row per image in {str(source)!r}, got "
                    f"{path.name!r}, which names {len(same)} images ({', '.join(same[:3])}): "
                    "write their paths relative to their --images directory.")
            ids.append(table[path.name])
    if missing:
        more = f" and {len(missing) - 1} others" if len(missing) > 1 else ""
        raise UsageError(f"--labels: expected a class id for every image in {str(source)!r}, "
                         f"got none for {missing[0]!r}{more}.")
    return ids


def labels_setting(kind: str, value, ids: list[int] | None) -> str:
    """What ``--labels`` was, as recorded in run.json: ``predicted``, the id, or the CSV's
    name with a digest of the ids it gave (an edited file is noticed)."""
    if kind == "file":
        import hashlib

        digest = hashlib.blake2b(",".join(map(str, ids)).encode(), digest_size=8).hexdigest()
        return f"{Path(value).name} (ids {digest})"
    return "predicted" if kind == "predicted" else str(value)


# -- explain: the output directory ------------------------------------------------------------
def overlay_name(row: int, path: Path, count: int) -> str:
    """Unique, and says which input it is: ``00003_a.jpg.png`` is row 3 of files.txt."""
    width = max(5, len(str(count - 1)))
    safe = re.sub(r"[^\w.+-]", "_", path.name)
    return f"{row:0{width}d}_{safe}.png"


def shard_size_for(count: int, batch_size: int, map_bytes: int) -> int:
    """Maps per shard: whole batches, at most :data:`SHARD_BYTES` of maps (memory), and
    small enough for about :data:`SHARDS_PER_RUN` shards (overlays and progress move every
    ~1% of a long run). A function of the command's own settings, so a re-run resumes."""
    by_memory = max(1, SHARD_BYTES // max(1, map_bytes * batch_size))
    by_progress = max(1, math.ceil(count / SHARDS_PER_RUN / batch_size))
    return batch_size * min(by_memory, by_progress)


def atomic_text(path: Path, text: str) -> None:
    from saliencekit.commons import sink

    sink.atomic_write(path, lambda f: f.write(text.encode()))


def check_output(out: Path, settings: dict, files: list[Path]) -> bool:
    """Whether ``out`` holds a run to resume; refuse a foreign directory or a run of other
    settings or images, naming the option (the store checks the explainer and the model)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: expected a directory, got {str(out)!r}, an existing file.")
    if not out.is_dir():
        return False
    if not (out / MANIFEST).exists():
        others = [p.name for p in out.iterdir()]
        if others:
            raise UsageError(f"--out: expected a new or empty directory, or one written by "
                             f"explain, got {str(out)!r} holding {len(others)} other files "
                             f"(e.g. {sorted(others)[0]!r}).")
        return False
    hint = f"Pass another --out, or delete {str(out)!r} to start over."
    if (out / RUN).exists():
        try:
            before = json.loads((out / RUN).read_text())
        except (OSError, ValueError):
            before = {}
        for key, option in (("method", "--method"), ("labels", "--labels"),
                            ("preprocess", "--preprocess"), ("pixel_range", "--pixel-range"),
                            ("image_size", "--image-size"), ("operator", "--operator")):
            if before.get(key) != settings[key]:
                raise UsageError(f"{option}: expected {before.get(key)!r}, as in the run that "
                                 f"wrote {str(out)!r}, got {settings[key]!r}. {hint}")
    if (out / FILES).exists():
        written = (out / FILES).read_text().splitlines()
        given = [str(path) for path in files]
        if written != given:
            row = next((i for i, (a, b) in enumerate(zip(written, given)) if a != b),
                       min(len(written), len(given)))
            raise UsageError(f"--images: expected the {len(written)} images of the run that "
                             f"wrote {str(out)!r} ({FILES}), got {len(given)} images, "
                             f"different from row {row} on. {hint}")
    return True


class OutputWriter:
    """Writes what the command line adds to the store: files.txt, classes.txt and run.json
    once the store's manifest exists (the store wants a new directory empty), and the
    overlays of each complete shard, in a thread, while ``explain_to`` computes the next."""

    def __init__(self, out: Path, files: list[Path], classes: list[str], extra: dict[str, str],
                 draw: bool = True):
        self.out, self.files, self.classes, self.extra = out, files, classes, extra
        self.draw = draw
        self.overlays = out / OVERLAYS
        self.rendered: set[str] = set()  # maps files whose overlays are written
        self.rows = 0  # their rows
        self.progress = None  # a Progress over the shards, updated as they complete
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.written = 0

    def write_extra(self) -> None:
        """The CLI's files, once the store's manifest exists."""
        if self.extra and (self.out / MANIFEST).exists():
            for name, text in self.extra.items():
                atomic_text(self.out / name, text)
            self.extra = {}

    def sweep(self) -> int:
        """Overlays of the complete shards not yet rendered; returns how many shards."""
        import numpy as np

        from saliencekit.commons import sink

        self.write_extra()
        if not (self.out / MANIFEST).exists():
            return 0
        done = 0
        for maps_file, index_file in sink.MapStore(self.out).shards:
            if maps_file.name in self.rendered:
                continue
            rows = np.load(index_file)
            targets = [self.overlays / overlay_name(row, self.files[row], len(self.files))
                       for row in rows.tolist()]
            missing = [i for i, target in enumerate(targets)
                       if self.draw and not _whole(target)]
            if missing:  # those of a resumed run's shards are there
                self.overlays.mkdir(exist_ok=True)
                maps = np.load(maps_file)
                paths = [str(self.files[rows[i]]) for i in missing]
                for i, png in zip(missing, self.renderer(paths, maps[missing])):
                    write_overlay(targets[i], png)
                    self.written += 1
            self.rendered.add(maps_file.name)
            self.rows += len(rows)
            done += 1
            if self.progress is not None:
                self.progress.update(len(rows))
        return done

    @functools.cached_property
    def renderer(self) -> OverlayRenderer:
        return OverlayRenderer()

    def start(self) -> None:
        def loop():
            try:
                while not self.stop.is_set():
                    if not self.sweep():
                        self.stop.wait(0.2)
                self.sweep()
            except BaseException as error:  # reported by finish()
                self.error = error

        self.thread = threading.Thread(target=loop, name="saliencekit-overlays", daemon=True)
        self.thread.start()

    def finish(self, completed: bool) -> None:
        """Stop the thread once it rendered every complete shard; when the run completed,
        raise the thread's error if it had one and end the progress."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if completed:
            if self.error is not None:
                raise self.error
            if self.progress is not None:
                self.progress.close()


def _whole(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def write_overlay(path: Path, png: bytes) -> None:
    """Under a temporary name, then renamed: a file with its final name is whole. Not
    flushed to disk (``fsync`` cost as much as drawing): an overlay is redrawn from the maps
    if a crash loses it, and resuming redraws an empty one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(png)
    os.replace(temporary, path)


class OverlayRenderer:
    """Overlays as :func:`saliencekit.commons.plot.overlay` draws them (min-max normalised
    map, jet, alpha 0.5; within one level of 255), at each photo's own size: the map
    resized to the photo, decoded, blended and encoded to PNG in one compiled TensorFlow
    function, run in parallel over a shard by tf.data (drawing in numpy took ~30 ms a
    photo, as long as explaining it)."""

    def __init__(self, cmap: str = "jet", alpha: float = 0.5, levels: int = 1024):
        import numpy as np
        import tensorflow as tf

        from saliencekit.commons import plot

        values = np.linspace(0.0, 1.0, levels)
        table = np.stack([np.interp(values, *zip(*points)) for points in plot.COLORMAPS[cmap]],
                         axis=-1)
        self.colours = tf.constant(table, tf.float32)
        self.alpha = alpha
        self.draw = tf.function(self._draw, input_signature=[
            tf.TensorSpec((), tf.string), tf.TensorSpec((None, None), tf.float32)])

    def _draw(self, path, heat):
        import tensorflow as tf

        photo = decode_image(path, 3)
        heat = tf.image.resize(heat[..., None], tf.shape(photo)[:2])[..., 0]
        low, high = tf.reduce_min(heat), tf.reduce_max(heat)
        scaled = tf.clip_by_value(tf.math.divide_no_nan(heat - low, high - low), 0.0, 1.0)
        levels = tf.shape(self.colours, out_type=tf.int64)[0]
        index = tf.cast(tf.round(scaled * tf.cast(levels - 1, tf.float32)), tf.int64)
        colours = tf.gather(self.colours, index)
        blended = (1.0 - self.alpha) * tf.cast(photo, tf.float32) / 255.0 + self.alpha * colours
        pixels = tf.cast(tf.round(tf.clip_by_value(blended, 0.0, 1.0) * 255), tf.uint8)
        return tf.io.encode_png(pixels, compression=1)  # zlib's 6: 1.5x slower, as large

    def __call__(self, paths: list[str], maps) -> Iterator[bytes]:
        """PNG bytes of each photo's overlay, in order. ``maps``: ``(N, H, W, 1)`` (or
        ``(N, 1, H, W)`` for a channels_first model)."""
        import numpy as np
        import tensorflow as tf

        maps = np.asarray(maps, np.float32)
        maps = maps.reshape(len(maps), *[d for d in maps.shape[1:] if d != 1] or (1, 1))
        pngs = tf.data.Dataset.from_tensor_slices((paths, maps)).map(
            self.draw, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True).with_options(pipeline_options())
        for png in pngs:
            yield png.numpy()


def write_index(out: Path, files: list[Path], classes: list[str], title: str) -> None:
    """``index.html``: each photo beside its overlay, its file name and the explained class;
    photos and overlays referenced by relative paths (the folder can be moved with them)."""

    def link(path: Path) -> str:
        return html.escape(quote(Path(os.path.relpath(path, out)).as_posix()))

    rows = []
    for row, (path, label) in enumerate(zip(files, classes)):
        overlay = out / OVERLAYS / overlay_name(row, path, len(files))
        rows.append(
            f'<tr><td>{row}</td><td><img src="{link(path)}" alt="photo" loading="lazy"></td>'
            f'<td><img src="{link(overlay)}" alt="overlay" loading="lazy"></td>'
            f"<td>{html.escape(str(path))}</td><td>{html.escape(label)}</td></tr>")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; }}
td {{ vertical-align: top; padding: 4px; }}
img {{ max-width: 320px; max-height: 320px; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<table>
<thead><tr><th>row</th><th>image</th><th>overlay</th><th>file</th><th>class explained</th>
</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""
    atomic_text(out / INDEX, page)


# -- explain ----------------------------------------------------------------------------------
def run_explain(args) -> int:
    # cheap checks first, before TensorFlow starts or the model loads
    chain = resolve_method(args.method)
    name = method_name(chain)
    given = {argument: getattr(args, argument) for argument in OPTIONS}
    assigned = assign_options(chain, given)
    if args.preprocess != "none" and args.pixel_range is not None:
        raise UsageError(f"--pixel-range: expected no value with --preprocess "
                         f"{args.preprocess}, which sets the pixels' scale, got "
                         f"{','.join(f'{v:g}' for v in args.pixel_range)}.")
    labels_kind, labels_value = parse_labels(args.labels)
    out = Path(args.out)
    sources = args.images
    pairs = image_files(sources, exclude=out)
    files = [path for path, _ in pairs]
    ids = None
    if labels_kind == "file":
        ids = match_labels(read_label_file(labels_value), pairs, labels_value)
    elif labels_kind == "id":
        ids = [labels_value] * len(files)
    model_path = Path(args.model)
    if not model_path.exists():
        raise UsageError(f"--model: expected a saved Keras model (.keras or .h5), got "
                         f"{args.model!r} (no such file).")
    settings = {
        "version": RUN_VERSION,
        "method": name,
        "labels": labels_setting(labels_kind, labels_value, ids),
        "preprocess": args.preprocess,
        "pixel_range": list(args.pixel_range) if args.pixel_range else None,
        "image_size": list(args.image_size) if args.image_size else None,
        "operator": args.operator,
    }
    resuming = check_output(out, settings, files)

    start_tensorflow(args.verbose)
    import numpy as np
    import tensorflow as tf

    from saliencekit.commons import model as inspect_model
    from saliencekit.commons.progress import Progress

    existed = out.exists()
    try:
        # keras.models.load_model that also opens Keras 2 .h5 files with depthwise or
        # transposed convolutions (MobileNet, EfficientNet), which Keras 3 refuses
        model = inspect_model.load_model(model_path)
    except Exception as error:  # Keras raises many kinds for unreadable files
        raise UsageError(f"--model: expected a saved Keras model (.keras or .h5), got "
                         f"{args.model!r}, which Keras cannot load "
                         f"({' '.join(str(error).split())[:300]}).") from None
    shape = inspect_model.sample_input_shape(model)
    if shape is None or len(shape) != 3:
        raise UsageError(f"--model: expected a model of images, inputs (N, H, W, C), got "
                         f"a model with inputs {None if shape is None else (None, *shape)}.")
    channels = shape[2] or 3
    if args.preprocess not in ("none",) and channels != 3:
        raise UsageError(f"--preprocess: expected 'none' for a model of {channels}-channel "
                         f"images ({args.preprocess} is for RGB), got {args.preprocess!r}.")
    size = tuple(shape[:2])
    if None in size:  # any size: --image-size, else the first image's
        if args.image_size:
            size = args.image_size
        else:
            try:
                size = tuple(decode_image(str(files[0]), channels).shape[:2])
            except tf.errors.OpError:
                raise UsageError(f"--images: expected readable png or jpg images, got "
                                 f"{str(files[0])!r}, which cannot be decoded.") from None
    elif args.image_size and tuple(args.image_size) != size:
        raise UsageError(f"--image-size: expected {size[0]},{size[1]} (the model's input "
                         f"size) or nothing, got {args.image_size[0]},{args.image_size[1]}.")
    verbose = 0 if args.quiet else 1
    explainer = build_explainer(chain, assigned, model, batch_size=args.batch_size,
                                operator=OPERATORS[args.operator])
    transform = pixel_transform(args.pixel_range, args.preprocess)
    classes_file = out / CLASSES
    print(f"{name}: {len(files)} images, resized to {size[0]}x{size[1]}, into {out}"
          f"{' (resuming)' if resuming else ''}.", flush=True)
    begin = time.perf_counter()  # the run's time: predicting, explaining, overlays
    try:
        if ids is None and args.operator == "classification" and _single_output(model):
            if resuming and classes_file.exists():  # predicted by the run being resumed
                ids = [int(line) for line in classes_file.read_text().split()]
            if ids is None or len(ids) != len(files):
                print(f"Predicting the class of {len(files)} images...", flush=True)
                ids = predict_classes(model, image_dataset(
                    files, size, channels, transform, args.batch_size), verbose)
        classes = ([str(i) for i in ids] if ids is not None
                   else ["-"] * len(files))  # not one class: the operator's own target
        targets = None if ids is None else np.asarray(ids, np.int64)
        dataset = image_dataset(files, size, channels, transform, args.batch_size, targets)
        shard_size = shard_size_for(len(files), args.batch_size, 4 * size[0] * size[1])
        extra = {FILES: "".join(f"{path}\n" for path in files),
                 RUN: json.dumps(settings, indent=1) + "\n"}
        if ids is not None:
            extra[CLASSES] = "".join(f"{i}\n" for i in ids)
        shards = -(-len(files) // shard_size)
        writer = OutputWriter(out, files, classes, extra, draw=not args.no_overlays)
        writer.sweep()  # a resumed run's complete shards: their missing overlays
        done_before = len(writer.rendered)
        explained = len(files) - writer.rows
        writer.progress = Progress(verbose, shards - done_before, unit="shard")
        if explained:
            print(f"Explaining {explained} images, {args.batch_size} at a time, maps written "
                  f"every {shard_size} images...", flush=True)
        writer.start()
        try:
            explainer.explain_to(out, dataset, verbose=0, shard_size=shard_size)
        except BaseException:
            writer.finish(completed=False)
            if not existed:
                _remove_if_empty(out)
            raise
        writer.finish(completed=True)
        seconds = time.perf_counter() - begin
    except tf.errors.OpError:
        bad = first_undecodable(files)
        if bad is not None:
            raise UsageError(f"--images: expected readable png or jpg images, got "
                             f"{str(bad)!r}, which cannot be decoded.") from None
        raise
    if not args.no_overlays:
        write_index(out, files, classes, f"{name} on {model_path.name}: {len(files)} images")
    done = (f", {len(files) - explained} of {len(files)} were done before"
            if explained < len(files) else "")
    rate = f" in {seconds:.1f} s ({explained / max(seconds, 1e-9):.1f} images/s)" \
        if explained else ""
    drawn = ("" if args.no_overlays else
             f", {writer.written} overlays to {out / OVERLAYS} and {out / INDEX}")
    print(f"{name}: explained {explained} images{rate}{done}; wrote the maps to {out} "
          f"(MapStore){drawn}.")
    return 0


def _single_output(model) -> bool:
    """A model with one output of class scores ``(N, C)``: its predicted class is shown."""
    outputs = getattr(model, "outputs", None) or []
    return len(outputs) == 1 and len(outputs[0].shape) == 2


def predict_classes(model, dataset, verbose) -> list[int]:
    """The predicted class (argmax of the model's output) of every image, batch by batch:
    memory holds the ids, not the outputs."""
    import tensorflow as tf

    from saliencekit.commons.progress import Progress

    spec = dataset.element_spec

    @tf.function(input_signature=[tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)])
    def predict(images):  # one trace: the last, short batch too
        outputs = model(images, training=False)
        outputs = tf.nest.flatten(outputs)[0]
        return tf.argmax(outputs, axis=-1)

    batches = int(dataset.cardinality())
    progress = Progress(verbose, batches if batches >= 0 else None)
    ids: list[int] = []
    for images in dataset.prefetch(2):  # decoding overlaps the model, as in explain_to
        ids += predict(images).numpy().tolist()
        progress.update(int(images.shape[0]))
    progress.close()
    return ids


def _remove_if_empty(out: Path) -> None:
    """After a failed first run: remove the directory it created if no shard completed."""
    if out.is_dir() and not any(p.name.startswith("maps-") for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


# -- the command line -------------------------------------------------------------------------
class _Formatter(argparse.HelpFormatter):
    """Help text wrapped to the terminal (at most 100 columns), options aligned."""

    def __init__(self, prog):
        width = min(100, shutil.get_terminal_size().columns)
        super().__init__(prog, max_help_position=30, width=width)


class _RawFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: the module's docstring as written."""


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines, warnings as Python prints them "
                        "and tracebacks")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar or progress lines")

    main = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                   formatter_class=_RawFormatter)
    commands = main.add_subparsers(dest="command", required=True, metavar="{demo,explain}")

    demo = commands.add_parser(
        "demo", parents=[common], formatter_class=_Formatter,
        help="train a small CNN on synthetic shapes and explain it with every method",
        description="Train a small CNN on synthetic shapes (cached) and explain held-out "
        "images with every method; print scores, draw a figure. --model vit: a tiny vision "
        "transformer instead; --model text: a small transformer on a synthetic keyword "
        "task, with per-token maps (an HTML page and a figure).")
    demo.add_argument("--model", default="cnn", choices=list(DEMO_MODELS),
                      help="what is trained and explained: cnn (default), vit or text")
    demo.add_argument("--out", default="saliencekit-demo", metavar="DIR_OR_PNG",
                      help="a directory (the figure is demo.png in it) or the figure's path "
                      "(.png, .pdf, .svg); default saliencekit-demo")
    demo.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    demo.add_argument("--samples", type=_positive, default=64,
                      help="held-out images explained and scored (default 64)")
    demo.add_argument("--rows", type=_positive, default=6,
                      help="images shown in the figure (default 6)")
    demo.add_argument("--train", type=_positive, default=None,
                      help="training images or sequences (default 3000; 2000 for text)")
    demo.add_argument("--epochs", type=_positive, default=None,
                      help="default 5 (cnn), 10 (vit), 8 (text)")
    demo.add_argument("--retrain", action="store_true", help="ignore the cached model")
    demo.add_argument("--fast", action="store_true", help="fewer samples per noisy method")
    demo.add_argument("--methods", metavar="A,B", default=None,
                      help="run only these methods (names as in the table)")
    demo.add_argument("--no-metrics", action="store_true",
                      help="pointing game and mass only: no deletion, insertion or "
                      "randomisation scores (and no curves figure)")
    demo.set_defaults(run=run_demo)

    explain = commands.add_parser(
        "explain", parents=[common], formatter_class=_Formatter,
        help="explain your photos with your saved model",
        description="Explain png/jpg photos with a saved Keras model. Options a method does "
        "not take are refused, not ignored.",
        epilog="preprocessing of keras.applications models: --preprocess tf for MobileNet, "
        "MobileNetV2, Xception, InceptionV3, InceptionResNetV2, ResNet50V2, NASNet; caffe for "
        "ResNet50 and VGG16/19; torch for DenseNet; none --pixel-range 0,255 for "
        "EfficientNet(V2), ConvNeXt, MobileNetV3 (their preprocessing is inside the "
        "model). Pass --output-layer logits for models ending with a softmax.")
    explain.add_argument("--model", required=True, metavar="FILE",
                         help="a saved Keras model (.keras or .h5)")
    explain.add_argument("--images", required=True, nargs="+", metavar="PATH",
                         help="png/jpg files or directories of them (read recursively)")
    explain.add_argument("--method", required=True, metavar="NAME",
                         help=f"{', '.join(METHODS)}; or Smoothed(NAME), TTA(NAME). Case and "
                         "- or _ do not matter; gradcam++ is GradCAMPP, sobol and hsic the "
                         "last two")
    explain.add_argument("--labels", default="predicted", metavar="predicted|ID|CSV",
                         help="the class explained: 'predicted' (the model's, default), one "
                         "class id for every image, or a CSV file of rows 'file name, class "
                         "id' (names relative to their --images directory)")
    explain.add_argument("--operator", default="classification", choices=list(OPERATORS),
                         help="what is explained (default classification)")
    explain.add_argument("--preprocess", default="none", choices=PREPROCESS,
                         help="keras.applications preprocessing of pixels in [0, 255]: tf "
                         "to [-1, 1], torch ImageNet mean/std, caffe BGR minus ImageNet "
                         "mean (default none)")
    explain.add_argument("--pixel-range", type=parse_pixel_range, default=None,
                         metavar="LOW,HIGH",
                         help="the range the model takes pixels in, without --preprocess: "
                         "0,1 (default), 0,255, -1,1, ...")
    explain.add_argument("--image-size", type=parse_size, default=None, metavar="H,W",
                         help="the size photos are resized to, for a model of any input size "
                         "(default: the first photo's)")
    explain.add_argument("--output-layer", metavar="NAME",
                         help="explain this layer's output: 'logits' is the output before a "
                         "final softmax or sigmoid (default: the model's output)")
    explain.add_argument("--conv-layer", metavar="NAME",
                         help="CAM methods: the layer whose activations are weighed (default: "
                         "the last spatial layer)")
    explain.add_argument("--nb-samples", type=_positive, metavar="N",
                         help="SmoothGrad, SquareGrad, VarGrad, Smoothed(...): noisy copies; "
                         "Rise, Lime, KernelShap: perturbed copies")
    explain.add_argument("--noise", type=_non_negative, metavar="SIGMA",
                         help="SmoothGrad, SquareGrad, VarGrad, Smoothed(...): noise, a "
                         "fraction of the input's range")
    explain.add_argument("--seed", type=int, metavar="N",
                         help="methods that draw noise or masks: the seed (default: fresh)")
    explain.add_argument("--grid-size", type=_positive, metavar="CELLS",
                         help="Rise, Lime, KernelShap, Sobol, HSIC: cells per side of the mask "
                         "grid")
    explain.add_argument("--steps", type=_positive, metavar="N",
                         help="IntegratedGradients: steps of the path")
    explain.add_argument("--patch-size", type=_positive, metavar="PIXELS",
                         help="Occlusion: the occluding square's side")
    explain.add_argument("--patch-stride", type=_positive, metavar="PIXELS",
                         help="Occlusion: the step between patches (default: the patch size)")
    explain.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                         help="images explained at once; memory is bounded by it (default 32)")
    explain.add_argument("--no-overlays", action="store_true",
                         help="write the maps only: no overlays, no index.html")
    explain.add_argument("--out", default="saliencekit-maps", metavar="DIR",
                         help="the output directory; the same command again resumes it "
                         "(default saliencekit-maps)")
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


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


#: options whose value may start with "-" (argparse takes "-1,1" for an option)
_SIGNED_VALUES = ("--pixel-range", "--output-layer", "--conv-layer")


def _join_signed_values(argv: list[str]) -> list[str]:
    """``--pixel-range -1,1`` -> ``--pixel-range=-1,1``, which argparse reads as a value."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] in _SIGNED_VALUES and i + 1 < len(argv) and re.fullmatch(
                r"-[\d.]+(,-?[\d.]+)*", argv[i + 1]):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def _layer(value: str | None):
    """A layer option: an index if it is an integer, else a name."""
    if value is not None and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return value


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(_join_signed_values(list(sys.argv[1:] if argv is None else argv)))
    for argument in ("output_layer", "conv_layer"):
        if hasattr(args, argument):
            setattr(args, argument, _layer(getattr(args, argument)))
    command = f"{cli.prog} {args.command}"

    def error(text: str, status: int = 2) -> int:
        print(f"{command}: error: {text}", file=sys.stderr)
        return status

    try:
        with one_line_warnings(args.command, args.verbose):
            return args.run(args)
    except UsageError as problem:
        return error(" ".join(str(problem).split()))
    except (ValueError, TypeError, ImportError) as problem:  # the library's checks
        if args.verbose:
            raise
        text = cli_text(str(problem), getattr(args, "method", None))
        if not re.match(r"--?[\w-]+(\s\S+)?: ", text):  # not a check's message: a bug?
            text = f"{type(problem).__name__}: {text} (--verbose shows the traceback)"
        return error(text)
    except KeyboardInterrupt:
        print(f"{command}: interrupted. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    except Exception as problem:
        tf = sys.modules.get("tensorflow")
        if args.verbose or tf is None or not isinstance(problem, tf.errors.OpError):
            raise
        first = str(problem.message).strip().splitlines()[0] if problem.message else ""
        return error(f"TensorFlow failed: {type(problem).__name__}: {first} "
                     "(--verbose shows the traceback).", status=1)


if __name__ == "__main__":
    sys.exit(main())
