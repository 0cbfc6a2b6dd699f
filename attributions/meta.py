"""Meta-explainers: explainers that wrap any explainer."""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from ..commons import model as inspect_model
from ..commons import postprocess, random, validation
from ..operators import tasks
from .base import BlackBoxExplainer


class _MetaExplainer(BlackBoxExplainer):
    """An explainer wrapping another: its model, operator and settings are the wrapped one's."""

    explainer: BlackBoxExplainer

    def _wrap(self, explainer: BlackBoxExplainer) -> None:
        if not isinstance(explainer, BlackBoxExplainer):
            raise validation.type_error(
                "explainer", "a saliencekit explainer", type(explainer).__name__
            )
        self.explainer = explainer
        super().__init__(
            explainer.model,
            batch_size=explainer.batch_size,
            operator=explainer.operator,
            jit_compile=explainer.jit_compile,
            strategy=explainer.strategy,
        )
        self._explained = explainer._explained  # targets resolve on the wrapped output
        self._map_input = explainer._map_input

    @property
    def _rows_per_batch(self) -> int | None:
        """The wrapped explainer's (the sampling family's ``batch_size=None``: one input)."""
        return self.explainer._rows_per_batch

    @property
    def _perturbed_by(self) -> str | None:
        """What the wrapped explainer perturbs with, for the non-finite maps warning."""
        return self.explainer._perturbed_by


