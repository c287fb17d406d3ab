"""SoftlabelSoftmaxLossLayer: loss against a reference, gradients, one-hot
labels against SoftmaxLoss, huge logits and labels outside [0, 1]."""

import math
import re

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, DataError, ShapeError, SoftmaxLossLayer
from mochac.layers.loss import SoftlabelSoftmaxLossLayer

RNG = np.random.default_rng(43)


def random_simplex(shape, axis):
    """Return positive values that sum to 1 along ``axis``."""
    values = RNG.uniform(0.1, 1.0, size=shape)
    return values / values.sum(axis=axis, keepdims=True)


ONE_HOT_LABELS = [0, 2, 1]
INPUTS = {
    "pred": RNG.normal(size=(4, 3)),
    "soft": random_simplex((4, 3), 1),
    "pred_spatial": RNG.normal(size=(2, 3, 2, 2)),
    "soft_spatial": random_simplex((2, 3, 2, 2), 1),
    "pred_onehot": RNG.normal(size=(3, 3)),
    "onehot": np.eye(3)[ONE_HOT_LABELS],
    "pred_hard": RNG.normal(size=(3, 3)),
    "hard": np.array(ONE_HOT_LABELS, dtype=np.float64).reshape(3, 1),
    "pred_huge": np.array([[1000.0, 0.0, -1000.0]]),
    "soft_huge": np.array([[0.0, 1.0, 0.0]]),
}
LAYERS = [
    SoftlabelSoftmaxLossLayer(name="soft_plain", bottoms=["pred", "soft"]),
    SoftlabelSoftmaxLossLayer(
        name="soft_spatial", bottoms=["pred_spatial", "soft_spatial"], weight=0.5
    ),
    SoftlabelSoftmaxLossLayer(name="soft_onehot", bottoms=["pred_onehot", "onehot"]),
    SoftmaxLossLayer(name="hard", bottoms=["pred_hard", "hard"]),
    SoftlabelSoftmaxLossLayer(name="soft_huge", bottoms=["pred_huge", "soft_huge"]),
]
LAYER_NAMES = ["soft_plain", "soft_spatial"]


def reference_softlabel_loss(pred, soft, weight):
    """Return -weight * mean over positions of sum_c soft_c log softmax(pred)_c."""
    logits = np.moveaxis(pred, 1, -1).reshape(-1, pred.shape[1])
    labels = np.moveaxis(soft, 1, -1).reshape(-1, pred.shape[1])
    total = 0.0
    for row, target in zip(logits, labels):
        log_prob = row - row.max() - math.log(np.exp(row - row.max()).sum())
        total -= float(np.dot(target, log_prob))
    return weight * total / len(logits)


@pytest.fixture(scope="module")
def shared_net():
    net = build_net("softlabel-softmax-loss", LAYERS, INPUTS)
    net.blobs["pred_hard"][...] = net.blobs["pred_onehot"]
    return net


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softlabel_loss_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    pred, soft = (net.blobs[blob] for blob in layer.bottoms)
    expected = reference_softlabel_loss(pred, soft, layer.weight)
    assert net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softlabel_loss_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == [layer.bottoms[0]]
    assert layer.bottoms[1] not in net.diffs


def test_softlabel_loss_gradient_is_softmax_minus_label(net):
    net.forward_layer("soft_plain")
    net.backward_layer("soft_plain")
    pred = net.blobs["pred"]
    softmax = np.exp(pred) / np.exp(pred).sum(axis=1, keepdims=True)
    expected = (softmax - net.blobs["soft"]) / len(pred)
    np.testing.assert_allclose(net.diffs["pred"], expected, rtol=0, atol=1e-15)


def test_softlabel_onehot_equals_softmax_loss(net):
    for name in ("soft_onehot", "hard"):
        net.forward_layer(name)
        net.backward_layer(name)
    assert net.states["soft_onehot"][0] == pytest.approx(
        net.states["hard"][0], rel=1e-12
    )
    np.testing.assert_allclose(
        net.diffs["pred_onehot"], net.diffs["pred_hard"], rtol=0, atol=1e-15
    )


def test_softlabel_huge_logits(net):
    net.forward_layer("soft_huge")
    net.backward_layer("soft_huge")
    assert net.states["soft_huge"][0] == pytest.approx(1000.0, rel=1e-12)
    np.testing.assert_allclose(net.diffs["pred_huge"], [[1.0, -1.0, 0.0]], atol=1e-12)


@pytest.mark.parametrize(
    ("value", "shown", "element", "sample"),
    [(1.5, "1.5", 4, 1), (-0.25, "-0.25", 11, 3), (math.nan, "nan", 0, 0)],
)
def test_softlabel_entry_out_of_range(net, value, shown, element, sample):
    net.blobs["soft"].reshape(-1)[element] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("soft_plain")
    message = str(caught.value)
    assert "'soft_plain'" in message
    assert "label blob 'soft'" in message
    assert re.search(rf"contains {re.escape(shown)}\b", message)
    assert f"at sample {sample} " in message
    assert "probabilities in [0, 1]" in message


def test_softlabel_shape_mismatch():
    layer = SoftlabelSoftmaxLossLayer(name="loss1", bottoms=["pred", "soft"])
    with pytest.raises(ShapeError, match=r"'loss1'.*'soft'.*\(4, 1\).*\(4, 3\)"):
        layer.infer_shapes([(4, 3), (4, 1)])


@pytest.mark.parametrize(("field", "value"), [("weight", -1.0), ("dim", 1.5)])
def test_softlabel_invalid_field(field, value):
    with pytest.raises(ConfigError, match=rf"'loss1'.*invalid {field}="):
        SoftlabelSoftmaxLossLayer(
            name="loss1", bottoms=["pred", "soft"], **{field: value}
        )
