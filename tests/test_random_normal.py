"""RandomNormalLayer: shapes, sample statistics, reproducibility and config checks."""

import json

import numpy as np
import pytest

from mochac import ConfigError, CPUBackend, Net
from mochac.layers.random_normal import RandomNormalLayer
from mochac.serialize import from_json, to_json


def noise_layer(eltype=np.float32):
    return RandomNormalLayer(
        name="noise",
        tops=["small", "large"],
        output_dims=(30, 20),
        batch_sizes=[2, 50],
        eltype=eltype,
    )


def noise_net(seed=0, threads=2, dtype=np.float32):
    backend = CPUBackend(dtype=dtype, seed=seed, threads=threads)
    return Net("noise", backend, [noise_layer(dtype)])


@pytest.fixture(scope="module")
def net():
    return noise_net()


def draw(net):
    net.forward()
    return {top: net.blobs[top].copy() for top in ("small", "large")}


def test_random_normal_shapes(net):
    assert net.blobs["small"].shape == (2, 20, 30)
    assert net.blobs["large"].shape == (50, 20, 30)
    assert net.blobs["large"].dtype == np.float32


def test_random_normal_statistics(net):
    samples = draw(net)["large"].astype(np.float64).ravel()
    assert samples.size == 30000
    assert abs(samples.mean()) < 0.03
    assert abs(samples.std() - 1.0) < 0.03
    # Fractions within one and two standard deviations of a normal distribution.
    assert abs(np.mean(np.abs(samples) < 1.0) - 0.6827) < 0.015
    assert abs(np.mean(np.abs(samples) < 2.0) - 0.9545) < 0.01
    assert np.isfinite(samples).all()


def test_random_normal_fresh_each_forward(net):
    first = draw(net)
    second = draw(net)
    assert not np.array_equal(first["small"], second["small"])
    assert not np.array_equal(first["large"], second["large"])
    # The tops draw from disjoint counters, so no top repeats another.
    assert not np.array_equal(first["small"].ravel(), first["large"].ravel()[:1200])


def test_random_normal_same_seed_same_samples():
    one = draw(noise_net(seed=7, threads=1))
    other = draw(noise_net(seed=7, threads=3))
    different = draw(noise_net(seed=8, threads=1))
    np.testing.assert_array_equal(one["large"], other["large"])
    assert not np.array_equal(one["large"], different["large"])


def test_random_normal_stream_restores(net):
    saved = {key: array.copy() for key, array in net.rng_states.items()}
    assert list(saved) == ["noise.stream"]
    first = draw(net)
    for key, array in net.rng_states.items():
        array[...] = saved[key]
    again = draw(net)
    np.testing.assert_array_equal(first["small"], again["small"])
    np.testing.assert_array_equal(first["large"], again["large"])


def test_random_normal_float64():
    net = noise_net(dtype=np.float64)
    samples = draw(net)["large"]
    assert samples.dtype == np.float64
    assert abs(samples.std() - 1.0) < 0.03


def test_random_normal_eltype_must_match_backend():
    backend = CPUBackend(dtype=np.float64, seed=0, threads=1)
    with pytest.raises(ConfigError, match=r"'noise'.*eltype=float32.*float64"):
        Net("noise", backend, [noise_layer(np.float32)])


def test_random_normal_defaults():
    layer = RandomNormalLayer(tops=["x"], output_dims=[3], batch_sizes=[2])
    assert layer.eltype == np.float32
    assert layer.infer_shapes([]) == [(2, 3)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_dims", ()),
        ("output_dims", (3, 0)),
        ("batch_sizes", [2]),
        ("batch_sizes", [2, 1.5]),
        ("eltype", np.int32),
        ("eltype", "noise"),
        ("eltype", None),
    ],
)
def test_random_normal_invalid_field(field, value):
    fields = {"output_dims": (3,), "batch_sizes": [2, 2], field: value}
    with pytest.raises(ConfigError, match=rf"'noise1'.*invalid {field}="):
        RandomNormalLayer(name="noise1", tops=["a", "b"], **fields)


def test_random_normal_takes_no_bottoms():
    with pytest.raises(ConfigError, match=r"'noise1'.*invalid bottoms="):
        RandomNormalLayer(
            name="noise1", bottoms=["x"], tops=["a"], output_dims=(3,), batch_sizes=[2]
        )


def test_random_normal_serializes():
    layer = noise_layer(np.float64)
    stored = json.loads(json.dumps(to_json(layer)))
    restored = from_json(stored)
    assert restored.eltype is np.float64
    assert restored.output_dims == layer.output_dims
    assert restored.batch_sizes == layer.batch_sizes
