"""The SHA-256 sidecar of each snapshot: written atomically, checked first."""

import hashlib
import os
import subprocess
import threading

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    CPUBackend,
    InnerProductLayer,
    MemoryDataLayer,
    Net,
    Snapshot,
    SnapshotError,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.durable_files import TEMPORARY_NAME, host_tag, temporary_path
from mochac.runtime import file_digest, snapshot
from mochac.runtime.file_digest import digest_path
from mochac.runtime.snapshot import latest_snapshot, save_snapshot
from mochac.runtime.solver import SolverState


def make_net(seed=5):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 5))
    y = rng.integers(0, 3, size=(10, 1)).astype(np.float64)
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip1", output_dim=3, bottoms=["data"], tops=["ip1"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip1", "label"]),
    ]
    return Net("digest", CPUBackend(dtype=np.float64, seed=seed), layers)


def train(folder, max_iter, snapshot_every=None):
    net = make_net()
    method = SGD()
    params = make_solver_parameters(method, max_iter=max_iter, load_from=str(folder))
    solver = Solver(method, params, progress=False)
    if snapshot_every:
        solver.add_coffee_break(Snapshot(folder), every_n_iter=snapshot_every)
    solver.solve(net)
    return net, solver


def test_sidecar_has_sha256sum_format(tmp_path):
    path = save_snapshot(tmp_path / "model.h5", make_net())
    sidecar = tmp_path / "model.h5.sha256"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar.read_text() == f"{expected}  model.h5\n"


def test_snapshot_through_link_keeps_link(tmp_path):
    """A model file saved through a link replaces the linked file, with its
    sidecar beside it, and loading through the link checks that digest."""
    target = tmp_path / "real" / "model.h5"
    target.parent.mkdir()
    link = tmp_path / "model.h5"
    link.symlink_to(target)
    save_snapshot(link, make_net())
    assert link.is_symlink()
    assert target.is_file()
    expected = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest_path(target).read_text() == f"{expected}  model.h5\n"
    assert not digest_path(link).exists()
    mochac.load_snapshot(make_net(seed=6), link)
    flip_byte(target, target.stat().st_size // 2)
    with pytest.raises(SnapshotError, match="does not match its SHA-256 digest"):
        mochac.load_snapshot(make_net(), link)


def test_snapshot_folder_lists_pairs(tmp_path):
    train(tmp_path, 4, snapshot_every=2)
    names = sorted(entry.name for entry in tmp_path.iterdir())
    assert names == [
        # The lock that solve() holds while it trains (training_locks).
        ".mochac-solve.lock",
        "snapshot-000000.h5",
        "snapshot-000000.h5.sha256",
        "snapshot-000002.h5",
        "snapshot-000002.h5.sha256",
        "snapshot-000004.h5",
        "snapshot-000004.h5.sha256",
    ]


def flip_byte(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_every_flipped_byte_detected(tmp_path):
    """A flip anywhere, metadata included, fails the digest before h5py reads
    the file; libhdf5 can crash on some of these bytes."""
    train(tmp_path / "run", 2, snapshot_every=2)
    original = (tmp_path / "run" / "snapshot-000002.h5").read_bytes()
    sidecar = (tmp_path / "run" / "snapshot-000002.h5.sha256").read_bytes()
    path = tmp_path / "snapshot-000002.h5"
    digest_path(path).write_bytes(sidecar)
    net = make_net()
    for offset in range(0, len(original), 97):
        path.write_bytes(original)
        flip_byte(path, offset)
        with pytest.raises(SnapshotError, match="does not match its SHA-256 digest"):
            mochac.load_snapshot(net, path)


def test_zeroed_chunk_detected(tmp_path):
    """A chunk of zero bytes passes Fletcher-32, but not the digest."""
    path = save_snapshot(tmp_path / "model.h5", make_net())
    with h5py.File(path, "r") as handle:
        chunk = handle["ip1___weight"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = bytes(chunk.size)
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError) as raised:
        mochac.load_snapshot(make_net(), path)
    message = str(raised.value)
    assert str(path) in message
    assert "delete model.h5.sha256" in message


def test_mismatch_names_older_snapshot(tmp_path):
    train(tmp_path, 4, snapshot_every=2)
    flip_byte(tmp_path / "snapshot-000004.h5", 100)
    with pytest.raises(SnapshotError) as raised:
        train(tmp_path, 6)
    message = str(raised.value)
    assert str(tmp_path / "snapshot-000004.h5") in message
    assert "resume from an older snapshot" in message


def test_damaged_sidecar_rejected(tmp_path):
    path = save_snapshot(tmp_path / "model.h5", make_net())
    digest_path(path).write_text("not a digest\n")
    with pytest.raises(
        SnapshotError, match="model.h5.sha256 is not a SHA-256"
    ) as raised:
        mochac.load_snapshot(make_net(), path)
    assert "delete only model.h5.sha256" in str(raised.value)


def test_file_without_sidecar_loads(tmp_path):
    saved = make_net(seed=1)
    path = save_snapshot(tmp_path / "model.h5", saved)
    digest_path(path).unlink()
    net = make_net(seed=2)
    mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], saved.params["ip1"]["weight"]
    )


