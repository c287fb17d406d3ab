"""Random whole nets: GPUNet on the host stand-in against the CPU Net.

Each case builds one net of random_nets.py on the CPU backend and on
GPUBackend with the CuPy stand-in of host_cupy.py, both in float64. The GPU
net starts from the CPU net's parameters, random streams and data source
state. Both then run a forward and a backward pass and four training steps.
Both nets must expose the same blobs and diffs, and these (except diffs
that a later backward pass rewrites), every loss accumulator, statistic,
parameter gradient and parameter, and what the output layers collected
must agree to 1e-9. The cases cover -O0 and -O1 with the memory
arena, steps with and without CUDA graphs, SGD, Nesterov and Adam, the
solver's order of steps, the data layers that GPUNet reads ahead (memory,
HDF5 and asynchronous HDF5, shuffled, with partial batches, and two sources
whose epochs end at different steps), output layers, frozen layers, keep=,
force_backward and the test phase.

Outside pytest, ``python tests/test_gpu_random_nets.py FIRST COUNT`` runs
COUNT seeds from FIRST, each at -O0 and -O1 with options drawn from the
seed, and prints each mismatch.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import host_cupy
import numpy as np
import pytest
from random_nets import NetGenerator

from mochac import layers as L
from mochac.errors import MochacError
from mochac.runtime import cublas_direct
from mochac.runtime.backend import CPUBackend
from mochac.runtime.freeze import freeze
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.gpu_net import GPUNet
from mochac.runtime.net import Net
from mochac.runtime.solver import SGD, Adam, Nesterov

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)

TOLERANCE = 1e-9
METHODS = {"sgd": SGD, "nesterov": Nesterov, "adam": Adam}


@dataclass(frozen=True)
class Case:
    """The options of one comparison of a random net on both backends.

    ``data`` is "memory", "hdf5" or "async" (AsyncHDF5DataLayer).
    ``extra_samples`` repeats that many samples at the end of the data, so
    each epoch ends with a partial batch. ``outputs`` adds a
    MemoryOutputLayer ("memory") or an HDF5OutputLayer ("hdf5") on the last
    two blobs that are no data layer's tops. ``freeze_first`` freezes the
    first layer with parameters, and ``keep_middle`` keeps the middle blob.
    ``steps`` is "train" (train_step) or "solver" (the solver's order:
    forward_backward, then solver_step and one apply_update).
    ``second_source`` moves the last data top into a second data layer of
    that kind, which repeats ``second_extra_samples`` samples, so the two
    sources' epochs end at different steps.
    """

    seed: int
    opt_level: int = 1
    graphs: bool = True
    method: str = "sgd"
    steps: str = "train"
    data: str = "memory"
    shuffle: bool = False
    extra_samples: int = 0
    outputs: tuple[str, ...] = ()
    freeze_first: bool = False
    keep_middle: bool = False
    force_backward: bool = False
    phase: str | None = None
    disable: tuple[str, ...] = ()
    second_source: str | None = None
    second_extra_samples: int = 0


CASES = [
    Case(seed=6, opt_level=0, method="nesterov", data="hdf5", shuffle=True),
    Case(
        seed=3,
        method="adam",
        steps="solver",
        data="async",
        shuffle=True,
        extra_samples=1,
        outputs=("hdf5",),
    ),
    Case(seed=10, graphs=False, outputs=("memory",), keep_middle=True),
    Case(
        seed=21,
        method="nesterov",
        freeze_first=True,
        force_backward=True,
        second_source="hdf5",
    ),
    Case(seed=22, opt_level=0, steps="solver", extra_samples=1, phase="test"),
    Case(
        seed=8,
        data="hdf5",
        extra_samples=2,
        second_source="memory",
        second_extra_samples=1,
    ),
]


@pytest.fixture
def cupy(monkeypatch):
    """Install the host stand-in for CuPy and return it."""
    return host_cupy.install(monkeypatch)


def data_layer(name, kind, tops, arrays, batch_size, shuffle, path):
    """Return a data layer of ``kind`` that serves ``arrays`` as ``tops``.
    HDF5 layers read them from a file written at ``path``."""
    if kind == "memory":
        return L.MemoryDataLayer(
            name=name, batch_size=batch_size, tops=tops, data=arrays
        )
    with h5py.File(path, "w") as handle:
        for top, array in zip(tops, arrays, strict=True):
            handle[top] = array
    listing = path.with_suffix(".txt")
    listing.write_text(f"{path}\n")
    if kind == "hdf5":
        layer_class, options = L.HDF5DataLayer, {}
    else:
        # A chunk smaller than an epoch makes the reader refill it.
        layer_class, options = L.AsyncHDF5DataLayer, {"chunk_size": 3}
    return layer_class(
        name=name,
        source=str(listing),
        batch_size=batch_size,
        tops=tops,
        shuffle=shuffle,
        **options,
    )


def data_layers(case, generator, folder, tag):
    """Return the case's data layers over the generator's arrays."""
    tops = list(generator.data_tops)
    arrays = list(generator.data_arrays)
    second = []
    if case.second_source and len(tops) > 1:
        top, array = tops.pop(), arrays.pop()
        extra = array[: case.second_extra_samples]
        second = [
            data_layer(
                "data_b",
                case.second_source,
                (top,),
                [np.concatenate([array, extra])],
                generator.n,
                case.shuffle,
                folder / f"data_b_{tag}.h5",
            )
        ]
    arrays = [np.concatenate([a, a[: case.extra_samples]]) for a in arrays]
    first = data_layer(
        "data",
        case.data,
        tuple(tops),
        arrays,
        generator.n,
        case.shuffle,
        folder / f"data_{tag}.h5",
    )
    return [first, *second]


def compute_blobs(generator):
    return [blob for blob in generator.shapes if blob not in generator.data_tops]


def build_layers(case, folder, tag):
    """Return the case's net as layers, and the generator that drew it.
    ``tag`` keeps the two nets' files apart."""
    generator = NetGenerator(case.seed)
    layers = generator.build()
    layers[:1] = data_layers(case, generator, folder, tag)
    bottoms = compute_blobs(generator)[-2:]
    for index, kind in enumerate(case.outputs):
        name = f"output{index}"
        if kind == "memory":
            layers.append(L.MemoryOutputLayer(name=name, bottoms=bottoms))
        else:
            filename = str(folder / f"{name}_{tag}.h5")
            layers.append(
                L.HDF5OutputLayer(name=name, bottoms=bottoms, filename=filename)
            )
    return layers, generator


