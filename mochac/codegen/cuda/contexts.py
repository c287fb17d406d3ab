"""Additions to the C lowering contexts that the CUDA templates need.

Each function here adjusts one lowered layer's context in place before its
CUDA template renders; render_cuda looks them up by family.

Convolution: the C backend's convolution works through the batch in cache-sized chunks,
and its lowering sizes the scratch slots for that. The CUDA backend runs one
im2col over the whole batch and one GEMM per group instead, which makes a
few large launches, so it adds scratch slots of its own and points the
layer's context at them. The C backend's chunk slots stay in the table,
unused here.
"""

from __future__ import annotations

from mochac.codegen.lowering import touched_slots


def use_whole_batch_scratch(kernel, info, ir, slots) -> None:
    """Add the whole-batch column and GEMM slots of a convolution and set
    ``col``, ``tmp`` and ``tmp_back`` in its context to them.

    The columns of the last bottom stay from forward to backward, which
    reuses them for the filter gradient when the layer has one bottom.
    """
    k = kernel.context
    rows = k["C"] * k["KH"] * k["KW"]
    columns = k["N"] * k["P"]
    col = slots.add("work", info.name, "batch_col", ir.dtype, (rows, columns))
    tmp = slots.add(
        "work", info.name, "batch_gemm_out", ir.dtype, (k["F"], columns), ("forward",)
    )
    k.update(col=col.index, tmp=tmp.index, NP=columns, tmp_back=None)
    if info.in_backward:
        back = slots.add(
            "work",
            info.name,
            "batch_gemm_diff",
            ir.dtype,
            (k["F"], columns),
            ("backward",),
        )
        k["tmp_back"] = back.index
    k["forward_touch"] = sorted(touched_slots(info, slots, "forward"))
    k["backward_touch"] = (
        sorted(touched_slots(info, slots, "backward")) if info.in_backward else []
    )


def add_lrn_powers(kernel, info, ir, slots) -> None:
    """Set the exponents the CUDA LRN kernels pass to pow().

    The C lowering may print its powers in other forms, so the CUDA side
    derives them from the layer itself.
    """
    power = float(info.layer.power)
    kernel.context["cuda_neg_power"] = f"({-power!r})"
    kernel.context["cuda_neg_power_minus_one"] = f"({-power - 1.0!r})"


ADJUSTMENTS = {"convolution": use_whole_batch_scratch, "lrn": add_lrn_powers}
