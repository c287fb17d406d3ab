"""Lowering of the output layers (templates/c/output.c.j2), which compute nothing."""

from __future__ import annotations

from mochac.codegen.lowering import register_lowering
from mochac.layers.output import HDF5OutputLayer, MemoryOutputLayer


@register_lowering(MemoryOutputLayer, "output")
@register_lowering(HDF5OutputLayer, "output")
def lower_output(info, ir, slots):
    return {}
