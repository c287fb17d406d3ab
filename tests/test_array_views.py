"""A net's params, grads, blobs and diffs are its own arrays: replacing one
raises ConfigError instead of leaving the compiled code on the old array."""

import math

import numpy as np
import pytest

import mochac
from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net, SoftmaxLossLayer


def make_net():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    y = rng.integers(0, 4, size=(8, 1)).astype(np.float64)
    data = MemoryDataLayer(name="data", batch_size=4, data=[x, y])
    ip = InnerProductLayer(name="ip", output_dim=4, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    return Net("views", CPUBackend(dtype=np.float64, seed=1), [data, ip, loss])


@pytest.mark.parametrize(
    ("replace", "label", "advice"),
    [
        (
            lambda net: net.params["ip"].__setitem__("weight", 0),
            "net.params['ip']",
            "net.params['ip']['weight'][...] = new_values",
        ),
        (
            lambda net: net.params.__setitem__("ip", {}),
            "net.params",
            "net.params['ip']['weight'][...] = new_values",
        ),
        (
            lambda net: net.grads["ip"].__setitem__("bias", 0),
            "net.grads['ip']",
            "net.grads['ip']['bias'][...] = new_values",
        ),
        (
            lambda net: net.blobs.__setitem__("data", 0),
            "net.blobs",
            "net.blobs['data'][...] = new_values",
        ),
        (
            # plan_memory shares the diffs' memory, so none has a view.
            lambda net: net.diffs.__setitem__("ip", 0),
            "net.diffs",
            "has no entry 'ip'",
        ),
        (
            lambda net: net.params["ip"].pop("weight"),
            "net.params['ip']",
            "net.params['ip']['weight'][...] = new_values",
        ),
        (
            lambda net: net.params["ip"].update(weight=0),
            "net.params['ip']",
            "net.params['ip']['weight'][...] = new_values",
        ),
        (lambda net: net.blobs.clear(), "net.blobs", "entries cannot be removed"),
        (
            lambda net: net.blobs.setdefault("zz", 1),
            "net.blobs",
            "has no entry 'zz'",
        ),
    ],
)
def test_replacing_array_raises(replace, label, advice):
    net = make_net()
    with pytest.raises(mochac.ConfigError) as error:
        replace(net)
    message = str(error.value)
    assert message.startswith(f"{label} is read-only")
    assert advice in message


def test_deleting_blob_raises():
    net = make_net()
    with pytest.raises(mochac.ConfigError, match="net.blobs"):
        del net.blobs["data"]
    assert "data" in net.blobs


def test_in_place_write_reaches_code():
    net = make_net()
    net.params["ip"]["weight"][...] = 0.0
    net.params["ip"]["bias"][...] = 0.0
    # Zero weights and bias give equal scores for the 4 classes.
    assert net.forward() == pytest.approx(math.log(4), rel=1e-12)


def test_augmented_assignment_scales_once():
    # Python runs ``views[key] *= 0.5`` as an in-place multiply, then stores
    # the same array back.
    net = make_net()
    weight = net.params["ip"]["weight"]
    before = weight.copy()
    net.params["ip"]["weight"] *= 0.5
    assert net.params["ip"]["weight"] is weight
    np.testing.assert_array_equal(weight, before * 0.5)


def test_missing_names_still_explained():
    net = make_net()
    with pytest.raises(KeyError, match="no blob named 'nothing'"):
        net.blobs["nothing"]


def test_backward_before_forward_raises():
    net = make_net()
    with pytest.raises(mochac.ConfigError, match="call forward\\(\\) first"):
        net.backward()
    net.forward()
    net.backward()
    assert np.abs(net.grads["ip"]["weight"]).max() > 0


def test_backward_after_failed_forward_raises():
    net = make_net()
    net.forward()
    net.data_source("data").arrays[1][...] = 7.0  # labels outside 0..3
    with pytest.raises(mochac.DataError):
        net.forward()
    with pytest.raises(mochac.ConfigError, match="call forward\\(\\) first"):
        net.backward()
