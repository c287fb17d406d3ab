"""eliminate_splits: a split becomes aliases of one storage.

Before: split copies its bottom into every top in forward, and sums the
tops' diffs into the bottom's diff in backward.
After: every top's data and diff are the bottom's; no split kernel runs, and
the consumers' backward passes add into the one shared diff (see
NetIR.assign_diff_writers).

A forward alias is only safe while nobody writes a top in place, which
fuse_inplace checks on the shared storage. A split with a top the user
keeps stays a kernel, so that top keeps a diff of its own. The pipeline
adds to ``keep`` the blobs that kept alias tops (eliminate_identity) share,
so keeping such an alias of a top counts as keeping the top.

The merged storage is live at a step only where the bottom or a top was
live before, so the aliases alone do not raise plan_memory's peak. The
bottom still counts as read by the removed split, so Net does not pin it
as a blob that no layer reads.

The peak can still rise, because fuse_inplace may then write fewer tops
in place. With the split, a consumer such as a SoftmaxLayer can write its
top over its own copy, which dies there. The merged storage lives until the
last consumer, so that consumer's top needs storage of its own. Best-fit
placement can also pack the merged intervals into a larger arena. So when
plan_memory runs, the pipeline keeps the splits named in ``kept_splits``:
those whose elimination would plan a higher peak or a larger arena than
keeping every split (pipeline.choose_kept_splits).
"""

from __future__ import annotations

import logging

from mochac.layers import SplitLayer
from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)


def eliminate_splits(ir, keep=frozenset(), kept_splits=frozenset()) -> PassReport:
    """Turn the tops of every split into aliases of its bottom.

    Splits named in ``kept_splits`` stay kernels, and so does a split with a
    top in ``keep``.
    """
    report = PassReport("eliminate_splits")
    itemsize = ir.dtype.itemsize
    for info in ir.layers:
        if not isinstance(info.layer, SplitLayer) or info.eliminated:
            continue
        if info.name in kept_splits:
            logger.debug(
                "split '%s' stays: eliminating it would raise the planned memory",
                info.name,
            )
            continue
        kept_tops = [top for top in info.layer.tops if top in keep]
        if kept_tops:
            # A kept top needs a diff of its own, which only the split's
            # own backward (summing the tops' diffs) leaves readable.
            logger.debug("split '%s' stays: the user keeps %s", info.name, kept_tops)
            continue
        bottom = info.layer.bottoms[0]
        saved = 0
        for top in info.layer.tops:
            blob = ir.blobs[top]
            blob.data_alias = bottom
            saved += blob.size * itemsize
            if blob.needs_diff and ir.blobs[bottom].needs_diff:
                blob.diff_alias = bottom
                saved += blob.size * itemsize
        info.eliminated = True
        report.bytes_saved += saved
        report.changes.append(
            f"split '{info.name}': tops {', '.join(info.layer.tops)} alias '{bottom}'"
        )
    return report
