"""GPUNet: a net whose kernels run on a CUDA device through CuPy.

Construction builds and optimizes the IR as Net does, renders CUDA
(mochac.codegen.cuda), loads it with ``cupy.RawModule`` and places every
data, diff and work slot in one device arena laid out by plan_memory.
forward() and backward() execute the step lists on one stream: kernel
launches, cuBLAS GEMMs (mochac.runtime.cublas_direct, or
``cupy.cublas.gemm`` where libcublas cannot be called directly), memsets
and copies.

Training data reaches the device ahead of use. After a training step
(train_step, forward_backward or solver_step) is enqueued, and while the
device runs it, the data sources fill pinned host buffers with the next
batch, and a second stream copies them to device staging buffers. The
next step starts with device-to-device copies from there into the data
layers' tops. The sources are wrapped in ReadAhead
(mochac.runtime.read_ahead), so their position, epoch and snapshot state
stay those of the batches used. forward() drops a batch read ahead and
reads its own, so arrays a caller changes in place before it take effect.

NOTE: unverified on a GPU. The CuPy calls, streams and pinned copies here
have run only against the host stand-in of tests/host_cupy.py;
tests/test_cuda_device.py checks them where a device exists.
"""

from __future__ import annotations

import functools
import logging
import weakref
from types import SimpleNamespace

import numpy as np

from mochac.codegen.build import cache_dir, source_digest
from mochac.codegen.cuda import render_cuda
from mochac.codegen.cuda.steps import Copy, Gemm, Launch, Zero
from mochac.errors import CompileError, ConfigError, ShapeError
from mochac.ir import build_ir
from mochac.ir.graph import check_layer_list, layer_display_name
from mochac.layers.output import OutputLayer
from mochac.passes.pipeline import (
    enabled_passes,
    ir_counts,
    kept_blob_names,
    pass_names,
    run_ir_passes,
)
from mochac.passes.plan_memory import plan_memory
from mochac.runtime import cublas_direct, gpu_update
from mochac.runtime.array_views import blob_views
from mochac.runtime.data_sources import (
    make_source,
    open_after_build,
    shapes_before_reading,
)
from mochac.runtime.gpu_graphs import StepGraphs
from mochac.runtime.net import (
    AFTER_UPDATE_NOTE,
    NO_UPDATE_NOTE,
    Net,
    holds_run_lock,
    pinned_slots,
)
from mochac.runtime.net_checks import check_kept_blobs, check_step_method
from mochac.runtime.outputs import OutputStates, make_output_state
from mochac.runtime.read_ahead import ReadAhead
from mochac.runtime.step_settings import check_regu_coef, check_step_values

logger = logging.getLogger(__name__)

# struct mochac_status (int code, int layer, long long index, double value)
# is three 8-byte words at the start of the report block.
STATUS_WORDS = 3


def close_cublas_handle(cupy, device: int, handle) -> None:
    """Destroy a GPUNet's cuBLAS handle with the net's device current.

    Does nothing for a handle that GPUNet.destroy() already closed.
    """
    with cupy.cuda.Device(device):
        handle.close()


def wait_for_stream(cupy, device: int, stream) -> None:
    """Wait for the work on a collected GPUNet's ``stream``, logging a
    failure instead of raising it from the garbage collector."""
    try:
        with cupy.cuda.Device(device):
            stream.synchronize()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        logger.warning("waiting for a collected net's copy stream failed: %s", error)


