"""HingeLossLayer, BinaryCrossEntropyLossLayer and GaussianKLLossLayer: losses
against references, gradients, log of zero and invalid labels or sigmas."""

import math
import re

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, DataError, ShapeError
from mochac.layers.elementwise_loss import (
    BinaryCrossEntropyLossLayer,
    GaussianKLLossLayer,
    HingeLossLayer,
)

RNG = np.random.default_rng(47)
LOG_ZERO = -math.log(1e-20)


def random_signs(shape):
    return RNG.choice([-1.0, 1.0], size=shape)


INPUTS = {
    "score": RNG.normal(size=(4, 3)),
    "sign": random_signs((4, 3)),
    "score_image": RNG.normal(size=(2, 2, 3)),
    "sign_flat": random_signs((2, 6)),
    "prob": RNG.uniform(0.1, 0.9, size=(4, 5)),
    # Soft targets inside (0, 1), so that the label's gradient check stays
    # inside the valid range.
    "target": RNG.uniform(0.2, 0.8, size=(4, 5)),
    "prob_bits": RNG.uniform(0.1, 0.9, size=(3, 2)),
    "bits": RNG.integers(0, 2, size=(3, 2)).astype(np.float64),
    # p = 0 and 1 under labels that agree (loss 0) and disagree (clamped).
    "prob_edge": np.array([[0.0, 1.0, 0.0, 1.0]]),
    "target_edge": np.array([[0.0, 1.0, 1.0, 0.0]]),
    "mu": RNG.normal(size=(3, 4)),
    "sigma": RNG.uniform(0.5, 2.0, size=(3, 4)),
}
LAYERS = [
    HingeLossLayer(name="hinge", bottoms=["score", "sign"]),
    HingeLossLayer(name="hinge_image", bottoms=["score_image", "sign_flat"], weight=2),
    BinaryCrossEntropyLossLayer(name="bce", bottoms=["prob", "target"], weight=0.5),
    BinaryCrossEntropyLossLayer(name="bce_bits", bottoms=["prob_bits", "bits"]),
    BinaryCrossEntropyLossLayer(name="bce_edge", bottoms=["prob_edge", "target_edge"]),
    GaussianKLLossLayer(name="kl", bottoms=["mu", "sigma"], weight=0.25),
]


def reference_hinge(pred, label, weight):
    total = sum(max(1 - y * p, 0.0) for p, y in zip(pred.flat, label.flat))
    return weight * total / len(pred)


def reference_bce(pred, label, weight):
    total = 0.0
    for p, y in zip(pred.flat, label.flat):
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return weight * total / len(pred)


def reference_kl(mu, sigma, weight):
    total = sum(
        m * m + s * s - 2 * math.log(s) - 1 for m, s in zip(mu.flat, sigma.flat)
    )
    return weight * 0.5 * total / len(mu)


REFERENCES = {
    "hinge": reference_hinge,
    "hinge_image": reference_hinge,
    "bce": reference_bce,
    "bce_bits": reference_bce,
    "kl": reference_kl,
}
GRADIENT_TARGETS = {
    "hinge": ["score"],
    "hinge_image": ["score_image"],
    "bce": ["prob", "target"],
    "kl": ["mu", "sigma"],
}


