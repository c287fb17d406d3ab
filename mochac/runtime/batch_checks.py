"""Checks of the values that data sources read, and how their errors name
layers and data rows."""

from __future__ import annotations

import logging

import numpy as np

from mochac.errors import DataError

# The data sources' messages keep one logger name, whichever module they
# come from, so that a level or filter set on it covers them all.
logger = logging.getLogger("mochac.runtime.data_sources")


def describe_row(files, row: int) -> str:
    """Return "data row R", followed by "(row r of FILE)" when ``files`` is
    (paths, starts) of the files the rows come from."""
    if files is None:
        return f"data row {row}"
    paths, starts = files
    index = int(np.searchsorted(starts, row, side="right")) - 1
    return f"data row {row} (row {row - int(starts[index])} of {paths[index]})"


def check_finite_batch(source, outputs: list[np.ndarray], indices) -> None:
    """Raise DataError naming the top and data row of the first NaN or
    infinite value in a batch.

    The values reach the net only through the loss check otherwise, and a
    net without a loss layer (a deploy net, a validation with accuracy
    alone) would pass them on silently. The check reads the batch once:
    10 us for LeNet's 64 MNIST images on the 2-core AMD EPYC, about 0.1 % of
    a training step.
    """
    for position, (top, out) in enumerate(zip(source.layer.tops, outputs)):
        if np.isfinite(out).all():
            continue
        samples = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        sample = int(np.argmax(samples))
        data_row = int(indices[sample])
        row = source.describe_row(data_row)
        who = _who(source.layer, source.name)
        value = _out_of_range_value(source, position, data_row, out.dtype)
        if value is not None:
            raise DataError(
                f"{who}: top '{top}' has the value {value:g} in {row}, sample "
                f"{sample} of the batch, which is outside the range of "
                f"{out.dtype.name} (magnitude at most "
                f"{float(np.finfo(out.dtype).max):g}) and becomes infinite; scale "
                "the data, or build the net with a float64 backend"
            )
        raise DataError(
            f"{who}: top '{top}' has NaN or infinite values in "
            f"{row}, sample {sample} of the batch; remove or repair that row, or "
            "check the layer's transformers"
        )


def _out_of_range_value(source, position: int, data_row: int, dtype):
    """Return the value of largest magnitude in data row ``data_row`` of the
    source's array ``position`` when that row contains only finite values and
    this one is too large for ``dtype``. Return None otherwise.

    Such a value turns infinite when the source converts it to the net's dtype.
    """
    # Only sources that keep the arrays as given (DataSource, which
    # MemoryDataLayer uses) are checked here. The HDF5 sources check the range
    # as they read their files (hdf5_files.check_in_range), before converting.
    arrays = getattr(source, "arrays", None)
    if arrays is None:
        return None
    values = np.asarray(arrays[position][data_row])
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return None
    if not np.isfinite(values).all():
        return None
    value = values.flat[int(np.argmax(np.abs(values)))]
    if abs(value) <= np.finfo(dtype).max:
        return None
    return float(value)


def _check_float(array: np.ndarray, dtype, where: str, log: bool = True):
    """Log a line when values need converting to ``dtype``: integers, bools
    and wider floats, which lose precision. ``log=False`` only checks.

    Raises DataError for any other dtype that is not floating point, and for
    a NumPy masked array, whose mask the data sources would ignore.
    """
    if isinstance(array, np.ma.MaskedArray):
        raise DataError(
            f"{where}: a masked array is not accepted, because its masked values "
            "would be read as they are; pass array.filled(value), or remove the "
            "masked samples"
        )
    # np.integer also covers timedelta64, so the check uses the dtype kinds.
    if array.dtype.kind in "iu" or array.dtype == np.bool_:
        message = "%s: converting %s values to %s"
    elif np.issubdtype(array.dtype, np.floating):
        if array.dtype.itemsize <= np.dtype(dtype).itemsize:
            return
        message = "%s: converting %s values to %s, the net's type, which rounds them"
    else:
        raise DataError(
            f"{where}: dtype {array.dtype} is not a real number type; store floats"
        )
    if log:
        logger.info(message, where, array.dtype, np.dtype(dtype).name)


def _who(layer, name: str | None = None) -> str:
    """Return how messages name a data layer: its class and ``name``, the
    net's name for it (ir.graph.layer_display_name). Without ``name``, the
    messages use the layer's own name, or its class when it has none."""
    return f"{type(layer).__name__} '{name or layer.label}'"
