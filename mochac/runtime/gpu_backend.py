"""GPUBackend: nets whose kernels run on one CUDA device through CuPy.

CuPy is an optional dependency (``pip install '.[cuda]'`` in a clone of
mochac), imported only when a GPUBackend is constructed, so ``import mochac``
never needs it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import numpy as np

from mochac.errors import ConfigError, DeviceError
from mochac.runtime.backend import backend_dtype, seeded_generator

logger = logging.getLogger(__name__)

# Mocha's environment variable for the CUDA device index.
DEVICE_VARIABLE = "MOCHA_CUDA_DEVICE"

# mochac is installed from a clone, not from PyPI; the cuda extra of
# pyproject.toml is the CuPy wheel below.
INSTALL_HINT = (
    "`pip install '.[cuda]'` in the mochac clone, or `pip install 'cupy-cuda13x[ctk]'`"
)

# The NVIDIA driver's library, which the CUDA runtime loads.
DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


def import_cupy():
    """Return the cupy module; raise DeviceError saying how to install it."""
    try:
        import cupy
    except ImportError as error:
        raise DeviceError(
            f"GPUBackend needs CuPy, which is not installed: run {INSTALL_HINT}, "
            "either of which installs CuPy for the CUDA 13 toolkit. Use "
            "CPUBackend on machines without a CUDA device"
        ) from error
    return cupy


def driver_load_error() -> str | None:
    """Return why the NVIDIA driver library cannot be loaded, or None when it loads."""
    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError as error:
        return str(error)
    return None


def device_from_environment() -> int:
    """Return the device index in MOCHA_CUDA_DEVICE, or 0 when it is unset."""
    text = os.environ.get(DEVICE_VARIABLE, "").strip()
    if not text:
        return 0
    # isdecimal rejects the signs and underscores that int() accepts.
    if not (text.isascii() and text.isdecimal()):
        raise ConfigError(
            f"GPUBackend: invalid {DEVICE_VARIABLE}={text!r}; expected a device "
            "index such as 0, or leave it unset for device 0"
        )
    return int(text)


class GPUBackend:
    """The GPU backend: generated CUDA kernels, GEMM through cuBLAS.

    Args:
        device: index of the CUDA device to run on. None (the default) reads
            it from the environment variable MOCHA_CUDA_DEVICE, as Mocha
            does, and uses 0 when that is unset.
        dtype: element type of blobs and parameters, np.float32 (default) or
            np.float64.
        seed: seed of the generator behind parameter initialization, data
            shuffling and the random layers' streams; None draws one from
            the operating system.
        graphs: capture each training step into a CUDA graph and replay it
            (default True); False launches every kernel from Python.

    Raises DeviceError when CuPy is not installed or no CUDA device is
    usable, and ConfigError for an invalid dtype or device index. The
    registry maps a parameter key to CuPy arrays on the device, so nets
    built on one backend share parameters as they do on the CPU backend.
    """

    # Identifies the GPU backend: Net(name, GPUBackend(), layers) builds a
    # GPUNet.
    is_gpu = True

    def __init__(self, device=None, dtype=np.float32, seed=None, graphs=True):
        # Errors about the device index name where it came from.
        source = f"device={device!r}"
        if device is None:
            device = device_from_environment()
            source = f"device={device} (from {DEVICE_VARIABLE})"
        self.dtype = backend_dtype("GPUBackend", dtype)
        if not isinstance(device, int) or isinstance(device, bool) or device < 0:
            raise ConfigError(
                f"GPUBackend: invalid device={device!r}; expected an int >= 0"
            )
        self.cupy = import_cupy()
        try:
            count = self.cupy.cuda.runtime.getDeviceCount()
        except self.cupy.cuda.runtime.CUDARuntimeError as error:
            # The CUDA runtime reports cudaErrorInsufficientDriver also when
            # no driver is installed, and that message suggests an update.
            problem = driver_load_error()
            if problem is not None:
                raise DeviceError(
                    f"GPUBackend: no NVIDIA driver was found: {DRIVER_LIBRARY} "
                    f"cannot be loaded ({problem}). Install the NVIDIA driver on "
                    "a machine with an NVIDIA GPU, or use CPUBackend"
                ) from error
            raise DeviceError(
                f"GPUBackend: no usable CUDA device ({error}); check the driver with "
                "nvidia-smi, or use CPUBackend"
            ) from error
        if device >= count:
            raise DeviceError(
                f"GPUBackend: invalid {source}; this machine has {count} CUDA "
                f"device(s), numbered from 0"
            )
        self.device = device
        self.graphs = bool(graphs)
        # Code written for CPUBackend reads ``threads``; a GPU net sets no
        # host threads.
        self.threads = 1
        self.seed = seed
        self.rng = seeded_generator("GPUBackend", seed)
        self.registry: dict[str, dict[str, object]] = {}

    def to_host(self, array) -> np.ndarray:
        """Return a NumPy copy of a device array (CuPy refuses implicit copies)."""
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def to_device(self, array, dtype=None):
        """Return a host array as a CuPy array, of ``dtype`` or else the
        backend's."""
        host = np.ascontiguousarray(array, dtype=dtype or self.dtype)
        with self.cupy.cuda.Device(self.device):
            return self.cupy.asarray(host)

    def copy(self, array):
        """Return a copy of a device array, on the device."""
        with self.cupy.cuda.Device(self.device):
            return array.copy()

    def init(self):
        """Prepare the backend; kept for Mocha's ``init(backend)`` call."""
        logger.debug("GPUBackend ready: device %d, %s", self.device, self.dtype.name)

    def shutdown(self):
        """Release the parameter registry."""
        self.registry_reset()

    def registry_reset(self):
        """Forget shared parameters, so the next net initializes its own."""
        self.registry.clear()
