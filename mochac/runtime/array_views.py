"""The dicts through which users reach a net's arrays: params, grads, blobs, diffs.

Each maps names to the net's own arrays, which the compiled code reads, so
once locked they reject replaced entries. BlobViews also explain why a blob
is missing: its storage is shared by the memory plan, or contains another
blob's values after an in-place write or a split (mochac.ir.overwrites).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from mochac.errors import ConfigError, NotFoundError, name_not_found
from mochac.ir.overwrites import merged_diffs, overwritten_data


class ArrayViews(dict):
    """Name -> one of the net's own arrays, which the compiled code reads.

    Once locked, replacing or removing an entry raises ConfigError, because
    the compiled code would go on using the old array while the new one
    silently received nothing. Write into the array in place instead.
    """

    def __init__(self, label: str, entries=()):
        super().__init__(entries)
        self.label = label
        self.locked = False
        # Key -> why it has no entry, for the KeyError of a lookup.
        self.missing: dict[str, str] = {}
        # Why the view has no entries at all, such as a net that runs no
        # backward pass, or None. It replaces the reasons per key.
        self.empty_reason: str | None = None

    def __missing__(self, key):
        if self.empty_reason is not None and not self:
            raise NotFoundError(f"{self.label}[{key!r}]: {self.empty_reason}")
        if key in self.missing:
            raise NotFoundError(f"{self.label}[{key!r}]: {self.missing[key]}")
        raise name_not_found(
            f"{self.label} has no entry {key!r}",
            [key],
            self,
            "the entries",
            "pass one of these names",
        )

    def lock(self):
        """Reject replacements from now on, in nested views too."""
        self.locked = True
        for value in self.values():
            if isinstance(value, ArrayViews):
                value.lock()

    def _reject(self, key=None):
        """Raise ConfigError for a change to entry ``key`` (None: the whole dict)."""
        if not self.locked:
            return
        read_only = (
            f"{self.label} is read-only: its arrays are the net's own, which the "
            "compiled code reads"
        )
        if key is None:
            raise ConfigError(f"{read_only}, so entries cannot be removed")
        if key not in self:
            raise ConfigError(
                f"{read_only}, and it has no entry {key!r} to write; the entries "
                f"are: {', '.join(map(repr, self)) or 'none'}"
            )
        entry = f"{self.label}[{key!r}]"
        if isinstance(dict.__getitem__(self, key), ArrayViews):
            inner = next(iter(dict.__getitem__(self, key)), "name")
            raise ConfigError(
                f"{read_only}, so {entry} cannot be replaced; write into one of its "
                f"arrays instead: {entry}[{inner!r}][...] = new_values"
            )
        raise ConfigError(
            f"{read_only}, so {entry} cannot be replaced; write into it instead: "
            f"{entry}[...] = new_values"
        )

    def __setitem__(self, key, value):
        # ``views[key] *= 2`` multiplies the array in place, then stores the
        # same array back, which replaces nothing.
        if key in self and dict.__getitem__(self, key) is value:
            return
        self._reject(key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._reject(key)
        super().__delitem__(key)

    def setdefault(self, key, default=None):
        if key not in self:
            self._reject(key)
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        for key in dict(*args, **kwargs):
            self._reject(key)
        super().update(*args, **kwargs)

    def pop(self, key, *default):
        self._reject(key)
        return super().pop(key, *default)

    def popitem(self):
        self._reject()
        return super().popitem()

    def clear(self):
        self._reject()
        super().clear()


def locked_views(label: str, mapping: dict) -> ArrayViews:
    """Return ``mapping`` as locked ArrayViews; nested dicts become views too."""
    views = ArrayViews(label)
    for key, value in mapping.items():
        if isinstance(value, dict):
            value = locked_views(f"{label}[{key!r}]", value)
        dict.__setitem__(views, key, value)
    views.lock()
    return views


def destroyed_views(label: str, reason: str) -> ArrayViews:
    """Return empty locked views whose every lookup raises NotFoundError with
    ``reason``, for the arrays of a destroyed net."""
    views = ArrayViews(label)
    views.empty_reason = reason
    views.lock()
    return views


class BlobViews(ArrayViews):
    """Blob name -> NumPy view; explains why a blob left out is missing."""

    def __init__(self, kind):
        label = "net.blobs" if kind == "data" else "net.diffs"
        super().__init__(label)
        self.kind = kind
        # Blob name -> (why its view is left out, the pass that left it out).
        self.hidden: dict[str, tuple[str, str]] = {}
        # (package folder, net file, passes it was compiled without) of a net
        # loaded from a compiled package, whose user cannot pass keep= or
        # disable= to Net, or None.
        self.package: tuple[str, str | None, list[str]] | None = None

    def __missing__(self, name):
        if self.empty_reason is not None and not self and not self.hidden:
            raise NotFoundError(f"{self.label}[{name!r}]: {self.empty_reason}")
        if name in self.hidden:
            reason, pass_name = self.hidden[name]
            raise NotFoundError(
                f"the {self.kind} of blob '{name}' cannot be read: {reason}; "
                f"{self._advice(name, pass_name)}"
            )
        raise name_not_found(
            f"no blob named {name!r} has {self.kind}",
            [name],
            self,
            f"the blobs in {self.label}",
            "pass one of these names",
        )

    def _advice(self, name: str, pass_name: str) -> str:
        """Return how to make blob ``name`` readable, which ``pass_name`` hid."""
        if self.package is None:
            if pass_name == "plan_memory":
                return (
                    f"pass keep=['{name}'] to Net, or disable=('plan_memory',), "
                    "to read it"
                )
            return (
                f"pass keep=['{name}'] to Net, or disable=('{pass_name}',) to Net "
                "to read it"
            )
        folder, net_file, disabled = self.package
        # The command writes the package where it is, with the passes it
        # was compiled without.
        output = shlex.quote(str(Path(folder).parent))
        if net_file is None:
            net_file = "the net file"
            command = f"mochac compile NET_FILE -o {output}"
        else:
            command = f"mochac compile {shlex.quote(net_file)} -o {output}"
        command += "".join(f" --disable {other}" for other in disabled)
        return (
            f"the net was loaded from the compiled package {folder}, so to read "
            f"it, add keep=['{name}'] to the Net in {net_file} and run `{command}` "
            f"again, or run `{command} --disable {pass_name}`"
        )


def no_backward_reason(net) -> str | None:
    """Return why ``net`` has no diffs or gradients when it runs no backward
    pass, with what to do, else None."""
    ir = net.ir
    if ir.backward_order:
        return None
    if any(info.layer.has_loss for info in ir.layers):
        return (
            f"net '{net.name}' runs no backward pass, so it has no diffs or "
            "gradients: its loss layers send no gradient to a layer with "
            "parameters; connect the layers to train to a loss through layers "
            "that back-propagate"
        )
    return (
        f"net '{net.name}' has no loss layer, so it runs no backward pass and "
        "has no diffs or gradients (a test or deploy net is built without one); "
        "build the net with a loss layer, as a training net is, to read them, "
        "or pass force_backward=True to Net to run backward without a loss"
    )


def blob_views(net, pinned: set[int]) -> tuple[BlobViews, BlobViews]:
    """Return the views of ``net``'s blob data and diffs, aliases included.

    A blob is left out when the memory plan shares its storage (its slot is
    not in ``pinned``), when an in-place layer wrote over its data, or when
    its storage contains a diff other than its own.
    """
    ir = net.ir
    overwritten = overwritten_data(ir)
    merged = merged_diffs(ir)
    blobs, diffs = BlobViews("data"), BlobViews("diff")
    for name, blob in ir.blobs.items():
        for kind, views in (("data", blobs), ("diff", diffs)):
            slot = net.slots.find(kind, name)
            if slot is None:
                continue
            shared = (overwritten if kind == "data" else merged).get(name)
            if shared is not None:
                # Keeping the blob stops the in-place write or keeps the split
                # (mochac.passes), so either view becomes readable.
                reason, pass_name = shared
                views.hidden[name] = (f"{reason} ({pass_name})", pass_name)
            elif net.plan is not None and slot.index not in pinned:
                views.hidden[name] = (
                    "it shares memory with other blobs after plan_memory",
                    "plan_memory",
                )
            else:
                views[name] = net.arrays[slot.index].reshape(blob.shape)
    diffs.empty_reason = no_backward_reason(net)
    return blobs, diffs
