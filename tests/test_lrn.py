"""LRNLayer: forward against a loop reference, gradients, shapes and config checks."""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients, preserved

from mochac import ConfigError, CPUBackend, MemoryDataLayer, Net, ShapeError
from mochac.ir import build_ir
from mochac.layers.normalization import LRNLayer, LRNMode

RNG = np.random.default_rng(11)

INPUTS = {
    "x_across": RNG.normal(size=(2, 6, 2, 3)),
    "x_flat": RNG.normal(size=(3, 4)),
    "x_within": RNG.normal(size=(2, 2, 5, 4)),
}
LAYERS = [
    LRNLayer(name="lrn_default", bottoms=["x_across"], tops=["y_default"]),
    LRNLayer(
        name="lrn_across",
        bottoms=["x_flat"],
        tops=["y_flat"],
        kernel=2,
        scale=2.0,
        shift=1.5,
        power=0.6,
    ),
    LRNLayer(
        name="lrn_within",
        bottoms=["x_within"],
        tops=["y_within"],
        kernel=3,
        scale=3.0,
        shift=2.0,
        power=1.25,
        mode=LRNMode.WithinChannel(),
    ),
    LRNLayer(
        name="lrn_within_even",
        bottoms=["x_within"],
        tops=["y_within_even"],
        kernel=2,
        scale=0.5,
        mode=LRNMode.WithinChannel(),
    ),
    # Powers 0.75 (the default, above), 0.5 and 1 are computed without pow().
    LRNLayer(
        name="lrn_half", bottoms=["x_across"], tops=["y_half"], kernel=3, power=0.5
    ),
    LRNLayer(
        name="lrn_one",
        bottoms=["x_within"],
        tops=["y_one"],
        kernel=3,
        scale=2.0,
        power=1.0,
        mode=LRNMode.WithinChannel(),
    ),
]
LAYER_NAMES = [layer.name for layer in LAYERS]


def reference_lrn(x, layer):
    """Return Mocha's LRN of ``x`` element by element, with explicit zero padding."""
    before = (layer.kernel - 1) // 2
    after = layer.kernel - 1 - before
    within = isinstance(layer.mode, LRNMode.WithinChannel)
    size = layer.kernel**2 if within else layer.kernel
    blob = x.reshape(x.shape[0], x.shape[1], -1) if not within else x
    out = np.zeros_like(blob)
    for index in np.ndindex(*blob.shape):
        total = 0.0
        if within:
            n, c, h, w = index
            for hh in range(h - before, h + after + 1):
                for ww in range(w - before, w + after + 1):
                    if 0 <= hh < blob.shape[2] and 0 <= ww < blob.shape[3]:
                        total += blob[n, c, hh, ww] ** 2
        else:
            n, c, i = index
            for cc in range(c - before, c + after + 1):
                if 0 <= cc < blob.shape[1]:
                    total += blob[n, cc, i] ** 2
        denominator = layer.shift + layer.scale / size * total
        out[index] = blob[index] / denominator**layer.power
    return out.reshape(x.shape)


@pytest.fixture(scope="module")
def shared_net():
    return build_net("lrn", LAYERS, INPUTS)


@pytest.fixture
def net(shared_net):
    with preserved(shared_net):
        yield shared_net


