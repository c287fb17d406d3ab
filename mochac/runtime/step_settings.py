"""The settings of one training step that a net's own step methods check.

Net.train_step, apply_update and solver_step (and GPUNet's) take the
learning rate, momentum and regu_coef of the step directly, so they check
them as the solver checks its policies' values.
"""

from __future__ import annotations

import math

from mochac.errors import ConfigError
from mochac.values import as_int, as_real

# Iterations below this are exact in a double, which Adam's correction needs.
MAX_ITERATION = 2**53


def check_step_values(learning_rate, momentum, regu_coef, iteration=None) -> None:
    """Raise ConfigError for invalid settings of a net's training step.

    The learning rate and regu_coef must be finite and >= 0, the momentum in
    [0, 1), and the iteration (None when not given) an int >= 0, as the
    solver requires of its policies' values.
    """
    if iteration is not None:
        count = as_int(iteration)
        if count is None or not 0 <= count < MAX_ITERATION:
            raise ConfigError(
                f"invalid iteration={iteration!r} for a training step; expected "
                f"the number of updates done before, an int in 0..{MAX_ITERATION - 1}"
            )
    _check_number("learning_rate", learning_rate, 0.0, math.inf, ">= 0")
    _check_number("momentum", momentum, 0.0, 1.0, "in [0, 1)")
    check_regu_coef(regu_coef)


def check_regu_coef(regu_coef) -> None:
    """Raise ConfigError unless ``regu_coef`` is a finite number >= 0."""
    _check_number("regu_coef", regu_coef, 0.0, math.inf, ">= 0")


def _check_number(key: str, value, low: float, high: float, rule: str) -> None:
    """Raise ConfigError unless ``value`` is a finite number in [low, high)."""
    real = as_real(value)
    if real is None or not math.isfinite(real) or not low <= real < high:
        raise ConfigError(
            f"invalid {key}={value!r} for a training step; expected a finite "
            f"number {rule}"
        )
