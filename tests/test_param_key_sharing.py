"""Layers with one param_key share one array, and its gradient sums over users."""

import numpy as np
import pytest

from mochac import (
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    ShapeError,
    SquareLossLayer,
)
from mochac.runtime.solvers.base import summed_gradients


def shared_net(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3, 4))
    b = rng.normal(size=(3, 4))
    t = rng.normal(size=(3, 2))
    layers = [
        MemoryDataLayer(
            name="data", batch_size=3, tops=["a", "b", "t"], data=[a, b, t]
        ),
        InnerProductLayer(
            name="ip1", param_key="shared", output_dim=2, bottoms=["a"], tops=["h1"]
        ),
        InnerProductLayer(
            name="ip2", param_key="shared", output_dim=2, bottoms=["b"], tops=["h2"]
        ),
        SquareLossLayer(name="l1", bottoms=["h1", "t"]),
        SquareLossLayer(name="l2", bottoms=["h2", "t"], weight=0.5),
    ]
    return Net("shared", CPUBackend(dtype=np.float64, seed=seed), layers)


def test_shared_key_is_one_storage():
    net = shared_net()
    assert net.params["ip1"]["weight"] is net.params["ip2"]["weight"]
    assert net.params["ip1"]["bias"] is net.params["ip2"]["bias"]


def test_shared_gradient_sums_users():
    net = shared_net()
    weight = net.params["ip1"]["weight"]
    net.forward()
    net.backward()
    summed = {
        (info.name, spec.name): grad.copy()
        for info, spec, param, grad in summed_gradients(net)
    }
    # One entry per array: the shared weight and bias appear once each.
    assert len(summed) == 2
    analytic = next(grad for (layer, name), grad in summed.items() if name == "weight")

    numeric = np.zeros_like(weight)
    eps = 1e-6
    for index in np.ndindex(weight.shape):
        saved = weight[index]
        weight[index] = saved + eps
        up = net.forward()
        weight[index] = saved - eps
        down = net.forward()
        weight[index] = saved
        numeric[index] = (up - down) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_shared_key_with_other_shape_is_refused():
    layers = [
        MemoryDataLayer(
            name="data",
            batch_size=2,
            tops=["a", "t"],
            data=[np.ones((2, 4)), np.ones((2, 2))],
        ),
        InnerProductLayer(
            name="ip1", param_key="shared", output_dim=3, bottoms=["a"], tops=["h1"]
        ),
        InnerProductLayer(
            name="ip2", param_key="shared", output_dim=2, bottoms=["h1"], tops=["h2"]
        ),
        SquareLossLayer(name="loss", bottoms=["h2", "t"]),
    ]
    with pytest.raises(ShapeError, match="layer 'ip2': parameter 'weight' is shared"):
        Net("mismatch", CPUBackend(dtype=np.float64), layers)


def test_clash_with_earlier_net_names_the_backend():
    """Two nets on one backend with layers named 'ip' of other shapes: the
    second net's error names the first as the origin of the shape and how
    to part them."""
    backend = CPUBackend(dtype=np.float64)

    def net(name, output_dim):
        layers = [
            MemoryDataLayer(
                name="data",
                batch_size=2,
                tops=["a", "t"],
                data=[np.ones((2, 4)), np.ones((2, output_dim))],
            ),
            InnerProductLayer(
                name="ip", output_dim=output_dim, bottoms=["a"], tops=["h"]
            ),
            SquareLossLayer(name="loss", bottoms=["h", "t"]),
        ]
        return Net(name, backend, layers)

    net("first", 3)
    with pytest.raises(ShapeError) as raised:
        net("second", 2)
    message = str(raised.value)
    assert "which a net built earlier on this backend gave it" in message
    assert "registry_reset(backend)" in message


def test_shared_key_with_other_parameters_rejected():
    """A convolution (filter, bias) and an inner product (weight, bias) under
    one key would share only the bias."""
    x = np.zeros((2, 1, 5, 5))
    t = np.zeros((2, 3))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, tops=["x", "t"], data=[x, t]),
        ConvolutionLayer(
            name="conv",
            n_filter=3,
            kernel=(3, 3),
            param_key="k",
            bottoms=["x"],
            tops=["c"],
        ),
        InnerProductLayer(
            name="ip", output_dim=3, param_key="k", bottoms=["c"], tops=["y"]
        ),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]
    with pytest.raises(ConfigError) as caught:
        Net("mixed-key", CPUBackend(), layers)
    message = str(caught.value)
    assert "layer 'ip' (InnerProductLayer, parameters bias, weight)" in message
    assert "param_key 'k'" in message
    assert "layer 'conv' (ConvolutionLayer, parameters bias, filter)" in message
