"""LeNet as in Mocha's MNIST tutorial: the layers shared by every net.

``common_layers()`` returns conv1 -> pool1 -> conv2 -> pool2 -> ip1 -> ip2.
Building two nets from the same layer objects on one backend makes them
share parameters, which is how the validation net sees the trained weights.
"""

from mochac import ConvolutionLayer, InnerProductLayer, Neurons, PoolingLayer


def common_layers():
    conv1 = ConvolutionLayer(
        name="conv1", n_filter=20, kernel=(5, 5), bottoms=["data"], tops=["conv1"]
    )
    pool1 = PoolingLayer(
        name="pool1", kernel=(2, 2), stride=(2, 2), bottoms=["conv1"], tops=["pool1"]
    )
    conv2 = ConvolutionLayer(
        name="conv2", n_filter=50, kernel=(5, 5), bottoms=["pool1"], tops=["conv2"]
    )
    pool2 = PoolingLayer(
        name="pool2", kernel=(2, 2), stride=(2, 2), bottoms=["conv2"], tops=["pool2"]
    )
    ip1 = InnerProductLayer(
        name="ip1",
        output_dim=500,
        neuron=Neurons.ReLU(),
        bottoms=["pool2"],
        tops=["ip1"],
    )
    ip2 = InnerProductLayer(name="ip2", output_dim=10, bottoms=["ip1"], tops=["ip2"])
    return [conv1, pool1, conv2, pool2, ip1, ip2]
