"""Small real Keras models of every kind, and the explainers under test."""

import keras
import numpy as np

IMAGE_SHAPE = (12, 12, 3)
CLASSES = 4


def small_cnn(seed=0, activation="relu"):
    """Sequential CNN with a fused activation, batch norm, pooling and a dense head."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Conv2D(6, 3, activation=activation, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(8, 3, activation=activation, name="last_conv"),
        keras.layers.MaxPooling2D(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ])


def functional_cnn(seed=1):
    """Functional CNN with a residual add."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(6, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES)(x)
    return keras.Model(inputs, outputs)


class SubclassedCNN(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(6, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(CLASSES)

    def call(self, inputs, training=False):
        return self.dense(self.pool(self.conv(inputs)))


def subclassed_cnn(seed=2):
    keras.utils.set_random_seed(seed)
    model = SubclassedCNN()
    model(np.zeros((1, *IMAGE_SHAPE), "float32"))
    return model


def nested_cnn(seed=3):
    """Preprocessing + a functional backbone + a head, nested in a Sequential."""
    keras.utils.set_random_seed(seed)
    backbone_in = keras.Input(IMAGE_SHAPE)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="bb_conv1")(backbone_in)
    h = keras.layers.BatchNormalization(name="bb_bn")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="bb_conv2")(h)
    backbone = keras.Model(backbone_in, h, name="backbone")
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Rescaling(2.0, offset=-1.0),
        backbone,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ])


MODEL_FACTORIES = {
    "sequential": small_cnn,
    "functional": functional_cnn,
    "subclassed": subclassed_cnn,
    "nested": nested_cnn,
}


def explainer_factories():
    """name -> callable(model, **overrides) building each explainer with small settings."""
    from saliencekit.attributions import (
        TTA,
        DeconvNet,
        FullGrad,
        GradCAM,
        GradCAMPP,
        GradientInput,
        GuidedBackprop,
        IntegratedGradients,
        LayerCAM,
        Occlusion,
        Saliency,
        ScoreCAM,
        Smoothed,
        SmoothGrad,
        SquareGrad,
        VarGrad,
    )

    noisy = {"nb_samples": 5, "noise": 0.1, "seed": 7}
    return {
        "Saliency": lambda m, **kw: Saliency(m, **kw),
        "SmoothGrad": lambda m, **kw: SmoothGrad(m, **{**noisy, **kw}),
        "SquareGrad": lambda m, **kw: SquareGrad(m, **{**noisy, **kw}),
        "VarGrad": lambda m, **kw: VarGrad(m, **{**noisy, **kw}),
        "GradCAM": lambda m, **kw: GradCAM(m, **kw),
        "FullGrad": lambda m, **kw: FullGrad(m, **kw),
        "Occlusion": lambda m, **kw: Occlusion(m, patch_size=4, patch_stride=3, **kw),
        "GradientInput": lambda m, **kw: GradientInput(m, **kw),
        "GradCAMPP": lambda m, **kw: GradCAMPP(m, **kw),
        "LayerCAM": lambda m, **kw: LayerCAM(m, **kw),
        "SmoothedGradCAM": lambda m, noise=0.1, **kw: Smoothed(
            GradCAM(m, **kw), nb_samples=3, noise=noise, seed=3),
        "IntegratedGradients": lambda m, **kw: IntegratedGradients(m, steps=5, **kw),
        "GuidedBackprop": lambda m, **kw: GuidedBackprop(m, **kw),
        "DeconvNet": lambda m, **kw: DeconvNet(m, **kw),
        "ScoreCAM": lambda m, **kw: ScoreCAM(m, **kw),
        # flips only: the zoomed views of fixed-size models are tested in test_meta.py
        "TTASaliency": lambda m, **kw: TTA(Saliency(m, **kw), scales=(), hflip=True),
        **black_box_factories(),
    }


def black_box_factories():
    """The perturbation (black-box) family, with few samples."""
    from saliencekit.attributions import (
        HsicAttributionMethod,
        KernelShap,
        Lime,
        Rise,
        SobolAttributionMethod,
    )

    few = {"grid_size": 3, "seed": 7}
    return {
        "Rise": lambda m, **kw: Rise(m, **{"nb_samples": 16, **few, **kw}),
        # a kernel wide enough for 0..255 pixels too (xplique's 45 suits [0, 1] images)
        "Lime": lambda m, **kw: Lime(m, **{"nb_samples": 24, "kernel_width": 1e4, **few, **kw}),
        "KernelShap": lambda m, **kw: KernelShap(m, **{"nb_samples": 32, **few, **kw}),
        "Sobol": lambda m, **kw: SobolAttributionMethod(m, **{"nb_design": 4, **few, **kw}),
        "Hsic": lambda m, **kw: HsicAttributionMethod(m, **{"nb_design": 16, **few, **kw}),
    }


EXPLAINERS = sorted(explainer_factories())
# class activation maps: one channel, need a layer with a spatial output
CAMS = {"GradCAM", "GradCAMPP", "LayerCAM", "ScoreCAM", "SmoothedGradCAM"}
# these need a functional or Sequential model
GRAPH_ONLY = CAMS | {"FullGrad", "GuidedBackprop", "DeconvNet"}
# these explain images only (Sobol and HSIC: indices of a grid of image cells, as xplique)
IMAGES_ONLY = {"TTASaliency", "Sobol", "Hsic"}
# black-box methods: no output_layer; their maps have no per-channel gradients
BLACK_BOX = {"Occlusion", "Rise", "Lime", "KernelShap", "Sobol", "Hsic"}
#: one explainer per mechanism (plain gradient, path integral, CAM, biases, substituted
#: layers, meta-explainer, patches, sampled masks): for tests of how a *model* is read, where
#: every other explainer goes through the same model-normalisation path
REPRESENTATIVES = {"Saliency", "IntegratedGradients", "GradCAM", "FullGrad", "GuidedBackprop",
                   "SmoothedGradCAM", "Occlusion", "Rise"}


def thorough(names, keep):
    """``names`` as pytest parameters, those not in ``keep`` marked ``slow`` (``--slow``)."""
    import pytest

    return [name if name in keep else pytest.param(name, marks=pytest.mark.slow)
            for name in names]
