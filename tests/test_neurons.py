"""LReLU, Sigmoid, Tanh and Exponential neurons on an inner product's output.

At -O0 the neuron is a kernel of its own, and each neuron's forward is
checked against NumPy and its backward by a float64 gradient check. At -O1
a chain of all four, each fused into its layer, must match the same chain
at -O0.
"""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, check_net_gradients, preserved

from mochac import (
    ConstantInitializer,
    CPUBackend,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SquareLossLayer,
)
from mochac.neurons import Exponential, LReLU, Sigmoid, Tanh

NEURONS = {
    "lrelu": LReLU(),
    "sigmoid": Sigmoid(),
    "tanh": Tanh(),
    "exponential": Exponential(),
}


def reference(neuron, values):
    """Return the neuron applied to ``values``, from Mocha's formulas."""
    if isinstance(neuron, LReLU):
        return np.where(values > 0, values, 0.01 * values)
    if isinstance(neuron, Sigmoid):
        return 1 / (1 + np.exp(-values))
    if isinstance(neuron, Tanh):
        return (1 - np.exp(-2 * values)) / (1 + np.exp(-2 * values))
    if isinstance(neuron, Exponential):
        return np.exp(values)
    raise AssertionError(f"no reference for {neuron!r}")


RNG = np.random.default_rng(41)

INPUTS = {f"x_{name}": RNG.normal(size=(4, 5)) for name in NEURONS}
INPUTS["x_zero"] = RNG.normal(size=(4, 3))
INPUTS["x_far"] = np.array([[-800.0], [800.0]])

LAYERS = [
    InnerProductLayer(
        name=f"ip_{name}",
        bottoms=[f"x_{name}"],
        tops=[f"y_{name}"],
        output_dim=6,
        neuron=neuron,
        bias_init=GaussianInitializer(std=0.5),
    )
    for name, neuron in NEURONS.items()
] + [
    # Zero weights and bias put every LReLU input exactly at the kink.
    InnerProductLayer(
        name="ip_lrelu_zero",
        bottoms=["x_zero"],
        tops=["y_lrelu_zero"],
        output_dim=2,
        neuron=LReLU(),
        weight_init=ConstantInitializer(0.0),
    ),
    # Inputs of +-800, where exp(-x) overflows or underflows in double.
    InnerProductLayer(
        name="ip_sigmoid_far",
        bottoms=["x_far"],
        tops=["y_sigmoid_far"],
        output_dim=1,
        neuron=Sigmoid(),
        weight_init=ConstantInitializer(1.0),
    ),
]


def pre_activation(net, name):
    """Return x W^T + b of an inner product layer."""
    layer = net.get_layer(name)
    x = net.blobs[layer.bottoms[0]]
    return x @ net.params[name]["weight"].T + net.params[name]["bias"]


@pytest.fixture(scope="module")
def shared_net():
    return build_net("neurons", LAYERS, INPUTS, seed=5)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", NEURONS)
def test_neuron_forward(net, name):
    values = pre_activation(net, f"ip_{name}")
    net.forward_layer(f"ip_{name}")
    np.testing.assert_allclose(
        net.blobs[f"y_{name}"], reference(NEURONS[name], values), rtol=1e-12
    )


@pytest.mark.parametrize("name", NEURONS)
def test_neuron_gradients(net, name):
    checked = check_gradients(net, f"ip_{name}")
    assert checked == [f"x_{name}", "weight", "bias"]


def test_lrelu_inputs_on_both_sides(net):
    values = pre_activation(net, "ip_lrelu")
    assert np.any(values < 0)
    assert np.any(values > 0)
    # Keep the gradient check away from the kink at 0.
    assert np.abs(values).min() > 1e-3


def test_lrelu_slope_below_zero(net):
    values = pre_activation(net, "ip_lrelu")
    net.forward_layer("ip_lrelu")
    net.diffs["y_lrelu"][...] = 1.0
    net.backward_layer("ip_lrelu")
    # Bias gradient per output: 1 per positive input and 0.01 per negative one.
    expected = (values > 0).sum(axis=0) + 0.01 * (values < 0).sum(axis=0)
    np.testing.assert_allclose(net.grads["ip_lrelu"]["bias"], expected, rtol=1e-12)


def test_lrelu_slope_at_zero(net):
    net.forward_layer("ip_lrelu_zero")
    np.testing.assert_array_equal(net.blobs["y_lrelu_zero"], np.zeros((4, 2)))
    net.diffs["y_lrelu_zero"][...] = 1.0
    net.backward_layer("ip_lrelu_zero")
    # Mocha takes dy/dx = 0.01 at x = 0, for each of the 4 samples.
    np.testing.assert_allclose(
        net.grads["ip_lrelu_zero"]["bias"], [0.04, 0.04], rtol=1e-12
    )


