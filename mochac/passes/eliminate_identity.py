"""eliminate_identity: IdentityLayer and ReshapeLayer become aliases.

Before: the layer copies each bottom to its top, and each top diff back.
After: each top's data and diff are its bottom's storage (a reshape keeps
the bytes and changes only the shape); no kernel runs for the layer.
DropoutLayer and RandomMaskLayer copy in a "test"-phase net, so there they
become aliases too.

A layer whose kept top would share the diff of a bottom that the bottom's
producer may rewrite in backward (a neuron scales the diff by f'(y) in
place) stays a kernel, so the top keeps the diff it has at -O0.
"""

from __future__ import annotations

import logging

from mochac.layers import DropoutLayer, IdentityLayer, RandomMaskLayer, ReshapeLayer
from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)

ALIAS_LAYERS = (IdentityLayer, ReshapeLayer)
# Layers that copy their bottoms only in a "test"-phase net.
TEST_PHASE_ALIAS_LAYERS = (DropoutLayer, RandomMaskLayer)


def is_alias_layer(ir, info) -> bool:
    """Return whether the layer's tops can alias its bottoms in this net."""
    if isinstance(info.layer, ALIAS_LAYERS):
        return True
    return ir.phase == "test" and isinstance(info.layer, TEST_PHASE_ALIAS_LAYERS)


def _reason_to_stay(ir, info, keep) -> str | None:
    """Return why the layer must stay a kernel, or None when its tops may alias."""
    for bottom, top in zip(info.layer.bottoms, info.layer.tops):
        if top not in keep:
            continue
        if not (ir.blobs[top].needs_diff and ir.blobs[bottom].needs_diff):
            continue
        producer = ir.layers[ir.blobs[bottom].producer]
        neuron = getattr(producer.layer, "neuron", None)
        if neuron is not None and not neuron.is_identity:
            return (
                f"the user keeps '{top}', whose diff would share the diff of "
                f"'{bottom}', which the neuron of '{producer.name}' may rescale "
                "in backward"
            )
    return None


def keep_with_aliased_bottoms(ir, keep) -> frozenset[str]:
    """Return ``keep`` plus the bottoms whose storage kept tops of alias layers
    (is_alias_layer) will share once eliminate_identity runs, transitively.

    The other passes then protect such a bottom as a kept blob. A split whose
    top it is stays a kernel, and no layer writes it in place, so the kept
    top's data and diff stay its own.
    """
    expanded = set(keep)
    pending = list(expanded)
    while pending:
        name = pending.pop()
        info = ir.layers[ir.blobs[name].producer]
        if not is_alias_layer(ir, info) or info.eliminated:
            continue
        # A layer that stays a kernel gives its top storage of its own.
        if _reason_to_stay(ir, info, expanded) is not None:
            continue
        bottom = info.layer.bottoms[list(info.layer.tops).index(name)]
        if bottom not in expanded:
            expanded.add(bottom)
            pending.append(bottom)
    return frozenset(expanded)


def eliminate_identity(ir, keep=frozenset()) -> PassReport:
    report = PassReport("eliminate_identity")
    itemsize = ir.dtype.itemsize
    for info in ir.layers:
        if not is_alias_layer(ir, info) or info.eliminated:
            continue
        reason = _reason_to_stay(ir, info, keep)
        if reason is not None:
            logger.debug("'%s' stays: %s", info.name, reason)
            continue
        for bottom, top in zip(info.layer.bottoms, info.layer.tops):
            blob = ir.blobs[top]
            blob.data_alias = bottom
            report.bytes_saved += blob.size * itemsize
            if blob.needs_diff and ir.blobs[bottom].needs_diff:
                blob.diff_alias = bottom
                report.bytes_saved += blob.size * itemsize
        info.eliminated = True
        report.changes.append(
            f"{type(info.layer).__name__} '{info.name}': "
            + ", ".join(
                f"'{top}' aliases '{bottom}'"
                for bottom, top in zip(info.layer.bottoms, info.layer.tops)
            )
        )
    return report
