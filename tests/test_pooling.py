"""PoolingLayer: max and mean pooling against a loop reference, gradients, shapes."""

import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import (
    ConfigError,
    ConvolutionLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Pooling,
    PoolingLayer,
    ShapeError,
    SoftmaxLossLayer,
)
from mochac.ir import build_ir

RNG = np.random.default_rng(11)


def distinct_values(shape):
    """Return values 0.1 or more apart, so no max pooling window contains a near-tie."""
    return RNG.permutation(math.prod(shape)).reshape(shape) * 0.1 - 1.0


# Geometry tuples are Mocha's (width, height).
INPUTS = {
    "x_max": distinct_values((2, 2, 6, 6)),
    "x_max_pad": distinct_values((1, 2, 5, 7)),
    "x_mean": distinct_values((2, 2, 6, 6)),
    "x_mean_pad": distinct_values((1, 2, 5, 5)),
    "x_first": distinct_values((1, 1, 4, 4)),
    "x_second": distinct_values((1, 2, 5, 3)),
    "x_sparse": distinct_values((1, 1, 6, 6)),
    "x_mean_sparse": distinct_values((1, 1, 6, 6)),
}
LAYERS = [
    PoolingLayer(
        name="pool_max", bottoms=["x_max"], tops=["y_max"], kernel=3, stride=2
    ),
    PoolingLayer(
        name="pool_max_pad",
        bottoms=["x_max_pad"],
        tops=["y_max_pad"],
        kernel=(3, 2),
        stride=(2, 1),
        pad=(1, 1),
    ),
    PoolingLayer(
        name="pool_mean",
        bottoms=["x_mean"],
        tops=["y_mean"],
        kernel=3,
        stride=2,
        pooling=Pooling.Mean(),
    ),
    PoolingLayer(
        name="pool_mean_pad",
        bottoms=["x_mean_pad"],
        tops=["y_mean_pad"],
        kernel=3,
        stride=2,
        pad=1,
        pooling=Pooling.Mean(),
    ),
    PoolingLayer(
        name="pool_two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        kernel=2,
        stride=2,
    ),
    # Strides longer than the kernel: rounding up must not add a window that
    # lies wholly past the input.
    PoolingLayer(name="pool_sparse", bottoms=["x_sparse"], tops=["y_sparse"], stride=4),
    PoolingLayer(
        name="pool_mean_sparse",
        bottoms=["x_mean_sparse"],
        tops=["y_mean_sparse"],
        kernel=2,
        stride=3,
        pooling=Pooling.Mean(),
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]
EXPECTED_SHAPES = {
    "y_max": (2, 2, 3, 3),
    "y_max_pad": (1, 2, 6, 4),
    "y_mean": (2, 2, 3, 3),
    "y_mean_pad": (1, 2, 3, 3),
    "y_first": (1, 1, 2, 2),
    "y_second": (1, 2, 3, 2),
    "y_sparse": (1, 1, 2, 2),
    "y_mean_sparse": (1, 1, 2, 2),
}


def geometry(value):
    """Return a Mocha (width, height) value as (height, width)."""
    if isinstance(value, int):
        return value, value
    width, height = value
    return height, width


def pooled_size(size, kernel, stride, pad):
    """Round up, then drop a last window that starts past the input and its pad."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def reference_pooling(x, layer):
    """Pool (N, C, H, W) ``x`` window by window.

    Max pooling ignores padding. Mean pooling divides by the window size
    clipped to the padded input, so padded positions count as zeros.
    """
    n, channels, height, width = x.shape
    kernel_h, kernel_w = geometry(layer.kernel)
    stride_h, stride_w = geometry(layer.stride)
    pad_h, pad_w = geometry(layer.pad)
    out_h = pooled_size(height, kernel_h, stride_h, pad_h)
    out_w = pooled_size(width, kernel_w, stride_w, pad_w)
    is_max = isinstance(layer.pooling, Pooling.Max)
    out = np.zeros((n, channels, out_h, out_w))
    for sample in range(n):
        for c in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    top, left = i * stride_h - pad_h, j * stride_w - pad_w
                    bottom = min(top + kernel_h, height + pad_h)
                    right = min(left + kernel_w, width + pad_w)
                    count = (bottom - top) * (right - left)
                    window = x[
                        sample,
                        c,
                        max(top, 0) : min(bottom, height),
                        max(left, 0) : min(right, width),
                    ]
                    assert window.size > 0
                    if is_max:
                        out[sample, c, i, j] = window.max()
                    else:
                        out[sample, c, i, j] = window.sum() / count
    return out


@pytest.fixture(scope="module")
def shared_net():
    return build_net("pooling", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("pooling-float32", LAYERS, INPUTS, dtype=np.float32)


def check_forward(net, name, tolerance):
    layer = net.get_layer(name)
    net.forward_layer(name)
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_pooling(net.blobs[bottom], layer)
        assert net.blobs[top].shape == EXPECTED_SHAPES[top]
        assert expected.shape == EXPECTED_SHAPES[top]
        np.testing.assert_allclose(net.blobs[top], expected, rtol=tolerance, atol=0)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_forward(net, name):
    check_forward(net, name, tolerance=1e-14)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_forward_float32(float32_net, name):
    assert float32_net.blobs["y_max"].dtype == np.float32
    check_forward(float32_net, name, tolerance=1e-6)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_pool_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_pool_max_gradient_goes_to_maximum(net):
    x = net.blobs["x_max"]
    net.forward_layer("pool_max")
    net.diffs["y_max"][...] = 1.0
    net.backward_layer("pool_max")
    dx = net.diffs["x_max"]
    # The first window covers rows and columns 0..2 of each plane.
    window = x[0, 0, 0:3, 0:3]
    row, col = np.unravel_index(np.argmax(window), window.shape)
    assert dx[0, 0, row, col] >= 1.0
    # Every output passes its whole diff to one input.
    assert dx.sum() == net.blobs["y_max"].size


def test_pool_max_ties_pick_first(net):
    net.blobs["x_max"][...] = 0.0
    net.forward_layer("pool_max")
    net.diffs["y_max"][...] = 1.0
    net.backward_layer("pool_max")
    dx = net.diffs["x_max"][0, 0]
    # Windows start at rows and columns 0, 2 and 4.
    expected = np.zeros((6, 6))
    for row in (0, 2, 4):
        for col in (0, 2, 4):
            expected[row, col] = 1.0
    np.testing.assert_array_equal(dx, expected)


def test_pool_rounds_up():
    layer = PoolingLayer(name="pool", bottoms=["x"], tops=["y"], kernel=3, stride=2)
    assert layer.infer_shapes([(1, 1, 6, 6)]) == [(1, 1, 3, 3)]
    assert layer.infer_shapes([(1, 64, 112, 112)]) == [(1, 64, 56, 56)]


def test_pool_and_conv_round_differently():
    geometry_args = {"bottoms": ["x"], "tops": ["y"], "kernel": 3, "stride": 2}
    pool = PoolingLayer(name="pool", **geometry_args)
    conv = ConvolutionLayer(name="conv", **geometry_args)
    assert pool.infer_shapes([(1, 1, 6, 6)])[0][2:] == (3, 3)
    assert conv.infer_shapes([(1, 1, 6, 6)])[0][2:] == (2, 2)


def test_lenet_shapes():
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        data=[np.zeros((2, 1, 28, 28)), np.zeros((2, 1))],
    )
    layers = [
        data,
        ConvolutionLayer(
            name="conv1", bottoms=["data"], tops=["conv1"], kernel=5, n_filter=20
        ),
        PoolingLayer(
            name="pool1", bottoms=["conv1"], tops=["pool1"], kernel=2, stride=2
        ),
        ConvolutionLayer(
            name="conv2", bottoms=["pool1"], tops=["conv2"], kernel=5, n_filter=50
        ),
        PoolingLayer(
            name="pool2", bottoms=["conv2"], tops=["pool2"], kernel=2, stride=2
        ),
        InnerProductLayer(name="ip1", bottoms=["pool2"], tops=["ip1"], output_dim=500),
        InnerProductLayer(name="ip2", bottoms=["ip1"], tops=["ip2"], output_dim=10),
        SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"]),
    ]
    ir = build_ir("lenet", layers, {0: [(2, 1, 28, 28), (2, 1)]})
    sides = [ir.blobs[blob].shape[2] for blob in ("conv1", "pool1", "conv2", "pool2")]
    assert sides == [24, 12, 8, 4]
    assert ir.blobs["pool2"].shape == (2, 50, 4, 4)
    weight = [spec for spec in ir.layer("ip1").params if spec.name == "weight"]
    assert weight[0].shape == (500, 800)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kernel": (0, 2)}, "kernel"),
        ({"stride": 0}, "stride"),
        ({"kernel": 2, "pad": 2}, "pad"),
        ({"kernel": (3, 2), "pad": (1, 2)}, "pad"),
        ({"pooling": "max"}, "pooling"),
    ],
)
def test_pool_invalid_field(fields, field):
    with pytest.raises(ConfigError, match=rf"'pool1'.*invalid {field}="):
        PoolingLayer(name="pool1", bottoms=["x"], tops=["y"], **fields)


def test_pool_needs_4d_bottom():
    layer = PoolingLayer(name="pool1", bottoms=["x"], tops=["y"], kernel=2)
    with pytest.raises(ShapeError, match=r"'pool1'.*'x'.*4-D"):
        layer.infer_shapes([(2, 3, 4)])


def test_pool_kernel_larger_than_input():
    layer = PoolingLayer(name="pool1", bottoms=["x"], tops=["y"], kernel=(2, 5))
    with pytest.raises(ShapeError, match=r"'pool1'.*larger than"):
        layer.infer_shapes([(1, 1, 4, 4)])
