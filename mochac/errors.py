"""Exceptions raised by mochac.

Every error names the layer, blob, parameter or file it concerns and states what
to do about it. Catch MochacError to handle all of them.
"""

import difflib


class MochacError(Exception):
    """Base class of every error mochac raises on purpose."""


class ConfigError(MochacError, ValueError):
    """A layer, neuron, initializer or solver field has an invalid value."""


class TopologyError(MochacError):
    """The layers do not form a valid net.

    Raised for an unknown bottom, a duplicate top, a duplicate layer name, a
    bottom listed twice by one layer and a cycle.
    """


class ShapeError(MochacError):
    """Blob shapes do not fit a layer's requirements."""


class CompileError(MochacError):
    """Generated code could not be compiled, stored or loaded.

    Raised when the C compiler or NVRTC fails and when the cache folder cannot
    be written. Also raised when a compiled package is damaged, was built for
    another CPU or dtype, cannot run on the given backend or differs from the
    C this mochac generates, and when CUDA steps do not match their source.

    ``output`` contains the compiler's messages and ``source_path`` the generated file.
    """

    def __init__(self, message, output="", source_path=None):
        super().__init__(message)
        self.output = output
        self.source_path = source_path


class DataError(MochacError):
    """Input data is missing, unreadable or out of range (labels, HDF5 datasets)."""


class NumericalError(MochacError):
    """A value became NaN or infinite: a loss or statistic, a parameter or
    solver buffer after an update or before a snapshot, or a learning rate or
    momentum a policy returned."""


class SnapshotError(MochacError):
    """A snapshot or model file cannot be loaded into a net or solver."""


class LockHeldError(MochacError):
    """Another training holds the lock of a Snapshot folder or statistics
    file that solve() would write: a solve() in another process, or one
    running in this process whose coffee break started this one."""


class AllocationError(MochacError, MemoryError):
    """The memory of a net's blobs, gradients and parameters cannot be
    allocated. Also a MemoryError, so handlers of that still catch it."""


class DeviceError(MochacError):
    """The GPU backend cannot run: CuPy is missing or no CUDA device is usable."""


class NotFoundError(ConfigError, KeyError):
    """No layer, blob, parameter or data layer of the looked-up name exists.

    Also a KeyError, so handlers of dict lookups still catch it. Also a
    ConfigError (and so a ValueError), so handlers written when get_layer,
    freeze, unfreeze and Net's keep= raised ConfigError for an unknown name
    still catch it.
    """

    def __str__(self) -> str:
        # KeyError's own str() quotes the message like a dict key.
        return str(self.args[0]) if self.args else ""


def name_not_found(
    lookup: str, names, known, known_label: str, fix: str
) -> NotFoundError:
    """Return a NotFoundError for a lookup of ``names`` among ``known``.

    ``lookup`` states the failed lookup with the names ("net 'lenet' has no
    layer named 'conv3'"), ``known_label`` introduces the list of ``known``
    ("its layers") and ``fix``, the advice, ends the message. Close
    spellings of ``names`` from ``known`` follow the lookup, then every
    name of ``known`` in its order.
    """
    known = list(known)
    close = []
    for name in names:
        for match in difflib.get_close_matches(str(name), known, n=3):
            if match not in close:
                close.append(match)
    message = lookup
    if close:
        message += f" (close matches: {', '.join(map(repr, close))})"
    listed = ", ".join(map(repr, known)) or "none"
    return NotFoundError(f"{message}; {known_label} are: {listed}; {fix}")
