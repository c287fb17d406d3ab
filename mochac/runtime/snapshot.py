"""Snapshots: parameters and solver state in one HDF5 file.

Layout (a superset of Mocha's model files, so Mocha-style tools read it):
    /<layer>___<param>      every parameter, e.g. conv1___filter
    /solver                 attrs: method, iter, obj_val, learning_rate,
                            momentum; one group per state buffer of the
                            method (history/ for SGD and Nesterov,
                            first_moment/ and second_moment/ for Adam), each
                            with one dataset per parameter, named as above
    /rng/<layer>.<name>     the state of each random stream (dropout)
    /data_layers/<layer>    attrs: position, epoch, rng; dataset order when
                            the layer shuffles

/rng and /data_layers are written only with /solver. In a snapshot saved
by a solver's coffee break they hold the state from before the batch the
net loaded last (mochac.runtime.resume_point), so a resume loads that
batch again.
A file without /solver is a model: loading it starts training at iteration
0. A file named like the Snapshot coffee break's (snapshot-000120.h5) must
have /solver, because the coffee break always writes it. Files are written
under a temporary name and renamed when complete. save_snapshot also writes
the SHA-256 digest of the whole file beside it (snapshot-000120.h5.sha256,
see file_digest), which open_model checks before h5py parses the file.

Reading checks every value before it changes the net: each parameter and
buffer must be an IEEE float32 or float64 dataset of finite values, shaped
like its parameter. Any failure, including the errors h5py, NumPy and json
raise on a damaged file, raises SnapshotError naming the file and the item.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import (
    TEMPORARY_NAME,
    WriteGuard,
    close_quietly,
    process_may_run,
    special_file_kind,
    temporary_path,
    writer_may_run,
)
from mochac.errors import ConfigError, NumericalError, SnapshotError
from mochac.runtime import resume_point
from mochac.runtime.file_digest import (
    digest_path,
    replace_with_digest,
    verify_digest,
)
from mochac.runtime.freeze import frozen_layers
from mochac.runtime.interrupts import held_signals
from mochac.runtime.snapshot_checks import (
    SNAPSHOT_PATTERN,
    check_float_dataset,
    damage_advice,
    damaged,
    first_line,
    parsing,
    read_dataset,
    read_finite,
    shapes_match,
)
from mochac.version import __version__

logger = logging.getLogger(__name__)

# The /solver attribute with the names of the layers frozen when the
# snapshot was saved, a JSON list.
FROZEN_LAYERS = "frozen_layers"
# The /solver attribute with the coffee breaks due at the snapshot's
# iteration that had not run when it was saved: a JSON list of their
# indices in the order the solver added them (Solver._pending_breaks).
PENDING_BREAKS = "pending_breaks"
# The /solver attribute with a description of each coffee break of the
# saving solver, in the order it added them (pending_breaks.describe_break),
# a JSON list of strings. Snapshots of older versions lack it.
COFFEE_BREAKS = "coffee_breaks"

# The attributes of /solver that resuming reads, with their Python types.
SOLVER_ATTRIBUTES = {
    "method": str,
    "iter": int,
    "obj_val": float,
    "learning_rate": float,
    "momentum": float,
}

# The attributes of each /data_layers/<layer> group.
DATA_LAYER_ATTRIBUTES = ("position", "epoch", "rng")


def dataset_name(layer: str, param: str) -> str:
    return f"{layer}___{param}"


def write_dataset(group, name: str, data) -> None:
    """Create dataset ``name`` in ``group``, with HDF5's Fletcher-32 checksum
    on every chunk, so that damaged bytes fail the read instead of loading."""
    data = np.asarray(data)
    checked = data.ndim > 0 and data.size > 0
    group.create_dataset(name, data=data, fletcher32=checked)


def snapshot_path(folder, iteration: int) -> Path:
    return Path(folder) / f"snapshot-{iteration:06d}.h5"


def snapshot_iterations(folder) -> list[tuple[int, Path]]:
    """Return (iteration, path) of every snapshot in ``folder``; [] if it is missing.

    A snapshot appears only once complete, because write_atomically renames
    it into place after writing it and after its digest sidecar. A sidecar
    without its snapshot, left by a crash between the two renames, is not
    listed.
    """
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
        # A writer of this host that no longer runs left the file, which
        # goes at once; other files go once old enough.
        finished = not writer_may_run(match)
        if not finished and process_may_run(int(match["pid"])):
            continue
        try:
            if not finished and now - entry.stat().st_mtime < STALE_TEMPORARY_SECONDS:
                continue
            entry.unlink()
        except OSError:
            continue
        logger.info("removed %s, left by a writer that was killed", entry)


def write_hdf5(path: Path, fill) -> None:
    """Create the HDF5 file ``path`` and call ``fill(h5file)`` on it.

    HDF5 writes through a WriteGuard, so a full disk or a MemoryError in a
    write is raised here, after HDF5 closed the file. After a failed write of
    its own, HDF5 2.0 as bundled with h5py 3.16 crashes the process when the
    file object is freed or at exit (tests/test_full_disk.py).
    """
    with open(path, "wb"):
        pass
    stream = WriteGuard(path)
    try:
        with h5py.File(stream, "w") as handle:
            fill(handle)
    finally:
        close_quietly(None, stream)
    if stream.error is not None:
        raise stream.error


def write_atomically(path: Path, fill, digest: bool = False) -> None:
    """Create ``path`` as HDF5 by calling ``fill(h5file)`` on a temporary file
    (_write_atomically). A Ctrl-C waits until the file is in place."""
    with held_signals():
        _write_atomically(path, fill, digest)


def _write_atomically(path: Path, fill, digest: bool) -> None:
    """Create ``path`` as HDF5 by calling ``fill(h5file)`` on a temporary file.

    The temporary file replaces ``path`` only when complete, and an error
    in ``fill`` leaves no file. With ``digest``, the file goes in place
    with its SHA-256 sidecar through file_digest.replace_with_digest, so the
    file at ``path`` matches its sidecar at every moment and a kill never
    leaves it missing. Without ``digest``, a sidecar of an earlier file at
    ``path`` is deleted.
    """
    path = Path(path)
    if path.is_dir():
        raise SnapshotError(
            f"cannot write {path}: the path is an existing folder, not a file; "
            "choose a file name, or remove the folder"
        )
    kind = special_file_kind(path)
    if kind is not None:
        raise SnapshotError(
            f"cannot write {path}: the path is {kind}, not a regular file; "
            "choose a file name"
        )
    if path.is_symlink():
        # The new file replaces the file the link names, and the link stays,
        # as writing through the link would do. A rename onto the link itself
        # would replace the link with a regular file.
        path = Path(os.path.realpath(path))
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_hdf5(temporary, fill)
        if digest:
            replace_with_digest(temporary, path)
        else:
            digest_path(path).unlink(missing_ok=True)
            os.replace(temporary, path)
    except OSError as error:
        raise SnapshotError(
            f"cannot write {path}: {first_line(error)}; check that {path.parent} "
            "is a writable folder with free space"
        ) from error
    finally:
        if temporary.exists():
            temporary.unlink()
    try:
        remove_stale_temporaries(path.parent)
    except OSError as error:
        # The file is written; a folder that cannot be listed keeps its
        # leftovers.
        logger.debug("could not scan %s for leftovers: %s", path.parent, error)


def host_finite(array, to_host, label: str, path) -> np.ndarray:
    """Return the host copy of ``array``; raise NumericalError when it
    contains NaN or infinite values, which loading the snapshot would reject."""
    values = to_host(array)
    finite = np.isfinite(values)
    if not np.all(finite):
        bad = values.size - int(np.count_nonzero(finite))
        raise NumericalError(
            f"{label} contains {bad} NaN or infinite values of {values.size}, so "
            f"{path} was not written: training diverged. Lower the learning rate "
            "or the regularization coefficient, or resume from an earlier snapshot"
        )
    return values


def check_net_and_path(call: str, net, path, arguments: tuple) -> None:
    """Raise ConfigError when ``net`` is not a net or ``path`` is not a path,
    as when the two are swapped. ``call`` shows the expected order, and
    ``arguments`` are the values passed, in the order of the call."""
    is_net = hasattr(net, "params") and hasattr(net, "ir")
    if is_net and isinstance(path, (str, os.PathLike)):
        return
    types = ", ".join(type(value).__name__ for value in arguments)
    raise ConfigError(f"invalid arguments ({types}); call it as {call}")


def save_snapshot(path, net, solver_state=None, history=None, buffers=None) -> Path:
    """Write the net's parameters and, when given, the solver state to
    ``path`` (write_snapshot), and log the save."""
    path = write_snapshot(path, net, solver_state, history, buffers)
    logger.info("saved snapshot %s", path)
    return path


def write_snapshot(path, net, solver_state=None, history=None, buffers=None) -> Path:
    """Write the net's parameters and, when given, the solver state to ``path``,
    with the file's SHA-256 digest in ``<path>.sha256``; log nothing.

    ``buffers`` maps a buffer name to a dict from (layer, param) to the
    method's array for that parameter. ``history`` is short for
    ``buffers={"history": history}``, SGD's one buffer. Raises
    NumericalError, and writes nothing, when a parameter or buffer contains
    NaN or infinite values.
    """
    check_net_and_path("save_snapshot(path, net)", net, path, (path, net))
    # A destroyed net's arrays are gone; saving it would write an empty model.
    net._check_alive()
    if solver_state is None and SNAPSHOT_PATTERN.match(Path(path).name):
        raise ConfigError(
            f"save_snapshot: {path} is named like the Snapshot coffee break's "
            "files, which a resume reads as snapshots with a solver state, but "
            "no solver state was given; pass solver.state, or save the model "
            "under another name such as model.h5"
        )
    if solver_state is not None and not hasattr(solver_state, "to_attrs"):
        raise ConfigError(
            f"save_snapshot: invalid solver_state={solver_state!r}; expected a "
            "solver's state, solver.state, or None to save only the parameters"
        )
    buffers = dict(buffers or {})
    if history is not None:
        buffers["history"] = history

    # A GPU net's arrays are on the device; h5py writes host copies.
    host = net.backend.to_host
    params = {}
    for layer, arrays in net.params.items():
        for name, array in arrays.items():
            label = f"layer '{layer}': parameter '{name}'"
            params[dataset_name(layer, name)] = host_finite(array, host, label, path)
    solver_buffers = {}
    if solver_state is not None:
        for buffer_name, arrays in buffers.items():
            stored = solver_buffers[buffer_name] = {}
            for (layer, name), array in arrays.items():
                label = (
                    f"solver buffer '{buffer_name}' of layer '{layer}', parameter "
                    f"'{name}'"
                )
                stored[dataset_name(layer, name)] = host_finite(
                    array, host, label, path
                )

    def fill(handle):
        handle.attrs["mochac_version"] = __version__
        handle.attrs["net"] = net.name
        for key, values in params.items():
            write_dataset(handle, key, values)
        if solver_state is None:
            return
        group = handle.create_group("solver")
        for key, value in solver_state.to_attrs().items():
            group.attrs[key] = value
        # A resume leaves freezing to the user's script and only warns when
        # the frozen layers differ (snapshot_resume._warn_frozen_change).
        group.attrs[FROZEN_LAYERS] = json.dumps(sorted(frozen_layers(net)))
        pending = getattr(solver_state, "pending_breaks", [])
        group.attrs[PENDING_BREAKS] = json.dumps([int(index) for index in pending])
        descriptions = getattr(solver_state, "coffee_breaks", [])
        group.attrs[COFFEE_BREAKS] = json.dumps([str(item) for item in descriptions])
        for buffer_name, arrays in solver_buffers.items():
            buffer_group = group.create_group(buffer_name)
            for key, values in arrays.items():
                write_dataset(buffer_group, key, values)
        # During the solver's coffee breaks the net has already loaded the
        # next batch; the resume point is the state from before that load.
        point = net.resume_point or resume_point.capture(net)
        streams = handle.create_group("rng")
        for key, values in point.streams.items():
            write_dataset(streams, key, host(values))
        sources = handle.create_group("data_layers")
        for index, state in resume_point.source_states(net, point).items():
            item = sources.create_group(net.ir.layers[index].name)
            item.attrs["position"] = state["position"]
            item.attrs["epoch"] = state["epoch"]
            item.attrs["rng"] = state["rng"]
            if state["order"] is not None:
                write_dataset(item, "order", state["order"])

    try:
        write_atomically(path, fill, digest=True)
    except (TypeError, ValueError) as error:
        # h5py raises one of these when a path exists already; the layer name
        # checks (mochac.layers.base.hdf5_path_problem) leave only contrived
        # clashes such as layers "ip" and "ip___weight/x".
        raise SnapshotError(
            f"cannot write {path}: {first_line(error)}; two layer names map to the "
            "same HDF5 path: rename one of the layers"
        ) from error
    return Path(path)


def open_model(path) -> h5py.File:
    """Open a snapshot or model file for reading.

    The file's SHA-256 digest is checked first when it has a sidecar
    (file_digest). Raises SnapshotError when the file is missing, damaged or
    not HDF5.
    """
    if Path(path).is_dir():
        raise SnapshotError(
            f"{path} is a folder; name a snapshot or model file in it (a solver's "
            "load_from takes the folder and picks its newest snapshot)"
        )
    if not Path(path).exists():
        raise SnapshotError(
            f"snapshot or model file {path} does not exist; check the path"
        )
    kind = special_file_kind(path)
    if kind is not None:
        raise SnapshotError(
            f"{path} is {kind}, not a regular file; name a snapshot or model file"
        )
    # libhdf5 can crash on damaged metadata, so the digest goes first.
    # NOTE: a file without a digest file (snapshots of older versions, model
    # files from other tools) is parsed unchecked and can still crash it.
    if not verify_digest(path, damage_advice(path)) and SNAPSHOT_PATTERN.match(
        Path(path).name
    ):
        logger.info(
            "%s has no .sha256 file, so it is read without the digest check", path
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


def read_params(handle, net, path) -> tuple[dict, list[str]]:
    """Return ({(layer, param): values}, missing) for the parameters of ``net``
    in an open file, every value checked; ``missing`` lists those the file
    lacks."""
    values = {}
    missing = []
    for layer, params in net.params.items():
        for name, array in params.items():
            key = dataset_name(layer, name)
            if key not in handle:
                missing.append(f"{layer}.{name} (dataset {key})")
                continue
            label = f"layer '{layer}': parameter '{name}' (dataset {key})"
            stored = check_float_dataset(handle[key], path, label)
            _check_param_shape(stored.shape, array.shape, layer, name, path)
            values[(layer, name)] = read_finite(stored, path, label).reshape(
                array.shape
            )
    return values, missing


def _check_param_shape(stored, expected, layer, name, path) -> None:
    if not shapes_match(stored, expected):
        raise SnapshotError(
            f"layer '{layer}': parameter '{name}' in {path} has shape {stored}, but "
            f"the net expects {expected}; the file was saved from a different "
            "architecture, so load a snapshot or model file saved from this net"
        )


def check_param_shapes(handle, net, path) -> None:
    """Raise SnapshotError for a parameter stored with another shape than the
    net's, reading no values. Run before the solver state, whose buffers
    would otherwise report the file as damaged."""
    with parsing(path):
        for layer, params in net.params.items():
            for name, array in params.items():
                stored = handle.get(dataset_name(layer, name))
                if isinstance(stored, h5py.Dataset):
                    _check_param_shape(stored.shape, array.shape, layer, name, path)


def load_params(handle, net, path, allow_missing=False, missing_advice=None) -> None:
    """Copy every parameter of ``net`` from an open file, checking each first.

    A parameter missing from the file raises SnapshotError, unless
    ``allow_missing``, in which case it keeps its initial value and is logged.
    ``missing_advice`` replaces the error's advice, which suits
    load_snapshot. The net is changed only when every parameter passes.
    """
    with parsing(path):
        values, missing = read_params(handle, net, path)
    if missing and not allow_missing:
        if missing_advice is None:
            missing_advice = (
                "to keep their initial values, load it with load_snapshot(net, "
                "path, allow_missing=True)"
            )
        raise SnapshotError(
            f"{path} lacks parameters {', '.join(missing)} of net '{net.name}'; "
            f"{missing_advice}"
        )
    for (layer, name), stored in values.items():
        net.params[layer][name][...] = net.backend.to_device(stored)
    if missing:
        logger.info("%s lacks %s; kept their initial values", path, ", ".join(missing))


def unused_parameters(handle, net, path) -> list[str]:
    """Return the names of the parameter datasets in an open file that
    belong to no parameter of ``net``, such as those of a layer removed
    since the file was saved."""
    expected = {
        dataset_name(layer, name)
        for layer, arrays in net.params.items()
        for name in arrays
    }
    found = []

    def visit(relative, node):
        # A layer name with '/' makes nested groups, which are walked too.
        if relative.split("/")[0] in ("solver", "rng", "data_layers"):
            return
        if isinstance(node, h5py.Dataset) and "___" in relative:
            found.append(relative)

    with parsing(path):
        handle.visititems(visit)
    return sorted(name for name in found if name not in expected)


def load_snapshot(net, path, allow_missing=False) -> None:
    """Load the parameters stored in ``path`` into ``net`` (Mocha's load_snapshot)."""
    check_net_and_path("load_snapshot(net, path)", net, path, (net, path))
    # A destroyed net runs no more, so loading into it is a mistake. Its
    # parameters may be shared with live nets, which the load would change.
    net._check_alive()
    with open_model(path) as handle:
        load_params(handle, net, path, allow_missing)
    logger.info("net '%s': loaded parameters from %s", net.name, path)


def buffer_datasets(buffer_group, path, params):
    """Yield (layer, param, node) for each buffer dataset in ``buffer_group``.

    With ``params`` (net.params), only the net's parameters are looked up.
    Without it, the group is walked: a layer name with '/' makes nested
    groups, and an empty group named like a dataset is yielded so that the
    caller rejects it.
    """
    if params is not None:
        for layer, arrays in params.items():
            for name in arrays:
                key = dataset_name(layer, name)
                if key in buffer_group:
                    yield layer, name, buffer_group[key]
        return
    members = []
    buffer_group.visititems(lambda relative, node: members.append((relative, node)))
    for relative, node in members:
        layer, separator, name = relative.rpartition("___")
        if isinstance(node, h5py.Group) and (len(node) or not separator):
            continue
        if not separator:
            raise damaged(
                path,
                f"solver buffer dataset {node.name} is not named <layer>___<parameter>",
            )
        yield layer, name, node


def buffer_parameter_shape(group, layer: str, name: str, params) -> tuple:
    """Return the shape of the parameter that a buffer belongs to: the net's
    in ``params`` (net.params), or else the parameter dataset in the file;
    None when the file has no such parameter."""
    if params is not None:
        return tuple(params[layer][name].shape)
    stored = group.file.get(dataset_name(layer, name))
    return tuple(stored.shape) if isinstance(stored, h5py.Dataset) else None


def read_solver_buffers(group, path="the snapshot", params=None) -> dict:
    """Return {buffer name: {(layer, param): array}} from a /solver group.

    Every buffer must be an IEEE float32 or float64 dataset of finite values,
    shaped like its parameter: the net's when ``params`` (net.params) is
    given, else the parameter dataset stored in the same file. With
    ``params``, buffers of parameters the net lacks are left out. Raises
    SnapshotError naming the buffer, layer, parameter, shapes and file.
    """
    with parsing(path):
        if not isinstance(group, h5py.Group):
            raise damaged(path, "/solver is a dataset where a group was expected")
        buffers = {}
        for buffer_name, buffer_group in group.items():
            if not isinstance(buffer_group, h5py.Group):
                raise damaged(
                    path,
                    f"solver buffer '{buffer_name}' is a dataset where a group of "
                    "one dataset per parameter was expected",
                )
            arrays = buffers[buffer_name] = {}
            for layer, name, node in buffer_datasets(buffer_group, path, params):
                label = (
                    f"solver buffer '{buffer_name}' of layer '{layer}', parameter "
                    f"'{name}' (dataset {node.name})"
                )
                expected = buffer_parameter_shape(group, layer, name, params)
                if expected is None:
                    raise damaged(path, f"{label} belongs to no parameter in the file")
                stored = check_float_dataset(node, path, label)
                if stored.shape != expected:
                    raise damaged(
                        path,
                        f"{label} has shape {stored.shape}, but the parameter has "
                        f"shape {expected}",
                    )
                arrays[(layer, name)] = read_finite(stored, path, label)
    return buffers


def check_solver_attributes(group, path) -> dict:
    """Return the attributes of /solver, those in SOLVER_ATTRIBUTES converted
    to their Python types; raise SnapshotError for one missing or invalid."""
    attrs = {key: group.attrs[key] for key in group.attrs}
    for key, kind in SOLVER_ATTRIBUTES.items():
        if key not in attrs:
            raise damaged(path, f"/solver lacks the attribute '{key}'")
        value = attrs[key]
        if kind is str:
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            valid = isinstance(value, str)
        elif kind is int:
            valid = isinstance(value, (int, np.integer)) and not isinstance(
                value, (bool, np.bool_)
            )
            valid = valid and value >= 0
        else:
            valid = isinstance(value, (int, float, np.integer, np.floating))
            valid = valid and not isinstance(value, (bool, np.bool_))
            # The objective is NaN before the first forward pass.
            valid = valid and (key == "obj_val" or bool(np.isfinite(value)))
        if not valid:
            # NumPy scalars print as plain numbers, not np.int64(-3).
            plain = value.item() if isinstance(value, np.generic) else value
            raise damaged(
                path, f"/solver attribute '{key}' has the invalid value {plain!r}"
            )
        attrs[key] = kind(value)
    if FROZEN_LAYERS in attrs:
        attrs[FROZEN_LAYERS] = parse_frozen_layers(attrs[FROZEN_LAYERS], path)
    if PENDING_BREAKS in attrs:
        attrs[PENDING_BREAKS] = parse_pending_breaks(attrs[PENDING_BREAKS], path)
    if COFFEE_BREAKS in attrs:
        attrs[COFFEE_BREAKS] = parse_coffee_breaks(attrs[COFFEE_BREAKS], path)
        beyond = [
            index
            for index in attrs.get(PENDING_BREAKS, [])
            if index >= len(attrs[COFFEE_BREAKS])
        ]
        if beyond:
            raise damaged(
                path,
                f"/solver attribute '{PENDING_BREAKS}' lists coffee break index "
                f"{beyond[0]}, but '{COFFEE_BREAKS}' describes only "
                f"{len(attrs[COFFEE_BREAKS])} coffee breaks",
            )
    return attrs


def parse_json_list(value, path, name: str, valid_item, expected: str) -> list:
    """Return the list in the JSON text of the /solver attribute ``name``;
    raise SnapshotError unless it is a list whose items pass ``valid_item``."""
    text = (
        value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    )
    try:
        items = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(valid_item(item) for item in items):
        raise damaged(
            path,
            f"/solver attribute '{name}' has the invalid value {text!r}; expected "
            f"{expected}",
        )
    return items


def parse_pending_breaks(value, path) -> list[int]:
    """Return the indices of a /solver 'pending_breaks' attribute, a JSON list
    of integers >= 0; raise SnapshotError for any other value."""
    return parse_json_list(
        value,
        path,
        PENDING_BREAKS,
        lambda index: type(index) is int and index >= 0,
        "a JSON list of coffee break indices",
    )


def parse_coffee_breaks(value, path) -> list[str]:
    """Return the descriptions of a /solver 'coffee_breaks' attribute, a JSON
    list of strings; raise SnapshotError for any other value."""
    return parse_json_list(
        value,
        path,
        COFFEE_BREAKS,
        lambda description: isinstance(description, str),
        "a JSON list of coffee break descriptions such as 'Snapshot(every_n_iter=100)'",
    )


def parse_frozen_layers(value, path) -> frozenset[str]:
    """Return the layer names of a /solver 'frozen_layers' attribute, a JSON
    list of strings; raise SnapshotError for any other value."""
    names = parse_json_list(
        value,
        path,
        FROZEN_LAYERS,
        lambda name: isinstance(name, str),
        "a JSON list of layer names",
    )
    return frozenset(names)


def read_random_streams(handle, net, path) -> dict:
    """Return {stream key: values} of the net's random streams stored in the
    file, each checked against the stream's shape; missing ones are logged."""
    streams = handle.get("rng")
    if streams is not None and not isinstance(streams, h5py.Group):
        raise damaged(path, "/rng is a dataset where a group was expected")
    values = {}
    for key, array in net.rng_states.items():
        if streams is None or key not in streams:
            logger.warning(
                "%s has no state for random stream '%s'; it goes on from its "
                "current state, so the resumed run may draw other values than an "
                "uninterrupted one",
                path,
                key,
            )
            continue
        node = streams[key]
        label = f"random stream '{key}' (dataset {node.name})"
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "iu":
            raise damaged(path, f"{label} is not a dataset of integers")
        if node.shape != array.shape:
            raise damaged(
                path,
                f"{label} has shape {node.shape}, but the stream has shape "
                f"{array.shape}",
            )
        values[key] = read_dataset(node, path)
    return values


def read_data_layer_states(handle, net, path) -> dict:
    """Return {layer index: state dict for load_state_dict} of the net's data
    layers stored in the file. apply_solver_state logs the missing ones.

    This checks the layout only. Whether a state fits the layer's current
    data is for the layer's load_state_dict to check.
    """
    sources = handle.get("data_layers")
    if sources is not None and not isinstance(sources, h5py.Group):
        raise damaged(path, "/data_layers is a dataset where a group was expected")
    states = {}
    for index in net.sources:
        layer_name = net.ir.layers[index].name
        if sources is None or layer_name not in sources:
            continue
        item = sources[layer_name]
        if not isinstance(item, h5py.Group):
            raise damaged(path, f"{item.name} is a dataset where a group was expected")
        for key in DATA_LAYER_ATTRIBUTES:
            if key not in item.attrs:
                raise damaged(
                    path, f"data layer '{layer_name}' lacks the attribute '{key}'"
                )
        rng = item.attrs["rng"]
        if isinstance(rng, bytes):
            rng = rng.decode("utf-8")
        order = None
        if "order" in item:
            node = item["order"]
            if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "iu":
                raise damaged(
                    path, f"{item.name}/order is not a dataset of sample indices"
                )
            order = read_dataset(node, path)
        states[index] = {
            "position": item.attrs["position"],
            "epoch": item.attrs["epoch"],
            "rng": rng,
            "order": order,
        }
    return states


def restore_data_layer(
    source, state: dict, layer_name: str, path, check_only: bool = False
) -> None:
    """Load ``state`` into a data layer's source; raise SnapshotError naming
    the file when it does not fit the layer's current data. With
    ``check_only``, only check it."""
    try:
        if check_only:
            source.check_state_dict(state)
        else:
            source.load_state_dict(state)
    except SnapshotError as error:
        raise SnapshotError(f"{path}: {error}") from error
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(
            f"{path}: data layer '{layer_name}': the saved state does not fit its "
            f"current data ({first_line(error)}); resume from a snapshot saved "
            "with this data, or load only the parameters with load_snapshot(net, "
            "path) and train from iteration 0"
        ) from error


def solver_group(handle, path):
    """Return the /solver group of an open file, or None for a model file.

    Raises SnapshotError when a file named like a snapshot has none, since
    the Snapshot coffee break always writes it, or when /solver is no group.
    """
    if "solver" not in handle:
        if SNAPSHOT_PATTERN.match(Path(path).name):
            raise damaged(
                path,
                "it has no solver state (/solver), which the Snapshot coffee "
                "break always writes (a model file named like a snapshot "
                "loads as a model once renamed)",
            )
        return None
    group = handle["solver"]
    if not isinstance(group, h5py.Group):
        raise damaged(path, "/solver is a dataset where a group was expected")
    return group


def read_solver_attributes(handle, path) -> dict | None:
    """Return the checked attributes of an open file's /solver group (see
    SOLVER_ATTRIBUTES), or None for a model file; changes nothing.

    Raises SnapshotError naming the file for a missing or invalid attribute
    and for any error h5py raises while reading them.
    """
    with parsing(path):
        group = solver_group(handle, path)
        return None if group is None else check_solver_attributes(group, path)


def load_solver_state(handle, net, path):
    """Return (attrs, buffers) from a snapshot's /solver group and restore the
    random streams and data layers.

    ``buffers`` maps each buffer name under /solver to a dict from
    (layer, param) to its array, checked against the net's parameters.
    Returns None when the file contains no solver state (a model file).
    Raises SnapshotError when a file named like a snapshot has none, and
    for any damaged or invalid item, before changing the net.
    """
    state = read_solver_state(handle, net, path)
    if state is None:
        return None
    apply_solver_state(net, state, path)
    return state.attrs, state.buffers


@dataclass
class StoredSolverState:
    """A snapshot's solver state, read and checked against a net."""

    attrs: dict
    buffers: dict
    streams: dict
    data_layers: dict


def read_solver_state(handle, net, path) -> StoredSolverState | None:
    """Read and check the solver state of a snapshot without changing the net.

    Returns None for a file without solver state (a model file). Raises
    SnapshotError for any damaged item, and for a data-layer state that
    does not fit its layer's current data.
    """
    with parsing(path):
        group = solver_group(handle, path)
        if group is None:
            return None
        attrs = check_solver_attributes(group, path)
        buffers = read_solver_buffers(group, path, net.params)
        streams = read_random_streams(handle, net, path)
        states = read_data_layer_states(handle, net, path)
    for index, state in states.items():
        layer_name = net.ir.layers[index].name
        restore_data_layer(net.sources[index], state, layer_name, path, check_only=True)
    return StoredSolverState(attrs, buffers, streams, states)


def apply_solver_state(net, state: StoredSolverState, path) -> None:
    """Restore the random streams and data layers of a state from
    read_solver_state."""
    for key, values in state.streams.items():
        array = net.rng_states[key]
        array[...] = net.backend.to_device(values, array.dtype)
    # Logged here rather than while reading, so that a file the resume then
    # rejects (another net's snapshot, say) adds no warning before its error.
    for index in net.sources:
        if index not in state.data_layers:
            logger.warning(
                "%s has no state for data layer '%s'; it reads on from its current "
                "position, so the resumed run may read other batches than an "
                "uninterrupted one",
                path,
                net.ir.layers[index].name,
            )
    for index, stored in state.data_layers.items():
        layer_name = net.ir.layers[index].name
        restore_data_layer(net.sources[index], stored, layer_name, path)
