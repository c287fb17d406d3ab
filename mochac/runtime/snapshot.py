"""Snapshots: parameters and solver state in one HDF5 file.

Layout (a superset of Mocha's model files, so Mocha-style tools read it):
    /<layer>___<param>      every parameter, e.g. conv1___filter
    /solver                 attrs: method, iter, obj_val, learning_rate,
                            momentum; one group per state buffer of the
                            method (history/ for SGD and Nesterov,
                            first_moment/ and second_moment/ for Adam), each
                            with one dataset per parameter, named as above
    /data_layers/<layer>    attrs: position, epoch, rng; dataset order when
                            the layer shuffles

A file without /solver is a model: loading it starts training at iteration 0.
Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import h5py
import numpy as np

from mochac.errors import SnapshotError
from mochac.version import __version__

logger = logging.getLogger(__name__)

SNAPSHOT_PATTERN = re.compile(r"^snapshot-(\d+)\.h5$")


def dataset_name(layer: str, param: str) -> str:
    return f"{layer}___{param}"


def write_dataset(group, name: str, data) -> None:
    """Create dataset ``name`` in ``group``, with HDF5's Fletcher-32 checksum
    on every chunk, so that damaged bytes fail the read instead of loading."""
    data = np.asarray(data)
    checked = data.ndim > 0 and data.size > 0
    group.create_dataset(name, data=data, fletcher32=checked)


def first_line(error: Exception) -> str:
    """Return the first line of ``error``'s message; h5py's go on with
    library internals."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def read_dataset(dataset, path) -> np.ndarray:
    """Return the values of ``dataset``; raise SnapshotError naming the
    dataset and the file when HDF5 cannot read it (a failed checksum)."""
    try:
        return np.asarray(dataset[()])
    except OSError as error:
        raise SnapshotError(
            f"{path}: dataset {dataset.name} cannot be read ({first_line(error)}); "
            "the file is damaged: load an earlier snapshot"
        ) from error


def snapshot_path(folder, iteration: int) -> Path:
    return Path(folder) / f"snapshot-{iteration:06d}.h5"


