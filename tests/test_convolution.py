"""ConvolutionLayer: forward against a loop reference, gradients, config checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, check_net_gradients, preserved

from mochac import (
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    PoolingLayer,
    ShapeError,
    SoftmaxLossLayer,
)
from mochac.ir import build_ir

RNG = np.random.default_rng(7)

# Each layer reads its own inputs, so one compiled net contains every case.
# Geometry tuples are Mocha's (width, height); asymmetric values catch swaps.
INPUTS = {
    "x_plain": RNG.normal(size=(2, 3, 5, 6)),
    "x_stride": RNG.normal(size=(2, 2, 7, 6)),
    "x_group": RNG.normal(size=(2, 4, 5, 5)),
    "x_relu": RNG.normal(size=(2, 3, 5, 5)),
    "x_first": RNG.normal(size=(2, 2, 4, 4)),
    "x_second": RNG.normal(size=(2, 2, 4, 4)),
}
RANDOM_BIAS = GaussianInitializer(std=0.5)
LAYERS = [
    ConvolutionLayer(
        name="conv_plain",
        bottoms=["x_plain"],
        tops=["y_plain"],
        kernel=(3, 2),
        n_filter=4,
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_stride",
        bottoms=["x_stride"],
        tops=["y_stride"],
        kernel=3,
        stride=(2, 3),
        pad=(1, 2),
        n_filter=3,
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_group",
        bottoms=["x_group"],
        tops=["y_group"],
        kernel=3,
        pad=1,
        n_filter=6,
        n_group=2,
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_relu",
        bottoms=["x_relu"],
        tops=["y_relu"],
        kernel=(2, 3),
        stride=2,
        pad=1,
        n_filter=3,
        neuron=Neurons.ReLU(),
        bias_init=RANDOM_BIAS,
    ),
    ConvolutionLayer(
        name="conv_two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        kernel=2,
        n_filter=3,
        bias_init=RANDOM_BIAS,
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def reference_convolution(x, filters, bias, layer):
    """Convolve (N, C, H, W) ``x`` with (F, C / G, KH, KW) ``filters``, loop by loop."""
    n, channels, height, width = x.shape
    n_filter, group_channels, kernel_h, kernel_w = filters.shape
    stride_w, stride_h = (
        (layer.stride,) * 2 if isinstance(layer.stride, int) else layer.stride
    )
    pad_w, pad_h = (layer.pad,) * 2 if isinstance(layer.pad, int) else layer.pad
    padded = np.zeros((n, channels, height + 2 * pad_h, width + 2 * pad_w))
    padded[:, :, pad_h : pad_h + height, pad_w : pad_w + width] = x
    out_h = (height + 2 * pad_h - kernel_h) // stride_h + 1
    out_w = (width + 2 * pad_w - kernel_w) // stride_w + 1
    filters_per_group = n_filter // layer.n_group
    out = np.zeros((n, n_filter, out_h, out_w))
    for sample in range(n):
        for f in range(n_filter):
            group = f // filters_per_group
            first = group * group_channels
            for i in range(out_h):
                for j in range(out_w):
                    top, left = i * stride_h, j * stride_w
                    window = padded[
                        sample,
                        first : first + group_channels,
                        top : top + kernel_h,
                        left : left + kernel_w,
                    ]
                    out[sample, f, i, j] = np.sum(window * filters[f]) + bias[f]
    return out


@pytest.fixture(scope="module")
def shared_net():
    return build_net("convolution", LAYERS, INPUTS, seed=3)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("convolution-float32", LAYERS, INPUTS, dtype=np.float32, seed=3)


def check_forward(net, name, tolerance):
    layer = net.get_layer(name)
    net.forward_layer(name)
    params = net.params[name]
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_convolution(
            net.blobs[bottom], params["filter"], params["bias"], layer
        )
        if not layer.neuron.is_identity:
            assert np.abs(expected).min() > 1e-3, "input too close to the ReLU kink"
            expected = np.maximum(expected, 0.0)
        assert net.blobs[top].shape == expected.shape
        np.testing.assert_allclose(
            net.blobs[top], expected, rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_conv_forward(net, name):
    check_forward(net, name, tolerance=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_conv_forward_float32(float32_net, name):
    assert float32_net.blobs[LAYERS[0].tops[0]].dtype == np.float32
    check_forward(float32_net, name, tolerance=1e-5)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_conv_gradients(net, name):
    layer = net.get_layer(name)
    checked = check_gradients(net, name)
    assert checked == [*layer.bottoms, "filter", "bias"]


def test_conv_net_gradients():
    # Without force_backward the data gets no diff, so the convolution's
    # backward pass computes parameter gradients only.
    rng = np.random.default_rng(41)
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        data=[rng.normal(size=(2, 2, 6, 6)), np.array([[0.0], [2.0]])],
    )
    layers = [
        data,
        ConvolutionLayer(
            name="conv",
            bottoms=["data"],
            tops=["conv"],
            kernel=3,
            n_filter=4,
            n_group=2,
            neuron=Neurons.ReLU(),
            bias_init=RANDOM_BIAS,
        ),
        PoolingLayer(name="pool", bottoms=["conv"], tops=["pool"], kernel=2, stride=2),
        InnerProductLayer(name="ip", bottoms=["pool"], tops=["ip"], output_dim=3),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("small-cnn", CPUBackend(dtype=np.float64, seed=6, threads=2), layers)
    net.load_batch()
    assert "data" not in net.diffs
    assert check_net_gradients(net) == [
        "conv.filter",
        "conv.bias",
        "ip.weight",
        "ip.bias",
    ]


def test_conv_relu_clips_negative(net):
    net.forward_layer("conv_relu")
    top = net.blobs["y_relu"]
    assert top.min() == 0.0
    assert top.max() > 0.0


def test_conv_parameter_shapes(net):
    assert net.params["conv_plain"]["filter"].shape == (4, 3, 2, 3)
    assert net.params["conv_group"]["filter"].shape == (6, 2, 3, 3)
    assert net.params["conv_group"]["bias"].shape == (6,)


def test_conv_output_rounds_down():
    layer = ConvolutionLayer(
        name="conv", bottoms=["x"], tops=["y"], kernel=3, stride=2, n_filter=5
    )
    assert layer.infer_shapes([(1, 1, 6, 6)]) == [(1, 5, 2, 2)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_filter", 0),
        ("kernel", (0, 5)),
        ("stride", (1, 0)),
        ("pad", -1),
        ("n_group", 0),
        ("neuron", "relu"),
    ],
)
def test_conv_invalid_field(field, value):
    with pytest.raises(ConfigError, match=rf"'conv1'.*invalid {field}="):
        ConvolutionLayer(name="conv1", bottoms=["x"], tops=["y"], **{field: value})


def test_conv_group_not_dividing_filters():
    with pytest.raises(ConfigError, match=r"'conv1'.*n_group=3.*n_filter=4"):
        ConvolutionLayer(name="conv1", bottoms=["x"], tops=["y"], n_filter=4, n_group=3)


def build_conv_ir(layer, shape):
    data = MemoryDataLayer(
        name="data", batch_size=shape[0], tops=["x"], data=[np.zeros(shape)]
    )
    return build_ir("conv-net", [data, layer], {0: [shape]})


def test_conv_group_not_dividing_channels():
    layer = ConvolutionLayer(
        name="conv1", bottoms=["x"], tops=["y"], n_filter=4, n_group=2
    )
    with pytest.raises(ShapeError, match=r"'conv1'.*n_group=2.*3 channels"):
        build_conv_ir(layer, (2, 3, 5, 5))


def test_conv_kernel_larger_than_input():
    layer = ConvolutionLayer(name="conv1", bottoms=["x"], tops=["y"], kernel=(3, 7))
    with pytest.raises(ShapeError, match=r"'conv1'.*kernel"):
        build_conv_ir(layer, (2, 1, 5, 5))


def test_conv_bottoms_differ_in_shape():
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        tops=["a", "b"],
        data=[np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 5, 4))],
    )
    layer = ConvolutionLayer(name="conv1", bottoms=["a", "b"], tops=["ya", "yb"])
    with pytest.raises(ShapeError, match=r"'conv1'.*'a'.*\(2, 1, 4, 4\).*'b'"):
        build_ir("conv-net", [data, layer], {0: [(2, 1, 4, 4), (2, 1, 5, 4)]})


def test_conv_needs_4d_bottom():
    layer = ConvolutionLayer(name="conv1", bottoms=["x"], tops=["y"])
    with pytest.raises(ShapeError, match=r"'conv1'.*4-D"):
        build_conv_ir(layer, (2, 3, 5))
