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
    ("replace", "label"),
    [
        (lambda net: net.params["ip"].__setitem__("weight", 0), "net.params['ip']"),
        (lambda net: net.params.__setitem__("ip", {}), "net.params"),
        (lambda net: net.grads["ip"].__setitem__("bias", 0), "net.grads['ip']"),
        (lambda net: net.blobs.__setitem__("data", 0), "net.blobs"),
        (lambda net: net.diffs.__setitem__("ip", 0), "net.diffs"),
        (lambda net: net.params["ip"].pop("weight"), "net.params['ip']"),
        (lambda net: net.params["ip"].update(weight=0), "net.params['ip']"),
        (lambda net: net.blobs.clear(), "net.blobs"),
    ],
)
def test_replacing_array_raises(replace, label):
    net = make_net()
    with pytest.raises(mochac.ConfigError) as error:
        replace(net)
    message = str(error.value)
    assert message.startswith(label)
    assert "[...] = new_values" in message


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
