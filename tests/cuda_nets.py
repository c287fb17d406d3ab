"""Nets that together use every layer family, for the CUDA backend's tests.

``vision`` runs at -O0, so splits, identities, reshapes and separate neuron
kernels stay in it; ``vectors`` runs at -O1 with in-place and fused forms.
Shapes are small and the data random, with seeds fixed.
"""

from __future__ import annotations

import numpy as np

from mochac.layers import (
    AccuracyLayer,
    ArgmaxLayer,
    BinaryAccuracyLayer,
    BinaryCrossEntropyLossLayer,
    ChannelPoolingLayer,
    ConcatLayer,
    ConvolutionLayer,
    CropLayer,
    DropoutLayer,
    ElementWiseFunctors,
    ElementWiseLayer,
    GaussianKLLossLayer,
    HingeLossLayer,
    IdentityLayer,
    Index2OnehotLayer,
    InnerProductLayer,
    LRNLayer,
    LRNMode,
    MemoryDataLayer,
    MemoryOutputLayer,
    MultinomialLogisticLossLayer,
    PoolingLayer,
    PowerLayer,
    RandomMaskLayer,
    RandomNormalLayer,
    ReshapeLayer,
    SoftlabelSoftmaxLossLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SplitLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
)
from mochac.layers.pooling import MeanPooling
from mochac.neurons import ReLU, Sigmoid, Tanh

BATCH = 4


def vision_layers(dtype=np.float32):
    """Convolutions, both poolings (each with a neuron), both LRN modes,
    channel pooling, crop, concat, dropout and the class losses, with the
    copy layers kept."""
    rng = np.random.default_rng(3)
    images = rng.standard_normal((BATCH * 2, 3, 10, 10)).astype(dtype)
    labels = rng.integers(0, 5, (BATCH * 2, 1)).astype(dtype)
    return [
        MemoryDataLayer(name="data", batch_size=BATCH, data=[images, labels]),
        CropLayer(
            name="crop",
            crop_size=(8, 8),
            random_crop=True,
            random_mirror=True,
            bottoms=["data"],
            tops=["cropped"],
        ),
        ConvolutionLayer(
            name="conv1",
            n_filter=4,
            kernel=(3, 3),
            pad=(1, 1),
            neuron=ReLU(),
            bottoms=["cropped"],
            tops=["conv1"],
        ),
        ConvolutionLayer(
            name="conv2",
            n_filter=4,
            n_group=2,
            kernel=(3, 3),
            stride=(2, 2),
            neuron=Tanh(),
            bottoms=["conv1"],
            tops=["conv2"],
        ),
        LRNLayer(name="across", kernel=3, bottoms=["conv2"], tops=["across"]),
        LRNLayer(
            name="within",
            kernel=3,
            mode=LRNMode.WithinChannel(),
            bottoms=["across"],
            tops=["within"],
        ),
        SplitLayer(name="fork", bottoms=["within"], tops=["left", "right"]),
        PoolingLayer(
            name="max_pool",
            kernel=(2, 2),
            stride=(1, 1),
            neuron=ReLU(),
            bottoms=["left"],
            tops=["mx"],
        ),
        PoolingLayer(
            name="mean_pool",
            kernel=(3, 3),
            stride=(2, 2),
            pad=(1, 1),
            pooling=MeanPooling(),
            neuron=Sigmoid(),
            bottoms=["right"],
            tops=["mean"],
        ),
        ChannelPoolingLayer(
            name="channel_max", kernel=2, stride=2, bottoms=["mx"], tops=["cmx"]
        ),
        ChannelPoolingLayer(
            name="channel_mean",
            kernel=3,
            stride=1,
            pad=(1, 1),
            pooling=MeanPooling(),
            bottoms=["mean"],
            tops=["cmean"],
        ),
        ReshapeLayer(name="flat_max", shape=(2 * 2 * 2,), bottoms=["cmx"], tops=["fa"]),
        ReshapeLayer(
            name="flat_mean", shape=(4 * 2 * 2,), bottoms=["cmean"], tops=["fb"]
        ),
        ConcatLayer(name="join", dim=-2, bottoms=["fa", "fb"], tops=["joined"]),
        DropoutLayer(name="drop", ratio=0.25, bottoms=["joined"], tops=["dropped"]),
        IdentityLayer(name="same", bottoms=["dropped"], tops=["features"]),
        InnerProductLayer(
            name="ip",
            output_dim=5,
            neuron=Sigmoid(),
            bottoms=["features"],
            tops=["logits"],
        ),
        SoftmaxLossLayer(
            name="loss", weights=(1, 2, 1, 1, 3), bottoms=["logits", "label"]
        ),
        AccuracyLayer(name="accuracy", bottoms=["logits", "label"]),
        ArgmaxLayer(name="argmax", bottoms=["logits"], tops=["guess"]),
    ]


