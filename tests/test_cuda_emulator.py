"""The host emulator of tests/cuda_emulator.py, on small kernels of its own.

The kernels are rendered into cuda/net.cu.j2, so they use the generated
source's MOCHAC_KERNEL, MOCHAC_BLOCK and mochac_block_sum. Some are
deliberately wrong, to show that the emulator fails on a missing barrier,
rejects a divergent one and finds races that no order of the threads shows.
"""

import ctypes
import shutil
import threading

import numpy as np
import pytest
from cuda_emulator import (
    ORDERS,
    EmulationError,
    Status,
    compile_source_for_host,
    launch,
)

from mochac.codegen.c_source import template_environment
from mochac.codegen.cuda.steps import BLOCK
from mochac.runtime.gpu_update import (
    MAX_BLOCKS,
    STEP_FIELDS,
    SUM_DTYPE,
    THREADS,
    UPDATE_DTYPE,
)
from mochac.version import __version__

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)

# mochac_block_sum with one barrier left out. Without the first, a thread
# adds a neighbour's entry that the neighbour may not have stored yet.
# Without the one in the loop, a thread goes on to the next level before
# the others finished this one.
BROKEN_SUMS = r"""
__device__ inline double sum_without_first_barrier(double value)
{
    __shared__ double partial[MOCHAC_BLOCK];
    partial[threadIdx.x] = value;
    for (int half = MOCHAC_BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    double total = partial[0];
    __syncthreads();
    return total;
}

__device__ inline double sum_without_loop_barrier(double value)
{
    __shared__ double partial[MOCHAC_BLOCK];
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = MOCHAC_BLOCK / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            partial[threadIdx.x] += partial[threadIdx.x + half];
    }
    double total = partial[0];
    __syncthreads();
    return total;
}
"""

SUMS = ("mochac_block_sum", "sum_without_first_barrier", "sum_without_loop_barrier")

# out[0] = the sum of x[0 .. n_valid - 1], with one of SUMS.
SUM_KERNEL = r"""
MOCHAC_KERNEL(total_by_{name})
{{
    const real *x = (const real *)p[0];
    real *out = (real *)p[1];
    double sum = 0;
    for (long long i = threadIdx.x; i < n_valid; i += MOCHAC_BLOCK)
        sum += x[i];
    sum = {name}(sum);
    if (threadIdx.x == 0)
        out[0] = (real)sum;
}}
"""

# Each thread takes the next entry of the sequence with atomicCAS and
# stores its global index there, so the sequence is the order the threads
# ran in. Thread 0 of block 0 stores the grid and block sizes.
RECORD_KERNEL = r"""
MOCHAC_KERNEL(record_order)
{
    int *next = (int *)p[0];
    int *sequence = (int *)p[1];
    int *shape = (int *)p[2];
    int entry;
    do
        entry = *next;
    while (atomicCAS(next, entry, entry + 1) != entry);
    sequence[entry] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        shape[0] = (int)gridDim.x;
        shape[1] = (int)blockDim.x;
    }
}
"""

# out[block] = a shared variable that no thread stored in this block yet.
UNSTORED_SHARED_KERNEL = r"""
MOCHAC_KERNEL(read_unstored_shared)
{
    __shared__ double cell;
    real *out = (real *)p[0];
    if (threadIdx.x == 0) {
        out[blockIdx.x] = (real)cell;
        cell = 1.0;
    }
}
"""

# Thread 5 fills a local array larger than its stack. Threads 0 to 4 have
# returned by then in forward order (no barrier), so the spill lands in
# their dead stacks, but it covers thread 5's canary word.
OVERFLOW_KERNEL = r"""
MOCHAC_KERNEL(overflow_stack)
{
    (void)p;
    if (threadIdx.x == 5) {
        volatile char big[72 * 1024];
        for (unsigned long i = 0; i < sizeof big; ++i)
            big[i] = 1;
    }
}
"""

# Races that every order of the threads hides: all threads add to one cell,
# and the blocks store to the same cells.
RACY_KERNELS = r"""
MOCHAC_KERNEL(add_to_one_cell)
{
    real *total = (real *)p[0];
    total[0] += 1.0;
}

MOCHAC_KERNEL(store_same_cells)
{
    real *out = (real *)p[0];
    out[threadIdx.x] = 7.0;
}
"""

# Barriers that not every thread of the block reaches alike.
DIVERGENT_KERNELS = r"""
MOCHAC_KERNEL(barrier_in_first_warp)
{
    if (threadIdx.x < 32)
        __syncthreads();
}

MOCHAC_KERNEL(barrier_count_by_parity)
{
    for (unsigned i = 0; i <= threadIdx.x % 2; ++i)
        __syncthreads();
}

MOCHAC_KERNEL(barriers_on_two_lines)
{
    if (threadIdx.x % 2 == 0)
        __syncthreads();
    else
        __syncthreads();
}
"""


