"""ConvolutionLayer with every neuron: forward against NumPy, float64 gradients.

Each neuron runs in both convolution kernels (im2col with GEMM, and the
generated direct code) and in both forms: a kernel of its own (-O0) and
fused into the convolution's bias loop (-O1, fuse_neurons). The fused forms
read the top to get the neuron's derivative, so a wrong derivative
expression or a top overwritten too early shows up here.
"""

import numpy as np
import pytest
from gradcheck import check_gradients, preserved
from test_convolution import reference_convolution

from mochac import (
    ConvolutionLayer,
    CPUBackend,
    GaussianInitializer,
    MemoryDataLayer,
    Net,
    Neurons,
)
from mochac.codegen import lowering
from mochac.neurons import Exponential, LReLU, Sigmoid, Tanh

NEURONS = {
    "relu_epsilon": Neurons.ReLU(epsilon=0.1),
    "lrelu": LReLU(),
    "sigmoid": Sigmoid(),
    "tanh": Tanh(),
    "exponential": Exponential(),
}
RNG = np.random.default_rng(61)
# Geometry tuples are Mocha's (width, height). The stride keeps the im2col
# layers off the direct kernels, which need stride 1.
IM2COL_INPUT = RNG.normal(size=(2, 3, 5, 6))
IM2COL = {"kernel": (2, 3), "stride": (2, 1), "pad": 1, "n_filter": 4}
# A "same" convolution with 12 of 16 vector lanes used, which the direct
# kernels take (lowering.direct_convolution_fits).
DIRECT_INPUT = RNG.normal(size=(2, 12, 4, 4))
DIRECT = {"kernel": 3, "pad": 1, "n_filter": 12}
KERNELS = {
    "im2col": (IM2COL_INPUT, IM2COL, "c/convolution.c.j2"),
    "direct": (DIRECT_INPUT, DIRECT, "c/convolution_direct.c.j2"),
}
FORMS = ("separate", "fused")


def apply_neuron(neuron, values):
    """Apply the neuron to ``values`` as Mocha defines it."""
    if isinstance(neuron, Neurons.ReLU):
        return np.maximum(values, neuron.epsilon)
    if isinstance(neuron, LReLU):
        return np.where(values > 0, values, 0.01 * values)
    if isinstance(neuron, Sigmoid):
        return 1 / (1 + np.exp(-values))
    if isinstance(neuron, Tanh):
        return np.tanh(values)
    if isinstance(neuron, Exponential):
        return np.exp(values)
    raise AssertionError(f"no reference for {neuron!r}")


def kink(neuron):
    """Return where the neuron's derivative jumps, or None."""
    if isinstance(neuron, Neurons.ReLU):
        return neuron.epsilon
    if isinstance(neuron, LReLU):
        return 0.0
    return None


def build(kernel, form, monkeypatch):
    """Build one convolution per neuron, each on its own copy of the input."""
    values, geometry, _ = KERNELS[kernel]
    inputs = {f"x_{name}": values.copy() for name in NEURONS}
    feeds = [
        MemoryDataLayer(
            name=f"data_{blob}", batch_size=len(array), data=[array], tops=[blob]
        )
        for blob, array in inputs.items()
    ]
    layers = [
        ConvolutionLayer(
            name=f"conv_{name}",
            bottoms=[f"x_{name}"],
            tops=[f"y_{name}"],
            neuron=neuron,
            bias_init=GaussianInitializer(std=0.5),
            **geometry,
        )
        for name, neuron in NEURONS.items()
    ]
    # These convolutions have far fewer output positions than the direct
    # kernels need to pay off, so lower the bound to make them run direct.
    monkeypatch.setattr(lowering, "DIRECT_MIN_POSITIONS", 0)
    net = Net(
        f"conv-neurons-{kernel}-{form}",
        CPUBackend(dtype=np.float64, seed=8, threads=2),
        feeds + layers,
        force_backward=True,
        opt_level=1 if form == "fused" else 0,
        # The gradient check reads every blob, so no blob may share storage.
        disable=("plan_memory",),
    )
    net.load_batch()
    return net


@pytest.fixture(
    scope="module",
    params=[(kernel, form) for kernel in KERNELS for form in FORMS],
    ids="-".join,
)
def shared_net(request):
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield build(*request.param, monkeypatch)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", NEURONS)
def test_conv_neuron_kernel_and_form(net, name):
    info = net.ir.layer(f"conv_{name}")
    kernel_name, form = net.ir.name.split("-")[-2:]
    kernel = next(k for k in net.kernels if k.context["fn"] == info.name)
    assert kernel.template == KERNELS[kernel_name][2]
    assert info.fuse_neuron == (form == "fused")
    assert (f"{info.name}_neuron_forward" in net.source) == (form == "separate")


@pytest.mark.parametrize("name", NEURONS)
def test_conv_neuron_forward(net, name):
    layer = net.get_layer(f"conv_{name}")
    params = net.params[layer.name]
    net.forward_layer(layer.name)
    before = reference_convolution(
        net.blobs[layer.bottoms[0]], params["filter"], params["bias"], layer
    )
    point = kink(layer.neuron)
    if point is not None:
        # Values on both sides of the kink, none within the gradient
        # check's step of it.
        assert np.any(before < point)
        assert np.any(before > point)
        assert np.abs(before - point).min() > 1e-4
    expected = apply_neuron(layer.neuron, before)
    np.testing.assert_allclose(
        net.blobs[layer.tops[0]], expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name", NEURONS)
def test_conv_neuron_gradients(net, name):
    layer = net.get_layer(f"conv_{name}")
    checked = check_gradients(net, layer.name)
    assert checked == [layer.bottoms[0], "filter", "bias"]
