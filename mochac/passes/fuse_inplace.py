"""fuse_inplace: a layer writes its top over a bottom that dies at that layer.

Before: top and bottom have separate storage.
After: the top's data (and, when both have diffs, its diff) use the bottom's
storage.

Safe only when, for the bottom's whole storage (every blob aliased to it):
the layer is marked inplace_capable, no other layer reads the storage later
in forward, the layer reads it through no other bottom, no backward pass
reads the storage's data (the producer's or the layer's own), no blob of
the storage is a data layer's output, kept by the user or read by no layer
(such blobs stay readable after forward), the top is not kept either, and
shapes match. A rejected candidate is logged at debug level.

The pipeline adds to ``keep`` the blobs that kept alias tops
(eliminate_identity) share, so keeping an alias of the bottom or of the
top counts as keeping that blob.
"""

from __future__ import annotations

import logging

from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)


def _storage_group(ir, root: str) -> list[str]:
    return [name for name in ir.blobs if ir.data_root(name) == root]


def _rejection_reason(ir, info, bottom, top, keep) -> str | None:
    """Return why the top may not overwrite the bottom, or None when it may."""
    root = ir.data_root(bottom)
    group = _storage_group(ir, root)
    if ir.blobs[bottom].shape != ir.blobs[top].shape:
        return "shapes differ"
    if any(name in keep for name in group):
        return f"'{root}' is kept for the user"
    # A blob that no layer reads stays readable after forward, as if kept.
    unread = [name for name in group if not ir.blobs[name].consumers]
    if unread:
        return f"'{unread[0]}', which shares the storage, is read by no layer"
    if top in keep:
        return f"the top '{top}' is kept for the user, with a diff of its own"
    # The layer's other bottoms are read after this pair's top is written,
    # and backward writes each bottom's diff: none may share the storage.
    for name in info.layer.bottoms:
        if name != bottom and ir.data_root(name) == root:
            return f"the layer also reads '{root}' through its bottom '{name}'"
    producer = ir.layers[ir.blobs[root].producer]
    if producer.layer.is_source:
        return f"'{root}' is a data layer output"
    # Readers that finished before this layer in forward are harmless unless
    # their backward reads the storage again.
    position = {index: step for step, index in enumerate(ir.forward_order)}
    for name in group:
        for index in ir.blobs[name].consumers:
            reader = ir.layers[index]
            if reader.eliminated or index == info.index:
                continue
            if position[index] > position[info.index]:
                return f"'{reader.name}' reads '{name}' later"
            if reader.in_backward and reader.layer.backward_reads_bottom_data():
                return f"the backward of '{reader.name}' reads '{name}'"
    if info.layer.backward_reads_bottom_data():
        return "its backward reads the bottom"
    for name in group:
        blob_producer = ir.layers[ir.blobs[name].producer]
        if (
            blob_producer.in_backward
            and not blob_producer.eliminated
            and blob_producer.layer.backward_reads_top_data()
        ):
            return f"the backward of '{blob_producer.name}' reads '{name}'"
    return None


def fuse_inplace(ir, keep=frozenset()) -> PassReport:
    report = PassReport("fuse_inplace")
    itemsize = ir.dtype.itemsize
    for index in ir.forward_order:
        info = ir.layers[index]
        if info.eliminated or not info.layer.inplace_capable:
            continue
        for bottom, top in zip(info.layer.bottoms, info.layer.tops):
            reason = _rejection_reason(ir, info, bottom, top, keep)
            if reason:
                logger.debug("in-place '%s' -> '%s' rejected: %s", bottom, top, reason)
                continue
            blob = ir.blobs[top]
            blob.data_alias = bottom
            report.bytes_saved += blob.size * itemsize
            if blob.needs_diff and ir.blobs[bottom].needs_diff:
                blob.diff_alias = bottom
                report.bytes_saved += blob.size * itemsize
            report.changes.append(
                f"layer '{info.name}' writes top '{top}' over bottom '{bottom}'"
            )
    return report
