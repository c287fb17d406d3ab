"""eliminate_identity: IdentityLayer and ReshapeLayer become aliases.

Before: the layer copies each bottom to its top, and each top diff back.
After: each top's data and diff are its bottom's storage (a reshape keeps
the bytes and changes only the shape); no kernel runs for the layer.
"""

from __future__ import annotations

from mochac.layers import IdentityLayer, ReshapeLayer
from mochac.passes.report import PassReport


def eliminate_identity(ir) -> PassReport:
    report = PassReport("eliminate_identity")
    itemsize = ir.dtype.itemsize
    for info in ir.layers:
        if not isinstance(info.layer, (IdentityLayer, ReshapeLayer)) or info.eliminated:
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
