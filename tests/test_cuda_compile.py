"""CUDA code generation without a GPU: every layer family renders, compiles
with nvcc, and its step list agrees with the slots and the source.

The compile tests skip where no CUDA compiler is installed. Nothing here
needs CuPy or a device.
"""

import ctypes
import ctypes.util
import dataclasses
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_nets import NETS

import mochac
from mochac.bench.nets import lenet
from mochac.codegen.cuda import build_cuda_program, write_cuda_files
from mochac.codegen.cuda.plans import PLANNERS
from mochac.codegen.cuda.source import family_of
from mochac.codegen.cuda.steps import Gemm, Launch, Zero, gemm
from mochac.codegen.lowering import LOWERINGS, find_lowering
from mochac.errors import ConfigError, DeviceError
from mochac.layers import ConvolutionLayer
from mochac.runtime.gpu_backend import GPUBackend

TEMPLATES = Path(mochac.__file__).parent / "templates"
# Macro files and the net skeleton are not layer families.
HELPERS = {"net", "neuron", "labels", "loss_weights"}


def lowered_families() -> set[str]:
    """Return the families the C backend lowers layers to."""
    find_lowering(ConvolutionLayer)
    return {template for template, _ in LOWERINGS.values()}


DTYPES = (np.float32, np.float64)
LENET_BATCH = 8


def find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def find_nvrtc():
    """Load an NVRTC library: $MOCHAC_NVRTC_LIBRARY, the system's, the CUDA
    toolkit's or the nvidia-cuda-nvrtc wheel's. Return None if none loads."""
    candidates = [
        os.environ.get("MOCHAC_NVRTC_LIBRARY"),
        ctypes.util.find_library("nvrtc"),
    ]
    candidates += sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"))
    spec = importlib.util.find_spec("nvidia")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(glob.glob(f"{folder}/*/lib/libnvrtc.so*"))
    for candidate in candidates:
        if candidate and "builtins" not in candidate:
            # NVRTC opens its builtins library by name when it compiles. The
            # wheel's folder is on no search path, so load the one beside it
            # first: a library already loaded is found by name.
            for builtins in sorted(glob.glob(f"{os.path.dirname(candidate)}/*")):
                if "nvrtc-builtins.so" in builtins and ".alt." not in builtins:
                    try:
                        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    return None


# The language standards CuPy passes to NVRTC when the caller gives none
# (assemble_cupy_compiler_options): --std=c++11 in one CuPy 13 version,
# --std=c++14 in a later one that mentions ROCm 7.0, and --std=c++17 from
# CuPy 14.0 (its RawModule docstring). CuPy also appends -ftz=true. NVRTC
# 13's own default is C++17, so passing no --std hides C++17-only code such
# as hexadecimal floating literals.
CUPY_STANDARDS = ("c++11", "c++14", "c++17")


def nvrtc_compile(library, source: str, standard: str = "c++11") -> tuple[int, str]:
    """Compile ``source`` with NVRTC and the options cupy.RawModule adds;
    return (status, log)."""
    program = ctypes.c_void_p()
    status = library.nvrtcCreateProgram(
        ctypes.byref(program), source.encode(), b"net.cu", 0, None, None
    )
    assert status == 0
    flags = [b"-arch=compute_90", f"--std={standard}".encode(), b"-ftz=true"]
    options = (ctypes.c_char_p * len(flags))(*flags)
    status = library.nvrtcCompileProgram(program, len(flags), options)
    size = ctypes.c_size_t()
    library.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    library.nvrtcGetProgramLog(program, log)
    library.nvrtcDestroyProgram(ctypes.byref(program))
    return status, log.value.decode()


NVCC = find_nvcc()
NVRTC = find_nvrtc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None,
    reason="nvcc is neither on PATH nor in /usr/local/cuda/bin; install the CUDA "
    "toolkit to compile the generated kernels",
)


def render(name, layers, opt_level, dtype):
    return build_cuda_program(name, layers, dtype=dtype, opt_level=opt_level)


@pytest.fixture(scope="module")
def programs():
    """(net name, dtype name) -> (IR, CudaProgram) for every test net."""
    rendered = {}
    for dtype in DTYPES:
        for name, (factory, opt_level) in NETS.items():
            rendered[name, np.dtype(dtype).name] = render(
                name, factory(dtype), opt_level, dtype
            )
        rendered["lenet", np.dtype(dtype).name] = render(
            "lenet", lenet(LENET_BATCH), 1, dtype
        )
    return rendered


@pytest.fixture(scope="module")
def compiled(programs, tmp_path_factory):
    """(net name, dtype name) -> (nvcc's exit status, its output, the PTX)."""
    folder = tmp_path_factory.mktemp("cuda")
    results = {}
    for (name, dtype), (_, program) in programs.items():
        source = folder / f"{name}_{dtype}.cu"
        source.write_text(program.source)
        ptx = folder / f"{name}_{dtype}.ptx"
        result = subprocess.run(
            [NVCC, "-ptx", "-arch=sm_90", str(source), "-o", str(ptx)],
            capture_output=True,
            text=True,
            check=False,
        )
        text = ptx.read_text() if ptx.exists() else ""
        results[name, dtype] = (result.returncode, result.stdout + result.stderr, text)
    return results


