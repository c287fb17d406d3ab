"""cuBLAS GEMMs called through ctypes, on a handle bound to a GPU net's stream.

CuPy's cuBLAS wrapper raises NotImplementedError on a capturing stream
(cupy_backends/cuda/libs/cublas.pyx). Users report it for CuPy 13.6 and
14.2. A training step with a GEMM therefore cannot become a CUDA graph
through CuPy, although cuBLAS itself supports stream capture. GPUNet therefore calls
``cublasSgemm_v2`` and ``cublasDgemm_v2`` of the libcublas that CuPy
loaded, with a handle of its own whose stream is the net's. Scalars are
passed in host pointer mode, which cuBLAS reads during the call, so a
graph keeps the values of the capture.

NOTE: unverified on a GPU, like GPUNet. The calls have run only against
tests/fake_cublas.c, a host library with cuBLAS's prototypes, and the
handle sets no workspace (cublasSetWorkspace). PyTorch stopped setting
one for captured calls from CUDA 12.2 on, but a device run has to show
that captured GEMMs need none here.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from mochac.errors import MochacError

logger = logging.getLogger(__name__)

# cublasOperation_t
OP_N, OP_T = 0, 1
STATUS_NAMES = {
    1: "CUBLAS_STATUS_NOT_INITIALIZED",
    3: "CUBLAS_STATUS_ALLOC_FAILED",
    7: "CUBLAS_STATUS_INVALID_VALUE",
    8: "CUBLAS_STATUS_ARCH_MISMATCH",
    11: "CUBLAS_STATUS_MAPPING_ERROR",
    13: "CUBLAS_STATUS_EXECUTION_FAILED",
    14: "CUBLAS_STATUS_INTERNAL_ERROR",
    15: "CUBLAS_STATUS_NOT_SUPPORTED",
}
GEMM_NAMES = {
    np.dtype(np.float32): "cublasSgemm_v2",
    np.dtype(np.float64): "cublasDgemm_v2",
}
SCALAR_TYPES = {
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


def loaded_library_paths(stem: str, maps: Path = Path("/proc/self/maps")) -> list[str]:
    """Return the paths of the shared libraries named ``stem`` that this
    process has loaded, in load order; ``libcublas.so`` matches
    ``libcublas.so.13`` but not ``libcublasLt.so.13``."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    paths = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        path = fields[5].strip()
        if Path(path).name.startswith(stem) and path not in paths:
            paths.append(path)
    return paths


def find_cublas(cupy) -> str | None:
    """Return the path of the libcublas that CuPy uses, or None.

    Creating CuPy's own handle of the current device makes CuPy load the
    library first. Where several are loaded (PyTorch brings its own), the
    one of CuPy's CUDA major version is taken.
    """
    try:
        cupy.cuda.device.get_cublas_handle()
        major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    except Exception as error:  # noqa: BLE001 - any failure means "not found"
        logger.debug("CuPy could not create a cuBLAS handle: %s", error)
        return None
    paths = loaded_library_paths("libcublas.so")
    for path in paths:
        if path.endswith(f".so.{major}") or f".so.{major}." in path:
            return path
    return paths[0] if paths else None


def _check(status: int, call: str) -> None:
    if status != 0:
        name = STATUS_NAMES.get(status, f"status {status}")
        raise MochacError(f"cuBLAS {call} failed with {name}")


class CublasLibrary:
    """The few libcublas functions mochac calls, with their C prototypes."""

    def __init__(self, path: str):
        self.path = path
        library = ctypes.CDLL(path)
        handle_p = ctypes.c_void_p
        self.create = library.cublasCreate_v2
        self.create.argtypes = [ctypes.POINTER(handle_p)]
        self.destroy = library.cublasDestroy_v2
        self.destroy.argtypes = [handle_p]
        self.set_stream = library.cublasSetStream_v2
        self.set_stream.argtypes = [handle_p, ctypes.c_void_p]

        self.gemms = {}
        for dtype, name in GEMM_NAMES.items():
            function = getattr(library, name)
            pointer = ctypes.c_void_p
            scalar = ctypes.POINTER(SCALAR_TYPES[dtype])
            function.argtypes = [
                handle_p,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                scalar,
                pointer,
                ctypes.c_int,
                pointer,
                ctypes.c_int,
                scalar,
                pointer,
                ctypes.c_int,
            ]
            self.gemms[dtype] = function

        for function in (
            self.create,
            self.destroy,
            self.set_stream,
            *self.gemms.values(),
        ):
            function.restype = ctypes.c_int


