"""A stand-in for CuPy that keeps "device" arrays in host memory.

Tests install it in sys.modules, so GPUBackend and GPUNet run their real
code on machines without a GPU. RawModule compiles the generated CUDA for
the host, and each launch runs its real grid of blocks and threads on the
emulator of cuda_emulator.py. Arrays keep their data in NumPy buffers
but, like CuPy's, are not NumPy arrays and never convert to one implicitly
(see DeviceArray), and cuBLAS GEMMs run in NumPy.

Work on the null stream and on blocking streams runs when it is enqueued,
except under stream capture: between ``begin_capture`` and ``end_capture``
launches, GEMMs, memsets and copies are recorded with their arguments
instead of run, and the Graph replays them in order. Work on a
non-blocking stream (GPUNet's copy stream) runs as late as CUDA allows: only
when an event recorded after it is waited for, or the stream is
synchronized. A copy from a host buffer reads the buffer then, as a copy
from pinned memory does, so a missing wait shows up as wrong data.
``zeros`` fills new memory with NaN bytes and defers its memset on the null
stream. The memset runs before the next work on the null stream or a
blocking stream, before a host read of any array, and before a wait for an
event recorded after it. A non-blocking stream does not wait for it, as on a
device, so work there can run before the memset. It covers only the CuPy
calls mochac makes.

Where the host could run what a device rejects, the stand-in raises as
CuPy or CUDA would: a kernel argument whose type differs from the
kernel's parameter, a grid or block beyond CUDA's limits, ``set`` and
``get(out=...)`` with another shape or dtype, work on the legacy null
stream while a blocking stream captures, and waiting for a capturing
stream. Kernel launches and CuPy's GEMMs go to the current stream, the
one of the innermost ``with stream:`` block, and a capture records only
the work of the capturing stream.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from cuda_emulator import (
    EMULATED_BLOCK,
    KERNEL_HEADER,
    ORDERS,
    compile_source_for_host,
    load_host_library,
)
from cuda_emulator import launch as emulated_launch

# The number of devices getDeviceCount reports; tests of a second device
# raise it.
DEVICE_COUNT = 1
# The current device, which ``Device(index)`` sets within its block.
CURRENT_DEVICE = 0


# The TypeError message of cupy.ndarray.__array__, raised when NumPy requests
# the array's data (CuPy 8 and later). The wording is that of CuPy 12.
IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)

# The ndarray methods that CuPy's ndarray has too and whose results stay on
# the device: the stand-in runs them on the host buffer and wraps arrays
# and NumPy scalars in the result as device arrays.
DEVICE_METHODS = frozenset(
    (
        "all",
        "any",
        "argmax",
        "argmin",
        "astype",
        "clip",
        "copy",
        "cumsum",
        "diagonal",
        "dot",
        "fill",
        "flatten",
        "max",
        "mean",
        "min",
        "nonzero",
        "prod",
        "ravel",
        "repeat",
        "reshape",
        "round",
        "squeeze",
        "std",
        "sum",
        "swapaxes",
        "take",
        "trace",
        "transpose",
        "var",
        "view",
    )
)


# The DEVICE_METHODS that return a view of the array's memory: CuPy enqueues
# no work for them.
VIEW_METHODS = frozenset(("reshape", "squeeze", "swapaxes", "transpose", "view"))


class DeviceArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A device array kept in a host buffer, with the CuPy methods mochac
    uses.

    As with cupy.ndarray, it is not a numpy.ndarray: NumPy cannot read it
    implicitly (``numpy.asarray``, ``torch.from_numpy``), arithmetic and
    NumPy functions reject a NumPy array mixed with it, and ``get`` or
    ``asnumpy`` copy it to the host. Indexing returns device arrays, and
    ``float`` or ``int`` of a one-element array return a Python number.
    ``device_id`` is the device that was current when the array was
    allocated, as in CuPy, and views keep their base's.
    """

    __slots__ = ("_buffer", "device_id")

    def __init__(self, host, device_id=None):
        if not isinstance(host, np.ndarray):
            raise TypeError(f"DeviceArray wraps a numpy.ndarray, got {type(host)}")
        self._buffer = host
        self.device_id = CURRENT_DEVICE if device_id is None else device_id

    @property
    def _host(self):
        """The host buffer, once the memsets that ``zeros`` left on the null
        stream have run, because reading or writing the values waits for
        them on a device. Shapes, views and pointers use ``_buffer``."""
        Stream.null.run_pending()
        return self._buffer

    def _wrap(self, value):
        """Return ``value`` with host arrays and NumPy scalars as device
        arrays on this array's device, as CuPy returns them."""
        if isinstance(value, np.ndarray):
            return DeviceArray(value, self.device_id)
        if isinstance(value, np.generic):
            return DeviceArray(np.asarray(value), self.device_id)
        if isinstance(value, tuple):
            return tuple(self._wrap(item) for item in value)
        return value

    # NumPy's protocols: device data never mixes with host data implicitly.

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(device_operand(item) for item in inputs)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(device_operand(item) for item in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return self._wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        # NOTE: CuPy runs its own function of the same name and raises
        # TypeError where it has none; the stand-in runs every NumPy function.
        args = unwrap_device_arrays(args)
        kwargs = unwrap_device_arrays(kwargs)
        return self._wrap(func(*args, **kwargs))

    # CuPy's ndarray interface.

    @property
    def shape(self):
        return self._buffer.shape

    @property
    def dtype(self):
        return self._buffer.dtype

    @property
    def size(self):
        return self._buffer.size

    @property
    def ndim(self):
        return self._buffer.ndim

    @property
    def nbytes(self):
        return self._buffer.nbytes

    @property
    def itemsize(self):
        return self._buffer.itemsize

    @property
    def strides(self):
        return self._buffer.strides

    @property
    def flags(self):
        return self._buffer.flags

    @property
    def T(self):
        return self._wrap(self._buffer.T)

    @property
    def data(self):
        return types.SimpleNamespace(
            ptr=self._buffer.ctypes.data, device_id=self.device_id
        )

    def __getattr__(self, name):
        if name not in DEVICE_METHODS:
            raise AttributeError(f"'DeviceArray' object has no attribute '{name}'")
        # A new view enqueues no work, so it does not wait for a memset.
        buffer = self._buffer if name in VIEW_METHODS else self._host
        method = getattr(buffer, name)

        def call(*args, **kwargs):
            args = unwrap_device_arrays(args)
            kwargs = unwrap_device_arrays(kwargs)
            return self._wrap(method(*args, **kwargs))

        return call

    def __getitem__(self, key):
        key = unwrap_device_arrays(key)
        value = self._buffer[key]
        if isinstance(value, np.generic):
            # CuPy returns a 0-d view where NumPy returns a scalar.
            value = self._buffer[(*key, ...) if isinstance(key, tuple) else (key, ...)]
        return self._wrap(value)

    def __setitem__(self, key, value):
        self._host[unwrap_device_arrays(key)] = device_operand(value, assigned=True)

    def __len__(self):
        return len(self._host)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[index] for index in range(len(self)))

    # Converting one element synchronizes and copies it, as CuPy does.

    def __float__(self):
        return float(self._host)

    def __int__(self):
        return int(self._host)

    def __complex__(self):
        return complex(self._host)

    def __bool__(self):
        return bool(self._host)

    def __format__(self, spec):
        return format(self._host, spec)

    def __repr__(self):
        return repr(self._host)

    def __str__(self):
        return str(self._host)

    def item(self):
        return self._host.item()

    def tolist(self):
        return self._host.tolist()

    def get(self, stream=None, out=None):
        if stream is not None:
            stream.synchronize()
        if out is None:
            return np.array(self._host, copy=True)
        # CuPy copies the bytes, so it rejects an ``out`` that NumPy would
        # cast or broadcast into.
        check_host_copy("get", out, self.shape, self.dtype)
        out[...] = self._host
        return out

    def set(self, array, stream=None):
        check_host_copy("set", array, self.shape, self.dtype)

        def copy():
            # The copy waits for the null stream's memsets only where the
            # stream it runs on does.
            self._buffer[...] = array

        (stream or current_stream()).submit(copy)


