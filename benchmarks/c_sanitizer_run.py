"""Run the CPU backend's generated C under AddressSanitizer or UBSan.

    python benchmarks/c_sanitizer_run.py address --mnist-data examples/mnist/data
    python benchmarks/c_sanitizer_run.py undefined --threads 2

Every net that the run compiles is built with the sanitizer's flags, passed
through CFLAGS and LDFLAGS (which the build cache key includes) into its own
cache folder. The run has four steps, each in a child process with the
sanitizer's environment:

1. self-check: a one-layer net with a fault added to its generated C (a
   write one element past a blob for address, a signed overflow for
   undefined) must stop with a sanitizer report, so the setup is known to
   catch errors;
2. the layer, pass and solver test files of TEST_FILES, one pytest process
   each, so a report in one file does not hide the others;
3. random nets of tests/random_nets.py, each compared at -O0, at -O1 and at
   -O1 without plan_memory;
4. LeNet training on MNIST with examples/mnist/train.py, when --mnist-data
   names a folder that examples/mnist/prepare_data.py filled.

plan_memory puts a net's blobs in one arena allocation, where AddressSanitizer
has no redzones between them. Steps 3 and 4 therefore poison the arena's
bytes that no blob covers (poison_arena_gaps), which catches an overflow
into alignment padding, and step 3 also runs each net without the arena.

With --threads above 1, the children also set PARALLEL_MIN_FLOPS
(mochac/codegen/c_source.py) to 0, so that the small nets of the tests run
their OpenMP loops on every thread too instead of on the calling thread alone.

Prints one line per step and a summary of tests and sanitizer reports, and
exits with status 1 when a step failed or a report was found. Each step's
output is kept in --log-dir.

address preloads gcc's libasan into the uninstrumented Python, with leak
checks off (Python's own allocations would be reported), a 64-byte redzone
and allocator_may_return_null=1 so the tests of allocation failures get
NULL. undefined adds float-cast-overflow, which -fsanitize=undefined leaves
out in GCC, and -fno-wrapv, because Python's CFLAGS carry -fwrapv, which
makes signed overflow defined and so invisible to UBSan.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEST_FILES = [
    "tests/test_accuracy.py",
    "tests/test_argmax.py",
    "tests/test_binary_accuracy.py",
    "tests/test_channel_pooling.py",
    "tests/test_concat.py",
    "tests/test_convolution.py",
    "tests/test_convolution_chunks.py",
    "tests/test_convolution_direct.py",
    "tests/test_convolution_neurons.py",
    "tests/test_cpu_backend.py",
    "tests/test_crop.py",
    "tests/test_data_layers.py",
    "tests/test_dropout.py",
    "tests/test_elementwise.py",
    "tests/test_elementwise_losses.py",
    "tests/test_freeze.py",
    "tests/test_index2onehot.py",
    "tests/test_inner_product.py",
    "tests/test_lenet_memory.py",
    "tests/test_loss_class_weights.py",
    "tests/test_loss_valid_samples.py",
    "tests/test_losses_share_diff.py",
    "tests/test_lrn.py",
    "tests/test_multinomial_logistic_loss.py",
    "tests/test_native_update.py",
    "tests/test_net_errors.py",
    "tests/test_net_memory.py",
    "tests/test_net_threads.py",
    "tests/test_neuron_edge_values.py",
    "tests/test_neurons.py",
    "tests/test_output_layers.py",
    "tests/test_param_key_sharing.py",
    "tests/test_partial_backward.py",
    "tests/test_passes.py",
    "tests/test_plan_memory.py",
    "tests/test_pooling.py",
    "tests/test_pooling_neuron.py",
    "tests/test_power.py",
    "tests/test_random_normal.py",
    "tests/test_reference_cases.py",
    "tests/test_regularizers_constraints.py",
    "tests/test_softlabel_softmax_loss.py",
    "tests/test_softmax.py",
    "tests/test_softmax_loss.py",
    "tests/test_solver.py",
    "tests/test_solvers_methods.py",
    "tests/test_square_loss.py",
    "tests/test_tied_inner_product.py",
    "tests/test_untrained_layers.py",
    "tests/test_utility_layers.py",
]

# Tests that cannot run under AddressSanitizer, with the reason. LD_PRELOAD
# reaches every child process of a test too.
ADDRESS_DESELECTED = {
    "tests/test_net_memory.py::test_net_too_large_to_allocate": "its child caps "
    "the address space with RLIMIT_AS, so AddressSanitizer cannot map its shadow "
    "memory there",
    "tests/test_pooling_neuron.py::test_pool_neuron_nvcc_compiles": "nvcc -ptx "
    "(CUDA 13.0) ends with a segmentation fault when libasan is preloaded",
}

# The first line of a report: AddressSanitizer's, and UBSan's "file:line:
# runtime error: ..." line.
REPORT = re.compile(r"ERROR: AddressSanitizer|runtime error: ")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")
# Set in the children when every net's OpenMP loops should run in parallel.
PARALLEL_VARIABLE = "MOCHAC_SANITIZER_PARALLEL"
# Tolerance of the -O0 / -O1 comparison of random nets, in float64.
TOLERANCE = 1e-9


def compiler_library(name: str) -> str:
    """Return the path of gcc's runtime library ``name`` (libasan.so)."""
    result = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True
    )
    path = result.stdout.strip()
    if not os.path.isabs(path):
        sys.exit(f"gcc does not know {name}; install gcc's sanitizer runtimes")
    return path


