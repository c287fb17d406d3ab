"""Which blobs' views would show another blob's values once passes share storage.

eliminate_splits and eliminate_identity give several blobs one storage with
the same values, so each of them can still be read. Three cases differ:

- fuse_inplace lets a layer write its top over its bottom. After forward the
  storage contains the last such top, so the blobs written before it no longer
  contain their own data.
- eliminate_splits makes every top of a split add its diff into the
  bottom's, so no top's own diff is stored anywhere.
- An identity or reshape top that eliminate_identity makes an alias shares
  its bottom's diff storage, which the bottom's layer changes in backward
  when it has a neuron (scaling by the derivative) or was written in place
  (writing its own bottom's diff). After backward the storage no longer
  contains the alias top's diff.

Net leaves these blobs out of ``net.blobs`` and ``net.diffs``, and reading
one raises KeyError with the reason.

NOTE: a top's diff is also the input of its layer's backward, so users may
write it before backward (to back-propagate from a chosen gradient), and it
stays readable even where backward changes it: a layer written in place
leaves its bottom's diff there, and a layer with a fused neuron may leave
the diff before or after the neuron's derivative, depending on its kernel.
"""

from __future__ import annotations

from mochac.layers import SplitLayer


def _eliminated_producer(ir, name: str) -> bool:
    return ir.layers[ir.blobs[name].producer].eliminated


def _data_source(ir, name: str) -> str:
    """Return the blob whose values ``name`` has: follow split and identity aliases."""
    blob = ir.blobs[name]
    while blob.data_alias is not None and _eliminated_producer(ir, name):
        name = blob.data_alias
        blob = ir.blobs[name]
    return name


def overwritten_data(ir) -> dict[str, tuple[str, str]]:
    """Return blob -> (why its storage contains other data, the pass to disable)."""
    position = {index: step for step, index in enumerate(ir.forward_order)}
    groups: dict[str, list[str]] = {}
    for name in ir.blobs:
        groups.setdefault(ir.data_root(name), []).append(name)
    overwritten = {}
    for names in groups.values():
        writers = [
            name
            for name in names
            if ir.blobs[name].data_alias is not None
            and not _eliminated_producer(ir, name)
        ]
        if not writers:
            continue
        last = max(writers, key=lambda name: position[ir.blobs[name].producer])
        layer = ir.layers[ir.blobs[last].producer].name
        for name in names:
            if _data_source(ir, name) != last:
                overwritten[name] = (
                    f"layer '{layer}' writes its top over it in place",
                    "fuse_inplace",
                )
    return overwritten


def _rewritten_in_backward(ir, name: str) -> str | None:
    """Return why backward changes the diff storage of blob ``name`` after an
    alias top has read it, or None when it stays as written."""
    blob = ir.blobs[name]
    producer = ir.layers[blob.producer]
    if producer.eliminated:
        return None
    neuron = getattr(producer.layer, "neuron", None)
    if neuron is not None and not neuron.is_identity:
        return (
            f"it shares the diff of '{name}', which the neuron of "
            f"'{producer.name}' may scale by its derivative in backward"
        )
    if blob.diff_alias is not None:
        return (
            f"it shares the diff of '{name}', which layer '{producer.name}' "
            "overwrites with its bottom's diff in backward"
        )
    return None


def merged_diffs(ir) -> dict[str, tuple[str, str]]:
    """Return blob -> (why its storage lacks its diff, the pass to disable)."""
    merged: dict[str, tuple[str, str]] = {}

    def reason(name: str) -> tuple[str, str] | None:
        if name in merged:
            return merged[name]
        blob = ir.blobs[name]
        producer = ir.layers[blob.producer]
        if blob.diff_alias is None or not producer.eliminated:
            return None
        if isinstance(producer.layer, SplitLayer):
            return (
                (
                    f"the diffs of all tops of split '{producer.name}' are summed "
                    "into one storage"
                ),
                "eliminate_splits",
            )
        # An identity or reshape top has its bottom's diff, which that
        # bottom's own layer may change in backward.
        rewritten = _rewritten_in_backward(ir, blob.diff_alias)
        if rewritten is not None:
            return (rewritten, "eliminate_identity")
        return reason(blob.diff_alias)

    for name in ir.blobs:
        found = reason(name)
        if found is not None:
            merged[name] = found
    return merged
