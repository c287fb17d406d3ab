"""Class weights of SoftmaxLossLayer and MultinomialLogisticLossLayer.

The three accepted shapes (one weight per class, per data-point element, per
prediction element) and the three normalizations, against NumPy references.
"""

import json
import math

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, ShapeError, SoftmaxLossLayer
from mochac.layers.loss import MultinomialLogisticLossLayer
from mochac.serialize import from_json, to_json

LN3 = math.log(3.0)
RNG = np.random.default_rng(31)

# Zero logits over 3 classes, one sample with label 2. Each layer gets its
# own logits, so that no split joins their diffs.
CASE_INPUTS = {
    "zeros_equal": np.zeros((1, 3)),
    "zeros_local": np.zeros((1, 3)),
    "zeros_no": np.zeros((1, 3)),
    "label2": np.array([[2.0]]),
}
CASE_LAYERS = [
    SoftmaxLossLayer(
        name="equal", bottoms=["zeros_equal", "label2"], weights=[1, 1, 1]
    ),
    SoftmaxLossLayer(
        name="local", bottoms=["zeros_local", "label2"], weights=[1, 2, 3]
    ),
    SoftmaxLossLayer(
        name="unnormalized",
        bottoms=["zeros_no", "label2"],
        weights=[1, 2, 3],
        normalize="no",
    ),
]

# Prediction (N=2, C=3, H=2): weights per class, per data point, per element.
SPATIAL_SHAPE = (2, 3, 2)
CLASS_WEIGHTS = np.array([0.5, 2.0, 1.0])
POINT_WEIGHTS = RNG.uniform(0.5, 2.0, size=SPATIAL_SHAPE[1:])
ELEMENT_WEIGHTS = RNG.uniform(0.5, 2.0, size=SPATIAL_SHAPE)
LOGITS = RNG.normal(size=SPATIAL_SHAPE)
PROBS = RNG.uniform(0.1, 1.0, size=SPATIAL_SHAPE)
LABELS = np.array([[[0.0, 2.0]], [[1.0, 2.0]]])
WEIGHTED = {
    (kind, normalize, family): {"weights": weights, "normalize": normalize}
    for kind, weights in [
        ("class", CLASS_WEIGHTS),
        ("point", POINT_WEIGHTS),
        ("element", ELEMENT_WEIGHTS),
    ]
    for normalize in ("local", "global", "no")
    for family in ("softmax", "logistic")
}


def weighted_layer(kind, normalize, family):
    """Return the layer of one case; each reads a prediction blob of its own."""
    name = f"{family}_{kind}_{normalize}"
    fields = WEIGHTED[(kind, normalize, family)]
    bottoms = [f"{name}_input", "labels"]
    if family == "softmax":
        return SoftmaxLossLayer(name=name, bottoms=bottoms, **fields)
    return MultinomialLogisticLossLayer(name=name, bottoms=bottoms, **fields)


SPATIAL_LAYERS = [weighted_layer(*key) for key in WEIGHTED]
SPATIAL_INPUTS = {
    layer.bottoms[0]: (LOGITS if layer.name.startswith("softmax") else PROBS)
    for layer in SPATIAL_LAYERS
}
SPATIAL_INPUTS["labels"] = LABELS


