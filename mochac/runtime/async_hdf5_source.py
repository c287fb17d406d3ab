"""AsyncHDF5Source: the data source of AsyncHDF5DataLayer, which reads the
next batches from the HDF5 files in a background thread."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import weakref

import h5py
import numpy as np

from mochac.errors import DataError
from mochac.layers.data import AsyncHDF5DataLayer
from mochac.runtime.batch_checks import _who, check_finite_batch, describe_row
from mochac.runtime.batch_order import BatchOrder
from mochac.runtime.batch_transforms import apply_transformers, prepare_transformers
from mochac.runtime.file_digest import identity_or_none
from mochac.runtime.hdf5_files import (
    ScannedFile,
    _open_hdf5,
    check_in_range,
    check_unchanged,
    damaged_file_errors,
    scan_hdf5,
)

# The data sources' messages keep one logger name, whichever module they
# come from, so that a level or filter set on it covers them all.
logger = logging.getLogger("mochac.runtime.data_sources")


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

    def __init__(
        self, layer, files: list[ScannedFile], sample_shapes, dtype, name=None
    ):
        self.layer = layer
        # The net's name for the layer, which messages use.
        self.name = name or layer.label
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
        # Per open file: its identity when it was opened, from identity_or_none.
        self.identities: dict[int, tuple | None] = {}

    def _handle(self, file_index: int) -> h5py.File:
        """Return the open file ``file_index``, reopened and checked again when
        the file on disk was replaced or rewritten since it was opened."""
        path = self.paths[file_index]
        identity = identity_or_none(path)
        handle = self.handles.get(file_index)
        if handle is not None and identity == self.identities[file_index]:
            return handle
        if handle is not None:
            logger.info(
                "%s: %s changed on disk; opening it again",
                _who(self.layer, self.name),
                path,
            )
            handle.close()
            del self.handles[file_index]
            # Cached chunks may contain rows of the old file.
            self.cache.clear()
        handle = _open_hdf5(self.layer, path, self.name)
        try:
            with damaged_file_errors(self.layer, path, self.name):
                check_unchanged(self.layer, self.files[file_index], handle, self.name)
        except DataError:
            handle.close()
            raise
        self.handles[file_index] = handle
        self.identities[file_index] = identity
        return handle

    def _read_file_rows(self, file_index: int, rows) -> list[np.ndarray]:
        """Return rows (a slice or increasing row numbers) of one file, per top."""
        handle = self._handle(file_index)
        numbers = np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
        arrays = []
        for top, shape in zip(self.layer.tops, self.sample_shapes):
            with damaged_file_errors(self.layer, self.paths[file_index], self.name):
                values = np.asarray(handle[top][rows]).reshape((-1,) + shape)
            where = f"{self.paths[file_index]}:{top}"
            check_in_range(self.layer, values, self.dtype, where, self.name, numbers)
            arrays.append(values.astype(self.dtype, copy=False))
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

    def __init__(self, layer: AsyncHDF5DataLayer, dtype, rng, name=None):
        self.layer = layer
        # The net's name for the layer (ir.graph.layer_display_name), which
        # messages use.
        self.name = name or layer.label
        self.batch_size = layer.batch_size
        files, sample_shapes = scan_hdf5(layer, dtype, self.name)
        self.shapes = [(self.batch_size,) + shape for shape in sample_shapes]
        self.reader = ChunkReader(layer, files, sample_shapes, dtype, self.name)
        self.n_samples = int(self.reader.starts[-1])
        # Only the thread advances this order while it runs.
        self._order = BatchOrder(
            self.n_samples, self.batch_size, rng, layer.shuffle, _who(layer, self.name)
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
                self._order, self.reader, self.transforms, self.name
            )
            self._thread_state["prefetcher"] = prefetcher
        item = prefetcher.get()
        if isinstance(item, Exception):
            self._stop_thread()
            if isinstance(item, DataError):
                raise item
            raise DataError(
                f"{_who(self.layer, self.name)}: reading the next batch from "
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
