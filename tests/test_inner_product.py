"""InnerProductLayer: forward against a loop reference, gradients, config checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import (
    ConfigError,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    ShapeError,
)
from mochac.ir import build_ir

RNG = np.random.default_rng(5)

INPUTS = {
    "x_flat": RNG.normal(size=(3, 5)),
    "x_row": RNG.normal(size=(1, 7)),
    "x_column": RNG.normal(size=(3, 5)),
    "x_image": RNG.normal(size=(2, 2, 3, 2)),
    # Bottoms may differ in batch size when their features per sample agree.
    "x_first": RNG.normal(size=(2, 6)),
    "x_second": RNG.normal(size=(3, 2, 3)),
}
RANDOM_BIAS = GaussianInitializer(std=0.5)
LAYERS = [
    InnerProductLayer(
        name="ip_flat",
        bottoms=["x_flat"],
        tops=["y_flat"],
        output_dim=4,
        bias_init=RANDOM_BIAS,
    ),
    InnerProductLayer(
        name="ip_image",
        bottoms=["x_image"],
        tops=["y_image"],
        output_dim=3,
        bias_init=RANDOM_BIAS,
    ),
    InnerProductLayer(
        name="ip_two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        output_dim=4,
        bias_init=RANDOM_BIAS,
    ),
    # One sample, and one output: products with one row or one column of
    # the result run as matrix-vector products.
    InnerProductLayer(
        name="ip_row",
        bottoms=["x_row"],
        tops=["y_row"],
        output_dim=4,
        bias_init=RANDOM_BIAS,
    ),
    InnerProductLayer(
        name="ip_column",
        bottoms=["x_column"],
        tops=["y_column"],
        output_dim=1,
        bias_init=RANDOM_BIAS,
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def reference_inner_product(x, weight, bias):
    """Return y[n, o] = sum_d weight[o, d] * x[n, d] + bias[o], features flattened."""
    features = x.reshape(len(x), -1)
    out = np.zeros((len(x), len(weight)))
    for n in range(len(x)):
        for o in range(len(weight)):
            out[n, o] = sum(
                weight[o, d] * features[n, d] for d in range(weight.shape[1])
            )
            out[n, o] += bias[o]
    return out


@pytest.fixture(scope="module")
def shared_net():
    return build_net("inner-product", LAYERS, INPUTS, seed=2)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("inner-product-float32", LAYERS, INPUTS, dtype=np.float32, seed=2)


def check_forward(net, name, tolerance):
    layer = net.get_layer(name)
    net.forward_layer(name)
    params = net.params[name]
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_inner_product(
            net.blobs[bottom], params["weight"], params["bias"]
        )
        assert net.blobs[top].shape == expected.shape
        np.testing.assert_allclose(
            net.blobs[top], expected, rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_ip_forward(net, name):
    check_forward(net, name, tolerance=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_ip_forward_float32(float32_net, name):
    assert float32_net.blobs[LAYERS[0].tops[0]].dtype == np.float32
    check_forward(float32_net, name, tolerance=1e-5)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_ip_gradients(net, name):
    layer = net.get_layer(name)
    checked = check_gradients(net, name)
    assert checked == [*layer.bottoms, "weight", "bias"]


def test_ip_parameter_shapes(net):
    assert net.params["ip_image"]["weight"].shape == (3, 12)
    assert net.params["ip_image"]["bias"].shape == (3,)
    assert net.params["ip_two"]["weight"].shape == (4, 6)


def test_ip_default_bias_is_zero():
    layer = InnerProductLayer(name="ip", bottoms=["x"], tops=["y"], output_dim=3)
    specs = {spec.name: spec for spec in layer.param_specs([(2, 4)])}
    bias = specs["bias"].initializer.init((3,), np.random.default_rng(0), np.float32)
    np.testing.assert_array_equal(bias, np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_dim", 0),
        ("output_dim", 2.5),
        ("weight_init", 0.1),
        ("weight_regu", None),
        ("bias_lr", -1.0),
        ("neuron", "relu"),
        ("param_key", 3),
    ],
)
def test_ip_invalid_field(field, value):
    fields = {"output_dim": 3, field: value}
    with pytest.raises(ConfigError, match=rf"'ip1'.*invalid {field}="):
        InnerProductLayer(name="ip1", bottoms=["x"], tops=["y"], **fields)


def test_ip_bottoms_differ_in_features():
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        tops=["a", "b"],
        data=[np.zeros((2, 6)), np.zeros((2, 7))],
    )
    layer = InnerProductLayer(
        name="ip1", bottoms=["a", "b"], tops=["ya", "yb"], output_dim=2
    )
    with pytest.raises(ShapeError, match=r"'ip1'.*'b' has 7 features.*'a' has 6"):
        build_ir("ip-net", [data, layer], {0: [(2, 6), (2, 7)]})
