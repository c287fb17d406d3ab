"""Net: a compiled net with its buffers, data sources and parameters.

Construction builds the IR, renders C, compiles it (or loads it from the
cache) and allocates one NumPy array per slot. Parameters come from the
backend's registry when a layer with the same key was seen before, which is
how a test net shares the train net's parameters.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from pathlib import Path

import numpy as np

from mochac.codegen.build import build_extension, load_extension, source_digest
from mochac.codegen.c_source import render_c
from mochac.codegen.lowering import counts_whole, lower_net
from mochac.errors import (
    AllocationError,
    CompileError,
    ConfigError,
    DataError,
    MochacError,
    NumericalError,
    ShapeError,
    name_not_found,
)
from mochac.ir import build_ir
from mochac.ir.graph import LAYER_NAME_FIX, check_layer_list, layer_display_name
from mochac.ir.overwrites import overwritten_data
from mochac.ir.schedule import layers_without_gradient
from mochac.layers.output import OutputLayer
from mochac.passes.pipeline import (
    enabled_passes,
    ir_counts,
    kept_blob_names,
    pass_names,
    run_ir_passes,
)
from mochac.passes.plan_memory import plan_memory
from mochac.report import ir_to_dot
from mochac.runtime import native_update
from mochac.runtime.array_views import (
    blob_views,
    destroyed_views,
    locked_views,
    no_backward_reason,
)
from mochac.runtime.backend import check_backend
from mochac.runtime.data_sources import (
    make_source,
    open_after_build,
    shapes_before_reading,
)
from mochac.runtime.net_checks import check_kept_blobs, check_step_method
from mochac.runtime.outputs import OutputStates, make_output_state
from mochac.runtime.step_settings import check_regu_coef, check_step_values

logger = logging.getLogger(__name__)

# Error codes of the generated code (templates/c/net.c.j2).
BAD_LABEL = 1
BAD_LOSS = 2


def statistic_key(info) -> str:
    """Return the name of a statistics or loss layer's statistic, "<name>-<kind>"."""
    return f"{info.name}-{info.layer.statistic_name or 'loss'}"


# Endings of the NaN-loss message of a training step: train_step checks the
# loss before its update, solver_step after.
NO_UPDATE_NOTE = (
    " (this step did not update the parameters; earlier steps may already have "
    "made them huge)"
)
AFTER_UPDATE_NOTE = " (the forward pass after this step's update)"


def holds_run_lock(method):
    """Wrap a Net method so it runs under the net's run lock.

    The compiled code releases the GIL, so without the lock a destroy() in
    one thread frees the arrays that a forward pass in another thread is
    still writing, and the process dies with SIGSEGV.
    """

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._run_lock:
            return method(self, *args, **kwargs)

    return locked


def pinned_slots(ir, slots, keep) -> set[int]:
    """Return the slots memory planning must keep live: inputs, outputs, keep,
    and the diffs that no backward pass writes."""
    pinned = set()
    for name, blob in ir.blobs.items():
        producer = ir.layers[blob.producer]
        # A blob that no layer reads stays readable after forward. An
        # eliminated split or identity still counts as a reader, because
        # its tops share this storage and are pinned on their own when no
        # layer reads them. Pinning the bottom too would keep its data
        # and diff live through every step.
        if producer.layer.is_source or not blob.consumers or name in keep:
            for kind in ("data", "diff"):
                slot = slots.find(kind, name)
                if slot is not None:
                    pinned.add(slot.index)
    for name in unwritten_diffs(ir):
        slot = slots.find("diff", name)
        if slot is not None:
            pinned.add(slot.index)
    return pinned


def unwritten_diffs(ir) -> set[str]:
    """Return the diff storages (by root blob) that no layer's backward writes.

    Under force_backward a top that no loss reaches still gets a diff, which
    its producer's backward reads. It must contain zeros, or what the caller
    wrote into it, as at -O0. Planned from its first read on, it would share
    the arena with blobs that died earlier and read their values.
    """
    written = set()
    for name, blob in ir.blobs.items():
        for index in blob.consumers:
            info = ir.layers[index]
            if info.eliminated:
                continue
            for position, bottom in enumerate(info.layer.bottoms):
                if bottom == name and info.propagate_down[position]:
                    written.add(ir.diff_root(name))
    needed = {ir.diff_root(name) for name, blob in ir.blobs.items() if blob.needs_diff}
    return needed - written


def c_memory_plan(ir, keep):
    """Return the MemoryPlan of the C lowering of ``ir`` as its passes left it."""
    slots, kernels = lower_net(ir)
    return plan_memory(slots, kernels, pinned_slots(ir, slots, keep))


