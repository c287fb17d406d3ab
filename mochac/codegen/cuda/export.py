"""Render a net for the CUDA backend without a device, and write it out.

``mochac compile --backend cuda`` writes what these functions return: the
CUDA source, which NVRTC compiles when a GPUNet loads it, and the step list
as JSON for readers and tools.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mochac.codegen.cuda.source import CudaProgram, render_cuda
from mochac.runtime.backend import CPUBackend


def build_cuda_program(
    name,
    layers,
    *,
    dtype=np.float32,
    opt_level=1,
    disable=(),
    keep=(),
    phase=None,
    force_backward=False,
    seed=0,
):
    """Return (IR, CudaProgram) of a net, as GPUNet would build them.

    Opens the data layers for their shapes and runs the passes; needs
    neither CuPy nor a device. Raises what Net raises for invalid layers.
    """
    from mochac.runtime.gpu_net import prepare_ir

    net = SimpleNamespace(name=name)
    backend = CPUBackend(dtype=dtype, threads=1, seed=seed)
    prepare_ir(net, backend, layers, force_backward, phase, opt_level, disable, keep)
    return net.ir, render_cuda(net.ir)


def steps_as_json(program: CudaProgram) -> dict:
    """Return the program's steps, per layer and in run order, as plain data."""

    def encode(step):
        return {"step": type(step).__name__.lower(), **dataclasses.asdict(step)}

    return {
        "layers": [
            {
                "index": steps.layer_index,
                "name": steps.name,
                "forward": [encode(step) for step in steps.forward],
                "backward": [encode(step) for step in steps.backward],
            }
            for steps in program.layers.values()
        ],
        "forward": [encode(step) for step in program.forward],
        "backward": [encode(step) for step in program.backward],
    }


def write_cuda_files(program: CudaProgram, folder, stem: str) -> list[Path]:
    """Write ``<stem>.cu`` and ``<stem>.steps.json`` into ``folder``; return
    their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{stem}.cu"
    source.write_text(program.source)
    steps = folder / f"{stem}.steps.json"
    steps.write_text(json.dumps(steps_as_json(program), indent=1) + "\n")
    return [source, steps]
