"""Meta-explainers: explainers that wrap any explainer."""

from __future__ import annotations

import tensorflow as tf

from ..commons import random, validation
from .base import BlackBoxExplainer


class Smoothed(BlackBoxExplainer):
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
        if not isinstance(explainer, BlackBoxExplainer):
            raise validation.type_error(
                "explainer", "a saliencekit explainer", type(explainer).__name__
            )
        self.explainer = explainer
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.noise = validation.non_negative_float("noise", noise)
        self.seed = validation.optional_seed("seed", seed)
        super().__init__(
            explainer.model,
            batch_size=explainer.batch_size,
            operator=explainer.operator,
            jit_compile=explainer.jit_compile,
        )
        self._explained = explainer._explained  # targets resolve on the wrapped output

    def __repr__(self) -> str:
        return (f"Smoothed({self.explainer!r}, nb_samples={self.nb_samples}, "
                f"noise={self.noise}, seed={self.seed})")

    def _batch(self, inputs, targets, seeds):
        def sample_maps(sample):
            noisy = random.noisy(inputs, self.noise, seeds, sample)
            # a stochastic wrapped explainer gets its own seed per sample
            inner_seeds = tf.stack([seeds[:, 0], seeds[:, 1] * 7919 + sample + 1], axis=1)
            wrapped = self.explainer
            return wrapped._postprocess(wrapped._batch(noisy, targets, inner_seeds), noisy)

        # The first sample gives the accumulator its shape (a loop variable needs one); the
        # rest run one at a time in a loop.
        total = sample_maps(tf.constant(0, tf.int64))
        for sample in tf.range(1, self.nb_samples, dtype=tf.int64):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # memory bound
            total += tf.ensure_shape(sample_maps(sample), total.shape)
        return total / self.nb_samples
