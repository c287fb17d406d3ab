"""Index2OnehotLayer: one-hot output, rejected indices, shapes and config checks."""

import numpy as np
import pytest
from gradcheck import build_net

from mochac import ConfigError, DataError, MemoryDataLayer, ShapeError
from mochac.ir import build_ir
from mochac.layers.index2onehot import Index2OnehotLayer

CLASSES = 4
INPUTS = {
    "labels": np.array([[0.0], [3.0], [1.0]]),
    "maps": np.array([[[[2.0, 0.0], [1.0, 3.0]]], [[[3.0, 3.0], [0.0, 1.0]]]]),
    # dim=1 in Mocha's order is the last NumPy axis.
    "rows": np.array([[[2.0], [1.0]], [[0.0], [3.0]]]),
}
LAYERS = [
    Index2OnehotLayer(
        name="onehot",
        bottoms=["labels", "maps"],
        tops=["labels_onehot", "maps_onehot"],
        n_class=CLASSES,
    ),
    Index2OnehotLayer(
        name="onehot_last",
        bottoms=["rows"],
        tops=["rows_onehot"],
        dim=1,
        n_class=CLASSES,
    ),
]


def reference_onehot(x, axis, classes):
    """Return x with ``axis`` (size 1) replaced by one-hot vectors of ``classes``."""
    out = np.zeros(x.shape[:axis] + (classes,) + x.shape[axis + 1 :])
    for index in np.ndindex(*x.shape):
        target = list(index)
        target[axis] = int(x[index])
        out[tuple(target)] = 1.0
    return out


@pytest.fixture(scope="module")
def net():
    return build_net("onehot", LAYERS, INPUTS)


@pytest.mark.parametrize(
    ("layer_name", "bottom", "top", "axis"),
    [
        ("onehot", "labels", "labels_onehot", 1),
        ("onehot", "maps", "maps_onehot", 1),
        ("onehot_last", "rows", "rows_onehot", 2),
    ],
)
def test_onehot_forward(net, layer_name, bottom, top, axis):
    net.load_batch()
    net.forward_layer(layer_name)
    expected = reference_onehot(INPUTS[bottom], axis, CLASSES)
    assert net.blobs[top].shape == expected.shape
    np.testing.assert_array_equal(net.blobs[top], expected)


@pytest.mark.parametrize(
    ("bottom", "position", "value", "sample"),
    [
        ("labels", (2, 0), 4.0, 2),
        ("labels", (0, 0), -1.0, 0),
        ("maps", (1, 0, 1, 0), 1.5, 1),
    ],
)
def test_onehot_rejects_index(net, bottom, position, value, sample):
    net.load_batch()
    net.blobs[bottom][position] = value
    expected = (
        rf"'onehot': class index blob '{bottom}' contains {value!r} at sample {sample}"
        r".*integers in 0\.\.3"
    )
    with pytest.raises(DataError, match=expected):
        net.forward_layer("onehot")


def test_onehot_has_no_backward(net):
    assert not net.ir.layer("onehot").in_backward
    assert "labels_onehot" not in net.diffs


def test_onehot_dim_size_must_be_one():
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["x"], data=[np.zeros((2, 3))]
    )
    layer = Index2OnehotLayer(name="onehot1", bottoms=["x"], tops=["y"], n_class=3)
    with pytest.raises(ShapeError, match=r"'onehot1'.*'x' has shape \(2, 3\), size 3"):
        build_ir("onehot-net", [data, layer], {0: [(2, 3)]})


def test_onehot_default_dim():
    layer = Index2OnehotLayer(bottoms=["x"], tops=["y"], n_class=5)
    assert layer.dim == -2
    assert layer.infer_shapes([(2, 1, 3)]) == [(2, 5, 3)]


@pytest.mark.parametrize(
    ("field", "value"), [("n_class", 0), ("n_class", 2.0), ("dim", "channels")]
)
def test_onehot_invalid_field(field, value):
    fields = {"n_class": 3, field: value}
    with pytest.raises(ConfigError, match=rf"'onehot1'.*invalid {field}="):
        Index2OnehotLayer(name="onehot1", bottoms=["x"], tops=["y"], **fields)
