"""Runtime state of data layers: where the next batch comes from.

Every source serves (N, ...) arrays in order (or a per-epoch permutation),
wrapping around at the end. ``next_batch`` reports how many samples of the
batch came before the wrap, so that a validation pass counts each sample once.
The layer's transformers then change the batch in place, top by top.

HDF5DataLayer and MemoryDataLayer read from arrays in memory.
AsyncHDF5DataLayer reads the next batches from the files in a background
thread, through a cache of ``chunk_size`` samples, and serves the same batches.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import weakref
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from mochac.errors import ConfigError, DataError, SnapshotError
from mochac.layers.data import AsyncHDF5DataLayer, HDF5DataLayer, MemoryDataLayer
from mochac.runtime.snapshot import first_line

logger = logging.getLogger(__name__)


class BatchOrder:
    """The sample order of a data source: in order, or a new permutation per epoch."""

    def __init__(self, n_samples: int, batch_size: int, rng, shuffle: bool, owner: str):
        # The layer named in errors, "HDF5DataLayer 'train'".
        self.owner = owner
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.position = 0
        self.epoch = 0
        self.order = self._new_order()

    def _new_order(self):
        # Drawing an order advances the generator, so its cached JSON state
        # (state_dict) is stale.
        self._rng_json = None
        return self.rng.permutation(self.n_samples) if self.shuffle else None

    def _indices(self) -> tuple[np.ndarray, int]:
        """Advance one batch; return its sample indices and the count before a wrap."""
        total = self.n_samples
        picked = []
        valid = None
        needed = self.batch_size
        while needed:
            take = min(needed, total - self.position)
            span = np.arange(self.position, self.position + take)
            picked.append(self.order[span] if self.order is not None else span)
            self.position += take
            needed -= take
            if self.position == total:
                self.position = 0
                self.epoch += 1
                if valid is None:
                    valid = self.batch_size - needed
                self.order = self._new_order()
        if valid is None:
            valid = self.batch_size
        return np.concatenate(picked), valid

    def rewind(self):
        """Start again at the first sample of a new epoch count (for validation)."""
        self.position = 0
        self.epoch = 0
        self.order = self._new_order()

    def state_dict(self) -> dict:
        """The position, epoch, order and generator state, for snapshots."""
        return {
            "position": self.position,
            "epoch": self.epoch,
            "order": self.order,
            "rng": self._rng_state_json(),
        }

    def _rng_state_json(self) -> str:
        """Return the generator's state as JSON, cached between the draws:
        the solver captures the state before every step."""
        if self._rng_json is None:
            self._rng_json = json.dumps(self.rng.bit_generator.state)
        return self._rng_json

    def load_state_dict(self, state: dict):
        """Restore a state from state_dict(), which a snapshot stores.

        Raises SnapshotError and changes nothing when the state does not fit
        the current data. The checks reject a position that is not a sample
        index, a negative epoch, an order that is not a permutation of the
        sample indices and a generator state that numpy rejects. A saved order
        is ignored when the layer does not shuffle.
        """
        position, epoch, order, rng_state = self._checked_state(state)
        if self.shuffle and state.get("order") is None:
            logger.warning(
                "%s: the saved state has no sample order, but the layer shuffles "
                "now; the rest of this epoch reads the samples in file order",
                self.owner,
            )
        self.rng.bit_generator.state = rng_state
        self._rng_json = None
        self.position = position
        self.epoch = epoch
        self.order = order

    def check_state_dict(self, state: dict) -> None:
        """Raise SnapshotError, as load_state_dict would, when ``state`` does
        not fit the current data; change nothing either way."""
        self._checked_state(state)

    def _checked_state(self, state: dict) -> tuple:
        """Return (position, epoch, order, generator state) of a checked state."""
        position = self._whole_number(state, "position")
        if not 0 <= position < self.n_samples:
            self._reject_state(
                f"position {position} is not a sample index (0..{self.n_samples - 1})"
            )
        epoch = self._whole_number(state, "epoch")
        if epoch < 0:
            self._reject_state(f"epoch {epoch} is negative")
        order = state.get("order")
        order = (
            None if order is None or not self.shuffle else self._checked_order(order)
        )
        return position, epoch, order, self._checked_rng(state.get("rng"))

    def _reject_state(self, problem: str):
        raise SnapshotError(
            f"{self.owner}: the saved data-layer state does not fit the current "
            f"data of {self.n_samples} samples: {problem}. The data changed since "
            "the state was saved, or the snapshot is damaged; resume from a "
            "snapshot saved with this data, or load only the parameters with "
            "load_snapshot(net, path) and train from iteration 0"
        )

    def _whole_number(self, state: dict, key: str) -> int:
        value = state.get(key)
        numeric = isinstance(value, (int, np.integer, float, np.floating))
        if (
            not numeric
            or isinstance(value, (bool, np.bool_))
            or not float(value).is_integer()
        ):
            self._reject_state(f"{key} is {value!r}, not a whole number")
        return int(value)

    def _checked_order(self, order) -> np.ndarray:
        """Return ``order`` as int64 sample indices, or reject it."""
        array = np.asarray(order)
        if array.ndim != 1:
            self._reject_state(f"the sample order has shape {array.shape}, not 1-D")
        if len(array) != self.n_samples:
            self._reject_state(
                f"the sample order lists {len(array)} samples, but the data now "
                f"have {self.n_samples}"
            )
        if array.dtype.kind not in "iu":
            self._reject_state(
                f"the sample order has dtype {array.dtype}; it must contain "
                "integer sample indices"
            )
        if not np.array_equal(np.sort(array), np.arange(self.n_samples)):
            self._reject_state(
                f"the sample order (values {array.min()}..{array.max()}) is not a "
                f"permutation of the sample indices 0..{self.n_samples - 1}"
            )
        return array.astype(np.int64)

    def _checked_rng(self, text) -> dict:
        """Return the generator state in the JSON ``text``, or reject it.

        A spare generator of the same kind tries the state, so the layer's
        own generator stays unchanged until the whole state is checked.
        """
        try:
            rng_state = json.loads(text)
        except (TypeError, ValueError) as error:
            self._reject_state(f"the generator state is not valid JSON ({error})")
        spare = type(self.rng.bit_generator)()
        try:
            spare.state = rng_state
        # NumPy raises OverflowError for an integer outside the state's C type
        # (a negative PCG64 state, for one).
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            self._reject_state(
                f"numpy rejects the generator state ({error}); it must be "
                f"the state of a {type(self.rng.bit_generator).__name__} generator"
            )
        return rng_state


def prepare_transformers(layer, shapes, dtype) -> list[list]:
    """Return, per top, the functions that apply the layer's transformers in place.

    ``shapes`` are the batch shapes of the tops. Raises DataError when a
    transformer does not fit its top (a mean of the wrong shape).
    """
    per_top = [[] for _ in layer.tops]
    for top, transformer in getattr(layer, "transformers", ()):
        index = layer.tops.index(top)
        where = f"{layer.title}: top '{top}'"
        per_top[index].append(transformer.prepare(shapes[index][1:], dtype, where))
    return per_top


def apply_transformers(transforms: list[list], batches: list[np.ndarray]):
    for functions, batch in zip(transforms, batches):
        for function in functions:
            function(batch)


class DataSource(BatchOrder):
    """Batches of a set of equally long arrays, one per top.

    ``arrays`` may be replaced, item by item, by arrays with any number of
    samples but the same sample shapes, which the compiled code is fixed to.
    The next batch then starts at the first sample of the new arrays, and a
    state captured before the replacement is not restored over them.
    """

    def __init__(self, layer, arrays: list[np.ndarray], rng, shuffle: bool, dtype):
        self.layer = layer
        self.arrays = arrays
        super().__init__(len(arrays[0]), layer.batch_size, rng, shuffle, _who(layer))
        # The shape of one sample per top, without the sample axis.
        self.sample_shapes = [np.shape(array)[1:] for array in arrays]
        self.dtype = np.dtype(dtype)
        # The arrays the last batch was read from and their shapes, to detect
        # replaced or resized ones.
        self._read_from = list(arrays)
        self._read_shapes = [np.shape(array) for array in arrays]
        # The number of times the arrays were replaced, which states carry
        # (state_dict) so that stale ones are not restored.
        self.arrays_version = 0
        self.transforms = prepare_transformers(layer, self.shapes, self.dtype)
        # For data read from files: (paths, starts), where starts[f] is the
        # first data row of file f (describe_row).
        self.files = None

    def describe_row(self, row: int) -> str:
        """Return how errors name data row ``row``: "data row R", and the
        file and row in it for data read from files."""
        return describe_row(self.files, row)

    def _check_arrays(self):
        """Take in arrays replaced since the last batch.

        Replaced arrays, of any sample count, restart the batch order at
        sample 0, in a new permutation when the layer shuffles. Raises DataError when the list
        of arrays was replaced by one of another length, or when an array is
        not of a real number type or has another sample shape than the net
        was built for.
        It is also raised when the arrays differ in their sample counts or
        have no samples.
        """
        if len(self.arrays) != len(self.layer.tops):
            raise DataError(
                f"{_who(self.layer)}: arrays has {len(self.arrays)} array(s) for "
                f"{len(self.layer.tops)} top(s) ({', '.join(self.layer.tops)}); "
                "write new values into each array in place (arrays[i][...] = "
                "values) instead of replacing the list"
            )
        unchanged = all(
            array is old and np.shape(array) == shape
            for array, old, shape in zip(
                self.arrays, self._read_from, self._read_shapes
            )
        )
        if unchanged:
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
                f"{_who(self.layer)}: the arrays have different numbers of samples "
                f"({listing}); replace every top's array with one of the same "
                "sample count"
            )
        self._read_from = list(self.arrays)
        self._read_shapes = [np.shape(array) for array in self.arrays]
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

    def _check_replacement(self, top: str, array, sample_shape: tuple):
        """Raise DataError when ``array`` cannot replace top ``top``'s array."""
        shape = np.shape(array)
        dimensions = ", ".join(["N", *map(str, sample_shape)])
        expected_shape = f"({dimensions})" if sample_shape else "(N,)"
        if not isinstance(array, np.ndarray) or len(shape) < 1:
            raise DataError(
                f"{_who(self.layer)}: top '{top}' was replaced by "
                f"{type(array).__name__} of shape {shape}; assign a NumPy array "
                f"of shape {expected_shape}"
            )
        if shape[1:] != sample_shape:
            raise DataError(
                f"{_who(self.layer)}: top '{top}' was replaced by an array of "
                f"shape {shape}, but the net was built for samples of shape "
                f"{sample_shape} (top shape {(self.batch_size,) + sample_shape}). "
                f"Assign an array of shape {expected_shape} for any sample "
                "count N, or build a new Net for samples of another shape"
            )
        if not shape[0]:
            raise DataError(
                f"{_who(self.layer)}: top '{top}' was replaced by an array of "
                f"shape {shape}, which has no samples; assign at least one sample"
            )
        _check_float(array, self.dtype, f"{_who(self.layer)}: top '{top}'")

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
            out[...] = source.reshape(out.shape)
        apply_transformers(self.transforms, outputs)
        check_finite_batch(self, outputs, indices)
        return valid

    def close(self):
        """Release what the source holds open; in-memory sources hold nothing."""