class CublasHandle:
    """A cuBLAS handle of the current device, bound to the stream ``stream_ptr``.

    Create it with the net's device current. The functions of
    ``gemm_call`` enqueue on that stream whichever stream is current.
    """

    def __init__(self, library: CublasLibrary, stream_ptr: int):
        self.library = library
        handle = ctypes.c_void_p()
        _check(library.create(ctypes.byref(handle)), "cublasCreate_v2")
        self.handle = handle
        try:
            self.set_stream(stream_ptr)
        except MochacError:
            library.destroy(handle)
            raise

    def set_stream(self, stream_ptr: int) -> None:
        """Bind the handle to the stream ``stream_ptr``, on which the
        functions of ``gemm_call`` enqueue from then on."""
        _check(self.library.set_stream(self.handle, stream_ptr), "cublasSetStream_v2")

    def gemm_call(self, trans_a: bool, trans_b: bool, a, b, c, alpha, beta):
        """Return a function that enqueues c = alpha op(a) op(b) + beta c.

        ``a``, ``b`` and ``c`` are C-ordered 2-D device arrays of one dtype.
        cuBLAS is column-major, and a C-ordered matrix read column-major is
        its transpose, so the call computes c^T = op(b)^T op(a)^T with the
        operands swapped.
        """
        dtype = np.dtype(c.dtype)
        for operand in (a, b, c):
            if operand.ndim != 2 or not operand.flags.c_contiguous:
                raise ValueError(
                    "CublasHandle.gemm_call: operands must be C-ordered matrices, "
                    f"got one of shape {operand.shape} and strides {operand.strides}"
                )
            if operand.dtype != dtype:
                raise ValueError(
                    "CublasHandle.gemm_call: operands must share one dtype, got "
                    f"{operand.dtype} beside {dtype}"
                )
        function = self.library.gemms[dtype]
        rows, cols = c.shape
        inner = a.shape[0] if trans_a else a.shape[1]
        scalar = SCALAR_TYPES[dtype]
        # byref() keeps the scalars alive with ``arguments``; cuBLAS reads
        # them during each call.
        alpha_value, beta_value = scalar(alpha), scalar(beta)
        arguments = (
            self.handle,
            OP_T if trans_b else OP_N,
            OP_T if trans_a else OP_N,
            cols,
            rows,
            inner,
            ctypes.byref(alpha_value),
            b.data.ptr,
            b.shape[1],
            a.data.ptr,
            a.shape[1],
            ctypes.byref(beta_value),
            c.data.ptr,
            cols,
        )
        name = GEMM_NAMES[dtype]

        def run():
            _check(function(*arguments), name)

        return run

    def close(self) -> None:
        if self.handle is not None:
            self.library.destroy(self.handle)
            self.handle = None


# Libraries by path, loaded once per process.
_LIBRARIES: dict[str, CublasLibrary] = {}


def host_mismatch(handle: CublasHandle, cupy, stream) -> str | None:
    """Run small GEMMs of every transpose combination and dtype on ``handle``
    and return a description of the first result that differs from NumPy's,
    or None when all agree.

    A wrong prototype or argument order in this module would otherwise
    corrupt every step of every net; this check costs a few milliseconds
    per net.
    """
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = rng.standard_normal((3, 2) if trans_a else (2, 3)).astype(dtype)
                b = rng.standard_normal((4, 3) if trans_b else (3, 4)).astype(dtype)
                c = rng.standard_normal((2, 4)).astype(dtype)
                op_a = a.T if trans_a else a
                op_b = b.T if trans_b else b
                expected = 0.5 * (op_a @ op_b) + 2.0 * c
                device_a, device_b, device_c = (cupy.asarray(x) for x in (a, b, c))
                stream.synchronize()
                handle.gemm_call(
                    trans_a, trans_b, device_a, device_b, device_c, 0.5, 2.0
                )()
                stream.synchronize()
                result = device_c.get()
                if not np.allclose(result, expected, rtol=1e-4, atol=1e-5):
                    return (
                        f"{np.dtype(dtype).name} GEMM with trans_a={trans_a}, "
                        f"trans_b={trans_b} gave {result.tolist()} instead of "
                        f"{expected.tolist()}"
                    )
    return None


def open_handle(cupy, stream) -> CublasHandle | None:
    """Return a handle of the current device bound to ``stream``, or None.

    None means that the libcublas CuPy uses cannot be found or called, or
    that its GEMMs differ from NumPy's (host_mismatch). GPUNet then calls
    cuBLAS through CuPy, whose GEMMs cannot be captured.
    """
    path = find_cublas(cupy)
    if path is None:
        logger.info(
            "libcublas not found among the loaded libraries; GEMMs go through "
            "CuPy, so steps with GEMMs run without CUDA graphs"
        )
        return None
    try:
        library = _LIBRARIES.get(path) or CublasLibrary(path)
        _LIBRARIES[path] = library
        handle = CublasHandle(library, stream.ptr)
    except (OSError, AttributeError, MochacError) as error:
        logger.warning(
            "cannot call %s directly (%s); GEMMs go through CuPy, so steps "
            "with GEMMs run without CUDA graphs",
            path,
            error,
        )
        return None
    try:
        mismatch = host_mismatch(handle, cupy, stream)
    except MochacError as error:
        mismatch = str(error)
    if mismatch is not None:
        handle.close()
        logger.warning(
            "GEMMs called on %s directly failed a check (%s); GEMMs go through "
            "CuPy, so steps with GEMMs run without CUDA graphs",
            path,
            mismatch,
        )
        return None
    return handle
