"""The command line, run as a user runs it: ``python -m saliencekit`` in a subprocess whose
stdout is a pipe (a log), without ``TF_CPP_MIN_LOG_LEVEL`` in its environment.

Runs that fail before TensorFlow starts take a fraction of a second; the others start
TensorFlow (a few seconds each), so they are few and their models and photos tiny."""

import html.parser
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import keras
import numpy as np
import pytest
import tensorflow as tf

from saliencekit import attributions
from saliencekit.__main__ import (
    ALIASES,
    METHODS,
    OPERATORS,
    OPTIONS,
    WRAPPERS,
    cli_text,
    load_image,
    main,
    method_factories,
    method_name,
    pixel_transform,
    preprocess_input,
    resolve_method,
)
from saliencekit.commons.metrics import pointing_game, relevance_mass
from saliencekit.commons.sink import MapStore
from saliencekit.operators import OPERATORS as LIBRARY_OPERATORS

SIZE = 16
CONTROL = re.compile(r"[\r\x08\x1b]")  # what a progress bar writes; a log must not hold it
TF_LOG = re.compile(r"absl::InitializeLog|^[IWEF]\d{4} |cuInit|oneDNN|cuda", re.MULTILINE)


def cli(*argv, cwd=None, timeout=300):
    """``python -m saliencekit ARGV`` with stdout and stderr pipes and no TF_CPP_* set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return subprocess.run([sys.executable, "-m", "saliencekit", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def checks_only(*argv):
    """``main(ARGV)`` in a fresh interpreter: exit status, stderr, and whether TensorFlow
    was imported (cheap checks must come before it)."""
    code = ("import sys\nfrom saliencekit.__main__ import main\n"
            f"status = main({[str(a) for a in argv]!r})\n"
            "print('tensorflow' in sys.modules, status)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split(), result.stderr
    imported, status = result.stdout.split()[-2:]
    return int(status), result.stderr, imported == "True"


def assert_clean(result):
    assert not CONTROL.search(result.stdout), result.stdout
    assert not TF_LOG.search(result.stderr), result.stderr


def one_line_error(result, starts):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"python -m saliencekit explain: error: {starts}"), lines[0]
    return lines[0]


def write_image(path, array):
    array = np.asarray(array, np.uint8)
    data = tf.io.encode_jpeg(array) if path.suffix == ".jpg" else tf.io.encode_png(array)
    tf.io.write_file(str(path), data)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photos of other sizes and aspect ratios than the model's, with names that collide:
    a.jpg and a.png, a.png in two folders."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    rng = np.random.default_rng(0)
    for name, shape in [("a.jpg", (40, 24)), ("a.png", (20, 30)), ("more/a.png", (16, 16)),
                        ("b.png", (18, 22)), ("c.png", (30, 18))]:
        write_image(folder / name, rng.integers(0, 256, (*shape, 3)))
    (folder / "notes.txt").write_text("not an image: skipped in a directory")
    return folder


def photo_list(folder):
    return [folder / n for n in ("a.jpg", "a.png", "b.png", "c.png", "more/a.png")]


@pytest.fixture(scope="module")
def softmax_cnn(tmp_path_factory):
    """A fixed-size CNN ending with a fused softmax, saved as .keras."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.Conv2D(8, 3, activation="relu", name="last_conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax", name="probabilities"),
    ])
    path = tmp_path_factory.mktemp("models") / "cnn.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def first_run(photos, softmax_cnn, tmp_path_factory):
    """GradCAM++ (as users type it) with --preprocess caffe: one run, checked by several
    tests. Batches of 2 and 5 photos: three shards, the last one short."""
    out = tmp_path_factory.mktemp("runs") / "out"
    result = cli("explain", "--model", softmax_cnn, "--images", photos, "--method", "gradcam++",
                 "--preprocess", "caffe", "--batch-size", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


# -- help, import, logs -----------------------------------------------------------------------
def test_help_answers_without_tensorflow_and_shows_choices():
    result = cli("explain", "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for shown in ("--preprocess {none,tf,torch,caffe}", "--pixel-range LOW,HIGH",
                  "0,1 (default), 0,255, -1,1", "--labels predicted|ID|CSV",
                  "--operator {classification,regression,segmentation}", "--output-layer",
                  "--conv-layer", "--nb-samples", "--noise", "--seed", "--steps",
                  "--patch-size", "--patch-stride", "gradcam++ is GradCAMPP"):
        assert shown in text, shown
    code = ("import sys\nfrom saliencekit.__main__ import main\ntry:\n"
            "    main(['explain', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules, 'numpy' in sys.modules)")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60).stdout.split()[-2:]
    assert imported == ["False", "False"]
    top = cli("--help", timeout=60)
    assert top.returncode == 0 and "demo" in top.stdout and "explain" in top.stdout


