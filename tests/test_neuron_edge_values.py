"""Neuron and max pooling edge values: float32 epsilon and NaN inputs."""

import numpy as np
import pytest

from mochac import (
    CPUBackend,
    DataError,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    NumericalError,
    PoolingLayer,
    SoftmaxLossLayer,
)


def relu_net(x, dtype, epsilon):
    """An identity inner product with a ReLU, so its top is ReLU(x)."""
    data = MemoryDataLayer(batch_size=1, data=[x], tops=["x"])
    ip = InnerProductLayer(
        name="ip",
        output_dim=x.shape[1],
        neuron=Neurons.ReLU(epsilon=epsilon),
        bottoms=["x"],
        tops=["y"],
    )
    net = Net("relu", CPUBackend(dtype=dtype), [data, ip], force_backward=True)
    net.params["ip"]["weight"][...] = np.eye(x.shape[1])
    net.params["ip"]["bias"][...] = 0
    return net


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_epsilon_clamps_gradient(dtype):
    # 0.1 rounds up in float32: the clamped outputs must still get gradient 0.
    x = np.array([[-5.0, -1.0, 0.05, 0.5, 2.0]])
    net = relu_net(x, dtype, epsilon=0.1)
    net.forward()
    np.testing.assert_allclose(net.blobs["y"], np.maximum(x, 0.1), rtol=1e-6)
    net.diffs["y"][...] = 1
    net.backward()
    np.testing.assert_array_equal(net.grads["ip"]["bias"].ravel(), [0, 0, 0, 1, 1])


def forward_on(net, blob, values):
    """Run the forward pass on ``values`` written into ``blob``, as a NaN
    made by an earlier layer would reach it (data layers reject NaN)."""
    net.blobs[blob][...] = values
    net.forward(load_data=False)


def test_relu_passes_nan():
    # The product with the identity spreads the NaN to every output (NaN * 0
    # is NaN), and the ReLU must not turn any of them into 0.
    x = np.array([[np.nan, -1.0, 2.0]])
    net = relu_net(np.zeros_like(x), np.float64, epsilon=0.0)
    forward_on(net, "x", x)
    assert np.isnan(net.blobs["y"]).all()


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ([np.nan, 1.0, 2.0, 3.0], np.nan),
        ([1.0, np.nan, 3.0, 2.0], np.nan),
        ([1.0, 4.0, 3.0, 2.0], 4.0),
    ],
)
def test_max_pooling_passes_nan(window, expected):
    x = np.array(window).reshape(1, 1, 2, 2)
    data = MemoryDataLayer(batch_size=1, data=[np.zeros_like(x)], tops=["x"])
    pool = PoolingLayer(
        name="pool", kernel=(2, 2), stride=(2, 2), bottoms=["x"], tops=["y"]
    )
    net = Net("pool", CPUBackend(dtype=np.float64), [data, pool])
    forward_on(net, "x", x)
    np.testing.assert_array_equal(net.blobs["y"].ravel(), [expected])


def nan_test_net(x):
    y = np.zeros((4, 1))
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip1",
            output_dim=3,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["h"],
        ),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["h"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    return Net("nan", CPUBackend(dtype=np.float64, seed=1), layers)


def test_nan_input_stops_at_the_data_layer():
    x = np.random.default_rng(0).normal(size=(4, 5))
    x[1, 2] = np.nan
    net = nan_test_net(x)
    with pytest.raises(DataError, match="top 'data' has NaN .* data row 1"):
        net.forward()


def test_nan_inside_net_stops_at_the_loss():
    x = np.random.default_rng(0).normal(size=(4, 5))
    net = nan_test_net(x)
    net.forward()
    x[1, 2] = np.nan
    with pytest.raises(NumericalError, match="'loss'"):
        forward_on(net, "data", x)


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        ([1.0, np.nan, 2.0], np.nan),
        ([np.nan, 1.0, 2.0], np.nan),
        ([1.0, 3.0, 2.0], 3.0),
    ],
)
def test_max_channel_pooling_passes_nan(channels, expected):
    from mochac.layers.channel_pooling import ChannelPoolingLayer

    x = np.array(channels).reshape(1, 3, 1, 1)
    data = MemoryDataLayer(batch_size=1, data=[np.zeros_like(x)], tops=["x"])
    pool = ChannelPoolingLayer(
        name="pool", kernel=3, stride=3, bottoms=["x"], tops=["y"]
    )
    net = Net("channel_pool", CPUBackend(dtype=np.float64), [data, pool])
    forward_on(net, "x", x)
    np.testing.assert_array_equal(net.blobs["y"].ravel(), [expected])
