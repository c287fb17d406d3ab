"""Random valid nets of mochac's layers, drawn from a seed.

NetGenerator(seed).build() returns a MemoryDataLayer followed by a random
graph of compute layers. The graph has branches, splits, layers that share
parameters through param_key and TiedInnerProductLayer, and layers that -O1
runs in place. Loss and statistics layers read the blobs that no other
layer reads.
Every blob contains a batch of ``n`` samples, and the data layer serves two
batches per epoch. The same seed always builds the same layers.
"""

from __future__ import annotations

import math

import numpy as np

from mochac import layers as L
from mochac.layers.pooling import MaxPooling, MeanPooling
from mochac.neurons import Exponential, Identity, LReLU, ReLU, Sigmoid, Tanh


def neuron(rng):
    kind = rng.integers(7)
    if kind == 0:
        return ReLU(epsilon=float(rng.choice([0.0, 0.1, -0.2])))
    return [Identity, ReLU, LReLU, Sigmoid, Tanh, Exponential, Identity][kind]()


def mocha_dim(rng, axis, ndim):
    """Return a Mocha dim that names NumPy ``axis`` of an ndim blob, counted
    from either end."""
    if rng.random() < 0.5:
        return ndim - axis
    return -(axis + 1)


class NetGenerator:
    def __init__(self, seed, dtype=np.float64):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.layers = []
        self.shapes = {}  # blob name -> shape
        self.available = []  # the blobs that later layers may read
        self.consumed = set()
        self.counter = 0
        self.data_tops = []
        self.data_arrays = []
        self.n = int(self.rng.choice([1, 2, 3, 4]))
        # (param_key, input features, output_dim) of each inner product
        self.ip_keys = []
        self.param_layers = []
        self.has_dropout = False

    def fresh_name(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def data(self, prefix, array):
        name = self.fresh_name(prefix)
        self.data_tops.append(name)
        self.data_arrays.append(np.asarray(array, dtype=self.dtype))
        self.shapes[name] = array.shape[:0] + (self.n,) + array.shape[1:]
        return name

    def add(self, layer, tops_shapes, available=True):
        self.layers.append(layer)
        for b in layer.bottoms:
            self.consumed.add(b)
        for t, s in zip(layer.tops, tops_shapes):
            self.shapes[t] = tuple(s)
            if available:
                self.available.append(t)
        return layer.tops

    def pick_blob(self, cond=lambda s: True):
        names = [b for b in self.available if cond(self.shapes[b])]
        if not names:
            return None
        w = np.arange(1, len(names) + 1, dtype=float) ** 2
        return names[self.rng.choice(len(names), p=w / w.sum())]

    def same_shape(self, b, cond=None):
        """Return [b], or sometimes b and one other available blob that
        ``cond`` accepts (by default: one of b's shape)."""
        if self.rng.random() > 0.3:
            return [b]
        cond = cond or (lambda s: s == self.shapes[b])
        others = [o for o in self.available if o != b and cond(self.shapes[o])]
        if not others:
            return [b]
        return [b, others[self.rng.integers(len(others))]]

    def top_names(self, prefix, bottoms):
        name = self.fresh_name(prefix)
        if len(bottoms) == 1:
            return name, [name]
        return name, [f"{name}_{i}" for i in range(len(bottoms))]

    # --- building blocks -------------------------------------------------

    def op_ip(self, b):
        rng = self.rng
        feats = math.prod(self.shapes[b][1:])
        top = self.fresh_name("ip")
        shared = [k for k in self.ip_keys if k[1] == feats]
        kw = {}
        if shared and rng.random() < 0.3:
            key, _, out = shared[rng.integers(len(shared))]
            kw["param_key"] = key
        else:
            out = int(rng.integers(1, 9))
            self.ip_keys.append((top, feats, out))
        bottoms = self.same_shape(b, lambda s: math.prod(s[1:]) == feats)
        _, tops = self.top_names("ipm", bottoms) if len(bottoms) > 1 else (top, [top])
        layer = L.InnerProductLayer(
            name=top,
            output_dim=out,
            neuron=neuron(rng),
            bottoms=bottoms,
            tops=tops,
            **kw,
        )
        self.param_layers.append(top)
        self.add(layer, [(self.shapes[x][0], out) for x in bottoms])

    def op_tied(self, b):
        feats = math.prod(self.shapes[b][1:])
        keys = [k for k in self.ip_keys if k[2] == feats]
        if not keys:
            return self.op_ip(b)
        key, infeats, _ = keys[self.rng.integers(len(keys))]
        top = self.fresh_name("tied")
        layer = L.TiedInnerProductLayer(
            name=top,
            tied_param_key=key,
            neuron=neuron(self.rng),
            bottoms=[b],
            tops=[top],
        )
        self.param_layers.append(top)
        self.add(layer, [(self.shapes[b][0], infeats)])

    def op_conv(self, b):
        rng = self.rng
        n, c, h, w = self.shapes[b]
        ph, pw = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        kh = int(rng.integers(1, min(h + 2 * ph, 4) + 1))
        kw = int(rng.integers(1, min(w + 2 * pw, 4) + 1))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        groups = [g for g in (1, 2, 3) if c % g == 0]
        g = int(rng.choice(groups))
        f = g * int(rng.integers(1, 4))
        top = self.fresh_name("conv")
        bottoms = self.same_shape(b)
        tops = [top] if len(bottoms) == 1 else [top, top + "_b"]
        layer = L.ConvolutionLayer(
            name=top,
            kernel=(kw, kh),
            stride=(sw, sh),
            pad=(pw, ph),
            n_filter=f,
            n_group=g,
            neuron=neuron(rng),
            bottoms=bottoms,
            tops=tops,
        )
        oh = (h + 2 * ph - kh) // sh + 1
        ow = (w + 2 * pw - kw) // sw + 1
        self.param_layers.append(top)
        self.add(layer, [(n, f, oh, ow)] * len(bottoms))

    def op_pool(self, b):
        from mochac.layers.pooling import pool_output_size

        rng = self.rng
        _, _, h, w = self.shapes[b]
        kh = int(rng.integers(1, min(h, 3) + 1))
        kw = int(rng.integers(1, min(w, 3) + 1))
        ph = int(rng.integers(0, kh))
        pw = int(rng.integers(0, kw))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        top = self.fresh_name("pool")
        bottoms = self.same_shape(
            b, lambda s: len(s) == 4 and s[2] + 2 * ph >= kh and s[3] + 2 * pw >= kw
        )
        tops = [top] if len(bottoms) == 1 else [top, top + "_b"]
        layer = L.PoolingLayer(
            name=top,
            kernel=(kw, kh),
            stride=(sw, sh),
            pad=(pw, ph),
            pooling=MaxPooling() if rng.random() < 0.5 else MeanPooling(),
            neuron=neuron(rng),
            bottoms=bottoms,
            tops=tops,
        )
        self.add(
            layer,
            [
                self.shapes[x][:2]
                + (
                    pool_output_size(self.shapes[x][2], kh, sh, ph),
                    pool_output_size(self.shapes[x][3], kw, sw, pw),
                )
                for x in bottoms
            ],
        )

    def op_split(self, b):
        k = int(self.rng.integers(1, 4))
        name = self.fresh_name("split")
        tops = [f"{name}_{i}" for i in range(k)]
        self.add(L.SplitLayer(name=name, bottoms=[b], tops=tops), [self.shapes[b]] * k)

    def op_concat(self, b):
        rng = self.rng
        shape = self.shapes[b]
        axis = int(rng.integers(0 if rng.random() < 0.15 else 1, len(shape)))

        def fits(s):
            return len(s) == len(shape) and all(
                s[i] == shape[i] for i in range(len(s)) if i != axis
            )

        others = [o for o in self.available if o != b and fits(self.shapes[o])]
        if not others:
            # Join b with a fresh transform of itself.
            others = [self.op_power(b, single=True)[0]]
        k = min(len(others), int(rng.integers(1, 3)))
        chosen = [others[i] for i in rng.choice(len(others), k, replace=False)]
        bottoms = [b] + chosen
        rng.shuffle(bottoms)
        top = self.fresh_name("cat")
        total = sum(self.shapes[x][axis] for x in bottoms)
        out = shape[:axis] + (total,) + shape[axis + 1 :]
        self.add(
            L.ConcatLayer(
                name=top,
                dim=mocha_dim(rng, axis, len(shape)),
                bottoms=bottoms,
                tops=[top],
            ),
            [out],
        )

    def op_crop(self, b):
        rng = self.rng
        n, c, h, w = self.shapes[b]
        ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        top = self.fresh_name("crop")
        self.add(
            L.CropLayer(
                name=top,
                crop_size=(cw, ch),
                random_crop=bool(rng.random() < 0.3),
                random_mirror=bool(rng.random() < 0.3),
                bottoms=[b],
                tops=[top],
            ),
            [(n, c, ch, cw)],
        )

    def positive(self, b):
        """Return a blob of b's shape with values >= 1: b squared, plus 1."""
        sq = self.fresh_name("sq")
        self.add(
            L.PowerLayer(name=sq, power=2, bottoms=[b], tops=[sq]),
            [self.shapes[b]],
            available=False,
        )
        pos = self.fresh_name("pos")
        self.add(
            L.PowerLayer(name=pos, power=1, shift=1.0, bottoms=[sq], tops=[pos]),
            [self.shapes[b]],
            available=False,
        )
        return pos

    def op_elementwise(self, b):
        rng = self.rng
        shape = self.shapes[b]
        others = [o for o in self.available if o != b and self.shapes[o] == shape]
        if not others or rng.random() < 0.2:
            # Add noise of b's shape.
            noise = self.fresh_name("noise")
            per_sample = tuple(reversed(shape[1:]))
            self.add(
                L.RandomNormalLayer(
                    name=noise,
                    tops=[noise],
                    output_dims=per_sample,
                    batch_sizes=[shape[0]],
                    eltype=self.dtype,
                ),
                [shape],
                available=False,
            )
            others = [noise]
        other = others[rng.integers(len(others))]
        op = rng.integers(4)
        ops = L.ElementWiseFunctors
        if op == 3:
            other = self.positive(other)
            operation = ops.Divide()
        else:
            operation = [ops.Add(), ops.Subtract(), ops.Multiply()][op]
        bottoms = [b, other]
        if op in (0, 2) and rng.random() < 0.3:
            extra = [
                o
                for o in self.available
                if o not in bottoms and self.shapes[o] == shape
            ]
            if extra:
                bottoms.append(extra[0])
        top = self.fresh_name("elt")
        self.add(
            L.ElementWiseLayer(
                name=top, operation=operation, bottoms=bottoms, tops=[top]
            ),
            [shape],
        )

    def op_power(self, b, single=False):
        rng = self.rng
        power = float(rng.choice([0, 1, 1, 2, 2, 3]))
        bottoms = [b] if single else self.same_shape(b, lambda s: True)
        top, tops = self.top_names("pow", bottoms)
        self.add(
            L.PowerLayer(
                name=top,
                power=power,
                scale=float(rng.choice([1.0, 0.5, -0.7])),
                shift=float(rng.choice([0.0, 0.3])),
                bottoms=bottoms,
                tops=tops,
            ),
            [self.shapes[x] for x in bottoms],
        )
        return tops

    def op_dropout(self, b):
        rng = self.rng
        top = self.fresh_name("drop")
        self.has_dropout = True
        if rng.random() < 0.5:
            layer = L.DropoutLayer(
                name=top,
                ratio=float(rng.choice([0.2, 0.5])),
                auto_scale=bool(rng.random() < 0.7),
                bottoms=[b],
                tops=[top],
            )
        else:
            bottoms = self.same_shape(b, lambda s: True)
            top, tops = self.top_names("mask", bottoms)
            layer = L.RandomMaskLayer(name=top, ratio=0.3, bottoms=bottoms, tops=tops)
            self.add(layer, [self.shapes[x] for x in bottoms])
            return
        self.add(layer, [self.shapes[b]])

    def op_chpool(self, b):
        from mochac.layers.channel_pooling import channel_pool_output_size

        rng = self.rng
        shape = self.shapes[b]
        if len(shape) < 2:
            return
        axis = int(rng.integers(1, len(shape)))
        size = shape[axis]
        k = int(rng.integers(1, size + 1))
        front = int(rng.integers(0, k))
        back = int(rng.integers(0, k))
        stride = int(rng.integers(1, 3))
        out = channel_pool_output_size(size, k, stride, (front, back))
        top = self.fresh_name("chp")
        self.add(
            L.ChannelPoolingLayer(
                name=top,
                channel_dim=mocha_dim(rng, axis, len(shape)),
                kernel=k,
                stride=stride,
                pad=(front, back),
                pooling=MaxPooling() if rng.random() < 0.5 else MeanPooling(),
                bottoms=[b],
                tops=[top],
            ),
            [shape[:axis] + (out,) + shape[axis + 1 :]],
        )

    def op_lrn(self, b):
        rng = self.rng
        shape = self.shapes[b]
        within = len(shape) == 4 and rng.random() < 0.5
        top = self.fresh_name("lrn")
        self.add(
            L.LRNLayer(
                name=top,
                kernel=int(rng.integers(1, 5)),
                scale=float(rng.choice([1.0, 0.5, 0.0])),
                shift=float(rng.choice([1.0, 2.0])),
                power=float(rng.choice([0.75, 1.0, 0.5])),
                mode=L.LRNMode.WithinChannel() if within else L.LRNMode.AcrossChannel(),
                bottoms=[b],
                tops=[top],
            ),
            [shape],
        )

    def op_softmax(self, b):
        shape = self.shapes[b]
        axis = int(self.rng.integers(1, len(shape)))
        bottoms = self.same_shape(b, lambda s: len(s) == len(shape))
        top, tops = self.top_names("soft", bottoms)
        self.add(
            L.SoftmaxLayer(
                name=top,
                dim=mocha_dim(self.rng, axis, len(shape)),
                bottoms=bottoms,
                tops=tops,
            ),
            [self.shapes[x] for x in bottoms],
        )
        return tops[0]

    def op_reshape(self, b):
        shape = self.shapes[b]
        feats = math.prod(shape[1:])
        divs = [d for d in range(1, feats + 1) if feats % d == 0]
        d = int(self.rng.choice(divs))
        rest = feats // d
        per = (d, rest) if self.rng.random() < 0.5 else (d, 1, rest)
        if self.rng.random() < 0.3:
            per = (feats,)
        bottoms = self.same_shape(b, lambda s: math.prod(s[1:]) == feats)
        top, tops = self.top_names("resh", bottoms)
        self.add(
            L.ReshapeLayer(
                name=top, shape=tuple(reversed(per)), bottoms=bottoms, tops=tops
            ),
            [(self.shapes[x][0],) + per for x in bottoms],
        )

    def op_identity(self, b):
        bottoms = self.same_shape(b, lambda s: True)
        top, tops = self.top_names("id", bottoms)
        self.add(
            L.IdentityLayer(name=top, bottoms=bottoms, tops=tops),
            [self.shapes[x] for x in bottoms],
        )

    def op_argmax(self, b):
        rng = self.rng
        shape = self.shapes[b]
        axis = int(rng.integers(1, len(shape)))
        top = self.fresh_name("argmax")
        out = shape[:axis] + (1,) + shape[axis + 1 :]
        self.add(
            L.ArgmaxLayer(
                name=top,
                dim=mocha_dim(rng, axis, len(shape)),
                bottoms=[b],
                tops=[top],
            ),
            [out],
            available=False,
        )
        if rng.random() < 0.7:
            hot = self.fresh_name("onehot")
            self.add(
                L.Index2OnehotLayer(
                    name=hot,
                    dim=mocha_dim(rng, axis, len(out)),
                    n_class=shape[axis],
                    bottoms=[top],
                    tops=[hot],
                ),
                [shape],
            )

    # --- heads -------------------------------------------------------------

    def target_like(self, shape, kind="normal"):
        rng = self.rng
        if shape[0] != self.n:
            noise = self.fresh_name("tnoise")
            self.add(
                L.RandomNormalLayer(
                    name=noise,
                    tops=[noise],
                    output_dims=tuple(reversed(shape[1:])),
                    batch_sizes=[shape[0]],
                    eltype=self.dtype,
                ),
                [shape],
                available=False,
            )
            return noise
        full = (2 * self.n,) + tuple(shape[1:])
        if kind == "normal":
            arr = rng.normal(size=full)
        elif kind == "pm1":
            arr = rng.choice([-1.0, 1.0], size=full)
        elif kind == "unit":
            arr = rng.random(size=full)
            arr[rng.random(size=full) < 0.3] = 1.0
        return self.data("t", arr)

    def head(self, b):
        rng = self.rng
        shape = self.shapes[b]
        kind = rng.integers(9)
        weight = float(rng.choice([1.0, 0.5, 2.0, 0.0]))
        name = self.fresh_name("loss")
        if kind in (0, 1) or (shape[0] != self.n and kind < 7):
            t = self.target_like(shape)
            self.add(L.SquareLossLayer(name=name, weight=weight, bottoms=[b, t]), [])
            return
        if kind in (2, 3, 4):
            axis = int(rng.integers(1, len(shape)))
            classes = shape[axis]
            lshape = (2 * self.n,) + shape[1:axis] + (1,) + shape[axis + 1 :]
            label = self.data("lab", rng.integers(0, classes, size=lshape))
            dim = mocha_dim(rng, axis, len(shape))
            cw = {}
            if rng.random() < 0.3:
                cw = {
                    "weights": tuple(float(x) for x in rng.random(classes) + 0.1),
                    "normalize": str(rng.choice(["local", "global", "no"])),
                }
            if kind == 4:
                p = self.op_softmax_axis(b, axis)
                layer = L.MultinomialLogisticLossLayer(
                    name=name, dim=dim, weight=weight, bottoms=[p, label], **cw
                )
            else:
                layer = L.SoftmaxLossLayer(
                    name=name, dim=dim, weight=weight, bottoms=[b, label], **cw
                )
            self.add(layer, [])
            if rng.random() < 0.3:
                acc = self.fresh_name("acc")
                self.add(L.AccuracyLayer(name=acc, dim=dim, bottoms=[b, label]), [])
            return
        if kind == 5:
            axis = int(rng.integers(1, len(shape)))
            full = (2 * self.n,) + shape[1:]
            arr = rng.random(size=full)
            arr = arr / arr.sum(axis=axis, keepdims=True)
            label = self.data("soft", arr)
            self.add(
                L.SoftlabelSoftmaxLossLayer(
                    name=name,
                    dim=mocha_dim(rng, axis, len(shape)),
                    weight=weight,
                    bottoms=[b, label],
                ),
                [],
            )
            return
        if kind == 6:
            t = self.target_like(shape, "pm1")
            self.add(L.HingeLossLayer(name=name, weight=weight, bottoms=[b, t]), [])
            if rng.random() < 0.3:
                self.add(
                    L.BinaryAccuracyLayer(name=self.fresh_name("bacc"), bottoms=[b, t]),
                    [],
                )
            return
        if kind == 7:
            axis = int(rng.integers(1, len(shape)))
            p = self.op_softmax_axis(b, axis)
            t = self.target_like(shape, "unit")
            self.add(
                L.BinaryCrossEntropyLossLayer(name=name, weight=weight, bottoms=[p, t]),
                [],
            )
            return
        # Gaussian KL: sigma = a softmax of another view, always > 0.
        axis = int(rng.integers(1, len(shape)))
        sigma = self.op_softmax_axis(b, axis)
        # b feeds the softmax and the loss, so mochac inserts a split.
        self.add(
            L.GaussianKLLossLayer(name=name, weight=weight, bottoms=[b, sigma]), []
        )

    def op_softmax_axis(self, b, axis):
        shape = self.shapes[b]
        top = self.fresh_name("prob")
        self.add(
            L.SoftmaxLayer(
                name=top,
                dim=mocha_dim(self.rng, axis, len(shape)),
                bottoms=[b],
                tops=[top],
            ),
            [shape],
            available=False,
        )
        return top

    # --- the net ---------------------------------------------------------------

    def build(self):
        rng = self.rng
        if rng.random() < 0.7:
            c = int(rng.integers(1, 5))
            h = int(rng.integers(2, 9))
            w = int(rng.integers(2, 9))
            x = self.data("img", rng.normal(size=(2 * self.n, c, h, w)))
        else:
            x = self.data("vec", rng.normal(size=(2 * self.n, int(rng.integers(1, 9)))))
        self.available.append(x)
        if rng.random() < 0.3:
            v = self.data("vec", rng.normal(size=(2 * self.n, int(rng.integers(1, 7)))))
            self.available.append(v)
        ops4 = ["conv", "conv", "pool", "crop", "lrn"]
        ops = [
            "ip",
            "ip",
            "tied",
            "split",
            "concat",
            "elementwise",
            "power",
            "dropout",
            "chpool",
            "lrn",
            "softmax",
            "reshape",
            "identity",
            "argmax",
        ]
        for _ in range(int(rng.integers(2, 10))):
            b = self.pick_blob()
            if b is None:
                break
            kind = rng.choice(ops + (ops4 if len(self.shapes[b]) == 4 else []))
            getattr(self, f"op_{kind}")(b)
        # Heads on every unread blob (some stay outputs).
        for b in list(self.available):
            if b in self.consumed:
                continue
            if b in self.data_tops and self.consumed:
                continue
            if rng.random() < 0.1:
                continue
            self.head(b)
        if not any(layer.has_loss for layer in self.layers):
            self.head(self.available[-1])
        data = L.MemoryDataLayer(
            name="data",
            batch_size=self.n,
            tops=self.data_tops,
            data=self.data_arrays,
        )
        return [data] + self.layers
