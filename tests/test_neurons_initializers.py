"""Neurons on a layer's output, parameter initializers and the L2 regularizer."""

import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, numeric_gradient, preserved

from mochac import (
    ConfigError,
    ConstantInitializer,
    ConvolutionLayer,
    GaussianInitializer,
    InnerProductLayer,
    L2Regu,
    Neurons,
    NoRegu,
    XavierInitializer,
)

RNG = np.random.default_rng(31)

INPUTS = {
    "x_relu": RNG.normal(size=(4, 5)),
    "x_relu_eps": RNG.normal(size=(4, 5)),
    "x_identity": RNG.normal(size=(4, 5)),
    "x_constant": RNG.normal(size=(2, 3)),
}
LAYERS = [
    InnerProductLayer(
        name="ip_relu",
        bottoms=["x_relu"],
        tops=["y_relu"],
        output_dim=6,
        neuron=Neurons.ReLU(),
        bias_init=GaussianInitializer(std=0.5),
    ),
    InnerProductLayer(
        name="ip_relu_eps",
        bottoms=["x_relu_eps"],
        tops=["y_relu_eps"],
        output_dim=6,
        neuron=Neurons.ReLU(epsilon=0.2),
        bias_init=GaussianInitializer(std=0.5),
    ),
    InnerProductLayer(
        name="ip_identity",
        bottoms=["x_identity"],
        tops=["y_identity"],
        output_dim=6,
        neuron=Neurons.Identity(),
        bias_init=GaussianInitializer(std=0.5),
    ),
    InnerProductLayer(
        name="ip_constant",
        bottoms=["x_constant"],
        tops=["y_constant"],
        output_dim=2,
        weight_init=ConstantInitializer(0.25),
        bias_init=ConstantInitializer(-0.1),
    ),
]
NEURON_LAYERS = ["ip_relu", "ip_relu_eps", "ip_identity"]


def pre_activation(net, name):
    """Return x W^T + b of an inner product layer, written out per element."""
    layer = net.get_layer(name)
    x = net.blobs[layer.bottoms[0]]
    weight, bias = net.params[name]["weight"], net.params[name]["bias"]
    out = np.zeros((len(x), len(weight)))
    for n in range(len(x)):
        for o in range(len(weight)):
            out[n, o] = float(np.dot(weight[o], x[n])) + bias[o]
    return out


def apply_neuron(neuron, values):
    """Return the neuron's output: max(epsilon, x) for ReLU, x for Identity."""
    if isinstance(neuron, Neurons.ReLU):
        return np.where(values > neuron.epsilon, values, neuron.epsilon)
    return values.copy()


@pytest.fixture(scope="module")
def shared_net():
    return build_net("neurons", LAYERS, INPUTS, seed=4)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", NEURON_LAYERS)
def test_neuron_forward(net, name):
    neuron = net.get_layer(name).neuron
    values = pre_activation(net, name)
    net.forward_layer(name)
    expected = apply_neuron(neuron, values)
    np.testing.assert_allclose(
        net.blobs[net.get_layer(name).tops[0]], expected, rtol=1e-12
    )


@pytest.mark.parametrize("name", ["ip_relu", "ip_relu_eps"])
def test_relu_clips_some_outputs(net, name):
    neuron = net.get_layer(name).neuron
    values = pre_activation(net, name)
    # Keep the check away from the kink, where the derivative jumps.
    assert np.abs(values - neuron.epsilon).min() > 1e-3
    assert np.any(values < neuron.epsilon)
    assert np.any(values > neuron.epsilon)


@pytest.mark.parametrize("name", NEURON_LAYERS)
def test_neuron_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == [layer.bottoms[0], "weight", "bias"]


def test_relu_gradient_zero_where_clipped(net):
    values = pre_activation(net, "ip_relu")
    net.forward_layer("ip_relu")
    net.diffs["y_relu"][...] = 1.0
    net.backward_layer("ip_relu")
    # Bias gradient per output: the count of samples where the input passed.
    np.testing.assert_array_equal(
        net.grads["ip_relu"]["bias"], (values > 0).sum(axis=0)
    )


