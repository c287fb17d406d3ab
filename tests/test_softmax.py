"""SoftmaxLayer: forward against a reference, large logits, gradients, dim checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, ShapeError, SoftmaxLayer

RNG = np.random.default_rng(13)

INPUTS = {
    "x_plain": RNG.normal(size=(3, 4)),
    "x_spatial": RNG.normal(size=(2, 3, 2, 2)),
    "x_last": RNG.normal(size=(2, 3, 4)),
    "x_large": 1e4 + RNG.normal(size=(2, 3)),
    "x_first": RNG.normal(size=(2, 3)),
    "x_second": RNG.normal(size=(2, 5, 2)),
}
LAYERS = [
    SoftmaxLayer(name="softmax_plain", bottoms=["x_plain"], tops=["y_plain"]),
    SoftmaxLayer(name="softmax_spatial", bottoms=["x_spatial"], tops=["y_spatial"]),
    # Mocha's dim 1 is the fastest-varying axis, NumPy's last one.
    SoftmaxLayer(name="softmax_last", bottoms=["x_last"], tops=["y_last"], dim=1),
    SoftmaxLayer(name="softmax_large", bottoms=["x_large"], tops=["y_large"]),
    SoftmaxLayer(
        name="softmax_two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]
CLASS_AXIS = {
    "softmax_plain": 1,
    "softmax_spatial": 1,
    "softmax_last": 2,
    "softmax_large": 1,
    "softmax_two": 1,
}


def reference_softmax(x, axis):
    """Return exp(x) / sum(exp(x)) along ``axis``, computed in float64 with a shift."""
    x = np.asarray(x, dtype=np.float64)
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros_like(moved)
    for index in np.ndindex(moved.shape[:-1]):
        logits = moved[index]
        exps = np.array([np.exp(value - logits.max()) for value in logits])
        out[index] = exps / exps.sum()
    return np.moveaxis(out, -1, axis)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("softmax", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softmax_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_softmax(net.blobs[bottom], CLASS_AXIS[name])
        np.testing.assert_allclose(net.blobs[top], expected, rtol=1e-12, atol=1e-15)
        sums = net.blobs[top].sum(axis=CLASS_AXIS[name])
        np.testing.assert_allclose(sums, 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softmax_gradients(net, name):
    layer = net.get_layer(name)
    # Float64 values near 1e4 are 1.8e-12 apart, so a larger step keeps the
    # rounding of x +- eps small against eps.
    eps = 1e-4 if name == "softmax_large" else 1e-6
    assert check_gradients(net, name, eps=eps) == list(layer.bottoms)


@pytest.fixture(scope="module")
def float32_net():
    inputs = {
        "equal": np.array([[-1e4, -1e4]], dtype=np.float32),
        "huge": np.array(
            [[1e4, 1e4 - 1, 1e4 - 3], [-1e4, -1e4 + 2, -1e4 + 0.5]],
            dtype=np.float32,
        ),
    }
    layers = [
        SoftmaxLayer(name="softmax_equal", bottoms=["equal"], tops=["p_equal"]),
        SoftmaxLayer(name="softmax_huge", bottoms=["huge"], tops=["p_huge"]),
    ]
    net = build_net("softmax-float32", layers, inputs, dtype=np.float32)
    net.forward()
    return net


def test_softmax_equal_huge_logits(float32_net):
    probabilities = float32_net.blobs["p_equal"]
    np.testing.assert_array_equal(probabilities, [[0.5, 0.5]])


def test_softmax_huge_logits_finite(float32_net):
    probabilities = float32_net.blobs["p_huge"]
    assert probabilities.dtype == np.float32
    assert np.all(np.isfinite(probabilities))
    expected = reference_softmax(float32_net.blobs["huge"], 1)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7)


def test_softmax_dim_out_of_range():
    layer = SoftmaxLayer(name="softmax1", bottoms=["x"], tops=["y"], dim=3)
    with pytest.raises(ShapeError, match=r"'softmax1'.*dim=3.*2-D"):
        layer.infer_shapes([(4, 5)])


def test_softmax_dim_not_int():
    with pytest.raises(ConfigError, match=r"'softmax1'.*invalid dim="):
        SoftmaxLayer(name="softmax1", bottoms=["x"], tops=["y"], dim=1.0)
