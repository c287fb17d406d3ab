"""Load a net from a folder written by ``mochac compile``, without compiling.

The folder holds net.json (the layer configs and options), the compiled
extension and params.h5 (the parameters at compile time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mochac.codegen.build import source_key
from mochac.errors import CompileError
from mochac.runtime.backend import CPUBackend
from mochac.runtime.snapshot import load_snapshot
from mochac.serialize import from_json

METADATA = "net.json"
PARAMS = "params.h5"


def load_net(folder, backend=None):
    """Return the Net stored in ``folder``; raise CompileError if it is stale."""
    from mochac.runtime.net import Net

    folder = Path(folder)
    meta = json.loads((folder / METADATA).read_text())
    if backend is None:
        backend = CPUBackend(dtype=np.dtype(meta["dtype"]), seed=meta.get("seed"))
    layers = [from_json(item) for item in meta["layers"]]
    extension = folder / meta["extension"]
    net = Net(
        meta["name"],
        backend,
        layers,
        force_backward=meta["force_backward"],
        opt_level=meta["opt_level"],
        disable=meta["disable"],
        keep=meta["keep"],
        _prebuilt=extension,
    )
    if source_key(net.source) != meta["source_key"]:
        raise CompileError(
            f"{folder}: the compiled code no longer matches this mochac version or "
            "compiler; run `mochac compile` again",
            source_path=str(extension),
        )
    load_snapshot(net, folder / PARAMS)
    return net
