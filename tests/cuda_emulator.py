"""Run a CudaProgram's steps on the host, to test kernels without a GPU.

The generated CUDA is compiled as C++ with the scheduler of
cuda_emulator.h in front of it. Every kernel runs with the launch's block
count and with ``block`` threads per block: 256 as on the device, unless a
test requests fewer. Each CUDA thread is a ucontext with its own stack, and
all of them run on the calling OS thread, so a run is deterministic. Blocks
run one after another. Within a block the scheduler runs every thread up to
its next ``__syncthreads`` (a phase), then the next phase, until the
threads return. The order of the threads in each phase, and of the blocks
in the grid, is forward, reverse or a seeded shuffle, so a missing barrier
or a race between threads gives a result that depends on the order. A
``__syncthreads`` that not every thread of the block reaches, or that
threads reach at different lines, stops the launch with an error.
``__shared__`` variables are statics in one section, which the scheduler
fills with 0xFF bytes (NaN for doubles, -1 for integers) before each
block, so a read before any write shows.

With ``races=True`` the kernels are instrumented with GCC's
-fsanitize=thread, and the header's hooks raise on two accesses to one
address by different threads of a launch, at least one a store, that no
barrier orders. This also catches a non-atomic read-modify-write that two
threads make on the same address, which gives the right result when the
threads run one after another.

GEMM steps run in NumPy with the runtime's row-major reading of their
operands, Zero and Copy on NumPy arrays. This checks the templates, the
planners and the step semantics. It cannot check CuPy, streams, warp-level
behaviour or memory ordering between blocks.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np

from mochac.codegen.cuda.steps import BLOCK, Copy, Gemm, Launch, Zero

# Threads per emulated block. It is the device's 256, so every launch has
# its real shape. A smaller power of two also works (the reductions need one), since
# the kernels read the block size from MOCHAC_BLOCK.
EMULATED_BLOCK = BLOCK

# The thread and block orders of the scheduler, by the code it takes.
ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}

# The scheduler and the CUDA names the host compiler lacks.
HEADER = Path(__file__).with_name("cuda_emulator.h")

# A kernel's definition, written out or as MOCHAC_KERNEL's expansion in
# its #define.
KERNEL_HEADER = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


class EmulationError(RuntimeError):
    """A launch the emulated device rejected, such as a divergent barrier."""


def kernel_wrapper(match: re.Match) -> str:
    """Return a kernel header that runs the kernel's body on the scheduler.

    The kernel keeps its name and parameters, and its body becomes a static
    function that each emulated thread calls. The text is one line, because
    one of the headers sits in MOCHAC_KERNEL's #define, followed by the
    header's line breaks, so the source keeps its line numbers.
    """
    name = match.group(1)
    parameters = " ".join(match.group(2).split())
    names = []
    if parameters not in ("", "void"):
        names = [re.search(r"(\w+)$", item).group(1) for item in parameters.split(",")]
    body = f"MOCHAC_EMU_BODY({name})"
    return (
        f"static void {body}({parameters}); "
        f'extern "C" void {name}({parameters}) {{ '
        f"auto mochac_emu_kernel = [&]() {{ {body}({', '.join(names)}); }}; "
        "mochac_emu_launch(mochac_emu_invoke<decltype(mochac_emu_kernel)>, "
        "&mochac_emu_kernel); } "
        f"static void {body}({parameters})" + "\n" * match.group(0).count("\n")
    )


def emulated_source(cuda_source: str, block: int) -> str:
    """Return generated CUDA source rewritten for ``block`` threads per block,
    to compile with cuda_emulator.h."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    source = cuda_source.replace(
        f"#define MOCHAC_BLOCK {BLOCK}\n", f"#define MOCHAC_BLOCK {block}\n"
    )
    if f"#define MOCHAC_BLOCK {block}\n" not in source:
        raise ValueError(f"the source does not define MOCHAC_BLOCK as {BLOCK}")
    source = KERNEL_HEADER.sub(kernel_wrapper, source)
    if "__global__" in source:
        raise ValueError(
            "some __global__ function has a header the emulator cannot wrap; "
            'expected extern "C" __global__ void name(parameters)'
        )
    return source + (
        "\nstatic_assert(MOCHAC_BLOCK == MOCHAC_EMU_THREADS, "
        '"MOCHAC_BLOCK must equal the emulated threads per block");\n'
    )


def compile_for_host(
    program, folder: Path, stem: str, block: int = EMULATED_BLOCK, races=True
) -> ctypes.CDLL:
    """Compile the program's CUDA source as a host shared library, with the
    race check unless ``races`` is false."""
    return compile_source_for_host(program.source, folder, stem, block, races)


def compile_source_for_host(
    cuda_source: str,
    folder: Path,
    stem: str,
    block: int = 1,
    races=False,
    ucontext=False,
) -> ctypes.CDLL:
    """Compile generated CUDA source as a host shared library.

    ``races`` instruments the kernels for the race check, which about
    doubled their run time in tests/test_cuda_host_emulation.py.
    ``ucontext`` switches threads with glibc's swapcontext, as on machines
    other than x86-64, instead of the emulator's own switch. A kernel
    called directly, without ``launch``, runs one block of ``block`` threads
    in forward order and leaves any error where only ``mochac_emu_error``
    shows it.
    """
    path = folder / f"{stem}.cpp"
    path.write_text(emulated_source(cuda_source, block))
    objects = folder / f"{stem}.o"
    library = folder / f"lib{stem}.so"
    # -fno-weak keeps the statics of inline functions out of COMDAT groups,
    # because GCC rejects a section that mixes those with other statics.
    flags = ["-std=c++17", "-O1", "-fno-weak", "-fPIC"]
    flags += ["-include", str(HEADER), f"-DMOCHAC_EMU_THREADS={block}"]
    if races:
        flags += ["-fsanitize=thread", "-DMOCHAC_EMU_RACES"]
    if ucontext:
        flags.append("-DMOCHAC_EMU_UCONTEXT")
    # Compiling and linking in two steps keeps libtsan out of the link. The
    # header defines the hooks that -fsanitize=thread calls, and -z defs
    # fails the link when one is missing.
    for command in (
        ["g++", *flags, "-c", str(path), "-o", str(objects)],
        ["g++", "-shared", "-Wl,-z,defs", str(objects), "-o", str(library)],
    ):
        subprocess.run(command, check=True, capture_output=True, text=True)
    return load_host_library(library, path)