def device_operand(value, assigned=False):
    """Return the host buffer of a device array, or a scalar unchanged, for
    an operand of a device array's arithmetic.

    CuPy's ufuncs and kernels reject NumPy arrays, lists and other objects
    with TypeError. Assigning into a device array takes a 0-d NumPy array
    as a scalar but rejects a larger one with ValueError, as
    ``cupy.ndarray.fill`` does (without CUPY_EXPERIMENTAL_SLICE_COPY).
    """
    if isinstance(value, DeviceArray):
        return value._host
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return value
    if assigned and isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
    raise TypeError(f"Unsupported type {type(value)}")


def unwrap_device_arrays(value):
    """Return ``value`` (an argument, or a list, tuple or dict of them) with
    device arrays replaced by their host buffers.

    A NumPy array raises TypeError, as CuPy's functions do for host arrays.
    """
    if isinstance(value, DeviceArray):
        return value._host
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap_device_arrays(item) for item in value)
    if isinstance(value, dict):
        return {key: unwrap_device_arrays(item) for key, item in value.items()}
    return value


def check_host_copy(method, host, shape, dtype):
    """Raise as CuPy's ndarray.set and ndarray.get(out=...) do for a host
    array that is not a C-contiguous NumPy array of the device array's shape
    and dtype."""
    if not isinstance(host, np.ndarray):
        raise TypeError(f"{method}: expected a numpy.ndarray, got {type(host)}")
    if host.dtype != dtype:
        raise TypeError(
            f"{method}: host array of {host.dtype}, device array of {dtype}"
        )
    if host.shape != tuple(shape):
        raise ValueError(f"{method}: host shape {host.shape}, device shape {shape}")
    if method == "get" and not host.flags.c_contiguous:
        raise ValueError(f"{method}: the output array must be C-contiguous")


