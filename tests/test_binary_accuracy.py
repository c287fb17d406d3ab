"""BinaryAccuracyLayer: counts for 0/1 and -1/+1 labels, thresholds, n_valid,
accumulation and invalid labels."""

import math
import re

import numpy as np
import pytest
from gradcheck import build_net, preserved

from mochac import ConfigError, DataError, ShapeError
from mochac.layers.statistics import BinaryAccuracyLayer

RNG = np.random.default_rng(53)

INPUTS = {
    # Probabilities against 0/1 labels: right, right, wrong, right.
    "prob": np.array([[0.9], [0.2], [0.6], [0.4]]),
    "bit": np.array([[1.0], [0.0], [0.0], [0.0]]),
    # Scores against -1/+1 labels, two per sample: 4 of 6 right.
    "score": np.array([[1.5, -0.5], [-2.0, 0.3], [0.1, -0.1]]),
    "sign": np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]),
    "score_image": RNG.normal(size=(2, 2, 3)),
    "sign_flat": RNG.choice([-1.0, 1.0], size=(2, 6)),
}
LAYERS = [
    BinaryAccuracyLayer(name="acc_bits", bottoms=["prob", "bit"], threshold=0.5),
    BinaryAccuracyLayer(name="acc_signs", bottoms=["score", "sign"]),
    BinaryAccuracyLayer(name="acc_image", bottoms=["score_image", "sign_flat"]),
]


def reference_right(pred, label, threshold, n_samples):
    """Count the elements of the first samples whose side of the threshold
    matches the label's class (positive when the label is 1)."""
    right = 0
    for sample in range(n_samples):
        for p, y in zip(pred[sample].flat, label[sample].flat):
            right += (p > threshold) == (y == 1)
    return right


@pytest.fixture(scope="module")
def shared_net():
    return build_net("binary-accuracy", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        shared_net.reset_statistics()
        yield shared_net


def test_binary_accuracy_zero_one_labels(net):
    net.forward_layer("acc_bits")
    assert list(net.states["acc_bits"]) == [3, 4]
    assert net.statistics()["acc_bits-accuracy"] == pytest.approx(0.75)


def test_binary_accuracy_sign_labels(net):
    net.forward_layer("acc_signs")
    assert list(net.states["acc_signs"]) == [4, 6]


def test_binary_accuracy_matches_reference(net):
    net.forward_layer("acc_image")
    expected = reference_right(net.blobs["score_image"], net.blobs["sign_flat"], 0, 2)
    assert list(net.states["acc_image"]) == [expected, 12]


def test_binary_accuracy_threshold_is_strict(net):
    # A prediction equal to the threshold is negative.
    net.blobs["prob"][...] = 0.5
    net.forward_layer("acc_bits")
    assert list(net.states["acc_bits"]) == [3, 4]


def test_binary_accuracy_accumulates_until_reset(net):
    net.forward_layer("acc_signs")
    net.forward_layer("acc_signs")
    assert list(net.states["acc_signs"]) == [8, 12]
    net.reset_statistics()
    assert list(net.states["acc_signs"]) == [0, 0]
    assert net.statistics()["acc_signs-accuracy"] == 0.0


def single_net(name):
    """Return a net of the layer ``name`` alone, whose data layers share one
    batch size, so that n_valid applies to it (lowering.counts_whole)."""
    (layer,) = [layer for layer in LAYERS if layer.name == name]
    inputs = {blob: INPUTS[blob] for blob in layer.bottoms}
    return build_net(f"binary_{name}", [layer], inputs)


def test_binary_accuracy_counts_valid_samples():
    net = single_net("acc_signs")
    net.forward_layer("acc_signs", n_valid=2)
    assert list(net.states["acc_signs"]) == [3, 4]
    assert net.statistics()["acc_signs-count"] == 4


def test_binary_accuracy_ignores_labels_past_valid():
    net = single_net("acc_bits")
    net.blobs["bit"][3, 0] = 7.0
    net.forward_layer("acc_bits", n_valid=3)
    assert list(net.states["acc_bits"]) == [2, 3]


def test_binary_accuracy_requests_no_diff(net):
    assert "score" not in net.diffs
    backward = [net.ir.layers[index].name for index in net.ir.backward_order]
    assert "acc_signs" not in backward


@pytest.mark.parametrize(
    ("value", "shown"), [(2.0, r"2\.0"), (0.5, r"0\.5"), (math.nan, "nan")]
)
def test_binary_accuracy_invalid_label(net, value, shown):
    net.blobs["sign"][1, 1] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("acc_signs")
    message = str(caught.value)
    assert "'acc_signs'" in message
    assert "label blob 'sign'" in message
    assert re.search(rf"contains {shown}\b", message)
    assert "at sample 1 " in message
    assert "-1, 0 or 1" in message


def test_binary_accuracy_size_mismatch():
    layer = BinaryAccuracyLayer(name="acc1", bottoms=["pred", "label"])
    with pytest.raises(ShapeError, match=r"'acc1'.*\(4, 2\).*\(4, 1\)"):
        layer.infer_shapes([(4, 2), (4, 1)])


@pytest.mark.parametrize("threshold", [math.inf, math.nan, "0.5", None])
def test_binary_accuracy_invalid_threshold(threshold):
    with pytest.raises(ConfigError, match=r"'acc1'.*invalid threshold="):
        BinaryAccuracyLayer(name="acc1", bottoms=["pred", "label"], threshold=threshold)
