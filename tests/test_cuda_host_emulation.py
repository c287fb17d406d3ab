"""The CUDA kernels and step lists, run on the host against the CPU backend.

tests/cuda_emulator.py compiles the generated CUDA as C++ and runs every
launch with its real grid and 256 threads per block, with the other steps on
NumPy arrays. So every kernel's indexing and every planner's GEMM shapes are
checked in float64 here, without a GPU. Successive iterations run the
threads in forward, reverse and shuffled order, and the emulator's race
check runs where noted, so a missing barrier or a race between threads
fails. tests/test_cuda_device.py repeats the comparison on a device.
"""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from cuda_emulator import HostRun, compile_for_host
from cuda_nets import BATCH, NETS

from mochac.bench.nets import cifar10_full, lenet
from mochac.codegen.cuda import build_cuda_program
from mochac.layers import (
    BinaryCrossEntropyLossLayer,
    InnerProductLayer,
    MemoryDataLayer,
    MultinomialLogisticLossLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
)
from mochac.passes.plan_memory import plan_memory
from mochac.runtime.backend import CPUBackend
from mochac.runtime.net import Net

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)
RTOL, ATOL = 1e-10, 1e-12
# The thread order of each iteration, in turn.
ITERATION_ORDERS = ("forward", "reverse", "shuffle")


def twin(name, factory, tmp_path_factory, plan=False, races=True, **options):
    """Return a CPU net and a host run of its CUDA program, sharing parameters
    and random streams. ``races`` turns on the emulator's race check."""
    cpu = Net(
        name, CPUBackend(dtype=np.float64, seed=5, threads=1), factory(), **options
    )
    ir, program = build_cuda_program(name, factory(), dtype=np.float64, **options)
    folder = tmp_path_factory.mktemp(name)
    library = compile_for_host(program, folder, name, races=races)
    offsets, arena_bytes = None, 0
    if plan:
        pinned = Net._pinned_slots(
            SimpleNamespace(ir=ir, keep=cpu.keep, slots=program.slots)
        )
        memory = plan_memory(program.slots, program.kernels, pinned)
        offsets, arena_bytes = memory.offsets, memory.arena_bytes
    run = HostRun(program, library, offsets, arena_bytes)
    for slot in program.slots.slots:
        if slot.kind == "param":
            run.arrays[slot.index][...] = cpu.backend.registry[slot.owner][slot.name]
        elif slot.kind == "rng":
            run.arrays[slot.index][...] = cpu.rng_states[f"{slot.owner}.{slot.name}"]
    return SimpleNamespace(cpu=cpu, ir=ir, program=program, run=run)


def step_both(pair, order, n_valid=BATCH):
    """Run one forward and backward on both, the host run's threads in
    ``order``; return the CPU objective."""
    pair.run.order = order
    objective = pair.cpu.forward()
    for source in pair.cpu.sources.values():
        for top in source.layer.tops:
            pair.run.array("data", top)[...] = pair.cpu.blobs[top]
    status = pair.run.run(pair.program.forward, n_valid)
    assert status.code == 0
    pair.cpu.backward()
    pair.run.run(pair.program.backward, n_valid)
    return objective


def assert_states_match(pair):
    for info in pair.ir.layers:
        if info.layer.has_loss or info.layer.has_stats:
            kind = "loss" if info.layer.has_loss else "accuracy"
            np.testing.assert_allclose(
                pair.run.array("state", info.name, kind),
                pair.cpu.states[info.name],
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"state of {info.name}",
            )


def assert_grads_match(pair):
    for layer, grads in pair.cpu.grads.items():
        for name, expected in grads.items():
            np.testing.assert_allclose(
                pair.run.array("grad", layer, name),
                expected,
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"gradient {layer}.{name}",
            )


@pytest.fixture(scope="module", params=sorted(NETS))
def every_blob_pair(request, tmp_path_factory):
    factory, opt_level = NETS[request.param]
    return twin(
        request.param,
        lambda: factory(np.float64),
        tmp_path_factory,
        opt_level=opt_level,
        disable=("plan_memory",),
        force_backward=True,
    )


