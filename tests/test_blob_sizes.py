"""Blob and parameter sizes that the generated code cannot index, and net names."""

import numpy as np
import pytest

from mochac import (
    ConfigError,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    ShapeError,
    XavierInitializer,
)
from mochac.ir.graph import MAX_ELEMENTS, build_ir, check_size


def data_layer(x, y=None, batch_size=2):
    arrays = [x] if y is None else [x, y]
    tops = ["data"] if y is None else ["data", "label"]
    return MemoryDataLayer(name="d", batch_size=batch_size, tops=tops, data=arrays)


# --- blob sizes ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 0), (4, 0, 3, 3), (4, 3, 0, 2)])
def test_zero_sized_axis_rejected(shape):
    x = np.zeros(shape, np.float32)
    layers = [
        data_layer(x),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
    ]
    batch_shape = (2,) + shape[1:]
    pattern = rf"MemoryDataLayer 'd': top 'data' has shape \({batch_shape[0]}, .*size 0"
    with pytest.raises(ShapeError, match=pattern):
        build_ir("zero", layers, {0: [batch_shape]})
    with pytest.raises(ShapeError, match="size 0"):
        Net("zero", CPUBackend(threads=1), layers)


def test_xavier_zero_fan_in():
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match=r"shape \(3, 0\) has fan-in 0"):
        XavierInitializer().init((3, 0), rng, np.float32)


def test_top_above_int_range():
    x = np.ones((4, 36), np.float32)
    layers = [
        data_layer(x, batch_size=4),
        InnerProductLayer(name="ip", output_dim=10**12, bottoms=["data"], tops=["ip"]),
    ]
    with pytest.raises(
        ShapeError, match=r"InnerProductLayer 'ip': top 'ip' .*2147483647"
    ):
        Net("huge", CPUBackend(threads=1), layers)


def test_parameter_above_int_range():
    x = np.ones((1, 2**16), np.float32)
    layers = [
        data_layer(x, batch_size=1),
        InnerProductLayer(name="ip", output_dim=2**15, bottoms=["data"], tops=["ip"]),
    ]
    with pytest.raises(ShapeError, match=r"'ip': parameter 'weight' has shape"):
        build_ir("huge", layers, {0: [(1, 2**16)]})


def test_batch_above_int_range():
    x = np.ones((8, 1, 6, 6), np.float32)
    layers = [data_layer(x, batch_size=2**40)]
    with pytest.raises(ShapeError, match=r"MemoryDataLayer 'd': top 'data'.*elements"):
        Net("huge-batch", CPUBackend(threads=1), layers)


def test_size_bound_is_inclusive():
    layer = InnerProductLayer(name="ip", output_dim=1, bottoms=["a"], tops=["b"])
    check_size("ip", layer, "top 'b'", (1, MAX_ELEMENTS))
    with pytest.raises(ShapeError, match=f"{MAX_ELEMENTS + 1} elements"):
        check_size("ip", layer, "top 'b'", (1, MAX_ELEMENTS + 1))


# --- net arguments ------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", 5])
def test_net_name_must_be_string(name):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ConfigError, match="invalid net name"):
        Net(name, CPUBackend(threads=1), [data_layer(x)])