def sanitizer_environment(mode: str, cache_dir: Path, threads: int) -> dict:
    """Return the environment of a child process whose nets build with ``mode``."""
    env = dict(os.environ)
    if mode == "address":
        flags = "-fsanitize=address -fno-omit-frame-pointer -g"
        env["LD_PRELOAD"] = compiler_library("libasan.so")
        env["ASAN_OPTIONS"] = (
            "detect_leaks=0:redzone=64:allocator_may_return_null=1:"
            "verify_asan_link_order=0"
        )
    else:
        flags = (
            "-fsanitize=undefined,float-cast-overflow -fno-sanitize-recover=all "
            "-fno-wrapv -fno-omit-frame-pointer -g"
        )
        env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    env["CFLAGS"] = flags
    env["LDFLAGS"] = flags
    env["MOCHAC_CACHE_DIR"] = str(cache_dir)
    env["OMP_NUM_THREADS"] = str(threads)
    if threads > 1:
        env[PARALLEL_VARIABLE] = "1"
    # The benchmarks folder makes this file importable as the pytest plugin
    # that applies PARALLEL_VARIABLE.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
        + [env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def parallelize_small_nets():
    """Make every net built from now on run its OpenMP loops in parallel,
    when PARALLEL_VARIABLE is set."""
    if os.environ.get(PARALLEL_VARIABLE) == "1":
        from mochac.codegen import c_source

        c_source.PARALLEL_MIN_FLOPS = 0


def pytest_configure(config):
    """Apply PARALLEL_VARIABLE in a pytest child, which loads this file with -p."""
    parallelize_small_nets()


class Step:
    """The outcome of one child process: exit status, test counts, reports."""

    def __init__(self, name, command, env, log_dir, timeout):
        self.name = name
        self.log = log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        started = time.perf_counter()
        with open(self.log, "w") as output:
            try:
                self.returncode = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                self.returncode = "timeout"
        self.seconds = time.perf_counter() - started
        text = self.log.read_text(errors="replace")
        self.reports = len(REPORT.findall(text))
        self.counts = {}
        lines = [line for line in text.splitlines() if PYTEST_COUNT.search(line)]
        if lines:
            for number, word in PYTEST_COUNT.findall(lines[-1]):
                word = "errors" if word.startswith("error") else word
                self.counts[word] = self.counts.get(word, 0) + int(number)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.reports == 0

    def line(self) -> str:
        counts = ", ".join(f"{n} {word}" for word, n in self.counts.items())
        status = "ok" if self.ok else f"FAILED (exit status {self.returncode})"
        return (
            f"{self.name}: {status}, {self.reports} sanitizer reports"
            f"{', ' + counts if counts else ''} ({self.seconds:.0f} s, {self.log})"
        )


# --- child modes ---------------------------------------------------------------


def run_faulty_net(mode: str):
    """Build a one-layer net whose generated C has a fault, and run it.

    Returns normally only when the sanitizer missed the fault.
    """
    import numpy as np

    import mochac.runtime.net as net_module
    from mochac import (
        CPUBackend,
        InnerProductLayer,
        MemoryDataLayer,
        Net,
        SquareLossLayer,
    )

    rng = np.random.default_rng(0)
    data = [rng.standard_normal((4, 3)), np.zeros((4, 2))]
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=data, tops=["x", "t"]),
        InnerProductLayer(name="ip", bottoms=["x"], tops=["y"], output_dim=2),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]
    plain = Net("plain", CPUBackend(seed=0, threads=1), layers, opt_level=0)
    plain.forward()
    target = plain.slots.get("data", "y")
    if mode == "address":
        fault = f"((real *)p[{target.index}])[{int(np.prod(target.shape))}] = 1;"
    else:
        fault = "{ volatile int big = 2147483647; big = big + n_valid; }"
    opening = "int mochac_forward(void **p, struct mochac_status *st, int n_valid)\n{\n"
    build_extension = net_module.build_extension

    def build_with_fault(source, name, **options):
        if opening not in source:
            sys.exit("self-check: mochac_forward not found in the generated C")
        return build_extension(
            source.replace(opening, opening + fault, 1), name, **options
        )

    net_module.build_extension = build_with_fault
    faulty = Net("faulty", CPUBackend(seed=0, threads=1), layers, opt_level=0)
    faulty.forward()
    print("self-check: the fault ran without a sanitizer report")


