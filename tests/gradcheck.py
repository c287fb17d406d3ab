"""Helpers for layer tests: small nets fed from memory and a gradient check.

``check_gradients`` compares what a layer's compiled backward pass writes
with float64 central differences of an objective ``f`` that its compiled
forward pass computes:

- for a loss layer, ``f`` is its loss value, ``net.states[name][0]``;
- for any other layer, ``f = sum over tops of sum(top * R_top)`` with a fixed
  random ``R_top`` per top, so the top diffs are seeded with ``R_top``.

Every bottom the layer back-propagates into and every parameter it learns
is checked.
"""

from __future__ import annotations

import contextlib

import numpy as np

from mochac import CPUBackend, MemoryDataLayer, Net

EPS = 1e-6
RTOL = 1e-6


def build_net(name, layers, inputs, *, dtype=np.float64, seed=0, threads=2):
    """Compile ``layers`` behind one MemoryDataLayer per input blob.

    ``inputs`` maps a blob name to an array whose first axis is the batch; the
    whole array is one batch. The net is built with force_backward, so the
    bottoms and tops of every back-propagating layer get diffs. The inputs are
    loaded into ``net.blobs`` before the net is returned.
    """
    feeds = [
        MemoryDataLayer(
            name=f"data-{blob}", batch_size=len(array), data=[array], tops=[blob]
        )
        for blob, array in inputs.items()
    ]
    backend = CPUBackend(dtype=dtype, seed=seed, threads=threads)
    # Layer tests check kernels one by one, so no pass rewrites the net;
    # the pass tests compare optimized nets with these.
    net = Net(name, backend, feeds + list(layers), force_backward=True, opt_level=0)
    net.load_batch()
    return net


@contextlib.contextmanager
def preserved(net):
    """Restore every blob, diff, state, parameter and gradient of ``net`` on exit."""
    arrays = [
        *net.blobs.values(),
        *net.diffs.values(),
        *net.states.values(),
        *(array for layer in net.params.values() for array in layer.values()),
        *(array for layer in net.grads.values() for array in layer.values()),
    ]
    saved = [array.copy() for array in arrays]
    try:
        yield net
    finally:
        for array, copy in zip(arrays, saved):
            array[...] = copy


def numeric_gradient(objective, values, eps=EPS):
    """Return d objective / d values by central differences.

    ``values`` is perturbed in place one element at a time and restored.
    """
    flat = values.reshape(-1)
    assert np.shares_memory(flat, values), "values must be a contiguous array"
    gradient = np.zeros(values.size)
    for i in range(values.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = objective()
        flat[i] = saved - eps
        down = objective()
        flat[i] = saved
        gradient[i] = (up - down) / (2 * eps)
    return gradient.reshape(values.shape)


def check_gradients(net, name, *, seed=0, eps=EPS, rtol=RTOL):
    """Check layer ``name``'s bottom diffs and parameter gradients numerically.

    The analytic values come from one ``backward_layer`` call after the
    diffs and gradients it should write were filled with NaN, so a value it
    leaves unwritten fails the check. Differences may reach ``rtol`` times the
    largest gradient magnitude. Returns the names of the checked bottoms and
    parameters, so a caller can assert that none was skipped.
    """
    assert net.backend.dtype == np.float64, "gradient checks need a float64 net"
    info = net.ir.layer(name)
    layer = info.layer
    rng = np.random.default_rng(seed)
    top_weights = {top: rng.normal(size=net.blobs[top].shape) for top in layer.tops}

    def objective():
        net.forward_layer(name)
        if layer.has_loss:
            return float(net.states[name][0])
        return sum(
            float(np.sum(net.blobs[top] * top_weights[top])) for top in layer.tops
        )

    # Collect what backward must write: (name, values, where its gradient lands).
    targets = []
    for position, bottom in enumerate(layer.bottoms):
        if layer.bottom_takes_grad(position):
            assert bottom in net.diffs, f"bottom '{bottom}' of '{name}' has no diff"
            targets.append((bottom, net.blobs[bottom], net.diffs[bottom]))
    for spec in info.params:
        if not spec.learned:
            # The layer only reads this parameter (a tied decoder's weight).
            continue
        assert name in net.grads, f"layer '{name}' has no parameter gradients"
        targets.append(
            (spec.name, net.params[name][spec.name], net.grads[name][spec.name])
        )

    with preserved(net):
        objective()
        for top in layer.tops:
            net.diffs[top][...] = top_weights[top]
        for _, _, written in targets:
            written[...] = np.nan
        net.backward_layer(name)
        analytic = [written.copy() for _, _, written in targets]

        for (target, values, _), computed in zip(targets, analytic):
            assert not np.isnan(computed).any(), f"'{name}' left {target} unwritten"
            numeric = numeric_gradient(objective, values, eps)
            assert np.any(numeric != 0), f"'{name}': f does not depend on {target}"
            scale = max(np.abs(numeric).max(), np.abs(computed).max())
            np.testing.assert_allclose(
                computed,
                numeric,
                rtol=0,
                atol=rtol * scale,
                err_msg=f"layer '{name}': gradient with respect to '{target}'",
            )
    return [target for target, _, _ in targets]


def check_net_gradients(net, *, eps=EPS, rtol=RTOL):
    """Check every parameter gradient of ``net`` against its objective.

    Unlike ``check_gradients`` this runs the whole compiled forward and
    backward passes, so it also checks the backward schedule. The data
    already in ``net.blobs`` stays fixed. Returns "layer.param" names.
    """
    assert net.backend.dtype == np.float64, "gradient checks need a float64 net"

    def objective():
        return net.forward(load_data=False)

    checked = []
    with preserved(net):
        objective()
        for layer in net.grads.values():
            for array in layer.values():
                array[...] = np.nan
        net.backward()
        for layer_name, params in net.params.items():
            for param_name, values in params.items():
                computed = net.grads[layer_name][param_name].copy()
                assert not np.isnan(computed).any(), f"{param_name} left unwritten"
                numeric = numeric_gradient(objective, values, eps)
                assert np.any(numeric != 0), f"f does not depend on {param_name}"
                scale = max(np.abs(numeric).max(), np.abs(computed).max())
                np.testing.assert_allclose(
                    computed,
                    numeric,
                    rtol=0,
                    atol=rtol * scale,
                    err_msg=f"gradient of '{layer_name}' parameter '{param_name}'",
                )
                checked.append(f"{layer_name}.{param_name}")
    return checked