def zeros(shape, dtype=float):
    """Return a new array with its memset enqueued on the current stream, as
    cupy.zeros does. Until the memset runs, the memory contains NaN bytes."""
    host = np.empty(shape, dtype)
    host.view(np.uint8)[...] = 0xFF
    array = DeviceArray(host)

    def memset():
        host.view(np.uint8)[...] = 0

    stream = current_stream()
    if stream is Stream.null and CAPTURING is None:
        stream.pending.append(memset)
    else:
        stream.submit(memset)
    return array


def asarray(array, dtype=None):
    """Copy a host array to the current device, as cupy.asarray does.

    A device array is returned as it is, unless ``dtype`` is another type."""
    if isinstance(array, DeviceArray):
        return array if dtype is None else array.astype(dtype, copy=False)
    return DeviceArray(np.array(array, dtype, copy=True))


def asnumpy(array, stream=None, out=None):
    """Return a host copy of a device array, or a host array unchanged, as
    cupy.asnumpy does."""
    if isinstance(array, DeviceArray):
        return array.get(stream=stream, out=out)
    if out is not None:
        out[...] = array
        return out
    return np.asarray(array)


class Device:
    """Stand-in for cupy.cuda.Device: device ``index`` is current within its
    ``with`` block."""

    def __init__(self, index):
        self.id = int(index)
        self.outer = []

    def __enter__(self):
        global CURRENT_DEVICE
        self.outer.append(CURRENT_DEVICE)
        CURRENT_DEVICE = self.id
        return self

    def __exit__(self, *exc):
        global CURRENT_DEVICE
        CURRENT_DEVICE = self.outer.pop()
        return False


# The calls recorded while a stream captures, or None, and that stream.
CAPTURED = None
CAPTURING = None
# The streams of the enclosing ``with stream:`` blocks, innermost last.
CURRENT_STREAMS = []


