"""The share of the machine: the linked BLAS alone on a net's GEMMs.

Lists the GEMMs one training iteration of a compiled net runs (their shapes
come from the lowered kernels), times them through the same OpenBLAS
library with the same thread count, and compares that time with the net's
whole iteration.

NOTE: a convolution's GEMMs are timed here as whole-batch products, while
the net runs them on chunks of images whose im2col columns stay in L2
(CONV_CHUNK_BYTES). On a 2-core AMD EPYC with 1 thread, LeNet's conv2
forward GEMM (50 x 4096 x 500) took 2.70 ms here, and the net's whole
conv2 forward, im2col included, 2.41 ms. So the share can exceed 100 %
(111 % for LeNet there) and bounds the GEMMs' cost only roughly.
"""

from __future__ import annotations

import functools
import os
import time

import cffi
import numpy as np

from mochac.codegen.build import blas_location

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


@functools.cache
def _blas():
    ffi = cffi.FFI()
    ffi.cdef(
        """
        void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float *,
                               int, const float *, int, float, float *, int);
        void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double *,
                               int, const double *, int, double, double *, int);
        void scipy_openblas_set_num_threads(int);
        """
    )
    _, lib_dir, name = blas_location()
    return ffi, ffi.dlopen(os.path.join(lib_dir, f"lib{name}.so"))


def gemm_shapes(net, direct=None) -> list[tuple[bool, bool, int, int, int]]:
    """Return (transpose A, transpose B, M, N, K) of every GEMM of one iteration.

    A direct convolution counts with the GEMMs im2col would run for it. With
    ``direct`` True or False, only the GEMMs of kernels that do or do not run
    as direct convolution code are listed.
    """
    shapes = []
    for kernel in net.kernels:
        is_direct = kernel.template == "c/convolution_direct.c.j2"
        if direct is not None and is_direct != direct:
            continue
        k = kernel.context
        if kernel.family == "convolution":
            for pair in k["pairs"]:
                shapes += [(False, False, k["FG"], k["NP"], k["K"])] * k["G"]
                if not k["in_backward"] or pair["dy"] is None:
                    continue
                if k["filter_grad"] is not None:
                    shapes += [(False, True, k["FG"], k["K"], k["NP"])] * k["G"]
                if pair["dx"] is not None:
                    shapes += [(True, False, k["K"], k["NP"], k["FG"])] * k["G"]
        elif kernel.family == "inner_product":
            for pair in k["pairs"]:
                shapes.append((False, True, pair["N"], k["O"], k["D"]))
                if not k["in_backward"] or pair["dy"] is None:
                    continue
                if k["weight_grad"] is not None:
                    shapes.append((True, False, k["O"], k["D"], pair["N"]))
                if pair["dx"] is not None:
                    shapes.append((False, False, pair["N"], k["D"], k["O"]))
    return shapes


def time_gemms(shapes, threads: int, dtype=np.float32, repeats: int = 20) -> float:
    """Return the median seconds the BLAS needs to run all ``shapes`` once."""
    ffi, lib = _blas()
    lib.scipy_openblas_set_num_threads(threads)
    gemm = (
        lib.scipy_cblas_sgemm
        if np.dtype(dtype) == np.float32
        else lib.scipy_cblas_dgemm
    )
    ctype = "float *" if np.dtype(dtype) == np.float32 else "double *"
    rng = np.random.default_rng(0)
    calls = []
    for trans_a, trans_b, m, n, k in shapes:
        a = rng.random(m * k).astype(dtype)
        b = rng.random(k * n).astype(dtype)
        c = np.zeros(m * n, dtype=dtype)
        lda = m if trans_a else k
        ldb = k if trans_b else n
        calls.append(
            (
                TRANS if trans_a else NO_TRANS,
                TRANS if trans_b else NO_TRANS,
                m,
                n,
                k,
                ffi.cast(ctype, a.ctypes.data),
                lda,
                ffi.cast(ctype, b.ctypes.data),
                ldb,
                ffi.cast(ctype, c.ctypes.data),
                n,
                (a, b, c),
            )
        )

    def run_all():
        for ta, tb, m, n, k, a, lda, b, ldb, c, ldc, _ in calls:
            gemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)

    run_all()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_all()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))
