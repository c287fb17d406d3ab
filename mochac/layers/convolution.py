"""ConvolutionLayer: 2-D convolution over (N, C, H, W) blobs."""

from __future__ import annotations

from dataclasses import dataclass, field

from mochac.constraints import Constraint, NoCons
from mochac.initializers import ConstantInitializer, Initializer, XavierInitializer
from mochac.layers._checks import check_instance, check_int, check_param_fields
from mochac.layers.base import Layer, ParamSpec, to_pair
from mochac.neurons import Identity, Neuron
from mochac.regularizers import L2Regu, NoRegu, Regularizer


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Return the output length along one axis; convolution rounds down."""
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvolutionLayer(Layer):
    """Convolution of each bottom with ``n_filter`` learned filters.

    Fields (Mocha's defaults):
        param_key: key for sharing parameters; "" uses the layer name.
        kernel: filter (width, height), default (1, 1).
        stride: (width, height) step, default (1, 1).
        pad: (width, height) zero padding on both sides, default (0, 0).
        n_filter: number of filters, default 1.
        n_group: channel groups, default 1; must divide n_filter and the
            bottom's channels.
        neuron: activation of the output, default Neurons.Identity().
        filter_init: default XavierInitializer(); bias_init: default
            ConstantInitializer(0).
        filter_regu: default L2Regu(1); bias_regu: default NoRegu().
        filter_cons: norm constraint, default NoCons(); bias_cons: default
            NoCons().
        filter_lr: local learning-rate factor, default 1; bias_lr: default 2.

    Parameters: ``filter`` of shape (n_filter, C / n_group, kernel_h, kernel_w)
    and ``bias`` of shape (n_filter,). Every bottom must have the same shape.
    """

    param_key: str = ""
    kernel: tuple[int, int] | int = (1, 1)
    stride: tuple[int, int] | int = (1, 1)
    pad: tuple[int, int] | int = (0, 0)
    n_filter: int = 1
    n_group: int = 1
    neuron: Neuron = field(default_factory=Identity)
    filter_init: Initializer = field(default_factory=XavierInitializer)
    bias_init: Initializer = field(default_factory=ConstantInitializer)
    filter_regu: Regularizer = field(default_factory=lambda: L2Regu(1.0))
    bias_regu: Regularizer = field(default_factory=NoRegu)
    filter_cons: Constraint = field(default_factory=NoCons)
    bias_cons: Constraint = field(default_factory=NoCons)
    filter_lr: float = 1.0
    bias_lr: float = 2.0

    has_param = True
    has_neuron = True
    can_do_bp = True

    def backward_reads_top_data(self):
        # The neuron's derivative is computed from the output.
        return not self.neuron.is_identity

    def validate(self):
        # Each geometry property raises ConfigError on an invalid value.
        _ = (self.kernel_hw, self.stride_hw, self.pad_hw)
        check_int(self, "n_filter")
        check_int(self, "n_group")
        if self.n_filter % self.n_group:
            self._fail(
                "n_group", self.n_group, f"a divisor of n_filter={self.n_filter}"
            )
        check_param_fields(self, "filter")
        for name in ("filter_cons", "bias_cons"):
            check_instance(
                self, name, Constraint, "a norm constraint such as L2Cons(1.0)"
            )

    @property
    def kernel_hw(self) -> tuple[int, int]:
        return to_pair(self, "kernel", self.kernel, 1)

    @property
    def stride_hw(self) -> tuple[int, int]:
        return to_pair(self, "stride", self.stride, 1)

    @property
    def pad_hw(self) -> tuple[int, int]:
        return to_pair(self, "pad", self.pad, 0)

    def infer_shapes(self, bottom_shapes):
        first = bottom_shapes[0]
        for index, shape in enumerate(bottom_shapes):
            if len(shape) != 4:
                raise self.shape_error(
                    f"bottom '{self.bottoms[index]}' has shape {shape}; "
                    "expected a 4-D (N, C, H, W) blob"
                )
            if shape != first:
                raise self.shape_error(
                    f"bottoms must share one shape, but '{self.bottoms[0]}' is "
                    f"{first} and '{self.bottoms[index]}' is {shape}"
                )
        n, channels, height, width = first
        if channels % self.n_group:
            raise self.shape_error(
                f"n_group={self.n_group} does not divide the {channels} channels of "
                f"bottom '{self.bottoms[0]}'; choose an n_group that divides both "
                f"{channels} and n_filter={self.n_filter}"
            )
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_hw, self.stride_hw, self.pad_hw
        out_h = conv_output_size(height, kh, sh, ph)
        out_w = conv_output_size(width, kw, sw, pw)
        if out_h < 1 or out_w < 1:
            raise self.shape_error(
                f"kernel (width, height)=({kw}, {kh}) does not fit the padded "
                f"{width}x{height} input of bottom '{self.bottoms[0]}'; use a smaller "
                "kernel or more padding"
            )
        return [(n, self.n_filter, out_h, out_w)] * len(bottom_shapes)

    def param_specs(self, bottom_shapes):
        channels = bottom_shapes[0][1]
        kh, kw = self.kernel_hw
        filter_shape = (self.n_filter, channels // self.n_group, kh, kw)
        return [
            ParamSpec(
                "filter",
                filter_shape,
                self.filter_init,
                self.filter_regu,
                self.filter_lr,
                self.filter_cons,
            ),
            ParamSpec(
                "bias",
                (self.n_filter,),
                self.bias_init,
                self.bias_regu,
                self.bias_lr,
                self.bias_cons,
            ),
        ]
