"""Vision transformers: CAMs on tokens, attention rollout, TransformerAttribution, and the
other methods' pixel maps on a tiny ViT (issue 15)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from saliencekit.attributions import (
    AttentionRollout,
    GradCAM,
    GradCAMPP,
    IntegratedGradients,
    LayerCAM,
    Occlusion,
    Rise,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    TransformerAttribution,
)
from saliencekit.attributions.attention import gradient_rollout, rollout

SIDE, PATCH, DIM, CLASSES = 8, 4, 8, 3
GRID = SIDE // PATCH  # 2 x 2 patches


class ClassToken(keras.layers.Layer):
    """A learnt class token prepended to the patch tokens (as Keras' ViT example)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, tokens):
        batch = keras.ops.shape(tokens)[0]
        token = keras.ops.broadcast_to(self.token, (batch, 1, tokens.shape[-1]))
        return keras.ops.concatenate([token, tokens], axis=1)


class AddPositions(keras.layers.Layer):
    """Learnt position embeddings added to the tokens."""

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(1, *input_shape[1:]), initializer="random_normal")

    def call(self, tokens):
        return tokens + self.positions


def tiny_vit(seed=0, class_token=True, patches="conv", blocks=2, pool=None, channels=3):
    """A ViT as people write it in Keras 3: patches (strided Conv2D, or Reshape of pixel
    patches and a Dense), optional class token, position embeddings, pre-norm blocks of
    MultiHeadAttention + MLP, a head on the class token or on the mean of tokens."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, channels))
    if patches == "conv":
        x = keras.layers.Conv2D(DIM, PATCH, strides=PATCH, name="patches")(inputs)
        x = keras.layers.Reshape((GRID * GRID, DIM))(x)
    else:
        x = keras.layers.Reshape((GRID, PATCH, GRID, PATCH, channels))(inputs)
        x = keras.layers.Permute((1, 3, 2, 4, 5))(x)
        x = keras.layers.Reshape((GRID * GRID, PATCH * PATCH * channels))(x)
        x = keras.layers.Dense(DIM, name="patches")(x)
    if class_token:
        x = ClassToken(name="class_token")(x)
    x = AddPositions(name="positions")(x)
    for b in range(blocks):
        h = keras.layers.LayerNormalization(name=f"block{b}_norm1")(x)
        h = keras.layers.MultiHeadAttention(2, DIM // 2, name=f"block{b}_attention")(h, h)
        x = keras.layers.Add(name=f"block{b}_add1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block{b}_norm2")(x)
        h = keras.layers.Dense(2 * DIM, activation="gelu", name=f"block{b}_mlp1")(h)
        h = keras.layers.Dense(DIM, name=f"block{b}_mlp2")(h)
        x = keras.layers.Add(name=f"block{b}_out")([x, h])
    x = keras.layers.LayerNormalization(name="norm")(x)
    pool = pool or ("class" if class_token else "mean")
    x = x[:, 0] if pool == "class" else keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="head")(x))


def images(n=3, seed=0, channels=3):
    return np.random.default_rng(seed).uniform(0.1, 1, (n, SIDE, SIDE, channels)).astype(
        "float32")


TARGETS = np.array([0, 1, 2])


@pytest.mark.parametrize("method", [GradCAM, GradCAMPP, LayerCAM, ScoreCAM])
def test_cams_map_tokens_back_to_the_patch_grid(method):
    model = tiny_vit()
    cam = method(model)
    assert cam.conv_layer_name == "block1_norm1"  # the input of the last attention
    assert cam.token_grid == (GRID, GRID)
    maps = cam(images(), TARGETS).numpy()
    assert maps.shape == (3, SIDE, SIDE, 1) and np.all(np.isfinite(maps))
    # by hand for GradCAM: the layer's tokens, class token dropped, on the 2 x 2 grid
    if method is GradCAM:
        tapped = keras.Model(model.input, [model.get_layer("block1_norm1").output,
                                             model.output])
        x = tf.constant(images())
        with tf.GradientTape() as tape:
            tokens, logits = tapped(x)
            score = tf.reduce_sum(logits * tf.one_hot(TARGETS, CLASSES), -1)
        grads = tape.gradient(score, tokens).numpy()[:, 1:]
        acts = tokens.numpy()[:, 1:]
        cam_grid = np.maximum((acts * grads.mean(1, keepdims=True)).sum(-1), 0)
        expected = tf.image.resize(cam_grid.reshape(3, GRID, GRID, 1), (SIDE, SIDE)).numpy()
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)


def test_named_block_reshape_patches_and_token_grid():
    model = tiny_vit(patches="reshape", class_token=False, blocks=1)
    cam = GradCAM(model, conv_layer="block0_out")
    assert cam.token_grid == (GRID, GRID)  # the aspect ratio: no 4-D patch layer
    assert cam(images(), TARGETS).shape == (3, SIDE, SIDE, 1)
    with pytest.raises(ValueError, match="token_grid"):
        GradCAM(model, conv_layer="block0_out", token_grid=(3, 3))
    assert GradCAM(model, conv_layer="block0_out", token_grid=(4, 1)).token_grid == (4, 1)


def test_cnn_default_layer_is_unchanged():
    model = keras.Sequential([keras.Input((SIDE, SIDE, 3)),
                              keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Reshape((36, 4)),
                              keras.layers.Dense(4, name="per_position"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2)])
    cam = GradCAM(model)
    assert cam.conv_layer_name == "conv" and cam.token_grid is None
    # a rank-3 layer named explicitly: positions on the conv layer's 6 x 6 grid
    named = GradCAM(model, conv_layer="per_position")
    assert named.token_grid == (6, 6)


@pytest.mark.parametrize("method", [
    lambda m: Saliency(m), lambda m: IntegratedGradients(m, steps=4),
    lambda m: SmoothGrad(m, nb_samples=3, seed=0),
    lambda m: Occlusion(m, patch_size=PATCH), lambda m: Rise(m, nb_samples=16, seed=0)])
def test_gradient_noisy_and_black_box_methods_give_pixel_maps(method):
    maps = method(tiny_vit())(images(), TARGETS).numpy()
    assert maps.shape == (3, SIDE, SIDE, 1) and np.all(np.isfinite(maps))
    assert np.any(maps != 0)


def one_patch_vit(patch=3):
    """A ViT whose class depends on one patch only (constructed weights): the patch layer
    writes a patch's pixel sum ``c`` into channel 0; the position embedding marks patch
    ``patch`` in channels 1 and 2. LayerNormalization maps a token ``[c, 0, ...]`` to the
    same vector for every ``c > 0``, so only the marked token carries its content; attention
    and MLP outputs are zeroed (blocks are identities); the head is on the mean of tokens."""
    model = tiny_vit(class_token=False, blocks=1, channels=1)
    conv = np.zeros((PATCH, PATCH, 1, DIM), "float32")
    conv[..., 0, 0] = 1.0
    model.get_layer("patches").set_weights([conv, np.zeros(DIM, "float32")])
    positions = np.zeros((1, GRID * GRID, DIM), "float32")
    positions[0, patch, 1], positions[0, patch, 2] = 20.0, -20.0
    model.get_layer("positions").set_weights([positions])
    for name in ("block0_attention", "block0_mlp2"):
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    head = np.zeros((DIM, CLASSES), "float32")
    head[0, 1] = 1.0  # class 1: the marked patch's content
    model.get_layer("head").set_weights([head, np.zeros(CLASSES, "float32")])
    return model


def test_a_vit_deciding_on_one_patch_peaks_on_it():
    model = one_patch_vit(patch=3)  # bottom right
    x = images(channels=1)
    brighter = x.copy()
    brighter[:, 4:, 4:] += 0.2
    dimmer = x.copy()
    dimmer[:, :4, :4] += 0.2
    assert np.all(model(brighter)[:, 1] > model(x)[:, 1])
    # other patches: no effect (but through LayerNormalization's epsilon)
    np.testing.assert_allclose(model(dimmer), model(x), rtol=1e-4)
    targets = [1, 1, 1]
    # (a black baseline or occlusion would cross c = 0, where LayerNormalization does see
    # the other patches: theirs is a dim grey)
    for explainer in (Saliency(model), IntegratedGradients(model, steps=8, baseline_value=0.05),
                      SmoothGrad(model, nb_samples=4, noise=0.05, seed=0),
                      Occlusion(model, patch_size=PATCH, occlusion_value=0.05),
                      LayerCAM(model, conv_layer="block0_out")):
        maps = explainer(x, targets).numpy()[..., 0]
        inside = np.abs(maps[:, 4:, 4:]).mean((1, 2))
        outside = np.abs(maps[:, :4, :]).mean((1, 2))
        assert np.all(inside > 10 * outside + 1e-9), type(explainer).__name__


def hand_attention(seed=0, layers=3, tokens=5, heads=2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(layers, 2, heads, tokens, tokens))
    return [tf.nn.softmax(tf.constant(z, tf.float32), -1) for z in logits]


def test_rollout_equals_its_closed_form():
    attentions = hand_attention()
    eye = np.eye(5)
    expected = np.stack([eye] * 2)
    for a in attentions:
        expected = np.einsum("bij,bjk->bik", 0.5 * a.numpy().mean(1) + 0.5 * eye, expected)
    np.testing.assert_allclose(rollout(attentions).numpy(), expected, rtol=1e-5, atol=1e-6)
    # max fusion; rows of a rollout are distributions
    maxed = np.stack([eye] * 2)
    for a in attentions:
        step = 0.5 * a.numpy().max(1) + 0.5 * eye
        maxed = np.einsum("bij,bjk->bik", step / step.sum(-1, keepdims=True), maxed)
    np.testing.assert_allclose(rollout(attentions, "max").numpy(), maxed, rtol=1e-5)
    np.testing.assert_allclose(rollout(attentions, discard_ratio=0.5).numpy().sum(-1), 1,
                               rtol=1e-5)
    # one layer, uniform attention: half to itself, half spread
    uniform = [tf.fill((1, 2, 4, 4), 0.25)]
    np.testing.assert_allclose(rollout(uniform).numpy()[0], 0.5 * np.eye(4) + 0.125)


def test_gradient_rollout_closed_form():
    attentions, gradients = hand_attention(1, layers=2), hand_attention(2, layers=2)
    gradients = [g - 0.2 for g in gradients]  # signed
    relevance = np.stack([np.eye(5)] * 2)
    for a, g in zip(attentions, gradients):
        weighted = np.maximum(a.numpy() * g.numpy(), 0).mean(1)
        relevance = relevance + np.einsum("bij,bjk->bik", weighted, relevance)
    np.testing.assert_allclose(gradient_rollout(attentions, gradients).numpy(), relevance,
                               rtol=1e-5, atol=1e-6)


def test_attention_rollout_reads_the_model_attention():
    model = tiny_vit()
    x = images()
    explainer = AttentionRollout(model)
    assert explainer.token_grid == (GRID, GRID)
    maps = explainer(x).numpy()
    # by hand: each layer's scores from a model the user could write
    scores = []
    for b in range(2):
        layer = model.get_layer(f"block{b}_attention")
        norm = keras.Model(model.input, model.get_layer(f"block{b}_norm1").output)(x)
        scores.append(layer(norm, norm, return_attention_scores=True)[1])
    joint = rollout(scores).numpy()
    grid = joint[:, 0, 1:].reshape(3, GRID, GRID, 1)
    np.testing.assert_allclose(maps, tf.image.resize(grid, (SIDE, SIDE)).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert AttentionRollout(model, head_fusion="max", discard_ratio=0.5)(x).shape == maps.shape
    means = AttentionRollout(tiny_vit(class_token=False), token="mean")(x)
    assert means.shape == maps.shape


def test_transformer_attribution_on_a_vit():
    model = tiny_vit()
    maps = TransformerAttribution(model)(images(), TARGETS).numpy()
    assert maps.shape == (3, SIDE, SIDE, 1) and np.all(maps >= 0) and np.any(maps > 0)
    other = TransformerAttribution(model)(images(), [1, 2, 0]).numpy()
    assert not np.allclose(maps, other)  # it depends on the class, unlike rollout


@pytest.mark.parametrize("make", [
    lambda m: AttentionRollout(m, batch_size=2), lambda m: TransformerAttribution(m, batch_size=2),
    lambda m: GradCAM(m, batch_size=2)])
def test_invariances_on_a_vit(make, tmp_path):
    """One trace, batching, the model untouched, explain_to."""
    model = tiny_vit()
    weights = [w.copy() for w in model.get_weights()]
    layers = len(model.layers)
    x = images(5)
    targets = np.arange(5) % CLASSES
    explainer = make(model)
    maps = explainer(x, targets).numpy()
    assert explainer._kernel.experimental_get_tracing_count() == 1
    whole = type(explainer)(model, batch_size=5)(x, targets).numpy()
    np.testing.assert_allclose(maps, whole, rtol=1e-5, atol=1e-6)
    store = explainer.explain_to(tmp_path / "maps", x, targets)
    np.testing.assert_allclose(store.load(), maps, rtol=1e-6)
    assert len(model.layers) == layers
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_attention_errors():
    cnn = keras.Sequential([keras.Input((SIDE, SIDE, 3)), keras.layers.Conv2D(2, 3),
                            keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        AttentionRollout(cnn)
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(tiny_vit(), head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(tiny_vit(), discard_ratio=1.0)
    with pytest.raises(ValueError, match="token"):
        AttentionRollout(tiny_vit(), token="first")


class SubclassedAttention(keras.layers.MultiHeadAttention):
    """A MultiHeadAttention subclass (as keras_hub's CachedMultiHeadAttention)."""


class Block(keras.layers.Layer):
    """A transformer block as one custom layer: its attention is not in the model's graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization()
        self.attention = SubclassedAttention(2, DIM // 2)
        self.mlp = keras.layers.Dense(DIM, activation="gelu")

    def call(self, x):
        h = self.norm(x)
        x = x + self.attention(h, h)
        return x + self.mlp(x)


def test_attention_inside_custom_layers_is_recorded():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(DIM, PATCH, strides=PATCH)(inputs)
    x = ClassToken()(keras.layers.Reshape((GRID * GRID, DIM))(x))
    blocks = [Block(name=f"block{b}") for b in range(2)]
    for block in blocks:
        x = block(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x[:, 0]))
    x = images()
    explainer = AttentionRollout(model, batch_size=2)
    maps = explainer(x).numpy()
    assert explainer.token_grid == (GRID, GRID)
    tokens = keras.Model(model.input, model.layers[3].output)(x)  # after the class token
    scores = []
    for block in blocks:
        h = block.norm(tokens)
        scores.append(block.attention(h, h, return_attention_scores=True)[1])
        tokens = block(tokens)
    grid = rollout(scores).numpy()[:, 0, 1:].reshape(3, GRID, GRID, 1)
    np.testing.assert_allclose(maps, tf.image.resize(grid, (SIDE, SIDE)).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert explainer._kernel.experimental_get_tracing_count() == 1
    relevance = TransformerAttribution(model)(x, TARGETS).numpy()
    assert np.all(relevance >= 0) and np.any(relevance > 0)
    assert not np.allclose(relevance, TransformerAttribution(model)(x, [1, 2, 0]).numpy())
    for block in blocks:  # no hook left on the layers
        assert "_compute_attention" not in vars(block.attention)
