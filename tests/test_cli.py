"""The command line: ``python -m saliencekit demo`` and ``... explain``, and the metrics the
demo prints."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import IMAGE_SHAPE, small_cnn
from saliencekit.__main__ import main, method_factories
from saliencekit.commons.metrics import pointing_game, relevance_mass


def write_png(path, array):
    tf.io.write_file(str(path), tf.io.encode_png(np.asarray(array, np.uint8)))


@pytest.fixture
def png_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(12, 12), (20, 16), (30, 30)]):  # resized to the model's
        write_png(folder / f"img{i}.png", rng.integers(0, 256, (*size, 3)))
    (folder / "notes.txt").write_text("not an image, ignored in a directory")
    return folder


@pytest.fixture
def saved_cnn(tmp_path):
    path = tmp_path / "cnn.keras"
    small_cnn().save(path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method", ["gradcam", "SmoothGrad", "integrated-gradients"])
def test_explain_writes_overlays_and_raw_maps(method, png_dir, saved_cnn, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run(["explain", "--model", saved_cnn, "--images", png_dir,
                           "--method", method, "--out", out, "--verbose", 0], capsys)
    assert code == 0, err
    maps = np.load(out / "maps.npy")
    assert maps.shape == (3, *IMAGE_SHAPE[:2], 1)
    assert np.isfinite(maps).all() and maps.max() > 0
    assert (out / "files.txt").read_text().split() == [str(png_dir / f"img{i}.png")
                                                      for i in range(3)]
    overlays = sorted(p.name for p in out.glob("*.png"))
    assert len(overlays) == 3 and overlays[0].startswith("img0_")
    decoded = tf.io.decode_png(tf.io.read_file(str(out / overlays[0]))).numpy()
    assert decoded.shape == (*IMAGE_SHAPE[:2], 3) and decoded.std() > 0
    assert "explained 3 images" in text


def test_explain_maps_equal_the_library_and_take_labels(png_dir, saved_cnn, tmp_path, capsys):
    from saliencekit.__main__ import read_images
    from saliencekit.attributions import Saliency

    out = tmp_path / "out"
    code, _, err = run(["explain", "--model", saved_cnn, "--images", *sorted(
        png_dir.glob("*.png")), "--method", "saliency", "--labels", 2, "--out", out,
        "--pixel-range=-1,1", "--verbose", 0], capsys)
    assert code == 0, err
    images = read_images(sorted(png_dir.glob("*.png")), IMAGE_SHAPE[:2], 3, (-1.0, 1.0))
    assert images.min() >= -1 and images.max() <= 1 and images.min() < 0
    model = keras.models.load_model(saved_cnn)
    np.testing.assert_allclose(np.load(out / "maps.npy"),
                               Saliency(model)(images, [2, 2, 2]).numpy(), rtol=1e-5)


def test_explain_a_keras_applications_model(png_dir, tmp_path, capsys):
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None,
                                           classes=3, classifier_activation=None)
    path = tmp_path / "mobilenet.keras"
    model.save(path)
    out = tmp_path / "out"
    code, _, err = run(["explain", "--model", path, "--images", png_dir, "--method", "gradcam",
                        "--out", out, "--verbose", 0], capsys)
    assert code == 0, err
    assert np.load(out / "maps.npy").shape == (3, 64, 64, 1)


def test_explain_refuses_bad_arguments_clearly(png_dir, saved_cnn, tmp_path, capsys):
    base = ["explain", "--model", saved_cnn, "--images", png_dir, "--method", "saliency",
            "--out", tmp_path / "out"]

    def error_of(argv):
        code, _, err = run(argv, capsys)
        assert code == 2, err
        return err

    assert "--method: expected one of Saliency, SmoothGrad" in error_of(
        [*base[:-4], "--method", "gradcan", "--out", tmp_path / "out"])
    assert "no such file" in error_of(["explain", "--model", tmp_path / "missing.keras",
                                       "--images", png_dir, "--method", "saliency"])
    assert "--images: expected an image file or a directory, got" in error_of(
        ["explain", "--model", saved_cnn, "--images", tmp_path / "nowhere.png", "--method",
         "saliency"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # a PNG header, then nonsense
    assert "cannot be decoded" in error_of(
        ["explain", "--model", saved_cnn, "--images", bad, "--method", "saliency"])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "png or jpg images, got" in error_of(
        ["explain", "--model", saved_cnn, "--images", text, "--method", "saliency"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "expected png or jpg files in" in error_of(
        ["explain", "--model", saved_cnn, "--images", empty, "--method", "saliency"])
    table = tmp_path / "table.keras"
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)]).save(table)
    assert "--model: expected a model of images" in error_of(
        ["explain", "--model", table, "--images", png_dir, "--method", "saliency"])
    assert "--labels: expected 'predicted' or a class id" in error_of(
        [*base, "--labels", "cat"])
    assert "targets: expected class ids in [0, 4)" in error_of([*base, "--labels", 9])
    assert not (tmp_path / "out").exists()  # nothing written by a failed run
    with pytest.raises(SystemExit):  # argparse's own checks
        main(["explain", "--model", str(saved_cnn)])
    with pytest.raises(SystemExit):
        main([*map(str, base), "--batch-size", "0"])


def test_demo_runs_end_to_end_and_caches_its_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")  # the plot extra is part of the test extra
    monkeypatch.setenv("SALIENCEKIT_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--out", tmp_path / "demo", "--train", 64, "--epochs", 1, "--samples", 4,
            "--rows", 2, "--fast", "--verbose", 0]
    code, text, err = run(argv, capsys)
    assert code == 0, err
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "demo" / "demo.png"))).numpy()
    assert png.shape[0] > 100 and png.shape[1] > 100 and png.std() > 0
    for name in method_factories():
        assert name in text
    assert "Held-out accuracy" in text and "cached at" in text
    cached = list((tmp_path / "cache").glob("*.keras"))
    assert len(cached) == 1
    code, text, _ = run(argv, capsys)
    assert code == 0 and f"Loaded the trained demo model from {cached[0]}" in text
    # the saved demo model through the command line, on PNGs of its own kind of data
    from saliencekit.commons import synthetic

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, image in enumerate(synthetic.shapes(3, seed=5).images):
        write_png(folder / f"s{i}.png", np.round(image * 255))
    code, _, err = run(["explain", "--model", cached[0], "--images", folder, "--method",
                        "LayerCAM", "--out", tmp_path / "maps", "--verbose", 0], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "maps" / "maps.npy").shape == (3, 64, 64, 1)


def test_the_demo_covers_every_explainer():
    import saliencekit.attributions as attributions

    names = {name.split("(")[0] for name in method_factories()}
    wrapped = {name.split("(")[1].rstrip(")") for name in method_factories() if "(" in name}
    assert names | wrapped >= set(attributions.__all__) - {"BlackBoxExplainer",
                                                           "WhiteBoxExplainer"}


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "saliencekit", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "demo" in result.stdout and "explain" in result.stdout


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
