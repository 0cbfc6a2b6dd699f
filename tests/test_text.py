"""Token inputs: gradient methods at the embedding output, per-token maps (issue 15)."""

import warnings

import keras
import numpy as np
import pytest

from saliencekit.attributions import (
    GradCAM,
    GradientInput,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
    SquareGrad,
    VarGrad,
)

VOCAB, DIM, LENGTH, CLASSES = 12, 5, 7, 3


def bag_of_embeddings(mask_zero=True, seed=0):
    """ids -> Embedding -> mean over (unmasked) tokens -> Dense without bias: the score of
    class c is ``mean_t e_t . w_c``, so every attribution is computable by hand."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=mask_zero, name="embedding")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, use_bias=False, name="head")(x))


IDS = np.array([[3, 5, 1, 7, 0, 0, 0],
                [2, 2, 9, 11, 4, 6, 8],
                [10, 4, 0, 0, 0, 0, 0]], "int32")
TARGETS = np.array([0, 2, 1])


def by_hand(model, ids=IDS, targets=TARGETS, mask_zero=True):
    """Per-token embeddings ``E (N, T, D)`` and gradients ``G = w_c / n`` (0 at padding)."""
    table = model.get_layer("embedding").get_weights()[0]
    w = model.get_layer("head").get_weights()[0]  # (D, C)
    embeddings = table[ids]
    kept = (ids != 0) if mask_zero else np.ones(ids.shape, bool)
    count = kept.sum(1, keepdims=True)
    gradients = (w.T[targets][:, None, :] / count[..., None]) * kept[..., None]
    return embeddings, gradients


def test_gradient_methods_give_per_token_maps_by_hand():
    model = bag_of_embeddings()
    embeddings, gradients = by_hand(model)
    saliency = Saliency(model)
    assert saliency.input_layer == "embedding"  # found: the Embedding fed by the input
    maps = saliency(IDS, TARGETS).numpy()
    assert maps.shape == IDS.shape
    np.testing.assert_allclose(maps, np.abs(gradients).max(-1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Saliency(model, reducer="mean")(IDS, TARGETS).numpy(),
                               np.abs(gradients).mean(-1), rtol=1e-5, atol=1e-7)
    contributions = (embeddings * gradients).sum(-1)  # each token's share of the score
    np.testing.assert_allclose(Saliency(model, reducer="dot")(IDS, TARGETS).numpy(),
                               contributions, rtol=1e-5, atol=1e-7)
    gi = GradientInput(model)(IDS, TARGETS).numpy()
    np.testing.assert_allclose(gi, contributions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(GradientInput(model, reducer="dot")(IDS, TARGETS).numpy(),
                               contributions, rtol=1e-5, atol=1e-7)
    # completeness: the tokens' shares add up to the score
    scores = model(IDS).numpy()[np.arange(3), TARGETS]
    np.testing.assert_allclose(gi.sum(1), scores, rtol=1e-5, atol=1e-6)
    # reducer=None keeps the embedding dimension
    assert Saliency(model, reducer=None)(IDS, TARGETS).shape == (*IDS.shape, DIM)


def test_integrated_gradients_in_embedding_space():
    model = bag_of_embeddings()
    embeddings, gradients = by_hand(model)
    ig = IntegratedGradients(model, steps=4)(IDS, TARGETS).numpy()
    np.testing.assert_allclose(ig, (embeddings * gradients).sum(-1), rtol=1e-5, atol=1e-7)
    # from the embedding of a given token (a linear model: exact with any steps)
    table = model.get_layer("embedding").get_weights()[0]
    ig = IntegratedGradients(model, steps=3, baseline_token=4)(IDS, TARGETS).numpy()
    np.testing.assert_allclose(ig, ((embeddings - table[4]) * gradients).sum(-1),
                               rtol=1e-5, atol=1e-6)
    assert np.all(ig[IDS == 0] == 0)


def test_padding_gets_zero_and_pad_id():
    model = bag_of_embeddings(mask_zero=False)
    embeddings, gradients = by_hand(model, mask_zero=False)
    maps = GradientInput(model)(IDS, TARGETS).numpy()
    np.testing.assert_allclose(maps, (embeddings * gradients).sum(-1), rtol=1e-5, atol=1e-7)
    assert np.any(maps[IDS == 0] != 0)  # no mask: id 0 is a token like any other
    padded = GradientInput(model, pad_id=0)(IDS, TARGETS).numpy()
    assert np.all(padded[IDS == 0] == 0)
    np.testing.assert_allclose(padded[IDS != 0], maps[IDS != 0])
    with pytest.raises(ValueError, match="pad_id"):
        GradientInput(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), pad_id=0)


def test_noisy_family_noise_in_embedding_space():
    model = bag_of_embeddings()
    _, gradients = by_hand(model)
    # a linear model's gradient does not depend on the noise: SmoothGrad is Saliency
    maps = SmoothGrad(model, nb_samples=5, noise=0.5, seed=0)(IDS, TARGETS).numpy()
    np.testing.assert_allclose(maps, np.abs(gradients).max(-1), rtol=1e-5, atol=1e-7)
    assert SquareGrad(model, nb_samples=3, seed=0)(IDS, TARGETS).shape == IDS.shape
    np.testing.assert_allclose(VarGrad(model, nb_samples=3, seed=0)(IDS, TARGETS).numpy(), 0,
                               atol=1e-7)


def test_named_input_layer_after_position_embeddings():
    """Token + position embeddings added: explained at the sum (a named layer)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((LENGTH,), dtype="int32")
    tokens = keras.layers.Embedding(VOCAB, DIM, name="tokens")(inputs)
    positions = keras.layers.Embedding(LENGTH, DIM, name="positions")(
        keras.ops.arange(LENGTH)[None])
    x = keras.layers.Add(name="embedded")([tokens, positions])
    x = keras.layers.Dense(4, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    assert Saliency(model).input_layer == "tokens"
    ig = IntegratedGradients(model, steps=128, input_layer="embedded")
    maps = ig(IDS, TARGETS).numpy()
    # completeness in the space of the summed embeddings, from a zero baseline
    embedded = keras.Model(inputs, model.get_layer("embedded").output)(IDS)
    head = keras.Sequential(model.layers[-3:])
    gap = (model(IDS).numpy() - head(np.zeros_like(embedded)).numpy())[np.arange(3), TARGETS]
    np.testing.assert_allclose(maps.sum(1), gap, rtol=1e-3, atol=1e-4)


def test_model_untouched_one_trace_and_batching():
    model = bag_of_embeddings()
    layers = len(model.layers)
    weights = [w.copy() for w in model.get_weights()]
    ids = np.random.default_rng(0).integers(0, VOCAB, (10, LENGTH)).astype("int32")
    targets = np.arange(10) % CLASSES
    explainer = SmoothGrad(model, batch_size=4, nb_samples=3, seed=1)
    whole = explainer(ids, targets).numpy()
    assert explainer._kernel.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(
        SmoothGrad(model, batch_size=3, nb_samples=3, seed=1)(ids, targets).numpy(), whole,
        rtol=1e-5, atol=1e-7)
    assert len(model.layers) == layers
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(model(ids).numpy(), model(ids).numpy())


def test_explain_to_tokens(tmp_path):
    model = bag_of_embeddings()
    store = GradientInput(model, batch_size=2).explain_to(tmp_path / "maps", IDS, TARGETS)
    np.testing.assert_allclose(store.load(), GradientInput(model)(IDS, TARGETS).numpy(),
                               rtol=1e-6)


def test_input_layer_errors():
    model = bag_of_embeddings()
    with pytest.raises(ValueError, match="input_layer"):
        Saliency(model, input_layer="nope")
    with pytest.raises(ValueError, match="reducer"):
        Saliency(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), reducer="dot")
    with pytest.raises(TypeError):
        GradCAM(model, input_layer="embedding")  # not a token method


