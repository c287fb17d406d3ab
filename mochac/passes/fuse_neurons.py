"""fuse_neurons: a layer's neuron runs inside the layer's own kernel.

Before: the convolution, inner product or pooling writes its output, then a
neuron kernel passes over it again (y = f(y)); in backward a neuron kernel
first scales the top diff by f'(y), then the layer's backward reads it.
After: the neuron is applied where the output is written (the bias loop, or
pooling's window result), and its derivative where the top diff is first
read, saving one pass over the top in each direction. Every layer with a
``neuron`` field has templates that take both forms.

The separate neuron kernel leaves the scaled diff in the top diff storage,
but fused convolution and pooling kernels only read the top diff. So a
convolution or pooling whose kept top has a diff keeps its neuron apart,
and the kept diff matches the one at -O0.
"""

from __future__ import annotations

import logging

from mochac.layers import InnerProductLayer, TiedInnerProductLayer
from mochac.passes.report import PassReport

logger = logging.getLogger(__name__)

# Layers whose kernels with the neuron fused scale the top diff by f'(y) in
# place, as the separate neuron kernel does (the inner_product and
# tied_inner_product templates of the C and CUDA backends).
SCALES_TOP_DIFF = (InnerProductLayer, TiedInnerProductLayer)


def _kept_diff_top(ir, info, keep) -> str | None:
    """Return a kept top with a diff that fusing would leave unscaled, or None."""
    if isinstance(info.layer, SCALES_TOP_DIFF):
        return None
    for top in info.layer.tops:
        if top in keep and ir.blobs[top].needs_diff:
            return top
    return None


def fuse_neurons(ir, keep=frozenset()) -> PassReport:
    report = PassReport("fuse_neurons")
    for info in ir.layers:
        neuron = getattr(info.layer, "neuron", None)
        if info.eliminated or neuron is None or neuron.is_identity:
            continue
        kept_top = _kept_diff_top(ir, info, keep)
        if kept_top is not None:
            logger.debug(
                "'%s' keeps its neuron apart: the user keeps the diff of '%s'",
                info.name,
                kept_top,
            )
            continue
        info.fuse_neuron = True
        report.changes.append(
            f"'{info.name}': {type(neuron).__name__} fused into the layer's kernel"
        )
    return report