def test_sidecar_renamed_before_file(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace

    def record(source, target):
        renamed.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(snapshot.os, "replace", record)
    save_snapshot(tmp_path / "model.h5", make_net())
    assert renamed == ["model.h5.sha256", "model.h5"]
    # Over an older file, the sidecar is renamed again at the end.
    renamed.clear()
    save_snapshot(tmp_path / "model.h5", make_net())
    assert renamed == [
        "model.h5.sha256",
        "model.h5",
        "model.h5.sha256",
    ]


def test_crash_between_renames_resumes_before(tmp_path):
    """A crash after the sidecar's rename leaves a sidecar without its
    snapshot, which resuming passes over."""
    train(tmp_path, 2, snapshot_every=2)
    (tmp_path / "snapshot-000004.h5.sha256").write_text(f"{'0' * 64}  x\n")
    assert latest_snapshot(tmp_path) == tmp_path / "snapshot-000002.h5"
    _, solver = train(tmp_path, 3)
    assert solver.state.iter == 3


def test_overwrite_keeps_pair_consistent(tmp_path):
    path = tmp_path / "snapshot-000002.h5"
    save_snapshot(path, make_net(seed=1), SolverState())
    second = make_net(seed=2)
    save_snapshot(path, second, SolverState())
    net = make_net(seed=3)
    mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], second.params["ip1"]["weight"]
    )


@pytest.mark.parametrize("interrupted_at", [0, 1, 2])
@pytest.mark.parametrize("old_sidecar", [True, False])
def test_interrupted_overwrite_keeps_a_loadable_file(
    tmp_path, monkeypatch, interrupted_at, old_sidecar
):
    """Ctrl-C before any of the renames that replace a snapshot leaves a file
    at the path that matches its sidecar: the old one or the new one."""
    path = tmp_path / "snapshot-000002.h5"
    old, new = make_net(seed=1), make_net(seed=2)
    save_snapshot(path, old, SolverState())
    if not old_sidecar:
        digest_path(path).unlink()
    calls = []
    real_replace = os.replace

    def interrupt(source, target):
        # One Ctrl-C: the renames after it run.
        if len(calls) == interrupted_at:
            calls.append(None)
            raise KeyboardInterrupt
        calls.append(target)
        real_replace(source, target)

    monkeypatch.setattr(snapshot.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(path, new, SolverState())
    monkeypatch.setattr(snapshot.os, "replace", real_replace)
    # An old file without a sidecar keeps none until the first rename.
    assert snapshot.verify_digest(path, "") == (old_sidecar or interrupted_at > 0)
    if digest_path(path).exists():
        # The sidecar lists only the digest of the file beside it, so
        # sha256sum -c passes too.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest_path(path).read_text() == f"{digest}  {path.name}\n"
    assert not list(tmp_path.glob(".*.tmp"))
    net = make_net(seed=3)
    mochac.load_snapshot(net, path)
    expected = old if interrupted_at < 2 else new
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], expected.params["ip1"]["weight"]
    )