def test_host_run_matches_every_blob(every_blob_pair):
    pair = every_blob_pair
    for order in ITERATION_ORDERS:
        step_both(pair, order)
        assert_states_match(pair)
        for kind, views in (("data", pair.cpu.blobs), ("diff", pair.cpu.diffs)):
            for blob, expected in views.items():
                np.testing.assert_allclose(
                    pair.run.array(kind, blob).reshape(expected.shape),
                    expected,
                    rtol=RTOL,
                    atol=ATOL,
                    err_msg=f"{kind} of {blob}",
                )
        assert_grads_match(pair)


def test_host_run_losses_valid_part(every_blob_pair):
    """With two valid samples, each loss's second state value (the valid
    samples' part) matches the CPU's, and differs from the batch value."""
    pair = every_blob_pair
    step_both(pair, "forward")
    cpu = pair.cpu
    cpu._check(cpu.lib.mochac_forward(cpu.pointers, cpu.status, 2))
    assert pair.run.run(pair.program.forward, 2).code == 0
    assert_states_match(pair)
    losses = [info.name for info in pair.ir.layers if info.layer.has_loss]
    for name in losses:
        batch_value, valid_part = cpu.states[name]
        assert valid_part != batch_value, name


def test_host_run_vision_fused(tmp_path_factory):
    factory, _ = NETS["vision"]
    pair = twin("fused", lambda: factory(np.float64), tmp_path_factory, opt_level=1)
    for order in ITERATION_ORDERS:
        step_both(pair, order)
        assert_states_match(pair)
        assert_grads_match(pair)


def test_host_run_lenet_in_planned_arena(tmp_path_factory):
    pair = twin("lenet", lambda: lenet(BATCH), tmp_path_factory, plan=True)
    assert pair.run.arena.nbytes > 0
    for order in ITERATION_ORDERS:
        step_both(pair, order)
        assert_states_match(pair)
        assert_grads_match(pair)


def test_host_run_cifar10_against_direct_cpu(tmp_path_factory):
    """The CPU runs the CIFAR-10 net's convolutions as direct code; the CUDA
    program lowers them to im2col, without the direct code's scratch."""
    # Batch 4: conv3's 4 x 8 x 8 positions are enough for direct code. The
    # race check would double the run time, and lenet and the vision net run
    # every template of this net with it.
    pair = twin(
        "cifar", lambda: cifar10_full(4), tmp_path_factory, plan=True, races=False
    )
    direct = [
        kernel.context["fn"]
        for kernel in pair.cpu.kernels
        if kernel.template == "c/convolution_direct.c.j2"
    ]
    assert direct == ["conv1", "conv2", "conv3"]
    for kernel in pair.program.kernels:
        assert kernel.template != "c/convolution_direct.c.j2"
    assert not [slot for slot in pair.program.slots.slots if slot.name == "padded"]
    for order in ITERATION_ORDERS:
        step_both(pair, order, n_valid=4)
        assert_states_match(pair)
        assert_grads_match(pair)


def test_host_run_reports_bad_label(tmp_path_factory):
    x = np.zeros((4, 3))
    y = np.array([[0.0], [1.0], [7.0], [9.0]])

    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
            SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        ]

    _, program = build_cuda_program("labels", layers(), dtype=np.float64)
    library = compile_for_host(program, tmp_path_factory.mktemp("labels"), "labels")
    run = HostRun(program, library)
    run.array("data", "label")[...] = y
    for order in ITERATION_ORDERS:
        run.order = order
        status = run.run(program.forward, 4)
        assert status.code == 1, order
        assert status.layer == 2, order
        assert status.index == 2, order
        assert status.value == 7.0, order


def guard_slot(run, kind, owner, guard_elements=64):
    """Move a slot of ``run`` to the front of a larger buffer and return the
    buffer's tail, which contains a sentinel that a write past the slot
    overwrites."""
    slot = run.program.slots.get(kind, owner)
    size = int(np.prod(slot.shape))
    buffer = np.full(size + guard_elements, -12345.0)
    buffer[:size] = 0
    run.arrays[slot.index] = buffer[:size].reshape(slot.shape)
    run.pointers[slot.index] = buffer.ctypes.data
    return buffer[size:]