def prepare_ir(net, backend, layers, force_backward, phase, opt_level, disable, keep):
    """Open the data sources, build the IR and run the passes, as Net does.

    Sets on ``net``: layers, sources, ir, phase, keep, pass_reports. Needs no
    device, so tests use it to render CUDA without one.
    """
    net.layers = check_layer_list(net.name, layers)
    net.opt_level, net.disable = opt_level, pass_names(disable)
    net.keep = kept_blob_names(keep)
    enabled_passes(opt_level, net.disable)
    # An HDF5DataLayer, which reads its files whole, opens after build_ir has
    # checked the shapes of its files' metadata, as in Net.
    net.sources, source_shapes, after_build = {}, {}, {}
    for index, layer in enumerate(net.layers):
        if getattr(layer, "is_source", False):
            rng = np.random.default_rng(backend.rng.integers(2**63))
            layer_name = layer_display_name(layer, index)
            shapes = shapes_before_reading(layer, backend.dtype, layer_name)
            if shapes is not None:
                after_build[index] = (layer, rng, layer_name, shapes)
                source_shapes[index] = shapes
                continue
            source = make_source(layer, backend.dtype, rng, layer_name)
            net.sources[index] = ReadAhead(source)
            source_shapes[index] = net.sources[index].shapes
    registered = {
        (key, param): tuple(array.shape)
        for key, params in backend.registry.items()
        for param, array in params.items()
    }
    try:
        net.ir = build_ir(
            net.name,
            net.layers,
            source_shapes,
            backend.dtype,
            force_backward,
            registered,
        )
        for index, (layer, rng, layer_name, shapes) in after_build.items():
            source = open_after_build(layer, backend.dtype, rng, layer_name, shapes)
            net.sources[index] = ReadAhead(source)
    except BaseException:
        for source in net.sources.values():
            source.close()
        raise
    net.sources = dict(sorted(net.sources.items()))
    if phase is None:
        phase = "train" if any(i.layer.has_loss for i in net.ir.layers) else "test"
    if phase not in ("train", "test"):
        raise ConfigError(
            f"net '{net.name}': invalid phase={phase!r}; expected 'train' or 'test'"
        )
    net.phase = net.ir.phase = phase
    check_kept_blobs(net)
    sinks = [info for info in net.ir.layers if isinstance(info.layer, OutputLayer)]
    net.keep |= {bottom for info in sinks for bottom in info.layer.bottoms}
    # With plan_memory on, splits stay where eliminating them would plan
    # more memory.
    measure = None
    if "plan_memory" in enabled_passes(opt_level, net.disable):
        measure = functools.partial(cuda_memory_plan, keep=net.keep)
    net.pass_reports = run_ir_passes(net.ir, opt_level, net.disable, net.keep, measure)


def cuda_memory_plan(ir, keep):
    """Return the MemoryPlan of the CUDA program of ``ir`` as its passes left it."""
    program = render_cuda(ir)
    return plan_memory(
        program.slots, program.kernels, pinned_slots(ir, program.slots, keep)
    )