def test_import_saliencekit_is_cheap_and_loads_subpackages_on_use():
    code = ("import sys, saliencekit as sk\n"
            "before = 'tensorflow' in sys.modules\n"
            "sk.attributions.Saliency, sk.commons.data, sk.operators.OPERATORS\n"
            "print(before, sk.Tasks.CLASSIFICATION.value, 'attributions' in dir(sk))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split()[-3:] == ["False", "classification", "True"], result.stderr
    import saliencekit

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        saliencekit.nothing  # noqa: B018


# -- a full run -------------------------------------------------------------------------------
def test_explain_streams_the_folder_into_a_store_with_overlays_and_an_index(
        first_run, photos, softmax_cnn):
    out, result = first_run
    assert_clean(result)
    # the softmax warning, in the command line's words, once, on one line
    warning = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "Pass --output-layer logits" in warning[0]
    assert re.search(r"^3/3 shards \(100%\) - 5 images - [\d.]+ images/s", result.stdout,
                     re.MULTILINE)
    assert "GradCAMPP: explained 5 images" in result.stdout
    files = [Path(line) for line in (out / "files.txt").read_text().splitlines()]
    assert files == photo_list(photos)  # the text file skipped, sub-folders read
    store = MapStore(out)
    assert store.complete and len(store.shards) == 3
    maps = store.load()
    assert maps.shape == (5, SIZE, SIZE, 1)

    # the maps are the library's, on the photos as keras' preprocess_input gives them
    model = keras.models.load_model(softmax_cnn)
    raw = np.stack([load_image(str(f), (SIZE, SIZE), 3, lambda x: x).numpy() for f in files])
    images = keras.applications.imagenet_utils.preprocess_input(raw.copy(), mode="caffe")
    with pytest.warns(UserWarning, match="softmax"):
        explainer = attributions.GradCAMPP(model)
    classes = [int(c) for c in (out / "classes.txt").read_text().split()]
    np.testing.assert_allclose(maps, explainer(images, classes).numpy(), rtol=1e-4, atol=1e-6)
    scores = model.predict(images, verbose=0)  # the predicted classes (ties aside)
    top = scores.max(-1)
    assert all(scores[i, c] >= top[i] - 1e-6 for i, c in enumerate(classes)), (scores, classes)

    # one overlay per photo, never overwritten, at the photo's own size
    overlays = sorted((out / "overlays").iterdir())
    assert len(overlays) == 5
    for row, (overlay, photo) in enumerate(zip(overlays, files)):
        assert overlay.name.startswith(f"{row:05d}_{photo.name}")
        shot = tf.io.decode_image(tf.io.read_file(str(photo))).shape
        drawn = tf.io.decode_png(tf.io.read_file(str(overlay))).numpy()
        assert drawn.shape == (*shot[:2], 3) and drawn.std() > 0

    # index.html parses; every image it shows exists; each row names its photo and class
    class Page(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources, self.cells, self.stack = [], [], []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br", "link"):  # void elements: no end tag
                self.stack.append(tag)
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

        def handle_endtag(self, tag):
            assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing"

        def handle_data(self, data):
            if self.stack and self.stack[-1] == "td":
                self.cells.append(data)

    page = Page()
    page.feed((out / "index.html").read_text())
    page.close()
    assert page.stack == []
    assert len(page.sources) == 10
    for source in page.sources:
        assert not Path(unquote(source)).is_absolute()
        assert (out / unquote(source)).resolve().is_file(), source
    for row, (photo, label) in enumerate(zip(files, classes)):
        assert [str(row), str(photo), str(label)] == page.cells[3 * row:3 * row + 3]


def test_a_rerun_resumes_and_changed_settings_are_refused(first_run, photos, softmax_cnn,
                                                          tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    kept = out / "maps-00000.npy"
    stamp = kept.stat().st_mtime_ns
    (out / "maps-00001.npy").unlink()  # an interrupted run: a shard and an overlay missing
    (out / "overlays" / "00000_a.jpg.png").unlink()
    argv = ["explain", "--model", softmax_cnn, "--images", photos, "--method", "GradCAMPP",
            "--preprocess", "caffe", "--batch-size", 2, "--out", out]
    result = cli(*argv)
    assert result.returncode == 0, result.stderr
    assert "(resuming)" in result.stdout and "explained 2 images" in result.stdout
    assert "3 of 5 were done before" in result.stdout and "1 overlays" in result.stdout
    assert kept.stat().st_mtime_ns == stamp  # complete shards are kept
    np.testing.assert_allclose(MapStore(out).load(), MapStore(first_run[0]).load(), rtol=1e-6)
    assert (out / "overlays" / "00000_a.jpg.png").exists()

    # an explainer setting: the store's own error, naming --out
    changed = one_line_error(cli(*argv, "--output-layer", "logits"), "--out: expected a new")
    assert "output_layer='logits'" in changed and "Pass another --out" in changed
    # the command line's settings and images: refused before TensorFlow starts
    status, err, imported = checks_only(*argv, "--labels", "1")
    assert status == 2 and "--labels: expected 'predicted', as in the run" in err
    assert not imported
    status, err, _ = checks_only(*argv[:4], photos / "more", *argv[5:])
    assert status == 2 and "--images: expected the 5 images of the run" in err
    status, err, _ = checks_only(*argv[:-1], photos)  # a folder of other files
    assert status == 2 and "--out: expected a new or empty directory" in err


def test_options_reach_the_explainer(photos, softmax_cnn, tmp_path):
    """--pixel-range -1,1 as README writes it, --labels as a CSV file, --output-layer and a
    method's own options: the maps are the library's with the same settings."""
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\na.jpg,2\na.png,1\nb.png,0\nmore/a.png,2\nc.png,1\n")
    out = tmp_path / "out"
    result = cli("explain", "--model", softmax_cnn, "--images", photos, "--method",
                 "smooth_grad", "--nb-samples", 3, "--noise", 0.3, "--seed", 7,
                 "--output-layer", "logits", "--labels", labels, "--pixel-range", "-1,1",
                 "--batch-size", 4, "--out", out, "--quiet", "--no-overlays")
    assert result.returncode == 0, result.stderr
    assert_clean(result)
    assert not (out / "overlays").exists() and not (out / "index.html").exists()
    assert "warning" not in result.stderr  # the logits are explained
    assert not re.search(r"^\d+/\d+ (batches|shards)", result.stdout, re.MULTILINE)
    ids = [2, 1, 0, 1, 2]  # in files.txt's order: a.jpg, a.png, b.png, c.png, more/a.png
    assert (out / "classes.txt").read_text().split() == [str(i) for i in ids]
    files = photo_list(photos)
    images = np.stack([load_image(str(f), (SIZE, SIZE), 3, pixel_transform((-1, 1), "none"))
                       for f in files])
    assert images.min() >= -1 and images.max() <= 1 and images.min() < 0
    model = keras.models.load_model(softmax_cnn)
    explainer = attributions.SmoothGrad(model, nb_samples=3, noise=0.3, seed=7,
                                        output_layer="logits", batch_size=4)
    np.testing.assert_allclose(MapStore(out).load(), explainer(images, ids).numpy(),
                               rtol=1e-4, atol=1e-6)
    assert "output_layer='logits'" in MapStore(out).manifest["explainer"]


def test_a_keras_applications_model_saved_as_h5(photos, tmp_path):
    """Saved by Keras 2 (tf_keras), as most .h5 files are: Keras 3 alone cannot load it
    (its DepthwiseConv2D configs carry groups=1)."""
    tf_keras = pytest.importorskip("tf_keras")  # in the test extra
    model = tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              weights=None, classes=3)  # ends with a softmax
    path = tmp_path / "mobilenet.h5"
    model.save(path)
    out = tmp_path / "out"
    result = cli("explain", "--model", path, "--images", photos / "a.png", photos / "b.png",
                 "--method", "GradCAM", "--preprocess", "tf", "--output-layer", "logits",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert_clean(result)
    assert "warning" not in result.stderr
    assert MapStore(out).load().shape == (2, 32, 32, 1)
    assert len(list((out / "overlays").iterdir())) == 2


# -- errors -----------------------------------------------------------------------------------
def test_cheap_mistakes_are_one_line_errors_before_tensorflow_starts(photos, softmax_cnn,
                                                                     tmp_path):
    base = ["explain", "--model", softmax_cnn, "--images", photos, "--out", tmp_path / "out"]
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    ambiguous = tmp_path / "ambiguous.csv"
    ambiguous.write_text("a.jpg,1\na.png,1\nb.png,0\nc.png,0\n")
    short = tmp_path / "short.csv"
    short.write_text("a.jpg,1\n")
    cases = [
        (["--method", "gradcan"], "--method: expected one of Saliency, SmoothGrad"),
        (["--method", "gradcam+"], "--method: expected one of"),  # no punctuation stripped
        (["--method", "grad cam"], "--method: expected one of"),
        (["--method", "TTA(nothing)"], "--method: expected one of"),
        (["--method", "gradcam", "--steps", "4"],
         "--steps: expected no value with --method GradCAM"),
        (["--method", "occlusion", "--output-layer", "logits"],
         "--output-layer: expected no value with --method Occlusion"),
        (["--method", "saliency", "--labels", "cat"], "--labels: expected 'predicted', a class"),
        (["--method", "saliency", "--labels", ambiguous], "--labels: expected a row per image"),
        (["--method", "saliency", "--labels", short], "--labels: expected a class id for every"),
        (["--method", "saliency", "--preprocess", "tf", "--pixel-range", "0,255"],
         "--pixel-range: expected no value with --preprocess tf"),
    ]
    for extra, message in cases:
        status, err, imported = checks_only(*base, *extra)
        assert status == 2 and err.startswith(
            f"python -m saliencekit explain: error: {message}"), (extra, err)
        assert len(err.strip().splitlines()) == 1 and not imported, (extra, err)
    for argv, message in [
        (["--model", tmp_path / "missing.keras"], "--model: expected a saved Keras model"),
        (["--images", tmp_path / "nowhere.png"], "--images: expected an image file or"),
        (["--images", bad], "--images: expected png or jpg images, got"),
        (["--images", empty], "--images: expected png or jpg files in"),
    ]:
        changed = [*base, "--method", "saliency"]
        changed[changed.index(argv[0]) + 1] = argv[1]
        status, err, imported = checks_only(*changed)
        assert status == 2 and f"error: {message}" in err and not imported, err
    assert not (tmp_path / "out").exists()
    # argparse's own checks, with readable choices
    for argv in (["--pixel-range", "1,0"], ["--batch-size", "0"], ["--preprocess", "keras"]):
        result = cli(*base, "--method", "saliency", *argv, timeout=60)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_method_names_match_exactly_up_to_case_and_dashes():
    assert resolve_method("gradcam++") == ["GradCAMPP"]
    assert resolve_method("grad-cam-pp") == ["GradCAMPP"]
    assert resolve_method("GradCAMPP") == ["GradCAMPP"]
    assert resolve_method("Grad_CAM++") == ["GradCAMPP"]
    assert resolve_method("integrated-gradients") == ["IntegratedGradients"]
    assert resolve_method("tta(smoothed(grad-cam))") == ["TTA", "Smoothed", "GradCAM"]
    for wrong in ("gradcam+", "grad.cam", "gradcam!", "grad cam", "gradcampp2", "smoothed()"):
        with pytest.raises(Exception, match="--method: expected one of"):
            resolve_method(wrong)


def test_the_tables_match_the_library():
    """Every explainer runs from the command line, with exactly the options it takes."""
    for name, options in {**METHODS, **WRAPPERS}.items():
        parameters = inspect.signature(getattr(attributions, name)).parameters
        assert {p for p in OPTIONS if p in parameters} == set(options), name
    assert set(METHODS) | set(WRAPPERS) == set(attributions.__all__) - {
        "BlackBoxExplainer", "WhiteBoxExplainer"}
    assert set(ALIASES.values()) <= set(METHODS)
    assert set(OPERATORS.values()) <= set(LIBRARY_OPERATORS)
    for name in method_factories():  # the demo runs methods the command line knows
        assert method_name(resolve_method(name)) == name


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_preprocess_equals_keras_preprocess_input(mode):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype("float32")
    expected = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode=mode)
    np.testing.assert_allclose(preprocess_input(pixels, mode).numpy(), expected, rtol=1e-6,
                               atol=1e-5)
    np.testing.assert_array_equal(preprocess_input(pixels, "none").numpy(), pixels)


def test_library_errors_name_the_option_on_one_line(photos, softmax_cnn, tmp_path):
    base = ["explain", "--model", softmax_cnn, "--images", photos, "--out", tmp_path / "out"]
    # found while the photos stream: the pipeline's check, named --labels, not targets
    result = cli(*base, "--method", "saliency", "--labels", 9, "--output-layer", "logits")
    line = one_line_error(result, "--labels: expected class ids in [0, 3)")
    assert "targets" not in line
    assert not (tmp_path / "out").exists()  # nothing left by a run that failed at once
    # an undecodable image (a PNG header, then nonsense), found while the photos stream
    broken = tmp_path / "broken"
    shutil.copytree(photos, broken)
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    result = cli(*base[:4], broken, *base[5:], "--method", "saliency", "--output-layer",
                 "logits")
    one_line_error(result, f"--images: expected readable png or jpg images, got "
                           f"{str(broken / 'bad.png')!r}, which cannot be decoded")
    assert not (tmp_path / "out").exists()
    # found when the explainer is built
    result = cli(*base, "--method", "gradcam", "--conv-layer", "nope", "--output-layer",
                 "logits")
    one_line_error(result, "--conv-layer: expected")
    assert_clean(result)


def test_any_library_value_or_type_error_is_one_line(monkeypatch, photos, softmax_cnn,
                                                     tmp_path, capsys):
    """e.g. TTA(GradCAM) on a fixed-size model: the library's ValueError, in the CLI's words,
    whatever the library decides for that case."""
    import saliencekit.__main__ as cli_module

    def refuse(*args, **kwargs):
        raise ValueError("scales: expected () for a model with a fixed input size (only "
                         "flips apply), got (0.5,)\nfor inputs of size (16, 16).")

    monkeypatch.setattr(cli_module, "build_explainer", refuse)
    code = main(["explain", "--model", str(softmax_cnn), "--images", str(photos), "--method",
                 "TTA(GradCAM)", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("python -m saliencekit explain: error: --method TTA(GradCAM): "
                          "scales: expected () for a model")
    monkeypatch.setattr(cli_module, "build_explainer", lambda *a, **k: (_ for _ in ()).throw(
        TypeError("targets: expected class ids, got a float")))
    code = main(["explain", "--model", str(softmax_cnn), "--images", str(photos), "--method",
                 "saliency", "--out", str(tmp_path / "out")])
    assert code == 2 and "error: --labels: expected class ids" in capsys.readouterr().err
    assert cli_text("output_layer: expected a layer") == "--output-layer: expected a layer"
    assert cli_text("Pass output_layer='logits' to explain") == \
        "Pass --output-layer logits to explain"


# -- the demo ---------------------------------------------------------------------------------
def demo(tmp_path, *argv):
    """``python -m saliencekit demo ARGV`` with its model cache in ``tmp_path/cache``."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")},
           "SALIENCEKIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "saliencekit", "demo", *map(str, argv)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert_clean(result)
    return result


def test_demo_writes_its_figure_where_asked(tmp_path):
    """Every method the demo has runs (scores without the metrics columns: those are
    checked on the ViT's demo, the same code)."""
    pytest.importorskip("matplotlib")  # the plot extra is part of the test extra
    env_cache = tmp_path / "cache"
    figure = tmp_path / "figures" / "demo.png"
    result = demo(tmp_path, "--out", figure, "--train", "64", "--epochs", "1", "--samples",
                  "4", "--rows", "2", "--fast", "--no-metrics")
    assert figure.is_file()  # the PNG at that path, not a directory of that name
    png = tf.io.decode_png(tf.io.read_file(str(figure))).numpy()
    assert png.shape[0] > 100 and png.shape[1] > 100 and png.std() > 0
    for name in method_factories():
        assert name in result.stdout
    count = len(method_factories())
    assert re.search(rf"^{count}/{count} methods \(100%\)", result.stdout, re.MULTILINE)
    assert re.search(r"^GradCAM +\d+% +[\d.]+ +[\d.]+$", result.stdout, re.MULTILINE)
    assert not figure.with_name("demo-curves.png").exists()  # --no-metrics
    assert "Held-out accuracy" in result.stdout and "cached at" in result.stdout
    assert len(list(env_cache.glob("*.keras"))) == 1
    status, err, _ = checks_only("demo", "--out", tmp_path / "cache" / next(
        env_cache.glob("*.keras")).name / "x.png")
    assert status == 2 and "--out: expected a directory or an image path" in err


def cached_demo_model(tmp_path, monkeypatch, trained, **settings):
    """Save ``trained`` where the demo of these settings finds its model (training
    is the CNN test's part): the demo loads it, as a second run does."""
    import argparse

    from saliencekit.__main__ import demo_settings

    monkeypatch.setenv("SALIENCEKIT_CACHE", str(tmp_path / "cache"))
    _, _, path = demo_settings(argparse.Namespace(seed=0, **settings))
    path.parent.mkdir(parents=True, exist_ok=True)
    trained.save(path)


def test_demo_vit_with_the_metrics_columns(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from saliencekit.__main__ import vit_method_factories, vit_model

    cached_demo_model(tmp_path, monkeypatch, vit_model(0), model="vit", train=32, epochs=1)
    methods = ["AttentionRollout"]  # (the method runs are the text test's, and unit tests')
    result = demo(tmp_path, "--model", "vit", "--out", tmp_path / "out", "--train", "32",
                  "--epochs", "1", "--samples", "4", "--rows", "2", "--fast", "--methods",
                  "attention-rollout")
    assert "Loaded the trained demo model" in result.stdout  # its custom layer included
    assert "Held-out accuracy" in result.stdout
    for name in methods:  # pointing, mass, deletion, insertion, randomisation, seconds
        assert re.search(rf"^{name} +\d+% +[\d.]+ +-?[\d.]+ +-?[\d.]+ +-?[\d.]+ +[\d.]+$",
                         result.stdout, re.MULTILINE), result.stdout
    assert "GradCAM " not in result.stdout and set(methods) <= set(vit_method_factories())
    for name in ("demo-vit.png", "demo-vit-curves.png"):
        assert tf.io.decode_png(tf.io.read_file(str(tmp_path / "out" / name))).numpy().std() > 0


def test_demo_text_writes_token_maps(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from saliencekit.__main__ import TEXT_MASK_ID, text_model

    cached_demo_model(tmp_path, monkeypatch, text_model(0, TEXT_MASK_ID + 1), model="text",
                      train=64, epochs=1)
    result = demo(tmp_path, "--model", "text", "--out", tmp_path / "out", "--train", "64",
                  "--epochs", "1", "--samples", "4", "--rows", "2", "--fast", "--methods",
                  "Saliency,TransformerAttribution")
    assert "Loaded the trained demo model" in result.stdout
    rows = re.findall(r"^(\w+) +(\d+)% +([\d.]+|nan) +[\d.]+$", result.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["Saliency", "TransformerAttribution"]
    assert all(int(hit) % 25 == 0 for _, hit, _ in rows)  # 4 sequences: 0, 25, ... 100%
    page = (tmp_path / "out" / "demo-text.html").read_text()
    assert page.count("<h2>") == 2 and page.count("<tr>") == 2 * 2  # 2 sequences x methods
    assert page.count('<span style="background-color') >= 2 * 2 * 8  # 8+ tokens each
    assert "key" in page and "<pad>" not in page  # padding is not shown
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "out" / "demo-text.png"))).numpy()
    assert png.std() > 0
    status, err, imported = checks_only("demo", "--model", "text", "--methods", "GradCAMM")
    assert status == 2 and "--methods: expected names among Saliency" in err and not imported


def test_pointing_game_and_relevance_mass_on_hand_arrays():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True
    maps = np.zeros((3, 4, 4, 1), np.float32)
    maps[0, 0, 0] = 3.0  # peak inside
    maps[0, 3, 3] = 1.0
    maps[1, 3, 3] = 2.0  # peak outside
    maps[1, 1, 1] = -5.0  # negative relevance does not count
    np.testing.assert_array_equal(pointing_game(maps, masks), [True, False, False])
    np.testing.assert_allclose(relevance_mass(maps, masks)[:2], [0.75, 0.0])
    assert np.isnan(relevance_mass(maps, masks)[2])  # a map of zeros has no relevance
    with pytest.raises(ValueError, match="masks: expected boolean masks"):
        pointing_game(maps, masks[:2])


def test_labels_file_reading(tmp_path):
    from saliencekit.__main__ import UsageError, match_labels, read_label_file

    table = tmp_path / "labels.csv"
    table.write_text("# comment\nname,label\n\nphotos/x.png, 3\nsub/y.png,4\nz.jpg,5\n")
    read = read_label_file(table)
    assert read == {"photos/x.png": 3, "sub/y.png": 4, "z.jpg": 5}
    files = [(Path("photos/x.png"), "x.png"), (Path("d/sub/y.png"), "sub/y.png"),
             (Path("d/z.jpg"), "z.jpg")]
    assert match_labels(read, files, table) == [3, 4, 5]
    table.write_text("x.png,1\nx.png,2\n")
    with pytest.raises(UsageError, match="one class id per file"):
        read_label_file(table)
    table.write_text("x.png,1\ny.png,-2\n")
    with pytest.raises(UsageError, match="line 2"):
        read_label_file(table)


def test_overlays_are_drawn_as_plot_overlay_draws_them(photos):
    from saliencekit.__main__ import OverlayRenderer
    from saliencekit.commons.plot import overlay

    path = photos / "a.jpg"  # 40 x 24
    heat = np.random.default_rng(1).normal(size=(SIZE, SIZE)).astype("float32")
    png = next(iter(OverlayRenderer()([str(path)], heat[None, ..., None])))
    drawn = tf.io.decode_png(png).numpy().astype(int)
    photo = tf.io.decode_image(tf.io.read_file(str(path))).numpy()
    resized = tf.image.resize(heat[..., None], photo.shape[:2]).numpy()
    expected = overlay(photo, resized).astype(int)
    assert drawn.shape == expected.shape == (40, 24, 3)
    assert np.abs(drawn - expected).max() <= 1