def describe_row(files, row: int) -> str:
    """Return "data row R", followed by "(row r of FILE)" when ``files`` is
    (paths, starts) of the files the rows come from."""
    if files is None:
        return f"data row {row}"
    paths, starts = files
    index = int(np.searchsorted(starts, row, side="right")) - 1
    return f"data row {row} (row {row - int(starts[index])} of {paths[index]})"


def check_finite_batch(source, outputs: list[np.ndarray], indices) -> None:
    """Raise DataError naming the top and data row of the first NaN or
    infinite value in a batch.

    The values reach the net only through the loss check otherwise, and a
    net without a loss layer (a deploy net, a validation with accuracy
    alone) would pass them on silently. The check reads the batch once:
    10 us for LeNet's 64 MNIST images on the 2-core AMD EPYC, about 0.1 % of
    a training step.
    """
    for top, out in zip(source.layer.tops, outputs):
        if np.isfinite(out).all():
            continue
        samples = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        sample = int(np.argmax(samples))
        row = source.describe_row(int(indices[sample]))
        raise DataError(
            f"{_who(source.layer)}: top '{top}' has NaN or infinite values in "
            f"{row}, sample {sample} of the batch; remove or repair that row, or "
            "check the layer's transformers"
        )


def _check_float(array: np.ndarray, dtype, where: str):
    """Log a line when values need converting to ``dtype``: integers, bools
    and wider floats, which lose precision.

    Raises DataError for any other dtype that is not floating point.
    """
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        logger.info("%s: converting %s values to %s", where, array.dtype, dtype.name)
    elif np.issubdtype(array.dtype, np.floating):
        if array.dtype.itemsize > np.dtype(dtype).itemsize:
            logger.info(
                "%s: converting %s values to %s, the net's type, which rounds them",
                where,
                array.dtype,
                np.dtype(dtype).name,
            )
    else:
        raise DataError(
            f"{where}: dtype {array.dtype} is not a real number type; store floats"
        )