def current_stream():
    """Return the stream of the innermost ``with stream:`` block, else the
    null stream, as cupy.cuda.get_current_stream does."""
    return CURRENT_STREAMS[-1] if CURRENT_STREAMS else Stream.null


def enqueue(call):
    """Run ``call`` on the current stream."""
    current_stream().submit(call)


class Graph:
    def __init__(self, calls):
        self.calls = calls

    def launch(self, stream=None):
        stream = stream or current_stream()
        for call in self.calls:
            stream.submit(call)


class Event:
    """The point of a stream's work at which the event was recorded, and the
    host's clock then (for ``get_elapsed_time``)."""

    def __init__(self, stream=None, count=0):
        self.stream, self.count = stream, count
        self.time = time.perf_counter()

    def record(self, stream=None):
        stream = stream or current_stream()
        self.stream, self.count = stream, stream.done + len(stream.pending)
        self.time = time.perf_counter()

    def synchronize(self):
        if self.stream is not None:
            self.stream.run_until(self.count)


def get_elapsed_time(start, end):
    """Return the milliseconds between two recorded events."""
    return 1e3 * (end.time - start.time)


# Streams by their ``ptr``, so that runtime calls can find theirs.
STREAMS = {}
STREAM_POINTERS = itertools.count(1)


class Stream:
    def __init__(self, non_blocking=False):
        self.ptr = next(STREAM_POINTERS)
        STREAMS[self.ptr] = self
        # Only a non-blocking stream defers its work.
        self.lazy = non_blocking
        self.pending = []
        self.done = 0

    def submit(self, call):
        """Run ``call`` on this stream: now, when captured, or deferred.

        While a blocking stream captures, CUDA rejects work on the legacy
        null stream, which would have to wait for the capture
        (cudaErrorStreamCaptureImplicit), and the capture is invalidated.
        """
        if self is CAPTURING:
            CAPTURED.append(call)
        elif self is Stream.null and CAPTURING is not None and not CAPTURING.lazy:
            raise CUDARuntimeError(
                "cudaErrorStreamCaptureImplicit: work on the legacy null stream "
                "while a blocking stream captures"
            )
        elif self.lazy:
            self.pending.append(call)
        else:
            # Work on the null stream or a blocking stream starts after the
            # null stream's earlier work.
            Stream.null.run_pending()
            call()

    def run_pending(self):
        """Run the work this stream has deferred."""
        self.run_until(self.done + len(self.pending))

    def run_until(self, count):
        while self.done < count and self.pending:
            call = self.pending.pop(0)
            self.done += 1
            call()

    def record(self):
        return Event(self, self.done + len(self.pending))

    def wait_event(self, event):
        if self.lazy:
            self.pending.append(event.synchronize)
        else:
            event.synchronize()

    def synchronize(self):
        if self is CAPTURING:
            raise CUDARuntimeError(
                "cudaErrorStreamCaptureUnsupported: synchronizing a capturing stream"
            )
        self.run_pending()

    def __enter__(self):
        CURRENT_STREAMS.append(self)
        return self

    def __exit__(self, *exc):
        CURRENT_STREAMS.pop()
        return False

    def begin_capture(self, mode=None):
        global CAPTURED, CAPTURING
        if self is Stream.null:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        assert CAPTURED is None, "a stream is already capturing"
        CAPTURED, CAPTURING = [], self

    def end_capture(self):
        global CAPTURED, CAPTURING
        if self is not CAPTURING:
            raise CUDARuntimeError(
                "cudaErrorIllegalState: end_capture on a stream that is not capturing"
            )
        graph, CAPTURED, CAPTURING = Graph(CAPTURED), None, None
        return graph


Stream.null = Stream()
Stream.null.ptr = 0
STREAMS[0] = Stream.null


class CUDARuntimeError(RuntimeError):
    pass


