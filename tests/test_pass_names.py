"""Pass names given to disable, and the Index2Onehot label message."""

import numpy as np
import pytest

from mochac import (
    ConfigError,
    CPUBackend,
    DataError,
    Index2OnehotLayer,
    MemoryDataLayer,
    Net,
)
from mochac.passes.pipeline import enabled_passes, pass_names


def data_layer(x, y=None, batch_size=2):
    arrays = [x] if y is None else [x, y]
    tops = ["data"] if y is None else ["data", "label"]
    return MemoryDataLayer(name="d", batch_size=batch_size, tops=tops, data=arrays)


# --- pass names ---------------------------------------------------------------


def test_disable_single_string():
    assert pass_names("plan_memory") == ("plan_memory",)
    assert "plan_memory" not in enabled_passes(1, "plan_memory")
    assert "fuse_inplace" in enabled_passes(1, "plan_memory")


def test_disable_split_into_letters():
    with pytest.raises(
        ConfigError, match=r"letters of 'plan_memory'.*\['plan_memory'\]"
    ):
        enabled_passes(1, tuple("plan_memory"))


def test_disable_unknown_name_suggests_pass():
    with pytest.raises(ConfigError) as raised:
        enabled_passes(1, ["plan_memroy", "nope"])
    message = str(raised.value)
    assert "disable lists unknown pass name(s)" in message
    assert "'plan_memroy' (did you mean 'plan_memory'?)" in message
    assert "'nope';" in message
    assert "known passes: eliminate_splits" in message


@pytest.mark.parametrize("disable", [5, [1, 2]])
def test_disable_not_names(disable):
    with pytest.raises(ConfigError, match="invalid disable="):
        pass_names(disable)


# --- Index2Onehot message -----------------------------------------------------


def test_onehot_message_plural():
    x = np.zeros((4, 1), np.float32)
    y = np.full((4, 1), 6.0, np.float32)
    net = Net(
        "onehot",
        CPUBackend(threads=1),
        [
            data_layer(x, y),
            Index2OnehotLayer(name="oh", n_class=3, bottoms=["label"], tops=["oh"]),
        ],
    )
    with pytest.raises(DataError, match="class indices must be integers in 0..2"):
        net.forward()


def test_net_disable_single_name():
    x = np.zeros((4, 1), np.float32)
    y = np.zeros((4, 1), np.float32)
    layers = [
        data_layer(x, y),
        Index2OnehotLayer(name="oh", n_class=3, bottoms=["label"], tops=["oh"]),
    ]
    net = Net("single", CPUBackend(threads=1), layers, disable="plan_memory")
    assert net.disable == ("plan_memory",)
