"""fuse_neurons: a layer's neuron runs inside the layer's own kernel.

Before: the convolution, inner product or pooling writes its output, then a
neuron kernel passes over it again (y = f(y)); in backward a neuron kernel
first scales the top diff by f'(y), then the layer's backward reads it.
After: the neuron is applied where the output is written (the bias loop, or
pooling's window result), and its derivative where the top diff is first
read, saving one pass over the top in each direction. Every layer with a
``neuron`` field has templates that take both forms.
"""

from __future__ import annotations

from mochac.passes.report import PassReport


def fuse_neurons(ir) -> PassReport:
    report = PassReport("fuse_neurons")
    for info in ir.layers:
        neuron = getattr(info.layer, "neuron", None)
        if info.eliminated or neuron is None or neuron.is_identity:
            continue
        info.fuse_neuron = True
        report.changes.append(
            f"'{info.name}': {type(neuron).__name__} fused into the layer's kernel"
        )
    return report
