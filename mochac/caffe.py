"""Import parameters trained by Caffe, exported to HDF5 as Mocha's tools do.

Mocha's dump_network_hdf5 tool writes one flat HDF5 file with a dataset
``<layer>___<param>`` per parameter, e.g. ``conv1___filter``, in Caffe's 4-D
blob shape (num, channels, height, width). The memory layouts agree with
mochac's, so only the shape is reconciled: a Caffe inner product weight of
(1, 1, out, in) fills mochac's (out, in), and a bias of (1, 1, 1, out) fills
(out,).

Translate the net by hand with Caffe's layer names first, then:

    net = Net("cifar10", backend, layers)
    load_caffe_hdf5(net, "cifar10.hdf5")
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from mochac.errors import ConfigError, SnapshotError
from mochac.runtime.snapshot import check_net_and_path, dataset_name, open_model
from mochac.runtime.snapshot_checks import (
    check_float_dataset,
    parsing,
    read_finite,
    shapes_match,
)

logger = logging.getLogger(__name__)

# Caffe's convolution and inner product layers may be exported without a bias.
OPTIONAL_PARAMS = ("bias",)

# The end of the missing-parameter error, naming the caller's own option.
CAFFE_MISSING_HINT = (
    "pass allow_missing=True to initialize them with their initializers"
)
NETWORK_MISSING_HINT = (
    "pass die_if_not_found=False to initialize them with their initializers"
)
# load_from has no such option, so the hint names the call that has one.
MODEL_MISSING_HINT = (
    "load the file with load_network(path, net, die_if_not_found=False) and "
    "leave load_from unset, to initialize them with their initializers"
)


def load_caffe_hdf5(net, path, allow_missing=False) -> dict[str, list[str]]:
    """Copy the parameters of ``net`` from a Caffe model exported to HDF5.

    Every parameter of every layer of ``net`` is looked up as the dataset
    ``<layer>___<param>``. Datasets of layers the net lacks are ignored, so
    the net may be a part of Caffe's. A missing bias keeps the value of its
    initializer, with a warning. Any other missing parameter raises
    SnapshotError, unless ``allow_missing``, in which case it is initialized
    by its initializer and logged. Layers that share one array through
    param_key fill it from whichever of their datasets the file holds, which
    must agree.

    Every dataset is read and checked before the first parameter changes,
    so nothing is changed when an error is raised. Raises SnapshotError
    naming the layer, parameter and file when a dataset is not IEEE float32
    or float64, contains NaN or infinite values or fails its checksum, when
    a stored shape does not fit (with both shapes), when the file's SHA-256
    sidecar, if any, does not match, and when the file cannot be opened.
    Returns {"loaded": [...], "initialized": [...]}, lists of dataset names.
    """
    check_net_and_path("load_caffe_hdf5(net, path)", net, path, (net, path))
    path = Path(path)
    with open_model(path) as handle:
        return _load(handle, net, path, allow_missing)


def load_network(file, net, die_if_not_found=True) -> dict[str, list[str]]:
    """Mocha's name for load_caffe_hdf5; ``file`` is a path or an open h5py.File.

    Raises ConfigError when ``file`` is an h5py.File that is already closed.
    """
    if isinstance(file, h5py.File):
        # A closed File is false, and reading even its filename raises
        # h5py's ValueError.
        if not file:
            raise ConfigError(
                "load_network(file, net): the h5py.File passed as file is closed; "
                "pass an open h5py.File or the path of the file"
            )
        check_net_and_path("load_network(file, net)", net, file.filename, (file, net))
        return _load(
            file, net, Path(file.filename), not die_if_not_found, NETWORK_MISSING_HINT
        )
    check_net_and_path("load_network(file, net)", net, file, (file, net))
    path = Path(file)
    with open_model(path) as handle:
        return _load(handle, net, path, not die_if_not_found, NETWORK_MISSING_HINT)


def load_model_file(handle, net, path: Path) -> dict[str, list[str]]:
    """Copy the parameters of ``net`` from an open model file, as
    load_caffe_hdf5 does. A missing bias is set again by its initializer,
    with a warning, and any other missing parameter raises SnapshotError."""
    return _load(
        handle, net, path, allow_missing=False, missing_hint=MODEL_MISSING_HINT
    )


def _read_checked(handle, net, path: Path):
    """Return (copies, optional_missing, missing): the values of every
    parameter found, each checked, and the parameters the file lacks.

    Layers that share one array through param_key each look up their own
    dataset. The datasets found fill the array and must agree, so the array
    counts as missing only when all of them are.
    """
    # id(array) -> (array, [(key, values)] found, [(key, spec)] missing),
    # in the order of the layers.
    arrays = {}
    for info in net.ir.layers:
        for spec in info.params:
            if spec.key is not None:
                # Another layer's array (a tied decoder's weight is its
                # encoder's): the owner's dataset fills it.
                continue
            key = dataset_name(info.name, spec.name)
            target = net.params[info.name][spec.name]
            _, found, absent = arrays.setdefault(id(target), (target, [], []))
            stored = handle.get(key)
            if stored is None:
                absent.append((key, spec))
                continue
            label = f"layer '{info.name}': parameter '{spec.name}' (dataset {key})"
            check_integer_dataset(stored, path, label)
            check_float_dataset(stored, path, label)
            if not shapes_match(stored.shape, target.shape):
                raise SnapshotError(
                    f"layer '{info.name}': parameter '{spec.name}' in {path} has shape "
                    f"{stored.shape}, but the net expects {target.shape}; check that "
                    "the translated layer has Caffe's geometry and number of outputs"
                )
            found.append((key, read_finite(stored, path, label)))
    copies, optional_missing, missing = [], [], []
    for target, found, absent in arrays.values():
        if found:
            key, values = found[0]
            for other, other_values in found[1:]:
                if not np.array_equal(
                    np.reshape(other_values, target.shape),
                    np.reshape(values, target.shape),
                ):
                    raise SnapshotError(
                        f"{path}: datasets {key} and {other} hold different values "
                        "for one array, which their layers share through "
                        "param_key; give the layers different param_key values, "
                        "or make the datasets equal"
                    )
            copies.append((key, target, values))
            continue
        key, spec = absent[0]
        if spec.name in OPTIONAL_PARAMS:
            optional_missing.append((key, target, spec))
        else:
            missing.append((key, target, spec))
    return copies, optional_missing, missing


def check_integer_dataset(node, path: Path, label: str) -> None:
    """Raise SnapshotError when ``node`` is a dataset of an integer dtype.

    A file that a user wrote with integer values is intact, so the message
    requests floats instead of calling the file damaged, as
    check_float_dataset does for other dtypes.
    """
    if not isinstance(node, h5py.Dataset):
        return
    if not isinstance(node.id.get_type(), h5py.h5t.TypeIntegerID):
        return
    raise SnapshotError(
        f"{path}: {label} has the integer dtype {node.dtype}, but a float dtype "
        "(float32 or float64) is expected; write the parameter's values as "
        "floats, such as with values.astype(np.float32)"
    )


def _load(
    handle, net, path: Path, allow_missing: bool, missing_hint: str = CAFFE_MISSING_HINT
) -> dict[str, list[str]]:
    # Check everything first, so that a failed import leaves the net as it was.
    with parsing(path):
        copies, optional_missing, missing = _read_checked(handle, net, path)
    if missing and not allow_missing:
        listing = "; ".join(
            f"layer '{key.rpartition('___')[0]}': parameter '{spec.name}' of shape "
            f"{target.shape} (dataset {key})"
            for key, target, spec in missing
        )
        raise SnapshotError(
            f"{path} lacks parameters of net '{net.name}': {listing}. Check that the "
            f"layers have Caffe's names, or {missing_hint}"
        )

    # Draw the initial values before changing anything.
    fresh = [
        (
            key,
            target,
            spec.initializer.init(target.shape, net.backend.rng, net.backend.dtype),
        )
        for key, target, spec in optional_missing + missing
    ]
    for key, target, values in copies:
        target[...] = net.backend.to_device(values.reshape(target.shape), target.dtype)
    initialized = []
    for key, target, values in fresh:
        # A GPU net's array is a CuPy array, which takes no NumPy array in
        # an assignment.
        target[...] = net.backend.to_device(values, target.dtype)
        initialized.append(key)
    if optional_missing:
        logger.warning(
            "%s has no %s; initialized from the layers' initializers",
            path,
            ", ".join(key for key, _, _ in optional_missing),
        )
    if missing:
        logger.info(
            "%s lacks %s; initialized from the layers' initializers",
            path,
            ", ".join(key for key, _, _ in missing),
        )
    loaded = [key for key, _, _ in copies]
    logger.info("net '%s': loaded %d parameters from %s", net.name, len(loaded), path)
    return {"loaded": loaded, "initialized": initialized}


__all__ = ["load_caffe_hdf5", "load_network", "shapes_match"]
