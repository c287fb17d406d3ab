"""MemoryOutputLayer and HDF5OutputLayer: collected batches, files and checks."""

import gc
import os

import h5py
import numpy as np
import pytest

from mochac import (
    ConfigError,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    MochacError,
    Net,
    NotFoundError,
    SoftmaxLayer,
)
from mochac.layers.output import HDF5OutputLayer, MemoryOutputLayer

RNG = np.random.default_rng(9)
X = RNG.normal(size=(6, 3))
BATCH = 4


def feature_layers(*outputs):
    """Return data (6 samples, batch 4) -> ip -> softmax, plus ``outputs``."""
    return [
        MemoryDataLayer(name="data", batch_size=BATCH, data=[X], tops=["x"]),
        InnerProductLayer(name="ip", bottoms=["x"], tops=["features"], output_dim=2),
        SoftmaxLayer(name="prob", bottoms=["features"], tops=["prob"]),
        *outputs,
    ]


def build(outputs, opt_level=1):
    backend = CPUBackend(dtype=np.float64, seed=0, threads=2)
    return Net("features", backend, feature_layers(*outputs), opt_level=opt_level)


def reference_batches(net, count):
    """Return the (x, features, prob) of ``count`` batches computed in NumPy."""
    weight = net.params["ip"]["weight"]
    bias = net.params["ip"]["bias"]
    batches = []
    for step in range(count):
        rows = [(step * BATCH + i) % len(X) for i in range(BATCH)]
        x = X[rows]
        features = x @ weight.T + bias
        prob = np.exp(features) / np.exp(features).sum(axis=1, keepdims=True)
        batches.append((x, features, prob))
    return batches


def test_output_states_unknown_name():
    net = build([MemoryOutputLayer(name="out", bottoms=["features", "prob"])], 1)
    with pytest.raises(NotFoundError) as raised:
        net.output_states["outs"]
    message = str(raised.value)
    assert "has no output layer named 'outs'" in message
    assert "(close matches: 'out')" in message
    assert "its output layers are: 'out'" in message
    assert isinstance(raised.value, KeyError)


@pytest.mark.parametrize("opt_level", [0, 1])
def test_memory_output_collects(opt_level):
    layer = MemoryOutputLayer(name="out", bottoms=["features", "prob"])
    net = build([layer], opt_level)
    for _ in range(3):
        net.forward()
    outputs = net.output_states["out"].outputs
    assert len(outputs) == 2
    assert len(outputs[0]) == 3
    assert len(outputs[1]) == 3
    for step, (_, features, prob) in enumerate(reference_batches(net, 3)):
        np.testing.assert_allclose(outputs[0][step], features, rtol=1e-12)
        np.testing.assert_allclose(outputs[1][step], prob, rtol=1e-12)


def test_memory_output_copies_each_batch():
    net = build([MemoryOutputLayer(name="out", bottoms=["features"])])
    net.forward()
    net.forward()
    first, second = net.output_states["out"].outputs[0]
    assert not np.shares_memory(first, second)
    assert not np.array_equal(first, second)


def test_hdf5_output_appends(tmp_path):
    path = tmp_path / "features.h5"
    layer = HDF5OutputLayer(
        name="save",
        bottoms=["x", "prob"],
        filename=str(path),
        datasets=["inputs", "probabilities"],
    )
    net = build([layer])
    for _ in range(2):
        net.forward()
    assert not path.exists()
    net.destroy()
    batches = reference_batches(net, 2)
    with h5py.File(path, "r") as handle:
        assert sorted(handle) == ["inputs", "probabilities"]
        assert handle["inputs"].shape == (8, 3)
        assert handle["probabilities"].dtype == np.float64
        np.testing.assert_allclose(
            handle["inputs"][()], np.concatenate([b[0] for b in batches])
        )
        np.testing.assert_allclose(
            handle["probabilities"][()],
            np.concatenate([b[2] for b in batches]),
            rtol=1e-12,
        )
    assert list(tmp_path.iterdir()) == [path]


