"""ChannelPoolingLayer: max and mean pooling along one axis against a loop
reference, gradients, output sizes, config checks."""

import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, MemoryDataLayer, Pooling, ShapeError
from mochac.ir import build_ir
from mochac.layers.channel_pooling import ChannelPoolingLayer

RNG = np.random.default_rng(81)


def distinct_values(shape):
    """Return values 0.1 or more apart, so no max window contains a near-tie."""
    return RNG.permutation(math.prod(shape)).reshape(shape) * 0.1 - 1.0


INPUTS = {
    "x_max": distinct_values((2, 6, 2, 2)),
    "x_max_pad": distinct_values((2, 5, 3)),
    "x_mean": distinct_values((2, 7, 2)),
    "x_mean_pad": distinct_values((1, 5, 2, 2)),
    "x_width": distinct_values((2, 2, 3, 6)),
    "x_first": distinct_values((2, 4)),
    "x_second": distinct_values((1, 6, 3)),
}
LAYERS = [
    ChannelPoolingLayer(
        name="max", bottoms=["x_max"], tops=["y_max"], kernel=3, stride=2
    ),
    ChannelPoolingLayer(
        name="max_pad",
        bottoms=["x_max_pad"],
        tops=["y_max_pad"],
        kernel=3,
        stride=2,
        pad=(1, 2),
    ),
    ChannelPoolingLayer(
        name="mean",
        bottoms=["x_mean"],
        tops=["y_mean"],
        kernel=2,
        stride=2,
        pooling=Pooling.Mean(),
    ),
    ChannelPoolingLayer(
        name="mean_pad",
        bottoms=["x_mean_pad"],
        tops=["y_mean_pad"],
        kernel=3,
        stride=1,
        pad=1,
        pooling=Pooling.Mean(),
    ),
    # Mocha's channel_dim=1 is the fastest axis: NumPy axis 3 of (N, C, H, W).
    ChannelPoolingLayer(
        name="width",
        bottoms=["x_width"],
        tops=["y_width"],
        channel_dim=1,
        kernel=2,
        stride=2,
    ),
    ChannelPoolingLayer(
        name="two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        kernel=2,
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]
AXES = {"width": 3}


def reference_channel_pooling(x, axis, kernel, stride, pad, is_max):
    """Pool ``x`` along ``axis`` with windows over the padded range [-front, C + back).

    The mean divides by the window's length inside the padded range; the max
    looks only at the elements inside the input.
    """
    front, back = pad
    moved = np.moveaxis(x, axis, -1)
    length = moved.shape[-1]
    out = math.ceil((length + front + back - kernel) / stride) + 1
    if (out - 1) * stride >= length + front:
        out -= 1
    pooled = np.zeros(moved.shape[:-1] + (out,))
    for index in np.ndindex(moved.shape[:-1]):
        line = moved[index]
        for o in range(out):
            start = o * stride - front
            stop = min(start + kernel, length + back)
            inside = line[max(start, 0) : min(stop, length)]
            pooled[index + (o,)] = (
                inside.max() if is_max else inside.sum() / (stop - start)
            )
    return np.moveaxis(pooled, -1, axis)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("channel-pooling", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("channel-pooling-float32", LAYERS, INPUTS, dtype=np.float32)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_channel_pool_forward(net, name):
    check_forward(net, name, tolerance=1e-14)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_channel_pool_forward_float32(float32_net, name):
    assert float32_net.blobs["y_max"].dtype == np.float32
    check_forward(float32_net, name, tolerance=1e-6)


def check_forward(net, name, tolerance):
    layer = net.get_layer(name)
    net.forward_layer(name)
    is_max = layer.pooling == Pooling.Max()
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_channel_pooling(
            net.blobs[bottom].astype(np.float64),
            AXES.get(name, 1),
            layer.kernel,
            layer.stride,
            layer.pad_pair,
            is_max,
        )
        assert net.blobs[top].shape == expected.shape
        np.testing.assert_allclose(
            net.blobs[top], expected, rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_channel_pool_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_channel_pool_output_sizes(net):
    # Rounding up: (6 - 3) / 2 -> 2.5 -> 3 windows; padded 5 + 3 -> 4 windows,
    # the last of which would start in the back pad and is dropped.
    assert net.blobs["y_max"].shape == (2, 3, 2, 2)
    assert net.blobs["y_max_pad"].shape == (2, 3, 3)
    assert net.blobs["y_mean_pad"].shape == (1, 5, 2, 2)
    assert net.blobs["y_width"].shape == (2, 2, 3, 3)


def test_channel_pool_defaults():
    layer = ChannelPoolingLayer(bottoms=["x"], tops=["y"])
    assert (layer.channel_dim, layer.kernel, layer.stride) == (-2, 1, 1)
    assert layer.pad_pair == (0, 0)
    assert layer.pooling == Pooling.Max()


def test_channel_pool_kernel_too_long():
    data = MemoryDataLayer(
        name="data", batch_size=2, data=[np.zeros((2, 3))], tops=["x"]
    )
    layer = ChannelPoolingLayer(name="cp1", bottoms=["x"], tops=["y"], kernel=4)
    with pytest.raises(ShapeError, match=r"'cp1'.*kernel=4 is longer than"):
        build_ir("channel-pool-net", [data, layer], {0: [(2, 3)]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kernel", 0),
        ("stride", 1.5),
        ("pad", (1, 2, 3)),
        ("pad", -1),
        ("pad", (0, 2)),
        ("pooling", "max"),
        ("channel_dim", "C"),
    ],
)
def test_channel_pool_invalid_field(field, value):
    fields = {"kernel": 2, field: value}
    with pytest.raises(ConfigError, match=rf"'cp1'.*invalid {field}="):
        ChannelPoolingLayer(name="cp1", bottoms=["x"], tops=["y"], **fields)