def _as_float(array: np.ndarray, dtype, where: str) -> np.ndarray:
    _check_float(array, dtype, where)
    return np.ascontiguousarray(array, dtype=dtype)


def _who(layer) -> str:
    return f"{type(layer).__name__} '{layer.label}'"


def read_source_list(layer: HDF5DataLayer) -> list[Path]:
    """Return the HDF5 paths named in the layer's source list file.

    A relative path is taken beside the list file. When no file is there
    but one is at the path relative to the current folder (Mocha's rule),
    that one is taken.
    """
    list_path = Path(layer.source)
    try:
        lines = list_path.read_text().splitlines()
    except OSError as error:
        raise DataError(
            f"{_who(layer)}: cannot read source list {list_path}: "
            f"{error.strerror}; pass a text file with one HDF5 path per line"
        ) from error
    except UnicodeDecodeError as error:
        hint = (
            "it is an HDF5 file itself; "
            if h5py.is_hdf5(str(list_path))
            else "it is not text; "
        )
        raise DataError(
            f"{_who(layer)}: source {list_path} is not a source list: {hint}pass "
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
        raise DataError(f"{_who(layer)}: source list {list_path} names no files")
    return paths


def _open_hdf5(layer, path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(
            f"{_who(layer)}: file {path}, listed in {layer.source}, does not exist "
            "(a relative path is looked up beside the list file, then in the "
            "current folder)"
        )
    if path.is_dir():
        raise DataError(
            f"{_who(layer)}: {path}, listed in {layer.source}, is a folder; list "
            "the HDF5 files in it, one path per line"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        # h5py's message goes on with HDF5's error stack (timestamps, addresses).
        raise DataError(
            f"{_who(layer)}: cannot open {path}, listed in {layer.source}, as "
            f"HDF5: {first_line(error)}; check that it is a complete HDF5 file"
        ) from error


class ScannedFile(NamedTuple):
    """A listed HDF5 file as scan_hdf5 found it."""

    path: Path
    rows: int
    # Per top: the dataset's (shape, dtype).
    layouts: tuple[tuple[tuple[int, ...], np.dtype], ...]


def scan_hdf5(layer: HDF5DataLayer, dtype) -> tuple[list[ScannedFile], list]:
    """Check every listed file's datasets without reading their values.

    Returns ([ScannedFile, ...], sample shape per top). A 1-D dataset has
    samples of shape (1,). Raises DataError naming the file and dataset when a
    dataset is missing, not numeric or a scalar. It is also raised when a
    dataset's row count differs from the first top's, when sample shapes
    differ between files, and when the files contain no samples. Integer
    datasets are logged as converted to ``dtype``.
    """
    files = []
    shapes_per_file = []
    for path in read_source_list(layer):
        with _open_hdf5(layer, path) as handle:
            rows = None
            shapes = []
            layouts = []
            for top in layer.tops:
                if isinstance(handle.get(top), h5py.Group):
                    raise DataError(
                        f"{_who(layer)}: in file {path}, '{top}' is a group, not a "
                        "dataset; each top names a dataset"
                    )
                if top not in handle:
                    raise DataError(
                        f"{_who(layer)}: file {path} has no dataset '{top}' (it has: "
                        f"{', '.join(handle.keys()) or 'none'}); each top names a "
                        "dataset"
                    )
                dataset = handle[top]
                _check_float(dataset, dtype, f"{_who(layer)}: {path}:{top}")
                if dataset.ndim == 0:
                    raise DataError(
                        f"{_who(layer)}: {path}:{top} is a scalar; store an (N, ...) "
                        "array"
                    )
                if rows is not None and dataset.shape[0] != rows:
                    raise DataError(
                        f"{_who(layer)}: in {path}, dataset '{top}' has "
                        f"{dataset.shape[0]} rows but '{layer.tops[0]}' has {rows}"
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
            f"{_who(layer)}: the files listed in {layer.source} hold no samples "
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
                f"{_who(layer)}: dataset '{top}' has different sample shapes across "
                f"files ({listing}); every file needs the same shape"
            )
        sample_shapes.append(shapes_per_file[0][position])
    return files, sample_shapes


def check_unchanged(layer, scanned: ScannedFile, handle: h5py.File) -> None:
    """Raise DataError when a dataset of the open file ``handle`` has another
    shape or kind of dtype than scan_hdf5 found, because the file was
    replaced or rewritten after the net was built on it."""
    for top, (shape, dtype) in zip(layer.tops, scanned.layouts):
        dataset = handle.get(top)
        if not isinstance(dataset, h5py.Dataset):
            found = "no dataset"
        elif dataset.shape != shape or dataset.dtype.kind != dtype.kind:
            found = f"shape {dataset.shape} and dtype {dataset.dtype}"
        else:
            continue
        raise DataError(
            f"{_who(layer)}: {scanned.path} changed after the net was built on it: "
            f"'{top}' now has {found}, but it had shape {shape} and dtype {dtype}; "
            "restore the file, or build a new Net for the new data"
        )


def load_hdf5(layer: HDF5DataLayer, dtype) -> tuple[list[np.ndarray], tuple]:
    """Read every top's dataset from every listed file, concatenated along N.

    Returns the arrays and (paths, starts), where starts[f] is the first row
    of file f.
    """
    files, sample_shapes = scan_hdf5(layer, dtype)
    arrays = []
    for top, shape in zip(layer.tops, sample_shapes):
        parts = []
        for scanned in files:
            with _open_hdf5(layer, scanned.path) as handle:
                check_unchanged(layer, scanned, handle)
                values = handle[top][()].reshape((scanned.rows,) + shape)
            parts.append(np.ascontiguousarray(values, dtype=dtype))
        arrays.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    starts = np.concatenate([[0], np.cumsum([scanned.rows for scanned in files])])
    return arrays, ([scanned.path for scanned in files], starts)


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
                _who(net.layers[index]),
                source.batch_size,
                source.n_samples,
                source.n_samples,
            )


def make_source(layer, dtype, rng):
    """Return the runtime data source of a data layer config."""
    if isinstance(layer, AsyncHDF5DataLayer):
        return AsyncHDF5Source(layer, np.dtype(dtype), rng)
    if isinstance(layer, HDF5DataLayer):
        # NOTE: the datasets are read into memory whole; data sets larger than
        # memory need AsyncHDF5DataLayer, which caches chunk_size samples.
        arrays, files = load_hdf5(layer, np.dtype(dtype))
        source = DataSource(layer, arrays, rng, layer.shuffle, dtype)
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
                f"MemoryDataLayer '{layer.label}': the data arrays have different "
                f"numbers of samples {[len(a) for a in layer.data]} along their "
                f"first axis ({shapes}); give every array the samples on its first "
                "axis, such as images (N, C, H, W) and labels (N, 1)"
            )
        return MemorySource(layer, rng, dtype)
    raise NotImplementedError(f"no data source for {type(layer).__name__}")


class MemorySource(DataSource):
    """Reads the layer's own arrays at every batch, so in-place edits show."""

    def __init__(self, layer: MemoryDataLayer, rng, dtype):
        # The dtype is checked once here, and next_batch converts the values
        # while copying them into the blobs.
        for top, array in zip(layer.tops, layer.data):
            _check_float(
                array, np.dtype(dtype), f"MemoryDataLayer '{layer.label}': top '{top}'"
            )
        super().__init__(layer, list(layer.data), rng, shuffle=False, dtype=dtype)


# --- AsyncHDF5DataLayer ---------------------------------------------------------


def _file_identity(path: Path) -> tuple | None:
    """Return what changes when a file is replaced or rewritten: device, inode,
    size and modification time; None when the file cannot be read."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class ChunkReader:
    """Rows of the concatenated HDF5 datasets, read ``chunk_size`` samples at a time.

    Sample i of the data set is row i of the files taken in list order. Chunk
    c contains samples c * chunk_size up to the next chunk. The reader caches the
    last CACHED_CHUNKS chunks it read, so in-order batches read each chunk once.
    A batch that needs more chunks than that (shuffled data larger than one
    chunk) is read row by row from the files instead, which bounds the memory
    at CACHED_CHUNKS chunks.

    Each read from a file first compares the file on disk with the one the
    reader opened. A replaced or rewritten file is opened again, and its
    datasets must keep the shapes and dtype kinds that scan_hdf5 found.
    """

    CACHED_CHUNKS = 2

    def __init__(self, layer, files: list[ScannedFile], sample_shapes, dtype):
        self.layer = layer
        self.files = files
        self.paths = [scanned.path for scanned in files]
        rows = np.array([scanned.rows for scanned in files], dtype=np.int64)
        # starts[f] is the first sample of file f; starts[-1] the sample count.
        self.starts = np.concatenate([[0], np.cumsum(rows)])
        self.sample_shapes = sample_shapes
        self.dtype = dtype
        self.chunk_size = layer.chunk_size
        self.cache: collections.OrderedDict[int, list[np.ndarray]] = (
            collections.OrderedDict()
        )
        self.handles: dict[int, h5py.File] = {}
        # Per open file: its identity when it was opened, from _file_identity.
        self.identities: dict[int, tuple | None] = {}

    def _handle(self, file_index: int) -> h5py.File:
        """Return the open file ``file_index``, reopened and checked again when
        the file on disk was replaced or rewritten since it was opened."""
        path = self.paths[file_index]
        identity = _file_identity(path)
        handle = self.handles.get(file_index)
        if handle is not None and identity == self.identities[file_index]:
            return handle
        if handle is not None:
            logger.info(
                "%s: %s changed on disk; opening it again", _who(self.layer), path
            )
            handle.close()
            del self.handles[file_index]
            # Cached chunks may contain rows of the old file.
            self.cache.clear()
        handle = _open_hdf5(self.layer, path)
        try:
            check_unchanged(self.layer, self.files[file_index], handle)
        except DataError:
            handle.close()
            raise
        self.handles[file_index] = handle
        self.identities[file_index] = identity
        return handle

    def _read_file_rows(self, file_index: int, rows) -> list[np.ndarray]:
        """Return rows (a slice or increasing row numbers) of one file, per top."""
        handle = self._handle(file_index)
        arrays = []
        for top, shape in zip(self.layer.tops, self.sample_shapes):
            values = np.asarray(handle[top][rows])
            arrays.append(values.reshape((-1,) + shape).astype(self.dtype, copy=False))
        return arrays

    def _read_range(self, start: int, stop: int) -> list[np.ndarray]:
        """Return samples start..stop-1, which may span several files."""
        parts = []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for file_index in range(first, len(self.paths)):
            begin = max(start, self.starts[file_index]) - self.starts[file_index]
            end = min(stop, self.starts[file_index + 1]) - self.starts[file_index]
            if begin < end:
                parts.append(self._read_file_rows(file_index, slice(begin, end)))
            if self.starts[file_index + 1] >= stop:
                break
        return [np.concatenate(per_top) for per_top in zip(*parts)]

    def _chunk(self, chunk: int) -> list[np.ndarray]:
        arrays = self.cache.get(chunk)
        if arrays is not None:
            self.cache.move_to_end(chunk)
            return arrays
        start = chunk * self.chunk_size
        stop = min(start + self.chunk_size, int(self.starts[-1]))
        arrays = self._read_range(start, stop)
        self.cache[chunk] = arrays
        while len(self.cache) > self.CACHED_CHUNKS:
            self.cache.popitem(last=False)
        return arrays

    def _read_rows(self, indices: np.ndarray) -> list[np.ndarray]:
        """Read the samples ``indices`` straight from the files, bypassing the cache."""
        unique, inverse = np.unique(indices, return_inverse=True)
        files = np.searchsorted(self.starts, unique, side="right") - 1
        parts = []
        for file_index in np.unique(files):
            local = unique[files == file_index] - self.starts[file_index]
            # h5py takes increasing row numbers, which np.unique guarantees.
            parts.append(self._read_file_rows(int(file_index), local.tolist()))
        return [np.concatenate(per_top)[inverse] for per_top in zip(*parts)]

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        """Return the samples ``indices`` of every top, in that order."""
        chunks = indices // self.chunk_size
        needed = np.unique(chunks)
        if len(needed) > self.CACHED_CHUNKS:
            return self._read_rows(indices)
        batches = [
            np.empty((len(indices),) + shape, dtype=self.dtype)
            for shape in self.sample_shapes
        ]
        for chunk in needed.tolist():
            arrays = self._chunk(chunk)
            mask = chunks == chunk
            local = indices[mask] - chunk * self.chunk_size
            for batch, array in zip(batches, arrays):
                batch[mask] = array[local]
        return batches

    def close(self):
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
        self.cache.clear()


class _Prefetcher:
    """A background thread that puts the next batches into a bounded queue.

    Each item is (batches, n_valid, indices, order state after the batch), or
    an exception the thread raised. The thread owns ``order`` and ``reader``
    until ``stop`` returns.
    """

    # Batches read ahead: one being copied into the net and one ready.
    DEPTH = 2

    def __init__(self, order: BatchOrder, reader: ChunkReader, transforms, name):
        self.queue: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run,
            args=(order, reader, transforms),
            name=f"mochac-prefetch-{name}",
            daemon=True,
        )
        self.thread.start()

    def _run(self, order, reader, transforms):
        while not self.stopping.is_set():
            try:
                indices, n_valid = order._indices()
                batches = reader.read(indices)
                apply_transformers(transforms, batches)
                item = (batches, n_valid, indices, order.state_dict())
            except Exception as error:  # noqa: BLE001 (next_batch raises it)
                self.queue.put(error)
                return
            self.queue.put(item)

    def get(self):
        """Return the next item, waiting for the thread to read it."""
        while True:
            try:
                return self.queue.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise DataError(
                        f"{self.thread.name}: the prefetch thread ended without a batch"
                    ) from None

    def stop(self):
        """End the thread and drop the batches it read ahead."""
        self.stopping.set()
        # Emptying the queue unblocks a pending put. The thread then checks the
        # event before it reads again, so at most one more item arrives.
        while self.thread.is_alive():
            self._drain()
            self.thread.join(timeout=0.1)
        self._drain()

    def _drain(self):
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass


def _shut_down(state: dict, reader: ChunkReader):
    """Stop the prefetch thread and close the files; safe to call twice."""
    prefetcher = state.pop("prefetcher", None)
    if prefetcher is not None:
        prefetcher.stop()
    reader.close()


class AsyncHDF5Source:
    """AsyncHDF5DataLayer's source: HDF5DataLayer's batches, read ahead in a thread.

    ``position``, ``epoch``, ``order`` and ``state_dict()`` describe the
    batches served so far, not those the thread has read ahead, so a snapshot
    resumes after the net's last batch. Loading a state or rewinding stops
    the thread; the next batch starts it again. ``close()`` (also run by
    ``Net.destroy`` and when the source is garbage collected) stops it for
    good and closes the files.
    """

    def __init__(self, layer: AsyncHDF5DataLayer, dtype, rng):
        self.layer = layer
        self.batch_size = layer.batch_size
        files, sample_shapes = scan_hdf5(layer, dtype)
        self.shapes = [(self.batch_size,) + shape for shape in sample_shapes]
        self.reader = ChunkReader(layer, files, sample_shapes, dtype)
        self.n_samples = int(self.reader.starts[-1])
        # Only the thread advances this order while it runs.
        self._order = BatchOrder(
            self.n_samples, self.batch_size, rng, layer.shuffle, _who(layer)
        )
        self._served = self._order.state_dict()
        self.transforms = prepare_transformers(layer, self.shapes, dtype)
        # The thread and the finalizer share this dict, not the source, so an
        # unreferenced source is collected and its thread stopped.
        self._thread_state: dict = {}
        self._finalizer = weakref.finalize(
            self, _shut_down, self._thread_state, self.reader
        )

    def describe_row(self, row: int) -> str:
        """Return how errors name data row ``row``, with its file (DataSource)."""
        return describe_row((self.reader.paths, self.reader.starts), row)

    @property
    def position(self) -> int:
        return int(self._served["position"])

    @property
    def epoch(self) -> int:
        return int(self._served["epoch"])

    @property
    def order(self):
        return self._served["order"]

    def next_batch(self, outputs: list[np.ndarray]) -> int:
        """Copy the next batch into ``outputs`` (one array per top); return n_valid."""
        prefetcher = self._thread_state.get("prefetcher")
        if prefetcher is None:
            prefetcher = _Prefetcher(
                self._order, self.reader, self.transforms, self.layer.label
            )
            self._thread_state["prefetcher"] = prefetcher
        item = prefetcher.get()
        if isinstance(item, Exception):
            self._stop_thread()
            if isinstance(item, DataError):
                raise item
            raise DataError(
                f"{_who(self.layer)}: reading the next batch from "
                f"{self.layer.source} failed: {item}"
            ) from item
        batches, n_valid, indices, served = item
        for batch, out in zip(batches, outputs):
            out[...] = batch.reshape(out.shape)
        self.last_indices = indices
        self._served = served
        check_finite_batch(self, outputs, indices)
        return n_valid

    def _stop_thread(self):
        prefetcher = self._thread_state.pop("prefetcher", None)
        if prefetcher is not None:
            prefetcher.stop()

    def _take_back_order(self):
        """Stop the thread and move the batch order back to the batches served."""
        self._stop_thread()
        self._order.load_state_dict(self._served)

    def rewind(self):
        """Start again at the first sample of a new epoch count (for validation)."""
        self._take_back_order()
        self._order.rewind()
        self._served = self._order.state_dict()

    def state_dict(self) -> dict:
        """Return the BatchOrder state after the last batch served, for snapshots."""
        return dict(self._served)

    def load_state_dict(self, state: dict):
        """Restore a state from state_dict(); raise SnapshotError, keeping the
        batches served so far, when it does not fit the data."""
        self._take_back_order()
        self._order.load_state_dict(state)
        self._served = self._order.state_dict()

    def check_state_dict(self, state: dict) -> None:
        """Raise SnapshotError when ``state`` does not fit the data; change nothing."""
        self._order.check_state_dict(state)

    def close(self):
        """Stop the prefetch thread and close the HDF5 files."""
        self._finalizer()
