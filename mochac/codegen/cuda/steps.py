"""The steps a CUDA net runs: kernel launches, GEMMs, fills and copies.

Code generation turns each layer's forward and backward into a short list of
steps. The runtime executes them in order on one stream: a ``Launch`` runs a
kernel of the generated module, a ``Gemm`` calls cuBLAS
(mochac.runtime.cublas_direct, or CuPy's wrapper where that is unusable), and
``Zero`` and ``Copy`` are asynchronous memset and memcpy. Every step names
buffers by slot index, as the C code's ``p[i]`` does, so a step list is plain
data that tests can check without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

# Threads per block of every launch. The reduction kernels rely on it, since
# their shared-memory tree has this many leaves.
BLOCK = 256
# Grid-stride loops make any grid correct; more blocks than this only queue.
MAX_BLOCKS = 4096


@dataclass(frozen=True)
class Launch:
    """Run ``kernel(p, n_valid, status)`` on ``blocks`` x ``threads``."""

    kernel: str
    blocks: int
    threads: int = BLOCK


@dataclass(frozen=True)
class Operand:
    """A row-major matrix at element ``offset`` of a slot."""

    slot: int
    offset: int
    rows: int
    cols: int


@dataclass(frozen=True)
class Gemm:
    """c = alpha * op(a) @ op(b) + beta * c, all row-major.

    op(a) is (m, k) and op(b) is (k, n). ``a`` is stored as (k, m) when
    ``trans_a`` is set, and ``b`` as (n, k) when ``trans_b`` is set.
    """

    trans_a: bool
    trans_b: bool
    m: int
    n: int
    k: int
    a: Operand
    b: Operand
    c: Operand
    alpha: float = 1.0
    beta: float = 0.0


@dataclass(frozen=True)
class Zero:
    """Set the first ``count`` elements of a slot to zero."""

    slot: int
    count: int


@dataclass(frozen=True)
class Copy:
    """Copy ``count`` elements from one slot to another (no overlap)."""

    source: int
    target: int
    count: int


@dataclass
class LayerSteps:
    """The steps of one layer: its forward, then its backward."""

    layer_index: int
    name: str
    forward: list = field(default_factory=list)
    backward: list = field(default_factory=list)


def launch(kernel: str, total: int) -> Launch:
    """Return a launch with enough blocks for ``total`` grid-stride iterations."""
    return Launch(kernel, max(1, min(MAX_BLOCKS, -(-total // BLOCK))), BLOCK)


def block_per_row(kernel: str, rows: int) -> Launch:
    """Return a launch of one block per row, for kernels that reduce each row
    within a block (the blocks loop over the rows when there are many)."""
    return Launch(kernel, max(1, min(MAX_BLOCKS, rows)), BLOCK)


def single_block(kernel: str) -> Launch:
    """Return a one-block launch, for kernels that reduce within the block."""
    return Launch(kernel, 1, BLOCK)


def matrix(slot: int, rows: int, cols: int, offset: int = 0) -> Operand:
    return Operand(slot, offset, rows, cols)


def gemm(trans_a, trans_b, m, n, k, a, b, c, beta=0.0) -> Gemm:
    """Return a GEMM step, with a, b and c as (slot, offset) pairs.

    The stored shapes follow from m, n, k and the transposes.
    """
    a_shape = (k, m) if trans_a else (m, k)
    b_shape = (n, k) if trans_b else (k, n)
    return Gemm(
        bool(trans_a),
        bool(trans_b),
        m,
        n,
        k,
        Operand(a[0], a[1], *a_shape),
        Operand(b[0], b[1], *b_shape),
        Operand(c[0], c[1], m, n),
        1.0,
        float(beta),
    )


def step_problems(step, slots) -> list[str]:
    """Return what is wrong with one step given the slot table (empty when valid)."""
    problems = []

    def check_extent(slot_index, end, what):
        if not 0 <= slot_index < len(slots.slots):
            problems.append(f"{what}: slot {slot_index} does not exist")
            return
        size = prod(slots.slots[slot_index].shape)
        if end > size:
            problems.append(
                f"{what}: needs {end} elements of slot {slot_index}, which has {size}"
            )

    if isinstance(step, Launch):
        if step.blocks < 1 or step.threads != BLOCK:
            problems.append(
                f"launch {step.kernel}: grid {step.blocks} x {step.threads}; expected "
                f">= 1 block of {BLOCK} threads"
            )
    elif isinstance(step, Gemm):
        for name, operand, shape in (
            ("a", step.a, (step.k, step.m) if step.trans_a else (step.m, step.k)),
            ("b", step.b, (step.n, step.k) if step.trans_b else (step.k, step.n)),
            ("c", step.c, (step.m, step.n)),
        ):
            if (operand.rows, operand.cols) != shape:
                problems.append(
                    f"gemm {name}: stored as {operand.rows}x{operand.cols}, but m, n, "
                    f"k and the transposes need {shape[0]}x{shape[1]}"
                )
            end = operand.offset + operand.rows * operand.cols
            check_extent(operand.slot, end, f"gemm {name}")
    elif isinstance(step, Zero):
        check_extent(step.slot, step.count, "zero")
    elif isinstance(step, Copy):
        check_extent(step.source, step.count, "copy source")
        check_extent(step.target, step.count, "copy target")
        if step.source == step.target:
            problems.append(f"copy: slot {step.source} onto itself")
    else:
        problems.append(f"unknown step {step!r}")
    return problems


def describe_step(step) -> str:
    """Return one line naming a step, for the generated file's header."""
    if isinstance(step, Launch):
        return f"launch {step.kernel} <<<{step.blocks}, {step.threads}>>>"
    if isinstance(step, Gemm):

        def name(operand):
            return (
                f"p[{operand.slot}]+{operand.offset}"
                if operand.offset
                else (f"p[{operand.slot}]")
            )

        return (
            f"gemm {'T' if step.trans_a else 'N'}{'T' if step.trans_b else 'N'} "
            f"m={step.m} n={step.n} k={step.k}: {name(step.c)} = "
            f"{name(step.a)} x {name(step.b)}"
            + (f" + {step.beta:g} x {name(step.c)}" if step.beta else "")
        )
    if isinstance(step, Zero):
        return f"zero p[{step.slot}] ({step.count} elements)"
    return f"copy p[{step.source}] to p[{step.target}] ({step.count} elements)"
