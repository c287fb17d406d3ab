"""plan_memory: place buffers with disjoint lifetimes at shared arena offsets.

Stages: (1) each buffer comes with a live interval [start, end] of schedule
steps; (2) buffers are placed largest first, each at the best-fitting gap
among the already placed buffers whose intervals overlap its own (the
smallest gap that fits it, else the end of the arena); (3) the arena size
is the highest end offset. ``peak_live_bytes`` is the lower bound: the most
bytes live at any one step.

Before: one allocation per buffer. After: one arena, buffer i at offset[i].
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGNMENT = 64


@dataclass(frozen=True)
class LiveBuffer:
    """A buffer to place: ``nbytes`` live from step ``start`` to ``end`` inclusive."""

    key: object
    nbytes: int
    start: int
    end: int

    def overlaps(self, other: LiveBuffer) -> bool:
        return self.start <= other.end and other.start <= self.end


def align(value: int, alignment: int = ALIGNMENT) -> int:
    return (value + alignment - 1) // alignment * alignment


def plan_offsets(buffers: list[LiveBuffer], alignment: int = ALIGNMENT):
    """Return ({key: offset}, arena_bytes) with no two live buffers overlapping."""
    order = sorted(buffers, key=lambda b: (-b.nbytes, b.start, str(b.key)))
    placed: list[tuple[int, int, LiveBuffer]] = []
    offsets = {}
    for buffer in order:
        size = align(buffer.nbytes, alignment)
        busy = sorted(
            (offset, offset + align(other.nbytes, alignment))
            for offset, _, other in placed
            if other.overlaps(buffer)
        )
        best_offset, best_gap = None, None
        cursor = 0
        for low, high in busy:
            gap = low - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best_offset, best_gap = cursor, gap
            cursor = max(cursor, high)
        if best_offset is None:
            best_offset = cursor
        offsets[buffer.key] = best_offset
        placed.append((best_offset, size, buffer))
    arena = max((offset + size for offset, size, _ in placed), default=0)
    return offsets, arena


def peak_live_bytes(buffers: list[LiveBuffer], alignment: int = ALIGNMENT) -> int:
    """Return the largest total of aligned bytes live at one step."""
    if not buffers:
        return 0
    events = {}
    for buffer in buffers:
        size = align(buffer.nbytes, alignment)
        events[buffer.start] = events.get(buffer.start, 0) + size
        events[buffer.end + 1] = events.get(buffer.end + 1, 0) - size
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


@dataclass
class MemoryPlan:
    """Arena offsets of the planned slots, and what the plan saves.

    ``offsets`` maps slot indices to byte offsets; ``unplanned_bytes`` is the
    memory of one buffer per slot, ``peak_live_bytes`` the lower bound.
    """

    offsets: dict[int, int]
    arena_bytes: int
    unplanned_bytes: int
    peak_live_bytes: int


def plan_memory(slots, kernels, pinned: set[int]) -> MemoryPlan:
    """Plan the data, diff and work slots of a lowered net.

    Steps are the forward kernels in order, then the backward kernels in
    backward order; a slot lives from the first step that touches it to the
    last. ``pinned`` slots (inputs, outputs, blobs the user keeps) live
    through every step, so a caller can read them after any call.
    """
    forward = [kernel.context["forward_touch"] for kernel in kernels]
    backward = [
        kernel.context["backward_touch"]
        for kernel in kernels[::-1]
        if kernel.context["in_backward"]
    ]
    steps = forward + backward
    last = max(len(steps) - 1, 0)
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for step, touched in enumerate(steps):
        for index in touched:
            first_use.setdefault(index, step)
            last_use[index] = step
    buffers = []
    for slot in slots.slots:
        if slot.kind not in ("data", "diff", "work"):
            continue
        if slot.index in pinned:
            start, end = 0, last
        else:
            start = first_use.get(slot.index, 0)
            end = last_use.get(slot.index, start)
        buffers.append(LiveBuffer(slot.index, slot.nbytes, start, end))
    offsets, arena = plan_offsets(buffers)
    return MemoryPlan(
        offsets=offsets,
        arena_bytes=arena,
        unplanned_bytes=sum(align(buffer.nbytes) for buffer in buffers),
        peak_live_bytes=peak_live_bytes(buffers),
    )
