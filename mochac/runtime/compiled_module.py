"""Load a net from a folder written by ``mochac compile``, without compiling.

The folder contains net.json (the layer configs and options), the compiled
extension and params.h5 (the parameters at compile time).

Loading reads no data file. A MemoryDataLayer comes back with zero arrays of
its compile-time shapes, which ``net.data_source(name).arrays[i] = new`` replaces
with arrays of any sample count. An HDF5DataLayer reads its source list at its first
batch (DeferredSource), relative to the working directory at that time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from mochac.codegen.build import cpu_signature, extension_problem
from mochac.errors import CompileError, ConfigError, DataError, SnapshotError
from mochac.file_locks import shared_folder_lock
from mochac.ir.graph import layer_display_name
from mochac.runtime.backend import CPUBackend
from mochac.runtime.data_sources import make_source
from mochac.runtime.outputs import PackageNet
from mochac.runtime.snapshot import load_snapshot
from mochac.serialize import from_json

logger = logging.getLogger(__name__)

METADATA = "net.json"
PARAMS = "params.h5"
# The net.json fields load_net reads. "deferred_sources", "extension_size"
# and "extension_sha256" are optional because packages written before they
# existed lack them.
REQUIRED_FIELDS = (
    "name",
    "dtype",
    "force_backward",
    "phase",
    "opt_level",
    "disable",
    "keep",
    "extension",
    "source_digest",
    "cpu",
    "layers",
)


def read_metadata(folder: Path) -> dict:
    """Return the parsed net.json of ``folder``.

    Raises CompileError when the file is missing, is not JSON or lacks a
    field, because a package in that state has to be compiled again.
    """
    path = folder / METADATA
    recompile = "run `mochac compile` again to rewrite the package"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CompileError(
            f"{path} is missing, so {folder} is not a complete package written by "
            f"`mochac compile`; {recompile}"
        ) from None
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise CompileError(
            f"{path} is not valid JSON ({error}); the compiled package is damaged: "
            f"{recompile}"
        ) from None
    missing = [
        name
        for name in REQUIRED_FIELDS
        if not isinstance(meta, dict) or name not in meta
    ]
    if missing:
        raise CompileError(
            f"{path} lacks the field(s) {', '.join(missing)}; the compiled package "
            f"is damaged: {recompile}"
        )
    return meta


def check_backend(folder: Path, meta: dict, backend) -> None:
    """Raise CompileError when ``backend`` cannot run the package's compiled
    code, and ConfigError when it is no backend."""
    compiled = np.dtype(meta["dtype"]).name
    if not hasattr(backend, "dtype"):
        raise ConfigError(
            f"{folder}: make_net takes a backend such as CPUBackend(), or nothing "
            f"for a new one, not {backend!r}"
        )
    if getattr(backend, "is_gpu", False):
        raise CompileError(
            f"{folder} contains compiled CPU code, and make_net takes a CPUBackend; "
            "for the GPU, build the net from its layers with "
            "Net(name, GPUBackend(), layers), which renders its own CUDA code"
        )
    requested = np.dtype(backend.dtype).name
    if requested != compiled:
        raise CompileError(
            f"{folder} was compiled for {compiled}, but the backend's dtype is "
            f"{requested}; pass a backend with dtype=np.{compiled}, or compile a "
            f"{requested} package: build the net with CPUBackend(dtype=np."
            f"{requested}) in its Python file and run `mochac compile` on it again"
        )


def load_net(folder, backend=None, *, module=None, attribute=None):
    """Return the Net stored in ``folder``, compiling nothing and reading no data file.

    ``module`` is the package's module name (the folder's name by default)
    and ``attribute`` the package attribute that will hold the net, such as
    "net" for the one the package builds on first use. Both only change the
    advice of the errors of its HDF5OutputLayer files, which name
    ``module.attribute``.

    Raises CompileError when net.json is missing or damaged, when the
    extension is missing or damaged (its size or SHA-256 differs from
    net.json's, or it is cut short), when the folder was built for another CPU, when
    ``backend`` is a GPU backend or has another dtype than the compiled code,
    or when this mochac renders different C for the stored layers. Raises
    SnapshotError when params.h5 is missing or damaged. Each message states
    the fix, most often to run `mochac compile` again.

    A `mochac compile` that replaces the package meanwhile waits until the
    files are read, so the net is built from one version of the package.
    """
    folder = Path(folder)
    # The compile renames packages into place under an exclusive lock on
    # their parent folder (module_writer.replace_package).
    with shared_folder_lock(folder.parent):
        return _load_net(folder, backend, module or folder.name, attribute)


def _load_net(folder: Path, backend, module: str, attribute: str | None):
    from mochac.runtime.net import Net

    folder = Path(folder)
    meta = read_metadata(folder)
    extension = folder / meta["extension"]
    if not extension.is_file():
        raise CompileError(
            f"{extension} is missing; the compiled package keeps the net's compiled "
            "code in it: run `mochac compile` again to rewrite the package",
            source_path=str(extension),
        )
    # Loading a truncated shared library can kill the process with SIGBUS, so
    # the file is checked before it is loaded.
    problem = extension_problem(
        extension, meta.get("extension_size"), meta.get("extension_sha256")
    )
    if problem is not None:
        raise CompileError(
            f"{extension} is damaged ({problem}), so the compiled package cannot "
            "be loaded; run `mochac compile` again to rewrite the package",
            source_path=str(extension),
        )
    if meta["cpu"] != cpu_signature():
        raise CompileError(
            f"{folder} was compiled for another CPU (its code uses that CPU's "
            "instruction set); run `mochac compile` again on this machine",
            source_path=str(extension),
        )
    if backend is None:
        backend = CPUBackend(dtype=np.dtype(meta["dtype"]), seed=meta.get("seed"))
    else:
        check_backend(folder, meta, backend)
    params = folder / PARAMS
    if not params.is_file():
        raise SnapshotError(
            f"{params} is missing; the compiled package keeps the net's parameters "
            "in it: run `mochac compile` again to rewrite the package"
        )
    layers = [from_json(item) for item in meta["layers"]]
    # Arrays already on the backend belong to nets built before this one
    # (a train net whose test net this is), and may have trained since.
    shared = {
        (key, name): backend.to_host(array).copy()
        for key, arrays in backend.registry.items()
        for name, array in arrays.items()
    }
    deferred = {
        int(index): entry for index, entry in meta.get("deferred_sources", {}).items()
    }

    def open_source(index, layer, dtype, rng):
        layer_name = layer_display_name(layer, index)
        entry = deferred.get(index)
        if entry is None:
            return make_source(layer, dtype, rng, layer_name)
        shapes = [tuple(shape) for shape in entry["shapes"]]
        return DeferredSource(
            layer, dtype, rng, shapes, entry.get("compiled_in"), name=layer_name
        )

    package = PackageNet(
        module,
        meta.get("source_file"),
        None if attribute is None else f"{module}.{attribute}",
    )
    net = Net(
        meta["name"],
        backend,
        layers,
        force_backward=meta["force_backward"],
        phase=meta["phase"],
        opt_level=meta["opt_level"],
        disable=meta["disable"],
        keep=meta["keep"],
        _prebuilt=(extension, meta["source_digest"]),
        _open_source=open_source,
        _package=package,
    )
    try:
        load_snapshot(net, params)
    except SnapshotError as error:
        raise SnapshotError(
            f"{error}; the compiled package {folder} is damaged: run `mochac "
            "compile` again to rewrite it"
        ) from error
    # The advice for an unreadable blob names the net file to compile again,
    # because a package's user builds no Net to pass keep= or disable= to.
    for views in (net.blobs, net.diffs):
        views.package = (
            str(folder),
            meta.get("source_file"),
            list(meta.get("disable") or []),
        )
    used = {id(array) for arrays in net.params.values() for array in arrays.values()}
    restored = []
    for (key, name), values in shared.items():
        array = backend.registry[key][name]
        if id(array) in used:
            array[...] = backend.to_device(values, array.dtype)
            restored.append(f"{key}.{name}")
    if restored:
        logger.info(
            "net '%s': kept the values of %s, shared with nets built earlier on "
            "this backend, instead of the package's",
            net.name,
            ", ".join(restored),
        )
    return net


class DeferredSource:
    """The data source of a compiled package's HDF5 data layer, opened at first use.

    Building the package's net thus reads no data file and works from any
    working directory. ``shapes`` are the top shapes recorded at compile time, to
    which the compiled code is fixed. The first batch, or the first use of an
    attribute of the real source (position, epoch, arrays, state_dict(),
    rewind(), ...), opens the layer's source list, relative to the working
    directory at that time. ``open(path)`` opens another source list in its
    place. Opening raises DataError when the files give other shapes.
    """

    def __init__(self, layer, dtype, rng, shapes, compiled_in=None, name=None):
        self.layer = layer
        # The net's name for the layer (ir.graph.layer_display_name), which
        # messages and net.data_source use.
        self.name = name or layer.label
        self.shapes = shapes
        self._dtype = dtype
        self._rng = rng
        self._compiled_in = compiled_in
        self._source = None
        # How many sources open() has made.
        self._opened = 0

    def open(self, source_list=None):
        """Open the layer's source list, or ``source_list`` in its place; return
        the real data source.

        Without ``source_list`` a source opened before is returned as it is.
        With it, a source opened before is closed once the new one is open.
        When the new one fails, the source opened before stays in use.
        """
        if source_list is None and self._source is not None:
            return self._source
        layer = self.layer
        if source_list is not None:
            layer = dataclasses.replace(layer, source=str(source_list))
        try:
            source = make_source(layer, self._dtype, self._rng, self.name)
        except DataError as error:
            # A path the user gave to open() needs no hint about where the
            # package was compiled.
            hint = "" if source_list is not None else self._where_hint(layer)
            raise DataError(f"{error}{hint}") from error
        found = [tuple(shape) for shape in source.shapes]
        if found != self.shapes:
            source.close()
            raise DataError(
                f"{type(layer).__name__} '{self.name}': the files in "
                f"{layer.source} give tops of shapes {found}, but the compiled "
                f"package was built for {self.shapes}; use data of the compiled "
                "shapes, or run `mochac compile` again with the new data"
            )
        self.close()
        if hasattr(source, "arrays_version"):
            # A data position of the source opened before is stale for this
            # one (DataSource.is_stale), so each opened source counts on.
            source.arrays_version = self._opened
        self._opened += 1
        self.layer = layer
        self._source = source
        return source

    def _where_hint(self, layer) -> str:
        """Return the hint for a relative source list missing from the working
        directory, or "" for any other failure."""
        path = Path(layer.source)
        if path.is_absolute() or path.exists():
            return ""
        hint = (
            f". This compiled package reads {path} relative to the working "
            f"directory {Path.cwd()}"
        )
        if self._compiled_in and Path(self._compiled_in) != Path.cwd():
            hint += f"; run from {self._compiled_in}, where it was compiled,"
        return (
            f"{hint} or point the layer at its source list with "
            f"net.data_source({self.name!r}).open('/path/to/list.txt')"
        )

    def next_batch(self, outputs) -> int:
        """Copy the next batch into ``outputs``, opening the source first if needed."""
        return self.open().next_batch(outputs)

    def close(self):
        """Close the real source, if it was opened."""
        if self._source is not None:
            self._source.close()

    def __getattr__(self, name):
        # Python calls this only for names not set in __init__: those of the
        # real source. Private names and the rows of a batch never served
        # (read by error messages through getattr with a default) open nothing.
        if name.startswith("_") or (name == "last_indices" and self._source is None):
            raise AttributeError(name)
        return getattr(self.open(), name)
