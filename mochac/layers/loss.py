"""Class-label loss layers: SoftmaxLossLayer, MultinomialLogisticLossLayer,
SoftlabelSoftmaxLossLayer and SquareLossLayer.

A loss layer has no tops. Its value, times its ``weight``, joins the net's
objective, and back-propagation starts from it. Losses that compare
element by element (hinge, binary cross-entropy, Gaussian KL) live in
mochac/layers/elementwise_loss.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from mochac.errors import ConfigError
from mochac.layers._checks import check_int, check_number
from mochac.layers.base import Layer, channel_axis

# Probabilities below this are raised to it before taking their log, as
# Mocha's MultinomialLogisticLossLayer does (max(p, 1e-20)), so log(0) gives
# -46.05 instead of -Inf.
LOG_THRESHOLD = 1e-20

NORMALIZE_MODES = ("local", "global", "no")


def split_class_axis(layer, pred_shape, label_shape, dim):
    """Return (outer, classes, inner) of a prediction; check the label against it.

    The label must hold one class index per (outer, inner) position: the same
    batch size and outer * inner elements in all.
    """
    axis = channel_axis(layer, dim, len(pred_shape))
    outer = prod(pred_shape[:axis])
    inner = prod(pred_shape[axis + 1 :])
    if label_shape[0] != pred_shape[0] or prod(label_shape) != outer * inner:
        # Predictions with fewer elements than their labels suggest bottoms
        # given in the wrong order.
        swapped = (
            "; the bottoms are [prediction, label], so check their order"
            if prod(pred_shape) < prod(label_shape)
            else ""
        )
        raise layer.shape_error(
            f"label '{layer.bottoms[1]}' has shape {label_shape} but prediction "
            f"'{layer.bottoms[0]}' of shape {pred_shape} needs one label per sample "
            f"and position ({outer * inner} in all, e.g. shape "
            f"{pred_shape[:axis] + (1,) + pred_shape[axis + 1 :]}){swapped}"
        )
    return outer, pred_shape[axis], inner


def check_dim(layer):
    check_int(layer, "dim", minimum=None)


def check_class_weights(layer):
    """Check ``weights`` and ``normalize``; store ``weights`` as nested tuples.

    Nested tuples keep the layer immutable and survive the JSON round trip of
    compiled modules.
    """
    if not isinstance(layer.normalize, str) or layer.normalize not in NORMALIZE_MODES:
        layer._fail("normalize", layer.normalize, "one of 'local', 'global', 'no'")
    try:
        values = np.asarray(layer.weights, dtype=np.float64)
    except (TypeError, ValueError):
        layer._fail("weights", layer.weights, "an array of numbers")
    if values.size == 0:
        object.__setattr__(layer, "weights", ())
        return
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        layer._fail("weights", layer.weights, "finite numbers >= 0")
    object.__setattr__(layer, "weights", _to_tuples(values))


def _to_tuples(values):
    if values.ndim == 0:
        return float(values)
    return tuple(_to_tuples(item) for item in values)


def class_weight_table(layer, pred_shape):
    """Return the normalized class weights broadcast to ``pred_shape``, or None.

    ``weights`` may be a vector of one weight per class, an array of one data
    point's shape (``pred_shape[1:]``) or an array of the prediction's shape.
    ``normalize`` rescales them as Mocha does: "local" makes the weights at
    each position sum to the number of classes, "global" makes each sample's
    weights sum to their count in one sample, "no" keeps them. Raises
    ShapeError naming the layer when the shape fits none of the three forms
    or a sum to normalize is zero, and ConfigError when a sum or a rescaled
    weight is not finite.
    """
    if layer.weights == ():
        return None
    weights = np.asarray(layer.weights, dtype=np.float64)
    axis = channel_axis(layer, layer.dim, len(pred_shape))
    classes = pred_shape[axis]
    if weights.ndim == 1 and len(weights) == classes:
        shape = [1] * len(pred_shape)
        shape[axis] = classes
        weights = weights.reshape(shape)
    elif weights.shape == tuple(pred_shape[1:]):
        weights = weights[np.newaxis]
    elif weights.shape != tuple(pred_shape):
        raise layer.shape_error(
            f"weights have shape {weights.shape}; expected one weight per class "
            f"({classes},), one per element of a data point {tuple(pred_shape[1:])}"
            f" or one per element of the prediction {tuple(pred_shape)}"
        )
    weights = np.broadcast_to(weights, pred_shape).copy()

    # Sums and factors that overflow are checked below, so NumPy's warnings
    # about them are silenced.
    with np.errstate(over="ignore", invalid="ignore"):
        if layer.normalize == "local":
            sums = weights.sum(axis=axis, keepdims=True)
            if not np.all(np.isfinite(sums)):
                raise _weights_overflow(layer, "over the classes at some position")
            if np.any(sums == 0):
                raise layer.shape_error(
                    "weights sum to 0 over the classes at some position, so "
                    "normalize='local' cannot rescale them; give each position a "
                    "positive weight or use normalize='no'"
                )
            weights *= classes / sums
        elif layer.normalize == "global":
            # Mocha's documentation scales the weights to sum to the size of
            # one data point, so weights of the prediction's shape are
            # rescaled sample by sample.
            sample_axes = tuple(range(1, weights.ndim))
            totals = weights.sum(axis=sample_axes, keepdims=True)
            if not np.all(np.isfinite(totals)):
                raise _weights_overflow(layer, "over a sample")
            if np.any(totals == 0):
                raise layer.shape_error(
                    "weights sum to 0 over some sample, so normalize='global' "
                    "cannot rescale them; give each sample a positive weight or "
                    "use normalize='no'"
                )
            weights *= (weights.size // weights.shape[0]) / totals
    if not np.all(np.isfinite(weights)):
        # Weights near the smallest float64 make the factor count / sum overflow.
        raise ConfigError(
            f"{layer.title}: weights rescaled by normalize='{layer.normalize}' are "
            "not finite (the weights are too close to 0); multiply them by a "
            "common factor such as 1 / max(weights)"
        )
    return weights


def _weights_overflow(layer, where) -> ConfigError:
    return ConfigError(
        f"{layer.title}: weights sum to more than the largest float64 {where}, so "
        f"normalize='{layer.normalize}' cannot rescale them; divide the weights by "
        "a common factor such as max(weights), which normalization makes no "
        "difference to"
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class ClassLossLayer(Layer):
    """Fields and checks shared by the losses that read class-index labels.

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
        weight: factor of this loss in the objective, default 1.
        weights: class weights, default () for all 1. A vector of C weights,
            an array of one data point's shape or of the prediction's shape.
        normalize: how ``weights`` are rescaled, so that equal weights give
            the loss of no weights. "local" (default) makes them sum to C over
            the classes at each position, "global" makes each sample's
            weights sum to their count in one sample (classes times
            positions), and "no" keeps them.
    """

    dim: int = -2
    weight: float = 1.0
    weights: tuple = ()
    normalize: str = "local"

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_loss = True
    can_do_bp = True
    is_sink = True

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_dim(self)
        check_number(self, "weight", minimum=0)
        check_class_weights(self)

    def infer_shapes(self, bottom_shapes):
        split_class_axis(self, bottom_shapes[0], bottom_shapes[1], self.dim)
        class_weight_table(self, bottom_shapes[0])
        return []

    def bottom_takes_grad(self, index):
        return index == 0


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftmaxLossLayer(ClassLossLayer):
    """Softmax followed by the multinomial logistic loss, averaged over positions.

    Bottoms: [prediction, label]. The label contains class indices 0..C-1
    stored as floats, one per sample and position; any other value raises DataError
    naming layer, blob and sample.

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
        weight: factor of this loss in the objective, default 1.
        weights: class weights, default () for all 1. A vector of C weights,
            an array of one data point's shape or of the prediction's shape.
        normalize: how ``weights`` are rescaled, so that equal weights give
            the loss of no weights. "local" (default) makes them sum to C
            over the classes at each position, "global" makes each sample's
            weights sum to their count in one sample (classes times
            positions), and "no" keeps them.

    The loss is -w_g log(softmax(x)_g) averaged over the batch and spatial
    positions, with g the label; its gradient is
    weight * w_g * (softmax(x) - onehot(g)) / positions.
    """

    statistic_name = "softmax-loss"


@dataclass(frozen=True, kw_only=True, eq=False)
class MultinomialLogisticLossLayer(ClassLossLayer):
    """The negative log-probability of the label class, averaged over positions.

    Bottoms: [probabilities, label]; the probabilities lie along ``dim``
    (a SoftmaxLayer's output, say), and the label contains class indices
    0..C-1 as for SoftmaxLossLayer.

    Fields: dim (-2), weight (1), weights (()) and normalize ("local"), as
    for SoftmaxLossLayer.

    The loss is -w_g log(max(p_g, 1e-20)) averaged over positions (Mocha's
    clamp keeps a zero probability finite, and a NaN stays NaN). A picked
    probability outside [0, 1] raises DataError. The gradient is
    -weight * w_g / max(p_g, 1e-20) / positions at the label class and 0
    elsewhere. Unlike Mocha's, this layer back-propagates, so SoftmaxLayer
    followed by it trains like SoftmaxLossLayer, though less accurately when
    a probability underflows.
    """

    statistic_name = "multinomial-logistic-loss"


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftlabelSoftmaxLossLayer(Layer):
    """Softmax followed by the cross-entropy against a soft label.

    Bottoms: [prediction, label]; the label has the prediction's shape and
    contains a probability vector along ``dim`` at each position. An entry
    outside [0, 1] raises DataError naming layer, blob and sample.

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
        weight: factor of this loss in the objective, default 1.

    The loss is -sum_c p_c log(softmax(x)_c) averaged over positions, which
    differs from the KL divergence D(p || softmax(x)) by the entropy of p, a
    constant. The log-softmax is computed from the logits, so it is exact
    where Mocha's log(max(softmax(x)_c, 1e-20)) caps a term at 46.05. The
    gradient is weight * (softmax(x) * sum_c p_c - p) / positions, which is
    Mocha's softmax(x) - p when the label sums to 1.
    """

    dim: int = -2
    weight: float = 1.0

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_loss = True
    can_do_bp = True
    is_sink = True
    statistic_name = "softlabel-softmax-loss"

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_dim(self)
        check_number(self, "weight", minimum=0)

    def infer_shapes(self, bottom_shapes):
        pred, label = bottom_shapes
        channel_axis(self, self.dim, len(pred))
        if tuple(label) != tuple(pred):
            raise self.shape_error(
                f"soft label '{self.bottoms[1]}' has shape {label} but prediction "
                f"'{self.bottoms[0]}' has shape {pred}; they need the same shape"
            )
        return []

    def bottom_takes_grad(self, index):
        return index == 0


@dataclass(frozen=True, kw_only=True, eq=False)
class SquareLossLayer(Layer):
    """Half the squared distance between prediction and label, over the batch size.

    Bottoms: [prediction, label]; both need the same batch size and number of
    elements per sample, though their shapes may differ. Loss is
    weight * sum((pred - label)^2) / (2 N).

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
    statistic_name = "square-loss"

    def backward_reads_top_data(self):
        return False

    def validate(self):
        check_number(self, "weight", minimum=0)

    def infer_shapes(self, bottom_shapes):
        check_same_size(self, *bottom_shapes, "prediction", "label")
        return []


def check_same_size(layer, first, second, first_role, second_role):
    """Raise ShapeError unless two bottoms agree in batch size and element count."""
    if first[0] != second[0] or prod(first) != prod(second):
        raise layer.shape_error(
            f"{first_role} '{layer.bottoms[0]}' has shape {first} and "
            f"{second_role} '{layer.bottoms[1]}' has shape {second}; they need the "
            "same batch size and the same number of elements per sample"
        )
