"""DropoutLayer and RandomMaskLayer: masks in training, copies in test nets,
gradients through a fixed mask, thread-independent streams, config checks."""

import numpy as np
import pytest
from gradcheck import numeric_gradient

from mochac import ConfigError, CPUBackend, MemoryDataLayer, Net
from mochac.layers.dropout import DropoutLayer, RandomMaskLayer

RNG = np.random.default_rng(41)
ONES = np.ones((1000, 1))
SMALL = {
    "m_first": RNG.normal(size=(2, 3, 2)),
    "m_second": RNG.normal(size=(4, 5)),
    "u": RNG.normal(size=(3, 4)),
}


def build(
    name, layers, inputs, phase, *, threads=2, seed=0, opt_level=0, dtype=np.float64
):
    """Compile ``layers`` behind one MemoryDataLayer per input, in ``phase``."""
    feeds = [
        MemoryDataLayer(
            name=f"data-{blob}", batch_size=len(array), data=[array], tops=[blob]
        )
        for blob, array in inputs.items()
    ]
    backend = CPUBackend(dtype=dtype, seed=seed, threads=threads)
    net = Net(
        name,
        backend,
        feeds + list(layers),
        force_backward=True,
        phase=phase,
        opt_level=opt_level,
    )
    net.load_batch()
    return net


def ones_layers():
    return [DropoutLayer(name="drop", bottoms=["x"], tops=["y"], ratio=0.5)]


def small_layers():
    return [
        RandomMaskLayer(
            name="mask",
            bottoms=["m_first", "m_second"],
            tops=["c_first", "c_second"],
            ratio=0.4,
        ),
        DropoutLayer(
            name="unscaled", bottoms=["u"], tops=["u_out"], ratio=0.3, auto_scale=False
        ),
    ]


@pytest.fixture(scope="module")
def train_net():
    return build("dropout-train", ones_layers(), {"x": ONES}, "train")


@pytest.fixture(scope="module")
def inference_net():
    return build("dropout-test", ones_layers(), {"x": ONES}, "test")


@pytest.fixture(scope="module")
def small_net():
    return build("masks-train", small_layers(), SMALL, "train")


def test_dropout_train_output(train_net):
    train_net.forward_layer("drop")
    y = train_net.blobs["y"]
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert abs(y.mean() - 1.0) <= 0.1


def test_dropout_train_output_float32():
    net = build(
        "dropout-float32", ones_layers(), {"x": ONES}, "train", dtype=np.float32
    )
    net.forward_layer("drop")
    y = net.blobs["y"]
    assert y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert abs(y.mean() - 1.0) <= 0.1


def test_dropout_backward_uses_mask(train_net):
    train_net.forward_layer("drop")
    kept = train_net.blobs["y"] != 0
    train_net.diffs["y"][...] = 1.0
    train_net.backward_layer("drop")
    np.testing.assert_array_equal(train_net.diffs["x"], np.where(kept, 2.0, 0.0))


def test_dropout_new_mask_each_call(train_net):
    train_net.forward_layer("drop")
    first = train_net.blobs["y"].copy()
    train_net.forward_layer("drop")
    assert np.mean(first != train_net.blobs["y"]) > 0.3


def test_dropout_test_phase_copies(inference_net):
    inference_net.forward_layer("drop")
    np.testing.assert_array_equal(inference_net.blobs["y"], ONES)
    inference_net.diffs["y"][...] = RNG.normal(size=ONES.shape)
    inference_net.backward_layer("drop")
    np.testing.assert_array_equal(inference_net.diffs["x"], inference_net.diffs["y"])


def test_dropout_test_phase_aliases():
    """In a test net the masks copy, so the passes make their tops aliases
    and every blob stays readable, with the values of -O0."""
    inputs = {"x": RNG.normal(size=(4, 3))}
    layers = [
        DropoutLayer(name="drop", bottoms=["h"], tops=["y"]),
        RandomMaskLayer(name="mask", bottoms=["x"], tops=["h"]),
    ]
    net = build("dropout-test-O1", layers, inputs, "test", opt_level=1)
    reference = build("dropout-test-O0", layers, inputs, "test", opt_level=0)
    aliased = next(r for r in net.pass_reports if r.name == "eliminate_identity")
    assert sorted(aliased.changes) == [
        "DropoutLayer 'drop': 'y' aliases 'h'",
        "RandomMaskLayer 'mask': 'h' aliases 'x'",
    ]
    assert not net.kernels
    assert not net.rng_states
    top_diff = RNG.normal(size=(4, 3))
    for compiled in (net, reference):
        compiled.forward(load_data=False)
        compiled.diffs["y"][...] = top_diff
        compiled.backward()
    for name in ("x", "h", "y"):
        np.testing.assert_array_equal(net.blobs[name], inputs["x"])
        np.testing.assert_array_equal(net.diffs[name], reference.diffs[name])


