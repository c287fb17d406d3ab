"""Layer options beyond the per-layer test files.

Class-index losses and AccuracyLayer along a class axis other than the
channel axis (with and without class weights), gradients of every class
weight shape and normalization, and the gradient of a scaling DropoutLayer.
Forward values are compared with NumPy references and gradients with float64
central differences (tests/gradcheck.py).
"""

import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, numeric_gradient, preserved
from test_loss_class_weights import SPATIAL_INPUTS, SPATIAL_LAYERS

from mochac import AccuracyLayer, CPUBackend, MemoryDataLayer, Net, SoftmaxLossLayer
from mochac.layers.dropout import DropoutLayer
from mochac.layers.loss import MultinomialLogisticLossLayer, SoftlabelSoftmaxLossLayer

RNG = np.random.default_rng(67)

# Mocha's dim=1 is the fastest-varying axis, NumPy's last one. Predictions are
# (N=2, H=2, C=3) with the classes last, so labels are (2, 2, 1).
LAST_AXIS_SHAPE = (2, 2, 3)
LAST_AXIS_LABELS = np.array([[[0.0], [2.0]], [[1.0], [1.0]]])
CLASS_WEIGHTS = (0.5, 2.0, 1.0)
SOFT_LABELS = RNG.uniform(0.1, 1.0, size=LAST_AXIS_SHAPE)
SOFT_LABELS /= SOFT_LABELS.sum(axis=-1, keepdims=True)

LAST_AXIS_INPUTS = {
    "logits_plain": RNG.normal(size=LAST_AXIS_SHAPE),
    "logits_weighted": RNG.normal(size=LAST_AXIS_SHAPE),
    "logits_unnormalized": RNG.normal(size=LAST_AXIS_SHAPE),
    "probs_plain": RNG.uniform(0.1, 1.0, size=LAST_AXIS_SHAPE),
    "probs_weighted": RNG.uniform(0.1, 1.0, size=LAST_AXIS_SHAPE),
    "logits_soft": RNG.normal(size=LAST_AXIS_SHAPE),
    "scores": RNG.normal(size=LAST_AXIS_SHAPE),
    "labels": LAST_AXIS_LABELS,
    "soft_labels": SOFT_LABELS,
}
LAST_AXIS_LAYERS = [
    SoftmaxLossLayer(
        name="softmax_weighted",
        bottoms=["logits_weighted", "labels"],
        dim=1,
        weights=CLASS_WEIGHTS,
    ),
    SoftmaxLossLayer(
        name="softmax_unnormalized",
        bottoms=["logits_unnormalized", "labels"],
        dim=1,
        weights=CLASS_WEIGHTS,
        normalize="no",
        weight=0.5,
    ),
    MultinomialLogisticLossLayer(
        name="logistic_plain", bottoms=["probs_plain", "labels"], dim=1
    ),
    MultinomialLogisticLossLayer(
        name="logistic_weighted",
        bottoms=["probs_weighted", "labels"],
        dim=1,
        weights=CLASS_WEIGHTS,
        normalize="global",
    ),
    SoftlabelSoftmaxLossLayer(
        name="softlabel_last", bottoms=["logits_soft", "soft_labels"], dim=1
    ),
    AccuracyLayer(name="accuracy_last", bottoms=["scores", "labels"], dim=1),
]
# Each class-index loss: (uses softmax, class weights, normalize).
CLASS_LOSSES = {
    "softmax_weighted": (True, CLASS_WEIGHTS, "local"),
    "softmax_unnormalized": (True, CLASS_WEIGHTS, "no"),
    "logistic_plain": (False, (1.0, 1.0, 1.0), "no"),
    "logistic_weighted": (False, CLASS_WEIGHTS, "global"),
}


def position_rows(values):
    """Return the (N, H, C) ``values`` as one row of C classes per position."""
    return values.reshape(-1, values.shape[-1])


