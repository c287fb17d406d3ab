"""The check for NaN or infinite parameters after an update, and the search
for the layer whose gradients made them."""

from __future__ import annotations

import networkx as nx
import numpy as np

from mochac.errors import NumericalError


def check_parameters(solver, net, regu_coef: float, grads_applied: bool = True) -> None:
    """Raise NumericalError naming the first parameter with a NaN or
    infinite value.

    With ``grads_applied`` (the net's gradients are still those the
    update applied), the message also states whether they or the
    update's step made the values.
    """
    state = solver.state
    for layer, arrays in net.params.items():
        for name, array in arrays.items():
            values = net.backend.to_host(array)
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad == 0:
                continue
            origin = gradient_origin(net, layer, name) if grads_applied else ""
            raise NumericalError(
                f"net '{net.name}': after the last update (iteration "
                f"{state.iter}), parameter '{name}' of layer '{layer}' has "
                f"{bad} NaN or infinite values of {values.size}. The update "
                f"used learning rate {state.learning_rate:g}, momentum "
                f"{state.momentum:g} and regu_coef {regu_coef:g}"
                f"{origin}; lower the "
                "learning rate or regu_coef, "
                "check the loss layers' class weights and the input data, and "
                "train again from an earlier snapshot"
            )


def gradient_origin(net, layer: str, name: str) -> str:
    """Return why parameter ``name`` of ``layer`` went NaN or infinite in
    an update, for the solver's error, from the gradients the update
    applied.

    When the parameter's own gradient is finite, the update's step made the
    values. Otherwise the culprit is the layer nearest the losses, among
    ``layer`` and the layers after it, whose gradients hold NaN or infinite
    values, or a layer between that one and the losses. Returns "" when the
    net's gradients no longer are those the update applied (a GPU step
    whose loss check failed still runs its backward pass).
    """
    own = net.grads.get(layer, {}).get(name)
    if own is None or getattr(net, "grads_overwritten", False):
        return ""
    if np.isfinite(net.backend.to_host(own)).all():
        return (
            ". Its gradient from the last backward pass is finite, so the "
            "update's step made the values"
        )
    after = layers_after(net.ir, net.ir.layer(layer).index)
    for index in net.ir.backward_order:
        if index not in after:
            continue
        owner = net.ir.layers[index].name
        for grad_name, grad in net.grads.get(owner, {}).items():
            if not np.isfinite(net.backend.to_host(grad)).all():
                return (
                    f". Gradient '{grad_name}' of layer '{owner}' has NaN or "
                    "infinite values, the nearest the losses to have them: "
                    "its backward pass or that of a layer between it and the "
                    "losses made them (or the regularization term the update "
                    "adds, with a huge regu_coef)"
                )
    return ""


def layers_after(ir, index: int) -> set[int]:
    """Return ``index`` and the indices of the layers that read its tops,
    directly or through other layers."""
    reached = nx.descendants(ir.graph, ("layer", index))
    return {index} | {node[1] for node in reached if node[0] == "layer"}
