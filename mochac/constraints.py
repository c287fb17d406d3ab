"""Norm constraints: parameters shrunk in place after the solver's update.

Unlike a regularizer, a constraint adds nothing to the gradient. Every
``every_n_iter`` iterations the solver projects each constrained parameter
back into its norm ball (``apply_constraints``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mochac.errors import ConfigError
from mochac.values import as_int, as_real


@dataclass(frozen=True)
class Constraint:
    """Base of every norm constraint."""

    def is_due(self, iteration: int) -> bool:
        """Return whether the constraint applies after update number ``iteration``."""
        return False

    def apply(self, param: np.ndarray):
        """Shrink ``param`` in place."""


@dataclass(frozen=True)
class NoCons(Constraint):
    """No constraint, the default for every parameter."""


@dataclass(frozen=True)
class L2Cons(Constraint):
    """Limit the Euclidean norm of each output's weights to ``threshold``.

    Fields:
        threshold: the maximum norm (required, > 0).
        every_n_iter: apply after every n-th update, default 1.

    A parameter of two or more axes is flattened to (shape[0], rest), as the
    initializers see it: for a convolution's filter each row is one filter,
    and for an inner product's weight the weights of one output. A 1-D
    parameter such as a bias is one row, as in Mocha.jl's constrain!
    (src/constraints.jl at pluskid/Mocha.jl commit 034ec22). A row whose
    norm exceeds ``threshold`` is scaled to norm ``threshold``, and the
    other rows stay unchanged.
    """

    threshold: float
    every_n_iter: int = 1

    def __post_init__(self):
        value = as_real(self.threshold)
        if value is None or not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"L2Cons: invalid threshold={self.threshold!r}; expected a finite "
                "number > 0."
            )
        every = as_int(self.every_n_iter)
        if every is None or every < 1:
            raise ConfigError(
                f"L2Cons: invalid every_n_iter={self.every_n_iter!r}; expected an int "
                ">= 1 (use NoCons() for no constraint)."
            )
        object.__setattr__(self, "threshold", value)
        object.__setattr__(self, "every_n_iter", every)

    def is_due(self, iteration):
        return iteration % self.every_n_iter == 0

    def apply(self, param):
        rows = param.reshape(param.shape[0] if param.ndim > 1 else 1, -1)
        if not np.shares_memory(rows, param):
            raise ValueError(
                "L2Cons.apply: invalid parameter: not a contiguous array; pass "
                "the array itself, such as net.params[layer][name]"
            )
        norms = np.sqrt(np.sum(np.square(rows, dtype=np.float64), axis=1))
        over = norms > self.threshold
        if np.any(over):
            scale = self.threshold / norms[over]
            rows[over] *= scale[:, np.newaxis].astype(param.dtype)


def net_constraints(net) -> list:
    """Return the constraint of each constrained parameter of ``net``.

    A solver builds the list once and calls each ``is_due`` every iteration.
    """
    return [
        spec.constraint
        for info in net.ir.layers
        for spec in info.params
        if spec.constraint is not None
    ]


def apply_constraints(net, iteration: int):
    """Apply each parameter's constraint that is due after update ``iteration``.

    ``iteration`` counts updates from 1, so with every_n_iter=n the
    constraint runs after updates n, 2n, ... Parameters of every layer in
    ``net`` are changed in place, shared ones included, except arrays that a
    frozen layer learns (mochac.runtime.freeze), which the solver leaves
    unchanged.
    """
    frozen_names = getattr(net, "frozen_layers", frozenset())
    frozen = {
        id(net.params[info.name][spec.name])
        for info in net.ir.layers
        if info.name in frozen_names and info.name in net.params
        for spec in info.params
        if spec.learned
    }
    for info in net.ir.layers:
        params = net.params.get(info.name)
        if not params:
            continue
        for spec in info.params:
            constraint = spec.constraint
            array = params[spec.name]
            if id(array) in frozen:
                continue
            if constraint is not None and constraint.is_due(iteration):
                constraint.apply(array)