def normalized_class_weights(weights, normalize, n_positions):
    """Return one weight per class after Mocha's normalization.

    With one weight per class every position has the same weights, so "local"
    (per position) and "global" (per sample) rescale alike.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if normalize == "local":
        return weights * len(weights) / weights.sum()
    if normalize == "global":
        total = weights.sum() * n_positions
        return weights * (len(weights) * n_positions) / total
    return weights


def reference_class_loss(values, labels, uses_softmax, weights, normalize, weight):
    """Return weight * mean over positions of -w[g] * log(p[g]), classes last."""
    rows = position_rows(values)
    targets = [int(g) for g in labels.reshape(-1)]
    table = normalized_class_weights(weights, normalize, len(rows))
    total = 0.0
    for row, target in zip(rows, targets):
        if uses_softmax:
            exps = [math.exp(v - max(row)) for v in row]
            prob = exps[target] / sum(exps)
        else:
            prob = row[target]
        total -= table[target] * math.log(prob)
    return weight * total / len(rows)


def reference_softlabel_loss(logits, soft):
    """Return the mean over positions of -sum_c soft_c log softmax(logits)_c."""
    total = 0.0
    for row, target in zip(position_rows(logits), position_rows(soft)):
        log_norm = max(row) + math.log(sum(math.exp(v - max(row)) for v in row))
        total -= sum(t * (v - log_norm) for v, t in zip(row, target))
    return total / len(position_rows(logits))


@pytest.fixture(scope="module")
def shared_last_axis_net():
    return build_net("class-axis-last", LAST_AXIS_LAYERS, LAST_AXIS_INPUTS)


@pytest.fixture
def last_axis_net(shared_last_axis_net):
    with preserved(shared_last_axis_net):
        shared_last_axis_net.reset_statistics()
        yield shared_last_axis_net


@pytest.mark.parametrize("name", list(CLASS_LOSSES))
def test_class_loss_last_axis_forward(last_axis_net, name):
    layer = last_axis_net.get_layer(name)
    uses_softmax, weights, normalize = CLASS_LOSSES[name]
    last_axis_net.forward_layer(name)
    values = last_axis_net.blobs[layer.bottoms[0]]
    expected = reference_class_loss(
        values, LAST_AXIS_LABELS, uses_softmax, weights, normalize, layer.weight
    )
    assert last_axis_net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", [*CLASS_LOSSES, "softlabel_last"])
def test_class_loss_last_axis_gradients(last_axis_net, name):
    layer = last_axis_net.get_layer(name)
    assert check_gradients(last_axis_net, name) == [layer.bottoms[0]]


def test_softlabel_last_axis_forward(last_axis_net):
    last_axis_net.forward_layer("softlabel_last")
    expected = reference_softlabel_loss(last_axis_net.blobs["logits_soft"], SOFT_LABELS)
    loss = last_axis_net.states["softlabel_last"][0]
    assert loss == pytest.approx(expected, rel=1e-12)


def test_accuracy_last_axis_counts_right(last_axis_net):
    scores = last_axis_net.blobs["scores"]
    predicted = [list(row).index(max(row)) for row in position_rows(scores)]
    labels = [int(g) for g in LAST_AXIS_LABELS.reshape(-1)]
    expected = sum(p == g for p, g in zip(predicted, labels))
    last_axis_net.forward_layer("accuracy_last")
    right, count = last_axis_net.states["accuracy_last"]
    assert count == 4
    assert right == expected


def test_accuracy_last_axis_all_right(last_axis_net):
    # The largest score of each position is at its label: 0, 2, 1 and 1.
    scores = np.array(
        [[[3.0, 0.0, 1.0], [0.0, 0.5, 4.0]], [[0.0, 2.0, 1.0], [5.0, 6.0, -1.0]]]
    )
    last_axis_net.blobs["scores"][...] = scores
    last_axis_net.forward_layer("accuracy_last")
    right, count = last_axis_net.states["accuracy_last"]
    assert count == 4
    assert right == 4


@pytest.fixture(scope="module")
def shared_weighted_net():
    return build_net("class-weights-all", SPATIAL_LAYERS, SPATIAL_INPUTS)


@pytest.fixture
def weighted_net(shared_weighted_net):
    with preserved(shared_weighted_net):
        yield shared_weighted_net


# Every weight shape (class, point, element) under every normalization, for
# both losses; test_loss_class_weights checks the forward values of all and
# the gradients of three.
@pytest.mark.parametrize("name", [layer.name for layer in SPATIAL_LAYERS])
def test_class_weight_gradients(weighted_net, name):
    layer = weighted_net.get_layer(name)
    assert check_gradients(weighted_net, name) == [layer.bottoms[0]]


def test_scaled_dropout_gradients():
    """DropoutLayer with auto_scale: d top / d bottom is mask / (1 - ratio).

    The stream is reset before each forward pass, so every evaluation of the
    objective draws the same mask.
    """
    x = RNG.normal(size=(3, 4))
    data = MemoryDataLayer(name="data", batch_size=3, data=[x], tops=["x"])
    dropout = DropoutLayer(name="drop", bottoms=["x"], tops=["y"], ratio=0.25)
    backend = CPUBackend(dtype=np.float64, seed=2, threads=2)
    net = Net(
        "scaled-dropout",
        backend,
        [data, dropout],
        force_backward=True,
        phase="train",
        opt_level=0,
    )
    net.load_batch()
    state = net.rng_states["drop.stream"]
    saved = state.copy()
    top_weights = RNG.normal(size=x.shape)

    def objective():
        state[...] = saved
        net.forward_layer("drop")
        return float(np.sum(net.blobs["y"] * top_weights))

    objective()
    kept = net.blobs["y"] != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(net.blobs["y"][kept], x[kept] / 0.75, rtol=1e-15)

    net.diffs["y"][...] = top_weights
    net.diffs["x"][...] = np.nan
    net.backward_layer("drop")
    analytic = net.diffs["x"].copy()
    numeric = numeric_gradient(objective, net.blobs["x"])
    assert np.any(numeric != 0)
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-8)
    np.testing.assert_allclose(
        analytic, np.where(kept, top_weights / 0.75, 0.0), rtol=1e-15
    )
