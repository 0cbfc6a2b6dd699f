"""The synthetic shapes: masks are exactly the drawn evidence, seeds repeat, options work."""


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saliencekit.commons.synthetic import CLASS_NAMES, shapes

DISK, SQUARE, TRIANGLE, PLUS = range(4)


@pytest.fixture(scope="module")
def data():
    return shapes(48, size=64, seed=3)


def boundary(mask):
    """Pixels of a mask with one of their four neighbours outside it (written apart from
    the generator's: by padding)."""
    padded = np.pad(mask, 1)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def strokes(image, mask):
    """Stroke pixels: the background stays at or below 0.45, strokes are at least 0.55."""
    return ~mask & (image.min(-1) >= 0.55)


def box(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_arrays_have_the_documented_shapes_dtypes_and_ranges(data):
    images, labels, masks, names = data
    assert images.shape == (48, 64, 64, 3) and images.dtype == np.float32
    assert labels.shape == (48,) and labels.dtype == np.int64
    assert masks.shape == (48, 64, 64) and masks.dtype == bool
    assert names == CLASS_NAMES == ("disk", "square", "triangle", "plus")
    assert images.min() >= 0 and images.max() <= 1
    assert np.bincount(labels, minlength=4).tolist() == [12, 12, 12, 12]
    assert np.bincount(shapes(7, seed=0).labels, minlength=4).tolist() == [2, 2, 2, 1]
    assert len(set(labels[:8].tolist())) > 1  # shuffled, not in blocks


def test_the_mask_is_exactly_the_fill_and_the_outline(data):
    for image, mask in zip(data.images, data.masks):
        rim = boundary(mask)
        fill, outline = image[mask & ~rim], image[rim]
        assert fill.size and outline.size
        assert (fill == fill[0]).all() and (outline == outline[0]).all()  # flat colours
        assert fill[0].min() >= 0.55 and outline[0].max() <= 0.2
        for colour in (fill[0], outline[0]):  # nowhere else
            assert not ((image == colour).all(-1) & ~mask).any()


def test_shapes_have_their_class_geometry(data):
    for image_mask, label in zip(data.masks, data.labels):
        top, bottom, left, right = box(image_mask)
        mask = image_mask[top:bottom, left:right]
        side = right - left
        assert 12 <= side <= 22
        assert top >= 1 and left >= 1 and bottom <= 63 and right <= 63  # clear of the border
        widths = mask.sum(1)
        if label == SQUARE:
            assert mask.all() and mask.shape == (side, side)
        elif label == DISK:
            assert mask.shape == (side, side) and not mask[[0, 0, -1, -1], [0, -1, 0, -1]].any()
            assert (mask == mask[::-1]).all() and (mask == mask.T).all()
            assert abs(mask.sum() / side**2 - np.pi / 4) < 0.08
        elif label == TRIANGLE:  # one centred run per row, widening downward, full at the base
            assert side - 1 <= mask.shape[0] <= side and widths[-1] == side
            assert (np.diff(widths) >= 0).all() and widths[0] <= 2
            assert (mask == mask[:, ::-1]).all()
            assert all(np.diff(np.nonzero(row)[0]).max(initial=1) == 1 for row in mask)
        else:  # plus: full middle row and column, empty corners a third of the side wide
            assert mask.shape == (side, side)
            assert (mask == mask[::-1]).all() and (mask == mask.T).all()
            assert mask[side // 2].all() and mask[:, side // 2].all()
            third = side // 3
            assert not mask[:third, :third].any() and mask.sum() < 0.65 * side**2


def test_strokes_are_clear_of_the_shape_and_the_background_of_any_colour_band(data):
    for image, mask in zip(data.images, data.masks):
        lines = strokes(image, mask)
        assert 3 <= lines.sum() <= 3 * 17  # 1 to 3 strokes of 8 to 16 pixels
        top, bottom, left, right = box(mask)
        assert not lines[max(top - 2, 0):bottom + 2, max(left - 2, 0):right + 2].any()
        background = image[~mask & ~lines]
        assert background.max() <= 0.45
        assert np.unique(image[lines], axis=0).shape == (1, 3)  # one colour per image


def test_no_distractors_and_no_noise_give_the_same_scenes_without_them(data):
    bare = shapes(48, size=64, seed=3, distractors=0)
    assert (bare.labels == data.labels).all() and (bare.masks == data.masks).all()
    lines = np.stack([strokes(i, m) for i, m in zip(data.images, data.masks)])
    assert not np.stack([strokes(i, m) for i, m in zip(bare.images, bare.masks)]).any()
    assert ((bare.images == data.images).all(-1) == ~lines).all()

    smooth = shapes(48, size=64, seed=3, noise=0.0)
    assert (smooth.masks == data.masks).all()
    difference = np.abs(smooth.images - data.images)
    assert difference.max() <= 0.03 * np.sqrt(3) + 1e-6  # uniform noise of std 0.03
    assert difference.mean() > 0.005
    assert (difference[data.masks] == 0).all()
    rough = shapes(48, size=64, seed=3, noise=0.1)
    assert np.abs(rough.images - smooth.images).mean() > 2 * difference.mean()


def test_a_fixed_number_of_distractors_is_drawn():
    data = shapes(8, size=64, seed=5, distractors=(3, 3))
    few = shapes(8, size=64, seed=5, distractors=1)
    for image, mask, image_few in zip(data.images, data.masks, few.images):
        assert strokes(image, mask).sum() > strokes(image_few, mask).sum() > 0


@pytest.mark.parametrize("shape_size", [7, (9, 15)])
def test_shape_size_bounds_the_shapes(shape_size):
    data = shapes(40, size=32, seed=1, shape_size=shape_size)
    low, high = (shape_size, shape_size) if isinstance(shape_size, int) else shape_size
    sides = [box(mask)[3] - box(mask)[2] for mask in data.masks]
    assert low <= min(sides) and max(sides) <= high
    assert isinstance(shape_size, int) or max(sides) > min(sides)


def test_the_same_seed_repeats_and_other_seeds_differ():
    first, again, other = shapes(6, seed=11), shapes(6, seed=11), shapes(6, seed=12)
    for a, b in zip(first[:3], again[:3]):
        assert a.dtype == b.dtype and (a == b).all()
    assert not (first.images == other.images).all()
    assert not (first.masks == other.masks).all()
    unseeded = shapes(6, seed=None)
    assert not (unseeded.images == first.images).all()


@given(
    n=st.integers(1, 5),
    size=st.integers(16, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_seed_and_size_gives_valid_scenes(n, size, seed):
    images, labels, masks, _ = shapes(n, size=size, seed=seed)
    assert images.shape == (n, size, size, 3) and masks.shape == (n, size, size)
    assert images.min() >= 0 and images.max() <= 1 and images.dtype == np.float32
    assert ((labels >= 0) & (labels < 4)).all()
    for image, mask in zip(images, masks):
        assert mask.sum() >= 5
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert image[mask].min() == image[boundary(mask)].min()  # the outline is darkest
        assert image[mask].max() >= 0.55


@pytest.mark.parametrize("kwargs, error, words", [
    ({"n": 0}, ValueError, "n: expected an integer >= 1, got 0."),
    ({"n": 2.5}, TypeError, "n: expected an integer >= 1, got 2.5."),
    ({"n": True}, TypeError, "n: expected an integer >= 1"),
    ({"size": 15}, ValueError, "size: expected an integer >= 16, got 15."),
    ({"seed": -1}, ValueError, "seed: expected None or an integer in [0, 2**31)"),
    ({"seed": "a"}, TypeError, "seed: expected None or an integer"),
    ({"shape_size": (4, 8)}, ValueError, "shape_size: expected sides (smallest, largest) "
                                         "with 5 <= smallest <= largest <= size // 2 = 32"),
    ({"shape_size": (12, 33)}, ValueError, "got (12, 33)."),
    ({"shape_size": (12, 10)}, ValueError, "shape_size: expected"),
    ({"shape_size": (1, 2, 3)}, TypeError, "shape_size: expected"),
    ({"distractors": -1}, ValueError, "distractors: expected an integer >= 0 or a pair"),
    ({"distractors": (3, 1)}, ValueError, "got (3, 1)."),
    ({"distractors": "2"}, ValueError, "distractors: expected"),
    ({"distractors": (1, 2.0)}, ValueError, "distractors: expected"),
    ({"noise": -0.1}, ValueError, "noise: expected a finite number >= 0, got -0.1."),
])
def test_bad_arguments_name_themselves(kwargs, error, words):
    with pytest.raises(error) as caught:
        shapes(**{"n": 4, **kwargs})
    assert words in str(caught.value)
