"""The data position and random streams of a net before its latest batch.

The solver follows Mocha's order (Solver.solve): once the update of
iteration k is done, forward and backward already run on batch k + 1, whose
gradients the update of iteration k + 1 applies. So a snapshot of
iteration k records the data layers and random streams as they were before
batch k + 1 was loaded. Resuming from it loads that batch again and draws
the same dropout masks, as the uninterrupted run did. The solver captures
the point before each step that loads a batch, hands it to the net while
coffee breaks run (save_snapshot writes it), and moves the net back to it
when training ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ResumePoint:
    """The state of each data layer (by layer index) and a copy of each
    random stream (by name), as save_snapshot writes them. The copies are
    the backend's arrays: on a GPU net they stay on the device, so the
    solver's capture before every step costs no transfer."""

    sources: dict[int, dict]
    streams: dict[str, object]


def capture(net) -> ResumePoint:
    """Return the net's data layer states and random streams as they are now."""
    return ResumePoint(
        sources={index: source.state_dict() for index, source in net.sources.items()},
        streams={key: net.backend.copy(array) for key, array in net.rng_states.items()},
    )


def source_states(net, point: ResumePoint) -> dict[int, dict]:
    """Return the data layer states of ``point`` that a snapshot saves.

    A coffee break may have replaced a source's arrays since the point was
    captured. The run then goes on from the new arrays' current state
    (DataSource.is_stale), which is the one to save.
    """
    states = {}
    for index, state in point.sources.items():
        source = net.sources[index]
        is_stale = getattr(source, "is_stale", None)
        states[index] = (
            source.state_dict() if is_stale is not None and is_stale(state) else state
        )
    return states


def restore(net, point: ResumePoint) -> None:
    """Move the net's data layers and random streams back to ``point``."""
    for key, values in point.streams.items():
        net.rng_states[key][...] = values
    for index, state in point.sources.items():
        net.sources[index].load_state_dict(state)


def latest_batch_epochs(net) -> tuple[int, int]:
    """Return the epoch counts of the net's data before and after the batch
    it loaded last, as Solver._due reads them.

    Each data layer's position and epoch are those after that batch. The
    batch was its last batch_size samples, so the epoch it started in
    follows from the samples read so far. The net's epoch is the lowest of
    its data layers', and 0 without data layers.
    """
    before, after = [], []
    for source in net.sources.values():
        after.append(int(source.epoch))
        before.append(_epoch_before_batch(source))
    return min(before, default=0), min(after, default=0)


def _epoch_before_batch(source) -> int:
    epoch = int(source.epoch)
    n_samples = int(source.n_samples)
    samples_read = epoch * n_samples + int(source.position)
    if n_samples < 1 or samples_read < source.batch_size:
        # Fewer samples read than a batch: no batch was loaded since the
        # start or a rewind, or the arrays were replaced at epoch 0, so no
        # epoch can have ended.
        return epoch
    # NOTE: arrays replaced at a later epoch leave position 0 and the epoch
    # count, which reads as a batch that ended an epoch, so an every_n_epoch
    # break may be taken as due although the saving run did not run it.
    return (samples_read - source.batch_size) // n_samples


def same(net, first: ResumePoint, second: ResumePoint) -> bool:
    """Return whether two points captured from ``net`` are the same data
    position and random streams."""
    if first.sources.keys() != second.sources.keys():
        return False
    if first.streams.keys() != second.streams.keys():
        return False
    for index, state in first.sources.items():
        other = second.sources[index]
        if state.keys() != other.keys():
            return False
        for key, value in state.items():
            if not _equal(value, other[key]):
                return False
    host = net.backend.to_host
    return all(
        np.array_equal(host(values), host(second.streams[key]))
        for key, values in first.streams.items()
    )


def _equal(first, second) -> bool:
    # A source that has not moved returns the same order array again, which
    # spares comparing its n_samples elements.
    if first is second:
        return True
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return (
            first is not None and second is not None and np.array_equal(first, second)
        )
    return first == second