def render(kernel_texts):
    """Return net.cu.j2 rendered around the kernels, as for a float64 net."""
    return (
        template_environment()
        .get_template("cuda/net.cu.j2")
        .render(
            version=__version__,
            net_name="emulator test",
            dtype="float64",
            ctype="double",
            n_layers=0,
            block=BLOCK,
            slot_lines=[],
            forward_lines=["none"],
            backward_lines=["none"],
            kernel_texts=kernel_texts,
            loss_checks=[],
        )
    )


SOURCE = render(
    [BROKEN_SUMS]
    + [SUM_KERNEL.format(name=name) for name in SUMS]
    + [RECORD_KERNEL, UNSTORED_SHARED_KERNEL, RACY_KERNELS, DIVERGENT_KERNELS]
    + [OVERFLOW_KERNEL]
)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulator")
    return compile_source_for_host(SOURCE, folder, "kernels", block=BLOCK)


@pytest.fixture(scope="module")
def race_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulator_races")
    return compile_source_for_host(SOURCE, folder, "kernels", block=BLOCK, races=True)


@pytest.fixture(scope="module")
def ucontext_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulator_ucontext")
    return compile_source_for_host(
        SOURCE, folder, "kernels", block=BLOCK, races=True, ucontext=True
    )


def slot_table(*arrays):
    return (ctypes.c_void_p * len(arrays))(*[array.ctypes.data for array in arrays])


def block_total(library, sum_name, x, order, blocks=1):
    out = np.zeros(1)
    arguments = (slot_table(x, out), ctypes.c_int(x.size), ctypes.c_void_p())
    launch(library, f"total_by_{sum_name}", blocks, arguments, order, seed=7)
    return out[0]


def record_order(library, blocks, order, seed=0, block=BLOCK):
    threads = blocks * block
    next_entry = np.zeros(1, np.int32)
    sequence = np.full(threads, -1, np.int32)
    shape = np.zeros(2, np.int32)
    arguments = (
        slot_table(next_entry, sequence, shape),
        ctypes.c_int(0),
        ctypes.c_void_p(),
    )
    launch(library, "record_order", blocks, arguments, order, seed)
    assert next_entry[0] == threads
    return sequence, shape


# Integers in float64, so every summation order gives the exact total.
VALUES = np.arange(1.0, 3 * BLOCK + 2)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_block_sum_exact_in_every_order(library, order):
    assert block_total(library, "mochac_block_sum", VALUES, order) == VALUES.sum()


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_block_sum_same_in_every_block(library, order):
    # Every block sums the whole array and stores the same total (a race, but
    # one with a single possible result).
    total = block_total(library, "mochac_block_sum", VALUES, order, blocks=3)
    assert total == VALUES.sum()


@pytest.mark.parametrize("sum_name", SUMS[1:])
def test_missing_barrier_gives_wrong_sum(library, sum_name):
    totals = {order: block_total(library, sum_name, VALUES, order) for order in ORDERS}
    wrong = [order for order, total in totals.items() if total != VALUES.sum()]
    assert wrong, f"{sum_name} gave the right sum in every order: {totals}"
    assert "forward" in wrong


@pytest.mark.parametrize(
    "kernel, message",
    [
        (
            "barrier_in_first_warp",
            (
                r"divergent __syncthreads in block 0: thread 0 waits at barrier 1 "
                r"\(line \d+\), but thread 32 returned after 0 barriers"
            ),
        ),
        (
            "barrier_count_by_parity",
            (
                r"divergent __syncthreads in block 0: thread 1 waits at barrier 2 "
                r"\(line \d+\), but thread 0 returned after 1 barriers"
            ),
        ),
        (
            "barriers_on_two_lines",
            (
                r"divergent __syncthreads in block 0: at barrier 1, thread 0 waits at "
                r"line \d+ and thread 1 at line \d+"
            ),
        ),
    ],
)
def test_divergent_barrier_raises(library, kernel, message):
    arguments = (slot_table(), ctypes.c_int(0), ctypes.c_void_p())
    with pytest.raises(EmulationError, match=f"kernel {kernel}: {message}"):
        launch(library, kernel, 2, arguments)
    # The next launch starts clean.
    assert block_total(library, "mochac_block_sum", VALUES, "forward") == VALUES.sum()


