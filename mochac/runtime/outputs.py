"""Runtime state of output layers: where their bottoms go after each forward pass."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import weakref
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import (
    WriteGuard,
    close_quietly,
    replace_durably,
    special_file_kind,
    temporary_path,
)
from mochac.errors import ConfigError, MochacError, name_not_found
from mochac.layers.output import HDF5OutputLayer, MemoryOutputLayer
from mochac.runtime.interrupts import held_signals
from mochac.runtime.snapshot import remove_stale_temporaries

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


@dataclasses.dataclass(frozen=True)
class PackageNet:
    """The compiled package that builds a net, for the advice of output file errors.

    ``module`` is the package's module name and ``source_file`` the net file
    it was compiled from. ``attribute`` is the expression of the package's
    own ``net`` ("toy.net") for the net that attribute holds, and None for a
    net of make_net() or load_net().
    """

    module: str
    source_file: str | None = None
    attribute: str | None = None


# Resolved path -> (layer title, PackageNet or None) of the live HDF5Output
# writing it, in this process.
_PATHS_IN_USE: dict[Path, tuple[str, PackageNet | None]] = {}


class PendingFile:
    """An HDF5Output's temporary file, shared with the finalizer that moves it
    to its filename."""

    def __init__(
        self, title: str, file, stream, temporary: Path, path: Path, key: Path
    ):
        self.title = title
        self.file = file
        # The WriteGuard under ``file``.
        self.stream = stream
        self.temporary = temporary
        self.path = path
        # The resolved path, under which _PATHS_IN_USE lists the output.
        self.key = key
        self.batches = 0
        # Set by HDF5Output.close(): the net was destroyed.
        self.closing = False


def finish_file(pending: PendingFile) -> None:
    """Close the temporary file and move it to its filename.

    A finalizer that runs before the net was destroyed (garbage collection
    or interpreter exit) deletes a file without a batch instead, because its
    net most likely failed to build and an empty file must not replace an
    existing one. A failed move keeps the temporary file, which contains the
    data, and raises MochacError from close(). A finalizer logs it instead.
    """
    _PATHS_IN_USE.pop(pending.key, None)
    with held_signals():
        close_quietly(pending.file, pending.stream)
    if not pending.temporary.exists():
        return
    if pending.stream.error is not None:
        # The last writes, at the close, failed: the file is incomplete.
        pending.temporary.unlink()
        message = (
            f"{pending.title}: writing {pending.path} failed "
            f"({pending.stream.error!r}); the partial file was deleted. Check "
            f"that {pending.path.parent} has free space"
        )
        if pending.closing:
            raise MochacError(message)
        logger.error("%s", message)
        return
    if not pending.closing and pending.batches == 0:
        pending.temporary.unlink()
        return
    try:
        replace_durably(pending.temporary, pending.path)
    except OSError as error:
        message = (
            f"{pending.title}: moving the finished file {pending.temporary} to "
            f"{pending.path} failed ({error}); the data are in {pending.temporary}"
        )
        if pending.closing:
            raise MochacError(message) from error
        logger.error("%s", message)


def _check_filename(
    layer: HDF5OutputLayer, path: Path, key: Path, package: PackageNet | None
) -> None:
    """Raise ConfigError when ``path`` cannot be the layer's output file.

    ``package`` is set for the net of a compiled package, whose user cannot
    change the layer, so its messages give other fixes.
    """
    if path.is_dir() or layer.filename.endswith(("/", os.sep)):
        raise ConfigError(
            f"{layer.title}: filename {path} is a folder; name a file, such as "
            f"{path / 'output.h5'}"
        )
    kind = special_file_kind(path)
    if kind is not None:
        raise ConfigError(
            f"{layer.title}: filename {path} is {kind}, not a regular file, and the "
            "finished file would replace it; choose another filename"
        )
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"{layer.title}: filename {path} is inside {folder}, which is a "
                    "file, not a folder; choose another filename"
                )
            break
    if key in _PATHS_IN_USE:
        # An unreferenced net that was never destroyed keeps its output until
        # the garbage collector frees it, so collect such nets first. Their
        # finalizers may move their files into place.
        gc.collect()
    other = _PATHS_IN_USE.get(key)
    if other is not None:
        raise ConfigError(in_use_message(layer, path, *other))
    if path.exists():
        if not layer.force_overwrite:
            raise ConfigError(exists_message(layer, path, package))
        logger.warning(
            "%s: %s exists and will be replaced (force_overwrite)", layer.title, path
        )


def in_use_message(
    layer: HDF5OutputLayer, path: Path, other_title: str, other: PackageNet | None
) -> str:
    """Return the message for ``path`` being the output file of the live
    layer ``other_title``, of a compiled package's net when ``other`` is set."""
    start = f"{layer.title}: file {path} is already the output file of "
    if other is None:
        return start + (
            f"{other_title}, in this net or in another net that was not destroyed; "
            "give each HDF5OutputLayer its own filename, or call destroy() on the "
            "other net first"
        )
    if other.attribute is None:
        return start + (
            f"{other_title} of another net of the compiled package {other.module} "
            "(from make_net() or load_net()) that was not destroyed; call "
            "destroy() on that net first, or delete every reference to it"
        )
    attribute = other.attribute
    return start + (
        f"{attribute}, the net that the compiled package {other.module} built on "
        f"first use. Use {attribute} itself, or release it first. "
        f"`del {attribute}` frees the net once no other name refers to it, and "
        "writes its file only if the net ran a forward pass. "
        f"{attribute}.destroy() frees it at once and moves its file, even an "
        f"empty one, to {path}. After `del {attribute}`, the next use of "
        f"{attribute} builds a new net"
    )