@pytest.fixture(scope="module")
def float32_net():
    return build_net("lrn-float32", LAYERS, INPUTS, dtype=np.float32)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_lrn_forward(net, name):
    layer = net.get_layer(name)
    net.forward_layer(name)
    expected = reference_lrn(net.blobs[layer.bottoms[0]], layer)
    np.testing.assert_allclose(net.blobs[layer.tops[0]], expected, rtol=1e-12)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_lrn_forward_float32(float32_net, name):
    layer = float32_net.get_layer(name)
    float32_net.forward_layer(name)
    top = float32_net.blobs[layer.tops[0]]
    assert top.dtype == np.float32
    expected = reference_lrn(float32_net.blobs[layer.bottoms[0]].astype(float), layer)
    np.testing.assert_allclose(top, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_lrn_gradients(net, name):
    layer = net.get_layer(name)
    assert check_gradients(net, name) == list(layer.bottoms)


def test_lrn_backward_accumulates():
    # Two LRN layers share one input through a split that the passes
    # eliminate, so the second backward adds into the first one's diff.
    x = RNG.normal(size=(2, 3, 2, 2))
    layers = [
        LRNLayer(name="lrn_a", bottoms=["x"], tops=["ya"], kernel=3),
        LRNLayer(name="lrn_b", bottoms=["x"], tops=["yb"], kernel=3, scale=2.0),
    ]
    feed = MemoryDataLayer(name="data", batch_size=2, data=[x], tops=["x"])
    nets = {}
    for level in (0, 1):
        backend = CPUBackend(dtype=np.float64, seed=0, threads=2)
        nets[level] = Net(
            f"lrn-acc-O{level}",
            backend,
            [feed, *layers],
            force_backward=True,
            opt_level=level,
            keep=["ya", "yb"],
        )
    assert any(any(info.accumulate) for info in nets[1].ir.layers)
    diffs = {}
    for level, net in nets.items():
        net.forward()
        net.diffs["ya"][...] = 1.0
        net.diffs["yb"][...] = 2.0
        net.backward()
        diffs[level] = net.diffs["x"].copy()
    assert not np.allclose(diffs[1], 0)
    np.testing.assert_allclose(diffs[1], diffs[0], rtol=1e-12)


def test_lrn_default_fields():
    layer = LRNLayer(bottoms=["x"], tops=["y"])
    assert layer.kernel == 5
    assert layer.scale == 1
    assert layer.shift == 1
    assert layer.power == 0.75
    assert isinstance(layer.mode, LRNMode.AcrossChannel)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kernel", 0),
        ("kernel", 2.0),
        ("scale", float("nan")),
        ("shift", "1"),
        ("power", float("inf")),
        ("mode", "across"),
    ],
)
def test_lrn_invalid_field(field, value):
    with pytest.raises(ConfigError, match=rf"'norm1'.*invalid {field}="):
        LRNLayer(name="norm1", bottoms=["x"], tops=["y"], **{field: value})


def test_lrn_one_bottom_only():
    with pytest.raises(ConfigError, match=r"'norm1'.*invalid bottoms="):
        LRNLayer(name="norm1", bottoms=["a", "b"], tops=["ya", "yb"])


def test_lrn_within_channel_needs_4d():
    data = MemoryDataLayer(
        name="data", batch_size=2, tops=["x"], data=[np.zeros((2, 6))]
    )
    layer = LRNLayer(
        name="norm1", bottoms=["x"], tops=["y"], mode=LRNMode.WithinChannel()
    )
    with pytest.raises(ShapeError, match=r"'norm1'.*4-D.*\(2, 6\)"):
        build_ir("lrn-net", [data, layer], {0: [(2, 6)]})


def test_lrn_forward_only_net():
    # Without backward the layer keeps neither d nor d**(-p).
    x = RNG.normal(size=(2, 3, 4, 4))
    layer = LRNLayer(
        name="lrn", bottoms=["x"], tops=["y"], kernel=3, mode=LRNMode.WithinChannel()
    )
    feed = MemoryDataLayer(name="data", batch_size=2, data=[x], tops=["x"])
    net = Net("lrn-forward", CPUBackend(dtype=np.float64, seed=0), [feed, layer])
    assert not net.ir.layer("lrn").in_backward
    assert net.slots.find("work", "lrn", "denominator") is None
    net.forward()
    np.testing.assert_allclose(net.blobs["y"], reference_lrn(x, layer), rtol=1e-12)


def test_lrn_power_times_scale_overflow_rejected():
    with pytest.raises(ConfigError, match=r"'norm'.*product with power"):
        LRNLayer(name="norm", power=1e300, scale=1e300, bottoms=["x"], tops=["y"])
