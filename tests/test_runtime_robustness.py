"""Runtime checks on misuse and damaged files: destroyed nets, changed data
files, restored data-layer states, output paths and compiled extensions."""

import json
import logging
import os

import h5py
import numpy as np
import pytest

from mochac import (
    SGD,
    CPUBackend,
    DataError,
    HDF5DataLayer,
    InnerProductLayer,
    MemoryDataLayer,
    MochacError,
    Net,
    Snapshot,
    SnapshotError,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.layers.data import AsyncHDF5DataLayer
from mochac.runtime.data_sources import make_source
from mochac.runtime.snapshot import load_snapshot, save_snapshot

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
        lambda net: net.load_batch(),
        lambda net: net.statistics(),
        lambda net: net.reset_statistics(),
        lambda net: save_snapshot("unused.h5", net),
        lambda net: load_snapshot(net, "unused.h5"),
        lambda net: net.data_source("d"),
        lambda net: net.blobs["ip"],
        lambda net: net.diffs["ip"],
        lambda net: net.grads["ip"],
    ],
    ids=[
        "objective",
        "forward_layer",
        "backward_layer",
        "load_batch",
        "statistics",
        "reset_statistics",
        "save_snapshot",
        "load_snapshot",
        "data_source",
        "blobs",
        "diffs",
        "grads",
    ],
)
def test_destroyed_net_rejects_calls(call):
    net = small_net()
    net.forward()
    net.destroy()
    with pytest.raises(MochacError, match="net 'small' was destroyed; build a new"):
        call(net)


def test_destroyed_net_solve_no_warning(caplog):
    net = small_net()
    net.destroy()
    method = SGD()
    solver = Solver(method, make_solver_parameters(method, max_iter=2))
    with pytest.raises(MochacError, match="net 'small' was destroyed; build a new"):
        solver.solve(net)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert warnings == []


def test_destroyed_net_keeps_params():
    net = small_net()
    weight = net.params["ip"]["weight"].copy()
    net.destroy()
    assert np.array_equal(net.params["ip"]["weight"], weight)


# --- HDF5 data files ------------------------------------------------------------

DATA_LAYERS = [HDF5DataLayer, AsyncHDF5DataLayer]


def write_data(path, n=10, channels=1, data_dtype=np.float32):
    """Write n samples of shape (channels, 3, 3) with labels in 0..2 to ``path``."""
    rng = np.random.default_rng(n)
    with h5py.File(path, "w") as handle:
        data = rng.random((n, channels, 3, 3)) * 10
        handle["data"] = data.astype(data_dtype)
        handle["label"] = rng.integers(0, 3, (n, 1)).astype(np.float32)


def write_list(folder, *names):
    """Write a source list naming ``names``; return its path."""
    listing = folder / "list.txt"
    listing.write_text("".join(f"{folder / name}\n" for name in names))
    return listing