def test_divergent_barrier_names_source_lines(library):
    lines = SOURCE.splitlines()
    start = lines.index("MOCHAC_KERNEL(barriers_on_two_lines)")
    barriers = [
        number + 1
        for number, line in enumerate(lines[start : start + 8], start)
        if "__syncthreads();" in line
    ]
    assert len(barriers) == 2
    arguments = (slot_table(), ctypes.c_int(0), ctypes.c_void_p())
    expected = (
        f"thread 0 waits at line {barriers[0]} and thread 1 at line {barriers[1]}"
    )
    with pytest.raises(EmulationError, match=expected):
        launch(library, "barriers_on_two_lines", 1, arguments)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_race_checked_kernels_pass(race_library, order):
    total = block_total(race_library, "mochac_block_sum", VALUES, order)
    assert total == VALUES.sum()
    sequence, _ = record_order(race_library, 2, order)
    np.testing.assert_array_equal(np.sort(sequence), np.arange(2 * BLOCK))


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_shared_add_hidden_by_order(library, order):
    total = np.zeros(1)
    arguments = (slot_table(total), ctypes.c_int(0), ctypes.c_void_p())
    launch(library, "add_to_one_cell", 2, arguments, order)
    # Exact in the emulator, though a device loses updates.
    assert total[0] == 2 * BLOCK


def test_race_check_finds_shared_add(race_library):
    total = np.zeros(1)
    arguments = (slot_table(total), ctypes.c_int(0), ctypes.c_void_p())
    expected = (
        r"kernel add_to_one_cell: data race at address 0x[0-9a-f]+: thread 0 of "
        r"block 0 stores to it and thread 1 of block 0 loads it with no barrier "
        r"in between \(the total\); line numbers refer to .*\.cpp"
    )
    with pytest.raises(EmulationError, match=expected):
        launch(
            race_library,
            "add_to_one_cell",
            1,
            arguments,
            where=lambda address: "the total" if address == total.ctypes.data else "?",
        )


def test_race_check_finds_blocks_storing_alike(race_library):
    out = np.zeros(BLOCK)
    arguments = (slot_table(out), ctypes.c_int(0), ctypes.c_void_p())
    expected = (
        "kernel store_same_cells: data race at address 0x[0-9a-f]+: thread 0 of "
        "block 0 stores to it and thread 0 of block 1 stores to it from different "
        "blocks"
    )
    with pytest.raises(EmulationError, match=expected):
        launch(race_library, "store_same_cells", 2, arguments)


@pytest.mark.parametrize("sum_name", SUMS[1:])
def test_race_check_finds_missing_barrier(race_library, sum_name):
    with pytest.raises(EmulationError, match="with no barrier in between"):
        block_total(race_library, sum_name, VALUES, "reverse")


def test_launch_rejects_empty_grid(library):
    arguments = (slot_table(), ctypes.c_int(0), ctypes.c_void_p())
    with pytest.raises(EmulationError, match="invalid launch: 0 blocks"):
        launch(library, "barrier_in_first_warp", 0, arguments)


def test_launch_has_real_shape(library):
    sequence, shape = record_order(library, 3, "forward")
    assert shape.tolist() == [3, BLOCK]
    np.testing.assert_array_equal(sequence, np.arange(3 * BLOCK))


def test_reverse_order_runs_last_thread_first(library):
    sequence, _ = record_order(library, 3, "reverse")
    np.testing.assert_array_equal(sequence, np.arange(3 * BLOCK)[::-1])


