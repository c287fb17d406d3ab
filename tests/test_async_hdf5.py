"""AsyncHDF5DataLayer: the same batches as HDF5DataLayer, read in a thread."""

from __future__ import annotations

import gc
import itertools
import logging
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac import (
    SGD,
    ConfigError,
    CPUBackend,
    DataError,
    HDF5DataLayer,
    InnerProductLayer,
    LRPolicy,
    MomPolicy,
    Net,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.layers.data import AsyncHDF5DataLayer
from mochac.runtime.data_sources import make_source
from mochac.serialize import from_json, to_json

N_SAMPLES = 10


def write_files(folder: Path, n=N_SAMPLES, splits=(4, 7)) -> Path:
    """Write samples 0..n-1 over several files; return the source list.

    Sample i has data [i, i + 0.5, i + 0.25] and label i % 3.
    """
    data = np.arange(n, dtype=np.float64)[:, None] + np.array([0.0, 0.5, 0.25])
    label = (np.arange(n) % 3).astype(np.float32).reshape(n, 1)
    bounds = [0, *splits, n]
    names = []
    for part, (start, stop) in enumerate(itertools.pairwise(bounds)):
        name = f"part{part}.hdf5"
        with h5py.File(folder / name, "w") as handle:
            handle["data"] = data[start:stop]
            handle["label"] = label[start:stop]
        names.append(name)
    source = folder / "list.txt"
    source.write_text("".join(f"{name}\n" for name in names))
    return source


def open_pair(source: Path, seed: int, shuffle: bool, chunk_size: int, batch_size=4):
    """Return (synchronous, asynchronous) sources over the same files and seed."""
    sync_layer = HDF5DataLayer(
        name="data", source=str(source), batch_size=batch_size, shuffle=shuffle
    )
    async_layer = AsyncHDF5DataLayer(
        name="data",
        source=str(source),
        batch_size=batch_size,
        shuffle=shuffle,
        chunk_size=chunk_size,
    )
    sync = make_source(sync_layer, np.float32, np.random.default_rng(seed))
    asynchronous = make_source(async_layer, np.float32, np.random.default_rng(seed))
    return sync, asynchronous


def next_batch(source):
    outputs = [np.full(shape, np.nan, dtype=np.float32) for shape in source.shapes]
    n_valid = source.next_batch(outputs)
    return outputs, n_valid


def assert_same_batches(sync, asynchronous, count):
    for step in range(count):
        (sync_data, sync_label), sync_valid = next_batch(sync)
        (async_data, async_label), async_valid = next_batch(asynchronous)
        np.testing.assert_array_equal(async_data, sync_data, err_msg=f"batch {step}")
        np.testing.assert_array_equal(async_label, sync_label, err_msg=f"batch {step}")
        assert async_valid == sync_valid, f"batch {step}"
        assert asynchronous.epoch == sync.epoch, f"batch {step}"
        assert asynchronous.position == sync.position, f"batch {step}"


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("mochac-prefetch")]


# --- batches ----------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("chunk_size", [3, 4, 2**20])
def test_async_batches_match_hdf5(tmp_path, shuffle, chunk_size):
    source = write_files(tmp_path)
    sync, asynchronous = open_pair(source, 7, shuffle, chunk_size)
    assert asynchronous.shapes == sync.shapes == [(4, 3), (4, 1)]
    assert asynchronous.n_samples == N_SAMPLES

    assert_same_batches(sync, asynchronous, 12)
    assert sync.epoch == 4
    asynchronous.close()


def test_async_default_chunk_size():
    layer = AsyncHDF5DataLayer(source="list.txt", batch_size=2)
    assert layer.chunk_size == 2**20
    assert layer.tops == ("data", "label")
    assert layer.shuffle is False
    assert layer.transformers == ()


def test_async_chunk_size_validated():
    with pytest.raises(ConfigError, match="chunk_size") as raised:
        AsyncHDF5DataLayer(name="train", source="list.txt", batch_size=2, chunk_size=0)
    assert "'train'" in str(raised.value)


def test_async_chunk_spans_files(tmp_path):
    source = write_files(tmp_path, splits=(4, 7))
    _, asynchronous = open_pair(source, 0, shuffle=False, chunk_size=5)
    reader = asynchronous.reader
    data, label = reader.read(np.array([5, 6, 7, 8]))

    np.testing.assert_array_equal(data[:, 0], [5, 6, 7, 8])
    np.testing.assert_array_equal(label.ravel(), [2, 0, 1, 2])
    assert list(reader.cache) == [1]
    assert len(reader.cache[1][0]) == 5
    asynchronous.close()