def reference_weights(weights, normalize, shape):
    """Return the weights broadcast to ``shape`` (class axis 1), normalized."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights.reshape(1, -1, *([1] * (len(shape) - 2)))
    table = np.broadcast_to(weights, shape).copy()
    if normalize == "local":
        table = table * shape[1] / table.sum(axis=1, keepdims=True)
    elif normalize == "global":
        for sample in table:
            sample *= sample.size / sample.sum()
    return table


def reference_loss(values, labels, table, family):
    """Return the mean over (n, h) of -w[n, g, h] * log(p[n, g, h])."""
    total = 0.0
    n_samples, _, height = values.shape
    for n in range(n_samples):
        for h in range(height):
            g = int(labels[n, 0, h])
            column = values[n, :, h]
            if family == "softmax":
                prob = np.exp(column[g]) / np.exp(column).sum()
            else:
                prob = column[g]
            total -= table[n, g, h] * math.log(prob)
    return total / (n_samples * height)


@pytest.fixture(scope="module")
def case_net():
    return build_net("class-weights-case", CASE_LAYERS, CASE_INPUTS)


@pytest.fixture(scope="module")
def shared_spatial_net():
    return build_net("class-weights-spatial", SPATIAL_LAYERS, SPATIAL_INPUTS)


@pytest.fixture
def spatial_net(shared_spatial_net):
    with preserved(shared_spatial_net):
        yield shared_spatial_net


def test_equal_weights_give_ln3(case_net):
    case_net.forward_layer("equal")
    assert case_net.states["equal"][0] == pytest.approx(LN3, abs=1e-6)
    assert case_net.states["equal"][0] == pytest.approx(1.098612, abs=1e-6)


def test_local_weights_loss_and_gradient(case_net):
    with preserved(case_net):
        case_net.forward_layer("local")
        case_net.backward_layer("local")
        # "local" rescales [1, 2, 3] to sum to 3 classes: [0.5, 1, 1.5]. Zero
        # logits give p = 1/3, so label 2 costs 1.5 ln 3, and the diff is
        # 1.5 (p - onehot) = [0.5, 0.5, -1].
        assert case_net.states["local"][0] == pytest.approx(1.5 * LN3, rel=1e-12)
        np.testing.assert_allclose(
            case_net.diffs["zeros_local"], [[0.5, 0.5, -1.0]], atol=1e-12
        )


def test_unnormalized_weights_loss(case_net):
    case_net.forward_layer("unnormalized")
    # Unnormalized, label 2 has weight 3 and p = 1/3.
    assert case_net.states["unnormalized"][0] == pytest.approx(3 * LN3, rel=1e-12)


@pytest.mark.parametrize("key", list(WEIGHTED), ids="-".join)
def test_weighted_loss_matches_reference(spatial_net, key):
    layer = weighted_layer(*key)
    _, normalize, family = key
    spatial_net.forward_layer(layer.name)
    table = reference_weights(WEIGHTED[key]["weights"], normalize, SPATIAL_SHAPE)
    values = spatial_net.blobs[layer.bottoms[0]]
    expected = reference_loss(values, LABELS, table, family)
    assert spatial_net.states[layer.name][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "name", ["softmax_point_local", "softmax_element_global", "logistic_point_no"]
)
def test_weighted_loss_gradients(spatial_net, name):
    layer = spatial_net.get_layer(name)
    assert check_gradients(spatial_net, name) == [layer.bottoms[0]]


def test_local_and_global_differ_for_point_weights(spatial_net):
    for name in ("softmax_point_local", "softmax_point_global"):
        spatial_net.forward_layer(name)
    local = spatial_net.states["softmax_point_local"][0]
    assert local != pytest.approx(spatial_net.states["softmax_point_global"][0])


def test_class_weights_wrong_length():
    layer = SoftmaxLossLayer(name="loss1", bottoms=["pred", "label"], weights=[1, 2])
    with pytest.raises(ShapeError, match=r"'loss1'.*weights have shape \(2,\)"):
        layer.infer_shapes([(4, 3), (4, 1)])


def test_class_weights_wrong_length_in_net():
    inputs = {"pred": np.zeros((4, 3)), "label": np.zeros((4, 1))}
    layers = [
        MultinomialLogisticLossLayer(
            name="loss1", bottoms=["pred", "label"], weights=[1, 2, 3, 4]
        )
    ]
    with pytest.raises(ShapeError, match=r"MultinomialLogisticLossLayer 'loss1'"):
        build_net("class-weights-wrong-length", layers, inputs)


def test_local_weights_zero_at_position():
    layer = SoftmaxLossLayer(
        name="loss1", bottoms=["pred", "label"], weights=np.zeros(3)
    )
    with pytest.raises(ShapeError, match=r"'loss1'.*sum to 0.*normalize='no'"):
        layer.infer_shapes([(4, 3), (4, 1)])


def test_global_weights_per_sample():
    # The two samples' element weights sum to 1 * 6 and 3 * 6. "global"
    # rescales each sample to sum to its 3 classes times 2 positions, so both
    # samples get all-1 weights and the loss of no weights. Each layer reads
    # logits of its own, so that no split joins their diffs.
    weights = np.stack([np.ones((3, 2)), 3 * np.ones((3, 2))])
    logits = RNG.normal(size=SPATIAL_SHAPE)
    layers = [
        SoftmaxLossLayer(
            name="global",
            bottoms=["logits_global", "labels"],
            weights=weights,
            normalize="global",
        ),
        SoftmaxLossLayer(name="plain", bottoms=["logits_plain", "labels"]),
    ]
    inputs = {"logits_global": logits, "logits_plain": logits, "labels": LABELS}
    net = build_net("class-weights-per-sample", layers, inputs)
    net.forward_layer("global")
    net.forward_layer("plain")
    expected = reference_loss(logits, LABELS, np.ones(SPATIAL_SHAPE), "softmax")
    assert net.states["plain"][0] == pytest.approx(expected, rel=1e-12)
    assert net.states["global"][0] == pytest.approx(expected, rel=1e-12)
    assert check_gradients(net, "global") == ["logits_global"]


def test_global_weights_zero_sample():
    weights = np.stack([np.ones((3, 2)), np.zeros((3, 2))])
    layer = SoftmaxLossLayer(
        name="loss1", bottoms=["pred", "label"], weights=weights, normalize="global"
    )
    with pytest.raises(ShapeError, match=r"'loss1'.*sum to 0 over some sample"):
        layer.infer_shapes([SPATIAL_SHAPE, (2, 1, 2)])


def test_class_weights_stored_as_tuples():
    layer = SoftmaxLossLayer(
        name="loss1", bottoms=["pred", "label"], weights=np.array([[1, 2], [3, 4]])
    )
    assert layer.weights == ((1.0, 2.0), (3.0, 4.0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalize", "sum"),
        ("normalize", None),
        ("weights", [1.0, -1.0]),
        ("weights", [1.0, math.inf]),
        ("weights", [[1.0], [1.0, 2.0]]),
        ("weights", "heavy"),
    ],
)
@pytest.mark.parametrize(
    "layer_class", [SoftmaxLossLayer, MultinomialLogisticLossLayer]
)
def test_class_weights_invalid_field(layer_class, field, value):
    with pytest.raises(ConfigError, match=rf"'loss1'.*invalid {field}="):
        layer_class(name="loss1", bottoms=["pred", "label"], **{field: value})


def test_class_weights_survive_json_round_trip():
    layer = SoftmaxLossLayer(
        name="loss1",
        bottoms=["pred", "label"],
        weights=np.array([[1.0, 2.0], [3.0, 4.5]]),
        normalize="global",
    )
    copy = from_json(json.loads(json.dumps(to_json(layer))))
    assert copy.weights == layer.weights
    assert copy.normalize == "global"
