"""Learning-rate policies: the global learning rate as a function of the iteration.

Use them as Mocha does: ``LRPolicy.Inv(0.01, 0.0001, 0.75)``. Each policy is
called with the solver state and returns the rate for the coming update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mochac.errors import ConfigError


def _check(policy, field, value, minimum=None, integer=False):
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ConfigError(
            f"LRPolicy.{type(policy).__name__}: invalid {field}={value!r}; expected "
            f"{'an int' if integer else 'a number'}"
        )
    if minimum is not None and value < minimum:
        raise ConfigError(
            f"LRPolicy.{type(policy).__name__}: invalid {field}={value!r}; expected a "
            f"value >= {minimum}"
        )


@dataclass(frozen=True)
class Fixed:
    """lr = base_lr."""

    base_lr: float

    def __post_init__(self):
        _check(self, "base_lr", self.base_lr, 0)

    def __call__(self, state) -> float:
        return float(self.base_lr)


@dataclass(frozen=True)
class Step:
    """lr = base_lr * gamma ** floor(iter / stepsize)."""

    base_lr: float
    gamma: float
    stepsize: int

    def __post_init__(self):
        _check(self, "base_lr", self.base_lr, 0)
        _check(self, "gamma", self.gamma, 0)
        _check(self, "stepsize", self.stepsize, 1, integer=True)

    def __call__(self, state) -> float:
        return self.base_lr * self.gamma ** (state.iter // self.stepsize)


@dataclass(frozen=True)
class Exp:
    """lr = base_lr * gamma ** iter."""

    base_lr: float
    gamma: float

    def __post_init__(self):
        _check(self, "base_lr", self.base_lr, 0)
        _check(self, "gamma", self.gamma, 0)

    def __call__(self, state) -> float:
        return self.base_lr * self.gamma**state.iter


@dataclass(frozen=True)
class Inv:
    """lr = base_lr * (1 + gamma * iter) ** (-power)."""

    base_lr: float
    gamma: float
    power: float

    def __post_init__(self):
        _check(self, "base_lr", self.base_lr, 0)
        _check(self, "gamma", self.gamma, 0)
        _check(self, "power", self.power)

    def __call__(self, state) -> float:
        return self.base_lr * math.pow(1.0 + self.gamma * state.iter, -self.power)


class Staged:
    """Other policies in turn, each for a number of iterations.

    ``Staged((5000, Fixed(0.1)), (3000, Fixed(0.01)), ...)``: the first policy
    serves iterations up to 5000, the next the 3000 after that, and the last
    one every iteration past the end. Each policy sees the global iteration.
    """

    def __init__(self, *stages):
        if not stages:
            raise ConfigError(
                "LRPolicy.Staged: give at least one (n_iter, policy) stage"
            )
        for stage in stages:
            if (
                not isinstance(stage, tuple)
                or len(stage) != 2
                or not isinstance(stage[0], int)
                or stage[0] < 1
                or not callable(stage[1])
            ):
                raise ConfigError(
                    f"LRPolicy.Staged: invalid stage {stage!r}; expected "
                    "(n_iter >= 1, policy)"
                )
        self.stages = stages

    def __call__(self, state) -> float:
        end = 0
        for n_iter, policy in self.stages:
            end += n_iter
            if state.iter <= end:
                return policy(state)
        return self.stages[-1][1](state)

    def __repr__(self):
        return f"Staged{self.stages!r}"


class LRPolicy:
    """Mocha's namespace of learning-rate policies."""

    Fixed = Fixed
    Step = Step
    Exp = Exp
    Inv = Inv
    Staged = Staged
