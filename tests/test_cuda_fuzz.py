"""Random layer configurations: the CUDA program on the host against the CPU.

Each case is a small net around one layer of one family, with shapes,
strides, pads, groups and dims drawn from a seeded generator. Blob sizes
often cross the 256-thread block and span several blocks, and batches are
1 or odd, so a kernel whose indexing only holds for the fixed nets of
tests/cuda_nets.py shows here. Every state and parameter gradient must
match the CPU backend in float64, and every blob's data and diff too unless
the case plans a memory arena, where blobs share memory.

A head of an inner product and a softmax loss on each differentiable top
gives it a dense random diff. Outside pytest,
``python tests/test_cuda_fuzz.py COUNT [FAMILY,...|all] [FIRST_SEED]`` runs
COUNT cases per family with the race check on and prints each mismatch.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
from test_cuda_host_emulation import assert_grads_match, assert_states_match, twin

from mochac.codegen.cuda import steps
from mochac.errors import ConfigError, ShapeError, TopologyError
from mochac.layers import (
    AccuracyLayer,
    ArgmaxLayer,
    ChannelPoolingLayer,
    ConcatLayer,
    ConvolutionLayer,
    CropLayer,
    DropoutLayer,
    ElementWiseFunctors,
    ElementWiseLayer,
    Index2OnehotLayer,
    InnerProductLayer,
    LRNLayer,
    LRNMode,
    MemoryDataLayer,
    PoolingLayer,
    PowerLayer,
    SoftmaxLayer,
    SoftmaxLossLayer,
    SplitLayer,
)
from mochac.layers.pooling import MaxPooling, MeanPooling
from mochac.neurons import Identity, ReLU, Sigmoid, Tanh

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)
RTOL, ATOL = 1e-10, 1e-12
# Classes of the inner product heads.
HEAD_CLASSES = 3
NEURONS = (Identity, ReLU, Sigmoid, Tanh)


def draw_batch(rng):
    return int(rng.choice([1, 1, 3, 5]))


def draw_size(rng, low=1, high=17):
    return int(rng.integers(low, high + 1))


def draw_neuron(rng):
    return NEURONS[rng.integers(len(NEURONS))]()


def draw_mocha_dim(rng, ndim, batch=False):
    """Return a Mocha dim of an ``ndim``-D blob, positive or negative. It is
    the batch dim only when ``batch`` allows it."""
    axis = int(rng.integers(0 if batch else 1, ndim))
    if rng.random() < 0.5:
        return -(axis + 1)
    return ndim - axis


def case(rng, batch, inputs, body, trainable, **fields):
    """Return a case whose net feeds ``inputs`` (name -> array) to the layers
    that ``body()`` returns, with a head on each top named in ``trainable``."""
    labels = rng.integers(0, HEAD_CLASSES, (batch, 1)).astype(np.float64)
    names = list(inputs) + ["head_label"]
    arrays = list(inputs.values()) + [labels]

    def layers():
        net = [MemoryDataLayer(name="data", batch_size=batch, tops=names, data=arrays)]
        net += body()
        for top in trainable:
            net.append(
                InnerProductLayer(
                    name=f"head_{top}",
                    output_dim=HEAD_CLASSES,
                    bottoms=[top],
                    tops=[f"score_{top}"],
                )
            )
            net.append(
                SoftmaxLossLayer(
                    name=f"loss_{top}", bottoms=[f"score_{top}", "head_label"]
                )
            )
        return net

    return SimpleNamespace(layers=layers, batch=batch, fields=fields)


def draw_ndim(rng):
    return int(rng.choice([2, 3, 4, 4]))


def axis_of(dim, ndim):
    """Return the NumPy axis of Mocha's ``dim`` in an ``ndim``-D blob."""
    return -dim - 1 if dim < 0 else ndim - dim


def blob(rng, batch, ndim, channels_high=6):
    """Return a random (N, C), (N, C, H) or (N, C, H, W) array."""
    shape = [batch, draw_size(rng, 1, channels_high)]
    shape += [draw_size(rng) for _ in range(ndim - 2)]
    return rng.standard_normal(shape)


def images(rng, batch, channels=None, height=None, width=None):
    shape = (
        batch,
        channels or draw_size(rng, 1, 6),
        height or draw_size(rng),
        width or draw_size(rng),
    )
    return rng.standard_normal(shape)


