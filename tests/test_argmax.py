"""ArgmaxLayer: indices against np.argmax along Mocha's dims, ties, no backward."""

import numpy as np
import pytest
from gradcheck import build_net

from mochac import ConfigError, MemoryDataLayer, ShapeError, SquareLossLayer
from mochac.ir import build_ir
from mochac.layers.argmax import ArgmaxLayer

RNG = np.random.default_rng(61)

INPUTS = {
    "scores": RNG.normal(size=(4, 5)),
    "maps": RNG.normal(size=(2, 3, 2, 2)),
    "rows": RNG.normal(size=(2, 3, 4)),
    "ties": np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]),
}
LAYERS = [
    ArgmaxLayer(name="classes", bottoms=["scores", "maps"], tops=["c1", "c2"]),
    ArgmaxLayer(name="last", bottoms=["rows"], tops=["r"], dim=1),
    ArgmaxLayer(name="tied", bottoms=["ties"], tops=["t"]),
]


@pytest.fixture(scope="module")
def net():
    return build_net("argmax", LAYERS, INPUTS)


@pytest.mark.parametrize(
    ("name", "bottom", "top", "axis"),
    [
        ("classes", "scores", "c1", 1),
        ("classes", "maps", "c2", 1),
        ("last", "rows", "r", 2),
    ],
)
def test_argmax_forward(net, name, bottom, top, axis):
    net.forward_layer(name)
    expected = np.argmax(INPUTS[bottom], axis=axis)
    expected = np.expand_dims(expected, axis).astype(np.float64)
    assert net.blobs[top].shape == expected.shape
    np.testing.assert_array_equal(net.blobs[top], expected)


def test_argmax_ties_pick_first(net):
    net.forward_layer("tied")
    np.testing.assert_array_equal(net.blobs["t"], [[1.0], [0.0]])


def test_argmax_has_no_backward(net):
    for name in ("classes", "last", "tied"):
        assert not net.ir.layer(name).in_backward
    assert "scores" not in net.diffs


def test_argmax_blocks_gradient():
    x = RNG.normal(size=(3, 4))
    data = MemoryDataLayer(name="data", batch_size=3, data=[x, np.zeros((3, 1))])
    layers = [
        data,
        ArgmaxLayer(name="am", bottoms=["data"], tops=["predicted"]),
        SquareLossLayer(name="loss", bottoms=["predicted", "label"]),
    ]
    ir = build_ir("argmax-loss", layers, {0: [(3, 4), (3, 1)]})
    assert not ir.layer("am").in_backward
    assert not ir.blobs["predicted"].needs_diff


def test_argmax_dim_out_of_range():
    data = MemoryDataLayer(
        name="data", batch_size=2, data=[np.zeros((2, 3))], tops=["x"]
    )
    layer = ArgmaxLayer(name="am1", bottoms=["x"], tops=["y"], dim=3)
    with pytest.raises(ShapeError, match=r"'am1'.*dim=3 is out of range"):
        build_ir("argmax-net", [data, layer], {0: [(2, 3)]})


def test_argmax_invalid_dim():
    with pytest.raises(ConfigError, match=r"'am1'.*invalid dim="):
        ArgmaxLayer(name="am1", bottoms=["x"], tops=["y"], dim=1.0)