def test_occlusion_replaces_tokens_by_an_id():
    """Per token (patch 1 along T), replaced by the pad id: the drop is each token's share
    of the mean, with the count changed (masked padding)."""
    model = bag_of_embeddings()
    maps = Occlusion(model, patch_size=1, occlusion_value=0)(IDS, TARGETS).numpy()
    assert maps.shape == IDS.shape
    expected = np.zeros(IDS.shape, np.float32)
    base = model(IDS).numpy()[np.arange(3), TARGETS]
    for t in range(LENGTH):
        hidden = IDS.copy()
        hidden[:, t] = 0
        expected[:, t] = base - model(hidden).numpy()[np.arange(3), TARGETS]
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    assert np.all(maps[IDS == 0] == 0)


def test_kernelshap_and_lime_take_tokens_as_features():
    """Each token is an interpretable feature; off, it is replaced by ``ref_value`` (a pad
    or [MASK] id). Without masking the bag model is linear in which tokens are kept, so
    Shapley values are each token's ``(e_t - e_pad) . w_c / T``: IntegratedGradients from
    the pad token's embedding."""
    from saliencekit.attributions import KernelShap, Lime

    model = bag_of_embeddings(mask_zero=False)
    expected = IntegratedGradients(model, steps=2, baseline_token=0)(IDS, TARGETS).numpy()
    shap = KernelShap(model, nb_samples=256, ref_value=0.0, seed=0)(IDS, TARGETS).numpy()
    assert shap.shape == IDS.shape
    np.testing.assert_allclose(shap, expected, atol=1e-4)
    lime = Lime(model, nb_samples=256, ref_value=0.0, kernel_width=100.0, seed=0)
    maps = lime(IDS, TARGETS).numpy()
    assert maps.shape == IDS.shape
    kept = IDS != 0  # a pad replaced by the pad id changes nothing
    assert np.corrcoef(maps[kept], expected[kept])[0, 1] > 0.9