def run_net(layers, opt_level, disable, seed):
    """Return the objectives, parameter gradients and parameters of a net
    after a forward and backward pass and three SGD steps."""
    import numpy as np

    from mochac import CPUBackend, Net
    from mochac.runtime.solver import SGD

    net = Net(
        f"random-O{opt_level}",
        CPUBackend(
            dtype=np.float64, seed=seed, threads=int(os.environ["OMP_NUM_THREADS"])
        ),
        layers,
        opt_level=opt_level,
        disable=disable,
    )
    objectives = [net.forward()]
    net.backward()
    grads = {
        (layer, name): array.copy()
        for layer, arrays in net.grads.items()
        for name, array in arrays.items()
    }
    method = SGD()
    for _ in range(3):
        method.update(net, 0.05, 0.9, 0.001)
        objectives.append(net.forward())
        net.backward()
    params = {
        (layer, name): array.copy()
        for layer, arrays in net.params.items()
        for name, array in arrays.items()
    }
    return objectives, grads, params


def poison_arena_gaps():
    """Make AddressSanitizer report accesses to the bytes of each -O1 arena
    allocation that no planned slot covers (alignment padding), when libasan
    is loaded.

    The arena is one allocation, so without this an overflow from one slot
    into the next goes unreported. Slots that share bytes at different
    times stay addressable, so an overflow into such a neighbor still does.
    """
    import ctypes

    try:
        poison = ctypes.CDLL(None).__asan_poison_memory_region
    except AttributeError:
        return
    unpoison = ctypes.CDLL(None).__asan_unpoison_memory_region
    for function in (poison, unpoison):
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        function.restype = None
    from mochac.runtime.net import Net

    allocate = Net._allocate

    def allocate_and_poison(net):
        allocate(net)
        if net.plan is None:
            return
        base = net.arena.ctypes.data
        # The arena is a 64-byte aligned view of a larger allocation.
        raw = net.arena.base
        # NumPy keeps freed buffers under 1 KiB for reuse without free(), so
        # the poison is lifted when the array is deleted, not by ASan's free.
        weakref.finalize(raw, unpoison, raw.ctypes.data, raw.nbytes)
        if base > raw.ctypes.data:
            poison(raw.ctypes.data, base - raw.ctypes.data)
        raw_end = raw.ctypes.data + raw.nbytes - base
        ends = [(net.plan.arena_bytes, raw_end)]
        spans = sorted(
            (offset, offset + net.slots.slots[index].nbytes)
            for index, offset in net.plan.offsets.items()
        )
        covered_to = 0
        for begin, end in spans + ends:
            if begin > covered_to:
                poison(base + covered_to, begin - covered_to)
            covered_to = max(covered_to, end)

    Net._allocate = allocate_and_poison


def run_random_nets(first: int, count: int):
    """Compare random nets at -O0, -O1 and -O1 without plan_memory; exit
    with status 1 when any differ."""
    import numpy as np
    from random_nets import NetGenerator

    poison_arena_gaps()
    variants = [(1, ()), (1, ("plan_memory",))]
    mismatches = 0
    for seed in range(first, first + count):
        expected = run_net(NetGenerator(seed).build(), 0, (), seed)
        for opt_level, disable in variants:
            got = run_net(NetGenerator(seed).build(), opt_level, disable, seed)
            label = f"seed {seed} at -O{opt_level} without {list(disable)}"
            try:
                np.testing.assert_allclose(
                    got[0], expected[0], rtol=TOLERANCE, atol=TOLERANCE
                )
                for part in (1, 2):
                    assert got[part].keys() == expected[part].keys()
                    for key, array in expected[part].items():
                        np.testing.assert_allclose(
                            got[part][key], array, rtol=TOLERANCE, atol=TOLERANCE
                        )
            except AssertionError as error:
                mismatches += 1
                print(f"{label}: differs from -O0: {error}")
        print(f"seed {seed}: compared", flush=True)
    print(f"{count} random nets, {mismatches} mismatches")
    sys.exit(1 if mismatches else 0)


