"""Progress: a Keras bar on a terminal, plain lines in logs (files, pipes, CI)."""

import io
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from saliencekit.attributions import Saliency
from saliencekit.commons import progress as progress_lib
from saliencekit.commons.progress import Progress

CONTROL = re.compile(r"[\r\x08\x1b]")  # carriage returns, backspaces, colour codes


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(total, steps, seconds_per_step=0.1, rows=8, verbose=1, close=True):
    stream, clock = io.StringIO(), Clock()
    progress = Progress(verbose, total, stream=stream, clock=clock)
    for _ in range(steps):
        clock.now += seconds_per_step
        progress.update(rows)
    if close:
        progress.close()
    return stream.getvalue().splitlines(keepends=True), progress


def test_a_log_gets_a_plain_line_per_tenth_and_the_last_once():
    lines, progress = run(total=100, steps=100)
    assert len(lines) == 10
    assert not any(CONTROL.search(line) for line in lines)
    assert all(line.endswith("\n") for line in lines)
    assert lines[0].startswith("10/100 batches (10%) - 80 images - ")
    assert "images/s - 100 ms/batch - " in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("100/100 batches (100%) - 800 images - ")
    assert "ETA" not in lines[-1]
    progress.close()  # closing again prints nothing
    assert progress.stream.getvalue().count("\n") == 10


def test_a_slow_run_also_gets_a_line_every_interval():
    lines, _ = run(total=1000, steps=30, seconds_per_step=3.0)  # 90 s, under 10%
    assert len(lines) == 8  # at 12, 24, ..., 84 s (the first step past 10 s), then at 90 s
    assert lines[-1].startswith("30/1000 batches (3%)")


def test_the_rate_counts_from_the_end_of_the_first_step():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(1, 2, stream=stream, clock=clock)
    clock.now = 5.0  # the first batch traces the kernel
    progress.update(10)
    clock.now = 6.0
    progress.update(10)
    assert "20 images - 10.0 images/s" in stream.getvalue().splitlines()[-1]


def test_a_dataset_of_unknown_length_prints_its_final_line_once():
    lines, progress = run(total=None, steps=5, verbose="auto", close=False)
    assert lines == []  # under 10 s: nothing until the end
    progress.close()
    progress.close()
    lines = progress.stream.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("5 batches - 40 images - ")
    # a long one: a line every 10 s; the last step's line is not printed again
    lines, _ = run(total=None, steps=30, seconds_per_step=1.0, verbose="auto")
    assert [line.split(" - ")[0] for line in lines] == ["10 batches", "20 batches", "30 batches"]
    lines, _ = run(total=None, steps=25, seconds_per_step=1.0, verbose="auto")
    assert lines[-1].startswith("25 batches - 200 images") and len(lines) == 3


@pytest.mark.parametrize("total, verbose", [(None, "auto"), (1, "auto"), (50, 0), (None, 0)])
def test_silent_runs(total, verbose):
    lines, _ = run(total=total, steps=1 if verbose == "auto" else 50, verbose=verbose)
    assert lines == []


def test_a_terminal_gets_the_keras_bar(monkeypatch):
    stream = Terminal()
    assert progress_lib.is_interactive(stream)
    assert not progress_lib.is_interactive(io.StringIO())
    progress = Progress(1, 3, stream=stream)
    assert isinstance(progress.bar, keras.utils.Progbar)
    assert Progress(1, 3, stream=io.StringIO()).bar is None


def test_units_and_long_durations():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(1, 4, unit="shard", stream=stream, clock=clock)
    for _ in range(4):
        clock.now += 1000
        progress.update(100)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("1/4 shards (25%)") and "ETA 50 min 00 s" in lines[0]
    assert "1000.0 s/shard" in lines[-1]
    assert lines[-1].endswith("1 h 06 min")


def small_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])


def test_explain_writes_plain_lines_when_stdout_is_not_a_terminal(capsys):
    explainer = Saliency(small_model(), batch_size=2)
    images = np.random.default_rng(0).random((6, 6, 6, 1)).astype("float32")
    explainer.explain(images, [0, 1, 0, 1, 0, 1], verbose=1)
    out = capsys.readouterr().out
    assert not CONTROL.search(out)
    lines = out.splitlines()
    assert lines[-1].startswith("3/3 batches (100%) - 6 images - ")
    # a Dataset (unknown length to the explainer): its final line, once
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    explainer.explain(dataset, verbose="auto")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("3 batches - 6 images - ")