KEYS = [(name, np.dtype(d).name) for d in DTYPES for name in (*NETS, "lenet")]


def test_nets_cover_every_family(programs):
    c_families = lowered_families()
    used = {
        family_of(kernel)
        for _, program in programs.values()
        for kernel in program.kernels
    }
    assert c_families - used == set()


def test_every_family_has_template_and_planner():
    c_families = lowered_families()
    cuda_families = {
        path.name.split(".")[0] for path in (TEMPLATES / "cuda").glob("*.cu.j2")
    } - HELPERS
    assert c_families - cuda_families == set()
    assert c_families - set(PLANNERS) == set()


@needs_nvcc
@pytest.mark.parametrize("key", KEYS, ids=["-".join(key) for key in KEYS])
def test_nvcc_compiles_net(compiled, programs, key):
    returncode, output, ptx = compiled[key]
    assert returncode == 0, output
    assert "warning" not in output, output
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    launched = {
        step.kernel
        for step in (*programs[key][1].forward, *programs[key][1].backward)
        if isinstance(step, Launch)
    }
    assert launched - entries == set()
    assert set(programs[key][1].kernel_names()) - entries == set()
    # GPUNet launches these by name for the training step.
    assert {"mochac_check_losses", "mochac_grad_sums", "mochac_update"} <= entries


# A net file for ``mochac compile``: LeNet and the nets of cuda_nets.py in
# float32, each on a backend of its own since their layer names overlap.
FLOAT32_NET_FILE = f"""
import sys

import numpy as np

sys.path.insert(0, {str(Path(__file__).parent)!r})
from cuda_nets import NETS

from mochac import CPUBackend, Net
from mochac.bench.nets import lenet


def backend():
    return CPUBackend(dtype=np.float32, seed=4)


lenet_net = Net("lenet", backend(), lenet({LENET_BATCH}))
vision = Net("vision", backend(), NETS["vision"][0](np.float32), opt_level=0)
vectors = Net("vectors", backend(), NETS["vectors"][0](np.float32))
"""