# --- parent ----------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["address", "undefined"])
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS of the children"
    )
    parser.add_argument(
        "--tests",
        nargs="*",
        default=TEST_FILES,
        help="pytest files to run (default: the layer, pass and solver tests)",
    )
    parser.add_argument(
        "--random-nets",
        type=int,
        default=30,
        help="random nets of tests/random_nets.py to compare (seeds 0 to N-1)",
    )
    parser.add_argument(
        "--mnist-data",
        type=Path,
        help="MNIST folder from prepare_data.py --out; the LeNet step is skipped "
        "without it",
    )
    parser.add_argument(
        "--lenet-iterations", type=int, default=300, help="LeNet training iterations"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="build cache of the sanitized nets (default: a mochac-sanitizer-MODE "
        "folder in the temporary folder)",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="folder for each step's output (default: new)"
    )
    parser.add_argument(
        "--timeout", type=int, default=3600, help="seconds each step may run"
    )
    return parser.parse_args()


def main():
    args = parse_args()
    temporary = Path(tempfile.gettempdir())
    cache_dir = args.cache_dir or temporary / f"mochac-sanitizer-{args.mode}"
    log_dir = args.log_dir or Path(
        tempfile.mkdtemp(prefix=f"mochac-sanitizer-{args.mode}-")
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    env = sanitizer_environment(args.mode, cache_dir, args.threads)
    python = sys.executable
    script = str(Path(__file__).resolve())
    print(f"{args.mode}: CFLAGS={env['CFLAGS']!r}, cache {cache_dir}", flush=True)
    if args.mode == "address":
        for test_id, reason in ADDRESS_DESELECTED.items():
            print(f"deselected {test_id}: {reason}")

    check = Step(
        "self-check", [python, script, "--inject", args.mode], env, log_dir, 600
    )
    caught = check.returncode != 0 and check.reports > 0
    print(f"self-check: fault {'caught' if caught else 'MISSED'} ({check.log})")
    if not caught:
        sys.exit(1)

    steps = []
    for test_file in args.tests:
        command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-p", Path(__file__).stem, test_file]
        if args.mode == "address":
            for test_id in ADDRESS_DESELECTED:
                if test_id.startswith(f"{test_file}::"):
                    command += ["--deselect", test_id]
        steps.append(Step(test_file, command, env, log_dir, args.timeout))
        print(steps[-1].line(), flush=True)
    if args.random_nets:
        command = [python, script, "--random-nets", "0", str(args.random_nets)]
        steps.append(Step("random-nets", command, env, log_dir, args.timeout))
        print(steps[-1].line(), flush=True)
    if args.mnist_data is not None:
        snapshots = Path(tempfile.mkdtemp(prefix="mochac-sanitizer-snapshots-"))
        command = [
            python,
            script,
            "--with-poisoned-arenas",
            str(ROOT / "examples" / "mnist" / "train.py"),
            f"--max-iter={args.lenet_iterations}",
            f"--data={args.mnist_data}",
            f"--snapshots={snapshots}",
            f"--threads={args.threads}",
            "--seed=0",
        ]
        steps.append(Step("lenet", command, env, log_dir, args.timeout))
        print(steps[-1].line(), flush=True)

    totals = {}
    for step in steps:
        for word, n in step.counts.items():
            totals[word] = totals.get(word, 0) + n
    reports = sum(step.reports for step in steps)
    failed = [step.name for step in steps if not step.ok]
    tests = ", ".join(f"{n} {word}" for word, n in totals.items()) or "none"
    print(
        f"{args.mode}: {len(steps)} steps, tests {tests}; {reports} sanitizer "
        f"reports; failed steps: {', '.join(failed) or 'none'}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    parallelize_small_nets()
    if len(sys.argv) == 3 and sys.argv[1] == "--inject":
        run_faulty_net(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "--random-nets":
        run_random_nets(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--with-poisoned-arenas":
        # Runs a script (LeNet's train.py) with its -O1 arenas' gaps poisoned.
        poison_arena_gaps()
        sys.argv = sys.argv[2:]
        sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        main()
