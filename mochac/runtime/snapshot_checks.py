"""Checked reads of snapshot and model files, with errors that name the item.

Every helper raises SnapshotError naming the file, the dataset or item and
what to do: load an older snapshot, or an intact copy of a model file.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from mochac.errors import MochacError, SnapshotError

# The names of the Snapshot coffee break's files, e.g. snapshot-000120.h5.
SNAPSHOT_PATTERN = re.compile(r"^snapshot-(\d+)\.h5$")

# The HDF5 float types that save_snapshot writes, in either byte order. A
# damaged datatype message (a changed exponent bias, for one) decodes as
# another float type, which h5py would convert to other values silently.
FLOAT_TYPES = (
    h5py.h5t.IEEE_F32LE,
    h5py.h5t.IEEE_F32BE,
    h5py.h5t.IEEE_F64LE,
    h5py.h5t.IEEE_F64BE,
)

# The exceptions that h5py, NumPy and json raise on a damaged or foreign file.
PARSE_ERRORS = (
    OSError,
    KeyError,
    TypeError,
    AttributeError,
    ValueError,
    RuntimeError,
    IndexError,
    OverflowError,
)


def first_line(error: Exception) -> str:
    """Return the first line of ``error``'s message; h5py's go on with
    library internals."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def damage_advice(path) -> str:
    """Return what to do about the damaged file ``path``, for messages."""
    name = Path(path).name
    if SNAPSHOT_PATTERN.match(name):
        return (
            f"resume from an older snapshot: delete {name} (and its .sha256 "
            "file), and a solver resuming from the folder picks the one before it"
        )
    return "load an intact copy of the file"


def damaged(path, problem: str) -> SnapshotError:
    """Build the SnapshotError for a file that is damaged or has another layout."""
    return SnapshotError(
        f"{path}: {problem}; the file is damaged or not in the layout mochac "
        f"writes: {damage_advice(path)}"
    )


@contextmanager
def parsing(path):
    """Turn the errors that h5py, NumPy and json raise while parsing ``path``
    into SnapshotError naming the file; mochac's own errors pass unchanged."""
    try:
        yield
    except MochacError:
        raise
    except PARSE_ERRORS as error:
        raise damaged(
            path, f"cannot read it ({type(error).__name__}: {first_line(error)})"
        ) from error


def read_dataset(dataset, path) -> np.ndarray:
    """Return the values of ``dataset``; raise SnapshotError naming the
    dataset and the file when HDF5 cannot read it (a failed checksum)."""
    try:
        return np.asarray(dataset[()])
    except OSError as error:
        raise SnapshotError(
            f"{path}: dataset {dataset.name} cannot be read ({first_line(error)}); "
            f"the file is damaged: {damage_advice(path)}"
        ) from error


def describe_datatype(dataset) -> str:
    """Return a name for the HDF5 datatype of ``dataset``, for messages."""
    datatype = dataset.id.get_type()
    if isinstance(datatype, h5py.h5t.TypeFloatID):
        bits = 8 * datatype.get_size()
        if bits in (32, 64):
            return f"a {bits}-bit float type of non-IEEE layout"
        return f"a {bits}-bit float type"
    try:
        return f"datatype {dataset.dtype}"
    except (TypeError, ValueError):
        return "a datatype that NumPy cannot represent"


def check_float_dataset(node, path, label: str) -> h5py.Dataset:
    """Return ``node`` when it is a dataset of IEEE float32 or float64.

    Raises SnapshotError otherwise, naming the file and ``label``, the
    dataset's description in messages (e.g. "layer 'ip': parameter 'weight'
    (dataset ip___weight)").
    """
    if not isinstance(node, h5py.Dataset):
        raise damaged(path, f"{label} is a group where a dataset was expected")
    datatype = node.id.get_type()
    if not any(datatype.equal(expected) for expected in FLOAT_TYPES):
        raise damaged(
            path,
            f"{label} has {describe_datatype(node)}, where IEEE float32 or float64 "
            "was expected",
        )
    return node


def read_finite(node, path, label: str) -> np.ndarray:
    """Return the values of the float dataset ``node``; raise SnapshotError
    when any is NaN or infinite."""
    values = read_dataset(node, path)
    if not np.all(np.isfinite(values)):
        raise SnapshotError(
            f"{label} in {path} contains NaN or infinite values; the file is "
            f"damaged or was saved after training diverged: {damage_advice(path)}"
        )
    return values


def _strip_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    index = 0
    while index < len(shape) - 1 and shape[index] == 1:
        index += 1
    return tuple(shape[index:])


def shapes_match(stored: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Return whether a stored array fills a parameter: equal up to leading 1s.

    Mocha's HDF5 format and Caffe's exporter store every parameter as a 4-D
    tensor, so an inner product weight (out, in) arrives as (1, 1, out, in).
    """
    return _strip_leading_ones(stored) == _strip_leading_ones(expected)