@pytest.mark.parametrize("interrupted_at", [1, 2, 3])
def test_ctrl_c_after_rename_keeps_matching_digest(
    tmp_path, monkeypatch, interrupted_at
):
    """Ctrl-C during the folder fsync after each rename of an overwrite: the
    sidecar keeps the digest of the file at the path, not of the other."""
    path = tmp_path / "snapshot-000002.h5"
    old, new = make_net(seed=1), make_net(seed=2)
    save_snapshot(path, old, SolverState())
    calls = []
    real_fsync = file_digest.fsync_folder

    def interrupt(folder):
        real_fsync(folder)
        calls.append(folder)
        if len(calls) == interrupted_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(file_digest, "fsync_folder", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(path, new, SolverState())
    monkeypatch.setattr(file_digest, "fsync_folder", real_fsync)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest_path(path).read_text() == f"{digest}  {path.name}\n"
    assert not list(tmp_path.glob(".*.tmp"))
    net = make_net(seed=3)
    mochac.load_snapshot(net, path)
    # The first fsync follows the sidecar's rename, the second the file's.
    expected = old if interrupted_at == 1 else new
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], expected.params["ip1"]["weight"]
    )


def test_killed_overwrite_sidecar_repaired_on_load(tmp_path, caplog):
    path = tmp_path / "snapshot-000002.h5"
    save_snapshot(path, make_net(seed=1), SolverState())
    old_line = digest_path(path).read_text()
    # A writer killed between the renames leaves the new file's digest first.
    other = tmp_path / "other.h5"
    save_snapshot(other, make_net(seed=2), SolverState())
    new_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    digest_path(path).write_text(f"{new_digest}  {path.name}\n{old_line}")
    net = make_net(seed=3)
    with caplog.at_level("INFO", logger="mochac"):
        mochac.load_snapshot(net, path)
    assert digest_path(path).read_text() == old_line
    assert "left by an interrupted writer" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def dead_process_id() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


@pytest.mark.parametrize("host", ["own", "other", None])
def test_killed_writer_of_host_repairs_on_load(tmp_path, caplog, host):
    """A temporary file of a writer that ran on this host and no longer
    runs does not stop the repair. One of another host, or of a version
    that did not name its host, may belong to a live writer, so the
    sidecar keeps both digests."""
    path = tmp_path / "snapshot-000002.h5"
    save_snapshot(path, make_net(seed=1), SolverState())
    old_line = digest_path(path).read_text()
    other = tmp_path / "other.h5"
    save_snapshot(other, make_net(seed=2), SolverState())
    new_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    both = f"{new_digest}  {path.name}\n{old_line}"
    digest_path(path).write_text(both)
    writer = {"own": f"{host_tag()}-", "other": "elsewhere-", None: ""}[host]
    leftover = tmp_path / f".{path.name}.{writer}{dead_process_id()}.tmp"
    leftover.write_bytes(b"partial")
    mochac.load_snapshot(make_net(seed=3), path)
    expected = old_line if host == "own" else both
    assert digest_path(path).read_text() == expected


def test_snapshot_removes_own_dead_writers_file_at_once(tmp_path):
    """The age rule waits only for writers whose process id means nothing
    here."""
    snapshot._CLEANED_FOLDERS.discard(tmp_path.resolve())
    dead = dead_process_id()
    own = tmp_path / f".model.h5.{host_tag()}-{dead}.tmp"
    other = tmp_path / f".model.h5.elsewhere-{dead}.tmp"
    old_style = tmp_path / f".model.h5.{dead}.tmp"
    for leftover in (own, other, old_style):
        leftover.write_bytes(b"partial")
    save_snapshot(tmp_path / "model.h5", make_net())
    assert not own.exists()
    assert other.exists()
    assert old_style.exists()


def test_temporary_name_parts(tmp_path):
    name = temporary_path(tmp_path / "snapshot-000010.h5").name
    match = TEMPORARY_NAME.match(name)
    assert match["name"] == "snapshot-000010.h5"
    assert match["host"] == host_tag()
    assert int(match["pid"]) == os.getpid()
    old_style = TEMPORARY_NAME.match(".snapshot-000010.h5.1234.tmp")
    assert old_style["name"] == "snapshot-000010.h5"
    assert old_style["host"] is None
    assert old_style["pid"] == "1234"


