"""PowerLayer: forward against NumPy, gradients for several powers, config checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError
from mochac.layers.power import PowerLayer

RNG = np.random.default_rng(21)

# shift + scale * x stays between 0.65 and 2.3 for the powers that need a
# positive base.
INPUTS = {
    "x_square": RNG.normal(size=(2, 3, 2)),
    "x_root": RNG.uniform(0.5, 2.0, size=(3, 4)),
    "x_inverse": RNG.uniform(0.5, 2.0, size=(2, 5)),
    "x_linear": RNG.normal(size=(2, 3)),
    "x_cube": RNG.normal(size=(2, 2, 2, 2)),
    "x_first": RNG.uniform(0.5, 2.0, size=(2, 3)),
    "x_second": RNG.uniform(0.5, 2.0, size=(3, 1, 2)),
}
LAYERS = [
    PowerLayer(name="square", bottoms=["x_square"], tops=["y_square"], power=2),
    PowerLayer(
        name="root",
        bottoms=["x_root"],
        tops=["y_root"],
        power=0.5,
        scale=0.9,
        shift=0.4,
    ),
    PowerLayer(
        name="inverse",
        bottoms=["x_inverse"],
        tops=["y_inverse"],
        power=-1.5,
        scale=1.1,
        shift=0.1,
    ),
    PowerLayer(
        name="linear", bottoms=["x_linear"], tops=["y_linear"], scale=-2.0, shift=3.0
    ),
    PowerLayer(
        name="cube", bottoms=["x_cube"], tops=["y_cube"], power=3, scale=0.5, shift=-0.2
    ),
    PowerLayer(
        name="two",
        bottoms=["x_first", "x_second"],
        tops=["y_first", "y_second"],
        power=2.5,
        scale=0.7,
        shift=0.3,
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def reference_power(x, power, scale, shift):
    return (shift + scale * x) ** power


@pytest.fixture(scope="module")
def shared_net():
    return build_net("power", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("power-float32", LAYERS, INPUTS, dtype=np.float32)


def check_forward(net, name, tolerance):
    layer = net.get_layer(name)
    net.forward_layer(name)
    for bottom, top in zip(layer.bottoms, layer.tops):
        expected = reference_power(
            net.blobs[bottom].astype(np.float64), layer.power, layer.scale, layer.shift
        )
        np.testing.assert_allclose(
            net.blobs[top], expected, rtol=tolerance, atol=tolerance
        )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_power_forward(net, name):
    check_forward(net, name, tolerance=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_power_forward_float32(float32_net, name):
    assert float32_net.blobs["y_root"].dtype == np.float32
    check_forward(float32_net, name, tolerance=1e-5)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_power_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_power_zero_gives_ones_and_zero_gradient():
    x = RNG.normal(size=(2, 3))
    layer = PowerLayer(name="zero", bottoms=["x"], tops=["y"], power=0)
    net = build_net("power-zero", [layer], {"x": x})
    net.forward_layer("zero")
    np.testing.assert_array_equal(net.blobs["y"], np.ones((2, 3)))
    net.diffs["y"][...] = 1.0
    net.backward_layer("zero")
    np.testing.assert_array_equal(net.diffs["x"], np.zeros((2, 3)))


def test_power_defaults_are_identity():
    layer = PowerLayer(bottoms=["x"], tops=["y"])
    assert (layer.power, layer.scale, layer.shift) == (1.0, 1.0, 0.0)


def test_power_backward_reads_bottom():
    assert PowerLayer(bottoms=["x"], tops=["y"], power=2).backward_reads_bottom_data()
    assert not PowerLayer(bottoms=["x"], tops=["y"]).backward_reads_bottom_data()


@pytest.mark.parametrize(
    ("field", "value"),
    [("power", "2"), ("scale", float("inf")), ("shift", float("nan")), ("power", True)],
)
def test_power_invalid_field(field, value):
    with pytest.raises(ConfigError, match=rf"'pow1'.*invalid {field}="):
        PowerLayer(name="pow1", bottoms=["x"], tops=["y"], **{field: value})


def test_power_times_scale_overflow_rejected():
    with pytest.raises(ConfigError, match=r"'pow'.*overflows to infinity"):
        PowerLayer(name="pow", power=1e200, scale=1e200, bottoms=["x"], tops=["y"])