def test_relu_invalid_epsilon():
    with pytest.raises(ConfigError, match=r"ReLU.*invalid epsilon="):
        Neurons.ReLU(epsilon="0")


def test_constant_initializer_in_net(net):
    np.testing.assert_array_equal(
        net.params["ip_constant"]["weight"], np.full((2, 3), 0.25)
    )
    np.testing.assert_array_equal(net.params["ip_constant"]["bias"], [-0.1, -0.1])


def test_constant_initializer_dtype():
    values = ConstantInitializer(1.5).init((2, 3), np.random.default_rng(0), np.float32)
    assert values.dtype == np.float32
    assert values.shape == (2, 3)
    assert np.all(values == 1.5)


def test_xavier_bound_inner_product():
    layer = InnerProductLayer(name="ip", bottoms=["x"], tops=["y"], output_dim=10)
    weight = [spec for spec in layer.param_specs([(1, 500)]) if spec.name == "weight"]
    shape = weight[0].shape
    assert shape == (10, 500)
    draws = weight[0].initializer.init(shape, np.random.default_rng(3), np.float64)
    bound = math.sqrt(3 / 500)
    assert bound == pytest.approx(0.077460, abs=1e-6)
    assert np.abs(draws).max() <= bound
    assert np.abs(draws).max() > 0.99 * bound
    # Uniform on [-s, s] has variance s^2 / 3 = 1 / fan_in.
    assert draws.size == 5000
    assert draws.var() == pytest.approx(1 / 500, rel=0.05)


def test_xavier_fan_in_convolution():
    layer = ConvolutionLayer(
        name="conv", bottoms=["x"], tops=["y"], kernel=(3, 2), n_filter=4, n_group=2
    )
    specs = {spec.name: spec for spec in layer.param_specs([(1, 4, 5, 5)])}
    shape = specs["filter"].shape
    assert shape == (4, 2, 2, 3)
    draws = XavierInitializer().init(shape, np.random.default_rng(5), np.float32)
    assert draws.dtype == np.float32
    # fan_in = channels per group * kernel height * kernel width = 12.
    assert np.abs(draws).max() <= math.sqrt(3 / 12)
    assert np.abs(draws).max() > 0.9 * math.sqrt(3 / 12)


def test_gaussian_initializer_moments():
    draws = GaussianInitializer(mean=1.0, std=0.5).init(
        (100, 200), np.random.default_rng(7), np.float64
    )
    assert draws.mean() == pytest.approx(1.0, abs=0.02)
    assert draws.std() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: GaussianInitializer(std=0.0), "std"),
        (lambda: GaussianInitializer(mean="0"), "mean"),
        (lambda: ConstantInitializer(value=None), "value"),
    ],
)
def test_initializer_invalid_field(make, field):
    with pytest.raises(ConfigError, match=rf"invalid {field}="):
        make()


def test_l2_regu_gradient():
    rng = np.random.default_rng(37)
    param = rng.normal(size=(3, 4))
    regu = L2Regu(0.3)
    global_coef = 0.5

    def penalty():
        return global_coef * regu.coefficient * float(np.sum(param**2))

    expected = numeric_gradient(penalty, param)
    start = rng.normal(size=(3, 4))
    grad = start.copy()
    regu.add_gradient(param, grad, global_coef)
    np.testing.assert_allclose(grad - start, expected, rtol=1e-8, atol=1e-10)


def test_l2_regu_keeps_dtype():
    param = np.full((2, 2), 2.0, dtype=np.float32)
    grad = np.zeros((2, 2), dtype=np.float32)
    L2Regu(1.0).add_gradient(param, grad, 0.25)
    assert grad.dtype == np.float32
    np.testing.assert_array_equal(grad, np.full((2, 2), 1.0, dtype=np.float32))


def test_no_regu_leaves_gradient():
    grad = np.ones(3)
    NoRegu().add_gradient(np.full(3, 5.0), grad, 1.0)
    np.testing.assert_array_equal(grad, np.ones(3))


def test_l2_regu_negative_coefficient():
    with pytest.raises(ConfigError, match=r"L2Regu.*invalid coefficient=-1"):
        L2Regu(-1)
