"""keras_hub's ViT and BERT, built from small random configurations (no presets: nothing is
downloaded): their attention lives inside custom layers (ViTEncoder, TransformerEncoder),
BERT takes dict inputs (token ids, segment ids, padding mask). Issue 15.

keras_hub is an optional extra (``pip install -e ".[hub]"``), not part of the test extra:
it pulls tensorflow-text, which is pinned to one TensorFlow minor version, so a resolver
installing both may pick an older TensorFlow. Without it these tests are skipped."""

import keras
import numpy as np
import pytest
import tensorflow as tf

keras_hub = pytest.importorskip(
    "keras_hub", reason="keras_hub is not installed (the optional 'hub' extra)")

from saliencekit.attributions import (  # noqa: E402
    AttentionRollout,
    GradCAM,
    IntegratedGradients,
    LayerCAM,
    Saliency,
    SmoothGrad,
    TransformerAttribution,
)
from saliencekit.attributions.attention import rollout  # noqa: E402

SIDE, PATCH, LENGTH, VOCAB = 16, 4, 10, 30


@pytest.fixture(scope="module")
def vit():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIDE, SIDE, 3), patch_size=PATCH, num_layers=2, num_heads=2,
        hidden_dim=8, mlp_dim=16)
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=3,
                                               preprocessor=None)


@pytest.fixture(scope="module")
def bert():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=LENGTH)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2,
                                               preprocessor=None)


def images(n=3):
    return np.random.default_rng(0).uniform(0, 1, (n, SIDE, SIDE, 3)).astype("float32")


def bert_inputs():
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, LENGTH)).astype("int32")
    ids[0, 6:] = 0
    ids[2, 8:] = 0
    segments = np.zeros_like(ids)
    segments[:, 4:] = 1
    return {"token_ids": ids, "segment_ids": segments,
            "padding_mask": (ids != 0).astype("int32")}


def attention_layers(model):
    return [block.mha for block in model.backbone.get_layer("vit_encoder").encoder_layers]


def test_vit_attention_rollout_reads_the_encoder_attention(vit):
    x = images()
    weights = [w.copy() for w in vit.get_weights()]
    explainer = AttentionRollout(vit)
    maps = explainer(x).numpy()
    assert explainer.token_grid == (SIDE // PATCH, SIDE // PATCH)  # class token dropped
    # by hand, block by block, through keras_hub's own layers
    tokens = keras.Model(vit.backbone.input,
                         vit.backbone.get_layer("vit_patching_and_embedding").output)(x)
    scores = []
    for block in vit.backbone.get_layer("vit_encoder").encoder_layers:
        normed = block.layer_norm_1(tokens)
        scores.append(block.mha(normed, normed, return_attention_scores=True)[1])
        tokens = block(tokens)
    grid = rollout(scores).numpy()[:, 0, 1:].reshape(3, 4, 4, 1)
    np.testing.assert_allclose(maps, tf.image.resize(grid, (SIDE, SIDE)).numpy(), rtol=1e-5,
                               atol=1e-6)
    # the model is untouched: no hook left on its attention layers, same weights
    for layer in attention_layers(vit):
        assert "_compute_attention" not in vars(layer)
    for before, after in zip(weights, vit.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_vit_transformer_attribution_cams_and_gradients(vit):
    x = images()
    maps = TransformerAttribution(vit)(x, [0, 1, 2]).numpy()
    assert maps.shape == (3, SIDE, SIDE, 1) and np.all(maps >= 0) and np.any(maps > 0)
    assert not np.allclose(maps, TransformerAttribution(vit)(x, [1, 2, 0]).numpy())
    # CAMs on the patch tokens (the encoder is one custom layer: its output's patch tokens
    # get no gradient from a head on the class token, so the embedding's are named)
    for method in (GradCAM, LayerCAM):
        cam = method(vit, conv_layer="vit_patching_and_embedding")
        assert cam.token_grid == (4, 4)
        cams = cam(x, [0, 1, 2]).numpy()
        assert cams.shape == (3, SIDE, SIDE, 1) and np.all(np.isfinite(cams))
        if method is GradCAM:  # (LayerCAM's positive part is empty on this random model)
            assert np.any(cams > 0)
    for explainer in (Saliency(vit), IntegratedGradients(vit, steps=4)):
        pixels = explainer(x, [0, 1, 2]).numpy()
        assert pixels.shape == (3, SIDE, SIDE, 1) and np.any(pixels != 0)


def test_bert_dict_inputs_per_token_maps(bert):
    inputs = bert_inputs()
    padding = inputs["padding_mask"] == 0
    for explainer in (Saliency(bert), IntegratedGradients(bert, steps=4),
                      SmoothGrad(bert, nb_samples=3, seed=0)):
        assert explainer.input_layer == "bert_backbone/token_embedding"
        maps = explainer(inputs, [0, 1, 0]).numpy()
        assert maps.shape == (3, LENGTH) and np.all(np.isfinite(maps))
        assert np.all(maps[padding] == 0) and np.any(maps[~padding] != 0)


def test_bert_attention_methods_by_hand(bert):
    inputs = bert_inputs()
    mask = inputs["padding_mask"]
    maps = AttentionRollout(bert, token="mean")(inputs).numpy()
    # by hand: keras_hub's TransformerEncoder returns its scores when asked
    backbone = bert.backbone
    x = keras.Model(backbone.input, backbone.get_layer("embeddings_dropout").output)(inputs)
    scores = []
    for i in range(2):
        x, s = backbone.get_layer(f"transformer_layer_{i}")(
            x, padding_mask=mask, return_attention_scores=True)
        scores.append(s)
    joint = rollout(scores).numpy()
    keep = mask.astype("float32")
    expected = (joint * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True) * keep
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    relevance = TransformerAttribution(bert, token="class")(inputs, [0, 1, 0]).numpy()
    assert relevance.shape == (3, LENGTH) and np.all(relevance[mask == 0] == 0)
    assert np.all(relevance[:, 0] >= 1)  # [CLS]'s own row starts at the identity
