"""Attention-based methods for transformers: AttentionRollout, TransformerAttribution.

Both read the attention scores of every ``MultiHeadAttention`` call of the model on a
rebuilt graph (:func:`saliencekit.commons.model.flatten` with ``attention_scores=True``: a
fresh wrapper layer per call returns the scores, the model is not changed), or, for
attention inside custom layers (keras_hub), record them as the model runs
(:func:`saliencekit.commons.model.recording_attention`). The maths is in the pure functions
:func:`fuse_heads`, :func:`rollout` and :func:`gradient_rollout`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import alignment as alignment_lib
from ..commons import model as inspect_model
from ..commons import validation
from .base import BlackBoxExplainer, WhiteBoxExplainer

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(scores: tf.Tensor, how: str = "mean") -> tf.Tensor:
    """``(B, heads, T, T) -> (B, T, T)``: the heads' mean, max or min."""
    return {"mean": tf.reduce_mean, "max": tf.reduce_max, "min": tf.reduce_min}[how](
        scores, axis=1)


def _discard(attention: tf.Tensor, ratio: float) -> tf.Tensor:
    """Zero the lowest ``ratio`` of each ``(T, T)`` matrix's entries (values at or below
    that quantile), never the first token's attention to itself (as jacobgil's
    vit-explain, the reference implementation)."""
    count = attention.shape[-1] * attention.shape[-2]
    k = int(ratio * count)
    if k == 0:
        return attention
    flat = tf.reshape(attention, (-1, count))
    threshold = -tf.math.top_k(-flat, k).values[:, -1:]
    keep = (flat > threshold) | (tf.range(count) == 0)[None]
    return tf.reshape(tf.where(keep, flat, 0.0), tf.shape(attention))


def rollout(attentions: list, head_fusion: str = "mean", discard_ratio: float = 0.0
            ) -> tf.Tensor:
    """Abnar & Zuidema's attention rollout of the layers' scores ``(B, heads, T, T)`` (in
    call order): ``prod_l A_l``, latest layer on the left, with ``A_l`` the fused heads
    plus the residual, ``0.5 W_l + 0.5 I``, rows renormalised (after the discard). Returns
    ``(B, T, T)``: row ``i`` is how much token ``i`` of the last layer draws from each
    input token."""
    joint = None
    for scores in attentions:
        fused = _discard(fuse_heads(tf.cast(scores, tf.float32), head_fusion), discard_ratio)
        eye = tf.eye(fused.shape[-1], dtype=tf.float32)
        step = 0.5 * fused + 0.5 * eye
        step = tf.math.divide_no_nan(step, tf.reduce_sum(step, axis=-1, keepdims=True))
        joint = step if joint is None else tf.matmul(step, joint)
    return joint


def gradient_rollout(attentions: list, gradients: list) -> tf.Tensor:
    """Chefer, Gur & Wolf's relevance: ``R = I``, then for every layer ``R <- R + A_bar R``
    with ``A_bar = mean over heads of relu(grad A * A)`` (their Eq. 13-14). ``(B, T, T)``."""
    relevance = None
    for scores, grads in zip(attentions, gradients):
        scores, grads = tf.cast(scores, tf.float32), tf.cast(grads, tf.float32)
        weighted = tf.reduce_mean(tf.nn.relu(grads * scores), axis=1)  # (B, T, T)
        if relevance is None:
            relevance = tf.eye(weighted.shape[-1], batch_shape=[tf.shape(weighted)[0]])
        relevance = relevance + tf.matmul(weighted, relevance)
    return relevance


