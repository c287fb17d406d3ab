"""The pass pipeline: which rewrites run at each optimization level.

-O0 runs none; -O1 (the default) runs them all in this order. Any pass can
be switched off by name. The IR passes rewrite the IR before lowering;
plan_memory places the lowered net's buffers in one arena.
"""

from __future__ import annotations

import difflib
import logging

from mochac.errors import ConfigError
from mochac.layers import SplitLayer
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
# Each trial of choose_kept_splits runs every pass and a memory planning over
# the whole net, so trying every split one at a time would make building a
# net with many splits take time quadratic in its size.
MAX_SPLIT_TRIALS = 8


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
        matches = {
            name: difflib.get_close_matches(name, PASS_NAMES, n=1) for name in unknown
        }
        listed = ", ".join(
            repr(name)
            + (f" (did you mean '{matches[name][0]}'?)" if matches[name] else "")
            for name in unknown
        )
        raise ConfigError(
            f"disable lists unknown pass name(s) {listed}; known passes: "
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


def run_ir_passes(ir, opt_level: int = 1, disable=(), keep=frozenset(), measure=None):
    """Run the enabled IR passes on ``ir`` in place; return their reports.

    Each report carries ``before`` and ``after``: the ir_counts around it.
    The passes leave the data and diff of every blob in ``keep`` as they are
    at -O0. When eliminate_identity runs, ``keep`` first gains the bottoms
    that kept alias tops will share (keep_with_aliased_bottoms).

    ``measure(ir)``, when given, returns the MemoryPlan of the IR as the
    passes left it. Then split elimination never yields a higher
    ``peak_live_bytes`` or ``arena_bytes`` than the same passes without it
    (choose_kept_splits).
    """
    enabled = enabled_passes(opt_level, disable)
    if "eliminate_identity" in enabled:
        keep = keep_with_aliased_bottoms(ir, keep)
    kept_splits = frozenset()
    if measure is not None and "eliminate_splits" in enabled:
        kept_splits = choose_kept_splits(ir, enabled, keep, measure)
    return _run_passes(ir, enabled, keep, kept_splits)


def _run_passes(ir, enabled, keep, kept_splits, log=True):
    reports = []
    for name in enabled:
        if name not in IR_PASSES:
            continue
        before = ir_counts(ir)
        if name == "eliminate_splits":
            report = eliminate_splits(ir, keep, kept_splits)
        else:
            report = IR_PASSES[name](ir, keep)
        report.before, report.after = before, ir_counts(ir)
        if log:
            for change in report.changes:
                logger.debug("%s: %s", name, change)
        reports.append(report)
    ir.assign_diff_writers()
    return reports


def _pass_fields(ir):
    """Return the IR fields that the passes set, to restore them later."""
    blobs = {name: (b.data_alias, b.diff_alias) for name, b in ir.blobs.items()}
    layers = [(info.eliminated, info.fuse_neuron) for info in ir.layers]
    return blobs, layers


def _restore_pass_fields(ir, fields) -> None:
    blobs, layers = fields
    for name, (data_alias, diff_alias) in blobs.items():
        ir.blobs[name].data_alias = data_alias
        ir.blobs[name].diff_alias = diff_alias
    for info, (eliminated, fuse_neuron) in zip(ir.layers, layers):
        info.eliminated, info.fuse_neuron = eliminated, fuse_neuron
    ir.assign_diff_writers()


def _fits_within(plan, bound) -> bool:
    return (
        plan.peak_live_bytes <= bound.peak_live_bytes
        and plan.arena_bytes <= bound.arena_bytes
    )


def choose_kept_splits(ir, enabled, keep, measure) -> frozenset[str]:
    """Return the splits that must stay kernels so that split elimination
    raises neither the planned peak nor the arena; leave ``ir`` unchanged.

    Eliminating a split can raise the peak: its consumers then read one
    shared storage, which lives until the last of them, so fuse_inplace can
    no longer write a consumer's top over that consumer's own copy. It can
    also raise the arena, because best-fit placement is a heuristic and
    other live intervals can pack worse. Neither follows from one split
    alone, so the passes run again and ``measure`` plans each candidate.
    First every split is eliminated, and if that plan is no larger than the
    plan with every split kept, the result is the empty set. Otherwise,
    starting from every split kept, each split in layer order is eliminated
    only where the plan stays within the best one so far, for the first
    MAX_SPLIT_TRIALS splits, and the later ones stay. So the result never
    plans more than eliminate_splits disabled does, at the cost of up to
    MAX_SPLIT_TRIALS more plannings in the nets where the first plan is
    larger.
    """
    fresh = _pass_fields(ir)
    _run_passes(ir, enabled, keep, frozenset(), log=False)
    removed = [
        info.name
        for info in ir.layers
        if isinstance(info.layer, SplitLayer) and info.eliminated
    ]
    if not removed:
        _restore_pass_fields(ir, fresh)
        return frozenset()
    all_removed = measure(ir)
    _restore_pass_fields(ir, fresh)
    _run_passes(ir, enabled, keep, frozenset(removed), log=False)
    best = measure(ir)
    _restore_pass_fields(ir, fresh)
    if _fits_within(all_removed, best):
        return frozenset()
    kept_splits = frozenset(removed)
    if len(removed) > MAX_SPLIT_TRIALS:
        logger.debug(
            "net '%s': %d splits, so only the first %d are tried one at a time",
            ir.name,
            len(removed),
            MAX_SPLIT_TRIALS,
        )
    for name in removed[:MAX_SPLIT_TRIALS]:
        trial = kept_splits - {name}
        _run_passes(ir, enabled, keep, trial, log=False)
        plan = measure(ir)
        _restore_pass_fields(ir, fresh)
        if _fits_within(plan, best):
            kept_splits, best = trial, plan
    logger.debug(
        "net '%s': splits %s stay, because eliminating them would raise the "
        "planned peak or arena",
        ir.name,
        ", ".join(sorted(kept_splits)),
    )
    return kept_splits


__all__ = [
    "PASS_NAMES",
    "PassReport",
    "choose_kept_splits",
    "enabled_passes",
    "ir_counts",
    "pass_names",
    "run_ir_passes",
]
