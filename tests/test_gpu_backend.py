"""GPUBackend's errors on machines without CuPy, a driver or a device.

A stand-in module replaces CuPy, so the checks run without a GPU.
"""

import sys
import types

import pytest

from mochac.errors import DeviceError
from mochac.runtime import gpu_backend
from mochac.runtime.gpu_backend import GPUBackend

# CuPy's message when the CUDA runtime finds no usable driver.
INSUFFICIENT_DRIVER = (
    "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
    "runtime version"
)


class CUDARuntimeError(RuntimeError):
    pass


def failing_cupy(message: str) -> types.ModuleType:
    """Return a stand-in for cupy whose device count raises ``message``."""

    def get_device_count():
        raise CUDARuntimeError(message)

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(
            getDeviceCount=get_device_count, CUDARuntimeError=CUDARuntimeError
        )
    )
    return cupy


def test_gpu_backend_without_cupy(monkeypatch):
    # A None entry makes `import cupy` raise ImportError.
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceError) as raised:
        GPUBackend()
    message = str(raised.value)
    assert "GPUBackend needs CuPy, which is not installed" in message
    assert "`pip install '.[cuda]'` in the mochac clone" in message
    assert "`pip install 'cupy-cuda13x[ctk]'`" in message
    assert "mochac[cuda]" not in message


def test_gpu_backend_without_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", failing_cupy(INSUFFICIENT_DRIVER))
    monkeypatch.setattr(gpu_backend, "DRIVER_LIBRARY", "libmochac-missing.so.1")
    with pytest.raises(DeviceError) as raised:
        GPUBackend()
    message = str(raised.value)
    assert "no NVIDIA driver was found" in message
    assert "libmochac-missing.so.1 cannot be loaded" in message
    assert "Install the NVIDIA driver" in message
    assert "insufficient" not in message


def test_gpu_backend_driver_loads_no_device(monkeypatch):
    """A driver library that loads: the runtime's own error is shown."""
    monkeypatch.setitem(sys.modules, "cupy", failing_cupy(INSUFFICIENT_DRIVER))
    # ctypes.CDLL(None) opens the running program, which always loads.
    monkeypatch.setattr(gpu_backend, "DRIVER_LIBRARY", None)
    with pytest.raises(DeviceError) as raised:
        GPUBackend()
    message = str(raised.value)
    assert f"no usable CUDA device ({INSUFFICIENT_DRIVER})" in message
    assert "nvidia-smi" in message
    assert "no NVIDIA driver was found" not in message