class _Attention:
    """What the attention methods share: the scores of every ``MultiHeadAttention`` on a
    rebuilt graph (or, for attention held inside custom layers such as keras_hub's encoders,
    recorded as the model runs), the explained token and the tokens' place in the input."""

    _needs_graph = True

    def _setup_attention(self, token, token_grid) -> None:
        if not (token in ("class", "mean") or (isinstance(token, int) and
                                                not isinstance(token, bool))):
            raise validation.value_error("token", "'class', 'mean' or a token index",
                                         repr(token))
        self.token = token
        graph = inspect_model.flatten(self._explained, attention_scores=True)
        nodes = [n for n in graph.nodes if n.scores is not None]
        #: MultiHeadAttention layers inside custom layers, recorded as the model runs
        self._inner = [] if nodes else inspect_model.inner_attention(self._explained)
        if not nodes and not self._inner:
            raise validation.value_error(
                "model", "a transformer (keras.layers.MultiHeadAttention layers, or "
                "subclasses, in its graph or inside its layers)",
                f"model {inspect_model.model_name(self.model)!r} without one",
                "Gradient, CAM and black-box methods explain any model.")
        # token ids (with other inputs: segments, a padding mask): their padding gets 0
        self._token_model = None
        ids_input = graph.inputs[0]
        if self._input_structure is not None or len(graph.inputs[0].shape) == 2:
            self._token_model = inspect_model.tokens(self._explained, None)
            if self._token_model is None and self._input_structure is not None:
                raise validation.type_error(
                    "model", "a model with one input, or token ids (an input feeding an "
                    "Embedding) with other inputs", f"a model with "
                    f"{len(self._input_structure)} inputs and no Embedding of one")
            if self._input_structure is not None:
                keys = inspect_model.input_keys(graph)
                ids_input = graph.inputs[keys.index(self._token_model.ids_key)]
        self._attention_graph = graph
        self._attention_nodes = nodes
        self._ids_rank = len(ids_input.shape)
        self._ids_length = ids_input.shape[1] if self._ids_rank == 2 else None
        self._image_shape = tuple(ids_input.shape[1:])
        self._token_grid_given = token_grid
        if token_grid is not None and self._ids_rank != 4:
            raise validation.value_error(
                "token_grid", "None for a model whose input is not an image", repr(token_grid))
        if self._ids_rank == 3:
            raise validation.value_error(
                "model", "a transformer of images (N, H, W, C) or token ids (N, T)",
                f"a model of inputs {tuple(ids_input.shape)}")
        self._layout = None  # recorded attention of inputs of unknown shape: per trace
        if nodes:
            query = None
            if nodes[0].inputs:
                producers = {id(n.output): n for n in graph.nodes}
                query = producers.get(id(nodes[0].inputs[0]))
            self._layout = self._layout_of([tuple(n.scores.shape[2:]) for n in nodes], query)
        elif all(None not in spec.shape for spec in self._input_specs(graph)):
            # the shapes of the recorded attention: one eager call on a batch of zeros
            zeros = tf.nest.map_structure(lambda spec: tf.zeros((1, *spec.shape), spec.dtype),
                                          self._input_specs(graph, structured=True))
            with inspect_model.recording_attention(self._inner) as records:
                self._explained(zeros, training=False)
            self._layout = self._layout_of([tuple(r.shape[2:]) for r in records])
        self.token_grid = None if self._layout is None or self._layout[0] is None else \
            self._layout[:2]

    def _input_specs(self, graph, structured: bool = False):
        """The inputs as ``tf.TensorSpec`` without the batch axis: a flat list, or in the
        structure the model takes."""
        specs = [tf.TensorSpec(tuple(t.shape[1:]), keras.backend.standardize_dtype(t.dtype))
                 for t in graph.inputs]
        if not structured:
            return specs
        keys = inspect_model.input_keys(graph)
        if graph.named_inputs is not None:
            return dict(zip(keys, specs))
        return specs[0] if len(specs) == 1 else specs

    def _layout_of(self, shapes: list, query=None) -> tuple:
        """Check the attention's shapes (self-attention over one sequence of a fixed
        length) and find the tokens' place in the input: ``(h, w, extra)`` for an image,
        ``(None, None, extra)`` for token ids. ``query``: the node of the first attention's
        tokens, whose graph tells the patch grid (recorded attention has none)."""
        shapes = set(shapes)
        if len(shapes) != 1 or len(set(next(iter(shapes)))) != 1 or None in next(iter(shapes)):
            raise validation.value_error(
                "model", "self-attention over one token sequence of a fixed length in every "
                "MultiHeadAttention layer", f"attention shapes (query, key) {sorted(shapes)}")
        count = next(iter(shapes))[0]
        layout = (None, None, 0)
        if self._ids_rank == 4:
            given = None if self._token_grid_given is None else validation.int_tuple(
                "token_grid", self._token_grid_given, 2)
            try:
                if query is not None:
                    h, w, extra = alignment_lib.token_grid(
                        self._attention_graph, query, self._image_shape, given)
                else:
                    h, w, extra = alignment_lib.grid_of(count, self._image_shape, given,
                                                        "the attention")
            except ValueError as error:
                raise validation.value_error(
                    "token_grid", "(h, w): the patch grid of the attention's tokens",
                    repr(self._token_grid_given), str(error)) from None
            layout = (h, w, extra)
        elif self._ids_length is not None:
            layout = (None, None, max(count - self._ids_length, 0))
        return layout

    def _recorded(self, inputs, outputs: list):
        """Calls the model on ``inputs`` recording its inner attention; ``outputs`` gets
        the model's outputs. Returns the scores, in call order."""
        with inspect_model.recording_attention(self._inner) as records:
            results = self._explained(inputs, training=False)
        outputs[:] = tf.nest.flatten(results)
        return list(records)

    def _keep(self, inputs) -> tf.Tensor | None:
        """``(B, T)`` 1.0 at the tokens, 0.0 at padding (a token model's zeros with
        ``mask_zero``, a padding mask input's zeros), or None."""
        tokens = self._token_model
        if tokens is None:
            return None
        padding = tokens.padding(inputs)
        if tokens.mask_zero:
            zero = tf.equal(tf.cast(tokens.ids(inputs), tf.int64), 0)
            padding = zero if padding is None else padding | zero
        return None if padding is None else 1.0 - tf.cast(padding, tf.float32)

    def _relevance(self, joint: tf.Tensor, inputs, scores: list) -> tf.Tensor:
        """The explained token's row ``(B, T)`` of a ``(B, T, T)`` rollout, on the input's
        frame: ``(B, h, w)`` patches for images (leading tokens dropped), ``(B, T)``
        tokens for token inputs (padding 0; the mean of tokens is over the others)."""
        h, w, extra = self._layout or self._layout_of([tuple(s.shape[2:]) for s in scores])
        keep = self._keep(inputs)
        if keep is not None and extra:
            keep = tf.pad(keep, [[0, 0], [extra, 0]], constant_values=1.0)
        if self.token == "mean":
            if keep is None:
                row = tf.reduce_mean(joint, axis=1)
            else:
                row = tf.math.divide_no_nan(tf.reduce_sum(joint * keep[:, :, None], axis=1),
                                            tf.reduce_sum(keep, axis=1, keepdims=True))
        else:
            row = joint[:, 0 if self.token == "class" else self.token]
        if keep is not None:
            row = row * keep
        row = row[:, extra:]
        return row if h is None else tf.reshape(row, (-1, h, w))


