"""Neurons (activation functions) that attach to a layer's output.

Use them as Mocha does: ``from mochac import Neurons`` then ``Neurons.ReLU()``.
The C code generator reads ``c_forward`` and ``c_backward`` to emit the
activation and its derivative; both are expressions over ``y`` (the activated
output) so that the backward pass needs no copy of the pre-activation value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mochac.errors import ConfigError


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
        value = self.epsilon
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ConfigError(
                f"Neurons.ReLU: invalid epsilon={value!r}; expected a finite number."
            )

    def c_forward(self, x):
        eps = repr(float(self.epsilon))
        return f"(({x}) > {eps} ? ({x}) : {eps})"

    def c_backward(self, y):
        # The output equals epsilon exactly where the input was at or below it.
        eps = repr(float(self.epsilon))
        return f"(({y}) > {eps} ? 1 : 0)"
