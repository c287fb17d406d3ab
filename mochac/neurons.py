"""Neurons (activation functions) that attach to a layer's output.

Use them as Mocha does: ``from mochac import Neurons`` then ``Neurons.ReLU()``.
The C code generator reads ``c_forward`` and ``c_backward`` to emit the
activation and its derivative. ``c_forward`` is an expression over the input
``x``. ``c_backward`` is an expression over the output ``y`` alone, because
the layer keeps only its output and the backward pass has no copy of the
pre-activation value.

The expressions are C for either element type: ``real`` is float or double,
math functions run in double, and the result is cast back to ``real``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mochac.errors import ConfigError
from mochac.values import as_real


@dataclass(frozen=True)
class Neuron:
    """Base of every neuron."""

    def c_forward(self, x: str) -> str:
        """Return a C expression for the activation of ``x``."""
        raise NotImplementedError

    def c_backward(self, y: str) -> str:
        """Return a C expression for dy/dx in terms of the output ``y``."""
        raise NotImplementedError

    @property
    def is_identity(self) -> bool:
        return False


@dataclass(frozen=True)
class Identity(Neuron):
    """y = x; the default neuron of every layer."""

    def c_forward(self, x):
        return x

    def c_backward(self, y):
        return "1"

    @property
    def is_identity(self):
        return True


@dataclass(frozen=True)
class ReLU(Neuron):
    """y = max(epsilon, x); the subgradient at x <= epsilon is 0.

    Fields:
        epsilon: the threshold, default 0.
    """

    epsilon: float = 0.0

    def __post_init__(self):
        value = as_real(self.epsilon)
        if value is None or not math.isfinite(value):
            raise ConfigError(
                f"Neurons.ReLU: invalid epsilon={self.epsilon!r}; expected a finite "
                "number."
            )
        object.__setattr__(self, "epsilon", value)

    def c_forward(self, x):
        # A NaN input fails the comparison and passes through, as in Julia's
        # max, so that the loss check detects it. epsilon is rounded to the
        # net's type in both directions, so the backward test matches.
        eps = f"(real){float(self.epsilon)!r}"
        return f"(({x}) <= {eps} ? {eps} : ({x}))"

    def c_backward(self, y):
        # The output equals epsilon exactly where the input was at or below it.
        eps = f"(real){float(self.epsilon)!r}"
        return f"(({y}) > {eps} ? 1 : 0)"


@dataclass(frozen=True)
class LReLU(Neuron):
    """Leaky ReLU: y = x for x > 0 and y = 0.01 x otherwise.

    The derivative is 1 for x > 0 and 0.01 for x <= 0, so at exactly 0 it is
    0.01, as Mocha defines it. Mocha's LReLU has no fields, so the slope is
    fixed at ``SLOPE``.
    """

    SLOPE = 0.01

    def c_forward(self, x):
        return f"(({x}) > 0 ? ({x}) : (real){self.SLOPE!r} * ({x}))"

    def c_backward(self, y):
        # The slope is positive, so y > 0 exactly where x > 0.
        return f"(({y}) > 0 ? (real)1 : (real){self.SLOPE!r})"


@dataclass(frozen=True)
class Sigmoid(Neuron):
    """y = 1 / (1 + exp(-x)); dy/dx = y (1 - y)."""

    def c_forward(self, x):
        # exp(-x) overflows to inf for x < -709, which gives y = 0 as it should.
        return f"(real)(1.0 / (1.0 + exp(-(double)({x}))))"

    def c_backward(self, y):
        return f"(({y}) * (1 - ({y})))"


@dataclass(frozen=True)
class Tanh(Neuron):
    """y = tanh(x) = (1 - exp(-2x)) / (1 + exp(-2x)); dy/dx = 1 - y^2."""

    def c_forward(self, x):
        return f"(real)tanh((double)({x}))"

    def c_backward(self, y):
        return f"(1 - ({y}) * ({y}))"


@dataclass(frozen=True)
class Exponential(Neuron):
    """y = exp(x); dy/dx = y."""

    def c_forward(self, x):
        return f"(real)exp((double)({x}))"

    def c_backward(self, y):
        return f"({y})"
