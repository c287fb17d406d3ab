"""Render the C source of a net from its IR with the Jinja2 templates."""

from __future__ import annotations

import functools

import jinja2
import numpy as np

from mochac.codegen.comments import comment_text
from mochac.codegen.lowering import lower_net
from mochac.version import __version__

CDEF = """
struct mochac_status {
    int code;
    int layer;
    long long index;
    double value;
};
int mochac_forward(void **p, struct mochac_status *st, int n_valid);
int mochac_backward(void **p, struct mochac_status *st);
int mochac_layer_forward(int layer, void **p, struct mochac_status *st, int n_valid);
int mochac_layer_backward(int layer, void **p, struct mochac_status *st);
void mochac_set_num_threads(int n);
void mochac_use_threads(int n);
struct mochac_param_update {
    void *param;
    void *grad;
    void *state0;
    void *state1;
    long long size;
    double lr_factor;
    double l2;
    double l1;
};
struct mochac_grad_sum {
    void *into;
    void *from;
    long long size;
};
struct mochac_step {
    int method;
    double learning_rate;
    double momentum;
    double beta1, beta2, epsilon;
    long long iteration;
};
int mochac_update(const struct mochac_param_update *updates, int n_updates,
                  const struct mochac_grad_sum *sums, int n_sums,
                  const struct mochac_step *step);
int mochac_forward_backward(void **p, struct mochac_status *st, int n_valid,
                            const unsigned char *skip);
int mochac_train_step(void **p, struct mochac_status *st, int n_valid,
                      const struct mochac_param_update *updates, int n_updates,
                      const struct mochac_grad_sum *sums, int n_sums,
                      const struct mochac_step *step, const unsigned char *skip);
int mochac_solver_step(void **p, struct mochac_status *st, int n_valid,
                       const struct mochac_param_update *updates, int n_updates,
                       const struct mochac_grad_sum *sums, int n_sums,
                       const struct mochac_step *step, const unsigned char *skip);
"""


# A net whose forward pass takes at most this many floating-point operations
# in work that threads can share runs single-threaded (net.c.j2's
# mochac_parallel).
PARALLEL_MIN_FLOPS = 16e6


def forward_gemm_flops(kernels) -> float:
    """Return the floating-point operations of the forward pass's GEMMs and
    convolutions that more than one thread can share.

    A direct convolution shares its work between threads by images, or with
    a single lane (a batch of one) by its image's row blocks.
    """
    flops = 0.0
    for kernel in kernels:
        k = kernel.context
        if kernel.family == "convolution":
            flops += 2.0 * k["F"] * k["K"] * k["NP"] * len(k["pairs"])
        elif kernel.family == "inner_product":
            flops += sum(2.0 * pair["N"] * k["D"] * k["O"] for pair in k["pairs"])
        elif kernel.family == "tied_inner_product":
            flops += sum(2.0 * pair["N"] * k["IN"] * k["OUT"] for pair in k["pairs"])
    return flops


def loss_checks(ir, slots) -> list[dict]:
    """Return the state slot and layer index of every loss, for the check
    that stops a training step on a NaN or infinite loss."""
    return [
        {"state": slot.index, "layer": info.index}
        for info in ir.layers
        if info.layer.has_loss
        and (slot := slots.find("state", info.name, "loss")) is not None
    ]


def slot_line(slot) -> str:
    """Return the line that lists a slot in the generated source's header."""
    name = f".{slot.name}" if slot.name else ""
    shape = list(slot.shape)
    return f"p[{slot.index}] {slot.kind} {slot.owner}{name} {slot.dtype.name}{shape}"


@functools.cache
def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mochac", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_c(ir):
    """Return (source, slots, kernels) for a net's IR."""
    slots, kernels = lower_net(ir)
    env = template_environment()
    for kernel in kernels:
        kernel.context["comment"] = comment_text(kernel.context["comment"])
    kernel_texts = [
        env.get_template(kernel.template).render(k=kernel.context).strip("\n")
        for kernel in kernels
    ]
    is_double = ir.dtype == np.float64
    by_layer = {kernel.layer_index: kernel for kernel in kernels}
    source = env.get_template("c/net.c.j2").render(
        version=__version__,
        net_name=comment_text(ir.name),
        dtype=ir.dtype.name,
        ctype="double" if is_double else "float",
        blas_prefix="d" if is_double else "s",
        n_layers=len(ir.layers),
        slot_lines=[comment_text(slot_line(slot)) for slot in slots.slots],
        kernel_texts=kernel_texts,
        forward_flops=forward_gemm_flops(kernels),
        parallel_min_flops=PARALLEL_MIN_FLOPS,
        loss_checks=loss_checks(ir, slots),
        kernels=[kernel.context for kernel in kernels],
        backward_kernels=[
            by_layer[index].context for index in ir.backward_order if index in by_layer
        ],
    )
    return source, slots, kernels
