"""Output layers: MemoryOutputLayer and HDF5OutputLayer.

Both are sinks: they have bottoms and no tops, and after each forward pass
the runtime copies their bottoms out of the net (mochac.runtime.outputs).
The net keeps their bottoms readable, as if they were named in ``keep``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mochac.layers._checks import check_bool
from mochac.layers.base import Layer


@dataclass(frozen=True, kw_only=True, eq=False)
class OutputLayer(Layer):
    """Base of the sinks: at least one bottom, no tops, no backward."""

    n_tops = (0, 0)
    tops_match_bottoms = False
    is_sink = True

    def infer_shapes(self, bottom_shapes):
        return []


@dataclass(frozen=True, kw_only=True, eq=False)
class MemoryOutputLayer(OutputLayer):
    """A sink that collects its bottoms' data in memory after every forward pass.

    Fields:
        bottoms: the blobs to collect.

    ``net.output_states[name].outputs`` is a list with one list per bottom,
    holding a copy of that blob for each forward pass, whole batches included.
    """


@dataclass(frozen=True, kw_only=True, eq=False)
class HDF5OutputLayer(OutputLayer):
    """A sink that appends its bottoms' data to HDF5 datasets after every forward pass.

    Fields (Mocha's defaults):
        filename: the path of the HDF5 file (required). Missing parent folders
            are created. Building the net raises ConfigError when it names a
            folder, or the file of another HDF5OutputLayer in this net or in
            another net that was not destroyed.
        force_overwrite: default False. When the file already exists, building
            the net raises ConfigError unless this is True, in which case the
            file is replaced.
        datasets: default (): the dataset name of each bottom; empty uses the
            blob names.
        bottoms: the blobs to store.

    Each dataset is (samples, ...) with the blob's per-sample shape and the
    backend's dtype. The data go to a temporary file in the same folder,
    which replaces ``filename`` when the net is destroyed, so the file never
    contains a partly written batch. A net that is never destroyed moves its
    file into place when it is garbage collected or at interpreter exit,
    but only when it wrote at least one batch. A failed write deletes the
    temporary file.
    """

    filename: str = ""
    force_overwrite: bool = False
    datasets: tuple[str, ...] = ()

    def validate(self):
        if isinstance(self.filename, os.PathLike):
            object.__setattr__(self, "filename", os.fspath(self.filename))
        if not isinstance(self.filename, str) or not self.filename:
            self._fail("filename", self.filename, "the path of an HDF5 file")
        check_bool(self, "force_overwrite")
        names = self.datasets
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        if names and len(names) != len(self.bottoms):
            self._fail(
                "datasets",
                self.datasets,
                f"an empty list or one name per bottom ({len(self.bottoms)})",
            )
        if not all(isinstance(name, str) and name for name in names):
            self._fail("datasets", self.datasets, "non-empty dataset names (strings)")
        if len(set(names)) != len(names):
            self._fail("datasets", self.datasets, "distinct dataset names")
        object.__setattr__(self, "datasets", names)

    @property
    def dataset_names(self) -> tuple[str, ...]:
        """The dataset of each bottom: ``datasets`` or the blob names."""
        return self.datasets or self.bottoms
