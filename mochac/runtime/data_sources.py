"""Runtime state of data layers: where the next batch comes from.

Every source serves (N, ...) arrays in order (or a per-epoch permutation),
wrapping around at the end. ``next_batch`` reports how many samples of the
batch came before the wrap, so that a validation pass counts each sample once.
The layer's transformers then change the batch in place, top by top.

HDF5DataLayer and MemoryDataLayer read from arrays in memory.
AsyncHDF5DataLayer reads the next batches from the files in a background
thread, through a cache of ``chunk_size`` samples, and serves the same batches.

This module contains DataSource, MemorySource and make_source. Other
modules contain the rest: BatchOrder in mochac.runtime.batch_order, the
checks of batch values in mochac.runtime.batch_checks, the transformers'
application in mochac.runtime.batch_transforms, the reading of HDF5 files
in mochac.runtime.hdf5_files and AsyncHDF5Source in
mochac.runtime.async_hdf5_source.
"""

from __future__ import annotations

import logging

import numpy as np

from mochac.errors import ConfigError, DataError
from mochac.layers.data import AsyncHDF5DataLayer, HDF5DataLayer, MemoryDataLayer
from mochac.runtime.async_hdf5_source import AsyncHDF5Source, ChunkReader
from mochac.runtime.batch_checks import (
    _check_float,
    _who,
    check_finite_batch,
    describe_row,
)
from mochac.runtime.batch_order import BatchOrder
from mochac.runtime.batch_transforms import apply_transformers, prepare_transformers
from mochac.runtime.hdf5_files import (
    ScannedFile,
    check_unchanged,
    load_hdf5,
    read_source_list,
    scan_hdf5,
)

# Public names, including those that moved to the modules above and stay
# importable from this one.
__all__ = [
    "AsyncHDF5Source",
    "BatchOrder",
    "ChunkReader",
    "DataSource",
    "MemorySource",
    "ScannedFile",
    "apply_transformers",
    "check_finite_batch",
    "check_unchanged",
    "describe_row",
    "load_hdf5",
    "make_source",
    "open_after_build",
    "prepare_transformers",
    "read_source_list",
    "scan_hdf5",
    "shapes_before_reading",
    "warn_batches_larger_than_data",
]

logger = logging.getLogger(__name__)


class _CountedArrays(list):
    """A data source's list of arrays that counts the changes made through it,
    so that assigning an array again restarts the batches even when it is the
    same object, such as a buffer refilled in place."""

    changes = 0


def _count_change(name):
    method = getattr(list, name)

    def counted(self, *args, **kwargs):
        self.changes += 1
        return method(self, *args, **kwargs)

    counted.__name__ = name
    return counted


for _name in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "append",
    "extend",
    "insert",
    "pop",
    "remove",
    "clear",
    "sort",
    "reverse",
):
    setattr(_CountedArrays, _name, _count_change(_name))