def load_host_library(library: Path, emulated_source: Path) -> ctypes.CDLL:
    """Load a library that compile_source_for_host built from
    ``emulated_source``.

    Each path loads once per process, so a copy of a library under a new
    path has its own scheduler state and ``__shared__`` memory.
    """
    compiled = ctypes.CDLL(str(library))
    compiled.mochac_emu_configure.argtypes = [
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_ulonglong,
    ]
    compiled.mochac_emu_configure.restype = None
    compiled.mochac_emu_error.argtypes = []
    compiled.mochac_emu_error.restype = ctypes.c_char_p
    compiled.mochac_emu_race_address.argtypes = []
    compiled.mochac_emu_race_address.restype = ctypes.c_size_t
    compiled.emulated_source = emulated_source
    return compiled


def launch(library, kernel, blocks, arguments, order="forward", seed=0, where=None):
    """Run ``kernel(*arguments)`` on ``blocks`` blocks of the library's threads.

    ``order`` is a key of ORDERS, and ``seed`` picks the shuffled order.
    Raise EmulationError when the scheduler rejected the launch or found a
    race. ``where``, given an address, returns words that place it in the
    error message.
    """
    library.mochac_emu_configure(blocks, ORDERS[order], seed)
    getattr(library, kernel)(*arguments)
    error = library.mochac_emu_error()
    if not error:
        return
    message = f"kernel {kernel}: {error.decode()}"
    race_address = library.mochac_emu_race_address()
    if race_address and where is not None:
        message += f" ({where(race_address)})"
    raise EmulationError(f"{message}; line numbers refer to {library.emulated_source}")


class Status(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_int),
        ("layer", ctypes.c_int),
        ("index", ctypes.c_longlong),
        ("value", ctypes.c_double),
    ]


class HostRun:
    """The program's slots as NumPy arrays, and its steps run on them.

    Every launch runs in ``order``. The shuffled order draws a new
    permutation for each launch, from ``seed`` and the launch's count.
    """

    def __init__(
        self, program, library, offsets=None, arena_bytes=0, order="forward", seed=0
    ):
        self.program = program
        self.library = library
        self.order = order
        self.seed = seed
        self.launches = 0
        arena = np.zeros(arena_bytes, np.uint8)
        self.arrays = []
        for slot in program.slots.slots:
            if offsets and slot.index in offsets:
                start = offsets[slot.index]
                array = (
                    arena[start : start + slot.nbytes]
                    .view(slot.dtype)
                    .reshape(slot.shape)
                )
            else:
                array = np.zeros(slot.shape, slot.dtype)
            self.arrays.append(array)
        self.arena = arena
        self.pointers = (ctypes.c_void_p * len(self.arrays))(
            *[array.ctypes.data for array in self.arrays]
        )
        self.status = Status()

    def array(self, kind, owner, name=""):
        return self.arrays[self.program.slots.get(kind, owner, name).index]

    def run(self, steps, n_valid):
        self.status = Status()
        for step in steps:
            if isinstance(step, Launch):
                self.launch(step, n_valid)
            elif isinstance(step, Gemm):
                a, b, c = (self.matrix(o) for o in (step.a, step.b, step.c))
                a = a.T if step.trans_a else a
                b = b.T if step.trans_b else b
                c[...] = step.alpha * (a @ b) + step.beta * c
            elif isinstance(step, Zero):
                self.arrays[step.slot].reshape(-1)[: step.count] = 0
            elif isinstance(step, Copy):
                source = self.arrays[step.source].reshape(-1)[: step.count]
                self.arrays[step.target].reshape(-1)[: step.count] = source
            else:
                raise TypeError(step)
        return self.status

    def place(self, address):
        """Return the slot and element that contain an address."""
        for slot, array in zip(self.program.slots.slots, self.arrays):
            offset = address - array.ctypes.data
            if 0 <= offset < array.nbytes:
                name = f"{slot.kind} {slot.owner}{'.' + slot.name if slot.name else ''}"
                return f"p[{slot.index}] {name}, element {offset // array.itemsize}"
        return "outside every slot"

    def launch(self, step, n_valid):
        if step.threads != BLOCK:
            raise ValueError(
                f"launch {step.kernel} has {step.threads} threads per block; the "
                f"emulator runs only launches of {BLOCK}, with the library's block"
            )
        kernel = getattr(self.library, step.kernel)
        kernel.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        arguments = (self.pointers, n_valid, ctypes.byref(self.status))
        launch(
            self.library,
            step.kernel,
            step.blocks,
            arguments,
            self.order,
            self.seed + self.launches,
            self.place,
        )
        self.launches += 1

    def matrix(self, operand):
        flat = self.arrays[operand.slot].reshape(-1)
        end = operand.offset + operand.rows * operand.cols
        return flat[operand.offset : end].reshape(operand.rows, operand.cols)
