"""SHA-256 sidecars of the HDF5 files that HDF5DataLayer and
AsyncHDF5DataLayer read: checked before h5py opens a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac import AsyncHDF5DataLayer, DataError, HDF5DataLayer
from mochac.runtime import file_digest, hdf5_files
from mochac.runtime.data_sources import make_source, shapes_before_reading
from mochac.runtime.file_digest import digest_path

N_SAMPLES = 8
LAYER_TYPES = [HDF5DataLayer, AsyncHDF5DataLayer]


@pytest.fixture(autouse=True)
def forget_checked_files():
    """Start and end each test with no file recorded as checked."""
    hdf5_files._matched_digests.clear()
    yield
    hdf5_files._matched_digests.clear()


def write_samples(path: Path, first: float = 0.0) -> None:
    """Write N_SAMPLES samples, data row i filled with first + i, label i % 2,
    in contiguous datasets, which HDF5 stores without checksums."""
    data = first + np.arange(N_SAMPLES, dtype=np.float32)
    with h5py.File(path, "w") as handle:
        handle["data"] = np.repeat(data[:, None], 4, axis=1)
        handle["label"] = (np.arange(N_SAMPLES) % 2).astype(np.float32)[:, None]


def write_sidecar(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = digest_path(path)
    sidecar.write_text(f"{digest}  {path.name}\n")
    return sidecar


def data_file(folder: Path, sidecar: bool = True) -> Path:
    """Write samples.hdf5, with its sidecar unless ``sidecar`` is False, and
    the source list samples.txt naming it."""
    path = folder / "samples.hdf5"
    write_samples(path)
    if sidecar:
        write_sidecar(path)
    (folder / "samples.txt").write_text("samples.hdf5\n")
    return path


def make_layer(layer_type, folder: Path):
    layer = layer_type(name="train", source=str(folder / "samples.txt"), batch_size=4)
    if layer_type is AsyncHDF5DataLayer:
        # A batch spans two of the four chunks, and the reader caches two, so
        # it reads from the file again each epoch.
        layer = layer.replace(chunk_size=2)
    return layer


def first_data(layer) -> np.ndarray:
    """Return the data of the layer's first batch."""
    source = make_source(layer, np.float32, np.random.default_rng(0))
    try:
        outputs = [np.zeros(shape, np.float32) for shape in source.shapes]
        source.next_batch(outputs)
    finally:
        source.close()
    return outputs[0]


def flip_data_byte(path: Path) -> None:
    """Flip a byte of the data value 3.0 (row 3) in place, which HDF5 reads
    back as another value without an error."""
    raw = bytearray(path.read_bytes())
    offset = raw.find(np.full(4, 3.0, np.float32).tobytes())
    assert offset >= 0
    raw[offset + 1] ^= 0x01
    path.write_bytes(bytes(raw))


def record_h5py_opens(monkeypatch) -> list[Path]:
    opened = []
    real_file = h5py.File

    def record(name, *args, **kwargs):
        opened.append(Path(name))
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(hdf5_files.h5py, "File", record)
    return opened


def count_hashes(monkeypatch) -> list[Path]:
    hashed = []
    real_verify = hdf5_files.verify_digest

    def record(path, advice):
        hashed.append(Path(path))
        return real_verify(path, advice)

    monkeypatch.setattr(hdf5_files, "verify_digest", record)
    return hashed


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_flipped_byte_rejected_before_h5py(tmp_path, monkeypatch, layer_type):
    path = data_file(tmp_path)
    flip_data_byte(path)
    opened = record_h5py_opens(monkeypatch)
    with pytest.raises(DataError) as caught:
        make_source(
            make_layer(layer_type, tmp_path), np.float32, np.random.default_rng(0)
        )
    message = str(caught.value)
    assert message.startswith(f"{layer_type.__name__} 'train': {path} ")
    assert "does not match its SHA-256 digest in samples.hdf5.sha256" in message
    assert "prepare_data.py needs --force" in message
    assert "restore it from a copy" in message
    assert opened == []


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_file_without_sidecar_reads(tmp_path, layer_type):
    data_file(tmp_path, sidecar=False)
    data = first_data(make_layer(layer_type, tmp_path))
    np.testing.assert_array_equal(data[:, 0], [0, 1, 2, 3])


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_matching_file_reads(tmp_path, layer_type):
    data_file(tmp_path)
    data = first_data(make_layer(layer_type, tmp_path))
    np.testing.assert_array_equal(data[:, 0], [0, 1, 2, 3])


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_changed_on_purpose_advice(tmp_path, layer_type):
    """A file edited after it was written names its sidecar to delete, and
    reads, edits included, once that is done."""
    path = data_file(tmp_path)
    with h5py.File(path, "r+") as handle:
        handle["data"][0] = 100.0
    layer = make_layer(layer_type, tmp_path)
    with pytest.raises(DataError) as caught:
        first_data(layer)
    message = str(caught.value)
    assert "If you changed the file on purpose, delete samples.hdf5.sha256" in message
    digest_path(path).unlink()
    data = first_data(layer)
    np.testing.assert_array_equal(data[:, 0], [100, 1, 2, 3])


def test_damaged_sidecar_rejected(tmp_path):
    data_file(tmp_path)
    digest_path(tmp_path / "samples.hdf5").write_text("not a digest\n")
    with pytest.raises(DataError) as caught:
        first_data(make_layer(HDF5DataLayer, tmp_path))
    message = str(caught.value)
    assert "samples.hdf5.sha256 is not a SHA-256 digest line" in message
    assert "delete only samples.hdf5.sha256" in message


