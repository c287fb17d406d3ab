"""Run a CudaProgram's steps on the host, to test kernels without a GPU.

The generated CUDA is compiled as C++ with one thread per block and one
block per grid: the kernels' grid-stride loops then visit every element in
order, the block reductions reduce one value, and __syncthreads has
nothing to wait for. GEMM steps run in NumPy with the runtime's row-major
reading of their operands, Zero and Copy on NumPy arrays. This checks the
templates, the planners and the step semantics; it cannot check CuPy,
streams or anything that depends on real parallel execution.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from mochac.codegen.cuda.steps import Copy, Gemm, Launch, Zero

# What nvcc and NVRTC provide implicitly, for a host compiler.
HOST_PRELUDE = r"""
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __shared__ static
struct mochac_index { unsigned x; };
static const mochac_index blockIdx = {0}, threadIdx = {0};
static const mochac_index blockDim = {1}, gridDim = {1};
static inline void __syncthreads(void) {}
static inline double __longlong_as_double(long long bits)
{
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline int atomicCAS(int *address, int compare, int value)
{
    int old = *address;
    if (old == compare)
        *address = value;
    return old;
}
"""


class Status(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_int),
        ("layer", ctypes.c_int),
        ("index", ctypes.c_longlong),
        ("value", ctypes.c_double),
    ]


def compile_for_host(program, folder: Path, stem: str) -> ctypes.CDLL:
    """Compile the program's CUDA source as a host shared library."""
    return compile_source_for_host(program.source, folder, stem)


def compile_source_for_host(cuda_source: str, folder: Path, stem: str) -> ctypes.CDLL:
    """Compile generated CUDA source as a host shared library."""
    source = cuda_source.replace("#define MOCHAC_BLOCK 256", "#define MOCHAC_BLOCK 1")
    assert "#define MOCHAC_BLOCK 1\n" in source
    path = folder / f"{stem}.cpp"
    path.write_text(HOST_PRELUDE + source)
    library = folder / f"lib{stem}.so"
    subprocess.run(
        ["g++", "-std=c++17", "-O1", "-shared", "-fPIC", str(path), "-o", str(library)],
        check=True,
        capture_output=True,
        text=True,
    )
    return ctypes.CDLL(str(library))


class HostRun:
    """The program's slots as NumPy arrays, and its steps run on them."""

    def __init__(self, program, library, offsets=None, arena_bytes=0):
        self.program = program
        self.library = library
        arena = np.zeros(arena_bytes, np.uint8)
        self.arrays = []
        for slot in program.slots.slots:
            if offsets and slot.index in offsets:
                start = offsets[slot.index]
                array = (
                    arena[start : start + slot.nbytes]
                    .view(slot.dtype)
                    .reshape(slot.shape)
                )
            else:
                array = np.zeros(slot.shape, slot.dtype)
            self.arrays.append(array)
        self.arena = arena
        self.pointers = (ctypes.c_void_p * len(self.arrays))(
            *[array.ctypes.data for array in self.arrays]
        )
        self.status = Status()

    def array(self, kind, owner, name=""):
        return self.arrays[self.program.slots.get(kind, owner, name).index]

    def run(self, steps, n_valid):
        self.status = Status()
        for step in steps:
            if isinstance(step, Launch):
                kernel = getattr(self.library, step.kernel)
                kernel.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
                kernel(self.pointers, n_valid, ctypes.byref(self.status))
            elif isinstance(step, Gemm):
                a, b, c = (self.matrix(o) for o in (step.a, step.b, step.c))
                a = a.T if step.trans_a else a
                b = b.T if step.trans_b else b
                c[...] = step.alpha * (a @ b) + step.beta * c
            elif isinstance(step, Zero):
                self.arrays[step.slot].reshape(-1)[: step.count] = 0
            elif isinstance(step, Copy):
                source = self.arrays[step.source].reshape(-1)[: step.count]
                self.arrays[step.target].reshape(-1)[: step.count] = source
            else:
                raise TypeError(step)
        return self.status

    def matrix(self, operand):
        flat = self.arrays[operand.slot].reshape(-1)
        end = operand.offset + operand.rows * operand.cols
        return flat[operand.offset : end].reshape(operand.rows, operand.cols)