def test_maps_made_nan_by_a_reference_the_model_cannot_take_are_said(tmp_path):
    """A masked mean of no token is 0/0: KernelShap's empty coalition with the pad id as
    reference makes every score of it NaN. The maps come back as computed, with a warning
    naming the argument, from explain and from explain_to."""
    from saliencekit.attributions import KernelShap, Smoothed

    explainer = KernelShap(bag_of_embeddings(), nb_samples=16, ref_value=0.0, seed=0)
    with pytest.warns(RuntimeWarning, match=r"KernelShap: 3 of 3 maps hold NaN or Inf values: "
                      r"the model's scores were NaN .* another ref_value"):
        maps = explainer(IDS, TARGETS).numpy()
    assert np.isnan(maps).any(axis=1).all()
    with pytest.warns(RuntimeWarning, match=r"KernelShap: 3 maps hold NaN .* ref_value") as \
            record:
        explainer.explain_to(tmp_path / "maps", IDS, TARGETS)
    assert record[0].filename == __file__
    with pytest.warns(RuntimeWarning, match=r"Smoothed: 3 of 3 maps .* another ref_value"):
        Smoothed(explainer, nb_samples=2, noise=0.0, seed=0)(IDS, TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a [MASK] id the model can take: no warning
        assert np.isfinite(KernelShap(bag_of_embeddings(), nb_samples=16, ref_value=11.0,
                                      seed=0)(IDS, TARGETS).numpy()).all()


def text_transformer(seed=0, length=LENGTH, vocab=VOCAB, classes=CLASSES, dim=8,
                     mask_zero=False):
    """Token + position embeddings, one pre-norm MultiHeadAttention block, mean of tokens."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, dim, mask_zero=mask_zero, name="tokens")(inputs)
    positions = keras.layers.Embedding(length, dim)(keras.ops.arange(length)[None])
    x = keras.layers.Add()([x, positions])
    h = keras.layers.LayerNormalization(name="norm1")(x)
    x = keras.layers.Add()([x, keras.layers.MultiHeadAttention(2, dim // 2)(h, h)])
    h = keras.layers.Dense(dim, activation="relu")(keras.layers.LayerNormalization()(x))
    x = keras.layers.Add(name="block_out")([x, h])
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def test_transformer_methods_give_per_token_maps():
    from saliencekit.attributions import AttentionRollout, LayerCAM, TransformerAttribution

    model = text_transformer()
    assert LayerCAM(model).conv_layer_name == "norm1"
    for explainer in (AttentionRollout(model, token="mean"),
                      TransformerAttribution(model, token="mean"), LayerCAM(model),
                      IntegratedGradients(model, steps=4)):
        maps = explainer(IDS, TARGETS).numpy()
        assert maps.shape == IDS.shape and np.all(np.isfinite(maps)), type(explainer)


def test_attention_methods_on_masked_padding():
    """A mask_zero model: the rebuilt graph keeps the padding mask (its outputs are the
    model's), padding gets 0 and the mean of tokens is over the others."""
    from saliencekit.attributions import AttentionRollout, TransformerAttribution
    from saliencekit.attributions.attention import rollout

    model = text_transformer(mask_zero=True)
    explainer = TransformerAttribution(model, token="mean")
    np.testing.assert_allclose(explainer._tapped(IDS)[0], model(IDS), rtol=1e-5, atol=1e-6)
    assert np.all(explainer(IDS, TARGETS).numpy()[IDS == 0] == 0)
    maps = AttentionRollout(model, token="mean")(IDS).numpy()
    layer = next(layer for layer in model.layers
                 if isinstance(layer, keras.layers.MultiHeadAttention))
    normed = keras.Model(model.input, model.get_layer("norm1").output)(IDS)
    scores = layer(normed, normed, return_attention_scores=True)[1]
    keep = (IDS != 0).astype("float32")
    joint = rollout([scores]).numpy()
    expected = (joint * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True) * keep
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


def test_keywords_task_is_learnt_and_pointed_at():
    """The synthetic keyword task: a bag-of-embeddings model learns it in a few epochs and
    its token maps point at the keyword (pointing game)."""
    from saliencekit.commons.synthetic import keywords

    data = keywords(512, length=10, classes=3, seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(len(data.vocabulary), 8)(inputs)
    x = keras.layers.GlobalMaxPooling1D()(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(data.ids, data.labels, epochs=30, batch_size=64, verbose=0)
    test = keywords(64, length=10, classes=3, seed=1)
    assert model.evaluate(test.ids, test.labels, verbose=0)[1] > 0.95
    for explainer in (Saliency(model), GradientInput(model), IntegratedGradients(model, steps=16),
                      Occlusion(model, patch_size=1, occlusion_value=0)):
        maps = explainer(test.ids, test.labels).numpy()
        pointed = test.masks[np.arange(64), np.argmax(np.abs(maps), axis=1)]
        assert pointed.mean() > 0.9, type(explainer).__name__


def test_text_html_and_figure():
    from saliencekit.commons.plot import plot_text, text_html

    html = text_html(["<script>", "ok", "&"], np.array([[2.0], [0.0], [-1.0]]))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    assert "rgba(214, 38, 41, 1.000)" in html  # the largest positive: opaque red
    assert "rgba(31, 120, 181, 0.500)" in html  # half as large, negative: blue
    with pytest.raises(ValueError, match=r"map: expected one value per token, shape \(2,\)"):
        text_html(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="tokens"):
        text_html("a b", [1.0, 2.0])
    pytest.importorskip("matplotlib")
    figure = plot_text(["a", "b", "c"], {"Saliency": [1, 0, 0], "IG": [0, -1, 1]})
    assert len(figure.axes) == 2 and figure.axes[1].get_title(loc="left") == "IG"
    assert [t.get_text() for t in figure.axes[0].texts] == ["a", "b", "c"]


def ids_and_mask_model(named=True, segments=False, seed=0):
    """Token ids + a padding mask (+ segment ids), as BERT-like models take them: the
    score is ``mean_t e_t . w_c`` over every position (padding included) plus a term of
    the mask alone, so only the padding_mask rule gives padding 0."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    mask = keras.Input((LENGTH,), dtype="int32", name="padding_mask")
    inputs = {"token_ids": ids, "padding_mask": mask}
    x = keras.layers.Embedding(VOCAB, DIM, name="embedding")(ids)
    if segments:
        inputs["segment_ids"] = keras.Input((LENGTH,), dtype="int32", name="segment_ids")
        x = keras.layers.Add(name="summed")([x, keras.layers.Embedding(
            2, DIM, name="segment_embedding")(inputs["segment_ids"])])
    x = keras.layers.GlobalAveragePooling1D()(x)
    m = keras.layers.Dense(DIM, name="mask_term")(keras.ops.cast(mask, "float32"))
    outputs = keras.layers.Dense(CLASSES, use_bias=False, name="head")(
        keras.layers.Add()([x, m]))
    return keras.Model(inputs if named else [ids, mask], outputs)


def test_multi_input_token_models_explain_the_ids():
    """Ids + padding mask, as a dict or a list: maps are per token of the ids, the mask is
    passed through, and its zeros get 0."""
    mask = (IDS != 0).astype("int32")
    for named in (True, False):
        model = ids_and_mask_model(named=named)
        inputs = {"token_ids": IDS, "padding_mask": mask} if named else [IDS, mask]
        table = model.get_layer("embedding").get_weights()[0]
        w = model.get_layer("head").get_weights()[0]
        contributions = (table[IDS] * w.T[TARGETS][:, None] / LENGTH).sum(-1) * mask
        explainer = GradientInput(model)
        assert explainer.input_layer == "embedding"
        maps = explainer(inputs, TARGETS).numpy()
        assert maps.shape == IDS.shape
        np.testing.assert_allclose(maps, contributions, rtol=1e-5, atol=1e-7)
        assert np.all(maps[IDS == 0] == 0)
        # not zeroed without the mask's say: its positions are tokens like any other
        unmasked = {"token_ids": IDS, "padding_mask": np.ones_like(mask)} if named else \
            [IDS, np.ones_like(mask)]
        assert np.any(GradientInput(model)(unmasked, TARGETS).numpy()[IDS == 0] != 0)
        # noise and paths in embedding space, the other inputs tiled alike
        smooth = SmoothGrad(model, nb_samples=3, noise=0.3, seed=0)(inputs, TARGETS).numpy()
        np.testing.assert_allclose(smooth, Saliency(model)(inputs, TARGETS).numpy(),
                                   rtol=1e-5, atol=1e-7)  # linear in the embeddings
        ig = IntegratedGradients(model, steps=3, baseline_token=4)(inputs, TARGETS).numpy()
        expected = ((table[IDS] - table[4]) * w.T[TARGETS][:, None] / LENGTH).sum(-1) * mask
        np.testing.assert_allclose(ig, expected, rtol=1e-5, atol=1e-6)


def test_ids_segments_and_mask_like_bert():
    model = ids_and_mask_model(segments=True)
    segments = np.zeros_like(IDS)
    segments[:, 3:] = 1
    inputs = {"token_ids": IDS, "padding_mask": (IDS != 0).astype("int32"),
              "segment_ids": segments}
    explainer = Saliency(model, batch_size=2)
    assert explainer.input_layer == "embedding"  # the first Embedding fed by an input
    maps = explainer(inputs, TARGETS).numpy()
    assert maps.shape == IDS.shape and np.all(maps[IDS == 0] == 0)
    assert np.all(maps[IDS != 0] > 0)
    assert explainer._kernel.experimental_get_tracing_count() == 1
    # named at the sum of token and segment embeddings: still the ids' positions
    summed = GradientInput(model, input_layer="summed")(inputs, TARGETS).numpy()
    assert summed.shape == IDS.shape
    np.testing.assert_allclose(summed, GradientInput(model)(inputs, TARGETS).numpy() + (
        GradientInput(model, input_layer="segment_embedding")(inputs, TARGETS).numpy()),
        rtol=1e-5, atol=1e-7)  # x . grad is linear in x = token + segment embeddings
    with pytest.raises(ValueError, match=r"input_layer: expected a layer .*\(N, T, D\)"):
        Saliency(model, input_layer="mask_term")


def test_token_models_under_a_strategy_and_xla():
    """Token mode under strategy= (one device; MirroredStrategy on one CPU runs the same
    strategy.run path as on two) and jit_compile=True, once each: the plain maps."""
    import tensorflow as tf

    bag, transformer = bag_of_embeddings(), text_transformer(mask_zero=True)
    mask = (IDS != 0).astype("int32")
    two_inputs = ids_and_mask_model()
    named = {"token_ids": IDS, "padding_mask": mask}
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    cases = [
        (lambda **k: IntegratedGradients(bag, steps=4, baseline_token=2, **k), IDS,
         [{"strategy": one}]),
        (lambda **k: GradientInput(two_inputs, **k), named, [{"strategy": mirrored}]),
        (lambda **k: Saliency(transformer, **k), IDS, [{"jit_compile": True}]),
    ]
    for make, inputs, variants in cases:
        plain = make(batch_size=2)(inputs, TARGETS).numpy()
        for options in variants:
            maps = make(batch_size=2, **options)(inputs, TARGETS).numpy()
            np.testing.assert_allclose(maps, plain, rtol=1e-4, atol=1e-6,
                                       err_msg=str(options))
        assert np.all(plain[IDS == 0] == 0)
