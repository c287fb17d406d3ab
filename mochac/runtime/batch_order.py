"""BatchOrder: the sample order of a data source and its state in snapshots."""

from __future__ import annotations

import json
import logging

import numpy as np

from mochac.errors import SnapshotError

# The data sources' messages keep one logger name, whichever module they
# come from, so that a level or filter set on it covers them all.
logger = logging.getLogger("mochac.runtime.data_sources")


class BatchOrder:
    """The sample order of a data source: in order, or a new permutation per epoch."""

    def __init__(self, n_samples: int, batch_size: int, rng, shuffle: bool, owner: str):
        # The layer named in errors, "HDF5DataLayer 'train'".
        self.owner = owner
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = rng
        self.position = 0
        self.epoch = 0
        self.order = self._new_order()

    def _new_order(self):
        # Drawing an order advances the generator, so its cached JSON state
        # (state_dict) is stale.
        self._rng_json = None
        return self.rng.permutation(self.n_samples) if self.shuffle else None

    def _indices(self) -> tuple[np.ndarray, int]:
        """Advance one batch; return its sample indices and the count before a wrap."""
        total = self.n_samples
        picked = []
        valid = None
        needed = self.batch_size
        while needed:
            take = min(needed, total - self.position)
            span = np.arange(self.position, self.position + take)
            picked.append(self.order[span] if self.order is not None else span)
            self.position += take
            needed -= take
            if self.position == total:
                self.position = 0
                self.epoch += 1
                if valid is None:
                    valid = self.batch_size - needed
                self.order = self._new_order()
        if valid is None:
            valid = self.batch_size
        return np.concatenate(picked), valid

    def rewind(self):
        """Start again at the first sample of a new epoch count (for validation)."""
        self.position = 0
        self.epoch = 0
        self.order = self._new_order()

    def state_dict(self) -> dict:
        """The position, epoch, order and generator state, for snapshots."""
        return {
            "position": self.position,
            "epoch": self.epoch,
            "order": self.order,
            "rng": self._rng_state_json(),
        }

    def _rng_state_json(self) -> str:
        """Return the generator's state as JSON, cached between the draws:
        the solver captures the state before every step."""
        if self._rng_json is None:
            self._rng_json = json.dumps(self.rng.bit_generator.state)
        return self._rng_json

    def load_state_dict(self, state: dict):
        """Restore a state from state_dict(), which a snapshot stores.

        Raises SnapshotError and changes nothing when the state does not fit
        the current data. The checks reject a position that is not a sample
        index, a negative epoch, an order that is not a permutation of the
        sample indices and a generator state that numpy rejects. A saved order
        is ignored when the layer does not shuffle.
        """
        position, epoch, order, rng_state = self._checked_state(state)
        if self.shuffle and state.get("order") is None:
            logger.warning(
                "%s: the saved state has no sample order, but the layer shuffles "
                "now; the rest of this epoch reads the samples in file order",
                self.owner,
            )
        self.rng.bit_generator.state = rng_state
        self._rng_json = None
        self.position = position
        self.epoch = epoch
        self.order = order

    def check_state_dict(self, state: dict) -> None:
        """Raise SnapshotError, as load_state_dict would, when ``state`` does
        not fit the current data; change nothing either way."""
        self._checked_state(state)

    def _checked_state(self, state: dict) -> tuple:
        """Return (position, epoch, order, generator state) of a checked state."""
        position = self._whole_number(state, "position")
        if not 0 <= position < self.n_samples:
            self._reject_state(
                f"position {position} is not a sample index (0..{self.n_samples - 1})"
            )
        epoch = self._whole_number(state, "epoch")
        if epoch < 0:
            self._reject_state(f"epoch {epoch} is negative")
        order = state.get("order")
        order = (
            None if order is None or not self.shuffle else self._checked_order(order)
        )
        return position, epoch, order, self._checked_rng(state.get("rng"))

    def _reject_state(self, problem: str):
        raise SnapshotError(
            f"{self.owner}: the saved data-layer state does not fit the current "
            f"data of {self.n_samples} samples: {problem}. The data changed since "
            "the state was saved, or the snapshot is damaged; resume from a "
            "snapshot saved with this data, or load only the parameters with "
            "load_snapshot(net, path) and train from iteration 0"
        )

    def _whole_number(self, state: dict, key: str) -> int:
        value = state.get(key)
        numeric = isinstance(value, (int, np.integer, float, np.floating))
        if (
            not numeric
            or isinstance(value, (bool, np.bool_))
            or not float(value).is_integer()
        ):
            self._reject_state(f"{key} is {value!r}, not a whole number")
        return int(value)

    def _checked_order(self, order) -> np.ndarray:
        """Return ``order`` as int64 sample indices, or reject it."""
        array = np.asarray(order)
        if array.ndim != 1:
            self._reject_state(f"the sample order has shape {array.shape}, not 1-D")
        if len(array) != self.n_samples:
            self._reject_state(
                f"the sample order lists {len(array)} samples, but the data now "
                f"have {self.n_samples}"
            )
        if array.dtype.kind not in "iu":
            self._reject_state(
                f"the sample order has dtype {array.dtype}; it must contain "
                "integer sample indices"
            )
        if not np.array_equal(np.sort(array), np.arange(self.n_samples)):
            self._reject_state(
                f"the sample order (values {array.min()}..{array.max()}) is not a "
                f"permutation of the sample indices 0..{self.n_samples - 1}"
            )
        return array.astype(np.int64)

    def _checked_rng(self, text) -> dict:
        """Return the generator state in the JSON ``text``, or reject it.

        A spare generator of the same kind tries the state, so the layer's
        own generator stays unchanged until the whole state is checked.
        """
        try:
            rng_state = json.loads(text)
        except (TypeError, ValueError) as error:
            self._reject_state(f"the generator state is not valid JSON ({error})")
        spare = type(self.rng.bit_generator)()
        try:
            spare.state = rng_state
        # NumPy raises OverflowError for an integer outside the state's C type
        # (a negative PCG64 state, for one).
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            self._reject_state(
                f"numpy rejects the generator state ({error}); it must be "
                f"the state of a {type(self.rng.bit_generator).__name__} generator"
            )
        return rng_state
