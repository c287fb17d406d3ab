"""The layer base class: an immutable, validated config with Mocha's fields.

A layer describes what to compute, never how. Its class attributes are Mocha's
characterizations, which the IR reads instead of testing layer types by name.
Shapes follow NumPy's row-major (N, C, H, W) order; geometry tuples (kernel,
stride, pad) keep Mocha's documented (width, height) order.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import ClassVar

from mochac.errors import ConfigError, ShapeError
from mochac.values import as_int

# The groups of a snapshot's root besides the parameters (runtime/snapshot.py).
SNAPSHOT_GROUPS = ("solver", "rng", "data_layers")


def hdf5_path_problem(name: str) -> str | None:
    """Return why a layer name cannot name HDF5 datasets, or None when it can.

    Snapshots store a layer's parameters as ``<name>___<param>`` and its
    data-layer state as ``data_layers/<name>``. HDF5 reads '/' in such a
    path as a group separator and '.' as the current group, and h5py ends a
    name at NUL. So "/ip" would collide with "ip", and "rng/x" with the
    random streams' group. Other names with '/' stay valid, since nets
    translated from Caffe use them (GoogLeNet's "inception_3a/1x1").
    """
    if "\0" in name:
        return "it contains a NUL character"
    if "/" not in name:
        return "it is '.', HDF5's name of the current group" if name == "." else None
    parts = name.split("/")
    if any(part in ("", ".") for part in parts):
        return (
            "it has an empty or '.' part between '/' separators or a '/' at "
            "either end, which HDF5 drops from the path"
        )
    if parts[0] in SNAPSHOT_GROUPS:
        return f"'{parts[0]}/' puts it inside the snapshot's /{parts[0]} group"
    return None


@dataclass(frozen=True)
class ParamSpec:
    """A learnable parameter that a layer declares.

    ``name`` is the parameter's name inside the layer ("filter", "bias"),
    ``shape`` its NumPy shape, ``lr`` the local learning-rate factor,
    ``constraint`` its norm constraint (None for none).
    """

    name: str
    shape: tuple[int, ...]
    initializer: object
    regularizer: object
    lr: float
    constraint: object = None
    # Registry key of a parameter that another layer owns and this layer uses
    # too (TiedInnerProductLayer's weight); None for the layer's own parameter,
    # kept under the layer's param_key.
    key: str | None = None
    # Whether this layer's backward pass computes a gradient for the
    # parameter. When False the layer only reads it, so it gets no gradient
    # array, and freezing the layer leaves the parameter to those that learn it.
    learned: bool = True


@dataclass(frozen=True, kw_only=True, eq=False)
class Layer:
    """Base of every layer config.

    Fields common to all layers:
        name: the layer's name; snapshots and parameter sharing key on it.
            Default "" (a layer with parameters must be given one).
        bottoms: names of the input blobs.
        tops: names of the output blobs.

    Layers compare by identity, so the same layer object used in two nets is
    recognised as one layer (and shares its parameters).
    """

    name: str = ""
    bottoms: tuple[str, ...] = ()
    tops: tuple[str, ...] = ()

    is_source: ClassVar[bool] = False
    is_sink: ClassVar[bool] = False
    has_param: ClassVar[bool] = False
    has_neuron: ClassVar[bool] = False
    can_do_bp: ClassVar[bool] = False
    is_inplace: ClassVar[bool] = False
    has_loss: ClassVar[bool] = False
    has_stats: ClassVar[bool] = False
    # The kind in the name of the layer's statistic, "<layer name>-<kind>",
    # for layers that report one (accuracy and loss layers).
    statistic_name: ClassVar[str] = ""

    # Bounds on the number of bottoms and tops; None means unbounded.
    n_bottoms: ClassVar[tuple[int, int | None]] = (1, None)
    n_tops: ClassVar[tuple[int, int | None]] = (1, None)
    # True when each bottom maps to the top at the same index.
    tops_match_bottoms: ClassVar[bool] = True
    # True when each top may overwrite its bottom (fuse_inplace): the kernel
    # reads each bottom element only before writing the top element in its
    # place, and backward needs no bottom data.
    inplace_capable: ClassVar[bool] = False
    # True when infer_shapes and param_specs take a second argument: the
    # shapes of the parameters set up before this layer, {(key, name): shape}.
    reads_param_shapes: ClassVar[bool] = False

    def __new__(cls, *args, **kwargs):
        # The dataclass __init__ raises a plain TypeError for an unknown
        # keyword; a misspelled field gets a ConfigError with the closest name.
        fields = [field.name for field in dataclasses.fields(cls) if field.init]
        for key, value in kwargs.items():
            if key in fields:
                continue
            name = kwargs.get("name")
            title = f"{cls.__name__} '{name}'" if name else f"{cls.__name__} (unnamed)"
            close = difflib.get_close_matches(key, fields, n=1)
            hint = (
                f"did you mean {close[0]}?"
                if close
                else f"the fields are {', '.join(fields)}"
            )
            raise ConfigError(f"{title}: unknown field {key}={value!r}; {hint}")
        return super().__new__(cls)

    def __post_init__(self):
        if not isinstance(self.name, str):
            self._fail("name", self.name, "a string")
        problem = hdf5_path_problem(self.name)
        if problem:
            self._fail(
                "name",
                self.name,
                f"a name usable as an HDF5 path in snapshots, but {problem}",
            )
        for field in ("bottoms", "tops"):
            object.__setattr__(self, field, self.blob_names(field))
        self._check_count("bottoms", self.bottoms, self.n_bottoms)
        self._check_count("tops", self.tops, self.n_tops)
        if self.tops_match_bottoms and len(self.tops) != len(self.bottoms):
            self._fail(
                "tops",
                list(self.tops),
                f"one top per bottom ({len(self.bottoms)} bottoms given)",
            )
        self.validate()

    def blob_names(self, field) -> tuple[str, ...]:
        """Return ``field`` (bottoms or tops) as a tuple of blob names; a single
        string is one name. Raises ConfigError unless each name is a non-empty str."""
        value = getattr(self, field)
        if isinstance(value, str):
            value = (value,)
        expected = "a list of non-empty blob names (strings)"
        try:
            names = tuple(value)
        except TypeError:
            # A bool, number or None has no blob names to list.
            self._fail(field, value, expected)
        if not all(isinstance(blob, str) and blob for blob in names):
            self._fail(field, names, expected)
        return names

    def validate(self):
        """Check the layer's own fields; subclasses raise through ``_fail``."""

    @property
    def label(self) -> str:
        """The name used in messages: the layer name or its class."""
        return self.name or type(self).__name__

    def _fail(self, field, value, expected):
        raise ConfigError(
            f"{self.title}: invalid {field}={value!r}; expected {expected}."
        )

    def _check_count(self, field, value, bounds):
        low, high = bounds
        if len(value) < low or (high is not None and len(value) > high):
            if high is None:
                expected = f"at least {low} blob name(s)"
            elif low == high:
                expected = f"exactly {low} blob name(s)"
            else:
                expected = f"between {low} and {high} blob names"
            self._fail(field, list(value), expected)

    @property
    def title(self) -> str:
        """The class and name for messages, e.g. "ConvolutionLayer 'conv1'"."""
        # A name that is not a str is reported by the name check itself, and
        # an array's truth value would raise ValueError here.
        named = isinstance(self.name, str) and self.name
        name = f"'{self.name}'" if named else "(unnamed)"
        return f"{type(self).__name__} {name}"

    def shape_error(self, message) -> ShapeError:
        """Build a ShapeError that names this layer."""
        return ShapeError(f"{self.title}: {message}")

    # --- what the IR queries from a layer -------------------------------------

    def infer_shapes(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple]:
        """Return the top shapes for the given bottom shapes, or raise ShapeError."""
        raise NotImplementedError

    def param_specs(self, bottom_shapes: list[tuple[int, ...]]) -> list[ParamSpec]:
        """Return the learnable parameters for the given bottom shapes."""
        return []

    def backward_reads_bottom_data(self) -> bool:
        """Return whether backward reads the bottoms' data (memory planning uses this)."""
        return True

    def depends_on_phase(self) -> bool:
        """Return whether the layer computes differently in a "train"-phase net."""
        return False

    def backward_reads_top_data(self) -> bool:
        """Return whether backward reads the tops' data (memory planning uses this)."""
        return True

    def bottom_takes_grad(self, index: int) -> bool:
        """Return whether back-propagation produces a diff for bottom ``index``."""
        return self.can_do_bp

    def replace(self, **changes) -> Layer:
        """Return a copy with some fields changed (Mocha's ``copy(layer, ...)``)."""
        return dataclasses.replace(self, **changes)


def to_pair(layer: Layer, field: str, value, minimum: int) -> tuple[int, int]:
    """Normalize a Mocha (width, height) geometry value to (height, width).

    An int means the same value in both directions. Raises ConfigError naming the
    layer and field when the value is not one or two ints >= ``minimum``.
    """
    expected = f"an int or a (width, height) pair of ints >= {minimum}"
    if as_int(value) is not None:
        pair = (value, value)
    else:
        pair = value
    try:
        width, height = (as_int(item) for item in pair)
    except (TypeError, ValueError):
        layer._fail(field, value, expected)
    for item in (width, height):
        if item is None or item < minimum:
            layer._fail(field, value, expected)
    return (height, width)


def channel_axis(layer: Layer, dim: int, ndim: int) -> int:
    """Convert Mocha's ``dim`` (counted in Julia's column-major order) to a NumPy axis.

    Mocha's dimension 1 is the fastest-varying one, so its dim ``d`` is NumPy
    axis ``ndim - d`` and its -1 (the batch dimension) is NumPy axis 0. The
    default -2 is the channel axis, NumPy axis 1.
    """
    if dim < 0:
        axis = -dim - 1
    else:
        axis = ndim - dim
    if not 0 <= axis < ndim or dim == 0:
        raise layer.shape_error(
            f"dim={dim} is out of range for a {ndim}-D blob; use -2 (channels) or a "
            f"value in 1..{ndim}"
        )
    return axis