class AttentionRollout(_Attention, BlackBoxExplainer):
    """Attention rollout: the attention of every layer, heads fused and the residual
    added, multiplied through the layers; the explained token's row.

    Abnar & Zuidema (2020), *Quantifying Attention Flow in Transformers*,
    https://arxiv.org/abs/2005.00928

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer`. The map does not depend
        on the target: rollout explains what the model attends to, not a class.
    head_fusion : {"mean", "max", "min"}, default "mean"
        How each layer's heads are fused.
    discard_ratio : float in [0, 1), default 0.0
        Zero this fraction of the lowest fused attentions of each layer before adding the
        residual (rows renormalised), as jacobgil's vit-explain; the first token's
        attention to itself is kept.
    token : "class", "mean" or int, default "class"
        Whose attention is rolled out: the class token (the first one), the mean over
        tokens (for a head on the mean of tokens), or a token index.
    token_grid : (int, int) or None
        The patch grid of the tokens, when it cannot be found (as in
        :class:`~saliencekit.attributions.GradCAM`: the patch layer's grid, else the
        image's aspect ratio).

    Every ``MultiHeadAttention`` call of the model is read (self-attention over one token
    sequence), from a rebuilt graph; when the graph has none, the calls of the
    ``MultiHeadAttention`` layers (subclasses included) held inside custom layers, such as
    keras_hub's ``TransformerEncoder`` and ``ViTEncoder``, are recorded as the model runs
    (see :func:`saliencekit.commons.model.recording_attention`). Leading tokens beyond the
    patch grid (class, registers) are dropped from the map, which is ``(N, H, W, 1)`` for
    images (patches resized bilinearly) and ``(N, T)`` for token ids. Token models may
    take other inputs beside the ids (segments, a ``padding_mask``, as keras_hub's BERT):
    padding (an ``Embedding(mask_zero=True)``'s id 0, a ``padding_mask``'s zeros) gets 0
    and the mean of tokens is over the others.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import AttentionRollout
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Reshape((4, 48))(keras.layers.Conv2D(48, 4, strides=4)(inputs))
    >>> x = keras.layers.MultiHeadAttention(2, 8)(x, x)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> rollout = AttentionRollout(model, token="mean")
    >>> rollout.token_grid
    (2, 2)
    >>> tuple(rollout(np.ones((1, 8, 8, 3))).shape)
    (1, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 64,
        operator: Any = None,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        token: str | int = "class",
        *,
        token_grid: tuple[int, int] | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.head_fusion = validation.one_of("head_fusion", head_fusion, HEAD_FUSIONS)
        ratio = validation.non_negative_float("discard_ratio", discard_ratio)
        if ratio >= 1:
            raise validation.value_error("discard_ratio", "a number in [0, 1)", discard_ratio)
        self.discard_ratio = ratio
        super().__init__(model, batch_size=batch_size, operator=operator,
                         jit_compile=jit_compile, strategy=strategy)
        self._setup_attention(token, token_grid)
        self._scores = self._attention_graph.model(
            outputs=[n.scores for n in self._attention_nodes]) if self._attention_nodes \
            else None

    def _resolve_targets(self, inputs, targets):
        return targets  # no target: the predicted class is not needed

    def _batch(self, inputs, targets, seeds):
        if self._scores is None:
            scores = self._recorded(inputs, [])
        else:
            scores = self._scores(inputs, training=False)
            scores = list(scores) if isinstance(scores, (list, tuple)) else [scores]
        return self._relevance(rollout(scores, self.head_fusion, self.discard_ratio), inputs,
                               scores)


class TransformerAttribution(_Attention, WhiteBoxExplainer):
    """Transformer attribution (gradient-weighted attention rollout): each layer's
    attention weighted by its gradient, positive part averaged over heads, accumulated
    with the residual.

    Chefer, Gur & Wolf (2021), *Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers*, https://arxiv.org/abs/2103.15679

    ``R = I``; for every attention layer in call order ``R <- R + mean_h(relu(dA * A)) R``,
    with ``dA`` the gradient of the explained score with respect to the attention scores
    ``A`` (after the softmax). The map is the explained token's row of ``R`` (class token,
    mean of tokens or an index), leading tokens beyond the patch grid dropped.

    Parameters
    ----------
    model, output_layer, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.WhiteBoxExplainer`.
    token, token_grid
        As in :class:`AttentionRollout`.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import TransformerAttribution
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Reshape((4, 48))(keras.layers.Conv2D(48, 4, strides=4)(inputs))
    >>> x = keras.layers.MultiHeadAttention(2, 8)(x, x)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> maps = TransformerAttribution(model, token="mean")(np.ones((2, 8, 8, 3)), [0, 1])
    >>> tuple(maps.shape)
    (2, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        token: str | int = "class",
        *,
        token_grid: tuple[int, int] | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(model, output_layer=output_layer, batch_size=batch_size,
                         operator=operator, reducer=None, jit_compile=jit_compile,
                         strategy=strategy)
        self._setup_attention(token, token_grid)
        self._tapped = self._attention_graph.model(
            extra=[n.scores for n in self._attention_nodes]) if self._attention_nodes \
            else self._recording_model

    def _recording_model(self, inputs, training=False):
        """``[*outputs, *scores]``, the scores recorded inside the model's layers."""
        outputs: list = []
        scores = self._recorded(inputs, outputs)
        return [*outputs, *scores]

    def _batch(self, inputs, targets, seeds):
        _, scores, gradients = self._tapped_gradients(self._tapped, inputs, targets,
                                                      wrt_inputs=False)
        gradients = [tf.zeros_like(s) if g is None else g for s, g in zip(scores, gradients)]
        return self._relevance(gradient_rollout(scores, gradients), inputs, scores)