def test_dropout_stream_ignores_threads():
    other = build("dropout-train", ones_layers(), {"x": ONES}, "train", threads=1)
    fresh = build("dropout-train", ones_layers(), {"x": ONES}, "train", threads=3)
    other.forward_layer("drop")
    fresh.forward_layer("drop")
    np.testing.assert_array_equal(other.blobs["y"], fresh.blobs["y"])


def test_dropout_stream_state_repeats_mask(train_net):
    state = train_net.rng_states["drop.stream"]
    saved = state.copy()
    train_net.forward_layer("drop")
    first = train_net.blobs["y"].copy()
    assert state[0] != saved[0]
    state[...] = saved
    train_net.forward_layer("drop")
    np.testing.assert_array_equal(train_net.blobs["y"], first)


def test_random_mask_does_not_scale(small_net):
    small_net.forward_layer("mask")
    for bottom, top in (("m_first", "c_first"), ("m_second", "c_second")):
        x, y = small_net.blobs[bottom], small_net.blobs[top]
        kept = y != 0
        np.testing.assert_array_equal(y[kept], x[kept])
        assert 0 < kept.sum() < x.size


def test_dropout_auto_scale_off(small_net):
    small_net.forward_layer("unscaled")
    x, y = small_net.blobs["u"], small_net.blobs["u_out"]
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])
    assert 0 < kept.sum() < x.size


@pytest.mark.parametrize("name", ["mask", "unscaled"])
def test_masking_gradients(small_net, name):
    """Central differences with the stream reset before each forward pass,
    so that every evaluation draws the same mask."""
    layer = small_net.get_layer(name)
    state = small_net.rng_states[f"{name}.stream"]
    saved = state.copy()
    weights = {top: RNG.normal(size=small_net.blobs[top].shape) for top in layer.tops}

    def objective():
        state[...] = saved
        small_net.forward_layer(name)
        return sum(float(np.sum(small_net.blobs[t] * weights[t])) for t in layer.tops)

    objective()
    for top in layer.tops:
        small_net.diffs[top][...] = weights[top]
    for bottom in layer.bottoms:
        small_net.diffs[bottom][...] = np.nan
    small_net.backward_layer(name)
    for bottom in layer.bottoms:
        analytic = small_net.diffs[bottom].copy()
        numeric = numeric_gradient(objective, small_net.blobs[bottom])
        assert np.any(numeric != 0)
        np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-8)


def test_dropout_default_ratio():
    layer = DropoutLayer(bottoms=["x"], tops=["y"])
    assert layer.ratio == 0.5
    assert layer.auto_scale is True
    assert layer.scale == 2.0


@pytest.mark.parametrize("layer_class", [DropoutLayer, RandomMaskLayer])
def test_masking_needs_tops(layer_class):
    with pytest.raises(ConfigError, match=r"'m1'.*invalid tops=\[\].*new top name"):
        layer_class(name="m1", bottoms=["x"])


@pytest.mark.parametrize("layer_class", [DropoutLayer, RandomMaskLayer])
def test_masking_top_reuses_bottom(layer_class):
    with pytest.raises(ConfigError, match=r"'m1'.*invalid tops=\['x'\].*x is both"):
        layer_class(name="m1", bottoms=["x"], tops=["x"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("ratio", 0.0), ("ratio", 1.0), ("ratio", 1.5), ("ratio", "half")],
)
def test_masking_invalid_ratio(field, value):
    with pytest.raises(ConfigError, match=rf"'m1'.*invalid {field}="):
        RandomMaskLayer(name="m1", bottoms=["x"], tops=["y"], **{field: value})


def test_dropout_invalid_fields():
    with pytest.raises(ConfigError, match=r"'d1'.*invalid auto_scale="):
        DropoutLayer(name="d1", bottoms=["x"], tops=["y"], auto_scale=1)
    with pytest.raises(ConfigError, match=r"'d1'.*invalid bottoms="):
        DropoutLayer(name="d1", bottoms=["x", "z"], tops=["y", "w"])


@pytest.mark.parametrize("field", ["bottoms", "tops"])
def test_masking_blob_names_not_a_list(field):
    blobs = {"bottoms": ["x"], "tops": ["y"], field: 2}
    with pytest.raises(ConfigError, match=rf"'drop': invalid {field}=2"):
        DropoutLayer(name="drop", **blobs)
