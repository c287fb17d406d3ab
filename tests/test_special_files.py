"""Paths that are devices or named pipes: writers reject them instead of
replacing them with a regular file, and readers reject them instead of
waiting for a writer that never comes."""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest

from mochac import (
    CPUBackend,
    DataTransformers,
    HDF5DataLayer,
    HDF5OutputLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    save_snapshot,
)
from mochac.durable_files import special_file_kind
from mochac.errors import ConfigError, DataError, SnapshotError
from mochac.mocha_api import load_snapshot
from mochac.runtime.coffee_lounge import CoffeeLounge, read_statistics
from mochac.runtime.data_sources import make_source

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.h5"
    os.mkfifo(path)
    yield path
    # Each test also checks that the pipe is still a pipe.
    assert stat.S_ISFIFO(os.stat(path).st_mode)


def small_layers(extra=()):
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    data = MemoryDataLayer(name="data", tops=["data"], batch_size=2, data=[x])
    ip = InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"])
    return [data, ip, *extra]


def test_kind_of_paths(tmp_path, fifo):
    assert special_file_kind(fifo) == "a named pipe"
    assert special_file_kind(os.devnull) == "a character device"
    assert special_file_kind(tmp_path) is None
    assert special_file_kind(tmp_path / "missing.h5") is None
    regular = tmp_path / "regular.h5"
    regular.write_bytes(b"")
    assert special_file_kind(regular) is None


def test_snapshot_onto_pipe(fifo):
    net = Net("pipe-save", CPUBackend(dtype=np.float64), small_layers())
    with pytest.raises(SnapshotError, match="is a named pipe, not a regular file"):
        save_snapshot(fifo, net)
    net.destroy()


def test_snapshot_from_pipe(fifo):
    net = Net("pipe-load", CPUBackend(dtype=np.float64), small_layers())
    with pytest.raises(SnapshotError, match="is a named pipe, not a regular file"):
        load_snapshot(net, fifo)
    net.destroy()


def test_output_layer_onto_pipe(fifo):
    output = HDF5OutputLayer(
        name="out", filename=str(fifo), bottoms=["ip"], force_overwrite=True
    )
    with pytest.raises(ConfigError, match="is a named pipe, not a regular file"):
        Net("pipe-output", CPUBackend(dtype=np.float64), small_layers([output]))


def test_lounge_onto_pipe(fifo):
    with pytest.raises(ConfigError, match="is a named pipe, not a regular file"):
        CoffeeLounge(save_into=fifo)
    with pytest.raises(DataError, match="is a named pipe, not a regular file"):
        read_statistics(fifo)


def test_data_file_is_pipe(tmp_path, fifo):
    source_list = tmp_path / "list.txt"
    source_list.write_text(f"{fifo}\n")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)
    with pytest.raises(DataError, match="is a named pipe, not a regular file"):
        make_source(layer, np.float64, np.random.default_rng(0))


def test_mean_file_is_pipe(tmp_path, fifo):
    data_file = tmp_path / "data.h5"
    with h5py.File(data_file, "w") as handle:
        handle["data"] = np.zeros((4, 1, 2, 2))
        handle["label"] = np.zeros((4, 1))
    source_list = tmp_path / "list.txt"
    source_list.write_text(f"{data_file}\n")
    layer = HDF5DataLayer(
        name="data",
        source=str(source_list),
        batch_size=2,
        transformers=[("data", DataTransformers.SubMean(mean_file=str(fifo)))],
    )
    with pytest.raises(DataError, match="is a named pipe, not a regular file"):
        make_source(layer, np.float64, np.random.default_rng(0))
