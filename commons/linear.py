"""Weighted linear models fitted in closed form, in TensorFlow (no scikit-learn).

Lime and KernelShap fit a linear model on interpretable samples ``z`` (``(n, M)``) with
sample weights ``w``. Its sufficient statistics, ``G = sum w z~ z~^T`` and ``h = sum w z~ y``
with ``z~ = [z, 1]``, are sums over samples, so they are accumulated online, a chunk of
samples at a time, and the model is solved once at the end: memory holds ``M^2`` numbers
per input, not the samples. :class:`Ridge` and :class:`LinearRegression` also work on their
own (``fit`` / ``predict`` / ``coef_`` / ``intercept_``, as scikit-learn's).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import validation


def _jitter(gram: tf.Tensor) -> tf.Tensor:
    """The diagonal ``(..., size)`` of a tiny ridge that keeps a singular system solvable
    (features never varied, or absent, get a coefficient of 0) without moving a well-posed
    solution measurably."""
    diagonal = tf.linalg.diag_part(gram)
    scale = tf.reduce_mean(diagonal, -1, keepdims=True)
    return (1e-10 * scale + 1e-30) * tf.ones_like(diagonal)


def _add_diagonal(matrices: tf.Tensor, *diagonals: tf.Tensor) -> tf.Tensor:
    """``matrices`` plus diagonal matrices, the off-diagonal entries untouched (one pass
    over the ``(..., M, M)`` matrices, not one per term)."""
    diagonal = tf.linalg.diag_part(matrices)
    for term in diagonals:
        diagonal = diagonal + term
    return tf.linalg.set_diag(matrices, diagonal)


def ridge_solve(gram: tf.Tensor, moment: tf.Tensor, alpha: float, fit_intercept: bool = True
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Coefficients ``(..., M)`` and intercepts ``(...)`` minimising
    ``sum w (y - z.b - c)^2 + alpha |b|^2`` from the augmented statistics ``gram``
    ``(..., M+1, M+1)`` and ``moment`` ``(..., M+1)`` (last index: the constant column). The
    intercept is not penalised (scikit-learn's ``Ridge``); without one, ``c = 0``."""
    gram = tf.cast(gram, tf.float64)
    moment = tf.cast(moment, tf.float64)
    size = gram.shape[-1] if gram.shape[-1] is not None else tf.shape(gram)[-1]
    features = size - 1
    penalty = tf.concat([tf.fill([features], tf.cast(alpha, tf.float64)),
                         tf.zeros([1], tf.float64)], 0)
    if not fit_intercept:  # drop the constant column: pin its coefficient to 0
        keep = tf.concat([tf.ones([features], tf.float64), tf.zeros([1], tf.float64)], 0)
        gram = gram * keep[:, None] * keep[None, :] + tf.linalg.diag(1.0 - keep)
        moment = moment * keep
    system = _add_diagonal(gram, penalty, _jitter(gram))
    beta = tf.linalg.solve(system, moment[..., None])[..., 0]
    return tf.cast(beta[..., :-1], tf.float32), tf.cast(beta[..., -1], tf.float32)


def constrained_solve(gram: tf.Tensor, moment: tf.Tensor, total: tf.Tensor,
                      present: tf.Tensor) -> tf.Tensor:
    """Weighted least squares without intercept under ``sum(b * present) = total``: the
    KKT system ``[[G, a], [a^T, 0]] [b; l] = [h; total]``. ``gram`` ``(..., M, M)``,
    ``moment`` ``(..., M)``, ``total`` ``(...)``, ``present`` ``(..., M)`` (1 for features
    that exist, 0 for padding: their coefficient is 0)."""
    gram = tf.cast(gram, tf.float64)
    a = tf.cast(present, tf.float64)
    gram = _add_diagonal(gram, _jitter(gram), 1.0 - a)
    top = tf.concat([gram, a[..., :, None]], -1)
    bottom = tf.concat([a[..., None, :], tf.zeros_like(a[..., :1])[..., None]], -1)
    system = tf.concat([top, bottom], -2)
    rhs = tf.concat([tf.cast(moment, tf.float64), tf.cast(total, tf.float64)[..., None]], -1)
    solution = tf.linalg.solve(system, rhs[..., None])[..., 0]
    return tf.cast(solution[..., :-1], tf.float32)


def statistics(z: tf.Tensor, y: tf.Tensor, w: tf.Tensor, gram_dtype: tf.DType = tf.float64
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """Augmented ``(G, h)`` of samples ``z`` ``(n, ..., M)``, ``y`` and ``w`` ``(n, ...)``,
    summed over the first axis. ``h`` is float64 (a sum of scores, where an offset common to
    every score cancels later); ``G`` is ``gram_dtype``: float32 halves the memory traffic of
    the ``(..., M+1, M+1)`` accumulator of a sampling loop, and loses nothing measurable
    when the weights are counts or bounded similarities (sums of numbers in [0, 1])."""
    augmented = tf.concat([tf.cast(z, gram_dtype), tf.ones_like(z[..., :1], gram_dtype)], -1)
    weighted = augmented * tf.cast(w, gram_dtype)[..., None]
    gram = tf.einsum("n...i,n...j->...ij", weighted, augmented)
    moment = tf.einsum("n...i,n...->...i", tf.cast(weighted, tf.float64),
                       tf.cast(y, tf.float64))
    return gram, moment


def moment(z: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """The augmented ``h = sum w z~ y`` (float64) of :func:`statistics` alone."""
    y = tf.cast(y, tf.float64) * tf.cast(w, tf.float64)
    return tf.concat([tf.einsum("n...i,n...->...i", tf.cast(z, tf.float64), y),
                      tf.reduce_sum(y, 0)[..., None]], -1)


class Ridge:
    """Weighted ridge regression with an unpenalised intercept, solved in closed form
    (scikit-learn's ``Ridge(alpha)`` objective). Lime's default interpretable model.

    Parameters
    ----------
    alpha : float, default 1.0
        The L2 penalty on the coefficients (not on the intercept).
    fit_intercept : bool, default True
    """

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True):
        self.alpha = validation.non_negative_float("alpha", alpha)
        self.fit_intercept = bool(fit_intercept)
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, fit_intercept={self.fit_intercept})"

    def solve(self, gram: tf.Tensor, moment: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Coefficients and intercepts from accumulated statistics (see :func:`statistics`)."""
        return ridge_solve(gram, moment, self.alpha, self.fit_intercept)

    def fit(self, x, y, sample_weight=None) -> Ridge:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64).reshape(-1)
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
        gram, moment = statistics(x, y, w)
        coef, intercept = self.solve(gram, moment)
        self.coef_ = coef.numpy()
        self.intercept_ = float(intercept.numpy())
        return self

    def predict(self, x) -> np.ndarray:
        if self.coef_ is None:
            raise ValueError(f"{type(self).__name__}: call fit before predict.")
        return np.asarray(x, np.float64) @ self.coef_ + self.intercept_


class LinearRegression(Ridge):
    """Weighted least squares with an intercept (scikit-learn's ``LinearRegression``)."""

    def __init__(self, fit_intercept: bool = True):
        super().__init__(alpha=0.0, fit_intercept=fit_intercept)

    def __repr__(self) -> str:
        return f"LinearRegression(fit_intercept={self.fit_intercept})"