def test_shuffled_order_depends_only_on_seed(library):
    first, _ = record_order(library, 3, "shuffle", seed=11)
    again, _ = record_order(library, 3, "shuffle", seed=11)
    other, _ = record_order(library, 3, "shuffle", seed=12)
    np.testing.assert_array_equal(np.sort(first), np.arange(3 * BLOCK))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.arange(3 * BLOCK))
    assert not np.array_equal(first, np.arange(3 * BLOCK)[::-1])
    # Blocks run one after another, each in a shuffled order of its threads.
    block_order = first[::BLOCK] // BLOCK
    assert sorted(block_order.tolist()) == [0, 1, 2]
    for position, block in enumerate(block_order):
        threads = first[position * BLOCK : (position + 1) * BLOCK]
        assert np.all(threads // BLOCK == block)


def test_launches_from_two_threads(library):
    def launch_many(results):
        for _ in range(20):
            results.append(block_total(library, "mochac_block_sum", VALUES, "shuffle"))

    results = [[], []]
    workers = [threading.Thread(target=launch_many, args=(r,)) for r in results]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [[VALUES.sum()] * 20] * 2


def test_shared_memory_unset_in_each_block(library):
    out = np.zeros(2)
    arguments = (slot_table(out), ctypes.c_int(0), ctypes.c_void_p())
    launch(library, "read_unstored_shared", 2, arguments)
    assert np.isnan(out[0])
    # Block 0 stored 1.0, but block 1 gets fresh shared memory.
    assert np.isnan(out[1])


def test_stack_overflow_raises(library):
    arguments = (slot_table(np.zeros(1)), ctypes.c_int(0), ctypes.c_void_p())
    with pytest.raises(EmulationError, match="overflowed its 65536-byte stack"):
        launch(library, "overflow_stack", 1, arguments)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_ucontext_switch_runs_barriers(ucontext_library, order):
    """glibc's swapcontext, the switch off x86-64, runs the same barriers."""
    total = block_total(ucontext_library, "mochac_block_sum", VALUES, order)
    assert total == VALUES.sum()
    with pytest.raises(EmulationError, match="with no barrier in between"):
        block_total(ucontext_library, "sum_without_loop_barrier", VALUES, order)
    arguments = (slot_table(), ctypes.c_int(0), ctypes.c_void_p())
    with pytest.raises(EmulationError, match="divergent __syncthreads"):
        launch(ucontext_library, "barrier_count_by_parity", 2, arguments, order)


def test_smaller_block(tmp_path):
    library = compile_source_for_host(SOURCE, tmp_path, "kernels32", block=32)
    total = block_total(library, "mochac_block_sum", VALUES, "reverse")
    assert total == VALUES.sum()
    sequence, shape = record_order(library, 2, "forward", block=32)
    assert shape.tolist() == [2, 32]
    np.testing.assert_array_equal(sequence, np.arange(2 * 32))


def test_block_must_be_power_of_two(tmp_path):
    with pytest.raises(ValueError, match="block must be a power of two, got 48"):
        compile_source_for_host(SOURCE, tmp_path, "kernels48", block=48)


@pytest.fixture(scope="module")
def single_thread_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emulator_one_thread")
    return compile_source_for_host(SOURCE, folder, "kernels", block=1)


def update_arrays():
    """Return the parameters, gradients, first and second states of two
    arrays, and an extra gradient of the second (a shared parameter's)."""
    rng = np.random.default_rng(5)
    sizes = (3 * THREADS + 5, 7)
    params = [rng.standard_normal(size) for size in sizes]
    grads = [rng.standard_normal(size) for size in sizes]
    first = [rng.standard_normal(size) for size in sizes]
    second = [np.abs(rng.standard_normal(size)) for size in sizes]
    return params, grads, first, second, rng.standard_normal(sizes[1])


def run_device_update(library, method, order):
    """Run mochac_grad_sums and mochac_update on update_arrays() with
    GPUNet's grid; return the arrays afterwards."""
    params, grads, first, second, extra_grad = update_arrays()
    sizes = [param.size for param in params]
    # The learning-rate factor, L2 and L1 terms differ between the arrays.
    rows = [
        (
            params[j].ctypes.data,
            grads[j].ctypes.data,
            first[j].ctypes.data,
            second[j].ctypes.data,
            sizes[j],
            (1.0, 2.0)[j],
            (0.01, 0.0)[j],
            (0.0, 0.002)[j],
        )
        for j in range(2)
    ]
    updates = np.array(rows, UPDATE_DTYPE)
    sums = np.array(
        [(grads[1].ctypes.data, extra_grad.ctypes.data, sizes[1])], SUM_DTYPE
    )

    values = dict.fromkeys(STEP_FIELDS, 0.0)
    values.update(method=float(method), learning_rate=0.1, momentum=0.9)
    if method == 2:
        values.update(
            beta1=0.9, beta2=0.999, epsilon=1e-8, adam_rate=0.5, adam_root=0.3
        )
    step = np.array([values[field] for field in STEP_FIELDS])
    status = Status()
    blocks = max(1, min(MAX_BLOCKS, -(-max(sizes) // THREADS)))
    assert blocks == 4
    sum_arguments = (
        ctypes.c_void_p(sums.ctypes.data),
        ctypes.c_int(1),
        ctypes.byref(status),
    )
    launch(library, "mochac_grad_sums", blocks, sum_arguments, order, seed=3)

    update_arguments = (
        ctypes.c_void_p(updates.ctypes.data),
        ctypes.c_int(2),
        ctypes.c_void_p(step.ctypes.data),
        ctypes.byref(status),
    )
    launch(library, "mochac_update", blocks, update_arguments, order, seed=4)
    return params + grads + first + second


@pytest.mark.parametrize("method", [0, 1, 2], ids=["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_device_update_matches_one_thread(
    race_library, single_thread_library, method, order
):
    expected = run_device_update(single_thread_library, method, "forward")
    got = run_device_update(race_library, method, order)
    params, _, first, _, _ = update_arrays()
    # The update changed both parameters and both first states.
    changed = {0: params[0], 1: params[1], 4: first[0], 5: first[1]}
    for index, initial in changed.items():
        assert not np.array_equal(expected[index], initial), f"array {index}"
    for index, (array, reference) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(array, reference, err_msg=f"array {index}")
