"""The pass pipeline: which rewrites run at each optimization level.

-O0 runs none; -O1 (the default) runs them all in this order. Any pass can
be switched off by name. The IR passes rewrite the IR before lowering;
plan_memory places the lowered net's buffers in one arena.
"""

from __future__ import annotations

import logging

from mochac.errors import ConfigError
from mochac.passes.eliminate_identity import (
    eliminate_identity,
    keep_with_aliased_bottoms,
)
from mochac.passes.eliminate_splits import eliminate_splits
from mochac.passes.fuse_inplace import fuse_inplace
from mochac.passes.fuse_neurons import fuse_neurons
from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)

IR_PASSES = {
    "eliminate_splits": eliminate_splits,
    "eliminate_identity": eliminate_identity,
    "fuse_inplace": fuse_inplace,
    "fuse_neurons": fuse_neurons,
}
PASS_NAMES = (*IR_PASSES, "plan_memory")


def pass_names(disable) -> tuple[str, ...]:
    """Return ``disable`` as a tuple of pass names; a single string is one name.

    Raises ConfigError when ``disable`` is neither a string nor a list of them.
    """
    if isinstance(disable, str):
        return (disable,)
    try:
        names = tuple(disable)
    except TypeError:
        raise ConfigError(
            f"invalid disable={disable!r}; expected a list of pass names such as "
            "['plan_memory']"
        ) from None
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(
            f"invalid disable={disable!r}; expected a list of pass names (strings) "
            "such as ['plan_memory']"
        )
    return names


def kept_blob_names(keep) -> frozenset[str]:
    """Return ``keep`` as a set of blob names; a single string is one name.

    Raises ConfigError when ``keep`` is neither a string nor a list of them.
    """
    if isinstance(keep, str):
        return frozenset((keep,))
    try:
        names = frozenset(keep)
    except TypeError:
        raise ConfigError(
            f"invalid keep={keep!r}; expected a list of blob names such as ['ip1']"
        ) from None
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(
            f"invalid keep={keep!r}; expected a list of blob names (strings) "
            "such as ['ip1']"
        )
    return names


def enabled_passes(opt_level: int, disable=()) -> list[str]:
    """Return the names of the passes that run; raise ConfigError on bad options."""
    if opt_level not in (0, 1):
        raise ConfigError(f"invalid opt_level={opt_level!r}; expected 0 or 1")
    disable = pass_names(disable)
    unknown = [name for name in disable if name not in PASS_NAMES]
    if unknown and len(disable) > 1 and all(len(name) == 1 for name in disable):
        # tuple("plan_memory") splits a single name into letters.
        raise ConfigError(
            f"disable lists the letters of {''.join(disable)!r}; pass a list of "
            f"pass names such as disable=['{''.join(disable)}']"
        )
    if unknown:
        raise ConfigError(
            f"unknown pass name(s) {', '.join(unknown)}; known passes: "
            f"{', '.join(PASS_NAMES)}"
        )
    if opt_level == 0:
        return []
    return [name for name in PASS_NAMES if name not in disable]


def ir_counts(ir) -> dict:
    """Return the sizes a report compares: layers, blobs, kernels and bytes.

    ``kernels`` counts the native calls of one training iteration (forward
    and, for layers in the backward schedule, backward), a separate neuron
    kernel counting as one more in each direction.
    """
    running = [
        info for info in ir.layers if not info.layer.is_source and not info.eliminated
    ]
    kernels = 0
    for info in running:
        neuron = getattr(info.layer, "neuron", None)
        separate = (
            neuron is not None and not neuron.is_identity and not info.fuse_neuron
        )
        kernels += 1 + separate
        if info.in_backward:
            kernels += 1 + separate
    data_roots = {ir.data_root(name) for name in ir.blobs}
    diff_roots = {ir.diff_root(name) for name in ir.blobs if ir.blobs[name].needs_diff}
    itemsize = ir.dtype.itemsize
    return {
        "layers": len(running),
        "blobs": len(data_roots),
        "kernels": kernels,
        "blob_bytes": sum(ir.blobs[name].size for name in data_roots) * itemsize
        + sum(ir.blobs[name].size for name in diff_roots) * itemsize,
    }


def run_ir_passes(ir, opt_level: int = 1, disable=(), keep=frozenset()):
    """Run the enabled IR passes on ``ir`` in place; return their reports.

    Each report carries ``before`` and ``after``: the ir_counts around it.
    The passes leave the data and diff of every blob in ``keep`` as they are
    at -O0. When eliminate_identity runs, ``keep`` first gains the bottoms
    that kept alias tops will share (keep_with_aliased_bottoms).
    """
    enabled = enabled_passes(opt_level, disable)
    if "eliminate_identity" in enabled:
        keep = keep_with_aliased_bottoms(ir, keep)
    reports = []
    for name in enabled:
        if name not in IR_PASSES:
            continue
        before = ir_counts(ir)
        report = IR_PASSES[name](ir, keep)
        report.before, report.after = before, ir_counts(ir)
        for change in report.changes:
            logger.debug("%s: %s", name, change)
        reports.append(report)
    ir.assign_diff_writers()
    return reports


__all__ = [
    "PASS_NAMES",
    "PassReport",
    "enabled_passes",
    "ir_counts",
    "pass_names",
    "run_ir_passes",
]
