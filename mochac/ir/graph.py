"""Build the IR: a networkx DiGraph of layer nodes and blob nodes.

Stages: (1) index the layers and check names, (2) wire tops to bottoms,
raising on unknown bottoms and duplicate tops, (3) sort topologically, ties
broken by definition order, raising on cycles, (4) infer shapes along that
order, (5) derive which blobs carry diffs (mochac.ir.schedule).

Node keys are ("layer", index) and ("blob", name). An edge blob -> layer
carries ``index``, the bottom position; an edge layer -> blob the top position.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from math import prod

import networkx as nx
import numpy as np

from mochac.errors import ConfigError, ShapeError, TopologyError, name_not_found
from mochac.ir.schedule import derive_backward
from mochac.layers.base import Layer, ParamSpec
from mochac.layers.utility import SplitLayer

logger = logging.getLogger(__name__)


@dataclass
class BlobInfo:
    """A blob of the IR: its shape, producer, consumers and gradient needs."""

    name: str
    shape: tuple[int, ...]
    producer: int
    consumers: list[int] = field(default_factory=list)
    needs_diff: bool = False
    # Set by passes: the blob whose data (or diff) storage this blob uses.
    data_alias: str | None = None
    diff_alias: str | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class LayerInfo:
    """A layer of the IR with its resolved shapes and parameters."""

    index: int
    layer: Layer
    name: str
    bottom_shapes: list[tuple[int, ...]] = field(default_factory=list)
    top_shapes: list[tuple[int, ...]] = field(default_factory=list)
    params: list[ParamSpec] = field(default_factory=list)
    # Per bottom: does backward write this bottom's diff?
    propagate_down: list[bool] = field(default_factory=list)
    # Does backward run for this layer (param grads or bottom diffs)?
    in_backward: bool = False
    # Set by passes: no kernel runs for an eliminated layer; a fused neuron
    # runs inside the layer's kernel instead of as a kernel of its own.
    eliminated: bool = False
    fuse_neuron: bool = False
    # Per bottom: does backward add into the diff instead of overwriting it?
    # Set by assign_diff_writers once the aliases are final.
    accumulate: list[bool] = field(default_factory=list)

    @property
    def param_key(self) -> str:
        return getattr(self.layer, "param_key", "") or self.name


@dataclass
class NetIR:
    """The IR of one net: graph, layers, blobs and schedules."""

    name: str
    graph: nx.DiGraph
    layers: list[LayerInfo]
    blobs: dict[str, BlobInfo]
    forward_order: list[int]
    backward_order: list[int] = field(default_factory=list)
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    inserted_splits: list[str] = field(default_factory=list)
    # "train" or "test", set by the runtime; lowering reads it.
    phase: str = "train"

    def data_root(self, blob: str) -> str:
        """Return the blob whose storage ``blob``'s data lives in."""
        while self.blobs[blob].data_alias is not None:
            blob = self.blobs[blob].data_alias
        return blob

    def diff_root(self, blob: str) -> str:
        """Return the blob whose storage ``blob``'s diff lives in."""
        while self.blobs[blob].diff_alias is not None:
            blob = self.blobs[blob].diff_alias
        return blob

    def assign_diff_writers(self) -> None:
        """Decide which backward writes overwrite a diff and which add to it.

        Several layers can write one diff storage once passes alias diffs
        (an eliminated split); the first in backward order overwrites it and
        the others add to it.
        """
        written: set[str] = set()
        for info in self.layers:
            info.accumulate = [False] * len(info.layer.bottoms)
        for index in self.backward_order:
            info = self.layers[index]
            if info.eliminated:
                continue
            for position, bottom in enumerate(info.layer.bottoms):
                if not info.propagate_down[position]:
                    continue
                root = self.diff_root(bottom)
                # An in-place layer reads its top diff from the storage it
                # writes, so it overwrites even after another writer.
                in_place = any(
                    self.blobs[top].needs_diff and self.diff_root(top) == root
                    for top in info.layer.tops
                )
                info.accumulate[position] = root in written and not in_place
                written.add(root)

    def layer(self, name: str) -> LayerInfo:
        """Return the layer named ``name``; raise NotFoundError when the net
        has none."""
        for info in self.layers:
            if info.name == name:
                return info
        raise name_not_found(
            f"net '{self.name}' has no layer named {name!r}",
            [name],
            [info.name for info in self.layers],
            "its layers",
            LAYER_NAME_FIX,
        )