COUNTER = itertools.count()
# The thread and block order of every launch (a key of cuda_emulator.ORDERS)
# and whether modules compile with the emulator's race check.
LAUNCH_ORDER = os.environ.get("MOCHAC_HOST_CUPY_ORDER", "shuffle")
if LAUNCH_ORDER not in ORDERS:
    raise ValueError(
        f"invalid MOCHAC_HOST_CUPY_ORDER={LAUNCH_ORDER!r}; expected one of "
        f"{', '.join(ORDERS)}"
    )
RACE_CHECK = os.environ.get("MOCHAC_HOST_CUPY_RACES", "") == "1"
# The seed of the next shuffled launch.
LAUNCH_SEEDS = itertools.count()
# The compiled modules of this process, removed when it exits.
MODULES = tempfile.TemporaryDirectory(prefix="mochac-host-cupy-")
# The library path and emulated source of each code compiled so far, by
# code and race check. A RawModule of code compiled before loads a copy of
# its library: the copy skips the compiler but has its own state, as each
# module on a device has.
COMPILED = {}


class CompileException(Exception):
    pass


class RawModule:
    """Generated CUDA compiled for the host; each launch runs its real grid
    of blocks and threads on the emulator of cuda_emulator.py.

    As in CuPy, the code compiles when the first kernel is looked up.
    """

    def __init__(self, code):
        self.code = code
        self.library = None

    def _compile(self):
        """Compile the code, or load a copy of the library compiled from the
        same code earlier in this process."""
        folder = Path(MODULES.name)
        stem = f"module{next(COUNTER)}"
        compiled = COMPILED.get((self.code, RACE_CHECK))
        if compiled is not None:
            library, emulated_source = compiled
            copy = folder / f"lib{stem}.so"
            shutil.copyfile(library, copy)
            return load_host_library(copy, emulated_source)
        try:
            library = compile_source_for_host(
                self.code, folder, stem, EMULATED_BLOCK, races=RACE_CHECK
            )
        except subprocess.CalledProcessError as error:
            raise CompileException(error.stderr) from error
        COMPILED[self.code, RACE_CHECK] = (
            Path(library._name),
            library.emulated_source,
        )
        return library

    def get_function(self, name):
        if self.library is None:
            self.library = self._compile()
        library = self.library
        # CuPy raises AttributeError too for a kernel the module lacks.
        getattr(library, name)
        parameters = kernel_parameters(self.code, name)

        def launch(grid, block, args):
            check_launch_shape(name, grid, block)
            # The library's blocks have EMULATED_BLOCK threads. A kernel
            # launched with one thread (mochac_check_losses) returns at once
            # on every thread but thread 0, so it runs on a full block here.
            assert block in ((EMULATED_BLOCK,), (1,)), f"{name}: block {block}"
            if len(args) != len(parameters):
                raise TypeError(
                    f"kernel {name} takes {len(parameters)} arguments "
                    f"({', '.join(parameters)}), got {len(args)}"
                )
            converted = [
                kernel_argument(arg, parameter, name)
                for arg, parameter in zip(args, parameters, strict=True)
            ]
            order, seed = LAUNCH_ORDER, next(LAUNCH_SEEDS)
            enqueue(
                lambda: emulated_launch(library, name, grid[0], converted, order, seed)
            )

        return launch


# CUDA's launch limits, the common values of the device attributes
# maxGridSize, maxThreadsDim and maxThreadsPerBlock: blocks per grid in x,
# y and z, threads per block in x, y and z, and threads per block.
# NOTE: a device with lower limits rejects launches that pass here.
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_BLOCK_THREADS = 1024


