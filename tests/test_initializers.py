"""OrthogonalInitializer and NullInitializer, alone and in a net."""

import math

import numpy as np
import pytest

from mochac import (
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    GaussianInitializer,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    SquareLossLayer,
)
from mochac.initializers import NullInitializer, OrthogonalInitializer


def flattened(values):
    """Return ``values`` as the (fan_out, fan_in) matrix the initializers see."""
    return values.reshape(values.shape[0], -1)


@pytest.mark.parametrize(
    "shape",
    [(4, 10), (6, 2, 3, 3), (5, 5)],
    ids=["wide", "filter", "square"],
)
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2)])
def test_orthogonal_rows(shape, gain):
    values = OrthogonalInitializer(gain=gain).init(
        shape, np.random.default_rng(1), np.float64
    )
    assert values.shape == shape
    matrix = flattened(values)
    # fan_out <= fan_in: each output's weights are orthogonal with norm gain.
    np.testing.assert_allclose(
        matrix @ matrix.T, gain**2 * np.eye(shape[0]), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal_columns_when_tall(gain):
    values = OrthogonalInitializer(gain=gain).init(
        (10, 4), np.random.default_rng(2), np.float64
    )
    np.testing.assert_allclose(
        values.T @ values, gain**2 * np.eye(4), rtol=0, atol=1e-12
    )


def test_orthogonal_vector_has_norm_gain():
    values = OrthogonalInitializer(gain=3.0).init(
        (7,), np.random.default_rng(3), np.float64
    )
    assert values.shape == (7,)
    assert np.linalg.norm(values) == pytest.approx(3.0, rel=1e-12)


def test_orthogonal_float32():
    values = OrthogonalInitializer().init((8, 20), np.random.default_rng(4), np.float32)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values @ values.T, np.eye(8), rtol=0, atol=1e-5)


def test_orthogonal_draws_are_random():
    init = OrthogonalInitializer()
    first = init.init((5, 5), np.random.default_rng(5), np.float64)
    again = init.init((5, 5), np.random.default_rng(5), np.float64)
    other = init.init((5, 5), np.random.default_rng(6), np.float64)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    # A random orthogonal matrix is not a signed permutation matrix.
    assert np.abs(first).max() < 0.999


@pytest.mark.parametrize("gain", [0, -1.0, math.inf, math.nan, "1", True])
def test_orthogonal_invalid_gain(gain):
    with pytest.raises(ConfigError, match=r"OrthogonalInitializer: invalid gain="):
        OrthogonalInitializer(gain=gain)


def test_gaussian_rejects_infinite_std():
    with pytest.raises(ConfigError, match=r"invalid std=inf; expected a finite"):
        GaussianInitializer(std=math.inf)


def test_null_returns_zeros():
    values = NullInitializer().init((3, 4), np.random.default_rng(7), np.float32)
    assert values.shape == (3, 4)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, np.zeros((3, 4)))


def test_null_draws_nothing():
    rng = np.random.default_rng(8)
    before = rng.bit_generator.state
    NullInitializer().init((50, 50), rng, np.float64)
    assert rng.bit_generator.state == before


def test_initializers_in_net():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 1, 5, 5))
    target = rng.normal(size=(2, 3))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, tops=["x", "t"], data=[x, target]),
        ConvolutionLayer(
            name="conv",
            kernel=(3, 3),
            n_filter=4,
            filter_init=OrthogonalInitializer(gain=2.0),
            bottoms=["x"],
            tops=["c"],
        ),
        InnerProductLayer(
            name="ip",
            output_dim=3,
            weight_init=NullInitializer(),
            bias_init=OrthogonalInitializer(),
            bottoms=["c"],
            tops=["y"],
        ),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]
    backend = CPUBackend(dtype=np.float64, seed=3, threads=2)
    net = Net("init", backend, layers, keep=["y"])

    filters = flattened(net.params["conv"]["filter"])
    assert filters.shape == (4, 9)
    np.testing.assert_allclose(filters @ filters.T, 4 * np.eye(4), atol=1e-12)

    np.testing.assert_array_equal(net.params["ip"]["weight"], np.zeros((3, 36)))
    assert np.linalg.norm(net.params["ip"]["bias"]) == pytest.approx(1.0)
    # With zero weights the output is the bias alone.
    net.forward()
    np.testing.assert_allclose(
        net.blobs["y"], np.tile(net.params["ip"]["bias"], (2, 1)), atol=1e-12
    )