def check_layer_list(name: str, layers) -> list[Layer]:
    """Return ``layers`` as a list; raise ConfigError unless it is a non-empty
    list and ``name``, the net's name, is a non-empty string."""
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"invalid net name {name!r}; expected a non-empty string such as "
            'Net("train", backend, layers)'
        )
    if isinstance(layers, Layer) or not hasattr(layers, "__iter__"):
        raise ConfigError(
            f"net '{name}': layers must be a list of layers, not a "
            f"{type(layers).__name__}; wrap a single layer in [...]"
        )
    layers = list(layers)
    if not layers:
        raise ConfigError(f"net '{name}' has no layers; pass a list of layers")
    for index, layer in enumerate(layers):
        check_layer_item(index, layer)
    return layers


def check_layer_item(index: int, layer) -> None:
    """Raise ConfigError unless item ``index`` of a layer list is a layer object."""
    if isinstance(layer, type) and issubclass(layer, Layer):
        raise ConfigError(
            f"item {index} of the layer list is the class {layer.__name__}, not a "
            f"layer; pass an instance such as {layer.__name__}(name=..., ...)"
        )
    if not isinstance(layer, Layer):
        raise ConfigError(
            f"item {index} of the layer list is a {type(layer).__name__}, not a "
            "layer; pass layer objects such as ConvolutionLayer(...)"
        )


# The generated C indexes blobs and parameters with int, whose maximum is
# 2**31 - 1 on every platform that mochac builds for.
MAX_ELEMENTS = 2**31 - 1


def check_size(layer_name: str, layer: Layer, array_name: str, shape) -> None:
    """Raise ShapeError unless every axis of ``shape`` is >= 1 and its element
    count fits the generated code's int indices.

    ``array_name`` names the array in the message, e.g. "top 'conv1'".
    """
    title = f"{type(layer).__name__} '{layer_name}'"
    if any(size < 1 for size in shape):
        raise ShapeError(
            f"{title}: {array_name} has shape {tuple(shape)}, with an axis of size 0; "
            "every axis needs at least one element, so check the data arrays or "
            "datasets and the layer's sizes"
        )
    count = prod(shape)
    if count > MAX_ELEMENTS:
        raise ShapeError(
            f"{title}: {array_name} has shape {tuple(shape)}, {count} elements; the "
            f"generated code indexes arrays with C int, so at most {MAX_ELEMENTS} "
            "elements fit; reduce the batch size or the layer's sizes"
        )


# The advice that ends the error for an unknown layer name.
LAYER_NAME_FIX = (
    "pass one of these names (a layer created without a name gets its class "
    "and list index, like 'MemoryDataLayer-0')"
)


def layer_display_name(layer: Layer, index: int) -> str:
    """Return the name a net gives the layer at ``index`` of its layer
    list: the layer's own name, or its class and index when it has none."""
    return layer.name or f"{type(layer).__name__}-{index}"


def _display_names(layers: list[Layer]) -> list[str]:
    """Give unnamed layers a name from their class and position; check duplicates."""
    names = []
    seen: dict[str, int] = {}
    for index, layer in enumerate(layers):
        check_layer_item(index, layer)
        name = layer_display_name(layer, index)
        if name in seen:
            raise TopologyError(
                f"layers {seen[name]} and {index} are both named '{name}'; layer names "
                "must be unique because snapshots and parameters are keyed by them"
            )
        if layer.has_param and not layer.name:
            raise ConfigError(
                f"{type(layer).__name__} at position {index} has parameters but no "
                "name; give it a name= so its parameters can be saved and shared"
            )
        seen[name] = index
        names.append(name)
    return names


