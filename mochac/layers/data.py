"""Data layers: HDF5DataLayer, AsyncHDF5DataLayer and MemoryDataLayer.

A data layer is a source: it has no bottoms, and the runtime fills its tops
with the next batch before each forward pass (see mochac.runtime.data_sources).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mochac.layers._checks import check_bool, check_int
from mochac.layers.base import Layer
from mochac.transformers import DataTransformer


def check_transformers(layer):
    """Normalize ``transformers`` to a tuple of (top, transformer) pairs, or fail."""
    try:
        entries = tuple(layer.transformers)
    except TypeError:
        layer._fail("transformers", layer.transformers, "a list of (top, transformer)")
    pairs = []
    for entry in entries:
        try:
            top, transformer = entry
        except (TypeError, ValueError):
            layer._fail("transformers", entry, "(top name, transformer) pairs")
        if top not in layer.tops:
            layer._fail(
                "transformers",
                entry,
                f"a top name among {list(layer.tops)} in each pair",
            )
        if not isinstance(transformer, DataTransformer):
            layer._fail(
                "transformers",
                entry,
                "a transformer such as DataTransformers.Scale(scale=0.5) in each pair",
            )
        pairs.append((top, transformer))
    object.__setattr__(layer, "transformers", tuple(pairs))


@dataclass(frozen=True, kw_only=True, eq=False)
class HDF5DataLayer(Layer):
    """Reads mini-batches from HDF5 files named in a source list.

    Fields (Mocha's defaults):
        source: path of a text file with one HDF5 file path per line. A
            relative path is taken from the list file's folder. When no file
            is there but one is at that path from the current folder
            (Mocha's rule), that one is read.
        batch_size: samples per batch (required).
        tops: blob names, default ["data", "label"]; each is also the name of
            the dataset read from every file.
        shuffle: default False; when True the samples are reshuffled every epoch.
        transformers: default []; (top name, transformer) pairs applied in
            order to each batch (see mochac.transformers).

    Datasets are (N, ...) arrays, samples along the first axis, stored as
    float32 or float64. Integer datasets are converted to floats, with a log
    line. Batches wrap around the end of the data; the epoch counter rises
    each time the last sample has been read.
    """

    source: str = ""
    batch_size: int = 0
    shuffle: bool = False
    tops: tuple[str, ...] = ("data", "label")
    transformers: tuple = ()

    n_bottoms = (0, 0)
    tops_match_bottoms = False
    is_source = True

    def validate(self):
        if not isinstance(self.source, str) or not self.source:
            self._fail("source", self.source, "the path of a source list file")
        check_int(self, "batch_size")
        check_bool(self, "shuffle")
        check_transformers(self)


@dataclass(frozen=True, kw_only=True, eq=False)
class AsyncHDF5DataLayer(HDF5DataLayer):
    """HDF5DataLayer that reads the next batches in a background thread.

    Fields: those of HDF5DataLayer, plus
        chunk_size: default 2**20; samples read from the files at a time and
            cached in memory. It bears no relation to the HDF5 datasets' own
            chunking.

    For the same seed it serves exactly the batches HDF5DataLayer serves,
    and its position saves to and restores from snapshots the same way.
    """

    chunk_size: int = 2**20

    def validate(self):
        super().validate()
        check_int(self, "chunk_size")


@dataclass(frozen=True, kw_only=True, eq=False)
class MemoryDataLayer(Layer):
    """Serves mini-batches from in-memory NumPy arrays, one array per top.

    Fields:
        batch_size: samples per batch (required).
        data: one array per top, samples along the first axis. The runtime
            reads these arrays at each batch, so changing their contents in
            place changes what the net reads. ``net.data_source(name).arrays``
            also takes new arrays of another sample count with the same
            sample shape, and the next batch starts at their first sample.
            A GPU net's training steps (train_step, solver_step,
            forward_backward) read the next batch during the current step:
            between steps, reach the arrays through a new net.data_source()
            call each time, or call net.drop_read_ahead() after changing them.
        tops: blob names, default ["data", "label"].
        transformers: default []; see HDF5DataLayer.
    """

    batch_size: int = 0
    data: tuple = field(default_factory=tuple)
    tops: tuple[str, ...] = ("data", "label")
    transformers: tuple = ()

    n_bottoms = (0, 0)
    tops_match_bottoms = False
    is_source = True

    def validate(self):
        check_int(self, "batch_size")
        arrays = self.data
        tops = ", ".join(self.tops)
        if isinstance(arrays, np.ndarray):
            arrays = (arrays,)
        # A dict or a string iterates over its keys or characters, which would
        # be reported as arrays of the wrong type.
        if isinstance(arrays, (dict, str, bytes)) or not isinstance(arrays, Iterable):
            self._fail(
                "data",
                type(arrays).__name__,
                f"a list of arrays, one per top ({len(self.tops)}: {tops})",
            )
        arrays = tuple(arrays)
        if len(arrays) != len(self.tops):
            given = (
                f"one array of shape {self.data.shape}"
                if isinstance(self.data, np.ndarray)
                else f"{len(arrays)} arrays"
            )
            self._fail(
                "data",
                given,
                f"a list of arrays, one per top ({len(self.tops)}: {tops})",
            )
        for top, array in zip(self.tops, arrays):
            if not isinstance(array, np.ndarray) or array.ndim < 1 or not len(array):
                self._fail(
                    "data",
                    type(array).__name__,
                    f"a non-empty NumPy array for top '{top}'",
                )
        object.__setattr__(self, "data", arrays)
        check_transformers(self)
