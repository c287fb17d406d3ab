"""Runtime checks on misuse and damaged files: destroyed nets, changed data
files, restored data-layer states, output paths and compiled extensions."""

import numpy as np
import pytest

from mochac import (
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    MochacError,
    Net,
    SoftmaxLossLayer,
)

RNG = np.random.default_rng(3)
X = RNG.random((8, 1, 3, 3)).astype(np.float32)
Y = RNG.integers(0, 3, (8, 1)).astype(np.float32)


def small_net(data_layer=None):
    """Return data -> ip (3 outputs) -> softmax loss, on ``data_layer`` or X, Y."""
    if data_layer is None:
        data_layer = MemoryDataLayer(name="d", batch_size=4, data=[X, Y])
    layers = [
        data_layer,
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    return Net("small", CPUBackend(threads=1, seed=0), layers)


# --- destroyed nets -------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda net: net.objective(),
        lambda net: net.forward_layer("ip"),
        lambda net: net.backward_layer("ip"),
    ],
    ids=["objective", "forward_layer", "backward_layer"],
)
def test_destroyed_net_rejects_calls(call):
    net = small_net()
    net.forward()
    net.destroy()
    with pytest.raises(MochacError, match="net 'small' was destroyed; build a new"):
        call(net)