def check_key_parameters(info, key_owners: dict) -> None:
    """Raise ConfigError when ``info``'s layer shares its param_key with a
    layer of this net that has other parameters.

    Parameters are shared by (key, parameter name), so a ConvolutionLayer
    (filter, bias) and an InnerProductLayer (weight, bias) under one key
    would share the bias alone. Mocha shares a key's parameters as one
    list and rejects such a pair. Parameters that name their own key (a
    TiedInnerProductLayer's weight) are left out.
    """
    names = frozenset(spec.name for spec in info.params if not spec.key)
    if not names:
        return
    owner = key_owners.setdefault(
        info.param_key, (info.name, type(info.layer).__name__, names)
    )
    if owner[2] != names:
        raise ConfigError(
            f"layer '{info.name}' ({type(info.layer).__name__}, parameters "
            f"{', '.join(sorted(names))}) shares param_key '{info.param_key}' with "
            f"layer '{owner[0]}' ({owner[1]}, parameters {', '.join(sorted(owner[2]))}); "
            "layers sharing a param_key must have the same parameters, so give "
            "one of them another param_key"
        )


def build_ir(
    name: str,
    layers: list[Layer],
    source_shapes: dict[int, list[tuple[int, ...]]],
    dtype=np.float32,
    force_backward: bool = False,
    param_shapes: dict[tuple[str, str], tuple[int, ...]] | None = None,
) -> NetIR:
    """Return the IR of a net made of ``layers``.

    ``source_shapes`` gives, for the index of each source (data) layer, the
    shapes of its tops, which only the runtime can read. With
    ``force_backward`` every blob a layer can back-propagate into, and every
    top of such a layer, gets a diff, which the gradient checks use. Raises
    TopologyError, ShapeError or ConfigError naming the layer or blob at fault.
    ``param_shapes`` gives {(param key, name): shape} of parameters that nets
    built earlier registered, for layers that use another layer's parameter.
    """
    layers = check_layer_list(name, layers)
    if not isinstance(force_backward, (bool, np.bool_)):
        raise ConfigError(
            f"net '{name}': invalid force_backward={force_backward!r}; expected "
            "True or False"
        )
    names = _display_names(layers)
    graph = nx.DiGraph(name=name)
    producers: dict[str, int] = {}

    # Wire every top to its producer.
    for index, layer in enumerate(layers):
        graph.add_node(("layer", index), index=index, name=names[index])
        for position, top in enumerate(layer.tops):
            if top in producers:
                other = producers[top]
                raise TopologyError(
                    f"blob '{top}' is a top of both layer '{names[other]}' and layer "
                    f"'{names[index]}'; rename one of the tops"
                )
            producers[top] = index
            graph.add_edge(("layer", index), ("blob", top), index=position)

    # Wire every bottom to its consumer.
    for index, layer in enumerate(layers):
        for position, bottom in enumerate(layer.bottoms):
            if bottom not in producers:
                known = ", ".join(sorted(producers)) or "none"
                raise TopologyError(
                    f"layer '{names[index]}' reads bottom '{bottom}', which no layer "
                    f"produces (known blobs: {known}); add a layer with that top or "
                    "fix the name"
                )
            if graph.has_edge(("blob", bottom), ("layer", index)):
                raise TopologyError(
                    f"layer '{names[index]}' lists bottom '{bottom}' twice; use a "
                    "SplitLayer to make two copies"
                )
            graph.add_edge(("blob", bottom), ("layer", index), index=position)

    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        members = [names[node[1]] for node, _ in cycle if node[0] == "layer"]
        raise TopologyError(
            f"the layers {' -> '.join(members)} form a cycle; a net must be acyclic"
        )
    order = [
        node[1]
        for node in nx.lexicographical_topological_sort(
            graph, key=lambda node: (node[1] if node[0] == "layer" else -1, str(node))
        )
        if node[0] == "layer"
    ]

    # Infer shapes along the forward order.
    infos = [
        LayerInfo(index, layer, names[index]) for index, layer in enumerate(layers)
    ]
    blobs: dict[str, BlobInfo] = {}
    known_params = dict(param_shapes or {})
    # The keys this net's own layers have given a shape so far.
    own_keys = set()
    # param_key -> (layer name, class, parameter names) of its first layer.
    key_owners: dict[str, tuple[str, str, frozenset]] = {}
    for index in order:
        info, layer = infos[index], layers[index]
        info.bottom_shapes = [blobs[bottom].shape for bottom in layer.bottoms]
        if layer.is_source:
            top_shapes = [tuple(shape) for shape in source_shapes[index]]
        else:
            extra = (known_params,) if layer.reads_param_shapes else ()
            top_shapes = [
                tuple(shape) for shape in layer.infer_shapes(info.bottom_shapes, *extra)
            ]
            info.params = layer.param_specs(info.bottom_shapes, *extra)
            check_key_parameters(info, key_owners)
            for spec in info.params:
                key = (spec.key or info.param_key, spec.name)
                shape = known_params.setdefault(key, spec.shape)
                if tuple(shape) != tuple(spec.shape) and key not in own_keys:
                    raise ShapeError(
                        f"layer '{info.name}': parameter '{spec.name}' is shared "
                        f"under key '{key[0]}' with shape {tuple(shape)}, which a "
                        "net built earlier on this backend gave it, but this "
                        f"layer needs {tuple(spec.shape)}. Nets on one backend "
                        "share the parameters of layers of the same name (or "
                        "param_key), as in Mocha; give this layer another name or "
                        "param_key, build the net on a backend of its own, or "
                        "call registry_reset(backend) to forget the earlier "
                        "net's parameters"
                    )
                if tuple(shape) != tuple(spec.shape):
                    raise ShapeError(
                        f"layer '{info.name}': parameter '{spec.name}' is shared "
                        f"under key '{key[0]}' with shape {tuple(shape)}, but this "
                        f"layer needs {tuple(spec.shape)}; give the layers "
                        "different param_key values or matching shapes"
                    )
                own_keys.add(key)
        info.top_shapes = top_shapes
        for top, shape in zip(layer.tops, top_shapes):
            check_size(info.name, layer, f"top '{top}'", shape)
        for spec in info.params:
            check_size(info.name, layer, f"parameter '{spec.name}'", spec.shape)
        for top, shape in zip(layer.tops, top_shapes):
            blobs[top] = BlobInfo(top, shape, producer=index)
        for bottom in layer.bottoms:
            blobs[bottom].consumers.append(index)
    for blob in blobs.values():
        graph.nodes[("blob", blob.name)]["shape"] = blob.shape

    ir = NetIR(name, graph, infos, blobs, order, dtype=np.dtype(dtype))
    conflicts = derive_backward(ir, force_backward)
    if conflicts:
        layers = insert_splits(layers, names, conflicts)
        return build_ir(
            name, layers, source_shapes, dtype, force_backward, param_shapes
        )
    ir.inserted_splits = [info.name for info in infos if info.layer in _INSERTED]
    return ir


