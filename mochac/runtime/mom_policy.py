"""Momentum policies: the momentum as a function of the iteration.

Use them as Mocha does: ``MomPolicy.Step(0.5, 1.1, 1000, 0.9)``. Each policy
is called with the solver state and returns the momentum for the coming
update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mochac.errors import ConfigError
from mochac.runtime.lr_policy import Staged as StagedPolicy
from mochac.values import as_int, as_real


def _check(policy, field, minimum=None, below=None, integer=False):
    """Check a field of a frozen policy and store it as a Python int or float."""
    value = getattr(policy, field)
    number = as_int(value) if integer else as_real(value)
    name = f"MomPolicy.{type(policy).__name__}"
    if number is None:
        raise ConfigError(
            f"{name}: invalid {field}={value!r}; expected "
            f"{'an int' if integer else 'a number'}"
        )
    if not math.isfinite(number):
        raise ConfigError(
            f"{name}: invalid {field}={value!r}; expected a finite number"
        )
    if below is not None and not (minimum or 0) <= number < below:
        raise ConfigError(
            f"{name}: invalid {field}={value!r}; expected a number in "
            f"[{minimum or 0}, {below})"
        )
    if minimum is not None and number < minimum:
        raise ConfigError(
            f"{name}: invalid {field}={value!r}; expected a value >= {minimum}"
        )
    # A float gamma makes gamma ** n overflow with OverflowError instead of
    # building a huge int.
    object.__setattr__(policy, field, number if integer else float(number))


@dataclass(frozen=True)
class Fixed:
    """momentum = base_mom at every iteration."""

    base_mom: float

    def __post_init__(self):
        _check(self, "base_mom", 0, 1)

    def __call__(self, state) -> float:
        return float(self.base_mom)


@dataclass(frozen=True)
class Step:
    """momentum = min(base_mom * gamma ** floor(iter / stepsize), max_mom)."""

    base_mom: float
    gamma: float
    stepsize: int
    max_mom: float

    def __post_init__(self):
        _check(self, "base_mom", 0, 1)
        _check(self, "gamma", 0)
        _check(self, "stepsize", 1, integer=True)
        _check(self, "max_mom", 0, 1)

    def __call__(self, state) -> float:
        try:
            grown = self.base_mom * self.gamma ** (state.iter // self.stepsize)
        except OverflowError:
            # Only gamma > 1 overflows, and the momentum then stops at max_mom.
            grown = math.inf
        return float(min(grown, self.max_mom))


@dataclass(frozen=True)
class Linear:
    """momentum = min(base_mom + floor(iter / stepsize) * gamma, max_mom)."""

    base_mom: float
    gamma: float
    stepsize: int
    max_mom: float

    def __post_init__(self):
        _check(self, "base_mom", 0, 1)
        # min(..., max_mom) caps a growing momentum only.
        _check(self, "gamma", 0)
        _check(self, "stepsize", 1, integer=True)
        _check(self, "max_mom", 0, 1)

    def __call__(self, state) -> float:
        grown = self.base_mom + (state.iter // self.stepsize) * self.gamma
        return float(min(grown, self.max_mom))


class Staged(StagedPolicy):
    """Other momentum policies in turn, each for a number of iterations.

    ``Staged((5000, Fixed(0.5)), (3000, Fixed(0.9)))`` follows the rule of
    LRPolicy.Staged: the first policy serves 5000 updates (iterations 0 to
    4999), the next the 3000 after that, and the last one every iteration
    past the end.
    """

    namespace = "MomPolicy"
    other_kind = "mochac.runtime.lr_policy"


class MomPolicy:
    """Mocha's namespace of momentum policies."""

    Fixed = Fixed
    Step = Step
    Linear = Linear
    Staged = Staged