def test_hdf5_output_file_mode(tmp_path):
    """The output file gets the permissions of any file the process creates,
    not the owner-only ones of its temporary file."""
    path = tmp_path / "features.h5"
    # Under umask 022, mkstemp's 0o600 differs from open()'s 0o644.
    mask = os.umask(0o022)
    try:
        net = build([HDF5OutputLayer(name="save", bottoms=["x"], filename=str(path))])
        net.forward()
        net.destroy()
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_hdf5_output_blob_names(tmp_path):
    path = tmp_path / "out.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["features"], filename=path)])
    net.forward()
    net.destroy()
    with h5py.File(path, "r") as handle:
        assert list(handle) == ["features"]
        assert handle["features"].shape == (4, 2)


def test_hdf5_output_rejects_existing_file(tmp_path):
    path = tmp_path / "old.h5"
    path.write_bytes(b"keep me")
    layer = HDF5OutputLayer(name="save", bottoms=["prob"], filename=str(path))
    with pytest.raises(ConfigError, match=rf"'save'.*{path.name} already exists"):
        build([layer])
    assert path.read_bytes() == b"keep me"
    assert list(tmp_path.iterdir()) == [path]


def test_hdf5_output_force_overwrite(tmp_path):
    path = tmp_path / "old.h5"
    path.write_bytes(b"replace me")
    layer = HDF5OutputLayer(
        name="save", bottoms=["prob"], filename=str(path), force_overwrite=True
    )
    net = build([layer])
    net.forward()
    # The old file stays whole until the new one is complete.
    assert path.read_bytes() == b"replace me"
    net.destroy()
    with h5py.File(path, "r") as handle:
        assert handle["prob"].shape == (4, 2)


def test_hdf5_output_failed_write_deletes(tmp_path):
    path = tmp_path / "broken.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=str(path))])
    state = net.output_states["save"]
    # A dataset of the wrong shape makes the next append fail.
    del state.file["prob"]
    state.file.create_dataset("prob", shape=(0, 5), maxshape=(None, 5), dtype="f8")
    with pytest.raises(MochacError, match=r"'save'.*writing .*broken\.h5 failed"):
        net.forward()
    net.destroy()
    assert list(tmp_path.iterdir()) == []


def test_output_layers_are_sinks():
    layer = MemoryOutputLayer(name="out", bottoms=["a"])
    assert layer.is_sink
    assert not layer.can_do_bp
    with pytest.raises(ConfigError, match=r"'out'.*invalid tops="):
        MemoryOutputLayer(name="out", bottoms=["a"], tops=["b"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("filename", ""),
        ("filename", 3),
        ("force_overwrite", "yes"),
        ("datasets", ["one"]),
        ("datasets", ["same", "same"]),
        ("datasets", ["ok", ""]),
    ],
)
def test_hdf5_output_invalid_field(field, value):
    fields = {"filename": "out.h5", field: value}
    with pytest.raises(ConfigError, match=rf"'save'.*invalid {field}="):
        HDF5OutputLayer(name="save", bottoms=["a", "b"], **fields)


def test_hdf5_output_same_filename(tmp_path, monkeypatch):
    path = tmp_path / "out.h5"
    path.write_bytes(b"keep me")
    monkeypatch.chdir(tmp_path)
    first = HDF5OutputLayer(
        name="first", bottoms=["prob"], filename=str(path), force_overwrite=True
    )
    # A relative path to the same file counts as the same filename.
    second = HDF5OutputLayer(
        name="second", bottoms=["x"], filename="out.h5", force_overwrite=True
    )
    with pytest.raises(ConfigError) as raised:
        build([first, second])
    message = str(raised.value)
    assert "HDF5OutputLayer 'second': file out.h5 is already the output" in message
    assert "of HDF5OutputLayer 'first'" in message
    assert "give each HDF5OutputLayer its own filename" in message
    # The first layer's temporary file is gone and the old file is untouched.
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"keep me"


def test_hdf5_output_same_file_two_nets(tmp_path):
    path = tmp_path / "out.h5"
    first = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=path)])
    layer = HDF5OutputLayer(
        name="again", bottoms=["prob"], filename=path, force_overwrite=True
    )
    with pytest.raises(ConfigError, match="call destroy\\(\\) on the other net"):
        build([layer])
    first.forward()
    first.destroy()
    second = build([layer])
    second.destroy()
    with h5py.File(path, "r") as handle:
        assert handle["prob"].shape == (0, 2)


