"""The HDF5 files of HDF5DataLayer and AsyncHDF5DataLayer: the source list,
the checks of their datasets and the reading of them into memory.

The optional ``name`` of each function is the net's name for the layer
(ir.graph.layer_display_name), which its messages use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from mochac.durable_files import special_file_kind
from mochac.errors import DataError, MochacError, SnapshotError
from mochac.layers.data import HDF5DataLayer
from mochac.runtime.batch_checks import _check_float, _who
from mochac.runtime.file_digest import (
    DATA_FILE_ADVICE,
    file_identity,
    identity_or_none,
    sidecar_path,
    verify_digest,
)
from mochac.runtime.snapshot import first_line

# How many times _open_hdf5 checks and opens a file that is replaced in
# between before it gives up.
OPEN_ATTEMPTS = 3

# Data files whose digest matched their sidecar: the real path, mapped to
# the identities (file_identity) of the file and of its sidecar before the
# file was hashed. Opening that version of the file again skips the hash.
# NOTE: so damage that changes no field of the identity (a failing disk)
# after a file's first check in a process goes unseen by later opens in
# that process.
_matched_digests: dict[str, tuple] = {}


def read_source_list(layer: HDF5DataLayer, name: str | None = None) -> list[Path]:
    """Return the HDF5 paths named in the layer's source list file.

    The list is UTF-8 text, with or without a byte order mark. Blank lines
    and lines that start with "#" are skipped. A relative path is taken
    beside the list file. When no file is there but one is at the path
    relative to the current folder (Mocha's rule), that one is taken.
    """
    who = _who(layer, name)
    list_path = Path(layer.source)
    try:
        # utf-8-sig drops the byte order mark that some editors write, which
        # would otherwise start the first path.
        lines = list_path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise DataError(
            f"{who}: cannot read source list {list_path}: "
            f"{error.strerror}; pass a text file with one HDF5 path per line"
        ) from error
    except UnicodeDecodeError as error:
        hint = (
            "it is an HDF5 file itself; "
            if h5py.is_hdf5(str(list_path))
            else "it is not UTF-8 text; "
        )
        raise DataError(
            f"{who}: source {list_path} is not a source list: {hint}pass "
            "a text file with one HDF5 path per line"
        ) from error
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        if not path.is_absolute():
            beside = list_path.parent / path
            if beside.exists() or not path.exists():
                path = beside
        paths.append(path)
    if not paths:
        raise DataError(f"{who}: source list {list_path} names no files")
    return paths


def check_digest(layer, path: Path, name: str | None = None) -> tuple | None:
    """Compare the data file ``path`` with its SHA-256 sidecar
    (file_digest.verify_digest), once per version of the file in a process.

    Returns the file's identity (file_identity) when the sidecar matches,
    None when there is no sidecar. Raises DataError naming the layer and the
    file when the digest differs or the sidecar is damaged.
    """
    real = os.path.realpath(path)
    try:
        identities = (file_identity(path), file_identity(sidecar_path(path)))
    except OSError:
        # No sidecar, or a file that cannot be read, which verify_digest
        # then reports.
        identities = None
    if identities is not None and _matched_digests.get(real) == identities:
        return identities[0]
    try:
        matched = verify_digest(path, DATA_FILE_ADVICE)
    except SnapshotError as error:
        raise DataError(f"{_who(layer, name)}: {error}") from error
    if not matched or identities is None:
        return None
    _matched_digests[real] = identities
    return identities[0]


def _open_hdf5(layer, path: Path, name: str | None = None) -> h5py.File:
    """Open the listed data file ``path`` with h5py, after its SHA-256 check
    (check_digest) when it has a sidecar."""
    who = _who(layer, name)
    if not path.exists():
        raise DataError(
            f"{who}: file {path}, listed in {layer.source}, does not exist "
            "(a relative path is looked up beside the list file, then in the "
            "current folder)"
        )
    if path.is_dir():
        raise DataError(
            f"{who}: {path}, listed in {layer.source}, is a folder; list "
            "the HDF5 files in it, one path per line"
        )
    kind = special_file_kind(path)
    if kind is not None:
        raise DataError(
            f"{who}: {path}, listed in {layer.source}, is {kind}, not a regular "
            "file; list HDF5 files"
        )
    for _ in range(OPEN_ATTEMPTS):
        checked = check_digest(layer, path, name)
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            # h5py's message goes on with HDF5's error stack (timestamps,
            # addresses).
            raise DataError(
                f"{who}: cannot open {path}, listed in {layer.source}, as "
                f"HDF5: {first_line(error)}; check that it is a complete HDF5 file"
            ) from error
        # A file replaced between its check and the open is checked again
        # before any dataset is read. NOTE: h5py has then parsed the new
        # file's superblock and root group unchecked.
        if checked is None or identity_or_none(path) == checked:
            return handle
        handle.close()
    raise DataError(
        f"{who}: {path}, listed in {layer.source}, was replaced each time it "
        f"was opened ({OPEN_ATTEMPTS} times); try again once no other program "
        "replaces it"
    )


@contextlib.contextmanager
def damaged_file_errors(layer, path: Path, name: str | None = None):
    """Raise DataError naming ``path`` for an h5py error in the block.

    h5py raises OSError for a chunk that fails to read and RuntimeError or
    KeyError for damaged metadata, such as a group's heap, in a file that
    opened without an error. A mochac error in the block passes unchanged.

    NOTE: files in HDF5's default (oldest) format have no metadata checksums,
    so a flipped byte in a chunk index can read as zeros with no error (9 of
    300 random single-bit flips, h5py 3.16 with HDF5 2.0). Files written with
    libver="latest" and fletcher32=True raised an error for all 300. A file
    with a SHA-256 sidecar is compared with it first (check_digest), so this
    concerns files without one.
    """
    try:
        yield
    except MochacError:
        raise
    except (OSError, RuntimeError, KeyError) as error:
        raise DataError(
            f"{_who(layer, name)}: cannot read {path}, listed in {layer.source}: "
            f"{first_line(error)}; the file is damaged, so write it again or "
            "restore it from a copy"
        ) from error


class ScannedFile(NamedTuple):
    """A listed HDF5 file as scan_hdf5 found it."""

    path: Path
    rows: int
    # Per top: the dataset's (shape, dtype).
    layouts: tuple[tuple[tuple[int, ...], np.dtype], ...]


def _sample_axis_hint(first_shape: tuple, other_shape: tuple) -> str:
    """Return the end of the row-count error: which axis counts the samples."""
    hint = ". The first axis of every dataset counts the samples, as in (N, C, H, W)"
    both_multi_axis = len(first_shape) > 1 and len(other_shape) > 1
    if both_multi_axis and first_shape[-1] == other_shape[-1]:
        hint += (
            f". Both datasets have {first_shape[-1]} on their last axis, as "
            "arrays in Mocha's (W, H, C, N) order written from NumPy would: "
            "transpose them, e.g. data.transpose(3, 2, 1, 0)"
        )
    return hint


def scan_hdf5(
    layer: HDF5DataLayer, dtype, name: str | None = None, log: bool = True
) -> tuple[list[ScannedFile], list]:
    """Check every listed file's datasets without reading their values.

    Returns ([ScannedFile, ...], sample shape per top). A 1-D dataset has
    samples of shape (1,). Raises DataError naming the file and dataset when a
    dataset is missing, not numeric or a scalar. It is also raised when a
    dataset's row count differs from the first top's, when sample shapes
    differ between files, and when the files contain no samples. Integer
    datasets are logged as converted to ``dtype``, unless ``log`` is False.
    """
    who = _who(layer, name)
    files = []
    shapes_per_file = []
    for path in read_source_list(layer, name):
        with (
            _open_hdf5(layer, path, name) as handle,
            damaged_file_errors(layer, path, name),
        ):
            rows = None
            shapes = []
            layouts = []
            for top in layer.tops:
                if isinstance(handle.get(top), h5py.Group):
                    raise DataError(
                        f"{who}: in file {path}, '{top}' is a group, not a "
                        "dataset; each top names a dataset"
                    )
                if top not in handle:
                    raise DataError(
                        f"{who}: file {path} has no dataset '{top}' (it has: "
                        f"{', '.join(handle.keys()) or 'none'}); each top names a "
                        "dataset"
                    )
                dataset = handle[top]
                _check_float(dataset, dtype, f"{who}: {path}:{top}", log)
                if dataset.ndim == 0:
                    raise DataError(
                        f"{who}: {path}:{top} is a scalar; store an (N, ...) array"
                    )
                if rows is not None and dataset.shape[0] != rows:
                    first = handle[layer.tops[0]]
                    raise DataError(
                        f"{who}: in {path}, dataset '{top}' has "
                        f"{dataset.shape[0]} rows but '{layer.tops[0]}' has {rows}"
                        f"{_sample_axis_hint(first.shape, dataset.shape)}"
                    )
                rows = dataset.shape[0]
                shapes.append(dataset.shape[1:] if dataset.ndim > 1 else (1,))
                layouts.append((dataset.shape, dataset.dtype))
            files.append(ScannedFile(path, rows, tuple(layouts)))
            shapes_per_file.append(shapes)
    if not sum(scanned.rows for scanned in files):
        # An empty source would make the batch order loop forever looking for a
        # sample.
        raise DataError(
            f"{who}: the files listed in {layer.source} hold no samples "
            f"(dataset '{layer.tops[0]}' has 0 rows)"
        )
    sample_shapes = []
    for position, top in enumerate(layer.tops):
        distinct = {shapes[position] for shapes in shapes_per_file}
        if len(distinct) > 1:
            listing = ", ".join(
                f"{scanned.path}: {shapes[position]}"
                for scanned, shapes in zip(files, shapes_per_file)
            )
            raise DataError(
                f"{who}: dataset '{top}' has different sample shapes across "
                f"files ({listing}); every file needs the same shape"
            )
        sample_shapes.append(shapes_per_file[0][position])
    return files, sample_shapes


def check_unchanged(
    layer, scanned: ScannedFile, handle: h5py.File, name: str | None = None
) -> None:
    """Raise DataError when a dataset of the open file ``handle`` has another
    shape or kind of dtype than scan_hdf5 found, because the file was
    replaced or rewritten after the net was built on it."""
    who = _who(layer, name)
    for top, (shape, dtype) in zip(layer.tops, scanned.layouts):
        dataset = handle.get(top)
        if not isinstance(dataset, h5py.Dataset):
            found = "no dataset"
        elif dataset.shape != shape or dataset.dtype.kind != dtype.kind:
            found = f"shape {dataset.shape} and dtype {dataset.dtype}"
        else:
            continue
        raise DataError(
            f"{who}: {scanned.path} changed after the net was built on it: "
            f"'{top}' now has {found}, but it had shape {shape} and dtype {dtype}; "
            "restore the file, or build a new Net for the new data"
        )


def check_in_range(
    layer, values: np.ndarray, dtype, where: str, name=None, rows=None
) -> None:
    """Raise DataError when a finite value of ``values`` (one dataset, samples
    along the first axis) is too large for ``dtype``, so converting it would
    give an infinity that the batch checks would report as such.

    ``rows`` gives the file's row number of each sample of ``values`` when
    they are not rows 0, 1, ... of the file (a chunk or a batch of rows).
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(values.dtype, np.floating):
        return
    if values.dtype.itemsize <= dtype.itemsize or values.size == 0:
        return
    limit = np.finfo(dtype).max
    outside = np.isfinite(values) & (np.abs(values) > limit)
    if not outside.any():
        return
    index = np.unravel_index(int(np.argmax(outside)), values.shape)
    row = index[0] if rows is None else int(rows[index[0]])
    raise DataError(
        f"{_who(layer, name)}: {where}: value {values[index]:.6g} in sample "
        f"{row} is outside the range of {dtype.name} (magnitude at most "
        f"{limit:.6g}); scale the data, or build the net with a float64 backend"
    )


def load_hdf5(
    layer: HDF5DataLayer, dtype, name: str | None = None
) -> tuple[list[np.ndarray], tuple]:
    """Read every top's dataset from every listed file, concatenated along N.

    Returns the arrays and (paths, starts), where starts[f] is the first row
    of file f.
    """
    files, sample_shapes = scan_hdf5(layer, dtype, name)
    arrays = []
    for top, shape in zip(layer.tops, sample_shapes):
        parts = []
        for scanned in files:
            with (
                _open_hdf5(layer, scanned.path, name) as handle,
                damaged_file_errors(layer, scanned.path, name),
            ):
                check_unchanged(layer, scanned, handle, name)
                values = handle[top][()].reshape((scanned.rows,) + shape)
            check_in_range(layer, values, dtype, f"{scanned.path}:{top}", name)
            parts.append(np.ascontiguousarray(values, dtype=dtype))
        arrays.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    starts = np.concatenate([[0], np.cumsum([scanned.rows for scanned in files])])
    return arrays, ([scanned.path for scanned in files], starts)