# Split layers created by insert_splits, so the IR can report them.
_INSERTED: weakref.WeakSet[Layer] = weakref.WeakSet()


def insert_splits(layers, names, conflicts) -> list[Layer]:
    """Return ``layers`` with a SplitLayer for each blob that several layers
    back-propagate into; each of those consumers reads its own copy.

    Mocha requires users to write the split themselves. mochac inserts it and logs
    a warning that names the blob and its consumers.
    """
    layers = list(layers)
    taken = set(names)
    for blob, writers in conflicts.items():
        split_name = blob + "-split"
        while split_name in taken:
            split_name += "_"
        taken.add(split_name)
        tops = [f"{split_name}{k}" for k in range(len(writers))]
        for top, (index, position) in zip(tops, writers):
            bottoms = list(layers[index].bottoms)
            bottoms[position] = top
            layers[index] = layers[index].replace(bottoms=bottoms)
        split = SplitLayer(name=split_name, bottoms=[blob], tops=tops)
        _INSERTED.add(split)
        layers.append(split)
        consumers = ", ".join(repr(names[index]) for index, _ in writers)
        logger.warning(
            "blob '%s' feeds back-propagating layers %s; inserted split layer '%s' "
            "so that their gradients add up",
            blob,
            consumers,
            split_name,
        )
    return layers
