"""Runtime state of output layers: where their bottoms go after each forward pass."""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from pathlib import Path

import h5py
import numpy as np

from mochac.errors import ConfigError, MochacError
from mochac.layers.output import HDF5OutputLayer, MemoryOutputLayer

logger = logging.getLogger(__name__)


class MemoryOutput:
    """In-memory copies of a MemoryOutputLayer's bottoms.

    ``outputs[i]`` lists, for bottom i, one array per forward pass.
    """

    def __init__(self, layer: MemoryOutputLayer):
        self.layer = layer
        self.outputs: list[list[np.ndarray]] = [[] for _ in layer.bottoms]

    def collect(self, blobs) -> None:
        for collected, bottom in zip(self.outputs, self.layer.bottoms):
            collected.append(blobs[bottom].copy())

    def close(self) -> None:
        """Keep the collected arrays; nothing to release."""


class HDF5Output:
    """An HDF5OutputLayer's file: written under a temporary name, renamed on close."""

    def __init__(self, layer: HDF5OutputLayer, shapes, dtype):
        self.layer = layer
        self.path = Path(layer.filename)
        if self.path.exists():
            if not layer.force_overwrite:
                raise ConfigError(
                    f"{layer.title}: file {self.path} already exists; pass "
                    "force_overwrite=True to replace it, or choose another filename"
                )
            logger.warning(
                "%s: %s exists and will be replaced (force_overwrite)",
                layer.title,
                self.path,
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            os.close(handle)
            self.temporary = Path(name)
            self.file = h5py.File(self.temporary, "w")
            for dataset, shape in zip(layer.dataset_names, shapes):
                self.file.create_dataset(
                    dataset,
                    shape=(0, *shape[1:]),
                    maxshape=(None, *shape[1:]),
                    dtype=dtype,
                    chunks=True,
                )
        except OSError as error:
            self._discard()
            raise MochacError(
                f"{layer.title}: cannot create {self.path}: {error}; check that "
                f"{self.path.parent} is a writable folder"
            ) from error
        # Renames the file at interpreter exit when the net is never destroyed.
        self._finalizer = weakref.finalize(
            self, HDF5Output._finish, self.file, self.temporary, self.path
        )

    def collect(self, blobs) -> None:
        """Append each bottom's batch to its dataset; on failure delete the file."""
        try:
            for dataset, bottom in zip(self.layer.dataset_names, self.layer.bottoms):
                data = blobs[bottom]
                target = self.file[dataset]
                start = target.shape[0]
                target.resize(start + len(data), axis=0)
                target[start:] = data
            self.file.flush()
        except (OSError, ValueError, TypeError) as error:
            self._discard()
            raise MochacError(
                f"{self.layer.title}: writing {self.path} failed: {error}; the "
                "partial file was deleted"
            ) from error

    def close(self) -> None:
        """Close the file and move it to ``filename``."""
        if self._finalizer.alive:
            self._finalizer()
            logger.info("%s: wrote %s", self.layer.title, self.path)

    def _discard(self) -> None:
        file = getattr(self, "file", None)
        if file is not None and file.id.valid:
            file.close()
        temporary = getattr(self, "temporary", None)
        if temporary is not None and temporary.exists():
            temporary.unlink()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()

    @staticmethod
    def _finish(file, temporary: Path, path: Path) -> None:
        if file.id.valid:
            file.close()
        if temporary.exists():
            os.replace(temporary, path)


def make_output_state(layer, shapes, dtype):
    """Return the runtime state of an output layer, given its bottoms' shapes."""
    if isinstance(layer, MemoryOutputLayer):
        return MemoryOutput(layer)
    if isinstance(layer, HDF5OutputLayer):
        return HDF5Output(layer, shapes, dtype)
    raise NotImplementedError(f"no runtime output for {type(layer).__name__}")