def twin_nets(case, folder):
    """Return a CPU net and a GPU net of ``case`` in the same state."""
    _, generator = build_layers(case, folder, "probe")
    options = {
        "opt_level": case.opt_level,
        "disable": case.disable,
        "phase": case.phase,
        "force_backward": case.force_backward,
    }
    if case.keep_middle:
        blobs = compute_blobs(generator)
        options["keep"] = [blobs[len(blobs) // 2]]
    cpu_backend = CPUBackend(dtype=np.float64, seed=case.seed, threads=1)
    cpu = Net("cpu", cpu_backend, build_layers(case, folder, "cpu")[0], **options)
    gpu_backend = GPUBackend(dtype=np.float64, seed=case.seed, graphs=case.graphs)
    gpu = GPUNet("gpu", gpu_backend, build_layers(case, folder, "gpu")[0], **options)
    for layer, params in cpu.params.items():
        for name, array in params.items():
            gpu.params[layer][name][...] = gpu.cupy.asarray(array)
    for key, state in cpu.rng_states.items():
        gpu.rng_states[key][...] = gpu.cupy.asarray(state)
    for index, source in cpu.sources.items():
        state = source.state_dict()
        gpu.data_source(cpu.ir.layers[index].name).load_state_dict(state)
    if case.freeze_first and generator.param_layers:
        freeze(cpu, generator.param_layers[0])
        freeze(gpu, generator.param_layers[0])
    return cpu, gpu


def assert_close(expected, got, description):
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=TOLERANCE,
        atol=TOLERANCE,
        err_msg=description,
    )


def diffs_written_in_place(net):
    """Return the blobs whose diff a later backward pass rescales or adds
    to, so that after backward() it no longer contains the blob's own diff:
    the tops of fused neurons and the blobs that share a diff with another."""
    rewritten = set()
    for name, blob in net.ir.blobs.items():
        producer = net.ir.layers[blob.producer]
        shares_diff = blob.diff_alias is not None and not producer.eliminated
        if producer.fuse_neuron or shares_diff:
            rewritten.add(name)
    return rewritten


def assert_same_views(cpu_views, gpu_views, description, skip=()):
    """Assert that two nets' views hold the same arrays. GPUNet's ``states``
    are host arrays, and its other views device arrays."""
    assert set(gpu_views) == set(cpu_views), description
    for name, array in cpu_views.items():
        if name not in skip:
            got = gpu_views[name]
            if not isinstance(got, np.ndarray):
                got = got.get()
            assert_close(array, got, f"{description} {name}")


def assert_same_params(cpu, gpu):
    for layer, params in cpu.params.items():
        for name, array in params.items():
            got = gpu.params[layer][name].get()
            assert_close(array, got, f"parameter {layer}.{name}")


def assert_same_grads(cpu, gpu):
    assert set(gpu.grads) == set(cpu.grads)
    for layer, grads in cpu.grads.items():
        for name, array in grads.items():
            got = gpu.grads[layer][name].get()
            assert_close(array, got, f"gradient {layer}.{name}")


def assert_same_statistics(cpu, gpu):
    expected, got = cpu.statistics(), gpu.statistics()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert_close(value, got[name], f"statistic {name}")


def assert_same_outputs(cpu, gpu):
    for name, state in cpu.output_states.items():
        if not hasattr(state, "outputs"):
            continue
        got = gpu.output_states[name].outputs
        assert len(got) == len(state.outputs), name
        for bottom, (expected_batches, got_batches) in enumerate(
            zip(state.outputs, got, strict=True)
        ):
            assert len(got_batches) == len(expected_batches), f"{name}[{bottom}]"
            for batch, (a, b) in enumerate(
                zip(expected_batches, got_batches, strict=True)
            ):
                assert_close(a, b, f"output {name}[{bottom}] batch {batch}")


def assert_same_output_files(case, folder):
    for index, kind in enumerate(case.outputs):
        if kind != "hdf5":
            continue
        cpu_path = folder / f"output{index}_cpu.h5"
        gpu_path = folder / f"output{index}_gpu.h5"
        with h5py.File(cpu_path) as expected, h5py.File(gpu_path) as got:
            assert set(got) == set(expected)
            for dataset in expected:
                assert_close(expected[dataset][()], got[dataset][()], dataset)


def run_steps(case, net):
    """Run four training steps of ``case`` on ``net``; return the objectives."""
    method = METHODS[case.method]()
    regu_coef = 0.001
    objectives = []
    if case.steps == "train":
        for iteration in range(4):
            lr = 0.05 / (1 + iteration)
            step = net.train_step(method, lr, 0.9, regu_coef, iteration)
            objectives.append(step)
        return objectives
    objectives.append(net.forward_backward(method, regu_coef))
    for iteration in range(4):
        lr = 0.05 / (1 + iteration)
        if iteration == 1:
            net.apply_update(method, lr, 0.9, regu_coef, iteration)
            objectives.append(net.forward_backward(method, regu_coef))
        else:
            step = net.solver_step(method, lr, 0.9, regu_coef, iteration)
            objectives.append(step)
    return objectives


def compare_case(case, folder, expect_training=True):
    """Run ``case`` on both backends and assert that they agree.

    ``expect_training`` also asserts that the net has parameters and that
    the steps changed one, which drawn cases need not satisfy."""
    cpu, gpu = twin_nets(case, folder)
    if case.opt_level == 1 and "plan_memory" not in case.disable:
        assert gpu.plan is not None
    start = {
        (layer, name): array.copy()
        for layer, params in cpu.params.items()
        for name, array in params.items()
    }
    if expect_training:
        assert start, "the net has no parameters to train"
    assert_close(cpu.forward(), gpu.forward(), "objective")
    assert_same_views(cpu.blobs, gpu.blobs, "blob")
    assert_same_views(cpu.states, gpu.states, "state")
    assert_same_statistics(cpu, gpu)

    cpu.backward()
    gpu.backward()
    skip = diffs_written_in_place(cpu) | diffs_written_in_place(gpu)
    assert_same_views(cpu.diffs, gpu.diffs, "diff", skip)
    assert_same_grads(cpu, gpu)

    expected = run_steps(case, cpu)
    assert_close(expected, run_steps(case, gpu), "step objectives")
    assert_same_params(cpu, gpu)
    if expect_training:
        moved = [
            key
            for key, array in start.items()
            if np.any(cpu.params[key[0]][key[1]] != array)
        ]
        assert moved, "no parameter changed in the training steps"
    assert_same_statistics(cpu, gpu)
    assert_same_outputs(cpu, gpu)
    for index, source in cpu.sources.items():
        name = cpu.ir.layers[index].name
        expected_state = source.state_dict()
        got_state = gpu.data_source(name).state_dict()
        assert got_state["position"] == expected_state["position"], name
        assert got_state["epoch"] == expected_state["epoch"], name

    # A forward pass after the training steps reads the batch that follows them.
    cpu.reset_statistics()
    gpu.reset_statistics()
    assert_close(cpu.forward(), gpu.forward(), "objective after the steps")
    assert_same_views(cpu.blobs, gpu.blobs, "blob after the steps")
    assert_same_statistics(cpu, gpu)
    cpu.destroy()
    gpu.destroy()
    assert_same_output_files(case, folder)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"seed{case.seed}")
