"""Momentum policies: ``MomPolicy.Fixed(0.9)``."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.errors import ConfigError


@dataclass(frozen=True)
class Fixed:
    """momentum = base_mom at every iteration."""

    base_mom: float

    def __post_init__(self):
        value = self.base_mom
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not (0 <= value < 1)
        ):
            raise ConfigError(
                f"MomPolicy.Fixed: invalid base_mom={value!r}; expected a number in [0, 1)"
            )

    def __call__(self, state) -> float:
        return float(self.base_mom)


class MomPolicy:
    """Mocha's namespace of momentum policies."""

    Fixed = Fixed
