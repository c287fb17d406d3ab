"""Recognize the numbers that config fields accept.

A field that takes an int accepts any integer, Python's or NumPy's
(``np.int64(3)`` from an array's shape, say), but never a bool. A field that
takes a number accepts any real number the same way. The helpers return the
value as a Python int or float, so generated code and messages never see a
NumPy scalar.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_int(value) -> int | None:
    """Return ``value`` as a Python int when it is an integer, else None.

    Python and NumPy integers count; bools (Python's and NumPy's) do not.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def as_real(value) -> int | float | None:
    """Return ``value`` as a Python int or float when it is a real number, else None.

    Integers come back as ints and other reals as floats; bools count as
    neither. The value may be NaN or infinite, which callers check.
    """
    integer = as_int(value)
    if integer is not None:
        return integer
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)