@needs_nvcc
def test_compile_command_float32_builds_with_nvcc(tmp_path):
    """The .cu files of ``mochac compile --backend cuda`` for float32 nets
    compile to object files with nvcc, without a warning."""
    from mochac.cli import main

    net_file = tmp_path / "nets.py"
    net_file.write_text(FLOAT32_NET_FILE)
    out = tmp_path / "cuda"
    assert main(["compile", str(net_file), "-o", str(out), "--backend", "cuda"]) == 0
    sources = sorted(out.glob("*.cu"))
    assert [source.stem for source in sources] == ["lenet", "vectors", "vision"]
    for source in sources:
        assert "typedef float real;" in source.read_text(), source.name
        result = subprocess.run(
            [
                NVCC,
                "-arch=sm_90",
                "-c",
                str(source),
                "-o",
                str(source.with_suffix(".o")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "warning" not in output, output
        assert source.with_suffix(".o").stat().st_size > 0, source.name


@pytest.mark.skipif(
    NVRTC is None,
    reason="no NVRTC library found (set MOCHAC_NVRTC_LIBRARY, or install CuPy with "
    "the nvidia-cuda-nvrtc wheel); NVRTC is the compiler cupy.RawModule uses",
)
@pytest.mark.parametrize("standard", CUPY_STANDARDS)
@pytest.mark.parametrize("key", KEYS, ids=["-".join(key) for key in KEYS])
def test_nvrtc_compiles_net(programs, key, standard):
    status, log = nvrtc_compile(NVRTC, programs[key][1].source, standard)
    assert status == 0, log
    assert "warning" not in log, log


@pytest.mark.parametrize("key", KEYS, ids=["-".join(key) for key in KEYS])
def test_steps_match_slots_and_source(programs, key):
    _, program = programs[key]
    assert program.problems() == []
    assert program.forward


@pytest.mark.parametrize("key", KEYS, ids=["-".join(key) for key in KEYS])
def test_source_reads_only_existing_slots(programs, key):
    _, program = programs[key]
    indices = {int(i) for i in re.findall(r"\bp\[(\d+)\]", program.source)}
    assert max(indices) < len(program.slots.slots)


def test_problems_report_bad_steps(programs):
    _, program = programs["lenet", "float32"]
    ip1 = program.slots.get("data", "ip1").index
    missing_slot = len(program.slots.slots)
    broken = dataclasses.replace(
        program,
        forward=[
            *program.forward,
            Launch("no_such_kernel", 1),
            Zero(ip1, 10**9),
            gemm(False, False, 4, 4, 4, (ip1, 0), (ip1, 0), (missing_slot, 0)),
        ],
    )
    problems = broken.problems()
    assert any("no_such_kernel" in problem for problem in problems)
    assert any(problem.startswith("zero") for problem in problems)
    assert any("does not exist" in problem for problem in problems)


def test_lenet_forward_steps(programs):
    _, program = programs["lenet", "float32"]
    kinds = [
        step.kernel if isinstance(step, Launch) else type(step).__name__
        for step in program.forward
    ]
    assert kinds == [
        "conv1_im2col_0",
        "Gemm",
        "conv1_bias_0",
        "pool1_forward_0",
        "conv2_im2col_0",
        "Gemm",
        "conv2_bias_0",
        "pool2_forward_0",
        "Gemm",
        "ip1_bias_0",
        "Gemm",
        "ip2_bias_0",
        "loss_forward",
    ]
    ip1 = program.forward[8]
    assert (ip1.m, ip1.n, ip1.k) == (LENET_BATCH, 500, 800)
    assert (ip1.trans_a, ip1.trans_b) == (False, True)


def test_lenet_backward_skips_data_diff(programs):
    ir, program = programs["lenet", "float32"]
    conv1 = program.layers[ir.layer("conv1").index]
    kernels = [step.kernel for step in conv1.backward if isinstance(step, Launch)]
    assert kernels == ["conv1_top_diff_0", "conv1_bias_grad_0"]
    assert [type(step) for step in conv1.backward].count(Gemm) == 1


def run_gemm(step, arrays):
    """Execute a Gemm step on NumPy arrays as the runtime does with cuBLAS."""

    def matrix(operand):
        flat = arrays[operand.slot].reshape(-1)
        end = operand.offset + operand.rows * operand.cols
        return flat[operand.offset : end].reshape(operand.rows, operand.cols)

    a, b, c = matrix(step.a), matrix(step.b), matrix(step.c)
    a = a.T if step.trans_a else a
    b = b.T if step.trans_b else b
    c[...] = step.alpha * (a @ b) + step.beta * c


def test_gemm_steps_compute_products(programs):
    ir, program = programs["vectors", "float64"]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(slot.shape) for slot in program.slots.slots]
    slots = program.slots
    for name, weight_key in (("encoder", "encoder"), ("decoder", "encoder")):
        layer = program.layers[ir.layer(name).index]
        products = [step for step in layer.forward if isinstance(step, Gemm)]
        assert len(products) == 1
        x = arrays[products[0].a.slot].copy()
        run_gemm(products[0], arrays)
        weight_name = "weight" if name == "encoder" else "tied_weight"
        weight = arrays[slots.get("param", weight_key, "weight").index]
        top = arrays[products[0].c.slot]
        expected = x @ weight.T if weight_name == "weight" else x @ weight
        np.testing.assert_allclose(top, expected, rtol=1e-12)


def test_conv_gemm_groups_cover_filters(programs):
    ir, program = programs["vision", "float64"]
    conv2 = program.layers[ir.layer("conv2").index]
    products = [step for step in conv2.forward if isinstance(step, Gemm)]
    assert len(products) == 2
    filters = [(step.a.offset, step.a.rows * step.a.cols) for step in products]
    # Two groups of 2 filters, each over 2 of the 4 input channels and 3x3 taps.
    assert filters == [(0, 2 * 2 * 9), (2 * 2 * 9, 2 * 2 * 9)]


def test_random_layers_keep_stream_advance_last(programs):
    _, program = programs["vectors", "float32"]
    names = [step.kernel for step in program.forward if isinstance(step, Launch)]
    assert names.index("noise_advance") == names.index("noise_forward_0") + 1
    assert names.index("mask_advance") == names.index("mask_forward_0") + 1


def test_written_steps_list_every_step(programs, tmp_path):
    _, program = programs["vision", "float64"]
    source, steps = write_cuda_files(program, tmp_path, "vision")
    assert source.read_text() == program.source
    written = json.loads(steps.read_text())
    assert len(written["forward"]) == len(program.forward)
    assert len(written["backward"]) == len(program.backward)
    # One thread per cropped element: 4 images x 3 channels x 8 x 8 = 3 blocks.
    assert written["forward"][0] == {
        "step": "launch",
        "kernel": "crop_forward_0",
        "blocks": 3,
        "threads": 256,
    }


def test_gpu_backend_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceError, match=r"pip install '\.\[cuda\]'` in the mochac"):
        GPUBackend()


def test_gpu_backend_rejects_dtype():
    with pytest.raises(ConfigError, match=r"invalid dtype=int32"):
        GPUBackend(dtype=np.int32)


def test_import_mochac_needs_no_cupy():
    code = (
        "import sys, mochac, mochac.runtime.gpu_net, mochac.codegen.cuda; "
        "assert 'cupy' not in sys.modules, 'cupy was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
