"""ReadAhead: a data source that a GPU net reads one batch early.

GPUNet fills the next batch on the host and copies it to the device while
the device still runs the current step. The wrapped source has then
advanced one batch past what the net has used. Until the net takes that
batch, ReadAhead reports the source's state from before it: position,
epoch, ``state_dict()`` and the rows of the last batch served. Coffee
breaks, validation loops, snapshots and error messages therefore see the
batches the net used, as with the CPU backend.
"""

from __future__ import annotations

# Attributes that live on the wrapper; every other one is the source's.
OWN = frozenset({"source", "pending", "before", "served_rows", "error", "arrays_read"})


class ReadAhead:
    """Wraps a data source (mochac.runtime.data_sources) for GPUNet.

    ``read(outputs)`` fills ``outputs`` with the source's next batch and
    leaves it pending. ``take()`` marks the pending batch as served and
    returns its n_valid. A read that raised leaves a pending failure
    instead, whose ``take()`` raises the same error, so the error comes
    from the step that needs the batch, as with an unwrapped source.
    ``drop()`` discards a pending batch or failure and moves the source
    back. ``rewind()``, ``load_state_dict()`` and ``close()`` drop first,
    and ``state_dict()`` drops a batch that ``is_outdated()``. Any other
    attribute is the source's.
    """

    def __init__(self, source):
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "pending", None)
        object.__setattr__(self, "before", None)
        object.__setattr__(self, "served_rows", None)
        object.__setattr__(self, "error", None)
        object.__setattr__(self, "arrays_read", None)

    def read(self, outputs) -> int | None:
        """Put the source's next batch into ``outputs``; return its n_valid,
        or None when the source raised (take() raises it then)."""
        if self.pending is not None:
            raise RuntimeError("ReadAhead.read: a batch is already pending")
        before = self.source.state_dict()
        rows = getattr(self.source, "last_indices", None)
        object.__setattr__(self, "arrays_read", self._arrays_now())
        try:
            n_valid = self.source.next_batch(outputs)
        except Exception as error:  # noqa: BLE001 - take() raises it
            n_valid, failure = None, error
        else:
            failure = None
        object.__setattr__(self, "before", before)
        object.__setattr__(self, "served_rows", rows)
        object.__setattr__(self, "error", failure)
        # A failed read is pending too: its take() raises.
        object.__setattr__(self, "pending", -1 if failure else n_valid)
        return n_valid

    def _arrays_now(self):
        """Return the number of assignments to the source's arrays (a
        MemoryDataLayer's) and the arrays with their shapes, or None for a
        source without arrays."""
        arrays = getattr(self.source, "arrays", None)
        if arrays is None:
            return None
        assignments = getattr(self.source, "arrays_assignments", 0)
        return assignments, [(array, getattr(array, "shape", None)) for array in arrays]

    def is_outdated(self) -> bool:
        """Return whether the pending batch was read from arrays that have
        since been assigned in the source's list, such as through
        ``source.arrays[0] = new`` on a reference kept from before the read,
        even when the assigned array is the same object.

        Writes into an array in place leave it the same object, so they are
        not seen here; drop() has to be called after them.
        """
        if self.pending is None or self.arrays_read is None:
            return False
        now = self._arrays_now()
        if now is None:
            return True
        assignments, arrays = now
        assignments_read, arrays_read = self.arrays_read
        if assignments != assignments_read or len(arrays) != len(arrays_read):
            return True
        return any(
            array is not old or shape != old_shape
            for (array, shape), (old, old_shape) in zip(arrays, arrays_read)
        )

    def take(self) -> int:
        """Mark the pending batch as served and return its n_valid; raise the
        error of a failed read, leaving the source where the failure left it."""
        if self.pending is None:
            raise RuntimeError("ReadAhead.take: no batch is pending")
        n_valid, error = self.pending, self.error
        for name in ("pending", "before", "served_rows", "error", "arrays_read"):
            object.__setattr__(self, name, None)
        if error is not None:
            raise error
        return n_valid

    def drop(self):
        """Discard the pending batch or failure, if any, and move the source
        back before it."""
        if self.pending is None:
            return
        outdated = self.is_outdated()
        before, rows = self.before, self.served_rows
        for name in ("pending", "before", "served_rows", "error", "arrays_read"):
            object.__setattr__(self, name, None)
        restore = self.source.load_state_dict
        if outdated:
            # A DataSource takes the new arrays in at its next batch, from the
            # epoch and generator state it had before the read.
            restore = getattr(self.source, "load_state_before_replacement", restore)
        restore(before)
        if rows is not None:
            self.source.last_indices = rows

    # --- the state of the batches served ------------------------------------

    @property
    def position(self) -> int:
        # Arrays replaced since the read restart at sample 0, which the
        # source's own position reports.
        if self.pending is None or self.is_outdated():
            return self.source.position
        return self.before["position"]

    @property
    def epoch(self) -> int:
        return self.source.epoch if self.pending is None else self.before["epoch"]

    @property
    def last_indices(self):
        if self.pending is None:
            return getattr(self.source, "last_indices", None)
        return self.served_rows

    def state_dict(self) -> dict:
        # The state from before a read from arrays replaced since belongs to
        # the old arrays. Dropping the batch lets the source take in the new
        # ones and return their state, as an unwrapped source's state_dict()
        # does (DataSource._check_arrays).
        if self.is_outdated():
            self.drop()
        return self.source.state_dict() if self.pending is None else dict(self.before)

    def load_state_dict(self, state: dict):
        self.drop()
        self.source.load_state_dict(state)

    def check_state_dict(self, state: dict) -> None:
        self.source.check_state_dict(state)

    def rewind(self):
        self.drop()
        self.source.rewind()

    def next_batch(self, outputs) -> int:
        """Serve the next batch now, as an unwrapped source does."""
        self.drop()
        return self.source.next_batch(outputs)

    def close(self):
        self.drop()
        self.source.close()

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __setattr__(self, name, value):
        if name in OWN:
            object.__setattr__(self, name, value)
            return
        # A caller changing the source (its arrays, its position) means the
        # batch read ahead from the old state is stale.
        self.drop()
        setattr(self.source, name, value)

    def __repr__(self):
        state = "no batch pending" if self.pending is None else "a batch pending"
        return f"ReadAhead({self.source!r}, {state})"
