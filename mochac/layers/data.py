"""Data layers: HDF5DataLayer and MemoryDataLayer.

A data layer is a source: it has no bottoms, and the runtime fills its tops
with the next batch before each forward pass (see mochac.runtime.data_sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mochac.layers._checks import check_int
from mochac.layers.base import Layer


@dataclass(frozen=True, kw_only=True, eq=False)
class HDF5DataLayer(Layer):
    """Reads mini-batches from HDF5 files named in a source list.

    Fields (Mocha's defaults):
        source: path of a text file with one HDF5 file path per line; relative
            paths are taken from the list file's folder.
        batch_size: samples per batch (required).
        tops: blob names, default ["data", "label"]; each is also the name of
            the dataset read from every file.
        shuffle: default False; when True the samples are reshuffled every epoch.

    Datasets are (N, ...) arrays, samples along the first axis, stored as
    float32 or float64. Integer datasets are converted to floats, with a log
    line. Batches wrap around the end of the data; the epoch counter rises
    each time the last sample has been read.
    """

    source: str = ""
    batch_size: int = 0
    shuffle: bool = False
    tops: tuple[str, ...] = ("data", "label")

    n_bottoms = (0, 0)
    tops_match_bottoms = False
    is_source = True

    def validate(self):
        if not isinstance(self.source, str) or not self.source:
            self._fail("source", self.source, "the path of a source list file")
        check_int(self, "batch_size")
        if not isinstance(self.shuffle, bool):
            self._fail("shuffle", self.shuffle, "True or False")


@dataclass(frozen=True, kw_only=True, eq=False)
class MemoryDataLayer(Layer):
    """Serves mini-batches from in-memory NumPy arrays, one array per top.

    Fields:
        batch_size: samples per batch (required).
        data: one array per top, samples along the first axis. The runtime
            reads these arrays at each batch, so changing their contents in
            place changes what the net sees.
        tops: blob names, default ["data", "label"].
    """

    batch_size: int = 0
    data: tuple = field(default_factory=tuple)
    tops: tuple[str, ...] = ("data", "label")

    n_bottoms = (0, 0)
    tops_match_bottoms = False
    is_source = True

    def validate(self):
        check_int(self, "batch_size")
        arrays = self.data
        if isinstance(arrays, np.ndarray):
            arrays = (arrays,)
        arrays = tuple(arrays)
        if len(arrays) != len(self.tops):
            self._fail(
                "data", f"{len(arrays)} arrays", f"one array per top ({len(self.tops)})"
            )
        for top, array in zip(self.tops, arrays):
            if not isinstance(array, np.ndarray) or array.ndim < 1 or not len(array):
                self._fail(
                    "data",
                    type(array).__name__,
                    f"a non-empty NumPy array for top '{top}'",
                )
        object.__setattr__(self, "data", arrays)