def test_async_integer_labels_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mochac.runtime.data_sources")
    with h5py.File(tmp_path / "a.hdf5", "w") as handle:
        handle["data"] = np.ones((6, 2), np.float32)
        handle["label"] = np.arange(6, dtype=np.int64).reshape(6, 1)
    (tmp_path / "list.txt").write_text("a.hdf5\n")
    layer = AsyncHDF5DataLayer(
        name="data", source=str(tmp_path / "list.txt"), batch_size=4
    )
    source = make_source(layer, np.float32, np.random.default_rng(0))
    (_, label), _ = next_batch(source)
    next_batch(source)
    source.close()

    assert label.ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
    conversions = [
        r.getMessage() for r in caplog.records if "converting int64" in r.getMessage()
    ]
    assert len(conversions) == 1


# --- state, rewind and shutdown -------------------------------------------------------


def test_async_state_dict_counts_served_batches(tmp_path):
    source = write_files(tmp_path)
    sync, asynchronous = open_pair(source, 3, shuffle=True, chunk_size=4)
    assert_same_batches(sync, asynchronous, 2)
    # The thread has read ahead across the epoch end by now; the state must not.
    state = asynchronous.state_dict()
    expected = sync.state_dict()

    assert state["position"] == expected["position"] == 8
    assert state["epoch"] == expected["epoch"] == 0
    np.testing.assert_array_equal(state["order"], expected["order"])
    assert state["rng"] == expected["rng"]

    _, resumed = open_pair(source, 99, shuffle=True, chunk_size=4)
    resumed.load_state_dict(state)
    assert_same_batches(sync, resumed, 6)
    asynchronous.close()
    resumed.close()


def test_async_rewind_matches_hdf5(tmp_path):
    source = write_files(tmp_path)
    sync, asynchronous = open_pair(source, 11, shuffle=True, chunk_size=2**20)
    assert_same_batches(sync, asynchronous, 3)
    sync.rewind()
    asynchronous.rewind()

    assert asynchronous.epoch == 0
    assert asynchronous.position == 0
    assert_same_batches(sync, asynchronous, 5)
    asynchronous.close()


def test_async_close_stops_thread(tmp_path):
    source = write_files(tmp_path)
    _, asynchronous = open_pair(source, 0, shuffle=False, chunk_size=4)
    before = len(prefetch_threads())
    next_batch(asynchronous)
    thread = asynchronous._thread_state["prefetcher"].thread
    assert thread.is_alive()
    assert len(prefetch_threads()) == before + 1

    asynchronous.close()
    assert not thread.is_alive()
    assert asynchronous.reader.handles == {}
    asynchronous.close()  # a second close does nothing


def test_async_garbage_collected_source_stops_thread(tmp_path):
    source = write_files(tmp_path)
    _, asynchronous = open_pair(source, 0, shuffle=False, chunk_size=4)
    next_batch(asynchronous)
    thread = asynchronous._thread_state["prefetcher"].thread
    del asynchronous
    gc.collect()

    thread.join(timeout=5)
    assert not thread.is_alive()


def test_async_read_error_names_file(tmp_path):
    source = write_files(tmp_path, splits=(4, 7))
    # Chunks of 2 samples and no shuffling: the thread opens part1.hdf5 only
    # when it reaches sample 4, after the file is gone.
    _, asynchronous = open_pair(source, 0, shuffle=False, chunk_size=2, batch_size=2)
    (tmp_path / "part1.hdf5").unlink()
    next_batch(asynchronous)
    next_batch(asynchronous)

    with pytest.raises(DataError) as raised:
        next_batch(asynchronous)
    message = str(raised.value)
    assert "AsyncHDF5DataLayer 'data'" in message
    assert str(tmp_path / "part1.hdf5") in message
    assert "does not exist" in message
    assert "prefetcher" not in asynchronous._thread_state
    asynchronous.close()


