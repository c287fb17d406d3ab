"""Loss layers that back-propagate into one blob: at -O1 the split is
eliminated and the losses add into one diff, which must equal -O0's sum."""

import numpy as np
import pytest

from mochac import CPUBackend, MemoryDataLayer, Net, SoftmaxLossLayer, SquareLossLayer
from mochac.layers.elementwise_loss import (
    BinaryCrossEntropyLossLayer,
    GaussianKLLossLayer,
    HingeLossLayer,
)
from mochac.layers.loss import MultinomialLogisticLossLayer, SoftlabelSoftmaxLossLayer

RNG = np.random.default_rng(59)
SOFT = RNG.uniform(0.1, 1.0, size=(4, 3))
INPUTS = {
    # Values in (0, 1): valid probabilities, logits, means and sigmas alike.
    "shared": RNG.uniform(0.1, 0.9, size=(4, 3)),
    "class": np.array([[0.0], [2.0], [1.0], [2.0]]),
    "soft": SOFT / SOFT.sum(axis=1, keepdims=True),
    "sign": RNG.choice([-1.0, 1.0], size=(4, 3)),
    "target": RNG.uniform(0.2, 0.8, size=(4, 3)),
    "other": RNG.uniform(0.5, 1.5, size=(4, 3)),
}
WEIGHTS = [1.0, 2.0, 3.0]


def loss_layers():
    return [
        MultinomialLogisticLossLayer(
            name="logistic", bottoms=["shared", "class"], weights=WEIGHTS
        ),
        SoftmaxLossLayer(name="softmax", bottoms=["shared", "class"], weights=WEIGHTS),
        SoftlabelSoftmaxLossLayer(name="softlabel", bottoms=["shared", "soft"]),
        HingeLossLayer(name="hinge", bottoms=["shared", "sign"]),
        BinaryCrossEntropyLossLayer(name="bce", bottoms=["shared", "target"]),
        GaussianKLLossLayer(name="kl_mu", bottoms=["shared", "other"]),
        GaussianKLLossLayer(name="kl_sigma", bottoms=["other", "shared"]),
        SquareLossLayer(name="square", bottoms=["shared", "target"]),
    ]


def run(opt_level):
    data = MemoryDataLayer(
        name="data",
        batch_size=4,
        tops=list(INPUTS),
        data=list(INPUTS.values()),
    )
    backend = CPUBackend(dtype=np.float64, seed=0, threads=2)
    net = Net(
        f"losses-share-diff-O{opt_level}",
        backend,
        [data, *loss_layers()],
        force_backward=True,
        opt_level=opt_level,
    )
    objective = net.forward()
    net.backward()
    return net, objective


@pytest.fixture(scope="module")
def results():
    return {level: run(level) for level in (0, 1)}


def test_shared_diff_equal_across_levels(results):
    plain, _ = results[0]
    optimized, _ = results[1]
    expected = plain.diffs["shared"]
    assert np.any(expected != 0)
    np.testing.assert_allclose(
        optimized.diffs["shared"], expected, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        optimized.diffs["other"], plain.diffs["other"], rtol=1e-12, atol=1e-15
    )


def test_split_eliminated_at_o1(results):
    plain, _ = results[0]
    optimized, _ = results[1]
    plain_kernels = {type(plain.ir.layers[k.layer_index].layer) for k in plain.kernels}
    optimized_kernels = {
        type(optimized.ir.layers[k.layer_index].layer) for k in optimized.kernels
    }
    assert any(kind.__name__ == "SplitLayer" for kind in plain_kernels)
    assert not any(kind.__name__ == "SplitLayer" for kind in optimized_kernels)


def test_objective_equal_across_levels(results):
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-12)
