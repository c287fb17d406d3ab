"""Lowering: turn each IR layer into a template name and plain template values.

All decisions (loop bounds, which gradients to compute, buffer indices) are
made here, so templates only print. One lowering function per layer family,
registered by layer class.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from math import prod

import numpy as np

from mochac.codegen.slots import SlotTable
from mochac.layers import (
    ConvolutionLayer,
    IdentityLayer,
    InnerProductLayer,
    PoolingLayer,
    ReshapeLayer,
    SoftmaxLayer,
    SplitLayer,
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
    # The lowering family, e.g. "convolution"; the C template may be a
    # variant of it (convolution_direct).
    family: str


def c_identifier(name: str, used: set[str]) -> str:
    """Return a C identifier derived from ``name``, unique within ``used``.

    A layer ``x`` whose neuron runs apart defines ``x_neuron_forward``,
    which a layer named ``x_neuron`` would define too, so ``x_neuron`` is
    kept out of use along with ``x``.
    """
    base = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "layer"
    if base[0].isdigit():
        base = "l_" + base
    candidate, suffix = base, 2
    while candidate in used or f"{candidate}_neuron" in used:
        candidate, suffix = f"{base}_{suffix}", suffix + 1
    used.update((candidate, f"{candidate}_neuron"))
    return candidate


def describe(info, ir) -> str:
    """Return the one-line comment that heads a layer's generated code."""
    layer = info.layer
    bottoms = ", ".join(f"{b} {ir.blobs[b].shape}" for b in layer.bottoms) or "none"
    tops = ", ".join(f"{t} {ir.blobs[t].shape}" for t in layer.tops) or "none"
    return f"{info.name}: {type(layer).__name__}; bottoms [{bottoms}]; tops [{tops}]"


def blob_slots(slots: SlotTable, blob: str) -> tuple[int, int | None]:
    diff = slots.find("diff", blob)
    return slots.get("data", blob).index, diff.index if diff else None


def pair_slots(info, slots):
    """Per bottom/top pair: data and diff slots of both, and propagate_down."""
    pairs = []
    seen_diff = False
    for position, (bottom, top) in enumerate(zip(info.layer.bottoms, info.layer.tops)):
        x, dx = blob_slots(slots, bottom)
        y, dy = blob_slots(slots, top)
        # Parameter gradients are overwritten by the first pair with a top diff
        # and accumulated by the others.
        beta = 1 if seen_diff else 0
        seen_diff = seen_diff or dy is not None
        pairs.append(
            {
                "x": x,
                "dx": dx if info.propagate_down[position] else None,
                "acc": accumulates(info, position),
                "y": y,
                "dy": dy,
                "beta": beta,
            }
        )
    return pairs


def accumulates(info, position) -> bool:
    """Return whether backward adds into the bottom's diff (shared with other writers)."""
    return bool(info.accumulate) and info.accumulate[position]


def neuron_values(info):
    """Template values of a layer's neuron: fused expressions or a separate kernel."""
    neuron = info.layer.neuron
    active = not neuron.is_identity
    fused = active and info.fuse_neuron
    return {
        "act": neuron.c_forward("v") if fused else "v",
        "dact": neuron.c_backward("v"),
        "has_neuron": fused,
        "neuron_kernel": active and not fused,
        "neuron_act": neuron.c_forward("v"),
    }


def param_slots(info, slots, names):
    """Slot indices of each parameter and, when backward runs, its gradient."""
    out = {}
    for name in names:
        out[name] = slots.get("param", info.param_key, name).index
        grad = slots.find("grad", info.name, name)
        out[name + "_grad"] = grad.index if grad and info.in_backward else None
    return out


# A convolution works on chunks of images whose im2col columns fill about
# this many bytes, small enough to stay in a core's L2 cache between im2col
# and the GEMM that reads them.
CONV_CHUNK_BYTES = 128 * 1024
# At most this many lanes (chunk sequences run one after another by one
# thread, each with its own scratch and partial parameter gradients).
CONV_MAX_LANES = 8