def test_random_net_matches_cpu(cupy, case, tmp_path):
    compare_case(case, tmp_path)


def drawn_case(seed, opt_level):
    """Return a case with options drawn from ``seed``, for the command line."""
    rng = np.random.default_rng(seed + 7 * 10**6)
    generator = NetGenerator(seed)
    generator.build()
    return Case(
        seed=seed,
        opt_level=opt_level,
        graphs=bool(rng.random() < 0.6),
        method=str(rng.choice(list(METHODS))),
        steps=str(rng.choice(["train", "solver"])),
        data=str(rng.choice(["memory", "hdf5", "async"])),
        shuffle=bool(rng.random() < 0.6),
        extra_samples=int(rng.integers(0, generator.n)),
        outputs=tuple(
            str(kind)
            for kind in rng.choice(["memory", "hdf5"], size=int(rng.integers(0, 2)))
        ),
        freeze_first=bool(rng.random() < 0.3),
        keep_middle=bool(rng.random() < 0.3),
        force_backward=bool(rng.random() < 0.15),
        phase="test" if rng.random() < 0.15 else None,
        second_source=str(rng.choice(["memory", "hdf5"]))
        if rng.random() < 0.4
        else None,
        second_extra_samples=int(rng.integers(0, generator.n + 1)),
    )


def main():
    """Compare COUNT seeds from FIRST at -O0 and -O1 and print the results.

    A net that raises a mochac error (a loss that diverges, a label out of
    range) prints RAISED with the error, on whichever net raised first.
    """
    first, count = int(sys.argv[1]), int(sys.argv[2])
    sys.modules["cupy"] = host_cupy.module()
    sys.modules["cupyx"] = host_cupy.cupyx_module()
    path = host_cupy.fake_cublas_path()
    cublas_direct.find_cublas = lambda cupy: path
    logging.disable(logging.WARNING)
    for seed in range(first, first + count):
        for opt_level in (0, 1):
            case = drawn_case(seed, opt_level)
            with tempfile.TemporaryDirectory() as folder:
                try:
                    compare_case(case, Path(folder), expect_training=False)
                except MochacError as error:
                    print(f"RAISED {case}: {type(error).__name__}: {error}")
                except AssertionError as error:
                    print(f"FAIL {case}: {error}")
                else:
                    print(f"OK {seed} -O{opt_level}")


if __name__ == "__main__":
    main()