@pytest.mark.parametrize("class_weights", [False, True])
@pytest.mark.parametrize("loss", [SoftmaxLossLayer, MultinomialLogisticLossLayer])
def test_bad_label_backward_in_bounds(tmp_path_factory, loss, class_weights):
    """A training step enqueues forward and backward with one status, so the
    backward of a loss runs after its forward rejected a label. It must not
    index memory with that label: it returns and leaves the diff zero. The
    guard shows a write past the diff, but not SoftmaxLoss's read past its
    class weights, which the zero diff covers."""
    x = np.ones((4, 3))
    # With label 9 of 3 classes at the last sample, MultinomialLogisticLoss
    # would write 6 elements past its bottom diff.
    y = np.array([[0.0], [1.0], [2.0], [9.0]])
    options = {"weights": np.array([1.0, 2.0, 3.0])} if class_weights else {}
    scores = "prob" if loss is MultinomialLogisticLossLayer else "out"

    def layers():
        chain = [
            MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
        ]
        if loss is MultinomialLogisticLossLayer:
            chain.append(SoftmaxLayer(name="softmax", bottoms=["out"], tops=["prob"]))
        chain.append(loss(name="loss", bottoms=[scores, "label"], **options))
        return chain

    name = f"{loss.__name__}_{class_weights}"
    _, program = build_cuda_program(name, layers(), dtype=np.float64)
    library = compile_for_host(program, tmp_path_factory.mktemp(name), name)
    run = HostRun(program, library)
    run.array("data", "data")[...] = x
    run.array("data", "label")[...] = y
    guard = guard_slot(run, "diff", scores)
    status = run.run(program.forward + program.backward, 4)
    assert status.code == 1
    assert status.index == 3
    assert np.all(guard == -12345.0)
    assert np.all(run.array("diff", scores) == 0)


def probability_run(tmp_path_factory, loss, y):
    def layers():
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[np.zeros((4, 3)), y]),
            loss(name="loss", bottoms=["data", "label"]),
        ]

    name = loss.__name__
    _, program = build_cuda_program(name, layers(), dtype=np.float64)
    library = compile_for_host(program, tmp_path_factory.mktemp(name), name)
    run = HostRun(program, library)
    run.array("data", "label")[...] = y
    return program, run


@pytest.mark.parametrize(
    ("loss", "picked", "reported"),
    # BinaryCrossEntropyLoss reports a prediction at its element index, and
    # MultinomialLogisticLoss the probability a label picks at the label's
    # position plus the number of positions (4).
    [
        (BinaryCrossEntropyLossLayer, (2, 1), 7),
        (MultinomialLogisticLossLayer, (2, 2), 6),
    ],
)
@pytest.mark.parametrize("value", [1.5, -0.5])
def test_host_run_reports_bad_probability(
    tmp_path_factory, loss, picked, reported, value
):
    y = np.array([[0.0], [1.0], [2.0], [1.0]])
    if loss is BinaryCrossEntropyLossLayer:
        y = np.full((4, 3), 0.5)
    program, run = probability_run(tmp_path_factory, loss, y)
    prob = np.full((4, 3), 0.25)
    prob[picked] = value
    run.array("data", "data")[...] = prob
    for order in ITERATION_ORDERS:
        run.order = order
        status = run.run(program.forward, 4)
        assert status.code == 1, order
        assert status.layer == 1, order
        assert status.index == reported, order
        assert status.value == value, order


@pytest.mark.parametrize(
    "loss", [BinaryCrossEntropyLossLayer, MultinomialLogisticLossLayer]
)
def test_host_run_nan_probability_gives_nan(tmp_path_factory, loss):
    y = np.array([[0.0], [1.0], [2.0], [1.0]])
    if loss is BinaryCrossEntropyLossLayer:
        y = np.full((4, 3), 0.5)
    program, run = probability_run(tmp_path_factory, loss, y)
    prob = np.full((4, 3), 0.25)
    prob[1, 1] = np.nan
    run.array("data", "data")[...] = prob
    status = run.run(program.forward, 4)
    assert status.code == 0
    assert np.isnan(run.array("state", "loss", "loss")[0])
