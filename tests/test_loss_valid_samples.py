"""Loss statistics over a validation epoch whose last batch wraps around.

Ten samples in batches of four: the third batch contains samples 8, 9, 0 and 1,
and only 8 and 9 are valid. Each loss statistic must be the mean over the
ten samples, computed here in NumPy from the data the loss reads directly.
"""

import numpy as np
import pytest

from mochac import (
    BinaryCrossEntropyLossLayer,
    ConcatLayer,
    CPUBackend,
    GaussianKLLossLayer,
    HingeLossLayer,
    MemoryDataLayer,
    MultinomialLogisticLossLayer,
    Net,
    SoftlabelSoftmaxLossLayer,
    SoftmaxLossLayer,
    SquareLossLayer,
    ValidationPerformance,
)

N = 10
RNG = np.random.default_rng(12)


def log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def square_case():
    pred, label = RNG.normal(size=(N, 3)), RNG.normal(size=(N, 3))
    expected = ((pred - label) ** 2).sum() / (2 * N)
    return [pred, label], SquareLossLayer, expected


def softmax_case():
    # Two positions per sample: the class axis is 1, then a spatial axis.
    scores = RNG.normal(size=(N, 3, 2))
    label = RNG.integers(0, 3, size=(N, 1, 2)).astype(np.float64)
    log_probs = log_softmax(scores, axis=1)
    picked = np.take_along_axis(log_probs, label.astype(int), axis=1)
    return [scores, label], SoftmaxLossLayer, -picked.mean()


def multinomial_case():
    prob = np.exp(log_softmax(RNG.normal(size=(N, 4)), axis=1))
    label = RNG.integers(0, 4, size=(N, 1)).astype(np.float64)
    picked = prob[np.arange(N), label[:, 0].astype(int)]
    return [prob, label], MultinomialLogisticLossLayer, -np.log(picked).mean()


def softlabel_case():
    scores = RNG.normal(size=(N, 3, 2))
    soft = RNG.uniform(0.1, 1.0, size=(N, 3, 2))
    soft /= soft.sum(axis=1, keepdims=True)
    per_position = -(soft * log_softmax(scores, axis=1)).sum(axis=1)
    return [scores, soft], SoftlabelSoftmaxLossLayer, per_position.mean()


def hinge_case():
    pred = RNG.normal(size=(N, 2))
    label = RNG.choice([-1.0, 1.0], size=(N, 2))
    return [pred, label], HingeLossLayer, np.maximum(1 - label * pred, 0).sum() / N


def binary_cross_entropy_case():
    prob = RNG.uniform(0.05, 0.95, size=(N, 2))
    label = RNG.uniform(0, 1, size=(N, 2))
    total = -(label * np.log(prob) + (1 - label) * np.log(1 - prob)).sum()
    return [prob, label], BinaryCrossEntropyLossLayer, total / N


def gaussian_kl_case():
    mu, sigma = RNG.normal(size=(N, 3)), RNG.uniform(0.5, 2.0, size=(N, 3))
    total = (mu**2 + sigma**2 - 2 * np.log(sigma) - 1).sum()
    return [mu, sigma], GaussianKLLossLayer, 0.5 * total / N


CASES = {
    "square": square_case(),
    "softmax": softmax_case(),
    "multinomial": multinomial_case(),
    "softlabel": softlabel_case(),
    "hinge": hinge_case(),
    "binary_cross_entropy": binary_cross_entropy_case(),
    "gaussian_kl": gaussian_kl_case(),
}


def loss_statistic(case, batch_size, weight=1.0):
    arrays, layer_class, _ = CASES[case]
    data = MemoryDataLayer(batch_size=batch_size, data=arrays, tops=["a", "b"])
    loss = layer_class(name="loss", bottoms=["a", "b"], weight=weight)
    net = Net(case, CPUBackend(dtype=np.float64), [data, loss])
    stats = ValidationPerformance(net).evaluate()
    (key,) = [
        name for name in stats if name.startswith("loss-") and "count" not in name
    ]
    return stats[key], stats["loss-count"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_size", [4, 3, 10])
def test_statistic_counts_valid_samples_only(case, batch_size):
    value, count = loss_statistic(case, batch_size)
    assert count == N
    assert value == pytest.approx(CASES[case][2], rel=1e-12)


@pytest.mark.parametrize("case", ["square", "softmax"])
def test_statistic_scales_with_loss_weight(case):
    value, _ = loss_statistic(case, 4, weight=2.5)
    assert value == pytest.approx(2.5 * CASES[case][2], rel=1e-12)


def test_objective_keeps_the_whole_batch_mean():
    # The training objective of the wrapped batch still averages all four
    # samples, wrapped ones included.
    arrays, _, _ = CASES["square"]
    data = MemoryDataLayer(batch_size=4, data=arrays, tops=["a", "b"])
    net = Net(
        "objective",
        CPUBackend(dtype=np.float64),
        [data, SquareLossLayer(name="loss", bottoms=["a", "b"])],
    )
    net.forward()
    net.forward()
    objective = net.forward()
    pred, label = (array[[8, 9, 0, 1]] for array in arrays)
    assert objective == pytest.approx(((pred - label) ** 2).sum() / 8, rel=1e-12)


def test_statistic_of_blob_joined_along_batch():
    """Two batches of 4 joined along the batch axis are counted whole: the
    statistic is the mean over all 8 samples of each joined batch."""
    pred, label = CASES["square"][0]
    layers = [
        MemoryDataLayer(
            name="a", batch_size=4, data=[pred[:4], label[:4]], tops=["pa", "la"]
        ),
        MemoryDataLayer(
            name="b", batch_size=4, data=[pred[4:8], label[4:8]], tops=["pb", "lb"]
        ),
        ConcatLayer(name="cp", dim=-1, bottoms=["pa", "pb"], tops=["p"]),
        ConcatLayer(name="cl", dim=-1, bottoms=["la", "lb"], tops=["l"]),
        SquareLossLayer(name="loss", bottoms=["p", "l"]),
    ]
    net = Net("joined", CPUBackend(dtype=np.float64), layers)
    stats = ValidationPerformance(net).evaluate()
    expected = ((pred[:8] - label[:8]) ** 2).sum() / (2 * 8)
    assert stats["loss-count"] == 8
    assert stats["loss-square-loss"] == pytest.approx(expected, rel=1e-12)


def test_statistic_with_two_data_batch_sizes():
    """n_valid is ambiguous when data layers differ in batch size; each loss
    then counts its whole batches (here one epoch of the smaller layer)."""
    pred, label = CASES["square"][0]
    layers = [
        MemoryDataLayer(
            name="big", batch_size=4, data=[pred[:8], label[:8]], tops=["p4", "l4"]
        ),
        MemoryDataLayer(
            name="small", batch_size=2, data=[pred[:4], label[:4]], tops=["p2", "l2"]
        ),
        SquareLossLayer(name="loss_big", bottoms=["p4", "l4"]),
        SquareLossLayer(name="loss_small", bottoms=["p2", "l2"]),
    ]
    net = Net("two_sizes", CPUBackend(dtype=np.float64), layers)
    stats = ValidationPerformance(net).evaluate()
    big = ((pred[:8] - label[:8]) ** 2).sum() / (2 * 8)
    small = ((pred[:4] - label[:4]) ** 2).sum() / (2 * 4)
    assert stats["loss_big-count"] == 8
    assert stats["loss_big-square-loss"] == pytest.approx(big, rel=1e-12)
    assert stats["loss_small-count"] == 4
    assert stats["loss_small-square-loss"] == pytest.approx(small, rel=1e-12)
