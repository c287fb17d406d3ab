"""Statistics layers: AccuracyLayer."""

from __future__ import annotations

from dataclasses import dataclass

from mochac.layers.base import Layer
from mochac.layers.loss import split_class_axis


@dataclass(frozen=True, kw_only=True, eq=False)
class AccuracyLayer(Layer):
    """Classification accuracy, accumulated over batches until reset.

    Bottoms: [prediction, label]. A sample counts as right when the largest
    prediction along ``dim`` (first one on ties) is at the label's index. Only
    the valid samples of a batch count, so that one validation epoch averages
    over exactly the data set's samples. Its statistic is "<name>-accuracy".

    Fields:
        dim: Mocha's class dimension; -2 (default) is the channel axis.
    """

    dim: int = -2

    n_bottoms = (2, 2)
    n_tops = (0, 0)
    tops_match_bottoms = False
    has_stats = True
    is_sink = True

    def validate(self):
        if not isinstance(self.dim, int) or isinstance(self.dim, bool):
            self._fail("dim", self.dim, "an int")

    def infer_shapes(self, bottom_shapes):
        split_class_axis(self, bottom_shapes[0], bottom_shapes[1], self.dim)
        return []
