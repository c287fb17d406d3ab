"""The CUDA backend's code generation: kernels from templates, GEMMs as steps.

``render_cuda(ir)`` returns a ``CudaProgram``: the CUDA source, the slot
table shared with the C backend, and the forward and backward step lists
that mochac.runtime.gpu_net executes. ``build_cuda_program`` and
``write_cuda_files`` (export.py) do the same from a layer list, without a
device.
"""

from mochac.codegen.cuda.export import (
    build_cuda_program,
    steps_as_json,
    write_cuda_files,
)
from mochac.codegen.cuda.source import CudaProgram, render_cuda

__all__ = [
    "CudaProgram",
    "build_cuda_program",
    "render_cuda",
    "steps_as_json",
    "write_cuda_files",
]