def test_file_hashed_once_per_version(tmp_path, monkeypatch):
    """A net build scans the files, then reads them, opening each several
    times: the first open hashes the file. A file rewritten since is hashed
    again."""
    path = data_file(tmp_path)
    hashed = count_hashes(monkeypatch)
    layer = make_layer(HDF5DataLayer, tmp_path)
    shapes_before_reading(layer, np.float32)
    first_data(layer)
    assert hashed == [path]

    write_samples(path, first=10.0)
    write_sidecar(path)
    # A new modification time, in case the file system's clock did not tick.
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    data = first_data(layer)
    assert hashed == [path, path]
    np.testing.assert_array_equal(data[:, 0], [10, 11, 12, 13])


def test_file_replaced_before_open_rechecked(tmp_path, monkeypatch):
    """A file replaced between its check and h5py's open is checked again
    before its datasets are read. The scan of a net build opens each file
    once, so no later open would check it."""
    path = data_file(tmp_path)
    replacement = tmp_path / "new.hdf5"
    write_samples(replacement, first=10.0)
    real_file = h5py.File

    def replace_then_open(name, *args, **kwargs):
        if replacement.exists():
            os.replace(replacement, path)
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(hdf5_files.h5py, "File", replace_then_open)
    with pytest.raises(DataError, match="does not match its SHA-256 digest"):
        shapes_before_reading(make_layer(HDF5DataLayer, tmp_path), np.float32)


def async_error_after_change(folder: Path, change) -> str:
    """Read a batch of AsyncHDF5DataLayer from ``folder``, call ``change()``,
    then read on until a DataError; return its message."""
    source = make_source(
        make_layer(AsyncHDF5DataLayer, folder), np.float32, np.random.default_rng(0)
    )
    try:
        outputs = [np.zeros(shape, np.float32) for shape in source.shapes]
        source.next_batch(outputs)
        change()
        # The thread has read batches ahead from the old file. It reads the
        # next chunk that is not cached from the changed one, which the
        # sidecar does not describe.
        with pytest.raises(DataError) as caught:
            for _ in range(6):
                source.next_batch(outputs)
    finally:
        source.close()
    return str(caught.value)


def test_async_reopen_checks_replaced_file(tmp_path):
    """AsyncHDF5DataLayer opens a file replaced while it reads again, and
    checks it against the sidecar then."""
    path = data_file(tmp_path)

    def replace():
        replacement = tmp_path / "new.hdf5"
        write_samples(replacement, first=10.0)
        os.replace(replacement, path)

    message = async_error_after_change(tmp_path, replace)
    assert "does not match its SHA-256 digest in samples.hdf5.sha256" in message


def test_file_replaced_during_check_reads(tmp_path, monkeypatch):
    """A writer that puts a new sidecar and file in place (replace_with_digest)
    after the check read the old sidecar, but before it hashed the file,
    leaves no damage: the check reads the new sidecar and passes."""
    path = data_file(tmp_path)
    replacement = tmp_path / ".new.hdf5"
    write_samples(replacement, first=10.0)
    real_sha256 = file_digest.file_sha256
    replaced = []

    def replace_then_hash(name):
        if not replaced:
            replaced.append(name)
            file_digest.replace_with_digest(replacement, path)
        return real_sha256(name)

    monkeypatch.setattr(file_digest, "file_sha256", replace_then_hash)
    data = first_data(make_layer(HDF5DataLayer, tmp_path))
    assert replaced == [path]
    np.testing.assert_array_equal(data[:, 0], [10, 11, 12, 13])


def test_file_rewritten_in_place_checked_again(tmp_path):
    """A file rewritten in place with its old size and modification time
    (cp -p over it, say) is hashed again: the inode's change time differs."""
    path = data_file(tmp_path)
    first_data(make_layer(HDF5DataLayer, tmp_path))
    status = path.stat()
    raw = bytearray(path.read_bytes())
    offset = raw.find(np.full(4, 3.0, np.float32).tobytes())
    assert offset >= 0
    raw[offset + 1] ^= 0x01
    with open(path, "r+b") as handle:
        handle.write(raw)
    # Each utime sets the change time to the clock, which may not have
    # ticked since the first check.
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    while path.stat().st_ctime_ns == status.st_ctime_ns:
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_ino == status.st_ino
    assert path.stat().st_mtime_ns == status.st_mtime_ns
    with pytest.raises(DataError, match="does not match its SHA-256 digest"):
        first_data(make_layer(HDF5DataLayer, tmp_path))


def test_async_reopen_after_in_place_rewrite(tmp_path):
    """AsyncHDF5DataLayer opens a file again when it was rewritten in place
    with its old size and modification time, and checks it then."""
    path = data_file(tmp_path)
    status = path.stat()

    def rewrite_in_place():
        other = tmp_path / "other.hdf5"
        write_samples(other, first=10.0)
        raw = other.read_bytes()
        assert len(raw) == status.st_size
        with open(path, "r+b") as handle:
            handle.write(raw)
        # Each utime sets the change time to the clock, which may not have
        # ticked since the file was opened.
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
        while path.stat().st_ctime_ns == status.st_ctime_ns:
            os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))

    message = async_error_after_change(tmp_path, rewrite_in_place)
    assert "does not match its SHA-256 digest in samples.hdf5.sha256" in message