def test_sigmoid_saturates_without_nan(net):
    net.forward_layer("ip_sigmoid_far")
    np.testing.assert_array_equal(net.blobs["y_sigmoid_far"], [[0.0], [1.0]])
    net.diffs["y_sigmoid_far"][...] = 1.0
    net.backward_layer("ip_sigmoid_far")
    np.testing.assert_array_equal(net.diffs["x_far"], [[0.0], [0.0]])
    np.testing.assert_array_equal(net.grads["ip_sigmoid_far"]["weight"], [[0.0]])


# --- all four fused at -O1 ---------------------------------------------------

CHAIN_X = RNG.normal(size=(4, 5))
CHAIN_TARGET = RNG.normal(size=(4, 3))


def chain_layers():
    """x -> ip_lrelu -> ip_sigmoid -> ip_tanh -> ip_exponential -> out -> loss."""
    layers = [
        MemoryDataLayer(
            name="data", batch_size=4, tops=["x", "t"], data=[CHAIN_X, CHAIN_TARGET]
        )
    ]
    below = "x"
    for name, neuron in NEURONS.items():
        layers.append(
            InnerProductLayer(
                name=f"ip_{name}",
                output_dim=5,
                neuron=neuron,
                bias_init=GaussianInitializer(std=0.5),
                bottoms=[below],
                tops=[f"h_{name}"],
            )
        )
        below = f"h_{name}"
    layers.append(
        InnerProductLayer(name="out", output_dim=3, bottoms=[below], tops=["o"])
    )
    layers.append(SquareLossLayer(name="loss", bottoms=["o", "t"]))
    return layers


def build_chain(opt_level, dtype=np.float64):
    backend = CPUBackend(dtype=dtype, seed=9, threads=2)
    keep = [f"h_{name}" for name in NEURONS]
    return Net("chain", backend, chain_layers(), opt_level=opt_level, keep=keep)


@pytest.fixture(scope="module")
def chains():
    results = {}
    for opt_level in (0, 1):
        net = build_chain(opt_level)
        objective = net.forward()
        net.backward()
        results[opt_level] = (net, objective)
    return results


@pytest.mark.parametrize("name", NEURONS)
def test_fused_neuron_listed(chains, name):
    fused, _ = chains[1]
    report = {report.name: report for report in fused.pass_reports}["fuse_neurons"]
    assert any(f"'ip_{name}'" in change for change in report.changes)
    assert fused.ir.layer(f"ip_{name}").fuse_neuron


def test_fused_chain_has_no_neuron_kernels(chains):
    plain, _ = chains[0]
    fused, _ = chains[1]
    assert "_neuron_forward" in plain.source
    assert "_neuron_forward" not in fused.source
    assert "_neuron_backward" not in fused.source


@pytest.mark.parametrize("name", NEURONS)
def test_fused_matches_unfused(chains, name):
    plain, plain_objective = chains[0]
    fused, fused_objective = chains[1]
    assert fused_objective == pytest.approx(plain_objective, rel=1e-12)
    np.testing.assert_allclose(
        fused.blobs[f"h_{name}"], plain.blobs[f"h_{name}"], rtol=0, atol=1e-12
    )
    for param in ("weight", "bias"):
        np.testing.assert_allclose(
            fused.grads[f"ip_{name}"][param],
            plain.grads[f"ip_{name}"][param],
            rtol=0,
            atol=1e-12,
        )


def test_fused_chain_gradients(chains):
    fused, _ = chains[1]
    checked = check_net_gradients(fused)
    assert len(checked) == 2 * (len(NEURONS) + 1)


def test_float32_chain_matches_float64(chains):
    plain, _ = chains[0]
    single = build_chain(1, dtype=np.float32)
    single.forward()
    for name in NEURONS:
        assert single.blobs[f"h_{name}"].dtype == np.float32
        np.testing.assert_allclose(
            single.blobs[f"h_{name}"], plain.blobs[f"h_{name}"], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("order", ["owner first", "clash first"])
def test_layer_named_like_neuron_kernel(order):
    """A layer "a" whose neuron runs apart defines a_neuron_forward; a layer
    named "a_neuron" gets another C name instead of a duplicate function."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5))
    owner = InnerProductLayer(
        name="a", output_dim=3, neuron=Tanh(), bottoms=["x"], tops=["ya"]
    )
    clash = InnerProductLayer(name="a_neuron", output_dim=3, bottoms=["x"], tops=["yb"])
    layers = [owner, clash] if order == "owner first" else [clash, owner]
    net = build_net(f"neuron-name-{order.split()[0]}", layers, {"x": x})
    names = [kernel.context["fn"] for kernel in net.kernels]
    assert len(set(names)) == len(names)
    for name in names:
        assert f"{name}_neuron" not in names
    net.forward(load_data=False)
    weight, bias = net.params["a"]["weight"], net.params["a"]["bias"]
    np.testing.assert_allclose(
        net.blobs["ya"], np.tanh(x @ weight.T + bias), rtol=1e-12
    )
