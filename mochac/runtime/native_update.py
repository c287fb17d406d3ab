"""The solver update in the compiled code: tables that describe it to C.

The compiled module of every net contains ``mochac_update`` and
``mochac_train_step`` (templates/c/update.c.j2). They read one table entry
per trainable parameter array (its value, gradient, solver buffers, local
learning-rate factor and regularization terms) and one entry per extra
gradient of a shared array. This module builds those tables from the net
and the solver method, the same way ``summed_gradients`` walks them, and
keeps them until the frozen layers, the method's buffers or the
regularization coefficient change.

A method uses this path when its class declares ``native_code`` itself and
every regularizer has a native form. Otherwise the solver runs the method's
NumPy update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mochac.errors import ConfigError
from mochac.runtime.freeze import frozen_layers, skipped_backward, trainable_groups


@dataclass
class UpdateTables:
    """The cffi arrays for one net and method."""

    updates: object
    n_updates: int
    sums: object
    n_sums: int
    # The arrays the tables point into, kept alive with the tables.
    arrays: list
    # One byte per layer, set where a training step skips the layer's
    # backward pass (mochac.runtime.freeze.skipped_backward), or NULL.
    skip: object = None


def native_code(method):
    """Return the method's code for the compiled update, or None."""
    return type(method).__dict__.get("native_code")


def cache_key(net, method, regu_coef) -> tuple:
    return (
        frozen_layers(net),
        float(regu_coef),
        tuple(id(method.buffers[name]) for name in method.buffer_names),
    )


def update_entries(net, method, regu_coef):
    """Return (entries, sums, arrays) of the update, or None when some
    regularizer has no native form.

    An entry is (parameter, gradient, solver buffers, local learning-rate
    factor, (l2, l1)); a sum is (gradient, extra gradient of a shared
    array). ``arrays`` lists every array the two point into. Both backends
    build their tables from these.
    """
    entries, sums, arrays = [], [], []
    for members in trainable_groups(net):
        info, spec, param, grad = members[0]
        terms = spec.regularizer.native_terms(regu_coef)
        if terms is None:
            return None
        states = [
            method.buffer(name, (info.name, spec.name), param)
            for name in method.buffer_names
        ]
        entries.append((param, grad, states, spec.lr, terms))
        arrays += [param, grad, *states]
        for *_, other in members[1:]:
            sums.append((grad, other))
            arrays.append(other)
    return entries, sums, arrays


def build_tables(net, method, regu_coef) -> UpdateTables | None:
    """Return the update tables of ``net`` for ``method``, or None when some
    regularizer has no native form."""
    ffi = net.ffi
    walked = update_entries(net, method, regu_coef)
    if walked is None:
        return None
    entries, sums, arrays = walked
    updates = ffi.new("struct mochac_param_update[]", max(len(entries), 1))
    for entry, (param, grad, states, lr_factor, (l2, l1)) in zip(updates, entries):
        entry.param = ffi.cast("void *", param.ctypes.data)
        entry.grad = ffi.cast("void *", grad.ctypes.data)
        for field, state in zip(("state0", "state1"), states):
            setattr(entry, field, ffi.cast("void *", state.ctypes.data))
        entry.size = param.size
        entry.lr_factor = lr_factor
        entry.l2 = l2
        entry.l1 = l1
    sum_table = ffi.new("struct mochac_grad_sum[]", max(len(sums), 1))
    for entry, (into, source) in zip(sum_table, sums):
        entry.into = ffi.cast("void *", into.ctypes.data)
        setattr(entry, "from", ffi.cast("void *", source.ctypes.data))
        entry.size = into.size
    skipped = skipped_backward(net)
    if skipped:
        mask = np.zeros(len(net.ir.layers), np.uint8)
        mask[sorted(skipped)] = 1
        arrays.append(mask)
        skip = ffi.cast("const unsigned char *", mask.ctypes.data)
    else:
        skip = ffi.NULL
    return UpdateTables(updates, len(entries), sum_table, len(sums), arrays, skip)


def cached_tables(net, cache_name, build, method, regu_coef):
    """Return ``build(net, method, regu_coef)``, cached in ``net`` under
    ``cache_name`` per method and rebuilt when the frozen layers, the
    method's buffers or the regularization coefficient change."""
    cache = net.__dict__.setdefault(cache_name, {})
    key = cache_key(net, method, regu_coef)
    cached = cache.get(id(method))
    if cached is None or cached[1] != key:
        # The entry keeps the method and its buffer dicts alive, so the ids
        # in the cache and in the key cannot be reused by other objects.
        buffers = [method.buffers[name] for name in method.buffer_names]
        cached = (method, key, build(net, method, regu_coef), buffers)
        cache[id(method)] = cached
    return cached[2]


def tables_for(net, method, regu_coef) -> UpdateTables | None:
    """Return the cached tables of ``net`` for ``method``, rebuilt when stale;
    None when the method must update in NumPy."""
    if native_code(method) is None or getattr(net, "ffi", None) is None:
        # No native form, or a net without a compiled CPU module (GPUNet).
        return None
    return cached_tables(net, "_update_tables", build_tables, method, regu_coef)


def update_iteration(method, iteration) -> int:
    """Return the number of updates done so far; raise ConfigError when the
    method needs it and ``iteration`` is None."""
    if iteration is not None:
        return iteration
    if method.requires_iteration:
        raise ConfigError(
            f"{method.name}.update: missing iteration; pass the number of "
            "updates done so far"
        )
    return 0


def step_values(net, method, learning_rate, momentum, iteration):
    """Return the ``struct mochac_step`` of one update."""
    step = net.ffi.new("struct mochac_step *")
    step.method = native_code(method)
    step.learning_rate = learning_rate
    step.momentum = momentum
    step.beta1 = getattr(method, "beta1", 0.0)
    step.beta2 = getattr(method, "beta2", 0.0)
    step.epsilon = getattr(method, "epsilon", 0.0)
    step.iteration = update_iteration(method, iteration)
    return step


def update(net, method, learning_rate, momentum, regu_coef, iteration) -> bool:
    """Run the method's update in the compiled code; False when it has no
    native form (the caller then runs its NumPy update)."""
    tables = tables_for(net, method, regu_coef)
    if tables is None:
        return False
    step = step_values(net, method, learning_rate, momentum, iteration)
    net._use_threads()
    net._check(
        net.lib.mochac_update(
            tables.updates, tables.n_updates, tables.sums, tables.n_sums, step
        )
    )
    return True
