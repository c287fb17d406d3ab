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

NOTE: the pass reports the bytes of the removed tops as saved, yet
plan_memory's arena can grow after it: a conv -> split -> two inner
products -> add net at batch 16 plans 53,824 B with the pass and 50,240 B
without it (`mochac compile --report-json`, arena_bytes). Why, and keeping
a split whose removal raises the planned peak, are not done yet.
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