def check_launch_shape(name, grid, block):
    """Raise as a launch with a grid or block beyond CUDA's limits fails
    (CUDA_ERROR_INVALID_VALUE from cuLaunchKernel)."""
    for label, shape, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
        if not isinstance(shape, tuple) or not 1 <= len(shape) <= 3:
            raise TypeError(f"kernel {name}: {label} must be a tuple of 1 to 3 ints")
        for size, limit in zip(shape, limits):
            if not 1 <= int(size) <= limit:
                raise CUDARuntimeError(
                    f"CUDA_ERROR_INVALID_VALUE: kernel {name} launched with "
                    f"{label} {shape}; each size must be in 1..{limit}"
                )
    if int(np.prod(block)) > MAX_BLOCK_THREADS:
        raise CUDARuntimeError(
            f"CUDA_ERROR_INVALID_VALUE: kernel {name} launched with block {block}, "
            f"more than {MAX_BLOCK_THREADS} threads"
        )


# The NumPy scalar type whose width and kind match each scalar parameter
# type the generated kernels use.
PARAMETER_DTYPES = {
    "int": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
}
CTYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


def kernel_parameters(code, name):
    """Return the parameter declarations of kernel ``name`` in ``code``,
    written out or through a macro such as MOCHAC_KERNEL(name)."""
    for match in KERNEL_HEADER.finditer(code):
        if match.group(1) == name:
            return split_parameters(match.group(2))
        # A header inside ``#define MACRO(name)`` declares every kernel
        # that code writes as MACRO(kernel).
        if match.group(1) != "name":
            continue
        define = re.search(r"#define (\w+)\(name\)\s*\\\s*$", code[: match.start()])
        used = define and re.search(rf"\b{define.group(1)}\({re.escape(name)}\)", code)
        if used:
            return split_parameters(match.group(2))
    raise AttributeError(f"no kernel header for {name} in the module's code")


def split_parameters(text):
    text = " ".join(text.split())
    return [] if text in ("", "void") else [item.strip() for item in text.split(",")]


def parameter_type(parameter):
    """Return "pointer", or the scalar type of a declaration without its
    name and qualifiers ("long long n" gives "long long")."""
    words = parameter.replace("*", " * ").split()[:-1]
    if "*" in words:
        return "pointer"
    return " ".join(word for word in words if word not in ("const", "volatile"))


def kernel_argument(value, parameter, kernel):
    """Return the ctypes value CuPy would pass for a kernel argument.

    CuPy passes a NumPy scalar with its own width and the kernel reads the
    width of its parameter, so a scalar of another type than the
    parameter's is rejected here, where the host would convert it.

    CuPy passes an array's pointer without checking its device. A kernel
    that dereferences memory of another device, without peer access, fails
    with an illegal address, so the stand-in raises at the launch instead.
    """
    expected = parameter_type(parameter)
    if expected == "pointer":
        if not isinstance(value, DeviceArray):
            # CuPy raises "Unsupported type" for a NumPy array too.
            raise TypeError(
                f"kernel {kernel}: parameter '{parameter}' needs a device array, "
                f"got {type(value).__name__}"
            )
        device = getattr(value, "device_id", CURRENT_DEVICE)
        if device != CURRENT_DEVICE:
            raise CUDARuntimeError(
                f"cudaErrorIllegalAddress: kernel on device {CURRENT_DEVICE} was "
                f"passed an array allocated on device {device}"
            )
        return ctypes.c_void_p(value.data.ptr)
    dtype = PARAMETER_DTYPES.get(expected)
    if dtype is None:
        raise TypeError(f"kernel {kernel}: parameter '{parameter}' has an unknown type")
    if not isinstance(value, np.generic) or value.dtype != dtype:
        raise TypeError(
            f"kernel {kernel}: parameter '{parameter}' needs a numpy.{dtype.name} "
            f"scalar, got {type(value).__name__}"
        )
    return CTYPES[dtype](value.item())


# Whether a GEMM may be recorded under stream capture, as cuBLAS allows.
# CuPy's cuBLAS wrapper (cupy_backends/cuda/libs/cublas.pyx) raises
# NotImplementedError instead, from setStream on a capturing stream; tests
# set this to False to run that path.
CUBLAS_DURING_CAPTURE = True


