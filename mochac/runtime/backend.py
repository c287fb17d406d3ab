"""CPUBackend: element type, threads, random numbers and the parameter registry."""

from __future__ import annotations

import logging
import os

import numpy as np

from mochac.errors import ConfigError
from mochac.values import as_int

logger = logging.getLogger(__name__)

# The largest thread count CPUBackend accepts. libgomp starts one OS thread
# per thread of a team, and counts far above the hardware make thread creation
# fail and the process crash: threads=200000 ended in a segfault in forward()
# (GCC 12.2 libgomp, Linux x86-64). 4096 is above the hardware threads of
# current servers, so the bound rejects only mistakes. A fixed bound, unlike
# a multiple of the CPU count, accepts the same settings on every machine.
MAX_THREADS = 4096


def seeded_generator(backend: str, seed) -> np.random.Generator:
    """Return NumPy's generator for ``seed``; raise ConfigError naming the
    backend when NumPy rejects the seed."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{backend}: invalid seed={seed!r} ({error}); expected None or an int >= 0"
        ) from None


def backend_dtype(backend: str, dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype; raise ConfigError unless it is
    float32 or float64. None gives the default, float32, as it does for
    DefaultBackend (np.dtype(None) would be float64)."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        value = np.dtype(dtype)
    except (TypeError, ValueError):
        # NumPy raises TypeError for most objects it cannot read as a dtype,
        # and ValueError for some malformed ones, such as ("f4", -1).
        value = None
    if value not in (np.float32, np.float64):
        shown = repr(dtype) if value is None else value
        raise ConfigError(
            f"{backend}: invalid dtype={shown}; expected np.float32 or np.float64"
        )
    return value


def default_threads() -> int:
    """Return OMP_NUM_THREADS when it is set, else the CPUs this process may use.

    An OMP_NUM_THREADS list ("4,2" for nested levels) gives its first value.
    A value that is not an int in 1..MAX_THREADS is logged and ignored. The
    CPU count is capped at MAX_THREADS.
    """
    setting = os.environ.get("OMP_NUM_THREADS", "").strip()
    if setting:
        first = setting.split(",")[0].strip()
        if first.isdigit() and 1 <= int(first) <= MAX_THREADS:
            return int(first)
        logger.warning(
            "ignoring OMP_NUM_THREADS=%r, which is not an int in 1..%d; using the "
            "CPU count",
            setting,
            MAX_THREADS,
        )
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    return min(count, MAX_THREADS)


class CPUBackend:
    """The CPU backend: generated C with OpenMP, GEMM through OpenBLAS.

    Args:
        dtype: element type of blobs and parameters, np.float32 (default) or
            np.float64 (the gradient checks use it).
        threads: OpenMP threads, an int in 1..MAX_THREADS (4096); default:
            OMP_NUM_THREADS when it is set, else the CPUs this process may use.
        seed: seed of the generator behind parameter initialization and data
            shuffling; None draws one from the operating system.

    The registry maps a parameter key (a layer's param_key, or its name) to
    that layer's parameter arrays, so nets built on one backend with the same
    layer share parameters, as in Mocha.
    """

    def __init__(self, dtype=np.float32, threads: int | None = None, seed=None):
        self.dtype = backend_dtype("CPUBackend", dtype)
        if threads is None:
            threads = default_threads()
        count = as_int(threads)
        if count is None or not 1 <= count <= MAX_THREADS:
            raise ConfigError(
                f"CPUBackend: invalid threads={threads!r}; expected an int in "
                f"1..{MAX_THREADS}, such as the number of CPU cores"
            )
        self.threads = count
        self.seed = seed
        self.rng = seeded_generator("CPUBackend", seed)
        self.registry: dict[str, dict[str, np.ndarray]] = {}

    def to_host(self, array) -> np.ndarray:
        """Return ``array`` as a NumPy array (it already is one here)."""
        return np.asarray(array)

    def to_device(self, array, dtype=None) -> np.ndarray:
        """Return a host array as this backend's array, of ``dtype`` or else
        the backend's."""
        return np.ascontiguousarray(array, dtype=dtype or self.dtype)

    def copy(self, array) -> np.ndarray:
        """Return a copy of one of this backend's arrays."""
        return np.array(array, copy=True)

    def init(self):
        """Prepare the backend; kept for Mocha's ``init(backend)`` call."""
        logger.debug("CPUBackend ready: %s, %d threads", self.dtype.name, self.threads)

    def shutdown(self):
        """Release the parameter registry."""
        self.registry_reset()

    def registry_reset(self):
        """Forget shared parameters, so the next net initializes its own."""
        self.registry.clear()


def check_backend(net_name, backend) -> None:
    """Raise ConfigError unless ``backend`` is a CPUBackend or a GPU backend."""
    if isinstance(backend, CPUBackend) or getattr(backend, "is_gpu", False) is True:
        return
    raise ConfigError(
        f"net '{net_name}': invalid backend {backend!r}; expected a backend object "
        "such as CPUBackend() or GPUBackend(), passed as Net(name, backend, layers)"
    )
