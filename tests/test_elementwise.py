"""ElementWiseLayer: the four operations against NumPy, gradients, config checks,
and -O1 against -O0 for a net whose in-place layers the passes fuse."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved
from test_passes import assert_same, run

from mochac import (
    ConfigError,
    InnerProductLayer,
    MemoryDataLayer,
    ShapeError,
    SquareLossLayer,
)
from mochac.ir import build_ir
from mochac.layers.dropout import DropoutLayer
from mochac.layers.elementwise import ElementWiseFunctors, ElementWiseLayer
from mochac.layers.power import PowerLayer

RNG = np.random.default_rng(31)
SHAPE = (2, 3, 2)

# Divisors stay in [0.5, 2] so the quotient rule is well conditioned.
INPUTS = {
    "add_a": RNG.normal(size=SHAPE),
    "add_b": RNG.normal(size=SHAPE),
    "add_c": RNG.normal(size=SHAPE),
    "sub_a": RNG.normal(size=SHAPE),
    "sub_b": RNG.normal(size=SHAPE),
    "mul_a": RNG.normal(size=SHAPE),
    "mul_b": RNG.normal(size=SHAPE),
    "mul_c": RNG.normal(size=SHAPE),
    "div_a": RNG.normal(size=SHAPE),
    "div_b": RNG.uniform(0.5, 2.0, size=SHAPE),
}
LAYERS = [
    ElementWiseLayer(
        name="add",
        bottoms=["add_a", "add_b", "add_c"],
        tops=["sum"],
        operation=ElementWiseFunctors.Add(),
    ),
    ElementWiseLayer(
        name="subtract",
        bottoms=["sub_a", "sub_b"],
        tops=["difference"],
        operation=ElementWiseFunctors.Subtract(),
    ),
    ElementWiseLayer(
        name="multiply",
        bottoms=["mul_a", "mul_b", "mul_c"],
        tops=["product"],
        operation=ElementWiseFunctors.Multiply(),
    ),
    ElementWiseLayer(
        name="divide",
        bottoms=["div_a", "div_b"],
        tops=["quotient"],
        operation=ElementWiseFunctors.Divide(),
    ),
]
REFERENCES = {
    "add": lambda a, b, c: a + b + c,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b, c: a * b * c,
    "divide": lambda a, b: a / b,
}


@pytest.fixture(scope="module")
def shared_net():
    return build_net("elementwise", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.mark.parametrize("name", REFERENCES)
def test_elementwise_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    expected = REFERENCES[name](*(net.blobs[bottom] for bottom in layer.bottoms))
    np.testing.assert_allclose(net.blobs[layer.tops[0]], expected, rtol=1e-14)


@pytest.mark.parametrize("name", REFERENCES)
def test_elementwise_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_elementwise_default_is_add():
    layer = ElementWiseLayer(bottoms=["a", "b"], tops=["y"])
    assert isinstance(layer.operation, ElementWiseFunctors.Add)


def test_elementwise_reads_bottoms_only_for_products():
    def reads(operation):
        layer = ElementWiseLayer(bottoms=["a", "b"], tops=["y"], operation=operation)
        return layer.backward_reads_bottom_data()

    assert not reads(ElementWiseFunctors.Add())
    assert not reads(ElementWiseFunctors.Subtract())
    assert reads(ElementWiseFunctors.Multiply())
    assert reads(ElementWiseFunctors.Divide())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"operation": "add"}, "operation"),
        (
            {"operation": ElementWiseFunctors.Subtract(), "bottoms": ["a", "b", "c"]},
            "bottoms",
        ),
        (
            {"operation": ElementWiseFunctors.Divide(), "bottoms": ["a", "b", "c"]},
            "bottoms",
        ),
        ({"bottoms": ["a"]}, "bottoms"),
        ({"tops": ["y", "z"]}, "tops"),
    ],
)
def test_elementwise_invalid_field(fields, field):
    fields = {"bottoms": ["a", "b"], "tops": ["y"], **fields}
    with pytest.raises(ConfigError, match=rf"'ew1'.*invalid {field}="):
        ElementWiseLayer(name="ew1", **fields)


def test_elementwise_shapes_differ():
    data = MemoryDataLayer(
        name="data",
        batch_size=2,
        tops=["a", "b"],
        data=[np.zeros((2, 3)), np.zeros((2, 4))],
    )
    layer = ElementWiseLayer(name="ew1", bottoms=["a", "b"], tops=["y"])
    with pytest.raises(ShapeError, match=r"'ew1'.*'a' is \(2, 3\).*'b' is \(2, 4\)"):
        build_ir("ew-net", [data, layer], {0: [(2, 3), (2, 4)]})


def inplace_layers(rng):
    """In-place candidates, each after an inner product, between data and a loss."""
    x = rng.normal(size=(4, 5))
    other = rng.normal(size=(4, 6))
    target = rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(
            name="data", batch_size=4, data=[x, other, target], tops=["x", "o", "t"]
        ),
        InnerProductLayer(name="ip1", output_dim=6, bottoms=["x"], tops=["h1"]),
        PowerLayer(name="linear", bottoms=["h1"], tops=["h2"], scale=0.5, shift=0.1),
        InnerProductLayer(name="ip2", output_dim=6, bottoms=["h2"], tops=["h3"]),
        InnerProductLayer(name="ip-o", output_dim=6, bottoms=["o"], tops=["o-copy"]),
        ElementWiseLayer(name="add", bottoms=["h3", "o-copy"], tops=["h4"]),
        InnerProductLayer(name="ip3", output_dim=6, bottoms=["h4"], tops=["h5"]),
        DropoutLayer(name="drop", bottoms=["h5"], tops=["h6"], ratio=0.3),
        InnerProductLayer(name="ip4", output_dim=6, bottoms=["h6"], tops=["h7"]),
        ElementWiseLayer(
            name="subtract",
            bottoms=["h7", "o"],
            tops=["h8"],
            operation=ElementWiseFunctors.Subtract(),
        ),
        PowerLayer(name="square", bottoms=["h8"], tops=["h9"], power=2, scale=0.3),
        InnerProductLayer(name="ip5", output_dim=3, bottoms=["h9"], tops=["y"]),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]


def test_inplace_net_matches_O0():
    reference = run(inplace_layers, 0, (), steps=4)
    optimized = run(inplace_layers, 1, (), steps=4)
    fused = [
        change
        for report in optimized[0].pass_reports
        if report.name == "fuse_inplace"
        for change in report.changes
    ]
    for name in ("linear", "add", "drop", "subtract"):
        assert any(f"'{name}'" in change for change in fused), name
    assert not any("'square'" in change for change in fused)
    assert_same(reference, optimized)
