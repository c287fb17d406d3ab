"""Built-in nets for ``mochac bench``, fed random data of the tutorials' shapes."""

from __future__ import annotations

import numpy as np

from mochac.layers import (
    ConvolutionLayer,
    InnerProductLayer,
    MemoryDataLayer,
    PoolingLayer,
    SoftmaxLossLayer,
)
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


BUILTIN = {"lenet": lenet}