def test_hdf5_output_dropped_net_frees_file(tmp_path):
    path = tmp_path / "out.h5"
    first = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=path)])
    first.forward()
    del first
    # Building the second net collects the first, which moves its file into
    # place because it wrote a batch.
    layer = HDF5OutputLayer(
        name="again", bottoms=["prob"], filename=path, force_overwrite=True
    )
    second = build([layer])
    with h5py.File(path, "r") as handle:
        assert handle["prob"].shape == (4, 2)
    second.destroy()


def test_hdf5_output_unused_net_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    path.write_bytes(b"keep me")
    net = build(
        [
            HDF5OutputLayer(
                name="save", bottoms=["prob"], filename=path, force_overwrite=True
            )
        ]
    )
    del net
    gc.collect()
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"keep me"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_hdf5_output_filename_is_folder(tmp_path, suffix):
    folder = tmp_path / "results"
    folder.mkdir()
    layer = HDF5OutputLayer(
        name="save",
        bottoms=["prob"],
        filename=f"{folder}{suffix}",
        force_overwrite=True,
    )
    with pytest.raises(ConfigError, match=r"'save': filename .*results is a folder"):
        build([layer])
    assert list(tmp_path.iterdir()) == [folder]


def test_hdf5_output_slash_names_folder(tmp_path):
    layer = HDF5OutputLayer(
        name="save", bottoms=["prob"], filename=f"{tmp_path / 'missing'}/"
    )
    with pytest.raises(ConfigError, match="is a folder; name a file"):
        build([layer])
    assert list(tmp_path.iterdir()) == []


def test_hdf5_output_inside_file(tmp_path):
    (tmp_path / "notes").write_text("a file")
    layer = HDF5OutputLayer(
        name="save", bottoms=["prob"], filename=tmp_path / "notes" / "sub" / "out.h5"
    )
    with pytest.raises(ConfigError, match=r"'save': .* is inside .*notes, which is"):
        build([layer])


def test_hdf5_output_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=path)])
    net.forward()
    net.destroy()
    with h5py.File(path, "r") as handle:
        assert handle["prob"].shape == (4, 2)


def test_hdf5_output_move_failure_keeps_data(tmp_path):
    path = tmp_path / "out.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=path)])
    net.forward()
    path.mkdir()
    with pytest.raises(MochacError) as raised:
        net.destroy()
    message = str(raised.value)
    assert "'save': moving the finished file" in message
    assert "the data are in" in message
    (temporary,) = tmp_path.glob(".out.h5.*.tmp")
    with h5py.File(temporary, "r") as handle:
        assert handle["prob"].shape == (4, 2)


def test_hdf5_output_fsync_before_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def record_fsync(descriptor):
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def record_replace(source, target):
        calls.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    path = tmp_path / "out.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["prob"], filename=path)])
    net.forward()
    net.destroy()
    kinds = [kind for kind, _ in calls]
    assert kinds == ["fsync", "replace", "fsync"]
    assert calls[0][1].startswith(str(tmp_path / ".out.h5."))
    assert calls[1][1] == str(path)
    assert calls[2][1] == str(tmp_path)


def test_hdf5_output_removes_killed_writers_file(tmp_path):
    """A process killed while writing its output leaves its temporary file,
    which the next output in the folder removes."""
    import subprocess

    from mochac.durable_files import host_tag
    from mochac.runtime import snapshot

    finished = subprocess.Popen(["true"])
    finished.wait()
    leftover = tmp_path / f".features.h5.{host_tag()}-{finished.pid}.tmp"
    leftover.write_bytes(b"partial")
    snapshot._CLEANED_FOLDERS.discard(tmp_path.resolve())
    path = tmp_path / "features.h5"
    net = build([HDF5OutputLayer(name="save", bottoms=["x"], filename=str(path))])
    assert not leftover.exists()
    net.forward()
    net.destroy()
    assert [entry.name for entry in tmp_path.iterdir()] == ["features.h5"]
