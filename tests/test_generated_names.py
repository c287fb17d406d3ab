"""Layer, blob and net names that look like C reach the generated code only
inside comments, where they cannot end the comment."""

import re

import numpy as np
import pytest
from test_cuda_compile import NVRTC, nvrtc_compile

from mochac import (
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    SoftmaxLossLayer,
)
from mochac.codegen.comments import comment_text
from mochac.codegen.cuda import build_cuda_program

# Each would end a comment and compile the rest as C; the duplicate
# definition of x fails to compile if two of them get through.
HOSTILE = {
    "net": "net */ int x = 1; /*",
    "ip1": "ip1 */ int x = 1; /*",
    "ip2": "ip2 /* nested",
    "hidden": "h */ int y; /*",
    "loss": "loss\n#error newline",
}


def layers(names):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    y = rng.integers(0, 3, size=(8, 1)).astype(np.float64)
    return [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name=names["ip1"],
            output_dim=4,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=[names["hidden"]],
        ),
        InnerProductLayer(
            name=names["ip2"], output_dim=3, bottoms=[names["hidden"]], tops=["out"]
        ),
        SoftmaxLossLayer(name=names["loss"], bottoms=["out", "label"]),
    ]


PLAIN = {key: key for key in HOSTILE}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a */ b", "a * / b"),
        ("a /* b", "a / * b"),
        ("a\nb\tc", "a?b?c"),
        ("conv1", "conv1"),
    ],
)
def test_comment_text(text, expected):
    assert comment_text(text) == expected


def test_cpu_net_with_hostile_names():
    plain = Net("plain", CPUBackend(dtype=np.float64, seed=3), layers(PLAIN))
    hostile = Net(HOSTILE["net"], CPUBackend(dtype=np.float64, seed=3), layers(HOSTILE))
    code = re.sub(r"/\*.*?\*/", "", hostile.source, flags=re.DOTALL)
    assert "int x = 1;" not in code
    assert "#error" not in code
    for name in ("ip1", "ip2"):
        np.testing.assert_array_equal(
            hostile.params[HOSTILE[name]]["weight"], plain.params[name]["weight"]
        )
    assert hostile.forward() == plain.forward()


@pytest.mark.skipif(
    NVRTC is None,
    reason="no NVRTC library found (set MOCHAC_NVRTC_LIBRARY, or install the "
    "nvidia-cuda-nvrtc wheel)",
)
def test_cuda_source_with_hostile_names():
    _, program = build_cuda_program(HOSTILE["net"], layers(HOSTILE), dtype=np.float32)
    status, log = nvrtc_compile(NVRTC, program.source)
    assert status == 0, log
    assert "warning" not in log, log