def exists_message(
    layer: HDF5OutputLayer, path: Path, package: PackageNet | None
) -> str:
    """Return the message for an existing ``path`` without force_overwrite."""
    if package is None:
        return (
            f"{layer.title}: file {path} already exists; pass force_overwrite=True "
            "to replace it, or choose another filename"
        )
    where = "" if path.is_absolute() else f" in the working directory {Path.cwd()}"
    source_file = package.source_file or "the net file"
    return (
        f"{layer.title}: file {path} already exists{where}, and the net of the "
        f"compiled package {package.module} does not replace it. Move or delete "
        "the file, or run from another working directory. To replace the file "
        f"on every run, set force_overwrite=True on the layer in {source_file} "
        "and run `mochac compile` again"
    )


class HDF5Output:
    """An HDF5OutputLayer's file: written under a temporary name, renamed on close.

    Raises ConfigError when the filename is a folder, is inside a file,
    exists without force_overwrite, or is the filename of another live
    HDF5Output (compared after resolving links and relative paths).
    Missing parent folders are created. ``package`` is set for the net of a
    compiled package (PackageNet), and changes the advice of these errors.
    """

    def __init__(
        self, layer: HDF5OutputLayer, shapes, dtype, package: PackageNet | None = None
    ):
        self.layer = layer
        self.path = Path(layer.filename)
        key = self.path.resolve()
        _check_filename(layer, self.path, key, package)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A name with this host and process, unique among the live
            # outputs of this process (_PATHS_IN_USE), so that a later write
            # into the folder can tell a killed writer's file.
            self.temporary = temporary_path(self.path)
            with open(self.temporary, "wb"):
                pass
            remove_stale_temporaries(self.path.parent)
            self.stream = WriteGuard(self.temporary)
            self.file = h5py.File(self.stream, "w")
            for dataset, shape in zip(layer.dataset_names, shapes):
                self.file.create_dataset(
                    dataset,
                    shape=(0, *shape[1:]),
                    maxshape=(None, *shape[1:]),
                    dtype=dtype,
                    chunks=True,
                )
            self.file.flush()
            if self.stream.error is not None:
                raise self.stream.error
        except BaseException as error:
            self._discard()
            if not isinstance(error, OSError):
                raise
            raise MochacError(
                f"{layer.title}: cannot create {self.path}: {error}; check that "
                f"{self.path.parent} is a writable folder with free space"
            ) from error
        self._pending = PendingFile(
            layer.title, self.file, self.stream, self.temporary, self.path, key
        )
        _PATHS_IN_USE[key] = (layer.title, package)
        # Moves the file when the output is garbage collected or at interpreter
        # exit, if the net is never destroyed.
        self._finalizer = weakref.finalize(self, finish_file, self._pending)

    def collect(self, blobs) -> None:
        """Append each bottom's batch to its dataset; on failure delete the file.

        A Ctrl-C waits until the batch is written (held_signals).
        """
        with held_signals():
            try:
                for dataset, bottom in zip(
                    self.layer.dataset_names, self.layer.bottoms
                ):
                    data = blobs[bottom]
                    target = self.file[dataset]
                    start = target.shape[0]
                    target.resize(start + len(data), axis=0)
                    target[start:] = data
                self.file.flush()
                failure = self.stream.error
            except (OSError, RuntimeError, ValueError, TypeError) as error:
                failure = self.stream.error or error
            if failure is not None:
                self._discard()
                if not isinstance(failure, Exception):
                    # A KeyboardInterrupt or SystemExit inside a write.
                    raise failure
                raise MochacError(
                    f"{self.layer.title}: writing {self.path} failed: {failure}; "
                    f"the partial file was deleted. Check that {self.path.parent} "
                    "has free space"
                ) from failure
        self._pending.batches += 1

    def close(self) -> None:
        """Close the file and move it to ``filename``."""
        if self._finalizer.alive:
            self._pending.closing = True
            self._finalizer()
            logger.info("%s: wrote %s", self.layer.title, self.path)

    def discard_if_empty(self) -> None:
        """Delete the temporary file when no batch was written to it, so that
        ``filename`` stays as it was. A later close() then does nothing."""
        if self._finalizer.alive and self._pending.batches == 0:
            self._discard()

    def _discard(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            close_quietly(getattr(self, "file", None), stream)
        temporary = getattr(self, "temporary", None)
        if temporary is not None and temporary.exists():
            temporary.unlink()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
            _PATHS_IN_USE.pop(self._pending.key, None)


def make_output_state(layer, shapes, dtype, package: PackageNet | None = None):
    """Return the runtime state of an output layer, given its bottoms' shapes.

    ``package`` is set for the net of a compiled package (PackageNet).
    """
    if isinstance(layer, MemoryOutputLayer):
        return MemoryOutput(layer)
    if isinstance(layer, HDF5OutputLayer):
        return HDF5Output(layer, shapes, dtype, package)
    raise NotImplementedError(f"no runtime output for {type(layer).__name__}")


class OutputStates(dict):
    """Output layer name -> its runtime state (MemoryOutput or HDF5Output).

    An unknown name raises NotFoundError, which names the net and lists its
    output layers.
    """

    def __init__(self, net_name: str, entries=()):
        super().__init__(entries)
        self.net_name = net_name

    def __missing__(self, key):
        raise name_not_found(
            f"net '{self.net_name}' has no output layer named {key!r}",
            [key],
            self,
            "its output layers",
            "pass the name of one of its MemoryOutputLayer or HDF5OutputLayer layers",
        )