class DataSource(BatchOrder):
    """Batches of a set of equally long arrays, one per top.

    ``arrays`` may be replaced, item by item, by arrays with any number of
    samples but the same sample shapes, which the compiled code is fixed to.
    The next batch then starts at the first sample of the new arrays, and a
    state captured before the replacement is not restored over them. From
    the assignment on, ``position`` is 0, and ``epoch`` keeps counting. An
    assignment counts as a replacement even when it assigns the same array.
    """

    def __init__(
        self, layer, arrays: list[np.ndarray], rng, shuffle: bool, dtype, name=None
    ):
        self.layer = layer
        # The net's name for the layer (ir.graph.layer_display_name), which
        # messages use.
        self.name = name or layer.label
        self.arrays = arrays
        super().__init__(
            len(arrays[0]), layer.batch_size, rng, shuffle, _who(layer, self.name)
        )
        # The shape of one sample per top, without the sample axis.
        self.sample_shapes = [np.shape(array)[1:] for array in arrays]
        self.dtype = np.dtype(dtype)
        # The arrays the last batch was read from and their shapes, to detect
        # replaced or resized ones.
        self._read_from = list(arrays)
        self._read_shapes = [np.shape(array) for array in arrays]
        self._read_assignments = self.arrays_assignments
        # The number of times the arrays were replaced, which states carry
        # (state_dict) so that stale ones are not restored.
        self.arrays_version = 0
        self.transforms = prepare_transformers(layer, self.shapes, self.dtype)
        # For data read from files: (paths, starts), where starts[f] is the
        # first data row of file f (describe_row).
        self.files = None

    @property
    def arrays(self):
        """The arrays the source reads, one per top."""
        return self._arrays

    @property
    def position(self) -> int:
        """The index of the next sample in the batch order.

        Arrays replaced since the last batch restart at sample 0, so the
        position is 0 from the assignment on, before the next batch or
        state_dict() checks the new arrays and takes them in.
        """
        return 0 if self._arrays_replaced() else self._position

    @position.setter
    def position(self, value: int):
        self._position = value

    @arrays.setter
    def arrays(self, value):
        # The count continues from the changes made through the old list, so
        # it never returns to the value that _read_assignments may contain.
        before = getattr(self, "_list_assignments", -1)
        before += getattr(getattr(self, "_arrays", None), "changes", 0)
        # A bare array stays as it is, so that _check_array_count names it.
        if isinstance(value, (list, tuple)):
            value = _CountedArrays(value)
        self._arrays = value
        self._list_assignments = before + 1

    @property
    def arrays_assignments(self) -> int:
        """The number of assignments to ``arrays`` and changes through it."""
        return self._list_assignments + getattr(self._arrays, "changes", 0)

    def describe_row(self, row: int) -> str:
        """Return how errors name data row ``row``: "data row R", and the
        file and row in it for data read from files."""
        return describe_row(self.files, row)

    def _check_arrays(self):
        """Take in arrays replaced since the last batch.

        Replaced arrays, of any sample count, restart the batch order at
        sample 0, in a new permutation when the layer shuffles. Raises
        DataError when the list of arrays was replaced by one of another
        length, or when an array is not of a real number type or has another
        sample shape than the net was built for.
        It is also raised when the arrays differ in their sample counts or
        have no samples.
        """
        self._check_array_count()
        if not self._arrays_replaced():
            return
        for top, array, sample_shape in zip(
            self.layer.tops, self.arrays, self.sample_shapes
        ):
            self._check_replacement(top, array, sample_shape)
        counts = [len(array) for array in self.arrays]
        if len(set(counts)) > 1:
            listing = ", ".join(
                f"top '{top}' has {count}"
                for top, count in zip(self.layer.tops, counts)
            )
            raise DataError(
                f"{self.owner}: the arrays have different numbers of samples "
                f"({listing}); replace every top's array with one of the same "
                "sample count"
            )
        self._read_from = list(self.arrays)
        self._read_shapes = [np.shape(array) for array in self.arrays]
        self._read_assignments = self.arrays_assignments
        # Rows of other arrays are not rows of the files the source read.
        self.files = None
        if counts[0] != self.n_samples:
            logger.info(
                "%s: the arrays now have %d sample(s) instead of %d",
                self.owner,
                counts[0],
                self.n_samples,
            )
        # New arrays are new data, read from their first sample on whatever
        # their count; states captured before them no longer apply.
        self.n_samples = counts[0]
        self.position = 0
        self.order = self._new_order()
        self.arrays_version += 1

    def _arrays_replaced(self) -> bool:
        """Return whether ``arrays`` was assigned to, or an array in it was
        replaced or resized, since the last batch took the arrays in."""
        if self.arrays_assignments != self._read_assignments:
            return True
        return not all(
            array is old and np.shape(array) == shape
            for array, old, shape in zip(
                self.arrays, self._read_from, self._read_shapes
            )
        )

    def state_dict(self) -> dict:
        """Return BatchOrder.state_dict after taking in replaced arrays,
        with the version of the arrays it belongs to."""
        self._check_arrays()
        return {**super().state_dict(), "arrays_version": self.arrays_version}

    def load_state_dict(self, state: dict):
        """Restore a state (BatchOrder.load_state_dict), unless it belongs to
        arrays replaced since, in which case the source goes on reading the
        new ones."""
        if not self.is_stale(state):
            super().load_state_dict(state)

    def load_state_before_replacement(self, state: dict):
        """Restore ``state``, captured before the arrays were replaced, when
        the source has not taken the new arrays in yet; otherwise act as
        load_state_dict.

        ReadAhead uses it to undo a batch read from the old arrays. The next
        batch then restarts on the new arrays from the epoch and generator
        state of before that read, as a source without read-ahead does.
        """
        if state.get("arrays_version") == self.arrays_version:
            BatchOrder.load_state_dict(self, state)
        else:
            self.load_state_dict(state)

    def check_state_dict(self, state: dict) -> None:
        if not self.is_stale(state):
            super().check_state_dict(state)

    def is_stale(self, state: dict) -> bool:
        """Return whether ``state`` belongs to arrays replaced since. Snapshots
        store no version: their states belong to the arrays of the net."""
        self._check_arrays()
        version = state.get("arrays_version", self.arrays_version)
        if version != self.arrays_version:
            logger.debug(
                "%s: a data position of arrays since replaced is not restored",
                self.owner,
            )
            return True
        return False

    def _check_array_count(self):
        """Raise DataError when ``arrays`` was replaced by a bare array or by a
        list with another number of arrays than the layer has tops."""
        tops = f"{len(self.layer.tops)} top(s) ({', '.join(self.layer.tops)})"
        ways = (
            f"assign a list of {len(self.layer.tops)} array(s), one per top "
            "(arrays = [...]), replace one top's array (arrays[i] = new_array), "
            "or write new values into an array in place (arrays[i][...] = values)"
        )
        # len() of a bare array counts its samples, not arrays.
        if isinstance(self.arrays, np.ndarray):
            raise DataError(
                f"{self.owner}: arrays was replaced by one array of shape "
                f"{self.arrays.shape}, but the layer has {tops}; {ways}"
            )
        if len(self.arrays) != len(self.layer.tops):
            raise DataError(
                f"{self.owner}: arrays has {len(self.arrays)} array(s) for "
                f"{tops}; {ways}"
            )

    def _check_replacement(self, top: str, array, sample_shape: tuple):
        """Raise DataError when ``array`` cannot replace top ``top``'s array."""
        shape = np.shape(array)
        dimensions = ", ".join(["N", *map(str, sample_shape)])
        expected_shape = f"({dimensions})" if sample_shape else "(N,)"
        if not isinstance(array, np.ndarray) or len(shape) < 1:
            raise DataError(
                f"{self.owner}: top '{top}' was replaced by "
                f"{type(array).__name__} of shape {shape}; assign a NumPy array "
                f"of shape {expected_shape}"
            )
        if shape[1:] != sample_shape:
            # One sample without the sample axis has the sample shape itself,
            # which the message would otherwise list as both found and expected.
            one_sample = (
                " The array has the shape of one sample and lacks the leading "
                "sample axis: assign array[np.newaxis] to pass one sample."
                if shape == sample_shape
                else ""
            )
            raise DataError(
                f"{self.owner}: top '{top}' was replaced by an array of "
                f"shape {shape}, but the net was built for samples of shape "
                f"{sample_shape} (top shape {(self.batch_size,) + sample_shape})."
                f"{one_sample} Assign an array of shape {expected_shape} for any "
                "sample count N, or build a new Net for samples of another shape"
            )
        if not shape[0]:
            raise DataError(
                f"{self.owner}: top '{top}' was replaced by an array of "
                f"shape {shape}, which has no samples; assign at least one sample"
            )
        _check_float(array, self.dtype, f"{self.owner}: top '{top}'")

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.batch_size,) + shape for shape in self.sample_shapes]

    def next_batch(self, outputs: list[np.ndarray]) -> int:
        """Copy the next batch into ``outputs`` (one array per top); return n_valid."""
        self._check_arrays()
        indices, valid = self._indices()
        # Kept so that an error about a batch sample can name its data row.
        self.last_indices = indices
        contiguous = self.order is None and indices[-1] - indices[0] == len(indices) - 1
        for array, out in zip(self.arrays, outputs):
            if contiguous:
                source = array[indices[0] : indices[-1] + 1]
            else:
                source = array[indices]
            # Values too large for the net's dtype become infinite here, and
            # check_finite_batch raises an error that names them.
            with np.errstate(over="ignore"):
                out[...] = source.reshape(out.shape)
        apply_transformers(self.transforms, outputs)
        check_finite_batch(self, outputs, indices)
        return valid

    def close(self):
        """Release what the source holds open; in-memory sources hold nothing."""


