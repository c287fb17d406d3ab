"""The slot table: every buffer the generated code reads, by index.

Generated code receives one ``void **`` array and reads buffer i as
``p[i]``. The runtime owns the buffers (NumPy arrays) and fills the array
once per net, so parameters shared between nets are the same memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Slot:
    """One buffer: what it holds, its element type and shape.

    ``kind`` is one of "data", "diff" (blob values and gradients), "param",
    "grad" (parameter values and gradients), "work" (scratch a layer keeps
    between its forward and backward), "state" (float64 accumulators such as
    loss values and statistics) and "rng" (uint64 random-stream states, saved
    in snapshots).
    """

    index: int
    kind: str
    owner: str
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    # For "work" slots: the phases ("forward", "backward") that use the slot.
    # A slot used by both carries values from forward to backward.
    phases: tuple[str, ...] = ("forward", "backward")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclass
class SlotTable:
    """All slots of a net in a fixed order, with lookup by (kind, owner, name)."""

    slots: list[Slot] = field(default_factory=list)
    lookup: dict[tuple[str, str, str], Slot] = field(default_factory=dict)

    def add(
        self, kind, owner, name, dtype, shape, phases=("forward", "backward")
    ) -> Slot:
        key = (kind, owner, name)
        if key in self.lookup:
            return self.lookup[key]
        slot = Slot(
            len(self.slots), kind, owner, name, np.dtype(dtype), tuple(shape), phases
        )
        self.slots.append(slot)
        self.lookup[key] = slot
        return slot

    def alias(self, kind, owner, target_owner, name=""):
        """Make (kind, owner, name) resolve to the slot of ``target_owner``."""
        self.lookup[(kind, owner, name)] = self.get(kind, target_owner, name)

    def get(self, kind, owner, name="") -> Slot:
        return self.lookup[(kind, owner, name)]

    def find(self, kind, owner, name=""):
        return self.lookup.get((kind, owner, name))
