"""Topology checks of the IR: unknown bottoms, duplicate tops, cycles, order."""

import numpy as np
import pytest

from mochac import (
    AccuracyLayer,
    ConfigError,
    CPUBackend,
    IdentityLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SoftmaxLossLayer,
    TopologyError,
)
from mochac.ir import build_ir

DATA = MemoryDataLayer(
    name="data", batch_size=2, data=[np.zeros((2, 4)), np.zeros((2, 1))]
)
SHAPES = {0: [(2, 4), (2, 1)]}


def ip(name, bottom, top):
    return InnerProductLayer(name=name, bottoms=[bottom], tops=[top], output_dim=3)


def test_unknown_bottom():
    layers = [DATA, ip("ip1", "dta", "h")]
    with pytest.raises(TopologyError) as caught:
        build_ir("net", layers, SHAPES)
    message = str(caught.value)
    assert "'ip1'" in message
    assert "'dta'" in message
    assert "known blobs: data, h, label" in message


def test_duplicate_top():
    layers = [DATA, ip("ip1", "data", "h"), ip("ip2", "data", "h")]
    with pytest.raises(TopologyError) as caught:
        build_ir("net", layers, SHAPES)
    message = str(caught.value)
    assert "'h'" in message
    assert "'ip1'" in message
    assert "'ip2'" in message


def test_top_shadows_data_blob():
    layers = [DATA, ip("ip1", "data", "label")]
    with pytest.raises(TopologyError, match=r"'label'.*'data'.*'ip1'"):
        build_ir("net", layers, SHAPES)


def test_cycle():
    layers = [
        DATA,
        IdentityLayer(name="first", bottoms=["b"], tops=["a"]),
        IdentityLayer(name="second", bottoms=["a"], tops=["b"]),
    ]
    with pytest.raises(TopologyError) as caught:
        build_ir("net", layers, SHAPES)
    message = str(caught.value)
    assert "cycle" in message
    assert "first" in message
    assert "second" in message


def test_self_loop():
    layers = [DATA, IdentityLayer(name="loop", bottoms=["a"], tops=["a"])]
    with pytest.raises(TopologyError, match=r"loop.*cycle"):
        build_ir("net", layers, SHAPES)


def test_duplicate_layer_name():
    layers = [DATA, ip("ip1", "data", "h"), ip("ip1", "h", "out")]
    with pytest.raises(TopologyError, match=r"layers 1 and 2 are both named 'ip1'"):
        build_ir("net", layers, SHAPES)


def test_bottom_listed_twice():
    layers = [DATA, SoftmaxLossLayer(name="loss", bottoms=["data", "data"])]
    with pytest.raises(TopologyError, match=r"'loss' lists bottom 'data' twice"):
        build_ir("net", layers, SHAPES)


def test_unnamed_layer_with_parameters():
    layers = [DATA, InnerProductLayer(bottoms=["data"], tops=["h"], output_dim=2)]
    with pytest.raises(ConfigError, match=r"InnerProductLayer at position 1.*name"):
        build_ir("net", layers, SHAPES)


def test_item_not_a_layer():
    with pytest.raises(ConfigError, match=r"item 1 of the layer list is a dict"):
        build_ir("net", [DATA, {"name": "ip1"}], SHAPES)


@pytest.mark.parametrize("build", ["build_ir", "Net"])
def test_item_is_layer_class(build):
    """A layer class in the list reached the data layer setup and raised
    NotImplementedError there."""
    layers = [MemoryDataLayer]
    with pytest.raises(ConfigError, match=r"item 0 .* class MemoryDataLayer, not a"):
        if build == "Net":
            Net("net", CPUBackend(), layers)
        else:
            build_ir("net", layers, SHAPES)


@pytest.mark.parametrize("field", ["bottoms", "tops"])
@pytest.mark.parametrize("value", [None, 5])
def test_blob_list_not_iterable(field, value):
    """bottoms=None raised TypeError from tuple()."""
    fields = {"bottoms": ["data"], "tops": ["h"], field: value}
    with pytest.raises(ConfigError, match=rf"'ip': invalid {field}={value!r}"):
        InnerProductLayer(name="ip", output_dim=2, **fields)


def test_order_follows_data_flow():
    # Listed in reverse: the sort must still put producers first.
    layers = [
        SoftmaxLossLayer(name="loss", bottoms=["h2", "label"]),
        ip("ip2", "h1", "h2"),
        ip("ip1", "data", "h1"),
        DATA,
    ]
    ir = build_ir("net", layers, {3: SHAPES[0]})
    assert [ir.layers[index].name for index in ir.forward_order] == [
        "data",
        "ip1",
        "ip2",
        "loss",
    ]
    assert [ir.layers[index].name for index in ir.backward_order] == [
        "loss",
        "ip2",
        "ip1",
    ]


def test_ties_keep_definition_order():
    layers = [DATA, ip("ip_b", "data", "b"), ip("ip_a", "data", "a")]
    ir = build_ir("net", layers, SHAPES)
    assert [ir.layers[index].name for index in ir.forward_order] == [
        "data",
        "ip_b",
        "ip_a",
    ]


def test_statistics_consumer_needs_no_split():
    # Only the loss back-propagates into h, so h needs no SplitLayer.
    layers = [
        DATA,
        ip("ip1", "data", "h"),
        SoftmaxLossLayer(name="loss", bottoms=["h", "label"]),
        AccuracyLayer(name="accuracy", bottoms=["h", "label"]),
    ]
    ir = build_ir("net", layers, SHAPES)
    assert ir.blobs["h"].needs_diff
    assert ir.layer("loss").propagate_down == [True, False]
    assert ir.layer("accuracy").propagate_down == [False, False]
    assert not ir.layer("accuracy").in_backward


def test_no_diff_without_loss():
    layers = [DATA, ip("ip1", "data", "h")]
    ir = build_ir("net", layers, SHAPES)
    assert not ir.blobs["h"].needs_diff
    assert ir.backward_order == []


def test_force_backward_gives_diffs():
    layers = [DATA, ip("ip1", "data", "h")]
    ir = build_ir("net", layers, SHAPES, force_backward=True)
    assert ir.blobs["data"].needs_diff
    assert ir.blobs["h"].needs_diff
    assert ir.layer("ip1").propagate_down == [True]
    assert [ir.layers[index].name for index in ir.backward_order] == ["ip1"]
