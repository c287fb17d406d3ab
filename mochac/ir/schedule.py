"""Derive the backward schedule: which blobs carry diffs and which layers run.

A blob needs a diff when a gradient can flow through it: some consumer
back-propagates into it from a loss (or, under force_backward, from any top),
and its producer has parameters or itself passes gradients further down.
Under force_backward the tops of every back-propagating layer also get diffs.
"""

from __future__ import annotations


def derive_backward(ir, force_backward: bool = False) -> dict:
    """Fill ``needs_diff``, ``propagate_down``, ``in_backward`` and the backward order.

    Returns {blob: [(layer index, bottom position), ...]} for every blob whose
    diff more than one layer writes; such a blob needs a split.
    """
    layers = ir.layers

    # Gradient reaches a blob from above: walk the forward order in reverse.
    reaches_loss: dict[str, bool] = {}
    layer_reached = [False] * len(layers)
    for index in reversed(ir.forward_order):
        info = layers[index]
        layer = info.layer
        if not layer.can_do_bp:
            continue
        tops_reached = any(reaches_loss.get(top, False) for top in layer.tops)
        if layer.has_loss or tops_reached or (force_backward and not layer.is_source):
            layer_reached[index] = True
            for position, bottom in enumerate(layer.bottoms):
                if layer.bottom_takes_grad(position):
                    reaches_loss[bottom] = True
            if force_backward:
                # Tops that no loss reaches get a diff too, so that a gradient
                # check can seed the backward pass of any layer.
                for top in layer.tops:
                    reaches_loss[top] = True

    # Gradient is wanted below a blob: walk the forward order.
    wanted_below: dict[str, bool] = {}
    for index in ir.forward_order:
        info = layers[index]
        layer = info.layer
        below = bool(info.params) or any(
            wanted_below.get(bottom, False) for bottom in layer.bottoms
        )
        if force_backward and layer.is_source:
            below = True
        for top in layer.tops:
            wanted_below[top] = (
                below and layer.can_do_bp or (force_backward and layer.is_source)
            )

    for blob in ir.blobs.values():
        blob.needs_diff = reaches_loss.get(blob.name, False) and wanted_below.get(
            blob.name, False
        )

    for index in ir.forward_order:
        info = layers[index]
        layer = info.layer
        info.propagate_down = [
            layer_reached[index]
            and layer.bottom_takes_grad(position)
            and ir.blobs[bottom].needs_diff
            for position, bottom in enumerate(layer.bottoms)
        ]
        info.in_backward = layer_reached[index] and (
            bool(info.params) or any(info.propagate_down)
        )

    # A diff written by two consumers needs summing: report it, so that
    # build_ir can insert a split.
    conflicts = {}
    for blob in ir.blobs.values():
        writers = [
            (index, position)
            for index in blob.consumers
            for position, bottom in enumerate(layers[index].layer.bottoms)
            if bottom == blob.name and layers[index].propagate_down[position]
        ]
        if len(writers) > 1:
            conflicts[blob.name] = writers

    ir.backward_order = [i for i in reversed(ir.forward_order) if layers[i].in_backward]
    return conflicts


def layers_without_gradient(ir) -> dict[str, str]:
    """Return {layer name: why} for the layers with parameters that no
    gradient reaches, so training leaves their parameters as they are.

    The reason names the layers that stop the gradient: consumers on the way
    to a loss that do not back-propagate into the blob they read (CropLayer,
    ArgmaxLayer, a loss's label). A layer is not listed when another layer
    trains one of the parameters it learns, and parameters a layer only reads
    (a TiedInnerProductLayer's weight by default) do not count as its own.
    Call it after derive_backward.
    """
    layers = ir.layers
    trained = {
        (spec.key or info.param_key, spec.name)
        for info in layers
        if info.in_backward
        for spec in info.params
        if spec.learned
    }
    # Does some loss read this blob, directly or through later layers?
    leads_to_loss: dict[str, bool] = {}
    for index in reversed(ir.forward_order):
        layer = layers[index].layer
        reaches = layer.has_loss or any(leads_to_loss.get(t) for t in layer.tops)
        for bottom in layer.bottoms:
            leads_to_loss[bottom] = leads_to_loss.get(bottom, False) or reaches
    reasons = {}
    for info in layers:
        keys = {
            (spec.key or info.param_key, spec.name)
            for spec in info.params
            if spec.learned
        }
        if not keys or info.in_backward or keys & trained:
            continue
        stops, seen, todo = [], set(), list(info.layer.tops)
        while todo:
            blob = todo.pop()
            if blob in seen:
                continue
            seen.add(blob)
            for consumer in ir.blobs[blob].consumers:
                layer = layers[consumer].layer
                positions = [p for p, b in enumerate(layer.bottoms) if b == blob]
                if any(layer.bottom_takes_grad(p) for p in positions):
                    todo.extend(layer.tops)
                elif (
                    layer.has_loss or any(leads_to_loss.get(t) for t in layer.tops)
                ) and layers[consumer].name not in stops:
                    stops.append(layers[consumer].name)
        if stops:
            named = ", ".join(
                f"'{name}' ({type(ir.layer(name).layer).__name__})" for name in stops
            )
            reasons[info.name] = (
                f"its outputs reach the losses only through layers that do not "
                f"back-propagate into them: {named}"
            )
        else:
            reasons[info.name] = "no loss layer reads its outputs"
    return reasons