def conv_chunking(n: int, bytes_per_image: int) -> tuple[int, int, int]:
    """Return (images per chunk, chunks, lanes) for a batch of ``n`` images.

    Chunks are dealt to lanes round-robin (chunk c goes to lane c % lanes),
    and a lane's partial filter gradient is summed in chunk order, so the
    result does not depend on how many threads run the lanes.
    """
    chunk = max(1, min(n, CONV_CHUNK_BYTES // max(bytes_per_image, 1)))
    # Keep enough chunks to give every lane work.
    chunk = min(chunk, max(1, -(-n // CONV_MAX_LANES)))
    chunks = -(-n // chunk)
    return chunk, chunks, min(chunks, CONV_MAX_LANES)


# Convolutions whose shapes allow it run as direct convolutions (see
# direct_convolution_fits); tests turn this off to compare with im2col.
DIRECT_CONVOLUTION = True
# A direct convolution rounds its filter count (and, for the bottom diff, its
# channel count) up to a multiple of this, so they fill whole vectors. 16
# values are one 64-byte vector of float32 and two of float64, or two and
# four 32-byte vectors without AVX-512.
DIRECT_BLOCK = 16
# The share of a direct convolution's multiply-adds that must be useful; the
# rest are zeros from the rounding and, for the bottom diff, the padding.
DIRECT_MIN_FILL = 0.75
# Output positions over the batch below which im2col stays: every call packs
# the filters again, and with few positions that copy costs as much as the
# products. NOTE: chosen from batch-1 timings on the AVX-512 machine of
# docs/benchmarks.md, where direct code lost at 64 positions (LeNet's conv2,
# CIFAR-10's conv3) and won at 256 (CIFAR-10's conv2).
DIRECT_MIN_POSITIONS = 256


def direct_convolution_fits(info) -> bool:
    """Return whether a convolution should run as generated direct code.

    The direct kernels need stride 1 and one group. They compute filters in
    whole vector blocks, so at least DIRECT_MIN_FILL of the filter count
    rounded up to DIRECT_BLOCK must be real filters. The bottom diff is the
    forward kernel run over every bottom position on the top diff padded by
    kernel - 1 - pad (which must not be negative), with channels rounded up
    the same way. Its useful share is top positions times channels over
    bottom positions times rounded channels, and it must also reach
    DIRECT_MIN_FILL. A "same" convolution has all of it. A small "valid"
    one such as LeNet's conv2 (8 x 8 from 12 x 12, 20 channels) has 0.28
    and stays with im2col and GEMM, as do all other convolutions.
    """
    layer: ConvolutionLayer = info.layer
    _, channels, height, width = info.bottom_shapes[0]
    _, filters, out_h, out_w = info.top_shapes[0]
    (kh, kw), (ph, pw) = layer.kernel_hw, layer.pad_hw
    if not (DIRECT_CONVOLUTION and layer.stride_hw == (1, 1) and layer.n_group == 1):
        return False
    if filters / round_up(filters, DIRECT_BLOCK) < DIRECT_MIN_FILL:
        return False
    if info.top_shapes[0][0] * out_h * out_w < DIRECT_MIN_POSITIONS:
        return False
    if not (info.in_backward and any(info.propagate_down)):
        return True
    if ph >= kh or pw >= kw:
        return False
    useful = out_h * out_w * channels
    computed = height * width * round_up(channels, DIRECT_BLOCK)
    return useful / computed >= DIRECT_MIN_FILL


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def lower_convolution(info, ir, slots):
    if direct_convolution_fits(info):
        return lower_direct_convolution(info, ir, slots)
    return lower_im2col_convolution(info, ir, slots)


def lower_im2col_convolution(info, ir, slots):
    """Values of templates/c/convolution.c.j2: im2col and GEMM per chunk."""
    layer: ConvolutionLayer = info.layer
    n, channels, height, width = info.bottom_shapes[0]
    _, filters, out_h, out_w = info.top_shapes[0]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_hw, layer.stride_hw, layer.pad_hw
    group_k = channels // layer.n_group * kh * kw
    positions = out_h * out_w
    rows = channels * kh * kw
    chunk, chunks, lanes = conv_chunking(
        n, rows * positions * np.dtype(ir.dtype).itemsize
    )
    lane_cols = chunk * positions
    # Every lane has its own im2col columns and GEMM output. Backward
    # recomputes the columns of each chunk instead of keeping the whole
    # batch's from forward, so no scratch lives from forward to backward.
    col = slots.add(
        "work", info.name, "col", ir.dtype, (lanes, rows, lane_cols), ("forward",)
    )
    tmp = slots.add(
        "work",
        info.name,
        "gemm_out",
        ir.dtype,
        (lanes, filters, lane_cols),
        ("forward",),
    )
    back = col_back = partial = None
    if info.in_backward:
        col_back = slots.add(
            "work",
            info.name,
            "col_back",
            ir.dtype,
            (lanes, rows, lane_cols),
            ("backward",),
        )
        back = slots.add(
            "work",
            info.name,
            "gemm_diff",
            ir.dtype,
            (lanes, filters, lane_cols),
            ("backward",),
        )
        # Per lane: a partial filter gradient and a partial bias gradient.
        partial = slots.add(
            "work",
            info.name,
            "partial_grad",
            ir.dtype,
            (lanes, filters * group_k + filters),
            ("backward",),
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
        P=positions,
        NP=n * positions,
        CHUNK=chunk,
        CHUNKS=chunks,
        LANES=lanes,
        ROWS=rows,
        LANE_COLS=lane_cols,
        col=col.index,
        tmp=tmp.index,
        col_back=col_back.index if col_back else None,
        tmp_back=back.index if back else None,
        partial=partial.index if partial else None,
        pairs=[
            dict(pair, top_size=n * filters * out_h * out_w)
            for pair in pair_slots(info, slots)
        ],
        **neuron_values(info),
        **param_slots(info, slots, ["filter", "bias"]),
    )


def lower_direct_convolution(info, ir, slots):
    """Return the values of templates/c/convolution_direct.c.j2. The shape
    keys match the im2col lowering's, so the FLOP count of c_source.py and
    the BLAS share of mochac bench read either."""
    layer: ConvolutionLayer = info.layer
    n, channels, height, width = info.bottom_shapes[0]
    _, filters, out_h, out_w = info.top_shapes[0]
    (kh, kw), (ph, pw) = layer.kernel_hw, layer.pad_hw
    lanes = min(n, CONV_MAX_LANES)
    # Filters, and the bottom diff's channels, rounded up to whole blocks.
    padded_filters = round_up(filters, DIRECT_BLOCK)
    pad_h, pad_w = height + 2 * ph, width + 2 * pw
    k = channels * kh * kw
    positions = out_h * out_w
    pairs = [
        dict(pair, top_size=n * filters * positions) for pair in pair_slots(info, slots)
    ]
    params = param_slots(info, slots, ["filter", "bias"])
    # A pair without a top diff only zeroes its bottom diff, which needs no
    # scratch.
    dx_needed = info.in_backward and any(
        pair["dx"] is not None and pair["dy"] is not None for pair in pairs
    )
    padded_channels = round_up(channels, DIRECT_BLOCK) if dx_needed else channels
    # The bottom diff convolves the top diff padded by kernel - 1 - pad
    # (direct_convolution_fits keeps that at 0 or more). Without a bottom
    # diff, the staged top diff needs no padding, and the pad may exceed it.
    qh, qw = (kh - 1 - ph, kw - 1 - pw) if dx_needed else (0, 0)
    diff_h, diff_w = out_h + 2 * qh, out_w + 2 * qw
    dtype = ir.dtype

    def work(name, shape, phase):
        return slots.add("work", info.name, name, dtype, shape, (phase,)).index

    context = dict(
        template="c/convolution_direct.c.j2",
        N=n,
        C=channels,
        H=height,
        W=width,
        F=filters,
        FP=padded_filters,
        CP=padded_channels,
        OH=out_h,
        OW=out_w,
        KH=kh,
        KW=kw,
        SH=1,
        SW=1,
        PH=ph,
        PW=pw,
        G=1,
        K=k,
        FG=filters,
        P=positions,
        NP=n * positions,
        HP=pad_h,
        WP=pad_w,
        QH=qh,
        QW=qw,
        HQ=diff_h,
        WQ=diff_w,
        LANES=lanes,
        dx_needed=dx_needed,
        packed=work("packed_filter", (padded_filters * (k + 1),), "forward"),
        padded=work("padded", (lanes, channels * pad_h * pad_w), "forward"),
        tile=work("tile", (lanes, positions * padded_filters), "forward"),
        pairs=pairs,
        **neuron_values(info),
        **params,
    )
    if info.in_backward and params["filter_grad"] is not None:
        context.update(
            partial=work("partial_grad", (lanes, padded_filters * (k + 1)), "backward"),
            padded_back=work(
                "padded_back", (lanes, channels * pad_h * pad_w), "backward"
            ),
            top_diff_t=work(
                "top_diff_t", (lanes, positions * padded_filters), "backward"
            ),
        )
    # The top diff goes through padded planes when the bottom diff needs them
    # or the neuron's derivative has to be applied before the transpose.
    context["stage_diff"] = info.in_backward and (dx_needed or context["has_neuron"])
    if context["stage_diff"]:
        context["diff_padded"] = work(
            "diff_padded", (lanes, filters * diff_h * diff_w), "backward"
        )
    if dx_needed:
        context.update(
            packed_back=work(
                "packed_turned", (filters * padded_channels * kh * kw,), "backward"
            ),
            diff_tile=work(
                "diff_tile", (lanes, height * width * padded_channels), "backward"
            ),
        )
    return context


def lower_inner_product(info, ir, slots):
    layer: InnerProductLayer = info.layer
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["N"] = shape[0]
        pair["top_size"] = shape[0] * layer.output_dim
    return dict(
        D=prod(info.bottom_shapes[0][1:]),
        O=layer.output_dim,
        pairs=pairs,
        **neuron_values(info),
        **param_slots(info, slots, ["weight", "bias"]),
    )


def lower_pooling(info, ir, slots):
    layer: PoolingLayer = info.layer
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_hw, layer.stride_hw, layer.pad_hw
    is_max = isinstance(layer.pooling, MaxPooling)
    pairs = pair_slots(info, slots)
    for position, (pair, bottom, top) in enumerate(
        zip(pairs, info.bottom_shapes, info.top_shapes)
    ):
        pair.update(
            NC=bottom[0] * bottom[1],
            H=bottom[2],
            W=bottom[3],
            OH=top[2],
            OW=top[3],
            top_size=prod(top),
        )
        if is_max:
            mask = slots.add("work", info.name, f"argmax{position}", np.int32, top)
            pair["mask"] = mask.index
    return dict(
        KH=kh,
        KW=kw,
        SH=sh,
        SW=sw,
        PH=ph,
        PW=pw,
        is_max=is_max,
        pairs=pairs,
        **neuron_values(info),
    )


def class_split(layer, shape):
    axis = channel_axis(layer, layer.dim, len(shape))
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1 :])


def lower_softmax(info, ir, slots):
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["outer"], pair["C"], pair["inner"] = class_split(info.layer, shape)
    return {"pairs": pairs}


def counts_whole(ir, batch: int) -> bool:
    """Return whether a blob of ``batch`` samples is counted whole in statistics.

    n_valid counts samples of the data layers' batch. It does not describe
    a blob of another batch size (two batches joined along the batch axis),
    or any blob when the data layers' batch sizes differ. Such blobs count
    every sample of every batch.
    """
    data_batches = {
        shape[0]
        for layer in ir.layers
        if layer.layer.is_source
        for shape in layer.top_shapes
    }
    return bool(data_batches) and data_batches != {batch}


def valid_unit(ir, batch: int, elements: int) -> int:
    """Return how many of ``elements`` one valid sample counts for: all of
    them for a blob counted whole (counts_whole), so n_valid * unit covers
    the blob."""
    if counts_whole(ir, batch):
        return elements
    return elements // batch


def label_context(info, ir, slots):
    """Values shared by layers that read class labels."""
    layer = info.layer
    outer, classes, inner = class_split(layer, info.bottom_shapes[0])
    x, dx = blob_slots(slots, layer.bottoms[0])
    label = slots.get("data", layer.bottoms[1]).index
    batch = info.bottom_shapes[0][0]
    return {
        "outer": outer,
        "C": classes,
        "inner": inner,
        "x": x,
        "dx": dx if info.propagate_down[0] else None,
        "acc": accumulates(info, 0),
        "label": label,
        "per_sample": outer * inner // batch,
        "valid_unit": valid_unit(ir, batch, outer * inner),
        "layer_index": info.index,
    }


def lower_copy(info, ir, slots):
    """Identity and Reshape: each top is a copy of the bottom at its index."""
    pairs = pair_slots(info, slots)
    for pair, shape in zip(pairs, info.bottom_shapes):
        pair["size"] = prod(shape)
    return {"pairs": pairs}


def lower_split(info, ir, slots):
    layer = info.layer
    x, dx = blob_slots(slots, layer.bottoms[0])
    tops = [dict(zip(("y", "dy"), blob_slots(slots, top))) for top in layer.tops]
    return {
        "x": x,
        "dx": dx if info.propagate_down[0] else None,
        "acc": accumulates(info, 0),
        "tops": tops,
        "size": prod(info.bottom_shapes[0]),
    }


LOWERINGS = {
    ConvolutionLayer: ("convolution", lower_convolution),
    InnerProductLayer: ("inner_product", lower_inner_product),
    PoolingLayer: ("pooling", lower_pooling),
    SoftmaxLayer: ("softmax", lower_softmax),
    IdentityLayer: ("copy", lower_copy),
    ReshapeLayer: ("copy", lower_copy),
    SplitLayer: ("split", lower_split),
}


def register_lowering(layer_class, template):
    """Register a lowering function for ``layer_class``, rendered with
    ``templates/c/<template>.c.j2``. Use as a decorator in a module of
    mochac/codegen/kernels/, which find_lowering imports on first use.
    """

    def decorate(function):
        LOWERINGS[layer_class] = (template, function)
        return function

    return decorate


@functools.cache
def _import_kernel_modules() -> None:
    from mochac.codegen import kernels

    for module in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"{kernels.__name__}.{module.name}")


def find_lowering(layer_class):
    """Return (template, lowering function) of a layer class; raise KeyError."""
    _import_kernel_modules()
    return LOWERINGS[layer_class]


def allocate_slots(ir) -> SlotTable:
    """Create the data, diff, param and grad slots of every blob and layer.

    A blob that a pass aliased to another one gets no slot of its own: its
    lookup resolves to the slot of the blob whose storage it uses.
    """
    slots = SlotTable()
    for index in ir.forward_order:
        info = ir.layers[index]
        for top in info.layer.tops:
            blob = ir.blobs[top]
            root = ir.data_root(top)
            if root == top:
                slots.add("data", top, "", ir.dtype, blob.shape)
            else:
                slots.alias("data", top, root)
            if blob.needs_diff:
                root = ir.diff_root(top)
                if root == top:
                    slots.add("diff", top, "", ir.dtype, blob.shape)
                else:
                    slots.alias("diff", top, root)
    for index in ir.forward_order:
        info = ir.layers[index]
        for spec in info.params:
            # A parameter another layer owns (spec.key) resolves to its slot.
            key = spec.key or info.param_key
            slots.add("param", key, spec.name, ir.dtype, spec.shape)
            if info.in_backward and spec.learned:
                slots.add("grad", info.name, spec.name, ir.dtype, spec.shape)
    return slots


def touched_slots(info, slots, phase) -> set[int]:
    """Return the data, diff and work slots a layer's kernels use in a phase.

    Memory planning takes a slot as live at every step that touches it.
    """
    layer = info.layer
    touched = set()
    if phase == "forward":
        for blob in (*layer.bottoms, *layer.tops):
            touched.add(slots.get("data", blob).index)
    else:
        for blob in layer.tops:
            diff = slots.find("diff", blob)
            if diff is not None:
                touched.add(diff.index)
        if layer.backward_reads_top_data():
            touched.update(slots.get("data", blob).index for blob in layer.tops)
        if layer.backward_reads_bottom_data():
            touched.update(slots.get("data", blob).index for blob in layer.bottoms)
        for position, blob in enumerate(layer.bottoms):
            if info.propagate_down[position]:
                touched.add(slots.get("diff", blob).index)
    for slot in slots.slots:
        if slot.kind == "work" and slot.owner == info.name and phase in slot.phases:
            touched.add(slot.index)
    return touched


def lower_net(ir, direct_convolutions=True) -> tuple[SlotTable, list[Kernel]]:
    """Return the slot table and one Kernel per layer that runs, in forward order.

    Data layers run in Python, and layers eliminated by a pass run nowhere.
    With ``direct_convolutions`` False every convolution lowers to im2col,
    as the CUDA backend needs.
    """
    slots = allocate_slots(ir)
    kernels = []
    used: set[str] = {"mochac"}
    for index in ir.forward_order:
        info = ir.layers[index]
        if info.layer.is_source or info.eliminated:
            continue
        try:
            family, lower = find_lowering(type(info.layer))
        except KeyError:
            raise NotImplementedError(
                f"layer '{info.name}': the CPU backend has no kernel for "
                f"{type(info.layer).__name__}"
            ) from None
        if lower is lower_convolution and not direct_convolutions:
            lower = lower_im2col_convolution
        context = lower(info, ir, slots)
        template = context.pop("template", f"c/{family}.c.j2")
        context.update(
            fn=c_identifier(info.name, used),
            comment=describe(info, ir),
            in_backward=info.in_backward,
            index=index,
        )
        context.setdefault("neuron_kernel", False)
        kernels.append(Kernel(index, context["fn"], template, context, family))
    for kernel in kernels:
        info = ir.layers[kernel.layer_index]
        kernel.context["forward_touch"] = sorted(touched_slots(info, slots, "forward"))
        kernel.context["backward_touch"] = (
            sorted(touched_slots(info, slots, "backward")) if info.in_backward else []
        )
    return slots, kernels
