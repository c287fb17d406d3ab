"""ElementWiseLayer: add, subtract, multiply or divide blobs of equal shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from mochac.layers.base import Layer


@dataclass(frozen=True)
class ElementWiseAdd:
    """y = x1 + x2 + ... (two or more bottoms)."""

    symbol = "+"
    n_bottoms = (2, None)


@dataclass(frozen=True)
class ElementWiseSubtract:
    """y = x1 - x2 (exactly two bottoms)."""

    symbol = "-"
    n_bottoms = (2, 2)


@dataclass(frozen=True)
class ElementWiseMultiply:
    """y = x1 * x2 * ... (two or more bottoms)."""

    symbol = "*"
    n_bottoms = (2, None)


@dataclass(frozen=True)
class ElementWiseDivide:
    """y = x1 / x2 (exactly two bottoms). A zero divisor gives inf or NaN."""

    symbol = "/"
    n_bottoms = (2, 2)


class ElementWiseFunctors:
    """Mocha's names for the operations: ``ElementWiseFunctors.Add()`` and so on."""

    Add = ElementWiseAdd
    Subtract = ElementWiseSubtract
    Multiply = ElementWiseMultiply
    Divide = ElementWiseDivide


OPERATIONS = (
    ElementWiseAdd,
    ElementWiseSubtract,
    ElementWiseMultiply,
    ElementWiseDivide,
)


@dataclass(frozen=True, kw_only=True, eq=False)
class ElementWiseLayer(Layer):
    """Combines bottoms of one shape element by element into a single top.

    Fields (Mocha's defaults):
        operation: ElementWiseFunctors.Add() (default), Subtract(), Multiply()
            or Divide(). Subtract and Divide take exactly two bottoms, as in
            Mocha; Add and Multiply take two or more.
        tops: exactly one blob name.
    """

    operation: object = field(default_factory=ElementWiseAdd)

    n_bottoms = (2, None)
    n_tops = (1, 1)
    tops_match_bottoms = False
    can_do_bp = True
    # The top may overwrite the first bottom: each element of it is read
    # before the top element in its place is written.
    inplace_capable = True

    def backward_reads_bottom_data(self):
        # The product and quotient rules need the bottoms, but sums do not.
        return isinstance(self.operation, (ElementWiseMultiply, ElementWiseDivide))

    def backward_reads_top_data(self):
        return False

    def validate(self):
        if not isinstance(self.operation, OPERATIONS):
            self._fail(
                "operation",
                self.operation,
                "ElementWiseFunctors.Add(), Subtract(), Multiply() or Divide()",
            )
        low, high = self.operation.n_bottoms
        if len(self.bottoms) < low or (high is not None and len(self.bottoms) > high):
            count = f"exactly {low}" if low == high else f"at least {low}"
            self._fail(
                "bottoms",
                list(self.bottoms),
                f"{count} blob names for {type(self.operation).__name__}",
            )

    def infer_shapes(self, bottom_shapes):
        first = bottom_shapes[0]
        for index, shape in enumerate(bottom_shapes):
            if shape != first:
                raise self.shape_error(
                    f"bottoms must share one shape, but '{self.bottoms[0]}' is "
                    f"{first} and '{self.bottoms[index]}' is {shape}"
                )
        return [first]
