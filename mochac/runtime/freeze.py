"""Freezing layers: Mocha's freeze!, unfreeze! and freeze_all!.

The solver leaves a frozen layer's parameters unchanged: no update, no
regularization and no solver buffer. A training step also skips the
backward pass of every layer that neither trains a parameter nor passes a
gradient down to one that does (skipped_backward), so the frozen bottom of
a net costs only its forward pass. ``net.backward()`` still runs every
layer. The set of frozen layer names is stored on the net as
``frozen_layers``.
"""

from __future__ import annotations

from mochac.errors import ConfigError, name_not_found
from mochac.ir.graph import LAYER_NAME_FIX
from mochac.runtime.net_checks import check_net


def _layer_names(net) -> list[str]:
    names = [info.name for info in net.ir.layers]
    names += [
        layer.name for layer in net.layers if layer.name and layer.name not in names
    ]
    return names


def _check_names(net, action: str, layer_names) -> None:
    for name in layer_names:
        if not isinstance(name, str):
            raise ConfigError(
                f"{action}: invalid layer name {name!r}; pass each name as a "
                f"separate string, e.g. {action}(net, 'ip1', 'ip2')"
            )
    known = _layer_names(net)
    unknown = [name for name in layer_names if name not in known]
    if unknown:
        raise name_not_found(
            f"{action}: net '{net.name}' has no layer named "
            f"{', '.join(map(repr, unknown))}",
            unknown,
            known,
            "its layers",
            LAYER_NAME_FIX,
        )


def frozen_layers(net) -> frozenset[str]:
    """Return the names of the frozen layers of ``net``."""
    return getattr(net, "frozen_layers", frozenset())


def freeze(net, *layer_names) -> None:
    """Freeze the named layers of ``net``; raise NotFoundError for an unknown
    name and ConfigError for no name at all."""
    check_net(net, "freeze")
    if not layer_names:
        raise ConfigError(
            f"freeze: no layer named for net '{net.name}'; name the layers, or "
            "call freeze_all(net) to freeze every layer"
        )
    _check_names(net, "freeze", layer_names)
    net.frozen_layers = frozen_layers(net) | frozenset(layer_names)


def freeze_all(net) -> None:
    """Freeze every layer of ``net``."""
    check_net(net, "freeze_all")
    net.frozen_layers = frozenset(_layer_names(net))


def unfreeze(net, *layer_names) -> None:
    """Unfreeze the named layers of ``net``, or every layer when none is named;
    raise NotFoundError for an unknown name."""
    check_net(net, "unfreeze")
    if not layer_names:
        net.frozen_layers = frozenset()
        return
    _check_names(net, "unfreeze", layer_names)
    net.frozen_layers = frozen_layers(net) - frozenset(layer_names)


def trainable_groups(net):
    """Yield, per trainable array, the (layer info, spec, parameter, gradient)
    of every layer that learns it, the owner (a spec without ``key``) first.

    An array is left out when any layer that learns it is frozen, so a
    frozen layer's learned parameters never change. A layer that only reads
    an array (a TiedInnerProductLayer's weight with learn_weights=False) is
    not one of its members, so freezing it leaves the array to the others.
    """
    frozen = frozen_layers(net)
    users: dict[int, list] = {}
    for info in net.ir.layers:
        grads = net.grads.get(info.name)
        if not grads:
            continue
        for spec in info.params:
            if not spec.learned:
                continue
            param = net.params[info.name][spec.name]
            users.setdefault(id(param), []).append(
                (info, spec, param, grads[spec.name])
            )
    for members in users.values():
        if any(member[0].name in frozen for member in members):
            continue
        members.sort(key=lambda member: member[1].key is not None)
        yield members


def skipped_backward(net) -> frozenset[int]:
    """Return the indices of the layers whose backward pass a training step
    can skip under the net's frozen layers.

    A layer's backward pass is needed when the layer has a parameter and is
    not frozen, or when it passes a gradient into a bottom whose producer's
    backward pass is needed. Under ``force_backward`` nothing is skipped,
    since the caller wants every diff.
    """
    frozen = frozen_layers(net)
    if not frozen or net.force_backward:
        return frozenset()
    ir = net.ir
    # Whether the producer of a blob needs the blob's diff.
    diff_needed: dict[str, bool] = {}
    skipped = set()
    for index in ir.forward_order:
        info = ir.layers[index]
        trains = bool(info.params) and info.name not in frozen
        feeds = any(
            down and diff_needed.get(bottom, False)
            for down, bottom in zip(info.propagate_down, info.layer.bottoms)
        )
        needed = info.in_backward and (trains or feeds)
        for top in info.layer.tops:
            diff_needed[top] = needed
        if info.in_backward and not needed:
            skipped.add(index)
    return frozenset(skipped)
