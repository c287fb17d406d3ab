"""Regularizers: penalties on parameters, applied as gradients in the update.

Like Mocha, mochac leaves the penalty out of the objective value and adds only
its gradient. The solver's ``regu_coef`` scales every local coefficient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mochac.errors import ConfigError
from mochac.values import as_real


@dataclass(frozen=True)
class Regularizer:
    """Base of every regularizer; ``coefficient`` is the local weight."""

    coefficient: float = 0.0

    def __post_init__(self):
        value = as_real(self.coefficient)
        if value is None or not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{type(self).__name__}: invalid coefficient={self.coefficient!r}; "
                "expected a finite number >= 0."
            )
        object.__setattr__(self, "coefficient", value)

    def add_gradient(self, param: np.ndarray, grad: np.ndarray, global_coef: float):
        """Add the penalty's gradient to ``grad`` in place."""

    def native_terms(self, global_coef: float):
        """Return (l2, l1) for the compiled update, which adds l2 * W + l1 * sign(W)
        to the gradient, or None when the penalty has no native form (the
        solver then updates in NumPy)."""
        return


@dataclass(frozen=True)
class NoRegu(Regularizer):
    """No penalty."""

    def native_terms(self, global_coef):
        return 0.0, 0.0


@dataclass(frozen=True)
class L2Regu(Regularizer):
    """Penalty coefficient * |W|^2, so 2 * coefficient * W joins the gradient.

    Mocha's definition: twice Caffe's weight decay for the same coefficient.
    """

    coefficient: float = 1.0

    def add_gradient(self, param, grad, global_coef):
        scale = 2.0 * self.coefficient * global_coef
        if scale != 0.0:
            grad += param.dtype.type(scale) * param

    def native_terms(self, global_coef):
        return 2.0 * self.coefficient * global_coef, 0.0


@dataclass(frozen=True)
class L1Regu(Regularizer):
    """Penalty coefficient * sum |W|, so coefficient * sign(W) joins the gradient.

    Unlike L2Regu there is no factor 2: d|w|/dw = sign(w). The subgradient at
    exactly 0 is taken as 0, so a weight that is 0 stays 0 unless the loss
    moves it.
    """

    coefficient: float = 1.0

    def add_gradient(self, param, grad, global_coef):
        scale = self.coefficient * global_coef
        if scale != 0.0:
            grad += param.dtype.type(scale) * np.sign(param)

    def native_terms(self, global_coef):
        return 0.0, self.coefficient * global_coef