def gemm(trans_a, trans_b, a, b, out=None, alpha=1.0, beta=0.0):
    if current_stream() is CAPTURING and not CUBLAS_DURING_CAPTURE:
        raise NotImplementedError(
            "calling cuBLAS API during stream capture is currently unsupported"
        )
    for operand in (a, b) if out is None else (a, b, out):
        # cupy.cublas.gemm takes device arrays only.
        if not isinstance(operand, DeviceArray):
            raise TypeError(f"gemm: expected a device array, got {type(operand)}")
    a = a.T if trans_a == "T" else a
    b = b.T if trans_b == "T" else b
    if out is None:
        out = zeros((a.shape[0], b.shape[1]), a.dtype)

    def run():
        out[...] = alpha * (a @ b) + beta * out

    enqueue(run)
    return out


FAKE_CUBLAS_SOURCE = Path(__file__).with_name("fake_cublas.c")
SUBMIT_GEMM = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_longlong)
# (path, library, callback) of tests/fake_cublas.c once compiled.
_FAKE_CUBLAS = None


def fake_cublas_path() -> str:
    """Return the path of tests/fake_cublas.c compiled for this process, with
    its GEMMs running on the stand-in's streams (mochac.runtime.cublas_direct
    loads it as the libcublas that CuPy uses)."""
    global _FAKE_CUBLAS
    if _FAKE_CUBLAS is None:
        path = Path(MODULES.name) / "libfake_cublas.so"
        command = ["gcc", "-std=c11", "-O1", "-fPIC", "-shared", "-Wall", "-Werror"]
        subprocess.run(
            [*command, str(FAKE_CUBLAS_SOURCE), "-o", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        library = ctypes.CDLL(str(path))
        library.fake_cublas_run.argtypes = [ctypes.c_longlong]
        library.fake_cublas_run.restype = None
        library.fake_cublas_live_handles.restype = ctypes.c_int

        def submit(stream, number):
            STREAMS[stream or 0].submit(lambda: library.fake_cublas_run(number))

        callback = SUBMIT_GEMM(submit)
        library.fake_cublas_set_submit(callback)
        _FAKE_CUBLAS = (str(path), library, callback)
    return _FAKE_CUBLAS[0]


def fake_cublas_live_handles() -> int:
    """Return how many handles of tests/fake_cublas.c are not destroyed."""
    fake_cublas_path()
    return _FAKE_CUBLAS[1].fake_cublas_live_handles()


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: DEVICE_COUNT,
    CUDARuntimeError=CUDARuntimeError,
    memcpyDeviceToDevice=3,
    memsetAsync=lambda pointer, value, size, stream: STREAMS[stream].submit(
        lambda: ctypes.memset(pointer, value, size)
    ),
    memcpyAsync=lambda target, source, size, kind, stream: STREAMS[stream].submit(
        lambda: ctypes.memmove(target, source, size)
    ),
)


def module() -> types.ModuleType:
    """Return a module object that replaces ``cupy``."""
    cupy = types.ModuleType("cupy")
    cupy.zeros = zeros
    cupy.asarray = asarray
    cupy.asnumpy = asnumpy
    cupy.ndarray = DeviceArray
    cupy.RawModule = RawModule
    cupy.cublas = types.SimpleNamespace(gemm=gemm)
    cupy.cuda = types.SimpleNamespace(
        runtime=runtime,
        compiler=types.SimpleNamespace(CompileException=CompileException),
        Stream=Stream,
        Event=Event,
        get_elapsed_time=get_elapsed_time,
        Device=Device,
        get_current_stream=current_stream,
    )
    return cupy


def cupyx_module() -> types.ModuleType:
    """Return a module object that replaces ``cupyx``."""
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype=float: np.empty(shape, dtype)
    return cupyx


def install(monkeypatch) -> types.ModuleType:
    """Install the stand-in as ``cupy`` and ``cupyx`` for one test, with
    fake_cublas.c as the libcublas that GPUNet calls directly, and return
    the ``cupy`` module."""
    import sys

    from mochac.runtime import cublas_direct

    fake = module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx_module())
    path = fake_cublas_path()
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: path)
    return fake
