"""Whole datasets: progress, streaming with bounded memory, maps written to disk and resumed."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_cnn
from saliencekit.attributions import Saliency, SmoothGrad
from saliencekit.commons import data, sink

IMAGES = np.random.default_rng(0).random((37, 12, 12, 3)).astype("float32")
LABELS = np.arange(37) % 4


@pytest.fixture(scope="module")
def model():
    return small_cnn()


def counting(explainer, monkeypatch):
    """Record the offset of every kernel call (one call per batch explained)."""
    offsets = []
    kernel = explainer._kernel

    def counted(x, t, offset, seed):
        offsets.append(int(offset))
        return kernel(x, t, offset, seed)

    monkeypatch.setattr(explainer, "_kernel", counted)
    return offsets


def generated(images, labels, batch, produced=None, fail_at=None):
    """A Dataset of unknown cardinality read from a Python generator, which logs the rows it
    has handed out (``produced``) and can fail before its batch ``fail_at``."""

    def generate():
        for number, start in enumerate(range(0, len(images), batch)):
            if number == fail_at:
                raise RuntimeError("the input pipeline failed")
            rows = images[start:start + batch]
            if produced is not None:
                produced.extend(range(start, start + len(rows)))
            yield rows, labels[start:start + batch]

    dataset = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((None, *images.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64)))
    assert dataset.cardinality() == tf.data.UNKNOWN_CARDINALITY
    return dataset


# -- progress -------------------------------------------------------------------------------
def test_verbose_0_prints_nothing_and_1_prints_a_bar_with_throughput(model, capsys):
    explainer = Saliency(model, batch_size=4)
    explainer(IMAGES, LABELS, verbose=0)
    assert capsys.readouterr().out == ""
    explainer.explain(IMAGES, LABELS, verbose=1)
    out = capsys.readouterr().out  # not a terminal: plain lines (tests/test_progress.py)
    assert "10/10 batches (100%)" in out and "images/s" in out
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
    explainer.explain(IMAGES[:3], LABELS[:3], verbose=1)  # one batch: shown when asked
    assert "1/1" in capsys.readouterr().out


def test_auto_shows_a_bar_only_when_there_is_more_than_one_batch(model, capsys):
    explainer = Saliency(model, batch_size=4)
    explainer(IMAGES[:4], LABELS[:4])
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    explainer(dataset.take(3).batch(2))  # a Dataset of one batch once rebatched
    assert capsys.readouterr().out == ""
    explainer(IMAGES, LABELS)
    assert "images/s" in capsys.readouterr().out
    explainer(dataset.batch(5))  # of unknown length: its last line, once, at the end
    out = capsys.readouterr().out
    assert "images/s" in out and out.count("10 batches - 37 images") == 1
    assert out.endswith("\n")


def test_a_bad_verbose_is_refused(model):
    with pytest.raises(ValueError, match=r"verbose: expected 'auto', 0 or 1, got 'yes'"):
        Saliency(model)(IMAGES, LABELS, verbose="yes")
    with pytest.raises(ValueError, match="verbose"):
        Saliency(model).explain_to("unused", IMAGES, LABELS, verbose=2)


# -- streaming ------------------------------------------------------------------------------
def test_a_dataset_of_unknown_length_is_read_a_bounded_number_of_batches_ahead(model,
                                                                               monkeypatch):
    """How far the input has been read when each batch is explained, not timings: a run
    that read the whole Dataset first would be ahead by all of it."""
    batch = 4
    bound = 2 * os.cpu_count() + data.PREFETCH + 4  # batches: parallel maps, prefetch, slack
    images = np.random.default_rng(1).random(((bound + 20) * batch, 12, 12, 3)).astype("float32")
    labels = np.arange(len(images)) % 4
    produced = []
    explainer = Saliency(model, batch_size=batch)
    kernel = explainer._kernel
    ahead = []

    def counted(x, t, offset, seed):
        ahead.append(len(produced) - int(offset) - batch)  # rows read past this batch
        return kernel(x, t, offset, seed)

    monkeypatch.setattr(explainer, "_kernel", counted)
    maps = explainer(generated(images, labels, batch, produced), verbose=0).numpy()
    assert len(ahead) == bound + 20
    assert max(ahead) <= bound * batch, ahead
    np.testing.assert_array_equal(maps, Saliency(model, batch_size=batch)(images, labels))


# -- explain_to -----------------------------------------------------------------------------
def test_maps_on_disk_are_explains_maps_and_read_with_numpy_alone(model, tmp_path):
    explainer = SmoothGrad(model, nb_samples=3, seed=5, batch_size=4)
    store = explainer.explain_to(tmp_path / "maps", IMAGES, LABELS, shard_size=8, verbose=0)
    expected = explainer(IMAGES, LABELS).numpy()
    files = sorted(glob.glob(str(tmp_path / "maps" / "maps-*.npy")))
    indices = sorted(glob.glob(str(tmp_path / "maps" / "index-*.npy")))
    assert [os.path.basename(f) for f in files] == [f"maps-0000{i}.npy" for i in range(5)]
    assert [len(np.load(f)) for f in files] == [8, 8, 8, 8, 5]
    np.testing.assert_array_equal(np.concatenate([np.load(f) for f in files]), expected)
    np.testing.assert_array_equal(np.concatenate([np.load(f) for f in indices]), np.arange(37))
    assert np.load(files[1]).dtype == np.float32
    manifest = json.loads((tmp_path / "maps" / "manifest.json").read_text())
    assert manifest["map_shape"] == [12, 12, 1] and manifest["shard_size"] == 8
    assert manifest["count"] == 37 and manifest["complete"] is True
    assert manifest["explainer"] == repr(explainer) and manifest["seed"] == 5
    np.testing.assert_array_equal(store.load(), expected)
    np.testing.assert_array_equal(store.index(), np.arange(37))
    assert len(store) == 37 and store.complete
    single = store.to_npy(tmp_path / "all.npy")
    assert isinstance(single, np.memmap)
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "all.npy", mmap_mode="r")[30], expected[30])


def test_a_dataset_of_unknown_length_goes_to_disk_in_order(model, tmp_path):
    explainer = SmoothGrad(model, nb_samples=3, seed=2, batch_size=4)
    store = explainer.explain_to(tmp_path, generated(IMAGES, LABELS, 5), shard_size=8,
                                 verbose=0)
    expected = explainer(generated(IMAGES, LABELS, 5), verbose=0).numpy()
    np.testing.assert_array_equal(store.load(), expected)
    np.testing.assert_array_equal(store.index(), np.arange(37))
    np.testing.assert_allclose(store.load(), explainer(IMAGES, LABELS).numpy(), rtol=1e-5,
                               atol=1e-8)
    assert store.manifest["count"] == 37 and store.manifest["input_shape"] == [12, 12, 3]


def test_the_default_shard_size_is_whole_batches(model, tmp_path):
    store = Saliency(model, batch_size=6).explain_to(tmp_path, IMAGES, LABELS, verbose=0)
    assert store.manifest["shard_size"] % 6 == 0 and store.manifest["shard_size"] >= 37
    assert len(store.shards) == 1


def test_an_interrupted_dataset_resumes_without_recomputing_complete_shards(
        model, tmp_path, monkeypatch):
    explainer = Saliency(model, batch_size=4)
    with pytest.raises(Exception, match="the input pipeline failed"):
        # the input fails while rows 21..23 are read: batches 0-4 are explained
        explainer.explain_to(tmp_path, generated(IMAGES, LABELS, 3, fail_at=7), shard_size=8,
                             verbose=0)
    names = sorted(os.listdir(tmp_path))
    assert names == ["index-00000.npy", "index-00001.npy", "manifest.json", "maps-00000.npy",
                     "maps-00001.npy"]  # shard 2 was not complete: nothing of it is left
    assert not sink.MapStore(tmp_path).complete and len(sink.MapStore(tmp_path)) == 16
    fresh = Saliency(model, batch_size=4)
    offsets = counting(fresh, monkeypatch)
    store = fresh.explain_to(tmp_path, generated(IMAGES, LABELS, 3), verbose=0)
    assert offsets == [16, 20, 24, 28, 32, 36]  # from shard 2 (rows 16...) on
    np.testing.assert_array_equal(store.load(), explainer(IMAGES, LABELS).numpy())
    np.testing.assert_array_equal(store.index(), np.arange(37))
    assert store.complete


def test_missing_shards_are_recomputed_and_no_others(model, tmp_path, monkeypatch):
    explainer = Saliency(model, batch_size=4)
    expected = explainer.explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0).load()
    os.remove(tmp_path / "maps-00002.npy")
    os.remove(tmp_path / "index-00004.npy")  # the last shard is incomplete without its index
    (tmp_path / ".maps-00003.npy.999.deadbeef.tmp").write_bytes(b"\x93NUMPY half a shard")
    partial = sink.MapStore(tmp_path)
    assert [p.name for p, _ in partial.shards] == ["maps-00000.npy", "maps-00001.npy",
                                                   "maps-00003.npy"]
    np.testing.assert_array_equal(partial.index(), np.r_[0:16, 24:32])
    offsets = counting(explainer, monkeypatch)
    store = explainer.explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0)
    assert offsets == [16, 20, 32, 36]
    np.testing.assert_array_equal(store.load(), expected)
    assert not list(tmp_path.glob(".*.tmp"))  # a killed run's temporary files are removed
    offsets.clear()
    again = explainer.explain_to(tmp_path, IMAGES, LABELS, verbose=0)  # finished: nothing to do
    assert offsets == [] and len(again) == 37


def test_a_shard_that_fails_while_written_does_not_look_complete(model, tmp_path, monkeypatch):
    explainer = Saliency(model, batch_size=4)
    save = np.save
    saved = []

    def failing(file, array, *args, **kwargs):
        saved.append(array.ndim)
        if saved.count(4) == 3:  # shard 2's maps
            file.write(b"\x93NUMPY\x01\x00 half")
            raise OSError("disk full")
        return save(file, array, *args, **kwargs)

    expected = explainer(IMAGES, LABELS).numpy()
    monkeypatch.setattr(np, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        explainer.explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0)
    monkeypatch.setattr(np, "save", save)
    assert not (tmp_path / "maps-00002.npy").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(sink.MapStore(tmp_path)) == 16
    store = explainer.explain_to(tmp_path, IMAGES, LABELS, verbose=0)
    np.testing.assert_array_equal(store.load(), expected)


def test_an_unseeded_stochastic_run_resumes_with_the_seed_it_started_with(model, tmp_path):
    first = SmoothGrad(model, nb_samples=3, seed=None, batch_size=4)
    before = first.explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0).load()
    os.remove(tmp_path / "maps-00001.npy")
    after = SmoothGrad(model, nb_samples=3, seed=None, batch_size=4).explain_to(
        tmp_path, IMAGES, LABELS, verbose=0).load()
    np.testing.assert_array_equal(after, before)
    other = SmoothGrad(model, nb_samples=3, seed=None, batch_size=4).explain_to(
        tmp_path / "other", IMAGES, LABELS, shard_size=8, verbose=0).load()
    assert not np.allclose(other, before)  # fresh noise in a new directory


@pytest.mark.parametrize(("change", "words"), [
    (lambda m, p: SmoothGrad(m, nb_samples=3, seed=0, batch_size=4).explain_to(
        p, IMAGES, LABELS, verbose=0), ["explainer=", "SmoothGrad(", "Saliency("]),
    (lambda m, p: Saliency(m, batch_size=8).explain_to(p, IMAGES, LABELS, verbose=0),
     ["batch_size=8", "batch_size=4"]),
    (lambda m, p: Saliency(m, batch_size=4).explain_to(p, IMAGES, LABELS, shard_size=16,
                                                       verbose=0), ["shard_size=16"]),
    (lambda m, p: Saliency(m, batch_size=4).explain_to(p, IMAGES[:30], LABELS[:30], verbose=0),
     ["count=30", "count=10"]),
])
def test_an_incompatible_directory_is_refused(model, tmp_path, change, words):
    Saliency(model, batch_size=4).explain_to(tmp_path, IMAGES[:10], LABELS[:10], shard_size=8,
                                             verbose=0)
    os.remove(tmp_path / "maps-00001.npy")  # unfinished: a resume would be attempted
    os.remove(tmp_path / "index-00001.npy")
    with pytest.raises(ValueError, match=r"^path: expected") as error:
        change(model, tmp_path)
    for word in [str(tmp_path), *words]:
        assert word in str(error.value), (word, str(error.value))


def test_a_retrained_model_cannot_resume_a_directory(tmp_path):
    model = small_cnn()
    Saliency(model, batch_size=4).explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0)
    os.remove(tmp_path / "maps-00004.npy")
    model.layers[0].kernel.assign(model.layers[0].kernel * 2)
    with pytest.raises(ValueError, match="model_weights"):
        Saliency(model, batch_size=4).explain_to(tmp_path, IMAGES, LABELS, verbose=0)


def test_explain_to_refuses_bad_arguments_before_any_work(model, tmp_path):
    explainer = Saliency(model, batch_size=4)
    with pytest.raises(ValueError, match=r"shard_size: expected a multiple of batch_size=4"):
        explainer.explain_to(tmp_path / "a", IMAGES, LABELS, shard_size=6)
    with pytest.raises(ValueError, match=r"shard_size: expected an integer >= 1, got 0"):
        explainer.explain_to(tmp_path / "a", IMAGES, LABELS, shard_size=0)
    with pytest.raises(TypeError, match=r"path: expected a directory path"):
        explainer.explain_to(3, IMAGES, LABELS)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"path: expected a new or empty directory.*notes.txt"):
        explainer.explain_to(tmp_path, IMAGES, LABELS)
    with pytest.raises(ValueError, match=r"path: expected a directory.*an existing file"):
        explainer.explain_to(tmp_path / "notes.txt", IMAGES, LABELS)
    with pytest.raises(ValueError, match=r"targets: expected one target per input"):
        explainer.explain_to(tmp_path / "b", IMAGES, LABELS[:3])
    assert explainer._kernel.experimental_get_tracing_count() == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match=r"path: expected a directory written by explain_to"):
        sink.MapStore(tmp_path)


def test_an_unfinished_store_cannot_become_one_npy(model, tmp_path):
    Saliency(model, batch_size=4).explain_to(tmp_path, IMAGES, LABELS, shard_size=8, verbose=0)
    os.remove(tmp_path / "maps-00000.npy")
    assert not sink.MapStore(tmp_path).complete and len(sink.MapStore(tmp_path)) == 29
    with pytest.raises(ValueError, match=r"store: expected a complete store"):
        sink.MapStore(tmp_path).to_npy(tmp_path / "all.npy")
