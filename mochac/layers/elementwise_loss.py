"""Loss layers that compare two bottoms element by element: HingeLossLayer,
BinaryCrossEntropyLossLayer and GaussianKLLossLayer.

Each is a sum over elements divided by the batch size N, times ``weight``.
Both bottoms need the same batch size and number of elements per sample,
though their shapes may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers._checks import check_number
from mochac.layers.base import Layer
from mochac.layers.loss import check_same_size


@dataclass(frozen=True, kw_only=True, eq=False)
class ElementwiseLossLayer(Layer):
    """Fields and checks shared by the element-by-element losses.

    Fields:
        weight: factor of this loss in the objective, default 1.
    """

    weight: float = 1.0

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_loss = True
    can_do_bp = True
    is_sink = True

    # Names of the two bottoms in messages.
    roles = ("prediction", "label")

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_number(self, "weight", minimum=0)

    def infer_shapes(self, bottom_shapes):
        check_same_size(self, *bottom_shapes, *self.roles)
        return []


@dataclass(frozen=True, kw_only=True, eq=False)
class HingeLossLayer(ElementwiseLossLayer):
    """The hinge loss for binary classification, over the batch size.

    Bottoms: [prediction, label]. Labels are -1 or 1, Mocha's convention. Any
    other value raises DataError naming layer, blob and sample, because a
    0 from 0/1 labels, say, would silently cost a constant. Loss is
    weight * sum(max(1 - label * pred, 0)) / N; the prediction's gradient is
    -weight * label / N where label * pred < 1 and 0 elsewhere.

    Fields:
        weight: factor of this loss in the objective, default 1.
    """

    statistic_name = "hinge-loss"

    # NOTE: Mocha also back-propagates into the label; the label here is
    # data checked to be -1 or 1, so it takes no gradient.
    def bottom_takes_grad(self, index):
        return index == 0


@dataclass(frozen=True, kw_only=True, eq=False)
class BinaryCrossEntropyLossLayer(ElementwiseLossLayer):
    """The cross-entropy of probabilities against binary labels, over the batch size.

    Bottoms: [prediction, label]. Predictions are probabilities of the
    positive class. Labels lie in [0, 1]: 0/1 labels, or soft targets such as
    pixel intensities. A prediction or label outside [0, 1] raises DataError;
    a NaN prediction makes the loss NaN, which the net reports with the
    layer that made it. Loss is
    -weight * sum(y log(p) + (1 - y) log(1 - p)) / N, with p and 1 - p raised
    to 1e-20 before their logs, so a confident wrong prediction costs 46.05
    per element instead of Inf. A term whose factor y or 1 - y is 0 is left
    out, so p = 0 under y = 0 costs 0 and is never NaN.

    Gradients: the prediction's is -weight * (y / p - (1 - y) / (1 - p)) / N
    and the label's -weight * (log(p) - log(1 - p)) / N, both with the same
    clamped p and 1 - p.

    Fields:
        weight: factor of this loss in the objective, default 1.
    """

    statistic_name = "binary-cross-entropy-loss"


@dataclass(frozen=True, kw_only=True, eq=False)
class GaussianKLLossLayer(ElementwiseLossLayer):
    """The KL divergence from N(mu, diag(sigma^2)) to N(0, I), over the batch size.

    Bottoms: [mu, sigma], the means and standard deviations of a diagonal
    Gaussian per sample. Loss is
    weight * 0.5 * sum(mu^2 + sigma^2 - 2 log(sigma) - 1) / N, the divergence
    that Mocha's code computes (its documentation prints the sum with a
    leading minus sign, which would make the divergence negative). Gradients:
    weight * mu / N for mu and weight * (sigma - 1 / sigma) / N for sigma. A
    sigma <= 0 raises DataError naming layer, blob and sample.

    Fields:
        weight: factor of this loss in the objective, default 1.
    """

    roles = ("mu", "sigma")
    statistic_name = "gaussian-kl-loss"