@pytest.mark.parametrize("shuffle", [False, True])
def test_async_out_of_float32_range(tmp_path, shuffle):
    """A float64 value too large for a float32 net is named as out of range,
    with its file and row there, not as NaN or infinite in a batch. In order,
    the source reads chunks as slices. Shuffled, a batch spans more chunks
    than the cache keeps, so the source reads its rows by number."""
    data = np.ones((10, 3))
    data[5, 1] = -3e39
    with h5py.File(tmp_path / "a.hdf5", "w") as handle:
        handle["data"] = data[:4]
        handle["label"] = np.zeros((4, 1))
    with h5py.File(tmp_path / "b.hdf5", "w") as handle:
        handle["data"] = data[4:]
        handle["label"] = np.zeros((6, 1))
    (tmp_path / "list.txt").write_text("a.hdf5\nb.hdf5\n")
    layer = AsyncHDF5DataLayer(
        name="data",
        source=str(tmp_path / "list.txt"),
        batch_size=10,
        chunk_size=2,
        shuffle=shuffle,
    )
    source = make_source(layer, np.float32, np.random.default_rng(0))
    with pytest.raises(DataError) as raised:
        next_batch(source)
    message = str(raised.value)
    assert "AsyncHDF5DataLayer 'data'" in message
    assert f"{tmp_path / 'b.hdf5'}:data: value -3e+39 in sample 1" in message
    assert "outside the range of float32" in message
    assert "NaN" not in message
    source.close()


def test_async_label_rows_mismatch(tmp_path):
    with h5py.File(tmp_path / "a.hdf5", "w") as handle:
        handle["data"] = np.zeros((10, 1, 28, 28), np.float32)
        handle["label"] = np.zeros((9, 1), np.float32)
    (tmp_path / "list.txt").write_text("a.hdf5\n")
    layer = AsyncHDF5DataLayer(
        name="train", source=str(tmp_path / "list.txt"), batch_size=4
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert "AsyncHDF5DataLayer 'train'" in message
    assert str(tmp_path / "a.hdf5") in message
    assert "'label' has 9 rows" in message


# --- through Net and Solver ---------------------------------------------------


def train(folder: Path, source: Path, layer_class, max_iter, seed, snapshot_every=None):
    data = layer_class(
        name="train-data", source=str(source), batch_size=4, shuffle=True
    )
    ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    net = Net("async", CPUBackend(dtype=np.float64, seed=seed), [data, ip, loss])
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        lr_policy=LRPolicy.Fixed(0.05),
        mom_policy=MomPolicy.Fixed(0.9),
        load_from=str(folder),
    )
    solver = Solver(SGD(), params)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    net.destroy()
    return net


def test_async_training_matches_hdf5(tmp_path):
    source = write_files(tmp_path)
    sync = train(tmp_path / "sync", source, HDF5DataLayer, 9, seed=4)
    asynchronous = train(tmp_path / "async", source, AsyncHDF5DataLayer, 9, seed=4)

    for name in ("weight", "bias"):
        np.testing.assert_array_equal(
            asynchronous.params["ip"][name], sync.params["ip"][name]
        )
    # destroy() stopped the read-ahead thread. data_source() rejects a
    # destroyed net, so the source is taken from the net's table.
    (source_state,) = asynchronous.sources.values()
    assert "prefetcher" not in source_state._thread_state


def test_async_resume_is_exact(tmp_path):
    source = write_files(tmp_path)
    straight = train(tmp_path / "straight", source, AsyncHDF5DataLayer, 14, seed=4)
    train(tmp_path / "split", source, AsyncHDF5DataLayer, 7, seed=4, snapshot_every=7)
    with h5py.File(tmp_path / "split" / "snapshot-000007.h5", "r") as handle:
        position = int(handle["data_layers/train-data"].attrs["position"])
    # 7 batches of 4 from 10 samples (plus the initial forward, rewound).
    assert position == 28 % N_SAMPLES

    # Another seed: the weights, the order and the generator come from the file.
    resumed = train(tmp_path / "split", source, AsyncHDF5DataLayer, 14, seed=99)
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(
            resumed.params["ip"][name], straight.params["ip"][name]
        )


def test_async_missing_dataset_and_file(tmp_path):
    with h5py.File(tmp_path / "a.hdf5", "w") as handle:
        handle["label"] = np.zeros((10, 1), np.float32)
    (tmp_path / "list.txt").write_text("a.hdf5\n")
    (tmp_path / "absent.txt").write_text("absent.hdf5\n")
    cases = [
        ("list.txt", "no dataset 'data'", tmp_path / "a.hdf5"),
        ("absent.txt", "does not exist", tmp_path / "absent.hdf5"),
    ]
    for list_name, expected, path in cases:
        layer = AsyncHDF5DataLayer(
            name="train", source=str(tmp_path / list_name), batch_size=4
        )
        with pytest.raises(DataError) as raised:
            make_source(layer, np.float32, np.random.default_rng(0))
        message = str(raised.value)
        assert expected in message, list_name
        assert str(path) in message, list_name