def start_paused_overwrite(path, net, monkeypatch):
    """Start save_snapshot(path, net) in a thread that pauses once its
    sidecar lists both digests; return (thread, resume event)."""
    two_digests, resume = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(source, target):
        real_replace(source, target)
        if threading.current_thread() is writer and not two_digests.is_set():
            two_digests.set()
            assert resume.wait(timeout=60)

    monkeypatch.setattr(snapshot.os, "replace", replace)
    writer = threading.Thread(target=save_snapshot, args=(path, net))
    writer.start()
    assert two_digests.wait(timeout=60)
    return writer, resume


def test_load_during_overwrite_keeps_both_digests(tmp_path, monkeypatch):
    """A load while another writer is between its renames leaves the
    two-digest sidecar to that writer."""
    path = tmp_path / "model.h5"
    old, new = make_net(seed=1), make_net(seed=2)
    save_snapshot(path, old)
    old_line = digest_path(path).read_text()
    writer, resume = start_paused_overwrite(path, new, monkeypatch)
    try:
        mochac.load_snapshot(make_net(seed=3), path)
        assert digest_path(path).read_text().endswith(old_line)
        assert digest_path(path).read_text() != old_line
    finally:
        resume.set()
        writer.join()
    net = make_net(seed=4)
    mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], new.params["ip1"]["weight"]
    )


def test_overwrite_during_load_keeps_new_digest(tmp_path, monkeypatch):
    """A writer that finishes while a load hashes the old file: the load
    must not reduce the sidecar to the old file's digest afterwards."""
    path = tmp_path / "model.h5"
    new = make_net(seed=2)
    save_snapshot(path, make_net(seed=1))
    writer, resume = start_paused_overwrite(path, new, monkeypatch)
    real_sha256 = file_digest.file_sha256

    def hash_then_finish_writer(name):
        digest = real_sha256(name)
        resume.set()
        writer.join()
        return digest

    monkeypatch.setattr(file_digest, "file_sha256", hash_then_finish_writer)
    try:
        mochac.load_snapshot(make_net(seed=3), path)
    finally:
        resume.set()
        writer.join()
    monkeypatch.setattr(file_digest, "file_sha256", real_sha256)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest_path(path).read_text() == f"{digest}  {path.name}\n"
    net = make_net(seed=4)
    mochac.load_snapshot(net, path)
    np.testing.assert_array_equal(
        net.params["ip1"]["weight"], new.params["ip1"]["weight"]
    )


def test_transitional_sidecar_lists_both_digests(tmp_path, monkeypatch):
    path = tmp_path / "model.h5"
    save_snapshot(path, make_net(seed=1))
    old_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    seen = []
    real_replace = os.replace

    def record(source, target):
        real_replace(source, target)
        seen.append(digest_path(path).read_text())

    monkeypatch.setattr(snapshot.os, "replace", record)
    save_snapshot(path, make_net(seed=2))
    new_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    both = f"{new_digest}  model.h5\n{old_digest}  model.h5\n"
    assert seen == [both, both, f"{new_digest}  model.h5\n"]


def test_failed_write_leaves_nothing(tmp_path):
    net = make_net()

    def fail(handle):
        raise OSError("disk full")

    with pytest.raises(SnapshotError, match="disk full"):
        snapshot.write_atomically(tmp_path / "model.h5", fail, digest=True)
    assert list(tmp_path.iterdir()) == []
    save_snapshot(tmp_path / "model.h5", net)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "model.h5",
        "model.h5.sha256",
    ]


def test_plain_write_removes_old_sidecar(tmp_path):
    """A file rewritten without a digest (the coffee lounge's statistics)
    must not keep the sidecar of the file it replaced."""
    path = save_snapshot(tmp_path / "stats.h5", make_net())
    snapshot.write_atomically(path, lambda handle: handle.create_group("x"))
    assert not digest_path(path).exists()


def test_unlistable_folder_keeps_written_snapshot(tmp_path, monkeypatch):
    """A folder that can be written but not listed: the snapshot is saved,
    and the failed scan for leftovers is no error."""

    def unlistable(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(snapshot, "remove_stale_temporaries", unlistable)
    path = save_snapshot(tmp_path / "model.h5", make_net())
    assert snapshot.verify_digest(path, "")
