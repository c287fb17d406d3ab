"""ConvolutionLayer over a batch split into chunks and lanes.

A batch of 19 images runs as 7 chunks of 3 (the last contains 1) on 7 lanes, so
these nets reach the partial last chunk, lanes with two chunks and the
lane-order sum of partial gradients, which the 2-image nets of
test_convolution.py do not.
"""

import numpy as np
import pytest
from gradcheck import build_net, check_gradients
from test_convolution import reference_convolution

from mochac import ConvolutionLayer, GaussianInitializer, Neurons
from mochac.codegen import c_source
from mochac.codegen.lowering import CONV_MAX_LANES, conv_chunking

RNG = np.random.default_rng(11)
BATCH = 19
INPUTS = {
    "x_pad": RNG.normal(size=(BATCH, 4, 6, 5)),
    "x_relu": RNG.normal(size=(BATCH, 2, 5, 5)),
}
LAYERS = [
    ConvolutionLayer(
        name="conv_pad",
        bottoms=["x_pad"],
        tops=["y_pad"],
        kernel=(3, 2),
        stride=(1, 2),
        pad=(1, 1),
        n_filter=4,
        n_group=2,
        bias_init=GaussianInitializer(std=0.5),
    ),
    ConvolutionLayer(
        name="conv_relu",
        bottoms=["x_relu"],
        tops=["y_relu"],
        kernel=2,
        n_filter=3,
        neuron=Neurons.ReLU(),
        bias_init=GaussianInitializer(std=0.5),
    ),
]


@pytest.fixture(scope="module")
def nets():
    """The same net with 1 and with 3 threads.

    These nets are far below the size at which generated code starts using
    threads, so the threshold is lowered to make the lanes run in parallel.
    """
    saved = c_source.PARALLEL_MIN_FLOPS
    c_source.PARALLEL_MIN_FLOPS = 0
    try:
        built = {
            threads: build_net(
                f"conv-chunks-{threads}", LAYERS, INPUTS, seed=5, threads=threads
            )
            for threads in (1, 3)
        }
    finally:
        c_source.PARALLEL_MIN_FLOPS = saved
    for net in built.values():
        assert "mochac_parallel = 1;" in net.source
    return built


def test_chunking_of_test_batch(nets):
    context = next(k.context for k in nets[1].kernels if k.context["fn"] == "conv_pad")
    assert (context["CHUNK"], context["CHUNKS"], context["LANES"]) == (3, 7, 7)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 19, 64, 1000])
@pytest.mark.parametrize("bytes_per_image", [100, 60_000, 10_000_000])
def test_chunking_covers_batch(n, bytes_per_image):
    chunk, chunks, lanes = conv_chunking(n, bytes_per_image)
    assert chunk >= 1
    assert (chunks - 1) * chunk < n <= chunks * chunk
    assert 1 <= lanes <= min(chunks, CONV_MAX_LANES)
    # Every lane gets a chunk when the batch allows it.
    assert lanes == min(n, CONV_MAX_LANES) or chunks < CONV_MAX_LANES


@pytest.mark.parametrize("name", ["conv_pad", "conv_relu"])
def test_forward_matches_reference(nets, name):
    net = nets[3]
    net.forward_layer(name)
    layer = net.get_layer(name)
    params = net.params[name]
    expected = reference_convolution(
        net.blobs[layer.bottoms[0]], params["filter"], params["bias"], layer
    )
    if not layer.neuron.is_identity:
        expected = np.maximum(expected, 0.0)
    np.testing.assert_allclose(
        net.blobs[layer.tops[0]], expected, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name", ["conv_pad", "conv_relu"])
def test_gradients(nets, name):
    layer = nets[3].get_layer(name)
    assert check_gradients(nets[3], name) == [*layer.bottoms, "filter", "bias"]


@pytest.mark.parametrize("name", ["conv_pad", "conv_relu"])
def test_same_bits_for_any_thread_count(nets, name):
    layer = nets[1].get_layer(name)
    results = []
    for threads in (1, 3):
        net = nets[threads]
        # Same parameters and top diff in both nets.
        for param, values in nets[1].params[name].items():
            net.params[name][param][...] = values
        top = layer.tops[0]
        net.diffs[top][...] = np.random.default_rng(2).normal(size=net.diffs[top].shape)
        net.forward_layer(name)
        net.diffs[top][...] = np.random.default_rng(2).normal(size=net.diffs[top].shape)
        net.backward_layer(name)
        results.append(
            [
                net.blobs[top].copy(),
                net.diffs[layer.bottoms[0]].copy(),
                *(grad.copy() for grad in net.grads[name].values()),
            ]
        )
    for one, three in zip(*results):
        assert np.array_equal(one, three)