class Net:
    """A compiled net. ``Net(name, GPUBackend(), layers)`` returns a GPUNet
    (mochac.runtime.gpu_net), which runs the same IR as CUDA kernels.

    Args:
        name: the net's name, used in logs and generated code.
        backend: a CPUBackend or a GPUBackend.
        layers: the layer configs; order does not matter beyond breaking ties.
        force_backward: run backward for every layer that can back-propagate,
            even without a loss: every top of such a layer and every blob it
            back-propagates into gets a diff (the gradient checks use this).
        phase: "train" or "test"; layers such as dropout act only in training.
            Default: "train" when the net has a loss layer, else "test".
        opt_level: 1 (default) runs every pass of mochac.passes, 0 none.
        disable: names of passes to skip, e.g. ("plan_memory",).
        keep: blob names whose data and diff must stay readable after each
            call, with the values they have at opt_level 0 (identity and
            reshape tops included). Data layer outputs, blobs no layer reads
            and the bottoms of output layers are always kept.

    Views (NumPy arrays that alias the compiled net's memory):
        blobs[name], diffs[name], params[layer][param], grads[layer][param].
    After plan_memory, a blob that is not kept shares memory with others, so
    ``blobs`` and ``diffs`` leave it out.
    ``output_states[layer]`` is the runtime state of each output layer, such
    as a MemoryOutputLayer's ``outputs``.
    """

    # Set by the solver while its coffee breaks run: the data position and
    # random streams from before the batch already loaded, which snapshots
    # record (mochac.runtime.resume_point).
    resume_point = None
    # Whether the last solver_step or apply_update ran its update. A
    # solver_step whose batch fails to load leaves it False.
    step_updated = False
    # False inside uncounted(): forward passes then add nothing to the
    # statistics or the output layers.
    counting = True

    def __new__(cls, name=None, backend=None, *args, **kwargs):
        # Net(name, GPUBackend(), layers) builds the CUDA backend's GPUNet.
        net_class = cls
        if cls is Net and getattr(backend, "is_gpu", False):
            from mochac.runtime.gpu_net import GPUNet

            net_class = GPUNet
        net = super().__new__(net_class)
        # Held by Net's calls into the compiled code and by its destroy()
        # (holds_run_lock), GPUNet's too. Reentrant because train_step
        # calls forward().
        net._run_lock = threading.RLock()
        return net

    def __init__(
        self,
        name,
        backend,
        layers,
        *,
        force_backward=False,
        phase=None,
        opt_level=1,
        disable=(),
        keep=(),
        _prebuilt: tuple[Path, str] | None = None,
        _open_source=None,
        # A compiled package's net passes its outputs.PackageNet, which
        # changes the advice of its output file errors.
        _package=None,
        # The level of the cache hit and summary lines. `mochac bench`
        # lowers it to DEBUG for the builds that time a compile, which
        # repeat the build of the timed net.
        _build_log_level=logging.INFO,
    ):
        self.name = name
        self.backend = backend
        self.layers = check_layer_list(name, layers)
        check_backend(name, backend)
        self.force_backward = force_backward
        self.opt_level = opt_level
        self.disable = pass_names(disable)
        self.keep = kept_blob_names(keep)
        passes = enabled_passes(opt_level, self.disable)
        dtype = backend.dtype

        # Data layers are opened first: only they know their top shapes. A
        # compiled package passes _open_source(index, layer, dtype, rng) to
        # defer reading files, because its net.json records the shapes. An
        # HDF5DataLayer, which reads its files whole, opens after build_ir
        # has checked the shapes of its files' metadata.
        self.sources = {}
        source_shapes = {}
        after_build = {}
        for index, layer in enumerate(self.layers):
            if getattr(layer, "is_source", False):
                rng = np.random.default_rng(backend.rng.integers(2**63))
                if _open_source is not None:
                    source = _open_source(index, layer, dtype, rng)
                else:
                    layer_name = layer_display_name(layer, index)
                    shapes = shapes_before_reading(layer, dtype, layer_name)
                    if shapes is not None:
                        after_build[index] = (layer, rng, layer_name, shapes)
                        source_shapes[index] = shapes
                        continue
                    source = make_source(layer, dtype, rng, layer_name)
                self.sources[index] = source
                source_shapes[index] = source.shapes

        registered = {
            (key, param): array.shape
            for key, params in backend.registry.items()
            for param, array in params.items()
        }
        try:
            self.ir = build_ir(
                name, self.layers, source_shapes, dtype, force_backward, registered
            )
            for index, (layer, rng, layer_name, shapes) in after_build.items():
                self.sources[index] = open_after_build(
                    layer, dtype, rng, layer_name, shapes
                )
        except BaseException:
            for source in self.sources.values():
                source.close()
            raise
        self.sources = dict(sorted(self.sources.items()))
        if phase is None:
            phase = "train" if any(i.layer.has_loss for i in self.ir.layers) else "test"
        if phase not in ("train", "test"):
            raise ConfigError(
                f"net '{name}': invalid phase={phase!r}; expected 'train' or 'test'"
            )
        self.phase = self.ir.phase = phase
        # Layers whose parameters training leaves as they are, and why.
        self.untrained = layers_without_gradient(self.ir)
        if phase == "train":
            for layer_name, reason in self.untrained.items():
                if "back-propagate" in reason:
                    logger.warning(
                        "net '%s': no gradient reaches the parameters of layer "
                        "'%s', so training leaves them as they are: %s; if it "
                        "should train, connect it to a loss through layers that "
                        "back-propagate",
                        name,
                        layer_name,
                        reason,
                    )
        check_kept_blobs(self)
        # Output layers read their bottoms after the whole forward pass.
        sinks = [info for info in self.ir.layers if isinstance(info.layer, OutputLayer)]
        self.keep |= {bottom for info in sinks for bottom in info.layer.bottoms}
        self.counts_before = ir_counts(self.ir)
        self.dot_before = ir_to_dot(self.ir, "before", f"{name}: before passes")
        # With plan_memory on, splits stay where eliminating them would plan
        # more memory.
        measure = None
        if "plan_memory" in passes:
            measure = functools.partial(c_memory_plan, keep=self.keep)
        self.pass_reports = run_ir_passes(
            self.ir, opt_level, self.disable, self.keep, measure
        )
        self.counts_after = ir_counts(self.ir)
        self.source, self.slots, self.kernels = render_c(self.ir)
        # The liveness numbers are reported at every level; only plan_memory
        # uses the offsets.
        self.memory = plan_memory(self.slots, self.kernels, self._pinned_slots())
        self.plan = self.memory if "plan_memory" in passes else None
        if _prebuilt is not None:
            path, digest = _prebuilt
            if source_digest(self.source) != digest:
                raise CompileError(
                    f"{path}: this mochac generates different code for net '{name}' "
                    "than the compiled module contains; run `mochac compile` again",
                    source_path=str(path),
                )
            self.extension_path = Path(path)
            module = load_extension(
                self.extension_path, self.extension_path.name.split(".")[0]
            )
        else:
            module, self.extension_path = build_extension(
                self.source, name, cache_hit_level=_build_log_level
            )
        self.ffi, self.lib = module.ffi, module.lib
        self.lib.mochac_set_num_threads(backend.threads)

        try:
            self._allocate()
        except MemoryError as error:
            raise AllocationError(
                f"net '{name}': cannot allocate {self._needed_bytes() / 2**30:.2f} "
                f"GiB for its blobs, gradients and parameters ({error}); reduce "
                "the batch size or the layers' sizes, or free memory"
            ) from error
        self.status = self.ffi.new("struct mochac_status *")
        # Output layers' states: in-memory lists or open HDF5 files.
        self.output_states = OutputStates(
            name,
            {
                info.name: make_output_state(
                    info.layer, info.bottom_shapes, dtype, _package
                )
                for info in sinks
            },
        )
        self.loss_sums: dict[str, list] = {}
        self.forward_done = False
        # An array that layers share (param_key, a tied decoder's weight)
        # counts once.
        shared_arrays = {
            id(array): array.size
            for layer in self.params.values()
            for array in layer.values()
        }
        param_count = sum(shared_arrays.values())
        unplanned = sum(
            slot.nbytes
            for slot in self.slots.slots
            if slot.kind in ("data", "diff", "work")
        )
        counts = ir_counts(self.ir)
        logger.log(
            _build_log_level,
            "net '%s': %d compiled layers, %d kernels per iteration, %d parameters; "
            "passes: %s; blobs and scratch %.1f MB (%.1f MB unplanned)",
            name,
            counts["layers"],
            counts["kernels"],
            param_count,
            ", ".join(passes) or "none",
            (self.plan.arena_bytes if self.plan else unplanned) / 1e6,
            unplanned / 1e6,
        )

    # --- construction ---------------------------------------------------------

    def _pinned_slots(self) -> set[int]:
        """Return the slots memory planning must keep live: inputs, outputs, keep."""
        return pinned_slots(self.ir, self.slots, self.keep)

    def _needed_bytes(self) -> int:
        """Return the bytes _allocate requests: the arena of the planned
        slots and one array per other slot."""
        planned = self.plan.offsets if self.plan is not None else {}
        arena = self.plan.arena_bytes if self.plan is not None else 0
        return arena + sum(
            slot.nbytes for slot in self.slots.slots if slot.index not in planned
        )

    def _allocate(self):
        self.arrays = []
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self.grads: dict[str, dict[str, np.ndarray]] = {}
        self.states: dict[str, np.ndarray] = {}
        self.rng_states: dict[str, np.ndarray] = {}
        # Every (layer, spec) using each parameter slot; a layer that uses
        # another layer's parameter (spec.key) shares the owner's array.
        users: dict[tuple[str, str], list] = {}
        for info in self.ir.layers:
            for spec in info.params:
                key = (spec.key or info.param_key, spec.name)
                users.setdefault(key, []).append((info, spec))
        arena = None
        if self.plan is not None:
            # One aligned allocation; planned slots are views at their offsets.
            raw = np.zeros(self.plan.arena_bytes + 64, dtype=np.uint8)
            start = (-raw.ctypes.data) % 64
            arena = raw[start : start + self.plan.arena_bytes]
            self.arena = arena
        for slot in self.slots.slots:
            if slot.kind == "param":
                members = users[(slot.owner, slot.name)]
                # The owner (a spec without a key) initializes the array.
                info, spec = min(members, key=lambda member: member[1].key is not None)
                array = self._shared_param(slot.owner, info, spec)
                for info, spec in members:
                    self.params.setdefault(info.name, {})[spec.name] = array
            elif arena is not None and slot.index in self.plan.offsets:
                offset = self.plan.offsets[slot.index]
                array = (
                    arena[offset : offset + slot.nbytes]
                    .view(slot.dtype)
                    .reshape(slot.shape)
                )
            else:
                array = np.zeros(slot.shape, dtype=slot.dtype)
                if slot.kind == "grad":
                    self.grads.setdefault(slot.owner, {})[slot.name] = array
                elif slot.kind == "state":
                    self.states[slot.owner] = array
                elif slot.kind == "rng":
                    # Random streams of layers such as dropout: a seed drawn
                    # from the backend, advanced by the generated code.
                    array[...] = self.backend.rng.integers(2**63, size=slot.shape)
                    self.rng_states[f"{slot.owner}.{slot.name}"] = array
            self.arrays.append(array)
        self.pointers = self.ffi.new("void *[]", max(len(self.arrays), 1))
        for index, array in enumerate(self.arrays):
            self.pointers[index] = self.ffi.cast("void *", array.ctypes.data)

        self.blobs, self.diffs = blob_views(self, self._pinned_slots())
        self.lock_views()

    def lock_views(self):
        """Make params, grads, blobs and diffs reject replaced arrays."""
        self.params = locked_views("net.params", self.params)
        self.grads = locked_views("net.grads", self.grads)
        self.grads.empty_reason = no_backward_reason(self)
        for layer_name, reason in getattr(self, "untrained", {}).items():
            self.grads.missing[layer_name] = (
                f"layer '{layer_name}' has no gradients: {reason}; connect its "
                "outputs to a loss layer through layers that back-propagate to "
                "train it"
            )
        for info in self.ir.layers:
            layer_grads = self.grads.get(info.name)
            if layer_grads is None:
                continue
            for spec in info.params:
                if not spec.learned:
                    layer_grads.missing[spec.name] = (
                        f"layer '{info.name}' uses parameter '{spec.name}' of key "
                        f"'{spec.key}' but computes no gradient for it; read "
                        f"the gradient of the layer that owns it, or build a "
                        "TiedInnerProductLayer with learn_weights=True to give it "
                        "one"
                    )
        self.blobs.lock()
        self.diffs.lock()

    def _shared_param(self, key, info, spec) -> np.ndarray:
        registry = self.backend.registry.setdefault(key, {})
        existing = registry.get(spec.name)
        if existing is not None:
            if existing.shape != spec.shape or existing.dtype != self.backend.dtype:
                raise ShapeError(
                    f"layer '{info.name}': parameter '{spec.name}' is shared under key "
                    f"'{key}' with shape {existing.shape}, but this net needs "
                    f"{spec.shape}; give the layer a different name or param_key"
                )
            logger.debug("layer '%s': sharing parameter '%s'", info.name, spec.name)
            return existing
        logger.debug("layer '%s': initializing parameter '%s'", info.name, spec.name)
        array = np.ascontiguousarray(
            spec.initializer.init(spec.shape, self.backend.rng, self.backend.dtype)
        )
        registry[spec.name] = array
        return array

    # --- running --------------------------------------------------------------

    def _check_alive(self):
        if getattr(self, "destroyed", False):
            raise MochacError(f"net '{self.name}' was destroyed; build a new Net")

    def _check(self, rc, loss_note: str = ""):
        """Raise the error that return code ``rc`` reports; ``loss_note``
        ends the message of a NaN or infinite loss."""
        if rc == 0:
            return
        status = self.status
        info = (
            self.ir.layers[status.layer]
            if 0 <= status.layer < len(self.ir.layers)
            else None
        )
        if rc == BAD_LABEL and info is not None:
            # The kernel's context records which bottom it checked, how many of
            # its elements make one sample and what a valid value is.
            context = self.kernels_by_layer[status.layer].context
            check = {
                "position": context.get("checked_bottom", 1),
                "start": 0,
                "per_sample": context.get("per_sample"),
                "role": context.get("checked_role", "label"),
                "plural": context.get("checked_role_plural"),
                "rule": context.get("valid_values")
                or f"integers in 0..{context['C'] - 1}",
                "hint": "",
            }
            selected = {}
            # A layer that checks several bottoms counts the index across them
            # and lists where each bottom starts in that count, with what
            # differs from the layer's own keys above.
            for other in context.get("checked_bottoms", ()):
                if other["start"] <= status.index:
                    selected = other
            if "role" in selected and "plural" not in selected:
                check["plural"] = None
            check.update(selected)
            role = check["role"]
            blob = info.layer.bottoms[check["position"]]
            sample = (status.index - check["start"]) // check["per_sample"]
            row = self._data_row(blob, sample)
            # A hint names a layer to compute the values with, which does
            # not apply to values a data layer read.
            hint = "" if row else check["hint"]
            raise DataError(
                f"layer '{info.name}': {role} blob '{blob}' contains "
                f"{status.value!r} at sample {sample} of the batch{row}; "
                f"{check['plural'] or role + 's'} must be {check['rule']}{hint}"
            )
        if rc == BAD_LOSS and info is not None:
            raise NumericalError(
                f"net '{self.name}': loss layer '{info.name}' computed {status.value}"
                f"{self._non_finite_origin()}; check the learning rate, regu_coef, "
                "the loss layers' class weights and the input data for NaN or Inf"
                f"{loss_note}"
            )
        raise MochacError(
            f"net '{self.name}': generated code returned unknown error code {rc}"
        )

    def _keep_streams(self) -> None:
        """Copy the random streams before a forward pass, so that
        _non_finite_origin can draw the pass's random numbers again."""
        if self.rng_states:
            self._streams_before_pass = {
                key: array.copy() for key, array in self.rng_states.items()
            }

    def _non_finite_origin(self) -> str:
        """Return "; layer 'L' (Type) is the first to output NaN or infinite
        values, in its top 'b'" for the first layer whose top contains a NaN
        or infinite value when the batch in the data blobs runs through the
        net again, layer by layer.

        Returns "" when no layer other than a loss makes one, and when a
        layer wrote over a data blob, which then no longer contains the batch.
        The statistics and the random streams end as they were.
        """
        overwritten = overwritten_data(self.ir)
        for info in self.ir.layers:
            if info.layer.is_source and any(
                top in overwritten for top in info.layer.tops
            ):
                return ""
        streams = {key: array.copy() for key, array in self.rng_states.items()}
        # The rerun draws the failed pass's random numbers (dropout masks,
        # noise) again, then the streams go back to where the pass left them.
        for key, array in getattr(self, "_streams_before_pass", {}).items():
            self.rng_states[key][...] = array
        n_valid = self._batch_size()
        try:
            with self.uncounted():
                for index in self.ir.forward_order:
                    info = self.ir.layers[index]
                    if info.eliminated or info.layer.is_source or info.layer.has_loss:
                        continue
                    self._forward_one_layer(info.index, n_valid)
                    for top in info.layer.tops:
                        slot = self.slots.find("data", top)
                        if slot is not None and not self._all_finite(
                            self.arrays[slot.index]
                        ):
                            return (
                                f"; layer '{info.name}' ({type(info.layer).__name__}) "
                                "is the first to output NaN or infinite values, in "
                                f"its top '{top}'"
                            )
        finally:
            for key, array in streams.items():
                self.rng_states[key][...] = array
        return ""

    def _forward_one_layer(self, index: int, n_valid: int) -> None:
        """Run layer ``index``'s forward steps alone, ignoring the return
        code (_non_finite_origin checks the tops itself)."""
        self.lib.mochac_layer_forward(index, self.pointers, self.status, n_valid)

    def _all_finite(self, array) -> bool:
        return bool(np.isfinite(array).all())

    def _data_row(self, blob: str, sample: int) -> str:
        """Return ", data row R of data layer 'L'" for a sample a data layer
        served, with the file and its row for data read from files."""
        root = self.ir.data_root(blob)
        for index, source in self.sources.items():
            tops = source.layer.tops
            rows = getattr(source, "last_indices", None)
            if root in tops and rows is not None and sample < len(rows):
                name = self.ir.layers[index].name
                row = source.describe_row(int(rows[sample]))
                return f", {row} of data layer '{name}'"
        return ""

    @property
    def kernels_by_layer(self):
        return {kernel.layer_index: kernel for kernel in self.kernels}

    def load_batch(self) -> int:
        """Fill the data layers' tops with their next batch; return n_valid."""
        self._check_alive()
        n_valid = None
        for source in self.sources.values():
            outputs = [self.blobs[top] for top in source.layer.tops]
            valid = source.next_batch(outputs)
            n_valid = valid if n_valid is None else min(n_valid, valid)
        return n_valid if n_valid is not None else 0

    @holds_run_lock
    def forward(self, load_data: bool = True) -> float:
        """Run one forward pass; return the objective (the sum of weighted losses).

        With ``load_data`` (default) the data layers first fetch their next
        batch. Raises DataError on invalid labels and NumericalError when a
        loss is NaN or infinite.
        """
        self._check_alive()
        # A forward pass that raises leaves nothing for backward().
        self.forward_done = False
        n_valid = self.load_batch() if load_data else self._batch_size()
        self._keep_streams()
        self._use_threads()
        self._check(self.lib.mochac_forward(self.pointers, self.status, n_valid))
        return self._finish_forward(n_valid)

    def _use_threads(self):
        """Set OpenMP's thread count to this net's before calling into its code.

        The count belongs to the calling thread and every net in the process
        shares it, so the net built or run last would otherwise decide it.
        """
        self.lib.mochac_use_threads(self.backend.threads)

    def _batch_size(self) -> int:
        return max((blob.shape[0] for blob in self.ir.blobs.values()), default=0)

    def objective(self) -> float:
        """Return the sum of the loss layers' weighted values from the last forward."""
        self._check_alive()
        total = 0.0
        for info in self.ir.layers:
            if info.layer.has_loss:
                value = float(self.states[info.name][0])
                if not math.isfinite(value):
                    raise NumericalError(
                        f"net '{self.name}': loss layer '{info.name}' computed {value}"
                        f"{self._non_finite_origin()}; check the learning rate, "
                        "regu_coef, the loss layers' class weights and the input "
                        "data for NaN or Inf"
                    )
                total += value
        return total

    def _record_objective(self, n_valid: int) -> float:
        """Return the objective and add each loss to its statistic's running sum.

        A loss kernel also writes the part of its batch mean that comes from
        the first ``n_valid`` samples. Times the batch size, that part is
        their summed loss, so the statistic leaves out wrapped-around samples.
        """
        total = self.objective()
        self.forward_done = True
        if not self.counting:
            return total
        sums = self.loss_sums
        for name, batch, whole in self._loss_batches:
            valid_part = float(self.states[name][1])
            running = sums.setdefault(name, [0.0, 0])
            running[0] += valid_part * batch
            running[1] += batch if whole else min(n_valid, batch)
        return total

    @functools.cached_property
    def _loss_batches(self) -> list[tuple[str, int, bool]]:
        """Return (name, batch size, counted whole) of each loss layer, so the
        forward pass does not derive them again (lowering.counts_whole)."""
        entries = []
        for info in self.ir.layers:
            if info.layer.has_loss:
                batch = info.bottom_shapes[0][0]
                entries.append((info.name, batch, counts_whole(self.ir, batch)))
        return entries

    @holds_run_lock
    def backward(self):
        """Run back-propagation from the losses of the last forward pass."""
        self._check_alive()
        self._check_forward_done()
        self._use_threads()
        self._check(self.lib.mochac_backward(self.pointers, self.status))

    def _check_forward_done(self):
        if not self.forward_done:
            raise ConfigError(
                f"net '{self.name}': backward() back-propagates the losses of the "
                "last forward pass, and none has run; call forward() first"
            )

    @holds_run_lock
    def train_step(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Run one training iteration on the next batch; return the objective.

        When the method has a native form (mochac.runtime.native_update),
        forward, backward and the update run in one call into the compiled
        code, which releases the GIL. Otherwise the update runs in NumPy. A
        NaN or infinite loss raises NumericalError before any parameter
        changes.
        """
        check_step_method(method, "net.train_step")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        self._check_alive()
        tables = native_update.tables_for(self, method, regu_coef)
        if tables is None:
            objective = self.forward()
            self.backward()
            method.update(self, learning_rate, momentum, regu_coef, iteration)
            return objective
        step = native_update.step_values(
            self, method, learning_rate, momentum, iteration
        )
        return self._native_step(
            self.lib.mochac_train_step, tables, step, NO_UPDATE_NOTE
        )

    @holds_run_lock
    def forward_backward(self, method, regu_coef) -> float:
        """Run forward and backward on the next batch; return the objective.

        The backward pass leaves out the layers that only lead to frozen
        ones, as train_step does. The gradients stay for the next
        apply_update or solver_step. Raises NumericalError when a loss is NaN
        or infinite.
        """
        check_step_method(method, "net.forward_backward")
        check_regu_coef(regu_coef)
        self._check_alive()
        tables = native_update.tables_for(self, method, regu_coef)
        if tables is None:
            objective = self.forward()
            self.backward()
            return objective
        self.forward_done = False
        n_valid = self.load_batch()
        self._keep_streams()
        self._use_threads()
        self._check(
            self.lib.mochac_forward_backward(
                self.pointers, self.status, n_valid, tables.skip
            )
        )
        return self._finish_forward(n_valid)

    @holds_run_lock
    def apply_update(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters from the gradients of the last backward pass."""
        check_step_method(method, "net.apply_update")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        self._check_alive()
        self.step_updated = False
        method.update(self, learning_rate, momentum, regu_coef, iteration)
        self.step_updated = True

    @holds_run_lock
    def solver_step(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Run one solver iteration in Mocha's order; return the objective.

        The update applies the gradients that the last forward_backward (or
        solver_step) left, then forward and backward run on the next batch.
        The objective is thus the loss after the update, which Mocha's
        solver reports, and the new gradients wait for the next iteration.
        With a native method the whole iteration is one call into the
        compiled code.
        """
        check_step_method(method, "net.solver_step")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        self._check_alive()
        self.step_updated = False
        tables = native_update.tables_for(self, method, regu_coef)
        if tables is None:
            self.apply_update(method, learning_rate, momentum, regu_coef, iteration)
            objective = self.forward()
            self.backward()
            return objective
        step = native_update.step_values(
            self, method, learning_rate, momentum, iteration
        )
        return self._native_step(
            self.lib.mochac_solver_step,
            tables,
            step,
            AFTER_UPDATE_NOTE,
            updates_first=True,
        )

    def _native_step(
        self, entry, tables, step, loss_note: str, updates_first: bool = False
    ) -> float:
        """Load the next batch and run ``entry`` (mochac_train_step or
        mochac_solver_step) on it with the update tables; return the
        objective. ``loss_note`` ends the message of a NaN loss, and
        ``updates_first`` marks an entry that updates before anything can fail."""
        self.forward_done = False
        n_valid = self.load_batch()
        self._keep_streams()
        self.step_updated = updates_first
        self._use_threads()
        self._check(
            entry(
                self.pointers,
                self.status,
                n_valid,
                tables.updates,
                tables.n_updates,
                tables.sums,
                tables.n_sums,
                step,
                tables.skip,
            ),
            loss_note,
        )
        return self._finish_forward(n_valid)

    def _finish_forward(self, n_valid: int) -> float:
        if self.counting:
            for state in self.output_states.values():
                state.collect(self.blobs)
        return self._record_objective(n_valid)

    @holds_run_lock
    def forward_layer(self, name: str, n_valid: int | None = None):
        """Run one layer's forward pass on the current blob contents (for tests)."""
        self._check_alive()
        info = self.ir.layer(name)
        n_valid = self._batch_size() if n_valid is None else n_valid
        self._use_threads()
        self._check(
            self.lib.mochac_layer_forward(
                info.index, self.pointers, self.status, n_valid
            )
        )

    @holds_run_lock
    def backward_layer(self, name: str):
        """Run one layer's backward pass on the current diffs (for tests)."""
        self._check_alive()
        info = self.ir.layer(name)
        self._use_threads()
        self._check(
            self.lib.mochac_layer_backward(info.index, self.pointers, self.status)
        )

    # --- statistics -----------------------------------------------------------

    def statistics(self) -> dict[str, float]:
        """Return the statistics accumulated since the last reset.

        An accuracy layer ``acc`` gives "acc-accuracy", the fraction of
        valid samples that were right. A loss layer ``loss`` gives its
        weighted loss averaged over the samples of every forward pass, under
        a name that includes the loss kind ("loss-square-loss",
        "loss-softmax-loss"). Each layer also gives "<name>-count", its
        number of samples.

        Both count only the valid samples: in a validation epoch's last
        batch, the samples that wrapped around to the start of the data are
        left out.
        """
        self._check_alive()
        stats = {}
        sums = self.loss_sums
        for info in self.ir.layers:
            layer = info.layer
            if layer.has_stats:
                right, count = (float(value) for value in self.states[info.name])
                stats[statistic_key(info)] = right / count if count else 0.0
                stats[f"{info.name}-count"] = int(count)
            elif layer.has_loss:
                total, count = sums.get(info.name, (0.0, 0))
                stats[statistic_key(info)] = total / count if count else 0.0
                stats[f"{info.name}-count"] = count
        return stats

    @contextlib.contextmanager
    def uncounted(self):
        """Run the forward passes inside without counting them: the
        statistics and the output layers end as they were before.

        The solver recomputes gradients on a batch already counted this way.
        """
        self._check_alive()
        saved = self._statistics_counters()
        copies = [self.backend.copy(array) for array in saved]
        sums = {name: list(running) for name, running in self.loss_sums.items()}
        counting, self.counting = self.counting, False
        try:
            yield
        finally:
            self.counting = counting
            with self._on_device():
                for array, copy in zip(saved, copies):
                    array[...] = copy
            self.loss_sums = sums

    def _on_device(self):
        """Return the context in which this net's arrays are written: none on
        the CPU, the CUDA device on the GPU (GPUNet)."""
        return contextlib.nullcontext()

    def _statistics_counters(self) -> list:
        """Return the arrays in which statistics layers count, for uncounted()."""
        return [
            self.states[info.name] for info in self.ir.layers if info.layer.has_stats
        ]

    def reset_statistics(self):
        """Zero the accuracy counters and loss sums before a validation epoch."""
        self._check_alive()
        for info in self.ir.layers:
            if info.layer.has_stats:
                self.states[info.name][...] = 0
        self.loss_sums = {}

    # --- access ---------------------------------------------------------------

    def data_source(self, layer_name: str):
        """Return the runtime state of a data layer (position, epoch, arrays)."""
        self._check_alive()
        for index, source in self.sources.items():
            if self.ir.layers[index].name == layer_name:
                return source
        raise name_not_found(
            f"net '{self.name}' has no data layer named {layer_name!r}",
            [layer_name],
            [self.ir.layers[index].name for index in self.sources],
            "its data layers",
            LAYER_NAME_FIX,
        )

    @holds_run_lock
    def destroy(self):
        """Drop the buffers and close the data sources; the net cannot run afterwards."""
        self.destroyed = True
        for source in self.sources.values():
            source.close()
        for state in self.output_states.values():
            state.close()
        self.arrays = []
        # A lookup in these views raises the MochacError of a destroyed net,
        # not a KeyError that reads as if the name were wrong.
        destroyed_reason = f"net '{self.name}' was destroyed; build a new Net"
        self.blobs = destroyed_views("net.blobs", destroyed_reason)
        self.diffs = destroyed_views("net.diffs", destroyed_reason)
        self.grads = destroyed_views("net.grads", destroyed_reason)
        self.states = destroyed_views("net.states", destroyed_reason)
        self.pointers = None

    def get_layer(self, name: str):
        """Return the layer config named ``name``; raise NotFoundError when the
        net has no such layer."""
        return self.ir.layer(name).layer

    @property
    def output_blobs(self) -> dict:
        """Mocha's name for ``blobs``: the arrays of the kept blobs, by name."""
        return self.blobs

    def __reduce_ex__(self, protocol):
        # copy.copy, copy.deepcopy and pickle all call this. Without it they
        # fail on an internal lock with a message that names no net.
        raise TypeError(
            f"net '{self.name}' cannot be pickled or copied, because its arrays "
            "are the memory of its compiled code; save its parameters with "
            "save_snapshot(path, net) and load them into another Net of the same "
            "layers with load_snapshot(other, path)"
        )

    def __repr__(self):
        lines = [f"Net '{self.name}' ({self.backend.dtype.name})"]
        infos = [self.ir.layers[index] for index in self.ir.forward_order]
        # The columns are as wide as their longest entry, so long layer names
        # ("RandomMaskLayer-3") and class names stay aligned.
        name_width = max([16, *(len(info.name) for info in infos)])
        kind_width = max([20, *(len(type(info.layer).__name__) for info in infos)])
        for info in infos:
            tops = ", ".join(f"{t} {self.ir.blobs[t].shape}" for t in info.layer.tops)
            kind = type(info.layer).__name__
            line = f"  {info.name:<{name_width}} {kind:<{kind_width}} -> {tops}"
            lines.append(line.rstrip())
        return "\n".join(lines)
