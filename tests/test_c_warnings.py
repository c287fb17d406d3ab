"""The generated C compiles without warnings under -Wall -Wextra.

Warnings in generated code reach every user, since the compiler prints them
while a net builds. The nets of cuda_nets.py use every layer family. Two
more cover a power of 0 and a Gaussian KL loss whose mean takes no
gradient, and the built-in LeNet and CIFAR-10 nets run direct convolutions.
"""

import shutil
import subprocess

import numpy as np
import pytest
from cuda_nets import NETS

from mochac import (
    CPUBackend,
    GaussianKLLossLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    PowerLayer,
    SquareLossLayer,
)
from mochac.bench.nets import cifar10_full, lenet
from mochac.codegen.build import blas_location

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def power_zero_layers(dtype):
    rng = np.random.default_rng(0)
    x, target = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[x, target]),
        PowerLayer(name="constant", power=0, bottoms=["data"], tops=["ones"]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["ones"], tops=["out"]),
        SquareLossLayer(name="loss", bottoms=["out", "label"]),
    ]


def fixed_mean_kl_layers(dtype):
    rng = np.random.default_rng(1)
    mu, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[mu, x], tops=["mu", "x"]),
        InnerProductLayer(name="sigma", output_dim=3, bottoms=["x"], tops=["s"]),
        GaussianKLLossLayer(name="kl", bottoms=["mu", "s"]),
    ]


CASES = {
    **NETS,
    "power-zero": (power_zero_layers, 1),
    "fixed-mean-kl": (fixed_mean_kl_layers, 1),
    "lenet": (lambda dtype: lenet(64), 1),
    "cifar10": (lambda dtype: cifar10_full(64), 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_c_has_no_warnings(name, tmp_path):
    factory, opt_level = CASES[name]
    net = Net(
        name,
        CPUBackend(dtype=np.float64, seed=0),
        factory(np.float64),
        opt_level=opt_level,
    )
    path = tmp_path / f"{name}.c"
    path.write_text(net.source)
    command = ["gcc", "-fsyntax-only", "-std=c99", "-fopenmp", "-Wall", "-Wextra"]
    command += ["-Wno-unused-function", "-I", blas_location()[0], str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
