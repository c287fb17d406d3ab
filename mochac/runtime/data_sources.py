"""Runtime state of data layers: where the next batch comes from.

Both sources serve (N, ...) arrays in order (or a per-epoch permutation),
wrapping around at the end. ``next_batch`` reports how many samples of the
batch came before the wrap, so that a validation pass counts each sample once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from mochac.errors import ConfigError, DataError
from mochac.layers import HDF5DataLayer, MemoryDataLayer

logger = logging.getLogger(__name__)


class DataSource:
    """Batches of a set of equally long arrays, one per top."""

    def __init__(self, layer, arrays: list[np.ndarray], rng, shuffle: bool):
        self.layer = layer
        self.arrays = arrays
        self.batch_size = layer.batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.position = 0
        self.epoch = 0
        self.order = self._new_order()

    @property
    def n_samples(self) -> int:
        return len(self.arrays[0])

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.batch_size,) + array.shape[1:] for array in self.arrays]

    def _new_order(self):
        return self.rng.permutation(self.n_samples) if self.shuffle else None

    def _indices(self) -> tuple[np.ndarray, int]:
        """Advance by one batch; return the sample indices and the count before a wrap."""
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

    def next_batch(self, outputs: list[np.ndarray]) -> int:
        """Copy the next batch into ``outputs`` (one array per top); return n_valid."""
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
        return valid

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
            "rng": json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict):
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        order = state.get("order")
        self.order = None if order is None or not self.shuffle else np.asarray(order)
        self.rng.bit_generator.state = json.loads(state["rng"])


def _check_float(array: np.ndarray, dtype, where: str):
    """Log a line when integer or bool values need converting to ``dtype``.

    Raises DataError for any other dtype that is not floating point.
    """
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        logger.info("%s: converting %s values to %s", where, array.dtype, dtype.name)
    elif not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{where}: dtype {array.dtype} is not numeric; store floats")


def _as_float(array: np.ndarray, dtype, where: str) -> np.ndarray:
    _check_float(array, dtype, where)
    return np.ascontiguousarray(array, dtype=dtype)


def read_source_list(layer: HDF5DataLayer) -> list[Path]:
    """Return the HDF5 paths named in the layer's source list file."""
    list_path = Path(layer.source)
    try:
        lines = list_path.read_text().splitlines()
    except OSError as error:
        raise DataError(
            f"HDF5DataLayer '{layer.label}': cannot read source list {list_path}: "
            f"{error.strerror}; pass a text file with one HDF5 path per line"
        ) from error
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        if not path.is_absolute():
            path = list_path.parent / path
        paths.append(path)
    if not paths:
        raise DataError(
            f"HDF5DataLayer '{layer.label}': source list {list_path} names no files"
        )
    return paths


def load_hdf5(layer: HDF5DataLayer, dtype) -> list[np.ndarray]:
    """Read every top's dataset from every listed file, concatenated along N."""
    per_top: list[list[np.ndarray]] = [[] for _ in layer.tops]
    for path in read_source_list(layer):
        if not path.exists():
            raise DataError(
                f"HDF5DataLayer '{layer.label}': file {path}, listed in "
                f"{layer.source}, does not exist"
            )
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise DataError(
                f"HDF5DataLayer '{layer.label}': cannot open {path} as HDF5: {error}"
            ) from error
        with handle:
            rows = None
            for position, top in enumerate(layer.tops):
                if isinstance(handle.get(top), h5py.Group):
                    raise DataError(
                        f"HDF5DataLayer '{layer.label}': in file {path}, '{top}' is a "
                        "group, not a dataset; each top names a dataset"
                    )
                if top not in handle:
                    raise DataError(
                        f"HDF5DataLayer '{layer.label}': file {path} has no dataset "
                        f"'{top}' (it has: {', '.join(handle.keys()) or 'none'}); each "
                        "top names a dataset"
                    )
                array = _as_float(handle[top][()], dtype, f"{path}:{top}")
                if array.ndim == 0:
                    raise DataError(
                        f"{path}:{top} is a scalar; store an (N, ...) array"
                    )
                if array.ndim == 1:
                    array = array.reshape(-1, 1)
                if rows is not None and len(array) != rows:
                    raise DataError(
                        f"HDF5DataLayer '{layer.label}': in {path}, dataset '{top}' "
                        f"has {len(array)} rows but '{layer.tops[0]}' has {rows}"
                    )
                rows = len(array)
                per_top[position].append(array)
    if not sum(len(part) for part in per_top[0]):
        # An empty source would make DataSource loop forever looking for a sample.
        raise DataError(
            f"HDF5DataLayer '{layer.label}': the files listed in {layer.source} hold "
            f"no samples (dataset '{layer.tops[0]}' has 0 rows)"
        )
    arrays = []
    paths = read_source_list(layer)
    for top, parts in zip(layer.tops, per_top):
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) > 1:
            listing = ", ".join(
                f"{path}: {part.shape[1:]}" for path, part in zip(paths, parts)
            )
            raise DataError(
                f"HDF5DataLayer '{layer.label}': dataset '{top}' has different sample "
                f"shapes across files ({listing}); every file needs the same shape"
            )
        arrays.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return arrays


def make_source(layer, dtype, rng) -> DataSource:
    """Return the runtime data source of a data layer config."""
    if isinstance(layer, HDF5DataLayer):
        # NOTE: the datasets are read into memory whole; data sets larger than
        # memory need a chunked reader.
        arrays = load_hdf5(layer, np.dtype(dtype))
        return DataSource(layer, arrays, rng, layer.shuffle)
    if isinstance(layer, MemoryDataLayer):
        lengths = {len(array) for array in layer.data}
        if len(lengths) > 1:
            raise ConfigError(
                f"MemoryDataLayer '{layer.label}': the data arrays have different "
                f"numbers of samples {[len(a) for a in layer.data]}"
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
        super().__init__(layer, list(layer.data), rng, shuffle=False)