@pytest.fixture(scope="module")
def shared_net():
    return build_net("elementwise-losses", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", list(REFERENCES))
def test_elementwise_loss_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    first, second = (net.blobs[blob] for blob in layer.bottoms)
    expected = REFERENCES[name](first, second, layer.weight)
    assert net.states[name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", list(GRADIENT_TARGETS))
def test_elementwise_loss_gradients(net, name):
    assert check_gradients(net, name) == GRADIENT_TARGETS[name]


def test_hinge_label_takes_no_gradient(net):
    assert "sign" not in net.diffs
    assert "score" in net.diffs


def test_hinge_gradient_zero_beyond_margin(net):
    net.blobs["score"][...] = 2 * net.blobs["sign"]
    net.forward_layer("hinge")
    net.backward_layer("hinge")
    assert net.states["hinge"][0] == 0.0
    assert np.all(net.diffs["score"] == 0)


def test_bce_log_of_zero_is_finite(net):
    net.forward_layer("bce_edge")
    net.backward_layer("bce_edge")
    # Two elements agree with their label and cost 0; two cost -log(1e-20).
    assert net.states["bce_edge"][0] == pytest.approx(2 * LOG_ZERO, rel=1e-12)
    assert np.all(np.isfinite(net.diffs["prob_edge"]))
    assert np.all(np.isfinite(net.diffs["target_edge"]))
    assert net.diffs["prob_edge"][0, 0] == pytest.approx(1.0, rel=1e-12)
    assert net.diffs["prob_edge"][0, 2] == pytest.approx(-1e20, rel=1e-12)


def test_kl_zero_at_standard_normal(net):
    net.blobs["mu"][...] = 0
    net.blobs["sigma"][...] = 1
    net.forward_layer("kl")
    net.backward_layer("kl")
    assert net.states["kl"][0] == 0.0
    assert np.all(net.diffs["mu"] == 0)
    assert np.all(net.diffs["sigma"] == 0)


def check_data_error(net, layer, message_parts, caught_error):
    message = str(caught_error.value)
    assert f"'{layer}'" in message
    for part in message_parts:
        assert re.search(part, message), f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    ("value", "shown"), [(0.0, r"0\.0"), (2.0, r"2\.0"), (math.nan, "nan")]
)
def test_hinge_label_not_sign(net, value, shown):
    net.blobs["sign"][2, 1] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("hinge")
    parts = ["label blob 'sign'", rf"contains {shown}\b", "at sample 2 ", "-1 or 1"]
    check_data_error(net, "hinge", parts, caught)


@pytest.mark.parametrize(("value", "shown"), [(1.5, r"1\.5"), (-0.5, r"-0\.5")])
def test_bce_label_out_of_range(net, value, shown):
    net.blobs["target"][3, 0] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("bce")
    parts = [
        "label blob 'target'",
        rf"contains {shown}\b",
        "at sample 3 ",
        r"in \[0, 1\]",
    ]
    check_data_error(net, "bce", parts, caught)


@pytest.mark.parametrize(
    ("value", "shown"), [(1.5, r"1\.5"), (-0.5, r"-0\.5"), (-math.inf, "-inf")]
)
def test_bce_prediction_out_of_range(net, value, shown):
    net.blobs["prob"][2, 4] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("bce")
    parts = [
        "prediction blob 'prob'",
        rf"contains {shown}\b",
        "at sample 2 ",
        r"predictions must be in \[0, 1\]",
        "data row 2 of data layer 'data-prob'",
    ]
    check_data_error(net, "bce", parts, caught)
    # Values a data layer read get no advice about the layer computing them.
    assert "Sigmoid" not in str(caught.value)


def test_bce_nan_prediction_gives_nan(net):
    net.blobs["prob"][1, 3] = math.nan
    net.forward_layer("bce")
    net.backward_layer("bce")
    assert math.isnan(net.states["bce"][0])
    assert math.isnan(net.diffs["prob"][1, 3])
    assert math.isnan(net.diffs["target"][1, 3])


@pytest.mark.parametrize(("value", "shown"), [(0.0, r"0\.0"), (-0.5, r"-0\.5")])
def test_kl_sigma_not_positive(net, value, shown):
    net.blobs["sigma"][1, 3] = value
    with pytest.raises(DataError) as caught:
        net.forward_layer("kl")
    parts = ["standard deviation blob 'sigma'", rf"contains {shown}\b", "at sample 1 "]
    check_data_error(net, "kl", parts, caught)


@pytest.mark.parametrize(
    "layer_class", [HingeLossLayer, BinaryCrossEntropyLossLayer, GaussianKLLossLayer]
)
def test_elementwise_loss_size_mismatch(layer_class):
    layer = layer_class(name="loss1", bottoms=["a", "b"])
    with pytest.raises(ShapeError, match=r"'loss1'.*\(2, 3\).*\(2, 4\)"):
        layer.infer_shapes([(2, 3), (2, 4)])


@pytest.mark.parametrize(
    "layer_class", [HingeLossLayer, BinaryCrossEntropyLossLayer, GaussianKLLossLayer]
)
@pytest.mark.parametrize("weight", [-1.0, math.inf, "1"])
def test_elementwise_loss_invalid_weight(layer_class, weight):
    with pytest.raises(ConfigError, match=r"'loss1'.*invalid weight="):
        layer_class(name="loss1", bottoms=["a", "b"], weight=weight)
