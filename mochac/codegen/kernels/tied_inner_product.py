"""Lowering of TiedInnerProductLayer (templates/c/tied_inner_product.c.j2)."""

from __future__ import annotations

from mochac.codegen.lowering import neuron_values, pair_slots, register_lowering
from mochac.layers.tied_inner_product import TIED_WEIGHT, TiedInnerProductLayer


@register_lowering(TiedInnerProductLayer, "tied_inner_product")
def lower_tied_inner_product(info, ir, slots):
    layer: TiedInnerProductLayer = info.layer
    weight_spec, _ = info.params
    inputs, outputs = weight_spec.shape
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["N"] = shape[0]
        pair["top_size"] = shape[0] * outputs
    # The weight slot is the encoder's, and the gradient slots are this
    # layer's. The weight has a gradient slot only with learn_weights=True.
    weight_grad = slots.find("grad", info.name, TIED_WEIGHT)
    bias_grad = slots.find("grad", info.name, "bias")
    return {
        "IN": inputs,
        "OUT": outputs,
        "pairs": pairs,
        "weight": slots.get("param", layer.tied_param_key, TIED_WEIGHT).index,
        "bias": slots.get("param", info.param_key, "bias").index,
        "weight_grad": weight_grad.index if weight_grad and info.in_backward else None,
        "bias_grad": bias_grad.index if bias_grad and info.in_backward else None,
        **neuron_values(info),
    }
