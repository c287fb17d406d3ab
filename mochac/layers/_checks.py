"""Field checks shared by the layer configs; each raises ConfigError naming the layer."""

from __future__ import annotations

import math

from mochac.initializers import Initializer
from mochac.neurons import Neuron
from mochac.regularizers import Regularizer


def check_int(layer, field, minimum=1):
    value = getattr(layer, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        layer._fail(field, value, f"an int >= {minimum}")


def check_number(layer, field, minimum=None):
    value = getattr(layer, field)
    # Generated C prints the value as a literal, and C has no literal for inf or nan.
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
    ):
        layer._fail(field, value, "a finite number")
    if minimum is not None and value < minimum:
        layer._fail(field, value, f"a number >= {minimum}")


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
