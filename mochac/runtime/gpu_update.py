"""The solver update on the device: tables for templates/cuda/update.cu.j2.

Every CUDA module contains ``mochac_check_losses``, ``mochac_grad_sums``
and ``mochac_update``. This module builds their tables in device memory,
one entry per trainable array and one per extra gradient of a shared
array, in the same walk as mochac.runtime.native_update, and caches them
under the same key. It also writes the step block, the few doubles that
change every iteration (learning rate, momentum, Adam's bias corrections),
so the launches take the same arguments every iteration.

NOTE: unverified on a GPU, like GPUNet: the kernels have run only as host
code (tests/cuda_emulator.py) and compiled with nvcc to PTX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mochac.runtime.freeze import skipped_backward
from mochac.runtime.native_update import (
    cached_tables,
    native_code,
    update_entries,
    update_iteration,
)

# The layouts of struct mochac_param_update and struct mochac_grad_sum.
UPDATE_DTYPE = np.dtype(
    [
        ("param", np.uint64),
        ("grad", np.uint64),
        ("state0", np.uint64),
        ("state1", np.uint64),
        ("size", np.int64),
        ("lr_factor", np.float64),
        ("l2", np.float64),
        ("l1", np.float64),
    ]
)
SUM_DTYPE = np.dtype([("into", np.uint64), ("from", np.uint64), ("size", np.int64)])
# The step block's doubles, in the order of the MOCHAC_STEP_* indices.
STEP_FIELDS = (
    "method",
    "learning_rate",
    "momentum",
    "beta1",
    "beta2",
    "epsilon",
    "adam_rate",
    "adam_root",
)
THREADS = 256
# Enough blocks to fill a large GPU; the kernels loop over any size.
MAX_BLOCKS = 4096


@dataclass
class DeviceTables:
    """The device copies of the update tables of one net and method."""

    updates: object
    n_updates: int
    sums: object
    n_sums: int
    # Elements of the largest array, which sets the grid size.
    largest: int
    # The arrays the tables point into, kept alive with the tables.
    arrays: list
    # The layers whose backward pass a training step skips
    # (mochac.runtime.freeze.skipped_backward).
    skipped: frozenset = frozenset()


def build_tables(net, method, regu_coef) -> DeviceTables | None:
    """Return the device update tables of ``net`` for ``method``, or None when
    some regularizer has no native form."""
    walked = update_entries(net, method, regu_coef)
    if walked is None:
        return None
    entries, sums, arrays = walked
    rows = []
    for param, grad, states, lr_factor, terms in entries:
        pointers = [array.data.ptr for array in (param, grad, *states)]
        pointers += [0] * (4 - len(pointers))
        rows.append((*pointers, param.size, lr_factor, *terms))
    updates = np.array(rows, UPDATE_DTYPE) if rows else np.zeros(1, UPDATE_DTYPE)
    sum_rows = [(into.data.ptr, other.data.ptr, into.size) for into, other in sums]
    sum_table = np.array(sum_rows, SUM_DTYPE) if sums else np.zeros(1, SUM_DTYPE)
    return DeviceTables(
        net.cupy.asarray(updates.view(np.uint8)),
        len(entries),
        net.cupy.asarray(sum_table.view(np.uint8)),
        len(sums),
        max((param.size for param, *_ in entries), default=0),
        arrays,
        skipped_backward(net),
    )


def tables_for(net, method, regu_coef) -> DeviceTables | None:
    """Return the cached device tables of ``net`` for ``method``, rebuilt when
    stale; None when the method must update with its NumPy code."""
    if native_code(method) is None:
        return None
    # CuPy allocates the tables and any new solver buffer on the current
    # device, which need not be the net's.
    with net.cupy.cuda.Device(net.backend.device):
        return cached_tables(
            net, "_device_update_tables", build_tables, method, regu_coef
        )


def step_block(method, learning_rate, momentum, iteration) -> np.ndarray:
    """Return the step block of one update as float64 values.

    Adam's corrections are computed here with the C library's pow and sqrt,
    as the CPU backend's update computes them, so both use the same values.
    """
    iteration = update_iteration(method, iteration)
    values = dict.fromkeys(STEP_FIELDS, 0.0)
    values.update(
        method=float(native_code(method)),
        learning_rate=float(learning_rate),
        momentum=float(momentum),
        beta1=float(getattr(method, "beta1", 0.0)),
        beta2=float(getattr(method, "beta2", 0.0)),
        epsilon=float(getattr(method, "epsilon", 0.0)),
    )
    if values["beta1"]:
        t = float(iteration + 1)
        values["adam_rate"] = values["learning_rate"] / (1.0 - values["beta1"] ** t)
        values["adam_root"] = math.sqrt(1.0 - values["beta2"] ** t)
    return np.array([values[field] for field in STEP_FIELDS], np.float64)


def update_calls(net, tables: DeviceTables) -> list:
    """Return the two launches that sum the shared gradients and update the
    parameters, as functions of n_valid like GPUNet's bound steps."""
    # The lookup compiles and loads the module on the current device.
    with net.cupy.cuda.Device(net.backend.device):
        sums_kernel = net.module.get_function("mochac_grad_sums")
        update_kernel = net.module.get_function("mochac_update")
    blocks = (max(1, min(MAX_BLOCKS, -(-tables.largest // THREADS))),)
    threads = (THREADS,)
    status, step = net.status_block, net.step_block

    def run_sums(n_valid):
        if tables.n_sums:
            sums_kernel(blocks, threads, (tables.sums, np.int32(tables.n_sums), status))

    def run_update(n_valid):
        update_kernel(
            blocks, threads, (tables.updates, np.int32(tables.n_updates), step, status)
        )

    return [run_sums, run_update]
