"""ConcatLayer: forward against np.concatenate, gradients, Mocha's dim, shape checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, MemoryDataLayer, ShapeError
from mochac.ir import build_ir
from mochac.layers.concat import ConcatLayer

RNG = np.random.default_rng(51)

INPUTS = {
    "c_first": RNG.normal(size=(2, 2, 3, 2)),
    "c_second": RNG.normal(size=(2, 3, 3, 2)),
    "w_first": RNG.normal(size=(2, 2, 3, 1)),
    "w_second": RNG.normal(size=(2, 2, 3, 2)),
    "w_third": RNG.normal(size=(2, 2, 3, 3)),
    "n_first": RNG.normal(size=(1, 4)),
    "n_second": RNG.normal(size=(3, 4)),
    "h_first": RNG.normal(size=(2, 2, 1, 3)),
    "h_second": RNG.normal(size=(2, 2, 2, 3)),
    "f_first": RNG.normal(size=(3, 2)),
    "f_second": RNG.normal(size=(3, 5)),
}
# Mocha counts dimensions from the fastest-varying one: for (N, C, H, W) its
# dim 3 is C, dim 1 is W and dim 4 (or -1) is N.
LAYERS = [
    ConcatLayer(name="channels", bottoms=["c_first", "c_second"], tops=["c"]),
    ConcatLayer(
        name="width", bottoms=["w_first", "w_second", "w_third"], tops=["w"], dim=1
    ),
    ConcatLayer(name="batch", bottoms=["n_first", "n_second"], tops=["n"], dim=-1),
    ConcatLayer(name="height", bottoms=["h_first", "h_second"], tops=["h"], dim=2),
    # dim=-2 is the axis after the batch axis at any rank: here the features.
    ConcatLayer(name="features", bottoms=["f_first", "f_second"], tops=["f"], dim=-2),
]
AXES = {"channels": 1, "width": 3, "batch": 0, "height": 2, "features": 1}


@pytest.fixture(scope="module")
def shared_net():
    return build_net("concat", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", AXES)
def test_concat_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    expected = np.concatenate(
        [net.blobs[bottom] for bottom in layer.bottoms], axis=AXES[name]
    )
    np.testing.assert_array_equal(net.blobs[layer.tops[0]], expected)


@pytest.mark.parametrize("name", AXES)
def test_concat_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_concat_backward_splits_diff(net):
    net.diffs["c"][...] = RNG.normal(size=net.diffs["c"].shape)
    net.backward_layer("channels")
    np.testing.assert_array_equal(net.diffs["c_first"], net.diffs["c"][:, :2])
    np.testing.assert_array_equal(net.diffs["c_second"], net.diffs["c"][:, 2:])


def test_concat_default_dim_is_channels():
    assert ConcatLayer(bottoms=["a"], tops=["y"]).dim == 3


def build_concat(shapes, dim=3):
    data = MemoryDataLayer(
        name="data",
        batch_size=shapes[0][0],
        tops=["a", "b"],
        data=[np.zeros(shape) for shape in shapes],
    )
    layer = ConcatLayer(name="cat1", bottoms=["a", "b"], tops=["y"], dim=dim)
    return build_ir("concat-net", [data, layer], {0: shapes})


def test_concat_shapes_differ_elsewhere():
    with pytest.raises(ShapeError, match=r"'cat1'.*'b' has shape \(2, 3, 4, 5\)"):
        build_concat([(2, 3, 4, 4), (2, 3, 4, 5)])


def test_concat_dim_out_of_range():
    with pytest.raises(ShapeError, match=r"'cat1'.*dim=3 is out of range"):
        build_concat([(2, 3), (2, 4)])


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"dim": "C"}, "dim"), ({"dim": True}, "dim"), ({"tops": ["y", "z"]}, "tops")],
)
def test_concat_invalid_field(fields, field):
    fields = {"bottoms": ["a", "b"], "tops": ["y"], **fields}
    with pytest.raises(ConfigError, match=rf"'cat1'.*invalid {field}="):
        ConcatLayer(name="cat1", **fields)
