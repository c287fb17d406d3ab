"""The "full" CIFAR-10 net of Mocha's tutorial, translated from Caffe.

``common_layers()`` returns conv1 -> pool1 -> norm1 -> conv2 -> pool2 ->
norm2 -> conv3 -> pool3 -> ip1, the layers the training and the test net
share. Building both nets from the same layer objects on one backend makes
them share parameters.

As in Caffe's net and Mocha's tutorial, pool1 carries the ReLU of the first
stage (conv1 has none), while conv2 and conv3 apply theirs before pooling.
"""

from mochac import (
    ConvolutionLayer,
    GaussianInitializer,
    InnerProductLayer,
    L2Regu,
    Neurons,
    Pooling,
    PoolingLayer,
)
from mochac.layers.normalization import LRNLayer, LRNMode

# Filters of conv1, conv2 and conv3 in the tutorial.
FULL_FILTERS = (32, 32, 64)


def common_layers(filters=FULL_FILTERS, conv_init=None):
    """Return the shared layers.

    ``filters`` sets n_filter of conv1..conv3. ``conv_init``, when given,
    replaces the tutorial's Gaussian initializers of the three filters (std
    0.0001, 0.01, 0.01). With those, the loss stays near ln(10) for hundreds
    of iterations, so a short check run may start from Xavier instead.
    """
    inits = [
        GaussianInitializer(std=0.0001),
        GaussianInitializer(std=0.01),
        GaussianInitializer(std=0.01),
    ]
    if conv_init is not None:
        inits = [conv_init] * 3
    conv1 = ConvolutionLayer(
        name="conv1",
        n_filter=filters[0],
        kernel=(5, 5),
        pad=(2, 2),
        stride=(1, 1),
        filter_init=inits[0],
        bottoms=["data"],
        tops=["conv1"],
    )
    pool1 = PoolingLayer(
        name="pool1",
        kernel=(3, 3),
        stride=(2, 2),
        neuron=Neurons.ReLU(),
        bottoms=["conv1"],
        tops=["pool1"],
    )
    norm1 = LRNLayer(
        name="norm1",
        kernel=3,
        scale=5e-5,
        power=0.75,
        mode=LRNMode.WithinChannel(),
        bottoms=["pool1"],
        tops=["norm1"],
    )
    conv2 = ConvolutionLayer(
        name="conv2",
        n_filter=filters[1],
        kernel=(5, 5),
        pad=(2, 2),
        stride=(1, 1),
        filter_init=inits[1],
        neuron=Neurons.ReLU(),
        bottoms=["norm1"],
        tops=["conv2"],
    )
    pool2 = PoolingLayer(
        name="pool2",
        kernel=(3, 3),
        stride=(2, 2),
        pooling=Pooling.Mean(),
        bottoms=["conv2"],
        tops=["pool2"],
    )
    norm2 = LRNLayer(
        name="norm2",
        kernel=3,
        scale=5e-5,
        power=0.75,
        mode=LRNMode.WithinChannel(),
        bottoms=["pool2"],
        tops=["norm2"],
    )
    conv3 = ConvolutionLayer(
        name="conv3",
        n_filter=filters[2],
        kernel=(5, 5),
        pad=(2, 2),
        stride=(1, 1),
        filter_init=inits[2],
        neuron=Neurons.ReLU(),
        bottoms=["norm2"],
        tops=["conv3"],
    )
    pool3 = PoolingLayer(
        name="pool3",
        kernel=(3, 3),
        stride=(2, 2),
        pooling=Pooling.Mean(),
        bottoms=["conv3"],
        tops=["pool3"],
    )
    ip1 = InnerProductLayer(
        name="ip1",
        output_dim=10,
        weight_init=GaussianInitializer(std=0.01),
        weight_regu=L2Regu(250),
        bottoms=["pool3"],
        tops=["ip1"],
    )
    return [conv1, pool1, norm1, conv2, pool2, norm2, conv3, pool3, ip1]