def test_async_layer_serializes():
    layer = AsyncHDF5DataLayer(
        name="train", source="list.txt", batch_size=4, shuffle=True, chunk_size=64
    )
    rebuilt = from_json(to_json(layer))

    assert type(rebuilt) is AsyncHDF5DataLayer
    assert rebuilt.chunk_size == 64
    assert rebuilt.shuffle is True
    assert rebuilt.source == "list.txt"


@pytest.mark.parametrize("layer_type", [HDF5DataLayer, AsyncHDF5DataLayer])
def test_non_finite_data_row_named(tmp_path, layer_type):
    """Row 6 of the data set, in the second file, contains an infinite value:
    the second batch of four fails and names it."""
    source = write_files(tmp_path)
    with h5py.File(tmp_path / "part1.hdf5", "r+") as handle:
        handle["data"][2, 1] = np.inf
    layer = layer_type(name="train", source=str(source), batch_size=4)
    opened = make_source(layer, np.float32, np.random.default_rng(0))
    outputs = [np.empty(shape, np.float32) for shape in opened.shapes]
    opened.next_batch(outputs)
    with pytest.raises(DataError) as caught:
        opened.next_batch(outputs)
    message = str(caught.value)
    assert f"{layer_type.__name__} 'train': top 'data'" in message
    part = tmp_path / "part1.hdf5"
    assert f"data row 6 (row 2 of {part}), sample 2 of the batch" in message
    opened.close()


@pytest.mark.parametrize("layer_type", [HDF5DataLayer, AsyncHDF5DataLayer])
def test_bad_label_names_file_and_row(tmp_path, layer_type):
    """Row 5 of the data set is row 1 of the second file."""
    source = write_files(tmp_path)
    with h5py.File(tmp_path / "part1.hdf5", "r+") as handle:
        handle["label"][1, 0] = 7
    layers = [
        layer_type(name="train", source=str(source), batch_size=4),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    net = Net("labels", CPUBackend(dtype=np.float64), layers)
    net.forward()
    with pytest.raises(DataError) as caught:
        net.forward()
    part = tmp_path / "part1.hdf5"
    assert f"data row 5 (row 1 of {part}) of data layer 'train'" in str(caught.value)
    net.destroy()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def read_all_batches(layer, count: int):
    opened = make_source(layer, np.float32, np.random.default_rng(0))
    try:
        outputs = [np.empty(shape, np.float32) for shape in opened.shapes]
        for _ in range(count):
            opened.next_batch(outputs)
    finally:
        opened.close()


@pytest.mark.parametrize("layer_type", [HDF5DataLayer, AsyncHDF5DataLayer])
def test_damaged_group_heap_names_file(tmp_path, layer_type):
    """A file that opens but whose root group's heap is damaged makes h5py
    raise RuntimeError on the first lookup; the layer names the file."""
    source = write_files(tmp_path)
    part = tmp_path / "part1.hdf5"
    heap = part.read_bytes().find(b"HEAP")
    assert heap >= 0
    # The local heap's offset to its free list follows the signature, the
    # version, 3 reserved bytes and the 8-byte data segment size.
    flip_byte(part, heap + 16)
    layer = layer_type(name="train", source=str(source), batch_size=2)
    with pytest.raises(DataError) as caught:
        read_all_batches(layer, 5)
    message = str(caught.value)
    assert f"{layer_type.__name__} 'train': cannot read {part}" in message
    assert "the file is damaged" in message


@pytest.mark.parametrize("layer_type", [HDF5DataLayer, AsyncHDF5DataLayer])
def test_damaged_chunk_names_file(tmp_path, layer_type):
    """A chunk that fails its Fletcher-32 checksum makes h5py raise OSError
    when it is read: at the build for HDF5DataLayer, which reads every
    file, and at the batch that reaches it for AsyncHDF5DataLayer."""
    source = write_files(tmp_path)
    part = tmp_path / "part1.hdf5"
    with h5py.File(part, "r+") as handle:
        values = handle["data"][()]
        del handle["data"]
        handle.create_dataset("data", data=values, chunks=True, fletcher32=True)
        offset = handle["data"].id.get_chunk_info(0).byte_offset
    flip_byte(part, offset + 2)
    layer = layer_type(name="train", source=str(source), batch_size=2)
    if layer_type is AsyncHDF5DataLayer:
        layer = layer.replace(chunk_size=2)
    with pytest.raises(DataError) as caught:
        read_all_batches(layer, 5)
    message = str(caught.value)
    assert f"{layer_type.__name__} 'train': cannot read {part}" in message
    assert "the file is damaged" in message