def warn_batches_larger_than_data(net) -> None:
    """Log a warning for each data layer of ``net`` whose batch is larger
    than its data set.

    The solver calls this for its training net only. A validation epoch
    leaves out the samples that wrap around, so there the size only costs time.
    """
    for index, source in net.sources.items():
        if source.batch_size > source.n_samples:
            logger.warning(
                "net '%s': %s has batch_size %d, larger than its %d samples, so "
                "each training batch repeats samples and may end more than one "
                "epoch; use a batch_size of at most %d",
                net.name,
                _who(net.layers[index], net.ir.layers[index].name),
                source.batch_size,
                source.n_samples,
                source.n_samples,
            )


def make_source(layer, dtype, rng, name=None):
    """Return the runtime data source of a data layer config. Its messages
    name the layer ``name``, the net's name for it
    (ir.graph.layer_display_name), or the layer's own label without one."""
    name = name or layer.label
    if isinstance(layer, AsyncHDF5DataLayer):
        return AsyncHDF5Source(layer, np.dtype(dtype), rng, name)
    if isinstance(layer, HDF5DataLayer):
        # NOTE: the datasets are read into memory whole; data sets larger than
        # memory need AsyncHDF5DataLayer, which caches chunk_size samples.
        arrays, files = load_hdf5(layer, np.dtype(dtype), name)
        source = DataSource(layer, arrays, rng, layer.shuffle, dtype, name)
        source.files = files
        return source
    if isinstance(layer, MemoryDataLayer):
        lengths = {len(array) for array in layer.data}
        if len(lengths) > 1:
            shapes = ", ".join(
                f"top '{top}' has shape {np.shape(array)}"
                for top, array in zip(layer.tops, layer.data)
            )
            raise ConfigError(
                f"{_who(layer, name)}: the data arrays have different "
                f"numbers of samples {[len(a) for a in layer.data]} along their "
                f"first axis ({shapes}); give every array the samples on its first "
                "axis, such as images (N, C, H, W) and labels (N, 1)"
            )
        return MemorySource(layer, rng, dtype, name)
    raise NotImplementedError(f"no data source for {type(layer).__name__}")


