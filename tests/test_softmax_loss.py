"""SoftmaxLossLayer: loss against a reference, gradients, huge logits, bad labels."""

import math
import re

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import (
    ConfigError,
    CPUBackend,
    DataError,
    MemoryDataLayer,
    Net,
    ShapeError,
    SoftmaxLossLayer,
)

RNG = np.random.default_rng(17)

INPUTS = {
    "pred": RNG.normal(size=(4, 3)),
    "label": np.array([[0.0], [2.0], [1.0], [2.0]]),
    "pred_spatial": RNG.normal(size=(2, 3, 2, 2)),
    "label_spatial": RNG.integers(0, 3, size=(2, 1, 2, 2)).astype(np.float64),
    "pred_last": RNG.normal(size=(2, 2, 3)),
    "label_last": RNG.integers(0, 3, size=(2, 2, 1)).astype(np.float64),
}
LAYERS = [
    SoftmaxLossLayer(name="loss_plain", bottoms=["pred", "label"]),
    SoftmaxLossLayer(
        name="loss_spatial", bottoms=["pred_spatial", "label_spatial"], weight=0.5
    ),
    # Mocha's dim 1 is the fastest-varying axis, NumPy's last one.
    SoftmaxLossLayer(name="loss_last", bottoms=["pred_last", "label_last"], dim=1),
]
LAYER_NAMES = [layer.name for layer in LAYERS]
CLASS_AXIS = {"loss_plain": 1, "loss_spatial": 1, "loss_last": 2}


def reference_softmax_loss(pred, label, axis, weight):
    """Return weight * mean over positions of -log(softmax(pred)[label])."""
    logits = np.moveaxis(pred, axis, -1).reshape(-1, pred.shape[axis])
    labels = np.moveaxis(label, axis, -1).reshape(-1)
    total = 0.0
    for row, target in zip(logits, labels):
        shifted = row - row.max()
        total += math.log(np.exp(shifted).sum()) - shifted[int(target)]
    return weight * total / len(labels)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("softmax-loss", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softmax_loss_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    pred, label = (net.blobs[blob] for blob in layer.bottoms)
    expected = reference_softmax_loss(pred, label, CLASS_AXIS[name], layer.weight)
    assert net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_softmax_loss_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == [layer.bottoms[0]]
    assert layer.bottoms[1] not in net.diffs


def test_softmax_loss_objective_sums_losses(net):
    objective = net.forward(load_data=False)
    expected = sum(float(net.states[name][0]) for name in LAYER_NAMES)
    assert objective == pytest.approx(expected, rel=1e-12)
    assert objective > 0


@pytest.fixture(scope="module")
def huge_logits_net():
    """Return a float32 net with logits [1000, 0, -1000] under labels 0 and 1."""
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    inputs = {
        "x_label0": logits,
        "label0": np.array([[0.0]], dtype=np.float32),
        "x_label1": logits.copy(),
        "label1": np.array([[1.0]], dtype=np.float32),
    }
    layers = [
        SoftmaxLossLayer(name="loss_label0", bottoms=["x_label0", "label0"]),
        SoftmaxLossLayer(name="loss_label1", bottoms=["x_label1", "label1"]),
    ]
    net = build_net("softmax-loss-float32", layers, inputs, dtype=np.float32)
    net.forward()
    net.backward()
    return net


def test_softmax_loss_huge_logits_right_label(huge_logits_net):
    net = huge_logits_net
    assert net.states["loss_label0"][0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(net.diffs["x_label0"], [[0.0, 0.0, 0.0]], atol=1e-6)


def test_softmax_loss_huge_logits_wrong_label(huge_logits_net):
    net = huge_logits_net
    assert net.states["loss_label1"][0] == pytest.approx(1000.0, rel=1e-6)
    np.testing.assert_allclose(net.diffs["x_label1"], [[1.0, -1.0, 0.0]], atol=1e-6)
    assert np.all(np.isfinite(net.diffs["x_label1"]))


@pytest.mark.parametrize(
    ("labels", "shown", "sample"),
    [
        ([0, 2, 3, 1], "3", 2),
        ([0, -1, 2, 1], "-1", 1),
        ([0, 2, 1, 1.5], "1.5", 3),
        ([math.nan, 0, 0, 0], "nan", 0),
    ],
)
def test_softmax_loss_label_out_of_range(net, labels, shown, sample):
    net.blobs["label"][:, 0] = labels
    with pytest.raises(DataError) as caught:
        net.forward_layer("loss_plain")
    message = str(caught.value)
    assert "'loss_plain'" in message
    assert "label blob 'label'" in message
    assert re.search(rf"contains {re.escape(shown)}(\.0)?\b", message)
    assert f"at sample {sample} " in message
    assert "0..2" in message


def test_softmax_loss_spatial_label_sample(net):
    # Four labels per sample, so element 6 belongs to sample 1.
    net.blobs["label_spatial"].reshape(-1)[6] = 5.0
    with pytest.raises(DataError, match=r"'loss_spatial'.*contains 5.*at sample 1 "):
        net.forward_layer("loss_spatial")


def test_softmax_loss_label_shape_mismatch():
    layer = SoftmaxLossLayer(name="loss1", bottoms=["pred", "label"])
    with pytest.raises(ShapeError, match=r"'loss1'.*'label'.*\(4, 2\).*\(4, 3\)"):
        layer.infer_shapes([(4, 3), (4, 2)])


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight", -1.0), ("weight", math.inf), ("weight", math.nan), ("dim", "channels")],
)
def test_softmax_loss_invalid_field(field, value):
    with pytest.raises(ConfigError, match=rf"'loss1'.*invalid {field}="):
        SoftmaxLossLayer(name="loss1", bottoms=["pred", "label"], **{field: value})


def test_softmax_loss_needs_two_bottoms():
    with pytest.raises(ConfigError, match=r"'loss1'.*invalid bottoms="):
        SoftmaxLossLayer(name="loss1", bottoms=["pred"])


def test_swapped_bottoms_hint():
    x = np.zeros((4, 3))
    y = np.zeros((4, 1))
    data = MemoryDataLayer(batch_size=4, data=[x, y], tops=["ip", "label"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["label", "ip"])
    with pytest.raises(ShapeError, match=r"bottoms are \[prediction, label\]"):
        Net("swapped", CPUBackend(dtype=np.float64), [data, loss])
