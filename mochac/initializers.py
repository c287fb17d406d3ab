"""Initializers fill a parameter when a net creates it (Caffe calls them fillers).

Each takes the parameter's NumPy shape, whose first axis is the output (fan-out)
axis; every other axis counts towards the fan-in. That is Mocha's rule in its
column-major order, where the fan-out axis is the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mochac.errors import ConfigError, ShapeError
from mochac.values import as_real


def _check_number(initializer, field, positive=False):
    """Check a field of a frozen initializer and store it as a Python number."""
    owner = type(initializer).__name__
    raw = getattr(initializer, field)
    value = as_real(raw)
    if value is None or not math.isfinite(value):
        raise ConfigError(
            f"{owner}: invalid {field}={raw!r}; expected a finite number."
        )
    if positive and value <= 0:
        raise ConfigError(f"{owner}: invalid {field}={raw!r}; expected a value > 0.")
    object.__setattr__(initializer, field, value)


@dataclass(frozen=True)
class Initializer:
    """Base of every initializer."""

    def init(self, shape, rng: np.random.Generator, dtype) -> np.ndarray:
        """Return a new array of ``shape`` and ``dtype`` filled from ``rng``."""
        raise NotImplementedError


@dataclass(frozen=True)
class NullInitializer(Initializer):
    """Leave the parameter's values as they are: here, zeros.

    Mocha's NullInitializer writes nothing, so the parameter keeps whatever
    its newly allocated blob contained, and the caller is expected to load
    values afterwards (from a snapshot, or by writing ``net.params``).
    mochac allocates a new array for every parameter, and here "writing
    nothing" returns it zero-filled rather than uninitialized, which keeps
    runs reproducible. It draws nothing from ``rng``.
    """

    def init(self, shape, rng, dtype):
        return np.zeros(shape, dtype=dtype)


@dataclass(frozen=True)
class ConstantInitializer(Initializer):
    """Every element set to ``value`` (default 0)."""

    value: float = 0.0

    def __post_init__(self):
        _check_number(self, "value")

    def init(self, shape, rng, dtype):
        return np.full(shape, self.value, dtype=dtype)


def fan_in(shape) -> int:
    """Return the product of every axis but the first (the output axis)."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


@dataclass(frozen=True)
class XavierInitializer(Initializer):
    """Uniform on [-s, s] with s = sqrt(3 / fan_in), Mocha's Xavier (no fan-out)."""

    def init(self, shape, rng, dtype):
        inputs = fan_in(shape)
        if inputs < 1:
            raise ShapeError(
                f"XavierInitializer: a parameter of shape {tuple(shape)} has fan-in "
                "0, so its scale sqrt(3 / fan_in) is undefined; give the layer a "
                "bottom with at least one element per sample"
            )
        scale = math.sqrt(3.0 / inputs)
        return rng.uniform(-scale, scale, size=shape).astype(dtype)


@dataclass(frozen=True)
class GaussianInitializer(Initializer):
    """Independent normal draws with ``mean`` (default 0) and ``std`` (default 1)."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        _check_number(self, "mean")
        _check_number(self, "std", positive=True)

    def init(self, shape, rng, dtype):
        return rng.normal(self.mean, self.std, size=shape).astype(dtype)


@dataclass(frozen=True)
class OrthogonalInitializer(Initializer):
    """A random orthogonal matrix times ``gain`` (default 1; sqrt(2) suits ReLU).

    The parameter is flattened to W of shape (fan_out, fan_in), the first axis
    against every other one. The vectors along W's shorter side are
    orthonormal times ``gain``: W W^T = gain^2 I when fan_out <= fan_in (each
    output's weights), and W^T W = gain^2 I when fan_out > fan_in. A 1-D
    parameter is a column, so it becomes a unit vector times ``gain``.
    """

    gain: float = 1.0

    def __post_init__(self):
        _check_number(self, "gain", positive=True)

    def init(self, shape, rng, dtype):
        rows = shape[0] if len(shape) else 1
        cols = fan_in(shape)
        tall, short = max(rows, cols), min(rows, cols)
        # Q of a Gaussian matrix, with its column signs fixed by R's diagonal,
        # is uniformly distributed over matrices with orthonormal columns.
        q, r = np.linalg.qr(rng.standard_normal((tall, short)))
        q *= np.where(np.diag(r) < 0, -1.0, 1.0)
        matrix = q if rows >= cols else q.T
        return (self.gain * matrix).reshape(shape).astype(dtype)