@pytest.mark.parametrize("layer_class", DATA_LAYERS)
def test_list_entry_folder_rejected(tmp_path, layer_class):
    (tmp_path / "shards").mkdir()
    layer = layer_class(
        name="h", source=str(write_list(tmp_path, "shards")), batch_size=2
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert f"'h': {tmp_path / 'shards'}, listed in" in message
    assert "is a folder; list the HDF5 files in it" in message
    assert "\n" not in message


@pytest.mark.parametrize("layer_class", DATA_LAYERS)
def test_list_entry_not_hdf5_one_line(tmp_path, layer_class):
    (tmp_path / "notes.h5").write_text("not HDF5")
    layer = layer_class(
        name="h", source=str(write_list(tmp_path, "notes.h5")), batch_size=2
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert "notes.h5, listed in" in message
    assert "as HDF5: " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("channels", "data_dtype", "found"),
    [
        (2, np.float32, "shape (10, 2, 3, 3) and dtype float32"),
        (1, np.int32, "shape (10, 1, 3, 3) and dtype int32"),
    ],
    ids=["shape", "dtype"],
)
def test_async_file_changed_before_read(tmp_path, channels, data_dtype, found):
    write_data(tmp_path / "d.h5")
    layer = AsyncHDF5DataLayer(
        name="h", source=str(write_list(tmp_path, "d.h5")), batch_size=4, chunk_size=2
    )
    net = small_net(layer)
    write_data(tmp_path / "d.h5", channels=channels, data_dtype=data_dtype)
    try:
        with pytest.raises(DataError) as raised:
            net.forward()
    finally:
        net.destroy()
    message = str(raised.value)
    assert "'h': " in message
    assert "d.h5 changed after the net was built on it" in message
    assert f"'data' now has {found}" in message
    assert "had shape (10, 1, 3, 3) and dtype float32" in message


def test_async_file_replaced_while_open(tmp_path):
    write_data(tmp_path / "d.h5")
    layer = AsyncHDF5DataLayer(
        name="h", source=str(write_list(tmp_path, "d.h5")), batch_size=4, chunk_size=2
    )
    net = small_net(layer)
    net.forward()
    write_data(tmp_path / "new.h5", channels=2)
    os.replace(tmp_path / "new.h5", tmp_path / "d.h5")
    # The thread has read a few batches ahead from the old file; the next
    # chunk it reads comes from the new one.
    try:
        with pytest.raises(DataError, match="d.h5 changed after the net was built"):
            for _ in range(6):
                net.forward()
    finally:
        net.destroy()


def test_async_file_rewritten_same_shape(tmp_path):
    write_data(tmp_path / "d.h5")
    layer = AsyncHDF5DataLayer(
        name="h", source=str(write_list(tmp_path, "d.h5")), batch_size=4, chunk_size=2
    )
    source = make_source(layer, np.float32, np.random.default_rng(0))
    write_data(tmp_path / "d.h5", n=10)
    outputs = [np.zeros((4, 1, 3, 3), np.float32), np.zeros((4, 1), np.float32)]
    try:
        assert source.next_batch(outputs) == 4
    finally:
        source.close()
    with h5py.File(tmp_path / "d.h5", "r") as handle:
        np.testing.assert_array_equal(outputs[0], handle["data"][:4])


# --- restored data-layer states -------------------------------------------------


def open_shuffled(tmp_path, layer_class):
    write_data(tmp_path / "d.h5")
    layer = layer_class(
        name="h",
        source=str(write_list(tmp_path, "d.h5")),
        batch_size=4,
        shuffle=True,
    )
    return make_source(layer, np.float32, np.random.default_rng(0))


def next_rows(source):
    outputs = [np.zeros((4, 1, 3, 3), np.float32), np.zeros((4, 1), np.float32)]
    source.next_batch(outputs)
    return outputs[0].copy()


BAD_STATES = [
    pytest.param("position", 10, "position 10 is not a sample index (0..9)", id="past"),
    pytest.param("position", -1, "position -1 is not a sample index", id="negative"),
    pytest.param("position", 2.5, "position is 2.5, not a whole number", id="fraction"),
    pytest.param("epoch", -1, "epoch -1 is negative", id="epoch"),
    pytest.param(
        "order", [0, 1, 2], "the sample order lists 3 samples, but", id="short"
    ),
    pytest.param("order", [[0] * 10], "has shape (1, 10), not 1-D", id="2d"),
    pytest.param(
        "order", [*range(9), 99], "is not a permutation of the sample", id="range"
    ),
    pytest.param("order", [-1] * 10, "is not a permutation of the sample", id="-1"),
    pytest.param("order", [0] * 10, "is not a permutation of the sample", id="dup"),
    pytest.param(
        "order", np.linspace(0, 9, 10), "has dtype float64; it must", id="float"
    ),
    pytest.param("rng", "x", "the generator state is not valid JSON", id="rng"),
    pytest.param(
        "rng",
        json.dumps({"bit_generator": "MT19937"}),
        "numpy rejects the generator state",
        id="rng-kind",
    ),
]


@pytest.mark.parametrize("layer_class", DATA_LAYERS)
@pytest.mark.parametrize(("key", "value", "problem"), BAD_STATES)
def test_bad_state_rejected_unchanged(tmp_path, layer_class, key, value, problem):
    source = open_shuffled(tmp_path, layer_class)
    try:
        next_rows(source)
        state = source.state_dict()
        expected = next_rows(source)
        source.load_state_dict(state)
        with pytest.raises(SnapshotError) as raised:
            source.load_state_dict({**state, key: value})
        message = str(raised.value)
        assert f"{layer_class.__name__} 'h': the saved data-layer state" in message
        assert "does not fit the current data of 10 samples" in message
        assert problem in message
        assert source.position == 4
        np.testing.assert_array_equal(next_rows(source), expected)
    finally:
        source.close()


@pytest.mark.parametrize("layer_class", DATA_LAYERS)
def test_resume_after_data_shrank(tmp_path, layer_class):
    listing = write_list(tmp_path, "d.h5")

    def train(max_iter):
        layer = layer_class(name="h", source=str(listing), batch_size=4)
        net = small_net(layer)
        method = SGD()
        params = make_solver_parameters(
            method, max_iter=max_iter, load_from=str(tmp_path / "snaps")
        )
        solver = Solver(method, params, progress=False)
        solver.add_coffee_break(Snapshot(str(tmp_path / "snaps")), every_n_iter=3)
        try:
            return solver.solve(net).iter
        finally:
            net.destroy()

    write_data(tmp_path / "d.h5", n=100)
    assert train(3) == 3
    write_data(tmp_path / "d.h5", n=10)
    with pytest.raises(SnapshotError) as raised:
        train(6)
    message = str(raised.value)
    assert f"{layer_class.__name__} 'h': the saved data-layer state" in message
    assert "current data of 10 samples: position 12 is not a sample index" in message
