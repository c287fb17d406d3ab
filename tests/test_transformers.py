"""Data transformers: SubMean and Scale on the batches of every data layer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac import (
    ConfigError,
    CPUBackend,
    DataError,
    HDF5DataLayer,
    MemoryDataLayer,
    Net,
    SquareLossLayer,
)
from mochac.layers.data import AsyncHDF5DataLayer
from mochac.runtime.data_sources import make_source
from mochac.serialize import from_json, to_json
from mochac.transformers import DataTransformers

RNG = np.random.default_rng(0)
DATA = RNG.normal(size=(6, 2, 3, 3)).astype(np.float32)
LABEL = np.arange(6, dtype=np.float32).reshape(6, 1)
MEAN = RNG.normal(size=(2, 3, 3)).astype(np.float32)


def write_source(folder: Path) -> Path:
    with h5py.File(folder / "samples.hdf5", "w") as handle:
        handle["data"] = DATA
        handle["label"] = LABEL
    source = folder / "samples.txt"
    source.write_text("samples.hdf5\n")
    return source


def write_mean(path: Path, mean=MEAN, name="mean") -> Path:
    with h5py.File(path, "w") as handle:
        handle[name] = mean
    return path


def batches(layer, count=2):
    """Return the first ``count`` batches of ``layer`` as lists of arrays."""
    source = make_source(layer, np.float32, np.random.default_rng(0))
    served = []
    for _ in range(count):
        outputs = [np.zeros(shape, np.float32) for shape in source.shapes]
        source.next_batch(outputs)
        served.append(outputs)
    source.close()
    return served


# --- what each transformer computes -------------------------------------------------


def test_scale_multiplies_batch():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.Scale(scale=0.5))],
    )
    (first, second) = batches(layer)

    np.testing.assert_array_equal(first[0], DATA[:3] * np.float32(0.5))
    np.testing.assert_array_equal(second[0], DATA[3:] * np.float32(0.5))
    np.testing.assert_array_equal(first[1], LABEL[:3])


def test_scale_default_is_one():
    assert DataTransformers.Scale().scale == 1.0


def test_submean_blob_subtracts_per_sample():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.SubMean(mean_blob=MEAN))],
    )
    (first, _) = batches(layer)

    expected = np.stack([sample - MEAN for sample in DATA[:3]])
    np.testing.assert_allclose(first[0], expected, rtol=0, atol=1e-6)


def test_submean_leading_unit_axis_accepted():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.SubMean(mean_blob=MEAN[None]))],
    )
    (first, _) = batches(layer)
    np.testing.assert_allclose(first[0], DATA[:3] - MEAN, rtol=0, atol=1e-6)


def test_submean_file_read(tmp_path):
    mean_file = write_mean(tmp_path / "mean.hdf5", MEAN.astype(np.float64))
    layer = HDF5DataLayer(
        name="data",
        source=str(write_source(tmp_path)),
        batch_size=3,
        transformers=[("data", DataTransformers.SubMean(mean_file=str(mean_file)))],
    )
    (first, _) = batches(layer)
    np.testing.assert_allclose(first[0], DATA[:3] - MEAN, rtol=0, atol=1e-6)


def test_transformers_apply_in_order():
    scale = DataTransformers.Scale(scale=2.0)
    sub_mean = DataTransformers.SubMean(mean_blob=MEAN)
    mean_first = MemoryDataLayer(
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", sub_mean), ("data", scale)],
    )
    scale_first = MemoryDataLayer(
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", scale), ("data", sub_mean)],
    )
    (by_mean_first, _) = batches(mean_first)
    (by_scale_first, _) = batches(scale_first)

    np.testing.assert_allclose(
        by_mean_first[0], (DATA[:3] - MEAN) * 2, rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        by_scale_first[0], DATA[:3] * 2 - MEAN, rtol=0, atol=1e-5
    )


def test_transformers_per_top():
    layer = MemoryDataLayer(
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[
            ("label", DataTransformers.Scale(scale=10.0)),
            ("data", DataTransformers.Scale(scale=-1.0)),
        ],
    )
    (first, _) = batches(layer)
    np.testing.assert_array_equal(first[0], -DATA[:3])
    np.testing.assert_array_equal(first[1], LABEL[:3] * 10)


def test_memory_source_arrays_untouched():
    data = DATA.copy()
    layer = MemoryDataLayer(
        batch_size=6,
        data=[data, LABEL],
        transformers=[("data", DataTransformers.SubMean(mean_blob=MEAN))],
    )
    # Two passes over the same samples: the mean is subtracted once per batch.
    first, second = batches(layer)

    np.testing.assert_array_equal(data, DATA)
    np.testing.assert_array_equal(first[0], second[0])


def test_async_hdf5_transformed_like_hdf5(tmp_path):
    source = str(write_source(tmp_path))
    transformers = [
        ("data", DataTransformers.SubMean(mean_blob=MEAN)),
        ("data", DataTransformers.Scale(scale=0.25)),
    ]
    sync = HDF5DataLayer(
        source=source, batch_size=4, shuffle=True, transformers=transformers
    )
    asynchronous = AsyncHDF5DataLayer(
        source=source,
        batch_size=4,
        shuffle=True,
        chunk_size=4,
        transformers=transformers,
    )
    for sync_batch, async_batch in zip(batches(sync, 4), batches(asynchronous, 4)):
        np.testing.assert_array_equal(async_batch[0], sync_batch[0])
        np.testing.assert_array_equal(async_batch[1], sync_batch[1])
    (data, label) = batches(sync, 1)[0]
    samples = label.ravel().astype(int)
    np.testing.assert_allclose(data, (DATA[samples] - MEAN) * 0.25, rtol=0, atol=1e-6)


def test_transformed_batch_reaches_net():
    target = np.zeros((6, 2, 3, 3), np.float32)
    data = MemoryDataLayer(
        name="memory",
        batch_size=6,
        data=[DATA, target],
        tops=["data", "target"],
        transformers=[("data", DataTransformers.SubMean(mean_blob=MEAN))],
    )
    loss = SquareLossLayer(name="loss", bottoms=["data", "target"])
    net = Net("transformed", CPUBackend(seed=0), [data, loss])
    objective = net.forward()

    np.testing.assert_allclose(net.blobs["data"], DATA - MEAN, rtol=0, atol=1e-6)
    expected = 0.5 * np.sum((DATA - MEAN).astype(np.float64) ** 2) / 6
    assert objective == pytest.approx(expected, rel=1e-5)


def test_transformers_serialize_round_trip():
    layer = HDF5DataLayer(
        name="data",
        source="list.txt",
        batch_size=2,
        transformers=[("data", DataTransformers.Scale(scale=0.5))],
    )
    rebuilt = from_json(to_json(layer))

    assert len(rebuilt.transformers) == 1
    top, transformer = rebuilt.transformers[0]
    assert top == "data"
    assert isinstance(transformer, DataTransformers.Scale)
    assert transformer.scale == 0.5


# --- invalid configurations ---------------------------------------------------


def test_submean_shape_mismatch_names_layer():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.SubMean(mean_blob=MEAN[:1]))],
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert "MemoryDataLayer 'memory'" in message
    assert "top 'data'" in message
    assert "(1, 3, 3)" in message
    assert "(2, 3, 3)" in message


def test_submean_file_missing(tmp_path):
    layer = HDF5DataLayer(
        name="data",
        source=str(write_source(tmp_path)),
        batch_size=3,
        transformers=[
            ("data", DataTransformers.SubMean(mean_file=str(tmp_path / "no.hdf5")))
        ],
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    assert str(tmp_path / "no.hdf5") in str(raised.value)


def test_submean_file_without_mean(tmp_path):
    mean_file = write_mean(tmp_path / "mean.hdf5", name="average")
    layer = HDF5DataLayer(
        name="data",
        source=str(write_source(tmp_path)),
        batch_size=3,
        transformers=[("data", DataTransformers.SubMean(mean_file=str(mean_file)))],
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert str(mean_file) in message
    assert "no dataset 'mean'" in message
    assert "average" in message


def test_submean_needs_blob_or_file():
    with pytest.raises(ConfigError, match="mean_blob"):
        DataTransformers.SubMean()


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "2", True])
def test_scale_rejects_invalid(scale):
    with pytest.raises(ConfigError, match="scale"):
        DataTransformers.Scale(scale=scale)


def test_transformer_unknown_top():
    with pytest.raises(ConfigError) as raised:
        MemoryDataLayer(
            name="memory",
            batch_size=3,
            data=[DATA, LABEL],
            transformers=[("image", DataTransformers.Scale(scale=2.0))],
        )
    message = str(raised.value)
    assert "MemoryDataLayer 'memory'" in message
    assert "transformers" in message
    assert "'image'" in message


@pytest.mark.parametrize(
    "entry",
    [("data", 2.0), DataTransformers.Scale(scale=2.0), ("data",)],
    ids=["not-transformer", "no-pair", "short-pair"],
)
def test_transformer_entry_rejected(entry):
    with pytest.raises(ConfigError, match="transformers"):
        HDF5DataLayer(
            name="data", source="list.txt", batch_size=2, transformers=[entry]
        )


def test_transformers_not_a_list():
    with pytest.raises(ConfigError, match="transformers"):
        HDF5DataLayer(
            name="data",
            source="list.txt",
            batch_size=2,
            transformers=DataTransformers.Scale(scale=2.0),
        )


def test_submean_blob_non_finite():
    mean = MEAN.copy()
    mean[1, 2, 0] = np.nan
    with pytest.raises(ConfigError) as raised:
        DataTransformers.SubMean(mean_blob=mean)
    message = str(raised.value)
    assert "DataTransformers.SubMean: mean_blob has 1 NaN or infinite" in message
    assert "(nan) at index (1, 2, 0)" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_submean_file_non_finite(tmp_path, bad):
    mean = MEAN.copy()
    mean[0, 1, 2] = bad
    mean[1, 0, 0] = bad
    mean_file = write_mean(tmp_path / "mean.hdf5", mean=mean)
    layer = HDF5DataLayer(
        name="data",
        source=str(write_source(tmp_path)),
        batch_size=3,
        transformers=[("data", DataTransformers.SubMean(mean_file=str(mean_file)))],
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert f"mean_file {mean_file}, dataset 'mean', has 2 NaN or infinite" in message
    assert f"({bad}) at index (0, 1, 2)" in message
    assert "data row" not in message


def test_submean_file_not_numeric(tmp_path):
    mean_file = write_mean(tmp_path / "mean.hdf5", mean=np.array([b"a", b"b"]))
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(mean_file)).load_mean()
    message = str(raised.value)
    assert f"mean_file {mean_file}, dataset 'mean', has dtype |S1" in message


def test_submean_mean_overflows_float32():
    mean = MEAN.astype(np.float64)
    mean[0, 0, 0] = 1e39
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.SubMean(mean_blob=mean))],
    )
    with pytest.raises(DataError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert "MemoryDataLayer 'memory': top 'data'" in message
    assert "values up to 1e+39 in magnitude" in message
    assert "overflow the net's dtype float32" in message


@pytest.mark.parametrize("scale", [1e39, -1e39, 10**39])
def test_scale_overflows_float32(scale):
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.Scale(scale=scale))],
    )
    with pytest.raises(ConfigError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    message = str(raised.value)
    assert "MemoryDataLayer 'memory': top 'data'" in message
    assert f"DataTransformers.Scale: scale={scale!r} overflows" in message
    assert "net's dtype float32" in message


def test_scale_fits_float64():
    data = DATA.astype(np.float64)
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[data, LABEL],
        transformers=[("data", DataTransformers.Scale(scale=1e39))],
    )
    source = make_source(layer, np.float64, np.random.default_rng(0))
    outputs = [np.zeros(shape, np.float64) for shape in source.shapes]
    source.next_batch(outputs)
    np.testing.assert_allclose(outputs[0], data[:3] * 1e39)


def test_scale_underflows_to_zero():
    layer = MemoryDataLayer(
        name="memory",
        batch_size=3,
        data=[DATA, LABEL],
        transformers=[("data", DataTransformers.Scale(scale=1e-50))],
    )
    with pytest.raises(ConfigError) as raised:
        make_source(layer, np.float32, np.random.default_rng(0))
    assert "scale=1e-50 rounds to 0 in the net's dtype float32" in str(raised.value)


def test_scale_huge_int_rejected():
    with pytest.raises(ConfigError, match="expected a finite number"):
        DataTransformers.Scale(scale=10**400)


def test_submean_blob_complex_rejected():
    with pytest.raises(ConfigError) as raised:
        DataTransformers.SubMean(mean_blob=MEAN.astype(np.complex64))
    message = str(raised.value)
    assert "invalid mean_blob of dtype complex64" in message
    assert "real numbers" in message


def test_submean_file_complex_rejected(tmp_path):
    mean_file = write_mean(tmp_path / "mean.hdf5", mean=MEAN.astype(np.complex64))
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(mean_file)).load_mean()
    message = str(raised.value)
    assert f"mean_file {mean_file}, dataset 'mean', has dtype complex64" in message
    assert "real numbers" in message


def test_submean_file_missing_one_line(tmp_path):
    missing = tmp_path / "no.hdf5"
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(missing)).load_mean()
    message = str(raised.value)
    assert f"mean_file {missing} does not exist" in message
    assert "\n" not in message


def test_submean_file_is_folder(tmp_path):
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(tmp_path)).load_mean()
    message = str(raised.value)
    assert f"mean_file {tmp_path} is a folder" in message
    assert "\n" not in message


def test_submean_file_mean_is_group(tmp_path):
    mean_file = tmp_path / "mean.hdf5"
    with h5py.File(mean_file, "w") as handle:
        handle["mean/values"] = MEAN
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(mean_file)).load_mean()
    assert "'mean' is a group, not a dataset" in str(raised.value)


def test_submean_file_digest_checked(tmp_path):
    mean_file = write_mean(tmp_path / "mean.hdf5", MEAN.astype(np.float32))
    digest = hashlib.sha256(mean_file.read_bytes()).hexdigest()
    (tmp_path / "mean.hdf5.sha256").write_text(f"{digest}  mean.hdf5\n")
    transformer = DataTransformers.SubMean(mean_file=str(mean_file))
    np.testing.assert_array_equal(transformer.load_mean(), MEAN.astype(np.float32))

    write_mean(mean_file, MEAN.astype(np.float32) + 1)
    with pytest.raises(DataError) as raised:
        transformer.load_mean()
    message = str(raised.value)
    assert message.startswith(f"DataTransformers.SubMean: mean_file {mean_file} ")
    assert "does not match its SHA-256 digest in mean.hdf5.sha256" in message
    assert "delete mean.hdf5.sha256" in message


def test_submean_damaged_sidecar_names_file(tmp_path):
    """The error for a damaged sidecar names the mean file, and the sidecar
    only as the digest it is."""
    mean_file = write_mean(tmp_path / "mean.hdf5", MEAN.astype(np.float32))
    sidecar = tmp_path / "mean.hdf5.sha256"
    sidecar.write_text("not a digest\n")
    with pytest.raises(DataError) as raised:
        DataTransformers.SubMean(mean_file=str(mean_file)).load_mean()
    message = str(raised.value)
    assert message.startswith(f"DataTransformers.SubMean: mean_file {mean_file}: ")
    assert f"mean_file {sidecar}" not in message
    assert f"{sidecar} is not a SHA-256 digest line" in message