class GPUNet(Net):
    """A net compiled for the GPU backend.

    Takes Net's arguments, with a GPUBackend. ``blobs``, ``diffs``,
    ``params`` and ``grads`` are CuPy arrays on the device (views of the
    arena where plan_memory placed them); ``states`` are host copies of the
    loss and statistics accumulators, refreshed after every forward pass.
    Inherits Net's error reporting, statistics and objective.
    """

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
        # The level of the summary line, as in Net, which passes it on when
        # Net(...) builds a GPUNet.
        _build_log_level=logging.INFO,
    ):
        self.name = name
        self.backend = backend
        self.force_backward = force_backward
        prepare_ir(
            self, backend, layers, force_backward, phase, opt_level, disable, keep
        )
        passes = enabled_passes(opt_level, self.disable)
        self.program = render_cuda(self.ir)
        self.source, self.slots = self.program.source, self.program.slots
        self.kernels = self.program.kernels
        self.memory = plan_memory(self.slots, self.kernels, self._pinned_slots())
        self.plan = self.memory if "plan_memory" in passes else None

        cupy = self.cupy = backend.cupy
        with cupy.cuda.Device(backend.device):
            # NOTE: CuPy's compile appends -ftz=true after the caller's
            # options, so float32 kernels flush subnormal values to zero on
            # the device, where the CPU backend and the host emulator keep
            # them. NVRTC's default --fmad=true also fuses a * b + c in the
            # layer kernels, so float results can differ in the last bits.
            self.module = cupy.RawModule(code=self.source)
            # Kernels and GEMMs run on a blocking stream: work on CuPy's
            # default stream (a NumPy-coded solver update, a user's reads)
            # stays ordered with it, and it can be captured into a graph.
            # NOTE: that ordering holds for the legacy default stream only.
            # With CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1, CuPy's default
            # stream is the per-thread one, which CUDA does not order with
            # other streams, so those writes and reads can race the steps.
            self.stream = cupy.cuda.Stream(non_blocking=False)
            # Graphs are captured on a non-blocking stream and launched on
            # self.stream. While a blocking stream captures, CUDA rejects
            # work on the legacy default stream from every thread
            # (cudaErrorStreamCaptureImplicit) and invalidates the capture,
            # so another thread's CuPy call would fail.
            self.capture_stream = cupy.cuda.Stream(non_blocking=True)
            self.copy_stream = cupy.cuda.Stream(non_blocking=True)
            # A net collected without destroy() may leave a batch read ahead
            # being copied into its staging buffer. CuPy's default stream,
            # which may reuse that buffer's memory, does not wait for the
            # non-blocking copy stream, so the collection waits for it.
            wait_for_copies = weakref.finalize(
                self, wait_for_stream, cupy, backend.device, self.copy_stream
            )
            wait_for_copies.atexit = False
            # GEMMs go to libcublas directly when it can be found, because
            # CuPy's wrapper cannot run under the stream capture of graphs.
            self.cublas = cublas_direct.open_handle(cupy, self.stream)
            if self.cublas is not None:
                # A net that is garbage collected without destroy(), or whose
                # build fails after this point, still releases the handle and
                # the device memory cuBLAS keeps for it. Interpreter exit
                # skips the release, because CUDA may be shut down by then and
                # the end of the process frees the device memory anyway.
                # NOTE: run against tests/fake_cublas.c only, not on a device.
                release = weakref.finalize(
                    self, close_cublas_handle, cupy, backend.device, self.cublas
                )
                release.atexit = False
            try:
                self._allocate()
                self._bind_steps()
            except BaseException:
                # No net comes back to destroy, so the handle and the device
                # memory cuBLAS keeps for it would stay until the process ends.
                if self.cublas is not None:
                    self.cublas.close()
                raise
        self.graphs = StepGraphs(self, getattr(backend, "graphs", False))
        sinks = [info for info in self.ir.layers if isinstance(info.layer, OutputLayer)]
        self.output_states = OutputStates(
            self.name,
            {
                info.name: make_output_state(
                    info.layer, info.bottom_shapes, backend.dtype
                )
                for info in sinks
            },
        )
        # Loss statistics and the forward-before-backward check, as in Net.
        self.loss_sums: dict[str, list] = {}
        self.forward_done = False
        logger.log(
            _build_log_level,
            "net '%s': %d compiled layers on CUDA device %d, %d launches and GEMMs "
            "per iteration; arena %.1f MB",
            name,
            ir_counts(self.ir)["layers"],
            backend.device,
            len(self.forward_calls) + len(self.backward_calls),
            self.arena.nbytes / 1e6,
        )

    # --- construction ---------------------------------------------------------

    def _allocate(self):
        cupy, dtype = self.cupy, self.backend.dtype
        users: dict[tuple[str, str], list] = {}
        for info in self.ir.layers:
            for spec in info.params:
                users.setdefault((spec.key or info.param_key, spec.name), []).append(
                    (info, spec)
                )
        planned = self.plan.offsets if self.plan is not None else {}
        self.arena = cupy.zeros(self.plan.arena_bytes if self.plan else 0, np.uint8)
        state_slots = [slot for slot in self.slots.slots if slot.kind == "state"]
        state_size = sum(int(np.prod(slot.shape)) for slot in state_slots)
        # The status and all accumulators share one block, so one copy
        # brings them to the host after a step.
        self.report_block = cupy.zeros(STATUS_WORDS + state_size, np.float64)
        self.host_report = np.zeros(STATUS_WORDS + state_size, np.float64)
        self.status_block = self.report_block[:STATUS_WORDS].view(np.int64)
        self.state_block = self.report_block[STATUS_WORDS:]
        self.host_state_block = self.host_report[STATUS_WORDS:]
        state_at = 0
        self.arrays, self.params, self.grads = [], {}, {}
        self.states, self.device_states, self.rng_states = {}, {}, {}
        for slot in self.slots.slots:
            size = int(np.prod(slot.shape))
            if slot.kind == "param":
                members = users[(slot.owner, slot.name)]
                info, spec = min(members, key=lambda member: member[1].key is not None)
                array = self._shared_param(slot.owner, info, spec)
                for info, spec in members:
                    self.params.setdefault(info.name, {})[spec.name] = array
            elif slot.index in planned:
                offset = planned[slot.index]
                array = (
                    self.arena[offset : offset + slot.nbytes]
                    .view(slot.dtype)
                    .reshape(slot.shape)
                )
            elif slot.kind == "state":
                array = self.state_block[state_at : state_at + size].reshape(slot.shape)
                self.device_states[slot.owner] = array
                self.states[slot.owner] = self.host_state_block[
                    state_at : state_at + size
                ].reshape(slot.shape)
                state_at += size
            else:
                array = cupy.zeros(slot.shape, slot.dtype)
                if slot.kind == "grad":
                    self.grads.setdefault(slot.owner, {})[slot.name] = array
                elif slot.kind == "rng":
                    seeds = self.backend.rng.integers(2**63, size=slot.shape)
                    array[...] = cupy.asarray(seeds.astype(np.uint64))
                    self.rng_states[f"{slot.owner}.{slot.name}"] = array
            self.arrays.append(array)
        self.pointers = cupy.asarray(
            np.array([array.data.ptr for array in self.arrays] or [0], np.uint64)
        )
        # The doubles of the solver's update that change every iteration.
        self.step_block = cupy.zeros(len(gpu_update.STEP_FIELDS), np.float64)
        # What the device's step block contains (NaN: not written yet).
        self.host_step_block = np.full(len(gpu_update.STEP_FIELDS), np.nan)

        self.blobs, self.diffs = blob_views(self, self._pinned_slots())
        self.lock_views()
        # Per data layer top: a pinned host buffer the source fills and a
        # device buffer the copy stream fills from it, ahead of use.
        from cupyx import empty_pinned

        self.host_staging, self.device_staging = {}, {}
        for index, source in self.sources.items():
            tops = [self.blobs[top] for top in source.layer.tops]
            self.host_staging[index] = [empty_pinned(top.shape, dtype) for top in tops]
            self.device_staging[index] = [cupy.zeros(top.shape, dtype) for top in tops]
        # cupy.zeros enqueues its memset on the current stream, which the
        # non-blocking copy stream does not wait for by itself. Without this
        # wait, a late memset could overwrite the first batch copied in.
        self.copy_stream.wait_event(cupy.cuda.get_current_stream().record())
        # The copy stream's last copies, and the compute stream's last moves
        # out of the device staging buffers.
        self.copy_done = self.staging_free = None

    def _shared_param(self, key, info, spec):
        registry = self.backend.registry.setdefault(key, {})
        existing = registry.get(spec.name)
        if existing is not None:
            if tuple(existing.shape) != tuple(spec.shape):
                raise ShapeError(
                    f"layer '{info.name}': parameter '{spec.name}' is shared under key "
                    f"'{key}' with shape {tuple(existing.shape)}, but this net needs "
                    f"{spec.shape}; give the layer a different name or param_key"
                )
            return existing
        values = spec.initializer.init(spec.shape, self.backend.rng, self.backend.dtype)
        array = self.cupy.asarray(np.ascontiguousarray(values))
        registry[spec.name] = array
        return array

    def _bind_steps(self):
        """Bind every step; the first kernel looked up compiles the module."""
        compiler = getattr(self.cupy.cuda, "compiler", None)
        compile_errors = tuple(
            error for error in (getattr(compiler, "CompileException", None),) if error
        )
        try:
            self.forward_calls = [self._bind(step) for step in self.program.forward]
            layers = self.program.layers
            # Per layer in backward order, so that training steps can leave
            # out the layers that skipped_backward names.
            self.backward_by_layer = [
                (index, [self._bind(step) for step in layers[index].backward])
                for index in self.ir.backward_order
                if index in layers
            ]
            self.backward_calls = [
                call for _, calls in self.backward_by_layer for call in calls
            ]
            self.check_call = self._bind(Launch("mochac_check_losses", 1, 1))
            # {kind: (tables, calls)} of the last step of each kind
            # (_step_calls).
            self._step_cache = {}
        except compile_errors as error:
            kept = cache_dir() / f"mochac_cuda_{source_digest(self.source)}.failed.cu"
            kept.write_text(self.source)
            raise CompileError(
                f"net '{self.name}': NVRTC failed on the generated CUDA; the source "
                f"is kept at {kept}\n{error}",
                output=str(error),
                source_path=str(kept),
            ) from error

    def _bind(self, step):
        """Return a function of n_valid that enqueues one step on the current
        stream, which _enqueue sets."""
        from cupy import cublas

        runtime = self.cupy.cuda.runtime
        if isinstance(step, Launch):
            kernel = self.module.get_function(step.kernel)
            grid, block = (step.blocks,), (step.threads,)
            pointers, status = self.pointers, self.status_block

            def run_launch(n_valid):
                kernel(grid, block, (pointers, np.int32(n_valid), status))

            return run_launch
        if isinstance(step, Gemm):
            a, b, c = (self._matrix(operand) for operand in (step.a, step.b, step.c))
            trans_a, trans_b = (
                "T" if step.trans_a else "N",
                "T" if step.trans_b else "N",
            )

            if self.cublas is not None:
                enqueue_gemm = self.cublas.gemm_call(
                    step.trans_a, step.trans_b, a, b, c, step.alpha, step.beta
                )

                def run_direct_gemm(n_valid):
                    enqueue_gemm()

                return run_direct_gemm

            def run_gemm(n_valid):
                cublas.gemm(
                    trans_a, trans_b, a, b, out=c, alpha=step.alpha, beta=step.beta
                )

            return run_gemm
        if isinstance(step, Zero):
            target = self.arrays[step.slot]
            nbytes = step.count * target.dtype.itemsize

            def run_zero(n_valid):
                stream = self.cupy.cuda.get_current_stream()
                runtime.memsetAsync(target.data.ptr, 0, nbytes, stream.ptr)

            return run_zero
        if isinstance(step, Copy):
            source, target = self.arrays[step.source], self.arrays[step.target]
            nbytes = step.count * target.dtype.itemsize

            def run_copy(n_valid):
                runtime.memcpyAsync(
                    target.data.ptr,
                    source.data.ptr,
                    nbytes,
                    runtime.memcpyDeviceToDevice,
                    self.cupy.cuda.get_current_stream().ptr,
                )

            return run_copy
        raise TypeError(f"unknown step {step!r}")

    def _matrix(self, operand):
        flat = self.arrays[operand.slot].reshape(-1)
        end = operand.offset + operand.rows * operand.cols
        return flat[operand.offset : end].reshape(operand.rows, operand.cols)

    # --- running --------------------------------------------------------------

    def load_batch(self) -> int:
        """Enqueue moving the next batch into the data layers' tops; return n_valid.

        Takes the batch read ahead during the previous step when every source
        has one pending, and reads one now otherwise. The compute stream waits
        for the copy stream, then copies the device staging buffers into the
        tops.
        """
        self._check_alive()
        if not self.sources:
            return 0
        sources = list(self.sources.values())
        # A source whose arrays were replaced since the read ahead (through a
        # reference kept from before it) has a stale batch.
        if any(source.pending is None or source.is_outdated() for source in sources):
            for source in sources:
                source.drop()
            self._read_into_staging()
        n_valid = min(source.take() for source in sources)
        runtime = self.cupy.cuda.runtime
        with self.cupy.cuda.Device(self.backend.device):
            self.stream.wait_event(self.copy_done)
            for index in self.sources:
                for staged, top in zip(
                    self.device_staging[index], self._tops(index), strict=True
                ):
                    runtime.memcpyAsync(
                        top.data.ptr,
                        staged.data.ptr,
                        top.nbytes,
                        runtime.memcpyDeviceToDevice,
                        self.stream.ptr,
                    )
            self.staging_free = self.stream.record()
        return n_valid

    def _tops(self, index):
        return [self.blobs[top] for top in self.sources[index].layer.tops]

    def _read_into_staging(self):
        """Have every source read its next batch into the pinned buffers and
        enqueue the copies to the device staging buffers on the copy stream.

        The batches stay pending in the sources until load_batch takes them.
        """
        with self.cupy.cuda.Device(self.backend.device):
            if self.copy_done is not None:
                # The last copies have read the pinned buffers.
                self.copy_done.synchronize()
            for index, source in self.sources.items():
                source.read(self.host_staging[index])
            if self.staging_free is not None:
                self.copy_stream.wait_event(self.staging_free)
            try:
                for index in self.sources:
                    for host, staged in zip(
                        self.host_staging[index],
                        self.device_staging[index],
                        strict=True,
                    ):
                        staged.set(host, stream=self.copy_stream)
            finally:
                # Recorded after a failed copy too, because the copies
                # enqueued before it still read the pinned buffers, and the
                # next read waits for this event before overwriting them.
                self.copy_done = self.copy_stream.record()

    def _read_ahead(self):
        """Read the next batch while the device runs the step just enqueued.

        A source that fails here (a file that cannot be read, a transformer
        error) keeps its error pending, and the next load_batch raises it,
        after the current step has finished. Should the staging itself fail,
        the batch is dropped and the next load_batch reads it again.
        """
        if not self.sources:
            return
        try:
            self._read_into_staging()
        except Exception:
            logger.debug(
                "net '%s': reading ahead failed; the next step reads again",
                self.name,
                exc_info=True,
            )
            for source in self.sources.values():
                source.drop()

    def drop_read_ahead(self):
        """Discard the batch the last training step read ahead, moving the
        data sources back before it.

        Call it after writing into a MemoryDataLayer's arrays in place
        between training steps, so that the next step reads them again.
        forward(), data_source() and the sources' rewind, load_state_dict and
        attribute assignment drop the batch themselves, and load_batch drops
        it when an array in a source's list was replaced since the read.
        """
        for source in self.sources.values():
            source.drop()

    def data_source(self, layer_name: str):
        """Return a data layer's source (see Net.data_source), with no batch
        read ahead, so that changes to it reach the next step."""
        source = super().data_source(layer_name)
        self.drop_read_ahead()
        return source

    def _keep_streams(self) -> None:
        # The copies run on the net's stream, after the kernels that last
        # drew from the streams.
        with self._on_device(), self.stream:
            super()._keep_streams()

    def _non_finite_origin(self) -> str:
        # The random streams are copied back on the net's stream too.
        with self._on_device(), self.stream:
            return super()._non_finite_origin()

    def _forward_one_layer(self, index: int, n_valid: int) -> None:
        # Enqueue the layer's steps alone on the net's stream for the rerun
        # of Net._non_finite_origin, which ignores the status they set.
        layer = self.program.layers.get(index)
        if layer is None:
            return
        with self._on_device():
            calls = [self._bind(step) for step in layer.forward]
        self._enqueue(calls, n_valid)
        self.stream.synchronize()

    def _all_finite(self, array) -> bool:
        with self._on_device():
            return bool(np.isfinite(array.get(stream=self.stream)).all())

    def get_layer(self, name: str):
        """Return the layer config named ``name`` (see Net.get_layer). For a
        data layer, first drop the batch read ahead, so that writes into its
        ``data`` arrays reach the next step."""
        layer = super().get_layer(name)
        if getattr(layer, "is_source", False):
            self.drop_read_ahead()
        return layer

    def _run(self, calls, n_valid, wait=True):
        """Enqueue ``calls``; with ``wait``, also wait for them, copy the
        accumulators to the host and raise what a kernel reported."""
        self._enqueue(calls, n_valid)
        if wait:
            self._finish()

    def _enqueue(self, calls, n_valid, stream=None):
        """Reset the status and enqueue ``calls`` on ``stream``, by default
        the net's stream. The direct cuBLAS calls go to the handle's stream."""
        stream = stream or self.stream
        with self.cupy.cuda.Device(self.backend.device), stream:
            self.cupy.cuda.runtime.memsetAsync(
                self.status_block.data.ptr, 0, self.status_block.nbytes, stream.ptr
            )
            for call in calls:
                call(n_valid)

    def _finish(self, loss_note: str = ""):
        """Wait for the stream, copy the accumulators to the host and raise
        what a kernel reported; ``loss_note`` as in Net._check."""
        with self.cupy.cuda.Device(self.backend.device):
            self.stream.synchronize()
            self.report_block.get(out=self.host_report)
        raw = self.host_report[:STATUS_WORDS]
        words, wide = raw.view(np.int32), raw.view(np.int64)
        self.status = SimpleNamespace(
            code=int(words[0]),
            layer=int(words[1]),
            index=int(wide[1]),
            value=float(raw[2]),
        )
        self._check(self.status.code, loss_note)

    @holds_run_lock
    def forward(self, load_data: bool = True) -> float:
        """Run one forward pass; return the objective (the sum of weighted losses).

        Raises DataError on invalid labels and NumericalError when a loss is
        NaN or infinite, as Net.forward does.
        """
        self._check_alive()
        self.forward_done = False
        if load_data:
            # A batch a training step read ahead may predate changes to the
            # arrays, so forward() reads its batch now.
            self.drop_read_ahead()
        n_valid = self.load_batch() if load_data else self._batch_size()
        self._keep_streams()
        self._run(self.forward_calls, n_valid)
        self._collect_outputs()
        return self._record_objective(n_valid)

    def _collect_outputs(self):
        """Hand the output layers' bottoms to their host-side states."""
        if self.output_states and self.counting:
            # Only the output layers' bottoms cross to the host, not every
            # blob the net keeps (the data layers' tops among them).
            bottoms = {
                bottom
                for state in self.output_states.values()
                for bottom in state.layer.bottoms
            }
            host = {name: self.blobs[name].get() for name in bottoms}
            for state in self.output_states.values():
                state.collect(host)

    @holds_run_lock
    def backward(self):
        """Enqueue back-propagation from the losses of the last forward pass.

        Returns without waiting: CuPy work on the default stream, such as a
        solver's update, runs after it.
        """
        self._check_alive()
        self._check_forward_done()
        self._run(self.backward_calls, self._batch_size(), wait=False)

    @holds_run_lock
    def train_step(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Run one training iteration on the next batch; return the objective.

        Forward, the loss check, backward and the update (the module's
        ``mochac_update``, see mochac.runtime.gpu_update) are enqueued at
        once, replayed from a CUDA graph after the first step of their kind
        (mochac.runtime.gpu_graphs). The next batch is then read ahead, and
        the host waits once, at the end. A method or regularizer without a
        native form updates with its NumPy code on the CuPy arrays instead.
        A NaN or infinite loss raises NumericalError, and the update kernels
        then leave every parameter as it was.
        """
        check_step_method(method, "net.train_step")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        tables = gpu_update.tables_for(self, method, regu_coef)
        if tables is None:
            objective = self.forward()
            self.backward()
            self._numpy_update(method, learning_rate, momentum, regu_coef, iteration)
            return objective
        step = gpu_update.step_block(method, learning_rate, momentum, iteration)
        return self._graph_step("train", tables, step, NO_UPDATE_NOTE)

    @holds_run_lock
    def forward_backward(self, method, regu_coef) -> float:
        """Run forward and backward on the next batch; return the objective.

        As Net.forward_backward, with the steps enqueued at once (a CUDA
        graph after the first) and the next batch read ahead.
        """
        check_step_method(method, "net.forward_backward")
        check_regu_coef(regu_coef)
        tables = gpu_update.tables_for(self, method, regu_coef)
        if tables is None:
            objective = self.forward()
            self.backward()
            return objective
        return self._graph_step("gradients", tables, None, "")

    @holds_run_lock
    def apply_update(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Update the parameters from the gradients of the last backward pass."""
        check_step_method(method, "net.apply_update")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        self._check_alive()
        self.step_updated = False
        tables = gpu_update.tables_for(self, method, regu_coef)
        if tables is None:
            self._numpy_update(method, learning_rate, momentum, regu_coef, iteration)
            self.step_updated = True
            return
        self._set_step_block(
            gpu_update.step_block(method, learning_rate, momentum, iteration)
        )
        self._run(gpu_update.update_calls(self, tables), self._batch_size())
        self.step_updated = True

    @holds_run_lock
    def solver_step(self, method, learning_rate, momentum, regu_coef, iteration=None):
        """Run one solver iteration in Mocha's order; return the objective.

        As Net.solver_step: the update from the last gradients, then forward
        and backward on the next batch, enqueued at once as train_step's
        steps are.
        """
        check_step_method(method, "net.solver_step")
        check_step_values(learning_rate, momentum, regu_coef, iteration)
        self.step_updated = False
        tables = gpu_update.tables_for(self, method, regu_coef)
        if tables is None:
            self.apply_update(method, learning_rate, momentum, regu_coef, iteration)
            objective = self.forward()
            self.backward()
            return objective
        step = gpu_update.step_block(method, learning_rate, momentum, iteration)
        return self._graph_step("solver", tables, step, AFTER_UPDATE_NOTE)

    def _numpy_update(self, method, learning_rate, momentum, regu_coef, iteration):
        with self.cupy.cuda.Device(self.backend.device):
            method.numpy_update(self, learning_rate, momentum, regu_coef, iteration)

    def _set_step_block(self, step) -> None:
        # The block keeps its values between steps, so a step with the same
        # learning rate and momentum as the last skips the copy.
        if not np.array_equal(step, self.host_step_block):
            with self.cupy.cuda.Device(self.backend.device):
                self.step_block.set(step, stream=self.stream)
            self.host_step_block = step

    def _graph_step(self, kind: str, tables, step, loss_note: str) -> float:
        """Load the next batch, enqueue the ``kind`` step's calls, read the
        batch after it ahead and wait; return the objective. ``loss_note``
        ends the message of a NaN loss."""
        self._check_alive()
        self.forward_done = False
        n_valid = self.load_batch()
        self._keep_streams()
        # The solver step's update is the first of its enqueued calls.
        self.step_updated = kind == "solver"
        if step is not None:
            self._set_step_block(step)
        calls = self._step_calls(kind, tables)
        self.graphs.run(tables, calls, n_valid, kind)
        self._read_ahead()
        # The backward steps run even after the loss check failed, and then
        # leave gradients of the failed pass
        # (non_finite_parameters.gradient_origin).
        self.grads_overwritten = True
        self._finish(loss_note)
        self.grads_overwritten = False
        self._collect_outputs()
        return self._record_objective(n_valid)

    def _step_calls(self, kind: str, tables):
        """Return the calls of one step with ``tables``, built once per
        tables: for "gradients" forward, the loss check and backward without
        the layers that tables.skipped names; "train" adds the update after
        them and "solver" before them."""
        cached = self._step_cache.get(kind)
        if cached is not None and cached[0] is tables:
            return cached[1]
        backward = [
            call
            for index, calls in self.backward_by_layer
            if index not in tables.skipped
            for call in calls
        ]
        calls = [*self.forward_calls, self.check_call, *backward]
        if kind != "gradients":
            update = gpu_update.update_calls(self, tables)
            calls = [*calls, *update] if kind == "train" else [*update, *calls]
        self._step_cache[kind] = (tables, calls)
        return calls

    @holds_run_lock
    def forward_layer(self, name: str, n_valid: int | None = None):
        """Run one layer's forward steps on the current blob contents (for tests)."""
        steps = self.program.layers[self.ir.layer(name).index].forward
        n_valid = self._batch_size() if n_valid is None else n_valid
        with self.cupy.cuda.Device(self.backend.device):
            calls = [self._bind(step) for step in steps]
        self._run(calls, n_valid)

    @holds_run_lock
    def backward_layer(self, name: str):
        """Run one layer's backward steps on the current diffs (for tests)."""
        steps = self.program.layers[self.ir.layer(name).index].backward
        with self.cupy.cuda.Device(self.backend.device):
            calls = [self._bind(step) for step in steps]
        self._run(calls, self._batch_size())

    def synchronize(self):
        """Wait until every step enqueued so far has finished (for timing)."""
        self.stream.synchronize()

    def _statistics_counters(self) -> list:
        # The kernels count on the device, and statistics() reads the host
        # copies that each step's report brings back.
        return super()._statistics_counters() + [
            self.device_states[info.name]
            for info in self.ir.layers
            if info.layer.has_stats
        ]

    def _on_device(self):
        return self.cupy.cuda.Device(self.backend.device)

    def reset_statistics(self):
        super().reset_statistics()
        with self._on_device():
            for info in self.ir.layers:
                if info.layer.has_stats:
                    self.device_states[info.name][...] = 0

    @holds_run_lock
    def destroy(self):
        """Wait for the net's streams, then drop the device memory and
        close the data sources."""
        # A copy of a batch read ahead may still be queued on the copy
        # stream, which CuPy's default stream does not wait for. It must not
        # write into memory that CuPy hands out again.
        with self._on_device():
            for stream in (self.copy_stream, self.stream):
                try:
                    stream.synchronize()
                except self.cupy.cuda.runtime.CUDARuntimeError as error:
                    logger.warning(
                        "net '%s': waiting for a stream failed while destroying "
                        "the net: %s",
                        self.name,
                        error,
                    )
        super().destroy()
        if self.cublas is not None:
            with self._on_device():
                self.cublas.close()
        self.arena = self.report_block = None
        self.state_block = self.status_block = None
        self.forward_calls = self.backward_calls = []
