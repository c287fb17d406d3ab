"""Lowering: turn each IR layer into a template name and plain template values.

All decisions (loop bounds, which gradients to compute, buffer indices) are
made here, so templates only print. One lowering function per layer family,
registered by layer class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod

import numpy as np

from mochac.codegen.slots import SlotTable
from mochac.layers import (
    AccuracyLayer,
    ConvolutionLayer,
    IdentityLayer,
    InnerProductLayer,
    PoolingLayer,
    ReshapeLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SplitLayer,
    SquareLossLayer,
)
from mochac.layers.base import channel_axis
from mochac.layers.pooling import MaxPooling


@dataclass
class Kernel:
    """The generated functions of one layer."""

    layer_index: int
    fn: str
    template: str
    context: dict


def c_identifier(name: str, used: set[str]) -> str:
    """Return a C identifier derived from ``name``, unique within ``used``."""
    base = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "layer"
    if base[0].isdigit():
        base = "l_" + base
    candidate, suffix = base, 2
    while candidate in used:
        candidate, suffix = f"{base}_{suffix}", suffix + 1
    used.add(candidate)
    return candidate


def describe(info, ir) -> str:
    """Return the one-line comment that heads a layer's generated code."""
    layer = info.layer
    bottoms = ", ".join(f"{b} {ir.blobs[b].shape}" for b in layer.bottoms) or "none"
    tops = ", ".join(f"{t} {ir.blobs[t].shape}" for t in layer.tops) or "none"
    return f"{info.name}: {type(layer).__name__}; bottoms [{bottoms}]; tops [{tops}]"


def _blob_slots(slots: SlotTable, blob: str) -> tuple[int, int | None]:
    diff = slots.find("diff", blob)
    return slots.get("data", blob).index, diff.index if diff else None


def _pairs(info, slots):
    """Per bottom/top pair: data and diff slots of both, and propagate_down."""
    pairs = []
    seen_diff = False
    for position, (bottom, top) in enumerate(zip(info.layer.bottoms, info.layer.tops)):
        x, dx = _blob_slots(slots, bottom)
        y, dy = _blob_slots(slots, top)
        # Parameter gradients are overwritten by the first pair with a top diff
        # and accumulated by the others.
        beta = 1 if seen_diff else 0
        seen_diff = seen_diff or dy is not None
        pairs.append(
            dict(
                x=x,
                dx=dx if info.propagate_down[position] else None,
                y=y,
                dy=dy,
                beta=beta,
            )
        )
    return pairs


def _param_slots(info, slots, names):
    """Slot indices of each parameter and, when backward runs, its gradient."""
    out = {}
    for name in names:
        out[name] = slots.get("param", info.param_key, name).index
        grad = slots.find("grad", info.name, name)
        out[name + "_grad"] = grad.index if grad and info.in_backward else None
    return out


def lower_convolution(info, ir, slots):
    layer: ConvolutionLayer = info.layer
    n, channels, height, width = info.bottom_shapes[0]
    _, filters, out_h, out_w = info.top_shapes[0]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_hw, layer.stride_hw, layer.pad_hw
    group_k = channels // layer.n_group * kh * kw
    col = slots.add(
        "work", info.name, "col", ir.dtype, (channels * kh * kw, n * out_h * out_w)
    )
    tmp = slots.add(
        "work", info.name, "gemm_out", ir.dtype, (filters, n * out_h * out_w)
    )
    return dict(
        N=n,
        C=channels,
        H=height,
        W=width,
        F=filters,
        OH=out_h,
        OW=out_w,
        KH=kh,
        KW=kw,
        SH=sh,
        SW=sw,
        PH=ph,
        PW=pw,
        G=layer.n_group,
        K=group_k,
        FG=filters // layer.n_group,
        P=out_h * out_w,
        NP=n * out_h * out_w,
        col=col.index,
        tmp=tmp.index,
        pairs=_pairs(info, slots),
        act=layer.neuron.c_forward("v"),
        dact=layer.neuron.c_backward("v"),
        has_neuron=not layer.neuron.is_identity,
        **_param_slots(info, slots, ["filter", "bias"]),
    )


def lower_inner_product(info, ir, slots):
    layer: InnerProductLayer = info.layer
    pairs = _pairs(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["N"] = shape[0]
    return dict(
        D=prod(info.bottom_shapes[0][1:]),
        O=layer.output_dim,
        pairs=pairs,
        act=layer.neuron.c_forward("v"),
        dact=layer.neuron.c_backward("v"),
        has_neuron=not layer.neuron.is_identity,
        **_param_slots(info, slots, ["weight", "bias"]),
    )


def lower_pooling(info, ir, slots):
    layer: PoolingLayer = info.layer
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_hw, layer.stride_hw, layer.pad_hw
    is_max = isinstance(layer.pooling, MaxPooling)
    pairs = _pairs(info, slots)
    for position, (pair, bottom, top) in enumerate(
        zip(pairs, info.bottom_shapes, info.top_shapes)
    ):
        pair.update(
            NC=bottom[0] * bottom[1], H=bottom[2], W=bottom[3], OH=top[2], OW=top[3]
        )
        if is_max:
            mask = slots.add("work", info.name, f"argmax{position}", np.int32, top)
            pair["mask"] = mask.index
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, is_max=is_max, pairs=pairs)