def several(rng, draw):
    """Return inputs x0, x1, ... for a layer that takes any number of
    bottoms: usually one array from ``draw()``, sometimes two of different
    shapes, so each bottom's own sizes and offsets are used."""
    count = 2 if rng.random() < 0.35 else 1
    return {f"x{index}": draw() for index in range(count)}


def tops_of(inputs):
    return [name.replace("x", "y", 1) for name in inputs]


def convolution_case(rng):
    batch = draw_batch(rng)
    groups = int(rng.integers(1, 4))
    kernel = (draw_size(rng, 1, 4), draw_size(rng, 1, 4))
    pad = (int(rng.integers(0, kernel[0])), int(rng.integers(0, kernel[1])))
    stride = (draw_size(rng, 1, 3), draw_size(rng, 1, 3))
    # Kernel and pad pairs are (width, height).
    # The bottoms of a convolution share one shape.
    shape = images(
        rng,
        batch,
        groups * draw_size(rng, 1, 3),
        draw_size(rng, max(1, kernel[1] - 2 * pad[1]), 14),
        draw_size(rng, max(1, kernel[0] - 2 * pad[0]), 14),
    ).shape
    inputs = several(rng, lambda: rng.standard_normal(shape))
    fields = {
        "n_filter": groups * draw_size(rng, 1, 3),
        "n_group": groups,
        "kernel": kernel,
        "stride": stride,
        "pad": pad,
        "neuron": draw_neuron(rng),
    }

    def body():
        return [
            ConvolutionLayer(
                name="conv", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, tops_of(inputs), shapes=shapes, **fields)


def pooling_case(rng):
    batch = draw_batch(rng)
    kernel = (draw_size(rng, 1, 4), draw_size(rng, 1, 4))
    pad = (int(rng.integers(0, kernel[0])), int(rng.integers(0, kernel[1])))
    stride = (draw_size(rng, 1, 3), draw_size(rng, 1, 3))
    inputs = several(
        rng,
        lambda: images(
            rng,
            batch,
            None,
            draw_size(rng, max(1, kernel[1] - 2 * pad[1]), 17),
            draw_size(rng, max(1, kernel[0] - 2 * pad[0]), 17),
        ),
    )
    pooling = MeanPooling() if rng.random() < 0.5 else MaxPooling()
    fields = {
        "kernel": kernel,
        "stride": stride,
        "pad": pad,
        "pooling": pooling,
        "neuron": draw_neuron(rng),
    }

    def body():
        return [
            PoolingLayer(
                name="pool", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, tops_of(inputs), shapes=shapes, **fields)


def lrn_case(rng):
    batch = draw_batch(rng)
    within = rng.random() < 0.5
    # Across channels takes any blob with a channel axis, within a channel
    # only 4-D ones.
    x = blob(rng, batch, 4 if within else draw_ndim(rng), 9)
    fields = {
        "kernel": int(rng.choice([1, 2, 3, 4, 5, 7])),
        "scale": float(rng.uniform(0.5, 2.0)),
        "shift": float(rng.choice([0.25, 1.0, 1.5])),
        "power": float(rng.uniform(0.5, 1.0)),
        "mode": LRNMode.WithinChannel() if within else LRNMode.AcrossChannel(),
    }

    def body():
        return [LRNLayer(name="lrn", bottoms=["x"], tops=["y"], **fields)]

    return case(rng, batch, {"x": x}, body, ["y"], shape=x.shape, **fields)


def inner_product_case(rng):
    batch = draw_batch(rng)
    shape = images(rng, batch, draw_size(rng, 1, 4), draw_size(rng, 1, 9)).shape
    inputs = several(rng, lambda: rng.standard_normal(shape))
    fields = {"output_dim": draw_size(rng, 1, 300), "neuron": draw_neuron(rng)}

    def body():
        return [
            InnerProductLayer(
                name="ip", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, tops_of(inputs), shapes=shapes, **fields)


def softmax_case(rng):
    batch = draw_batch(rng)
    ndim = draw_ndim(rng)
    inputs = several(rng, lambda: 3 * blob(rng, batch, ndim, 9))
    fields = {"dim": draw_mocha_dim(rng, ndim, batch=True)}

    def body():
        return [
            SoftmaxLayer(
                name="softmax", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, tops_of(inputs), shapes=shapes, **fields)


def class_labels(rng, shape, dim):
    """Return labels for predictions of ``shape`` along Mocha's ``dim``, and
    the class count."""
    axis = axis_of(dim, len(shape))
    label_shape = list(shape)
    label_shape[axis] = 1
    classes = shape[axis]
    return rng.integers(0, classes, label_shape).astype(np.float64), classes


def softmax_loss_case(rng):
    batch = draw_batch(rng)
    x = 3 * blob(rng, batch, draw_ndim(rng), 9)
    dim = draw_mocha_dim(rng, x.ndim)
    label, classes = class_labels(rng, x.shape, dim)
    fields = {"dim": dim, "weight": float(rng.uniform(0.5, 2.0))}
    if rng.random() < 0.5:
        fields["weights"] = tuple(float(w) for w in rng.uniform(0.5, 2.0, classes))

    def body():
        return [SoftmaxLossLayer(name="loss", bottoms=["x", "label"], **fields)]

    return case(rng, batch, {"x": x, "label": label}, body, [], shape=x.shape, **fields)


def concat_case(rng):
    batch = draw_batch(rng)
    ndim = draw_ndim(rng)
    dim = draw_mocha_dim(rng, ndim)
    axis = axis_of(dim, ndim)
    base = list(blob(rng, batch, ndim).shape)
    inputs = {}
    for index in range(int(rng.integers(2, 4))):
        shape = list(base)
        shape[axis] = draw_size(rng, 1, 9)
        inputs[f"x{index}"] = rng.standard_normal(shape)
    fields = {"dim": dim}

    def body():
        return [ConcatLayer(name="concat", bottoms=list(inputs), tops=["y"], **fields)]

    shapes = [array.shape for array in inputs.values()]
    return case(rng, batch, inputs, body, ["y"], shapes=shapes, **fields)


def crop_case(rng):
    batch = draw_batch(rng)
    inputs = several(rng, lambda: images(rng, batch))
    smallest_height = min(x.shape[2] for x in inputs.values())
    smallest_width = min(x.shape[3] for x in inputs.values())
    crop_size = (draw_size(rng, 1, smallest_width), draw_size(rng, 1, smallest_height))
    fields = {
        "crop_size": crop_size,
        "random_crop": bool(rng.random() < 0.5),
        "random_mirror": bool(rng.random() < 0.5),
    }

    def body():
        return [
            CropLayer(name="crop", bottoms=list(inputs), tops=tops_of(inputs), **fields)
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, [], shapes=shapes, **fields)


def channel_pooling_case(rng):
    batch = draw_batch(rng)
    x = blob(rng, batch, draw_ndim(rng), 12)
    dim = draw_mocha_dim(rng, x.ndim)
    axis = axis_of(dim, x.ndim)
    kernel = draw_size(rng, 1, min(4, x.shape[axis] + 2))
    pad = (int(rng.integers(0, kernel)), int(rng.integers(0, kernel)))
    if x.shape[axis] + sum(pad) < kernel:
        pad = (kernel - 1, kernel - 1)
    pooling = MeanPooling() if rng.random() < 0.5 else MaxPooling()
    fields = {
        "channel_dim": dim,
        "kernel": kernel,
        "stride": draw_size(rng, 1, 3),
        "pad": pad,
        "pooling": pooling,
    }

    def body():
        return [ChannelPoolingLayer(name="cpool", bottoms=["x"], tops=["y"], **fields)]

    return case(rng, batch, {"x": x}, body, ["y"], shape=x.shape, **fields)


def elementwise_case(rng):
    batch = draw_batch(rng)
    shape = blob(rng, batch, draw_ndim(rng)).shape
    operations = (
        ElementWiseFunctors.Add,
        ElementWiseFunctors.Subtract,
        ElementWiseFunctors.Multiply,
        ElementWiseFunctors.Divide,
    )
    operation = operations[rng.integers(len(operations))]()
    count = 2
    if not isinstance(operation, (operations[1], operations[3])):
        count = int(rng.integers(2, 5))
    inputs = {}
    for index in range(count):
        # Magnitudes of at least 0.5 keep division well conditioned.
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        inputs[f"x{index}"] = sign * rng.uniform(0.5, 2.0, shape)
    fields = {"operation": operation}

    def body():
        return [
            ElementWiseLayer(name="eltwise", bottoms=list(inputs), tops=["y"], **fields)
        ]

    return case(rng, batch, inputs, body, ["y"], shape=shape, count=count, **fields)


def power_case(rng):
    batch = draw_batch(rng)
    inputs = several(
        rng, lambda: rng.uniform(0.5, 2.0, blob(rng, batch, draw_ndim(rng)).shape)
    )
    fields = {
        "power": float(rng.choice([0, 1, 2, 3, 0.5, -1, 1.5, -0.5])),
        "scale": float(rng.choice([1.0, 0.5, 2.0])),
        "shift": float(rng.choice([0.0, 1.0, 0.25])),
    }

    def body():
        return [
            PowerLayer(
                name="power", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, tops_of(inputs), shapes=shapes, **fields)


def dropout_case(rng):
    batch = draw_batch(rng)
    x = blob(rng, batch, draw_ndim(rng))
    fields = {
        "ratio": float(rng.uniform(0.05, 0.95)),
        "auto_scale": bool(rng.random() < 0.7),
    }

    def body():
        return [DropoutLayer(name="dropout", bottoms=["x"], tops=["y"], **fields)]

    return case(rng, batch, {"x": x}, body, ["y"], shape=x.shape, **fields)


def argmax_case(rng):
    batch = draw_batch(rng)
    ndim = draw_ndim(rng)
    inputs = several(rng, lambda: blob(rng, batch, ndim, 9))
    fields = {"dim": draw_mocha_dim(rng, ndim)}

    def body():
        return [
            ArgmaxLayer(
                name="argmax", bottoms=list(inputs), tops=tops_of(inputs), **fields
            )
        ]

    shapes = [x.shape for x in inputs.values()]
    return case(rng, batch, inputs, body, [], shapes=shapes, **fields)


def accuracy_case(rng):
    batch = draw_batch(rng)
    x = blob(rng, batch, draw_ndim(rng), 9)
    dim = draw_mocha_dim(rng, x.ndim)
    label, _ = class_labels(rng, x.shape, dim)
    fields = {"dim": dim}

    def body():
        return [AccuracyLayer(name="accuracy", bottoms=["x", "label"], **fields)]

    return case(rng, batch, {"x": x, "label": label}, body, [], shape=x.shape, **fields)


def index2onehot_case(rng):
    batch = draw_batch(rng)
    ndim = draw_ndim(rng)
    dim = draw_mocha_dim(rng, ndim)
    axis = axis_of(dim, ndim)
    shape = list(blob(rng, batch, ndim).shape)
    shape[axis] = 1
    n_class = draw_size(rng, 1, 40)
    label = rng.integers(0, n_class, shape).astype(np.float64)
    fields = {"dim": dim, "n_class": n_class}

    def body():
        return [
            Index2OnehotLayer(name="onehot", bottoms=["label"], tops=["y"], **fields)
        ]

    return case(rng, batch, {"label": label}, body, [], shape=tuple(shape), **fields)


def split_case(rng):
    batch = draw_batch(rng)
    x = images(rng, batch)
    tops = [f"y{index}" for index in range(int(rng.integers(2, 5)))]

    def body():
        return [SplitLayer(name="split", bottoms=["x"], tops=tops)]

    return case(rng, batch, {"x": x}, body, tops, shape=x.shape, tops=len(tops))


FAMILIES = {
    "convolution": convolution_case,
    "pooling": pooling_case,
    "lrn": lrn_case,
    "inner_product": inner_product_case,
    "softmax": softmax_case,
    "softmax_loss": softmax_loss_case,
    "concat": concat_case,
    "crop": crop_case,
    "channel_pooling": channel_pooling_case,
    "elementwise": elementwise_case,
    "power": power_case,
    "dropout": dropout_case,
    "argmax": argmax_case,
    "accuracy": accuracy_case,
    "index2onehot": index2onehot_case,
    "split": split_case,
}


def compare(pair, orders, batch, every_blob=True):
    """Step both nets in each thread order and assert that every state and
    gradient matches, and every blob unless ``every_blob`` is false."""
    for order in orders:
        pair.run.order = order
        pair.cpu.forward()
        for source in pair.cpu.sources.values():
            for top in source.layer.tops:
                pair.run.array("data", top)[...] = pair.cpu.blobs[top]
        assert pair.run.run(pair.program.forward, batch).code == 0
        pair.cpu.backward()
        pair.run.run(pair.program.backward, batch)
        assert_states_match(pair)
        assert_grads_match(pair)
        if not every_blob:
            continue
        for kind, views in (("data", pair.cpu.blobs), ("diff", pair.cpu.diffs)):
            for blob, expected in views.items():
                np.testing.assert_allclose(
                    pair.run.array(kind, blob).reshape(expected.shape),
                    expected,
                    rtol=RTOL,
                    atol=ATOL,
                    err_msg=f"{kind} of {blob} ({order} order)",
                )


def compare_valid_part(pair, n_valid):
    """Run the forward pass again with only the first ``n_valid`` samples
    valid, and assert that the losses and statistics match."""
    cpu = pair.cpu
    cpu._check(cpu.lib.mochac_forward(cpu.pointers, cpu.status, n_valid))
    assert pair.run.run(pair.program.forward, n_valid).code == 0
    assert_states_match(pair)


def draw_case(family, seed):
    """Return the case of ``family`` that ``seed`` draws, with its opt level,
    block limit and whether it plans a memory arena."""
    rng = np.random.default_rng(seed)
    drawn = FAMILIES[family](rng)
    drawn.opt_level = int(rng.integers(0, 2))
    # Half the cases cap the grid at 1 to 3 blocks, so the grid-stride loops
    # and the loops of block-per-row kernels run more than once, as they do
    # on the device for blobs of over MAX_BLOCKS * 256 elements.
    drawn.max_blocks = steps.MAX_BLOCKS
    if rng.random() < 0.5:
        drawn.max_blocks = int(rng.integers(1, 4))
    # A planned arena lets blobs share memory, so only states and gradients
    # are compared then, as blobs may hold later data.
    drawn.plan = bool(rng.random() < 0.3)
    return drawn


def run_case(family, seed, folders, races=True, orders=("forward", "shuffle")):
    """Build the case that ``seed`` draws and compare it in each order."""
    drawn = draw_case(family, seed)
    with patch.object(steps, "MAX_BLOCKS", drawn.max_blocks):
        pair = twin(
            f"{family}_{seed}",
            drawn.layers,
            folders,
            plan=drawn.plan,
            races=races,
            opt_level=drawn.opt_level,
            disable=() if drawn.plan else ("plan_memory",),
            force_backward=True,
        )
    compare(pair, orders, drawn.batch, every_blob=not drawn.plan)
    if drawn.batch > 1:
        compare_valid_part(pair, drawn.batch - 1)


# Cases per family in the pytest run; the seeds are fixed.
CASES_PER_FAMILY = 2


@pytest.mark.parametrize("seed", range(CASES_PER_FAMILY))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_layer_matches_cpu(family, seed, tmp_path_factory):
    run_case(family, 1000 + seed, tmp_path_factory, races=False)


class Folders:
    """A stand-in for pytest's tmp_path_factory outside pytest."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def fuzz(count, families, first_seed=0):
    """Run ``count`` cases per family and print each failure. Return the
    failures as (family, seed, error)."""
    failures = []
    folders = Folders(Path(tempfile.mkdtemp(prefix="cuda_fuzz_")))
    for family in families:
        start = time.perf_counter()
        rejected = 0
        for seed in range(first_seed, first_seed + count):
            try:
                run_case(family, seed, folders)
            except (ConfigError, ShapeError, TopologyError) as error:
                # A configuration that the layer rejects is no mismatch.
                rejected += 1
                print(f"{family} {seed}: rejected: {str(error)[:160]}")
            except Exception as error:  # noqa: BLE001 - each failure is reported
                failures.append((family, seed, error))
                drawn = draw_case(family, seed)
                print(
                    f"FAIL {family} {seed}: batch {drawn.batch}, "
                    f"opt_level {drawn.opt_level}, max_blocks {drawn.max_blocks}, "
                    f"plan {drawn.plan}, "
                    f"{drawn.fields}\n{str(error)[:800]}"
                )
        seconds = time.perf_counter() - start
        print(
            f"{family}: {count} cases, {rejected} rejected, {seconds:.0f} s",
            flush=True,
        )
    return failures


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    chosen = sorted(FAMILIES)
    if len(sys.argv) > 2 and sys.argv[2] != "all":
        chosen = sys.argv[2].split(",")
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    found = fuzz(count, chosen, first)
    print(f"{len(found)} failures")
