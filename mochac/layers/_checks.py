"""Field checks shared by the layer configs; each raises ConfigError naming the layer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mochac.errors import ConfigError
from mochac.initializers import Initializer
from mochac.neurons import Neuron
from mochac.regularizers import Regularizer
from mochac.values import as_int, as_real


def check_int(layer, field, minimum=1, expected=None):
    """Check that ``field`` is an integer >= ``minimum`` (None: any) and store it
    as a Python int, so a NumPy integer works too."""
    raw = getattr(layer, field)
    value = as_int(raw)
    if expected is None:
        expected = "an int" if minimum is None else f"an int >= {minimum}"
    if value is None or (minimum is not None and value < minimum):
        if value == 0 and minimum == 1 and _default(layer, field) == 0:
            # A required field: 0 is its value when the caller leaves it out.
            raise ConfigError(
                f"{layer.title}: invalid {field}=0; expected {expected}. The field "
                "is required, and 0 is its value when it is not given."
            )
        layer._fail(field, raw, expected)
    object.__setattr__(layer, field, value)


def _default(layer, field):
    """Return the dataclass default of ``field``, or None when it has none."""
    for entry in dataclasses.fields(layer):
        if entry.name == field:
            return entry.default
    return None


def check_bool(layer, field):
    """Check that ``field`` is True or False (NumPy's bools too) and store it
    as a Python bool."""
    raw = getattr(layer, field)
    if not isinstance(raw, (bool, np.bool_)):
        layer._fail(field, raw, "True or False")
    object.__setattr__(layer, field, bool(raw))


def check_number(layer, field, minimum=None):
    """Check that ``field`` is a finite real number >= ``minimum`` (None: any)
    and store it as a Python int or float."""
    raw = getattr(layer, field)
    value = as_real(raw)
    # Generated C prints the value as a literal, and C has no literal for inf or nan.
    if value is None or not math.isfinite(value):
        layer._fail(field, raw, "a finite number")
    if minimum is not None and value < minimum:
        layer._fail(field, raw, f"a number >= {minimum}")
    object.__setattr__(layer, field, value)


def check_instance(layer, field, kind, what):
    value = getattr(layer, field)
    if not isinstance(value, kind):
        layer._fail(field, value, what)


def check_param_fields(layer, prefix):
    """Check ``<prefix>_init``, ``<prefix>_regu`` and ``<prefix>_lr`` plus bias_*."""
    for name in (prefix, "bias"):
        check_instance(layer, f"{name}_init", Initializer, "an initializer")
        check_instance(layer, f"{name}_regu", Regularizer, "a regularizer")
        check_number(layer, f"{name}_lr", minimum=0)
    check_instance(layer, "neuron", Neuron, "a neuron such as Neurons.ReLU()")
    if not isinstance(layer.param_key, str):
        layer._fail("param_key", layer.param_key, "a string")
