"""The coffee lounge: statistics reported at coffee breaks, optionally saved to HDF5.

Each statistic (obj_val, learning_rate, accuracy-accuracy, ...) is a series
of (iteration, value) pairs. The file holds one group per statistic with the
datasets ``iterations`` and ``values``, and the statistic's name in the
attribute ``name`` (the group name escapes '/' as %2F and '%' as %25).
Like a snapshot, the file has its SHA-256 digest beside it
(statistics.h5.sha256, see file_digest), which read_statistics checks
before h5py parses the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import special_file_kind
from mochac.errors import ConfigError, DataError, SnapshotError
from mochac.runtime.file_digest import verify_digest
from mochac.runtime.snapshot import write_atomically, write_dataset
from mochac.values import as_int

logger = logging.getLogger(__name__)

FILE_EXISTS_MODES = ("merge", "overwrite", "panic")


class CoffeeLounge:
    """Statistics storage of a solver.

    Args:
        save_into: HDF5 path to save into, or None to keep statistics in memory.
        every_n_iter: save every this many iterations (and at the end).
        file_exists: what to do with an existing file: "merge" (default, keep
            its series and add to them), "overwrite" or "panic" (raise).
    """

    def __init__(self, save_into=None, every_n_iter=1, file_exists="merge"):
        if not isinstance(file_exists, str) or file_exists not in FILE_EXISTS_MODES:
            raise ConfigError(
                f"coffee lounge: invalid file_exists={file_exists!r}; expected one of "
                f"{', '.join(FILE_EXISTS_MODES)}"
            )
        interval = as_int(every_n_iter)
        if interval is None or interval < 1:
            raise ConfigError(
                f"coffee lounge: invalid every_n_iter={every_n_iter!r}; expected an int >= 1"
            )
        every_n_iter = interval
        if save_into is not None and not isinstance(save_into, (str, os.PathLike)):
            raise ConfigError(
                f"coffee lounge: invalid save_into={save_into!r}; expected the path "
                "of the HDF5 file to save statistics into (a str or Path), or None"
            )
        self.save_into = Path(save_into) if save_into else None
        kind = special_file_kind(save_into) if save_into else None
        if kind is not None:
            raise ConfigError(
                f"coffee lounge: save_into={str(save_into)!r} is {kind}, not a "
                "regular file, and each save would replace it; name a file"
            )
        self.every_n_iter = every_n_iter
        self.statistics: dict[str, dict[int, float]] = {}
        # Whether the statistics changed since the file was last written.
        self._unsaved = False
        if self.save_into and self.save_into.exists():
            if file_exists == "panic":
                raise ConfigError(
                    f"coffee lounge: {self.save_into} exists; remove it or pass "
                    "file_exists='merge' or 'overwrite'"
                )
            if file_exists == "merge":
                self.statistics = read_statistics(self.save_into, LOUNGE_ADVICE)

    def update(self, iteration: int, name: str, value: float):
        self.statistics.setdefault(name, {})[int(iteration)] = float(value)
        self._unsaved = True

    def maybe_save(self, iteration: int, force: bool = False):
        """Save at every ``every_n_iter``-th iteration, or now with ``force``.

        A save without ``force`` is left out when no statistic changed since
        the last one, because each save rewrites and digests the whole file.
        """
        if self.save_into is None:
            return
        if force or (self._unsaved and iteration % self.every_n_iter == 0):
            self.save()

    def save(self):
        def fill(handle):
            for name, series in self.statistics.items():
                # HDF5 reads '/' as a path separator (Caffe layer names such
                # as 'loss3/top-1' contain it), so the group name escapes it
                # and an attribute keeps the statistic's name.
                group = handle.create_group(
                    name.replace("%", "%25").replace("/", "%2F")
                )
                group.attrs["name"] = name
                iterations = np.array(sorted(series), dtype=np.int64)
                # With Fletcher-32 checksums, damaged bytes in a series fail
                # the merge of a resumed run instead of entering its curves.
                write_dataset(group, "iterations", iterations)
                write_dataset(
                    group,
                    "values",
                    np.array([series[i] for i in iterations], dtype=np.float64),
                )

        write_atomically(self.save_into, fill, digest=True)
        self._unsaved = False
        logger.debug("saved statistics to %s", self.save_into)


# Advice for a statistics file that setup_coffee_lounge cannot read.
LOUNGE_ADVICE = "move it away, or pass file_exists='overwrite' to start a new one"


def read_statistics(path, advice: str = "") -> dict[str, dict[int, float]]:
    """Return the series stored in a coffee lounge file.

    Raises DataError when the file does not exist, cannot be read as HDF5
    (damaged or truncated), contains anything but statistics series (a
    snapshot, for instance) or has a series whose iterations and values are
    not 1-D datasets of one length. ``advice`` ends the messages of unreadable
    files.
    """
    path = Path(path)
    if not path.is_file():
        kind = special_file_kind(path)
        if kind is not None:
            problem = f"is {kind}, not a regular file"
        elif path.is_dir():
            problem = "is a folder"
        else:
            problem = "does not exist"
        raise DataError(f"{path}: {problem}; name a statistics file")
    ending = f"; {advice}" if advice else ""
    # libhdf5 can read damaged metadata as other names or values, or crash,
    # so the digest goes first. Files of earlier versions have none.
    try:
        verify_digest(path, advice or "train again to write it anew")
    except SnapshotError as error:
        raise DataError(str(error)) from error
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        # A file that is not HDF5 at all is most likely the wrong file.
        hint = ending or (
            "; name the HDF5 file that a coffee lounge saved "
            "(setup_coffee_lounge(solver, save_into=...))"
        )
        raise DataError(
            f"{path}: cannot read the statistics file ({error}){hint}"
        ) from error
    # h5py raises RuntimeError for some damaged metadata, such as a group's
    # heap or symbol table.
    # NOTE: in a file without a digest (of mochac versions before it had one),
    # damaged bytes in an attribute or datatype message can still read as
    # other names or values: only the datasets' chunks carry checksums.
    try:
        return _read_series(path, handle)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise DataError(
            f"{path}: the statistics file is damaged ({error}){ending}"
        ) from error
    finally:
        handle.close()


def _read_series(path, handle) -> dict[str, dict[int, float]]:
    stats = {}
    for name, group in handle.items():
        if (
            not isinstance(group, h5py.Group)
            or "iterations" not in group
            or "values" not in group
        ):
            raise DataError(
                f"{path}: '{name}' is not a statistics series (a group with "
                "'iterations' and 'values'); give the statistics file the "
                "coffee lounge saved, not a snapshot"
            )
        iterations = group["iterations"][()]
        values = group["values"][()]
        # Files of earlier versions name the statistic by the group alone.
        stored = group.attrs.get("name", name)
        if isinstance(stored, bytes):
            stored = stored.decode("utf-8")
        # zip() would drop the values past the shorter dataset without a word.
        # read_statistics reports the ValueError as a damaged file.
        if (
            np.ndim(iterations) != 1
            or np.ndim(values) != 1
            or len(iterations) != len(values)
        ):
            raise ValueError(
                f"statistic '{stored}' has iterations of shape "
                f"{np.shape(iterations)} and values of shape {np.shape(values)}, "
                "where two 1-D datasets of one length were expected"
            )
        stats[str(stored)] = {int(i): float(v) for i, v in zip(iterations, values)}
    return stats
