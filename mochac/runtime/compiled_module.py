"""Load a net from a folder written by ``mochac compile``, without compiling.

The folder contains net.json (the layer configs and options), the compiled
extension and params.h5 (the parameters at compile time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mochac.codegen.build import cpu_signature
from mochac.errors import CompileError
from mochac.runtime.backend import CPUBackend
from mochac.runtime.snapshot import load_snapshot
from mochac.serialize import from_json

METADATA = "net.json"
PARAMS = "params.h5"


def load_net(folder, backend=None):
    """Return the Net stored in ``folder``, compiling nothing.

    Raises CompileError when the folder was built for another CPU, or when
    this mochac renders different C for the stored layers; either way
    `mochac compile` must run again.
    """
    from mochac.runtime.net import Net

    folder = Path(folder)
    meta = json.loads((folder / METADATA).read_text())
    extension = folder / meta["extension"]
    if meta["cpu"] != cpu_signature():
        raise CompileError(
            f"{folder} was compiled for another CPU (its code uses that CPU's "
            "instruction set); run `mochac compile` again on this machine",
            source_path=str(extension),
        )
    if backend is None:
        backend = CPUBackend(dtype=np.dtype(meta["dtype"]), seed=meta.get("seed"))
    layers = [from_json(item) for item in meta["layers"]]
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
    )
    load_snapshot(net, folder / PARAMS)
    return net