def _class_split(layer, shape):
    axis = channel_axis(layer, layer.dim, len(shape))
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1 :])


def lower_softmax(info, ir, slots):
    pairs = _pairs(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["outer"], pair["C"], pair["inner"] = _class_split(info.layer, shape)
    return dict(pairs=pairs)


def _label_context(info, ir, slots):
    """Values shared by layers that read class labels."""
    layer = info.layer
    outer, classes, inner = _class_split(layer, info.bottom_shapes[0])
    x, dx = _blob_slots(slots, layer.bottoms[0])
    label = slots.get("data", layer.bottoms[1]).index
    batch = info.bottom_shapes[0][0]
    return dict(
        outer=outer,
        C=classes,
        inner=inner,
        x=x,
        dx=dx if info.propagate_down[0] else None,
        label=label,
        per_sample=outer * inner // batch,
        layer_index=info.index,
    )


def lower_softmax_loss(info, ir, slots):
    state = slots.add("state", info.name, "loss", np.float64, (1,))
    return dict(
        state=state.index,
        weight=float(info.layer.weight),
        **_label_context(info, ir, slots),
    )


def lower_accuracy(info, ir, slots):
    state = slots.add("state", info.name, "accuracy", np.float64, (2,))
    return dict(state=state.index, **_label_context(info, ir, slots))


def lower_square_loss(info, ir, slots):
    layer = info.layer
    state = slots.add("state", info.name, "loss", np.float64, (1,))
    pred, dpred = _blob_slots(slots, layer.bottoms[0])
    label, dlabel = _blob_slots(slots, layer.bottoms[1])
    return dict(
        state=state.index,
        weight=float(layer.weight),
        N=info.bottom_shapes[0][0],
        size=prod(info.bottom_shapes[0]),
        pred=pred,
        label=label,
        dpred=dpred if info.propagate_down[0] else None,
        dlabel=dlabel if info.propagate_down[1] else None,
    )


def lower_copy(info, ir, slots):
    """Identity and Reshape: each top is a copy of the bottom at its index."""
    pairs = _pairs(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["size"] = prod(shape)
    return dict(pairs=pairs)


def lower_split(info, ir, slots):
    layer = info.layer
    x, dx = _blob_slots(slots, layer.bottoms[0])
    tops = [dict(zip(("y", "dy"), _blob_slots(slots, top))) for top in layer.tops]
    return dict(
        x=x,
        dx=dx if info.propagate_down[0] else None,
        tops=tops,
        size=prod(info.bottom_shapes[0]),
    )


LOWERINGS = {
    ConvolutionLayer: ("convolution", lower_convolution),
    InnerProductLayer: ("inner_product", lower_inner_product),
    PoolingLayer: ("pooling", lower_pooling),
    SoftmaxLayer: ("softmax", lower_softmax),
    SoftmaxLossLayer: ("softmax_loss", lower_softmax_loss),
    SquareLossLayer: ("square_loss", lower_square_loss),
    AccuracyLayer: ("accuracy", lower_accuracy),
    IdentityLayer: ("copy", lower_copy),
    ReshapeLayer: ("copy", lower_copy),
    SplitLayer: ("split", lower_split),
}


def allocate_slots(ir) -> SlotTable:
    """Create the data, diff, param and grad slots of every blob and layer."""
    slots = SlotTable()
    for index in ir.forward_order:
        info = ir.layers[index]
        for top in info.layer.tops:
            blob = ir.blobs[top]
            slots.add("data", top, "", ir.dtype, blob.shape)
            if blob.needs_diff:
                slots.add("diff", top, "", ir.dtype, blob.shape)
    for index in ir.forward_order:
        info = ir.layers[index]
        for spec in info.params:
            slots.add("param", info.param_key, spec.name, ir.dtype, spec.shape)
            if info.in_backward:
                slots.add("grad", info.name, spec.name, ir.dtype, spec.shape)
    return slots


def lower_net(ir) -> tuple[SlotTable, list[Kernel]]:
    """Return the slot table and one Kernel per compute layer, in forward order."""
    slots = allocate_slots(ir)
    kernels = []
    used: set[str] = {"mochac"}
    for index in ir.forward_order:
        info = ir.layers[index]
        if info.layer.is_source:
            continue
        try:
            family, lower = LOWERINGS[type(info.layer)]
        except KeyError:
            raise NotImplementedError(
                f"layer '{info.name}': the CPU backend has no kernel for "
                f"{type(info.layer).__name__}"
            ) from None
        context = lower(info, ir, slots)
        context.update(
            fn=c_identifier(info.name, used),
            comment=describe(info, ir),
            in_backward=info.in_backward,
            index=index,
        )
        kernels.append(Kernel(index, context["fn"], f"c/{family}.c.j2", context))
    return slots, kernels
