"""ReadAhead, the wrapper GPUNet puts around data sources to read one batch
early, on its own (the GPU net's use of it is in test_cuda_device.py)."""

import h5py
import numpy as np
import pytest

from mochac.layers import AsyncHDF5DataLayer, HDF5DataLayer, MemoryDataLayer
from mochac.runtime.data_sources import make_source
from mochac.runtime.read_ahead import ReadAhead


@pytest.fixture(params=[HDF5DataLayer, AsyncHDF5DataLayer])
def sources(request, tmp_path):
    """A wrapped and a plain source of the same shuffled data and seed."""
    with h5py.File(tmp_path / "rows.h5", "w") as handle:
        handle["data"] = np.arange(7.0).reshape(7, 1)
    (tmp_path / "rows.txt").write_text("rows.h5\n")
    extra = {"chunk_size": 3} if request.param is AsyncHDF5DataLayer else {}
    layer = request.param(
        name="rows",
        source=str(tmp_path / "rows.txt"),
        batch_size=3,
        shuffle=True,
        tops=["data"],
        **extra,
    )

    def source():
        return make_source(layer, np.float64, np.random.default_rng(3))

    wrapped, plain = ReadAhead(source()), source()
    yield wrapped, plain
    wrapped.close()
    plain.close()


def batch(source):
    out = [np.empty((3, 1))]
    n_valid = source.next_batch(out)
    return out[0].ravel().tolist(), n_valid


def read(wrapped):
    out = [np.empty((3, 1))]
    n_valid = wrapped.read(out)
    return out[0].ravel().tolist(), n_valid


def same_state(a, b):
    assert (a["position"], a["epoch"], a["rng"]) == (
        b["position"],
        b["epoch"],
        b["rng"],
    )
    np.testing.assert_array_equal(a["order"], b["order"])


def test_pending_batch_reports_the_state_before_it(sources):
    wrapped, plain = sources
    # Seven rows in batches of three: the third batch wraps into epoch 1.
    for _ in range(5):
        expected = batch(plain)
        assert read(wrapped) == expected
        assert wrapped.pending == expected[1]
        assert wrapped.state_dict()["position"] != plain.state_dict()["position"]
        wrapped.take()
        same_state(wrapped.state_dict(), plain.state_dict())
        assert (wrapped.epoch, wrapped.position) == (plain.epoch, plain.position)


def test_drop_serves_the_same_batch_again(sources):
    wrapped, plain = sources
    for _ in range(2):
        batch(plain)
        read(wrapped)
        wrapped.take()
    before = wrapped.state_dict()
    first = read(wrapped)
    wrapped.drop()
    assert wrapped.pending is None
    same_state(wrapped.state_dict(), before)
    assert read(wrapped) == first == batch(plain)


def test_rewind_and_load_drop_the_pending_batch(sources):
    wrapped, plain = sources
    start = plain.state_dict()
    read(wrapped)
    wrapped.rewind()
    plain.rewind()
    assert wrapped.pending is None
    assert read(wrapped) == batch(plain)
    wrapped.load_state_dict(start)
    plain.load_state_dict(start)
    assert wrapped.pending is None
    assert batch(wrapped) == batch(plain)


def test_take_and_read_check_the_pending_batch(sources):
    wrapped, _ = sources
    with pytest.raises(RuntimeError, match="no batch is pending"):
        wrapped.take()
    read(wrapped)
    with pytest.raises(RuntimeError, match="already pending"):
        read(wrapped)


def break_source(wrapped):
    """Make the wrapped source move past its next batch, then raise; return
    its working next_batch."""
    inner = wrapped.source
    served = inner.next_batch

    def failing(outputs):
        served(outputs)
        raise ValueError("unreadable batch on purpose")

    inner.next_batch = failing
    return served


def test_failed_read_raises_at_take(sources):
    wrapped, plain = sources
    before = wrapped.state_dict()
    break_source(wrapped)
    assert wrapped.read([np.empty((3, 1))]) is None
    assert wrapped.pending is not None
    same_state(wrapped.state_dict(), before)
    with pytest.raises(ValueError, match="on purpose"):
        wrapped.take()
    # The failure moved the source past the batch, as it does unwrapped.
    batch(plain)
    same_state(wrapped.state_dict(), plain.state_dict())


