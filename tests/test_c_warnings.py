"""The generated C compiles without warnings under -Wall -Wextra.

Warnings in generated code reach every user, since the compiler prints them
while a net builds. The nets of cuda_nets.py use every layer family. Two
more cover a power of 0 and a Gaussian KL loss whose mean takes no
gradient. Others cover a binary cross-entropy loss whose prediction takes
no gradient and a loss of two data blobs, which leaves the backward pass
empty. The built-in LeNet and CIFAR-10 nets run direct convolutions.
The "unread-top" nets give a layer two bottoms whose second top no loss
reads, so that pair has nothing to add to a shared bottom diff in backward.
"""

import shutil
import subprocess

import numpy as np
import pytest
from cuda_nets import NETS

from mochac import (
    BinaryCrossEntropyLossLayer,
    ChannelPoolingLayer,
    ConvolutionLayer,
    CPUBackend,
    GaussianKLLossLayer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Neurons,
    PoolingLayer,
    PowerLayer,
    RandomMaskLayer,
    SoftmaxLayer,
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


def fixed_prediction_bce_layers(dtype):
    rng = np.random.default_rng(3)
    prediction, x = rng.random(size=(4, 3)), rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(
            name="data", batch_size=4, data=[prediction, x], tops=["p", "x"]
        ),
        InnerProductLayer(
            name="target",
            output_dim=3,
            neuron=Neurons.Sigmoid(),
            bottoms=["x"],
            tops=["y"],
        ),
        BinaryCrossEntropyLossLayer(name="bce", bottoms=["p", "y"]),
    ]


def data_only_loss_layers(dtype):
    rng = np.random.default_rng(4)
    x, target = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(name="data", batch_size=4, data=[x, target]),
        SquareLossLayer(name="loss", bottoms=["data", "label"]),
    ]


# Layers that take several bottoms, each built from (name, bottoms, tops).
TWO_BOTTOM_LAYERS = {
    "channel-pooling": ChannelPoolingLayer,
    "pooling": PoolingLayer,
    "power": lambda **fields: PowerLayer(power=2, **fields),
    "random-mask": RandomMaskLayer,
    "softmax": SoftmaxLayer,
}


def unread_top_layers(kind):
    """Return a factory of a net where layer ``kind`` reads a and b, no loss
    reads its top of b, and a loss later in the net reads b. At -O1 the
    split of b is eliminated, and the layer's pair of b has nothing to add
    to b's diff, which the loss writes."""

    def factory(dtype):
        rng = np.random.default_rng(2)
        x, target = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=(4, 18))
        if kind == "pooling":
            # Pooling needs (N, C, H, W) bottoms.
            sources = [
                ConvolutionLayer(
                    name=f"src_{top}", n_filter=2, bottoms=["data"], tops=[top]
                )
                for top in ("a", "b")
            ]
        else:
            sources = [
                InnerProductLayer(
                    name=f"src_{top}", output_dim=18, bottoms=["data"], tops=[top]
                )
                for top in ("a", "b")
            ]
        return [
            MemoryDataLayer(name="data", batch_size=4, data=[x, target]),
            *sources,
            TWO_BOTTOM_LAYERS[kind](
                name="both", bottoms=["a", "b"], tops=["top_a", "top_b"]
            ),
            SquareLossLayer(name="fit_a", bottoms=["top_a", "label"]),
            SquareLossLayer(name="fit_b", bottoms=["b", "label"]),
        ]

    return factory


CASES = {
    **{
        f"unread-top-{kind}": (unread_top_layers(kind), 1) for kind in TWO_BOTTOM_LAYERS
    },
    **NETS,
    "power-zero": (power_zero_layers, 1),
    "fixed-mean-kl": (fixed_mean_kl_layers, 1),
    "fixed-prediction-bce": (fixed_prediction_bce_layers, 1),
    "no-backward": (data_only_loss_layers, 1),
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