def vectors_layers(dtype=np.float32):
    """Tied inner products, power, every element-wise operation, random
    normal and random mask, one-hot, output, and the element-wise losses."""
    rng = np.random.default_rng(4)
    n = BATCH * 2
    x = rng.standard_normal((n, 6)).astype(dtype)
    labels = rng.integers(0, 3, (n, 1)).astype(dtype)
    soft = rng.random((n, 3)).astype(dtype)
    soft /= soft.sum(axis=1, keepdims=True)
    signs = np.where(rng.random((n, 3)) > 0.5, 1, -1).astype(dtype)
    bits = (rng.random((n, 3)) > 0.5).astype(dtype)
    positive = (0.5 + rng.random((n, 3))).astype(dtype)
    return [
        MemoryDataLayer(
            name="data",
            batch_size=BATCH,
            tops=["x", "label", "soft", "sign", "bit", "sigma"],
            data=[x, labels, soft, signs, bits, positive],
        ),
        RandomNormalLayer(
            name="noise",
            tops=["noise"],
            output_dims=(6,),
            batch_sizes=(BATCH,),
            eltype=dtype,
        ),
        ElementWiseLayer(name="noisy", bottoms=["x", "noise"], tops=["noisy"]),
        InnerProductLayer(
            name="encoder",
            output_dim=3,
            neuron=Tanh(),
            bottoms=["noisy"],
            tops=["code"],
        ),
        TiedInnerProductLayer(
            name="decoder", tied_param_key="encoder", bottoms=["code"], tops=["decoded"]
        ),
        SquareLossLayer(name="reconstruction", bottoms=["decoded", "x"]),
        PowerLayer(
            name="square", power=2, scale=0.5, shift=1.0, bottoms=["code"], tops=["sq"]
        ),
        PowerLayer(name="root", power=0.5, shift=2.0, bottoms=["sq"], tops=["root"]),
        RandomMaskLayer(name="mask", ratio=0.3, bottoms=["root"], tops=["masked"]),
        ElementWiseLayer(
            name="minus",
            operation=ElementWiseFunctors.Subtract(),
            bottoms=["masked", "code"],
            tops=["difference"],
        ),
        ElementWiseLayer(
            name="times",
            operation=ElementWiseFunctors.Multiply(),
            bottoms=["difference", "sigma"],
            tops=["product"],
        ),
        ElementWiseLayer(
            name="over",
            operation=ElementWiseFunctors.Divide(),
            bottoms=["product", "sigma"],
            tops=["scores"],
        ),
        HingeLossLayer(name="hinge", bottoms=["scores", "sign"]),
        BinaryAccuracyLayer(name="binary_accuracy", bottoms=["scores", "sign"]),
        SoftlabelSoftmaxLossLayer(name="soft_loss", bottoms=["scores", "soft"]),
        SoftmaxLayer(name="softmax", bottoms=["scores"], tops=["prob"]),
        MultinomialLogisticLossLayer(name="logistic", bottoms=["prob", "label"]),
        BinaryCrossEntropyLossLayer(name="bce", bottoms=["prob", "bit"]),
        GaussianKLLossLayer(name="kl", bottoms=["code", "sigma"]),
        Index2OnehotLayer(name="onehot", n_class=3, bottoms=["label"], tops=["onehot"]),
        MemoryOutputLayer(name="out", bottoms=["onehot", "prob"]),
    ]


# name -> (layer factory, opt_level)
NETS = {"vision": (vision_layers, 0), "vectors": (vectors_layers, 1)}