def test_drop_discards_a_failed_read(sources):
    wrapped, plain = sources
    served = break_source(wrapped)
    wrapped.read([np.empty((3, 1))])
    wrapped.drop()
    wrapped.source.next_batch = served
    assert wrapped.pending is None
    assert read(wrapped) == batch(plain)


def test_state_after_arrays_replaced():
    """Arrays replaced in the source's list after a read make the state from
    before that read stale. The wrapped source then reports the new arrays'
    state, as the plain one does, so a snapshot resumes from their first row."""
    rows = np.arange(10.0).reshape(10, 1)
    layer = MemoryDataLayer(name="rows", batch_size=4, data=[rows], tops=["data"])
    wrapped, plain = (
        ReadAhead(make_source(layer, np.float64, np.random.default_rng(3))),
        make_source(layer, np.float64, np.random.default_rng(3)),
    )
    out = [np.empty((4, 1))]
    for _ in range(2):
        wrapped.read(out)
        wrapped.take()
        plain.next_batch(out)
    wrapped.read(out)
    plain.next_batch(out)
    for source in (wrapped, plain):
        source.arrays[0] = rows + 100
    expected = plain.state_dict()
    state = wrapped.state_dict()
    assert state["position"] == expected["position"] == 0
    assert state["arrays_version"] == expected["arrays_version"]
    assert wrapped.pending is None
    # The next batch comes from the first rows of the new arrays.
    wrapped.read(out)
    np.testing.assert_array_equal(out[0].ravel(), [100.0, 101.0, 102.0, 103.0])


def test_same_array_assigned_after_read():
    """Assigning the same array object again after a read makes the pending
    batch outdated, so the next batch comes from the array's first rows."""
    rows = np.arange(10.0).reshape(10, 1)
    layer = MemoryDataLayer(name="rows", batch_size=4, data=[rows], tops=["data"])
    wrapped = ReadAhead(make_source(layer, np.float64, np.random.default_rng(3)))
    out = [np.empty((4, 1))]
    wrapped.read(out)
    wrapped.take()
    wrapped.read(out)
    rows[...] += 100
    wrapped.arrays[0] = rows
    assert wrapped.is_outdated()
    state = wrapped.state_dict()
    assert state["position"] == 0
    assert wrapped.pending is None
    wrapped.read(out)
    np.testing.assert_array_equal(out[0].ravel(), [100.0, 101.0, 102.0, 103.0])


def test_assignment_with_pending_batch(tmp_path):
    """Arrays assigned while a batch that ended an epoch is pending: the
    wrapped source reports the plain source's position and epoch at once,
    and after the drop that GPUNet makes it serves the same batches from the
    same state."""
    with h5py.File(tmp_path / "rows.h5", "w") as handle:
        handle["data"] = np.arange(7.0).reshape(7, 1)
    (tmp_path / "rows.txt").write_text("rows.h5\n")
    layer = HDF5DataLayer(
        name="rows",
        source=str(tmp_path / "rows.txt"),
        batch_size=3,
        shuffle=True,
        tops=["data"],
    )
    wrapped, plain = (
        ReadAhead(make_source(layer, np.float64, np.random.default_rng(3))),
        make_source(layer, np.float64, np.random.default_rng(3)),
    )

    for _ in range(2):
        read(wrapped)
        wrapped.take()
        batch(plain)
    # This read wraps past the 7th sample, so the source ends epoch 0 and
    # draws the next order.
    read(wrapped)
    assert wrapped.source.epoch == 1

    new_rows = np.arange(100.0, 105.0).reshape(5, 1)
    for source in (wrapped, plain):
        source.arrays[0] = new_rows
    assert wrapped.position == plain.position == 0
    assert wrapped.epoch == plain.epoch == 0

    wrapped.drop()
    assert wrapped.position == 0
    assert wrapped.epoch == 0

    for _ in range(3):
        assert read(wrapped) == batch(plain)
        wrapped.take()
        same_state(wrapped.state_dict(), plain.state_dict())
