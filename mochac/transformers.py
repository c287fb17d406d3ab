"""Data transformers: in-place changes a data layer applies to each batch.

A data layer's ``transformers`` field lists (top name, transformer) pairs;
the runtime applies them in that order to the batch of the named top after
reading it and before the forward pass. A transformer never changes the shape
of the blob. Use them as Mocha does:

    HDF5DataLayer(source="train.txt", batch_size=64, transformers=[
        ("data", DataTransformers.SubMean(mean_file="mean.hdf5")),
        ("data", DataTransformers.Scale(scale=1 / 256)),
    ])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import special_file_kind
from mochac.errors import ConfigError, DataError, SnapshotError
from mochac.runtime.file_digest import DATA_FILE_ADVICE, verify_digest

# The dtype kinds a mean may have: signed and unsigned integers and floats.
# Complex means, whose imaginary part a conversion would drop, are rejected.
REAL_KINDS = "iuf"


class DataTransformer:
    """Base of the data transformers.

    ``prepare(sample_shape, dtype, where)`` is called once when the data
    source opens and returns a function that transforms an (N, ...) batch in
    place. ``where`` names the layer and top for error messages.
    """

    def prepare(self, sample_shape: tuple[int, ...], dtype, where: str):
        raise NotImplementedError


def describe_non_finite(values: np.ndarray) -> str | None:
    """Return how many values are NaN or infinite and where the first is,
    or None when every value is finite."""
    non_finite = ~np.isfinite(values)
    if not non_finite.any():
        return None
    first = tuple(int(i) for i in np.argwhere(non_finite)[0])
    return (
        f"{int(non_finite.sum())} NaN or infinite value(s), the first "
        f"({values[first]}) at index {first}"
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class SubMean(DataTransformer):
    """Subtract a precomputed mean sample from every sample of the batch.

    Fields (Mocha's defaults):
        mean_blob: the mean as a NumPy array with the shape of one sample,
            optionally with a leading axis of length 1; default None.
        mean_file: when mean_blob is None, an HDF5 file whose dataset "mean"
            holds the mean (Mocha's and Caffe's dump_mean_file layout);
            default "".

    The file is read when the data layer's source opens.
    """

    mean_blob: np.ndarray | None = None
    mean_file: str = ""

    def __post_init__(self):
        if self.mean_blob is None:
            if not isinstance(self.mean_file, str) or not self.mean_file:
                raise ConfigError(
                    "DataTransformers.SubMean: give mean_blob (an array) or "
                    f"mean_file (an HDF5 path); got mean_file={self.mean_file!r}"
                )
            return
        mean = np.asarray(self.mean_blob)
        if mean.dtype.kind not in REAL_KINDS or mean.ndim == 0:
            raise ConfigError(
                "DataTransformers.SubMean: invalid mean_blob of dtype "
                f"{mean.dtype} and shape {mean.shape}; expected an array of real "
                "numbers (integers or floats) with the shape of one sample"
            )
        problem = describe_non_finite(mean)
        if problem is not None:
            raise ConfigError(
                f"DataTransformers.SubMean: mean_blob has {problem}; pass a mean "
                "computed from finite data"
            )
        object.__setattr__(self, "mean_blob", mean)

    def load_mean(self) -> np.ndarray:
        """Return the mean: mean_blob, or the "mean" dataset of mean_file.

        Raises DataError when mean_file does not match its SHA-256 sidecar,
        cannot be opened, has no "mean" dataset, or its values are not real
        numbers or not all finite.
        """
        if self.mean_blob is not None:
            return self.mean_blob
        path = Path(self.mean_file)
        kind = special_file_kind(path)
        if kind is not None:
            raise DataError(
                f"DataTransformers.SubMean: mean_file {path} is {kind}, not a "
                "regular file; name an HDF5 file"
            )
        if not path.exists():
            raise DataError(
                f"DataTransformers.SubMean: mean_file {path} does not exist; "
                "name an HDF5 file with a dataset 'mean'"
            )
        if path.is_dir():
            raise DataError(
                f"DataTransformers.SubMean: mean_file {path} is a folder; name "
                "an HDF5 file with a dataset 'mean'"
            )
        # A file with a SHA-256 sidecar (examples/cifar10/prepare_data.py
        # writes one) is compared with it before h5py parses it.
        try:
            verify_digest(path, DATA_FILE_ADVICE)
        except SnapshotError as error:
            # A mismatch starts with the file's path, and a damaged sidecar
            # with the sidecar's, which must not read as the mean_file.
            problem = str(error)
            if not problem.startswith(f"{path} "):
                problem = f"{path}: {problem}"
            raise DataError(f"DataTransformers.SubMean: mean_file {problem}") from error
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            # h5py's message can go on for lines of HDF5 details (times, buffers).
            reason = str(error).splitlines()[0] if str(error) else "OSError"
            raise DataError(
                f"DataTransformers.SubMean: cannot open mean_file {path} as HDF5: "
                f"{reason}"
            ) from error
        with handle:
            dataset = handle.get("mean")
            if isinstance(dataset, h5py.Group):
                raise DataError(
                    f"DataTransformers.SubMean: in mean_file {path}, 'mean' is a "
                    "group, not a dataset; store the mean as a dataset 'mean'"
                )
            if not isinstance(dataset, h5py.Dataset):
                raise DataError(
                    f"DataTransformers.SubMean: mean_file {path} has no dataset "
                    f"'mean' (it has: {', '.join(handle.keys()) or 'none'})"
                )
            mean = np.asarray(dataset[()])
        where = f"DataTransformers.SubMean: mean_file {path}, dataset 'mean',"
        if mean.dtype.kind not in REAL_KINDS:
            raise DataError(
                f"{where} has dtype {mean.dtype}; store a mean of real numbers "
                "(integers or floats)"
            )
        problem = describe_non_finite(mean)
        if problem is not None:
            raise DataError(
                f"{where} has {problem}; compute the mean again from finite data"
            )
        return mean

    def prepare(self, sample_shape, dtype, where):
        mean = self.load_mean()
        shape = mean.shape
        if shape[:1] == (1,) and shape[1:] == tuple(sample_shape):
            shape = shape[1:]
        if shape != tuple(sample_shape):
            source = "mean_blob" if self.mean_blob is not None else self.mean_file
            raise DataError(
                f"{where}: DataTransformers.SubMean mean from {source} has shape "
                f"{mean.shape}, but one sample has shape {tuple(sample_shape)}; "
                "store the mean of one sample"
            )
        # NumPy warns about the overflow; the check below reports it instead.
        with np.errstate(over="ignore"):
            converted = np.ascontiguousarray(mean.reshape(shape), dtype=dtype)
        if not np.isfinite(converted).all():
            source = "mean_blob" if self.mean_blob is not None else self.mean_file
            raise DataError(
                f"{where}: DataTransformers.SubMean mean from {source} has values "
                f"up to {np.max(np.abs(mean)):g} in magnitude, which overflow the "
                f"net's dtype {np.dtype(dtype).name} (at most "
                f"{np.finfo(dtype).max:g}); store a mean within that range"
            )
        mean = converted

        def subtract_mean(batch: np.ndarray):
            batch -= mean

        return subtract_mean


@dataclass(frozen=True, kw_only=True, eq=False)
class Scale(DataTransformer):
    """Multiply every element of the batch by ``scale`` (default 1.0)."""

    scale: float = 1.0

    def __post_init__(self):
        value = self.scale
        numeric = isinstance(value, (int, float, np.floating, np.integer))
        if not numeric or isinstance(value, bool) or not _is_finite(value):
            raise ConfigError(
                f"DataTransformers.Scale: invalid scale={value!r}; expected a finite "
                "number"
            )

    def prepare(self, sample_shape, dtype, where):
        """Return the scaling function.

        Raises ConfigError when ``scale`` overflows ``dtype``, or when a
        nonzero scale rounds to 0 in it.
        """
        dtype = np.dtype(dtype)
        # NumPy warns about the overflow; the checks below report it instead.
        with np.errstate(over="ignore", under="ignore"):
            factor = dtype.type(self.scale)
        if not np.isfinite(factor):
            raise ConfigError(
                f"{where}: DataTransformers.Scale: scale={self.scale!r} overflows "
                f"the net's dtype {dtype.name}, whose maximum is "
                f"{np.finfo(dtype).max:g}; use a smaller scale, or a float64 backend"
            )
        if factor == 0 and self.scale != 0:
            raise ConfigError(
                f"{where}: DataTransformers.Scale: scale={self.scale!r} rounds to 0 "
                f"in the net's dtype {dtype.name}, which would set every value to "
                f"0; use a scale of at least {np.finfo(dtype).smallest_subnormal:g} "
                "in magnitude"
            )

        def scale(batch: np.ndarray):
            batch *= factor

        return scale


def _is_finite(value) -> bool:
    # math.isfinite raises OverflowError for an int beyond the float range.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class DataTransformers:
    """Mocha's namespace: ``DataTransformers.SubMean``, ``DataTransformers.Scale``."""

    SubMean = SubMean
    Scale = Scale


__all__ = ["DataTransformer", "DataTransformers", "Scale", "SubMean"]
