"""SquareLossLayer: loss against a reference, gradients, shape rules."""

import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, ShapeError, SquareLossLayer

RNG = np.random.default_rng(19)

INPUTS = {
    "pred": RNG.normal(size=(3, 4)),
    "target": RNG.normal(size=(3, 4)),
    # Shapes may differ when batch size and elements per sample agree.
    "pred_flat": RNG.normal(size=(2, 3)),
    "label_deep": RNG.normal(size=(2, 1, 3)),
    "pred_weighted": RNG.normal(size=(2, 2, 2)),
    "label_weighted": RNG.normal(size=(2, 2, 2)),
}
LAYERS = [
    SquareLossLayer(name="loss_plain", bottoms=["pred", "target"]),
    SquareLossLayer(name="loss_shapes", bottoms=["pred_flat", "label_deep"]),
    SquareLossLayer(
        name="loss_weighted", bottoms=["pred_weighted", "label_weighted"], weight=0.25
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def reference_square_loss(pred, label, weight):
    """Return weight * sum over samples of |pred_n - label_n|^2 / (2 N)."""
    n = len(pred)
    total = 0.0
    for p, y in zip(pred.reshape(n, -1), label.reshape(n, -1)):
        total += sum((a - b) ** 2 for a, b in zip(p, y))
    return weight * total / (2 * n)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("square-loss", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_square_loss_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    pred, label = (net.blobs[blob] for blob in layer.bottoms)
    expected = reference_square_loss(pred, label, layer.weight)
    assert net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_square_loss_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_square_loss_zero_at_target(net):
    net.blobs["label_deep"][...] = net.blobs["pred_flat"].reshape(2, 1, 3)
    net.forward_layer("loss_shapes")
    assert net.states["loss_shapes"][0] == 0.0


def test_square_loss_shapes_differ(net):
    assert net.blobs["pred_flat"].shape == (2, 3)
    assert net.blobs["label_deep"].shape == (2, 1, 3)
    net.blobs["pred_flat"][...] = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
    net.blobs["label_deep"][...] = [[[1.0, 0.0, 3.0]], [[0.0, 2.0, 0.0]]]
    net.forward_layer("loss_shapes")
    # Squared differences 0 + 4 + 0 + 0 + 4 + 1 = 9, over 2 N = 4.
    assert net.states["loss_shapes"][0] == pytest.approx(9.0 / 4.0, rel=1e-15)


def test_square_loss_size_mismatch():
    inputs = {"pred": np.zeros((2, 3)), "label": np.zeros((2, 4))}
    layers = [SquareLossLayer(name="loss1", bottoms=["pred", "label"])]
    with pytest.raises(ShapeError) as caught:
        build_net("square-loss-mismatch", layers, inputs)
    message = str(caught.value)
    assert "'loss1'" in message
    assert "(2, 3)" in message
    assert "(2, 4)" in message


def test_square_loss_batch_mismatch():
    layer = SquareLossLayer(name="loss1", bottoms=["pred", "label"])
    with pytest.raises(ShapeError, match=r"'loss1'.*\(2, 6\).*\(3, 4\)"):
        layer.infer_shapes([(2, 6), (3, 4)])


@pytest.mark.parametrize("weight", [-0.5, math.inf, math.nan, "1"])
def test_square_loss_invalid_weight(weight):
    with pytest.raises(ConfigError, match=r"'loss1'.*invalid weight="):
        SquareLossLayer(name="loss1", bottoms=["pred", "label"], weight=weight)
