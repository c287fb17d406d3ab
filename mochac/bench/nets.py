"""Built-in nets for ``mochac bench``, fed random data of the tutorials' shapes."""

from __future__ import annotations

import dataclasses

import numpy as np

from mochac.layers import (
    ConvolutionLayer,
    InnerProductLayer,
    MemoryDataLayer,
    PoolingLayer,
    SoftmaxLossLayer,
)
from mochac.layers.normalization import LRNLayer, LRNMode
from mochac.layers.pooling import Pooling
from mochac.neurons import ReLU


def random_data(batch: int, shape, classes: int, seed: int = 0) -> MemoryDataLayer:
    """Return a MemoryDataLayer serving four batches of random images and labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch * 4, *shape), dtype=np.float32)
    y = rng.integers(0, classes, (batch * 4, 1)).astype(np.float32)
    return MemoryDataLayer(name="data", batch_size=batch, data=[x, y])


def lenet(batch: int) -> list:
    """Return the layers of the MNIST tutorial's LeNet on random 28x28 images."""
    return [
        random_data(batch, (1, 28, 28), 10),
        ConvolutionLayer(
            name="conv1", n_filter=20, kernel=(5, 5), bottoms=["data"], tops=["conv1"]
        ),
        PoolingLayer(
            name="pool1",
            kernel=(2, 2),
            stride=(2, 2),
            bottoms=["conv1"],
            tops=["pool1"],
        ),
        ConvolutionLayer(
            name="conv2", n_filter=50, kernel=(5, 5), bottoms=["pool1"], tops=["conv2"]
        ),
        PoolingLayer(
            name="pool2",
            kernel=(2, 2),
            stride=(2, 2),
            bottoms=["conv2"],
            tops=["pool2"],
        ),
        InnerProductLayer(
            name="ip1", output_dim=500, neuron=ReLU(), bottoms=["pool2"], tops=["ip1"]
        ),
        InnerProductLayer(name="ip2", output_dim=10, bottoms=["ip1"], tops=["ip2"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
    ]


def cifar10_full(batch: int) -> list:
    """Return the layers of the CIFAR-10 tutorial's full net on random 32x32 images.

    The same geometry as examples/cifar10/full_net.py: three 5x5 convolutions
    (32, 32, 64 filters, pad 2, ReLU), max then mean 3x3/2 pooling,
    within-channel LRN after the first two pools, and a 10-way inner product.
    """
    layers = [random_data(batch, (3, 32, 32), 10)]
    bottom = "data"
    for number, filters in enumerate((32, 32, 64), start=1):
        layers.append(
            ConvolutionLayer(
                name=f"conv{number}",
                n_filter=filters,
                kernel=(5, 5),
                pad=(2, 2),
                neuron=ReLU(),
                bottoms=[bottom],
                tops=[f"conv{number}"],
            )
        )
        layers.append(
            PoolingLayer(
                name=f"pool{number}",
                kernel=(3, 3),
                stride=(2, 2),
                pooling=Pooling.Max() if number == 1 else Pooling.Mean(),
                bottoms=[f"conv{number}"],
                tops=[f"pool{number}"],
            )
        )
        bottom = f"pool{number}"
        if number < 3:
            layers.append(
                LRNLayer(
                    name=f"norm{number}",
                    kernel=3,
                    scale=5e-5,
                    power=0.75,
                    mode=LRNMode.WithinChannel(),
                    bottoms=[bottom],
                    tops=[f"norm{number}"],
                )
            )
            bottom = f"norm{number}"
    layers += [
        InnerProductLayer(name="ip1", output_dim=10, bottoms=[bottom], tops=["ip1"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip1", "label"]),
    ]
    return layers


BUILTIN = {"lenet": lenet, "cifar10": cifar10_full}


def batch_sizes(layers) -> dict[str, tuple[int, ...]]:
    """Return the batch sizes that the input layers of ``layers`` set, by layer.

    Input layers are the data layers (field ``batch_size``) and
    RandomNormalLayer (field ``batch_sizes``, one per top).
    """
    found = {}
    for layer in layers:
        if hasattr(layer, "batch_sizes"):
            found[layer.label] = tuple(layer.batch_sizes)
        elif getattr(layer, "is_source", False) and hasattr(layer, "batch_size"):
            found[layer.label] = (layer.batch_size,)
    return found


def with_batch_size(layers, batch: int) -> list:
    """Return ``layers`` with every input layer set to produce ``batch`` samples.

    The other layers are the same objects. See batch_sizes for the input layers.
    """
    changed = []
    for layer in layers:
        if hasattr(layer, "batch_sizes"):
            sizes = (batch,) * len(layer.batch_sizes)
            layer = dataclasses.replace(layer, batch_sizes=sizes)
        elif getattr(layer, "is_source", False) and hasattr(layer, "batch_size"):
            layer = dataclasses.replace(layer, batch_size=batch)
        changed.append(layer)
    return changed