def shapes_before_reading(layer, dtype, name=None):
    """Return the top shapes of an HDF5DataLayer from its files' metadata,
    without reading their values; None for other data layers.

    That layer's source reads its datasets whole when it opens, so a net
    takes these shapes to build its IR and opens the source after, with
    open_after_build. A net with a shape error then fails before any data is
    read. Raises DataError as scan_hdf5 does. The conversion of integer
    datasets is logged when the source opens, which scans the files again.
    """
    if isinstance(layer, AsyncHDF5DataLayer) or not isinstance(layer, HDF5DataLayer):
        return None
    _, sample_shapes = scan_hdf5(layer, np.dtype(dtype), name, log=False)
    return [(layer.batch_size,) + tuple(shape) for shape in sample_shapes]


def open_after_build(layer, dtype, rng, name, shapes):
    """Return make_source's source for a layer whose IR was built with
    ``shapes`` (shapes_before_reading). Raises DataError when its files
    changed shape in between."""
    source = make_source(layer, dtype, rng, name)
    opened = [tuple(shape) for shape in source.shapes]
    if opened != [tuple(shape) for shape in shapes]:
        source.close()
        raise DataError(
            f"{_who(layer, name)}: the top shapes of its files changed while "
            f"the net was built, from {shapes} to {opened}; build the net again "
            "once no other program writes the files"
        )
    return source


class MemorySource(DataSource):
    """Reads the layer's own arrays at every batch, so in-place edits show."""

    def __init__(self, layer: MemoryDataLayer, rng, dtype, name=None):
        # The dtype is checked once here, and next_batch converts the values
        # while copying them into the blobs.
        for top, array in zip(layer.tops, layer.data):
            _check_float(array, np.dtype(dtype), f"{_who(layer, name)}: top '{top}'")
        super().__init__(
            layer, list(layer.data), rng, shuffle=False, dtype=dtype, name=name
        )
