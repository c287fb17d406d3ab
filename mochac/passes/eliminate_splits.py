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

NOTE: the arena can still come out larger than with this pass disabled,
and nothing compares the two plans or keeps such a split. Best-fit
placement can leave gaps above the peak, and larger ones for the merged
buffers in some nets. Removing a split whose tops feed in-place capable
layers (two SoftmaxLayers, say) stops fuse_inplace from writing each over
its own copy, which in rare nets raises the peak itself.
"""

from __future__ import annotations

import logging

from mochac.layers import SplitLayer
from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)


def eliminate_splits(ir, keep=frozenset()) -> PassReport:
    report = PassReport("eliminate_splits")
    itemsize = ir.dtype.itemsize
    for info in ir.layers:
        if not isinstance(info.layer, SplitLayer) or info.eliminated:
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
