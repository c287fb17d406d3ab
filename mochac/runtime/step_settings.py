"""The settings of one training step that a net's own step methods check.

Net.train_step, apply_update and solver_step (and GPUNet's) take the
learning rate, momentum and regu_coef of the step directly, so they check
them as the solver checks its policies' values.
"""

from __future__ import annotations

import math

from mochac.errors import ConfigError
from mochac.values import as_int, as_real


# Iterations up to here are exact in a double, as Adam's correction needs.
MAX_ITERATION = 2**53


def check_step_values(learning_rate, momentum, regu_coef, iteration=None) -> None:
    """Raise ConfigError for a learning rate below 0, a momentum outside
    [0, 1), a regu_coef below 0 or an iteration that is not an int >= 0
    (None stands for none given) for a net's training step, as the solver
    rejects them from its policies."""
    if iteration is not None:
        count = as_int(iteration)
        # The updates compute iteration + 1 in a C long long and in doubles.
        if count is None or not 0 <= count < MAX_ITERATION:
            raise ConfigError(
                f"invalid iteration={iteration!r} for a training step; expected "
                f"the number of updates done before, an int in 0..{MAX_ITERATION - 1}"
            )
    for key, value, valid, rule in (
        ("learning_rate", learning_rate, lambda v: v >= 0, ">= 0"),
        ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("regu_coef", regu_coef, lambda v: v >= 0, ">= 0"),
    ):
        real = as_real(value)
        if real is None or not math.isfinite(real) or not valid(real):
            raise ConfigError(
                f"invalid {key}={value!r} for a training step; expected a finite "
                f"number {rule}"
            )


def check_regu_coef(regu_coef) -> None:
    """Raise ConfigError unless ``regu_coef`` is a finite number >= 0."""
    check_step_values(0.0, 0.0, regu_coef)