class Smoothed(_MetaExplainer):
    """Runs any explainer on noisy copies of the inputs and averages the maps.

    SmoothGrad generalised (smoothed Grad-CAM, smoothed FullGrad, ...): Smilkov et al.
    (2017), *SmoothGrad: removing noise by adding noise*, https://arxiv.org/abs/1706.03825

    Parameters
    ----------
    explainer : BlackBoxExplainer
        Any saliencekit explainer, a meta-explainer included. Its model, operator,
        batch size and ``jit_compile`` are used.
    nb_samples : int, default 20
        Noisy copies per input.
    noise : float, default 0.1
        Noise standard deviation as a fraction of each input's range ``max(x) - min(x)``.
    seed : int or None, default None
        Makes runs repeat; ``None`` draws fresh noise at every call.

    The noise is drawn inside the compiled kernel, keyed by ``(seed, input index, sample)``
    as for SmoothGrad, and the wrapped explainer's per-batch maths runs on one noisy batch
    at a time, so memory is bounded by ``batch_size`` whatever ``nb_samples`` is. Targets
    left ``None`` are resolved once, on the clean inputs. With ``noise=0`` the maps are the
    wrapped explainer's.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import GradCAM, Smoothed
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> smooth_cam = Smoothed(GradCAM(model), nb_samples=4, noise=0.1, seed=0)
    >>> tuple(smooth_cam.explain(np.ones((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    _stochastic = True

    def __init__(
        self,
        explainer: BlackBoxExplainer,
        nb_samples: int = 20,
        noise: float = 0.1,
        seed: int | None = None,
    ):
        self._wrap(explainer)
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.noise = validation.non_negative_float("noise", noise)
        self.seed = validation.optional_seed("seed", seed)

    def __repr__(self) -> str:
        return (f"Smoothed({self.explainer!r}, nb_samples={self.nb_samples}, "
                f"noise={self.noise}, seed={self.seed})")

    def _batch(self, inputs, targets, seeds):
        def sample_maps(sample):
            # each input of a multi-input model draws from its own stream
            noisy = tf.nest.pack_sequence_as(inputs, [
                random.noisy(x, self.noise, seeds, sample, stream=leaf)
                for leaf, x in enumerate(tf.nest.flatten(inputs))])
            # a stochastic wrapped explainer gets its own seed per sample
            inner_seeds = tf.stack([seeds[:, 0], seeds[:, 1] * 7919 + sample + 1], axis=1)
            wrapped = self.explainer
            return wrapped._postprocessed(wrapped._batch(noisy, targets, inner_seeds), noisy)

        # The first sample gives the accumulator its shape (a loop variable needs one); the
        # rest run one at a time in a loop.
        total = sample_maps(tf.constant(0, tf.int64))
        for sample in tf.range(1, self.nb_samples, dtype=tf.int64):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # memory bound
            total = tf.nest.map_structure(
                lambda t, m: t + tf.ensure_shape(m, t.shape), total, sample_maps(sample))
        return tf.nest.map_structure(lambda t: t / self.nb_samples, total)


class TTA(_MetaExplainer):
    """Test-time augmentation: explains rescaled and mirrored views of the inputs, maps
    each view's map back to the input's frame and averages them, pixel by pixel, over the
    views that see the pixel.

    The multi-scale, mirrored evaluation of Simonyan & Zisserman (2014), *Very Deep
    Convolutional Networks for Large-Scale Image Recognition*,
    https://arxiv.org/abs/1409.1556, applied to maps instead of predictions (as
    pytorch-grad-cam's ``aug_smooth``); see Shanmugam et al. (2020), *Better Aggregation in
    Test-Time Augmentation*, https://arxiv.org/abs/2011.11156, on when averaging views helps.

    Parameters
    ----------
    explainer : BlackBoxExplainer
        Any saliencekit explainer of images, a meta-explainer included. Its model,
        operator, batch size and ``jit_compile`` are used.
    scales : sequence of float, default (0.5, 1.5, 2.0)
        Zoom factors; the original view (scale 1, not flipped) is always included, once.
    hflip : bool, default True
        Also explain the horizontally flipped copy of every view.
    resize_method : str, default "bilinear"
        How views are resized and maps resized back: a ``tf.image.resize`` method.
    pad_value : "mean" or float, default "mean"
        What fills the border of a zoomed-out view of a fixed-size model: ``"mean"``, each
        image's own mean per channel (a constant carries no features, and it is a value in
        the model's input range whatever the preprocessing, where ``0`` is black for
        ``[0, 255]`` inputs and grey for ``[-1, 1]`` ones), or a number.

    How a view is made depends on the model:

    - **Any input size** (``keras.Input((None, None, C))``): the whole image is resized by
      the scale; its map is resized back. Every view sees every pixel.
    - **A fixed input size** (most ``keras.applications`` models): a view keeps the model's
      size. Zooming in (scale ``s > 1``) explains the central ``H/s x W/s`` region resized
      up to ``H x W``; its map is resized down and put back in place, and the pixels outside
      the region get nothing from that view. Zooming out (``s < 1``) explains the image
      resized down to ``sH x sW`` and padded back to ``H x W`` with ``pad_value``, centred;
      the map of the padding is dropped and the rest resized back. Sizes are rounded to
      whole pixels.

    The result at each pixel is the sum of the views' maps there divided by the number of
    views that see it (``coverage(views)`` gives these counts), so a zoomed-in view does not
    dilute the border. Flips are undone before the maps are put back. Views go through the
    wrapped explainer's per-batch maths one after the other inside one compiled kernel, so
    memory is bounded by ``batch_size`` times the largest view. Targets left ``None`` are
    resolved once, on the original inputs. A stochastic wrapped explainer gets its own seed
    per view. Composition: ``TTA(Smoothed(e))`` adds noise to each view (after rescaling),
    ``Smoothed(TTA(e))`` rescales each noisy copy; both average the same kind of maps, and
    differ only in where the noise is drawn.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import TTA, GradCAM
    >>> model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> tta = TTA(GradCAM(model), scales=(0.5, 2.0), hflip=True)
    >>> tta.views
    ((1.0, False), (1.0, True), (0.5, False), (0.5, True), (2.0, False), (2.0, True))
    >>> tuple(tta.explain(np.ones((2, 16, 16, 3)), [0, 1]).shape)
    (2, 16, 16, 1)
    >>> fixed = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> tuple(TTA(GradCAM(fixed)).explain(np.ones((2, 16, 16, 3)), [0, 1]).shape)
    (2, 16, 16, 1)
    """

    def __init__(
        self,
        explainer: BlackBoxExplainer,
        scales=(0.5, 1.5, 2.0),
        hflip: bool = True,
        resize_method: str = "bilinear",
        pad_value: float | str = "mean",
    ):
        self._wrap(explainer)
        if self._input_structure is not None:
            raise validation.type_error(
                "explainer", "an explainer of a model with one image input (TTA rescales and "
                "mirrors the image)", f"an explainer of a model with "
                f"{len(self._input_structure)} inputs", "Smoothed works on multi-input "
                "models.")
        self.scales = validation.positive_floats("scales", scales)
        if not isinstance(hflip, bool):
            raise validation.type_error("hflip", "True or False", repr(hflip))
        self.hflip = hflip
        self.resize_method = validation.one_of("resize_method", resize_method, _RESIZE_METHODS)
        self.pad_value = _check_pad_value(pad_value)
        self._fixed_size = self._check_setting()
        views = [(1.0, False)] + [(1.0, True)] * hflip
        for scale in dict.fromkeys(s for s in self.scales if s != 1.0):
            views += [(scale, False)] + [(scale, True)] * hflip
        self.views = tuple(views)

    def _check_setting(self) -> bool:
        """Refuses what TTA cannot explain; whether the model has a fixed input size."""
        if self.operator in (tasks.semantic_segmentation, tasks.object_detection):
            raise validation.value_error(
                "explainer", "an explainer whose targets do not depend on where things are "
                "in the image (classification, regression or a callable operator)",
                f"an explainer of operator {getattr(self.operator, '__name__', self.operator)!r}")
        shape = inspect_model.sample_input_shape(self._explained)
        if shape is not None and len(shape) != 3:
            raise validation.value_error(
                "explainer", "an explainer of an image model, inputs (N, H, W, C)",
                f"a model with inputs of shape (N, {', '.join(map(str, shape))})")
        return shape is not None and any(d is not None for d in shape[:2])

    @property
    def _stochastic(self):  # follows the wrapped explainer
        return self.explainer._stochastic

    def _draw_seed(self) -> int:
        return self.explainer._draw_seed()

    def __repr__(self) -> str:
        return (f"TTA({self.explainer!r}, scales={self.scales}, hflip={self.hflip}, "
                f"resize_method={self.resize_method!r}, pad_value={self.pad_value!r})")

    def coverage(self, size: tuple[int, int]) -> np.ndarray:
        """How many views see each pixel of an ``(H, W)`` input: the per-pixel divisor."""
        count = np.zeros(size, np.float32)
        for scale, flip in self.views:
            seen = np.ones(size, np.float32)
            if self._fixed_size and scale > 1:
                top, left, height, width = _region(size, 1 / scale)
                seen[:] = 0
                seen[top:top + height, left:left + width] = 1
            count += seen[:, ::-1] if flip else seen
        return count

    def _batch(self, inputs, targets, seeds):
        if inputs.shape.rank != 4:
            raise validation.value_error(
                "inputs", "images (N, H, W, C) for TTA", f"shape {tuple(inputs.shape)}")
        size = tuple(inputs.shape[1:3])
        wrapped = self.explainer
        total = None
        for number, (scale, flip) in enumerate(self.views):
            with tf.control_dependencies([] if total is None else [total]):  # one at a time
                view = tf.reverse(inputs, axis=[2]) if flip else inputs
                view = self._view(view, scale, size)
            view_seeds = seeds if number == 0 else tf.stack(
                [seeds[:, 0], seeds[:, 1] * 104729 + number], axis=1)
            maps = wrapped._postprocess(wrapped._batch(view, targets, view_seeds), view)
            maps = self._back(maps, scale, size)
            if flip:
                maps = tf.reverse(maps, axis=[2])
            total = maps if total is None else total + maps
        if not self._fixed_size:
            return total / len(self.views)  # every view sees every pixel
        return total / tf.constant(self.coverage(size)[None, :, :, None])

    def _view(self, images: tf.Tensor, scale: float, size: tuple) -> tf.Tensor:
        """The view of ``images`` at ``scale`` (see the class docstring)."""
        if scale == 1.0:
            return images
        if not self._fixed_size:
            view_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            if view_size == size:
                return images
            return tf.image.resize(images, view_size, method=self.resize_method)
        top, left, height, width = _region(size, min(scale, 1 / scale))
        if scale > 1:  # zoom in: the central region, resized up
            crop = images[:, top:top + height, left:left + width]
            return tf.image.resize(crop, size, method=self.resize_method)
        # zoom out: resized down and padded, centred
        small = tf.image.resize(images, (height, width), method=self.resize_method)
        fill = (tf.reduce_mean(images, axis=[1, 2], keepdims=True) if self.pad_value == "mean"
                else tf.constant(self.pad_value, images.dtype))
        paddings = [[0, 0], [top, size[0] - height - top], [left, size[1] - width - left],
                    [0, 0]]
        return tf.pad(small - fill, paddings) + fill

    def _back(self, maps: tf.Tensor, scale: float, size: tuple) -> tf.Tensor:
        """A view's maps in the input's frame; zero where the view does not see."""
        if scale == 1.0:
            return maps
        if not self._fixed_size:
            return postprocess.resize_spatial(maps, size, self.resize_method)
        top, left, height, width = _region(size, min(scale, 1 / scale))
        if scale > 1:  # the region's map, resized down and put back in place
            small = postprocess.resize_spatial(maps, (height, width), self.resize_method)
            paddings = [[0, 0], [top, size[0] - height - top], [left, size[1] - width - left],
                        [0, 0]]
            return tf.pad(small, paddings)
        crop = maps[:, top:top + height, left:left + width]  # the padding's map dropped
        return postprocess.resize_spatial(crop, size, self.resize_method)


def _region(size: tuple, fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centred region of ``fraction`` of ``size``."""
    height = min(size[0], max(1, round(size[0] * fraction)))
    width = min(size[1], max(1, round(size[1] * fraction)))
    return (size[0] - height) // 2, (size[1] - width) // 2, height, width


def _check_pad_value(value):
    if isinstance(value, str):
        return validation.one_of("pad_value", value, ("mean",))
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise validation.type_error("pad_value", '"mean" or a finite number', repr(value))
    return float(value)


_RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                   "gaussian", "mitchellcubic")