def snapshot_iterations(folder) -> list[tuple[int, Path]]:
    """Return (iteration, path) of every snapshot in ``folder``; [] if it is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = SNAPSHOT_PATTERN.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return found


def latest_snapshot(folder) -> Path | None:
    """Return the snapshot with the highest iteration in ``folder``, or None."""
    found = snapshot_iterations(folder)
    return max(found)[1] if found else None


# The temporary name write_atomically uses: ".<name>.<process id>.tmp".
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")

# A temporary file left by a process that no longer runs is removed once it
# is this old. A writer on another host that shares the folder has a process
# id that means nothing here, and the age keeps its file while it writes.
STALE_TEMPORARY_SECONDS = 600

# Folders this process has already cleaned; each is scanned once.
_CLEANED_FOLDERS: set[Path] = set()


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files in ``folder`` left by killed writers.

    A run killed while writing (kill -9, power loss) leaves its temporary
    file behind; the finished file was never replaced, so nothing is lost.
    Each folder is scanned on the first write of this process only.
    """
    folder = folder.resolve()
    if folder in _CLEANED_FOLDERS:
        return
    _CLEANED_FOLDERS.add(folder)
    now = time.time()
    for entry in folder.iterdir():
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or int(match["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(match["pid"]), 0)
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            if now - entry.stat().st_mtime < STALE_TEMPORARY_SECONDS:
                continue
            entry.unlink()
        except OSError:
            continue
        logger.info("removed %s, left by a writer that was killed", entry)


def write_atomically(path: Path, fill) -> None:
    """Create ``path`` as HDF5 by calling ``fill(h5file)`` on a temporary file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(temporary, "w") as handle:
            fill(handle)
        os.replace(temporary, path)
        remove_stale_temporaries(path.parent)
    except OSError as error:
        raise SnapshotError(
            f"cannot write {path}: {error}; check that {path.parent} is a writable "
            "folder"
        ) from error
    finally:
        if temporary.exists():
            temporary.unlink()


def save_snapshot(path, net, solver_state=None, history=None, buffers=None) -> Path:
    """Write the net's parameters and, when given, the solver state to ``path``.

    ``buffers`` maps a buffer name to a dict from (layer, param) to the
    method's array for that parameter. ``history`` is short for
    ``buffers={"history": history}``, SGD's one buffer.
    """
    buffers = dict(buffers or {})
    if history is not None:
        buffers["history"] = history

    # A GPU net's arrays are on the device; h5py writes host copies.
    host = net.backend.to_host

    def fill(handle):
        handle.attrs["mochac_version"] = __version__
        handle.attrs["net"] = net.name
        for layer, params in net.params.items():
            for name, array in params.items():
                write_dataset(handle, dataset_name(layer, name), host(array))
        if solver_state is None:
            return
        group = handle.create_group("solver")
        for key, value in solver_state.to_attrs().items():
            group.attrs[key] = value
        for buffer_name, arrays in buffers.items():
            buffer_group = group.create_group(buffer_name)
            for (layer, name), array in arrays.items():
                write_dataset(buffer_group, dataset_name(layer, name), host(array))
        streams = handle.create_group("rng")
        for key, array in net.rng_states.items():
            write_dataset(streams, key, host(array))
        sources = handle.create_group("data_layers")
        for index, source in net.sources.items():
            state = source.state_dict()
            item = sources.create_group(net.ir.layers[index].name)
            item.attrs["position"] = state["position"]
            item.attrs["epoch"] = state["epoch"]
            item.attrs["rng"] = state["rng"]
            if state["order"] is not None:
                write_dataset(item, "order", state["order"])

    write_atomically(path, fill)
    logger.info("saved snapshot %s", path)
    return Path(path)


def open_model(path) -> h5py.File:
    if Path(path).is_dir():
        raise SnapshotError(
            f"{path} is a folder; name a snapshot or model file in it (a solver's "
            "load_from takes the folder and picks its newest snapshot)"
        )
    if not Path(path).exists():
        raise SnapshotError(
            f"snapshot or model file {path} does not exist; check the path"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        hint = ""
        if latest_snapshot(Path(path).parent) == Path(path):
            # A run resumed from this folder picks its newest snapshot, so
            # deleting this file helps only there.
            hint = (
                "; if it is the newest snapshot of an interrupted run, delete it "
                "to resume from the one before"
            )
        raise SnapshotError(
            f"cannot open snapshot or model file {path}: {first_line(error)}{hint}"
        ) from error


def load_params(handle, net, path, allow_missing=False) -> None:
    """Copy every parameter of ``net`` from an open file, checking shapes.

    A parameter missing from the file raises SnapshotError, unless
    ``allow_missing``, in which case it keeps its initial value and is logged.
    """
    missing = []
    for layer, params in net.params.items():
        for name, array in params.items():
            key = dataset_name(layer, name)
            if key not in handle:
                missing.append(f"{layer}.{name} (dataset {key})")
                continue
            stored = handle[key]
            if stored.shape != array.shape:
                raise SnapshotError(
                    f"layer '{layer}': parameter '{name}' in {path} has shape "
                    f"{stored.shape}, but the net expects {array.shape}; the file "
                    "was saved from a different architecture"
                )
            values = read_dataset(stored, path)
            if not np.all(np.isfinite(values)):
                raise SnapshotError(
                    f"layer '{layer}': parameter '{name}' (dataset {key}) in {path} "
                    "contains NaN or infinite values; the file is damaged or was "
                    "saved after training diverged"
                )
            array[...] = net.backend.to_device(values)
    if missing and not allow_missing:
        raise SnapshotError(
            f"{path} lacks parameters {', '.join(missing)} of net '{net.name}'; to "
            "keep their initial values, load it with load_snapshot(net, path, "
            "allow_missing=True)"
        )
    if missing:
        logger.info("%s lacks %s; kept their initial values", path, ", ".join(missing))


def load_snapshot(net, path, allow_missing=False) -> None:
    """Load the parameters stored in ``path`` into ``net`` (Mocha's load_snapshot)."""
    with open_model(path) as handle:
        load_params(handle, net, path, allow_missing)
    logger.info("net '%s': loaded parameters from %s", net.name, path)


def read_solver_buffers(group, path="the snapshot") -> dict:
    """Return {buffer name: {(layer, param): array}} from a /solver group."""
    buffers = {}
    for buffer_name, buffer_group in group.items():
        arrays = buffers[buffer_name] = {}
        for key, dataset in buffer_group.items():
            layer, _, name = key.rpartition("___")
            arrays[(layer, name)] = read_dataset(dataset, path)
    return buffers


def load_solver_state(handle, net, path):
    """Return (attrs, buffers) from a snapshot's /solver group and restore data layers.

    ``buffers`` maps each buffer name under /solver to a dict from
    (layer, param) to its array. Returns None when the file contains no solver
    state (a model file).
    """
    if "solver" not in handle:
        return None
    group = handle["solver"]
    attrs = dict(group.attrs)
    buffers = read_solver_buffers(group, path)
    streams = handle.get("rng")
    for key, array in net.rng_states.items():
        if streams is not None and key in streams:
            values = read_dataset(streams[key], path)
            array[...] = net.backend.to_device(values, array.dtype)
        else:
            logger.warning("%s has no state for random stream '%s'", path, key)
    sources = handle.get("data_layers")
    for index, source in net.sources.items():
        layer_name = net.ir.layers[index].name
        if sources is None or layer_name not in sources:
            logger.warning("%s has no state for data layer '%s'", path, layer_name)
            continue
        item = sources[layer_name]
        source.load_state_dict(
            {
                "position": item.attrs["position"],
                "epoch": item.attrs["epoch"],
                "rng": item.attrs["rng"],
                "order": read_dataset(item["order"], path) if "order" in item else None,
            }
        )
    return attrs, buffers
