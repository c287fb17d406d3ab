"""Time single-threaded SGEMMs of chosen shapes through mochac's OpenBLAS.

Shows two things the generated code relies on: the filter gradient of a
convolution runs faster as (K x F) = col * diff^T than as (F x K) =
diff * col^T, and small SGEMMs run slower until the process has run a
large one (the NOTE at warm_blas in mochac/templates/c/net.c.j2).

    python benchmarks/gemm_shapes.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mochac.bench.blas_share import NO_TRANS, ROW_MAJOR, TRANS, _blas

# (M, N, K, transpose B): CIFAR-10 conv2 and conv1 filter gradients in both
# orientations, and LeNet conv2's forward GEMM for one image.
SHAPES = [
    (32, 800, 256, True),
    (800, 32, 256, True),
    (32, 75, 1024, True),
    (75, 32, 1024, True),
    (50, 64, 500, False),
]


def gemm_call(ffi, lib, m, n, k, trans_b):
    rng = np.random.default_rng(0)
    arrays = [
        rng.random(m * k, dtype=np.float32),
        rng.random(k * n, dtype=np.float32),
        np.zeros(m * n, dtype=np.float32),
    ]
    a, b, c = (ffi.cast("float *", array.ctypes.data) for array in arrays)
    ldb = k if trans_b else n
    op_b = TRANS if trans_b else NO_TRANS

    def call():
        lib.scipy_cblas_sgemm(
            ROW_MAJOR, NO_TRANS, op_b, m, n, k, 1.0, a, k, b, ldb, 0.0, c, n
        )

    return arrays, call


def best_seconds(call, calls=100, rounds=5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main():
    ffi, lib = _blas()
    lib.scipy_openblas_set_num_threads(1)
    for label in ("before a large GEMM", "after a 384^3 GEMM"):
        if label.startswith("after"):
            _, large = gemm_call(ffi, lib, 384, 384, 384, False)
            large()
        print(label)
        for m, n, k, trans_b in SHAPES:
            _, call = gemm_call(ffi, lib, m, n, k, trans_b)
            seconds = best_seconds(call)
            print(
                f"  {m:4} x {n:4} x {k:5}{' (B transposed)' if trans_b else '':15}"
                f" {1e6 * seconds:9.1f} us {2 * m * n * k / seconds / 1e9:6.1f} GFLOPS"
            )


if __name__ == "__main__":
    # Takes no options; --help shows the first line of the docstring.
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
