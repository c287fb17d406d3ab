"""AccuracyLayer: counts against a reference, n_valid, accumulation, bad labels."""

import re

import numpy as np
import pytest
from gradcheck import build_net, preserved

from mochac import (
    AccuracyLayer,
    ConcatLayer,
    ConfigError,
    CPUBackend,
    DataError,
    MemoryDataLayer,
    Net,
)

RNG = np.random.default_rng(23)

INPUTS = {
    # Rows with their largest value at 0, 2, 0 and 2.
    "pred": np.array(
        [
            [0.9, 0.1, 0.3],
            [0.2, -0.5, 0.7],
            [1.5, 1.2, -1.0],
            [-0.3, -0.2, -0.1],
        ]
    ),
    "label": np.array([[0.0], [2.0], [1.0], [2.0]]),
    "pred_spatial": RNG.normal(size=(2, 3, 2, 2)),
    "label_spatial": RNG.integers(0, 3, size=(2, 1, 2, 2)).astype(np.float64),
}
LAYERS = [
    AccuracyLayer(name="acc", bottoms=["pred", "label"]),
    AccuracyLayer(name="acc_spatial", bottoms=["pred_spatial", "label_spatial"]),
]


def reference_right(pred, label, n_samples):
    """Count the positions of the first ``n_samples`` predicted right.

    A prediction is the first class with the largest score.
    """
    right = 0
    for sample in range(n_samples):
        scores = pred[sample]
        for position in np.ndindex(scores.shape[1:]):
            column = [scores[(c, *position)] for c in range(scores.shape[0])]
            best = column.index(max(column))
            right += best == label[sample][(0, *position)]
    return right


@pytest.fixture(scope="module")
def shared_net():
    return build_net("accuracy", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        shared_net.reset_statistics()
        yield shared_net


def test_accuracy_counts_right(net):
    net.forward_layer("acc")
    right, count = net.states["acc"]
    assert count == 4
    assert right == 3
    assert net.statistics()["acc-accuracy"] == pytest.approx(0.75)


def test_accuracy_spatial_matches_reference(net):
    net.forward_layer("acc_spatial")
    right, count = net.states["acc_spatial"]
    expected = reference_right(net.blobs["pred_spatial"], net.blobs["label_spatial"], 2)
    assert count == 8
    assert right == expected


def test_accuracy_accumulates_until_reset(net):
    net.forward_layer("acc")
    net.forward_layer("acc")
    assert list(net.states["acc"]) == [6, 8]
    net.reset_statistics()
    assert list(net.states["acc"]) == [0, 0]
    assert net.statistics()["acc-accuracy"] == 0.0


def single_net(index):
    """Return a net of LAYERS[index] alone, whose data layers share one batch
    size, so that n_valid applies to it (lowering.counts_whole)."""
    layer = LAYERS[index]
    inputs = {name: INPUTS[name] for name in layer.bottoms}
    return build_net(f"accuracy_{index}", [layer], inputs)


def test_accuracy_counts_valid_samples():
    net = single_net(0)
    net.forward_layer("acc", n_valid=3)
    right, count = net.states["acc"]
    assert count == 3
    assert right == 2
    assert net.statistics()["acc-count"] == 3


def test_accuracy_spatial_valid_samples():
    net = single_net(1)
    net.forward_layer("acc_spatial", n_valid=1)
    right, count = net.states["acc_spatial"]
    expected = reference_right(net.blobs["pred_spatial"], net.blobs["label_spatial"], 1)
    assert count == 4
    assert right == expected


def test_accuracy_ties_pick_first_class(net):
    net.blobs["pred"][...] = 1.0
    net.forward_layer("acc")
    # Only the first sample has label 0.
    assert list(net.states["acc"]) == [1, 4]


def test_accuracy_requests_no_diff(net):
    assert "pred" not in net.diffs
    assert "acc" not in [net.ir.layers[index].name for index in net.ir.backward_order]


@pytest.mark.parametrize(
    ("labels", "shown", "sample"),
    [([0, 2, 3, 1], "3", 2), ([-1, 2, 0, 1], "-1", 0), ([0, 1.5, 0, 1], "1.5", 1)],
)
def test_accuracy_label_out_of_range(net, labels, shown, sample):
    net.blobs["label"][:, 0] = labels
    with pytest.raises(DataError) as caught:
        net.forward_layer("acc")
    message = str(caught.value)
    assert "'acc'" in message
    assert "label blob 'label'" in message
    assert re.search(rf"contains {re.escape(shown)}(\.0)?\b", message)
    assert f"at sample {sample} " in message
    assert "0..2" in message


def test_accuracy_invalid_dim():
    with pytest.raises(ConfigError, match=r"'acc1'.*invalid dim="):
        AccuracyLayer(name="acc1", bottoms=["pred", "label"], dim=None)


def test_accuracy_of_blob_joined_along_batch():
    """n_valid counts the data layers' samples; a blob of another batch size
    (two batches joined along the batch axis) is counted whole."""
    pred = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]]
    label = np.array([0, 1, 2, 0, 2, 0, 1, 2], dtype=np.float64)[:, None]
    layers = [
        MemoryDataLayer(
            name="a", batch_size=4, data=[pred[:4], label[:4]], tops=["pa", "la"]
        ),
        MemoryDataLayer(
            name="b", batch_size=4, data=[pred[4:], label[4:]], tops=["pb", "lb"]
        ),
        ConcatLayer(name="cp", dim=-1, bottoms=["pa", "pb"], tops=["p"]),
        ConcatLayer(name="cl", dim=-1, bottoms=["la", "lb"], tops=["l"]),
        AccuracyLayer(name="acc", bottoms=["p", "l"]),
    ]
    net = Net("joined", CPUBackend(dtype=np.float64), layers)
    net.forward()
    stats = net.statistics()
    expected = np.mean(pred.argmax(axis=1) == label[:, 0])
    assert stats["acc-count"] == 8
    assert stats["acc-accuracy"] == pytest.approx(expected)
