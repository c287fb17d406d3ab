"""MultinomialLogisticLossLayer: loss against a reference, gradients, zero
probabilities, bad labels, and SoftmaxLayer followed by it against SoftmaxLoss."""

import math
import re

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import (
    CPUBackend,
    DataError,
    MemoryDataLayer,
    Net,
    ShapeError,
    SoftmaxLayer,
    SoftmaxLossLayer,
)
from mochac.layers.loss import MultinomialLogisticLossLayer

RNG = np.random.default_rng(41)

INPUTS = {
    "prob": RNG.uniform(0.05, 1.0, size=(4, 3)),
    "label": np.array([[0.0], [2.0], [1.0], [2.0]]),
    "prob_spatial": RNG.uniform(0.05, 1.0, size=(2, 3, 2, 2)),
    "label_spatial": RNG.integers(0, 3, size=(2, 1, 2, 2)).astype(np.float64),
    # Zero probabilities at the label classes 0 and 1 of the two samples.
    "prob_zero": np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]),
    "label_zero": np.array([[0.0], [1.0]]),
}
LAYERS = [
    MultinomialLogisticLossLayer(name="loss_plain", bottoms=["prob", "label"]),
    MultinomialLogisticLossLayer(
        name="loss_spatial", bottoms=["prob_spatial", "label_spatial"], weight=0.5
    ),
    MultinomialLogisticLossLayer(name="loss_zero", bottoms=["prob_zero", "label_zero"]),
]
LAYER_NAMES = ["loss_plain", "loss_spatial"]


