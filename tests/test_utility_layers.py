"""Split, Identity and Reshape layers: copies, gradients and gradient flow in nets."""

import logging

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import (
    ConfigError,
    CPUBackend,
    IdentityLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    ReshapeLayer,
    ShapeError,
    SplitLayer,
    SquareLossLayer,
)

RNG = np.random.default_rng(29)

INPUTS = {
    "x_split": RNG.normal(size=(2, 3)),
    "x_first": RNG.normal(size=(2, 3)),
    "x_second": RNG.normal(size=(2, 2, 2)),
    "x_flat": RNG.normal(size=(2, 6)),
    "x_long": RNG.normal(size=(2, 12)),
    "x_image": RNG.normal(size=(3, 2, 3, 2)),
}
LAYERS = [
    SplitLayer(name="split", bottoms=["x_split"], tops=["copy1", "copy2", "copy3"]),
    IdentityLayer(
        name="identity", bottoms=["x_first", "x_second"], tops=["y_first", "y_second"]
    ),
    # Mocha's shape is (width, height): (3, 2) gives NumPy (N, 2, 3).
    ReshapeLayer(name="reshape", bottoms=["x_flat"], tops=["y_grid"], shape=(3, 2)),
    ReshapeLayer(
        name="reshape_two",
        bottoms=["x_long", "x_image"],
        tops=["y_long", "y_image"],
        shape=(4, 3),
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


@pytest.fixture(scope="module")
def shared_net():
    return build_net("utility", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


def test_split_forward_copies(net):
    net.forward_layer("split")
    for top in ("copy1", "copy2", "copy3"):
        np.testing.assert_array_equal(net.blobs[top], net.blobs["x_split"])


def test_split_backward_sums(net):
    net.forward_layer("split")
    diffs = [RNG.normal(size=(2, 3)) for _ in range(3)]
    for top, diff in zip(("copy1", "copy2", "copy3"), diffs):
        net.diffs[top][...] = diff
    net.backward_layer("split")
    np.testing.assert_allclose(net.diffs["x_split"], sum(diffs), rtol=1e-15)


def test_identity_forward_copies(net):
    net.forward_layer("identity")
    np.testing.assert_array_equal(net.blobs["y_first"], net.blobs["x_first"])
    np.testing.assert_array_equal(net.blobs["y_second"], net.blobs["x_second"])


@pytest.mark.parametrize(
    ("name", "bottom", "top", "shape"),
    [
        ("reshape", "x_flat", "y_grid", (2, 2, 3)),
        ("reshape_two", "x_long", "y_long", (2, 3, 4)),
        ("reshape_two", "x_image", "y_image", (3, 3, 4)),
    ],
)
def test_reshape_forward(net, name, bottom, top, shape):
    net.forward_layer(name)
    assert net.blobs[top].shape == shape
    # The elements keep their row-major order.
    np.testing.assert_array_equal(
        net.blobs[top].reshape(-1), net.blobs[bottom].reshape(-1)
    )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_utility_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


@pytest.mark.parametrize("opt_level", [0, 1])
def test_reshape_chain_carries_gradient(opt_level):
    x = RNG.normal(size=(2, 4))
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["x", "zeros"], data=[x, np.zeros((2, 6))]
    )
    layers = [
        data,
        InnerProductLayer(name="ip", bottoms=["x"], tops=["h"], output_dim=6),
        ReshapeLayer(name="to_grid", bottoms=["h"], tops=["grid"], shape=(3, 2)),
        ReshapeLayer(name="to_flat", bottoms=["grid"], tops=["flat"], shape=(6,)),
        IdentityLayer(name="rename", bottoms=["flat"], tops=["out"]),
        SquareLossLayer(name="loss", bottoms=["out", "zeros"]),
    ]
    backend = CPUBackend(dtype=np.float64, seed=1)
    net = Net("reshape-chain", backend, layers, opt_level=opt_level, keep=["h", "grid"])
    net.forward()
    net.backward()
    h = net.blobs["h"]
    assert net.blobs["grid"].shape == (2, 2, 3)
    assert np.any(h != 0)
    # With a zero target the square loss sends back out / N.
    np.testing.assert_allclose(net.diffs["h"], h / 2, rtol=1e-14)
    assert np.any(net.grads["ip"]["weight"] != 0)


def used_twice_layers(with_split):
    data = MemoryDataLayer(
        name="data",
        batch_size=1,
        tops=["x", "zeros", "ones"],
        data=[np.array([[1.0, 2.0]]), np.zeros((1, 2)), np.ones((1, 2))],
    )
    ip = InnerProductLayer(name="ip", bottoms=["x"], tops=["h"], output_dim=2)
    if with_split:
        split = [SplitLayer(name="split", bottoms=["h"], tops=["h1", "h2"])]
        first, second = "h1", "h2"
    else:
        split = []
        first, second = "h", "h"
    losses = [
        SquareLossLayer(name="loss_zero", bottoms=[first, "zeros"]),
        SquareLossLayer(name="loss_one", bottoms=[second, "ones"]),
    ]
    return [data, ip, *split, *losses]


def test_blob_used_twice_gets_split(caplog):
    backend = CPUBackend(dtype=np.float64, seed=1)
    with caplog.at_level(logging.WARNING, logger="mochac"):
        net = Net("used-twice", backend, used_twice_layers(with_split=False))
    assert "'h'" in caplog.text
    assert "'loss_zero'" in caplog.text
    assert "'loss_one'" in caplog.text
    assert net.ir.inserted_splits == ["h-split"]


@pytest.mark.parametrize("opt_level", [0, 1])
@pytest.mark.parametrize("with_split", [True, False])
def test_split_adds_gradients(with_split, opt_level):
    backend = CPUBackend(dtype=np.float64, seed=1)
    layers = used_twice_layers(with_split=with_split)
    net = Net("split-sum", backend, layers, opt_level=opt_level, keep=["h"])
    net.params["ip"]["weight"][...] = np.eye(2)
    net.params["ip"]["bias"][...] = 0.0
    objective = net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["h"], [[1.0, 2.0]])
    # L = |h|^2 / 2 + |h - 1|^2 / 2, so dL/dh = h + (h - 1).
    assert objective == pytest.approx(0.5 * 5 + 0.5 * 1)
    np.testing.assert_allclose(net.diffs["h"], [[1.0, 3.0]], rtol=1e-15)


@pytest.mark.parametrize("shape", [(), (0, 2), (2.5,), "6"])
def test_reshape_invalid_shape(shape):
    with pytest.raises(ConfigError, match=r"'reshape1'.*invalid shape="):
        ReshapeLayer(name="reshape1", bottoms=["x"], tops=["y"], shape=shape)


def test_reshape_element_count_mismatch():
    layer = ReshapeLayer(name="reshape1", bottoms=["x"], tops=["y"], shape=(5,))
    with pytest.raises(ShapeError, match=r"'reshape1'.*'x' has 6 elements.*\(5,\)"):
        layer.infer_shapes([(2, 2, 3)])


def test_split_invalid_no_copy():
    with pytest.raises(ConfigError, match=r"'split1'.*invalid no_copy="):
        SplitLayer(name="split1", bottoms=["x"], tops=["a", "b"], no_copy=1)


def test_split_one_bottom_only():
    with pytest.raises(ConfigError, match=r"'split1'.*invalid bottoms="):
        SplitLayer(name="split1", bottoms=["x", "y"], tops=["a", "b"])


def test_identity_top_count_mismatch():
    with pytest.raises(ConfigError, match=r"'identity1'.*invalid tops=.*one top per"):
        IdentityLayer(name="identity1", bottoms=["x", "y"], tops=["a"])