def reference_logistic_loss(prob, label, weight):
    """Return -weight * mean over positions of log(prob[label]), class axis 1."""
    per_position = np.moveaxis(prob, 1, -1).reshape(-1, prob.shape[1])
    labels = np.moveaxis(label, 1, -1).reshape(-1)
    total = sum(-math.log(row[int(g)]) for row, g in zip(per_position, labels))
    return weight * total / len(labels)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("multinomial-logistic-loss", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_logistic_loss_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    prob, label = (net.blobs[blob] for blob in layer.bottoms)
    expected = reference_logistic_loss(prob, label, layer.weight)
    assert net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_logistic_loss_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == [layer.bottoms[0]]
    assert layer.bottoms[1] not in net.diffs


def test_logistic_loss_gradient_only_at_label(net):
    net.forward_layer("loss_plain")
    net.backward_layer("loss_plain")
    diff = net.diffs["prob"]
    for sample, label in enumerate([0, 2, 1, 2]):
        others = [c for c in range(3) if c != label]
        assert np.all(diff[sample, others] == 0)
        expected = -1 / net.blobs["prob"][sample, label] / 4
        assert diff[sample, label] == pytest.approx(expected, rel=1e-12)


def test_logistic_loss_zero_probability_is_finite(net):
    net.forward_layer("loss_zero")
    net.backward_layer("loss_zero")
    # log(max(0, 1e-20)) = -46.0517 at both positions.
    assert net.states["loss_zero"][0] == pytest.approx(-math.log(1e-20), rel=1e-12)
    assert np.all(np.isfinite(net.diffs["prob_zero"]))
    assert net.diffs["prob_zero"][0, 0] == pytest.approx(-1e20 / 2, rel=1e-12)


@pytest.mark.parametrize(
    ("labels", "shown", "sample"),
    [([0, 2, 3, 1], "3", 2), ([0, -1, 2, 1], "-1", 1), ([0, 2, 1, 1.5], "1.5", 3)],
)
def test_logistic_loss_label_out_of_range(net, labels, shown, sample):
    net.blobs["label"][:, 0] = labels
    with pytest.raises(DataError) as caught:
        net.forward_layer("loss_plain")
    message = str(caught.value)
    assert "'loss_plain'" in message
    assert "label blob 'label'" in message
    assert re.search(rf"contains {re.escape(shown)}(\.0)?\b", message)
    assert f"at sample {sample} " in message
    assert "0..2" in message


@pytest.mark.parametrize(
    ("position", "value", "shown"),
    [((1, 2), -0.25, r"-0\.25"), ((2, 1), 1.5, r"1\.5"), ((3, 2), math.inf, "inf")],
)
def test_logistic_loss_probability_out_of_range(net, position, value, shown):
    net.blobs["prob"][position] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("loss_plain")
    message = str(caught.value)
    assert "'loss_plain'" in message
    assert "prediction blob 'prob'" in message
    assert re.search(rf"contains {shown}\b", message)
    assert f"at sample {position[0]} " in message
    assert "probabilities in [0, 1]" in message
    # Values a data layer read get no advice about the layer computing them.
    assert "SoftmaxLayer" not in message


def test_logistic_loss_checks_only_picked_probability(net):
    # Sample 0 has label 0, so its class 2 never enters the loss.
    net.blobs["prob"][0, 2] = -3.0
    net.forward_layer("loss_plain")
    assert math.isfinite(net.states["loss_plain"][0])


def test_logistic_loss_nan_probability_gives_nan(net):
    net.blobs["prob"][1, 2] = math.nan
    net.forward_layer("loss_plain")
    net.backward_layer("loss_plain")
    assert math.isnan(net.states["loss_plain"][0])
    assert math.isnan(net.diffs["prob"][1, 2])


def test_logistic_loss_label_shape_mismatch():
    layer = MultinomialLogisticLossLayer(name="loss1", bottoms=["prob", "label"])
    with pytest.raises(ShapeError, match=r"'loss1'.*'label'.*\(4, 2\).*\(4, 3\)"):
        layer.infer_shapes([(4, 3), (4, 2)])


# SoftmaxLayer followed by the logistic loss, beside SoftmaxLoss on a copy of
# the same logits: [0, ln 3] with label 1.
def softmax_pair_layers():
    return [
        SoftmaxLayer(name="softmax", bottoms=["logits"], tops=["probabilities"]),
        MultinomialLogisticLossLayer(
            name="logistic", bottoms=["probabilities", "label"]
        ),
        SoftmaxLossLayer(name="softmax_loss", bottoms=["logits_copy", "label"]),
    ]


def softmax_pair_net(opt_level):
    logits = np.array([[0.0, math.log(3.0)]])
    data = MemoryDataLayer(
        name="data",
        batch_size=1,
        tops=["logits", "logits_copy", "label"],
        data=[logits, logits.copy(), np.array([[1.0]])],
    )
    backend = CPUBackend(dtype=np.float64, seed=0, threads=2)
    net = Net(
        f"softmax-logistic-O{opt_level}",
        backend,
        [data, *softmax_pair_layers()],
        force_backward=True,
        opt_level=opt_level,
        keep=["probabilities"],
    )
    net.forward()
    net.backward()
    return net


@pytest.fixture(scope="module", params=[0, 1])
def softmax_pair(request):
    return softmax_pair_net(request.param)


def test_softmax_then_logistic_probabilities(softmax_pair):
    np.testing.assert_allclose(
        softmax_pair.blobs["probabilities"], [[0.25, 0.75]], atol=1e-12
    )


def test_softmax_then_logistic_loss(softmax_pair):
    loss = softmax_pair.states["logistic"][0]
    assert loss == pytest.approx(-math.log(0.75), abs=1e-12)
    assert loss == pytest.approx(0.28768, abs=1e-5)
    assert loss == pytest.approx(softmax_pair.states["softmax_loss"][0], abs=1e-12)


def test_softmax_then_logistic_gradient(softmax_pair):
    np.testing.assert_allclose(
        softmax_pair.diffs["logits"], [[0.25, -0.25]], atol=1e-12
    )
    np.testing.assert_allclose(
        softmax_pair.diffs["logits"], softmax_pair.diffs["logits_copy"], atol=1e-12
    )
